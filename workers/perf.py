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
"""
from __future__ import annotations

import math

from workers.devices import DeviceSpec
from workers.models import ModelSpec

__all__ = ["InstancePerf", "chips_needed", "ACTIVATION_BYTES"]

# Activations exchanged by tensor-parallel all-reduces stay in bf16 even for
# fp8/int4 weights (weight-only and fp8 GEMM recipes both keep bf16 residuals).
ACTIVATION_BYTES = 2.0


def _lin_sum(a: float, s: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1-1} (a + s*k)."""
    n = k1 - k0
    if n <= 0:
        return 0.0
    return n * a + s * (k0 + k1 - 1) * n * 0.5


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
        flops = self._flops_per_token * tokens + self._flops_per_pair * attn_pairs + self._flops_per_seq * seqs
        # Cached prefix tokens are read once by attention. Only their pair count is known, so
        # estimate them as if the new tokens were split evenly over the sequences.
        mean_new = tokens / seqs
        cached_tokens = attn_pairs - tokens * (mean_new + 1.0) * 0.5
        cached_tokens = cached_tokens / mean_new if cached_tokens > 0.0 else 0.0
        kv_tokens = cached_tokens + tokens  # read the prefix, write the new tokens
        compute_s = flops * self._s_per_flop
        memory_s = self._weight_s + kv_tokens * self._kv_s_per_token
        time_s = (self._prefill_overhead_s + self._coll_fixed_s + self._coll_s_per_token * tokens
                  + (compute_s if compute_s > memory_s else memory_s))
        energy_j = self._e_flop * flops + self._e_byte * (self._stream_bytes + kv_tokens * self.kv_bytes_per_token)
        cap_j = self._dyn_cap_w * time_s
        return time_s, (energy_j if energy_j < cap_j else cap_j)

    # --- decode ----------------------------------------------------------------
    def _decode_lines(self, batch: int, ctx_sum0: float) -> tuple[float, float, float, float, float]:
        """Per-step terms as lines in the step index k: (fixed_s, compute0, compute_slope, memory0, memory_slope)."""
        if batch < 1:
            raise ValueError(f"decode needs batch >= 1, got {batch}")
        # Step k attends over ctx_sum0 + batch*k cached tokens plus the batch's new tokens.
        kv0 = ctx_sum0 + batch
        occupancy = batch * self._occupancy_per_seq
        kv_s = self._kv_s_per_token / occupancy if occupancy < 1.0 else self._kv_s_per_token
        spf = self._s_per_flop
        c0 = ((self._flops_per_token + self._flops_per_seq) * batch + self._flops_per_pair * kv0) * spf
        cs = self._flops_per_pair * batch * spf
        m0 = self._weight_s + kv0 * kv_s
        ms = batch * kv_s
        fixed = self._decode_overhead_s + self._coll_fixed_s + self._coll_s_per_token * batch
        return fixed, c0, cs, m0, ms

    def decode_step_s(self, batch: int, ctx_sum: float) -> float:
        """Time of one decode step for `batch` sequences holding `ctx_sum` cached tokens in total.

        Attention reads ctx_sum + batch positions: the cache plus each sequence's new token."""
        fixed, c, _, m, _ = self._decode_lines(batch, ctx_sum)
        if c > m:
            return fixed + c + self._serial * m
        return fixed + m + self._serial * c

    def _decode_time(self, fixed: float, c0: float, cs: float, m0: float, ms: float, steps: int) -> float:
        # max + serial*min == serial*(c + m) + (1 - serial)*max, so only the max needs a split.
        serial = self._serial
        return (steps * fixed + serial * (_lin_sum(c0, cs, 0, steps) + _lin_sum(m0, ms, 0, steps))
                + (1.0 - serial) * _sum_max_lin(c0, cs, m0, ms, 0, steps))

    def decode(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of `steps` consecutive decode steps of a fixed batch whose total
        cached context is ctx_sum0 at the first step and grows by `batch` per step. Closed form."""
        if steps <= 0:
            return 0.0, 0.0
        fixed, c0, cs, m0, ms = self._decode_lines(batch, ctx_sum0)
        time_s = self._decode_time(fixed, c0, cs, m0, ms, steps)

        # Uncapped dynamic energy per step is a line in k as well.
        kvpt = self.kv_bytes_per_token
        flops0 = (self._flops_per_token + self._flops_per_seq) * batch + self._flops_per_pair * (ctx_sum0 + batch)
        e0 = self._e_flop * flops0 + self._e_byte * (self._stream_bytes + (ctx_sum0 + batch) * kvpt)
        es = self._e_flop * self._flops_per_pair * batch + self._e_byte * batch * kvpt
        # Cap each step at (peak - idle) * step time. The step time has one kink (where compute
        # overtakes memory or the reverse), so split there and take min(line, line) on each side.
        w = self._dyn_cap_w
        energy_j = 0.0
        for k0, k1, c_is_max in _pieces(c0, cs, m0, ms, steps):
            p, q = self._step_line(fixed, c0, cs, m0, ms, c_is_max)
            energy_j += _sum_min_lin(e0, es, w * p, w * q, k0, k1)
        return time_s, energy_j

    def _step_line(self, fixed: float, c0: float, cs: float, m0: float, ms: float,
                   c_is_max: bool) -> tuple[float, float]:
        """Step time as p + q*k on a stretch where one of compute/memory is the larger."""
        serial = self._serial
        if c_is_max:
            return fixed + c0 + serial * m0, cs + serial * ms
        return fixed + m0 + serial * c0, ms + serial * cs

    def decode_steps_within(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        """Largest k >= 0 with decode(batch, ctx_sum0, k)[0] <= time_s (closed form, exact at boundaries)."""
        if not math.isfinite(time_s):
            raise ValueError(f"decode_steps_within needs a finite time, got {time_s!r}")
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
