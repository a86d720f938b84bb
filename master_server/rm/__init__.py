"""Resource managers: the one place that knows where a trial's run lives.

The engine asks a :class:`~master_server.rm.base.ResourceManager` for a gang of slots, starts a run
in it, signals or kills that run by ``(trial_id, run_id)``, hears its exit, and asks on start
which runs are still alive. :mod:`master_server.rm.local` runs supervisors on this machine.
"""
