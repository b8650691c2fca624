"""Model-tier routing: the cheapest tier that may do, and edge devices first.

A pool's tier is its model's `capability` (workers/models.py); a request's
`difficulty` is the router's signal of the capability it needs (a model with
capability >= difficulty answers correctly). Routers misjudge: with
`router_accuracy` a < 1, the judgement "this model is capable enough" is
flipped for a share 1 - a of requests, chosen by a seeded hash of the request
id (`router_seed`), so the same seed misjudges the same requests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.framework import WithoutParams, param
from scheduler.plugins.coin import unit_hash
from scheduler.plugins.economics import SLO_HEADROOM_DOC
from scheduler.plugins.overhead import Overhead, RouterCostParams, router_cost
from scheduler.types import Request, Stage


@dataclass(frozen=True, slots=True)
class RouterParams(RouterCostParams):
    router_accuracy: float = param(1.0, at_least=0.0, at_most=1.0, doc="share of requests the router judges right")
    router_seed: int = param(0, at_least=0, doc="seed of which requests it misjudges")


class Router:
    """The router's judgement of whether a model of a given capability can answer a request."""

    def __init__(self, params: RouterParams):
        self.accuracy = params.router_accuracy
        self.seed = params.router_seed
        self.cost = router_cost(params)  # None: judging is free

    def overhead(self, req: Request) -> Overhead | None:
        """The router's inference pass over the prompt (scheduler/plugins/overhead.py)."""
        return self.cost.cost(req.input_tokens) if self.cost is not None else None

    def misjudges(self, request_id: int) -> bool:
        return self.accuracy < 1.0 and unit_hash(request_id, self.seed) >= self.accuracy

    def judged_able(self, req: Request, capability: float) -> bool:
        return (capability >= req.difficulty) != self.misjudges(req.request_id)


class LowestTier(WithoutParams):
    """Keeps only the lowest model tier among the candidates (cascades start cheap; a
    raised `min_capability` on a re-served request moves it up one tier)."""

    name = "lowest-tier"
    reason = "no model tier left"

    def mask(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
             prefill_instance: int) -> np.ndarray | None:
        if stage == Stage.DECODE or len(snap.tiers) == 1:
            return None  # decode follows the prefill's model (same-model)
        cap = snap.capability[cands]
        return cap == cap.min()


@dataclass(frozen=True, slots=True)
class LocalFirstParams(RouterParams):
    slo_headroom: float = param(0.5, at_least=0.01, at_most=1.0, doc=SLO_HEADROOM_DOC)


class LocalFirst:
    """Edge devices first: 1 for an edge candidate when the router judges its model capable
    enough and it is predicted to meet both SLOs; 0 for an edge candidate otherwise; 0.5
    for every cloud candidate. (KV memory is the fits-memory filter's job.)"""

    name = "local-first"
    Params = LocalFirstParams

    def __init__(self, params: LocalFirstParams, slo: SloConfig):
        self.router = Router(params)
        # Aim predictions at a share of the SLO: queueing makes the predictors optimistic
        # under load, and a policy that packs work up to the SLO misses it by that error.
        self.ttft_slo_s = slo.ttft_s * params.slo_headroom
        self.tpot_slo_s = slo.tpot_s * params.slo_headroom
        self._cache = None

    def first_overhead(self, req: Request) -> Overhead | None:
        return self.router.overhead(req)

    def _static(self, snap: ClusterSnapshot, cands: np.ndarray):
        """(edge mask, capabilities, cloud-only score) of a candidate set. The unfiltered prefill
        set (the common case) is computed once per snapshot and reused: three array ops saved
        per decision, and the whole score for requests no edge model can take."""
        full = snap.candidates[Stage.PREFILL]
        if cands is full:
            cached = self._cache
            if cached is None or cached[0] is not snap:
                edge = snap.is_edge[full]
                cached = self._cache = (snap, edge, snap.capability[full], np.where(edge, 0.0, 0.5),
                                        float(snap.capability[full][edge].max()) if edge.any() else -1.0)
            return cached[1:]
        edge = snap.is_edge[cands]
        return edge, snap.capability[cands], np.where(edge, 0.0, 0.5), None

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        if stage == Stage.DECODE or not snap.any_edge:
            return np.full(len(cands), 0.5)
        edge, capability, base, best_edge = self._static(snap, cands)
        flip = self.router.misjudges(req.request_id)
        if best_edge is not None and not flip and req.difficulty > best_edge:
            return base.copy()  # judged beyond every edge model: no array work
        able = capability >= req.difficulty
        if flip:
            able = ~able
        able &= edge
        score = base.copy()
        if able.any():
            ttft = snap.predicted_ttft_s(cands, stage, now_s, req.input_tokens)
            able &= ttft <= self.ttft_slo_s
            able &= snap.load[cands] < 1.0  # a free decode slot (the wait predictor counts only prefill)
            able &= snap.predicted_tpot_s(cands, req.input_tokens + req.output_tokens) <= self.tpot_slo_s
            score[able] = 1.0
        return score
