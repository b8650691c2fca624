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
target's chips and its KV room is not subtracted (drafts are small);
`predict` reports the result, the simulator still decodes one token a step.
"""
from __future__ import annotations

from typing import NamedTuple

from workers.perf import InstancePerf

__all__ = ["MAX_DRAFT_TOKENS", "SpeculativeRound", "expected_tokens", "speculative_round"]

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


def _round(target: InstancePerf, draft: InstancePerf, batch: int, context: int, alpha: float,
           k: int) -> SpeculativeRound:
    ctx_sum = float(batch * context)
    draft_s, draft_j = draft.decode(batch, ctx_sum, k)
    # One pass verifies every sequence's k proposals: its own decode token plus a k-token chunk
    # whose prefix is the sequence's context and that token.
    prefix = context + 1.0
    pairs = batch * (k * prefix + k * (k + 1) / 2.0)
    verify_s, verify_j = target.mixed(batch, ctx_sum, batch * k, pairs, batch * prefix, batch)
    return SpeculativeRound(k, expected_tokens(alpha, k), draft_s + verify_s, draft_j + verify_j)


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
