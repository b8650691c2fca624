"""Online estimates of one engine instance's speed, learned from its own streams.

Where a pool names no device or model, the perf model cannot predict latency;
a latency scorer can use these instead: an exponentially weighted moving
average (EWMA) of the prefill rate (prompt tokens / TTFT) and of the decode
time per token (TPOT). TTFT as the client sees it includes the network and any
queueing inside the engine, so the prefill rate is the effective one a new
request gets, which is what a router needs to predict. EWMA rather than a
window: O(1) per sample, and recent samples weigh most, so the estimate
follows load changes (alpha = 0.2 weighs the last ~5 requests most).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineEstimates:
    prefill_tokens_per_s: float | None  # None until a request has streamed a token
    decode_s_per_token: float | None  # None until a request has streamed two tokens
    prefill_samples: int
    decode_samples: int

    def predict_ttft_s(self, prompt_tokens: int) -> float | None:
        if not self.prefill_tokens_per_s:
            return None
        return prompt_tokens / self.prefill_tokens_per_s

    def predict_decode_s(self, output_tokens: int) -> float | None:
        """Time from the first output token to the last."""
        if self.decode_s_per_token is None:
            return None
        return max(0, output_tokens - 1) * self.decode_s_per_token


class Ewma:
    """Exponentially weighted moving average; the first sample is the start value."""

    __slots__ = ("alpha", "value", "samples")

    def __init__(self, alpha: float):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"EWMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None
        self.samples = 0

    def add(self, sample: float) -> float:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)
        self.samples += 1
        return self.value


class LatencyEstimator:
    """EWMA prefill rate and decode time per token of one engine instance."""

    __slots__ = ("_prefill_rate", "_decode")

    def __init__(self, alpha: float = 0.2):
        self._prefill_rate = Ewma(alpha)
        self._decode = Ewma(alpha)

    def add_prefill(self, prompt_tokens: int, ttft_s: float) -> None:
        if prompt_tokens > 0 and ttft_s > 0:
            self._prefill_rate.add(prompt_tokens / ttft_s)

    def add_decode(self, tpot_s: float) -> None:
        if tpot_s > 0:
            self._decode.add(tpot_s)

    def snapshot(self) -> EngineEstimates:
        return EngineEstimates(self._prefill_rate.value, self._decode.value,
                               self._prefill_rate.samples, self._decode.samples)
