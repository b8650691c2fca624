"""Sums over runs of iterations whose costs are lines in the iteration index, in O(1).

A decode segment (a fixed batch whose context grows by `batch` tokens a step) and a run
of full prefill chunks of one prompt beside it (its prefix grows by the chunk each
iteration) have compute time, memory time and energy that are each a line in the
iteration index k. Iteration time fixed + max(compute, memory) + serial * min(...) is
then piecewise linear with at most one kink (where compute and memory swap as the
larger), so sums over a run are arithmetic series split at the kink, and the number of
iterations that fit in a time budget solves a quadratic on each side of it. The
performance model (workers/perf.py) builds the lines; this module only sums them.
"""
from __future__ import annotations

import math

def lin_sum(a: float, s: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} (a + s*k).

    Evaluated in the order decode() and decode_steps_within() use inline for k0 = 0,
    `n * a + s * ((n - 1.0) * n * 0.5)` with n a float, so they agree to the last bit."""
    n = k1 - k0
    if n <= 0:
        return 0.0
    return n * a + s * ((k0 + k1 - 1.0) * n * 0.5)


def crossover(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> int:
    """First integer k in [k0, k1] at or after which line 1 (a1 + s1 k) is at least line 2,
    assuming s1 > s2 (line 1 grows faster, so once ahead it stays ahead)."""
    r = (a2 - a1) / (s1 - s2)
    if r <= k0:
        return k0
    if r >= k1:
        return k1
    return int(math.ceil(r))


def sum_max_lin(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} max(a1 + s1 k, a2 + s2 k), exactly, in O(1)."""
    if k1 <= k0:
        return 0.0
    if s1 == s2:
        return lin_sum(max(a1, a2), s1, k0, k1)
    if s1 < s2:
        a1, s1, a2, s2 = a2, s2, a1, s1
    x = crossover(a1, s1, a2, s2, k0, k1)
    return lin_sum(a2, s2, k0, x) + lin_sum(a1, s1, x, k1)


def sum_min_lin(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} min(a1 + s1 k, a2 + s2 k), exactly, in O(1)."""
    if k1 <= k0:
        return 0.0
    if s1 == s2:
        return lin_sum(min(a1, a2), s1, k0, k1)
    if s1 < s2:
        a1, s1, a2, s2 = a2, s2, a1, s1
    x = crossover(a1, s1, a2, s2, k0, k1)
    return lin_sum(a1, s1, k0, x) + lin_sum(a2, s2, x, k1)


# Stand-in for "no last step" when solving for steps that fit in a time budget.
NO_END = 1 << 62


def pieces(c0: float, cs: float, m0: float, ms: float, end: int) -> list[tuple[int, int, bool]]:
    """Split steps [0, end) where compute (c0 + cs k) and memory (m0 + ms k) swap as the larger.

    Returns (first, last + 1, compute_is_larger) stretches; at most two because both are lines.
    """
    if cs == ms:
        return [(0, end, c0 >= m0)]
    if cs > ms:
        kink = crossover(c0, cs, m0, ms, 0, end)
        return [(k0, k1, c) for k0, k1, c in ((0, kink, False), (kink, end, True)) if k1 > k0]
    kink = crossover(m0, ms, c0, cs, 0, end)
    return [(k0, k1, c) for k0, k1, c in ((0, kink, True), (kink, end, False)) if k1 > k0]


def step_line(fixed: float, serial: float, c0: float, cs: float, m0: float, ms: float,
               c_is_max: bool) -> tuple[float, float]:
    """Iteration time fixed + max + serial * min as p + q*k on a stretch where one of
    compute (c0 + cs k) and memory (m0 + ms k) is the larger."""
    if c_is_max:
        return fixed + c0 + serial * m0, cs + serial * ms
    return fixed + m0 + serial * c0, ms + serial * cs


def series(fixed: float, serial: float, c0: float, cs: float, m0: float, ms: float, e0: float, es: float,
            cap_w: float, steps: int) -> tuple[float, float]:
    """(time_s, dynamic_energy_j) of iterations k = 0..steps-1 whose compute, memory and uncapped
    energy (e0 + es k) are lines in k; each iteration's energy is capped at cap_w * its time."""
    time_s = energy_j = 0.0
    for k0, k1, c_is_max in pieces(c0, cs, m0, ms, steps):
        p, q = step_line(fixed, serial, c0, cs, m0, ms, c_is_max)
        time_s += lin_sum(p, q, k0, k1)
        energy_j += sum_min_lin(e0, es, cap_w * p, cap_w * q, k0, k1)
    return time_s, energy_j


def series_time(fixed: float, serial: float, c0: float, cs: float, m0: float, ms: float, steps: int) -> float:
    """series' time alone."""
    time_s = 0.0
    for k0, k1, c_is_max in pieces(c0, cs, m0, ms, steps):
        p, q = step_line(fixed, serial, c0, cs, m0, ms, c_is_max)
        time_s += lin_sum(p, q, k0, k1)
    return time_s


def series_steps_within(fixed: float, serial: float, c0: float, cs: float, m0: float, ms: float,
                         time_s: float, limit: int | None = None) -> int:
    """Largest k >= 0 with series_time(..., k) <= time_s: solves on each stretch, then settles
    the integer against series_time by galloping. With `limit`, the unsettled solution, at most
    `limit` (for a caller whose lines hold for `limit` iterations only)."""
    if time_s <= 0.0:
        return 0
    # Step time is p + q*k on each side of the kink, so elapsed time is quadratic in k there.
    k = 0
    elapsed = 0.0
    for k0, k1, c_is_max in pieces(c0, cs, m0, ms, NO_END):
        p, q = step_line(fixed, serial, c0, cs, m0, ms, c_is_max)
        n = steps_in_series(p + q * k0, q, time_s - elapsed)
        if k1 >= NO_END or k0 + n < k1:
            k = k0 + n
            break
        elapsed += lin_sum(p, q, k0, k1)
        k = k1
    if limit is not None:
        return min(k, limit)

    def within(steps: int) -> bool:
        return series_time(fixed, serial, c0, cs, m0, ms, steps) <= time_s

    # Rounding in the quadratic can leave k a step off; gallop then bisect, which in
    # practice is one or two evaluations.
    if within(k):
        if not within(k + 1):
            return k
        lo, step = k + 1, 1
        while within(lo + step):
            lo, step = lo + step, step * 2
        hi = lo + step  # within(lo) and not within(hi)
    else:
        hi, step = k, 1
        while hi - step > 0 and not within(hi - step):
            hi, step = hi - step, step * 2
        lo = max(0, hi - step)
        if not within(lo):
            return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid
    return lo


def steps_in_series(p: float, q: float, budget: float) -> int:
    """Approximate largest k with k*p + q*k*(k-1)/2 <= budget (p > 0, q >= 0); callers fix the last step."""
    if budget <= 0.0:
        return 0
    # q/2 k^2 + (p - q/2) k - budget = 0
    b = p - 0.5 * q
    if q == 0.0:
        return int(budget / p)
    disc = b * b + 2.0 * q * budget
    root = math.sqrt(disc)
    if b >= 0.0:
        k = 2.0 * budget / (b + root)  # avoids cancellation when q is tiny
    else:
        k = (root - b) / q
    return int(k) if k < 4e18 else 1 << 62
