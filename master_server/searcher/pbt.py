"""Population-based training (PBT), in rounds.

Round 0 creates ``population_size`` trials with sampled hyperparameters. Every member of round
``r`` trains to ``(r + 1) * length_per_round`` units (lengths are absolute *along the model's
lineage*: a child warm-started from its parent's checkpoint at ``(r + 1) * L`` units continues to
``(r + 2) * L``). When every member has reported (or exited), the round ends:

* last round: every member gets ``Stop``; the search shuts down once they exit;
* otherwise the members are ranked by the searcher metric; the bottom
  ``floor(truncate_fraction * population_size)`` get ``Stop`` (exploit); the rest continue
  (``ValidateAfter`` to the next round's length); for each stopped member, and for each member
  lost to an early exit, a child is created from one of the top members (round robin):
  ``Create(child, explored hparams, checkpoint_from=parent request id)``.

Explore: each hyperparameter of the parent is resampled from its spec with probability
``resample_probability``; otherwise a numeric one is multiplied by ``1 + perturb_factor`` or
``1 - perturb_factor`` (a coin flip) and clamped to its range (``int`` rounded; ``log`` clamped
to ``[base ** minval, base ** maxval]``), and a categorical or const one is kept.

So every round has ``population_size`` live members (fewer only if members exit early in the
last round). Progress is ``(rounds done + members reported this round / population_size) /
num_rounds``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from master_server.searcher import hparams as hp
from master_server.searcher._common import TrialBookkeeping, as_float, metric_key
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    JSONDict,
    Stop,
    ValidateAfter,
)


def explore(
    specs: Mapping[hp.Path, Mapping[str, Any]],
    parent: Mapping[str, Any],
    rng: random.Random,
    *,
    resample_probability: float,
    perturb_factor: float,
) -> JSONDict:
    """New nested hparams derived from ``parent`` (see the module docstring).

    Args:
        specs: the flattened normalized specs (:func:`master_server.searcher.hparams.flatten`).
        parent: the parent's nested hparams.
        rng: the generator to draw from.
        resample_probability: chance of resampling a value from its spec.
        perturb_factor: relative step of a perturbation.
    """
    flat: dict[hp.Path, Any] = {}
    for path, spec in specs.items():
        value: Any = parent
        for key in path:
            value = value[key] if isinstance(value, Mapping) and key in value else None
        kind = spec["type"]
        if kind == "const":
            flat[path] = spec["val"]
            continue
        if value is None or rng.random() < resample_probability:
            flat[path] = hp.sample_value(spec, rng)
            continue
        if kind == "categorical":
            flat[path] = value
            continue
        factor = 1 + perturb_factor if rng.random() < 0.5 else 1 - perturb_factor
        moved = as_float(value) * factor
        if kind == "int":
            flat[path] = min(spec["maxval"], max(spec["minval"], round(moved)))
        elif kind == "double":
            flat[path] = min(float(spec["maxval"]), max(float(spec["minval"]), moved))
        else:
            lo, hi = spec["base"] ** spec["minval"], spec["base"] ** spec["maxval"]
            flat[path] = float(min(hi, max(lo, moved)))
    return hp.unflatten(flat)


class PBTSearch(TrialBookkeeping):
    """Population-based training (see the module docstring)."""

    kind = "pbt"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        population_size: int,
        num_rounds: int,
        length_per_round: int,
        truncate_fraction: float,
        resample_probability: float,
        perturb_factor: float,
        max_concurrent_trials: int = 0,
        smaller_is_better: bool = True,
    ) -> None:
        """Build the search.

        Args:
            hparams: the normalized ``hyperparameters`` section.
            seed: the experiment seed.
            population_size: members per round.
            num_rounds: rounds of training.
            length_per_round: units each round trains (``length_per_round.value``).
            truncate_fraction: share of the population replaced each round, in (0, 0.5].
            resample_probability: explore: chance to resample a value.
            perturb_factor: explore: relative perturbation, in (0, 1).
            max_concurrent_trials: 0 (no limit) or at least ``population_size``.
            smaller_is_better: the direction of the searcher metric.
        """
        super().__init__(max_concurrent_trials)
        self._hparams = hparams
        self._specs = hp.flatten(hparams)
        self._seed = seed
        self._pop = population_size
        self._rounds = num_rounds
        self._length = length_per_round
        self._n_truncate = int(truncate_fraction * population_size)
        self._resample = resample_probability
        self._perturb = perturb_factor
        self._smaller_is_better = smaller_is_better
        self._round = 0
        # Members of the current round: request id -> [hparams, metric key or None].
        self._members: dict[str, list[Any]] = {}
        # Trials to create when there is room: [hparams, parent request id or None].
        self._queue: list[list[Any]] = []
        self._ending = False
        self._explored = 0

    @property
    def round(self) -> int:
        """The current round (0-based)."""
        return self._round

    def _target(self) -> int:
        return (self._round + 1) * self._length

    def _drain(self) -> list[Action]:
        actions: list[Action] = []
        room = self._room()
        while self._queue and room > 0 and not self._shutdown:
            hparams, parent = self._queue.pop(0)
            rid = self._new_request_id()
            room -= 1
            self._members[rid] = [hparams, None]
            actions.append(Create(rid, hparams, checkpoint_from=parent))
            actions.append(ValidateAfter(rid, self._target()))
        return actions

    def _maybe_finish(self) -> list[Action]:
        if self._ending and not self._live:
            return self._finish(f"all {self._rounds} rounds of PBT finished")
        return []

    def initial_operations(self) -> list[Action]:
        """Round 0: ``population_size`` Creates, each with a ValidateAfter."""
        if not self._members and not self._queue and self._seq == 0:
            for n in range(self._pop):
                self._queue.append([hp.sample(self._hparams, hp.seeded_rng(self._seed, n)), None])
        return self._drain()

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Nothing to do: the operation came with the Create."""
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Record a member's result for this round; end the round when all are in."""
        member = self._members.get(request_id)
        if member is None or member[1] is not None or self._shutdown:
            return []
        if length < self._target():
            return []  # an intermediate report; the round's length is not reached yet
        member[1] = metric_key(as_float(metric), self._smaller_is_better)
        return self._check_round()

    def _check_round(self) -> list[Action]:
        if self._ending or self._queue:
            return []
        if any(m[1] is None for m in self._members.values()):
            return []
        if not self._members:
            # Every member of the round is gone: nothing to exploit from.
            self._ending = True
            return self._maybe_finish()
        ranked = sorted(self._members, key=lambda rid: self._members[rid][1])
        actions: list[Action] = []
        if self._round + 1 >= self._rounds:
            self._ending = True
            self._round = self._rounds
            actions = [Stop(rid) for rid in ranked]
            self._members = {}
            return actions + self._maybe_finish()
        n = len(ranked)
        n_cut = min(self._n_truncate, n // 2)
        survivors = ranked[: n - n_cut]
        parents = ranked[: max(1, n_cut)]
        actions.extend(Stop(rid) for rid in ranked[n - n_cut :])
        self._round += 1
        for rid in survivors:
            actions.append(ValidateAfter(rid, self._target()))
        for i in range(self._pop - len(survivors)):
            parent = parents[i % len(parents)]
            rng = hp.seeded_rng(self._seed, self._explored, salt=1)
            self._explored += 1
            child = explore(
                self._specs,
                self._members[parent][0],
                rng,
                resample_probability=self._resample,
                perturb_factor=self._perturb,
            )
            self._queue.append([child, parent])
        self._members = {rid: [self._members[rid][0], None] for rid in survivors}
        return actions + self._drain()

    def _on_exit(self, request_id: str, ok: bool) -> list[Action]:
        if not self._exit(request_id, ok):
            return []
        self._members.pop(request_id, None)
        actions = self._drain()
        return actions + self._check_round() + self._maybe_finish()

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """A member finished (stopped, or its code ended): make room; maybe end the round."""
        return self._on_exit(request_id, ok=True)

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """A member is lost; it is replaced by a child at the end of the round."""
        return self._on_exit(request_id, ok=False)

    def _raw_progress(self) -> float:
        if self._rounds <= 0:
            return 1.0
        reported = sum(1 for m in self._members.values() if m[1] is not None)
        return (min(self._round, self._rounds) + reported / self._pop) / self._rounds

    def snapshot(self) -> JSONDict:
        """Round, members with their results, queued children, counters."""
        state = self._base_state()
        state.update(
            round=self._round,
            members={rid: list(m) for rid, m in self._members.items()},
            queue=[list(q) for q in self._queue],
            ending=self._ending,
            explored=self._explored,
        )
        return state

    def restore(self, state: JSONDict) -> None:
        """Continue from :meth:`snapshot` (this instance must be built from the same config)."""
        self._restore_base(state)
        self._round = int(state["round"])
        self._members = {
            str(r): [m[0], None if m[1] is None else float(m[1])]
            for r, m in state["members"].items()
        }
        self._queue = [[q[0], q[1]] for q in state["queue"]]
        self._ending = bool(state["ending"])
        self._explored = int(state["explored"])
