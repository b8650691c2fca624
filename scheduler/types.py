"""Plain values that cross the policy boundary: requests in, decisions out.

The policy core never sees protobuf types, Ray handles or simulator objects;
the simulator and the live control plane both convert to these.
"""
from __future__ import annotations

import enum
from typing import NamedTuple


class Role(enum.IntEnum):
    """What an instance does. Stored as a small int in snapshot arrays."""

    PREFILL = 0
    DECODE = 1
    BOTH = 2  # colocated: prefill and decode on the same instance

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}; expected one of prefill, decode, both") from None


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


class Decision(NamedTuple):
    """Where a request runs. Instances are global indices into the cluster snapshot.

    Colocated: prefill_instance == decode_instance. Rejected: both are -1 and
    `reject_reason` says why.
    """

    request_id: int
    prefill_instance: int
    decode_instance: int
    reject_reason: str = ""

    @property
    def rejected(self) -> bool:
        return self.prefill_instance < 0

    @property
    def colocated(self) -> bool:
        return self.prefill_instance >= 0 and self.prefill_instance == self.decode_instance
