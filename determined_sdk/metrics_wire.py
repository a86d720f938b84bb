"""Metric reports on the wire, as columns both ways: packing them into the columnar
``ReportMetricsRequest`` (and reading it back), and reading the ``MetricColumns`` pages that
``StreamMetrics`` answers with, and the packed columns of ``StreamMetricSeries``
(:func:`pack_column`, :func:`unpack_column`).

One report is ``(group, steps_completed, {name: value}, timestamp)``. The request holds a whole
batch as parallel arrays (see ``proto/determined_sdk/proto/trial.proto``), so packing and
unpacking work on whole lists instead of one protobuf sub-message per report.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

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

#: ``MetricColumns.timestamps_json`` holds each timestamp times this, as an integer.
TIMESTAMPS_JSON_SCALE = 2**22

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_decode = json.JSONDecoder().decode


def decode_metrics_json(array_json: str) -> list[dict[str, float]]:
    """A JSON array of ``{name: value}`` objects as dicts, in one C-level decode.

    Non-finite values travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
    (strict JSON has no literal for them); they come back as floats.

    Raises:
        InvalidArgumentError: Not a JSON array of objects.
    """
    if not array_json:
        return []
    try:
        # orjson decodes a page about three times as fast as the standard library (most of a
        # million-point read on the client); what it refuses (an integer past 64 bits, a
        # bare NaN) the standard decoder still reads or explains.
        out = orjson.loads(array_json)
    except orjson.JSONDecodeError:
        try:
            out = _decode(array_json)
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


def metrics_from_columns(
    names: Sequence[str], values: Sequence[Sequence[float | None]]
) -> list[dict[str, float]]:
    """Per point ``{name: value}`` from one value column per name (None: the point lacks it)."""
    if len(names) == 1:
        name = names[0]
        col = values[0]
        if None not in col:  # the usual case: every point of a one-name read has it
            return [{name: v} for v in col]  # type: ignore[dict-item]  # no None in col
        return [{name: v} if v is not None else {} for v in col]
    return [
        {n: v for n, v in zip(names, point, strict=True) if v is not None}
        for point in zip(*values, strict=True)
    ]


def pack_value_columns(
    names: Sequence[str], values: Sequence[Sequence[float | None]]
) -> tuple[list[float], list[int]]:
    """``MetricColumns.values`` and ``absent`` for value columns (absent values as 0)."""
    flat: list[float] = []
    absent: list[int] = []
    for col in values:
        if None in col:
            at = len(flat)
            absent.extend(at + i for i, v in enumerate(col) if v is None)
            flat.extend(0.0 if v is None else v for v in col)
        else:
            flat.extend(col)  # type: ignore[arg-type]  # no None in it
    return flat, absent


def unpack_value_columns(cols: metrics_pb2.MetricColumns, n: int) -> list[dict[str, float]]:
    """Per point ``{name: value}`` of a names-filtered page (``value_names`` set).

    Raises:
        InvalidArgumentError: The value columns do not line up with the points.
    """
    names = list(cols.value_names)
    flat: list[float | None] = list(cols.values)
    if len(flat) != len(names) * n:
        raise InvalidArgumentError(
            f"values: {len(flat)} entries for {len(names)} names x {n} points"
        )
    for i in cols.absent:
        if i >= len(flat):
            raise InvalidArgumentError(f"absent: {i} is not an index of values")
        flat[i] = None
    return metrics_from_columns(names, [flat[k * n : (k + 1) * n] for k in range(len(names))])


ColumnPoint = tuple[int, str, int, dict[str, float], float, int]


def iter_columns(cols: metrics_pb2.MetricColumns) -> Iterator[ColumnPoint]:
    """The points of a ``MetricColumns`` page as ``(trial_id, group, steps, metrics, time,
    run_id)`` (``run_id`` 0 where the master did not send one).

    Raises:
        InvalidArgumentError: The columns do not line up (naming the field at fault).
    """
    return zip(*page_columns(cols), strict=True)


PageColumns = tuple[
    Iterable[int], Iterable[str], list[int], list[dict[str, float]], list[float], Iterable[int]
]


def _json_column(text: str, field: str, n: int) -> list[Any]:
    """A ``*_json`` column of a page: a JSON array of ``n`` entries."""
    try:
        out = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidArgumentError(f"{field}: not a JSON array ({e})") from None
    if not isinstance(out, list) or len(out) != n:
        got = f"{len(out)} entries" if isinstance(out, list) else "not a JSON array"
        raise InvalidArgumentError(f"{field}: {got} for {n} points")
    return out


_TIMESTAMPS_JSON_UNIT = 1 / TIMESTAMPS_JSON_SCALE


def page_columns(cols: metrics_pb2.MetricColumns) -> PageColumns:
    """A ``MetricColumns`` page as six columns of equal length: trial ids, groups, steps,
    metrics, times and run ids (a list; ``repeat(0)`` where the master did not send them).
    The metrics of the whole page are decoded in one pass; columns sent as JSON text
    (``*_json``) likewise.

    Raises:
        InvalidArgumentError: The columns do not line up (naming the field at fault).
    """
    counts = list(cols.trial_counts)
    n = sum(counts)
    if len(counts) != len(cols.trial_ids):
        raise InvalidArgumentError(
            f"trial_counts: {len(counts)} entries for {len(cols.trial_ids)} trial_ids"
        )
    if cols.steps_completed_json:
        steps = _json_column(cols.steps_completed_json, "steps_completed_json", n)
    else:
        steps = list(cols.steps_completed)
    if len(steps) != n:
        raise InvalidArgumentError(f"trial_counts (sum): {n} entries for {len(steps)} points")
    if cols.timestamps_json:
        scaled = _json_column(cols.timestamps_json, "timestamps_json", n)
        stamps: list[float] = list(map(_TIMESTAMPS_JSON_UNIT.__mul__, scaled))
    else:
        stamps = list(cols.timestamps)
        if len(stamps) != n:
            raise InvalidArgumentError(f"timestamps: {len(stamps)} entries for {n} points")
    groups: Iterable[str]
    if cols.groups_json:
        groups = _json_column(cols.groups_json, "groups_json", n)
    else:
        names = list(cols.group_names)
        gids = list(cols.group_ids)
        if len(gids) != n:
            raise InvalidArgumentError(f"group_ids: {len(gids)} entries for {n} points")
        try:
            if len(names) == 1 and not any(gids):
                groups = itertools.repeat(names[0], n)
            else:
                groups = list(map(names.__getitem__, gids))
        except IndexError:
            raise InvalidArgumentError(
                f"group_ids: {max(gids)} is not an index of group_names"
            ) from None
    if cols.value_names:
        metrics = unpack_value_columns(cols, n)
    else:
        metrics = decode_metrics_json(cols.metrics_json)
    if len(metrics) != n:
        raise InvalidArgumentError(f"metrics_json: {len(metrics)} objects for {n} points")
    if len(counts) == 1:
        trials: Iterable[int] = itertools.repeat(cols.trial_ids[0], n)
    else:
        trials = itertools.chain.from_iterable(map(itertools.repeat, cols.trial_ids, counts))
    runs: Iterable[int]
    if cols.trial_run_ids_json:
        runs = _json_column(cols.trial_run_ids_json, "trial_run_ids_json", n)
    elif cols.trial_run_ids:
        runs = list(cols.trial_run_ids)
        if len(runs) != n:
            raise InvalidArgumentError(f"trial_run_ids: {len(runs)} entries for {n} points")
    else:
        runs = itertools.repeat(0, n)
    return trials, groups, steps, metrics, stamps, runs


# -- packed columns (StreamMetricSeries, and the store's metric_series rows) --------------------

_BIG_ENDIAN = sys.byteorder == "big"


def pack_column(a: array[Any]) -> bytes:
    """The little-endian bytes of ``a`` (``q``: int64, ``d``: float64), the same on every
    machine."""
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def unpack_column(typecode: str, blobs: Iterable[bytes]) -> array[Any]:
    """The array of ``typecode`` that :func:`pack_column` packed into ``blobs`` (joined in
    order)."""
    a: array[Any] = array(typecode)
    for b in blobs:
        a.frombytes(b)
    if _BIG_ENDIAN:
        a.byteswap()
    return a
