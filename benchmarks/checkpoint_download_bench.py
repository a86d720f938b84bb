"""Checkpoint downloads: through the master and direct, vs plain copies of the same files.

Run: ``python benchmarks/checkpoint_download_bench.py [--mib 512] [--files 4] [--repeat 3]
[--no-s3]``. It starts a master in its own process (127.0.0.1, port 0, SQLite in a temporary
directory) and moto's S3 server on loopback, saves one checkpoint of ``--mib`` MiB in
``--files`` files to each storage with the Core API (an unmanaged trial), then times, best of
``--repeat`` rounds with the contenders interleaved (the target is emptied outside the
timing):

* shared_fs: ``shutil.copytree`` of the checkpoint directory (baseline), the SDK's direct
  download, the SDK's download through the master on its bulk port (the default without TLS)
  and as a gRPC stream (what a TLS master serves);
* s3: a raw ``s3fs`` get of the same objects (baseline), the SDK's direct download, the SDK's
  download through the master (which reads from S3), bulk port and gRPC stream;

and prints MB/s and each one's ratio to its baseline (higher is faster).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import core_api  # noqa: E402
from determined_sdk import Determined, DownloadMode  # noqa: E402
from determined_sdk import checkpoint_storage as cs  # noqa: E402
from tests.s3_server import MotoServer  # noqa: E402

MiB = 2**20


def race(
    fns: dict[str, Callable[[], Any]], reset: Callable[[], None], rounds: int
) -> dict[str, float]:
    """Best wall time of each function over ``rounds`` rounds, the functions interleaved
    (so that a busy moment of the machine does not land on one of them only); ``reset`` runs
    before each call, untimed."""
    out = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            reset()
            t0 = time.perf_counter()
            fn()
            out[name] = min(out[name], time.perf_counter() - t0)
    return out


def stream_only(ck: Any, out: pathlib.Path) -> None:
    """Download through the master as a gRPC stream (what a TLS master serves)."""
    session = ck._session
    session.bulk_download_ticket = lambda request: None
    try:
        ck.download(out, mode=DownloadMode.MASTER)
    finally:
        del session.bulk_download_ticket


def start_master(tmp: pathlib.Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "port"
    cmd = [sys.executable, "-m", "master_server", "--data-dir", str(tmp / "data"),
           "--port", "0", "--port-file", str(port_file), "--slots", "1",
           "--log-level", "WARNING"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("master did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def save_checkpoint(address: str, storage: Any, src: pathlib.Path, name: str) -> str:
    """One checkpoint of ``src``'s files, saved by an unmanaged trial; its uuid."""
    with core_api.init(
        master=address, checkpoint_storage=storage, experiment_name=name, capture_output=False
    ) as ctx:
        return ctx.checkpoint.upload(src, {"steps_completed": 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 part")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        src = tmp / "src"
        (src / "shards").mkdir(parents=True)
        block = os.urandom(MiB)
        per_file = max(1, args.mib // args.files)
        for i in range(args.files):
            with open(src / (f"shards/part-{i}.bin" if i else "model.bin"), "wb") as f:
                for _ in range(per_file):
                    f.write(block)
        total = sum(cs.list_local_files(src).values())
        mb = total / 1e6
        out = tmp / "out"

        def reset() -> None:
            shutil.rmtree(out, ignore_errors=True)

        def row(name: str, seconds: float, base: float, base_name: str) -> None:
            print(
                f"  {name:<42} {seconds * 1e3:8.1f} ms {mb / seconds:8.0f} MB/s  "
                f"{base / seconds:5.2f}x {base_name}"
            )

        moto = None if args.no_s3 else MotoServer().start()
        proc, address = start_master(tmp)
        try:
            ckpt_dir = tmp / "data" / "checkpoints"
            local_uuid = save_checkpoint(address, str(ckpt_dir), src, "bench-shared-fs")
            with Determined(address) as det:
                ck = det.get_checkpoint(local_uuid)
                files = len(ck.resources)
                print(f"checkpoint download, {total / MiB:.0f} MiB in {files} files")
                print("shared_fs")
                stored = ckpt_dir / local_uuid
                t = race(
                    {
                        "copy": lambda: shutil.copytree(stored, out),
                        "direct": lambda: ck.download(out, mode=DownloadMode.DIRECT),
                        "bulk": lambda: ck.download(out, mode=DownloadMode.MASTER),
                        "stream": lambda: stream_only(ck, out),
                    },
                    reset,
                    args.repeat,
                )
                t_copy = t["copy"]
                row("shutil.copytree (baseline)", t_copy, t_copy, "copytree")
                row("SDK download(mode=DIRECT)", t["direct"], t_copy, "copytree")
                row("SDK download(mode=MASTER) (bulk port)", t["bulk"], t_copy, "copytree")
                row("SDK download(mode=MASTER) (gRPC stream)", t["stream"], t_copy, "copytree")

                if moto is not None:
                    moto.make_bucket("bench")
                    s3 = {
                        "type": "s3",
                        "bucket": "bench",
                        "prefix": "ckpts",
                        "endpoint_url": moto.endpoint_url,
                    }
                    s3_uuid = save_checkpoint(address, s3, src, "bench-s3")
                    ck3 = det.get_checkpoint(s3_uuid)
                    storage = cs.from_config(s3)
                    assert isinstance(storage, cs.FsspecStorage)
                    keys = sorted(storage.list_files(s3_uuid))

                    def raw_get() -> None:
                        out.mkdir(parents=True)
                        (out / "shards").mkdir()
                        storage.fs.get(
                            [f"bench/ckpts/{s3_uuid}/{k}" for k in keys],
                            [str(out / k) for k in keys],
                        )

                    print("s3 (moto server on loopback)")
                    t = race(
                        {
                            "raw": raw_get,
                            "direct": lambda: ck3.download(out, mode=DownloadMode.DIRECT),
                            "bulk": lambda: ck3.download(out, mode=DownloadMode.MASTER),
                            "stream": lambda: stream_only(ck3, out),
                        },
                        reset,
                        args.repeat,
                    )
                    t_raw = t["raw"]
                    row("raw s3fs get (baseline)", t_raw, t_raw, "s3fs get")
                    row("SDK download(mode=DIRECT)", t["direct"], t_raw, "s3fs get")
                    row("SDK download(mode=MASTER) (bulk port)", t["bulk"], t_raw, "s3fs get")
                    row("SDK download(mode=MASTER) (gRPC stream)", t["stream"], t_raw, "s3fs get")
        finally:
            proc.terminate()
            proc.wait(30)
            if moto is not None:
                moto.stop()


if __name__ == "__main__":
    main()
