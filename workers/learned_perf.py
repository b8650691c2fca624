"""The performance model of a real engine with no device configured: learned online.

A pool of OpenAI-API engines (`backend: openai`) without a `device:` has no
catalogue entry to predict its latency from. `LearnedPerf` stands where
`InstancePerf` stands (the snapshot fits its predictors to it, the core's
mirrors and pool statistics read it) with the simplest model that measured
streams can fill: a prefill rate in prompt tokens per second and a decode time
per output token, the EWMAs `workers.engine_estimates` keeps per instance. Until
an instance has streamed a request its pool's priors stand in (PRIOR_*, the
order of a small model on one GPU); the live core then writes each instance's
measured figures into the snapshot (`ClusterSnapshot.set_learned_speed`).

Energy and power are unknown (zero); the price is the pool's
`price_usd_per_hour` (zero when not given). KV capacity is the engine's
context window (`context_tokens`): the engine manages its own cache, so the
scheduler only checks that a request fits one sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

PRIOR_PREFILL_TOKENS_PER_S = 5000.0
PRIOR_DECODE_S_PER_TOKEN = 0.02
LEARNED_DEVICE_KIND = "engine"


@dataclass(frozen=True, slots=True)
class LearnedModel:
    """What the scheduler knows of a model it has no spec for: its served name and the
    engine's context window; its vocabulary is unknown (any int32 token id passes)."""

    name: str
    context_tokens: int
    capability: float | None = None
    vocab: int = 2**31 - 1


@dataclass(frozen=True, slots=True)
class LearnedDevice:
    name: str = ""
    kind: str = LEARNED_DEVICE_KIND


class LearnedPerf:
    """Duck-typed InstancePerf: prefill at a rate, decode at a time per token."""

    __slots__ = ("model", "device", "chips", "kv_capacity_tokens", "fits", "weight_bytes", "price_usd_per_s",
                 "idle_power_w", "peak_power_w", "prefill_tokens_per_s", "decode_s_per_token",
                 "kv_bytes_per_token")

    def __init__(self, model: str, context_tokens: int, price_usd_per_hour: float | None = None,
                 prefill_tokens_per_s: float = PRIOR_PREFILL_TOKENS_PER_S,
                 decode_s_per_token: float = PRIOR_DECODE_S_PER_TOKEN):
        self.model = LearnedModel(model, int(context_tokens))
        self.device = LearnedDevice()
        self.chips = 1
        self.kv_capacity_tokens = int(context_tokens)
        self.fits = True
        self.weight_bytes = 0.0
        self.kv_bytes_per_token = 0.0  # unknown: the engine holds its own KV (no tiers below it here)
        self.price_usd_per_s = (price_usd_per_hour or 0.0) / 3600.0
        self.idle_power_w = 0.0
        self.peak_power_w = 0.0
        self.prefill_tokens_per_s = prefill_tokens_per_s
        self.decode_s_per_token = decode_s_per_token

    def prefill(self, tokens: int, attn_pairs: float, seqs: int) -> tuple[float, float]:
        return tokens / self.prefill_tokens_per_s, 0.0

    def decode_step_s(self, batch: int, ctx_sum: float) -> float:
        return self.decode_s_per_token

    def decode(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        return steps * self.decode_s_per_token, 0.0

    def decode_steps_within(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        return int(time_s / self.decode_s_per_token)

    def power_w(self, time_s: float, dynamic_energy_j: float) -> float:
        return 0.0

    def __repr__(self) -> str:
        return f"LearnedPerf({self.model.name!r}, context {self.kv_capacity_tokens} tokens)"
