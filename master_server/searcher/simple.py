"""The single, random and grid search methods.

Each creates a fixed number of trials (1, ``max_trials``, or one per grid point), at most
``max_concurrent_trials`` outstanding at once, and trains every one to the full length:

* op style (``max_length`` set): each Create is followed by ``ValidateAfter(rid, max_length)``;
  the trial is stopped once it reports at that length;
* metrics-only style (``time_metric`` + ``max_time``): no lengths are needed from the trial, but
  it is stopped once a validation reports ``length >= max_time`` (the time metric's value);
* neither: the trial trains as long as its own code says and exits by itself.

A trial that exits with ``INVALID_HP`` is replaced by a fresh sample (random/single, bounded);
any other early exit counts as done. Progress is the completed work
``sum(min(length_done, L)) / (trials * L)`` with ``L`` the full length (exited trials count as
full); without any length it is the fraction of trials exited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from master_server.searcher import hparams as hp
from master_server.searcher._common import TrialBookkeeping
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    JSONDict,
    Stop,
    ValidateAfter,
)


class RandomSearch(TrialBookkeeping):
    """``max_trials`` trials with hyperparameters sampled independently (seeded).

    The ``n``-th trial created (0-based) samples from a generator derived from ``(seed, n)``, so
    a search is reproducible by seed and needs no generator state in its snapshot.
    """

    kind = "random"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        max_trials: int,
        max_concurrent_trials: int = 16,
        max_length: int | None = None,
        max_time: int | None = None,
    ) -> None:
        """Build the search.

        Args:
            hparams: the normalized ``hyperparameters`` section.
            seed: the experiment seed.
            max_trials: how many trials to train (INVALID_HP trials are replaced).
            max_concurrent_trials: trials outstanding at once; 0 means no limit.
            max_length: op-style full length (``searcher.max_length.value``), or None.
            max_time: metrics-only full length in time-metric units, or None.
        """
        super().__init__(max_concurrent_trials)
        self._hparams = hparams
        self._seed = seed
        self._max_trials = max_trials
        self._op_length = max_length
        self._full = max_length if max_length is not None else max_time
        self._created = 0  # trials created that count toward max_trials
        # Live trials: request id -> [length done (capped at full), stop sent].
        self._trials: dict[str, list[Any]] = {}
        self._units = 0.0  # sum of min(done, full) over every counted trial
        self._finished = 0  # counted trials exited

    def _hparams_for(self, n: int) -> JSONDict:
        return hp.sample(self._hparams, hp.seeded_rng(self._seed, n))

    def _replace_invalid(self) -> bool:
        return self._may_replace_invalid(self._max_trials)

    # -- actions --------------------------------------------------------------------------------

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        room = self._room()
        while room > 0 and self._created < self._max_trials and not self._shutdown:
            n = self._seq  # sequence number of the next request id (0-based)
            rid = self._new_request_id()
            self._created += 1
            room -= 1
            self._trials[rid] = [0.0, False]
            actions.append(Create(rid, self._hparams_for(n)))
            if self._op_length is not None:
                actions.append(ValidateAfter(rid, self._op_length))
        return actions

    def _maybe_finish(self) -> list[Action]:
        if self._created >= self._max_trials and not self._live:
            return self._finish(f"all {self._max_trials} trial(s) finished")
        return []

    def _advance(self, trial: list[Any], length: float) -> None:
        if self._full is None:
            return
        done = min(float(length), float(self._full))
        if done > trial[0]:
            self._units += done - trial[0]
            trial[0] = done

    def initial_operations(self) -> list[Action]:
        """The first ``min(max_trials, max_concurrent_trials)`` Creates (+ ValidateAfters)."""
        return self._fill() + self._maybe_finish()

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Nothing to do: the trial's operation came with its Create."""
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Stop the trial once it reports at the full length."""
        trial = self._trials.get(request_id)
        if trial is None or self._shutdown:
            return []
        self._advance(trial, length)
        if self._full is not None and length >= self._full and not trial[1]:
            trial[1] = True
            return [Stop(request_id)]
        return []

    def on_trial_progress(self, request_id: str, length_done: float) -> None:
        """Count ``length_done`` (absolute units trained) toward progress."""
        trial = self._trials.get(request_id)
        if trial is not None:
            self._advance(trial, length_done)

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """The trial is done; create the next one or shut down."""
        trial = self._trials.pop(request_id, None)
        if not self._exit(request_id, ok=True) or trial is None:
            return []
        self._count_full(trial)
        return self._fill() + self._maybe_finish()

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Replace an INVALID_HP trial (bounded); count any other early exit as done."""
        trial = self._trials.pop(request_id, None)
        if request_id not in self._live or trial is None:
            return []
        if reason is ExitedReason.INVALID_HP and self._replace_invalid():
            del self._live[request_id]
            self._n_invalid += 1
            self._created -= 1
            self._units -= trial[0]
        else:
            self._exit(request_id, ok=False)
            self._count_full(trial)
        return self._fill() + self._maybe_finish()

    def _count_full(self, trial: list[Any]) -> None:
        self._finished += 1
        if self._full is not None:
            self._units += self._full - trial[0]
            trial[0] = float(self._full)

    def _raw_progress(self) -> float:
        if self._max_trials <= 0:
            return 1.0
        if self._full is None:
            return self._finished / self._max_trials
        return self._units / (self._max_trials * self._full)

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> JSONDict:
        """Counters plus the live trials' progress (exited trials need no record)."""
        state = self._base_state()
        state.update(
            created=self._created,
            trials={rid: list(t) for rid, t in self._trials.items()},
            units=self._units,
            finished=self._finished,
        )
        return state

    def restore(self, state: JSONDict) -> None:
        """Continue from :meth:`snapshot` (this instance must be built from the same config)."""
        self._restore_base(state)
        self._created = int(state["created"])
        self._trials = {str(r): [float(t[0]), bool(t[1])] for r, t in state["trials"].items()}
        self._units = float(state["units"])
        self._finished = int(state["finished"])


class SingleSearch(RandomSearch):
    """One trial (hyperparameters sampled like random search; consts are used as they are)."""

    kind = "single"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        max_length: int | None = None,
        max_time: int | None = None,
    ) -> None:
        """Build the search (see :class:`RandomSearch`; ``max_trials`` is 1)."""
        super().__init__(
            hparams,
            seed=seed,
            max_trials=1,
            max_concurrent_trials=0,
            max_length=max_length,
            max_time=max_time,
        )


class GridSearch(RandomSearch):
    """One trial per point of the grid (:func:`master_server.searcher.hparams.grid_point`).

    An INVALID_HP trial is not replaced (its grid point is done).
    """

    kind = "grid"

    def __init__(
        self,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        max_concurrent_trials: int = 16,
        max_length: int | None = None,
        max_time: int | None = None,
    ) -> None:
        """Build the search; raises InvalidArgumentError if a numeric range has no count."""
        self._axes = hp.grid_axes(hparams)
        super().__init__(
            hparams,
            seed=seed,
            max_trials=hp.grid_size(self._axes),
            max_concurrent_trials=max_concurrent_trials,
            max_length=max_length,
            max_time=max_time,
        )

    @property
    def num_points(self) -> int:
        """The number of grid points (= trials)."""
        return self._max_trials

    def _hparams_for(self, n: int) -> JSONDict:
        return hp.grid_point(self._axes, n)

    def _replace_invalid(self) -> bool:
        return False
