"""The policy core: filters -> weighted scorers -> picker, per stage.

`Policy.decide` is a pure function of (request, snapshot, now, rng): no I/O,
no clock. Prefill (or colocated) placement comes first; when the chosen
instance is prefill-only, the same pipeline places decode among decode
instances. Decisions are frozen data, logged and replayable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.types import Decision, Request, Stage


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A composed policy: plugin names and scorer weights (weights are config, not code)."""

    name: str
    filters: tuple[str, ...]
    scorers: tuple[tuple[str, float], ...]
    picker: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    # Optional staging plugin (scheduler/plugins/staging.py): requests served in
    # more than one pass (cascade escalation, advisor). None: one pass.
    staging: str | None = None


class Policy:
    def __init__(self, spec: PolicySpec, filters: list, scorers: list[tuple[Any, float]], picker, staging=None):
        self.spec = spec
        self.name = spec.name
        self.staging = staging
        self._filters = filters
        self._scorers = [(s, w) for s, w in scorers if w != 0.0]
        self._picker = picker

    def _place(self, req: Request, snap: ClusterSnapshot, stage: Stage, now_s: float, rng: np.random.Generator,
               prefill_instance: int) -> tuple[int, str]:
        cands = snap.candidates[stage]
        for f in self._filters:
            if len(cands) == 0:
                break
            keep = f.mask(req, snap, stage, cands, now_s, prefill_instance)
            if keep is not None:
                cands = cands[keep]
                if len(cands) == 0:
                    return -1, f.reason
        if len(cands) == 0:
            return -1, f"no {stage.name.lower()} instances"
        if len(cands) == 1:
            return int(cands[0]), ""
        total = None
        for scorer, weight in self._scorers:
            score = scorer.score(req, snap, stage, cands, now_s, prefill_instance)
            if weight != 1.0:
                score *= weight  # scorers return fresh arrays, so in place is safe
            if total is None:
                total = score
            else:
                total += score
        if total is None:
            total = np.zeros(len(cands))
        return self._picker.pick(req, cands, total, rng), ""

    def decide(self, req: Request, snap: ClusterSnapshot, now_s: float, rng: np.random.Generator) -> Decision:
        prefill, reason = self._place(req, snap, Stage.PREFILL, now_s, rng, -1)
        if prefill < 0:
            return Decision(req.request_id, -1, -1, reason)
        if snap.role[prefill] != 0:  # colocated instance serves both stages
            return Decision(req.request_id, prefill, prefill)
        decode, reason = self._place(req, snap, Stage.DECODE, now_s, rng, prefill)
        if decode < 0:
            return Decision(req.request_id, -1, -1, reason)
        return Decision(req.request_id, prefill, decode)
