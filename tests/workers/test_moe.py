"""MoE, MLA and sliding-window shapes: published sizes, KV bytes, expert reads, expert parallelism, windows."""
from __future__ import annotations

import math
import random

import pytest

from workers.devices import get_device
from workers.models import MODELS, MXFP4_BYTES, get_model
from workers.modelspec import OPTIONAL_KEYS, REQUIRED_KEYS, ModelSpec
from workers.perf import InstancePerf, chips_needed

H100, H200, B200 = get_device("h100-sxm"), get_device("h200"), get_device("b200")

# (name, total params, active params) as the model cards state them (billions); active here counts the
# embedding table too, which OpenAI's gpt-oss figures (5.1B, 3.6B) leave out.
PUBLISHED = [
    ("deepseek-v3", 671, 37), ("kimi-k2", 1026, 32.9), ("qwen3-235b-a22b", 235, 22),
    ("qwen3-30b-a3b", 30.5, 3.3), ("gpt-oss-120b", 116.8, 5.13 + 0.58), ("gpt-oss-20b", 20.9, 3.6 + 0.58),
    ("llama-4-maverick", 400, 17), ("llama-4-scout", 108, 17), ("mixtral-8x7b", 46.7, 12.9),
]


@pytest.mark.parametrize(("name", "total_b", "active_b"), PUBLISHED)
def test_total_and_active_params_match_model_cards(name, total_b, active_b):
    m = get_model(name)
    assert m.params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active_b, rel=0.03)


def test_every_builtin_field_cites_a_source():
    for name, m in MODELS.items():
        derived = {"name", "kv_dtype_bytes", "head_dim"} - set(m.sources)  # defaults from other fields
        defaults = {f: ModelSpec.__dataclass_fields__[f].default for f in OPTIONAL_KEYS}
        given = [k for k in REQUIRED_KEYS + OPTIONAL_KEYS
                 if k not in derived and (k in REQUIRED_KEYS or getattr(m, k) != defaults[k])]
        missing = [k for k in given if k not in m.sources]
        assert not missing, f"{name} lacks sources for {missing}"


def test_deepseek_mla_cache_is_the_compressed_latent():
    m = get_model("deepseek-v3")
    # (kv_lora_rank 512 + rope 64) x 2 bytes x 61 layers; a GQA cache of 128 heads would be 64x larger.
    assert m.kv_bytes_per_token == 576 * 2 * 61
    assert get_model("deepseek-r1").kv_bytes_per_token == m.kv_bytes_per_token


def test_gpt_oss_weights_are_mxfp4_experts_and_bf16_rest():
    m = get_model("gpt-oss-120b")
    assert MXFP4_BYTES == 0.53125
    # The released checkpoint is 60.8 GiB.
    assert m.weight_bytes / 2**30 == pytest.approx(60.8, rel=0.01)
    assert m.window_layers == 18 and m.sliding_window == 128


def test_fp8_checkpoints_keep_bf16_embeddings():
    m = get_model("deepseek-v3")
    assert m.weight_bytes == pytest.approx(m.params + m.embedding_params + m.lm_head_params, rel=1e-12)


def test_maverick_interleaves_dense_and_moe_layers():
    assert get_model("llama-4-maverick").moe_layers == 24
    assert get_model("llama-4-scout").moe_layers == 48
    assert get_model("deepseek-v3").moe_layers == 58  # 3 leading dense layers
    assert get_model("kimi-k2").moe_layers == 60


@pytest.mark.parametrize("tokens", [1, 2, 8, 64, 1000])
def test_experts_touched_is_the_uniform_routing_expectation(tokens):
    m = get_model("qwen3-30b-a3b")
    # Monte Carlo: each token picks 8 distinct experts of 128 at random.
    rng = random.Random(tokens)
    trials = [len({e for _ in range(tokens) for e in rng.sample(range(128), 8)}) for _ in range(400)]
    assert m.experts_touched(tokens) == pytest.approx(128 * (1 - (1 - 8 / 128) ** tokens))
    assert m.experts_touched(tokens) == pytest.approx(sum(trials) / len(trials), rel=0.03)


def test_routing_skew_concentrates_experts():
    m = get_model("qwen3-30b-a3b")
    skewed = ModelSpec(**{**{k: getattr(m, k) for k in REQUIRED_KEYS + OPTIONAL_KEYS}, "routing_skew": 1.0})
    for tokens in (4, 32, 256):
        assert skewed.experts_touched(tokens) < m.experts_touched(tokens)
    assert skewed.experts_touched(1) == pytest.approx(8)  # one token still picks k experts
    assert sum(skewed.expert_choice_probabilities()) == pytest.approx(8)
    assert skewed.experts_touched(10**6) == pytest.approx(128)


def test_decode_reads_the_experts_the_batch_touches():
    m = get_model("qwen3-30b-a3b")
    perf = InstancePerf(H100, m)
    one, big = perf.streamed_bytes(1), perf.streamed_bytes(4096)
    assert one == pytest.approx(m.dense_streamed_bytes + m.moe_layers * 8 * m.expert_bytes)
    assert big == pytest.approx(m.streamed_weight_bytes, rel=1e-6)  # every expert
    # Batch-1 decode reads ~active bytes, so it beats a dense model of the same total size.
    dense_equivalent = ModelSpec(name="d", layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128,
                                 ffn=128 * 768, vocab=151936, dtype_bytes=2)
    assert perf.decode_step_s(1, 1024) < 0.5 * InstancePerf(H100, dense_equivalent).decode_step_s(1, 1024)


def test_prefill_flops_come_from_active_parameters():
    m = get_model("deepseek-v3")
    flops_per_token = m.flops_per_token
    assert flops_per_token == pytest.approx(2 * (m.active_params - m.embedding_params - m.lm_head_params
                                                 - m.norm_params), rel=1e-9)


def test_expert_parallel_all_to_all_costs_more_than_tensor_parallel_reduce():
    ds = get_model("deepseek-v3")
    perf = InstancePerf(B200, ds, 8)
    # Three collectives per MoE layer (attention all-reduce, dispatch, combine), two per dense layer.
    assert perf._coll_fixed_s == pytest.approx((2 * 3 + 3 * 58) * 3 * B200.collective_latency_s)


def test_sliding_window_bounds_kv_reads_and_capacity():
    m = get_model("gpt-oss-120b")
    perf = InstancePerf(H100, m)
    # Past the window, windowed layers read 128 tokens per sequence however long the context.
    short, long_ = perf.decode_step_s(1, 100), perf.decode_step_s(1, 100_000)
    full_only = perf._kv_byte_s * m.kv_bytes_per_token * (100_000 - 100)
    occupancy = min(1.0, 8 * 1 / H100.attn_parallel_units)
    assert long_ - short == pytest.approx(full_only / occupancy, rel=0.02)
    # Capacity: free bytes over full-attention bytes, after 256 sequences' windows.
    free = 80e9 * 0.9 - m.weight_bytes
    assert perf.kv_capacity_tokens == int((free - 256 * 128 * m.window_kv_bytes_per_token) / m.kv_bytes_per_token)


def test_kv_transfer_counts_window_layers_up_to_the_window():
    m = get_model("gpt-oss-20b")
    perf = InstancePerf(H100, m)
    link = 50e9
    expected = (1000 * m.kv_bytes_per_token + 128 * m.window_kv_bytes_per_token) / link
    assert perf.kv_transfer_s(1000, link, setup_s=0.0) == pytest.approx(expected)


WINDOWED = [(H100, "gpt-oss-120b", 1), (H200, "gpt-oss-20b", 1), (B200, "llama-4-scout", 4),
            (H200, "deepseek-v3", 8), (H100, "mixtral-8x7b", 2)]


@pytest.mark.parametrize(("device", "name", "chips"), WINDOWED)
def test_decode_closed_form_equals_step_loop_across_the_window(device, name, chips):
    perf = InstancePerf(device, get_model(name), chips)
    rng = random.Random(7)
    window = perf.model.sliding_window or 1000
    for _ in range(60):
        batch = rng.choice([1, 3, 64, 256])
        ctx = rng.choice([0, 50, window - 2, window, window + 5, 20 * window]) * batch
        steps = rng.randint(1, min(3 * window, 600))
        t, e = perf.decode(batch, ctx, steps)
        loop_t = sum(perf.decode_step_s(batch, ctx + batch * k) for k in range(steps))
        assert t == pytest.approx(loop_t, rel=1e-9)
        assert (t, e) == pytest.approx(perf._decode_general(batch, ctx, steps), rel=1e-12)
        for budget in (t, math.nextafter(t, 0.0), t * rng.uniform(0.0, 2.0)):
            k = perf.decode_steps_within(batch, ctx, budget)
            assert perf.decode(batch, ctx, k)[0] <= budget < perf.decode(batch, ctx, k + 1)[0]


@pytest.mark.parametrize(("device", "name", "chips"), [
    ("h100-sxm", "deepseek-v3", None), ("h200", "deepseek-v3", 8), ("b200", "kimi-k2", 8),
    ("h100-sxm", "qwen3-235b-a22b", 8), ("h100-sxm", "gpt-oss-120b", 1), ("m4-max", "gpt-oss-120b", 1),
    ("wse-3", "gpt-oss-120b", 2), ("phone", "gpt-oss-20b", None),
])
def test_smallest_instances(device, name, chips):
    assert chips_needed(get_device(device), get_model(name)) == chips
