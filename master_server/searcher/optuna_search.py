"""A search method that asks an in-memory Optuna study for hyperparameters (ask/tell).

One Optuna trial per platform trial: ``study.ask(distributions)`` when a trial is created, and
``study.tell`` when it reports at the full length (or exits: its last metric, or FAIL when it has
none or exited early). With a pruner, intermediate validations are reported with
``trial.report(value, step=length)`` and a trial is stopped (told PRUNED) when
``trial.should_prune()``. In the op style the trial gets ``ValidateAfter`` at ``num_reports``
evenly spaced lengths up to ``max_length``; in the metrics-only style every validation it reports
is an intermediate value and ``max_time`` (if set) is the full length.

Distributions from our hyperparameter specs:

* ``int`` -> ``IntDistribution(minval, maxval)`` (``count`` is ignored);
* ``double`` -> ``FloatDistribution(minval, maxval)``;
* ``log`` -> ``FloatDistribution(base ** minval, base ** maxval, log=True)``: our ``log``
  bounds are exponents, Optuna's are values; the trial gets the value;
* ``categorical`` -> ``CategoricalDistribution`` over the *indices* of ``vals`` (any JSON value
  may be a choice; the trial gets ``vals[index]``);
* ``const`` -> no distribution; the value is fixed.

Determinism and restarts: the sampler is rebuilt before each ask with a seed derived from the
experiment seed and the ask number (QMC keeps the experiment seed: its scrambling must not
change), so its generator needs no saving. :meth:`snapshot` keeps every trial (params, state,
value, intermediate values, in Optuna number order) and the study's system attributes;
:meth:`restore` rebuilds the study with ``study.add_trial(optuna.trial.create_trial(...))`` for
finished trials and re-asks running ones with their parameters enqueued, in the original order,
so TPE, random and GP continue exactly as they would have. CMA-ES restarts from the restored
history, not bit for bit.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from typing import Any

from master_server.searcher import hparams as hp
from master_server.searcher._common import TrialBookkeeping, as_float
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    JSONDict,
    Stop,
    ValidateAfter,
)

_SEED_SALT = 2
# Packages an Optuna sampler imports only when it first samples.
_SAMPLER_NEEDS: dict[str, tuple[str, ...]] = {"cmaes": ("cmaes",), "gp": ("torch", "scipy")}


def build_sampler(name: str, args: Mapping[str, Any], seed: int) -> Any:
    """An Optuna sampler by config name (``tpe``, ``random``, ``cmaes``, ``gp``, ``qmc``).

    Raises:
        ValueError: unknown name. Optuna's own errors (``TypeError``, ``ValueError``,
            ``ImportError``) pass through for bad ``args``.
    """
    import optuna

    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    if name not in classes:
        raise ValueError(f"unknown optuna sampler {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return classes[name](seed=seed, **dict(args))


def build_pruner(name: str, args: Mapping[str, Any], full: int | None = None) -> Any:
    """An Optuna pruner by config name (``none``, ``median``, ``hyperband``,
    ``successive_halving``); Hyperband's ``max_resource`` defaults to the full length."""
    import optuna

    kwargs = dict(args)
    if name == "none":
        return optuna.pruners.NopPruner(**kwargs)
    if name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "hyperband":
        if full is not None:
            kwargs.setdefault("max_resource", full)
        return optuna.pruners.HyperbandPruner(**kwargs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    raise ValueError(f"unknown optuna pruner {name!r}")


def check_args(
    sampler: str, sampler_args: Mapping[str, Any], pruner: str, pruner_args: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Problems building the sampler/pruner, as ``(key under searcher, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    missing = [m for m in _SAMPLER_NEEDS.get(sampler, ()) if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(
            ("sampler", f"the {sampler} sampler needs the package(s) {', '.join(missing)}")
        )
    if "seed" in sampler_args:
        problems.append(("sampler_args.seed", "set reproducibility.experiment_seed instead"))
    else:
        try:
            build_sampler(sampler, sampler_args, seed=0)
        except Exception as exc:  # Optuna raises many kinds for bad arguments
            problems.append(("sampler_args", f"rejected by optuna {sampler}: {exc}"))
    try:
        build_pruner(pruner, pruner_args)
    except Exception as exc:
        problems.append(("pruner_args", f"rejected by optuna {pruner}: {exc}"))
    return problems


def distributions(specs: Mapping[hp.Path, Mapping[str, Any]]) -> dict[str, Any]:
    """Optuna distributions keyed by dotted hparam name (consts left out; see module doc)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for path, spec in specs.items():
        kind = spec["type"]
        name = hp.path_name(path)
        if kind == "int":
            out[name] = IntDistribution(int(spec["minval"]), int(spec["maxval"]))
        elif kind == "double":
            out[name] = FloatDistribution(float(spec["minval"]), float(spec["maxval"]))
        elif kind == "log":
            base = float(spec["base"])
            lo, hi = base ** float(spec["minval"]), base ** float(spec["maxval"])
            out[name] = FloatDistribution(min(lo, hi), max(lo, hi), log=True)
        elif kind == "categorical":
            out[name] = CategoricalDistribution(list(range(len(spec["vals"]))))
    return out


class OptunaSearch(TrialBookkeeping):
    """Ask/tell against an in-memory Optuna study (see the module docstring)."""

    kind = "optuna"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        max_trials: int,
        max_concurrent_trials: int = 16,
        smaller_is_better: bool = True,
        sampler: str = "tpe",
        sampler_args: Mapping[str, Any] | None = None,
        pruner: str = "none",
        pruner_args: Mapping[str, Any] | None = None,
        max_length: int | None = None,
        max_time: int | None = None,
        num_reports: int = 1,
    ) -> None:
        """Build the search and its study.

        Args:
            hparams: the normalized ``hyperparameters`` section.
            seed: the experiment seed.
            max_trials: trials to run (INVALID_HP trials are replaced, bounded).
            max_concurrent_trials: trials outstanding at once; 0 means no limit.
            smaller_is_better: minimize (True) or maximize the searcher metric.
            sampler: ``tpe``, ``random``, ``cmaes``, ``gp`` or ``qmc``.
            sampler_args: keyword arguments for the sampler (not ``seed``).
            pruner: ``none``, ``median``, ``hyperband`` or ``successive_halving``.
            pruner_args: keyword arguments for the pruner.
            max_length: op-style full length, or None.
            max_time: metrics-only full length (units of the time metric), or None.
            num_reports: op style: validations per trial, evenly spaced up to ``max_length``.
        """
        super().__init__(max_concurrent_trials)
        self._specs = hp.flatten(hparams)
        self._seed = seed
        self._max_trials = max_trials
        self._smaller_is_better = smaller_is_better
        self._sampler_name = sampler
        self._sampler_args = dict(sampler_args or {})
        self._pruner_name = pruner
        self._pruner_args = dict(pruner_args or {})
        self._op_length = max_length
        self._full = max_length if max_length is not None else max_time
        self._dists = distributions(self._specs)
        self._reports: list[int] = []
        if max_length is not None:
            points = {max(1, round(max_length * k / num_reports)) for k in range(1, num_reports)}
            self._reports = sorted(points | {max_length})
        self._created = 0
        self._finished = 0
        self._asked = 0
        # Every Optuna trial in number order: rid, params, state, value, intermediate values.
        self._records: list[JSONDict] = []
        # Trials not yet told: rid -> (Optuna trial, index into _records).
        self._open: dict[str, tuple[Any, int]] = {}
        self._last: dict[str, float] = {}  # live trials' last finite metric
        self._broken: str | None = None  # why the sampler cannot ask any more
        self._study = self._new_study()

    def _new_study(self) -> Any:
        import optuna

        return optuna.create_study(
            direction="minimize" if self._smaller_is_better else "maximize",
            sampler=self._sampler_for(0),
            pruner=build_pruner(self._pruner_name, self._pruner_args, self._full),
        )

    def _sampler_for(self, n: int) -> Any:
        if self._sampler_name == "qmc":
            seed = self._seed
        else:
            seed = hp.seeded_rng(self._seed, n, salt=_SEED_SALT).getrandbits(32)
        return build_sampler(self._sampler_name, self._sampler_args, seed)

    @property
    def study(self) -> Any:
        """The Optuna study (in memory); read it, do not tell it."""
        return self._study

    def _to_hparams(self, params: Mapping[str, Any]) -> JSONDict:
        flat: dict[hp.Path, Any] = {}
        for path, spec in self._specs.items():
            kind = spec["type"]
            if kind == "const":
                flat[path] = spec["val"]
                continue
            value = params[hp.path_name(path)]
            if kind == "int":
                flat[path] = int(value)
            elif kind == "categorical":
                flat[path] = spec["vals"][int(value)]
            else:
                flat[path] = float(value)
        return hp.unflatten(flat)

    def best_trial(self) -> JSONDict | None:
        """``{"request_id", "hparams", "value"}`` of the best completed trial, or None."""
        best: JSONDict | None = None
        for rec in self._records:
            if rec["state"] != "COMPLETE":
                continue
            if best is None or (
                rec["value"] < best["value"]
                if self._smaller_is_better
                else rec["value"] > best["value"]
            ):
                best = rec
        if best is None:
            return None
        return {
            "request_id": best["rid"],
            "hparams": self._to_hparams(best["params"]),
            "value": best["value"],
        }

    # -- actions --------------------------------------------------------------------------------

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        room = self._room()
        while (
            room > 0
            and self._created < self._max_trials
            and not self._shutdown
            and self._broken is None
        ):
            try:
                self._study.sampler = self._sampler_for(self._asked)
                self._asked += 1
                trial = self._study.ask(self._dists)
            except Exception as exc:  # a sampler failing must not take the master down
                self._broken = f"optuna {self._sampler_name} sampler failed: {exc!r}"
                break
            rid = self._new_request_id()
            self._created += 1
            room -= 1
            params = {name: trial.params[name] for name in self._dists}
            self._open[rid] = (trial, len(self._records))
            self._records.append(
                {"rid": rid, "params": params, "state": "RUNNING", "value": None, "steps": {}}
            )
            actions.append(Create(rid, self._to_hparams(params)))
            if self._reports:
                actions.append(ValidateAfter(rid, self._reports[0]))
        return actions

    def _maybe_finish(self) -> list[Action]:
        if self._live:
            return []
        if self._broken is not None:
            return self._finish(self._broken, failure=True)
        if self._created >= self._max_trials:
            return self._finish(f"all {self._max_trials} optuna trial(s) finished")
        return []

    def _tell(self, request_id: str, state: str, value: float | None) -> None:
        import optuna

        opened = self._open.pop(request_id, None)
        if opened is None:
            return
        trial, index = opened
        if state == "COMPLETE" and (value is None or not math.isfinite(value)):
            state, value = "FAIL", None
        if state != "COMPLETE":
            value = None
        self._study.tell(trial, value, state=optuna.trial.TrialState[state])
        record = self._records[index]
        record["state"] = state
        record["value"] = value

    def initial_operations(self) -> list[Action]:
        """The first ``min(max_trials, max_concurrent_trials)`` asks."""
        return self._fill() + self._maybe_finish()

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Nothing to do: the first operation came with the Create."""
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Tell at the full length; otherwise report for the pruner and maybe prune."""
        opened = self._open.get(request_id)
        if opened is None or self._shutdown:
            return []
        value = as_float(metric)
        if math.isfinite(value):
            self._last[request_id] = value
        if self._full is not None and length >= self._full:
            self._tell(request_id, "COMPLETE", value)
            return [Stop(request_id)]
        if self._pruner_name != "none" and math.isfinite(value):
            trial, index = opened
            steps = self._records[index]["steps"]
            step = int(length)
            if str(step) not in steps:
                steps[str(step)] = value
                trial.report(value, step=step)
                if trial.should_prune():
                    self._tell(request_id, "PRUNED", None)
                    return [Stop(request_id)]
        if self._op_length is not None:
            for point in self._reports:
                if point > length:
                    return [ValidateAfter(request_id, point)]
        return []

    def _on_exit(self, request_id: str, ok: bool, reason: ExitedReason | None) -> list[Action]:
        if request_id not in self._live:
            return []
        last = self._last.pop(request_id, None)
        if ok:
            self._tell(request_id, "COMPLETE", last)
        else:
            self._tell(request_id, "FAIL", None)
        if reason is ExitedReason.INVALID_HP and self._may_replace_invalid(self._max_trials):
            del self._live[request_id]
            self._n_invalid += 1
            self._created -= 1
        else:
            self._exit(request_id, ok)
            self._finished += 1
        return self._fill() + self._maybe_finish()

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """Tell the last metric if not told yet; ask the next trial or shut down."""
        return self._on_exit(request_id, True, None)

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Tell FAIL; replace an INVALID_HP trial (bounded)."""
        return self._on_exit(request_id, False, reason)

    def _raw_progress(self) -> float:
        return self._finished / self._max_trials if self._max_trials > 0 else 1.0

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> JSONDict:
        """Every trial's record, the study's system attributes and counters."""
        state = self._base_state()
        state.update(
            created=self._created,
            finished=self._finished,
            asked=self._asked,
            records=[dict(r, steps=dict(r["steps"])) for r in self._records],
            last=dict(self._last),
            broken=self._broken,
            study_system_attrs=dict(
                self._study._storage.get_study_system_attrs(self._study._study_id)
            ),
        )
        return state

    def restore(self, state: JSONDict) -> None:
        """Rebuild the study from :meth:`snapshot` (see the module docstring)."""
        import optuna

        self._restore_base(state)
        self._created = int(state["created"])
        self._finished = int(state["finished"])
        self._asked = int(state["asked"])
        self._last = {str(k): float(v) for k, v in state["last"].items()}
        self._broken = state.get("broken")
        self._study = self._new_study()
        storage, study_id = self._study._storage, self._study._study_id
        for key, value in state["study_system_attrs"].items():
            storage.set_study_system_attr(study_id, key, value)
        self._records = []
        self._open = {}
        for saved in state["records"]:
            record: JSONDict = {
                "rid": str(saved["rid"]),
                "params": dict(saved["params"]),
                "state": str(saved["state"]),
                "value": saved["value"],
                "steps": {str(k): float(v) for k, v in saved["steps"].items()},
            }
            intermediate = {int(k): v for k, v in record["steps"].items()}
            if record["state"] == "RUNNING":
                self._study.enqueue_trial(record["params"])
                trial = self._study.ask(self._dists)
                for step, value in sorted(intermediate.items()):
                    trial.report(value, step=step)
                self._open[record["rid"]] = (trial, len(self._records))
            else:
                self._study.add_trial(
                    optuna.trial.create_trial(
                        state=optuna.trial.TrialState[record["state"]],
                        value=record["value"],
                        params=record["params"],
                        distributions={n: self._dists[n] for n in record["params"]},
                        intermediate_values=intermediate,
                    )
                )
            self._records.append(record)
