"""Token-weighted inter-token latency (ITL) without per-token records.

vLLM's serving benchmark (benchmarks/backend_request_func.py) appends, for every
streamed chunk after a request's first, the time since the previous chunk to the
request's `itl` list; benchmark_serving.py concatenates the lists of all successful
requests and reports np.mean and np.percentile over them: one sample per output
token after the first when each chunk carries one token. A replay has billions of
output tokens, so engines add their gaps to this histogram instead: a decode
segment's steps give every member of its batch one gap each, so a segment adds
(value, batch) for its first step and one arithmetic series for the rest.

Buckets are log-spaced by RATIO = 1.01 from MIN_S = 1 us to MAX_S = 1e6 s; a
percentile is read at its order statistics' bucket middles (geometric) and
interpolated between them as np.percentile interpolates, so it is within 0.5% of
the exact one. The mean is exact. Gaps are buffered in typed arrays and binned with
numpy every BUFFER of them (about 0.2 us a gap on the simulator's hot path, a
third of a logarithm and a list update in Python), so memory stays fixed however
many tokens a run makes.
"""
from __future__ import annotations

import math
from array import array

import numpy as np

MIN_S = 1e-6
MAX_S = 1e6
RATIO = 1.01
BUFFER = 8192  # gaps binned at once: array buffers of 64 KB, below malloc's mmap threshold
PERCENTILES = (50, 90, 99)
_INV_LOG_RATIO = 1.0 / math.log(RATIO)
_LOG_MIN = math.log(MIN_S)
_BUCKETS = int((math.log(MAX_S) - _LOG_MIN) * _INV_LOG_RATIO) + 1


def _buckets(values: np.ndarray) -> np.ndarray:
    b = np.floor((np.log(np.maximum(values, MIN_S)) - _LOG_MIN) * _INV_LOG_RATIO)
    return np.minimum(b, _BUCKETS - 1).astype(np.int64)


def _edge(bucket: int) -> float:
    """Lower edge of `bucket`."""
    return MIN_S * RATIO ** bucket


class ItlHistogram:
    __slots__ = ("_counts", "_tokens", "_sum_s", "_values", "_weights", "_first", "_slope", "_n", "_weight")

    def __init__(self) -> None:
        self._counts = np.zeros(_BUCKETS, dtype=np.int64)  # output tokens per bucket of gap
        self._tokens = 0
        self._sum_s = 0.0
        # Buffered gaps (value, count) and series (first, slope, n, weight); typed arrays append
        # in a few tens of nanoseconds and numpy reads them without a copy.
        self._values, self._weights = array("d"), array("d")
        self._first, self._slope, self._n, self._weight = array("d"), array("d"), array("d"), array("d")

    @property
    def counts(self) -> np.ndarray:
        """Gaps per bucket (bucket b: [MIN_S * RATIO**b, MIN_S * RATIO**(b+1)) seconds)."""
        self.flush()
        return self._counts

    @property
    def tokens(self) -> int:
        """Gaps recorded: output tokens after each request's first."""
        self.flush()
        return self._tokens

    @property
    def sum_s(self) -> float:
        self.flush()
        return self._sum_s

    def add(self, value_s: float, count: int = 1) -> None:
        """`count` gaps of `value_s` seconds."""
        values = self._values
        values.append(value_s)
        self._weights.append(count)
        if len(values) >= BUFFER:
            self.flush()

    def add_series(self, first_s: float, slope_s: float, n: int, weight: int) -> None:
        """`weight` gaps of each of first_s + slope_s * k, k = 0..n-1."""
        if n > 0 and weight > 0:
            firsts = self._first
            firsts.append(first_s)
            self._slope.append(slope_s)
            self._n.append(n)
            self._weight.append(weight)
            if len(firsts) >= BUFFER:
                self.flush()

    def flush(self) -> None:
        """Bin the buffered gaps."""
        counts = self._counts
        if self._values:
            values = np.frombuffer(self._values)
            weights = np.frombuffer(self._weights)
            counts += np.bincount(_buckets(values), weights, _BUCKETS).astype(np.int64)
            self._tokens += int(weights.sum())
            self._sum_s += float(np.dot(values, weights))
            del values, weights  # views on the buffers, which cannot shrink while viewed
            del self._values[:], self._weights[:]
        if self._first:
            first, slope, n, weight = (np.frombuffer(a) for a in (self._first, self._slope, self._n, self._weight))
            last = first + slope * (n - 1)
            tokens = n * weight
            self._tokens += int(tokens.sum())
            self._sum_s += float(np.dot(first + last, tokens)) * 0.5
            lo, hi = _buckets(np.minimum(first, last)), _buckets(np.maximum(first, last))
            one = lo == hi  # the common case: a segment's steps differ by less than a bucket
            counts += np.bincount(lo[one], tokens[one], _BUCKETS).astype(np.int64)
            for i in np.flatnonzero(~one).tolist():
                self._spread(float(first[i]), float(slope[i]), int(n[i]), int(weight[i]), int(lo[i]), int(hi[i]))
            del first, slope, n, weight
            del self._first[:], self._slope[:], self._n[:], self._weight[:]

    def _spread(self, first_s: float, slope_s: float, n: int, weight: int, b: int, b_last: int) -> None:
        """Bin a series that crosses bucket edges, O(buckets crossed)."""
        if slope_s < 0.0:  # the same values in increasing order
            first_s, slope_s = first_s + slope_s * (n - 1), -slope_s
        counts = self._counts
        below = 0  # values k < below are binned
        while b < b_last:
            # Values under the bucket's upper edge: k < (edge - first) / slope.
            upto = min(n, max(below, math.ceil((_edge(b + 1) - first_s) / slope_s)))
            counts[b] += (upto - below) * weight
            below = upto
            b += 1
        counts[b_last] += (n - below) * weight

    def merge(self, other: "ItlHistogram") -> None:
        self.flush()
        self._counts += other.counts
        self._tokens += other.tokens
        self._sum_s += other.sum_s

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) as np.percentile's default (linear) method gives it,
        from bucket middles; None when empty."""
        tokens = self.tokens
        if not tokens:
            return None
        rank = q / 100.0 * (tokens - 1)
        lo = int(rank)
        cum = np.cumsum(self._counts)
        b_lo, b_hi = np.searchsorted(cum, [lo + 1, min(lo + 2, tokens)])
        v_lo, v_hi = (MIN_S * RATIO ** (b + 0.5) for b in (b_lo, b_hi))
        return float(v_lo + (rank - lo) * (v_hi - v_lo))

    def summary(self) -> dict[str, float | None]:
        """{"p50", "p90", "p99", "mean"} in seconds, as the summary JSON's latency fields."""
        out = {f"p{p}": self.percentile(p) for p in PERCENTILES}
        tokens = self.tokens
        out["mean"] = self._sum_s / tokens if tokens else None
        return out
