"""What a trial run loads: every trial starts a supervisor and a trial process, so what each
imports is paid once per trial (see benchmarks/trials_bench.py). These tests keep the master's
own stack (SQLAlchemy, the store, the web app) and modules a run does not use out of both."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO

#: Never in a supervisor or a trial process: the master's stack, and heavy optional packages.
_NEVER = (
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "yaml",
    "torch",
    "numpy",
    "pandas",
    "rich",
    "click",
    "fsspec",
)

_CHECK = """
import sys
def check(where, never, allowed_master=()):
    bad = sorted(
        m for m in sys.modules
        if m.split(".")[0] in never
        or (m.startswith("master_server") and m not in ("master_server", *allowed_master))
    )
    assert not bad, f"{where}: {bad}"
"""


def _run(code: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHECK + code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", out.stdout


def test_a_trial_loads_neither_the_master_nor_what_a_single_rank_does_not_use() -> None:
    """``core_api.init`` and the contexts a trial uses: gRPC and the generated code, not the
    master's stack, nor multiprocessing (only a multi-rank context opens sockets to its peers)
    nor tempfile (only checkpoints on object storage stage files)."""
    _run(
        f"""
import core_api
core_api.get_cluster_info, core_api.init, core_api.Context, core_api.SearcherOperation
import core_api._context, core_api._checkpoint, core_api._train, core_api._searcher
check("core_api", {_NEVER!r} + ("multiprocessing", "tempfile", "determined_sdk._client"))
assert "grpc" in sys.modules  # the check above saw a real trial's set of modules
print("ok")
"""
    )


def test_the_supervisor_starts_ranks_before_loading_grpc_and_never_loads_the_master() -> None:
    """Before the ranks start: no gRPC, protobuf, ctypes, socket or uuid. After (the channel,
    the log and exit messages, the level parser): no protobuf (the supervisor encodes its
    messages itself) and nothing of the master's stack."""
    _run(
        f"""
import master_server.supervisor as s
early = ("grpc", "google", "ctypes", "socket", "uuid", "determined_sdk")
check("before the ranks", {_NEVER!r} + early, ("master_server.supervisor",))
channel = s._channel({{"master": "127.0.0.1:1", "env": {{}}}})
s._Shipper(channel)._send  # its imports: uuid, grpc
import uuid
from determined_sdk.log_levels import LevelParser
line = s.log_line(
    trial_id=1, timestamp=1.5, rank=0, stream="stdout", level="INFO", text="x", run_id=1
)
s.ship_logs_request([line], uuid.uuid4().hex), s.report_trial_exit_request(1, 1, 0)
s._unary(channel, s.REPORT_TRIAL_EXIT)
channel.close()
check("after the ranks", {_NEVER!r} + ("google",), ("master_server.supervisor",))
assert "grpc" in sys.modules
print("ok")
"""
    )
