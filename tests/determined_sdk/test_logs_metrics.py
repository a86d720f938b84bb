"""Trial logs (follow and filters) and metric streams through a real master."""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable

import pytest

from determined_sdk import (
    Determined,
    Experiment,
    InvalidArgumentError,
    LogLevel,
    LogLine,
    NotFoundError,
    Trial,
    TrialState,
)
from determined_sdk.proto import trial_pb2


def test_follow_yields_exactly_a_later_full_read(
    det: Determined, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="follow", hyperparameters={"steps": 12, "sleep": 0.05})
    trial = exp.await_first_trial(timeout=60)
    followed = list(trial.iter_log_lines(follow=True))  # returns once the trial ends
    trial.reload()
    assert trial.state.is_terminal
    full = list(Trial(trial.id, det).iter_log_lines())
    assert followed == full
    msgs = [str(x) for x in full]
    assert msgs.index(f"starting trial {trial.id} lr=0.1") < msgs.index("done")
    assert sum(m.startswith("step ") for m in msgs) == 12
    ids = [x.id for x in full]
    assert ids == sorted(set(ids))
    exp.wait(interval=0.1, timeout=60)


def test_follow_from_another_thread_while_running(
    make_experiment: Callable[..., Experiment],
) -> None:
    exp = make_experiment(name="follow-thread", hyperparameters={"steps": 6, "sleep": 0.05})
    trial = exp.await_first_trial(timeout=60)
    got: list[str] = []
    t = threading.Thread(
        target=lambda: got.extend(str(x) for x in trial.iter_log_lines(follow=True))
    )
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    assert got[-1] == "done"
    assert exp.wait(interval=0.1, timeout=60).value == "COMPLETED"


def test_log_filters(finished: Experiment) -> None:
    trial = finished.list_trials()[0]
    full = list(trial.iter_log_lines())
    assert len(full) > 8
    assert list(trial.iter_log_lines(head=3)) == full[:3]
    assert list(trial.iter_log_lines(tail=2)) == full[-2:]
    assert list(trial.iter_log_lines(head=0)) == []
    assert (
        list(trial.iter_log_lines(follow=True, tail=2)) == full[-2:]
    )  # an ended trial: backlog only
    assert list(trial.iter_log_lines(follow=True, search="done")) == [
        x for x in full if "done" in str(x)
    ]
    searched = list(trial.iter_log_lines(search="loss="))
    assert searched and all("loss=" in str(x) for x in searched)
    assert len(searched) == 6
    warn = list(trial.iter_log_lines(levels=[LogLevel.WARNING]))
    assert [str(x) for x in warn] == ["WARNING: loss plateau suspected"]
    errs = list(trial.iter_log_lines(levels=["error"]))
    assert any("something odd" in str(x) for x in errs)
    assert all(x.level is LogLevel.ERROR for x in errs)
    stderr = list(trial.iter_log_lines(streams=["stderr"]))
    assert stderr and all(x.stream == "stderr" for x in stderr)
    assert list(trial.iter_log_lines(ranks=[3])) == []
    assert list(trial.iter_log_lines(ranks=[0])) == [x for x in full if x.rank == 0]
    # A cut between two lines written at least 1 ms apart (datetimes keep microseconds).
    i = next(
        i
        for i in range(len(full) // 2, len(full) - 1)
        if full[i + 1].timestamp - full[i].timestamp > 1e-3
    )
    mid = (full[i].timestamp + full[i + 1].timestamp) / 2
    assert list(trial.iter_log_lines(timestamp_after=mid)) == full[i + 1 :]
    assert (
        list(trial.iter_log_lines(timestamp_before=datetime.datetime.fromtimestamp(mid)))
        == full[: i + 1]
    )
    line = full[0]
    assert str(line) == line.message and str(trial.id) in line.message
    assert line.format().endswith(line.message)


def test_log_bad_args(finished: Experiment, det: Determined) -> None:
    trial = finished.list_trials()[0]
    with pytest.raises(InvalidArgumentError, match="head and tail"):
        trial.iter_log_lines(head=1, tail=1)
    with pytest.raises(InvalidArgumentError, match="head"):
        trial.iter_log_lines(head=-1)
    with pytest.raises(InvalidArgumentError, match="tail"):
        trial.iter_log_lines(tail=-5)
    with pytest.raises(InvalidArgumentError, match="levels"):
        trial.iter_log_lines(levels=["LOUD"])
    with pytest.raises(InvalidArgumentError, match="timestamp_after"):
        trial.iter_log_lines(timestamp_after=-1)
    pattern = r"^step [0-9]+ loss="
    steps = [str(x) for x in trial.iter_log_lines(regex=pattern)]
    assert steps and steps == [str(x) for x in trial.iter_log_lines() if re.match(pattern, str(x))]
    assert list(trial.iter_log_lines(regex="^no such line$")) == []
    with pytest.raises(InvalidArgumentError, match="regex"):
        trial.iter_log_lines(regex="(unclosed")
    with pytest.raises(NotFoundError, match="31337"):
        list(Trial(31337, det).logs())


def test_iter_metrics(finished: Experiment, det: Determined) -> None:
    t1, t2 = finished.list_trials()
    val = list(t1.iter_metrics("validation"))
    assert [m.steps_completed for m in val] == [10, 20, 30, 40, 50, 60]
    assert all(m.group == "validation" and m.trial_id == t1.id for m in val)
    assert val[-1].metrics["loss"] == pytest.approx(
        t1.summary_metrics["validation_metrics"]["loss"]["last"]
    )
    every = list(t1.iter_metrics())
    assert {m.group for m in every} == {"training", "validation"} and len(every) == 12
    both = list(det.iter_trials_metrics([t1.id, t2.id], group="training"))
    assert [m.trial_id for m in both] == [t1.id] * 6 + [t2.id] * 6
    assert list(det.iter_trials_metrics(t2.id, group="nope")) == []
    with pytest.raises(NotFoundError, match="55555"):
        list(det.iter_trials_metrics([55555]))
    with pytest.raises(InvalidArgumentError, match="trial_ids"):
        det.iter_trials_metrics([])
    with pytest.raises(InvalidArgumentError, match="trial_ids"):
        det.iter_trials_metrics([0])


def test_iter_metrics_filters(finished: Experiment, det: Determined) -> None:
    t1, t2 = finished.list_trials()
    acc = list(t1.iter_metrics(names=["accuracy"]))
    assert [(m.group, m.steps_completed) for m in acc] == [
        ("validation", s) for s in range(10, 70, 10)
    ]
    assert all(list(m.metrics) == ["accuracy"] for m in acc)
    ranged = list(t1.iter_metrics("training", min_steps=20, max_steps=40))
    assert [m.steps_completed for m in ranged] == [20, 30, 40]
    full = {(m.group, m.steps_completed): m.metrics for m in t1.iter_metrics()}
    assert all(full[(m.group, m.steps_completed)] == m.metrics for m in ranged)
    both = list(det.iter_trials_metrics([t2.id, t1.id], "validation", names=["loss"], max_steps=10))
    assert [(m.trial_id, m.steps_completed) for m in both] == [(t1.id, 10), (t2.id, 10)]
    with pytest.raises(InvalidArgumentError, match="min_steps"):
        t1.iter_metrics(min_steps=-1)
    with pytest.raises(InvalidArgumentError, match="names"):
        t1.iter_metrics(names=[3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="names"):
        list(t1.iter_metrics(names=[""]))
    with pytest.raises(InvalidArgumentError, match="min_steps"):
        list(t1.iter_metrics(min_steps=5, max_steps=4))
    # The RPC itself: columnar pages or (for older clients) points, and a bounded page size.
    req = trial_pb2.StreamMetricsRequest(trial_ids=[t1.id], group="validation", page_size=4)
    old = [p for page in det._session.stream_metrics(req) for p in page.points]
    assert [p.steps_completed for p in old] == [10, 20, 30, 40, 50, 60]
    req.columnar = True
    pages = list(det._session.stream_metrics(req))
    assert [len(p.columns.steps_completed) for p in pages] == [4, 2] and not pages[0].points
    req.page_size = 100_001
    with pytest.raises(InvalidArgumentError, match="page_size"):
        list(det._session.stream_metrics(req))


def test_iter_metrics_follow_until_the_trial_ends(
    det: Determined, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="follow-metrics", hyperparameters={"steps": 8, "sleep": 0.1})
    trial = exp.await_first_trial(timeout=60)
    followed = list(trial.iter_metrics("validation", follow=True))  # returns when it ends
    trial.reload()
    assert trial.state.is_terminal
    assert [m.steps_completed for m in followed] == list(range(10, 90, 10))
    assert followed == list(Trial(trial.id, det).iter_metrics("validation"))
    # Following a trial that has already ended yields what is stored, then stops.
    assert list(trial.iter_metrics("validation", follow=True)) == followed
    with pytest.raises(NotFoundError, match="8888"):
        list(Trial(8888, det).iter_metrics(follow=True))
    exp.wait(interval=0.1, timeout=60)


def test_kill_trial(make_experiment: Callable[..., Experiment], det: Determined) -> None:
    exp = make_experiment(name="kill-trial", hyperparameters={"steps": 1000, "sleep": 0.05})
    trial = exp.await_first_trial(timeout=60)
    for _ in trial.iter_log_lines(follow=True, search="step 2 "):
        break  # it is running and reporting
    Trial(trial.id, det).kill()
    assert exp.wait(interval=0.1, timeout=60).is_terminal
    trial.reload()
    assert trial.state is TrialState.CANCELED


def test_log_line_format_prints_the_level_once() -> None:
    def line(message: str, level: LogLevel) -> LogLine:
        return LogLine(1, 1, 0.0, 0, "stdout", level, message, 1)

    own = line("INFO: [12] train: hello", LogLevel.INFO).format()
    assert own.endswith("[rank=0] INFO     [12] train: hello"), own
    plain = line("hello", LogLevel.INFO).format()
    assert plain.endswith("[rank=0] INFO     hello"), plain
    # A message whose prefix is not its level keeps its text.
    odd = line("DEBUG: x", LogLevel.ERROR).format()
    assert odd.endswith("ERROR    DEBUG: x"), odd
