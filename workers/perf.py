"""Performance, energy and cost of one serving instance: a roofline driven by the model's shape.

Per iteration the instance must (a) execute the iteration's FLOPs and (b) move
its bytes (stream the weights once, read/write the KV cache). Time is

    overhead + max(compute, memory) + serial * min(compute, memory) + collectives

where `serial` (DeviceSpec.decode_serial_fraction) is the share of the shorter
phase that fails to hide under the longer one. Measured H100 decode needs it:
at batch 256 the step is about 2.5 ms longer than the memory roofline although
compute alone would take less than memory (see workers/calibration.py). Large
prefills overlap well, so prefill uses serial = 0.

Dynamic energy is linear in the work (joules per FLOP plus joules per byte) and
capped so that idle + dynamic / time never exceeds the instance's peak power.
Callers add idle_power_w * time themselves (idle power is drawn whether or not
the instance computes).

Everything callers use on the simulator's hot path is O(1) float arithmetic:
per-instance constants are folded in __init__, and `decode` sums a batch's
steps in closed form (the step time is piecewise linear in the step index, so
its sum is a pair of arithmetic series split at the compute/memory crossover).

Speed matters here: a simulation of a million requests calls prefill, decode
and decode_steps_within a few times per request, with a budget of a few
microseconds each in CPython. So those methods unpack their constants from
tuples built once (per instance, and per batch size: the same sizes recur),
turn integer arguments into floats once (CPython's fast path for arithmetic
is float op float), and handle the common case inline: one of compute/memory
is the larger over the whole segment, and the power cap binds on all of it or
on none of it. Anything else -- compute and memory swapping within the segment,
or the cap starting or stopping to bind -- goes to the general path
(`_decode_general`, `_decode_steps_within_general`), which walks the stretches
with the helpers below and evaluates the same expressions, so both paths give
the same bits.
"""
from __future__ import annotations

import math

from workers.devices import DeviceSpec
from workers.models import ModelSpec

__all__ = ["InstancePerf", "chips_needed", "ACTIVATION_BYTES"]

# Activations exchanged by tensor-parallel all-reduces stay in bf16 even for
# fp8/int4 weights (weight-only and fp8 GEMM recipes both keep bf16 residuals).
ACTIVATION_BYTES = 2.0

_INF = math.inf
_sqrt = math.sqrt  # module globals: one dictionary lookup each on the hot path
_isfinite = math.isfinite


def _lin_sum(a: float, s: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} (a + s*k).

    Evaluated in the order decode() and decode_steps_within() use inline for k0 = 0,
    `n * a + s * ((n - 1.0) * n * 0.5)` with n a float, so they agree to the last bit."""
    n = k1 - k0
    if n <= 0:
        return 0.0
    return n * a + s * ((k0 + k1 - 1.0) * n * 0.5)


def _crossover(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> int:
    """First integer k in [k0, k1] at or after which line 1 (a1 + s1 k) is at least line 2,
    assuming s1 > s2 (line 1 grows faster, so once ahead it stays ahead)."""
    r = (a2 - a1) / (s1 - s2)
    if r <= k0:
        return k0
    if r >= k1:
        return k1
    return int(math.ceil(r))


def _sum_max_lin(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} max(a1 + s1 k, a2 + s2 k), exactly, in O(1)."""
    if k1 <= k0:
        return 0.0
    if s1 == s2:
        return _lin_sum(max(a1, a2), s1, k0, k1)
    if s1 < s2:
        a1, s1, a2, s2 = a2, s2, a1, s1
    x = _crossover(a1, s1, a2, s2, k0, k1)
    return _lin_sum(a2, s2, k0, x) + _lin_sum(a1, s1, x, k1)


def _sum_min_lin(a1: float, s1: float, a2: float, s2: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} min(a1 + s1 k, a2 + s2 k), exactly, in O(1)."""
    if k1 <= k0:
        return 0.0
    if s1 == s2:
        return _lin_sum(min(a1, a2), s1, k0, k1)
    if s1 < s2:
        a1, s1, a2, s2 = a2, s2, a1, s1
    x = _crossover(a1, s1, a2, s2, k0, k1)
    return _lin_sum(a1, s1, k0, x) + _lin_sum(a2, s2, x, k1)


# Stand-in for "no last step" when solving for steps that fit in a time budget.
_NO_END = 1 << 62


def _pieces(c0: float, cs: float, m0: float, ms: float, end: int) -> list[tuple[int, int, bool]]:
    """Split steps [0, end) where compute (c0 + cs k) and memory (m0 + ms k) swap as the larger.

    Returns (first, last + 1, compute_is_larger) stretches; at most two because both are lines.
    """
    if cs == ms:
        return [(0, end, c0 >= m0)]
    if cs > ms:
        kink = _crossover(c0, cs, m0, ms, 0, end)
        return [(k0, k1, c) for k0, k1, c in ((0, kink, False), (kink, end, True)) if k1 > k0]
    kink = _crossover(m0, ms, c0, cs, 0, end)
    return [(k0, k1, c) for k0, k1, c in ((0, kink, True), (kink, end, False)) if k1 > k0]


class InstancePerf:
    """One serving instance: `chips` chips of `device` holding `model` (weights split tensor-parallel across chips).

    Units: seconds, joules, watts, bytes, US dollars. Token counts are ints,
    context sums may be floats. KV capacity follows the simple rule
    (chips * memory * memory_utilization - weights) // kv_bytes_per_token: the
    KV cache is assumed spread evenly over the chips (head-sharded up to
    kv_heads chips, sequence-sharded beyond).
    """

    __slots__ = (
        "device", "model", "chips", "memory_utilization",
        "weight_bytes", "kv_bytes_per_token", "kv_capacity_tokens", "fits",
        "price_usd_per_s", "idle_power_w", "peak_power_w",
        "_s_per_flop", "_flops_per_token", "_flops_per_seq", "_flops_per_pair",
        "_stream_bytes", "_weight_s", "_kv_s_per_token", "_occupancy_per_seq",
        "_prefill_overhead_s", "_decode_overhead_s", "_coll_fixed_s", "_coll_s_per_token",
        "_serial", "_e_flop", "_e_byte", "_dyn_cap_w",
        "_prefill_consts", "_decode_consts", "_batch_terms",
    )

    def __init__(self, device: DeviceSpec, model: ModelSpec, chips: int = 1,
                 price_usd_per_hour: float | None = None, memory_utilization: float = 0.9) -> None:
        if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
            raise ValueError(f"chips must be a positive integer, got {chips!r}")
        if chips > device.max_chips_per_instance:
            raise ValueError(f"{device.name} instances hold at most {device.max_chips_per_instance} chips, "
                             f"got {chips}")
        if not 0.0 < memory_utilization <= 1.0:
            raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization!r}")
        if chips > 1 and device.interconnect_bw_bytes_s <= 0:
            raise ValueError(f"{device.name} has no chip-to-chip link; it serves with one chip")
        self.device = device
        self.model = model
        self.chips = chips
        self.memory_utilization = float(memory_utilization)
        n = float(chips)

        self.weight_bytes = float(model.weight_bytes)
        self.kv_bytes_per_token = float(model.kv_bytes_per_token)
        free_bytes = n * device.memory_bytes * memory_utilization - self.weight_bytes
        self.kv_capacity_tokens = int(free_bytes // self.kv_bytes_per_token) if free_bytes > 0 else 0
        self.fits = self.kv_capacity_tokens > 0

        if price_usd_per_hour is None:
            price_usd_per_hour = 0.0 if device.price_usd_per_hour is None else device.price_usd_per_hour * n
        self.price_usd_per_s = float(price_usd_per_hour) / 3600.0
        self.idle_power_w = device.idle_power_w * n
        self.peak_power_w = device.peak_power_w * n

        # 8-bit (or narrower) weights run on the 8-bit tensor cores where the chip has them.
        peak_flops = device.fp8_flops if (model.dtype_bytes <= 1 and device.fp8_flops) else device.bf16_flops
        self._s_per_flop = 1.0 / (device.compute_efficiency * peak_flops * n)
        self._flops_per_token = model.flops_per_token
        self._flops_per_seq = model.lm_head_flops
        self._flops_per_pair = model.attn_flops_per_pair

        self._stream_bytes = float(model.streamed_weight_bytes)
        self._weight_s = self._stream_bytes / (device.weight_bw_efficiency * device.memory_bw_bytes_s * n)
        self._kv_s_per_token = self.kv_bytes_per_token / (device.kv_bw_efficiency * device.memory_bw_bytes_s * n)
        # Decode attention parallelizes over (sequence, KV head) pairs; each chip holds
        # kv_heads / chips heads (at least one). Fewer pairs than parallel units leave
        # bandwidth unused: the calibration reads KV at ~0.33 TB/s at batch 1, ~3 TB/s at 16.
        heads_per_chip = max(1.0, model.kv_heads / n)
        self._occupancy_per_seq = heads_per_chip / device.attn_parallel_units

        self._prefill_overhead_s = model.layers * device.prefill_overhead_per_layer_s
        self._decode_overhead_s = model.layers * device.decode_overhead_per_layer_s
        if chips > 1:
            # Megatron-style tensor parallelism: two all-reduces per layer (after attention and
            # after the MLP) of tokens * hidden activations; a ring moves 2(n-1)/n of the data
            # per chip and a tree needs log2(n) latency hops.
            all_reduces = 2 * model.layers
            self._coll_fixed_s = all_reduces * math.log2(n) * device.collective_latency_s
            self._coll_s_per_token = (all_reduces * 2.0 * (n - 1.0) / n * model.hidden * ACTIVATION_BYTES
                                      / device.interconnect_bw_bytes_s)
        else:
            self._coll_fixed_s = 0.0
            self._coll_s_per_token = 0.0

        self._serial = device.decode_serial_fraction
        self._e_flop = device.energy_per_flop_j
        self._e_byte = device.energy_per_byte_j
        self._dyn_cap_w = self.peak_power_w - self.idle_power_w

        # The hot methods unpack their constants from one tuple: a slot read and an unpack cost
        # less than a dozen slot reads. (Nothing mutates an instance after construction.)
        # Prefill energy is e_flop per FLOP plus e_byte per byte: the streamed weights, the KV tokens.
        self._prefill_consts = (
            self._flops_per_token, self._flops_per_pair, self._flops_per_seq, self._s_per_flop,
            self._weight_s, self._kv_s_per_token, self._prefill_overhead_s + self._coll_fixed_s,
            self._coll_s_per_token, self._e_flop, self._e_byte * self._stream_bytes,
            self._e_byte * self.kv_bytes_per_token, self._dyn_cap_w)
        # (c_per_kv, weight_s, e_per_kv, serial, cap_w): each token of context a decode step attends
        # to costs c_per_kv seconds of compute and e_per_kv joules (its FLOPs and KV bytes); the time
        # to read it depends on the batch size (kv_s in _add_batch_terms).
        self._decode_consts = (
            self._flops_per_pair * self._s_per_flop, self._weight_s,
            self._e_flop * self._flops_per_pair + self._e_byte * self.kv_bytes_per_token,
            self._serial, self._dyn_cap_w)
        # batch size -> the decode terms that depend on it alone (see _add_batch_terms).
        self._batch_terms: dict[int, tuple] = {}

    # --- prefill ---------------------------------------------------------------
    def prefill(self, tokens: int, attn_pairs: float, seqs: int) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of one prefill iteration computing `tokens` new tokens over `seqs` sequences.

        attn_pairs = sum over sequences of new_i*cached_i + new_i*(new_i+1)/2
        (causal query-key pairs; cached_i > 0 for prefix-cache hits).
        """
        if tokens <= 0:
            return 0.0, 0.0
        if seqs < 1:
            raise ValueError(f"prefill needs seqs >= 1, got {seqs}")
        (flops_per_token, flops_per_pair, flops_per_seq, s_per_flop, weight_s, kv_s_per_token, fixed_s,
         coll_s_per_token, e_flop, e_weights, e_per_kv_token, cap_w) = self._prefill_consts
        t = tokens + 0.0  # exact; float-only arithmetic below
        s = seqs + 0.0
        flops = flops_per_token * t + flops_per_pair * attn_pairs + flops_per_seq * s
        # Cached prefix tokens are read once by attention. Only their pair count is known, so
        # estimate them as if the new tokens were split evenly over the sequences, t/s each:
        # (attn_pairs - t*(t/s + 1)/2) / (t/s) = attn_pairs*s/t - (t + s)/2 prefix tokens.
        cached_tokens = attn_pairs * s / t - (t + s) * 0.5
        kv_tokens = t + cached_tokens if cached_tokens > 0.0 else t  # write the new, read the prefix
        compute_s = flops * s_per_flop
        memory_s = weight_s + kv_tokens * kv_s_per_token
        time_s = fixed_s + coll_s_per_token * t + (compute_s if compute_s > memory_s else memory_s)
        energy_j = e_flop * flops + e_weights + kv_tokens * e_per_kv_token
        cap_j = cap_w * time_s
        return time_s, (energy_j if energy_j < cap_j else cap_j)

    # --- decode ----------------------------------------------------------------
    #
    # Step k of a decode segment attends over kv0 + batch*k positions (kv0 = ctx_sum0 + batch:
    # the cache plus each sequence's new token), so its compute time, memory time and uncapped
    # energy are lines in k. On a stretch of steps where one of compute/memory is the larger,
    # the step time fixed + max + serial*min is a line p + q*k too, its cap (peak - idle) * time
    # is another, and sums over steps are arithmetic series.

    def _add_batch_terms(self, batch: int) -> tuple:
        """Decode terms that depend on the batch size alone, cached because a simulation reuses the
        same sizes millions of times. With kv0 = ctx_sum0 + batch, step k has

            compute c0 + cs*k,  c0 = c_b + c_per_kv * kv0   (c_b: the weights' matmuls and lm_head)
            memory  m0 + ms*k,  m0 = weight_s + kv_s * kv0
            energy  e0 + es*k,  e0 = e_b + e_per_kv * kv0   (e_b: those FLOPs, streaming the weights)

        with c_per_kv, weight_s, e_per_kv from _decode_consts. Returns
        (float(batch), fixed_s, c_b, kv_s, e_b, cs, ms, es, c_slopes, m_slopes) where
        c_slopes = (q, wq, es - wq) holds the slopes of the step time (q = cs + serial*ms) and of
        its energy cap (wq = (peak - idle) * q) on compute-bound stretches, m_slopes the same on
        memory-bound ones (q = ms + serial*cs).
        """
        if batch < 1:
            raise ValueError(f"decode needs batch >= 1, got {batch}")
        # Fewer (sequence, KV head) pairs than parallel units leave bandwidth unused.
        occupancy = batch * self._occupancy_per_seq
        kv_s = self._kv_s_per_token / occupancy if occupancy < 1.0 else self._kv_s_per_token
        cs = self._flops_per_pair * batch * self._s_per_flop
        ms = batch * kv_s
        es = self._e_flop * self._flops_per_pair * batch + self._e_byte * batch * self.kv_bytes_per_token
        serial, cap_w = self._serial, self._dyn_cap_w
        q_c = cs + serial * ms
        q_m = ms + serial * cs
        flops_b = (self._flops_per_token + self._flops_per_seq) * batch
        terms = (batch + 0.0,
                 self._decode_overhead_s + self._coll_fixed_s + self._coll_s_per_token * batch,
                 flops_b * self._s_per_flop,
                 kv_s,
                 self._e_flop * flops_b + self._e_byte * self._stream_bytes,
                 cs, ms, es,
                 (q_c, cap_w * q_c, es - cap_w * q_c),
                 (q_m, cap_w * q_m, es - cap_w * q_m))
        self._batch_terms[batch] = terms
        return terms

    def _decode_lines(self, batch: int, ctx_sum0: float) -> tuple[float, float, float, float, float]:
        """Per-step terms as lines in the step index k: (fixed_s, compute0, compute_slope, memory0, memory_slope)."""
        batch_f, fixed, c_b, kv_s, _, cs, ms, _, _, _ = self._batch_terms.get(batch) or self._add_batch_terms(batch)
        c_per_kv, weight_s, _, _, _ = self._decode_consts
        kv0 = ctx_sum0 + batch_f
        return fixed, c_b + c_per_kv * kv0, cs, weight_s + kv_s * kv0, ms

    def decode_step_s(self, batch: int, ctx_sum: float) -> float:
        """Time of one decode step for `batch` sequences holding `ctx_sum` cached tokens in total.

        Attention reads ctx_sum + batch positions: the cache plus each sequence's new token."""
        try:
            batch_f, fixed, c_b, kv_s, _, _, _, _, _, _ = self._batch_terms[batch]
        except KeyError:
            batch_f, fixed, c_b, kv_s, _, _, _, _, _, _ = self._add_batch_terms(batch)
        c_per_kv, weight_s, _, serial, _ = self._decode_consts
        kv0 = ctx_sum + batch_f
        c = c_b + c_per_kv * kv0
        m = weight_s + kv_s * kv0
        if c > m:
            return fixed + c + serial * m
        return fixed + m + serial * c

    def decode(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of `steps` consecutive decode steps of a fixed batch whose total
        cached context is ctx_sum0 at the first step and grows by `batch` per step. Closed form."""
        if steps <= 0:
            return 0.0, 0.0
        try:
            batch_f, fixed, c_b, kv_s, e_b, cs, ms, es, c_slopes, m_slopes = self._batch_terms[batch]
        except KeyError:
            batch_f, fixed, c_b, kv_s, e_b, cs, ms, es, c_slopes, m_slopes = self._add_batch_terms(batch)
        c_per_kv, weight_s, e_per_kv, serial, cap_w = self._decode_consts
        n = steps + 0.0  # exact; float-only arithmetic below
        kv0 = ctx_sum0 + batch_f
        c0 = c_b + c_per_kv * kv0
        m0 = weight_s + kv_s * kv0

        # Which of compute/memory is the larger on every step? Usually memory: it is ahead at step 0
        # and grows faster (each step adds more KV bytes to read than attention FLOPs to do).
        # Otherwise they cross at k = r (the same test as _pieces): for r <= 0 the faster-growing
        # one is the larger on every step, for r >= steps the other one is; in between they swap
        # inside the segment and the general path splits it.
        if c0 <= m0 and cs < ms:
            c_is_max = False
        elif cs != ms:
            r = (m0 - c0) / (cs - ms)
            if r <= 0.0:
                c_is_max = cs > ms
            elif r >= n:
                c_is_max = cs < ms
            else:
                return self._decode_general(batch, ctx_sum0, steps)
        else:
            c_is_max = c0 >= m0
        if c_is_max:
            p = fixed + c0 + serial * m0
            q, wq, es_wq = c_slopes
        else:
            p = fixed + m0 + serial * c0
            q, wq, es_wq = m_slopes
        half = (n - 1.0) * n * 0.5  # sum of k over the segment, as _lin_sum computes it
        time_s = n * p + q * half

        # Each step's energy is min(e0 + es*k, wp + wq*k). Usually the cap is above at step 0 and
        # grows faster, so it never binds. Otherwise the lines cross at k = r, and the min is a
        # single line unless r falls inside the segment (the cap starts or stops binding).
        e0 = e_b + e_per_kv * kv0
        wp = cap_w * p
        if e0 <= wp and es_wq < 0.0:
            return time_s, n * e0 + es * half
        if es_wq != 0.0:
            r = (wp - e0) / es_wq
            if r <= 0.0:
                capped = es_wq > 0.0
            elif r >= n:
                capped = es_wq < 0.0
            else:
                return time_s, _sum_min_lin(e0, es, wp, wq, 0, steps)
        else:
            capped = wp < e0
        if capped:
            return time_s, n * wp + wq * half
        return time_s, n * e0 + es * half

    def _decode_general(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        """decode() for any segment: sums each stretch between compute/memory swaps separately.
        decode() itself comes here only when the swap falls inside the segment."""
        if steps <= 0:
            return 0.0, 0.0
        fixed, c0, cs, m0, ms = self._decode_lines(batch, ctx_sum0)
        batch_f, _, _, _, e_b, _, _, es, _, _ = self._batch_terms[batch]
        _, _, e_per_kv, _, _ = self._decode_consts
        e0 = e_b + e_per_kv * (ctx_sum0 + batch_f)
        # Cap each step at (peak - idle) * step time: min(line, line) on each stretch.
        w = self._dyn_cap_w
        time_s = energy_j = 0.0
        for k0, k1, c_is_max in _pieces(c0, cs, m0, ms, steps):
            p, q = self._step_line(fixed, c0, cs, m0, ms, c_is_max)
            time_s += _lin_sum(p, q, k0, k1)
            energy_j += _sum_min_lin(e0, es, w * p, w * q, k0, k1)
        return time_s, energy_j

    def _decode_time(self, fixed: float, c0: float, cs: float, m0: float, ms: float, steps: int) -> float:
        """decode()'s time for `steps` steps from the lines (general path)."""
        time_s = 0.0
        for k0, k1, c_is_max in _pieces(c0, cs, m0, ms, steps):
            p, q = self._step_line(fixed, c0, cs, m0, ms, c_is_max)
            time_s += _lin_sum(p, q, k0, k1)
        return time_s

    def _step_line(self, fixed: float, c0: float, cs: float, m0: float, ms: float,
                   c_is_max: bool) -> tuple[float, float]:
        """Step time as p + q*k on a stretch where one of compute/memory is the larger."""
        serial = self._serial
        if c_is_max:
            return fixed + c0 + serial * m0, cs + serial * ms
        return fixed + m0 + serial * c0, ms + serial * cs

    def decode_steps_within(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        """Largest k >= 0 with decode(batch, ctx_sum0, k)[0] <= time_s (closed form, exact at boundaries)."""
        if not _isfinite(time_s):
            raise ValueError(f"decode_steps_within needs a finite time, got {time_s!r}")
        try:
            batch_f, fixed, c_b, kv_s, _, cs, ms, _, c_slopes, m_slopes = self._batch_terms[batch]
        except KeyError:
            batch_f, fixed, c_b, kv_s, _, cs, ms, _, c_slopes, m_slopes = self._add_batch_terms(batch)
        if time_s <= 0.0:
            return 0
        c_per_kv, weight_s, _, serial, _ = self._decode_consts
        kv0 = ctx_sum0 + batch_f
        c0 = c_b + c_per_kv * kv0
        m0 = weight_s + kv_s * kv0

        # The larger of compute/memory at step 0 stays the larger up to their crossover r (for ever
        # when the other never catches up), so decode() sums any segment of at most `until` steps
        # as one stretch on which the step time is p + q*k.
        until = _INF
        if c0 <= m0 and cs < ms:  # the usual case, as in decode()
            c_is_max = False
        elif cs != ms:
            r = (m0 - c0) / (cs - ms)
            if r <= 0.0:
                c_is_max = cs > ms
            else:
                c_is_max = cs < ms
                until = r
        else:
            c_is_max = c0 >= m0
        if c_is_max:
            p = fixed + c0 + serial * m0
            q = c_slopes[0]
        else:
            p = fixed + m0 + serial * c0
            q = m_slopes[0]
        # Elapsed time x*p + q*x*(x-1)/2 = time_s is a quadratic in x (q > 0 since batch >= 1);
        # the root in this form avoids cancellation when q*x is small next to p.
        b = p - 0.5 * q
        root = _sqrt(b * b + 2.0 * q * time_s)
        x = 2.0 * time_s / (b + root) if b >= 0.0 else (root - b) / q
        # Check k = floor(x) against decode()'s time for k and k + 1 steps, n*p + q*((n - 1)*n/2)
        # written exactly as decode() writes it (one stretch for up to `until` steps). A budget
        # within rounding of a step boundary can leave k a step off: then k + 2 or k - 1 settles
        # it. Anything else (the budget reaches past the crossover) takes the general path.
        k = int(x)
        n = k + 0.0
        if n + 2.0 <= until:
            if (n + 1.0) * p + q * (n * (n + 1.0) * 0.5) > time_s:  # k + 1 steps do not fit
                if n * p + q * ((n - 1.0) * n * 0.5) <= time_s:
                    return k
                if k > 0 and (n - 1.0) * p + q * ((n - 2.0) * (n - 1.0) * 0.5) <= time_s:
                    return k - 1
            elif (n + 2.0) * p + q * ((n + 1.0) * (n + 2.0) * 0.5) > time_s:
                return k + 1
        return self._decode_steps_within_general(batch, ctx_sum0, time_s)

    def _decode_steps_within_general(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        """decode_steps_within() for any budget: solves on each stretch, then corrects the integer by
        galloping. decode_steps_within() comes here only when its one-stretch answer does not check out."""
        fixed, c0, cs, m0, ms = self._decode_lines(batch, ctx_sum0)
        if time_s <= 0.0:
            return 0
        # Step time is p + q*k on each side of the kink, so elapsed time is quadratic in k there:
        # solve it, then settle the integer against the same closed form decode() uses.
        k = 0
        elapsed = 0.0
        for k0, k1, c_is_max in _pieces(c0, cs, m0, ms, _NO_END):
            p, q = self._step_line(fixed, c0, cs, m0, ms, c_is_max)
            n = _steps_in_series(p + q * k0, q, time_s - elapsed)
            if k1 >= _NO_END or k0 + n < k1:
                k = k0 + n
                break
            elapsed += _lin_sum(p, q, k0, k1)
            k = k1

        def within(steps: int) -> bool:
            return self._decode_time(fixed, c0, cs, m0, ms, steps) <= time_s

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

    # --- transfer, power ---------------------------------------------------------
    def kv_transfer_s(self, tokens: int, link_bytes_per_s: float, setup_s: float | None = None) -> float:
        """Time to ship `tokens` tokens of KV cache over a link: setup latency + bytes / bandwidth."""
        if link_bytes_per_s <= 0:
            raise ValueError(f"link bandwidth must be positive, got {link_bytes_per_s!r}")
        if setup_s is None:
            setup_s = self.device.kv_transfer_setup_s
        return setup_s + tokens * self.kv_bytes_per_token / link_bytes_per_s

    def power_w(self, time_s: float, dynamic_energy_j: float) -> float:
        """Mean instance power over an interval: idle + dynamic / time, capped at peak."""
        if time_s <= 0.0:
            return self.idle_power_w
        power = self.idle_power_w + dynamic_energy_j / time_s
        return power if power < self.peak_power_w else self.peak_power_w

    def __repr__(self) -> str:
        return (f"InstancePerf({self.device.name} x{self.chips}, {self.model.name}, "
                f"kv_capacity_tokens={self.kv_capacity_tokens})")


def _steps_in_series(p: float, q: float, budget: float) -> int:
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


def chips_needed(device: DeviceSpec, model: ModelSpec, min_kv_tokens: int = 1,
                 memory_utilization: float = 0.9) -> int | None:
    """Smallest instance of `device` that holds `model` with room for `min_kv_tokens` of KV cache.

    GPUs shard tensor-parallel over a power of two of chips (head counts are powers of two);
    wafers and LPUs take any count. None when even the largest instance is too small.
    """
    per_chip = device.memory_bytes * memory_utilization
    need = model.weight_bytes + min_kv_tokens * model.kv_bytes_per_token
    chips = max(1, math.ceil(need / per_chip))
    if device.kind == "gpu":
        chips = 1 << (chips - 1).bit_length()
    while chips <= device.max_chips_per_instance:
        if device.interconnect_bw_bytes_s <= 0 and chips > 1:
            return None
        if InstancePerf(device, model, chips, memory_utilization=memory_utilization).kv_capacity_tokens >= min_kv_tokens:
            return chips
        chips = chips * 2 if device.kind == "gpu" else chips + 1
    return None
