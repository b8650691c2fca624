"""Performance, energy and cost of one serving instance: a roofline driven by the model's shape.

Per iteration the instance must (a) execute the iteration's FLOPs and (b) move
its bytes (stream the weights once, read/write the KV cache). Time is

    overhead + max(compute, memory) + serial * min(compute, memory) + collectives

where `serial` (DeviceSpec.decode_serial_fraction) is the share of the shorter
phase that fails to hide under the longer one. Measured H100 decode needs it:
at batch 256 the step is about 2.5 ms longer than the memory roofline although
compute alone would take less than memory (see workers/calibration.py). Large
prefills overlap well, so prefill uses serial = 0. A mixed iteration (chunked
prefill: prompt chunks beside a decode step, `mixed`) adds both sides' work.

Dynamic energy is linear in the work (joules per FLOP plus joules per byte) and
capped so that idle + dynamic / time never exceeds the instance's peak power.
Callers add idle_power_w * time themselves.

Speed matters: a million-request simulation calls prefill, decode and
decode_steps_within a few times per request, with a budget of a few
microseconds each in CPython. Per-instance constants are folded in __init__
into tuples (per batch size too: the same sizes recur), integers become floats
once, and `decode` sums a segment's steps in closed form, inline for the
common case (one of compute/memory the larger, the power cap binding on all of
the segment or none of it). Anything else goes to the general path
(`_decode_general`, `_decode_steps_within_general`, workers/series.py), which
evaluates the same expressions, so both paths give the same bits.
"""
from __future__ import annotations

import math

from workers.devices import DeviceSpec
from workers.models import ModelSpec
from workers.series import series, series_steps_within, sum_min_lin

__all__ = ["InstancePerf", "chips_needed", "ACTIVATION_BYTES"]

# Activations exchanged by tensor-parallel all-reduces stay in bf16 even for
# fp8/int4 weights (weight-only and fp8 GEMM recipes both keep bf16 residuals).
ACTIVATION_BYTES = 2.0

_INF = math.inf
_sqrt = math.sqrt  # module globals: one dictionary lookup each on the hot path
_isfinite = math.isfinite


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
        # Otherwise they cross at k = r (the same test as series.pieces): for r <= 0 the faster-growing
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
        half = (n - 1.0) * n * 0.5  # sum of k over the segment, as series.lin_sum computes it
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
                return time_s, sum_min_lin(e0, es, wp, wq, 0, steps)
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
        return series(fixed, self._serial, c0, cs, m0, ms, e0, es, self._dyn_cap_w, steps)

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
        """decode_steps_within() for any budget (see series_steps_within). decode_steps_within()
        comes here only when its one-stretch answer does not check out."""
        fixed, c0, cs, m0, ms = self._decode_lines(batch, ctx_sum0)
        return series_steps_within(fixed, self._serial, c0, cs, m0, ms, time_s)

    # --- mixed iterations (chunked prefill) ------------------------------------------
    #
    # One iteration computes `tokens` prompt tokens (chunks of `seqs` prompts whose already
    # computed prefixes total `prefix_tokens`) beside one decode step of `batch` sequences:
    # weights stream once for all of them, FLOPs and KV bytes add up. With tokens = 0 it is a
    # decode step, with batch = 0 a prefill iteration. The fixed time and the serial share are
    # the decode and prefill ones weighted by the tokens each side brings (an assumption: the
    # calibration measured pure prefills and pure decodes only, none mixed). Iterations that
    # advance one prompt by `tokens` each (seqs = 1) grow its prefix by `tokens` and its
    # attention pairs by tokens^2 per iteration, and the decode context by `batch`: lines in
    # the iteration index, summed in closed form as decode segments are.

    def _mixed_lines(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                     seqs: int) -> tuple[float, float, float, float, float, float, float, float]:
        """(fixed, serial, c0, cs, m0, ms, e0, es): iteration k has compute c0 + cs k, memory
        m0 + ms k and uncapped energy e0 + es k; its time is fixed + max + serial * min."""
        (flops_per_token, flops_per_pair, flops_per_seq, s_per_flop, weight_s, kv_s_per_token, _,
         coll_s_per_token, e_flop, e_weights, e_per_kv_token, _) = self._prefill_consts
        t = tokens + 0.0
        prompt_flops = flops_per_token * t + flops_per_seq * seqs + flops_per_pair * pairs
        prompt_kv = t + prefix_tokens  # write the chunk, read its prefix
        c0 = prompt_flops * s_per_flop
        cs = flops_per_pair * t * t * s_per_flop
        m0 = weight_s + kv_s_per_token * prompt_kv
        ms = kv_s_per_token * t
        e0 = e_weights + e_flop * prompt_flops + e_per_kv_token * prompt_kv
        es = (e_flop * flops_per_pair * t + e_per_kv_token) * t
        share = 0.0  # the decode side's share of the iteration's tokens
        if batch:
            batch_f, _, c_b, kv_s, e_b, cs_b, ms_b, es_b, _, _ = (self._batch_terms.get(batch)
                                                                   or self._add_batch_terms(batch))
            c_per_kv, _, e_per_kv, _, _ = self._decode_consts
            kv0 = ctx_sum0 + batch_f
            c0 += c_b + c_per_kv * kv0
            cs += cs_b
            m0 += kv_s * kv0
            ms += ms_b
            e0 += e_b - e_weights + e_per_kv * kv0  # e_b includes streaming the weights, read once here
            es += es_b
            share = batch_f / (t + batch_f)
        overhead = (1.0 - share) * self._prefill_overhead_s + share * self._decode_overhead_s
        fixed = overhead + self._coll_fixed_s + coll_s_per_token * (t + batch)
        return fixed, self._serial * share, c0, cs, m0, ms, e0, es

    def mixed(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float, seqs: int,
              steps: int = 1) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of `steps` mixed iterations: prompt chunks of `tokens` tokens over
        `seqs` prompts beside a decode step of `batch` sequences holding ctx_sum0 cached tokens.

        pairs = sum over the chunks of new_i*prefix_i + new_i*(new_i+1)/2 (causal query-key pairs);
        prefix_tokens = sum of prefix_i (tokens each chunk's prompt already holds, cached or
        computed). Several steps advance one prompt (seqs = 1) by `tokens` each; closed form.
        """
        if steps <= 0:
            return 0.0, 0.0
        if tokens <= 0:
            return self.decode(batch, ctx_sum0, steps)
        if seqs < 1 or (steps > 1 and seqs != 1):
            raise ValueError(f"mixed needs seqs >= 1 (exactly 1 over several steps), got {seqs} over {steps}")
        fixed, serial, c0, cs, m0, ms, e0, es = self._mixed_lines(batch, ctx_sum0, tokens, pairs, prefix_tokens,
                                                                  seqs)
        if steps == 1:  # the common case, as series computes it for one step
            time_s = fixed + c0 + serial * m0 if c0 > m0 else fixed + m0 + serial * c0
            cap_j = self._dyn_cap_w * time_s
            return time_s, (e0 if e0 < cap_j else cap_j)
        return series(fixed, serial, c0, cs, m0, ms, e0, es, self._dyn_cap_w, steps)

    def mixed_steps_within(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                           time_s: float) -> int:
        """Largest k >= 0 with mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k)[0] <= time_s."""
        if not _isfinite(time_s):
            raise ValueError(f"mixed_steps_within needs a finite time, got {time_s!r}")
        if tokens <= 0:
            return self.decode_steps_within(batch, ctx_sum0, time_s)
        fixed, serial, c0, cs, m0, ms, _, _ = self._mixed_lines(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1)
        return series_steps_within(fixed, serial, c0, cs, m0, ms, time_s)

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
