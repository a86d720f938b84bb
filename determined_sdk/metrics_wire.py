"""Metric reports on the wire, as columns both ways: packing them into the columnar
``ReportMetricsRequest`` (and reading it back), and reading the ``MetricColumns`` pages that
``StreamMetrics`` answers with.

One report is ``(group, steps_completed, {name: value}, timestamp)``. The request holds a whole
batch as parallel arrays (see ``proto/determined_sdk/proto/trial.proto``), so packing and
unpacking work on whole lists instead of one protobuf sub-message per report.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

from determined_sdk.errors import InvalidArgumentError
from determined_sdk.proto import metrics_pb2, trial_pb2

Report = tuple[str, int, Mapping[str, float], float]
UnpackedReport = tuple[str, int, dict[str, float], float]


def pack_reports(
    trial_id: int, batch_id: str, reports: Iterable[Report]
) -> trial_pb2.ReportMetricsRequest:
    """Build one request from ``(group, steps_completed, metrics, timestamp)`` tuples."""
    groups: list[str] = []
    steps: list[int] = []
    stamps: list[float] = []
    counts: list[int] = []
    names: list[str] = []
    values: list[float] = []
    for group, step, metrics, timestamp in reports:
        groups.append(group)
        steps.append(step)
        stamps.append(timestamp)
        counts.append(len(metrics))
        names.extend(metrics)
        values.extend(metrics.values())
    return trial_pb2.ReportMetricsRequest(
        trial_id=trial_id,
        batch_id=batch_id,
        groups=groups,
        steps_completed=steps,
        timestamps=stamps,
        metric_counts=counts,
        names=names,
        values=values,
    )


def unpack_reports(request: trial_pb2.ReportMetricsRequest) -> Iterator[UnpackedReport]:
    """The reports of a request, in order; the metrics of each report are a new dict.

    Raises:
        InvalidArgumentError: the arrays do not line up (naming the field at fault).
    """
    groups, steps, stamps, counts, names, values = unpack_columns(request)
    at = 0
    for i in range(len(groups)):
        c = counts[i]
        if c == 1:  # the common case, without slicing
            metrics = {names[at]: values[at]}
        else:
            metrics = dict(zip(names[at : at + c], values[at : at + c], strict=True))
        yield groups[i], steps[i], metrics, stamps[i]
        at += c


Columns = tuple[list[str], list[int], list[float], list[int], list[str], list[float]]


def unpack_columns(request: trial_pb2.ReportMetricsRequest) -> Columns:
    """The request's arrays as lists (groups, steps, timestamps, counts, names, values), checked
    to line up.

    Raises:
        InvalidArgumentError: the arrays do not line up (naming the field at fault).
    """
    groups = list(request.groups)
    steps = list(request.steps_completed)
    stamps = list(request.timestamps)
    counts = list(request.metric_counts)
    names = list(request.names)
    values = list(request.values)
    n = len(groups)
    for field, arr in (
        ("steps_completed", steps),
        ("timestamps", stamps),
        ("metric_counts", counts),
    ):
        if len(arr) != n:
            raise InvalidArgumentError(f"{field}: {len(arr)} entries for {n} reports (groups)")
    if len(names) != len(values):
        raise InvalidArgumentError(f"values: {len(values)} entries for {len(names)} names")
    if sum(counts) != len(names):
        raise InvalidArgumentError(
            f"metric_counts: they add up to {sum(counts)}, but there are {len(names)} names"
        )
    return groups, steps, stamps, counts, names, values


# -- the read side: pages of stored points (``MetricColumns``) ----------------------------------

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_decode = json.JSONDecoder().decode


def decode_metrics_json(array_json: str) -> list[dict[str, float]]:
    """A JSON array of ``{name: value}`` objects as dicts, in one C-level decode.

    Non-finite values travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
    (strict JSON has no literal for them); they come back as floats.

    Raises:
        InvalidArgumentError: Not a JSON array of objects.
    """
    try:
        out = _decode(array_json) if array_json else []
    except ValueError as e:
        raise InvalidArgumentError(f"metrics_json: not a JSON array ({e})") from None
    if not isinstance(out, list):
        raise InvalidArgumentError("metrics_json: not a JSON array")
    if '"NaN"' in array_json or 'Infinity"' in array_json:
        for d in out:
            for k, v in d.items():
                if isinstance(v, str):
                    d[k] = _NON_FINITE.get(v, v)
    return out


def decode_metrics_array(payloads: Sequence[str]) -> list[dict[str, float]]:
    """Stored JSON objects (one per point) as dicts, decoded together in one pass."""
    return decode_metrics_json(join_metrics_json(payloads))


def join_metrics_json(payloads: Sequence[str]) -> str:
    """Stored JSON objects (one per point) as one JSON array string."""
    return "[" + ",".join(payloads) + "]" if payloads else "[]"


ColumnPoint = tuple[int, str, int, dict[str, float], float, int]


def iter_columns(cols: metrics_pb2.MetricColumns) -> Iterator[ColumnPoint]:
    """The points of a ``MetricColumns`` page as ``(trial_id, group, steps, metrics, time,
    run_id)`` (``run_id`` 0 where the master did not send one).

    The metrics of the whole page are decoded in one pass when the first point is asked for.

    Raises:
        InvalidArgumentError: The columns do not line up (naming the field at fault).
    """
    steps = list(cols.steps_completed)
    stamps = list(cols.timestamps)
    gids = list(cols.group_ids)
    n = len(steps)
    counts = list(cols.trial_counts)
    for field, length in (
        ("timestamps", len(stamps)),
        ("group_ids", len(gids)),
        ("trial_counts (sum)", sum(counts)),
    ):
        if length != n:
            raise InvalidArgumentError(f"{field}: {length} entries for {n} points")
    if len(counts) != len(cols.trial_ids):
        raise InvalidArgumentError(
            f"trial_counts: {len(counts)} entries for {len(cols.trial_ids)} trial_ids"
        )
    names = list(cols.group_names)
    if gids and max(gids) >= len(names):
        raise InvalidArgumentError(f"group_ids: {max(gids)} is not an index of group_names")
    metrics = decode_metrics_json(cols.metrics_json)
    if len(metrics) != n:
        raise InvalidArgumentError(f"metrics_json: {len(metrics)} objects for {n} points")
    trials = itertools.chain.from_iterable(map(itertools.repeat, cols.trial_ids, counts))
    groups = map(names.__getitem__, gids)
    runs: Iterable[int] = cols.trial_run_ids or itertools.repeat(0, n)
    if cols.trial_run_ids and len(cols.trial_run_ids) != n:
        raise InvalidArgumentError(
            f"trial_run_ids: {len(cols.trial_run_ids)} entries for {n} points"
        )
    return zip(trials, groups, steps, metrics, stamps, runs, strict=True)
