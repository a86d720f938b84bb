"""Bookkeeping shared by the built-in search methods.

:class:`TrialBookkeeping` hands out request ids (``"r1"``, ``"r2"``, ... in creation order, so a
search is deterministic given its seed), tracks the trials that are created and not yet exited
(what ``max_concurrent_trials`` limits), counts trials that ended well or badly, emits the one
:class:`~master_server.searcher.base.Shutdown`, and keeps :meth:`progress` monotone.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from determined_sdk.errors import InvalidArgumentError
from master_server.searcher.base import Action, JSONDict, SearchMethod, Shutdown

#: Trials replaced after ``INVALID_HP`` exits, at most this many times ``max_trials`` (plus 10),
#: so a space where every point is invalid still ends.
INVALID_HP_REPLACEMENT_FACTOR = 4


class TrialBookkeeping(SearchMethod):
    """Request ids, live trials, outcome counts, the single Shutdown, monotone progress."""

    #: ``snapshot()["kind"]``; checked by ``restore()``.
    kind = "base"

    def __init__(self, max_concurrent_trials: int) -> None:
        self._max_concurrent = max_concurrent_trials
        self._seq = 0
        self._live: dict[str, None] = {}
        self._n_ok = 0
        self._n_failed = 0
        self._n_invalid = 0
        self._shutdown = False
        self._progress_floor = 0.0

    # -- ids and capacity ---------------------------------------------------------------------

    def _new_request_id(self) -> str:
        self._seq += 1
        rid = f"r{self._seq}"
        self._live[rid] = None
        return rid

    def _room(self) -> int:
        """How many more trials may be created now (``max_concurrent_trials``; 0 = no limit)."""
        if self._max_concurrent <= 0:
            return 1 << 62
        return max(0, self._max_concurrent - len(self._live))

    def _exit(self, request_id: str, ok: bool) -> bool:
        """Record an exit; False if the trial is not live (unknown or already exited)."""
        if request_id not in self._live:
            return False
        del self._live[request_id]
        if ok:
            self._n_ok += 1
        else:
            self._n_failed += 1
        return True

    def _may_replace_invalid(self, max_trials: int) -> bool:
        return self._n_invalid < INVALID_HP_REPLACEMENT_FACTOR * max_trials + 10

    def _finish(self, reason: str, *, failure: bool = False) -> list[Action]:
        """The one Shutdown, or nothing if it was sent. It is a ``failure`` when asked, or when
        no trial ended well."""
        if self._shutdown:
            return []
        self._shutdown = True
        self._progress_floor = 1.0
        if failure:
            return [Shutdown(failure=True, reason=reason)]
        if self._n_ok == 0 and (self._n_failed or self._n_invalid):
            return [Shutdown(failure=True, reason=f"{reason}; no trial completed without error")]
        return [Shutdown(failure=False, reason=reason)]

    @property
    def is_shut_down(self) -> bool:
        """Whether the Shutdown was emitted."""
        return self._shutdown

    @property
    def live_request_ids(self) -> list[str]:
        """Trials created and not yet exited, in creation order."""
        return list(self._live)

    # -- progress -------------------------------------------------------------------------------

    def _raw_progress(self) -> float:
        """The method's own estimate in [0, 1]; :meth:`progress` makes it monotone."""
        return 0.0

    def progress(self) -> float:
        """Fraction 0..1 of the search done; never decreases, 1.0 once shut down."""
        if self._shutdown:
            return 1.0
        raw = self._raw_progress()
        if not math.isfinite(raw):
            raw = 0.0
        # Below 1.0 until the Shutdown: an estimate may run ahead of the real work.
        raw = min(max(raw, 0.0), 0.999)
        if raw > self._progress_floor:
            self._progress_floor = raw
        return self._progress_floor

    # -- snapshot helpers -----------------------------------------------------------------------

    def _base_state(self) -> JSONDict:
        return {
            "kind": self.kind,
            "seq": self._seq,
            "live": list(self._live),
            "n_ok": self._n_ok,
            "n_failed": self._n_failed,
            "n_invalid": self._n_invalid,
            "shutdown": self._shutdown,
            "progress_floor": self._progress_floor,
        }

    def _restore_base(self, state: JSONDict) -> None:
        if state.get("kind") != self.kind:
            raise InvalidArgumentError(
                f"searcher snapshot is for {state.get('kind')!r}, not {self.kind!r}"
            )
        self._seq = int(state["seq"])
        self._live = dict.fromkeys(str(r) for r in state["live"])
        self._n_ok = int(state["n_ok"])
        self._n_failed = int(state["n_failed"])
        self._n_invalid = int(state["n_invalid"])
        self._shutdown = bool(state["shutdown"])
        self._progress_floor = float(state["progress_floor"])


_WORST = sys.float_info.max


def metric_key(metric: float, smaller_is_better: bool) -> float:
    """A finite sort key where smaller is better; NaN sorts last (worst).

    Infinities are clamped to the largest float so snapshots stay strict JSON.
    """
    if math.isnan(metric):
        return _WORST
    key = metric if smaller_is_better else -metric
    return max(-_WORST, min(_WORST, key))


def as_float(value: Any) -> float:
    """``float(value)``, NaN for anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
