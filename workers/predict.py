"""One-instance answers from the performance model: what `infersched model list` and `model predict` print.

`predict` prices one decode step of `batch` sequences holding `context`
tokens each on the smallest instance of a device that holds the model and
their KV cache (or a given chip count), and one prefill of a `context`-token
prompt for TTFT. `listing` summarises each model's size and the smallest
instance of every catalogue device that holds it with room for one 8k-token
sequence. Plain dicts out, ready for JSON.
"""
from __future__ import annotations

import math
from typing import Any

from workers.devices import DEVICES, DeviceSpec
from workers.modelspec import ModelSpec
from workers.perf import InstancePerf, chips_needed
from workers.speculative import speculative_round

__all__ = ["PredictionError", "predict", "listing", "LISTING_KV_TOKENS"]

# The KV room `model list` sizes instances for: one sequence of this many tokens.
LISTING_KV_TOKENS = 8192


class PredictionError(ValueError):
    """The question has no answer on this device (the model does not fit any instance of it)."""


def _chips_to_hold(device: DeviceSpec, model: ModelSpec, kv_tokens: int, memory_utilization: float) -> int:
    """Chips whose memory would hold the weights and `kv_tokens` of KV, ignoring the instance limit."""
    need = model.weight_bytes + model.kv_bytes(kv_tokens)
    return max(1, math.ceil(need / (device.memory_bytes * memory_utilization)))


def predict(device: DeviceSpec, model: ModelSpec, batch: int = 1, context: int = 1024, chips: int | None = None,
            memory_utilization: float = 0.9, draft: ModelSpec | None = None, acceptance: float | None = None,
            draft_tokens: int | None = None) -> dict[str, Any]:
    """Per-sequence decode speed, TTFT, energy and price per output token for one instance.

    With a `draft` model and its `acceptance` rate, decode is speculative (workers/speculative.py):
    the draft runs on the same instance and `draft_tokens` (default: the fastest k) are verified
    per round.
    """
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    if (draft is None) != (acceptance is None):
        raise ValueError("speculative decoding needs both a draft model and an acceptance rate")
    kv_tokens = batch * (context + 1)
    if chips is None:
        chips = chips_needed(device, model, min_kv_tokens=kv_tokens, memory_utilization=memory_utilization)
        if chips is None:
            need = _chips_to_hold(device, model, kv_tokens, memory_utilization)
            limit = device.max_chips_per_instance
            raise PredictionError(
                f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) with {kv_tokens:,} tokens of KV "
                f"needs about {need:,} x {device.name} ({device.memory_bytes / 1e9:g} GB each); "
                + (f"an instance holds at most {limit}" if device.interconnect_bw_bytes_s > 0 or limit > 1
                   else f"{device.name} serves with one chip"))
    perf = InstancePerf(device, model, chips, memory_utilization=memory_utilization, max_seqs=batch)
    if perf.kv_capacity_tokens < kv_tokens:
        raise PredictionError(f"{chips} x {device.name} hold {max(perf.kv_capacity_tokens, 0):,} tokens of KV "
                              f"beside {model.name}'s weights, fewer than batch x (context + 1) = {kv_tokens:,}")
    extra: dict[str, Any] = {}
    if draft is None:
        step_s, step_j = perf.decode(batch, float(batch * context), 1)
        tokens = 1.0
    else:
        draft_chips = chips_needed(device, draft, min_kv_tokens=kv_tokens, memory_utilization=memory_utilization)
        if draft_chips is None or draft_chips > chips:
            raise PredictionError(f"draft {draft.name} does not fit the {chips} x {device.name} serving {model.name}")
        draft_perf = InstancePerf(device, draft, draft_chips, memory_utilization=memory_utilization, max_seqs=batch)
        r = speculative_round(perf, draft_perf, batch, context, acceptance, draft_tokens)
        step_s, step_j, tokens = r.round_s, r.dynamic_energy_j, r.tokens_per_round
        extra["speculative"] = {"draft": draft.name, "acceptance": acceptance, "draft_tokens": r.draft_tokens,
                                "tokens_per_round": tokens}
    ttft_s = perf.prefill(context, context * (context + 1) / 2.0, 1)[0]
    joules = perf.idle_power_w * step_s + step_j
    return {
        "device": device.name, "model": model.name, "chips": chips, "batch": batch, "context": context,
        "decode_tokens_per_s": tokens / step_s,
        "ttft_s": ttft_s,
        "joules_per_output_token": joules / (batch * tokens),
        "usd_per_million_output_tokens": perf.price_usd_per_s * step_s / (batch * tokens) * 1e6,
        "kv_capacity_tokens": perf.kv_capacity_tokens,
        **extra,
    }


def listing(models: dict[str, ModelSpec], devices: dict[str, DeviceSpec] | None = None) -> dict[str, Any]:
    """Models with total and active parameters, KV bytes per token and the smallest instance per device."""
    devices = DEVICES if devices is None else devices
    out: dict[str, Any] = {"devices": {}, "models": {}, "instance_kv_tokens": LISTING_KV_TOKENS}
    for name, d in devices.items():
        out["devices"][name] = {"kind": d.kind, "memory_gb": d.memory_bytes / 1e9,
                                "memory_bw_tb_s": d.memory_bw_bytes_s / 1e12, "bf16_tflops": d.bf16_flops / 1e12,
                                "price_usd_per_hour": d.price_usd_per_hour,
                                "max_chips_per_instance": d.max_chips_per_instance}
    for name, m in models.items():
        out["models"][name] = {
            "params_b": m.params / 1e9, "active_params_b": m.active_params / 1e9, "layers": m.layers,
            "hidden": m.hidden, "weight_gb": m.weight_bytes / 1e9,
            "kv_bytes_per_token": m.kv_bytes_per_token,
            "window_kv_bytes_per_token": m.window_kv_bytes_per_token, "sliding_window": m.sliding_window,
            "experts": m.experts, "experts_per_token": m.experts_per_token,
            "attention": "mla" if m.is_mla else "gqa", "capability": m.capability,
            "smallest_instance_chips": {dn: chips_needed(d, m, min_kv_tokens=LISTING_KV_TOKENS)
                                        for dn, d in devices.items()},
        }
    return out
