"""End-to-end demo: a master on SQLite in a temporary directory, a real small HP search.

Starts ``python -m master_server`` on a free port (and its web UI on another), submits
``examples/digits`` (a PyTorch MLP on scikit-learn's digits, searched over learning rate and
hidden size), prints the URL of the experiment's page, follows progress, prints a table of the
trials and the best one, and stops the master (``--serve`` keeps it up for the web UI).

Run: ``bash scripts/demo.sh`` (sets up a virtualenv first) or ``python examples/demo.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import yaml
from rich.console import Console
from rich.table import Table

import determined_sdk
from determined_sdk.errors import MasterUnavailableError

HERE = pathlib.Path(__file__).resolve().parent


def start_master(
    data_dir: pathlib.Path, slots: int
) -> tuple[subprocess.Popen[bytes], str, str | None]:
    port_file, http_file = data_dir / "port", data_dir / "http-port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "master_server",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--slots",
            str(slots),
            "--port-file",
            str(port_file),
            "--http-port",
            "0",
            "--http-port-file",
            str(http_file),
            "--log-level",
            "WARNING",
        ],
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the master did not start; see its log above")
        time.sleep(0.05)
    http = f"http://127.0.0.1:{http_file.read_text().strip()}" if http_file.exists() else None
    return proc, f"127.0.0.1:{port_file.read_text().strip()}", http


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--slots", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--trials", type=int, default=None, help="override searcher.max_trials")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument(
        "--serve", action="store_true", help="keep the master and web UI up until Ctrl-C"
    )
    args = p.parse_args()
    console = Console(width=max(100, Console().width))
    t0 = time.monotonic()
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="detsdk-demo-"))
    # A loopback master in the quick start: user admin with the empty password, so the web UI
    # opens without a login (docs/security.md says how to run one on a network).
    proc, address, web = start_master(data_dir, args.slots)
    console.print(f"[bold]master[/] on {address} (SQLite in {data_dir}), {args.slots} slots")
    if web:
        console.print(f"[bold]web UI[/] on {web}/ (REST API under {web}/api/v1)")
    try:
        client = determined_sdk.Determined(master=address)
        config = yaml.safe_load((HERE / "digits" / "search.yaml").read_text())
        if args.trials:
            config["searcher"]["max_trials"] = args.trials
        exp = client.create_experiment(config=config, model_dir=str(HERE / "digits"))
        console.print(
            f"experiment {exp.id}: {config['searcher']['name']} search, "
            f"{config['searcher'].get('max_trials', '?')} trials of {exp.name!r}"
        )
        if web:
            console.print(f"[bold]watch it:[/] {web}/experiments/{exp.id}")
        last = -1.0
        while True:
            exp.reload()
            if exp.progress != last:
                last = exp.progress
                console.print(f"  {exp.state.name:<10} progress {exp.progress:6.1%}")
            if exp.state.name in ("COMPLETED", "CANCELED", "ERROR"):
                break
            time.sleep(1.0)
        metric = config["searcher"]["metric"]
        table = Table(title=f"experiment {exp.id}: {exp.state.name}")
        for col in (
            "trial",
            "state",
            "lr",
            "hidden_size",
            f"best {metric}",
            "val accuracy",
            "steps",
        ):
            table.add_column(col, justify="right")
        rows = []
        for t in exp.list_trials():
            vm = (t.summary_metrics or {}).get("validation_metrics", {})
            best = vm.get(metric, {}).get("min")
            acc = vm.get("accuracy", {}).get("last")
            rows.append((t, best, acc))
            table.add_row(
                str(t.id),
                t.state.name,
                f"{t.hparams.get('lr', float('nan')):.4g}",
                str(t.hparams.get("hidden_size", "")),
                "-" if best is None else f"{best:.4f}",
                "-" if acc is None else f"{acc:.3f}",
                str(t.steps_completed),
            )
        console.print(table)
        scored = [r for r in rows if r[1] is not None]
        if not scored:
            raise SystemExit("no trial reported validation metrics")
        best_trial, best_value, best_acc = min(scored, key=lambda r: r[1])
        ckpts = exp.list_checkpoints(sort_by=metric, max_results=1)
        console.print(
            f"[bold green]best:[/] trial {best_trial.id} {best_trial.hparams} "
            f"{metric}={best_value:.4f} accuracy={best_acc:.3f}"
            + (f", checkpoint {ckpts[0].uuid}" if ckpts else "")
        )
        console.print(f"demo finished in {time.monotonic() - t0:.1f}s")
        if web:
            console.print(f"experiment page: {web}/experiments/{exp.id}")
        if args.serve:
            console.print("serving the web UI; Ctrl-C stops the master")
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
        if exp.state.name != "COMPLETED":
            raise SystemExit(1)
    except MasterUnavailableError as e:
        raise SystemExit(f"lost the master: {e}") from e
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not args.keep:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
