"""Pickers choose one candidate from the weighted scores."""
from __future__ import annotations

from operator import add

import numpy as np

from scheduler.config import SloConfig
from scheduler.framework import NoParams, WithoutParams
from scheduler.types import Request


class Argmax(WithoutParams):
    """Highest weighted score; exact ties are spread over the tied instances.

    Ties are common (equal loads are small integers), and sending each to the
    lowest id would pile work on instance 0. Adding a fixed sub-nanoscale
    jitter that depends only on the request id breaks them evenly and
    deterministically, in one array add: cheaper than finding the tied set and
    drawing from the RNG (about 3 us a draw here).
    """

    name = "argmax"
    _ROWS = 64  # a power of two: the row is request_id & (_ROWS - 1)
    _JITTER = 1e-9  # far below any meaningful score difference (scores live in [0, 1])

    def __init__(self, params: NoParams, slo: SloConfig):
        # Jitter rows per candidate count, built on first use: a dict look-up and an index
        # here cost less than slicing a shared table on every pick. The same rows as lists
        # for `pick_list`.
        self._rows: dict[int, list[np.ndarray]] = {}
        self._row_lists: dict[int, list[list[float]]] = {}

    def _build(self, n: int) -> list[np.ndarray]:
        table = np.random.default_rng(0x5EED).random((self._ROWS, max(n, 64))) * self._JITTER
        rows = self._rows[n] = list(table[:, :n])
        self._row_lists[n] = table[:, :n].tolist()
        return rows

    def pick(self, req: Request, cands: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> int:
        rows = self._rows.get(len(scores)) or self._build(len(scores))
        # `item` returns the Python int straight away (indexing makes a numpy scalar first).
        return cands.item((scores + rows[req.request_id & _ROW_MASK]).argmax())

    def pick_list(self, req: Request, cands: list[int], scores: list[float], rng: np.random.Generator) -> int:
        n = len(scores)
        rows = self._row_lists.get(n)
        if rows is None:
            self._build(n)
            rows = self._row_lists[n]
        total = list(map(add, scores, rows[req.request_id & _ROW_MASK]))
        return cands[total.index(max(total))]  # the first maximum, as argmax


_ROW_MASK = Argmax._ROWS - 1  # a request's jitter row: request_id & _ROW_MASK


class RandomTieBreak(WithoutParams):
    """Highest weighted score; ties broken by the seeded RNG so equal instances share load."""

    name = "random-tiebreak"

    def pick(self, req, cands, scores, rng):
        best = scores.argmax()
        is_top = scores == scores[best]
        ties = np.count_nonzero(is_top)
        if ties == 1:
            return int(cands[best])
        return int(cands[np.flatnonzero(is_top)[int(rng.integers(ties))]])


class RoundRobin(WithoutParams):
    """Ignores scores: candidate (request id mod count). Pure: no counter state."""

    name = "round-robin"

    def pick(self, req, cands, scores, rng):
        return int(cands[req.request_id % len(cands)])
