"""Server-side downsampling of metric series for charts: min/max per bucket.

A chart a few hundred pixels wide cannot show more than a few points per pixel column, but it
must show the spikes: a loss that diverged for ten steps out of a million has to stay visible.
Each bucket of consecutive points therefore keeps its smallest and its largest value (in their
original order), and the first and last points of the series are always kept. NaN values never
win a bucket's min or max; a bucket holding only NaN keeps its first point, so gaps stay gaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def minmax_indices(values: Sequence[float], max_points: int) -> list[int]:
    """Indices (ascending) of the points to keep so that at most ``max_points`` remain.

    Args:
        values: the series' y values in x order.
        max_points: the most points to return; values below 4 are treated as 4 (first, last,
            and one bucket's min and max).

    Returns:
        Every index when the series is short enough; otherwise the first and last index and,
        per bucket of the points between, the index of the minimum and of the maximum.
    """
    n = len(values)
    max_points = max(4, max_points)
    if n <= max_points:
        return list(range(n))
    buckets = max(1, (max_points - 2) // 2)
    inner = n - 2
    has_nan = any(map(math.isnan, values))
    keep = [0]
    for b in range(buckets):
        lo = 1 + (b * inner) // buckets
        hi = 1 + ((b + 1) * inner) // buckets
        if lo >= hi:
            continue
        seg = values[lo:hi]
        if has_nan:
            idx = [i for i, v in enumerate(seg) if not math.isnan(v)]
            if not idx:
                keep.append(lo)
                continue
            i_min = min(idx, key=seg.__getitem__)
            i_max = max(idx, key=seg.__getitem__)
        else:
            i_min = seg.index(min(seg))
            i_max = seg.index(max(seg))
        a, b2 = sorted((i_min, i_max))
        keep.append(lo + a)
        if b2 != a:
            keep.append(lo + b2)
    keep.append(n - 1)
    return keep
