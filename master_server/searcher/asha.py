"""Adaptive ASHA: asynchronous successive halving over several brackets (Determined-style).

Brackets. ``mode`` picks how many brackets and of how many rungs each (``bracket_rungs``
overrides): ``aggressive`` one bracket of ``max_rungs`` rungs; ``standard``
``ceil(max_rungs / 2)`` brackets of ``max_rungs, max_rungs - 1, ...`` rungs; ``conservative``
``max_rungs`` brackets of ``max_rungs .. 1`` rungs. Fewer rungs means less early stopping.
``max_trials`` is split over brackets in proportion to ``divisor ** (rungs - 1) / rungs``
(Hyperband's allocation), remainders to the most aggressive brackets first.

Rungs. In a bracket of ``R`` rungs, rung ``k`` is at ``L / divisor ** (R - 1 - k)`` units (at
least 1), ``L`` the full length: ``max_length`` (op style) or ``max_time`` (metrics-only style,
in units of the ``time_metric``). Equal consecutive rungs are merged.

Promotion (stop-once ASHA). A trial reaching rung ``k`` records its metric there; it goes on
to rung ``k + 1`` if its rank among the metrics recorded at rung ``k`` so far (itself included)
is within the top ``max(1, floor(n / divisor))``, otherwise it gets ``Stop``. A trial reaching
the last rung is done (``Stop``). With ``ValidateAfter(rid, rung_length)`` the trial knows where
the next rung is (op style); metrics-only trials simply report validations and the reported
``length`` (the time metric's value) is compared with the rung lengths, crossing several rungs
at once if it must.

Progress is the units trained (capped per trial by its rung, full credit for exited trials)
over the units the brackets are expected to train: ``n_b / divisor ** k`` trials (at least 1)
reaching rung ``k`` in a bracket of ``n_b`` trials.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

from master_server.searcher import hparams as hp
from master_server.searcher._common import TrialBookkeeping, metric_key
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    JSONDict,
    Stop,
    ValidateAfter,
)


def bracket_rung_counts(mode: str, max_rungs: int) -> list[int]:
    """The rung count of each bracket for a mode (see the module docstring)."""
    if mode == "aggressive":
        return [max_rungs]
    if mode == "conservative":
        return list(range(max_rungs, 0, -1))
    return list(range(max_rungs, max_rungs - math.ceil(max_rungs / 2), -1))


def allocate_trials(max_trials: int, rung_counts: list[int], divisor: float) -> list[int]:
    """``max_trials`` split over brackets ~ ``divisor ** (R - 1) / R``; sums to ``max_trials``."""
    weights = [divisor ** (r - 1) / r for r in rung_counts]
    total = sum(weights)
    shares = [max_trials * w / total for w in weights]
    out = [math.floor(s) for s in shares]
    # Largest remainders first; ties go to the earlier (more aggressive) bracket.
    order = sorted(range(len(out)), key=lambda i: (-(shares[i] - out[i]), i))
    for i in order[: max_trials - sum(out)]:
        out[i] += 1
    return out


def rung_lengths(full: int, num_rungs: int, divisor: float) -> list[int]:
    """Increasing rung lengths ending at ``full`` (equal neighbours merged)."""
    lengths: list[int] = []
    for k in range(num_rungs):
        length = max(1, int(full / divisor ** (num_rungs - 1 - k)))
        if not lengths or length > lengths[-1]:
            lengths.append(length)
    if lengths[-1] != full:  # pragma: no cover - the last rung is full / divisor**0
        lengths.append(full)
    return lengths


class _Bracket:
    __slots__ = ("created", "lengths", "max_trials", "rungs")

    def __init__(self, lengths: list[int], max_trials: int) -> None:
        self.lengths = lengths
        self.max_trials = max_trials
        self.created = 0
        # Per rung: sorted metric keys (smaller is better) of trials that reached it.
        self.rungs: list[list[float]] = [[] for _ in lengths]

    def expected_units(self, divisor: float) -> float:
        units = 0.0
        prev = 0
        for k, length in enumerate(self.lengths):
            reaching = min(float(self.max_trials), max(1.0, self.max_trials / divisor**k))
            units += reaching * (length - prev)
            prev = length
        return units


class AdaptiveASHASearch(TrialBookkeeping):
    """Determined's ``adaptive_asha`` with stop-once promotions (see the module docstring)."""

    kind = "adaptive_asha"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        max_trials: int,
        max_length: int | None = None,
        max_time: int | None = None,
        max_rungs: int = 5,
        divisor: float = 4.0,
        mode: str = "standard",
        bracket_rungs: list[int] | None = None,
        max_concurrent_trials: int = 16,
        smaller_is_better: bool = True,
    ) -> None:
        """Build the search.

        Args:
            hparams: the normalized ``hyperparameters`` section.
            seed: the experiment seed.
            max_trials: trials over all brackets (INVALID_HP trials are replaced).
            max_length: op-style full length, or None for the metrics-only style.
            max_time: metrics-only full length (units of the time metric).
            max_rungs: rungs of the most aggressive bracket.
            divisor: the halving rate (> 1).
            mode: ``aggressive``, ``standard`` or ``conservative``.
            bracket_rungs: explicit rung counts per bracket (overrides ``mode``).
            max_concurrent_trials: trials outstanding at once; 0 means no limit.
            smaller_is_better: the direction of the searcher metric.

        Raises:
            ValueError: neither or both of ``max_length`` / ``max_time`` given.
        """
        super().__init__(max_concurrent_trials)
        if (max_length is None) == (max_time is None):
            raise ValueError("give exactly one of max_length and max_time")
        full = int(max_length if max_length is not None else max_time)  # type: ignore[arg-type]
        self._hparams = hparams
        self._seed = seed
        self._max_trials = max_trials
        self._divisor = float(divisor)
        self._smaller_is_better = smaller_is_better
        self._full = full
        counts = list(bracket_rungs) if bracket_rungs else bracket_rung_counts(mode, max_rungs)
        alloc = allocate_trials(max_trials, counts, self._divisor)
        self._brackets = [
            _Bracket(rung_lengths(full, r, self._divisor), n)
            for r, n in zip(counts, alloc, strict=True)
            if n > 0
        ]
        self._expected = sum(b.expected_units(self._divisor) for b in self._brackets) or 1.0
        # Live trials: request id -> [bracket index, rung index it works toward, units done,
        # stop sent].
        self._trials: dict[str, list[Any]] = {}
        self._units = 0.0
        self._created = 0

    @property
    def brackets(self) -> list[tuple[list[int], int]]:
        """``(rung lengths, max trials)`` per bracket."""
        return [(list(b.lengths), b.max_trials) for b in self._brackets]

    # -- actions --------------------------------------------------------------------------------

    def _pick_bracket(self) -> int | None:
        best: int | None = None
        best_fill = 2.0
        for i, b in enumerate(self._brackets):
            if b.created < b.max_trials:
                fill = b.created / b.max_trials
                if fill < best_fill:
                    best, best_fill = i, fill
        return best

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        room = self._room()
        while room > 0 and not self._shutdown:
            index = self._pick_bracket()
            if index is None:
                break
            bracket = self._brackets[index]
            n = self._seq
            rid = self._new_request_id()
            bracket.created += 1
            self._created += 1
            room -= 1
            self._trials[rid] = [index, 0, 0.0, False]
            actions.append(Create(rid, hp.sample(self._hparams, hp.seeded_rng(self._seed, n))))
            actions.append(ValidateAfter(rid, bracket.lengths[0]))
        return actions

    def _maybe_finish(self) -> list[Action]:
        if self._created >= self._max_trials and not self._live:
            return self._finish(f"all {self._max_trials} trial(s) finished")
        return []

    def _credit(self, trial: list[Any], units: float) -> None:
        units = min(units, float(self._full))
        if units > trial[2]:
            self._units += units - trial[2]
            trial[2] = units

    def initial_operations(self) -> list[Action]:
        """The first trials, each with a ValidateAfter at its bracket's first rung."""
        return self._fill() + self._maybe_finish()

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Nothing to do: the first operation came with the Create."""
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Record the metric at every rung ``length`` reaches; promote or stop."""
        trial = self._trials.get(request_id)
        if trial is None or trial[3] or self._shutdown:
            return []
        self._credit(trial, float(length))
        bracket = self._brackets[trial[0]]
        lengths = bracket.lengths
        last = len(lengths) - 1
        key = metric_key(float(metric), self._smaller_is_better)
        moved = False
        while length >= lengths[trial[1]]:
            rung = trial[1]
            records = bracket.rungs[rung]
            pos = bisect.bisect_left(records, key)
            records.insert(pos, key)
            if rung == last:
                trial[3] = True
                return [Stop(request_id)]
            if pos < max(1, int(len(records) / self._divisor)):
                trial[1] = rung + 1
                moved = True
            else:
                trial[3] = True
                return [Stop(request_id)]
        if moved:
            return [ValidateAfter(request_id, lengths[trial[1]])]
        return []

    def on_trial_progress(self, request_id: str, length_done: float) -> None:
        """Count ``length_done`` (absolute units trained) toward progress."""
        trial = self._trials.get(request_id)
        if trial is not None:
            self._credit(trial, float(length_done))

    def _close(self, trial: list[Any]) -> None:
        """Full credit for the rung the trial was at (it will train no more)."""
        self._credit(trial, float(self._brackets[trial[0]].lengths[trial[1]]))

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """The trial is done; create the next one or shut down."""
        trial = self._trials.pop(request_id, None)
        if trial is None or not self._exit(request_id, ok=True):
            return []
        self._close(trial)
        return self._fill() + self._maybe_finish()

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Replace an INVALID_HP trial in its bracket (bounded); others count as done."""
        trial = self._trials.pop(request_id, None)
        if trial is None or request_id not in self._live:
            return []
        if reason is ExitedReason.INVALID_HP and self._may_replace_invalid(self._max_trials):
            del self._live[request_id]
            self._n_invalid += 1
            self._created -= 1
            self._brackets[trial[0]].created -= 1
            self._units -= trial[2]
        else:
            self._exit(request_id, ok=False)
            self._close(trial)
        return self._fill() + self._maybe_finish()

    def _raw_progress(self) -> float:
        return self._units / self._expected

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> JSONDict:
        """Rung records per bracket, live trials and counters."""
        state = self._base_state()
        state.update(
            created=self._created,
            units=self._units,
            brackets=[
                {"created": b.created, "rungs": [list(r) for r in b.rungs]} for b in self._brackets
            ],
            trials={rid: list(t) for rid, t in self._trials.items()},
        )
        return state

    def restore(self, state: JSONDict) -> None:
        """Continue from :meth:`snapshot` (this instance must be built from the same config)."""
        self._restore_base(state)
        self._created = int(state["created"])
        self._units = float(state["units"])
        if len(state["brackets"]) != len(self._brackets):
            raise ValueError("snapshot brackets do not match the config")
        for bracket, saved in zip(self._brackets, state["brackets"], strict=True):
            bracket.created = int(saved["created"])
            bracket.rungs = [[float(x) for x in rung] for rung in saved["rungs"]]
        self._trials = {
            str(r): [int(t[0]), int(t[1]), float(t[2]), bool(t[3])]
            for r, t in state["trials"].items()
        }
