"""Speculative decoding priced in the step model: a draft model proposes, the target verifies.

Per round the draft runs `k` decode steps and the target verifies the k
proposals in one pass: a decode step plus a k-token chunk per sequence
(`InstancePerf.mixed`, whose fixed time blends prefill and decode overhead
by token share; the two are equal on wafer and LPU, so only GPUs lean
eager). With acceptance rate `alpha` (the chance the target accepts a
drafted token, independent per token) a round yields
(1 - alpha^(k+1)) / (1 - alpha) tokens per sequence on average (Leviathan,
Kalman and Matias 2023, "Fast Inference from Transformers via Speculative
Decoding", eq. 1). A serving stack tunes k to the hardware, so k defaults to
the one that maximises tokens/s (their section 3.5). The draft shares the
target's chips. `predict` prices one round; `SpeculativePerf` puts the same
rounds into the batching engine (a pool's `speculative:` key): each decode step
of the engine is one token per sequence at the cost of a round over its
expected tokens, so the engine's closed-form segments, finish steps and token
counts stay as they are. Iterations that carry prompt chunks decode one token
per sequence without drafting (the draft computes the chunks too), and the
draft's weights and KV share the instance's memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from workers.devices import DeviceSpec
from workers.models import ModelSpec
from workers.perf import InstancePerf, chips_needed

__all__ = ["MAX_DRAFT_TOKENS", "SpeculativeConfig", "SpeculativePerf", "SpeculativeRound", "expected_tokens",
           "speculative_report", "speculative_round"]

# Largest k `speculative_round` searches; acceptance near 0.95 gains little past it.
MAX_DRAFT_TOKENS = 16


class SpeculativeRound(NamedTuple):
    draft_tokens: int
    tokens_per_round: float  # per sequence
    round_s: float
    dynamic_energy_j: float  # draft steps + verify pass, all sequences


def expected_tokens(alpha: float, draft_tokens: int) -> float:
    """Mean tokens a round yields per sequence: accepted drafts plus the target's own token."""
    if alpha >= 1.0:
        return draft_tokens + 1.0
    return (1.0 - alpha ** (draft_tokens + 1)) / (1.0 - alpha)


def _round_cost(target: InstancePerf, draft: InstancePerf, batch: int, ctx_sum: float, k: int) -> tuple[float, float]:
    """(time_s, dynamic_energy_j) of k draft steps and one verify pass over `batch` sequences
    holding ctx_sum tokens (contexts taken as equal, ctx_sum / batch each)."""
    draft_s, draft_j = draft.decode(batch, ctx_sum, k)
    # One pass verifies every sequence's k proposals: its own decode token plus a k-token chunk
    # whose prefix is the sequence's context and that token.
    prefix = ctx_sum / batch + 1.0
    pairs = batch * (k * prefix + k * (k + 1) / 2.0)
    verify_s, verify_j = target.mixed(batch, ctx_sum, batch * k, pairs, batch * prefix, batch)
    return draft_s + verify_s, draft_j + verify_j


def _round(target: InstancePerf, draft: InstancePerf, batch: int, context: int, alpha: float,
           k: int) -> SpeculativeRound:
    round_s, round_j = _round_cost(target, draft, batch, float(batch * context), k)
    return SpeculativeRound(k, expected_tokens(alpha, k), round_s, round_j)


def speculative_round(target: InstancePerf, draft: InstancePerf, batch: int, context: int, alpha: float,
                      draft_tokens: int | None = None) -> SpeculativeRound:
    """One round at `draft_tokens` proposals, or at the k in 1..MAX_DRAFT_TOKENS with the most tokens/s."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {alpha}")
    if draft_tokens is not None:
        if draft_tokens < 1:
            raise ValueError(f"draft tokens must be >= 1, got {draft_tokens}")
        return _round(target, draft, batch, context, alpha, draft_tokens)
    rounds = [_round(target, draft, batch, context, alpha, k) for k in range(1, MAX_DRAFT_TOKENS + 1)]
    return max(rounds, key=lambda r: r.tokens_per_round / r.round_s)


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """A pool's `speculative:` key: the draft model, proposals per round, acceptance rate."""

    draft_model: str
    draft_tokens: int
    acceptance: float

    def __post_init__(self) -> None:
        if not 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {self.draft_tokens!r}")
        if not 0.0 <= self.acceptance <= 1.0:
            raise ValueError(f"acceptance must be in [0, 1], got {self.acceptance!r}")

    @property
    def tokens_per_round(self) -> float:
        return expected_tokens(self.acceptance, self.draft_tokens)


def speculative_report(config: SpeculativeConfig | None) -> dict | None:
    """A pool's `speculative` field in summaries: its key's values and the expected tokens per round."""
    if config is None:
        return None
    return {"draft_model": config.draft_model, "draft_tokens": config.draft_tokens, "acceptance": config.acceptance,
            "tokens_per_round": config.tokens_per_round}


class SpeculativePerf(InstancePerf):
    """An instance that decodes speculatively: `InstancePerf` whose decode step is a round's cost
    per expected token. A segment's per-token time and energy are taken as lines in the step
    index through its first two steps (exact while one of compute and memory is the larger over
    the segment), so decode and decode_steps_within stay O(1) and agree with each other."""

    __slots__ = ("draft", "speculative", "_plain", "_per_token")

    def __init__(self, device: DeviceSpec, model: ModelSpec, draft: ModelSpec, speculative: SpeculativeConfig,
                 chips: int = 1, price_usd_per_hour: float | None = None, memory_utilization: float = 0.9,
                 max_seqs: int = 256) -> None:
        if draft.vocab != model.vocab:
            raise ValueError(f"draft {draft.name} has a vocabulary of {draft.vocab:,} tokens, {model.name} of "
                             f"{model.vocab:,}: a draft must share the target's tokenizer")
        super().__init__(device, model, chips, price_usd_per_hour, memory_utilization, max_seqs)
        # The draft runs on the fewest of the instance's chips that hold it, as `predict` places it.
        draft_chips = chips_needed(device, draft, memory_utilization=memory_utilization, max_seqs=max_seqs)
        if draft_chips is None or draft_chips > chips:
            raise ValueError(f"draft {draft.name} does not fit the {chips} x {device.name} serving {model.name}")
        self.draft = InstancePerf(device, draft, draft_chips, memory_utilization=memory_utilization,
                                  max_seqs=max_seqs)
        # The target alone, one token a step: what verify passes, prefills and chunks cost it.
        self._plain = InstancePerf(device, model, chips, price_usd_per_hour, memory_utilization, max_seqs)
        self.speculative = speculative
        self._per_token = 1.0 / speculative.tokens_per_round
        # The draft's weights come out of the KV room, and every cached token holds both models' KV.
        room = self.kv_capacity_tokens * self.kv_bytes_per_token - draft.weight_bytes
        per_token = self.kv_bytes_per_token + self.draft.kv_bytes_per_token
        self.kv_capacity_tokens = int(room / per_token) if room > 0 else 0
        self.fits = self.kv_capacity_tokens > 0

    def _token_cost(self, batch: int, ctx_sum: float) -> tuple[float, float]:
        t, e = _round_cost(self._plain, self.draft, batch, ctx_sum, self.speculative.draft_tokens)
        return t * self._per_token, e * self._per_token

    def _lines(self, batch: int, ctx_sum0: float) -> tuple[float, float, float, float]:
        t0, e0 = self._token_cost(batch, ctx_sum0)
        t1, e1 = self._token_cost(batch, ctx_sum0 + batch)
        return t0, t1 - t0, e0, e1 - e0

    def decode_step_s(self, batch: int, ctx_sum: float) -> float:
        return self._token_cost(batch, ctx_sum)[0]

    def decode(self, batch: int, ctx_sum0: float, steps: int) -> tuple[float, float]:
        if steps <= 0:
            return 0.0, 0.0
        t0, ts, e0, es = self._lines(batch, ctx_sum0)
        pairs = steps * (steps - 1) * 0.5
        return steps * t0 + ts * pairs, steps * e0 + es * pairs

    def decode_steps_within(self, batch: int, ctx_sum0: float, time_s: float) -> int:
        if not math.isfinite(time_s):
            raise ValueError(f"decode_steps_within needs a finite time, got {time_s!r}")
        t0, ts, _, _ = self._lines(batch, ctx_sum0)
        if time_s < t0:
            return 0
        # steps*t0 + ts*steps*(steps-1)/2 <= time_s, solved for steps, then settled exactly.
        if ts > 0.0:
            b = t0 - 0.5 * ts
            k = int((-b + math.sqrt(b * b + 2.0 * ts * time_s)) / ts)
        else:
            k = int(time_s / t0)
        while k > 0 and k * t0 + ts * k * (k - 1) * 0.5 > time_s:
            k -= 1
        while (k + 1) * t0 + ts * (k + 1) * k * 0.5 <= time_s:
            k += 1
        return k

    def prefill(self, tokens: int, attn_pairs: float, seqs: int) -> tuple[float, float]:
        t, e = self._plain.prefill(tokens, attn_pairs, seqs)
        dt, de = self.draft.prefill(tokens, attn_pairs, seqs)
        return t + dt, e + de

    def mixed(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float, seqs: int,
              steps: int = 1) -> tuple[float, float]:
        if tokens <= 0:
            return self.decode(batch, ctx_sum0, steps)
        t, e = self._plain.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, seqs, steps)
        dt, de = self.draft.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, seqs, steps)
        return t + dt, e + de

    def mixed_steps_within(self, batch: int, ctx_sum0: float, tokens: int, pairs: float, prefix_tokens: float,
                           time_s: float) -> int:
        if tokens <= 0:
            return self.decode_steps_within(batch, ctx_sum0, time_s)
        if not math.isfinite(time_s):
            raise ValueError(f"mixed_steps_within needs a finite time, got {time_s!r}")
        # Both models' runs are increasing in the step count: bracket, then bisect (O(log k) calls).
        def within(k: int) -> bool:
            return self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k)[0] <= time_s

        if not within(1):
            return 0
        hi = 2
        while within(hi):
            hi *= 2
        lo = hi // 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if within(mid) else (lo, mid)
        return lo
