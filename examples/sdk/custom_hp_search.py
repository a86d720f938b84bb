"""A primitive distributed hyperparameter search driven from the SDK (the workflow of seed 002).

One thread per learning rate creates an experiment with that learning rate, moves it into a
workspace/project this script creates, waits for its first trial, follows the trial's logs in
another thread, and kills the trial early when its validation metric has not improved for a few
evaluations. At the end it prints a report sorted by the best validation value.

Run against a master (``python -m master_server --data-dir /tmp/det --port 8080``)::

    DET_MASTER=127.0.0.1:8080 python examples/sdk/custom_hp_search.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import pathlib
import queue
import threading
import time
from typing import Any

import yaml

from determined_sdk import AlreadyExistsError, FailedPreconditionError, client
from determined_sdk.client import Trial

HERE = pathlib.Path(__file__).resolve().parent
MODEL_DIR = HERE / "hp_search_model"
HP_SEARCH = {"learning_rate": [0.0005, 0.01, 0.1, 0.6]}
VAL_METRIC = "validation_loss"
STEPS_THRESHOLD = 5  # validation reports without improvement before stopping a trial
WORKSPACE, PROJECT = "my_workspace", "my_hpsearch_project"

print_lock = threading.Lock()


def say(msg: str) -> None:
    with print_lock:
        print(msg, flush=True)


def follow_logs(trial: Trial, quiet: bool) -> None:
    """Print a trial's log lines as they arrive; returns when the trial ends."""
    for line in trial.logs(follow=True):
        if not quiet:
            say(f"[trial {trial.id}] {line.rstrip()}")


def should_early_stop(
    prev_best: float, prev_count: int, best: float, count: int, threshold: int
) -> bool:
    """True when the best value has not improved over the last ``threshold`` reports."""
    return prev_count + threshold <= count and best >= prev_best


def monitor_trial(trial: Trial, interval: float, quiet: bool) -> None:
    logs = threading.Thread(target=follow_logs, args=(trial, quiet), daemon=True)
    logs.start()
    best_at: tuple[float, int] | None = None  # best value so far, and the count when it was set
    while not trial.state.is_terminal:
        time.sleep(interval)
        trial.reload()  # cached attributes only change on reload()
        summary = trial.summary_metrics.get("validation_metrics", {}).get(VAL_METRIC)
        if not summary:
            continue
        best, count = summary["min"], summary["count"]
        if best_at is None or best < best_at[0]:
            best_at = (best, count)
        elif should_early_stop(best_at[0], best_at[1], best, count, STEPS_THRESHOLD):
            say(
                f"Early stopping trial {trial.id}: no improvement of {VAL_METRIC} "
                f"in {STEPS_THRESHOLD} validations"
            )
            with contextlib.suppress(FailedPreconditionError):  # it may have just finished
                trial.kill()
            best_at = (best, count + 10**9)  # do not ask twice
    logs.join()


def run_one(
    config: dict[str, Any], hp_name: str, hp_val: float, trials: queue.Queue[int], quiet: bool
) -> None:
    say(f"Starting experiment with {hp_name}={hp_val}")
    conf = copy.deepcopy(config)
    conf["name"] = f"hp-search {hp_name}={hp_val}"
    conf["hyperparameters"][hp_name] = hp_val
    exp = client.create_experiment(config=conf, model_dir=MODEL_DIR)
    exp.move_to_project(WORKSPACE, PROJECT)
    trial = exp.await_first_trial()
    trials.put(trial.id)
    monitor_trial(trial, interval=0.5, quiet=quiet)
    exp.wait(interval=0.5)


def ensure_project() -> None:
    try:
        ws = client.create_workspace(WORKSPACE)
    except AlreadyExistsError:
        ws = client.get_workspace(WORKSPACE)
    with contextlib.suppress(AlreadyExistsError):
        ws.create_project(PROJECT, description="custom learning-rate search")


def main() -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-m", "--master", default=None, help="master address (default $DET_MASTER)")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not print trial logs")
    args = ap.parse_args()
    if args.master:
        client.login(master=args.master)
    config = yaml.safe_load((MODEL_DIR / "const.yaml").read_text())
    ensure_project()

    trial_ids: queue.Queue[int] = queue.Queue()
    threads = [
        threading.Thread(target=run_one, args=(config, name, val, trial_ids, args.quiet))
        for name, vals in HP_SEARCH.items()
        for val in vals
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    say("All trials completed. Generating summary report.")
    rows: list[dict[str, Any]] = []
    while not trial_ids.empty():
        trial = client.get_trial(trial_ids.get())
        summary = trial.summary_metrics.get("validation_metrics", {}).get(VAL_METRIC)
        for hparam in HP_SEARCH:
            rows.append(
                {
                    "trial_id": trial.id,
                    "state": trial.state.value,
                    "hparam_name": hparam,
                    "hparam_val": trial.hparams[hparam],
                    "val_metric_name": VAL_METRIC,
                    "best_val_metric": summary["min"] if summary else float("inf"),
                }
            )
    rows.sort(key=lambda r: r["best_val_metric"])
    print("=" * 100)
    print(f"Hyperparameter space: {HP_SEARCH}")
    print(f"Trials completed: {len(rows)}")
    for r in rows:
        print(
            f"  trial {r['trial_id']:>4}  {r['hparam_name']}={r['hparam_val']:<8} "
            f"{r['state']:<10} best {VAL_METRIC}={r['best_val_metric']}"
        )
    if rows:
        print(f"Best validation: {rows[0]}")
    return rows


if __name__ == "__main__":
    main()
