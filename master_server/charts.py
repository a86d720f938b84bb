"""Chart reads of metric series, for every transport: checks, the groups trials reported, and
per trial and metric name the packed columns, downsampled.

A chart wants, per trial and metric name, the points a names-filtered read of ``metrics``
gives (steps, report times, values). The store keeps them as packed columns
(:meth:`Store.metric_series`, a few rows per series instead of a row per point); this module
checks the arguments the REST API (``master_server.web.metrics``) and gRPC's
``StreamMetricSeries`` share, reads them and thins them with
:func:`master_server.downsample.minmax_indices`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from determined_sdk.errors import InvalidArgumentError
from master_server.domain import SeriesColumns, Trial
from master_server.downsample import minmax_indices
from master_server.store.base import Store

MAX_POINTS_LIMIT = 100_000
MAX_NAMES = 100
MAX_NAME_CHARS = 1000
#: Summary keys of the two built-in groups (see the store contract); other groups keep their
#: name.
SUMMARY_KEY = {"training": "avg_metrics", "validation": "validation_metrics"}
_GROUP_OF_KEY = {v: k for k, v in SUMMARY_KEY.items()}


def check_group(group: str) -> str:
    """``group`` if it can name a metric group, else InvalidArgumentError naming ``group``."""
    if not group or not group.strip():
        raise InvalidArgumentError("group: must not be empty (e.g. 'training' or 'validation')")
    if "\x00" in group or len(group) > MAX_NAME_CHARS:
        raise InvalidArgumentError(
            f"group: {group[:40]!r} is not a metric group (no NUL, at most {MAX_NAME_CHARS} "
            "characters)"
        )
    return group


def check_names(names: Sequence[str]) -> list[str]:
    """The ``names`` query values, checked: at most :data:`MAX_NAMES`, each a name a metric
    can have (no NUL, at most :data:`MAX_NAME_CHARS` characters)."""
    if len(names) > MAX_NAMES:
        raise InvalidArgumentError(f"names: at most {MAX_NAMES} names, got {len(names)}")
    for n in names:
        if "\x00" in n or len(n) > MAX_NAME_CHARS:
            raise InvalidArgumentError(
                f"names: {n[:40]!r} is not a metric name (no NUL, at most {MAX_NAME_CHARS} "
                "characters)"
            )
    return list(names)


def check_max_points(max_points: int) -> int:
    """``max_points`` if it is 0 (every point) or within [4, :data:`MAX_POINTS_LIMIT`]."""
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


def check_known_group(trials: Sequence[Trial], group: str) -> str:
    """``group`` if it is ``training``, ``validation`` or a group one of ``trials`` reported
    (read from their summaries), else InvalidArgumentError naming the groups they have: a
    misspelt group would otherwise read as a trial without points."""
    if group in SUMMARY_KEY:
        return group
    known = metric_names(trials)
    if group not in known:
        groups = sorted({*SUMMARY_KEY, *known})
        ids = ", ".join(str(t.id) for t in trials[:10]) + (", ..." if len(trials) > 10 else "")
        raise InvalidArgumentError(
            f"group: no metrics of group {group[:40]!r} in trial(s) {ids}; their groups: "
            + ", ".join(repr(g) for g in groups)
        )
    return group


def thin(c: SeriesColumns, max_points: int) -> SeriesColumns:
    """``c`` downsampled to ``max_points`` (0: every point, ``c`` itself) by min/max per
    bucket (:func:`minmax_indices`)."""
    if not max_points or len(c) <= max_points:
        return c
    keep = minmax_indices(c.values.tolist(), max_points)
    s, t, v = c.steps, c.times, c.values
    return SeriesColumns(
        array("q", [s[i] for i in keep]),
        array("d", [t[i] for i in keep]),
        array("d", [v[i] for i in keep]),
    )


def read_series(
    store: Store, trial_ids: Sequence[int], group: str, names: Sequence[str], max_points: int
) -> dict[int, dict[str, tuple[SeriesColumns, int]]]:
    """Per trial (each existing) and metric name of ``group`` (``names``; empty: every name,
    sorted), the series' columns thinned to ``max_points`` (0: every point) and its number of
    points before thinning; a name without points is absent."""
    return {
        tid: {name: (thin(c, max_points), len(c)) for name, c in by_name.items()}
        for tid, by_name in store.metric_series(trial_ids, group, names).items()
    }
