"""Metric series for charts: read through the store's read path, split by name, downsampled.

The REST API's ``/trials/{id}/metrics`` and ``/experiments/{id}/metrics`` answer with columns
(``steps``, ``times``, ``values``) per metric name, so a browser can hand them to a chart as
they are, thinned by :func:`master_server.web.downsample.minmax_indices`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from determined_sdk.errors import InvalidArgumentError
from master_server.domain import Trial
from master_server.store.base import Store
from master_server.web.downsample import minmax_indices

MAX_POINTS_LIMIT = 100_000
# Summary keys of the two built-in groups (see the store contract); other groups keep their name.
_SUMMARY_KEY = {"training": "avg_metrics", "validation": "validation_metrics"}
_GROUP_OF_KEY = {v: k for k, v in _SUMMARY_KEY.items()}


def check_group(group: str) -> str:
    if not group or not group.strip():
        raise InvalidArgumentError("group: must not be empty (e.g. 'training' or 'validation')")
    return group


def check_max_points(max_points: int) -> int:
    if not (max_points == 0 or 4 <= max_points <= MAX_POINTS_LIMIT):
        raise InvalidArgumentError(
            f"max_points: must be 0 (every point) or within [4, {MAX_POINTS_LIMIT}], "
            f"got {max_points}"
        )
    return max_points


def metric_names(trials: Iterable[Trial]) -> dict[str, list[str]]:
    """Metric names per group reported by ``trials``, read from their summaries (no scan)."""
    out: dict[str, set[str]] = {}
    for t in trials:
        for key, metrics in t.summary_metrics.items():
            if isinstance(metrics, dict):
                out.setdefault(_GROUP_OF_KEY.get(key, key), set()).update(metrics)
    return {g: sorted(names) for g, names in sorted(out.items())}


def series(
    store: Store,
    trial_ids: Sequence[int],
    group: str,
    names: Sequence[str],
    max_points: int,
) -> dict[int, dict[str, Any]]:
    """Per trial: ``{"series": {name: {"steps", "times", "values"}}, "total_points": n}``.

    Args:
        store: the master's store (its ``iter_metrics`` read path).
        trial_ids: trials to read, each of them existing.
        group: the metric group ("training", "validation", or a user group).
        names: metric names to keep; empty keeps every name.
        max_points: per series, the most points to answer with (0 = all).
    """
    cols = read_columns(store, trial_ids, group, names)
    out: dict[int, dict[str, Any]] = {}
    for tid, by_name in cols.items():
        s: dict[str, Any] = {}
        for name, (steps, times, values) in by_name.items():
            total = len(values)
            if max_points and total > max_points:
                keep = minmax_indices(values, max_points)
                steps = [steps[i] for i in keep]
                times = [times[i] for i in keep]
                values = [values[i] for i in keep]
            s[name] = {"steps": steps, "times": times, "values": values, "total_points": total}
        out[tid] = {"series": s}
    return out


Columns = tuple[list[int], list[float], list[float]]  # steps, timestamps, values


def read_columns(
    store: Store, trial_ids: Sequence[int], group: str, names: Sequence[str]
) -> dict[int, dict[str, Columns]]:
    """Per trial and metric name, the (steps, times, values) columns of one group.

    The one place that reads points for charts: a faster (columnar) store read slots in here.
    """
    wanted = set(names)
    cols: dict[int, dict[str, Columns]] = {tid: {} for tid in trial_ids}
    for page in store.iter_metrics(list(trial_ids), group):
        for p in page:
            by_name = cols[p.trial_id]
            for name, value in p.metrics.items():
                if wanted and name not in wanted:
                    continue
                c = by_name.get(name)
                if c is None:
                    c = by_name[name] = ([], [], [])
                c[0].append(p.steps_completed)
                c[1].append(p.timestamp)
                c[2].append(value)
    return cols
