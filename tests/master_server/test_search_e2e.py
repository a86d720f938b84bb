"""The searchers end to end: a real master, real trial processes, tiny synthetic objectives.

Every trial here computes its metric from its hyperparameters and its length (no training), so
a trial lives well under a second and a whole search a few seconds. The tests check what the
searchers decided through what the master recorded (trials, their validation counts, steps,
warm starts, experiment progress) and what the trials printed.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from determined_sdk.proto import (
    checkpoint_pb2,
    experiment_pb2,
    logs_pb2,
    trial_pb2,
)
from master_server.app import Master
from tests.support import Stubs, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

# Op style: one validation per searcher operation, metric from hparam x and the op's length.
OPS_TRIAL = """
    import os, time
    import core_api

    info = core_api.get_cluster_info()
    x = float(info.trial.hparams["x"])
    with core_api.init() as ctx:
        if os.environ.get("HOLD_TRIAL") == str(info.trial.trial_id) and info.trial.run_id == 1:
            # Held until the master goes away (the restart test kills the master meanwhile).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not ctx.preempt.should_preempt():
                time.sleep(0.05)
        for op in ctx.searcher.operations():
            loss = (x - 0.1) ** 2 + 1.0 / (1 + op.length)
            ctx.train.report_validation_metrics(op.length, {"loss": loss})
            op.report_completed(loss)
"""

# Metrics-only style: report validations including the time metric until the master says stop.
METRICS_TRIAL = """
    import core_api

    info = core_api.get_cluster_info()
    x = float(info.trial.hparams["x"])
    batches = 0
    with core_api.init() as ctx:
        while not ctx.preempt.should_preempt():
            batches += 1
            if batches > 1000:
                raise SystemExit("never stopped by the searcher")
            loss = (x - 0.1) ** 2 + 1.0 / (1 + batches)
            ctx.train.report_validation_metrics(batches, {"loss": loss, "batches": batches})
            ctx.train.flush()
    print(f"stopped after {batches} batches")
"""

# PBT: w moves by lr per batch; the state travels in checkpoints (warm starts included).
PBT_TRIAL = """
    import json
    import core_api

    info = core_api.get_cluster_info()
    lr = float(info.trial.hparams["lr"])
    me = info.trial.trial_id
    w, steps = 0.0, 0
    with core_api.init() as ctx:
        if info.latest_checkpoint:
            with ctx.checkpoint.restore_path(info.latest_checkpoint) as path:
                state = json.loads((path / "state.json").read_text())
            w, steps = state["w"], state["steps"]
            print(f"RESTORED run={info.trial.run_id} ckpt={info.latest_checkpoint} "
                  f"from_trial={state['trial']} steps={steps}")
        for op in ctx.searcher.operations():
            while steps < op.length:
                w += lr
                steps += 1
            loss = (w - 3.0) ** 2
            ctx.train.report_validation_metrics(steps, {"loss": loss})
            with ctx.checkpoint.store_path({"steps_completed": steps}) as (path, _):
                (path / "state.json").write_text(
                    json.dumps({"w": w, "steps": steps, "trial": me})
                )
            op.report_completed(loss)
"""

# Early stopping: the loss improves for 5 validations, then stays flat.
PLATEAU_TRIAL = """
    import core_api
    from determined_sdk._transport import channel_from_env
    from determined_sdk.proto import searcher_pb2, searcher_pb2_grpc

    info = core_api.get_cluster_info()
    watch = searcher_pb2_grpc.SearcherServiceStub(channel_from_env())
    step = 0
    with core_api.init() as ctx:
        while step < 50:
            step += 1
            ctx.train.report_validation_metrics(
                step, {"loss": max(10.0 - step, 5.0), "batches": step}
            )
            ctx.train.flush()  # the master has handled this validation when flush returns
            # Ask the master at once (no long poll) whether that validation stopped us, so the
            # trial reports exactly as many validations as the searcher let it.
            resp = watch.WatchPreemption(searcher_pb2.WatchPreemptionRequest(
                trial_id=info.trial.trial_id, timeout_seconds=0))
            if resp.preempt:
                break
    print(f"reported {step} validations")
"""


# -- helpers ---------------------------------------------------------------------------------


def _config(
    entrypoint: str, searcher: dict[str, Any], hparams: dict[str, Any], seed: int = 1234
) -> dict[str, Any]:
    return {
        "name": f"e2e-{searcher['name']}",
        "entrypoint": entrypoint,
        "searcher": {"metric": "loss", "smaller_is_better": True, **searcher},
        "hyperparameters": hparams,
        "max_restarts": 0,
        "reproducibility": {"experiment_seed": seed},
    }


def _run_search(
    stubs: Stubs, exp_id: int, timeout: float = 60.0, progress: list[float] | None = None
) -> str:
    """Wait for the experiment to end, checking its progress never decreases; returns the state.

    The progress seen is appended to ``progress`` (pass the same list across master restarts).
    """
    seen = progress if progress is not None else []

    def done() -> str | None:
        exp = stubs.experiment(exp_id)
        if seen:
            assert exp.progress >= seen[-1] - 1e-9, f"progress went back: {seen[-1]} -> {exp}"
        seen.append(exp.progress)
        state = stubs.exp_state(exp_id)
        return state if state in ("COMPLETED", "ERROR", "CANCELED") else None

    state = wait_for(done, timeout, f"experiment {exp_id} to end")
    final = stubs.experiment(exp_id).progress
    assert final >= seen[-1] - 1e-9
    assert final == 1.0, f"progress at the end: {final}"
    return state


def _validations(t: trial_pb2.Trial) -> int:
    summary = json.loads(t.summary_metrics_json or "{}")
    return int(summary.get("validation_metrics", {}).get("loss", {}).get("count", 0))


def _loss(t: trial_pb2.Trial) -> float:
    summary = json.loads(t.summary_metrics_json or "{}")
    return float(summary["validation_metrics"]["loss"]["min"])


def _hp(t: trial_pb2.Trial) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(t.hparams_json)
    return out


def _logs(stubs: Stubs, trial_id: int) -> list[logs_pb2.LogLine]:
    lines: list[logs_pb2.LogLine] = []
    for page in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=trial_id)):
        lines.extend(page.lines)
    return lines


# -- 1, 2: ASHA ------------------------------------------------------------------------------


def test_asha_op_style_stops_most_trials_early(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": OPS_TRIAL})
    searcher = {
        "name": "adaptive_asha",
        "max_trials": 12,
        "max_length": {"batches": 16},
        "max_rungs": 3,
        "divisor": 4,
        "mode": "aggressive",
        "max_concurrent_trials": 2,
    }
    # Seed 1: 2 to 4 of the 12 trials reach the last rung, whatever order the reports come in
    # (async ASHA's promotions depend on it).
    hparams = {"x": {"type": "double", "minval": 0, "maxval": 1}}
    exp = stubs.create(_config("python main.py", searcher, hparams, seed=1), md)
    assert _run_search(stubs, exp.id) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 12
    assert {trial_state(t) for t in trials} == {"COMPLETED"}
    rungs = [1, 4, 16]  # 16 / 4**2, 16 / 4, 16
    for t in trials:
        # One validation per rung reached, at the rung's length.
        assert t.steps_completed in rungs, t
        assert _validations(t) == rungs.index(t.steps_completed) + 1, t
    full = [t for t in trials if t.steps_completed == 16]
    early = [t for t in trials if t.steps_completed < 16]
    assert 2 <= len(full) <= 4 and len(early) >= 8, [t.steps_completed for t in trials]


def test_asha_metrics_only_style_stops_most_trials_early(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": METRICS_TRIAL})
    searcher = {
        "name": "adaptive_asha",
        "max_trials": 12,
        "time_metric": "batches",
        "max_time": 16,
        "max_rungs": 3,
        "divisor": 4,
        "mode": "aggressive",
        "max_concurrent_trials": 2,
    }
    # Seed 1: 2 to 4 of the 12 trials reach the last rung, whatever order the reports come in
    # (async ASHA's promotions depend on it).
    hparams = {"x": {"type": "double", "minval": 0, "maxval": 1}}
    exp = stubs.create(_config("python main.py", searcher, hparams, seed=1), md)
    assert _run_search(stubs, exp.id) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 12
    # Stopped trials (all of them: ASHA stops even the winners at the last rung) COMPLETE.
    assert [trial_state(t) for t in trials] == ["COMPLETED"] * 12
    reasons = {"finished training", "stopped early by the searcher"}
    assert all(t.exit_reason in reasons for t in trials), trials
    # A trial reports until it sees the stop, so it may overshoot its rung by a few batches.
    full = [t for t in trials if t.steps_completed >= 16]
    early = [t for t in trials if t.steps_completed < 16]
    assert 2 <= len(full) <= 4 and len(early) >= 8, [t.steps_completed for t in trials]
    for t in trials:
        assert any(
            f"stopped after {t.steps_completed} batches" in line.message
            for line in _logs(stubs, t.id)
        ), t.id


# -- 3: PBT ----------------------------------------------------------------------------------


def test_pbt_children_warm_start_from_their_parents_checkpoint(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    # PBT members wait for the round's end holding their slot: the whole population must fit.
    master = master_factory(slots=4)
    stubs = Stubs.connect(master.address)
    md = write_model_dir(tmp_path / "m", {"main.py": PBT_TRIAL})
    searcher = {
        "name": "pbt",
        "population_size": 4,
        "num_rounds": 3,
        "length_per_round": {"batches": 2},
        "replace_function": {"truncate_fraction": 0.5},
        "explore_function": {"resample_probability": 0.0, "perturb_factor": 0.2},
    }
    cfg = _config(
        "python main.py", searcher, {"lr": {"type": "double", "minval": 0.1, "maxval": 1.0}}
    )
    cfg["checkpoint_storage"] = {"save_trial_latest": 100, "save_trial_best": 100}
    exp = stubs.create(cfg, md)
    assert _run_search(stubs, exp.id) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    # 4 members in round 0, then 2 replaced after rounds 0 and 1.
    assert len(trials) == 8, [(t.id, t.steps_completed) for t in trials]
    assert {trial_state(t) for t in trials} == {"COMPLETED"}
    founders, children = trials[:4], trials[4:]
    for t in founders:
        assert t.warm_start_checkpoint_uuid == ""
        assert not any("RESTORED" in line.message for line in _logs(stubs, t.id))
    by_id = {t.id: t for t in trials}
    for child in children:
        uuid = child.warm_start_checkpoint_uuid
        assert uuid, child
        ckpt = stubs.checkpoints.GetCheckpoint(
            checkpoint_pb2.GetCheckpointRequest(uuid=uuid)
        ).checkpoint
        parent = by_id[ckpt.trial_id]
        assert parent.id < child.id and parent.experiment_id == exp.id
        # Warm started at the end of a round: 2 or 4 batches along its parent's lineage.
        assert ckpt.steps_completed in (2, 4)
        # The child's first run saw the parent's checkpoint and read the parent's own file.
        restored = [
            line.message
            for line in _logs(stubs, child.id)
            if line.message.startswith("RESTORED") and line.run_id == 1
        ]
        assert restored == [
            f"RESTORED run=1 ckpt={uuid} from_trial={parent.id} steps={ckpt.steps_completed}"
        ], restored
        # It went on from there, a round (2 batches) per validation, without starting over.
        assert child.steps_completed in (4, 6) and child.steps_completed > ckpt.steps_completed
        assert _validations(child) == (child.steps_completed - ckpt.steps_completed) // 2
        # Explored from its parent's hyperparameters (perturbed by +-20%).
        ratio = _hp(child)["lr"] / _hp(parent)["lr"]
        assert (
            math.isclose(ratio, 1.2)
            or math.isclose(ratio, 0.8)
            or _hp(child)["lr"]
            in (
                0.1,
                1.0,
            )
        ), (ratio, child, parent)
    stubs.channel.close()


def test_pbt_population_that_cannot_run_at_once_is_refused(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    # A round waits for every member, and members that reported hold their slots meanwhile: a
    # population larger than the master's slots would never finish its first round.
    md = write_model_dir(tmp_path / "m", {"main.py": PBT_TRIAL})
    searcher = {
        "name": "pbt",
        "population_size": 3,  # the master has 2 slots
        "num_rounds": 2,
        "length_per_round": {"batches": 2},
        "replace_function": {"truncate_fraction": 0.34},
        "explore_function": {"resample_probability": 0.0, "perturb_factor": 0.2},
    }
    cfg = _config(
        "python main.py", searcher, {"lr": {"type": "double", "minval": 0.1, "maxval": 1}}
    )
    with pytest.raises(grpc.RpcError) as ei:
        stubs.create(cfg, md)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert "searcher.population_size:" in ei.value.details(), ei.value.details()
    listed = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert list(listed.experiments) == []


# -- 4: Optuna TPE ---------------------------------------------------------------------------


def test_optuna_tpe_converges_on_a_1d_objective(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": OPS_TRIAL})
    searcher = {
        "name": "optuna",
        "sampler": "tpe",
        "sampler_args": {"n_startup_trials": 4},
        "max_trials": 14,
        "max_concurrent_trials": 1,
        "max_length": 1,
    }
    # loss = (x - 0.1)^2 + 1/2: the optimum is x = 0.1 in [-3, 3].
    exp = stubs.create(
        _config("python main.py", searcher, {"x": {"type": "double", "minval": -3, "maxval": 3}}),
        md,
    )
    assert _run_search(stubs, exp.id, timeout=90) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 14
    xs = [float(_hp(t)["x"]) for t in trials]
    best = min(trials, key=_loss)
    assert abs(float(_hp(best)["x"]) - 0.1) < 0.15, xs
    # TPE does better than its random start-up trials.
    assert _loss(best) < min(_loss(t) for t in trials[:4]), xs
    best_value = stubs.experiments.GetBestSearcherValidation(
        experiment_pb2.GetBestSearcherValidationRequest(experiment_id=exp.id)
    ).value
    assert best_value == pytest.approx(_loss(best))


# -- 5: early stopping and target ------------------------------------------------------------


def test_early_stopping_stops_at_the_right_validation(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": PLATEAU_TRIAL})
    searcher = {
        "name": "single",
        "time_metric": "batches",
        "max_time": 100,
        "early_stopping": {"patience": 3},
    }
    exp = stubs.create(_config("python main.py", searcher, {"x": 0}), md)
    assert _run_search(stubs, exp.id) == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    # Improves through step 5 (loss 5), then 3 validations without improvement: stopped at 8.
    assert _validations(t) == 8
    assert t.steps_completed == 8
    assert trial_state(t) == "COMPLETED"
    assert any("reported 8 validations" in line.message for line in _logs(stubs, t.id))


def test_target_ends_the_search_at_the_report_that_reaches_it(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": OPS_TRIAL})
    searcher = {"name": "grid", "max_length": 1, "max_concurrent_trials": 1, "target": 0.55}
    # loss = (x - 0.1)^2 + 0.5: x = 0.2 is the first point with loss <= 0.55 (0.51).
    xs = [3.0, 2.0, 1.0, 0.2, 0.1, 0.0]
    exp = stubs.create(
        _config("python main.py", searcher, {"x": {"type": "categorical", "vals": xs}}), md
    )
    assert _run_search(stubs, exp.id) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert [_hp(t)["x"] for t in trials] == xs[:4]  # nothing created after the target
    assert [trial_state(t) for t in trials] == ["COMPLETED"] * 4
    assert [_validations(t) for t in trials] == [1, 1, 1, 1]
    assert _loss(trials[3]) == pytest.approx(0.51)


# -- 6: master restart -----------------------------------------------------------------------


def test_search_survives_a_master_restart(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "data"
    m1 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m1.address)
    md = write_model_dir(tmp_path / "m", {"main.py": OPS_TRIAL})
    searcher = {"name": "random", "max_trials": 4, "max_concurrent_trials": 1, "max_length": 3}
    cfg = _config("python main.py", searcher, {"x": {"type": "double", "minval": 0, "maxval": 1}})
    # Trial 2 waits on its first run, so the master is killed while it runs.
    cfg["environment"] = {"environment_variables": {"HOLD_TRIAL": "2"}}
    exp = stubs.create(cfg, md)
    progress: list[float] = []

    def second_running() -> bool:
        exp_now = stubs.experiment(exp.id)
        if progress:
            assert exp_now.progress >= progress[-1] - 1e-9
        progress.append(exp_now.progress)
        ts = stubs.trials_of(exp.id)
        return len(ts) == 2 and trial_state(ts[1]) == "RUNNING"

    wait_for(second_running, 60, "trial 2 running")
    before = [(t.id, t.hparams_json) for t in stubs.trials_of(exp.id)]
    stubs.channel.close()
    m1.stop()

    m2 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m2.address)
    assert _run_search(stubs, exp.id, progress=progress) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 4, trials
    assert [(t.id, t.hparams_json) for t in trials[:2]] == before
    assert len({t.hparams_json for t in trials}) == 4
    assert [trial_state(t) for t in trials] == ["COMPLETED"] * 4
    assert [t.steps_completed for t in trials] == [3] * 4
    assert [_validations(t) for t in trials] == [1] * 4
    assert trials[1].run_id == 2  # relaunched by the new master
    stubs.channel.close()


# -- 7: bad searcher configs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("searcher", "field"),
    [
        ({"name": "adaptive_asha", "max_trials": 4}, "searcher.max_length"),
        ({"name": "random", "max_trials": -3, "max_length": 5}, "searcher.max_trials"),
        ({"name": "single", "time_metric": "batches"}, "searcher.max_time"),
        (
            {"name": "random", "max_trials": 2, "max_length": 5, "max_time": 5},
            "searcher.time_metric",
        ),
        (
            {
                "name": "pbt",
                "population_size": 4,
                "num_rounds": 2,
                "length_per_round": 2,
                "replace_function": {"truncate_fraction": 0.9},
                "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
            },
            "searcher.replace_function.truncate_fraction",
        ),
        (
            {
                "name": "optuna",
                "max_trials": 2,
                "max_length": 1,
                "sampler_args": {"seed": 3},
            },
            "searcher.sampler_args.seed",
        ),
        ({"name": "custom", "early_stopping": {"patience": 2}}, "searcher.early_stopping"),
        (
            {"name": "single", "max_length": 5, "early_stopping": {"min_delta": 0.1}},
            "searcher.early_stopping.patience",
        ),
        ({"name": "hyperband", "max_length": 5}, "searcher.name"),
    ],
)
def test_bad_searcher_configs_are_invalid_argument(
    stubs: Stubs, searcher: dict[str, Any], field: str
) -> None:
    cfg = _config("python main.py", searcher, {"x": {"type": "double", "minval": 0, "maxval": 1}})
    with pytest.raises(grpc.RpcError) as ei:
        stubs.create(cfg)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert f"{field}:" in ei.value.details(), ei.value.details()
    listed = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert list(listed.experiments) == []
