"""Launchers for entrypoints, as Determined's ``determined.launch`` has them.

A config whose entrypoint is ``python3 -m core_api.launch.torch_distributed [--] CMD...`` is run
by the master's supervisor once per container (one, on the local launcher); the launcher then
starts ``CMD`` once per slot with torch.distributed's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), each
under :mod:`core_api.launch.wrap_rank` so every output line starts with ``[rank=N]``.
"""
