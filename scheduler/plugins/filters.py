"""Filters drop candidates that cannot serve the request at all."""
from __future__ import annotations

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.framework import WithoutParams
from scheduler.types import Request, Role, Stage

_PREFILL_ONLY = int(Role.PREFILL)
_DECODE = Stage.DECODE  # a global look-up, not the enum metaclass's attribute look-up


class FitsMemory(WithoutParams):
    """The instance's KV capacity can ever hold the request: prompt for a
    prefill-only instance; prompt plus output for decode and colocated ones
    (KV is reserved for the whole output up front, so nothing is preempted)."""

    name = "fits-memory"
    reason = "no instance has KV memory for prompt + output tokens"

    def mask(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
             prefill_instance: int) -> np.ndarray | None:
        need_full = float(req.input_tokens + req.output_tokens)
        if need_full <= snap.min_capacity[stage]:
            return None
        if stage == _DECODE:
            return snap.kv_capacity[cands] >= need_full
        # A prefill-only instance holds the prompt; a colocated one holds everything.
        need = np.where(snap.role[cands] == _PREFILL_ONLY, float(req.input_tokens), need_full)
        return snap.kv_capacity[cands] >= need


class ModelTier(WithoutParams):
    """The pool's model is capable enough for the request's difficulty."""

    name = "model-tier"
    reason = "no pool serves a model capable enough for the request"

    def mask(self, req, snap, stage, cands, now_s, prefill_instance):
        if req.min_capability <= snap.min_capability[stage]:
            return None
        return snap.pool_capability[snap.pool[cands]] >= req.min_capability


class SameModel(WithoutParams):
    """Decode goes where the prefill's KV can be used: a pool serving the same model."""

    name = "same-model"
    reason = "no decode pool serves the prefill pool's model"

    def passes_stage(self, snap: ClusterSnapshot, stage: Stage) -> bool:
        """Prefill, and decode where every pool serves one model, keep every candidate."""
        return stage != _DECODE or snap.single_model

    def mask(self, req, snap, stage, cands, now_s, prefill_instance):
        if stage != _DECODE or snap.single_model:
            return None
        model_id = snap.pool_model_id[snap.pool[prefill_instance]]
        return snap.pool_model_id[snap.pool[cands]] == model_id
