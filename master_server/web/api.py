"""The REST API (``/api/v1/...``) and the web UI's pages, as one FastAPI app.

Handlers call the same services and store as the gRPC servicers (never gRPC itself) and stay
thin: parse the query, call, serialize with ``master_server.web.serialize``. Errors are mapped in
one place, :func:`_error_response`: a :class:`DeterminedError` becomes the HTTP status of
``determined_sdk.errors``' table with a JSON body ``{"error": {"code", "status", "message",
"field"}}``; a malformed path or query parameter is a 400 naming the parameter; anything else is
logged and answered 500, and the master keeps serving.

Handlers are plain ``def`` functions: FastAPI runs them in its thread pool, so the blocking store
and service calls never stall the event loop. That pool is small (anyio's 40 threads) and shared,
so nothing may wait in it: a log follow (``?follow=true``) streams from a coroutine that reads
each page on the pool and waits for new lines on :class:`LogFollowers`, holding no thread.

Authentication: every ``/api`` route depends on :data:`AuthHook` passed to :func:`create_app`
(``None`` today: no check). The token check of the auth issue plugs in there and raises
:class:`~determined_sdk.errors.UnauthenticatedError` (answered 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import re
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, Response, StreamingResponse

from determined_sdk.errors import (
    DeterminedError,
    InvalidArgumentError,
    NotFoundError,
    to_http_status,
)
from master_server import charts
from master_server.auth.policy import Access, hide_environment
from master_server.auth.principal import Principal
from master_server.checkpoints import CheckpointService
from master_server.domain import (
    CheckpointState,
    Experiment,
    ExperimentFilter,
    ExperimentState,
    LogQuery,
    TrialState,
)
from master_server.experiments import ExperimentService
from master_server.logs import LogService
from master_server.store.base import Store
from master_server.store.errors import database_unavailable
from master_server.waiting import Waker
from master_server.web import metrics as metrics_mod
from master_server.web import serialize as ser
from master_server.web.serialize import JSON

logger = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
API_PREFIX = "/api/v1"
AuthHook = Callable[[Request], None]
#: The cookie a browser keeps the session token in after ``POST /api/v1/auth/login``.
SESSION_COOKIE = "detsdk_session"


@dataclasses.dataclass(frozen=True)
class SessionHooks:
    """How the REST login opens and closes the master's sessions (the same ones as gRPC's
    ``Login``).

    Attributes:
        login: ``(username, password) -> token``; raises UnauthenticatedError for bad
            credentials.
        logout: ends the session of a token (unknown tokens are ignored).
    """

    login: Callable[[str, str], str]
    logout: Callable[[str], None]


"""Called with every ``/api`` request before its handler; raise UnauthenticatedError to refuse."""

_FIELD_RE = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
_EXPERIMENT_SORT = ("id", "name", "start_time", "end_time", "state", "progress")
_ACTIONS = ("activate", "pause", "cancel", "kill", "archive", "unarchive")
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CKPT_SORT = "uuid | trial_id | steps_completed | report_time | searcher_metric | metric:<name>"
_PATCH_EXAMPLE = {"name": "new name", "add_labels": ["best"], "remove_labels": ["old"]}
_UI_PAGES = (
    "/",
    "/experiments",
    "/experiments/{eid}",
    "/trials/{tid}",
    "/models",
    "/models/{name}",
    "/login",
)


# -- errors: the one mapping -------------------------------------------------------------------


def _error_body(code: str, status: int, message: str, field: str | None) -> JSON:
    return JSON(
        {"error": {"code": code, "status": status, "message": message, "field": field}},
        status_code=status,
    )


def _error_response(request: Request, exc: Exception) -> Response:
    if (down := database_unavailable(exc)) is not None:
        logger.warning("%s %s: %s", request.method, request.url.path, down)
        exc = down
    if isinstance(exc, DeterminedError):
        status = to_http_status(exc)
        m = _FIELD_RE.match(str(exc))
        field = m.group(1) if m and isinstance(exc, InvalidArgumentError) else None
        return _error_body(exc.code.name, status, str(exc), field)
    if isinstance(exc, RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        raw_loc = list(first.get("loc", ()))
        # ("query", "limit") -> "limit"; ("body",) and ("body", 12) (a JSON syntax error at
        # character 12) -> "body"
        loc = [str(x) for x in raw_loc[1:] if isinstance(x, str)] if raw_loc else []
        field = ".".join(loc) or (str(raw_loc[0]) if raw_loc else None)
        got = first.get("input")
        detail = first.get("msg", "invalid value")
        if first.get("type") == "json_invalid":
            detail = f"not valid JSON ({first.get('ctx', {}).get('error', 'syntax error')})"
        elif first.get("type") == "missing":
            detail = "required"
        msg = f"{field or 'request'}: {detail}"
        if got is not None and not isinstance(got, dict | list):
            msg += f", got {got!r}"
        return _error_body("INVALID_ARGUMENT", 400, msg, field)
    if isinstance(exc, StarletteHTTPException):
        code = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT"}.get(exc.status_code, "UNKNOWN")
        msg = (
            f"no such path: {request.method} {request.url.path}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        return _error_body(code, exc.status_code, msg, None)
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_body(
        "INTERNAL",
        500,
        f"internal error in {request.method} {request.url.path}: {type(exc).__name__}: {exc}",
        None,
    )


class _CatchAll:
    """Answers an unexpected exception with the JSON 500 of :func:`_error_response`.

    Starlette's own catch-all handler re-raises after answering (so servers log the error a
    second time); this one ends it here. An error after a stream has started is only logged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request = Request(scope)
            if started:
                logger.error(
                    "%s %s failed mid-stream", request.method, request.url.path, exc_info=exc
                )
                return
            await _error_response(request, exc)(scope, receive, send)


# -- query parsing -----------------------------------------------------------------------------


def _csv(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated query values, flattened: ``?a=x,y&a=z`` -> [x, y, z]."""
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _enum_values(enum: Any, values: list[str], field: str) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(enum(v.upper().removeprefix("STATE_")))
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise InvalidArgumentError(f"{field}: unknown state {v!r} (one of {allowed})") from None
    return out


def _int_list(values: list[str], field: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InvalidArgumentError(f"{field}: must be integers, got {values!r}") from None


def _order(order_by: str | None, field: str = "order_by") -> bool | None:
    if order_by is None or order_by == "":
        return None
    o = order_by.lower()
    if o not in ("asc", "desc"):
        raise InvalidArgumentError(f"{field}: must be 'asc' or 'desc', got {order_by!r}")
    return o == "desc"


def _nonneg(v: int | None, field: str) -> int | None:
    if v is not None and v < 0:
        raise InvalidArgumentError(f"{field}: must be >= 0, got {v}")
    return v


def _body_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"body: must be a JSON object, got {type(body).__name__}")
    return body


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    v = body.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgumentError(f"{key}: must be a list of strings")
    return v


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise InvalidArgumentError(f"{key}: must be a string, got {type(v).__name__}")
    return v


# -- the app -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Parts:
    store: Store
    experiments: ExperimentService
    checkpoints: CheckpointService
    logs: LogService
    version: str
    cluster_id: str


def create_app(
    parts: dict[str, Any],
    *,
    authenticate: AuthHook | None = None,
    sessions: SessionHooks | None = None,
) -> FastAPI:
    """The REST API and web UI over a master's ``parts`` (see ``master_server.app.Master``).

    Args:
        parts: the master's store and services (``store``, ``experiments``, ``checkpoints``,
            ``logs``, ``version``, ``cluster_id``).
        authenticate: called with each ``/api`` request before its handler; it raises
            :class:`~determined_sdk.errors.UnauthenticatedError` to refuse it. None: no check.
        sessions: serves ``POST /api/v1/auth/login`` and ``/logout`` (outside
            ``authenticate``); None: no such routes.
    """
    p = _Parts(
        parts["store"],
        parts["experiments"],
        parts["checkpoints"],
        parts["logs"],
        parts["version"],
        parts["cluster_id"],
    )

    def auth(request: Request) -> None:
        if authenticate is not None:
            authenticate(request)
            _check_owner(p.store, request)

    followers = LogFollowers(p.logs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            followers.close()  # the server stops: no more waits on its loop

    app = FastAPI(
        lifespan=lifespan,
        title="determined_sdk master",
        version=p.version,
        description="REST API of the determined_sdk master (the same services as its gRPC API).",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # the hosted docs pages load scripts from a CDN; the JSON is enough
        redoc_url=None,
        default_response_class=JSON,
    )
    for exc_type in (DeterminedError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(exc_type, _error_response)
    app.add_middleware(_CatchAll)
    app.state.log_followers = followers
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(auth)])
    app.state.series_reader = reader = metrics_mod.SeriesReader(p.store)
    _add_api_routes(api, p, reader, followers)
    app.include_router(api)
    if sessions is not None:
        app.include_router(_session_routes(sessions))
    _add_ui_routes(app)
    return app


#: What a user who is not an admin may change over REST, by (HTTP method, route): the kind of
#: resource (its id is the route's first parameter) and the words of the refusal, as gRPC's
#: policy (``master_server.auth.policy``): everyone logged in reads, owners change their own.
#: A write route missing here is refused to non-admins (a test checks every route is listed).
WRITE_RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("PATCH", "/experiments/{experiment_id}"): ("experiment", "change"),
    ("PUT", "/experiments/{experiment_id}/labels/{label}"): ("experiment", "change"),
    ("DELETE", "/experiments/{experiment_id}/labels/{label}"): ("experiment", "change"),
    ("POST", "/experiments/{experiment_id}/{action}"): ("experiment", "act on"),
    ("DELETE", "/experiments/{experiment_id}"): ("experiment", "delete"),
    ("POST", "/trials/{trial_id}/kill"): ("trial", "kill"),
}


def principal_of(request: Request) -> Principal | None:
    """Who sent the request, as the ``authenticate`` hook left it in ``request.state``; None
    where the API is open (no hook, or the loopback quick start): everything is allowed."""
    p = getattr(request.state, "principal", None)
    return p if isinstance(p, Principal) else None


def _check_owner(store: Store, request: Request) -> None:
    p = principal_of(request)
    if p is None or p.admin or request.method in ("GET", "HEAD"):
        return
    route = request.scope.get("route")
    path = str(getattr(route, "path", ""))[len(API_PREFIX) :]
    rule = WRITE_RULES.get((request.method, path))
    access = Access(store)
    if rule is None or p.is_trial:
        raise access.deny(p, f"{request.method} {path} (admins only)")
    kind, what = rule
    resource_id = int(next(iter(request.path_params.values())))
    if kind == "trial":
        store.get_trial(resource_id)  # NOT_FOUND before PERMISSION_DENIED
        access.need_trial(p, resource_id, write=True, what=what)
    else:
        store.get_experiment(resource_id)
        access.need_owner(p, "experiment", resource_id, what)


def _session_routes(sessions: SessionHooks) -> APIRouter:
    """Log in and out from a browser: the token is also set as an HttpOnly, SameSite=Strict
    cookie, so the page's own requests carry it and no script can read it."""
    router = APIRouter(prefix=API_PREFIX, tags=["auth"])

    @router.post("/auth/login")
    def login(request: Request, body: Annotated[Any, Body()]) -> Any:
        b = _body_dict(body)
        creds: list[str] = []
        for key in ("username", "password"):
            v = b.get(key)
            if not isinstance(v, str):
                raise InvalidArgumentError(f"{key}: must be a string")
            creds.append(v)
        token = sessions.login(creds[0], creds[1])
        resp = JSON({"token": token, "username": creds[0]})
        resp.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return resp

    @router.post("/auth/logout")
    def logout(request: Request) -> Any:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            sessions.logout(token)
        resp = JSON({})
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    return router


def _add_ui_routes(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    def page() -> Response:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    for path in _UI_PAGES:
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)

    def static(path: str) -> Response:
        full = (STATIC_DIR / path).resolve()
        if not full.is_relative_to(STATIC_DIR) or not full.is_file():
            raise NotFoundError(f"static file {path!r} not found")
        media = {
            ".js": "text/javascript",
            ".css": "text/css",
            ".svg": "image/svg+xml",
            ".html": "text/html",
        }.get(full.suffix)
        return FileResponse(full, media_type=media, headers={"Cache-Control": "no-cache"})

    app.add_api_route("/static/{path:path}", static, methods=["GET"], include_in_schema=False)


def _add_api_routes(
    api: APIRouter, p: _Parts, reader: metrics_mod.SeriesReader, followers: LogFollowers
) -> None:
    store, svc = p.store, p.experiments

    def shown(request: Request, exps: list[Experiment], best: bool = True) -> list[Any]:
        """Experiments as answered: environment variables hidden from all but the owner
        and admins (as gRPC answers them)."""
        who = principal_of(request)
        owners = (
            store.owner_names("experiment", [e.id for e in exps])
            if who is not None and not who.admin
            else {}
        )
        out = []
        for e in exps:
            d = ser.experiment(e, best_of(e.id) if best else None)
            if who is not None and not who.admin and owners.get(e.id, "") != who.username:
                d["config"] = hide_environment(d["config"])
            out.append(d)
        return out

    def best_of(exp_id: int) -> float | None:
        return svc.best_searcher_validation(exp_id)

    # -- master --------------------------------------------------------------------------------
    @api.get("/master", tags=["master"])
    def get_master() -> Any:
        return {
            "version": p.version,
            "cluster_id": p.cluster_id,
            "total_slots": svc.total_slots,
            "free_slots": svc.free_slots(),
            "database": store.dialect,
        }

    # -- experiments ---------------------------------------------------------------------------
    @api.get("/experiments", tags=["experiments"])
    def list_experiments(
        request: Request,
        state: Annotated[
            list[str] | None, Query(description="states, repeated or comma-separated")
        ] = None,
        label: Annotated[list[str] | None, Query(description="labels every result carries")] = None,
        name: Annotated[str | None, Query(description="name contains")] = None,
        archived: Annotated[str, Query(description="false | true | any")] = "false",
        project_id: int | None = None,
        workspace_id: int | None = None,
        sort_by: Annotated[str, Query(description=" | ".join(_EXPERIMENT_SORT))] = "id",
        order_by: Annotated[str, Query(description="asc | desc")] = "asc",
        offset: int = 0,
        limit: Annotated[int, Query(description="0 = no limit")] = 0,
    ) -> Any:
        if sort_by not in _EXPERIMENT_SORT:
            raise InvalidArgumentError(
                f"sort_by: must be one of {', '.join(_EXPERIMENT_SORT)}, got {sort_by!r}"
            )
        arch = {"false": False, "true": True, "any": None}
        if archived.lower() not in arch:
            raise InvalidArgumentError(f"archived: must be false, true or any, got {archived!r}")
        _nonneg(offset, "offset")
        _nonneg(limit, "limit")
        flt = ExperimentFilter(
            project_id=project_id or None,
            workspace_id=workspace_id or None,
            states=tuple(_enum_values(ExperimentState, _csv(state), "state")),
            name_contains=name or None,
            labels=tuple(_csv(label)),
            archived=arch[archived.lower()],
            sort_by=sort_by,
            descending=bool(_order(order_by)),
            offset=offset,
            limit=limit or None,
        )
        exps, total = store.list_experiments(flt)
        return {
            "experiments": shown(request, exps),
            "pagination": {"offset": offset, "limit": limit, "total": total},
        }

    @api.get("/experiments/{experiment_id}", tags=["experiments"])
    def get_experiment(request: Request, experiment_id: int) -> Any:
        e = store.get_experiment(experiment_id)
        return {"experiment": shown(request, [e])[0]}

    @api.patch("/experiments/{experiment_id}", tags=["experiments"])
    def patch_experiment(
        request: Request,
        experiment_id: int,
        body: Annotated[Any, Body(examples=[_PATCH_EXAMPLE])],
    ) -> Any:
        b = _body_dict(body)
        unknown = set(b) - {"name", "description", "labels", "add_labels", "remove_labels"}
        if unknown:
            raise InvalidArgumentError(f"{sorted(unknown)[0]}: not a field of an experiment patch")
        add, remove = _str_list(b, "add_labels"), _str_list(b, "remove_labels")
        if "labels" in b:  # replace the whole set
            labels = _str_list(b, "labels")
            current = store.get_experiment(experiment_id).labels
            add, remove = labels, [x for x in current if x not in labels]
        e = svc.patch(
            experiment_id,
            name=_opt_str(b, "name"),
            description=_opt_str(b, "description"),
            add_labels=add,
            remove_labels=remove,
        )
        return {"experiment": shown(request, [e])[0]}

    @api.put("/experiments/{experiment_id}/labels/{label}", tags=["experiments"])
    def add_label(request: Request, experiment_id: int, label: str) -> Any:
        e = svc.patch(experiment_id, add_labels=[label])
        return {"experiment": shown(request, [e])[0]}

    @api.delete("/experiments/{experiment_id}/labels/{label}", tags=["experiments"])
    def remove_label(request: Request, experiment_id: int, label: str) -> Any:
        e = svc.patch(experiment_id, remove_labels=[label])
        return {"experiment": shown(request, [e])[0]}

    @api.post("/experiments/{experiment_id}/{action}", tags=["experiments"])
    def experiment_action(request: Request, experiment_id: int, action: str) -> Any:
        """Lifecycle: activate, pause, cancel, kill, archive, unarchive."""
        if action not in _ACTIONS:
            raise InvalidArgumentError(
                f"action: must be one of {', '.join(_ACTIONS)}, got {action!r}"
            )
        if action == "activate":
            e = svc.activate(experiment_id)
        elif action == "pause":
            e = svc.pause(experiment_id)
        elif action == "cancel":
            e = svc.cancel(experiment_id)
        elif action == "kill":
            e = svc.cancel(experiment_id, kill=True)
        else:
            e = svc.set_archived(experiment_id, action == "archive")
        return {"experiment": shown(request, [e])[0]}

    @api.delete("/experiments/{experiment_id}", tags=["experiments"])
    def delete_experiment(request: Request, experiment_id: int) -> Any:
        e = store.get_experiment(experiment_id)
        svc.delete(experiment_id)
        return {"experiment": shown(request, [e], best=False)[0]}

    @api.get("/experiments/{experiment_id}/trials", tags=["experiments"])
    def list_trials(
        experiment_id: int,
        state: Annotated[
            list[str] | None, Query(description="states, repeated or comma-separated")
        ] = None,
        offset: int = 0,
        limit: Annotated[int, Query(description="0 = no limit")] = 0,
    ) -> Any:
        _nonneg(offset, "offset")
        _nonneg(limit, "limit")
        store.get_experiment(experiment_id)
        trials, total = store.list_trials(
            experiment_id,
            states=_enum_values(TrialState, _csv(state), "state"),
            offset=offset,
            limit=limit or None,
        )
        return {
            "trials": [ser.trial(t, svc.searcher_metric_of(t)) for t in trials],
            "pagination": {"offset": offset, "limit": limit, "total": total},
        }

    @api.get("/experiments/{experiment_id}/checkpoints", tags=["checkpoints"])
    def list_experiment_checkpoints(
        experiment_id: int,
        sort_by: Annotated[str, Query(description=_CKPT_SORT)] = "",
        order_by: Annotated[str | None, Query(description="asc | desc")] = None,
        max_results: int = 0,
        state: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        cs = p.checkpoints.list_checkpoints(
            experiment_id=experiment_id,
            trial_id=0,
            sort_by=sort_by,
            descending=_order(order_by),
            max_results=max_results,
            states=_enum_values(CheckpointState, _csv(state), "state"),
        )
        return {"checkpoints": [ser.checkpoint(c) for c in cs]}

    @api.get("/experiments/{experiment_id}/metric-names", tags=["metrics"])
    def experiment_metric_names(experiment_id: int) -> Any:
        store.get_experiment(experiment_id)
        trials, _ = store.list_trials(experiment_id)
        return {"metric_names": charts.metric_names(trials)}

    @api.get("/experiments/{experiment_id}/metrics", tags=["metrics"])
    def experiment_metrics(
        experiment_id: int,
        group: Annotated[
            str, Query(description="training | validation | a user group")
        ] = "validation",
        names: Annotated[list[str] | None, Query(description="metric names; empty = all")] = None,
        max_points: Annotated[int, Query(description="per series; 0 = every point")] = 1000,
        trial_id: Annotated[list[str] | None, Query(description="only these trials")] = None,
    ) -> Any:
        """Every trial's series of one group in one answer (what a learning-curve chart needs)."""
        charts.check_group(group)
        charts.check_max_points(max_points)
        store.get_experiment(experiment_id)
        trials, _ = store.list_trials(experiment_id)
        by_id = {t.id: t for t in trials}
        only = _int_list(_csv(trial_id), "trial_id")
        for tid in only:
            if tid not in by_id:
                raise NotFoundError(f"trial {tid} not found in experiment {experiment_id}")
        if only:
            trials = [by_id[tid] for tid in only]
        out = reader.series(trials, group, charts.check_names(_csv(names)), max_points)
        # Answered as is: FastAPI's encoder would walk every number of every series first.
        return JSON(
            {
                "experiment_id": experiment_id,
                "group": group,
                "trials": [{"trial_id": t.id, **out[t.id]} for t in trials],
            }
        )

    # -- trials --------------------------------------------------------------------------------
    @api.get("/trials/{trial_id}", tags=["trials"])
    def get_trial(trial_id: int) -> Any:
        t = store.get_trial(trial_id)
        return {"trial": ser.trial(t, svc.searcher_metric_of(t))}

    @api.post("/trials/{trial_id}/kill", tags=["trials"])
    def kill_trial(trial_id: int) -> Any:
        t = svc.kill_trial(trial_id)
        return {"trial": ser.trial(t, svc.searcher_metric_of(t))}

    @api.get("/trials/{trial_id}/metrics", tags=["metrics"])
    def trial_metrics(
        trial_id: int,
        group: Annotated[
            str, Query(description="training | validation | a user group")
        ] = "validation",
        names: Annotated[list[str] | None, Query(description="metric names; empty = all")] = None,
        max_points: Annotated[int, Query(description="per series; 0 = every point")] = 1000,
    ) -> Any:
        """Columns per metric name, downsampled to ``max_points`` (min/max per bucket)."""
        charts.check_group(group)
        charts.check_max_points(max_points)
        t = store.get_trial(trial_id)
        out = reader.series([t], group, charts.check_names(_csv(names)), max_points)
        return JSON({"trial_id": trial_id, "group": group, **out[trial_id]})

    @api.get("/trials/{trial_id}/metric-names", tags=["metrics"])
    def trial_metric_names(trial_id: int) -> Any:
        return {"metric_names": charts.metric_names([store.get_trial(trial_id)])}

    @api.get("/trials/{trial_id}/checkpoints", tags=["checkpoints"])
    def list_trial_checkpoints(
        trial_id: int,
        sort_by: str = "",
        order_by: Annotated[str | None, Query(description="asc | desc")] = None,
        max_results: int = 0,
        state: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        cs = p.checkpoints.list_checkpoints(
            experiment_id=0,
            trial_id=trial_id,
            sort_by=sort_by,
            descending=_order(order_by),
            max_results=max_results,
            states=_enum_values(CheckpointState, _csv(state), "state"),
        )
        return {"checkpoints": [ser.checkpoint(c) for c in cs]}

    @api.get("/trials/{trial_id}/logs", tags=["logs"])
    def trial_logs(
        request: Request,
        trial_id: int,
        follow: Annotated[
            bool, Query(description="stream as server-sent events until the end")
        ] = False,
        search: Annotated[str | None, Query(description="substring")] = None,
        level: Annotated[list[str] | None, Query(description="levels, e.g. WARNING,ERROR")] = None,
        rank: Annotated[list[str] | None, Query()] = None,
        stream: Annotated[list[str] | None, Query(description="stdout | stderr")] = None,
        head: int | None = None,
        tail: int | None = None,
        after_id: Annotated[int, Query(description="only lines with a larger id")] = 0,
    ) -> Any:
        """Log lines as JSON; with ``follow=true`` a ``text/event-stream``: one ``logs`` event
        per batch (data: a JSON list of lines, id: the last line's id) and an ``end`` event
        when the trial has finished. ``Last-Event-ID`` resumes after that id."""
        levels = [x.upper() for x in _csv(level)]
        for lv in levels:
            if lv not in _LEVELS:
                raise InvalidArgumentError(
                    f"level: unknown level {lv!r} (one of {', '.join(_LEVELS)})"
                )
        streams = _csv(stream)
        for s in streams:
            if s not in ("stdout", "stderr"):
                raise InvalidArgumentError(f"stream: must be stdout or stderr, got {s!r}")
        _nonneg(head, "head")
        _nonneg(tail, "tail")
        _nonneg(after_id, "after_id")
        last = request.headers.get("last-event-id", "")
        if last.isdigit():
            after_id = max(after_id, int(last))
        q = LogQuery(
            trial_id=trial_id,
            after_id=after_id,
            search=search or None,
            levels=tuple(levels),
            ranks=tuple(_int_list(_csv(rank), "rank")),
            streams=tuple(streams),
            head=head,
            tail=tail,
        )
        if head is not None and tail is not None:
            raise InvalidArgumentError("head and tail: give at most one")
        store.get_trial(trial_id)
        if not follow:
            lines = [ser.log_line(x) for page in p.logs.query(q, follow=False) for x in page]
            return {"logs": lines}
        return StreamingResponse(
            _sse_logs(p.logs, followers, q),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- checkpoints ---------------------------------------------------------------------------
    @api.get("/checkpoints/{uuid}", tags=["checkpoints"])
    def get_checkpoint(uuid: str) -> Any:
        return {"checkpoint": ser.checkpoint(store.get_checkpoint(uuid))}

    @api.get("/checkpoints/{uuid}/download", tags=["checkpoints"])
    def download_checkpoint(uuid: str) -> Any:
        """Every file of the checkpoint as one uncompressed tar, streamed (``UUID/path``)."""
        chunks = p.checkpoints.download(uuid)
        first = next(chunks, None)  # checks happen here, before the 200 is sent
        return StreamingResponse(
            _tar_stream(uuid, first, chunks),
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{uuid}.tar"'},
        )

    # -- models --------------------------------------------------------------------------------
    def version_json(v: Any) -> dict[str, Any]:
        try:
            ckpt = store.get_checkpoint(v.checkpoint_uuid)
        except NotFoundError:
            ckpt = None
        return ser.model_version(v, ckpt)

    @api.get("/models", tags=["models"])
    def list_models(
        name: Annotated[str | None, Query(description="name contains")] = None,
        label: Annotated[list[str] | None, Query()] = None,
        archived: Annotated[bool, Query(description="include archived models")] = False,
        workspace_id: int | None = None,
    ) -> Any:
        ms = store.list_models(
            name_contains=name or None,
            labels=_csv(label),
            include_archived=archived,
            workspace_id=workspace_id or None,
        )
        return {"models": [ser.model(m) for m in ms]}

    @api.get("/models/{name}", tags=["models"])
    def get_model(name: str) -> Any:
        return {"model": ser.model(store.get_model(name))}

    @api.get("/models/{name}/versions", tags=["models"])
    def list_model_versions(name: str) -> Any:
        return {"model_versions": [version_json(v) for v in store.list_model_versions(name)]}

    @api.get("/models/{name}/versions/{version}", tags=["models"])
    def get_model_version(name: str, version: int) -> Any:
        if version < 1:
            raise InvalidArgumentError(f"version: must be >= 1, got {version}")
        return {"model_version": version_json(store.get_model_version(name, version))}


# -- streams -----------------------------------------------------------------------------------


class LogFollowers:
    """What the REST log follows of one HTTP server wait on: a :class:`Waker` bound to that
    server's event loop, woken by the log service with the id of the trial that got new lines.

    The waker is made at the first follow (on the loop: uvicorn makes its loop on the server's
    own thread) and registered as a :class:`LogService` listener; :meth:`close` (the app's
    lifespan ends) unregisters and closes it. A closing log service wakes every follow too.

    Args:
        logs: the master's log service.
    """

    def __init__(self, logs: LogService) -> None:
        self.logs = logs
        self._waker: Waker | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.streams = 0  # follow streams open now (touched on the loop; read by tests)

    def waker(self) -> Waker:
        """The waker of the running loop's follows (call on the server's loop)."""
        with self._lock:
            if self._waker is None:
                self._waker = Waker(asyncio.get_running_loop())
                if self._closed:
                    self._waker.close()
                else:
                    self.logs.add_listener(self._waker.notify)
            return self._waker

    @property
    def waiting(self) -> int:
        """Follows parked waiting for new lines now (they hold no thread)."""
        w = self._waker
        return w.waiting if w is not None else 0

    def close(self) -> None:
        """Stop listening to the log service and wake every follow to end (any thread; safe
        twice)."""
        with self._lock:
            self._closed = True
            waker = self._waker
        if waker is not None and not waker.closed:
            self.logs.remove_listener(waker.notify)
            waker.close()


_END_EVENT = b"event: end\ndata: {}\n\n"


def _logs_event(page: list[Any]) -> bytes:
    data = json.dumps([ser.log_line(x) for x in page], separators=(",", ":"))
    return f"id: {page[-1].id}\nevent: logs\ndata: {data}\n\n".encode()


async def _sse_logs(logs: LogService, followers: LogFollowers, q: LogQuery) -> AsyncIterator[bytes]:
    """The event stream of a log follow: a coroutine on the server's loop that reads each page
    on the thread pool and waits for the trial's next lines without a thread. A client that
    goes away cancels it (Starlette listens for the disconnect while it streams)."""
    yield b": following\n\n"  # sends the headers and tells the browser the stream is open
    if q.head is not None:  # the first lines only: one page, then the end
        pages = await run_in_threadpool(lambda: list(logs.query(q, follow=False)))
        for page in pages:
            if page:
                yield _logs_event(page)
        yield _END_EVENT
        return
    waker = followers.waker()
    followers.streams += 1
    after: int | None = None
    try:
        with waker.watching(q.trial_id):
            while True:
                # New lines of this trial wake us at once; its end is noticed within 0.5 s.
                event = waker.current(q.trial_id)
                lines, done = await run_in_threadpool(logs.page, q, after)
                if lines:
                    after = lines[-1].id
                    yield _logs_event(lines)
                elif after is None:
                    after = q.after_id
                if done:
                    yield _END_EVENT
                    return
                if waker.closed or logs.closed:
                    return  # the server or the master stops: not the trial's end
                if not lines:
                    await waker.wait(event, 0.5)
    finally:
        followers.streams -= 1


def _tar_stream(
    uuid: str,
    first: tuple[str, int, bytes, int] | None,
    rest: Iterator[tuple[str, int, bytes, int]],
) -> Iterator[bytes]:
    now = time.time()

    def chunks() -> Iterator[tuple[str, int, bytes, int]]:
        if first is not None:
            yield first
        yield from rest

    for path, offset, data, size in chunks():
        if offset == 0:
            info = tarfile.TarInfo(f"{uuid}/{path}")
            info.size, info.mode, info.mtime = size, 0o644, int(now)
            yield info.tobuf(format=tarfile.PAX_FORMAT)
        if data:
            yield data
        if offset + len(data) == size and size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
