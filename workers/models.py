"""Built-in model shapes, and loading a model by name or from a spec file.

Every built-in carries a source line per field: the Hugging Face config.json
key it was read from, or the model card for weight formats and capability.
`capability` is a published benchmark score / 100 (MMLU where the model card
or technical report gives it; which one is named per model) that tier routing
compares across models. ModelSpec itself (the keys, their validation and the
parameter, byte and FLOP accounting) lives in workers/modelspec.py.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from workers.modelspec import OPTIONAL_KEYS, REQUIRED_KEYS, ModelSpec, ModelSpecError, spec_from_mapping

__all__ = [
    "ModelSpec",
    "ModelSpecError",
    "UnknownModelError",
    "MODELS",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "get_model",
    "load_model",
    "with_dtype",
]


class UnknownModelError(KeyError):
    """A model name is neither a built-in nor an existing spec file."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


# Names for the common weight widths, used to label quantized variants.
_DTYPE_LABELS: dict[float, str] = {4.0: "fp32", 2.0: "bf16", 1.0: "fp8", 0.5: "int4"}
# MXFP4 (OCP microscaling): 4-bit elements plus one 8-bit scale per 32, 4.25 bits each.
MXFP4_BYTES = 4.25 / 8


def _builtin(repo: str, name: str, hf_keys: dict[str, str], notes: dict[str, str], **values: Any) -> ModelSpec:
    """A built-in spec whose sources say, for each field, which config.json key or card it came from."""
    sources = {}
    for key, value in values.items():
        if key in notes:
            sources[key] = notes[key]
        elif key in hf_keys:
            sources[key] = f"{repo} config.json: {hf_keys[key]} = {json.dumps(value)}"
        else:
            raise ValueError(f"built-in {name}: field {key} has no source")
    return ModelSpec(name=name, sources=sources, **values)


# Our key -> the config.json key it is read from, for each family.
_LLAMA_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "ffn": "intermediate_size", "vocab": "vocab_size",
               "tied_embeddings": "tie_word_embeddings", "dtype_bytes": "torch_dtype (bf16: 2 bytes)",
               "head_dim": "head_dim", "context_tokens": "max_position_embeddings"}
_MOE_KEYS = dict(_LLAMA_KEYS, experts="num_local_experts", experts_per_token="num_experts_per_tok",
                 expert_ffn="intermediate_size", sliding_window="sliding_window")
_QWEN3_MOE_KEYS = dict(_MOE_KEYS, experts="num_experts", expert_ffn="moe_intermediate_size")
_LLAMA4_KEYS = dict(_MOE_KEYS, ffn="intermediate_size_mlp", moe_layer_step="interleave_moe_layer_step",
                    sliding_window="attention_chunk_size (chunked attention, modelled as a window)",
                    sliding_window_pattern="no_rope_layer_interval (every 4th layer attends globally)",
                    shared_experts="one shared expert per MoE layer (Llama4TextMoe.shared_expert)")
_DEEPSEEK_KEYS = dict(_LLAMA_KEYS, experts="n_routed_experts", experts_per_token="num_experts_per_tok",
                      shared_experts="n_shared_experts", expert_ffn="moe_intermediate_size",
                      dense_layers="first_k_dense_replace", kv_lora_rank="kv_lora_rank",
                      qk_rope_dim="qk_rope_head_dim", q_lora_rank="q_lora_rank",
                      head_dim="qk_nope_head_dim and v_head_dim")
_GPT_OSS_KEYS = dict(_MOE_KEYS, sliding_window_pattern="layer_types (sliding_attention and full_attention "
                                                       "alternate: every 2nd layer is full)")


def _llama(repo: str, name: str, layers: int, hidden: int, heads: int, ffn: int, tied: bool,
           capability: float, card: str) -> ModelSpec:
    return _builtin(repo, name, _LLAMA_KEYS, {"capability": card}, layers=layers, hidden=hidden, heads=heads,
                    kv_heads=8, ffn=ffn, vocab=128256, dtype_bytes=2, tied_embeddings=tied, capability=capability,
                    context_tokens=131072)


_FP8_NOTE = ("{repo} model card: weights released in fp8 (e4m3, 128x128 block scales); "
             "embedding and lm_head stay bf16")
_KV_BF16 = "serving engines keep the MLA latent cache in bf16 (FlashMLA)"


def _deepseek(repo: str, name: str, capability: float, card: str, **shape: Any) -> ModelSpec:
    notes = {"capability": card, "dtype_bytes": _FP8_NOTE.format(repo=repo),
             "embedding_dtype_bytes": _FP8_NOTE.format(repo=repo), "kv_dtype_bytes": _KV_BF16}
    return _builtin(repo, name, _DEEPSEEK_KEYS, notes, hidden=7168, head_dim=128, ffn=18432, experts_per_token=8,
                    shared_experts=1, expert_ffn=2048, kv_lora_rank=512, qk_rope_dim=64, q_lora_rank=1536,
                    dtype_bytes=1, embedding_dtype_bytes=2, kv_dtype_bytes=2, capability=capability, **shape)


def _gpt_oss(name: str, layers: int, experts: int, capability: float, card: str) -> ModelSpec:
    repo = f"openai/{name}"
    mx = (f"{repo} config.json quantization_config: quant_method mxfp4 for the expert MLPs "
          "(4-bit values + an 8-bit scale per 32: 4.25 bits); attention, router and embeddings bf16")
    return _builtin(repo, name, _GPT_OSS_KEYS, {"capability": card, "expert_dtype_bytes": mx},
                    layers=layers, hidden=2880, heads=64, kv_heads=8, head_dim=64, ffn=2880, vocab=201088,
                    dtype_bytes=2, experts=experts, experts_per_token=4, expert_ffn=2880, sliding_window=128,
                    sliding_window_pattern=2, expert_dtype_bytes=MXFP4_BYTES, capability=capability,
                    context_tokens=131072)


def _llama4(repo: str, name: str, experts: int, moe_layer_step: int, capability: float,
            context_tokens: int) -> ModelSpec:
    card = (f"MMLU {capability * 100:.1f} (pretrained model, 5-shot) from the Llama 4 model card "
            "(meta-llama/Llama-4-Scout-17B-16E, 2025-04-05)")
    return _builtin(repo, name, _LLAMA4_KEYS, {"capability": card}, layers=48, hidden=5120, heads=40, kv_heads=8,
                    head_dim=128, ffn=16384, vocab=202048, dtype_bytes=2, experts=experts, experts_per_token=1,
                    shared_experts=1, expert_ffn=8192, moe_layer_step=moe_layer_step, sliding_window=8192,
                    sliding_window_pattern=4, capability=capability, context_tokens=context_tokens)


def _qwen3(repo: str, name: str, layers: int, hidden: int, heads: int, ffn: int, expert_ffn: int,
           capability: float) -> ModelSpec:
    card = (f"MMLU {capability * 100:.2f} of the base model (5-shot) from the Qwen3 Technical Report "
            "(arXiv 2505.09388, Table 3/5)")
    return _builtin(repo, name, _QWEN3_MOE_KEYS, {"capability": card}, layers=layers, hidden=hidden, heads=heads,
                    kv_heads=4, head_dim=128, ffn=ffn, vocab=151936, dtype_bytes=2, experts=128,
                    experts_per_token=8, expert_ffn=expert_ffn, capability=capability, context_tokens=40960)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _llama("meta-llama/Llama-3.2-1B", "llama-3.2-1b", 16, 2048, 32, 8192, True, 0.493,
               "MMLU 49.3 (instruct, 5-shot), Llama 3.2 model card"),
        _llama("meta-llama/Llama-3.2-3B", "llama-3.2-3b", 28, 3072, 24, 8192, True, 0.634,
               "MMLU 63.4 (instruct, 5-shot), Llama 3.2 model card"),
        _llama("meta-llama/Llama-3.1-8B", "llama-3.1-8b", 32, 4096, 32, 14336, False, 0.694,
               "MMLU 69.4 (instruct, 5-shot), Llama 3.1 model card"),
        _llama("meta-llama/Llama-3.1-70B", "llama-3.1-70b", 80, 8192, 64, 28672, False, 0.836,
               "MMLU 83.6 (instruct, 5-shot), Llama 3.1 model card"),
        _llama("meta-llama/Llama-3.1-405B", "llama-3.1-405b", 126, 16384, 128, 53248, False, 0.873,
               "MMLU 87.3 (instruct, 5-shot), Llama 3.1 model card"),
        _deepseek("deepseek-ai/DeepSeek-V3", "deepseek-v3", 0.885,
                  "MMLU 88.5 (chat model, EM) from the DeepSeek-V3 Technical Report (arXiv 2412.19437, Table 6)",
                  layers=61, heads=128, kv_heads=128, vocab=129280, experts=256, dense_layers=3,
                  context_tokens=163840),
        # DeepSeek-R1 is DeepSeek-V3's architecture, reasoning-trained: the same shape.
        _deepseek("deepseek-ai/DeepSeek-R1", "deepseek-r1", 0.908,
                  "MMLU 90.8 (EM) from the DeepSeek-R1 model card / report (arXiv 2501.12948, Table 4)",
                  layers=61, heads=128, kv_heads=128, vocab=129280, experts=256, dense_layers=3,
                  context_tokens=163840),
        _deepseek("moonshotai/Kimi-K2-Instruct", "kimi-k2", 0.895,
                  "MMLU 89.5 (EM) from the Kimi-K2-Instruct model card (2025-07)",
                  layers=61, heads=64, kv_heads=64, vocab=163840, experts=384, dense_layers=1,
                  context_tokens=131072),
        _qwen3("Qwen/Qwen3-235B-A22B", "qwen3-235b-a22b", 94, 4096, 64, 12288, 1536, 0.8781),
        _qwen3("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b", 48, 2048, 32, 6144, 768, 0.8138),
        _gpt_oss("gpt-oss-120b", 36, 128, 0.900,
                 "MMLU 90.0 (high reasoning) from the gpt-oss model card (OpenAI, 2025-08-05)"),
        _gpt_oss("gpt-oss-20b", 24, 32, 0.853,
                 "MMLU 85.3 (high reasoning) from the gpt-oss model card (OpenAI, 2025-08-05)"),
        _llama4("meta-llama/Llama-4-Maverick-17B-128E", "llama-4-maverick", 128, 2, 0.855, 1048576),
        _llama4("meta-llama/Llama-4-Scout-17B-16E", "llama-4-scout", 16, 1, 0.796, 10485760),
        _builtin("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b", _MOE_KEYS,
                 {"capability": "MMLU 70.6 (5-shot) from 'Mixtral of Experts' (arXiv 2401.04088, Table 2)"},
                 layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=32000, dtype_bytes=2,
                 experts=8, experts_per_token=2, expert_ffn=14336, capability=0.706, context_tokens=32768),
    )
}


def get_model(name: str) -> ModelSpec:
    """A built-in model by name."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; built-ins: {', '.join(sorted(MODELS))} (or pass a .json/.yaml spec file)"
        ) from None


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A built-in model name, or a JSON/YAML file holding ModelSpec keys.

    Required: the REQUIRED_KEYS; optional: the OPTIONAL_KEYS (MoE, MLA, sliding
    window, per-part widths). Any other key is an error, so a typo ("kv_head")
    is not silently ignored. Errors read `file: key: reason`.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UnknownModelError(
            f"unknown model {str(name_or_path)!r}: not a built-in ({', '.join(sorted(MODELS))}) and no such file"
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ModelSpecError(f"{path}: cannot parse model spec: {exc}") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: model spec must be a mapping of keys to values, got {type(data).__name__}")
    return spec_from_mapping(data, str(path))


def with_dtype(model: ModelSpec, dtype_bytes: float, kv_dtype_bytes: float | None = None,
               name: str | None = None) -> ModelSpec:
    """The same shape stored at another width (fp8 = 1, int4 = 0.5 bytes per weight), every part.

    The KV width is re-derived from the new weight width unless given, and the
    name gains a suffix ("llama-3.1-8b-int4") so variants stay distinguishable.
    """
    if name is None:
        label = _DTYPE_LABELS.get(float(dtype_bytes), f"{dtype_bytes:g}B")
        name = f"{model.name}-{label}"
    return dataclasses.replace(model, name=name, dtype_bytes=dtype_bytes, kv_dtype_bytes=kv_dtype_bytes,
                               expert_dtype_bytes=None if model.is_moe else model.expert_dtype_bytes,
                               embedding_dtype_bytes=None, sources={})
