"""Seeds and confidence intervals: each configuration runs once per seed (other requests, other
arrivals), and a figure is reported as its mean with a 95% Student-t interval over the seeds.

The t quantiles are tabulated (two-sided 95%, df 1-10) rather than pulling scipy in for them.
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

# Two-sided 95% Student-t quantiles t(0.975, df), df = 1..10.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


class Interval(NamedTuple):
    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
        """'m [lo, hi]' (a bare mean when there is one value)."""
        m, lo, hi = (format(v * scale, spec) for v in (self.mean, self.lo, self.hi))
        return f"{m}{suffix}" if self.n < 2 else f"{m}{suffix} [{lo}, {hi}]"


def ci95(values: Iterable[float]) -> Interval:
    """Mean and 95% confidence interval of the mean (Student t over the values)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = _T975[min(n - 1, len(_T975)) - 1] * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def span(intervals: Iterable[Interval]) -> tuple[float, float]:
    """The range a headline takes over several regimes: lowest lower bound to highest upper bound."""
    items = list(intervals)
    return min(i.lo for i in items), max(i.hi for i in items)


def range_text(intervals: Iterable[Interval], spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
    """'a to b (interval bounds lo to hi)': the means' range and the widest the intervals allow."""
    items = list(intervals)
    means = [i.mean for i in items]
    lo, hi = span(items)
    f = lambda v: f"{format(v * scale, spec)}{suffix}"  # noqa: E731
    if min(means) == max(means):
        return f"{f(means[0])} (interval {f(lo)} to {f(hi)})"
    return f"{f(min(means))} to {f(max(means))} (interval bounds {f(lo)} to {f(hi)})"


def paired_ratio(xs: Iterable[float], base: Iterable[float]) -> Interval:
    """Per-seed ratio x / base (the seeds pair: the same requests on both sides), as an interval."""
    return ci95([x / b for x, b in zip(xs, base) if b])


def paired_change(xs: Iterable[float], base: Iterable[float]) -> Interval:
    """Per-seed relative change x / base - 1, as an interval."""
    return ci95([x / b - 1 for x, b in zip(xs, base) if b])
