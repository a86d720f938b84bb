"""Min/max-per-bucket downsampling keeps extremes, order, ends, and NaN gaps."""

from __future__ import annotations

import math
import random

import pytest

from master_server.downsample import minmax_indices


def test_short_series_is_kept_whole() -> None:
    assert minmax_indices([3.0, 1.0, 2.0], 10) == [0, 1, 2]
    assert minmax_indices([], 10) == []


@pytest.mark.parametrize("max_points", [4, 5, 10, 101, 1000])
def test_bounded_sorted_and_keeps_ends_and_extremes(max_points: int) -> None:
    rng = random.Random(max_points)
    values = [rng.gauss(0, 1) for _ in range(20_000)]
    values[7_777] = 50.0  # one spike up, one down: both must survive
    values[12_345] = -50.0
    keep = minmax_indices(values, max_points)
    assert len(keep) <= max_points
    assert keep == sorted(set(keep))
    assert keep[0] == 0 and keep[-1] == len(values) - 1
    assert 7_777 in keep and 12_345 in keep


def test_every_bucket_keeps_its_min_and_max() -> None:
    values = [float(i % 7) for i in range(1000)]
    keep = minmax_indices(values, 102)  # 50 buckets of 19-20 points between the ends
    kept = [values[i] for i in keep[1:-1]]
    assert kept.count(0.0) == 50 and kept.count(6.0) == 50


def test_nan_never_wins_and_all_nan_bucket_keeps_a_gap() -> None:
    values = [math.nan if 200 <= i < 400 else float(i) for i in range(1000)]
    keep = minmax_indices(values, 12)  # 5 buckets: [1, 200), [200, 400) (all NaN), ...
    nan_kept = [i for i in keep if math.isnan(values[i])]
    assert nan_kept == [200]  # the all-NaN bucket keeps its first point: a gap
    assert 999 in keep and len(keep) <= 12
    assert minmax_indices([math.nan] * 50, 4) == [0, 1, 49]
