"""The live core's state per instance (`Slot`) and per request in flight (`Flight`),
and where a request's results go (`RequestSink`). Plain slotted records: the core
(scheduler/live/core.py) owns every change to them."""
from __future__ import annotations

import math
from typing import Protocol

from scheduler.live.stats import Usage
from scheduler.live.types import GenerateInput, RequestOutcome, TokenEvent
from scheduler.reasons import Reason
from scheduler.types import RequestStatus
from workers.clock import Timer
from workers.report import WorkerState


class RequestSink(Protocol):
    """Where one request's results go: token events, then exactly one outcome."""

    def tokens(self, event: TokenEvent) -> None: ...

    def finish(self, outcome: RequestOutcome) -> None: ...


class Slot:
    """The core's view of one instance's worker."""

    __slots__ = ("instance", "pool", "worker_id", "address", "state", "usage", "retired", "restarts", "stages",
                 "drained")

    def __init__(self, instance: int, pool):
        self.instance = instance
        self.pool = pool
        self.worker_id = ""
        self.address = ""
        self.state = WorkerState.STARTING
        self.usage = Usage()
        self.retired = Usage()  # earlier incarnations of this instance
        self.restarts = 0
        self.stages: dict[str, Flight] = {}  # stages in flight here, by attempt key
        self.drained = False  # by an operator: out of the candidate sets until undrained


class Flight:
    """One accepted request while it is in flight."""

    __slots__ = ("key", "seq", "inp", "out", "min_cap", "hashes", "ttft_slo_s", "tpot_slo_s", "arrival_s",
                 "wall0", "sink", "status", "reason", "retries", "attempt", "awaiting", "sent", "prefill_instance",
                 "decode_instance", "prefill_start_s", "prefill_end_s", "kv_transfer_end_s", "first_token_s",
                 "finish_s", "energy_j", "cost_usd", "akey", "at", "stage", "decodes", "t_dispatch", "timer",
                 "payload", "difficulty", "code", "size_bytes", "moved", "judged", "ready_s")

    def __init__(self, key: str, seq: int, inp: GenerateInput, min_cap: float, arrival_s: float, wall0: float,
                 sink: RequestSink):
        self.key = key
        self.seq = seq
        self.inp = inp.prompt_tokens
        self.out = inp.max_output_tokens
        self.min_cap = min_cap
        self.hashes = inp.prefix_block_hashes
        self.difficulty = inp.difficulty
        self.payload = inp.payload
        self.ttft_slo_s = inp.ttft_slo_s
        self.tpot_slo_s = inp.tpot_slo_s
        self.arrival_s = arrival_s
        self.wall0 = wall0
        self.sink = sink
        self.status = RequestStatus.PENDING
        self.reason = ""
        self.code = Reason.UNSPECIFIED
        self.size_bytes = inp.size_bytes
        self.retries = 0
        self.moved = 0  # retries after its worker died (not charged to max_retries)
        # A router's judgement (scheduler/live/judges.py): asked for; and the modelled time its
        # answer is out, before which the request is not placed.
        self.judged = False
        self.ready_s = 0.0
        self.attempt = 0
        self.awaiting = True  # counts against the queue bound until its first token
        self.sent = 0  # output tokens already streamed to the client
        self.prefill_instance = -1
        self.decode_instance = -1
        self.prefill_start_s: float | None = None
        self.prefill_end_s: float | None = None
        self.kv_transfer_end_s: float | None = None
        self.first_token_s: float | None = None
        self.finish_s = math.nan
        self.energy_j = 0.0
        self.cost_usd = 0.0
        # The stage in flight: its attempt key, instance, whether it decodes, when it
        # was dispatched; and its deadline (or, between attempts, the retry's) timer.
        self.akey = ""
        self.at = -1
        self.stage = "prefill"
        self.decodes = False
        self.t_dispatch = 0.0
        self.timer: Timer | None = None
