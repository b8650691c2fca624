"""Plain values that cross the policy boundary: requests in, decisions out.

The policy core never sees protobuf types, Ray handles or simulator objects;
the simulator and the live control plane both convert to these. `Role` lives
in workers/roles.py (the engine needs it) and is re-exported here.

A `Decision` says where a request runs. In explain mode (`Policy.explain`)
it also carries one `Placement` per stage placed: the candidates the filters
left, what each filter removed, each scorer's raw and weighted scores and
the total the picker chose from; scheduler/decision_log.py writes them out.
Multi-pass policies (scheduler/plugins/staging.py) hand the runtime `Pass`
values: what to place next and why, without the runtime knowing the plugin.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

from workers.roles import Role

__all__ = ["Decision", "Pass", "PassKind", "Placement", "Request", "RequestStatus", "Role", "ScorePart", "Stage"]


class Stage(enum.IntEnum):
    """Which stage a policy is placing: prefill (or colocated) first, then decode."""

    PREFILL = 0
    DECODE = 1


class RequestStatus(enum.IntEnum):
    """Terminal (and in-flight) states; every request ends in one of the last three."""

    PENDING = 0
    COMPLETED = 1
    REJECTED = 2
    FAILED = 3


class Request(NamedTuple):
    """One inference request as the policy sees it.

    Request and Decision are immutable named tuples rather than frozen
    dataclasses: one of each is built per request on the simulator's hot path,
    and a frozen dataclass's __init__ (object.__setattr__ per field) costs
    about ten times as much.
    """

    request_id: int
    input_tokens: int
    output_tokens: int  # known in replay; max_tokens when live
    arrival_s: float
    # Minimum model capability the request needs (0 = any model); used by tier filters.
    min_capability: float = 0.0
    # Prefix-cache block hashes of the prompt (Mooncake style), empty when unknown.
    block_hashes: tuple[int, ...] = ()
    # The router's difficulty signal in [0, 1]: a model of capability c answers the
    # request correctly when c >= difficulty. Unlike min_capability it is not a hard
    # floor (no filter rejects on it); tier-routing scorers and staging plugins read it,
    # and may misjudge it on purpose (router accuracy). 0 = unknown / trivially easy.
    difficulty: float = 0.0


class ScorePart(NamedTuple):
    """One scorer's part in one placement, per candidate (explain mode only)."""

    scorer: str
    weight: float
    raw: tuple[float, ...]  # as the scorer returned them
    weighted: tuple[float, ...]  # clamped to [0, 1], times the weight


class Placement(NamedTuple):
    """How one stage was placed (explain mode only)."""

    stage: Stage
    candidates: tuple[int, ...]  # instances left after the filters
    removed: tuple[tuple[str, tuple[int, ...]], ...]  # (filter, instances it removed), in filter order
    scores: tuple[ScorePart, ...]  # empty when one candidate or none was left: nothing to rank
    total: tuple[float, ...]  # sum of the weighted scores per candidate: what the picker ranked
    chosen: int  # -1: no candidate left
    reason: str  # why none was left ('' when one was chosen)


class Decision(NamedTuple):
    """Where a request runs. Instances are global indices into the cluster snapshot.

    Colocated: prefill_instance == decode_instance. Rejected: both are -1 and
    `reject_reason` says why. `placements` is None unless the policy explains.
    """

    request_id: int
    prefill_instance: int
    decode_instance: int
    reject_reason: str = ""
    placements: tuple[Placement, ...] | None = None

    @property
    def rejected(self) -> bool:
        return self.prefill_instance < 0

    @property
    def colocated(self) -> bool:
        return self.prefill_instance >= 0 and self.prefill_instance == self.decode_instance


class PassKind(enum.IntEnum):
    """Why a pass of a multi-pass request runs."""

    FIRST = 0  # the request's first pass (for an advised request: the advisor's plan)
    ESCALATION = 1  # re-served a tier up after the verifier flagged the answer
    ADVICE = 2  # the executor's answer, with the advisor's plan read in with the prompt


class Pass(NamedTuple):
    """One pass of a multi-pass request, as a staging plugin hands it to the runtime."""

    request: Request  # what to place: tokens and capability floor may differ from the original
    tag: int  # the staging plugin's own state for this pass; the runtime hands it back when the pass ends
    kind: PassKind
