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
    """

    name = "prefix-affinity"
    Params = PrefixAffinityParams

    def __init__(self, params: PrefixAffinityParams, slo: SloConfig):
        self.load_slack = params.prefix_load_slack

    def score(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
              prefill_instance: int) -> np.ndarray:
        blocks = req.block_hashes
        index = snap.prefix_index
        if stage == Stage.DECODE or not blocks or index is None:
            return np.zeros(len(cands))
        depth = index.cached_blocks(blocks)
        if not depth:
            return np.zeros(len(cands))
        get = depth.get
        cached = np.fromiter((get(c, 0) for c in cands.tolist()), dtype=np.float64, count=len(cands))
        cached *= snap.prefix_block_tokens
        # At most inp - 1 tokens come from cache: the last prompt token is always computed.
        inp = float(req.input_tokens)
        np.minimum(cached, inp - 1.0, out=cached)
        cached /= inp
        # Sequences on each candidate with this request added, against the bounded-loads
        # capacity ceil((1 + slack) * (total + 1) / n).
        seqs = snap.queued_requests[cands] + snap.running[cands]
        capacity = np.ceil((1.0 + self.load_slack) * (seqs.sum() + 1.0) / len(cands))
        seqs += 1.0
        cached[seqs > capacity] = 0.0
        return cached
