"""InstancePerf: hand-calculated roofline numbers, closed forms against step-by-step loops, sizing."""
from __future__ import annotations

import dataclasses
import math

import pytest

from workers.devices import get_device
from workers.models import get_model, with_dtype
from workers.perf import InstancePerf, chips_needed
from workers.series import sum_max_lin, sum_min_lin

H100 = get_device("h100-sxm")
M8 = get_model("llama-3.1-8b")
M70 = get_model("llama-3.1-70b")


def h100_8b() -> InstancePerf:
    return InstancePerf(H100, M8)


# --- capacity, price, power -------------------------------------------------------

def test_kv_capacity_8b_on_one_h100():
    # (80e9 * 0.9 - 2 * 8,030,261,248) // 131,072 = 55,939,477,504 // 131,072
    perf = h100_8b()
    assert perf.weight_bytes == 16_060_522_496
    assert perf.kv_capacity_tokens == 426_784
    assert perf.fits


@pytest.mark.parametrize(("chips", "fits", "capacity"), [
    (1, False, 0),          # 141.1 GB of weights > 72 GB usable
    (2, True, 8_827),       # (144e9 - 141,107,412,992) // 327,680
    (4, True, 448_280),     # (288e9 - 141,107,412,992) // 327,680
])
def test_70b_splits_weights_across_h100s(chips, fits, capacity):
    perf = InstancePerf(H100, M70, chips)
    assert (perf.fits, perf.kv_capacity_tokens) == (fits, capacity)


def test_price_power_scale_with_chips_and_override():
    perf = InstancePerf(H100, M70, 4)
    assert perf.price_usd_per_s == pytest.approx(4 * H100.price_usd_per_hour / 3600)
    assert (perf.idle_power_w, perf.peak_power_w) == (4 * H100.idle_power_w, 4 * H100.peak_power_w)
    assert InstancePerf(H100, M8, price_usd_per_hour=7.2).price_usd_per_s == pytest.approx(0.002)
    assert InstancePerf(get_device("m4-max"), M8).price_usd_per_s == 0.0


@pytest.mark.parametrize(("time_s", "energy_j", "expected_w"), [
    (0.0, 5.0, 147.5),            # no interval: idle
    (1.0, 100.0, 247.5),          # idle + 100 J / 1 s
    (0.01, 100.0, 700.0),         # 10 kW of dynamic power is capped at the 700 W limit
])
def test_power_is_idle_plus_dynamic_capped_at_peak(time_s, energy_j, expected_w):
    assert h100_8b().power_w(time_s, energy_j) == pytest.approx(expected_w)


def test_kv_transfer_time_is_setup_plus_bytes_over_bandwidth():
    perf = h100_8b()
    assert perf.kv_transfer_s(1000, 50e9) == pytest.approx(0.5e-3 + 1000 * 131072 / 50e9)
    assert perf.kv_transfer_s(1000, 50e9, setup_s=0.0) == pytest.approx(2.62144e-3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chips": 0}, "chips"),
    ({"chips": 16}, "at most 8"),
    ({"memory_utilization": 0.0}, "memory_utilization"),
])
def test_bad_instance_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InstancePerf(H100, M8, **kwargs)


def test_edge_devices_cannot_shard():
    with pytest.raises(ValueError):
        InstancePerf(get_device("m4-max"), M70, 2)


# --- hand-calculated step times ---------------------------------------------------

def test_prefill_4096_tokens_is_compute_bound_by_hand():
    d = H100
    flops = 2 * 6_979_321_856 * 4096 + 4 * 32 * 4096 * (4096 * 4097 / 2) + 2 * 128256 * 4096
    expected = 32 * d.prefill_overhead_per_layer_s + flops / (d.compute_efficiency * 989e12)
    t, _ = h100_8b().prefill(4096, 4096 * 4097 / 2, 1)
    assert t == pytest.approx(expected, rel=1e-12)


def test_decode_step_batch1_by_hand():
    d = H100
    streamed = 2 * (6_979_321_856 + 128256 * 4096 + 65 * 4096)
    weights_s = streamed / (d.weight_bw_efficiency * 3.35e12)
    # 512 cached tokens + the new one; one sequence's 8 KV heads occupy 8 of the parallel units.
    kv_s = 513 * 131072 / (d.kv_bw_efficiency * 3.35e12 * (8 / d.attn_parallel_units))
    compute_s = (2 * (6_979_321_856 + 128256 * 4096) + 4 * 32 * 4096 * 513) / (d.compute_efficiency * 989e12)
    memory_s = weights_s + kv_s
    expected = 32 * d.decode_overhead_per_layer_s + memory_s + d.decode_serial_fraction * compute_s
    assert h100_8b().decode_step_s(1, 512) == pytest.approx(expected, rel=1e-12)


def test_fp8_weights_use_fp8_peak():
    fp8 = InstancePerf(H100, with_dtype(M8, 1.0))
    bf16 = h100_8b()
    t8, _ = fp8.prefill(8192, 8192 * 8193 / 2, 1)
    t16, _ = bf16.prefill(8192, 8192 * 8193 / 2, 1)
    # Compute-bound: the fp8 peak (1,979 vs 989 TFLOP/s) shortens the matmul time by that ratio.
    overhead = 32 * H100.prefill_overhead_per_layer_s
    assert t8 == pytest.approx((t16 - overhead) * 989 / 1979 + overhead, rel=1e-9)


def test_prefill_monotone_in_tokens():
    perf = h100_8b()
    previous_t, previous_e = 0.0, 0.0
    for tokens in (1, 2, 16, 128, 129, 512, 1024, 4096, 16384, 65536):
        t, e = perf.prefill(tokens, tokens * (tokens + 1) / 2, 1)
        assert t > previous_t and e >= previous_e
        previous_t, previous_e = t, e


def test_prefix_cache_hit_costs_less_than_full_prefill_but_more_than_suffix_alone():
    perf = h100_8b()
    new, cached = 512, 8192
    hit, _ = perf.prefill(new, new * cached + new * (new + 1) / 2, 1)
    full, _ = perf.prefill(new + cached, (new + cached) * (new + cached + 1) / 2, 1)
    alone, _ = perf.prefill(new, new * (new + 1) / 2, 1)
    assert alone < hit < full


def test_prefill_of_nothing_is_free():
    assert h100_8b().prefill(0, 0.0, 0) == (0.0, 0.0)


# --- decode closed form against loops ---------------------------------------------

def loop_decode(perf: InstancePerf, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
    t = e = 0.0
    for k in range(steps):
        dt, de = perf.decode(batch, ctx_sum0 + batch * k, 1)
        assert dt == pytest.approx(perf.decode_step_s(batch, ctx_sum0 + batch * k), rel=1e-12)
        t += dt
        e += de
    return t, e


# A 400 W cap makes the energy cap bind on compute-heavy steps, not on memory-heavy ones.
CAPPED_H100 = dataclasses.replace(H100, peak_power_w=400.0)

DECODE_CASES = [
    # (device, batch, ctx_sum0, steps): memory-bound, compute-bound, and crossing between them
    (H100, 1, 512, 50),
    (H100, 16, 16 * 2048, 200),
    (H100, 256, 256 * 512, 300),
    (H100, 1024, 0, 1000),        # compute-bound at first; KV reads overtake after ~450 steps
    (H100, 700, 700 * 100.5, 700),
    (CAPPED_H100, 1024, 0, 1000),  # the power cap binds early and releases after the crossover
    (CAPPED_H100, 1, 0, 10),
]


@pytest.mark.parametrize(("device", "batch", "ctx", "steps"), DECODE_CASES)
def test_decode_closed_form_equals_step_loop(device, batch, ctx, steps):
    perf = InstancePerf(device, M8)
    t, e = perf.decode(batch, ctx, steps)
    lt, le = loop_decode(perf, batch, ctx, steps)
    assert t == pytest.approx(lt, rel=1e-9)
    assert e == pytest.approx(le, rel=1e-9)


def test_decode_crossover_case_really_crosses():
    perf, d = h100_8b(), H100
    # Per step the batch adds 1,024 tokens of context: attention FLOPs and KV bytes both grow.
    compute_slope = 4 * 32 * 4096 * 1024 / (d.compute_efficiency * 989e12)
    memory_slope = 1024 * 131072 / (d.kv_bw_efficiency * 3.35e12)
    serial = d.decode_serial_fraction
    early = perf.decode_step_s(1024, 1024 * 10) - perf.decode_step_s(1024, 0)
    late = perf.decode_step_s(1024, 1024 * 999) - perf.decode_step_s(1024, 1024 * 989)
    # Compute-bound at first (compute grows, memory only partly shows), memory-bound at the end.
    assert early == pytest.approx(10 * (compute_slope + serial * memory_slope), rel=1e-6)
    assert late == pytest.approx(10 * (memory_slope + serial * compute_slope), rel=1e-6)


def test_capped_energy_is_below_uncapped():
    capped = InstancePerf(CAPPED_H100, M8).decode(1024, 0, 1000)[1]
    free = InstancePerf(H100, M8).decode(1024, 0, 1000)[1]
    assert capped < free


def test_decode_zero_steps_and_bad_batch():
    perf = h100_8b()
    assert perf.decode(8, 100.0, 0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        perf.decode(0, 0.0, 5)


def test_decode_is_constant_time_in_steps():
    # A billion steps would take minutes as a loop; the closed form is instant.
    t, _ = h100_8b().decode(4, 0.0, 10**9)
    assert math.isfinite(t) and t > 0


@pytest.mark.parametrize(("a1", "s1", "a2", "s2", "k0", "k1"), [
    (0.0, 1.0, 10.0, 0.0, 0, 30),      # line 1 overtakes at k = 10
    (10.0, 0.0, 0.0, 1.0, 0, 30),      # same, arguments swapped
    (0.0, 1.0, 9.5, 0.0, 3, 25),       # crossing between integers
    (5.0, 2.0, 1.0, 2.0, 0, 7),        # parallel lines
    (0.0, 1.0, 100.0, 0.0, 0, 20),     # never crosses inside the range
    (3.0, -1.0, 0.0, 0.5, 0, 12),      # one falling line
])
def test_sum_of_max_and_min_of_lines(a1, s1, a2, s2, k0, k1):
    ks = range(k0, k1)
    assert sum_max_lin(a1, s1, a2, s2, k0, k1) == pytest.approx(sum(max(a1 + s1 * k, a2 + s2 * k) for k in ks))
    assert sum_min_lin(a1, s1, a2, s2, k0, k1) == pytest.approx(sum(min(a1 + s1 * k, a2 + s2 * k) for k in ks))


def brute_steps_within(perf: InstancePerf, batch: int, ctx: float, time_s: float) -> int:
    k = 0
    while perf.decode(batch, ctx, k + 1)[0] <= time_s:
        k += 1
    return k


STEPS_WITHIN_CASES = [
    (1, 512, 0.1),
    (1, 0, 0.00001),     # less than one step
    (64, 64 * 4000, 0.5),
    (1024, 0, 5.0),      # spans the compute -> memory crossover
    (256, 256 * 512, 2.0),
    (3, 10.5, 1.0),
]


@pytest.mark.parametrize(("batch", "ctx", "time_s"), STEPS_WITHIN_CASES)
def test_decode_steps_within_matches_brute_force(batch, ctx, time_s):
    perf = h100_8b()
    assert perf.decode_steps_within(batch, ctx, time_s) == brute_steps_within(perf, batch, ctx, time_s)


@pytest.mark.parametrize(("batch", "ctx", "steps"), [(1, 512, 1), (1, 512, 37), (1024, 0, 450), (1024, 0, 600),
                                                     (32, 32 * 8192, 250)])
def test_decode_steps_within_is_exact_at_boundaries(batch, ctx, steps):
    perf = h100_8b()
    t, _ = perf.decode(batch, ctx, steps)
    assert perf.decode_steps_within(batch, ctx, t) == steps
    assert perf.decode_steps_within(batch, ctx, math.nextafter(t, 0.0)) == steps - 1


def test_decode_steps_within_edge_times():
    perf = h100_8b()
    assert perf.decode_steps_within(8, 0.0, 0.0) == 0
    assert perf.decode_steps_within(8, 0.0, -1.0) == 0
    with pytest.raises(ValueError):
        perf.decode_steps_within(8, 0.0, math.inf)


# --- multi-chip and sizing --------------------------------------------------------

def test_tensor_parallel_splits_work_and_adds_collectives():
    two, four = InstancePerf(H100, M70, 2), InstancePerf(H100, M70, 4)
    assert four.decode_step_s(1, 1000) < two.decode_step_s(1, 1000)
    # Collectives keep 4 chips from being twice as fast as 2.
    assert four.decode_step_s(1, 1000) > two.decode_step_s(1, 1000) / 2


@pytest.mark.parametrize(("device", "model", "dtype_bytes", "chips"), [
    ("h100-sxm", "llama-3.1-8b", None, 1),
    ("h100-sxm", "llama-3.1-70b", None, 2),
    ("h100-sxm", "llama-3.1-405b", None, None),   # 811 GB > 8 x 72 GB
    ("h200", "llama-3.1-405b", None, 8),
    ("b200", "llama-3.1-70b", None, 1),
    ("wse-3", "llama-3.1-8b", None, 1),           # 16 GB of weights in 44 GB of SRAM
    ("wse-3", "llama-3.1-70b", None, 4),          # 141 GB over 39.6 GB usable per wafer
    ("groq-lpu", "llama-3.1-8b", None, 78),       # ceil(16.06 GB / 207 MB)
    ("groq-lpu", "llama-3.1-8b", 1.0, 39),
    ("groq-lpu", "llama-3.1-8b", 0.5, 20),
    ("groq-lpu", "llama-3.1-70b", None, 682),
    ("m4-max", "llama-3.1-8b", None, 1),
    ("m4-max", "llama-3.1-70b", None, None),      # 141 GB > 96 GB GPU-usable unified memory
    ("m4-max", "llama-3.1-70b", 0.5, 1),
    ("phone", "llama-3.1-8b", None, None),
    ("phone", "llama-3.1-8b", 1.0, None),         # 8.03 GB > 7.2 GB usable
    ("phone", "llama-3.1-8b", 0.5, 1),
])
def test_chips_needed(device, model, dtype_bytes, chips):
    m = get_model(model) if dtype_bytes is None else with_dtype(get_model(model), dtype_bytes)
    assert chips_needed(get_device(device), m) == chips


def test_groq_instance_sized_for_kv_budget():
    lpu = get_device("groq-lpu")
    # 16.06 GB of weights + 32k tokens * 131,072 B = 20.36 GB over 207 MB per chip.
    chips = chips_needed(lpu, M8, min_kv_tokens=32768)
    assert chips == 99
    assert InstancePerf(lpu, M8, chips).kv_capacity_tokens >= 32768
    assert InstancePerf(lpu, M8, chips - 1).kv_capacity_tokens < 32768


@pytest.mark.parametrize(("device", "model", "chips", "tokens_s"), [
    ("wse-3", "llama-3.1-8b", 1, 2000.0),    # Cerebras service after its Oct 2024 release
    ("groq-lpu", "llama-3.1-8b", 78, 877.0),  # Artificial Analysis, Apr 2024
    ("groq-lpu", "llama-3.1-70b", 682, 284.0),
])
def test_latency_bound_devices_reproduce_vendor_throughput(device, model, chips, tokens_s):
    perf = InstancePerf(get_device(device), get_model(model), chips)
    assert 1.0 / perf.decode_step_s(1, 1000) == pytest.approx(tokens_s, rel=0.03)


def test_wafer_pipeline_pays_one_hop_per_stage_boundary():
    import dataclasses

    wse = get_device("wse-3")
    assert wse.parallelism == "pipeline"
    slow_link = dataclasses.replace(wse, collective_latency_s=wse.collective_latency_s + 1e-3)
    read_bw = wse.weight_bw_efficiency * wse.memory_bw_bytes_s
    for chips in (4, 6, 9):
        base = InstancePerf(wse, M70, chips).decode_step_s(1, 1000)
        # Stages run in turn, so more wafers add hops but no bandwidth to a single pass ...
        assert InstancePerf(slow_link, M70, chips).decode_step_s(1, 1000) - base == pytest.approx((chips - 1) * 1e-3)
        # ... and each wafer holds fewer bytes, so its cores read their share sooner.
        fewer_bytes_s = M70.layers * M70.weight_bytes * (1.0 / chips - 1.0 / 4) / read_bw
        assert base == pytest.approx(InstancePerf(wse, M70, 4).decode_step_s(1, 1000) + fewer_bytes_s
                                     + (chips - 4) * (wse.collective_latency_s + M70.hidden * 2.0
                                                      / wse.interconnect_bw_bytes_s))


def test_wafer_reads_resident_weights_in_place_at_any_batch():
    wse = get_device("wse-3")
    oss = get_model("gpt-oss-120b")
    perf = InstancePerf(wse, oss, 2)
    expected_s = oss.layers * oss.weight_bytes / 2 / (wse.weight_bw_efficiency * wse.memory_bw_bytes_s)
    # Every expert sits in its own cores' SRAM: a batch that selects more experts reads them at once.
    assert perf.weight_read_s(1) == perf.weight_read_s(256) == pytest.approx(expected_s)
    assert perf.streamed_bytes(256) > 5 * perf.streamed_bytes(1)  # energy still counts the bytes read
    # A streaming device (H100) reads what the tokens touch through one memory interface.
    h100 = InstancePerf(get_device("h100-sxm"), oss, 2)
    assert h100.weight_read_s(256) > 5 * h100.weight_read_s(1)


def test_wafer_layer_time_is_mostly_latency_not_layer_size():
    wse = get_device("wse-3")
    per_layer = {m.name: InstancePerf(wse, m, c).decode_step_s(1, 0) / m.layers for m, c in ((M8, 1), (M70, 4))}
    # A 70B layer holds ~3.7x the bytes of an 8B layer, but its cores read them in parallel: the
    # layer costs the fixed latency plus a read that follows how full its wafer is, not its size.
    assert per_layer["llama-3.1-8b"] < per_layer["llama-3.1-70b"] < 1.15 * per_layer["llama-3.1-8b"]
    fill_gap_s = (M70.weight_bytes / 4 - M8.weight_bytes) / (wse.weight_bw_efficiency * wse.memory_bw_bytes_s)
    hops_s = 3 * (wse.collective_latency_s + M70.hidden * 2.0 / wse.interconnect_bw_bytes_s) / M70.layers
    assert per_layer["llama-3.1-70b"] - per_layer["llama-3.1-8b"] == pytest.approx(fill_gap_s + hops_s, rel=0.05)


def test_unknown_parallelism_is_refused():
    import dataclasses

    with pytest.raises(ValueError, match="parallelism must be one of"):
        dataclasses.replace(get_device("wse-3"), parallelism="expert")


def test_decode_steps_within_random_budgets():
    import random

    rng = random.Random(7)
    perf = h100_8b()
    for _ in range(300):
        batch = rng.choice([1, 2, 8, 64, 256, 1024])
        ctx = rng.uniform(0, batch * 20000)
        budget = rng.uniform(0, 5)
        k = perf.decode_steps_within(batch, ctx, budget)
        assert perf.decode(batch, ctx, k)[0] <= budget < perf.decode(batch, ctx, k + 1)[0]


# --- fast paths against the general path ------------------------------------------
# decode() and decode_steps_within() handle the common case inline (one of compute/memory is the
# larger over the whole segment, the power cap binds on all of it or none of it) and hand the rest
# to _decode_general / _decode_steps_within_general. Both paths must give the same bits.

FAST_PATH_INSTANCES = [
    (H100, M8, 1),
    (CAPPED_H100, M8, 1),                                   # cap binds on compute-heavy steps
    (dataclasses.replace(H100, peak_power_w=300.0), M8, 1),  # cap binds nearly everywhere
    (H100, M70, 4),                                          # collectives; the cap releases mid-segment
    (get_device("groq-lpu"), M8, 78),
]


def random_decode_args(rng):
    batch = rng.choice([rng.randint(1, 64), rng.randint(1, 2048)])
    ctx = batch * rng.choice([rng.uniform(0, 300), rng.uniform(0, 8000)])
    if rng.random() < 0.5:
        ctx = int(ctx)  # the engine passes integer context sums
    steps = rng.choice([rng.randint(1, 50), rng.randint(1, 3000), rng.randint(1, 10**6)])
    return batch, ctx, steps


def test_decode_fast_path_matches_general_path(monkeypatch):
    import collections
    import random

    import workers.perf as perf_module

    # Spy on the general path and on the split where the cap starts or stops binding, to check
    # that the random cases exercise every branch.
    calls = collections.Counter()
    general = InstancePerf._decode_general
    sum_min_lin = perf_module.sum_min_lin

    def spy_general(self, *args):
        calls["crossover"] += 1
        return general(self, *args)

    def spy_sum_min_lin(*args):
        calls["cap_changes"] += 1
        return sum_min_lin(*args)

    monkeypatch.setattr(InstancePerf, "_decode_general", spy_general)
    monkeypatch.setattr(perf_module, "sum_min_lin", spy_sum_min_lin)
    rng = random.Random(11)
    seen = collections.Counter()
    for device, model, chips in FAST_PATH_INSTANCES:
        perf = InstancePerf(device, model, chips)
        for _ in range(1500):
            batch, ctx, steps = random_decode_args(rng)
            before = calls.copy()
            t, e = perf.decode(batch, ctx, steps)
            if calls["crossover"] > before["crossover"]:
                seen["crossover"] += 1
            elif calls["cap_changes"] > before["cap_changes"]:
                seen["cap_changes"] += 1
            elif e == pytest.approx(perf._dyn_cap_w * t, rel=1e-12):
                seen["fast, capped"] += 1
            else:
                seen["fast, uncapped"] += 1
            assert (t, e) == general(perf, batch, ctx, steps), (device.name, batch, ctx, steps)
    assert min(seen[k] for k in ("crossover", "cap_changes", "fast, capped", "fast, uncapped")) >= 20, seen


def test_decode_random_segments_equal_step_loop():
    import random

    rng = random.Random(12)
    for device, model, chips in FAST_PATH_INSTANCES:
        perf = InstancePerf(device, model, chips)
        for _ in range(40):
            batch, ctx, _ = random_decode_args(rng)
            steps = rng.randint(1, 300)
            t, e = perf.decode(batch, ctx, steps)
            lt, le = loop_decode(perf, batch, ctx, steps)
            assert t == pytest.approx(lt, rel=1e-9)
            assert e == pytest.approx(le, rel=1e-9)


def test_decode_steps_within_fast_path_matches_general_path(monkeypatch):
    import random

    calls = []
    general = InstancePerf._decode_steps_within_general

    def spy_general(self, *args):
        calls.append(args)
        return general(self, *args)

    monkeypatch.setattr(InstancePerf, "_decode_steps_within_general", spy_general)
    rng = random.Random(13)
    fast = 0
    for device, model, chips in FAST_PATH_INSTANCES:
        perf = InstancePerf(device, model, chips)
        for _ in range(500):
            batch, ctx, steps = random_decode_args(rng)
            t, _ = perf.decode(batch, ctx, steps)
            # Exactly at a segment's end, just short of it, and anywhere (past the crossover too).
            for budget in (t, math.nextafter(t, 0.0), t * rng.uniform(0.0, 3.0)):
                n = len(calls)
                k = perf.decode_steps_within(batch, ctx, budget)
                fast += len(calls) == n
                assert k == general(perf, batch, ctx, budget)
                assert perf.decode(batch, ctx, k)[0] <= budget < perf.decode(batch, ctx, k + 1)[0]
    assert fast >= 1000 and len(calls) >= 20


def test_bad_batch_is_rejected_by_every_decode_method():
    perf = h100_8b()
    for call in (lambda: perf.decode(0, 0.0, 5), lambda: perf.decode_steps_within(-1, 0.0, 1.0),
                 lambda: perf.decode_step_s(0, 0.0)):
        with pytest.raises(ValueError, match="batch"):
            call()
    assert perf.decode(1, 0.0, 1)[0] == pytest.approx(perf.decode_step_s(1, 0.0), rel=1e-12)
