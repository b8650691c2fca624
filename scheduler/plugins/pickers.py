"""Pickers choose one candidate from the weighted scores."""
from __future__ import annotations

import numpy as np

from scheduler.types import Request


class Argmax:
    """Highest weighted score. Ties are spread by request id (tied[id mod ties]):
    deterministic, no RNG draw (about 3 us each here), and equal instances
    share load evenly instead of the lowest id taking every tie."""

    name = "argmax"

    def __init__(self, params: dict):
        pass

    def pick(self, req: Request, cands: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> int:
        best = scores.argmax()
        is_top = scores == scores[best]
        # Counting ties first keeps the common no-tie case to three cheap calls.
        ties = np.count_nonzero(is_top)
        if ties == 1:
            return int(cands[best])
        return int(cands[np.flatnonzero(is_top)[req.request_id % ties]])


class RandomTieBreak:
    """Highest weighted score; ties broken by the seeded RNG so equal instances share load."""

    name = "random-tiebreak"

    def __init__(self, params: dict):
        pass

    def pick(self, req, cands, scores, rng):
        best = scores.argmax()
        is_top = scores == scores[best]
        ties = np.count_nonzero(is_top)
        if ties == 1:
            return int(cands[best])
        return int(cands[np.flatnonzero(is_top)[int(rng.integers(ties))]])


class RoundRobin:
    """Ignores scores: candidate (request id mod count). Pure: no counter state."""

    name = "round-robin"

    def __init__(self, params: dict):
        pass

    def pick(self, req, cands, scores, rng):
        return int(cands[req.request_id % len(cands)])
