"""``python -m master_server`` / ``determined-master``: run a master until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from master_server.app import RESOURCE_MANAGERS, Master, RaySettings, tune_gc_for_serving
from master_server.rm.ray import SLOT_TYPES, STRATEGIES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="determined-master", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (default 8080)")
    p.add_argument(
        "--data-dir", required=True, help="SQLite file, checkpoints and run dirs live here"
    )
    p.add_argument("--db", default=None, help="SQLAlchemy URL, e.g. postgresql+psycopg://u@h/db")
    p.add_argument(
        "--slots", type=int, default=None, help="slots to schedule onto (default: CPU count)"
    )
    p.add_argument("--checkpoint-dir", default=None, help="default checkpoint storage directory")
    p.add_argument(
        "--checkpoint-root",
        action="append",
        default=[],
        metavar="DIR",
        help="another directory experiments may keep checkpoints in (repeatable; the "
        "checkpoint dir is always allowed, any other path is refused)",
    )
    p.add_argument("--max-model-mib", type=int, default=64, help="model directory size limit")
    p.add_argument(
        "--initial-admin-password",
        default=None,
        help="password of the 'admin' user made on the first start "
        "(default $DET_INITIAL_ADMIN_PASSWORD; required unless --host is loopback)",
    )
    p.add_argument(
        "--session-hours", type=float, default=24 * 7, help="login session lifetime (default 168)"
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve TLS only")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--port-file", default=None, help="write the bound port here once serving")
    p.add_argument(
        "--stop-trials-on-exit",
        action="store_true",
        help="stop running trials when the master stops (default: they keep training and the "
        "next master on the same data dir adopts them)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="serve the REST API and web UI on this port; 0 picks a free one (default: off)",
    )
    p.add_argument("--http-port-file", default=None, help="write the bound HTTP port here")
    p.add_argument(
        "--resource-manager",
        choices=RESOURCE_MANAGERS,
        default="local",
        help="where trials run: 'local' (this machine) or 'ray' (a Ray cluster; the ray extra)",
    )
    p.add_argument(
        "--ray-address",
        default="auto",
        help="the Ray cluster (default 'auto': the one on this machine or $RAY_ADDRESS)",
    )
    p.add_argument(
        "--ray-slot-type",
        choices=SLOT_TYPES,
        default="cpu",
        help="what one slot is on Ray: one CPU or one GPU (default cpu)",
    )
    p.add_argument(
        "--ray-placement-strategy",
        choices=STRATEGIES,
        default="PACK",
        help="how a run's ranks are placed over Ray nodes (default PACK)",
    )
    p.add_argument(
        "--ray-run-root",
        default="/tmp/determined-runs",
        help="directory on every Ray node where run directories are made",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs of this machine for the local backend (default: counted; 0: CPU slots)",
    )
    p.add_argument(
        "--unmanaged-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a script run by hand against this master (an unmanaged trial) that shows no "
        "sign of life for this long is presumed dead: its trial ends in ERROR (default 60)",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _write_port(path: str, port: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.slots is not None and args.slots < 1:
        sys.exit(f"--slots: must be >= 1, got {args.slots}")
    if args.gpus is not None and args.gpus < 0:
        sys.exit(f"--gpus: must be >= 0, got {args.gpus}")
    if args.resource_manager != "ray" and args.ray_address != "auto":
        sys.exit("--ray-address: only with --resource-manager ray")
    if (args.tls_cert is None) != (args.tls_key is None):
        sys.exit("--tls-cert and --tls-key: give both or neither")
    if args.session_hours <= 0:
        sys.exit(f"--session-hours: must be > 0, got {args.session_hours}")
    if not args.unmanaged_timeout > 0:
        sys.exit(f"--unmanaged-timeout: must be > 0 seconds, got {args.unmanaged_timeout}")
    master = Master(
        args.data_dir,
        initial_admin_password=args.initial_admin_password,
        session_ttl_s=args.session_hours * 3600,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        host=args.host,
        port=args.port,
        db_url=args.db,
        slots=args.slots,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_roots=args.checkpoint_root,
        max_model_bytes=args.max_model_mib * 2**20,
        keep_runs_on_stop=not args.stop_trials_on_exit,
        http_port=args.http_port,
        resource_manager=args.resource_manager,
        ray=RaySettings(
            address=args.ray_address,
            slot_type=args.ray_slot_type,
            placement_strategy=args.ray_placement_strategy,
            run_root=args.ray_run_root,
        ),
        gpus=args.gpus,
        unmanaged_timeout_s=args.unmanaged_timeout,
    )
    try:
        master.start()
    except Exception as e:  # a clear line, not a traceback, for a bad URL or a busy port
        logging.getLogger("master_server").error("could not start: %s", e)
        sys.exit(1)
    tune_gc_for_serving()
    if args.http_port_file and master.http_url:
        _write_port(args.http_port_file, master.http_port)
    if args.port_file:  # last: waiters on it may read the HTTP port file at once
        _write_port(args.port_file, master.port)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("master_server").info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    master.stop()


if __name__ == "__main__":
    main()
