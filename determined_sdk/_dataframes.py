"""pandas DataFrames of trials and metrics (pandas is the optional ``pandas`` extra).

Column names are flat and dotted: hyperparameters as ``hparams.<path>`` (nested ones joined
with dots), summary metrics as ``<group>.<metric>.<stat>`` with groups named as reported
(``training``, ``validation``, user groups) and stats ``min``, ``max``, ``last``, ``mean``,
``count``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from determined_sdk import errors

if TYPE_CHECKING:
    import pandas

    from determined_sdk._trial import Trial, TrialMetrics

_SUMMARY_GROUPS = {"avg_metrics": "training", "validation_metrics": "validation"}
_STATS = ("min", "max", "last", "mean", "count")


def require_pandas() -> Any:
    """The pandas module, or a clear error naming the extra that installs it."""
    try:
        import pandas
    except ImportError:
        raise errors.FailedPreconditionError(
            "DataFrames need pandas: pip install 'determined-sdk[pandas]' (or pip install pandas)"
        ) from None
    return pandas


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def _time(ts: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC) if ts else None


def trials_dataframe(trials: Iterable[Trial]) -> pandas.DataFrame:
    """One row per trial: ids, state, progress, times, flattened hparams, summary metrics."""
    pd = require_pandas()
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "trial_id": t.id,
            "experiment_id": t.experiment_id,
            "state": t.state.value,
            "restarts": t.restarts,
            "steps_completed": t.steps_completed,
            "searcher_metric": t.searcher_metric,
            "start_time": _time(t.start_time),
            "end_time": _time(t.end_time),
            "latest_checkpoint_uuid": t.latest_checkpoint_uuid,
        }
        _flatten("hparams", t.hparams, row)
        for group, metrics in t.summary_metrics.items():
            name = _SUMMARY_GROUPS.get(group, group)
            for metric, stats in metrics.items():
                for stat in _STATS:
                    row[f"{name}.{metric}.{stat}"] = stats.get(stat)
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_dataframe(reports: Iterable[TrialMetrics]) -> pandas.DataFrame:
    """One row per report: trial id, group, steps, time, then one column per metric name
    (NaN where a report lacks that metric)."""
    pd = require_pandas()
    trial_ids: list[int] = []
    groups: list[str] = []
    steps: list[int] = []
    stamps: list[float] = []
    values: dict[str, list[float | None]] = {}
    for n, r in enumerate(reports, start=1):
        trial_ids.append(r.trial_id)
        groups.append(r.group)
        steps.append(r.steps_completed)
        stamps.append(r.timestamp)
        for k, v in r.metrics.items():
            col = values.get(k)
            if col is None:
                col = values[k] = [None] * (n - 1)
            col.append(v)
        for col in values.values():
            if len(col) < n:
                col.append(None)
    data: dict[str, Any] = {
        "trial_id": trial_ids,
        "group": groups,
        "steps_completed": steps,
        "timestamp": pd.to_datetime(stamps, unit="s", utc=True),
    }
    for k in sorted(values):
        name = k if k not in data else f"metrics.{k}"  # a metric called "group" stays apart
        data[name] = [math.nan if v is None else v for v in values[k]]
    return pd.DataFrame(data)
