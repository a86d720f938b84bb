"""``detsdk``: the command line over the SDK.

Every command talks to the master named by ``-m/--master`` (or ``$DET_MASTER``, else
``localhost:8080``). Failures print one red line to stderr and exit with status 1; no traceback.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console
from rich.markup import escape

from determined_sdk import __version__, errors
from determined_sdk._checkpoint import Checkpoint
from determined_sdk._cli_output import Output, choose_format, output_options
from determined_sdk._client import Determined
from determined_sdk._enums import (
    CheckpointSortBy,
    DownloadMode,
    ExperimentState,
    LogLevel,
    OrderBy,
    TrialState,
)
from determined_sdk._experiment import Experiment
from determined_sdk._trial import Trial

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _client(ctx: click.Context) -> Determined:
    obj = ctx.find_root().ensure_object(dict)
    if "client" not in obj:
        obj["client"] = Determined(obj.get("master"))
        ctx.find_root().call_on_close(obj["client"].close)
    client: Determined = obj["client"]
    return client


def _time(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _output() -> Output:
    obj = click.get_current_context().find_root().ensure_object(dict)
    if "output" not in obj:
        obj["output"] = Output(choose_format(False, False))
    o: Output = obj["output"]
    return o


def _table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    _output().table(title, columns, list(rows))


def _kv(pairs: Sequence[tuple[str, Any]]) -> None:
    _output().record(pairs)


def _printing(fn: F) -> F:
    """A list or describe command: ``--json``/``--csv``, and its output printed at the end."""

    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, as_csv: bool, **kwargs: Any) -> Any:
        o = Output(choose_format(as_json, as_csv))
        click.get_current_context().find_root().ensure_object(dict)["output"] = o
        result = fn(*args, **kwargs)
        o.flush()
        return result

    return output_options(wrapper)  # type: ignore[return-value]


def _experiment_rows(exps: Iterable[Experiment]) -> list[list[Any]]:
    return [
        [
            e.id,
            e.name,
            e.state.value,
            f"{e.progress:.0%}",
            e.num_trials,
            e.project_id,
            ",".join(sorted(e.labels)),
            _time(e.start_time),
            _time(e.end_time),
        ]
        for e in exps
    ]


_EXP_COLUMNS = ["id", "name", "state", "progress", "trials", "project", "labels", "start", "end"]
_TRIAL_COLUMNS = ["id", "state", "hparams", "steps", "searcher metric", "restarts", "start", "end"]
_CKPT_COLUMNS = ["uuid", "trial", "steps", "state", "validation metrics", "size", "reported"]


def _trial_rows(trials: Iterable[Trial]) -> list[list[Any]]:
    return [
        [
            t.id,
            t.state.value,
            json.dumps(t.hparams, sort_keys=True),
            t.steps_completed,
            t.searcher_metric,
            t.restarts,
            _time(t.start_time),
            _time(t.end_time),
        ]
        for t in trials
    ]


def _ckpt_rows(ckpts: Iterable[Checkpoint]) -> list[list[Any]]:
    return [
        [
            c.uuid,
            c.trial_id,
            c.steps_completed,
            c.state.value,
            ", ".join(f"{k}={v:.6g}" for k, v in sorted(c.validation_metrics.items())),
            _size(c.total_bytes),
            _time(c.report_time),
        ]
        for c in ckpts
    ]


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_ALIASES = {
    "e": "experiment",
    "t": "trial",
    "m": "model",
    "w": "workspace",
    "p": "project",
    "ls": "list",
}


class _Group(click.Group):
    """Turns SDK errors into one red line and exit status 1; knows Determined's short
    aliases (``e``, ``t``, ``m``, ``w``, ``p``; ``ls`` for ``list``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in _ALIASES:
            cmd = super().get_command(ctx, _ALIASES[cmd_name])
        return cmd

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd is not None else name), cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.DeterminedError as e:
            err.print(f"[red]Error: {escape(str(e))}[/red]")
            ctx.exit(1)
        except OSError as e:
            err.print(f"[red]Error: {escape(str(e))}[/red]")
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="detsdk", message="%(prog)s %(version)s")
@click.option(
    "-m",
    "--master",
    envvar="DET_MASTER",
    default=None,
    metavar="HOST:PORT",
    help="Master address (default: $DET_MASTER, else localhost:8080).",
)
@click.pass_context
def cli(ctx: click.Context, master: str | None) -> None:
    """Command line of the ML experiment platform."""
    ctx.ensure_object(dict)["master"] = master


def _confirm(yes: bool, what: str) -> None:
    if not yes and not click.confirm(f"Really {what}?", default=False):
        raise click.Abort()


# -- master --------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def master() -> None:
    """The master itself."""


@master.command("info")
@_printing
@click.pass_context
def master_info(ctx: click.Context) -> None:
    """Version, slots and database of the master."""
    c = _client(ctx)
    info = c.get_master_info()
    _kv(
        [
            ("master", c.master),
            ("version", info.version),
            ("cluster id", info.cluster_id),
            ("slots", f"{info.free_slots} free of {info.total_slots}"),
            ("database", info.database),
        ]
    )


# -- experiments ---------------------------------------------------------------------------------
@cli.group(cls=_Group)
def experiment() -> None:
    """Create, list and control experiments."""


def _follow_trial(trial: Trial) -> None:
    for line in trial.iter_log_lines(follow=True):
        out.print(escape(line.format()))


@experiment.command("create")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False), required=False)
@click.option("--no-activate", is_flag=True, help="Create it paused.")
@click.option(
    "--from-checkpoint",
    "from_checkpoint",
    default=None,
    metavar="UUID",
    help="Start every trial from this checkpoint (sets searcher.source_checkpoint_uuid).",
)
@click.option(
    "-f", "--follow", is_flag=True, help="Stream the first trial's logs, then wait for the end."
)
@click.option("--project-id", type=int, default=None, help="Project to create it in.")
@click.pass_context
def experiment_create(
    ctx: click.Context,
    config: str,
    model_dir: str | None,
    no_activate: bool,
    from_checkpoint: str | None,
    follow: bool,
    project_id: int | None,
) -> None:
    """Create an experiment from a CONFIG file and a MODEL_DIR (optional when the entrypoint
    needs no code of its own)."""
    cfg: str | dict[str, Any] = config
    if from_checkpoint is not None:
        cfg = _config_dict(config)
        searcher = cfg.get("searcher")
        if not isinstance(searcher, dict):
            raise errors.InvalidArgumentError("searcher: required (a mapping)")
        searcher["source_checkpoint_uuid"] = from_checkpoint
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always", UserWarning)
        exp = _client(ctx).create_experiment(
            cfg, model_dir, activate=not no_activate, project_id=project_id
        )
    for w in told:
        click.echo(f"Warning: {w.message}", err=True)
    out.print(f"Created experiment {exp.id}")
    if follow:
        if no_activate:
            raise errors.FailedPreconditionError("--follow needs an active experiment")
        _follow_trial(exp.await_first_trial())
        state = exp.wait(interval=1.0)
        out.print(f"Experiment {exp.id} ended {state.value}")
        if state.value != "COMPLETED":
            ctx.exit(1)


def _config_dict(path: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise errors.InvalidArgumentError(f"config: cannot read {path!r}: {e}") from None
    if not isinstance(loaded, dict):
        raise errors.InvalidArgumentError(f"config: {path!r} must hold a mapping")
    return loaded


@experiment.command("list")
@_printing
@click.option("--all", "show_all", is_flag=True, help="Include archived experiments.")
@click.option("--project-id", type=int, default=None)
@click.option("--workspace-id", type=int, default=None)
@click.option("--state", "states", multiple=True, help="Only this state (repeatable).")
@click.option("--name", default=None, help="Only names containing this.")
@click.option("--label", "labels", multiple=True, help="Only with this label (repeatable).")
@click.option("--limit", type=int, default=None)
@click.pass_context
def experiment_list(
    ctx: click.Context,
    show_all: bool,
    project_id: int | None,
    workspace_id: int | None,
    states: tuple[str, ...],
    name: str | None,
    labels: tuple[str, ...],
    limit: int | None,
) -> None:
    """List experiments."""
    exps = _client(ctx).list_experiments(
        project_id=project_id,
        workspace_id=workspace_id,
        states=_known(states, ExperimentState, "--state") or None,
        name=name,
        labels=labels or None,
        include_archived=show_all,
        limit=limit,
    )
    _table(None, _EXP_COLUMNS, _experiment_rows(exps))


@experiment.command("describe")
@_printing
@click.argument("experiment_id", type=int)
@click.option("--config", "show_config", is_flag=True, help="Print only the config, as JSON.")
@click.pass_context
def experiment_describe(ctx: click.Context, experiment_id: int, show_config: bool) -> None:
    """Show an experiment and its trials."""
    e = _client(ctx).get_experiment(experiment_id)
    if show_config:
        click.echo(json.dumps(e.config, indent=2))
        return
    _kv(
        [
            ("id", e.id),
            ("name", e.name),
            ("description", e.description),
            ("state", e.state.value + (f" ({e.error})" if e.error else "")),
            ("progress", f"{e.progress:.0%}"),
            ("searcher", e.searcher_name),
            ("labels", ", ".join(sorted(e.labels))),
            ("project / workspace", f"{e.project_id} / {e.workspace_id}"),
            ("archived", e.archived),
            ("started", _time(e.start_time)),
            ("ended", _time(e.end_time)),
        ]
    )
    _table("Trials", _TRIAL_COLUMNS, _trial_rows(e.list_trials()))


def _exp_action(name: str, done: str, confirm: bool = False) -> None:
    @experiment.command(name, help=f"{name.capitalize()} an experiment.")
    @click.argument("experiment_id", type=int)
    @click.option("-y", "--yes", is_flag=True, hidden=not confirm, help="Do not ask.")
    @click.pass_context
    def cmd(ctx: click.Context, experiment_id: int, yes: bool) -> None:
        if confirm:
            _confirm(yes, f"{name} experiment {experiment_id}")
        exp = Experiment(experiment_id, _client(ctx))
        getattr(exp, name)()
        out.print(f"{done} experiment {experiment_id}")


for _name, _done, _confirmed in (
    ("activate", "Activated", False),
    ("pause", "Paused", False),
    ("cancel", "Canceled", False),
    ("kill", "Killed", False),
    ("archive", "Archived", False),
    ("unarchive", "Unarchived", False),
    ("delete", "Deleted", True),
):
    _exp_action(_name, _done, _confirmed)


@experiment.command("set-name")
@click.argument("experiment_id", type=int)
@click.argument("name")
@click.pass_context
def experiment_set_name(ctx: click.Context, experiment_id: int, name: str) -> None:
    """Rename an experiment."""
    Experiment(experiment_id, _client(ctx)).set_name(name)
    out.print(f"Renamed experiment {experiment_id} to {escape(name)}")


@experiment.command("download-code")
@click.argument("experiment_id", type=int)
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_context
def experiment_download_code(ctx: click.Context, experiment_id: int, directory: str) -> None:
    """Unpack an experiment's model directory into DIRECTORY."""
    path = Experiment(experiment_id, _client(ctx)).extract_code(directory)
    out.print(f"Model code of experiment {experiment_id} in {escape(str(path))}")


@experiment.command("wait")
@click.argument("experiment_id", type=int)
@click.option("--interval", type=float, default=2.0)
@click.option("-q", "--quiet", is_flag=True, help="No progress line on stderr.")
@click.pass_context
def experiment_wait(ctx: click.Context, experiment_id: int, interval: float, quiet: bool) -> None:
    """Wait for an experiment to end (a progress line on stderr); exit 1 unless it COMPLETED."""
    state = Experiment(experiment_id, _client(ctx)).wait(interval=interval, progress=not quiet)
    out.print(state.value)
    if state.value != "COMPLETED":
        ctx.exit(1)


@experiment.command("list-trials")
@_printing
@click.argument("experiment_id", type=int)
@click.option("--state", "states", multiple=True, help="Only this state (repeatable).")
@click.pass_context
def experiment_list_trials(ctx: click.Context, experiment_id: int, states: tuple[str, ...]) -> None:
    """List the trials of an experiment."""
    exp = Experiment(experiment_id, _client(ctx))
    wanted = [TrialState(s.strip().upper()) for s in _known(states, TrialState, "--state")]
    _table(None, _TRIAL_COLUMNS, _trial_rows(exp.list_trials(states=wanted or None)))


def _known(values: Iterable[str], enum_cls: Any, option: str) -> list[str]:
    """Check state names case-insensitively (a clear error naming the option)."""
    names = {m.value for m in enum_cls}
    for v in values:
        if v.strip().upper() not in names:
            raise errors.InvalidArgumentError(
                f"{option}: unknown state {v!r} (choose from {', '.join(sorted(names))})"
            )
    return list(values)


# -- trials --------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def trial() -> None:
    """Inspect and control trials."""


@trial.command("describe")
@_printing
@click.argument("trial_id", type=int)
@click.option("--metrics", "show_metrics", is_flag=True, help="Also every metric report.")
@click.option("--group", default=None, help="With --metrics: only this group.")
@click.pass_context
def trial_describe(
    ctx: click.Context, trial_id: int, show_metrics: bool, group: str | None
) -> None:
    """Show a trial, its summary metrics and checkpoints (and with --metrics, its reports)."""
    t = _client(ctx).get_trial(trial_id)
    _kv(
        [
            ("id", t.id),
            ("experiment", t.experiment_id),
            ("state", t.state.value + (f" ({t.exit_reason})" if t.exit_reason else "")),
            ("hparams", json.dumps(t.hparams, sort_keys=True)),
            ("steps completed", t.steps_completed),
            ("searcher metric", t.searcher_metric),
            ("restarts", t.restarts),
            ("latest checkpoint", t.latest_checkpoint_uuid or ""),
            ("started", _time(t.start_time)),
            ("ended", _time(t.end_time)),
        ]
    )
    rows = []
    for summary_group, metrics in sorted(t.summary_metrics.items()):
        for name, s in sorted(metrics.items()):
            rows.append(
                [
                    summary_group,
                    name,
                    s.get("last"),
                    s.get("min"),
                    s.get("max"),
                    s.get("mean"),
                    s.get("count"),
                ]
            )
    if rows:
        _table("Summary metrics", ["group", "metric", "last", "min", "max", "mean", "count"], rows)
    ckpts = t.list_checkpoints(sort_by=CheckpointSortBy.BATCH_NUMBER, order_by=OrderBy.ASC)
    if ckpts:
        _table("Checkpoints", _CKPT_COLUMNS, _ckpt_rows(ckpts))
    if show_metrics:
        reports = list(t.iter_metrics(group))
        names = sorted({n for r in reports for n in r.metrics})
        _table(
            "Metrics",
            ["group", "steps", "time", *names],
            [
                [r.group, r.steps_completed, _time(r.timestamp), *(r.metrics.get(n) for n in names)]
                for r in reports
            ],
        )


@trial.command("logs")
@click.argument("trial_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the trial ends.")
@click.option("--head", type=int, default=None, help="Only the first N lines.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
@click.option("--search", default=None, help="Only lines containing this.")
@click.option(
    "--regex", default=None, help="Only lines matching this regular expression (re.search)."
)
@click.option(
    "--level",
    "levels",
    multiple=True,
    type=click.Choice([lv.value for lv in LogLevel if lv is not LogLevel.UNSPECIFIED], False),
    help="Only this level (repeatable).",
)
@click.option("--rank", "ranks", type=int, multiple=True, help="Only this rank (repeatable).")
@click.option("--raw", is_flag=True, help="Print messages only (no time, rank, level).")
@click.pass_context
def trial_logs(
    ctx: click.Context,
    trial_id: int,
    follow: bool,
    head: int | None,
    tail: int | None,
    search: str | None,
    regex: str | None,
    levels: tuple[str, ...],
    ranks: tuple[int, ...],
    raw: bool,
) -> None:
    """Print a trial's logs."""
    t = Trial(trial_id, _client(ctx))
    lines = t.iter_log_lines(
        follow=follow,
        head=head,
        tail=tail,
        search=search,
        regex=regex,
        levels=levels or None,
        ranks=ranks,
    )
    for line in lines:
        click.echo(line.message if raw else line.format())


@trial.command("kill")
@click.argument("trial_id", type=int)
@click.pass_context
def trial_kill(ctx: click.Context, trial_id: int) -> None:
    """Stop a trial now."""
    Trial(trial_id, _client(ctx)).kill()
    out.print(f"Killed trial {trial_id}")


# -- checkpoints ---------------------------------------------------------------------------------
@cli.group(cls=_Group)
def checkpoint() -> None:
    """List, download and delete checkpoints."""


def _sort_key(value: str | None) -> str | CheckpointSortBy | None:
    if value is None:
        return None
    by_name = {m.name.lower(): m for m in CheckpointSortBy}
    return by_name.get(value.lower(), value)


@checkpoint.command("list")
@_printing
@click.argument("experiment_id", type=int)
@click.option(
    "--sort-by",
    default=None,
    help="uuid, trial_id, batch_number, end_time, searcher_metric, or a validation metric name "
    "(default: searcher_metric).",
)
@click.option("--order", type=click.Choice(["asc", "desc"], False), default=None)
@click.option("--limit", type=int, default=None, help="At most N checkpoints.")
@click.option("--trial-id", type=int, default=None, help="Only this trial's checkpoints.")
@click.pass_context
def checkpoint_list(
    ctx: click.Context,
    experiment_id: int,
    sort_by: str | None,
    order: str | None,
    limit: int | None,
    trial_id: int | None,
) -> None:
    """List the checkpoints of an experiment."""
    c = _client(ctx)
    order_by = None if order is None else OrderBy(order.upper())
    if trial_id is not None:
        ckpts = Trial(trial_id, c).list_checkpoints(_sort_key(sort_by), order_by, limit)
    else:
        ckpts = Experiment(experiment_id, c).list_checkpoints(_sort_key(sort_by), order_by, limit)
    _table(None, _CKPT_COLUMNS, _ckpt_rows(ckpts))


@checkpoint.command("describe")
@_printing
@click.argument("uuid")
@click.pass_context
def checkpoint_describe(ctx: click.Context, uuid: str) -> None:
    """Show a checkpoint."""
    ck = _client(ctx).get_checkpoint(uuid)
    _kv(
        [
            ("uuid", ck.uuid),
            ("state", ck.state.value),
            ("experiment / trial", f"{ck.experiment_id} / {ck.trial_id}"),
            ("steps completed", ck.steps_completed),
            ("reported", _time(ck.report_time)),
            ("storage", json.dumps(ck.storage)),
            ("metadata", json.dumps(ck.metadata, sort_keys=True)),
            ("training metrics", json.dumps(ck.training_metrics, sort_keys=True)),
            ("validation metrics", json.dumps(ck.validation_metrics, sort_keys=True)),
        ]
    )
    _table("Files", ["path", "size"], [[p, _size(n)] for p, n in sorted(ck.resources.items())])


@checkpoint.command("download")
@click.argument("uuid")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--mode",
    type=click.Choice([m.value for m in DownloadMode], False),
    default="auto",
    help="auto: copy directly if reachable, else via the master.",
)
@click.pass_context
def checkpoint_download(ctx: click.Context, uuid: str, directory: str, mode: str) -> None:
    """Download a checkpoint's files into DIRECTORY (UUID may be a unique prefix)."""
    ck = _client(ctx).get_checkpoint(uuid)
    path = ck.download(directory, mode=DownloadMode(mode.lower()))
    out.print(f"Checkpoint {ck.uuid} in {escape(str(path))}")


@checkpoint.command("delete")
@click.argument("uuids", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def checkpoint_delete(ctx: click.Context, uuids: tuple[str, ...], yes: bool) -> None:
    """Delete checkpoints (their files and records); unique uuid prefixes are accepted."""
    c = _client(ctx)
    full = [c.get_checkpoint(u).uuid for u in uuids]
    _confirm(yes, f"delete {len(full)} checkpoint(s)")
    c.delete_checkpoints(full)
    out.print(f"Deleted {len(uuids)} checkpoint(s)")


# -- workspaces and projects ---------------------------------------------------------------------
@cli.group(cls=_Group)
def workspace() -> None:
    """Workspaces."""


@workspace.command("list")
@_printing
@click.pass_context
def workspace_list(ctx: click.Context) -> None:
    """List workspaces."""
    ws = _client(ctx).list_workspaces()
    _table(
        None,
        ["id", "name", "projects", "archived"],
        [[w.id, w.name, w.num_projects, w.archived] for w in ws],
    )


@workspace.command("create")
@click.argument("name")
@click.pass_context
def workspace_create(ctx: click.Context, name: str) -> None:
    """Create a workspace."""
    w = _client(ctx).create_workspace(name)
    out.print(f"Created workspace {w.id} ({escape(w.name)})")


@workspace.command("describe")
@_printing
@click.argument("name")
@click.pass_context
def workspace_describe(ctx: click.Context, name: str) -> None:
    """Show a workspace and its projects."""
    w = _client(ctx).get_workspace(name)
    _kv([("id", w.id), ("name", w.name), ("archived", w.archived)])
    _table(
        "Projects",
        ["id", "name", "experiments", "description"],
        [[p.id, p.name, p.num_experiments, p.description] for p in w.list_projects()],
    )


@workspace.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def workspace_delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete an empty workspace."""
    _confirm(yes, f"delete workspace {name}")
    _client(ctx).get_workspace(name).delete()
    out.print(f"Deleted workspace {escape(name)}")


@cli.group(cls=_Group)
def project() -> None:
    """Projects inside workspaces."""


@project.command("list")
@_printing
@click.argument("workspace_name")
@click.pass_context
def project_list(ctx: click.Context, workspace_name: str) -> None:
    """List the projects of a workspace."""
    ps = _client(ctx).get_workspace(workspace_name).list_projects()
    _table(
        None,
        ["id", "name", "experiments", "description"],
        [[p.id, p.name, p.num_experiments, p.description] for p in ps],
    )


@project.command("create")
@click.argument("workspace_name")
@click.argument("name")
@click.option("--description", default="")
@click.pass_context
def project_create(ctx: click.Context, workspace_name: str, name: str, description: str) -> None:
    """Create a project in a workspace."""
    p = _client(ctx).get_workspace(workspace_name).create_project(name, description)
    out.print(f"Created project {p.id} ({escape(p.name)})")


@project.command("describe")
@_printing
@click.argument("workspace_name")
@click.argument("name")
@click.pass_context
def project_describe(ctx: click.Context, workspace_name: str, name: str) -> None:
    """Show a project and its experiments."""
    p = _client(ctx).get_workspace(workspace_name).get_project(name)
    _kv([("id", p.id), ("name", p.name), ("description", p.description)])
    _table("Experiments", _EXP_COLUMNS, _experiment_rows(p.list_experiments()))


# -- models --------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def model() -> None:
    """The model registry."""


@model.command("list")
@_printing
@click.option("--all", "show_all", is_flag=True, help="Include archived models.")
@click.pass_context
def model_list(ctx: click.Context, show_all: bool) -> None:
    """List registered models."""
    ms = _client(ctx).list_models(include_archived=show_all)
    _table(
        None,
        ["id", "name", "versions", "labels", "description", "updated"],
        [
            [
                m.id,
                m.name,
                m.num_versions,
                ",".join(m.labels),
                m.description,
                _time(m.last_updated_time),
            ]
            for m in ms
        ],
    )


@model.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--label", "labels", multiple=True)
@click.pass_context
def model_create(ctx: click.Context, name: str, description: str, labels: tuple[str, ...]) -> None:
    """Register a model."""
    m = _client(ctx).create_model(name, description=description, labels=labels)
    out.print(f"Created model {m.id} ({escape(m.name)})")


@model.command("describe")
@_printing
@click.argument("name")
@click.pass_context
def model_describe(ctx: click.Context, name: str) -> None:
    """Show a model and its versions."""
    m = _client(ctx).get_model(name)
    _kv(
        [
            ("id", m.id),
            ("name", m.name),
            ("description", m.description),
            ("labels", ", ".join(m.labels)),
            ("metadata", json.dumps(m.metadata, sort_keys=True)),
            ("archived", m.archived),
        ]
    )
    _table(
        "Versions",
        ["version", "name", "checkpoint", "trial", "comment", "registered"],
        [
            [
                v.version,
                v.name,
                v.checkpoint.uuid,
                v.checkpoint.trial_id,
                v.comment,
                _time(v.creation_time),
            ]
            for v in m.list_versions()
        ],
    )


@model.command("register-version")
@click.argument("name")
@click.argument("checkpoint_uuid")
@click.option("--comment", default="")
@click.pass_context
def model_register_version(
    ctx: click.Context, name: str, checkpoint_uuid: str, comment: str
) -> None:
    """Register CHECKPOINT_UUID as the next version of model NAME."""
    c = _client(ctx)
    uuid = c.get_checkpoint(checkpoint_uuid).uuid  # a unique prefix will do
    v = c.get_model(name).register_version(uuid, comment=comment)
    out.print(f"Registered version {v.version} of {escape(name)}")


@model.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def model_delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete a model and its versions."""
    _confirm(yes, f"delete model {name}")
    _client(ctx).get_model(name).delete()
    out.print(f"Deleted model {escape(name)}")


# -- run outputs as paths ------------------------------------------------------------------------
_PATH_HELP = """PATH names run outputs the way a file system would:

\b
  trials/42                      the checkpoints of trial 42
  trials/42/latest               the files of its latest checkpoint (also: best)
  trials/42/latest/model.pt      one file of it
  checkpoints/UUID[/FILE]        a checkpoint by uuid (a unique prefix will do)
  experiments/7                  the trials of experiment 7
"""


def _checkpoint_at(c: Determined, parts: list[str]) -> tuple[Checkpoint, list[str]]:
    """The checkpoint a path names, and the rest of the path (a file inside it)."""
    kind = parts[0]
    if kind in ("trials", "trial", "t") and len(parts) >= 3:
        trial = c.get_trial(_path_id(parts[1], "trial id"))
        ref = parts[2]
        if ref == "latest":
            if not trial.latest_checkpoint_uuid:
                raise errors.NotFoundError(f"trial {trial.id} has no checkpoint yet")
            return c.get_checkpoint(trial.latest_checkpoint_uuid), parts[3:]
        if ref == "best":
            best = trial.list_checkpoints(max_results=1)
            if not best:
                raise errors.NotFoundError(f"trial {trial.id} has no checkpoint yet")
            return best[0], parts[3:]
        ck = c.get_checkpoint(ref)
        if ck.trial_id != trial.id:
            raise errors.NotFoundError(f"checkpoint {ck.uuid} is not trial {trial.id}'s")
        return ck, parts[3:]
    if kind in ("checkpoints", "checkpoint", "c") and len(parts) >= 2:
        return c.get_checkpoint(parts[1]), parts[2:]
    raise errors.InvalidArgumentError(
        f"path: {'/'.join(parts)!r} names no checkpoint (try trials/ID/latest/FILE or "
        "checkpoints/UUID/FILE)"
    )


def _path_id(text: str, what: str) -> int:
    if not text.isdigit():
        raise errors.InvalidArgumentError(f"path: {what} must be a number, got {text!r}")
    return int(text)


def _path_parts(path: str) -> list[str]:
    parts = [p for p in path.strip().strip("/").split("/") if p]
    if not parts:
        raise errors.InvalidArgumentError("path: must not be empty")
    return parts


@cli.command("ls", help="List run outputs at PATH.\n\n" + _PATH_HELP)
@_printing
@click.argument("path")
@click.pass_context
def ls(ctx: click.Context, path: str) -> None:
    c = _client(ctx)
    parts = _path_parts(path)
    if parts[0] in ("trials", "trial", "t") and len(parts) == 2:
        trial = c.get_trial(_path_id(parts[1], "trial id"))
        ckpts = trial.list_checkpoints(CheckpointSortBy.BATCH_NUMBER, OrderBy.ASC)
        latest = trial.latest_checkpoint_uuid
        _table(
            None,
            ["name", "steps", "state", "files", "size", "validation metrics"],
            [
                [
                    ck.uuid + (" (latest)" if ck.uuid == latest else ""),
                    ck.steps_completed,
                    ck.state.value,
                    len(ck.resources),
                    _size(ck.total_bytes),
                    ", ".join(f"{k}={v:.6g}" for k, v in sorted(ck.validation_metrics.items())),
                ]
                for ck in ckpts
            ],
        )
        return
    if parts[0] in ("experiments", "experiment", "e") and len(parts) == 2:
        exp = c.get_experiment(_path_id(parts[1], "experiment id"))
        _table(None, _TRIAL_COLUMNS, _trial_rows(exp.list_trials()))
        return
    ck, rest = _checkpoint_at(c, parts)
    inside = "/".join(rest)
    files = [
        [p, _size(n)]
        for p, n in sorted(ck.resources.items())
        if not inside or p == inside or p.startswith(inside + "/")
    ]
    if inside and not files:
        raise errors.NotFoundError(f"checkpoint {ck.uuid} has no file {inside!r}")
    _table(None, ["path", "size"], files)


@cli.command("cp", help="Copy run outputs at PATH to a local DEST.\n\n" + _PATH_HELP)
@click.argument("path")
@click.argument("dest", type=click.Path())
@click.option(
    "--mode",
    type=click.Choice([m.value for m in DownloadMode], False),
    default="auto",
    help="auto: copy directly if reachable, else via the master.",
)
@click.pass_context
def cp(ctx: click.Context, path: str, dest: str, mode: str) -> None:
    c = _client(ctx)
    ck, rest = _checkpoint_at(c, _path_parts(path))
    inside = "/".join(rest)
    target = pathlib.Path(dest)
    dl_mode = DownloadMode(mode.lower())
    if not inside:  # the whole checkpoint, as a directory
        where = ck.download(target / ck.uuid if target.is_dir() else target, mode=dl_mode)
        out.print(f"Checkpoint {ck.uuid} in {escape(str(where))}")
        return
    files = [p for p in ck.resources if p == inside or p.startswith(inside + "/")]
    if not files:
        raise errors.NotFoundError(f"checkpoint {ck.uuid} has no file {inside!r}")
    with tempfile.TemporaryDirectory(prefix="detsdk-cp-") as tmp:
        got = pathlib.Path(ck.download(pathlib.Path(tmp) / "ckpt", mode=dl_mode))
        src = got / inside
        name = pathlib.PurePosixPath(inside).name
        final = target / name if target.is_dir() else target
        if src.is_dir():
            shutil.copytree(src, final)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, final)
    out.print(f"{escape(path)} -> {escape(str(final))}")


# -- TensorBoard ---------------------------------------------------------------------------------
@cli.command("tensorboard")
@click.argument("experiment_ids", type=int, nargs=-1, required=True)
@click.option(
    "--dir",
    "logdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write the event files (default: a new temporary directory).",
)
@click.option(
    "--export-only", is_flag=True, help="Write the event files, do not start TensorBoard."
)
@click.option("--port", type=int, default=6006, help="TensorBoard's port.")
@click.option("--host", default="127.0.0.1", help="TensorBoard's address.")
@click.pass_context
def tensorboard_cmd(
    ctx: click.Context,
    experiment_ids: tuple[int, ...],
    logdir: str | None,
    export_only: bool,
    port: int,
    host: str,
) -> None:
    """Show experiments' metrics in TensorBoard (needs the tensorboard extra).

    Writes an event file per trial (tags <group>/<metric>), plus the files each trial wrote
    to core_api's get_tensorboard_path(), then starts TensorBoard on them until Ctrl-C.
    """
    from determined_sdk.tensorboard import export_experiments

    root = pathlib.Path(logdir or tempfile.mkdtemp(prefix="detsdk-tensorboard-"))
    dirs = export_experiments(_client(ctx), experiment_ids, root)
    out.print(f"Wrote {len(dirs)} trial(s) to {escape(str(root))}")
    if export_only:
        return
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root)]
    cmd += ["--port", str(port), "--host", host]
    out.print(f"TensorBoard on http://{host}:{port}/ (Ctrl-C stops it)")
    proc = subprocess.Popen(cmd)
    try:
        ctx.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)


# -- users ---------------------------------------------------------------------------------------
@cli.group()
def user() -> None:
    """Log in and out, and manage users (see docs/security.md)."""


def _password(given: str | None, prompt: str, *, confirm: bool = False) -> str:
    if given is not None:
        return given
    value: str = click.prompt(
        prompt, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
    )
    return value


@user.command("login")
@click.argument("username", default="admin")
@click.option("--password", default=None, envvar="DET_PASS", help="Default: $DET_PASS, else ask.")
@click.pass_context
def user_login(ctx: click.Context, username: str, password: str | None) -> None:
    """Log in as USERNAME (default admin) and cache the token for this master (0600 file)."""
    c = _client(ctx)
    c.login(username, _password(password, f"Password for {username}"))
    out.print(f"Logged in as {escape(username)} on {escape(c.master)}")


@user.command("logout")
@click.pass_context
def user_logout(ctx: click.Context) -> None:
    """End the session and forget the cached token of this master."""
    _client(ctx).logout()
    out.print("Logged out")


@user.command("whoami")
@click.pass_context
def user_whoami(ctx: click.Context) -> None:
    """The user the cached token (or $DET_USER) belongs to."""
    u = _client(ctx).whoami()
    out.print(f"{escape(u.username)}{' (admin)' if u.admin else ''}")


@user.command("create")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--password", default=None, help="Default: ask.")
@click.pass_context
def user_create(ctx: click.Context, username: str, admin: bool, password: str | None) -> None:
    """Create a user (admins only)."""
    u = _client(ctx).create_user(
        username, _password(password, f"Password for {username}", confirm=True), admin=admin
    )
    out.print(f"Created user {escape(u.username)} (id {u.id}{', admin' if u.admin else ''})")


@user.command("list")
@_printing
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """Every user."""
    _table(
        None,
        ["id", "username", "admin", "active"],
        [[u.id, u.username, u.admin, u.active] for u in _client(ctx).list_users()],
    )


@user.command("change-password")
@click.argument("username", required=False)
@click.option("--old-password", default=None, help="Your current password (default: ask).")
@click.option("--new-password", default=None, help="Default: ask.")
@click.pass_context
def user_change_password(
    ctx: click.Context, username: str | None, old_password: str | None, new_password: str | None
) -> None:
    """Change your password, or (admins) USERNAME's."""
    c = _client(ctx)
    old = "" if username else _password(old_password, "Current password")
    new = _password(new_password, "New password", confirm=True)
    c.change_password(new, old_password=old, username=username)
    out.print(f"Changed the password of {escape(username or 'you')}")


@user.command("deactivate")
@click.argument("username")
@click.pass_context
def user_deactivate(ctx: click.Context, username: str) -> None:
    """Deactivate USERNAME (admins only): their sessions end and they cannot log in."""
    _client(ctx).set_user_active(username, False)
    out.print(f"Deactivated {escape(username)}")


@user.command("activate")
@click.argument("username")
@click.pass_context
def user_activate(ctx: click.Context, username: str) -> None:
    """Reactivate USERNAME (admins only)."""
    _client(ctx).set_user_active(username, True)
    out.print(f"Activated {escape(username)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``detsdk`` console script."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="detsdk")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
