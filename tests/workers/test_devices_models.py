"""Device catalogue and model shapes: counts checked against hand calculations and published sizes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from workers.devices import DEVICES, DeviceSpec, UnknownDeviceError, get_device
from workers.models import (
    MODELS,
    ModelSpec,
    ModelSpecError,
    UnknownModelError,
    get_model,
    load_model,
    with_dtype,
)

# Llama-3.1-8B by hand: embedding 128256*4096 = 525,336,576; per layer q 4096^2 + k,v 2*4096*1024
# + o 4096^2 + MLP 3*4096*14336 + 2 norms of 4096 = 218,112,000; 32 layers = 6,979,584,000;
# final norm 4096; untied lm_head 525,336,576. Total 8,030,261,248 (the "8.03 B" of the README).
PARAM_COUNTS = [
    ("llama-3.2-1b", 1_235_814_400),    # tied embeddings: "1.24B" on the model card
    ("llama-3.2-3b", 3_212_749_824),    # tied embeddings: "3.21B"
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.1-70b", 70_553_706_496),  # "70.6B"
    ("llama-3.1-405b", 405_853_388_800),  # "405.9B"
]


@pytest.mark.parametrize(("name", "params"), PARAM_COUNTS)
def test_param_counts_match_published_sizes(name, params):
    assert get_model(name).params == params


# 2 (K and V) * layers * kv_heads * head_dim * bytes per element.
KV_BYTES = [
    ("llama-3.2-1b", None, 2 * 16 * 8 * 64 * 2),         # 32,768
    ("llama-3.1-8b", None, 2 * 32 * 8 * 128 * 2),        # 131,072
    ("llama-3.1-8b", 1.0, 2 * 32 * 8 * 128 * 1),         # fp8 weights keep an fp8 cache
    ("llama-3.1-8b", 0.5, 2 * 32 * 8 * 128 * 2),         # int4 weights keep a bf16 cache
    ("llama-3.1-70b", None, 2 * 80 * 8 * 128 * 2),       # 327,680
    ("llama-3.1-405b", None, 2 * 126 * 8 * 128 * 2),     # 516,096
]


@pytest.mark.parametrize(("name", "dtype_bytes", "expected"), KV_BYTES)
def test_kv_bytes_per_token(name, dtype_bytes, expected):
    model = get_model(name) if dtype_bytes is None else with_dtype(get_model(name), dtype_bytes)
    assert model.kv_bytes_per_token == expected


def test_8b_kv_bytes_per_token_is_128_kib():
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 131072


def test_8b_flop_and_byte_accounting():
    m = get_model("llama-3.1-8b")
    layer_matmuls = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)  # 6,979,321,856
    assert m.layer_matmul_params == layer_matmuls
    assert m.flops_per_token == 2 * layer_matmuls
    assert m.lm_head_flops == 2 * 128256 * 4096
    assert m.attn_flops_per_pair == 4 * 32 * 32 * 128
    assert m.head_dim == 128
    # Streamed per step: every matrix except the embedding table, plus the norm vectors.
    assert m.streamed_weight_bytes == 2 * (layer_matmuls + 128256 * 4096 + 65 * 4096)
    assert m.weight_bytes == 2 * 8_030_261_248


@pytest.mark.parametrize(("dtype_bytes", "suffix", "weight_bytes"), [
    (1.0, "fp8", 8_030_261_248),
    (0.5, "int4", 4_015_130_624),
])
def test_with_dtype_scales_weights_and_renames(dtype_bytes, suffix, weight_bytes):
    q = with_dtype(get_model("llama-3.1-8b"), dtype_bytes)
    assert q.name == f"llama-3.1-8b-{suffix}"
    assert q.weight_bytes == weight_bytes
    assert q.params == 8_030_261_248


def test_tied_embeddings_count_the_matrix_once():
    m = get_model("llama-3.2-1b")
    untied = dataclasses.replace(m, tied_embeddings=False)
    assert untied.params - m.params == 128256 * 2048


def test_builtins_carry_capability_in_unit_range():
    for m in MODELS.values():
        assert m.capability is not None and 0.0 < m.capability < 1.0
    assert get_model("llama-3.1-70b").capability > get_model("llama-3.1-8b").capability


# --- spec files -------------------------------------------------------------------

GOOD_SPEC = {"name": "tiny", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2,
             "ffn": 512, "vocab": 1000, "dtype_bytes": 2}


def test_load_builtin_by_name():
    assert load_model("llama-3.1-8b") is MODELS["llama-3.1-8b"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_load_spec_file(tmp_path, suffix):
    path = tmp_path / f"tiny{suffix}"
    spec = dict(GOOD_SPEC, capability=0.3)
    path.write_text(json.dumps(spec))  # JSON is valid YAML too
    m = load_model(str(path))
    assert (m.name, m.layers, m.head_dim, m.kv_dtype_bytes, m.capability) == ("tiny", 2, 64, 2.0, 0.3)
    # 2 * layers * kv_heads * head_dim * 2 bytes
    assert m.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2


@pytest.mark.parametrize(("edit", "message"), [
    ({"drop": "kv_heads"}, ": kv_heads: missing required key"),
    ({"set": ("kv_head", 2)}, ": kv_head: unknown key"),
    ({"set": ("layers", "two")}, ": layers: must be an integer"),
    ({"set": ("layers", True)}, ": layers: must be an integer"),
    ({"set": ("dtype_bytes", "bf16")}, ": dtype_bytes: must be a number"),
    ({"set": ("tied_embeddings", "yes")}, ": tied_embeddings: must be true or false"),
    ({"set": ("heads", 3)}, ": kv_heads: heads (3) must be a multiple of kv_heads"),
    ({"set": ("capability", 1.5)}, ": capability: must be a number in [0, 1]"),
    # MoE, MLA and sliding-window keys
    ({"set": ("experts_per_token", 2)}, ": experts_per_token: needs experts"),
    ({"set": ("experts", 8)}, ": experts_per_token: required with experts"),
    ({"moe": {"experts_per_token": 9}}, ": experts_per_token: must be at most experts (8), got 9"),
    ({"moe": {"experts": 0}}, ": experts: must be an integer >= 1, got 0"),
    ({"moe": {"dense_layers": 2}}, ": dense_layers: must be below layers (2), got 2"),
    ({"moe": {"moe_layer_step": 3}}, ": moe_layer_step: leaves no MoE layer among 2 layers"),
    ({"moe": {"shared_experts": -1}}, ": shared_experts: must be an integer >= 0"),
    ({"moe": {"routing_skew": -0.5}}, ": routing_skew: must be a number >= 0"),
    ({"moe": {"expert_dtype_bytes": 0}}, ": expert_dtype_bytes: must be a positive number of bytes"),
    ({"set": ("kv_lora_rank", 512)}, ": qk_rope_dim: MLA needs both kv_lora_rank and qk_rope_dim"),
    ({"set": ("q_lora_rank", 64)}, ": q_lora_rank: only applies to MLA attention"),
    ({"set": ("sliding_window_pattern", 2)}, ": sliding_window_pattern: needs sliding_window"),
    ({"set": ("sliding_window", 0)}, ": sliding_window: must be an integer >= 1, got 0"),
    ({"set": ("embedding_dtype_bytes", "bf16")}, ": embedding_dtype_bytes: must be a number"),
])
def test_spec_file_errors_name_file_and_key(tmp_path, edit, message):
    spec = dict(GOOD_SPEC)
    if "drop" in edit:
        del spec[edit["drop"]]
    elif "moe" in edit:
        spec.update({"experts": 8, "experts_per_token": 2}, **edit["moe"])
    else:
        key, value = edit["set"]
        spec[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(spec))
    with pytest.raises(ModelSpecError) as info:
        load_model(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_spec_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ModelSpecError, match="mapping"):
        load_model(str(path))


def test_unknown_model_lists_builtins():
    with pytest.raises(UnknownModelError) as info:
        load_model("llama-9")
    assert isinstance(info.value, KeyError)
    assert "llama-3.1-8b" in str(info.value)


# --- devices ----------------------------------------------------------------------

REQUIRED_DEVICES = ["h100-sxm", "h200", "b200", "wse-3", "groq-lpu", "m4-max", "phone"]


def test_catalogue_has_required_devices():
    assert set(REQUIRED_DEVICES) <= set(DEVICES)


@pytest.mark.parametrize("name", REQUIRED_DEVICES)
def test_every_device_constant_cites_a_source(name):
    device = get_device(name)
    cited = {f.name for f in dataclasses.fields(DeviceSpec)} - {"name", "kind", "sources"}
    missing = sorted(cited - set(device.sources))
    assert not missing, f"{name} lacks sources for {missing}"
    assert all(isinstance(v, str) and v for v in device.sources.values())


@pytest.mark.parametrize(("name", "kind", "memory_bytes", "owned"), [
    ("h100-sxm", "gpu", 80e9, False),
    ("h200", "gpu", 141e9, False),
    ("b200", "gpu", 180e9, False),
    ("wse-3", "wafer", 44e9, False),
    ("groq-lpu", "lpu", 230e6, False),
    ("m4-max", "edge", 96e9, True),
    ("phone", "edge", 8e9, True),
])
def test_device_kinds_memory_and_pricing(name, kind, memory_bytes, owned):
    d = get_device(name)
    assert d.kind == kind
    assert d.memory_bytes == memory_bytes
    assert (d.price_usd_per_hour is None) == owned
    assert 0 < d.idle_power_w < d.peak_power_w


def test_h100_cloud_price_is_in_public_range():
    assert 2.0 <= get_device("h100-sxm").price_usd_per_hour <= 4.0


def test_devices_are_hashable_values():
    assert len({get_device(n) for n in REQUIRED_DEVICES}) == len(REQUIRED_DEVICES)


def test_unknown_device_lists_known_names():
    with pytest.raises(UnknownDeviceError) as info:
        get_device("tpu-v9")
    assert isinstance(info.value, KeyError)
    for name in REQUIRED_DEVICES:
        assert name in str(info.value)


def test_device_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(get_device("h100-sxm"), kind="fpga")


def test_model_rejects_non_positive_dims():
    with pytest.raises(ModelSpecError, match="layers"):
        ModelSpec(name="x", layers=0, hidden=8, heads=2, kv_heads=1, ffn=8, vocab=8, dtype_bytes=2)
