"""The SDK's one connection to the master: a gRPC channel, its stubs, retries and error mapping.

Every call the SDK makes goes through a :class:`Session` attribute named after the RPC (for
example ``session.get_experiment(request)``). Each attribute is typed with its request and
response messages and carries the call's retry class from one table here:

* ``READ`` calls are retried (tenacity; 5 attempts by default, exponential backoff) when the
  master answers ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED``;
* ``IDEMPOTENT`` writes (kill, pause, archive, ...) are retried the same way, since doing them
  twice is the same as doing them once;
* other ``WRITE`` calls are sent once.

Server-streaming reads are retried only while no message has arrived yet; once one has, a
failure is raised (the caller would otherwise see lines twice).

Failures reach the caller as the matching :class:`~determined_sdk.errors.DeterminedError`
subclass, translated here and nowhere else.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import tenacity
from google.protobuf import message as _message

from determined_sdk import checkpoint_wire, errors
from determined_sdk._auth import DEFAULT_USER, Credentials
from determined_sdk._transport import make_channel, parse_master
from determined_sdk.proto import (
    auth_pb2,
    auth_pb2_grpc,
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 128 * 2**20
"""Largest message the channel sends or receives (model definitions, metric pages)."""

DEFAULT_MASTER = "localhost:8080"

# RESOURCE_EXHAUSTED: the master refused the call because it is busy (nothing was done).
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

Req = TypeVar("Req", bound=_message.Message)
Resp = TypeVar("Resp", bound=_message.Message | bytes)  # bytes: a raw stream


class CallKind(enum.Enum):
    """Retry class of an RPC."""

    READ = "read"
    IDEMPOTENT = "idempotent"
    WRITE = "write"


@dataclass(frozen=True)
class RetryPolicy:
    """How reads and idempotent writes are retried.

    Attributes:
        attempts: Total tries, the first included.
        initial_wait: Seconds before the second try; each next wait doubles.
        max_wait: Cap on one wait, in seconds.
    """

    attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 8.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return float(min(self.max_wait, self.initial_wait * 2 ** (attempt - 1)))

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=tenacity.wait_exponential(
                multiplier=self.initial_wait, min=self.initial_wait, max=self.max_wait
            ),
            retry=tenacity.retry_if_exception(_is_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )


def _is_retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call) and exc.code() in _RETRYABLE
    )


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
    logger.debug("attempt %d failed with %s; retrying", state.attempt_number, code)


def normalize_master(master: str | None) -> str:
    """``host:port`` from a master address, a URL, or None (env/default).

    Args:
        master: Address given by the user, or None for ``$DET_MASTER``, else ``localhost:8080``.

    Returns:
        The gRPC target (whether it needs TLS is :func:`~determined_sdk._transport.parse_master`'s
        business).
    """
    return parse_master(master or os.environ.get("DET_MASTER") or DEFAULT_MASTER).target


class _Unary(Generic[Req, Resp]):
    """One unary RPC bound to a session, with its retry class."""

    def __init__(
        self, session: Session, method: Any, kind: CallKind, *, relogin: bool = True
    ) -> None:
        self._session = session
        self._method = method
        self.kind = kind
        self._relogin = relogin  # False for Login itself

    def __call__(
        self, request: Req, *, timeout: float | None = None, retry: bool | None = None
    ) -> Resp:
        """Send ``request``; raise a :class:`DeterminedError` on failure.

        Args:
            request: The request message.
            timeout: Deadline in seconds (default: the session's).
            retry: Override the RPC's retry class (False never retries, True always may).
        """
        s = self._session
        s._check_open()
        deadline = s.timeout if timeout is None else timeout
        may_retry = self.kind is not CallKind.WRITE if retry is None else retry

        def once() -> Resp:
            out: Resp = self._method(request, timeout=deadline, metadata=s._metadata)
            return out

        for attempt in (1, 2):
            sent_with = s._metadata
            try:
                if not may_retry:
                    return once()
                result: Resp = s.retry._retrying()(once)
                return result
            except grpc.RpcError as e:
                if attempt == 1 and self._relogin and s._relogin_after(e, sent_with):
                    continue
                raise s._translate(e) from None
        raise AssertionError("unreachable")


class _Stream(Generic[Req, Resp]):
    """One server-streaming read bound to a session; retried until the first message arrives."""

    def __init__(self, session: Session, method: Any) -> None:
        self._session = session
        self._method = method

    def __call__(self, request: Req, *, timeout: float | None = None) -> Iterator[Resp]:
        """Open the stream and yield its messages; the call is cancelled if the caller stops.

        Args:
            request: The request message.
            timeout: Deadline for the whole stream in seconds (default: none).
        """
        s = self._session
        s._check_open()
        attempt = 0
        while True:
            attempt += 1
            got_any = False
            sent_with = s._metadata
            call = self._method(request, timeout=timeout, metadata=s._metadata)
            try:
                for item in call:
                    got_any = True
                    yield item
                return
            except grpc.RpcError as e:
                if not got_any and attempt == 1 and s._relogin_after(e, sent_with):
                    continue
                if got_any or not _is_retryable(e) or attempt >= s.retry.attempts:
                    raise s._translate(e) from None
                logger.debug("stream attempt %d failed with %s; retrying", attempt, e.code())
                time.sleep(s.retry.wait(attempt))
            finally:
                # The consumer may stop early (head of a followed log); free the server side.
                call.cancel()


class Session:
    """A channel to the master and one typed callable per RPC.

    Thread-safe: one session may be shared by every thread of a program.

    Args:
        master: ``host:port`` of the master (see :func:`normalize_master`).
        token: Bearer token sent with every call, if any.
        retry: Retry policy for reads and idempotent writes.
        timeout: Default deadline of unary calls, in seconds (None: no deadline).
        interceptors: gRPC client interceptors wrapped around the channel (tests count
            requests this way).
        credentials: Username and password to log in again with when the session expires
            (see :mod:`determined_sdk._auth`; None: ``admin`` with the empty password, the
            loopback quick start).
    """

    def __init__(
        self,
        master: str | None = None,
        *,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 60.0,
        interceptors: Sequence[Any] = (),
        credentials: Credentials | None = None,
    ) -> None:
        self.address = parse_master(master or os.environ.get("DET_MASTER") or DEFAULT_MASTER)
        self.master = self.address.target
        self._credentials = credentials
        self._relogin_lock = threading.Lock()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._lock = threading.Lock()
        self._closed = False
        self._raw_channel = make_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Reconnect quickly after the master comes back, so retries can succeed.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        channel: Any = self._raw_channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._channel = channel
        if token:
            self.set_token(token)

        exp = experiment_pb2_grpc.ExperimentServiceStub(channel)
        trial = trial_pb2_grpc.TrialServiceStub(channel)
        ckpt = checkpoint_pb2_grpc.CheckpointServiceStub(channel)
        logs = logs_pb2_grpc.LogServiceStub(channel)
        ws = workspace_pb2_grpc.WorkspaceServiceStub(channel)
        model = model_pb2_grpc.ModelServiceStub(channel)
        master_ = master_pb2_grpc.MasterServiceStub(channel)
        R, I, W = CallKind.READ, CallKind.IDEMPOTENT, CallKind.WRITE  # noqa: E741

        # The retry table: one line per RPC the SDK uses.
        self.get_master_info: _Unary[
            master_pb2.GetMasterInfoRequest, master_pb2.GetMasterInfoResponse
        ] = _Unary(self, master_.GetMasterInfo, R)
        self.login: _Unary[master_pb2.LoginRequest, master_pb2.LoginResponse] = _Unary(
            self, master_.Login, W, relogin=False
        )
        users = auth_pb2_grpc.UserServiceStub(channel)
        self.logout: _Unary[auth_pb2.LogoutRequest, auth_pb2.LogoutResponse] = _Unary(
            self, users.Logout, I
        )
        self.get_me: _Unary[auth_pb2.GetMeRequest, auth_pb2.GetMeResponse] = _Unary(
            self, users.GetMe, R
        )
        self.create_user: _Unary[auth_pb2.CreateUserRequest, auth_pb2.CreateUserResponse] = _Unary(
            self, users.CreateUser, W
        )
        self.list_users: _Unary[auth_pb2.ListUsersRequest, auth_pb2.ListUsersResponse] = _Unary(
            self, users.ListUsers, R
        )
        self.change_password: _Unary[
            auth_pb2.ChangePasswordRequest, auth_pb2.ChangePasswordResponse
        ] = _Unary(self, users.ChangePassword, W)
        self.set_user_active: _Unary[
            auth_pb2.SetUserActiveRequest, auth_pb2.SetUserActiveResponse
        ] = _Unary(self, users.SetUserActive, I)

        self.create_experiment: _Unary[
            experiment_pb2.CreateExperimentRequest, experiment_pb2.CreateExperimentResponse
        ] = _Unary(self, exp.CreateExperiment, W)
        self.get_experiment: _Unary[
            experiment_pb2.GetExperimentRequest, experiment_pb2.GetExperimentResponse
        ] = _Unary(self, exp.GetExperiment, R)
        self.list_experiments: _Unary[
            experiment_pb2.ListExperimentsRequest, experiment_pb2.ListExperimentsResponse
        ] = _Unary(self, exp.ListExperiments, R)
        self.patch_experiment: _Unary[
            experiment_pb2.PatchExperimentRequest, experiment_pb2.PatchExperimentResponse
        ] = _Unary(self, exp.PatchExperiment, I)
        self.experiment_action: _Unary[
            experiment_pb2.ExperimentActionRequest, experiment_pb2.ExperimentActionResponse
        ] = _Unary(self, exp.ExperimentAction, I)
        self.move_experiment: _Unary[
            experiment_pb2.MoveExperimentRequest, experiment_pb2.MoveExperimentResponse
        ] = _Unary(self, exp.MoveExperiment, I)
        self.get_model_definition: _Unary[
            experiment_pb2.GetModelDefinitionRequest, experiment_pb2.GetModelDefinitionResponse
        ] = _Unary(self, exp.GetModelDefinition, R)
        self.list_experiment_trials: _Unary[
            experiment_pb2.ListExperimentTrialsRequest,
            experiment_pb2.ListExperimentTrialsResponse,
        ] = _Unary(self, exp.ListExperimentTrials, R)
        self.get_best_searcher_validation: _Unary[
            experiment_pb2.GetBestSearcherValidationRequest,
            experiment_pb2.GetBestSearcherValidationResponse,
        ] = _Unary(self, exp.GetBestSearcherValidation, R)
        # Custom search: reading events is a read; posting actions is a plain write (a resend
        # after a lost reply would create trials twice), so it is sent once.
        self.get_searcher_events: _Unary[
            experiment_pb2.GetSearcherEventsRequest, experiment_pb2.GetSearcherEventsResponse
        ] = _Unary(self, exp.GetSearcherEvents, R)
        self.post_searcher_actions: _Unary[
            experiment_pb2.PostSearcherActionsRequest, experiment_pb2.PostSearcherActionsResponse
        ] = _Unary(self, exp.PostSearcherActions, W)

        self.get_trial: _Unary[trial_pb2.GetTrialRequest, trial_pb2.GetTrialResponse] = _Unary(
            self, trial.GetTrial, R
        )
        self.kill_trial: _Unary[trial_pb2.KillTrialRequest, trial_pb2.KillTrialResponse] = _Unary(
            self, trial.KillTrial, I
        )
        self.report_metrics: _Unary[
            trial_pb2.ReportMetricsRequest, trial_pb2.ReportMetricsResponse
        ] = _Unary(self, trial.ReportMetrics, I)  # the batch id makes a resend harmless
        self.stream_metrics: _Stream[
            trial_pb2.StreamMetricsRequest, trial_pb2.StreamMetricsResponse
        ] = _Stream(self, trial.StreamMetrics)
        self.stream_metric_series: _Stream[
            trial_pb2.StreamMetricSeriesRequest, trial_pb2.StreamMetricSeriesResponse
        ] = _Stream(self, trial.StreamMetricSeries)

        self.get_checkpoint: _Unary[
            checkpoint_pb2.GetCheckpointRequest, checkpoint_pb2.GetCheckpointResponse
        ] = _Unary(self, ckpt.GetCheckpoint, R)
        self.list_checkpoints: _Unary[
            checkpoint_pb2.ListCheckpointsRequest, checkpoint_pb2.ListCheckpointsResponse
        ] = _Unary(self, ckpt.ListCheckpoints, R)
        self.patch_checkpoint_metadata: _Unary[
            checkpoint_pb2.PatchCheckpointMetadataRequest,
            checkpoint_pb2.PatchCheckpointMetadataResponse,
        ] = _Unary(self, ckpt.PatchCheckpointMetadata, I)
        self.delete_checkpoints: _Unary[
            checkpoint_pb2.DeleteCheckpointsRequest, checkpoint_pb2.DeleteCheckpointsResponse
        ] = _Unary(self, ckpt.DeleteCheckpoints, W)
        self.remove_checkpoint_files: _Unary[
            checkpoint_pb2.RemoveCheckpointFilesRequest,
            checkpoint_pb2.RemoveCheckpointFilesResponse,
        ] = _Unary(self, ckpt.RemoveCheckpointFiles, I)
        self.download_checkpoint: _Stream[
            checkpoint_pb2.DownloadCheckpointRequest, checkpoint_pb2.CheckpointChunk
        ] = _Stream(self, ckpt.DownloadCheckpoint)
        # The same stream as raw message bytes, decoded by checkpoint_wire without copies.
        self._download_raw = channel.unary_stream(
            checkpoint_wire.DOWNLOAD_METHOD,
            request_serializer=checkpoint_pb2.DownloadCheckpointRequest.SerializeToString,
            response_deserializer=None,
        )
        self.download_checkpoint_raw: _Stream[checkpoint_pb2.DownloadCheckpointRequest, bytes] = (
            _Stream(self, self._download_raw)
        )

        self.trial_logs: _Stream[logs_pb2.TrialLogsRequest, logs_pb2.TrialLogsResponse] = _Stream(
            self, logs.TrialLogs
        )

        self.create_workspace: _Unary[
            workspace_pb2.CreateWorkspaceRequest, workspace_pb2.CreateWorkspaceResponse
        ] = _Unary(self, ws.CreateWorkspace, W)
        self.get_workspace: _Unary[
            workspace_pb2.GetWorkspaceRequest, workspace_pb2.GetWorkspaceResponse
        ] = _Unary(self, ws.GetWorkspace, R)
        self.list_workspaces: _Unary[
            workspace_pb2.ListWorkspacesRequest, workspace_pb2.ListWorkspacesResponse
        ] = _Unary(self, ws.ListWorkspaces, R)
        self.delete_workspace: _Unary[
            workspace_pb2.DeleteWorkspaceRequest, workspace_pb2.DeleteWorkspaceResponse
        ] = _Unary(self, ws.DeleteWorkspace, W)
        self.create_project: _Unary[
            workspace_pb2.CreateProjectRequest, workspace_pb2.CreateProjectResponse
        ] = _Unary(self, ws.CreateProject, W)
        self.get_project: _Unary[
            workspace_pb2.GetProjectRequest, workspace_pb2.GetProjectResponse
        ] = _Unary(self, ws.GetProject, R)
        self.list_projects: _Unary[
            workspace_pb2.ListProjectsRequest, workspace_pb2.ListProjectsResponse
        ] = _Unary(self, ws.ListProjects, R)
        self.delete_project: _Unary[
            workspace_pb2.DeleteProjectRequest, workspace_pb2.DeleteProjectResponse
        ] = _Unary(self, ws.DeleteProject, W)
        self.patch_project: _Unary[
            workspace_pb2.PatchProjectRequest, workspace_pb2.PatchProjectResponse
        ] = _Unary(self, ws.PatchProject, I)

        self.create_model: _Unary[model_pb2.CreateModelRequest, model_pb2.CreateModelResponse] = (
            _Unary(self, model.CreateModel, W)
        )
        self.get_model: _Unary[model_pb2.GetModelRequest, model_pb2.GetModelResponse] = _Unary(
            self, model.GetModel, R
        )
        self.list_models: _Unary[model_pb2.ListModelsRequest, model_pb2.ListModelsResponse] = (
            _Unary(self, model.ListModels, R)
        )
        self.patch_model: _Unary[model_pb2.PatchModelRequest, model_pb2.PatchModelResponse] = (
            _Unary(self, model.PatchModel, I)
        )
        self.delete_model: _Unary[model_pb2.DeleteModelRequest, model_pb2.DeleteModelResponse] = (
            _Unary(self, model.DeleteModel, W)
        )
        self.register_model_version: _Unary[
            model_pb2.RegisterModelVersionRequest, model_pb2.RegisterModelVersionResponse
        ] = _Unary(self, model.RegisterModelVersion, W)
        self.list_model_versions: _Unary[
            model_pb2.ListModelVersionsRequest, model_pb2.ListModelVersionsResponse
        ] = _Unary(self, model.ListModelVersions, R)
        self.get_model_version: _Unary[
            model_pb2.GetModelVersionRequest, model_pb2.GetModelVersionResponse
        ] = _Unary(self, model.GetModelVersion, R)
        self.delete_model_version: _Unary[
            model_pb2.DeleteModelVersionRequest, model_pb2.DeleteModelVersionResponse
        ] = _Unary(self, model.DeleteModelVersion, W)
        self.patch_model_version: _Unary[
            model_pb2.PatchModelVersionRequest, model_pb2.PatchModelVersionResponse
        ] = _Unary(self, model.PatchModelVersion, I)

    def _check_open(self) -> None:
        if self._closed:
            raise errors.FailedPreconditionError(
                f"the client for {self.master} is closed; create a new Determined()"
            )

    def _translate(self, e: grpc.RpcError) -> errors.DeterminedError:
        """The SDK error for a failed call (the one place calls are translated)."""
        out = errors.from_rpc_error(e)
        if isinstance(out, errors.MasterUnavailableError):
            out.args = (f"cannot reach the master at {self.master}: {out}",)
        return out

    def _relogin_after(self, e: grpc.RpcError, sent_with: tuple[tuple[str, str], ...]) -> bool:
        """After UNAUTHENTICATED: log in again (once per expired token); whether to retry."""
        if not (isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNAUTHENTICATED):
            return False
        with self._relogin_lock:
            if self._metadata != sent_with:  # another thread logged in meanwhile
                return True
            creds = self._credentials or Credentials(DEFAULT_USER, "")
            try:
                resp = self.login(
                    master_pb2.LoginRequest(username=creds.username, password=creds.password)
                )
            except errors.DeterminedError:
                if self._credentials is not None:
                    raise  # why this user cannot log in again (deactivated, new password)
                return False
            self.set_token(resp.token)
            return True

    def log_in(self, username: str, password: str) -> str:
        """Log in, send the new token from now on, and remember the credentials for re-login.

        Returns:
            The session token.

        Raises:
            UnauthenticatedError: Wrong user or password.
        """
        resp = self.login(master_pb2.LoginRequest(username=username, password=password))
        self._credentials = Credentials(username, password)
        self.set_token(resp.token)
        return str(resp.token)

    @property
    def token(self) -> str | None:
        """The token sent with each call, if any."""
        return self._metadata[0][1].removeprefix("Bearer ") if self._metadata else None

    def bulk_download_ticket(
        self, request: checkpoint_pb2.DownloadCheckpointRequest
    ) -> tuple[str, int, str] | None:
        """Ask the master to send a checkpoint on its bulk port (``master_server.bulk``).

        Returns:
            ``(host, port, ticket)``, or None when the master offers none (TLS, an older
            master, or any failure: the gRPC stream then reports it).
        """
        if self.address.tls:
            return None
        self._check_open()
        call = self._download_raw(
            request,
            timeout=self.timeout,
            metadata=(*self._metadata, (checkpoint_wire.BULK_REQUEST, "1")),
        )
        try:
            md = dict(call.initial_metadata() or ())
            port, ticket = md.get(checkpoint_wire.BULK_PORT), md.get(checkpoint_wire.BULK_TICKET)
            if not port or not ticket:
                return None
            for _message in call:  # a ticket comes with no message
                return None
        except grpc.RpcError:
            return None
        finally:
            call.cancel()
        host = self.master.rsplit(":", 1)[0].strip("[]")
        return host, int(port), str(ticket)

    def set_token(self, token: str | None) -> None:
        """Send ``authorization: Bearer <token>`` with every later call (None: no header)."""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Close the channel; later calls fail. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._raw_channel.close()

    def __repr__(self) -> str:
        return f"Session(master={self.master!r})"
