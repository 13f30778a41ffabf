"""The bench's arithmetic: summaries of timing samples and the derived rates.

Kept free of torch and of any timing so that the suite can check every number
the report prints against a hand computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["GB", "MIB", "gbps", "percent_of", "quantile", "speedup", "summarize"]

#: decimal gigabyte: GB/s is quoted as 1e9 bytes per second, like STREAM
GB = 1e9
#: binary mebibyte, for memory sizes
MIB = 1 << 20


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation between order statistics (numpy's default)."""
    if not samples:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread of step times: the interquartile range and the extremes."""
    p25, median, p75 = (quantile(samples, q) for q in (0.25, 0.5, 0.75))
    return {
        "n": len(samples),
        "median": median,
        "p25": p25,
        "p75": p75,
        "iqr": p75 - p25,
        "min": min(samples),
        "max": max(samples),
    }


def gbps(nbytes: float | None, seconds: float | None) -> float | None:
    """Decimal GB/s; None when either side is unknown."""
    if nbytes is None or seconds is None or seconds <= 0:
        return None
    return nbytes / seconds / GB


def percent_of(value: float | None, reference: float | None) -> float | None:
    """``value`` as a percentage of ``reference`` (e.g. GB/s of the bandwidth ceiling)."""
    if value is None or reference is None or reference <= 0:
        return None
    return 100.0 * value / reference


def speedup(baseline_seconds: float | None, seconds: float | None) -> float | None:
    """How many times faster ``seconds`` is than ``baseline_seconds`` (>1: faster)."""
    if baseline_seconds is None or seconds is None or seconds <= 0:
        return None
    return baseline_seconds / seconds
