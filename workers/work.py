"""What an emulated worker takes and says back: its errors (each naming the gRPC
status the servicer answers with, so this stays free of gRPC), the outcomes it
reports, and the protocols of its listeners and its KV transport."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from workers.report import WorkerState


# ---- errors: each names the gRPC status the servicer answers with ---------------------------


class WorkerError(Exception):
    status = "INTERNAL"


class InvalidField(WorkerError):
    status = "INVALID_ARGUMENT"


class AlreadyHeld(WorkerError):
    status = "ALREADY_EXISTS"


class NotHeld(WorkerError):
    status = "FAILED_PRECONDITION"


class WrongRole(WorkerError):
    status = "FAILED_PRECONDITION"


class Draining(WorkerError):
    status = "UNAVAILABLE"


class NoCapacity(WorkerError):
    status = "RESOURCE_EXHAUSTED"


class Cancelled(WorkerError):
    status = "CANCELLED"


class PeerFailed(WorkerError):
    """The decode worker of a hand-over failed or refused it."""

    def __init__(self, address: str, detail: str, status: str = "UNAVAILABLE"):
        super().__init__(f"decode worker at {address}: {detail}")
        self.address = address
        self.status = status


# ---- values that leave the worker -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefillOutcome:
    """One prefill's modelled spans on this worker (with its hand-over, if any)."""

    queue_s: float  # admitted -> prefill start
    prefill_s: float
    prefill_tokens: int  # computed here (the rest came from the prefix cache)
    cached_tokens: int
    energy_j: float
    cost_usd: float
    kv_transfer_s: float = 0.0  # end of prefill -> the decode worker's ack
    kv_sent_s: float = 0.0  # end of prefill -> KV complete at the decode worker (link queue + transfer)
    kv_blocks: int = 0
    kv_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DecodeSummary:
    wait_s: float  # KV arrival -> joined the decode batch (0 when colocated)
    decode_s: float  # joined (or first token, colocated) -> last token
    energy_j: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class WorkerStatsView:
    worker_id: str
    pool: str
    instance: int
    state: WorkerState
    now_s: float
    queue_depth: int
    queued_tokens: int
    running: int
    kv_free_tokens: int
    kv_capacity_tokens: int
    busy_until_s: float
    prefill_tokens: int
    decode_tokens: int
    completed: int
    energy_j: float
    cost_usd: float
    busy_s: float
    received: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class HandOver:
    """One request's KV to move to a decode worker over [start_s, done_s] (worker clock)."""

    key: str
    address: str
    prompt_tokens: int
    max_output_tokens: int
    start_s: float
    done_s: float


# ---- who hears what -------------------------------------------------------------------------


class WorkListener(Protocol):
    """Progress of work submitted with `prefill` or `decode`, per request key. A request
    ends with `decoded` (or, for prefill-only work, `prefilled`) or `failed`."""

    def prefilled(self, key: str, outcome: PrefillOutcome) -> None: ...

    def tokens(self, key: str, first: int, count: int, emit_s: float) -> None: ...

    def decoded(self, key: str, summary: DecodeSummary) -> None: ...

    def failed(self, key: str, error: WorkerError) -> None: ...


class KvListener(Protocol):
    """The receiving end of a hand-over: the request joined the decode batch, or not."""

    def joined(self, key: str, joined_s: float) -> None: ...

    def refused(self, key: str, error: WorkerError) -> None: ...


class KvTransport(Protocol):
    """Moves KV to decode workers. It answers later, never from within `send`:
    `worker.handed_over(key, joined_unix_s)` or `worker.hand_over_failed(key, error)`."""

    def send(self, handover: HandOver) -> None: ...

    def abort(self, key: str, address: str) -> None: ...
