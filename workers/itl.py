"""Token-weighted inter-token latency (ITL) without per-token records.

vLLM's serving benchmark (benchmarks/backend_request_func.py) appends, for every
streamed chunk after a request's first, the time since the previous chunk to the
request's `itl` list; benchmark_serving.py concatenates the lists of all successful
requests and reports np.mean and np.percentile over them: one sample per output
token after the first when each chunk carries one token. A replay has billions of
output tokens, so the engine adds its gaps to this histogram instead: a decode
segment's steps give every member of its batch one gap each, so a segment adds
(value, batch) per step, as one arithmetic series (`add_series`) in O(buckets it
spans).

Buckets are log-spaced by RATIO = 1.01 from MIN_S = 1 us; a percentile is read at
its order statistics' bucket middles (geometric) and interpolated between them as
np.percentile interpolates, so it is within 0.5% of the exact one. The mean is
exact (a running sum). Memory is one dict entry per bucket used: a few hundred,
whatever the number of tokens.
"""
from __future__ import annotations

import math

MIN_S = 1e-6
RATIO = 1.01
_INV_LOG_RATIO = 1.0 / math.log(RATIO)
_LOG_MIN = math.log(MIN_S)
PERCENTILES = (50, 90, 99)


def _bucket(value_s: float) -> int:
    return int((math.log(value_s) - _LOG_MIN) * _INV_LOG_RATIO) if value_s > MIN_S else 0


def _edge(bucket: int) -> float:
    """Lower edge of `bucket`."""
    return MIN_S * RATIO ** bucket


class ItlHistogram:
    __slots__ = ("counts", "tokens", "sum_s")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}  # bucket -> output tokens whose gap fell in it
        self.tokens = 0
        self.sum_s = 0.0

    def add(self, value_s: float, count: int = 1) -> None:
        """`count` gaps of `value_s` seconds."""
        b = _bucket(value_s)
        counts = self.counts
        counts[b] = counts.get(b, 0) + count
        self.tokens += count
        self.sum_s += value_s * count

    def add_series(self, first_s: float, slope_s: float, n: int, weight: int) -> None:
        """`weight` gaps of each of first_s + slope_s * k, k = 0..n-1."""
        if n <= 0 or weight <= 0:
            return
        last_s = first_s + slope_s * (n - 1)
        self.tokens += n * weight
        self.sum_s += (first_s + last_s) * 0.5 * n * weight
        if slope_s < 0.0:  # the same values in increasing order
            first_s, last_s, slope_s = last_s, first_s, -slope_s
        b = _bucket(first_s)
        b_last = _bucket(last_s)
        counts = self.counts
        if b == b_last:
            counts[b] = counts.get(b, 0) + n * weight
            return
        below = 0  # values k < below lie in buckets already counted
        while b < b_last:
            # Values under the bucket's upper edge: k < (edge - first) / slope.
            upto = min(n, max(below, math.ceil((_edge(b + 1) - first_s) / slope_s)))
            if upto > below:
                counts[b] = counts.get(b, 0) + (upto - below) * weight
                below = upto
            b += 1
        if n > below:
            counts[b_last] = counts.get(b_last, 0) + (n - below) * weight

    def merge(self, other: "ItlHistogram") -> None:
        counts = self.counts
        for b, c in other.counts.items():
            counts[b] = counts.get(b, 0) + c
        self.tokens += other.tokens
        self.sum_s += other.sum_s

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) as np.percentile's default (linear) method gives it,
        from bucket middles; None when empty."""
        if not self.tokens:
            return None
        rank = q / 100.0 * (self.tokens - 1)
        lo = int(rank)
        frac = rank - lo
        seen = 0
        v_lo = None
        for b in sorted(self.counts):
            seen += self.counts[b]
            mid = MIN_S * RATIO ** (b + 0.5)
            if v_lo is None and seen > lo:
                v_lo = mid
            if seen > lo + 1 or (seen > lo and frac == 0.0):
                return v_lo + frac * (mid - v_lo)
        return v_lo

    def summary(self) -> dict[str, float | None]:
        """{"p50", "p90", "p99", "mean"} in seconds, as the summary JSON's latency fields."""
        out = {f"p{p}": self.percentile(p) for p in PERCENTILES}
        out["mean"] = self.sum_s / self.tokens if self.tokens else None
        return out
