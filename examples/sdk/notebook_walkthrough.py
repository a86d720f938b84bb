# %% [markdown]
# # determined_sdk walkthrough
#
# A tour of the SDK, one cell at a time (`# %%` cells run in VS Code, Jupyter via jupytext, or as
# a plain script). It uses the toy trial in `hp_search_model/`. Set `DET_MASTER` to use your
# master; without it, the first cell starts a throwaway master in this process.

# %%
from __future__ import annotations

import os
import pathlib
import tempfile

import yaml

from determined_sdk import (
    CheckpointSortBy,
    Experiment,
    LogLevel,
    NotFoundError,
    OrderBy,
    Trial,
    client,
)

HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
MODEL_DIR = HERE / "hp_search_model"
local_master = None
if not os.environ.get("DET_MASTER"):
    from master_server.app import Master

    local_master = Master(tempfile.mkdtemp(prefix="walkthrough-"), slots=2).start()
    os.environ["DET_MASTER"] = local_master.address
d = client.login()  # master from $DET_MASTER; the module functions use this client
print(d, d.get_master_info())

# %% [markdown]
# ## Create an experiment and watch its first trial
# `create_experiment` takes a dict (or a YAML file path) and the model directory.

# %%
config = yaml.safe_load((MODEL_DIR / "const.yaml").read_text())
config["name"] = "walkthrough"
config["hyperparameters"]["steps"] = 100
exp = client.create_experiment(config, MODEL_DIR)
trial = exp.await_first_trial()
print(exp.id, exp.name, exp.state, "first trial:", trial.id, trial.hparams)

# %%
# logs(follow=True) streams lines (strings) until the trial ends.
for line in trial.logs(follow=True):
    print(line, end="")
print("experiment ended:", exp.wait(interval=0.5))

# %% [markdown]
# ## Caching and reload()
# Attributes are cached from the last fetch. `trial.state` above was fetched when the trial was
# returned by `await_first_trial`; it stays the same until `reload()`.

# %%
print("cached:", trial.state)
trial.reload()
print("after reload:", trial.state)
print("summary:", trial.summary_metrics["validation_metrics"]["validation_loss"])

# %% [markdown]
# ## Checkpoints: sort by a metric name or by a predefined key

# %%
best = exp.list_checkpoints(sort_by="validation_loss", order_by=OrderBy.ASC, max_results=3)
for c in best:
    print(c.uuid, c.steps_completed, c.validation_metrics)
latest = exp.list_checkpoints(CheckpointSortBy.BATCH_NUMBER, OrderBy.DESC, max_results=1)[0]
print(
    "latest:",
    latest.steps_completed,
    "== trial.latest_checkpoint_uuid:",
    latest.uuid == trial.latest_checkpoint_uuid,
)

# %%
ckpt = best[0]
path = ckpt.download(pathlib.Path(tempfile.mkdtemp()) / "best")
print("downloaded to", path, sorted(p.name for p in path.iterdir()))
ckpt.add_metadata({"note": "best of the walkthrough"})
print(ckpt.metadata)

# %% [markdown]
# ## Metrics, streamed lazily

# %%
val = [(m.steps_completed, m.metrics["validation_loss"]) for m in trial.iter_metrics("validation")]
print(val[:3], "...", val[-1])
print("training reports:", sum(1 for _ in client.iter_trials_metrics([trial.id], "training")))
# Columns for a chart, read from the master's packed per-metric series (much faster):
curve = trial.metric_series("validation_loss", "validation")
print("validation_loss points:", len(curve), list(curve.steps)[:3])

# %% [markdown]
# ## Log queries

# %%
print([x.rstrip() for x in trial.logs(tail=2)])
print([x.rstrip() for x in trial.logs(search_text="validation_loss=0.8", head=3)])
# iter_log_lines gives structured lines (rank, stream, level, time).
print("errors:", [str(x) for x in trial.iter_log_lines(levels=[LogLevel.ERROR])])

# %% [markdown]
# ## Model registry

# %%
model = client.create_model("walkthrough-model", description="toy linear fit")
version = model.register_version(ckpt.uuid, comment="from the walkthrough")
print(model.name, "version", version.version, "->", version.checkpoint.uuid)
print([v.version for v in model.list_versions()])

# %% [markdown]
# ## Direct instantiation: helper methods without a fetch
# `Trial(id, session)` sends no request; reading an attribute fetches it once.

# %%
blank = Trial(trial.id, d)
print("hydrated?", blank.hydrated)
print(blank.state, "hydrated?", blank.hydrated)
try:
    Experiment(10**6, d).reload()
except NotFoundError as e:
    print("NotFoundError:", e)

# %% [markdown]
# ## Listing and tidying up

# %%
print([(e.id, e.name, e.state.value) for e in client.list_experiments(name="walkthrough")])
exp.archive()
print("archived:", exp.archived)
model.delete()

# %%
if local_master is not None:
    d.close()
    local_master.stop()
