"""The experiment engine, split by concern.

* :mod:`.state`: the shared runtime state (one lock, experiment and trial runtimes, state edges).
* :mod:`.lifecycle`: experiments: create, activate, pause, cancel, archive, delete, recover.
* :mod:`.search`: the searcher driver and its persistence; searcher operations; custom search.
* :mod:`.trials`: trial runs: allocate, start, exit, restart, kill.
* :mod:`.preemption`: stop requests, grace-period kills (by run id), the preemption long poll.

Every component talks to the placement of runs only through
:class:`master_server.rm.base.ResourceManager`. :class:`master_server.experiments.ExperimentService`
composes them behind the method names the servicers call.
"""
