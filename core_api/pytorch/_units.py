"""Training lengths and periods: :class:`Batch`, :class:`Epoch` and :class:`Record`.

The trainer counts in batches (global steps: one optimizer step across all ranks). Epochs and
records convert to batches with the trial's epoch length (``records_per_epoch`` from the
experiment config when set, else the training loader's length) and its global batch size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainUnit:
    """A length in some unit; use :class:`Batch`, :class:`Epoch` or :class:`Record`."""

    value: int

    unit = "batches"

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(self).__name__}(value) must be an int >= 1, got {v!r}")

    def to_batches(self, batches_per_epoch: int, global_batch_size: int) -> int:
        """This length in batches."""
        return self.value


@dataclass(frozen=True)
class Batch(TrainUnit):
    """``n`` batches (optimizer steps)."""

    unit = "batches"


@dataclass(frozen=True)
class Epoch(TrainUnit):
    """``n`` epochs (``records_per_epoch`` records each when configured, else one pass)."""

    unit = "epochs"

    def to_batches(self, batches_per_epoch: int, global_batch_size: int) -> int:
        """This length in batches."""
        return self.value * batches_per_epoch


@dataclass(frozen=True)
class Record(TrainUnit):
    """``n`` records (rounded up to whole global batches)."""

    unit = "records"

    def to_batches(self, batches_per_epoch: int, global_batch_size: int) -> int:
        """This length in batches."""
        return math.ceil(self.value / global_batch_size)


_BY_UNIT: dict[str, type[TrainUnit]] = {"batches": Batch, "epochs": Epoch, "records": Record}


def unit_from(length: int, unit: str) -> TrainUnit:
    """Build the :class:`TrainUnit` for ``length`` in ``unit`` (``batches``/``epochs``/``records``).

    Raises:
        ValueError: unknown unit.
    """
    try:
        cls = _BY_UNIT[unit]
    except KeyError:
        raise ValueError(f"unknown length unit {unit!r} (batches, epochs or records)") from None
    return cls(int(length))


def from_config(value: Any, field: str) -> TrainUnit | None:
    """Read a length such as ``{"batches": 10}`` (or the master's ``{"unit", "value"}``) from a
    config field, or None when absent.

    Raises:
        ValueError: the field is not a length; the message names ``field``.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}: expected a length like {{batches: 10}}, got {value!r}")
    if "unit" in value and "value" in value:
        return unit_from(int(value["value"]), str(value["unit"]))
    found = [(k, v) for k, v in value.items() if k in _BY_UNIT]
    if len(found) != 1:
        raise ValueError(f"{field}: expected exactly one of batches/epochs/records, got {value!r}")
    unit, length = found[0]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"{field}.{unit}: must be an int >= 1, got {length!r}")
    return unit_from(length, unit)
