"""Pickers choose one candidate from the weighted scores."""
from __future__ import annotations

import numpy as np

from scheduler.types import Request


class Argmax:
    """Highest weighted score; ties go to the lowest instance id (deterministic, no RNG)."""

    name = "argmax"

    def __init__(self, params: dict):
        pass

    def pick(self, req: Request, cands: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> int:
        return int(cands[int(np.argmax(scores))])


class RandomTieBreak:
    """Highest weighted score; ties broken by the seeded RNG so equal instances share load."""

    name = "random-tiebreak"

    def __init__(self, params: dict):
        pass

    def pick(self, req, cands, scores, rng):
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        if len(best) == 1:
            return int(cands[best[0]])
        return int(cands[best[int(rng.integers(len(best)))]])


class RoundRobin:
    """Ignores scores: candidate (request id mod count). Pure: no counter state."""

    name = "round-robin"

    def __init__(self, params: dict):
        pass

    def pick(self, req, cands, scores, rng):
        return int(cands[req.request_id % len(cands)])
