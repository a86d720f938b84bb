"""Domain values to JSON for the REST API, in one module (the REST twin of ``convert``).

JSON has no NaN or infinity; like the gRPC API's JSON fields, they are written as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (``Number("NaN")`` in a browser reads them back).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

from master_server import domain


def jsonable(v: Any) -> Any:
    """``v`` with every non-finite float replaced by its string name."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


class JSON(JSONResponse):
    """A JSON response that accepts NaN/infinity (written as strings) and is compact."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, separators=(",", ":"), allow_nan=False)
        except ValueError:
            text = json.dumps(jsonable(content), separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")


def experiment(e: domain.Experiment, best: float | None = None) -> dict[str, Any]:
    searcher = e.config.get("searcher", {}) if isinstance(e.config, dict) else {}
    return {
        "id": e.id,
        "name": e.name,
        "description": e.description,
        "labels": list(e.labels),
        "state": e.state.value,
        "archived": e.archived,
        "progress": e.progress,
        "project_id": e.project_id,
        "workspace_id": e.workspace_id,
        "start_time": e.start_time,
        "end_time": e.end_time,
        "searcher_name": e.searcher_name,
        "searcher_metric": searcher.get("metric"),
        "smaller_is_better": bool(searcher.get("smaller_is_better", True)),
        "best_searcher_metric": best,
        "num_trials": e.num_trials,
        "unmanaged": e.unmanaged,
        "error": e.error,
        "config": e.config,
    }


def trial(t: domain.Trial, searcher_metric: float | None = None) -> dict[str, Any]:
    return {
        "id": t.id,
        "experiment_id": t.experiment_id,
        "request_id": t.request_id,
        "hparams": t.hparams,
        "state": t.state.value,
        "summary_metrics": t.summary_metrics,
        "searcher_metric": searcher_metric,
        "restarts": t.restarts,
        "run_id": t.run_id,
        "start_time": t.start_time,
        "end_time": t.end_time,
        "latest_checkpoint_uuid": t.latest_checkpoint_uuid,
        "warm_start_checkpoint_uuid": t.warm_start_checkpoint_uuid,
        "steps_completed": t.steps_completed,
        "progress": t.progress,
        "exit_reason": t.exit_reason,
    }


def checkpoint(c: domain.Checkpoint) -> dict[str, Any]:
    return {
        "uuid": c.uuid,
        "trial_id": c.trial_id,
        "experiment_id": c.experiment_id,
        "state": c.state.value,
        "steps_completed": c.steps_completed,
        "resources": c.resources,
        "size_bytes": sum(c.resources.values()),
        "metadata": c.metadata,
        "storage": c.storage,
        "report_time": c.report_time,
        "training_metrics": c.training_metrics,
        "validation_metrics": c.validation_metrics,
    }


def log_line(x: domain.LogLine) -> dict[str, Any]:
    return {
        "id": x.id,
        "trial_id": x.trial_id,
        "timestamp": x.timestamp,
        "message": x.message,
        "rank": x.rank,
        "stream": x.stream,
        "level": x.level,
        "run_id": x.run_id,
    }


def model(m: domain.Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "metadata": m.metadata,
        "labels": list(m.labels),
        "archived": m.archived,
        "creation_time": m.creation_time,
        "last_updated_time": m.last_updated_time,
        "num_versions": m.num_versions,
        "workspace_id": m.workspace_id,
    }


def model_version(v: domain.ModelVersion, ckpt: domain.Checkpoint | None) -> dict[str, Any]:
    return {
        "id": v.id,
        "model_id": v.model_id,
        "version": v.version,
        "name": v.name,
        "comment": v.comment,
        "metadata": v.metadata,
        "labels": list(v.labels),
        "checkpoint_uuid": v.checkpoint_uuid,
        "checkpoint": checkpoint(ckpt) if ckpt is not None else None,
        "creation_time": v.creation_time,
    }
