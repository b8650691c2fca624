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

import numpy as np

from scheduler.plugins.params import number
from scheduler.types import Stage


class ConditionalDisagg:
    name = "conditional-disagg"

    def __init__(self, params: dict):
        tpot = float(params.get("tpot_slo_s", 0.1))
        ttft = float(params.get("ttft_slo_s", 2.0))
        self.stall_budget_s = number(params, "disagg_stall_factor", 1.0, lo=0.0) * tpot
        self.min_prompt_tokens = (number(params, "disagg_min_prompt_tokens", 0, lo=0, integer=True)
                                  if "disagg_min_prompt_tokens" in params else None)
        self.min_wait_s = number(params, "disagg_min_wait_s", 0.25 * ttft, lo=0.0)

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        if stage == Stage.DECODE:
            return np.ones(len(cands))
        coloc = snap.role[cands] == 2
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
