"""Staging plugins: a request served in more than one pass (the fourth extension point).

A plain policy places each request once. A staging plugin turns one request
into a sequence of passes, each placed by the same filters, scorers and
picker:

- `first(req, snap)` -> the first `Pass` (request to place now, tag, kind);
- when a pass finishes, the runtime asks `credit(orig, tag, capability)` for
  the effective capability of the answer that pass delivered, and
  `after(orig, tag, capability, correct, snap, now_s)` for the next `Pass`
  (kind ESCALATION or ADVICE), or None when the answer stands.

`correct` is whether the delivered answer is right (credit >= difficulty).
The runtime knows it in simulation and a verifier estimates it live; the
plugins here model an imperfect verifier themselves (`detect_accuracy`), so
the same code runs in both. Everything is a pure function of its arguments:
noise comes from a seeded hash of the request id, never from a clock or RNG.
"""
from __future__ import annotations

from dataclasses import dataclass

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.framework import param
from scheduler.plugins.coin import unit_hash
from scheduler.plugins.overhead import Overhead, VerifierCostParams, verifier_cost
from scheduler.plugins.tiers import Router, RouterParams
from scheduler.types import Pass, PassKind, Request


# The verifier's default accuracy: GPT-4 as a judge agreed with human experts on 85% of MT-Bench
# judgements without ties (Zheng et al., "Judging LLM-as-a-Judge", NeurIPS 2023, arXiv 2306.05685);
# on hard correctness pairs strong judges fall to 50-65% (JudgeBench, Tan et al., ICLR 2025,
# arXiv 2410.12784). No verifier here is perfect by default.
PUBLISHED_JUDGE_ACCURACY = 0.85
JUDGEBENCH_LOW_ACCURACY = 0.55


@dataclass(frozen=True, slots=True)
class EscalateParams(VerifierCostParams):
    detect_accuracy: float = param(PUBLISHED_JUDGE_ACCURACY, at_least=0.0, at_most=1.0,
                                   doc="share of answers the verifier classifies right (default: GPT-4 judge "
                                       "agreement with experts, MT-Bench)")
    verifier_seed: int = param(1, at_least=0, doc="seed of which answers it misclassifies")
    max_attempts: int = param(3, at_least=1, doc="most passes per request")


@dataclass(frozen=True, slots=True)
class AdvisorParams(RouterParams):
    advisor_plan_tokens: int = param(64, at_least=1, doc="tokens of the advisor's plan")
    advisor_lift: float = param(0.9, at_least=0.0, at_most=1.0, doc="share of the capability gap the plan closes")


class Escalate:
    """Cascade: serve, check the answer, and on a failure the verifier detects re-serve one
    tier higher (paying for both passes), up to `max_attempts` passes.

    The verifier classifies each answer correctly with probability `detect_accuracy`:
    it catches a wrong answer with that probability and, with the complement, flags a
    right one as wrong (a needless escalation). Seeded by `verifier_seed`.
    """

    name = "escalate"
    Params = EscalateParams

    def __init__(self, params: EscalateParams, slo: SloConfig):
        self.detect_accuracy = params.detect_accuracy
        self.seed = params.verifier_seed
        self.max_attempts = params.max_attempts
        self.cost = verifier_cost(params)

    def check_overhead(self, orig: Request, tag: int, capability: float | None = None,
                       snap: ClusterSnapshot | None = None) -> Overhead | None:
        """The verifier's inference pass over the prompt and the answer of pass `tag`; none where its
        verdict could change nothing (the last attempt, or an answer from the top tier, given
        `capability` and `snap`)."""
        if self.cost is None or tag + 1 >= self.max_attempts:
            return None
        if snap is not None and capability is not None and snap.next_tier_above(capability) is None:
            return None
        return self.cost.cost(orig.input_tokens + orig.output_tokens)

    def first(self, req: Request, snap: ClusterSnapshot) -> Pass:
        return Pass(req, 0, PassKind.FIRST)

    def credit(self, orig: Request, tag: int, capability: float, snap: ClusterSnapshot) -> float:
        return capability

    def flags(self, request_id: int, attempt: int, correct: bool) -> bool:
        """The verifier's verdict "wrong" on pass `attempt` of a request."""
        verifier_right = unit_hash(request_id * 8 + attempt, self.seed) < self.detect_accuracy
        return (not correct) if verifier_right else correct

    def after(self, orig: Request, tag: int, capability: float, correct: bool, snap: ClusterSnapshot,
              now_s: float) -> Pass | None:
        if tag + 1 >= self.max_attempts or not self.flags(orig.request_id, tag, correct):
            return None
        tier = snap.next_tier_above(capability)
        if tier is None:
            return None  # already on the top tier: the answer stands
        req = Request(orig.request_id, orig.input_tokens, orig.output_tokens, now_s,
                      max(orig.min_capability, tier), orig.block_hashes, orig.difficulty)
        return Pass(req, tag + 1, PassKind.ESCALATION)


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
    Params = AdvisorParams
    _EXECUTE, _ADVISE, _ADVISED = 0, 1, 2

    def __init__(self, params: AdvisorParams, slo: SloConfig):
        self.plan_tokens = params.advisor_plan_tokens
        self.lift = params.advisor_lift
        self.router = Router(params)

    def first_overhead(self, req: Request) -> Overhead | None:
        return self.router.overhead(req)

    def first(self, req: Request, snap: ClusterSnapshot) -> Pass:
        executor = snap.tiers[0]
        if snap.top_capability <= executor or self.router.judged_able(req, executor):
            return Pass(req, self._EXECUTE, PassKind.FIRST)
        return Pass(Request(req.request_id, req.input_tokens, self.plan_tokens, req.arrival_s, snap.top_capability,
                            req.block_hashes, req.difficulty), self._ADVISE, PassKind.FIRST)

    def credit(self, orig: Request, tag: int, capability: float, snap: ClusterSnapshot) -> float:
        if tag == self._ADVISED:
            return capability + self.lift * max(snap.top_capability - capability, 0.0)
        return capability

    def after(self, orig: Request, tag: int, capability: float, correct: bool, snap: ClusterSnapshot,
              now_s: float) -> Pass | None:
        if tag != self._ADVISE:
            return None
        req = Request(orig.request_id, orig.input_tokens + self.plan_tokens, orig.output_tokens, now_s,
                      orig.min_capability, orig.block_hashes, orig.difficulty)
        return Pass(req, self._ADVISED, PassKind.ADVICE)
