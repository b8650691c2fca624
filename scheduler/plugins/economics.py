"""Cost- and energy-aware scoring: the cheapest (lowest-energy) placement that meets the SLO.

A request's predicted dollars on an instance are the seconds it occupies the
instance times the instance's price; its predicted joules are the same seconds
times the instance's average power while busy (idle plus dynamic, as the
engine attributes energy). Occupied seconds = its own prefill plus its share
of every decode step (predicted step time / sequences in the batch) over its
output tokens, the batch counted as at least the reference batch (32, or
max_batch when smaller) since an idle instance's solo batch is transient under
load. Prefill-only instances add the decode part at the cheapest
same-model decode pool (static, at a reference batch), so colocated and
disaggregated placements compare on the whole request.

Score: candidates predicted to meet both SLOs score 0.5 + 0.5 * best / value
(the cheapest scores 1); the others score below 0.5, by predicted TTFT
against its SLO, so a placement that meets the SLO always wins and, when none
does, the fastest does.
"""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.framework import param
from scheduler.types import Request, Role, Stage

_PREFILL_ONLY = int(Role.PREFILL)
# Shared with local-first (scheduler/plugins/tiers.py); the registry checks they agree.
SLO_HEADROOM_DOC = "share of the SLO predictions aim at (queueing makes them optimistic under load)"

_EPS = 1e-12  # owned edge devices cost $0 per hour; keeps best / value finite


def predict(req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
            ttft_slo_s: float, tpot_slo_s: float):
    """(prefill_s, decode_share_s per output token, meets-SLO mask, TTFT) on each candidate.
    For the decode stage, prefill_s and TTFT are None."""
    step = snap.predicted_tpot_s(cands, req.input_tokens + req.output_tokens)
    share = snap.running[cands]
    share += 1.0
    np.maximum(share, snap.ref_batch[cands], out=share)
    np.divide(step, share, out=share)
    if stage == Stage.DECODE:
        meets = step <= tpot_slo_s
        meets &= snap.load[cands] < 1.0
        return None, share, meets, None
    prefill = snap.predicted_prefill_s(cands, req.input_tokens)
    ttft = snap.predicted_wait_s(cands, now_s)
    ttft += prefill
    meets = ttft <= ttft_slo_s
    # The wait predictor counts queued prefill, not a wait for a free decode slot: an
    # instance whose batch slots are all taken or promised (load >= 1) is not predicted
    # to meet a TTFT SLO, however short its prefill queue.
    meets &= snap.load[cands] < 1.0
    # A prefill-only candidate's TPOT is decided at the decode stage.
    meets &= (step <= tpot_slo_s) | (snap.role[cands] == _PREFILL_ONLY)
    return prefill, share, meets, ttft


def rank(value: np.ndarray, meets: np.ndarray, ttft: np.ndarray | None, ttft_slo_s: float) -> np.ndarray:
    rel = (value.min() + _EPS) / (value + _EPS)
    if meets.all():
        rel *= 0.5
        rel += 0.5
        return rel
    if ttft is None:
        fallback = np.zeros(len(value))
    else:
        fallback = ttft_slo_s / (ttft_slo_s + ttft) * 0.5
    return np.where(meets, 0.5 + 0.5 * rel, fallback)


@dataclass(frozen=True, slots=True)
class AimedParams:
    slo_headroom: float = param(0.5, at_least=0.01, at_most=1.0, doc=SLO_HEADROOM_DOC)


class _AimedBelowSlo:
    """Scorers that rank placements predicted to meet the SLO, aimed below it."""

    Params = AimedParams

    def __init__(self, params: AimedParams, slo: SloConfig):
        # Aim predictions at a share of the SLO: queueing makes the predictors optimistic
        # under load, and a policy that packs work up to the SLO misses it by that error.
        self.ttft_slo_s = slo.ttft_s * params.slo_headroom
        self.tpot_slo_s = slo.tpot_s * params.slo_headroom


class PredictedCost(_AimedBelowSlo):
    """Lowest predicted dollars for the request among placements that meet the SLO."""

    name = "predicted-cost"

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        prefill, share, meets, ttft = predict(req, snap, stage, cands, now_s, self.ttft_slo_s, self.tpot_slo_s)
        out = float(req.output_tokens)
        share *= out
        if prefill is None:
            value = share
        else:
            share *= snap.colocated[cands]
            share += prefill
            value = snap.partner_decode_usd_per_token[cands] * out
        value_s = share
        value_s *= snap.price_usd_per_s[cands]
        if prefill is not None:
            value_s += value
        return rank(value_s, meets, ttft, self.ttft_slo_s)


class PredictedEnergy(_AimedBelowSlo):
    """Lowest predicted joules for the request among placements that meet the SLO."""

    name = "predicted-energy"

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        prefill, share, meets, ttft = predict(req, snap, stage, cands, now_s, self.ttft_slo_s, self.tpot_slo_s)
        out = float(req.output_tokens)
        share *= out
        share *= snap.decode_power_w[cands]
        if prefill is not None:
            share *= snap.colocated[cands]
            prefill *= snap.prefill_power_w[cands]
            share += prefill
            share += snap.partner_decode_j_per_token[cands] * out
        return rank(share, meets, ttft, self.ttft_slo_s)
