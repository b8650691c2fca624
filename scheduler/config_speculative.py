"""A pool's `speculative:` key: speculative decoding on emulated pools (workers/speculative.py).

    speculative: {draft_model: llama-3.2-1b, draft_tokens: 4, acceptance: 0.8}

All three keys are required: the draft (a catalogue model or spec file sharing
the pool model's tokenizer), the tokens it proposes per round (1..16) and the
chance the pool's model accepts each one. Prefill pools decode nothing, so the
key is refused there; openai pools run real engines that configure their own.
Whether the draft exists, shares the vocabulary and fits beside the model is
checked when the cluster is built (scheduler/cluster.py), where models load.
"""
from __future__ import annotations

from typing import Any

from scheduler.types import Role
from scheduler.validation import Fields
from workers.speculative import MAX_DRAFT_TOKENS, SpeculativeConfig

__all__ = ["SPECULATIVE_KEYS", "parse_speculative"]

SPECULATIVE_KEYS = frozenset({"draft_model", "draft_tokens", "acceptance"})


def parse_speculative(v: Fields, where: str, raw: Any, role: Role) -> SpeculativeConfig:
    raw = v.mapping(where, raw, "a mapping with draft_model, draft_tokens and acceptance")
    v.known_keys(where + ".", raw, SPECULATIVE_KEYS)
    if role == Role.PREFILL:
        raise v.fail(where, "a prefill pool decodes nothing; set it on the decode or colocated pools")
    for required in sorted(SPECULATIVE_KEYS):
        if required not in raw:
            raise v.fail(f"{where}.{required}", "missing")
    return SpeculativeConfig(
        draft_model=v.string(f"{where}.draft_model", raw["draft_model"]),
        draft_tokens=v.number(f"{where}.draft_tokens", raw["draft_tokens"], integer=True, at_least=1,
                              at_most=MAX_DRAFT_TOKENS),
        acceptance=v.number(f"{where}.acceptance", raw["acceptance"], at_least=0, at_most=1))
