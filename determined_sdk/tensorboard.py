"""TensorBoard event files from stored metrics (TensorBoard is the optional ``tensorboard``
extra), written with TensorBoard's own :class:`EventFileWriter`.

Layout under the log directory: ``experiment-<id>/trial-<id>/`` holds one event file of the
trial's reported metrics, tagged ``<group>/<metric>`` (``training/loss``,
``validation/accuracy``) at their ``steps_completed``, and, under ``tensorboard/``, a copy of
the event files the trial wrote itself into :meth:`core_api.TrainContext.get_tensorboard_path`
when its checkpoint storage is reachable from here.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
from collections.abc import Iterable
from typing import Any

from determined_sdk import errors
from determined_sdk._client import Determined
from determined_sdk._trial import Trial

logger = logging.getLogger(__name__)

SUFFIX = ".detsdk"  # marks the event files written here, so a re-export replaces them


def _tensorboard() -> tuple[Any, Any, Any]:
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise errors.FailedPreconditionError(
            "TensorBoard export needs tensorboard: pip install 'determined-sdk[tensorboard]'"
        ) from None
    return Event, Summary, EventFileWriter


def export_trial(trial: Trial, directory: str | pathlib.Path) -> int:
    """Write one trial's metrics as TensorBoard events into ``directory``.

    Event files written by an earlier export into the same directory are replaced.

    Returns:
        The number of reports written.

    Raises:
        FailedPreconditionError: tensorboard is not installed.
        NotFoundError: The trial does not exist.
    """
    event_cls, summary_cls, writer_cls = _tensorboard()
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"events.out.tfevents.*{SUFFIX}"):
        old.unlink()
    writer = writer_cls(str(out), max_queue_size=10_000, flush_secs=3600, filename_suffix=SUFFIX)
    n = 0
    try:
        for m in trial.iter_metrics():
            values = [
                summary_cls.Value(tag=f"{m.group}/{name}", simple_value=value)
                for name, value in m.metrics.items()
            ]
            writer.add_event(
                event_cls(
                    wall_time=m.timestamp,
                    step=m.steps_completed,
                    summary=summary_cls(value=values),
                )
            )
            n += 1
    finally:
        writer.close()
    return n


def _copy_trial_files(storage: dict[str, Any], trial_id: int, into: pathlib.Path) -> int:
    """Copy what the trial wrote to its TensorBoard path, if that storage is reachable."""
    base = storage.get("path")
    if storage.get("type", "shared_fs") not in ("shared_fs", "directory") or not base:
        return 0
    src = pathlib.Path(base).expanduser() / "tensorboard" / f"trial-{trial_id}"
    if not src.is_dir():
        return 0
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(src, into)
    return sum(1 for p in into.rglob("*") if p.is_file())


def export_experiments(
    client: Determined, experiment_ids: Iterable[int], logdir: str | pathlib.Path
) -> list[pathlib.Path]:
    """Write every trial of these experiments under ``logdir`` (see the module docstring).

    Returns:
        The trial directories written.

    Raises:
        FailedPreconditionError: tensorboard is not installed.
        NotFoundError: An experiment does not exist.
    """
    _tensorboard()
    root = pathlib.Path(logdir)
    written = []
    for exp_id in experiment_ids:
        exp = client.get_experiment(exp_id)
        storage = dict(exp.config.get("checkpoint_storage") or {})
        for trial in exp.list_trials():
            d = root / f"experiment-{exp.id}" / f"trial-{trial.id}"
            n = export_trial(trial, d)
            files = _copy_trial_files(storage, trial.id, d / "tensorboard")
            logger.info("trial %d: %d reports, %d files of its own", trial.id, n, files)
            written.append(d)
    return written
