"""Thin gRPC servicers: deserialize, call a service, serialize (``master_server.convert``).

They run on a ``grpc.aio`` server. Ordinary handlers are plain functions, run on the server's
thread pool (the services they call block on the database). Long polls (preemption, searcher
operations, custom-search events, log follow) are coroutines that wait on a
:class:`~master_server.waiting.Waker` and hold no thread while they wait.

Errors are mapped in one place, :func:`_status`: a :class:`DeterminedError` becomes its status
code (``determined_sdk.errors``' table) with its message; anything else is logged with its
traceback and answered INTERNAL, and the master keeps serving. :func:`rpc` / :func:`rpc_stream`
apply it to thread-pool handlers, :func:`rpc_async` / :func:`rpc_async_stream` to coroutines.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from determined_sdk import checkpoint_wire
from determined_sdk.checkpoint_storage import READ_CHUNK
from determined_sdk.errors import DeterminedError, InvalidArgumentError, NotFoundError
from determined_sdk.proto import (
    auth_pb2,
    auth_pb2_grpc,
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    common_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from master_server import charts, convert
from master_server.auth.users import UserService
from master_server.bulk import BulkServer
from master_server.checkpoints import CHUNK, CheckpointService
from master_server.domain import ExperimentFilter, JSONDict, LogQuery, MetricColumns
from master_server.experiments import ExperimentService
from master_server.ingest import MetricIngest
from master_server.logs import LogService
from master_server.metrics import DEFAULT_PAGE_SIZE, Follow, MetricService
from master_server.searcher.factory import searcher_length_unit
from master_server.store.base import Store
from master_server.store.errors import database_unavailable
from master_server.waiting import Waker, long_poll

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
A = experiment_pb2.ExperimentAction


def _status(e: Exception, name: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, DeterminedError):
        return e.code, str(e)
    if (down := database_unavailable(e)) is not None:
        logger.warning("%s: %s", name, down)
        return down.code, str(down)
    logger.exception("%s failed", name)
    return grpc.StatusCode.INTERNAL, f"internal error in {name}: {type(e).__name__}: {e}"


def _abort(context: grpc.ServicerContext, e: Exception, name: str) -> None:
    context.abort(*_status(e, name))


def rpc(fn: F) -> F:
    """Map service errors to gRPC status codes for a unary handler."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:
            _abort(context, e, fn.__name__)

    return wrapper  # type: ignore[return-value]


def rpc_stream(fn: F) -> F:
    """Same as :func:`rpc` for server-streaming handlers."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as e:
            _abort(context, e, fn.__name__)

    return wrapper  # type: ignore[return-value]


def rpc_async(fn: F) -> F:
    """Same as :func:`rpc` for coroutine handlers (long polls)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as e:
            await context.abort(*_status(e, fn.__name__))

    return wrapper  # type: ignore[return-value]


def rpc_async_stream(fn: F) -> F:
    """Same as :func:`rpc` for async-generator handlers (log follow)."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as e:
            await context.abort(*_status(e, fn.__name__))

    return wrapper  # type: ignore[return-value]


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking service code on the loop's executor (the server's thread pool), in a copy
    of this call's context (the caller's principal goes with it)."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(None, ctx.run, fn, *args)


#: Most points one StreamMetricSeries reply carries (24 bytes each: about 6 MiB).
SERIES_REPLY_POINTS = 262_144
#: Trials whose series StreamMetricSeries reads at a time.
SERIES_READ_TRIALS = 16

#: Most rows one list reply carries (limit 0 or more means this many; page with offset).
MAX_PAGE = 1000

#: Most experiment summaries (no configs, ~150 bytes each) one ListExperiments reply carries.
MAX_SUMMARY_PAGE = 10_000


#: Bytes of rows after which a list reply stops early (the client pages on by offset).
MAX_PAGE_BYTES = 32 * 2**20


def _fit(rows: Iterable[Any]) -> list[Any]:
    """The rows that fit :data:`MAX_PAGE_BYTES` (at least one), so big rows cannot break a list."""
    out: list[Any] = []
    size = 0
    for r in rows:
        size += r.ByteSize()
        if out and size > MAX_PAGE_BYTES:
            break
        out.append(r)
    return out


def _fit_in_place(rows: Any, reply_size: int) -> None:
    """Cut a reply's repeated ``rows`` as :func:`_fit` would; ``reply_size`` (the whole reply's
    size, an upper bound of the rows' sum) spares the per-row sizes when they fit anyway."""
    if reply_size <= MAX_PAGE_BYTES:
        return
    size = 0
    for n, r in enumerate(rows):
        size += r.ByteSize()
        if n and size > MAX_PAGE_BYTES:
            del rows[n:]
            return


def _page(p: Any, most: int | None = None) -> tuple[int, int]:
    if p.offset < 0 or p.limit < 0:
        raise InvalidArgumentError("pagination: offset and limit must be >= 0")
    cap = MAX_PAGE if most is None else most
    return p.offset, min(p.limit or cap, cap)


class Experiments(experiment_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, store: Store, svc: ExperimentService, waker: Waker) -> None:
        self.store, self.svc, self.waker = store, svc, waker

    @rpc
    def CreateExperiment(self, request: Any, context: Any) -> Any:
        warnings: list[str] = []
        exp = self.svc.create_experiment(
            request.config,
            request.model_definition,
            activate=request.activate,
            project_id=request.project_id,
            warnings=warnings,
        )
        return experiment_pb2.CreateExperimentResponse(
            experiment=convert.experiment_to_proto(exp), warnings=warnings
        )

    @rpc
    def CreateUnmanagedTrial(self, request: Any, context: Any) -> Any:
        hparams = convert.loads_dict(request.hparams_json, "hparams_json")
        exp, trial = self.svc.create_unmanaged_trial(
            request.config, hparams, request.experiment_id, request.project_id
        )
        return experiment_pb2.CreateUnmanagedTrialResponse(
            experiment=convert.experiment_to_proto(exp), trial=convert.trial_to_proto(trial)
        )

    @rpc
    def GetExperiment(self, request: Any, context: Any) -> Any:
        exp = self.store.get_experiment(request.experiment_id)
        return experiment_pb2.GetExperimentResponse(experiment=convert.experiment_to_proto(exp))

    @rpc
    def ListExperiments(self, request: Any, context: Any) -> Any:
        offset, limit = _page(request.pagination, None if request.full else MAX_SUMMARY_PAGE)
        sort_by = request.sort_by or "id"
        if sort_by not in ("id", "name", "start_time", "end_time", "state", "progress"):
            raise InvalidArgumentError(f"sort_by: unknown field {sort_by!r}")
        archived: bool | None = False
        if request.archived_only:
            archived = True
        elif request.include_archived:
            archived = None
        flt = ExperimentFilter(
            project_id=request.project_id or None,
            workspace_id=request.workspace_id or None,
            states=tuple(convert.experiment_state_from_proto(s) for s in request.states),
            name_contains=request.name or None,
            labels=tuple(request.labels),
            archived=archived,
            sort_by=sort_by,
            descending=request.order_by == 2,
            offset=offset,
            limit=limit,
            full=request.full,
        )
        pagination = common_pb2.Pagination(offset=offset, limit=limit or 0)
        if request.full:
            exps, pagination.total = self.store.list_experiments(flt)
            return experiment_pb2.ListExperimentsResponse(
                experiments=_fit(convert.experiment_to_proto(e) for e in exps),
                pagination=pagination,
            )
        rows, pagination.total = self.store.list_experiment_summaries(flt)
        reply = experiment_pb2.ListExperimentsResponse(pagination=pagination)
        if request.columnar:
            convert.fill_experiment_columns(reply.columns, rows)
            if reply.ByteSize() <= MAX_PAGE_BYTES:
                return reply
            reply.ClearField("columns")  # too big at once: as rows, cut (the client pages on)
        convert.add_experiment_summaries(reply.experiments, rows)
        _fit_in_place(reply.experiments, reply.ByteSize())
        return reply

    @rpc
    def PatchExperiment(self, request: Any, context: Any) -> Any:
        exp = self.svc.patch(
            request.experiment_id,
            name=request.name if request.HasField("name") else None,
            description=request.description if request.HasField("description") else None,
            notes=request.notes if request.HasField("notes") else None,
            add_labels=list(request.add_labels),
            remove_labels=list(request.remove_labels),
        )
        return experiment_pb2.PatchExperimentResponse(experiment=convert.experiment_to_proto(exp))

    @rpc
    def ExperimentAction(self, request: Any, context: Any) -> Any:
        i, act = request.experiment_id, request.action
        if act == A.EXPERIMENT_ACTION_ACTIVATE:
            exp = self.svc.activate(i)
        elif act == A.EXPERIMENT_ACTION_PAUSE:
            exp = self.svc.pause(i)
        elif act == A.EXPERIMENT_ACTION_CANCEL:
            exp = self.svc.cancel(i)
        elif act == A.EXPERIMENT_ACTION_KILL:
            exp = self.svc.cancel(i, kill=True)
        elif act == A.EXPERIMENT_ACTION_ARCHIVE:
            exp = self.svc.set_archived(i, True)
        elif act == A.EXPERIMENT_ACTION_UNARCHIVE:
            exp = self.svc.set_archived(i, False)
        elif act == A.EXPERIMENT_ACTION_DELETE:
            exp = self.store.get_experiment(i)
            self.svc.delete(i)
            return experiment_pb2.ExperimentActionResponse(
                experiment=convert.experiment_to_proto(exp)
            )
        else:
            raise InvalidArgumentError(f"action: unknown experiment action {act}")
        return experiment_pb2.ExperimentActionResponse(experiment=convert.experiment_to_proto(exp))

    @rpc
    def MoveExperiment(self, request: Any, context: Any) -> Any:
        exp = self.svc.move(request.experiment_id, request.project_id)
        return experiment_pb2.MoveExperimentResponse(experiment=convert.experiment_to_proto(exp))

    @rpc
    def GetModelDefinition(self, request: Any, context: Any) -> Any:
        return experiment_pb2.GetModelDefinitionResponse(
            model_definition=self.store.get_model_definition(request.experiment_id)
        )

    @rpc
    def ListExperimentTrials(self, request: Any, context: Any) -> Any:
        offset, limit = _page(request.pagination)
        self.store.get_experiment(request.experiment_id)
        trials, total = self.store.list_trials(
            request.experiment_id,
            states=[convert.trial_state_from_proto(s) for s in request.states],
            offset=offset,
            limit=limit,
        )
        return experiment_pb2.ListExperimentTrialsResponse(
            trials=[convert.trial_to_proto(t, self.svc.searcher_metric_of(t)) for t in trials],
            pagination=common_pb2.Pagination(offset=offset, limit=limit or 0, total=total),
        )

    @rpc
    def GetBestSearcherValidation(self, request: Any, context: Any) -> Any:
        self.store.get_experiment(request.experiment_id)
        v = self.svc.best_searcher_validation(request.experiment_id)
        return experiment_pb2.GetBestSearcherValidationResponse(
            has_value=v is not None, value=v if v is not None else 0.0
        )

    @rpc_async
    async def GetSearcherEvents(self, request: Any, context: Any) -> Any:
        exp_id, after = request.experiment_id, request.after_event_id

        async def check() -> tuple[bool, tuple[list[JSONDict], bool]]:
            events, over = await _in_thread(self.svc.searcher_events, exp_id, after, 0.0)
            return bool(events) or over, (events, over)

        events, over = await long_poll(self.waker, check, request.timeout_seconds, exp_id)
        return experiment_pb2.GetSearcherEventsResponse(
            events_json=[convert.dumps(e) for e in events], search_over=over
        )

    @rpc
    def PostSearcherActions(self, request: Any, context: Any) -> Any:
        actions = [
            convert.loads_dict(a, f"actions_json[{i}]") for i, a in enumerate(request.actions_json)
        ]
        if not 0.0 <= request.progress <= 1.0:
            raise InvalidArgumentError(f"progress: must be within [0, 1], got {request.progress}")
        self.svc.post_searcher_actions(
            request.experiment_id, actions, request.progress or None, request.acknowledge_event_id
        )
        return experiment_pb2.PostSearcherActionsResponse()


class Trials(trial_pb2_grpc.TrialServiceServicer):
    def __init__(
        self, store: Store, svc: ExperimentService, ingest: MetricIngest, metrics: MetricService
    ) -> None:
        self.store, self.svc, self.ingest, self.metrics = store, svc, ingest, metrics

    @rpc
    def GetTrial(self, request: Any, context: Any) -> Any:
        t = self.store.get_trial(request.trial_id)
        return trial_pb2.GetTrialResponse(
            trial=convert.trial_to_proto(t, self.svc.searcher_metric_of(t))
        )

    @rpc
    def KillTrial(self, request: Any, context: Any) -> Any:
        return trial_pb2.KillTrialResponse(
            trial=convert.trial_to_proto(self.svc.kill_trial(request.trial_id))
        )

    @rpc_async
    async def ReportMetrics(self, request: Any, context: Any) -> Any:
        stored = await _store_metrics(request, self.svc, self.ingest, self.metrics)
        return trial_pb2.ReportMetricsResponse(duplicate=not stored)

    @rpc_async_stream
    async def StreamMetrics(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # A coroutine: a follower waits for new points on the metrics waker, not in a thread
        # (a notebook plotting a live run holds its stream for hours). Each page is read and
        # converted on the thread pool.
        def response(page: MetricColumns) -> Any:
            if request.columnar:
                resp = trial_pb2.StreamMetricsResponse()
                convert.metric_columns_to_proto(
                    page, into=resp.columns, json_columns=request.json_columns
                )
                return resp
            return trial_pb2.StreamMetricsResponse(
                points=[convert.metric_point_to_proto(p) for p in page.points()]
            )

        def next_response(pages: Iterator[MetricColumns], size: int) -> tuple[Any, bool]:
            """The next page's response (None: no more), and whether it was the last (only
            the last page of a read is short)."""
            page = next(pages, None)
            if page is None:
                return None, True
            return response(page), len(page) < size

        def step(f: Follow) -> Any:
            page = self.metrics.follow_step(f)
            return None if page is None else response(page)

        def read() -> tuple[Follow | None, Iterator[MetricColumns], int, tuple[Any, bool]]:
            q = self.metrics.query(
                list(request.trial_ids),
                group=request.group or None,
                names=list(request.names),
                min_steps=request.min_steps if request.HasField("min_steps") else None,
                max_steps=request.max_steps if request.HasField("max_steps") else None,
                page_size=request.page_size or DEFAULT_PAGE_SIZE,
                include_superseded=request.include_superseded,
            )
            self.metrics.check_trials(q)
            follow: Follow | None = None
            if request.follow:
                follow, pages = self.metrics.follow_backlog(q)
            else:
                pages = self.store.read_metrics(q)
            # The first page in the same trip to the pool: a short read takes one trip.
            return follow, pages, q.page_size, next_response(pages, q.page_size)

        follow, pages, size, (resp, last) = await _in_thread(read)
        while resp is not None:
            yield resp
            if last:
                break
            resp, last = await _in_thread(next_response, pages, size)
        if follow is None:
            return
        waker = self.metrics.waker
        assert waker is not None
        with waker.watching(follow.key):
            while True:
                # New points of the trial wake us at once; its end is noticed within poll_s.
                event = waker.current(follow.key)
                resp = await _in_thread(step, follow)
                if resp is not None:
                    yield resp
                if follow.done or self.metrics.closed:
                    return
                if not follow.more:
                    await waker.wait(event, self.metrics.poll_s)

    @rpc_async_stream
    async def StreamMetricSeries(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # Read and packed on the thread pool, SERIES_READ_TRIALS trials a trip (so the master
        # holds that many trials' series at a time, not the whole answer); each reply holds up
        # to SERIES_REPLY_POINTS points (a longer series spans replies).
        ids, group, names, max_points = await _in_thread(self._check_series_request, request)
        for i in range(0, len(ids), SERIES_READ_TRIALS):
            part = ids[i : i + SERIES_READ_TRIALS]
            for resp in await _in_thread(self._series_replies, part, group, names, max_points):
                yield resp

    def _check_series_request(self, request: Any) -> tuple[list[int], str, list[str], int]:
        ids = list(dict.fromkeys(request.trial_ids))
        if not ids:
            raise InvalidArgumentError("trial_ids: give at least one trial id")
        for i, t in enumerate(ids):
            if t < 1:
                raise InvalidArgumentError(f"trial_ids[{i}]: must be a trial id, got {t}")
        group = charts.check_group(request.group)
        names = charts.check_names(list(dict.fromkeys(request.names)))
        if not names:
            raise InvalidArgumentError("names: give at least one metric name")
        max_points = charts.check_max_points(request.max_points)
        trials = [self.store.get_trial(t) for t in ids]  # NOT_FOUND names the trial
        charts.check_known_group(trials, group)
        return ids, group, names, max_points

    def _series_replies(
        self, ids: list[int], group: str, names: list[str], max_points: int
    ) -> list[Any]:
        got = charts.read_series(self.store, ids, group, names, max_points)
        return convert.metric_series_to_protos(
            ((tid, name, *got[tid][name]) for tid in ids for name in names if name in got[tid]),
            SERIES_REPLY_POINTS,
        )

    @rpc
    def ReportProgress(self, request: Any, context: Any) -> Any:
        self.svc.report_progress(request.trial_id, request.progress)
        return trial_pb2.ReportProgressResponse()

    @rpc
    def ReportEarlyExit(self, request: Any, context: Any) -> Any:
        self.svc.report_early_exit(request.trial_id, request.reason)
        return trial_pb2.ReportEarlyExitResponse()

    @rpc
    def GetTrialContext(self, request: Any, context: Any) -> Any:
        t = self.store.get_trial(request.trial_id)
        cfg = self.svc.experiment_config(t.experiment_id)
        return trial_pb2.GetTrialContextResponse(
            trial=convert.trial_to_proto(t),
            experiment_config_json=convert.dumps(cfg),
            latest_checkpoint_uuid=t.latest_checkpoint_uuid or t.warm_start_checkpoint_uuid or "",
            checkpoint_storage_json=convert.dumps(cfg["checkpoint_storage"]),
        )


class Checkpoints(checkpoint_pb2_grpc.CheckpointServiceServicer):
    def __init__(self, store: Store, svc: CheckpointService, bulk: BulkServer | None) -> None:
        self.store, self.svc, self.bulk = store, svc, bulk

    @rpc
    def ReportCheckpoint(self, request: Any, context: Any) -> Any:
        c = self.svc.report(
            request.trial_id,
            request.uuid,
            request.steps_completed,
            dict(request.resources),
            convert.loads_dict(request.metadata_json, "metadata_json"),
        )
        return checkpoint_pb2.ReportCheckpointResponse(checkpoint=convert.checkpoint_to_proto(c))

    @rpc
    def GetCheckpoint(self, request: Any, context: Any) -> Any:
        c = self.svc.get(request.uuid)
        return checkpoint_pb2.GetCheckpointResponse(checkpoint=convert.checkpoint_to_proto(c))

    @rpc
    def ListCheckpoints(self, request: Any, context: Any) -> Any:
        ckpts = self.svc.list_checkpoints(
            experiment_id=request.experiment_id,
            trial_id=request.trial_id,
            sort_by=request.sort_by,
            descending=None if request.order_by == 0 else request.order_by == 2,
            max_results=request.max_results,
            states=[convert.checkpoint_state_from_proto(s) for s in request.states],
        )
        return checkpoint_pb2.ListCheckpointsResponse(
            checkpoints=[convert.checkpoint_to_proto(c) for c in ckpts]
        )

    @rpc
    def PatchCheckpointMetadata(self, request: Any, context: Any) -> Any:
        c = self.svc.patch_metadata(
            request.uuid,
            convert.loads_dict(request.set_json, "set_json"),
            list(request.remove_keys),
        )
        return checkpoint_pb2.PatchCheckpointMetadataResponse(
            checkpoint=convert.checkpoint_to_proto(c)
        )

    @rpc
    def DeleteCheckpoints(self, request: Any, context: Any) -> Any:
        cs = self.svc.delete(list(request.uuids))
        return checkpoint_pb2.DeleteCheckpointsResponse(
            checkpoints=[convert.checkpoint_to_proto(c) for c in cs]
        )

    @rpc
    def RemoveCheckpointFiles(self, request: Any, context: Any) -> Any:
        c = self.svc.remove_files(request.uuid, list(request.globs))
        return checkpoint_pb2.RemoveCheckpointFilesResponse(
            checkpoint=convert.checkpoint_to_proto(c)
        )

    @rpc_async_stream
    async def DownloadCheckpoint(self, request: Any, context: Any) -> AsyncIterator[bytes]:  # type: ignore[override]
        # Messages are written as bytes (checkpoint_wire): no message object per chunk.
        # Registered with no response serializer (see _add_checkpoint_servicer). A coroutine:
        # storage is read on the thread pool, and a caller that goes away cancels the stream
        # at once (a thread-pool generator went on writing to the cancelled call, and gRPC
        # logged an error for it).
        files = await _in_thread(self.svc.download_files, request.uuid)  # every check first
        wants_bulk = any(
            k == checkpoint_wire.BULK_REQUEST for k, _v in context.invocation_metadata() or ()
        )
        if wants_bulk and self.bulk is not None:
            ticket = self.bulk.offer(files)
            await context.send_initial_metadata(
                (
                    (checkpoint_wire.BULK_PORT, str(self.bulk.port)),
                    (checkpoint_wire.BULK_TICKET, ticket),
                )
            )
            return
        for f in files:
            path = f.path.encode()
            offset = 0
            # Big reads (fewer storage requests), cut into messages of at most CHUNK bytes.
            pieces = f.chunks(READ_CHUNK)
            try:
                while (piece := await _in_thread(next, pieces, None)) is not None:
                    for start in range(0, len(piece), CHUNK):
                        data = piece[start : start + CHUNK]
                        yield checkpoint_wire.encode_chunk(path, offset, f.size, data)
                        offset += len(data)
            finally:
                pieces.close()
            if offset == 0:  # an empty file is one chunk without data
                yield checkpoint_wire.encode_chunk(path, 0, f.size, b"")


async def _store_metrics(
    request: Any,
    svc: ExperimentService,
    ingest: MetricIngest,
    metrics: MetricService,
    field: str = "",
) -> bool:
    """Store a ``ReportMetricsRequest`` (``field``: where it sits in the call's request, for
    error messages); whether it was new (False: a batch stored before).

    A coroutine: the batch waits for its group commit without holding a thread.
    """
    if not request.batch_id:
        raise InvalidArgumentError(f"{field}batch_id: must not be empty (it makes retries safe)")
    reports = convert.metric_reports_from_proto(request)
    fut = ingest.submit(request.trial_id, request.batch_id, reports, request.trial_run_id)
    svc.record_activity(request.trial_id)  # lock-free: safe on the event loop
    stored: bool = await asyncio.wrap_future(fut)
    if stored:
        metrics.notify(request.trial_id)  # wake followers of this trial's metrics
    validations = [r for r in reports if r.group == "validation"] if stored else []
    if validations:

        def feed() -> None:
            for r in validations:
                svc.on_validation_metrics(request.trial_id, r.metrics, r.steps_completed)

        await _in_thread(feed)
    return stored


class Searcher(searcher_pb2_grpc.SearcherServiceServicer):
    def __init__(
        self, svc: ExperimentService, waker: Waker, ingest: MetricIngest, metrics: MetricService
    ) -> None:
        self.svc, self.waker, self.ingest, self.metrics = svc, waker, ingest, metrics

    @rpc_async
    async def GetSearcherOperation(self, request: Any, context: Any) -> Any:
        tid = request.trial_id

        async def check() -> tuple[bool, tuple[int | None, bool]]:
            state = self.svc.searcher_operation_nowait(tid)
            if state is None:  # not live here: the blocking call answers at once (or raises)
                return True, await _in_thread(self.svc.get_searcher_operation, tid, 0.0)
            return state

        key = self.svc.live_experiment_of(tid)
        length, done = await long_poll(self.waker, check, request.timeout_seconds, key)
        unit = searcher_length_unit(await _in_thread(self.svc.experiment_config_of_trial, tid))
        if length is None:
            return searcher_pb2.GetSearcherOperationResponse(has_op=False, completed=done)
        return searcher_pb2.GetSearcherOperationResponse(
            has_op=True, op=searcher_pb2.SearcherOperation(length=length, unit=unit or "batches")
        )

    @rpc_async
    async def CompleteSearcherOperation(self, request: Any, context: Any) -> Any:
        # The trial's last metrics may come with the completion (one call instead of two):
        # stored first, as a ReportMetrics of them before this call would have been.
        tid = request.trial_id
        sent = request.HasField("metrics")
        if sent:
            if request.metrics.trial_id != tid:
                raise InvalidArgumentError(
                    f"metrics.trial_id: must be the operation's trial_id {tid}, "
                    f"got {request.metrics.trial_id}"
                )
            await _store_metrics(request.metrics, self.svc, self.ingest, self.metrics, "metrics.")
        await _in_thread(
            self.svc.complete_searcher_operation, tid, request.length, request.searcher_metric
        )
        # Whether the searcher is done with the trial is often known now (a random search's
        # trial ends with its one op): said here, it spares the trial asking.
        state = self.svc.searcher_operation_nowait(tid)
        done = state is not None and state[0] and state[1][1]
        return searcher_pb2.CompleteSearcherOperationResponse(completed=done, metrics_stored=sent)

    @rpc_async
    async def WatchPreemption(self, request: Any, context: Any) -> Any:
        tid = request.trial_id

        async def check() -> tuple[bool, str | None]:
            state = self.svc.preemption_nowait(tid)
            if state is None:  # not live here: the blocking call answers at once (or raises)
                return True, await _in_thread(self.svc.watch_preemption_reason, tid, 0.0)
            return state

        # Each poll is a heartbeat of the run; an unmanaged run's polls are kept short enough
        # that a live one beats well within the master's timeout.
        self.svc.heartbeat(tid)
        timeout = request.timeout_seconds
        cap = self.svc.preemption_poll_cap(tid)
        if cap is not None:
            timeout = min(timeout, cap)
        key = self.svc.live_experiment_of(tid)
        why = await long_poll(self.waker, check, timeout, key)
        return searcher_pb2.WatchPreemptionResponse(preempt=why is not None, reason=why or "")

    @rpc
    def AckPreemption(self, request: Any, context: Any) -> Any:
        self.svc.ack_preemption(request.trial_id)
        return searcher_pb2.AckPreemptionResponse()


class Logs(logs_pb2_grpc.LogServiceServicer):
    def __init__(self, svc: LogService, waker: Waker) -> None:
        self.svc, self.waker = svc, waker

    @rpc
    def ShipLogs(self, request: Any, context: Any) -> Any:
        stored = self.svc.ship(
            [convert.log_line_from_proto(x) for x in request.lines], request.batch_id
        )
        return logs_pb2.ShipLogsResponse(duplicate=not stored)

    @rpc_async_stream
    async def TrialLogs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.head < 0 or request.tail < 0:
            raise InvalidArgumentError("head/tail: must be >= 0")
        q = LogQuery(
            trial_id=request.trial_id,
            search=request.search or None,
            levels=tuple(convert.log_level_from_proto(v) for v in request.levels),
            ranks=tuple(request.ranks),
            streams=tuple(request.streams),
            timestamp_after=request.timestamp_after or None,
            timestamp_before=request.timestamp_before or None,
            head=request.head or None,
            tail=request.tail or None,
            regex=request.regex or None,
        )
        self.svc.check(q)
        if not request.follow or q.head is not None:
            for page in await _in_thread(lambda: list(self.svc.query(q, follow=False))):
                for resp in _log_responses(page):
                    yield resp
            return
        after: int | None = None
        with self.waker.watching(q.trial_id):
            while True:
                # New lines of this trial wake us at once; its end is noticed within 0.5 s.
                event = self.waker.current(q.trial_id)
                lines, done = await _in_thread(self.svc.page, q, after)
                if lines:
                    after = lines[-1].id
                    for resp in _log_responses(lines):
                        yield resp
                elif after is None:
                    after = q.after_id
                if done or self.waker.closed or self.svc.closed:
                    return
                if not lines:
                    await self.waker.wait(event, 0.5)


def _log_responses(lines: list[Any]) -> Iterator[Any]:
    for i in range(0, len(lines), 1000):
        yield logs_pb2.TrialLogsResponse(
            lines=[convert.log_line_to_proto(x) for x in lines[i : i + 1000]]
        )


class Workspaces(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _name(name: str, what: str) -> str:
        if not name.strip():
            raise InvalidArgumentError(f"name: a {what} name must not be empty")
        return name

    @rpc
    def CreateWorkspace(self, request: Any, context: Any) -> Any:
        w = self.store.create_workspace(self._name(request.name, "workspace"))
        return workspace_pb2.CreateWorkspaceResponse(workspace=convert.workspace_to_proto(w))

    @rpc
    def GetWorkspace(self, request: Any, context: Any) -> Any:
        if request.workspace_id:
            w = self.store.get_workspace(request.workspace_id)
        elif request.name:
            w = self.store.get_workspace_by_name(request.name)
        else:
            raise InvalidArgumentError("give workspace_id or name")
        return workspace_pb2.GetWorkspaceResponse(workspace=convert.workspace_to_proto(w))

    @rpc
    def ListWorkspaces(self, request: Any, context: Any) -> Any:
        ws = self.store.list_workspaces(request.name or None)
        return workspace_pb2.ListWorkspacesResponse(
            workspaces=[convert.workspace_to_proto(w) for w in ws]
        )

    @rpc
    def DeleteWorkspace(self, request: Any, context: Any) -> Any:
        self.store.delete_workspace(request.workspace_id)
        return workspace_pb2.DeleteWorkspaceResponse()

    @rpc
    def CreateProject(self, request: Any, context: Any) -> Any:
        p = self.store.create_project(
            request.workspace_id, self._name(request.name, "project"), request.description
        )
        return workspace_pb2.CreateProjectResponse(project=convert.project_to_proto(p))

    @rpc
    def GetProject(self, request: Any, context: Any) -> Any:
        if request.project_id:
            p = self.store.get_project(request.project_id)
        elif request.workspace_id and request.name:
            p = self.store.get_project_by_name(request.workspace_id, request.name)
        else:
            raise InvalidArgumentError("give project_id, or workspace_id and name")
        return workspace_pb2.GetProjectResponse(project=convert.project_to_proto(p))

    @rpc
    def ListProjects(self, request: Any, context: Any) -> Any:
        if request.workspace_id:
            self.store.get_workspace(request.workspace_id)
        ps = self.store.list_projects(request.workspace_id or None)
        return workspace_pb2.ListProjectsResponse(
            projects=[convert.project_to_proto(p) for p in ps]
        )

    @rpc
    def DeleteProject(self, request: Any, context: Any) -> Any:
        self.store.delete_project(request.project_id)
        return workspace_pb2.DeleteProjectResponse()

    @rpc
    def PatchProject(self, request: Any, context: Any) -> Any:
        kw: dict[str, Any] = {}
        if request.HasField("name"):
            kw["name"] = self._name(request.name, "project")
        if request.HasField("description"):
            kw["description"] = request.description
        if request.HasField("archived"):
            kw["archived"] = request.archived
        if request.set_notes:
            kw["notes"] = convert.project_notes_from_proto(request.notes)
        p = self.store.update_project(request.project_id, **kw)
        return workspace_pb2.PatchProjectResponse(project=convert.project_to_proto(p))


class Models(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def _version(self, v: Any) -> Any:
        try:
            ckpt = self.store.get_checkpoint(v.checkpoint_uuid)
        except NotFoundError:
            ckpt = None
        return convert.model_version_to_proto(v, ckpt)

    @rpc
    def CreateModel(self, request: Any, context: Any) -> Any:
        if not request.name.strip():
            raise InvalidArgumentError("name: a model name must not be empty")
        m = self.store.create_model(
            request.name,
            description=request.description,
            metadata=convert.loads_dict(request.metadata_json, "metadata_json"),
            labels=list(request.labels),
            workspace_id=request.workspace_id or 1,
        )
        return model_pb2.CreateModelResponse(model=convert.model_to_proto(m))

    @rpc
    def GetModel(self, request: Any, context: Any) -> Any:
        return model_pb2.GetModelResponse(
            model=convert.model_to_proto(self.store.get_model(request.name))
        )

    @rpc
    def ListModels(self, request: Any, context: Any) -> Any:
        ms = self.store.list_models(
            name_contains=request.name or None,
            labels=list(request.labels),
            include_archived=request.include_archived,
            workspace_id=request.workspace_id or None,
        )
        return model_pb2.ListModelsResponse(models=[convert.model_to_proto(m) for m in ms])

    @rpc
    def PatchModel(self, request: Any, context: Any) -> Any:
        kw: dict[str, Any] = {}
        if request.HasField("new_name"):
            if not request.new_name.strip():
                raise InvalidArgumentError("new_name: must not be empty")
            kw["new_name"] = request.new_name
        if request.HasField("description"):
            kw["description"] = request.description
        if request.HasField("metadata_json"):
            kw["metadata"] = convert.loads_dict(request.metadata_json, "metadata_json")
        if request.set_labels:
            kw["labels"] = list(request.labels)
        if request.HasField("archived"):
            kw["archived"] = request.archived
        if request.HasField("workspace_id"):
            kw["workspace_id"] = request.workspace_id
        m = self.store.update_model(request.name, **kw)
        return model_pb2.PatchModelResponse(model=convert.model_to_proto(m))

    @rpc
    def DeleteModel(self, request: Any, context: Any) -> Any:
        self.store.delete_model(request.name)
        return model_pb2.DeleteModelResponse()

    @rpc
    def RegisterModelVersion(self, request: Any, context: Any) -> Any:
        v = self.store.create_model_version(
            request.model_name,
            request.checkpoint_uuid,
            name=request.name,
            comment=request.comment,
            metadata=convert.loads_dict(request.metadata_json, "metadata_json"),
            labels=list(request.labels),
        )
        return model_pb2.RegisterModelVersionResponse(model_version=self._version(v))

    @rpc
    def ListModelVersions(self, request: Any, context: Any) -> Any:
        vs = self.store.list_model_versions(request.model_name)
        return model_pb2.ListModelVersionsResponse(model_versions=[self._version(v) for v in vs])

    @rpc
    def PatchModelVersion(self, request: Any, context: Any) -> Any:
        kw: dict[str, Any] = {}
        for f in ("name", "comment", "notes"):
            if request.HasField(f):
                kw[f] = getattr(request, f)
        v = self.store.update_model_version(request.model_name, request.version, **kw)
        return model_pb2.PatchModelVersionResponse(model_version=self._version(v))

    @rpc
    def GetModelVersion(self, request: Any, context: Any) -> Any:
        if request.version < 0:
            raise InvalidArgumentError(
                f"version: must be >= 1 (or 0 for the latest), got {request.version}"
            )
        v = self.store.get_model_version(request.model_name, request.version or None)
        return model_pb2.GetModelVersionResponse(model_version=self._version(v))

    @rpc
    def DeleteModelVersion(self, request: Any, context: Any) -> Any:
        self.store.delete_model_version(request.model_name, request.version)
        return model_pb2.DeleteModelVersionResponse()


class Master(master_pb2_grpc.MasterServiceServicer):
    def __init__(
        self,
        store: Store,
        svc: ExperimentService,
        version: str,
        cluster_id: str,
        users: UserService,
    ) -> None:
        self.store, self.svc, self.users = store, svc, users
        self.version, self.cluster_id = version, cluster_id

    @rpc
    def GetMasterInfo(self, request: Any, context: Any) -> Any:
        free = self.svc.free_slots()
        return master_pb2.GetMasterInfoResponse(
            version=self.version,
            cluster_id=self.cluster_id,
            total_slots=self.svc.total_slots,
            free_slots=free,
            database=self.store.dialect,
        )

    @rpc
    def Login(self, request: Any, context: Any) -> Any:
        token, _expires = self.users.login(request.username, request.password)
        return master_pb2.LoginResponse(token=token)

    @rpc
    def ReportTrialExit(self, request: Any, context: Any) -> Any:
        self.store.get_trial(request.trial_id)
        self.svc.on_trial_exit(request.trial_id, request.run_id, request.exit_code)
        return master_pb2.ReportTrialExitResponse()


def _user(u: Any) -> Any:
    return auth_pb2.User(
        id=u.id, username=u.username, admin=u.admin, active=u.active, created_at=u.created_at
    )


class Users(auth_pb2_grpc.UserServiceServicer):
    def __init__(self, svc: UserService) -> None:
        self.svc = svc

    @rpc
    def Logout(self, request: Any, context: Any) -> Any:
        self.svc.logout()
        return auth_pb2.LogoutResponse()

    @rpc
    def GetMe(self, request: Any, context: Any) -> Any:
        user, p = self.svc.me()
        return auth_pb2.GetMeResponse(
            user=_user(user) if user is not None else None,
            trial_id=p.trial_id or 0,
            expires_at=p.expires_at,
        )

    @rpc
    def CreateUser(self, request: Any, context: Any) -> Any:
        u = self.svc.create(request.username, request.password, admin=request.admin)
        return auth_pb2.CreateUserResponse(user=_user(u))

    @rpc
    def ListUsers(self, request: Any, context: Any) -> Any:
        return auth_pb2.ListUsersResponse(users=[_user(u) for u in self.svc.list()])

    @rpc
    def ChangePassword(self, request: Any, context: Any) -> Any:
        self.svc.change_password(request.username, request.old_password, request.new_password)
        return auth_pb2.ChangePasswordResponse()

    @rpc
    def SetUserActive(self, request: Any, context: Any) -> Any:
        u = self.svc.set_active(request.username, request.active)
        return auth_pb2.SetUserActiveResponse(user=_user(u))


def register_all(server: grpc.aio.Server, parts: dict[str, Any]) -> None:
    """Add every servicer to ``server``."""
    store, exps, ckpts, logs = (
        parts["store"],
        parts["experiments"],
        parts["checkpoints"],
        parts["logs"],
    )
    waker, log_waker = parts["waker"], parts["log_waker"]
    experiment_pb2_grpc.add_ExperimentServiceServicer_to_server(
        Experiments(store, exps, waker), server
    )
    trial_pb2_grpc.add_TrialServiceServicer_to_server(
        Trials(store, exps, parts["ingest"], parts["metrics"]), server
    )
    _add_checkpoint_servicer(Checkpoints(store, ckpts, parts.get("bulk")), server)
    searcher_pb2_grpc.add_SearcherServiceServicer_to_server(
        Searcher(exps, waker, parts["ingest"], parts["metrics"]), server
    )
    logs_pb2_grpc.add_LogServiceServicer_to_server(Logs(logs, log_waker), server)
    workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(Workspaces(store), server)
    model_pb2_grpc.add_ModelServiceServicer_to_server(Models(store), server)
    master_pb2_grpc.add_MasterServiceServicer_to_server(
        Master(store, exps, parts["version"], parts["cluster_id"], parts["users"]), server
    )
    auth_pb2_grpc.add_UserServiceServicer_to_server(Users(parts["users"]), server)


class _CaptureHandlers:
    """Stands in for a server to read the handlers a generated ``add_*`` function registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.service, self.handlers = service, dict(handlers)


def _add_checkpoint_servicer(servicer: Checkpoints, server: Any) -> None:
    """The generated registration, except that ``DownloadCheckpoint`` sends the bytes its
    handler yields as they are (already ``CheckpointChunk`` messages)."""
    cap = _CaptureHandlers()
    checkpoint_pb2_grpc.add_CheckpointServiceServicer_to_server(servicer, cap)
    cap.handlers["DownloadCheckpoint"] = grpc.unary_stream_rpc_method_handler(
        servicer.DownloadCheckpoint,
        request_deserializer=checkpoint_pb2.DownloadCheckpointRequest.FromString,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(cap.service, cap.handlers),)
    )
    server.add_registered_method_handlers(cap.service, cap.handlers)
