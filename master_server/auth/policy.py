"""Who may call what: one rule per RPC, checked with the decoded request before the handler runs.

The table :data:`RULES` has an entry for every RPC of every service in ``determined_sdk.proto``
(a test walks the generated descriptors, so a new RPC without a rule fails CI; at run time a
method without a rule is refused). Each rule says whether a trial token may call the method at
all and checks the ids in the request against the caller:

* everyone logged in may read (get, list, stream, download);
* a user changes and deletes only what they own (experiments and their trials and checkpoints,
  models, workspaces, projects); admins change anything; resources with no recorded owner (the
  default workspace and project) are changed by admins only, though anyone may create inside
  them;
* a trial token acts only on its own trial (metrics, checkpoints, logs, progress, searcher ops,
  preemption, its exit), and reads its experiment's searcher state and the checkpoints of its
  experiment or the one it warm-starts from.

After a successful call, :func:`after` records the owner of what a create call made, fills the
``username`` of every experiment, model, workspace and project in the answer, and hides an
experiment's ``environment_variables`` (config and original text) from callers who are neither
its owner nor an admin (a summary list reply comes with its usernames and no configs, and is
left as it is). The functions take the method name and proto messages, so any transport
that maps its routes to these methods can call them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from determined_sdk.errors import NotFoundError, PermissionDeniedError
from master_server.auth.principal import Principal
from master_server.store.base import Store

logger = logging.getLogger(__name__)

Check = Callable[["Access", Principal, Any], None]


@dataclass(frozen=True)
class Rule:
    """How one RPC is authorized.

    Attributes:
        check: Raises PermissionDeniedError (or NotFoundError for a missing id) to refuse.
        trial: Whether a trial token may call it at all (``check`` then scopes the ids).
        trial_scoped: See the attribute.
    """

    check: Check
    trial: bool = False
    #: For a trial token, ``check`` only compares the request's trial id with the token's
    #: (no database read): such calls of a running trial are authorized on the event loop.
    trial_scoped: bool = False


class Access:
    """Ownership look-ups for the checks, on the master's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def deny(p: Principal, what: str) -> PermissionDeniedError:
        who = f"trial {p.trial_id}'s token" if p.is_trial else f"user {p.username!r}"
        return PermissionDeniedError(f"{who} may not {what}")

    def owns(self, p: Principal, kind: str, resource_id: int) -> bool:
        if p.admin:
            return True
        if p.is_trial:
            return False
        return self.store.find_owner(kind, resource_id) == p.user_id

    def need_owner(self, p: Principal, kind: str, resource_id: int, what: str) -> None:
        if not self.owns(p, kind, resource_id):
            raise self.deny(p, f"{what} {kind} {resource_id} (owned by someone else)")

    def trial_experiment(self, trial_id: int) -> int:
        return self.store.get_trial(trial_id).experiment_id

    def need_trial(self, p: Principal, trial_id: int, *, write: bool, what: str) -> None:
        """Trial tokens: only their own trial. Users: read any; write what they own."""
        if p.is_trial:
            if trial_id != p.trial_id:
                raise self.deny(p, f"{what} trial {trial_id}")
            return
        if write and not p.admin:  # an admin may act on anything: no look-up needed
            exp_id = self.trial_experiment(trial_id)
            if not self.owns(p, "experiment", exp_id):
                raise self.deny(p, f"{what} trial {trial_id} of experiment {exp_id}")

    def need_checkpoint(self, p: Principal, uuid: str, *, write: bool, what: str) -> None:
        if p.admin or (not p.is_trial and not write):
            return  # the service reports a missing uuid itself
        ckpt = self.store.get_checkpoint(uuid)
        if p.is_trial:
            if ckpt.trial_id == p.trial_id:
                return
            if not write:
                if ckpt.experiment_id == p.experiment_id:
                    return
                assert p.trial_id is not None
                if self.store.get_trial(p.trial_id).warm_start_checkpoint_uuid == uuid:
                    return
            raise self.deny(p, f"{what} checkpoint {uuid} of trial {ckpt.trial_id}")
        if write and not self.owns(p, "experiment", ckpt.experiment_id):
            raise self.deny(p, f"{what} checkpoint {uuid} of experiment {ckpt.experiment_id}")


# -- rule builders -----------------------------------------------------------------------------
def _read(a: Access, p: Principal, r: Any) -> None:
    """Any logged-in user."""


def _user_only(a: Access, p: Principal, r: Any) -> None:
    """Any logged-in user (trial tokens are refused by ``Rule.trial=False``)."""


def _admin(what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        if not p.admin:
            raise a.deny(p, f"{what} (admins only)")

    return check


def _trial_field(field: str, *, write: bool, what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        a.need_trial(p, int(getattr(r, field)), write=write, what=what)

    return check


def _trial_call(what: str, *, write: bool = True) -> Rule:
    """A call about the trial in the request's ``trial_id``: for a trial token, its own only."""
    return Rule(_trial_field("trial_id", write=write, what=what), trial=True, trial_scoped=True)


def _experiment(field: str, what: str, *, write: bool = True) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        exp_id = int(getattr(r, field))
        if p.is_trial:
            if exp_id != p.experiment_id or write:
                raise a.deny(p, f"{what} experiment {exp_id}")
            return
        if write and not p.admin:
            a.store.get_experiment(exp_id)  # NOT_FOUND before PERMISSION_DENIED
            a.need_owner(p, "experiment", exp_id, what)

    return check


def _checkpoint(field: str, *, write: bool, what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        a.need_checkpoint(p, str(getattr(r, field)), write=write, what=what)

    return check


def _checkpoints(a: Access, p: Principal, r: Any) -> None:
    if p.admin:
        return
    for uuid in dict.fromkeys(r.uuids):
        try:
            a.need_checkpoint(p, uuid, write=True, what="delete")
        except NotFoundError:
            continue  # the service reports unknown uuids itself


def _list_checkpoints(a: Access, p: Principal, r: Any) -> None:
    if p.is_trial and not (
        (r.trial_id and r.trial_id == p.trial_id)
        or (r.experiment_id and r.experiment_id == p.experiment_id)
    ):
        raise a.deny(p, "list checkpoints outside its own experiment")


def _stream_metrics(a: Access, p: Principal, r: Any) -> None:
    if p.is_trial and any(t != p.trial_id for t in r.trial_ids):
        raise a.deny(p, "read metrics of other trials")


def _ship_logs(a: Access, p: Principal, r: Any) -> None:
    if p.admin:
        return
    for tid in dict.fromkeys(line.trial_id for line in r.lines):
        a.need_trial(p, tid, write=True, what="ship logs for")


def _trial_exit(a: Access, p: Principal, r: Any) -> None:
    if p.is_trial:
        if r.trial_id != p.trial_id or r.run_id != p.run_id:
            raise a.deny(p, f"report the exit of trial {r.trial_id} run {r.run_id}")
        return
    if not p.admin:
        raise a.deny(p, "report a trial's exit (only its own run's token or an admin may)")


def _unmanaged(a: Access, p: Principal, r: Any) -> None:
    if r.experiment_id and not p.admin:
        a.store.get_experiment(r.experiment_id)
        a.need_owner(p, "experiment", r.experiment_id, "add a trial to")


def _workspace(field: str, what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        ws = int(getattr(r, field))
        if p.admin:
            return
        a.store.get_workspace(ws)
        a.need_owner(p, "workspace", ws, what)

    return check


def _create_project(a: Access, p: Principal, r: Any) -> None:
    if p.admin or r.workspace_id in (0, 1):  # the default workspace is open to everyone
        return
    a.store.get_workspace(r.workspace_id)
    a.need_owner(p, "workspace", r.workspace_id, "create a project in")


def _project(field: str, what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        pid = int(getattr(r, field))
        if p.admin:
            return
        a.store.get_project(pid)
        a.need_owner(p, "project", pid, what)

    return check


def _model(field: str, what: str) -> Check:
    def check(a: Access, p: Principal, r: Any) -> None:
        if p.admin:
            return
        m = a.store.get_model(str(getattr(r, field)))
        a.need_owner(p, "model", m.id, what)

    return check


_SVC = "/detsdk.v1."

#: The rule of every RPC, by full method name.
RULES: dict[str, Rule] = {
    # MasterService
    f"{_SVC}MasterService/GetMasterInfo": Rule(_read, trial=True),
    f"{_SVC}MasterService/Login": Rule(_read, trial=True),  # public; see core.PUBLIC_METHODS
    f"{_SVC}MasterService/ReportTrialExit": Rule(_trial_exit, trial=True),
    # UserService (the service checks admin/self itself)
    f"{_SVC}UserService/Logout": Rule(_user_only),
    f"{_SVC}UserService/GetMe": Rule(_read, trial=True),
    f"{_SVC}UserService/CreateUser": Rule(_admin("create users")),
    f"{_SVC}UserService/ListUsers": Rule(_user_only),
    f"{_SVC}UserService/ChangePassword": Rule(_user_only),
    f"{_SVC}UserService/SetUserActive": Rule(_admin("activate or deactivate users")),
    # ExperimentService
    f"{_SVC}ExperimentService/CreateExperiment": Rule(_user_only),
    f"{_SVC}ExperimentService/CreateUnmanagedTrial": Rule(_unmanaged),
    f"{_SVC}ExperimentService/GetExperiment": Rule(
        _experiment("experiment_id", "read", write=False), trial=True
    ),
    f"{_SVC}ExperimentService/ListExperiments": Rule(_read),
    f"{_SVC}ExperimentService/PatchExperiment": Rule(_experiment("experiment_id", "change")),
    f"{_SVC}ExperimentService/ExperimentAction": Rule(_experiment("experiment_id", "act on")),
    f"{_SVC}ExperimentService/MoveExperiment": Rule(_experiment("experiment_id", "move")),
    f"{_SVC}ExperimentService/GetModelDefinition": Rule(_read),
    f"{_SVC}ExperimentService/ListExperimentTrials": Rule(_read),
    f"{_SVC}ExperimentService/GetBestSearcherValidation": Rule(
        _experiment("experiment_id", "read", write=False), trial=True
    ),
    f"{_SVC}ExperimentService/GetSearcherEvents": Rule(
        _experiment("experiment_id", "drive the search of")
    ),
    f"{_SVC}ExperimentService/PostSearcherActions": Rule(
        _experiment("experiment_id", "drive the search of")
    ),
    # TrialService
    f"{_SVC}TrialService/GetTrial": _trial_call("read", write=False),
    f"{_SVC}TrialService/KillTrial": Rule(_trial_field("trial_id", write=True, what="kill")),
    f"{_SVC}TrialService/ReportMetrics": _trial_call("report metrics for"),
    f"{_SVC}TrialService/StreamMetrics": Rule(_stream_metrics, trial=True),
    f"{_SVC}TrialService/StreamMetricSeries": Rule(_stream_metrics, trial=True),
    f"{_SVC}TrialService/ReportProgress": _trial_call("report progress for"),
    f"{_SVC}TrialService/ReportEarlyExit": _trial_call("report an early exit for"),
    # Carries the experiment config, environment_variables included: owner, admin or the trial.
    f"{_SVC}TrialService/GetTrialContext": _trial_call("read the context of"),
    # CheckpointService
    f"{_SVC}CheckpointService/ReportCheckpoint": _trial_call("report a checkpoint for"),
    f"{_SVC}CheckpointService/GetCheckpoint": Rule(
        _checkpoint("uuid", write=False, what="read"), trial=True
    ),
    f"{_SVC}CheckpointService/ListCheckpoints": Rule(_list_checkpoints, trial=True),
    f"{_SVC}CheckpointService/PatchCheckpointMetadata": Rule(
        _checkpoint("uuid", write=True, what="change the metadata of"), trial=True
    ),
    f"{_SVC}CheckpointService/DeleteCheckpoints": Rule(_checkpoints, trial=True),
    f"{_SVC}CheckpointService/RemoveCheckpointFiles": Rule(
        _checkpoint("uuid", write=True, what="remove files of"), trial=True
    ),
    f"{_SVC}CheckpointService/DownloadCheckpoint": Rule(
        _checkpoint("uuid", write=False, what="download"), trial=True
    ),
    # SearcherService
    f"{_SVC}SearcherService/GetSearcherOperation": _trial_call("take searcher operations of"),
    f"{_SVC}SearcherService/CompleteSearcherOperation": _trial_call(
        "complete searcher operations of"
    ),
    f"{_SVC}SearcherService/WatchPreemption": _trial_call("watch preemption of"),
    f"{_SVC}SearcherService/AckPreemption": _trial_call("acknowledge preemption of"),
    # LogService
    f"{_SVC}LogService/ShipLogs": Rule(_ship_logs, trial=True),
    f"{_SVC}LogService/TrialLogs": Rule(_read),
    # WorkspaceService
    f"{_SVC}WorkspaceService/CreateWorkspace": Rule(_user_only),
    f"{_SVC}WorkspaceService/GetWorkspace": Rule(_read),
    f"{_SVC}WorkspaceService/ListWorkspaces": Rule(_read),
    f"{_SVC}WorkspaceService/DeleteWorkspace": Rule(_workspace("workspace_id", "delete")),
    f"{_SVC}WorkspaceService/CreateProject": Rule(_create_project),
    f"{_SVC}WorkspaceService/GetProject": Rule(_read),
    f"{_SVC}WorkspaceService/ListProjects": Rule(_read),
    f"{_SVC}WorkspaceService/DeleteProject": Rule(_project("project_id", "delete")),
    f"{_SVC}WorkspaceService/PatchProject": Rule(_project("project_id", "change")),
    # ModelService
    f"{_SVC}ModelService/CreateModel": Rule(_user_only),
    f"{_SVC}ModelService/GetModel": Rule(_read),
    f"{_SVC}ModelService/ListModels": Rule(_read),
    f"{_SVC}ModelService/PatchModel": Rule(_model("name", "change")),
    f"{_SVC}ModelService/DeleteModel": Rule(_model("name", "delete")),
    f"{_SVC}ModelService/RegisterModelVersion": Rule(_model("model_name", "add a version to")),
    f"{_SVC}ModelService/ListModelVersions": Rule(_read),
    f"{_SVC}ModelService/GetModelVersion": Rule(_read),
    f"{_SVC}ModelService/DeleteModelVersion": Rule(_model("model_name", "delete a version of")),
    f"{_SVC}ModelService/PatchModelVersion": Rule(_model("model_name", "change a version of")),
}


def authorize_trial_inline(method: str, principal: Principal, request: Any) -> bool:
    """Authorize a trial token's call without the database when its rule allows it (see
    :attr:`Rule.trial_scoped`): True when allowed so, False when :func:`authorize` must
    decide (which it does for a refusal too, with its error)."""
    rule = RULES.get(method)
    if rule is None or not rule.trial_scoped or not principal.is_trial:
        return False
    return getattr(request, "trial_id", None) == principal.trial_id


def authorize(store: Store, method: str, principal: Principal | None, request: Any) -> None:
    """Refuse the call unless ``principal`` may call ``method`` with ``request``.

    Raises:
        PermissionDeniedError: Not allowed (the message names the id at fault).
        NotFoundError: An id the check needed does not exist.
    """
    if principal is None:  # a public method called anonymously
        return
    rule = RULES.get(method)
    if rule is None:
        if method.startswith("/grpc.health."):
            return
        raise PermissionDeniedError(f"{method}: no access rule; refused")
    if principal.is_trial and not rule.trial:
        raise PermissionDeniedError(f"{method}: a trial token cannot call this; use a user login")
    rule.check(Access(store), principal, request)


# -- after the call ------------------------------------------------------------------------
#: Create calls whose answer names a new resource the caller now owns: (kind, answer field).
_CREATES: dict[str, tuple[str, str]] = {
    f"{_SVC}ExperimentService/CreateExperiment": ("experiment", "experiment"),
    f"{_SVC}ExperimentService/CreateUnmanagedTrial": ("experiment", "experiment"),
    f"{_SVC}WorkspaceService/CreateWorkspace": ("workspace", "workspace"),
    f"{_SVC}WorkspaceService/CreateProject": ("project", "project"),
    f"{_SVC}ModelService/CreateModel": ("model", "model"),
}
_KINDS = {
    "detsdk.v1.Experiment": "experiment",
    "detsdk.v1.Workspace": "workspace",
    "detsdk.v1.Project": "project",
    "detsdk.v1.Model": "model",
}
_HIDDEN = "<hidden: visible to the owner and admins>"
#: Calls whose reply, unless the request asks ``full``, holds experiment summaries built
#: with their owners' usernames (read with the rows, ``convert.add_experiment_summaries``):
#: nothing to add to them, and a summary has no config to hide.
_SUMMARY_LISTS = frozenset({f"{_SVC}ExperimentService/ListExperiments"})


def _owned_groups(msg: Message, depth: int = 0) -> Iterable[tuple[str, Sequence[Any]]]:
    """(kind, messages) for each field of ``msg`` holding Experiment / Workspace / Project /
    Model messages (two levels deep); a repeated field comes as its container, uncopied."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        kind = _KINDS.get(fd.message_type.full_name)
        if kind is not None:
            yield kind, value if fd.is_repeated else (value,)
        elif depth < 1 and fd.message_type.full_name.startswith("detsdk.v1."):
            for item in value if fd.is_repeated else (value,):
                if isinstance(item, Message):
                    yield from _owned_groups(item, depth + 1)


def after_is_trivial(method: str, principal: Principal | None, response: Any) -> bool:
    """Whether :func:`after` has nothing to do for this answer (no owner to record, no
    owned resource in it to name or redact), so it need not be called."""
    if principal is None or not isinstance(response, Message):
        return True
    if method in _CREATES:
        return False
    return next(iter(_owned_groups(response)), None) is None


def after(
    store: Store, method: str, principal: Principal | None, request: Any, response: Any
) -> None:
    """Record owners of created resources and decorate ``response`` in place (see module doc)."""
    if principal is None or not isinstance(response, Message):
        return
    create = _CREATES.get(method)
    made_by_caller: tuple[str, int] | None = None  # known owner: no need to look it up
    if create is not None and principal.user_id and not principal.is_trial:
        kind, field = create
        made = getattr(response, field)
        if not (method.endswith("CreateUnmanagedTrial") and request.experiment_id):
            store.set_owner(kind, made.id, principal.user_id)
            made_by_caller = (kind, made.id)
    if method in _SUMMARY_LISTS and not request.full:
        return
    by_kind: dict[str, list[Any]] = {}
    for kind, msgs in _owned_groups(response):
        by_kind.setdefault(kind, []).extend(msgs)
    for kind, msgs in by_kind.items():
        # A list reply carries thousands: one query, and per message only what it needs.
        ids = [m.id for m in msgs]
        if made_by_caller is not None and all((kind, i) == made_by_caller for i in ids):
            names = {made_by_caller[1]: principal.username}
        else:
            names = store.owner_names(kind, ids)
        redact = kind == "experiment" and not principal.admin
        if not names and not redact:
            continue  # every username stays "" (no owners), nothing to hide
        for m, i in zip(msgs, ids, strict=True):
            owner = names.get(i, "")
            if owner:
                m.username = owner
            if redact and m.config_json:  # a summary has no config to hide
                _redact(m, principal, owner)


def _redact(exp: Any, p: Principal, owner: str) -> None:
    """Hide an experiment's environment_variables from all but its owner, admins, its trials."""
    if p.admin or (owner and owner == p.username and not p.is_trial):
        return
    if p.is_trial and exp.id == p.experiment_id:
        return
    try:
        cfg = json.loads(exp.config_json) if exp.config_json else {}
    except ValueError:
        return
    hidden = hide_environment(cfg)
    if hidden is cfg:
        return
    exp.config_json = json.dumps(hidden)
    exp.original_config = ""  # the raw text holds the values too


def hide_environment(config: Any) -> Any:
    """``config`` with the values of ``environment.environment_variables`` hidden (a copy;
    ``config`` itself when it has none): what callers who are neither the experiment's owner
    nor an admin see."""
    env = config.get("environment") if isinstance(config, dict) else None
    if not isinstance(env, dict) or not env.get("environment_variables"):
        return config
    return {
        **config,
        "environment": {
            **env,
            "environment_variables": dict.fromkeys(env["environment_variables"], _HIDDEN),
        },
    }
