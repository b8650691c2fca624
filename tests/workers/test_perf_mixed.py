"""InstancePerf.mixed: chunked-prefill iterations (prompt chunks beside a decode step), against the
prefill and decode models they reduce to and against iteration-by-iteration loops."""
from __future__ import annotations

import pytest

from workers.devices import get_device
from workers.models import get_model
from workers.perf import InstancePerf

H100 = get_device("h100-sxm")
M8 = get_model("llama-3.1-8b")
M70 = get_model("llama-3.1-70b")


def h100_8b() -> InstancePerf:
    return InstancePerf(H100, M8)


def chunk_pairs(tokens: int, prefix: int) -> float:
    return tokens * prefix + tokens * (tokens + 1) / 2


@pytest.mark.parametrize(("batch", "ctx", "steps"), [(1, 600.0, 1), (64, 64 * 2000.0, 7), (256, 256 * 900.0, 40)])
def test_mixed_without_prompt_tokens_is_decode(batch, ctx, steps):
    perf = h100_8b()
    assert perf.mixed(batch, ctx, 0, 0.0, 0.0, 0, steps) == perf.decode(batch, ctx, steps)


@pytest.mark.parametrize(("tokens", "prefix"), [(128, 0), (2048, 0), (8192, 0), (512, 30_000), (8192, 100_000)])
def test_mixed_without_decode_batch_is_prefill(tokens, prefix):
    for perf in (h100_8b(), InstancePerf(H100, M70, 4)):
        pairs = chunk_pairs(tokens, prefix)
        t, e = perf.mixed(0, 0.0, tokens, pairs, prefix, 1)
        assert (t, e) == pytest.approx(perf.prefill(tokens, pairs, 1), rel=1e-12)


@pytest.mark.parametrize(("batch", "ctx", "tokens"), [(1, 1000.0, 16), (64, 64 * 1000.0, 512), (64, 64 * 1000.0, 8128),
                                                      (200, 200 * 3000.0, 7992)])
def test_mixed_iteration_costs_more_than_either_side_and_less_than_both(batch, ctx, tokens):
    perf = h100_8b()
    t, _ = perf.mixed(batch, ctx, tokens, chunk_pairs(tokens, 0), 0, 1)
    decode = perf.decode_step_s(batch, ctx)
    prefill = perf.prefill(tokens, chunk_pairs(tokens, 0), 1)[0]
    assert max(decode, prefill) < t < decode + prefill  # the weights stream once for both


def test_chunk_attention_reads_its_prefix():
    perf = h100_8b()
    cold = perf.mixed(32, 32 * 1000.0, 2048, chunk_pairs(2048, 0), 0, 1)
    deep = perf.mixed(32, 32 * 1000.0, 2048, chunk_pairs(2048, 60_000), 60_000, 1)
    assert deep[0] > 1.5 * cold[0] and deep[1] > cold[1]


def iteration_loop(perf, batch, ctx, tokens, prefix, steps):
    """One mixed() call per iteration: the prompt's prefix grows by `tokens`, the batch's context by `batch`."""
    t = e = 0.0
    for k in range(steps):
        dt, de = perf.mixed(batch, ctx + batch * k, tokens, chunk_pairs(tokens, prefix + tokens * k),
                            prefix + tokens * k, 1)
        t += dt
        e += de
    return t, e


MIXED_RUNS = [
    ("h100-sxm", 1, 500.0, 512, 0, 30),
    ("h100-sxm", 64, 64 * 1500.0, 8128, 0, 12),  # compute-bound throughout
    ("h100-sxm", 255, 255 * 100.0, 7937, 4096, 9),
    ("h100-sxm", 8, 8 * 100.0, 192, 0, 300),  # a small chunk: memory-bound, then compute overtakes
    ("m4-max", 2, 2 * 800.0, 256, 0, 25),  # a laptop: the power cap binds
    ("wse-3", 16, 16 * 2000.0, 2048, 1000, 20),
]


@pytest.mark.parametrize(("device", "batch", "ctx", "tokens", "prefix", "steps"), MIXED_RUNS)
def test_mixed_closed_form_equals_iteration_loop(device, batch, ctx, tokens, prefix, steps):
    from workers.perf import chips_needed

    dev = get_device(device)
    perf = InstancePerf(dev, M8, chips_needed(dev, M8) or 1)
    closed = perf.mixed(batch, ctx, tokens, chunk_pairs(tokens, prefix), prefix, 1, steps)
    assert closed == pytest.approx(iteration_loop(perf, batch, ctx, tokens, prefix, steps), rel=1e-9)


def test_small_chunk_run_really_crosses_from_memory_to_compute():
    perf = h100_8b()
    fixed, serial, c0, cs, m0, ms, _, _ = perf._mixed_lines(8, 800.0, 192, chunk_pairs(192, 0), 0, 1)
    assert c0 < m0 and c0 + cs * 299 > m0 + ms * 299


@pytest.mark.parametrize(("batch", "ctx", "tokens", "prefix", "time_s"), [
    (64, 64 * 1500.0, 8128, 0, 0.0), (64, 64 * 1500.0, 8128, 0, 0.2), (64, 64 * 1500.0, 8128, 0, 3.0),
    (0, 0.0, 8192, 0, 1.7), (8, 800.0, 192, 0, 2.5), (1, 500.0, 512, 7000, 0.9),
])
def test_mixed_steps_within_matches_brute_force(batch, ctx, tokens, prefix, time_s):
    perf = h100_8b()
    pairs = chunk_pairs(tokens, prefix)
    k = perf.mixed_steps_within(batch, ctx, tokens, pairs, prefix, time_s)
    assert perf.mixed(batch, ctx, tokens, pairs, prefix, 1, k)[0] <= time_s
    assert perf.mixed(batch, ctx, tokens, pairs, prefix, 1, k + 1)[0] > time_s


@pytest.mark.parametrize("steps", [1, 2, 17, 150])
def test_mixed_steps_within_is_exact_at_boundaries(steps):
    perf = h100_8b()
    args = (32, 32 * 700.0, 4064, chunk_pairs(4064, 512), 512)
    t = perf.mixed(*args, 1, steps)[0]
    assert perf.mixed_steps_within(*args, t) == steps
    assert perf.mixed_steps_within(*args, t * (1 - 1e-12)) == steps - 1


def test_mixed_rejects_several_prompts_over_several_steps():
    perf = h100_8b()
    assert perf.mixed(4, 400.0, 100, 5050.0, 0, 2)[0] > 0  # two prompts' chunks in one iteration
    with pytest.raises(ValueError, match="exactly 1 over several steps"):
        perf.mixed(4, 400.0, 100, 5050.0, 0, 2, steps=3)
    with pytest.raises(ValueError, match="finite time"):
        perf.mixed_steps_within(4, 400.0, 100, 5050.0, 0, float("inf"))


# --- MoE and sliding windows ---------------------------------------------------------------------

def perf_of(model: str, device: str = "h100-sxm", chips: int = 1) -> InstancePerf:
    return InstancePerf(get_device(device), get_model(model), chips)


@pytest.mark.parametrize(("model", "device", "chips"), [
    ("qwen3-30b-a3b", "h100-sxm", 1), ("gpt-oss-20b", "h100-sxm", 1), ("mixtral-8x7b", "h100-sxm", 2),
    ("deepseek-v3", "h200", 8),
])
@pytest.mark.parametrize(("tokens", "prefix"), [(64, 0), (2048, 0), (512, 40_000)])
def test_moe_and_windowed_mixed_reduce_to_prefill_and_decode(model, device, chips, tokens, prefix):
    perf = perf_of(model, device, chips)
    pairs = chunk_pairs(tokens, prefix)
    assert perf.mixed(0, 0.0, tokens, pairs, prefix, 1) == pytest.approx(perf.prefill(tokens, pairs, 1), rel=1e-9)
    assert perf.mixed(16, 16 * 3000.0, 0, 0.0, 0, 0, 5) == perf.decode(16, 16 * 3000.0, 5)


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "gpt-oss-120b"])
def test_moe_mixed_iteration_reads_the_experts_once(model):
    # A small batch and a short chunk touch a fraction of the experts each; together they touch
    # more than either, fewer than the two apart, and the dense weights are read once.
    perf = perf_of(model)
    batch, ctx, tokens = 8, 8 * 1000.0, 16
    assert perf.streamed_bytes(tokens + batch) < perf.streamed_bytes(tokens) + perf.streamed_bytes(batch)
    mixed = perf.mixed(batch, ctx, tokens, chunk_pairs(tokens, 0), 0, 1)[0]
    apart = perf.decode_step_s(batch, ctx) + perf.prefill(tokens, chunk_pairs(tokens, 0), 1)[0]
    assert max(perf.decode_step_s(batch, ctx), perf.prefill(tokens, chunk_pairs(tokens, 0), 1)[0]) < mixed < apart


@pytest.mark.parametrize(("model", "batch", "ctx", "tokens", "prefix", "steps"), [
    ("gpt-oss-20b", 4, 4 * 20.0, 16, 0, 30),  # the prompt and the contexts outgrow the 128-token window
    ("gpt-oss-20b", 32, 32 * 2000.0, 4064, 0, 12),  # past the window from the start
    ("qwen3-30b-a3b", 16, 16 * 500.0, 1024, 0, 20),
])
def test_moe_and_windowed_runs_equal_iteration_loop(model, batch, ctx, tokens, prefix, steps):
    perf = perf_of(model)
    closed = perf.mixed(batch, ctx, tokens, chunk_pairs(tokens, prefix), prefix, 1, steps)
    assert closed == pytest.approx(iteration_loop(perf, batch, ctx, tokens, prefix, steps), rel=1e-9)
    for k in (1, steps // 2, steps):
        t = perf.mixed(batch, ctx, tokens, chunk_pairs(tokens, prefix), prefix, 1, k)[0]
        assert perf.mixed_steps_within(batch, ctx, tokens, chunk_pairs(tokens, prefix), prefix, t) == k


def test_windowed_run_changes_regime_inside():
    perf = perf_of("gpt-oss-20b")
    assert 0 < perf._mixed_regime_steps(4, 80.0, 16, chunk_pairs(16, 0), 0) < 30
