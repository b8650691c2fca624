"""Staging plugins: a request served in more than one pass (the fourth extension point).

A plain policy places each request once. A staging plugin turns one request
into a sequence of passes, each placed by the same filters, scorers and
picker:

- `first(req, snap)` -> (request to place now, stage tag);
- when a pass finishes, the runtime asks `credit(orig, tag, capability)` for
  the effective capability of the answer that pass delivered, and
  `after(orig, tag, capability, correct, snap, now_s)` for the next pass:
  (request, tag, kind) with kind "escalation" or "advice", or None when the
  answer stands.

`correct` is whether the delivered answer is right (credit >= difficulty).
The runtime knows it in simulation and a verifier estimates it live; the
plugins here model an imperfect verifier themselves (`detect_accuracy`), so
the same code runs in both. Everything is a pure function of its arguments:
noise comes from a seeded hash of the request id, never from a clock or RNG.
"""
from __future__ import annotations

from scheduler.cluster import ClusterSnapshot
from scheduler.plugins.params import number, unit_hash
from scheduler.plugins.tiers import Router
from scheduler.types import Request

ESCALATION = "escalation"
ADVICE = "advice"


class Escalate:
    """Cascade: serve, check the answer, and on a failure the verifier detects re-serve one
    tier higher (paying for both passes), up to `max_attempts` passes.

    The verifier classifies each answer correctly with probability `detect_accuracy`:
    it catches a wrong answer with that probability and, with the complement, flags a
    right one as wrong (a needless escalation). Seeded by `verifier_seed`.
    """

    name = "escalate"

    def __init__(self, params: dict):
        self.detect_accuracy = number(params, "detect_accuracy", 0.9, lo=0.0, hi=1.0)
        self.seed = number(params, "verifier_seed", 1, lo=0, integer=True)
        self.max_attempts = number(params, "max_attempts", 3, lo=1, integer=True)

    def first(self, req: Request, snap: ClusterSnapshot) -> tuple[Request, int]:
        return req, 0

    def credit(self, orig: Request, tag: int, capability: float, snap: ClusterSnapshot) -> float:
        return capability

    def flags(self, request_id: int, attempt: int, correct: bool) -> bool:
        """The verifier's verdict "wrong" on pass `attempt` of a request."""
        verifier_right = unit_hash(request_id * 8 + attempt, self.seed) < self.detect_accuracy
        return (not correct) if verifier_right else correct

    def after(self, orig: Request, tag: int, capability: float, correct: bool, snap: ClusterSnapshot,
              now_s: float) -> tuple[Request, int, str] | None:
        if tag + 1 >= self.max_attempts or not self.flags(orig.request_id, tag, correct):
            return None
        tier = snap.next_tier_above(capability)
        if tier is None:
            return None  # already on the top tier: the answer stands
        req = Request(orig.request_id, orig.input_tokens, orig.output_tokens, now_s,
                      max(orig.min_capability, tier), orig.block_hashes, orig.difficulty)
        return req, tag + 1, ESCALATION


class Advisor:
    """The executor tier (the lowest served) answers; on requests the router judges too hard
    for it, the top tier first reads the context and writes a short plan
    (`advisor_plan_tokens`), which the executor then reads with the prompt. The advice
    lifts the executor's effective capability by `advisor_lift` of the gap to the
    advisor's: c_eff = c_exec + lift * (c_advisor - c_exec).

    Both passes are paid for and timed: the advisor's prefill and plan, then the
    executor's longer prompt and its answer.
    """

    name = "advisor"
    _EXECUTE, _ADVISE, _ADVISED = 0, 1, 2

    def __init__(self, params: dict):
        self.plan_tokens = number(params, "advisor_plan_tokens", 64, lo=1, integer=True)
        self.lift = number(params, "advisor_lift", 0.9, lo=0.0, hi=1.0)
        self.router = Router(params)

    def first(self, req: Request, snap: ClusterSnapshot) -> tuple[Request, int]:
        executor = snap.tiers[0]
        if snap.top_capability <= executor or self.router.judged_able(req, executor):
            return req, self._EXECUTE
        return Request(req.request_id, req.input_tokens, self.plan_tokens, req.arrival_s, snap.top_capability,
                       req.block_hashes, req.difficulty), self._ADVISE

    def credit(self, orig: Request, tag: int, capability: float, snap: ClusterSnapshot) -> float:
        if tag == self._ADVISED:
            return capability + self.lift * max(snap.top_capability - capability, 0.0)
        return capability

    def after(self, orig: Request, tag: int, capability: float, correct: bool, snap: ClusterSnapshot,
              now_s: float) -> tuple[Request, int, str] | None:
        if tag != self._ADVISE:
            return None
        req = Request(orig.request_id, orig.input_tokens + self.plan_tokens, orig.output_tokens, now_s,
                      orig.min_capability, orig.block_hashes, orig.difficulty)
        return req, self._ADVISED, ADVICE
