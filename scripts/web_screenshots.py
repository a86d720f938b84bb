"""Screenshots of every web UI page, for developers to look at (and for docs/web.md).

    python scripts/web_screenshots.py [--out DIR] [--url http://127.0.0.1:PORT]

Without ``--url`` it starts a master with HTTP on a free port in a temporary directory, runs a
small grid search of a quick trainer (real trial processes: metrics, logs, checkpoints),
registers the best checkpoint as a model, and shoots the pages while the last trials still run.
With ``--url`` it shoots an existing master's pages (e.g. the demo's, ``examples/demo.py
--keep``). Needs Debian's chromium (``apt-get install chromium``) and the ``playwright``
package; it never downloads a browser.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import textwrap
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = os.environ.get("DETSDK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

# A quick trainer: noisy decaying losses, logs at several levels, checkpoints every 10 steps.
TRAINER = """
import logging, math, random, sys, time
import core_api

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("trainer")
with core_api.init() as ctx:
    hp = ctx.info.trial.hparams
    lr, width = float(hp["lr"]), int(hp["width"])
    rng = random.Random(int(lr * 1e6) + width)
    steps = int(hp["steps"])
    print(f"training lr={lr} width={width} for {steps} steps")
    for step in range(1, steps + 1):
        base = 2.3 * math.exp(-step * lr * (width / 64) / 8) + 0.08 + 0.02 * width / 128
        ctx.train.report_training_metrics(
            steps_completed=step, metrics={"loss": base * (1 + 0.15 * rng.random())}
        )
        if step % 5 == 0:
            vl = base * (1 + 0.05 * rng.random())
            ctx.train.report_validation_metrics(
                steps_completed=step, metrics={"validation_loss": vl, "accuracy": 1 - vl / 2.6}
            )
            log.info("step %d validation_loss=%.4f", step, vl)
        if step == steps // 2:
            log.warning("learning rate %.3g may be too high", lr)
        if step % 10 == 0:
            with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _uuid):
                (path / "model.bin").write_bytes(bytes(2048 * width))
        time.sleep(float(hp["sleep"]))
    print("done")
"""


def start_demo_master(data_dir: pathlib.Path) -> tuple[Any, Any]:
    import determined_sdk
    from master_server.app import Master

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    master = Master(data_dir / "master", slots=2, http_port=0, preempt_grace_s=5).start()
    det = determined_sdk.Determined(master=master.address)
    model_dir = data_dir / "model"
    model_dir.mkdir()
    (model_dir / "train.py").write_text(textwrap.dedent(TRAINER).lstrip())
    base: dict[str, Any] = {
        "entrypoint": ["python", "train.py"],
        "max_restarts": 0,
        "checkpoint_storage": {"save_trial_latest": 3, "save_trial_best": 1},
    }
    grid = det.create_experiment(
        {
            **base,
            "name": "mlp-grid",
            "labels": ["digits", "grid"],
            "description": "grid over learning rate and width",
            "searcher": {
                "name": "grid",
                "metric": "validation_loss",
                "max_length": {"batches": 60},
                "max_concurrent_trials": 2,
            },
            "hyperparameters": {
                "lr": {"type": "categorical", "vals": [0.05, 0.2, 0.8]},
                "width": {"type": "categorical", "vals": [32, 128]},
                "steps": 60,
                "sleep": 0.01,
            },
        },
        model_dir,
    )
    grid.wait(interval=0.2, timeout=600)
    best = grid.list_checkpoints(max_results=1)[0]
    model = det.create_model("digits-mlp", description="best MLP of the grid", labels=["prod"])
    model.register_version(best.uuid, name="grid-best", comment="lowest validation_loss")
    det.create_experiment(
        {
            **base,
            "name": "mlp-random",
            "labels": ["digits"],
            "searcher": {
                "name": "random",
                "metric": "validation_loss",
                "max_trials": 4,
                "max_length": {"batches": 400},
                "max_concurrent_trials": 2,
            },
            "hyperparameters": {
                "lr": {"type": "log", "minval": -2, "maxval": 0, "base": 10},
                "width": {"type": "int", "minval": 16, "maxval": 128},
                "steps": 400,
                "sleep": 0.05,
            },
        },
        model_dir,
    )
    return master, det


def shoot(url: str, out: pathlib.Path) -> list[pathlib.Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots: list[pathlib.Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def snap(name: str, path: str, ready: str) -> None:
            page.goto(url + path)
            page.wait_for_selector(ready, timeout=30_000)
            page.wait_for_timeout(300)  # let the last chart finish painting
            f = out / f"{name}.png"
            page.screenshot(path=str(f), full_page=True)
            shots.append(f)
            print(f"{f}  <- {url}{path}")

        snap("experiments", "/", "#experiments table")
        exp_ids = page.eval_on_selector_all(
            "#experiments tbody tr", "rows => rows.map(r => r.dataset.id)"
        )
        finished = exp_ids[-1]
        snap("experiment", f"/experiments/{finished}", "#curves svg")
        page.select_option("select[name='hpview']", "parallel")
        page.wait_for_selector("#hp-scatter svg")
        f = out / "experiment-parallel.png"
        page.locator("#hp-scatter").screenshot(path=str(f))
        shots.append(f)
        print(f"{f}  <- the parallel coordinates view")
        trial = page.eval_on_selector("#trials tbody tr", "r => r.dataset.trial")
        snap("trial", f"/trials/{trial}", "#logs .line")
        if len(exp_ids) > 1:
            snap("experiment-running", f"/experiments/{exp_ids[0]}", "#trials table")
        snap("models", "/models", "#models")
        first_model = page.eval_on_selector_all("#models a", "as => as.map(a => a.textContent)")
        if first_model:
            snap("model", f"/models/{first_model[0]}", "#versions")
        browser.close()
    return shots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="web-screenshots", help="directory for the PNG files")
    p.add_argument("--url", default=None, help="shoot this master instead of starting one")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    if args.url:
        shoot(args.url.rstrip("/"), out)
        return
    with tempfile.TemporaryDirectory(prefix="detsdk-shots-") as tmp:
        t0 = time.monotonic()
        master, det = start_demo_master(pathlib.Path(tmp))
        try:
            print(f"master at {master.http_url} ready after {time.monotonic() - t0:.0f}s")
            shoot(str(master.http_url), out)
        finally:
            det.close()
            master.stop()


if __name__ == "__main__":
    main()
