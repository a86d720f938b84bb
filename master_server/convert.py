"""All conversion between domain values and proto messages, in one module.

Servicers only deserialize a request, call a service, and serialize the answer with these.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from determined_sdk.errors import InvalidArgumentError
from determined_sdk.metrics_wire import (
    TIMESTAMPS_JSON_SCALE,
    join_metrics_json,
    pack_column,
    pack_value_columns,
    unpack_columns,
    unpack_reports,
)
from determined_sdk.proto import (
    checkpoint_pb2,
    common_pb2,
    experiment_pb2,
    logs_pb2,
    metrics_pb2,
    model_pb2,
    trial_pb2,
    workspace_pb2,
)
from master_server import domain
from master_server.domain import JsonColumn
from master_server.limits import loads_json

# -- enums -------------------------------------------------------------------------------------


_EXPERIMENT_STATES = {
    s: common_pb2.ExperimentState.Value(f"EXPERIMENT_STATE_{s.value}")
    for s in domain.ExperimentState
}


def experiment_state_to_proto(s: domain.ExperimentState) -> common_pb2.ExperimentState.ValueType:
    return _EXPERIMENT_STATES[s]


def experiment_state_from_proto(v: int) -> domain.ExperimentState:
    name = common_pb2.ExperimentState.Name(v)  # type: ignore[arg-type]
    if v == 0:
        raise InvalidArgumentError("states: EXPERIMENT_STATE_UNSPECIFIED is not a state")
    return domain.ExperimentState(name.removeprefix("EXPERIMENT_STATE_"))


def trial_state_to_proto(s: domain.TrialState) -> common_pb2.TrialState.ValueType:
    return common_pb2.TrialState.Value(f"TRIAL_STATE_{s.value}")


def trial_state_from_proto(v: int) -> domain.TrialState:
    if v == 0:
        raise InvalidArgumentError("states: TRIAL_STATE_UNSPECIFIED is not a state")
    return domain.TrialState(common_pb2.TrialState.Name(v).removeprefix("TRIAL_STATE_"))  # type: ignore[arg-type]


def checkpoint_state_to_proto(s: domain.CheckpointState) -> common_pb2.CheckpointState.ValueType:
    return common_pb2.CheckpointState.Value(f"CHECKPOINT_STATE_{s.value}")


def checkpoint_state_from_proto(v: int) -> domain.CheckpointState:
    if v == 0:
        raise InvalidArgumentError("states: CHECKPOINT_STATE_UNSPECIFIED is not a state")
    name = common_pb2.CheckpointState.Name(v)  # type: ignore[arg-type]
    return domain.CheckpointState(name.removeprefix("CHECKPOINT_STATE_"))


_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level_to_proto(level: str) -> logs_pb2.LogLevel.ValueType:
    return logs_pb2.LogLevel.Value(f"LOG_LEVEL_{level if level in _LEVELS else 'INFO'}")


def log_level_from_proto(v: int) -> str:
    if v == 0:
        return "INFO"
    return logs_pb2.LogLevel.Name(v).removeprefix("LOG_LEVEL_")  # type: ignore[arg-type]


# -- JSON fields -------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """JSON for the wire; non-finite floats are written as the strings "NaN"/"Infinity"."""
    return json.dumps(_finite(value), separators=(",", ":"))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def loads_dict(text: str, field: str, *, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a JSON object field of a request; an error names ``field``."""
    if not text:
        return {} if default is None else default
    v = loads_json(text, field)
    if not isinstance(v, dict):
        raise InvalidArgumentError(f"{field}: must be a JSON object, got {type(v).__name__}")
    return v


# -- resources ---------------------------------------------------------------------------------


def experiment_to_proto(e: domain.Experiment) -> experiment_pb2.Experiment:
    """The experiment's message, configs included (lists send summaries: see
    :func:`add_experiment_summaries` and :func:`fill_experiment_columns`)."""
    return experiment_pb2.Experiment(
        id=e.id,
        name=e.name,
        description=e.description,
        labels=e.labels,
        config_json=dumps(e.config),
        state=_EXPERIMENT_STATES[e.state],
        archived=e.archived,
        progress=e.progress,
        project_id=e.project_id,
        workspace_id=e.workspace_id,
        start_time=e.start_time,
        end_time=e.end_time or 0.0,
        searcher_name=e.searcher_name,
        num_trials=e.num_trials,
        unmanaged=e.unmanaged,
        original_config=e.original_config,
        parent_error=e.error,
        notes=e.notes,
    )


_STATE_OF_VALUE = {s.value: v for s, v in _EXPERIMENT_STATES.items()}


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> tuple[str, ...]:
    # Lists repeat the same few label sets over thousands of rows: decode each set once.
    return tuple(json.loads(text))


def add_experiment_summaries(
    out: RepeatedCompositeFieldContainer[experiment_pb2.Experiment],
    rows: Iterable[domain.ExperimentSummaryRow],
) -> None:
    """Append a summary message (as :func:`experiment_to_proto` with ``summary``, and the
    owner's ``username``) for each row to ``out``, built in place: the hot path of a list of
    10,000 experiments."""
    add, states = out.add, _STATE_OF_VALUE
    for (i, name, desc, labels, state, arch, prog, proj, ws, start, end, srch, n, unm, err, notes,
         user) in rows:  # fmt: skip
        # A None (end_time while not terminal, no owner) leaves its field unset: 0 or "".
        m = add(
            summary=True,
            id=i,
            name=name,
            labels=_labels(labels),
            state=states[state],
            progress=prog,
            project_id=proj,
            workspace_id=ws,
            start_time=start,
            end_time=end,
            searcher_name=srch,
            num_trials=n,
            username=user,
        )
        if desc or arch or unm or err or notes:  # usually empty: not passed to every add
            m.description = desc
            m.archived = arch
            m.unmanaged = unm
            m.parent_error = err
            m.notes = notes or ""


def fill_experiment_columns(
    out: experiment_pb2.ExperimentSummaryColumns, rows: Sequence[domain.ExperimentSummaryRow]
) -> None:
    """Set ``out`` to the summaries of ``rows``, column by column (the same values as
    :func:`add_experiment_summaries`): a C-level extend per field, no message per row. A
    usually empty field (description, archived, end_time, unmanaged, parent_error, notes,
    username) is left with no entries when every row has its default, as the message says."""
    if not rows:
        return
    (ids, names, desc, labels, states, arch, prog, proj, ws, start, end, srch, n, unm, err, notes,
     users) = zip(*rows, strict=True)  # fmt: skip
    out.id.extend(ids)
    out.name.extend(names)
    out.labels_json.extend(labels)
    state_of = _STATE_OF_VALUE
    out.state.extend([state_of[s] for s in states])
    out.progress.extend(prog)
    out.project_id.extend(proj)
    out.workspace_id.extend(ws)
    out.start_time.extend(start)
    out.searcher_name.extend(srch)
    out.num_trials.extend(n)
    if any(desc):
        out.description.extend(desc)
    if any(arch):
        out.archived.extend(map(bool, arch))
    if any(end):
        out.end_time.extend([t or 0.0 for t in end])  # None while not terminal
    if any(unm):
        out.unmanaged.extend(map(bool, unm))
    if any(err):
        out.parent_error.extend(err)
    if any(notes):
        out.notes.extend([x or "" for x in notes])
    if any(users):
        out.username.extend([u or "" for u in users])  # None: no owner


def trial_to_proto(t: domain.Trial, searcher_metric: float | None = None) -> trial_pb2.Trial:
    return trial_pb2.Trial(
        id=t.id,
        experiment_id=t.experiment_id,
        hparams_json=dumps(t.hparams),
        state=trial_state_to_proto(t.state),
        summary_metrics_json=dumps(t.summary_metrics),
        restarts=t.restarts,
        start_time=t.start_time,
        end_time=t.end_time or 0.0,
        latest_checkpoint_uuid=t.latest_checkpoint_uuid or "",
        warm_start_checkpoint_uuid=t.warm_start_checkpoint_uuid or "",
        steps_completed=t.steps_completed,
        progress=t.progress,
        has_searcher_metric=searcher_metric is not None,
        searcher_metric=searcher_metric if searcher_metric is not None else 0.0,
        run_id=t.run_id,
        exit_reason=t.exit_reason,
    )


def metric_reports_from_proto(request: trial_pb2.ReportMetricsRequest) -> list[domain.MetricReport]:
    """The reports of a columnar batch, checked (errors name the report and field).

    Checks run on whole columns first, so the per-report loop only builds values.
    """
    groups, steps, _, counts, _, _ = unpack_columns(request)
    if "" in groups:
        raise InvalidArgumentError(f"groups[{groups.index('')}]: must not be empty")
    if steps and min(steps) < 0:
        i = next(k for k, s in enumerate(steps) if s < 0)
        raise InvalidArgumentError(f"steps_completed[{i}]: must be >= 0, got {steps[i]}")
    report = domain.MetricReport
    out = [report(g, s, m, t) for g, s, m, t in unpack_reports(request)]
    for i, r in enumerate(out):
        if len(r.metrics) != counts[i]:
            raise InvalidArgumentError(f"names: report {i} names a metric twice")
    return out


def metric_point_to_proto(p: domain.MetricPoint) -> trial_pb2.MetricPoint:
    return trial_pb2.MetricPoint(
        group=p.group,
        steps_completed=p.steps_completed,
        metrics=p.metrics,
        timestamp=p.timestamp,
        trial_id=p.trial_id,
        trial_run_id=p.run_id,
        superseded=p.superseded,
    )


def metric_series_to_protos(
    series: Iterable[tuple[int, str, domain.SeriesColumns, int]], reply_points: int
) -> list[trial_pb2.StreamMetricSeriesResponse]:
    """``(trial_id, name, columns, total_points)`` series as ``StreamMetricSeries`` replies of
    at most ``reply_points`` points each (a longer series is split into consecutive pieces)."""
    out: list[trial_pb2.StreamMetricSeriesResponse] = []
    resp = trial_pb2.StreamMetricSeriesResponse()
    room = reply_points
    for tid, name, c, total in series:
        n, at = len(c), 0
        while True:
            k = min(n - at, room)
            resp.series.append(
                trial_pb2.MetricSeries(
                    trial_id=tid,
                    name=name,
                    total_points=total,
                    steps_completed=pack_column(c.steps[at : at + k]),
                    timestamps=pack_column(c.times[at : at + k]),
                    values=pack_column(c.values[at : at + k]),
                )
            )
            at += k
            room -= k
            if room == 0:
                out.append(resp)
                resp = trial_pb2.StreamMetricSeriesResponse()
                room = reply_points
            if at == n:
                break
    if resp.series:
        out.append(resp)
    return out


def metric_columns_to_proto(
    c: domain.MetricColumns,
    into: metrics_pb2.MetricColumns | None = None,
    *,
    json_columns: bool = False,
) -> metrics_pb2.MetricColumns:
    """A page of points as columns; the stored JSON is forwarded, not decoded (a
    names-filtered page sends its value columns instead).

    Args:
        c: The page.
        into: An empty message to fill (a response's field: a page is a few hundred kB that
            building it apart would copy).
        json_columns: The reader takes columns as JSON text: those the database gathered
            into text (:class:`~master_server.domain.JsonColumn`) are passed on undecoded.
    """
    msg = metrics_pb2.MetricColumns() if into is None else into
    msg.trial_ids.extend(c.trial_ids)
    msg.trial_counts.extend(c.trial_counts)
    if json_columns and isinstance(c.groups, JsonColumn):
        msg.groups_json = c.groups.text
    else:
        group_names = list(dict.fromkeys(c.groups))
        msg.group_names.extend(group_names)
        if len(group_names) == 1:
            msg.group_ids.extend([0] * len(c.groups))
        else:
            index = {g: i for i, g in enumerate(group_names)}
            msg.group_ids.extend(map(index.__getitem__, c.groups))
    if json_columns and isinstance(c.steps, JsonColumn):
        msg.steps_completed_json = c.steps.text
    else:
        msg.steps_completed.extend(c.steps)
    times = c.timestamps
    if json_columns and isinstance(times, JsonColumn) and times.unit == 1 / TIMESTAMPS_JSON_SCALE:
        msg.timestamps_json = times.text
    else:
        msg.timestamps.extend(times)
    if json_columns and isinstance(c.run_ids, JsonColumn):
        msg.trial_run_ids_json = c.run_ids.text
    else:
        msg.trial_run_ids.extend(c.run_ids)
    if any(c.superseded):
        msg.superseded.extend(c.superseded)
    if c.names:
        values, absent = pack_value_columns(c.names, c.values)
        msg.value_names.extend(c.names)
        msg.values.extend(values)
        msg.absent.extend(absent)
    else:
        msg.metrics_json = c.metrics_json or join_metrics_json(c.payloads)
    return msg


def checkpoint_to_proto(c: domain.Checkpoint) -> checkpoint_pb2.Checkpoint:
    return checkpoint_pb2.Checkpoint(
        uuid=c.uuid,
        trial_id=c.trial_id,
        experiment_id=c.experiment_id,
        state=checkpoint_state_to_proto(c.state),
        steps_completed=c.steps_completed,
        resources=c.resources,
        metadata_json=dumps(c.metadata),
        training_metrics=c.training_metrics,
        validation_metrics=c.validation_metrics,
        report_time=c.report_time,
        storage_json=dumps(c.storage),
    )


def log_line_to_proto(line: domain.LogLine) -> logs_pb2.LogLine:
    return logs_pb2.LogLine(
        id=line.id,
        trial_id=line.trial_id,
        timestamp=line.timestamp,
        rank=line.rank,
        stream=line.stream,
        level=log_level_to_proto(line.level),
        message=line.message,
        run_id=line.run_id,
    )


def log_line_from_proto(line: logs_pb2.LogLine) -> domain.LogLine:
    return domain.LogLine(
        trial_id=line.trial_id,
        timestamp=line.timestamp,
        message=line.message,
        rank=line.rank,
        stream=line.stream or "stdout",
        level=log_level_from_proto(line.level),
        run_id=line.run_id,
    )


def workspace_to_proto(w: domain.Workspace) -> workspace_pb2.Workspace:
    return workspace_pb2.Workspace(
        id=w.id, name=w.name, archived=w.archived, num_projects=w.num_projects
    )


def project_to_proto(p: domain.Project) -> workspace_pb2.Project:
    return workspace_pb2.Project(
        id=p.id,
        name=p.name,
        description=p.description,
        workspace_id=p.workspace_id,
        archived=p.archived,
        num_experiments=p.num_experiments,
        notes=[workspace_pb2.ProjectNote(name=n, contents=c) for n, c in p.notes],
    )


def project_notes_from_proto(
    notes: Iterable[workspace_pb2.ProjectNote],
) -> list[tuple[str, str]]:
    """Notes of a PatchProject request; a note needs a name."""
    out = []
    for i, n in enumerate(notes):
        if not n.name.strip():
            raise InvalidArgumentError(f"notes[{i}].name: must not be empty")
        out.append((n.name, n.contents))
    return out


def model_to_proto(m: domain.Model) -> model_pb2.Model:
    return model_pb2.Model(
        id=m.id,
        name=m.name,
        description=m.description,
        metadata_json=dumps(m.metadata),
        labels=list(m.labels),
        archived=m.archived,
        creation_time=m.creation_time,
        last_updated_time=m.last_updated_time,
        num_versions=m.num_versions,
        workspace_id=m.workspace_id,
    )


def model_version_to_proto(
    v: domain.ModelVersion, ckpt: domain.Checkpoint | None
) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        id=v.id,
        model_id=v.model_id,
        version=v.version,
        name=v.name,
        comment=v.comment,
        metadata_json=dumps(v.metadata),
        labels=list(v.labels),
        checkpoint=checkpoint_to_proto(ckpt) if ckpt else None,
        creation_time=v.creation_time,
        notes=v.notes,
    )
