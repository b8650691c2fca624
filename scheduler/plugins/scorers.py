"""Scorers rank the remaining candidates; each returns values in [0, 1] by construction."""
from __future__ import annotations

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.framework import NoParams, WithoutParams
from scheduler.types import Request, Stage

_DECODE = Stage.DECODE  # a global look-up, not the enum metaclass's attribute look-up


class LeastLoaded(WithoutParams):
    """Fewer queued and running sequences per batch slot is better: 1 / (1 + load)."""

    name = "least-loaded"
    bounded = True  # 1 / (1 + load) with load >= 0: the framework's clamp would change nothing

    def score(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
              prefill_instance: int) -> np.ndarray:
        return snap.load_score[cands]  # 1 / (1 + load); a gather returns a fresh array

class PredictedLatency:
    """Predicted TTFT (prefill stage) or TPOT (decode stage) against the SLO:
    1 / (1 + predicted / slo), so meeting the SLO with room scores above 0.5.

    TTFT = wait for the instance + own prefill (+ KV hand-over for disaggregated
    prefill); TPOT = one decode step with this request added to the batch.
    """

    name = "predicted-latency"
    Params = NoParams
    bounded = True  # slo / (slo + latency) with latency >= 0

    def __init__(self, params: NoParams, slo: SloConfig):
        self.ttft_slo_s = slo.ttft_s
        self.tpot_slo_s = slo.tpot_s

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        if stage == _DECODE:
            slo = self.tpot_slo_s
            latency = snap.predicted_tpot_s(cands, req.input_tokens + req.output_tokens)
        else:
            slo = self.ttft_slo_s
            latency = snap.predicted_ttft_s(cands, stage, now_s, req.input_tokens)
        # 1 / (1 + latency / slo) == slo / (slo + latency)
        latency += slo
        return np.divide(slo, latency, out=latency)

    def score_list(self, req, snap, stage, cands, now_s, prefill_instance):
        # `score`'s arithmetic on lists, in the predictor's pass (one list, not two).
        if stage == _DECODE:
            return snap.predicted_tpot_list(cands, req.input_tokens + req.output_tokens, self.tpot_slo_s)
        return snap.predicted_ttft_list(cands, stage, now_s, req.input_tokens, self.ttft_slo_s)


class KvHeadroom(WithoutParams):
    """Share of the instance's KV memory still free."""

    name = "kv-headroom"

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        return snap.kv_free[cands] / snap.kv_capacity[cands]
