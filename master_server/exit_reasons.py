"""Why a trial run ended, in the words a user expects to read after the trial's state.

The CLI prints ``STATE (reason)``, so each phrase reads after a state: ``COMPLETED (finished
training after 1 restart)``, ``ERROR (crashed with exit code 1; no restarts left, 5 used)``.
One place for these strings, so the engine never writes a bare exit code as a reason.
"""

from __future__ import annotations

import signal

EARLY_EXITS = {
    "INVALID_HP": "the trial reported invalid hyperparameters (INVALID_HP)",
    "ERRORED": "the trial reported an error and exited early (ERRORED)",
    "USER_CANCELED": "the trial canceled itself (USER_CANCELED)",
}


def _restarts(n: int) -> str:
    return f"{n} restart" + ("" if n == 1 else "s")


def how_it_exited(exit_code: int) -> str:
    """``crashed with exit code 1``, ``killed by SIGKILL``: a non-zero exit in words."""
    if exit_code < 0 or exit_code > 128:
        num = -exit_code if exit_code < 0 else exit_code - 128
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = f"signal {num}"
        if exit_code < 0:
            return f"killed by {name}"
        return f"exited with code {exit_code} (killed by {name})"
    return f"crashed with exit code {exit_code}"


def finished(restarts: int) -> str:
    """The trial trained to the end its searcher asked for."""
    return "finished training" + (f" after {_restarts(restarts)}" if restarts else "")


def stopped_by_searcher(restarts: int) -> str:
    """The searcher stopped the trial before the end of its current operation."""
    return "stopped early by the searcher" + (f" (after {_restarts(restarts)})" if restarts else "")


def early_exit(code: str) -> str:
    """A reason the trial reported itself (``ReportEarlyExit``)."""
    return EARLY_EXITS.get(code, f"the trial exited early ({code})")


def canceled(reason: str | None) -> str:
    """Canceled or killed by a user (``reason``: the preemption reason, if any)."""
    return "killed" if reason == "kill" else "the experiment was canceled"


PAUSED = "the experiment was paused; it resumes from the latest checkpoint"
