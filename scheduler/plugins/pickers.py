"""Pickers choose one candidate from the weighted scores."""
from __future__ import annotations

import numpy as np

from scheduler.types import Request


class Argmax:
    """Highest weighted score; exact ties are spread over the tied instances.

    Ties are common (equal loads are small integers), and sending each to the
    lowest id would pile work on instance 0. Adding a fixed sub-nanoscale
    jitter that depends only on the request id breaks them evenly and
    deterministically, in one array add: cheaper than finding the tied set and
    drawing from the RNG (about 3 us a draw here).
    """

    name = "argmax"
    _ROWS = 64
    _JITTER = 1e-9  # far below any meaningful score difference (scores live in [0, 1])

    def __init__(self, params: dict):
        self._table = np.empty((self._ROWS, 0))

    def _jitter(self, row: int, n: int) -> np.ndarray:
        if self._table.shape[1] < n:
            rng = np.random.default_rng(0x5EED)
            self._table = rng.random((self._ROWS, max(n, 64))) * self._JITTER
        return self._table[row, :n]

    def pick(self, req: Request, cands: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> int:
        scores = scores + self._jitter(req.request_id % self._ROWS, len(scores))
        return int(cands[scores.argmax()])


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
