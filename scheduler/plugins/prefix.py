"""Prefix-aware routing: send a prompt where its prefix is already cached, within a load bound."""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.framework import param
from scheduler.types import Request, Stage


@dataclass(frozen=True, slots=True)
class PrefixAffinityParams:
    prefix_load_slack: float = param(0.25, at_least=0.0, doc="how far above the mean load (a share) affinity may "
                                                             "lift an instance")
    prefix_tier_weight: float = param(0.5, at_least=0.0, at_most=1.0,
                                      doc="worth of a cached token in the instance's kv_tiers (host, SSD) "
                                          "against one in its HBM")
    prefix_store_weight: float = param(0.25, at_least=0.0, at_most=1.0,
                                       doc="worth of a cached token only in the shared kv_store against one in HBM")


class PrefixAffinity:
    """Share of the prompt a candidate's prefix cache already holds, in [0, 1).

    Load-bounded (consistent hashing with bounded loads, Mirrokni et al. 2018):
    a candidate whose sequences (queued plus running) with this request added
    would exceed ceil((1 + slack) * (all candidates' sequences + 1) / n)
    scores 0, so a popular prefix spreads over more instances instead of piling
    onto the first one that cached it: affinity never lifts an instance above
    the mean by more than the slack (plus one request). Scores 0 everywhere for
    the decode stage (its KV arrives by hand-over) and for requests without
    block hashes.

    With tiers below HBM (kv_tiers, kv_store) a token counts by where the
    candidate would find it: 1 in its HBM, `prefix_tier_weight` in its own
    tiers (a load over PCIe), `prefix_store_weight` in the shared store (a load
    over the network, equal for every candidate but for the prefix before it),
    0 to recompute; the prefix is the longest run of blocks found anywhere.
    """

    name = "prefix-affinity"
    Params = PrefixAffinityParams

    def __init__(self, params: PrefixAffinityParams, slo: SloConfig):
        self.load_slack = params.prefix_load_slack
        self.tier_weight = params.prefix_tier_weight
        self.store_weight = params.prefix_store_weight

    def score(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
              prefill_instance: int) -> np.ndarray:
        blocks = req.block_hashes
        index = snap.prefix_index
        if stage == Stage.DECODE or not blocks or index is None:
            return np.zeros(len(cands))
        tiers = snap.prefix_tier_indexes
        store = snap.prefix_store
        # At most inp - 1 tokens come from cache: the last prompt token is always computed.
        inp = float(req.input_tokens)
        if tiers or store is not None:
            cached = self._tiered_tokens(index, blocks, tiers, store, snap, cands, inp)
        else:
            depth = index.cached_blocks(blocks)
            if not depth:
                return np.zeros(len(cands))
            cached = self._tokens(depth, cands, snap.prefix_block_tokens, inp)
        cached /= inp
        # Sequences on each candidate with this request added, against the bounded-loads
        # capacity ceil((1 + slack) * (total + 1) / n).
        seqs = snap.queued_requests[cands] + snap.running[cands]
        capacity = np.ceil((1.0 + self.load_slack) * (seqs.sum() + 1.0) / len(cands))
        seqs += 1.0
        cached[seqs > capacity] = 0.0
        return cached

    def _tiered_tokens(self, index, blocks, tiers: tuple, store, snap: ClusterSnapshot, cands: np.ndarray,
                       inp: float) -> np.ndarray:
        """Weighted cached tokens per candidate: its HBM prefix, then what its own tiers extend
        it by, then what the shared store extends that by (each level's reach a longest run)."""
        depth, local, reach = index.reach_blocks(blocks, tiers, store, snap.all_instances_mask)
        if reach is None:
            reach = local
        if not reach:
            return np.zeros(len(cands))
        bt = snap.prefix_block_tokens
        cap = inp - 1.0
        tier_w = self.tier_weight
        store_w = self.store_weight
        hbm_get, local_get, reach_get = depth.get, local.get, reach.get
        out = []
        for c in cands.tolist():
            h = min(hbm_get(c, 0) * bt, cap)
            t = min(local_get(c, 0) * bt, cap)
            out.append(h + tier_w * (t - h) + store_w * (min(reach_get(c, 0) * bt, cap) - t))
        return np.array(out)

    @staticmethod
    def _tokens(depth: dict, cands: np.ndarray, block_tokens: int, inp: float) -> np.ndarray:
        """Cached prompt tokens per candidate from its leading-block count (`depth`), capped at inp - 1."""
        if not depth:
            return np.zeros(len(cands))
        get = depth.get
        tokens = np.fromiter((get(c, 0) for c in cands.tolist()), dtype=np.float64, count=len(cands))
        tokens *= block_tokens
        return np.minimum(tokens, inp - 1.0, out=tokens)
