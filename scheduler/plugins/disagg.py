"""Conditional disaggregation: hand a prompt to a prefill-only instance only when it pays.

On a colocated instance a prefill iteration stalls every running decode
sequence for its whole duration (prefill-first scheduling), so a prompt whose
prefill takes longer than the TPOT SLO pushes the batch's time per output
token past it; disaggregation removes the stall at the price of a KV
hand-over (prompt tokens x KV bytes per token over the link) and a second
queue. It pays:

- for long prompts: predicted prefill on the colocated candidates longer than
  `disagg_stall_factor` x the TPOT SLO (or, when given,
  `disagg_min_prompt_tokens` or more tokens);
- under prefill load: every colocated candidate has at least
  `disagg_min_wait_s` of queued prefill ahead (default a quarter of the TTFT SLO);

and not when the prefill-only instances are the ones backed up (at least
`disagg_min_wait_s` queued, more than the least-queued colocated instance).

Scores: 1 for the preferred kind of candidate (prefill-only when it pays,
colocated otherwise), 0 for the other; weight a latency or load scorer below
1 to spread within the kind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.config import SloConfig
from scheduler.framework import param
from scheduler.types import Role, Stage

_BOTH = int(Role.BOTH)


@dataclass(frozen=True, slots=True)
class ConditionalDisaggParams:
    disagg_stall_factor: float = param(1.0, at_least=0.0, doc="stall budget as a multiple of the TPOT SLO")
    disagg_min_prompt_tokens: int | None = param(None, at_least=0, doc="disaggregate prompts this long "
                                                                       "(default: by predicted stall)")
    disagg_min_wait_s: float | None = param(None, at_least=0.0, doc="prefill backlog that makes disaggregation "
                                                                    "pay (default: a quarter of the TTFT SLO)")


class ConditionalDisagg:
    name = "conditional-disagg"
    Params = ConditionalDisaggParams

    def __init__(self, params: ConditionalDisaggParams, slo: SloConfig):
        self.stall_budget_s = params.disagg_stall_factor * slo.tpot_s
        self.min_prompt_tokens = params.disagg_min_prompt_tokens
        self.min_wait_s = 0.25 * slo.ttft_s if params.disagg_min_wait_s is None else params.disagg_min_wait_s

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        if stage == Stage.DECODE:
            return np.ones(len(cands))
        coloc = snap.role[cands] == _BOTH
        if not coloc.any() or coloc.all():
            return np.ones(len(cands))
        colocated = cands[coloc]
        if self.min_prompt_tokens is not None:
            disagg = req.input_tokens >= self.min_prompt_tokens
        else:
            disagg = bool(snap.predicted_prefill_s(colocated, req.input_tokens).min() > self.stall_budget_s)
        if not disagg:
            disagg = bool(snap.predicted_wait_s(colocated, now_s).min() >= self.min_wait_s)
        else:
            # ... unless the prefill-only side is the one backed up: then the stall is the cheaper evil.
            split_wait = snap.predicted_wait_s(cands[~coloc], now_s).min()
            if split_wait >= self.min_wait_s:
                disagg = bool(split_wait <= snap.predicted_wait_s(colocated, now_s).min())
        return (~coloc if disagg else coloc).astype(np.float64)
