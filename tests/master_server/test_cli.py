"""The master's command line: serves health, shuts down cleanly on SIGTERM, clear start errors."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from determined_sdk.proto import master_pb2, master_pb2_grpc
from tests.support import wait_for

pytestmark = pytest.mark.slow


def test_serves_health_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "master_server",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--slots",
            "3",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, 60, "the port file")
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = master_pb2_grpc.MasterServiceStub(ch)
            token = stub.Login(master_pb2.LoginRequest(username="admin")).token
            info = stub.GetMasterInfo(
                master_pb2.GetMasterInfoRequest(), metadata=[("authorization", f"Bearer {token}")]
            )
            assert (info.total_slots, info.free_slots, info.database) == (3, 3, "sqlite")
        assert (tmp_path / "d" / "master.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, err = proc.communicate()
        assert "master serving on 127.0.0.1:" in err and "master stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_database_url_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "master_server",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
            "--db",
            "nosuchdb://x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "could not start" in out.stderr and "nosuchdb" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_slots_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "master_server", "--data-dir", str(tmp_path), "--slots", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--slots: must be >= 1" in out.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--resource-manager", "yarn"], "argument --resource-manager: invalid choice: 'yarn'"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address: only with --resource-manager ray"),
        (["--gpus", "-1"], "--gpus: must be >= 0, got -1"),
        (["--resource-manager", "ray", "--ray-slot-type", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_resource_manager_options_are_clear_errors(
    tmp_path: pathlib.Path, args: list[str], said: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "master_server", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and said in out.stderr, out.stderr
