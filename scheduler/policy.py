"""The policy core: filters -> weighted scorers -> picker, per stage.

`Policy.decide` is a pure function of (request, snapshot, now, rng): no I/O,
no clock. Prefill (or colocated) placement comes first; when the chosen
instance is prefill-only, the same pipeline places decode among decode
instances. Decisions are frozen data, logged and replayable.

The framework, not the scorers, owns the arithmetic (as in the Kubernetes
scheduler framework): each score is clamped to [0, 1], multiplied by its
weight from the YAML, and summed; the picker sees the sum. With `explain` on,
each Decision also carries the per-stage breakdown (scheduler/types.py
`Placement`); it is off by default because copying it out costs more than
the decision itself, and the simulator makes one decision per request.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import add
from typing import Any

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.framework import Filter, Picker, Scorer, Staging
from scheduler.types import Decision, Placement, Request, Role, ScorePart, Stage

# The clip ufunc itself: np.clip's Python wrapper costs 2.5-3 us a call on a 16-element array
# here, the ufunc ~0.75 us, np.minimum then np.maximum ~1.3 us.
try:
    from numpy._core.umath import clip as _clip  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.26
    from numpy.core.umath import clip as _clip

_BOTH = int(Role.BOTH)
# Enum members as module globals: `Stage.PREFILL` is an attribute look-up through the enum's
# metaclass (~0.1 us on Python 3.11), a global one dictionary look-up.
_PREFILL, _DECODE = Stage.PREFILL, Stage.DECODE
# Up to this many candidates a stage is scored on Python lists when every plugin of the
# policy has a list twin (`score_list`, `pick_list`): a numpy call costs ~0.3-1 us whatever
# its size, list arithmetic ~30-60 ns an element, so lists win on small stages.
SCALAR_MAX_CANDIDATES = 16
# Decision(...) through its generated __new__ costs ~0.4 us; tuple.__new__ with every field
# in order builds the same named tuple in ~0.15 us, once per request on the simulator's path.
_new = tuple.__new__
if Decision._fields != ("request_id", "prefill_instance", "decode_instance", "reject_reason", "placements"):
    raise ImportError("scheduler.policy builds Decision positionally; update Policy.decide for its new fields")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A composed policy: plugin names and scorer weights (weights are config, not code)."""

    name: str
    filters: tuple[str, ...]
    scorers: tuple[tuple[str, float], ...]
    picker: str
    description: str = ""
    params: tuple[tuple[str, Any], ...] = ()
    # Optional staging plugin (scheduler/plugins/staging.py): requests served in
    # more than one pass (cascade escalation, advisor). None: one pass.
    staging: str | None = None


class Policy:
    def __init__(self, spec: PolicySpec, filters: list[Filter], scorers: list[tuple[Scorer, float]], picker: Picker,
                 staging: Staging | None = None):
        self.spec = spec
        self.name = spec.name
        self.staging = staging
        # On: each Decision carries its Placements (what a decision log writes).
        self.explain = False
        self._filters = filters
        # A scorer whose scores are in [0, 1] by construction says so (`bounded = True`), and its
        # clamp is skipped: ~0.75 us a stage, two stages a disaggregated request.
        self._scorers = [(s, float(w), getattr(s, "bounded", False)) for s, w in scorers if w != 0.0]
        self._picker = picker
        self._scalar = hasattr(picker, "pick_list") and all(hasattr(s, "score_list") for s, _, _ in self._scorers)
        # The list path's common shape (slo-aware): one bounded scorer of weight 1, whose scores
        # `_place_scalar` would hand to the picker unchanged; called directly (~0.3 us a stage).
        one = self._scorers[0] if len(self._scorers) == 1 else None
        self._one = one[0] if self._scalar and one is not None and one[1] == 1.0 and one[2] else None
        # Per snapshot (`_bind`): the filters that may drop a candidate at each stage.
        self._snap: ClusterSnapshot | None = None
        self._stage_filters: dict[Stage, list[Filter]] = {}
        # Per stage, (candidate array, the same as a list) for the list path when no filter removed
        # one; the live core replaces a stage's array as instances come and go.
        self._stage_lists: dict[Stage, tuple[np.ndarray, list[int]]] = {}
        # Judgements a multi-pass policy pays for (scheduler/plugins/overhead.py): a router's
        # before the first pass, a verifier's after each pass.
        self._first_overheads = [p.first_overhead for p in [s for s, _ in scorers] + [staging]
                                 if hasattr(p, "first_overhead")]

    @property
    def judges_first(self) -> bool:
        """Whether a plugin judges each request before its first pass (a router)."""
        return bool(self._first_overheads)

    def first_overheads(self, req: Request) -> list:
        """The judgements made before a request's first pass (routers), each an Overhead."""
        return [o for o in (f(req) for f in self._first_overheads) if o is not None]

    def _bind(self, snap: ClusterSnapshot) -> None:
        """Once per snapshot: drop from each stage the filters that declare, from the snapshot's
        static columns, that they pass every candidate of it (`passes_stage`)."""
        self._snap = snap
        self._stage_filters = {
            stage: [f for f in self._filters if not (hasattr(f, "passes_stage") and f.passes_stage(snap, stage))]
            for stage in (_PREFILL, _DECODE)}
        self._stage_lists = {}

    def _place(self, req: Request, snap: ClusterSnapshot, stage: Stage, now_s: float, rng: np.random.Generator,
               prefill_instance: int, explained: list | None) -> tuple[int, str]:
        cands = snap.candidates[stage]
        whole = True  # every candidate of the stage
        if snap.own_device is not None and stage == _PREFILL:
            cands = snap.own_device_candidates(req.request_id)
            whole = False
        n = len(cands)
        reason = ""
        removed = [] if explained is not None else None
        if n:
            for f in self._stage_filters[stage]:
                keep = f.mask(req, snap, stage, cands, now_s, prefill_instance)
                if keep is not None:
                    if removed is not None and not keep.all():
                        removed.append((f.name, tuple(cands[~keep].tolist())))
                    cands = cands[keep]
                    whole = False
                    n = len(cands)
                    if not n:
                        reason = f.reason
                        break
        chosen = -1
        total = None
        parts = [] if explained is not None else None
        if not n:
            reason = reason or f"no {stage.name.lower()} instances"
        elif n == 1:
            chosen = int(cands[0])
        elif parts is None and self._scalar and n <= SCALAR_MAX_CANDIDATES:
            if whole:
                listed = self._stage_lists.get(stage)
                if listed is None or listed[0] is not cands:
                    listed = self._stage_lists[stage] = (cands, cands.tolist())
                cand_list = listed[1]
            else:
                cand_list = cands.tolist()
            if self._one is not None:  # one bounded scorer of weight 1: its scores are the total
                chosen = self._picker.pick_list(
                    req, cand_list, self._one.score_list(req, snap, stage, cand_list, now_s, prefill_instance), rng)
            else:
                chosen = self._place_scalar(req, snap, stage, cand_list, now_s, rng, prefill_instance)
        else:
            for scorer, weight, bounded in self._scorers:
                score = scorer.score(req, snap, stage, cands, now_s, prefill_instance)
                raw = score.tolist() if parts is not None else None
                if not bounded:
                    _clip(score, 0.0, 1.0, out=score)  # scorers return fresh arrays, so in place is safe
                if weight != 1.0:
                    score *= weight
                if parts is not None:
                    parts.append(ScorePart(scorer.name, weight, tuple(raw), tuple(score.tolist())))
                if total is None:
                    total = score
                else:
                    total += score
            if total is None:
                total = np.zeros(n)
            chosen = self._picker.pick(req, cands, total, rng)
        if explained is not None:
            explained.append(Placement(stage, tuple(cands.tolist()), tuple(removed), tuple(parts),
                                       tuple(total.tolist()) if total is not None else (), chosen, reason))
        return chosen, reason

    def _place_scalar(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: list[int], now_s: float,
                      rng: np.random.Generator, prefill_instance: int) -> int:
        """The weighted sum and the pick on lists: the array path's operations on the same
        doubles in the same order, so the same choice for finite scores."""
        total = None
        for scorer, weight, bounded in self._scorers:
            score = scorer.score_list(req, snap, stage, cands, now_s, prefill_instance)
            if not bounded:  # np.clip: max(x, 0) then min(., 1), NaN passing through
                score = [(x if x < 1.0 else 1.0) if x > 0.0 else (0.0 if x == x else x) for x in score]
            if weight != 1.0:
                score = [x * weight for x in score]
            total = score if total is None else list(map(add, total, score))
        if total is None:
            total = [0.0] * len(cands)
        return self._picker.pick_list(req, cands, total, rng)

    def decide(self, req: Request, snap: ClusterSnapshot, now_s: float, rng: np.random.Generator) -> Decision:
        if snap is not self._snap:
            self._bind(snap)
        explained = [] if self.explain else None
        prefill, reason = self._place(req, snap, _PREFILL, now_s, rng, -1, explained)
        if prefill < 0:
            decode = -1
        elif snap.role[prefill] == _BOTH:  # colocated instance serves both stages
            decode = prefill
        else:
            decode, reason = self._place(req, snap, _DECODE, now_s, rng, prefill, explained)
            if decode < 0:
                prefill = -1
        return _new(Decision, (req.request_id, prefill, decode, reason,
                               tuple(explained) if explained is not None else None))
