"""Metric series for charts: read through the store's read path, split by name, downsampled.

The REST API's ``/trials/{id}/metrics`` and ``/experiments/{id}/metrics`` answer with columns
(``steps``, ``times``, ``values``) per metric name, so a browser can hand them to a chart as
they are, thinned by :func:`master_server.downsample.minmax_indices` (the reads and checks
that gRPC shares are in :mod:`master_server.charts`).

A page that polls an experiment of 100 trials while two of them run must not re-read the
other 98 every time: :class:`SeriesReader` keeps each trial's downsampled series with a version
taken from the trial's summary (updated in the same transaction as its points, per the store
contract), and reads again only the trials whose version moved.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from master_server import charts
from master_server.charts import SUMMARY_KEY
from master_server.domain import MetricQuery, SeriesColumns, Trial
from master_server.store.base import Store


def series(
    store: Store,
    trial_ids: Sequence[int],
    group: str,
    names: Sequence[str],
    max_points: int,
) -> dict[int, dict[str, Any]]:
    """Per trial: ``{"series": {name: {"steps", "times", "values", "total_points"}}}``, names
    sorted.

    Read from the store's packed series (:meth:`Store.metric_series`: a few rows per series,
    not a row per point), which hold exactly the points of the store's read path; the answer
    is the one :func:`exact_series` computes from ``read_metrics``.

    Args:
        store: the master's store.
        trial_ids: trials to read, each of them existing.
        group: the metric group ("training", "validation", or a user group).
        names: metric names to keep; empty keeps every name.
        max_points: per series, the most points to answer with (0 = all).
    """
    return {
        tid: {"series": {name: _lists(c, total) for name, (c, total) in by_name.items()}}
        for tid, by_name in charts.read_series(store, trial_ids, group, names, max_points).items()
    }


def exact_series(
    store: Store,
    trial_ids: Sequence[int],
    group: str,
    names: Sequence[str],
    max_points: int,
) -> dict[int, dict[str, Any]]:
    """:func:`series` computed from every point of the store's read path (``read_metrics``):
    the reference the packed series must match."""
    cols = read_columns(store, trial_ids, group, names)
    return {
        tid: {"series": {n: _thin(*by_name[n], max_points) for n in sorted(by_name)}}
        for tid, by_name in cols.items()
    }


def _thin(
    steps: Sequence[int], times: Sequence[float], values: Sequence[float], max_points: int
) -> dict[str, Any]:
    """One series' columns, downsampled to ``max_points`` (0: every point) as lists."""
    c = SeriesColumns(array("q", steps), array("d", times), array("d", values))
    return _lists(charts.thin(c, max_points), len(c))


def _lists(c: SeriesColumns, total: int) -> dict[str, Any]:
    """One (thinned) series as the REST API answers it."""
    return {
        "steps": c.steps.tolist(),
        "times": c.times.tolist(),
        "values": c.values.tolist(),
        "total_points": total,
    }


Columns = tuple[list[int], list[float], list[float]]  # steps, timestamps, values

# Chart reads take whole trials at once (one query per 100k points of a trial).
_PAGE_SIZE = 100_000


def read_columns(
    store: Store, trial_ids: Sequence[int], group: str, names: Sequence[str]
) -> dict[int, dict[str, Columns]]:
    """Per trial and metric name, the (steps, times, values) columns of one group.

    With ``names`` the database picks the values out (see :mod:`master_server.store.
    metrics_read`) and they arrive as columns: no object per point. Without, each page's
    JSON is decoded in one pass and split by name.
    """
    cols: dict[int, dict[str, Columns]] = {tid: {} for tid in trial_ids}
    q = MetricQuery(
        tuple(trial_ids), group=group, names=tuple(dict.fromkeys(names)), page_size=_PAGE_SIZE
    )
    for page in store.read_metrics(q):
        at = 0
        decoded = None if page.names else page.metrics()
        steps, times = list(page.steps), list(page.timestamps)  # indexed per point below
        for tid, count in zip(page.trial_ids, page.trial_counts, strict=True):
            end = at + count
            by_name = cols[tid]
            if decoded is None:
                for name, values in zip(page.names, page.values, strict=True):
                    _extend(by_name, name, steps[at:end], times[at:end], values[at:end])
            else:
                for i in range(at, end):
                    for name, value in decoded[i].items():
                        c = by_name.get(name)
                        if c is None:
                            c = by_name[name] = ([], [], [])
                        c[0].append(steps[i])
                        c[1].append(times[i])
                        c[2].append(value)
            at = end
    return cols


def _extend(
    by_name: dict[str, Columns],
    name: str,
    steps: Sequence[int],
    times: Sequence[float],
    values: Sequence[float | None],
) -> None:
    """Append one name's slice of a page (points that lack the name are left out)."""
    if None in values:
        kept = [i for i, v in enumerate(values) if v is not None]
        if not kept:
            return
        steps = [steps[i] for i in kept]
        times = [times[i] for i in kept]
        values = [values[i] for i in kept]
    c = by_name.get(name)
    if c is None:
        c = by_name[name] = ([], [], [])
    c[0].extend(steps)
    c[1].extend(times)
    c[2].extend(values)  # type: ignore[arg-type]  # None left out above


class SeriesReader:
    """:func:`series` with an LRU cache of downsampled series, keyed on each trial's version.

    Args:
        store: the master's store.
        max_entries: (trial, group, names, max_points) entries kept.
        max_cached_points: series longer than this per trial (after downsampling) are not kept.
    """

    def __init__(self, store: Store, max_entries: int = 4096, max_cached_points: int = 5000):
        self.store = store
        self.max_entries = max_entries
        self.max_cached_points = max_cached_points
        self._cache: OrderedDict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # trials read from the store (the rest came from the cache)

    def clear(self) -> None:
        """Forget every cached series (benchmarks measure cold reads with it)."""
        with self._lock:
            self._cache.clear()

    def series(
        self, trials: Sequence[Trial], group: str, names: Sequence[str], max_points: int
    ) -> dict[int, dict[str, Any]]:
        """Like :func:`series`, for trial objects fetched just before (their summaries date
        the cache entries)."""
        cacheable = 0 < max_points <= self.max_cached_points
        wanted = tuple(sorted(set(names)))
        out: dict[int, dict[str, Any]] = {}
        stale: list[Trial] = []
        with self._lock:
            for t in trials:
                hit = self._cache.get((t.id, group, wanted, max_points)) if cacheable else None
                if hit is not None and hit[0] == _version(t, group):
                    self._cache.move_to_end((t.id, group, wanted, max_points))
                    out[t.id] = hit[1]
                else:
                    stale.append(t)
        if stale:
            fresh = series(self.store, [t.id for t in stale], group, wanted, max_points)
            with self._lock:
                self.reads += len(stale)
                for t in stale:
                    out[t.id] = fresh[t.id]
                    if cacheable:
                        self._cache[(t.id, group, wanted, max_points)] = (
                            _version(t, group),
                            fresh[t.id],
                        )
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return {t.id: out[t.id] for t in trials}


def _version(t: Trial, group: str) -> tuple[Any, ...]:
    """Changes whenever a point of ``group`` is added to ``t`` (the summary counts move)."""
    summary = t.summary_metrics.get(SUMMARY_KEY.get(group, group))
    counts: tuple[Any, ...] = ()
    if isinstance(summary, dict):
        counts = tuple(
            sorted((n, m.get("count")) for n, m in summary.items() if isinstance(m, dict))
        )
    return (t.run_id, t.restarts, t.steps_completed, counts)
