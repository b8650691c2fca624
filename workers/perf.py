"""Performance, energy and cost of one serving instance: a roofline driven by the model's shape.

Per iteration the instance executes FLOPs and moves bytes (the weights the
iteration touches, the KV cache it reads and writes). Time is

    layers * per_layer_s + max(compute, memory) + serial * min(compute, memory) + collectives

`per_layer_s` is fixed time per layer (kernel launches, synchronization);
`serial` is the share of the shorter phase that fails to hide under the
longer one (measured H100 decode needs it; prefill overlaps, serial = 0).
MoE models compute with their active parameters, and a step reads the
experts its tokens select: E * (1 - (1 - k/E)^tokens) per MoE layer under
uniform routing (ModelSpec.experts_touched; `routing_skew` concentrates it).
On several chips, attention and dense layers are tensor-parallel (two
all-reduces per layer) and routed experts expert-parallel (an all-to-all to
dispatch tokens and one to combine them per MoE layer); pipeline-parallel devices
(the wafer) instead pay one hop per stage boundary, and read their weights in
place, in parallel across the cores that hold them, so a layer's read takes
(bytes held per chip) / (chip bandwidth) at any size or batch. Sliding-window
layers attend to at most `sliding_window` tokens per sequence. A mixed
iteration (chunked prefill, `mixed`) runs prompt chunks beside a decode step.

Dynamic energy is joules per FLOP plus joules per byte, capped so idle +
dynamic / time never exceeds peak power; callers add idle_power_w * time.

Hot-path methods (prefill, decode, decode_step_s, decode_steps_within) are
O(1) float arithmetic on constants folded per instance and per batch size:
a decode segment's step time is piecewise linear in the step index, so its
sum is arithmetic series split where compute and memory swap, where the
power cap starts or stops binding, or where contexts outgrow the window.
The common case (no swap inside the segment) is inlined; the general path
(`_decode_general`, `_decode_steps_within_general`, workers/series.py) walks
the stretches with the same expressions, so both give the same bits.
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
    """One serving instance: `chips` chips of `device` holding `model`, its weights split across the chips.

    Units: seconds, joules, watts, bytes, US dollars. Token counts are ints,
    context sums may be floats. KV capacity is
    (chips * memory * memory_utilization - weights - window reserve) // kv_bytes_per_token:
    the cache is spread evenly over the chips, and sliding-window layers set
    aside their window for `max_seqs` sequences (none without windows).
    """

    __slots__ = (
        "device", "model", "chips", "memory_utilization",
        "weight_bytes", "kv_bytes_per_token", "kv_capacity_tokens", "fits",
        "price_usd_per_s", "idle_power_w", "peak_power_w",
        "_s_per_flop", "_byte_s", "_kv_byte_s", "_flops_per_token", "_flops_per_seq",
        "_pair_flops", "_decode_pair_flops", "_kv_token_bytes", "_window", "_occupancy_per_seq",
        "_dense_bytes", "_moe", "_touched_cache", "_resident_read_s",
        "_prefill_overhead_s", "_decode_overhead_s", "_coll_fixed_s", "_coll_s_per_token",
        "_serial", "_e_flop", "_e_byte", "_dyn_cap_w", "_decode_consts", "_batch_terms",
    )

    def __init__(self, device: DeviceSpec, model: ModelSpec, chips: int = 1,
                 price_usd_per_hour: float | None = None, memory_utilization: float = 0.9,
                 max_seqs: int = 256) -> None:
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
        full_kv, win_kv = float(model.kv_bytes_per_token), float(model.window_kv_bytes_per_token)
        window = model.sliding_window
        # A model whose every layer is windowed holds at most `window` tokens per sequence; count its
        # tokens at the windowed rate (exact for contexts within the window, conservative beyond).
        self.kv_bytes_per_token = full_kv if full_kv > 0 else win_kv
        free_bytes = n * device.memory_bytes * memory_utilization - self.weight_bytes
        if window is not None and full_kv > 0 and win_kv > 0:
            # T tokens over max_seqs sequences take full_kv*T + win_kv*min(T, max_seqs*window) bytes
            # at most: every token pays both while the sequences fit their windows, then full_kv only.
            held = max_seqs * window
            if (full_kv + win_kv) * held >= free_bytes:
                capacity = free_bytes / (full_kv + win_kv)
            else:
                capacity = (free_bytes - win_kv * held) / full_kv
        else:
            capacity = free_bytes / self.kv_bytes_per_token
        self.kv_capacity_tokens = int(capacity) if capacity > 0 else 0
        self.fits = self.kv_capacity_tokens > 0

        if price_usd_per_hour is None:
            price_usd_per_hour = 0.0 if device.price_usd_per_hour is None else device.price_usd_per_hour * n
        self.price_usd_per_s = float(price_usd_per_hour) / 3600.0
        self.idle_power_w = device.idle_power_w * n
        self.peak_power_w = device.peak_power_w * n

        # 8-bit (or narrower) weights run on the 8-bit tensor cores where the chip has them.
        peak_flops = device.fp8_flops if (model.dtype_bytes <= 1 and device.fp8_flops) else device.bf16_flops
        # Tensor-parallel chips work on every layer at once; pipeline stages take a pass in turn,
        # so a pass sees one chip's rates (no micro-batching across stages is modelled).
        par = n if device.parallelism == "tensor" else 1.0
        self._s_per_flop = 1.0 / (device.compute_efficiency * peak_flops * par)
        self._byte_s = 1.0 / (device.weight_bw_efficiency * device.memory_bw_bytes_s * par)
        self._kv_byte_s = 1.0 / (device.kv_bw_efficiency * device.memory_bw_bytes_s * par)
        self._flops_per_token = model.flops_per_token
        self._flops_per_seq = model.lm_head_flops
        # (full-attention layers, windowed layers): FLOPs per query-key pair, KV bytes per token.
        self._pair_flops = (model.attn_flops_per_pair, model.window_attn_flops_per_pair)
        self._decode_pair_flops = (model.decode_attn_flops_per_pair, model.window_decode_attn_flops_per_pair)
        self._kv_token_bytes = (full_kv, win_kv)
        self._window = None if window is None or win_kv == 0.0 else float(window)
        # Decode attention parallelizes over (sequence, KV head) pairs; each chip holds
        # kv_heads / chips heads (at least one). Fewer pairs than parallel units leave
        # bandwidth unused: the calibration reads KV at ~0.33 TB/s at batch 1, ~3 TB/s at 16.
        self._occupancy_per_seq = max(1.0, model.kv_heads / n) / device.attn_parallel_units

        # Weights read per pass: the dense part always, routed experts as the tokens select them.
        self._dense_bytes = float(model.dense_streamed_bytes)
        self._moe = None
        if model.is_moe:
            e = float(model.experts)
            self._moe = (model.moe_layers * model.expert_bytes, e, 1.0 - model.experts_per_token / e,
                         model.routing_skew == 0.0)
        self._touched_cache: dict[int, float] = {}
        # Pipeline devices (the wafer) keep every weight resident in the SRAM of the cores that
        # hold it and read it in place: a layer's cores, spread in proportion to its bytes, read
        # their shares at once, so a pass reads each layer in (bytes held per chip) / (chip
        # bandwidth), whatever the layer's size and however many experts its tokens select.
        # Streaming devices read the touched bytes through one memory interface (streamed_bytes).
        self._resident_read_s = None
        if device.parallelism == "pipeline":
            self._resident_read_s = (model.layers * self.weight_bytes / n
                                     / (device.weight_bw_efficiency * device.memory_bw_bytes_s))

        self._prefill_overhead_s = model.layers * device.prefill_overhead_per_layer_s
        self._decode_overhead_s = model.layers * device.decode_overhead_per_layer_s
        self._coll_fixed_s, self._coll_s_per_token = _collectives(device, model, chips)

        self._serial = device.decode_serial_fraction
        self._e_flop = device.energy_per_flop_j
        self._e_byte = device.energy_per_byte_j
        self._dyn_cap_w = self.peak_power_w - self.idle_power_w
        self._decode_consts = (self._serial, self._dyn_cap_w)
        # batch size (negated: contexts past the window) -> the decode terms of _add_batch_terms.
        self._batch_terms: dict[int, tuple] = {}

    # --- weights streamed ------------------------------------------------------------
    def streamed_bytes(self, tokens: int) -> float:
        """Weight bytes one pass over `tokens` tokens reads: the dense part plus, per MoE layer,
        the distinct experts the tokens select (ModelSpec.experts_touched) times their size."""
        moe = self._moe
        if moe is None:
            return self._dense_bytes
        per_expert, e, miss, uniform = moe
        if uniform:
            return self._dense_bytes + per_expert * e * (1.0 - miss ** tokens)
        touched = self._touched_cache.get(tokens)
        if touched is None:
            touched = self._touched_cache[tokens] = self.model.experts_touched(tokens)
        return self._dense_bytes + per_expert * touched

    def weight_read_s(self, tokens: int) -> float:
        """Time one pass over `tokens` tokens spends reading weights: streamed_bytes(tokens) at the
        streaming rate, or on pipeline devices the resident read above (the same for any tokens)."""
        if self._resident_read_s is not None:
            return self._resident_read_s
        return self.streamed_bytes(tokens) * self._byte_s

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
        t = tokens + 0.0  # exact; float-only arithmetic below
        s = seqs + 0.0
        full_pair, win_pair = self._pair_flops
        full_kv, win_kv = self._kv_token_bytes
        # Cached prefix tokens are read once by attention. Only their pair count is known, so
        # estimate them as if the new tokens were split evenly over the sequences, t/s each:
        # (attn_pairs - t*(t/s + 1)/2) / (t/s) = attn_pairs*s/t - (t + s)/2 prefix tokens.
        cached_tokens = attn_pairs * s / t - (t + s) * 0.5
        kv_tokens = t + cached_tokens if cached_tokens > 0.0 else t  # write the new, read the prefix
        flops = self._flops_per_token * t + full_pair * attn_pairs + self._flops_per_seq * s
        kv_bytes = full_kv * kv_tokens
        window = self._window
        if window is not None:
            # A windowed layer scores each query against at most `window` keys and keeps as many.
            flops += win_pair * min(attn_pairs, t * window)
            kv_bytes += win_kv * min(kv_tokens, s * window)
        weight_bytes = self.streamed_bytes(tokens)
        compute_s = flops * self._s_per_flop
        read_s = self._resident_read_s
        memory_s = (weight_bytes * self._byte_s if read_s is None else read_s) + kv_bytes * self._kv_byte_s
        time_s = (self._prefill_overhead_s + self._coll_fixed_s + self._coll_s_per_token * t
                  + (compute_s if compute_s > memory_s else memory_s))
        energy_j = self._e_flop * flops + self._e_byte * (weight_bytes + kv_bytes)
        cap_j = self._dyn_cap_w * time_s
        return time_s, (energy_j if energy_j < cap_j else cap_j)

    # --- decode ----------------------------------------------------------------
    #
    # Step k of a decode segment attends over kv0 + batch*k positions (kv0 = ctx_sum0 + batch:
    # the cache plus each sequence's new token), so its compute time, memory time and uncapped
    # energy are lines in k. On a stretch of steps where one of compute/memory is the larger,
    # the step time fixed + max + serial*min is a line p + q*k too, its cap (peak - idle) * time
    # is another, and sums over steps are arithmetic series. Windowed layers attend to
    # min(kv, batch*window) positions: two regimes, each linear, split where kv crosses.

    def _add_batch_terms(self, batch: int, past_window: bool = False) -> tuple:
        """Decode terms that depend on the batch size (and window regime) alone, cached because a
        simulation reuses the same sizes millions of times. With kv0 = ctx_sum0 + batch, step k has

            compute c0 + cs*k,  c0 = c_b + c_per_kv * kv0   (c_b: the weights' matmuls and lm_head)
            memory  m0 + ms*k,  m0 = m_b + kv_s * kv0       (m_b: streaming the touched weights)
            energy  e0 + es*k,  e0 = e_b + e_per_kv * kv0

        Returns (float(batch), fixed_s, c_b, c_per_kv, m_b, kv_s, e_b, e_per_kv, cs, ms, es,
        c_slopes, m_slopes) where c_slopes = (q, wq, es - wq) holds the slopes of the step time
        (q = cs + serial*ms) and of its energy cap (wq = (peak - idle) * q) on compute-bound
        stretches, m_slopes the same on memory-bound ones (q = ms + serial*cs).
        Past the window (kv0 >= batch*window) windowed layers read a constant batch*window
        positions: their share moves from the per-position terms into c_b, m_b and e_b.
        """
        if batch < 1:
            raise ValueError(f"decode needs batch >= 1, got {batch}")
        b = batch + 0.0
        full_pair, win_pair = self._decode_pair_flops
        full_kv, win_kv = self._kv_token_bytes
        if past_window:
            held = b * self._window  # type: ignore[operator]
            pair_flops, kv_bytes, const_flops, const_kv = full_pair, full_kv, win_pair * held, win_kv * held
        else:
            pair_flops, kv_bytes, const_flops, const_kv = full_pair + win_pair, full_kv + win_kv, 0.0, 0.0
        # Fewer (sequence, KV head) pairs than parallel units leave bandwidth unused.
        occupancy = b * self._occupancy_per_seq
        kv_byte_s = self._kv_byte_s / occupancy if occupancy < 1.0 else self._kv_byte_s
        s_per_flop, e_flop, e_byte = self._s_per_flop, self._e_flop, self._e_byte
        c_per_kv = pair_flops * s_per_flop
        kv_s = kv_bytes * kv_byte_s
        e_per_kv = e_flop * pair_flops + e_byte * kv_bytes
        cs, ms, es = c_per_kv * b, kv_s * b, e_per_kv * b
        serial, cap_w = self._decode_consts
        q_c = cs + serial * ms
        q_m = ms + serial * cs
        flops_b = (self._flops_per_token + self._flops_per_seq) * b + const_flops
        weight_bytes = self.streamed_bytes(batch)
        terms = (b,
                 self._decode_overhead_s + self._coll_fixed_s + self._coll_s_per_token * b,
                 flops_b * s_per_flop, c_per_kv,
                 self.weight_read_s(batch) + const_kv * kv_byte_s, kv_s,
                 e_flop * flops_b + e_byte * (weight_bytes + const_kv), e_per_kv,
                 cs, ms, es,
                 (q_c, cap_w * q_c, es - cap_w * q_c),
                 (q_m, cap_w * q_m, es - cap_w * q_m))
        self._batch_terms[-batch if past_window else batch] = terms
        return terms

    def _terms(self, batch: int, ctx_sum0: float) -> tuple:
        """The batch terms of the regime a segment starting at ctx_sum0 is in at its first step."""
        if self._window is not None and ctx_sum0 + batch >= batch * self._window:
            return self._batch_terms.get(-batch) or self._add_batch_terms(batch, True)
        return self._batch_terms.get(batch) or self._add_batch_terms(batch)

    def _window_steps(self, batch: int, ctx_sum0: float) -> int:
        """Steps from ctx_sum0 before the contexts outgrow the window (0 when past it, or no window)."""
        if self._window is None:
            return 0
        room = batch * self._window - (ctx_sum0 + batch)
        return int(room // batch) + 1 if room > 0.0 else 0

    def _decode_lines(self, terms: tuple, ctx_sum0: float) -> tuple[float, float, float, float, float]:
        """Per-step terms as lines in the step index k: (fixed_s, compute0, compute_slope, memory0, memory_slope)."""
        batch_f, fixed, c_b, c_per_kv, m_b, kv_s, _, _, cs, ms, _, _, _ = terms
        kv0 = ctx_sum0 + batch_f
        return fixed, c_b + c_per_kv * kv0, cs, m_b + kv_s * kv0, ms

    def decode_step_s(self, batch: int, ctx_sum: float) -> float:
        """Time of one decode step for `batch` sequences holding `ctx_sum` cached tokens in total.

        Attention reads ctx_sum + batch positions: the cache plus each sequence's new token."""
        try:  # inline for speed: one dict lookup when there is no window
            terms = self._batch_terms[batch] if self._window is None else self._terms(batch, ctx_sum)
        except KeyError:
            terms = self._add_batch_terms(batch)
        batch_f, fixed, c_b, c_per_kv, m_b, kv_s, _, _, _, _, _, _, _ = terms
        serial = self._serial
        kv0 = ctx_sum + batch_f
        c = c_b + c_per_kv * kv0
        m = m_b + kv_s * kv0
        if c > m:
            return fixed + c + serial * m
        return fixed + m + serial * c

    def decode(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of `steps` consecutive decode steps of a fixed batch whose total
        cached context is ctx_sum0 at the first step and grows by `batch` per step. Closed form."""
        if steps <= 0:
            return 0.0, 0.0
        if self._window is None:
            try:
                terms = self._batch_terms[batch]
            except KeyError:
                terms = self._add_batch_terms(batch)
        else:  # split where the contexts outgrow the window
            below = self._window_steps(batch, ctx_sum0)
            if 0 < below < steps:  # the contexts outgrow the window inside the segment: two regimes
                t1, e1 = self.decode(batch, ctx_sum0, below)
                t2, e2 = self.decode(batch, ctx_sum0 + batch * below, steps - below)
                return t1 + t2, e1 + e2
            terms = self._terms(batch, ctx_sum0)
        batch_f, fixed, c_b, c_per_kv, m_b, kv_s, e_b, e_per_kv, cs, ms, es, c_slopes, m_slopes = terms
        serial, cap_w = self._decode_consts
        n = steps + 0.0  # exact; float-only arithmetic below
        kv0 = ctx_sum0 + batch_f
        c0 = c_b + c_per_kv * kv0
        m0 = m_b + kv_s * kv0

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
        below = self._window_steps(batch, ctx_sum0)
        if 0 < below < steps:
            t1, e1 = self._decode_general(batch, ctx_sum0, below)
            t2, e2 = self._decode_general(batch, ctx_sum0 + batch * below, steps - below)
            return t1 + t2, e1 + e2
        terms = self._terms(batch, ctx_sum0)
        fixed, c0, cs, m0, ms = self._decode_lines(terms, ctx_sum0)
        batch_f, _, _, _, _, _, e_b, e_per_kv, _, _, es, _, _ = terms
        e0 = e_b + e_per_kv * (ctx_sum0 + batch_f)
        return series(fixed, self._serial, c0, cs, m0, ms, e0, es, self._dyn_cap_w, steps)

    def decode_steps_within(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        """Largest k >= 0 with decode(batch, ctx_sum0, k)[0] <= time_s (closed form, exact at boundaries)."""
        if not _isfinite(time_s):
            raise ValueError(f"decode_steps_within needs a finite time, got {time_s!r}")
        if self._window is not None and time_s > 0.0 and self._window_steps(batch, ctx_sum0) > 0:
            return self._decode_steps_within_windowed(batch, ctx_sum0, time_s)
        try:
            terms = self._batch_terms[batch] if self._window is None else self._terms(batch, ctx_sum0)
        except KeyError:
            terms = self._add_batch_terms(batch)
        if time_s <= 0.0:
            return 0
        batch_f, fixed, c_b, c_per_kv, m_b, kv_s, _, _, cs, ms, _, c_slopes, m_slopes = terms
        serial = self._serial
        kv0 = ctx_sum0 + batch_f
        c0 = c_b + c_per_kv * kv0
        m0 = m_b + kv_s * kv0

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

    def _decode_steps_within_windowed(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        """decode_steps_within() for a budget that may carry the contexts past the window: solve in
        the first regime, then in the second for the time left, then settle against decode()."""
        below = self._window_steps(batch, ctx_sum0)
        k = self._decode_steps_within_general(batch, ctx_sum0, time_s, below)
        if k >= below:
            first_s = self.decode(batch, ctx_sum0, below)[0]
            k = below + self.decode_steps_within(batch, ctx_sum0 + batch * below, time_s - first_s)
        while k > 0 and self.decode(batch, ctx_sum0, k)[0] > time_s:
            k -= 1
        while self.decode(batch, ctx_sum0, k + 1)[0] <= time_s:
            k += 1
        return k

    def _decode_steps_within_general(self, batch: int, ctx_sum0: float, time_s: float,
                                     limit: int | None = None) -> int:
        """decode_steps_within() for any budget (series.series_steps_within). decode_steps_within() comes
        here only when its one-stretch answer does not check out. With `limit`, counts steps of the
        starting regime only (at most `limit`)."""
        if self._window is not None and limit is None and self._window_steps(batch, ctx_sum0) > 0:
            return self._decode_steps_within_windowed(batch, ctx_sum0, time_s)
        fixed, c0, cs, m0, ms = self._decode_lines(self._terms(batch, ctx_sum0), ctx_sum0)
        return series_steps_within(fixed, self._serial, c0, cs, m0, ms, time_s, limit)

    # --- mixed iterations (chunked prefill) ------------------------------------------
    #
    # One iteration computes `tokens` prompt tokens (chunks of `seqs` prompts whose already
    # computed prefixes total `prefix_tokens`) beside one decode step of `batch` sequences: the
    # weights the iteration's tokens touch stream once (streamed_bytes(tokens + batch): an MoE
    # layer reads the experts both sides select), FLOPs and KV bytes add up. The fixed time and
    # the serial share are the prefill and decode ones weighted by each side's tokens (an
    # assumption: the calibration measured pure prefills and pure decodes, none mixed). With
    # tokens = 0 it is a decode step, with batch = 0 a prefill. Iterations advancing one prompt
    # by `tokens` each grow its prefix by `tokens` and its attention pairs by tokens^2, and the
    # decode context by `batch`: lines in the iteration index within a window regime.

    def _mixed_lines(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                     seqs: int) -> tuple[float, float, float, float, float, float, float, float]:
        """(fixed, serial, c0, cs, m0, ms, e0, es): iteration k has compute c0 + cs k, memory m0 + ms k
        and uncapped energy e0 + es k (in the window regimes of iteration 0)."""
        t = tokens + 0.0
        full_pair, win_pair = self._pair_flops
        full_kv, win_kv = self._kv_token_bytes
        prompt_kv = t + prefix_tokens  # write the chunk, read its prefix
        flops = self._flops_per_token * t + self._flops_per_seq * seqs + full_pair * pairs
        flops_slope = full_pair * t * t
        kv_bytes, kv_slope = full_kv * prompt_kv, full_kv * t
        window = self._window
        if window is not None:  # windowed layers: at most `window` keys per query, as many kept
            if pairs < t * window:
                flops, flops_slope = flops + win_pair * pairs, flops_slope + win_pair * t * t
            else:
                flops += win_pair * t * window
            if prompt_kv < seqs * window:
                kv_bytes, kv_slope = kv_bytes + win_kv * prompt_kv, kv_slope + win_kv * t
            else:
                kv_bytes += win_kv * seqs * window
        weight_bytes = self.streamed_bytes(tokens + batch)
        s_per_flop, byte_s, kv_byte_s, e_flop, e_byte = (self._s_per_flop, self._byte_s, self._kv_byte_s,
                                                         self._e_flop, self._e_byte)
        read_s = self._resident_read_s
        c0, cs = flops * s_per_flop, flops_slope * s_per_flop
        m0 = (weight_bytes * byte_s if read_s is None else read_s) + kv_bytes * kv_byte_s
        ms = kv_slope * kv_byte_s
        e0, es = e_flop * flops + e_byte * (weight_bytes + kv_bytes), e_flop * flops_slope + e_byte * kv_slope
        share = 0.0  # the decode side's share of the iteration's tokens
        if batch:
            batch_f, _, c_b, c_per_kv, m_b, kv_s, e_b, e_per_kv, cs_b, ms_b, es_b, _, _ = self._terms(batch, ctx_sum0)
            kv0 = ctx_sum0 + batch_f
            batch_weights = self.streamed_bytes(batch)  # in m_b and e_b; streamed once above instead
            c0, cs = c0 + c_b + c_per_kv * kv0, cs + cs_b
            batch_read_s = batch_weights * byte_s if read_s is None else read_s
            m0, ms = m0 + (m_b - batch_read_s) + kv_s * kv0, ms + ms_b
            e0, es = e0 + (e_b - e_byte * batch_weights) + e_per_kv * kv0, es + es_b
            share = batch_f / (t + batch_f)
        overhead = (1.0 - share) * self._prefill_overhead_s + share * self._decode_overhead_s
        fixed = overhead + self._coll_fixed_s + self._coll_s_per_token * (t + batch)
        return fixed, self._serial * share, c0, cs, m0, ms, e0, es

    def _mixed_regime_steps(self, batch: int, ctx_sum0: float, tokens: int, pairs: float,
                            prefix_tokens: float) -> int:
        """Iterations of one prompt's chunks before a window regime changes (0: none ahead)."""
        window = self._window
        if window is None:
            return 0
        t = tokens + 0.0
        ahead = [self._window_steps(batch, ctx_sum0)] if batch else []
        for room, per_step in ((t * window - pairs, t * t), (window - t - prefix_tokens, t)):
            if room > 0.0:
                ahead.append(math.ceil(room / per_step))
        ahead = [k for k in ahead if k > 0]
        return min(ahead) if ahead else 0

    def _advanced(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                  steps: int) -> tuple[int, float, int, float, float]:
        """mixed()'s arguments `steps` iterations of one prompt's chunks later."""
        return batch, ctx_sum0 + batch * steps, tokens, pairs + tokens * tokens * steps, prefix_tokens + tokens * steps

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
        if steps == 1:  # the common case, as series() computes one step
            time_s = fixed + c0 + serial * m0 if c0 > m0 else fixed + m0 + serial * c0
            cap_j = self._dyn_cap_w * time_s
            return time_s, (e0 if e0 < cap_j else cap_j)
        split = self._mixed_regime_steps(batch, ctx_sum0, tokens, pairs, prefix_tokens)
        if 0 < split < steps:  # a window regime changes inside the run: two runs
            t1, e1 = self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, split)
            t2, e2 = self.mixed(*self._advanced(batch, ctx_sum0, tokens, pairs, prefix_tokens, split), 1,
                                steps - split)
            return t1 + t2, e1 + e2
        return series(fixed, serial, c0, cs, m0, ms, e0, es, self._dyn_cap_w, steps)

    def mixed_steps_within(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                           time_s: float) -> int:
        """Largest k >= 0 with mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k)[0] <= time_s."""
        if not _isfinite(time_s):
            raise ValueError(f"mixed_steps_within needs a finite time, got {time_s!r}")
        if tokens <= 0:
            return self.decode_steps_within(batch, ctx_sum0, time_s)
        fixed, serial, c0, cs, m0, ms, _, _ = self._mixed_lines(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1)
        split = self._mixed_regime_steps(batch, ctx_sum0, tokens, pairs, prefix_tokens)
        if not split:
            return series_steps_within(fixed, serial, c0, cs, m0, ms, time_s)
        # Solve in the first regime, then in the next for the time left; settle against mixed().
        k = series_steps_within(fixed, serial, c0, cs, m0, ms, time_s, split)
        if k >= split:
            rest = time_s - self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, split)[0]
            k = split + self.mixed_steps_within(*self._advanced(batch, ctx_sum0, tokens, pairs, prefix_tokens, split),
                                                rest)
        while k > 0 and self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k)[0] > time_s:
            k -= 1
        while self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k + 1)[0] <= time_s:
            k += 1
        return k

    # --- transfer, power ---------------------------------------------------------
    def kv_transfer_s(self, tokens: int, link_bytes_per_s: float, setup_s: float | None = None) -> float:
        """Time to ship `tokens` tokens of one sequence's KV cache over a link: setup + bytes / bandwidth."""
        if link_bytes_per_s <= 0:
            raise ValueError(f"link bandwidth must be positive, got {link_bytes_per_s!r}")
        if setup_s is None:
            setup_s = self.device.kv_transfer_setup_s
        return setup_s + self.model.kv_bytes(tokens) / link_bytes_per_s

    def power_w(self, time_s: float, dynamic_energy_j: float) -> float:
        """Mean instance power over an interval: idle + dynamic / time, capped at peak."""
        if time_s <= 0.0:
            return self.idle_power_w
        power = self.idle_power_w + dynamic_energy_j / time_s
        return power if power < self.peak_power_w else self.peak_power_w

    def __repr__(self) -> str:
        return (f"InstancePerf({self.device.name} x{self.chips}, {self.model.name}, "
                f"kv_capacity_tokens={self.kv_capacity_tokens})")


def _collectives(device: DeviceSpec, model: ModelSpec, chips: int) -> tuple[float, float]:
    """(fixed_s, s_per_token) of one pass's chip-to-chip traffic.

    Megatron-style tensor parallelism: two all-reduces per layer (after attention and after
    the MLP) of tokens * hidden activations; a ring moves 2(n-1)/n of the data per chip and a
    tree needs log2(n) latency hops. A MoE layer's MLP all-reduce becomes expert parallelism's
    dispatch and combine all-to-alls: each token's activations go to its k experts, (n-1)/n
    of them on other chips, and come back. Pipeline-parallel devices keep whole layers (experts
    included) on one stage: a pass pays one hop per stage boundary instead.
    """
    if chips == 1:
        return 0.0, 0.0
    n = float(chips)
    if device.parallelism == "pipeline":
        # Stage boundaries: each token's hidden activations cross chips-1 links once per pass.
        return (n - 1.0) * device.collective_latency_s, \
            (n - 1.0) * model.hidden * ACTIVATION_BYTES / device.interconnect_bw_bytes_s
    hops = math.log2(n) * device.collective_latency_s
    per_reduce = 2.0 * (n - 1.0) / n * model.hidden * ACTIVATION_BYTES / device.interconnect_bw_bytes_s
    moe, dense = model.moe_layers, model.layers - model.moe_layers
    fixed_s = (2 * dense + 3 * moe) * hops
    per_a2a = (model.experts_per_token or 0) * (n - 1.0) / n * model.hidden * ACTIVATION_BYTES \
        / device.interconnect_bw_bytes_s
    per_token_s = (2 * dense + moe) * per_reduce + 2 * moe * per_a2a
    return fixed_s, per_token_s


def chips_needed(device: DeviceSpec, model: ModelSpec, min_kv_tokens: int = 1,
                 memory_utilization: float = 0.9, max_seqs: int = 256) -> int | None:
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
        perf = InstancePerf(device, model, chips, memory_utilization=memory_utilization, max_seqs=max_seqs)
        if perf.kv_capacity_tokens >= min_kv_tokens:
            return chips
        chips = chips * 2 if device.kind == "gpu" else chips + 1
    return None
