"""Packing metric reports into the columnar ``ReportMetricsRequest``, and reading them back.

One report is ``(group, steps_completed, {name: value}, timestamp)``. The request holds a whole
batch as parallel arrays (see ``proto/determined_sdk/proto/trial.proto``), so packing and
unpacking work on whole lists instead of one protobuf sub-message per report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from determined_sdk.errors import InvalidArgumentError
from determined_sdk.proto import trial_pb2

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
