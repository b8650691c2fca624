"""The live control plane: the simulator's policy core placing requests on worker actors over gRPC.

Three layers, innermost first:

- `SchedulerCore` (asyncio) runs the SAME policy as the simulator
  (`registry.build_policy` over a `ClusterSnapshot`) and applies each decision
  through workers' `infersched.v1.Worker` service, on one long-lived Session
  stream per worker: a colocated placement is one work item (prefill, then
  decode); apart, the prefill worker gets the prefill with the decode worker's
  address (it hands the KV over itself), then the decode worker the decode.
  Tokens come back as session updates. It keeps the snapshot current from
  worker reports, counts every request, re-dispatches on worker failure
  (bounded), and rejects beyond a queue bound.
- `SchedulerServicer` is the client-facing `infersched.v1.Scheduler` service;
  it converts proto <-> core types in one place. Proto types never reach the
  policy core.
- `SchedulerActor` is an async Ray actor: it hosts the gRPC server (with
  health and reflection) on its own event loop, or in front-end processes
  that relay each call to it (`frontends` > 0; `scheduler.frontend`), owns
  and supervises one `WorkerActor` per pool instance, and serves Prometheus
  metrics.

Clock. The scheduler clock reads modelled seconds since the scheduler started
(wall seconds / time_scale), the same origin and unit as a simulation's
virtual clock, so live records compare with simulated ones field by field.

Costs. In Python gRPC a call costs each side ~0.5 ms of CPU and a message
~0.1 ms, whatever it carries, and most of a request's CPU is there. So a
request costs its Generate call (one message when its tokens arrive together:
they travel with the record), and a share of the session messages: work placed on
one worker within `dispatch_interval_s` goes out in one message, and the
worker sends each batch of progress (updates of several requests, with its
load) in one message.

Record times. A request's arrival is when the client sent it, if it says so
(``infersched-sent-unix`` metadata on Generate, Unix time; `infersched replay`
sends each request's scheduled time) and that is within `worker_slack_s` of
its receipt; otherwise when Generate reached the scheduler. At 20x, loopback
transit of tens of milliseconds would otherwise shift arrivals by modelled
seconds and change the queueing a trace produces.
The scheduler's own work before a stage is dispatched (validation, the
policy, retries and their back-off) is charged at its real wall duration,
unscaled: the scheduler is real code, not emulated hardware, and at
time_scale 0.05 a 0.2 ms decision would otherwise read as 4 ms of "GPU" time.
From the dispatch on, times are the spans the workers report (queue, prefill,
KV hand-over, wait for a decode slot, decode), all modelled device time;
workers admit work at the modelled time it was sent (see workers.live), so
loopback transit is not scaled either. What the emulation itself costs is
measured separately: `control_overhead_s` (wall seconds per completed
request: elapsed wall time minus modelled time x time_scale) and
`scheduling_overhead_s` (wall seconds inside the policy per decision).

Snapshot freshness. The policy reads the same `ClusterSnapshot` columns as in
the simulator, and each instance's row is written the way the simulator's
`_sync` writes it: from an engine. The scheduler keeps a replica of every
worker's `BatchEngine` (same performance model), restored from the engine
state each worker sends with every session message (and with a GetWorkerStats
poll when no message came for `stats_interval_s`; `workers.live` documents
the format). Dispatches that no report includes yet (a report's `received`
count tells which) are replayed into the replica at their modelled send time,
and the replica is advanced to the moment of each decision: the request's
arrival plus the scheduler's own time since. The engine is deterministic, so
the row is what the worker's engine holds at that moment, although reports are
a loopback hop old (tens of modelled milliseconds at time_scale 0.05). On the
Azure 2023 conversation slice of the agreement test, ~99% of requests get the
simulator's placement. A worker whose state cannot be restored (another
engine version) falls back to its reported row plus its pending dispatches.

Queue bound. `max_queue` bounds the requests accepted but not yet past
prefill; beyond it Generate answers RESOURCE_EXHAUSTED (counted as rejected,
reason "queue full"), so memory stays bounded under overload.

Failures. A worker session that breaks, or work that fails with a
transport-level status, marks that instance FAILED (the policy stops seeing
it) and hands it to the supervisor,
which probes it, waits for Ray to restart the actor (which re-registers), or
replaces an actor out of restarts. The request is re-placed by the policy, up
to `max_retries` times, then ends FAILED with the reason. Tokens the client
already received are not sent again.

GetStats also sends the time_scale as trailing metadata (``infersched-time-scale``):
SchedulerStats has no field for it, and `infersched replay` needs it to pace a
trace in modelled time.

Prometheus metrics (prometheus_client, text format at
http://METRICS_HOST:METRICS_PORT/metrics; a registry per scheduler):

    infersched_requests_total{status}             counter: completed, rejected, failed
    infersched_requests_invalid_total             counter: answered INVALID_ARGUMENT
    infersched_requests_in_flight                 gauge
    infersched_decisions_total                    counter: policy decisions (retries included)
    infersched_ttft_seconds                       histogram, modelled seconds
    infersched_tpot_seconds                       histogram, modelled seconds
    infersched_e2e_seconds                        histogram, modelled seconds
    infersched_scheduling_overhead_seconds        histogram, wall seconds in the policy per decision
    infersched_control_overhead_seconds           histogram, wall seconds per completed request
    infersched_energy_joules                      gauge, all pools since start (idle included)
    infersched_cost_usd                           gauge, all pools since start
    infersched_pool_queue_depth{pool}             gauge
    infersched_pool_running{pool}                 gauge
    infersched_pool_utilization_ratio{pool}       gauge
    infersched_pool_kv_free_tokens{pool}          gauge
    infersched_pool_completed_total{pool}         counter
    infersched_workers{state}                     gauge: worker actors by state
    infersched_frontends                          gauge: front-end processes serving (with --frontends)
    infersched_frontend_restarts_total            counter: front ends replaced after dying (with --frontends)
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from sortedcontainers import SortedList

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from scheduler.cluster import Cluster, ClusterSnapshot
from scheduler.config import ClusterConfig, PolicyConfig
from scheduler.frontend import FrontendPool, check_frontends
from scheduler.policy import Policy
from scheduler.types import Request, RequestStatus, Role
from workers.engine import PREFILL, BatchEngine
from workers.live import (
    ENGINE_KEY,
    GRPC_OPTIONS,
    LOAD_KEY,
    SENT_KEY,
    LoadReport,
    restore_engine,
    WorkerSpec,
    resolve_host,
    start_grpc_server,
    worker_actor_class,
)

log = logging.getLogger(__name__)

SCHEDULER_SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
SCHEDULER_ACTOR_NAME = "infersched-scheduler"
# Trailing metadata of GetStats: the scheduler's time_scale (wall seconds per modelled second).
TIME_SCALE_KEY = "infersched-time-scale"
RAY_NAMESPACE = "infersched"

# grpc.StatusCode names by their numeric value (WorkError carries the number).
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# Worker statuses that mean "this attempt failed, another worker may succeed".
_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})


# ---------------------------------------------------------------------------
# Core values (plain data; the servicer converts them to and from protos).


class InvalidRequest(ValueError):
    """A malformed request: answered INVALID_ARGUMENT and counted in requests_invalid."""


class Overloaded(Exception):
    """The queue bound is reached: answered RESOURCE_EXHAUSTED and counted as rejected."""


class DuplicateRequest(Exception):
    """A request id already in flight: answered ALREADY_EXISTS."""


class WorkerState(enum.IntEnum):
    """Mirrors infersched.v1.WorkerState (same numbers)."""

    STARTING = 1
    READY = 2
    DRAINING = 3
    DRAINED = 4
    FAILED = 5


@dataclass(frozen=True, slots=True)
class LiveOptions:
    time_scale: float = 0.01  # modelled seconds * time_scale = wall seconds
    max_queue: int = 4096  # requests accepted but not yet past prefill
    max_retries: int = 2  # re-dispatches after worker failures before FAILED
    retry_backoff_s: float = 0.05  # wall seconds between attempts
    rpc_timeout_s: float = 120.0  # wall seconds, per worker call (per stage of a request)
    # Wall seconds without a report from a worker before its stats are polled. Every
    # session message already carries the worker's load and engine state, so polls
    # only cover quiet stretches.
    stats_interval_s: float = 0.1
    chunk_tokens: int = 16  # tokens per streamed chunk from decode workers
    # Wall seconds worker engines run behind the clock, so dispatches reach them before
    # their modelled send time has passed (see workers.live.EmulatedWorker); decode
    # workers, fed by prefill workers that are themselves this far behind, run twice
    # as far. It also bounds how far back a client's send time (`infersched-sent-unix`)
    # is honoured. Results reach clients this much later in wall time; their modelled
    # times do not change.
    worker_slack_s: float = 0.1
    seed: int = 0  # the policy's RNG, as in the simulator
    latency_window: int = 10_000  # most recent samples behind the percentiles
    # Wall seconds between two messages to one worker: work placed meanwhile goes out
    # together. The first message after a quiet stretch leaves at once. A message costs
    # each side ~0.1 ms of CPU whatever it carries (more when it wakes an idle process);
    # at 500 requests/s on 2 cores, 5 ms instead of 0 cut the scheduler's CPU per
    # request from 1.8-2.1 ms to 1.5-1.8 ms. Requests wait at most this long, in wall
    # time only (workers admit work at the modelled time it was sent).
    dispatch_interval_s: float = 0.005

    def __post_init__(self):
        value = self.dispatch_interval_s
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"dispatch_interval_s must be a non-negative number, got {value!r}")
        for name in ("time_scale", "retry_backoff_s", "rpc_timeout_s", "stats_interval_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("max_queue", "chunk_tokens", "latency_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")


@dataclass(frozen=True, slots=True)
class GenerateInput:
    request_id: str  # "" = the scheduler assigns one
    prompt_tokens: int
    max_output_tokens: int
    model_tier: str = ""
    min_capability: float = 0.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    prefix_block_hashes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    request_id: str
    first_token_index: int
    token_count: int
    emit_s: float
    # The request's last tokens: its RequestOutcome is the next item, at once
    # (the servicer sends both in one message).
    last: bool = False


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """The final record of one request (times on the scheduler clock; None = did not happen)."""

    request_id: str
    status: RequestStatus
    reason: str
    retries: int
    arrival_s: float
    prefill_start_s: float | None
    prefill_end_s: float | None
    kv_transfer_end_s: float | None
    first_token_s: float | None
    finish_s: float
    ttft_s: float | None
    tpot_s: float | None
    prefill_pool: str
    decode_pool: str
    prefill_instance: int
    decode_instance: int
    model: str
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Percentiles:
    samples: int = 0
    p50_s: float = 0.0
    p90_s: float = 0.0
    p99_s: float = 0.0
    mean_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolStatsView:
    name: str
    device: str
    model: str
    role: Role
    instances: int
    chips_per_instance: int
    queue_depth: int
    running: int
    completed: int
    prefill_tokens: int
    decode_tokens: int
    utilization: float
    energy_j: float
    cost_usd: float
    kv_free_tokens: int
    kv_capacity_tokens: int
    token_budget: int = 0  # chunked prefill's tokens per iteration; 0: prefill-first


@dataclass(frozen=True, slots=True)
class SchedulerStatsView:
    policy: str
    cluster: str
    uptime_s: float
    started_unix_s: float
    requests_total: int
    requests_completed: int
    requests_rejected: int
    requests_failed: int
    requests_invalid: int
    in_flight: int
    reasons: dict[str, int]
    decisions_total: int
    scheduling_overhead_s: Percentiles
    ttft_s: Percentiles
    tpot_s: Percentiles
    e2e_s: Percentiles
    slo_attainment: float
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float
    pools: list[PoolStatsView]
    control_overhead_s: Percentiles = Percentiles()
    time_scale: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    instance: int
    pool: str
    device: str
    model: str
    role: Role
    address: str
    state: WorkerState
    queue_depth: int
    running: int
    kv_free_tokens: int
    kv_capacity_tokens: int


class _Window:
    """The last `size` samples of a latency, for percentiles (bounded memory).

    The samples are also kept sorted as they arrive (O(log n) each), so a
    summary is exact, current and costs a few index lookups. Recomputing
    percentiles from the raw window when GetStats asks (a partial sort of
    10,000 samples per window) cost milliseconds on the loop that serves
    Generate, and showed up in GetStats' own tail latency under load."""

    __slots__ = ("ring", "ordered", "n", "total")

    def __init__(self, size: int):
        self.ring = [0.0] * size  # arrival order: the sample that leaves next is at n % size
        self.ordered = SortedList()
        self.n = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        if value != value:  # NaN has no place in an order
            raise ValueError("a latency sample is NaN")
        i = self.n % len(self.ring)
        if self.n >= len(self.ring):
            old = self.ring[i]
            self.ordered.remove(old)
            self.total -= old
        self.ring[i] = value
        self.ordered.add(value)
        self.total += value
        self.n += 1

    def summary(self) -> Percentiles:
        """Percentiles of the window, interpolated linearly between ranks as numpy's default."""
        ordered = self.ordered
        k = len(ordered)
        if k == 0:
            return Percentiles()

        def at(q: float) -> float:
            pos = q * (k - 1)
            low = int(pos)
            below = ordered[low]
            return below + (ordered[min(low + 1, k - 1)] - below) * (pos - low)

        return Percentiles(samples=self.n, p50_s=at(0.5), p90_s=at(0.9), p99_s=at(0.99), mean_s=self.total / k)


@dataclass(slots=True)
class _Usage:
    """A worker incarnation's usage counters (from GetWorkerStats + its load report)."""

    prefill_tokens: int = 0
    decode_tokens: int = 0
    energy_j: float = 0.0
    cost_usd: float = 0.0
    busy_s: float = 0.0
    uptime_s: float = 0.0

    def add(self, other: "_Usage") -> None:
        self.prefill_tokens += other.prefill_tokens
        self.decode_tokens += other.decode_tokens
        self.energy_j += other.energy_j
        self.cost_usd += other.cost_usd
        self.busy_s += other.busy_s
        self.uptime_s += other.uptime_s


class _Slot:
    """The scheduler's view of one instance's worker."""

    __slots__ = ("instance", "pool", "worker_id", "address", "state", "channel", "stub", "session", "sent",
                 "pending", "report", "reported_at", "replica", "replica_ok", "replica_t", "offset", "fake_id", "usage",
                 "retired", "registered", "poll_failures", "restarts")

    def __init__(self, instance: int, pool, replica: BatchEngine):
        self.instance = instance
        self.pool = pool
        self.worker_id = ""
        self.address = ""
        self.state = WorkerState.STARTING
        self.channel: grpc.aio.Channel | None = None
        self.stub: worker_pb2_grpc.WorkerStub | None = None
        self.session: _Session | None = None  # opened on the first dispatch to this incarnation
        self.sent = 0  # prefills dispatched to this incarnation
        # Dispatches no report includes yet: (dispatch number, prompt tokens, output tokens, sent at).
        self.pending: deque = deque()
        self.report: LoadReport | None = None
        self.reported_at = -math.inf  # time.monotonic() when a report last arrived
        # The worker's engine as of its last report, plus the pending dispatches, on the
        # worker clock (worker clock = scheduler clock + offset).
        self.replica = replica
        self.replica_ok = False
        self.replica_t = 0.0
        self.offset = 0.0
        self.fake_id = 0
        self.usage = _Usage()
        self.retired = _Usage()  # earlier incarnations of this instance
        self.registered = asyncio.Event()
        self.poll_failures = 0
        self.restarts = 0


class _WorkerFailure(Exception):
    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class _Inbox:
    """The updates of one request's attempt on one worker, as its session routes them;
    None marks the session's end."""

    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items: list[worker_pb2.WorkUpdate | None] = []
        self.waiter: asyncio.Future | None = None

    def put(self, item: worker_pb2.WorkUpdate | None) -> None:
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self, deadline: float) -> list[worker_pb2.WorkUpdate | None]:
        """What arrived so far, waiting until something does or the loop time `deadline`
        passes (then an empty list)."""
        if not self.items:
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        items = self.items
        self.items = []
        return items


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Session:
    """The scheduler's end of one worker's Session stream (worker.proto): work and
    cancellations out, gathered into one message at most every `interval_s`; each
    message in carries the worker's load, applied first, then updates routed to the
    inboxes of the attempts they belong to. When the stream ends, every open inbox
    gets None."""

    __slots__ = ("slot", "call", "interval_s", "inboxes", "work", "cancels", "pending", "failure", "replaced",
                 "reader", "writer")

    def __init__(self, core: "SchedulerCore", slot: _Slot, interval_s: float):
        self.slot = slot
        self.call = slot.stub.Session()
        self.interval_s = interval_s
        self.inboxes: dict[str, _Inbox] = {}
        self.work: list[worker_pb2.SessionWork] = []
        self.cancels: list[str] = []
        self.pending = asyncio.Event()
        self.failure: tuple[grpc.StatusCode, str] | None = None
        self.replaced = False  # closed because a new incarnation of the worker registered
        loop = asyncio.get_running_loop()
        self.reader = loop.create_task(self._read(core))
        self.writer = loop.create_task(self._write())

    def open(self, key: str, work: worker_pb2.SessionWork) -> _Inbox:
        inbox = self.inboxes[key] = _Inbox()
        if self.failure is not None:
            inbox.put(None)
            return inbox
        self.work.append(work)
        self.pending.set()
        return inbox

    def forget(self, key: str, cancel: bool) -> None:
        """The attempt is done with its inbox; `cancel`: it ended early, so the worker
        cancels the request (frees its slot and KV)."""
        self.inboxes.pop(key, None)
        if cancel and self.failure is None:
            self.cancels.append(key)
            self.pending.set()

    def close(self) -> None:
        self.call.cancel()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        written = -math.inf
        try:
            while True:
                await self.pending.wait()
                wait = written + self.interval_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                written = loop.time()
                self.pending.clear()
                message = worker_pb2.SessionRequest(work=self.work, cancel_request_ids=self.cancels)
                self.work, self.cancels = [], []
                await self.call.write(message)
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream failed: the reader sees why and fails the inboxes
            self.call.cancel()

    async def _read(self, core: "SchedulerCore") -> None:
        code, details = grpc.StatusCode.UNAVAILABLE, "the worker ended the session"
        try:
            async for message in self.call:
                core._apply_load(self.slot, message.load or None, message.engine_state or None)
                inboxes = self.inboxes
                for update in message.updates:
                    inbox = inboxes.get(update.request_id)
                    if inbox is not None:
                        inbox.put(update)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
        finally:
            self.failure = (code, details)
            self.writer.cancel()
            for inbox in self.inboxes.values():
                inbox.put(None)
            core._session_lost(self)


class _Flight:
    """One accepted request while it is in flight."""

    __slots__ = ("key", "seq", "inp", "out", "min_cap", "hashes", "ttft_slo_s", "tpot_slo_s", "arrival_s",
                 "wall0", "status", "reason", "retries", "attempt", "awaiting", "sent", "prefill_instance",
                 "decode_instance", "prefill_start_s", "prefill_end_s", "kv_transfer_end_s", "first_token_s",
                 "finish_s", "energy_j", "cost_usd")

    def __init__(self, key: str, seq: int, inp: GenerateInput, min_cap: float, arrival_s: float):
        self.key = key
        self.seq = seq
        self.inp = inp.prompt_tokens
        self.out = inp.max_output_tokens
        self.min_cap = min_cap
        self.hashes = inp.prefix_block_hashes
        self.ttft_slo_s = inp.ttft_slo_s
        self.tpot_slo_s = inp.tpot_slo_s
        self.arrival_s = arrival_s
        self.wall0 = time.perf_counter()
        self.status = RequestStatus.PENDING
        self.reason = ""
        self.retries = 0
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


def _md(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


# ---------------------------------------------------------------------------
# The core.


def check_live_policy(policy: Policy) -> None:
    """Raise ValueError for a policy the live control plane would run differently from
    the simulator: one that serves a request in several passes (a staging plugin:
    cascade escalation, advisor calls). Live workers produce no answers to verify,
    so only the first pass would run, a silent change of policy."""
    if policy.staging is not None:
        raise ValueError(
            f"policy {policy.name!r} serves a request in more than one pass (staging {policy.staging.name!r}); "
            "the live control plane places each request once, so it would run only the first pass. Run it "
            "with `infersched simulate` or `compare`; to serve its one-pass routing live, add `staging: none` "
            "under `policy:` in the cluster YAML")


class SchedulerCore:
    """Policy decisions applied to live workers; every request counted."""

    def __init__(self, cluster: Cluster, policy: Policy, options: LiveOptions = LiveOptions()):
        check_live_policy(policy)
        self.cluster = cluster
        self.policy = policy
        self.options = options
        self.snap: ClusterSnapshot = cluster.snapshot()
        self._base_candidates = {stage: cands.copy() for stage, cands in self.snap.candidates.items()}
        self._rng = np.random.default_rng(options.seed)
        self._t0 = time.monotonic()
        self.started_unix_s = time.time()
        self._next_wake = math.inf  # earliest replica wake, scheduler clock
        self._decision_now = 0.0  # latest decision time: replicas are kept up to it
        self._scratch: list = []
        # Replicas are built as the simulator builds its engines: prefill-capable ones carry a
        # prefix cache registered in the snapshot's index, which prefix-aware scorers read.
        replicas = cluster.make_engines(self.snap, prefix_caching=True)
        self.slots = [_Slot(i, cluster.pool_of(i), replicas[i]) for i in range(cluster.n_instances)]
        self._active: dict[str, _Flight] = {}
        self._seq = 0
        self._awaiting_first = 0
        self.requests_total = 0
        self.requests_completed = 0
        self.requests_rejected = 0
        self.requests_failed = 0
        self.requests_invalid = 0
        self.decisions_total = 0
        self.slo_met = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.reasons: Counter = Counter()
        self.pool_completed = [0] * len(cluster.pools)
        w = options.latency_window
        self._ttft, self._tpot, self._e2e = _Window(w), _Window(w), _Window(w)
        self._decision_s, self._control_s = _Window(w), _Window(w)
        self.on_worker_failed: Callable[[int], None] | None = None
        self.on_outcome: Callable[[RequestOutcome, float], None] | None = None
        self.on_decision: Callable[[float], None] | None = None
        self._poll_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        # For validation: model name -> capability, and per pool what it can hold.
        self._tiers = {p.perf.model.name: (p.perf.model.capability if p.perf.model.capability is not None else 1.0)
                       for p in cluster.pools}

    # ---- clock ------------------------------------------------------------
    def now(self) -> float:
        return (time.monotonic() - self._t0) / self.options.time_scale

    def at_unix(self, unix_s: float) -> float:
        """The scheduler clock at a Unix time (workers stamp their reports in Unix time)."""
        return (unix_s - self.started_unix_s) / self.options.time_scale

    @property
    def in_flight(self) -> int:
        return self.requests_total - self.requests_completed - self.requests_rejected - self.requests_failed

    # ---- workers ----------------------------------------------------------
    def register(self, instance: int, worker_id: str, address: str) -> bool:
        """A worker (re)started at `address`. Idempotent per (worker_id, address)."""
        if not 0 <= instance < len(self.slots):
            raise ValueError(f"instance {instance} out of range (cluster has {len(self.slots)})")
        slot = self.slots[instance]
        if slot.worker_id == worker_id and slot.address == address:
            if slot.state == WorkerState.FAILED:
                self._set_state(slot, WorkerState.READY)
            slot.registered.set()
            return False
        if slot.session is not None:
            # Its attempts fail over to other instances; the new incarnation gets its own session.
            session, slot.session = slot.session, None
            session.replaced = True
            session.close()
        if slot.channel is not None:
            self._spawn(slot.channel.close())
        if slot.worker_id:
            slot.retired.add(slot.usage)
            slot.restarts += 1
        slot.usage = _Usage()
        slot.worker_id = worker_id
        slot.address = address
        slot.channel = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
        slot.stub = worker_pb2_grpc.WorkerStub(slot.channel)
        slot.sent = 0
        slot.pending.clear()
        slot.report = None
        slot.replica_ok = False
        slot.poll_failures = 0
        self._sync_row(slot, self._decision_now)
        self._set_state(slot, WorkerState.READY)
        slot.registered.set()
        log.info("worker %s registered for instance %d (%s) at %s", worker_id, instance, slot.pool.name, address)
        return True

    def _set_state(self, slot: _Slot, state: WorkerState) -> None:
        if slot.state == state:
            return
        slot.state = state
        alive = np.array([s.state == WorkerState.READY for s in self.slots])
        # The policy sees only live instances: a failed one leaves the candidate sets
        # (filters' precomputed minima stay valid, since a subset only raises them).
        for stage, base in self._base_candidates.items():
            self.snap.candidates[stage] = base[alive[base]]

    def mark_failed(self, instance: int, reason: str) -> None:
        slot = self.slots[instance]
        if slot.state != WorkerState.READY:
            return
        log.warning("instance %d (%s, %s) failed: %s", instance, slot.pool.name, slot.address, reason)
        self._set_state(slot, WorkerState.FAILED)
        if self.on_worker_failed is not None:
            self.on_worker_failed(instance)

    def mark_ready(self, instance: int) -> None:
        slot = self.slots[instance]
        if slot.stub is not None and slot.state == WorkerState.FAILED:
            self._set_state(slot, WorkerState.READY)

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        """Does the registered worker of `instance` answer GetWorkerStats (and take work)?"""
        slot = self.slots[instance]
        if slot.stub is None:
            return False
        try:
            call = slot.stub.GetWorkerStats(worker_pb2.WorkerStatsRequest(), timeout=timeout_s)
            stats = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError:
            return False
        self._apply_stats(slot, stats, trailing)
        return stats.state == WorkerState.READY

    def down_instances(self) -> int:
        return sum(1 for s in self.slots if s.state != WorkerState.READY)

    def workers(self, pool: str = "") -> list[WorkerView]:
        if pool and pool not in {p.name for p in self.cluster.pools}:
            raise InvalidRequest(f"field 'pool': unknown pool {pool!r}; pools: "
                                 f"{', '.join(p.name for p in self.cluster.pools)}")
        snap = self.snap
        out = []
        for s in self.slots:
            if pool and s.pool.name != pool:
                continue
            i = s.instance
            out.append(WorkerView(
                worker_id=s.worker_id, instance=i, pool=s.pool.name, device=s.pool.config.device,
                model=s.pool.perf.model.name, role=s.pool.role, address=s.address, state=s.state,
                queue_depth=int(snap.queued_requests[i]), running=int(snap.running[i]),
                kv_free_tokens=int(snap.kv_free[i]), kv_capacity_tokens=int(snap.kv_capacity[i])))
        return out

    # ---- snapshot rows ------------------------------------------------------
    def _write_row(self, i: int, queued: float, queued_tokens: float, running: float, kv_free: float,
                   busy_until_s: float) -> None:
        snap = self.snap
        update = getattr(snap, "update", None)
        if update is not None:
            update(i, queued, queued_tokens, running, kv_free, busy_until_s)
            return
        snap.queued_requests[i] = queued
        snap.queued_tokens[i] = queued_tokens
        snap.running[i] = running
        snap.kv_free[i] = kv_free
        snap.busy_until_s[i] = busy_until_s

    def _note_dispatch(self, slot: _Slot, prompt: int, output: int, sent: float, hashes: tuple = ()) -> None:
        slot.sent += 1
        slot.pending.append((slot.sent, prompt, output, sent, hashes))
        if hashes and slot.replica.prefix is not None:
            # The worker will hold these blocks once the prompt is prefilled; counting them from
            # dispatch lets the next turn of a conversation follow before that (as the
            # replica's own prefill might not run if a report overtakes it).
            slot.replica.prefix.insert(hashes)
        if slot.replica_ok:
            self._replica_submit(slot, prompt, output, sent + slot.offset, hashes)
        self._sync_row(slot, self._decision_now)

    def _apply_load(self, slot: _Slot, text: str | None, blob: bytes | None = None) -> None:
        if text is None or slot.state == WorkerState.FAILED:
            return
        try:
            r = LoadReport.decode(text)
        except ValueError:
            log.warning("instance %d sent a malformed load report %r", slot.instance, text)
            return
        if slot.report is not None and r.now_s < slot.report.now_s:
            # Reports ride on different calls and can overtake each other; an older one
            # would take the replica back before dispatches a newer one already showed.
            return
        pending = slot.pending
        while pending and pending[0][0] <= r.received:
            pending.popleft()
        slot.report = r
        slot.reported_at = time.monotonic()
        slot.offset = r.now_s - self.at_unix(r.unix_s)
        perf = slot.pool.perf
        u = slot.usage
        u.busy_s = r.busy_s
        u.prefill_tokens = r.prefill_tokens
        u.decode_tokens = r.decode_tokens
        u.uptime_s = r.now_s
        u.energy_j = r.dynamic_energy_j + perf.idle_power_w * r.now_s
        u.cost_usd = perf.price_usd_per_s * r.now_s
        # A report without the engine state (a row only) leaves the replica as it is: it
        # already holds every dispatch, and nothing newer about the worker's engine.
        if blob is not None:
            try:
                restore_engine(slot.replica, blob)
                slot.replica_ok = True
            except Exception as exc:  # a state this replica cannot take: fall back to rows
                slot.replica_ok = False
                log.debug("instance %d: engine state not restored: %s", slot.instance, exc)
            if slot.replica_ok:
                slot.replica_t = r.engine_s
                for _, prompt, output, sent, hashes in pending:
                    self._replica_submit(slot, prompt, output, sent + slot.offset, hashes)
        self._sync_row(slot, self._decision_now)

    def _replica_advance(self, slot: _Slot, t: float) -> None:
        eng = slot.replica
        scratch = self._scratch
        while eng.next_wake_s <= t:
            scratch.clear()
            eng.wake(eng.next_wake_s, scratch)
        if t > slot.replica_t:
            slot.replica_t = t

    def _replica_submit(self, slot: _Slot, prompt: int, output: int, t: float, hashes: tuple = ()) -> None:
        """A dispatch the worker has not reported yet, applied to the replica when it was sent
        (workers admit work at the modelled time it was sent, so the replica stays exact)."""
        t = max(t, slot.replica_t)
        self._replica_advance(slot, t)
        slot.fake_id -= 1  # negative ids never meet the worker's own
        slot.replica.submit_prefill(slot.fake_id, prompt, output, hashes)
        self._scratch.clear()
        slot.replica.poke(t, self._scratch)

    def _sync_row(self, slot: _Slot, now: float) -> None:
        """Write the instance's row as of `now`, as the simulator's `_sync` writes it:
        `busy_until_s` is when a new prompt could start, the end of a prefill iteration,
        or now for a decoding or idle instance (a new prompt cuts a decode segment at
        its next step, not at the segment's end)."""
        i = slot.instance
        if slot.replica_ok:
            eng = slot.replica
            self._replica_advance(slot, now + slot.offset)
            wake = eng.next_wake_s - slot.offset if eng.activity else math.inf
            self._write_row(i, len(eng.waiting) + len(eng.joining), eng.waiting_tokens, eng.batch,
                            eng.kv_capacity - eng.kv_reserved, wake if eng.activity & PREFILL else now)
            if wake < self._next_wake:  # the row changes when the replica passes its next wake
                self._next_wake = wake
            return
        r = slot.report
        if r is None:
            queued, tokens, running, kv_free, busy = 0, 0, 0, int(self.snap.kv_capacity[i]), now
        else:
            queued, tokens, running, kv_free = r.queued, r.queued_tokens, r.running, r.kv_free
            busy = self.at_unix(r.unix_s) + r.busy_remaining_s if r.activity & PREFILL else now
        queued += len(slot.pending)
        tokens += sum(p[1] for p in slot.pending)
        self._write_row(i, queued, tokens, running, kv_free, busy)

    def _refresh_rows(self, now: float) -> None:
        """Bring every replica whose engine passed a wake up to `now` before a decision."""
        if now < self._next_wake:
            return
        self._next_wake = math.inf
        for slot in self.slots:
            if slot.replica_ok:
                self._sync_row(slot, now)

    def _apply_md(self, slot: _Slot, metadata) -> None:
        text = None
        blob = None
        for key, value in metadata or ():
            if key == LOAD_KEY:
                text = value if isinstance(value, str) else value.decode()
            elif key == ENGINE_KEY:
                blob = value
        self._apply_load(slot, text, blob)

    def _apply_stats(self, slot: _Slot, stats: worker_pb2.WorkerStats, trailing) -> None:
        if stats.state in (WorkerState.DRAINING, WorkerState.DRAINED) and slot.state != stats.state:
            # Drained through the Worker service: place nothing more on it (and do not revive it).
            self._set_state(slot, WorkerState(stats.state))
        u = slot.usage
        u.prefill_tokens = stats.prefill_tokens
        u.decode_tokens = stats.decode_tokens
        u.energy_j = stats.energy_j
        u.cost_usd = stats.cost_usd
        u.uptime_s = stats.now_s
        self._apply_md(slot, trailing)

    # ---- polling ------------------------------------------------------------
    def start(self) -> None:
        if self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        interval = self.options.stats_interval_s
        while not self._closed:
            # A worker whose session messages keep its report fresh needs no poll.
            stale = time.monotonic() - interval
            quiet = [s for s in self.slots if s.state == WorkerState.READY and s.reported_at <= stale]
            if quiet:
                await asyncio.gather(*(self._poll(s) for s in quiet))
            await asyncio.sleep(interval)

    async def _poll(self, slot: _Slot) -> None:
        stub = slot.stub
        try:
            call = stub.GetWorkerStats(worker_pb2.WorkerStatsRequest(),
                                       timeout=max(1.0, 10 * self.options.stats_interval_s))
            stats = await call
            if stub is slot.stub:
                self._apply_stats(slot, stats, await call.trailing_metadata())
                slot.poll_failures = 0
        except grpc.aio.AioRpcError as exc:
            if stub is not slot.stub:
                return
            slot.poll_failures += 1
            if exc.code() == grpc.StatusCode.UNAVAILABLE or slot.poll_failures >= 3:
                self.mark_failed(slot.instance, f"stats poll: {exc.code().name}: {exc.details()}")

    async def close(self) -> None:
        self._closed = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for slot in self.slots:
            if slot.session is not None:
                slot.session.close()
                slot.session = None
            if slot.channel is not None:
                await slot.channel.close()
                slot.channel = None
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session(self, slot: _Slot) -> _Session:
        session = slot.session
        if session is None or session.failure is not None:
            session = slot.session = _Session(self, slot, self.options.dispatch_interval_s)
        return session

    def _session_lost(self, session: _Session) -> None:
        slot = session.slot
        if slot.session is not session:
            return  # closed for a new incarnation (or at shutdown)
        slot.session = None
        code, details = session.failure
        if not self._closed and code in _RETRYABLE and code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.mark_failed(slot.instance, f"session: {code.name}: {details}")

    # ---- requests -----------------------------------------------------------
    def note_invalid(self, reason: str) -> None:
        self.requests_invalid += 1
        log.debug("invalid request: %s", reason)

    def _validate(self, inp: GenerateInput) -> float:
        """Check a request against the cluster; returns its minimum capability."""
        if inp.prompt_tokens <= 0:
            raise InvalidRequest(f"field 'prompt_length': must be > 0, got {inp.prompt_tokens}")
        if inp.max_output_tokens <= 0:
            raise InvalidRequest(f"field 'max_output_tokens': must be > 0, got {inp.max_output_tokens}")
        min_cap = inp.min_capability
        if not (math.isfinite(min_cap) and 0.0 <= min_cap <= 1.0):
            raise InvalidRequest(f"field 'min_capability': must be in [0, 1], got {min_cap}")
        if inp.model_tier:
            if inp.model_tier not in self._tiers:
                raise InvalidRequest(f"field 'model_tier': unknown tier {inp.model_tier!r}; this cluster serves "
                                     f"{', '.join(sorted(self._tiers))}")
            # A tier is a capability floor: a more capable model serves it too.
            min_cap = max(min_cap, self._tiers[inp.model_tier])
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(inp, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"field '{name}': must be > 0, got {value}")
        need = inp.prompt_tokens + inp.max_output_tokens
        if not self._fits(inp.prompt_tokens, need, min_cap):
            largest = max(p.perf.kv_capacity_tokens for p in self.cluster.pools if p.role != Role.PREFILL)
            raise InvalidRequest(
                f"fields 'prompt_length' + 'max_output_tokens': {inp.prompt_tokens} + {inp.max_output_tokens} = "
                f"{need} tokens of KV; no pool can hold that (largest decode or colocated pool: {largest})")
        return min_cap

    def _fits(self, prompt: int, need: int, min_cap: float) -> bool:
        pools = [p for p in self.cluster.pools
                 if (p.perf.model.capability if p.perf.model.capability is not None else 1.0) >= min_cap]
        for p in pools:
            if p.role == Role.BOTH and p.perf.kv_capacity_tokens >= need:
                return True
            if p.role == Role.PREFILL and p.perf.kv_capacity_tokens >= prompt and any(
                    q.role == Role.DECODE and q.perf.model.name == p.perf.model.name
                    and q.perf.kv_capacity_tokens >= need for q in self.cluster.pools):
                return True
        return False

    async def generate(self, inp: GenerateInput, sent_unix: float | None = None
                       ) -> AsyncIterator[TokenEvent | RequestOutcome]:
        """Run one request: token events, then exactly one RequestOutcome. Raises
        InvalidRequest, DuplicateRequest or Overloaded before anything is yielded.
        Closing the generator early cancels the request (counted FAILED, "cancelled").

        `sent_unix`: when the client sent it (Unix time). The request then arrives at
        that modelled time, if that is no further back than the workers' slack allows
        (see LiveOptions.worker_slack_s); otherwise when it reached the scheduler."""
        arrival = now = self.now()
        if sent_unix is not None:
            earliest = now - self.options.worker_slack_s / self.options.time_scale
            arrival = min(now, max(self.at_unix(sent_unix), earliest))
        try:
            min_cap = self._validate(inp)
        except InvalidRequest as exc:
            self.note_invalid(str(exc))
            raise
        self._seq += 1
        key = inp.request_id or f"req-{self._seq}"
        if key in self._active:
            raise DuplicateRequest(f"request {key!r} is already in flight")
        self.requests_total += 1
        self.input_tokens += inp.prompt_tokens
        if self._awaiting_first >= self.options.max_queue:
            self.requests_rejected += 1
            self.reasons["queue full"] += 1
            raise Overloaded(f"{self._awaiting_first} requests are queued for prefill (bound "
                             f"{self.options.max_queue}); retry later")
        fl = _Flight(key, self._seq - 1, inp, min_cap, arrival)
        self._active[key] = fl
        self._awaiting_first += 1
        try:
            async for item in self._serve(fl):
                yield item
        finally:
            if fl.status == RequestStatus.PENDING:
                self._finish(fl, RequestStatus.FAILED, "cancelled")
            self._active.pop(key, None)

    async def _serve(self, fl: _Flight) -> AsyncIterator[TokenEvent | RequestOutcome]:
        opts = self.options
        snap = self.snap
        while True:
            # Decide as of the request's arrival (plus the scheduler's own time since): the
            # replicas show the instances as they are when the prompt reaches them, which
            # is when the workers admit it; loopback transit does not age the view.
            now = fl.arrival_s + (time.perf_counter() - fl.wall0)
            if now > self._decision_now:
                self._decision_now = now
            self._refresh_rows(now)
            req = Request(fl.seq, fl.inp, fl.out, now, fl.min_cap, fl.hashes)
            t = time.perf_counter()
            decision = self.policy.decide(req, snap, now, self._rng)
            dt = time.perf_counter() - t
            self.decisions_total += 1
            self._decision_s.add(dt)
            if self.on_decision is not None:
                self.on_decision(dt)
            if decision.rejected:
                if self.down_instances() and fl.retries < opts.max_retries:
                    # Possibly only because instances are down: wait for the supervisor.
                    fl.retries += 1
                    await asyncio.sleep(opts.retry_backoff_s * fl.retries)
                    continue
                yield self._finish(fl, RequestStatus.REJECTED, decision.reject_reason)
                return
            p, d = decision.prefill_instance, decision.decode_instance
            fl.prefill_instance, fl.decode_instance = p, d
            try:
                async for event in self._run(fl, p, d):
                    yield event
                yield self._finish(fl, RequestStatus.COMPLETED, "")
                return
            except _WorkerFailure as exc:
                if not exc.retryable or fl.retries >= opts.max_retries:
                    tail = f" (after {fl.retries} retries)" if exc.retryable else ""
                    yield self._finish(fl, RequestStatus.FAILED, f"{exc}{tail}")
                    return
                fl.retries += 1
                await asyncio.sleep(opts.retry_backoff_s * fl.retries)

    def _failure(self, code: grpc.StatusCode, details: str, stage: str, slot: _Slot, peer: _Slot | None = None,
                 failed_peer: str = "") -> _WorkerFailure:
        blamed = peer if (peer is not None and failed_peer and failed_peer == peer.address) else slot
        message = f"{stage} on instance {blamed.instance} ({blamed.pool.name}) failed: {code.name}: {details}"
        if code not in _RETRYABLE:
            return _WorkerFailure(message, retryable=False)
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.mark_failed(blamed.instance, message)
        return _WorkerFailure(message)

    async def _run(self, fl: _Flight, p: int, d: int) -> AsyncIterator[TokenEvent]:
        """One attempt: prefill on instance p, then decode on d (in the same work item when
        p == d). Yields the tokens not sent yet; raises _WorkerFailure."""
        slot = self.slots[p]
        peer = self.slots[d] if d != p else None
        for s in (slot, peer):
            if s is not None and (s.state != WorkerState.READY or s.stub is None):
                raise _WorkerFailure(f"instance {s.instance} ({s.pool.name}) is not ready")
        fl.attempt += 1
        key = f"{fl.key}#{fl.attempt}"
        opts = self.options
        decode = worker_pb2.DecodeRequest(request_id=key, max_output_tokens=fl.out, chunk_tokens=opts.chunk_tokens)
        # The scheduler's own time since arrival counts at its real (unscaled) duration;
        # the worker admits the prompt at this modelled dispatch time.
        t_dispatch = fl.arrival_s + (time.perf_counter() - fl.wall0)
        work = worker_pb2.SessionWork(
            prefill=worker_pb2.PrefillRequest(
                request_id=key, prompt_length=fl.inp, max_output_tokens=fl.out, prefix_block_hashes=fl.hashes,
                decode_address=peer.address if peer is not None else ""),
            decode=decode if peer is None else None,
            sent_unix_s=self.started_unix_s + t_dispatch * opts.time_scale,
            decode_link_bytes_per_s=peer.pool.config.link_bytes_per_s if peer is not None else 0.0)
        self._note_dispatch(slot, fl.inp, fl.out, t_dispatch, fl.hashes)
        async for event in self._follow(fl, slot, peer, key, work, t_dispatch):
            yield event
        if peer is not None and fl.out > 1:
            async for event in self._follow(fl, peer, None, key, worker_pb2.SessionWork(decode=decode), t_dispatch):
                yield event

    async def _follow(self, fl: _Flight, slot: _Slot, peer: _Slot | None, key: str, work: worker_pb2.SessionWork,
                      t_dispatch: float) -> AsyncIterator[TokenEvent]:
        """Send one work item to `slot`'s worker and follow it to its last update. Tokens
        that arrive together go to the client as one chunk (the first token included)."""
        session = self._session(slot)
        inbox = session.open(key, work)
        decodes = work.HasField("decode")
        stage = "prefill" if work.HasField("prefill") else "decode"
        deadline = asyncio.get_running_loop().time() + self.options.rpc_timeout_s
        done = False
        try:
            while not done:
                items = await inbox.take(deadline)
                if not items:
                    raise self._failure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"no result within {self.options.rpc_timeout_s:g} s", stage, slot, peer)
                first = count = 0
                failure = None
                for update in items:
                    if update is None:
                        if session.replaced:  # the worker restarted; the new one is not to blame
                            failure = _WorkerFailure(f"{stage} on instance {slot.instance} ({slot.pool.name}) was "
                                                     "lost: the worker restarted")
                        else:
                            failure = self._failure(*session.failure, stage, slot, peer)
                        break
                    # An update's fields happened in this order: prefill, tokens, then the end.
                    if update.HasField("prefill"):
                        self._prefilled(fl, update, t_dispatch, peer is not None)
                        stage = "decode"
                        if fl.sent == 0:
                            fl.first_token_s = fl.prefill_end_s
                            fl.sent = count = 1
                        done = not decodes
                    if update.HasField("tokens"):
                        chunk = update.tokens
                        end = chunk.first_token_index + chunk.token_count
                        if end > fl.sent:
                            if not count:
                                first = max(chunk.first_token_index, fl.sent)
                            count += end - max(chunk.first_token_index, fl.sent)
                            fl.sent = end
                    if update.HasField("decoded"):
                        self._decoded(fl, update.decoded)
                        done = True
                    if update.HasField("error"):
                        done = True  # the worker is done with it: nothing to cancel
                        error = update.error
                        failure = self._failure(grpc.StatusCode[_STATUS_NAMES.get(error.code, "UNKNOWN")],
                                                error.message, stage, slot, peer, error.failed_peer_address)
                        break
                if count:  # tokens counted as sent reach the client, also before a failure
                    # A first token alone is stamped with its modelled time, as in the record.
                    emit_s = fl.first_token_s if first == 0 and count == 1 else self.now()
                    # Done with the decode (or with the only token): the request completes next.
                    last = done and failure is None and (decodes or fl.out == 1)
                    yield TokenEvent(fl.key, first, count, emit_s, last)
                if failure is not None:
                    raise failure
        finally:
            session.forget(key, cancel=not done)

    def _prefilled(self, fl: _Flight, update: worker_pb2.WorkUpdate, t_dispatch: float, handed_over: bool) -> None:
        resp = update.prefill
        if fl.awaiting:
            fl.awaiting = False
            self._awaiting_first -= 1
        fl.prefill_start_s = t_dispatch + resp.queue_s
        fl.prefill_end_s = fl.prefill_start_s + resp.prefill_s
        fl.kv_transfer_end_s = fl.prefill_end_s + update.kv_sent_s if handed_over else None
        fl.energy_j += resp.energy_j
        fl.cost_usd += resp.cost_usd
        if fl.out == 1:
            fl.finish_s = fl.prefill_end_s

    def _decoded(self, fl: _Flight, result: worker_pb2.DecodeResult) -> None:
        if fl.kv_transfer_end_s is not None:  # disaggregated: decode starts when the KV joins the batch
            start = fl.kv_transfer_end_s + result.wait_s
        else:
            start = fl.prefill_end_s
        fl.finish_s = start + result.decode_s
        fl.energy_j += result.energy_j
        fl.cost_usd += result.cost_usd

    def _finish(self, fl: _Flight, status: RequestStatus, reason: str) -> RequestOutcome:
        """Count the request as ended; returns its final record."""
        fl.status = status
        fl.reason = reason
        if fl.awaiting:
            fl.awaiting = False
            self._awaiting_first -= 1
        if status == RequestStatus.COMPLETED:
            self.requests_completed += 1
            self.output_tokens += fl.out
            ttft = fl.first_token_s - fl.arrival_s
            e2e = fl.finish_s - fl.arrival_s
            self._ttft.add(ttft)
            self._e2e.add(e2e)
            tpot = None
            if fl.out > 1:
                tpot = (fl.finish_s - fl.first_token_s) / (fl.out - 1)
                self._tpot.add(tpot)
            slo = self.cluster.config.slo
            if ttft <= (fl.ttft_slo_s or slo.ttft_s) and (tpot is None or tpot <= (fl.tpot_slo_s or slo.tpot_s)):
                self.slo_met += 1
            pools = {self.cluster.pool_of(fl.prefill_instance).index, self.cluster.pool_of(fl.decode_instance).index}
            for p in pools:
                self.pool_completed[p] += 1
            control = (time.perf_counter() - fl.wall0) - e2e * self.options.time_scale
            self._control_s.add(control)
        else:
            fl.finish_s = self.now()
            if status == RequestStatus.REJECTED:
                self.requests_rejected += 1
            else:
                self.requests_failed += 1
            self.reasons[reason] += 1
            control = 0.0
        outcome = self._outcome(fl)
        if self.on_outcome is not None:
            self.on_outcome(outcome, control)
        return outcome

    def _outcome(self, fl: _Flight) -> RequestOutcome:
        placed = fl.prefill_instance >= 0
        completed = fl.status == RequestStatus.COMPLETED
        ttft = fl.first_token_s - fl.arrival_s if fl.first_token_s is not None else None
        tpot = ((fl.finish_s - fl.first_token_s) / (fl.out - 1)
                if completed and fl.out > 1 else None)
        pre_pool = self.cluster.pool_of(fl.prefill_instance) if placed else None
        dec_pool = self.cluster.pool_of(fl.decode_instance) if placed else None
        return RequestOutcome(
            request_id=fl.key, status=fl.status, reason=fl.reason, retries=fl.retries, arrival_s=fl.arrival_s,
            prefill_start_s=fl.prefill_start_s, prefill_end_s=fl.prefill_end_s,
            kv_transfer_end_s=fl.kv_transfer_end_s if completed else None, first_token_s=fl.first_token_s,
            finish_s=fl.finish_s, ttft_s=ttft, tpot_s=tpot,
            prefill_pool=pre_pool.name if pre_pool else "", decode_pool=dec_pool.name if dec_pool else "",
            prefill_instance=fl.prefill_instance, decode_instance=fl.decode_instance,
            model=pre_pool.perf.model.name if pre_pool else "", input_tokens=fl.inp,
            output_tokens=fl.sent if not completed else fl.out, energy_j=fl.energy_j, cost_usd=fl.cost_usd)

    # ---- stats ----------------------------------------------------------------
    def _usage(self, slot: _Slot) -> _Usage:
        total = _Usage()
        total.add(slot.retired)
        total.add(slot.usage)
        return total

    def pool_stats(self) -> list[PoolStatsView]:
        snap = self.snap
        uptime = self.now()
        # Rows as Python numbers once: GetStats runs on the loop that serves Generate, and
        # numpy slice sums per pool and field cost more than the few instances they add.
        queued, running = snap.queued_requests.tolist(), snap.running.tolist()
        kv_free, kv_capacity = snap.kv_free.tolist(), snap.kv_capacity.tolist()
        out = []
        for pool in self.cluster.pools:
            r = pool.instances
            usages = [self._usage(self.slots[i]) for i in r]
            instance_s = uptime * len(r)  # since the scheduler started, restarts included
            out.append(PoolStatsView(
                name=pool.name, device=pool.config.device, model=pool.perf.model.name, role=pool.role,
                instances=pool.config.instances, chips_per_instance=pool.perf.chips,
                queue_depth=int(sum(queued[r.start:r.stop])), running=int(sum(running[r.start:r.stop])),
                completed=self.pool_completed[pool.index],
                prefill_tokens=sum(u.prefill_tokens for u in usages),
                decode_tokens=sum(u.decode_tokens for u in usages),
                utilization=min(1.0, sum(u.busy_s for u in usages) / instance_s) if instance_s > 0 else 0.0,
                energy_j=sum(u.energy_j for u in usages), cost_usd=sum(u.cost_usd for u in usages),
                kv_free_tokens=int(sum(kv_free[r.start:r.stop])),
                kv_capacity_tokens=int(sum(kv_capacity[r.start:r.stop])),
                token_budget=pool.config.engine_token_budget))
        return out

    def stats(self) -> SchedulerStatsView:
        pools = self.pool_stats()
        finished = self.requests_completed + self.requests_rejected + self.requests_failed
        return SchedulerStatsView(
            policy=self.policy.name, cluster=self.cluster.config.name, uptime_s=self.now(),
            started_unix_s=self.started_unix_s, requests_total=self.requests_total,
            requests_completed=self.requests_completed, requests_rejected=self.requests_rejected,
            requests_failed=self.requests_failed, requests_invalid=self.requests_invalid,
            in_flight=self.in_flight, reasons=dict(self.reasons), decisions_total=self.decisions_total,
            scheduling_overhead_s=self._decision_s.summary(), ttft_s=self._ttft.summary(),
            tpot_s=self._tpot.summary(), e2e_s=self._e2e.summary(),
            slo_attainment=self.slo_met / finished if finished else 0.0, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, energy_j=sum(p.energy_j for p in pools),
            cost_usd=sum(p.cost_usd for p in pools), pools=pools,
            control_overhead_s=self._control_s.summary(),
            time_scale=self.options.time_scale)


# ---------------------------------------------------------------------------
# gRPC servicer: the only place Scheduler protos meet the core.

_ROLE_TO_PROTO = {Role.PREFILL: common_pb2.ROLE_PREFILL, Role.DECODE: common_pb2.ROLE_DECODE,
                  Role.BOTH: common_pb2.ROLE_BOTH}
_STATUS_TO_PROTO = {
    RequestStatus.COMPLETED: common_pb2.REQUEST_STATUS_COMPLETED,
    RequestStatus.REJECTED: common_pb2.REQUEST_STATUS_REJECTED,
    RequestStatus.FAILED: common_pb2.REQUEST_STATUS_FAILED,
    RequestStatus.PENDING: common_pb2.REQUEST_STATUS_UNSPECIFIED,
}


def generate_input(request: scheduler_pb2.GenerateRequest) -> GenerateInput:
    """GenerateRequest -> core input; raises InvalidRequest naming the field."""
    length = request.prompt_length
    n = len(request.prompt_tokens)
    if length < 0:
        raise InvalidRequest(f"field 'prompt_length': must be > 0, got {length}")
    if n and length and n != length:
        raise InvalidRequest(f"field 'prompt_length': {length} disagrees with the {n} prompt_tokens sent")
    prompt = n or length
    if prompt <= 0:
        raise InvalidRequest("field 'prompt_length': must be > 0 when prompt_tokens is empty, got 0")
    if request.max_output_tokens <= 0:
        raise InvalidRequest(f"field 'max_output_tokens': must be > 0, got {request.max_output_tokens}")
    return GenerateInput(
        request_id=request.request_id, prompt_tokens=prompt, max_output_tokens=request.max_output_tokens,
        model_tier=request.model_tier,
        min_capability=request.min_capability if request.HasField("min_capability") else 0.0,
        ttft_slo_s=request.ttft_slo_s if request.HasField("ttft_slo_s") else None,
        tpot_slo_s=request.tpot_slo_s if request.HasField("tpot_slo_s") else None,
        prefix_block_hashes=tuple(request.prefix_block_hashes))


def token_chunk_proto(event: TokenEvent) -> common_pb2.TokenChunk:
    return common_pb2.TokenChunk(request_id=event.request_id, token_count=event.token_count,
                                 first_token_index=event.first_token_index, emit_s=event.emit_s)


def record_proto(o: RequestOutcome) -> scheduler_pb2.RequestRecord:
    record = scheduler_pb2.RequestRecord(
        request_id=o.request_id, status=_STATUS_TO_PROTO[o.status], reason=o.reason, retries=o.retries,
        arrival_s=o.arrival_s, finish_s=o.finish_s, prefill_pool=o.prefill_pool, decode_pool=o.decode_pool,
        prefill_instance=o.prefill_instance, decode_instance=o.decode_instance, model=o.model,
        input_tokens=o.input_tokens, output_tokens=o.output_tokens, energy_j=o.energy_j, cost_usd=o.cost_usd)
    for name in ("prefill_start_s", "prefill_end_s", "kv_transfer_end_s", "first_token_s", "ttft_s", "tpot_s"):
        value = getattr(o, name)
        if value is not None:
            setattr(record, name, value)
    return record


def _percentiles_proto(p: Percentiles) -> common_pb2.LatencyPercentiles:
    return common_pb2.LatencyPercentiles(samples=p.samples, p50_s=p.p50_s, p90_s=p.p90_s, p99_s=p.p99_s,
                                         mean_s=p.mean_s)


def stats_proto(s: SchedulerStatsView) -> scheduler_pb2.SchedulerStats:
    return scheduler_pb2.SchedulerStats(
        policy=s.policy, cluster=s.cluster, uptime_s=s.uptime_s, started_unix_s=s.started_unix_s,
        requests_total=s.requests_total, requests_completed=s.requests_completed,
        requests_rejected=s.requests_rejected, requests_failed=s.requests_failed,
        requests_invalid=s.requests_invalid, in_flight=s.in_flight, reasons=s.reasons,
        decisions_total=s.decisions_total, scheduling_overhead_s=_percentiles_proto(s.scheduling_overhead_s),
        ttft_s=_percentiles_proto(s.ttft_s), tpot_s=_percentiles_proto(s.tpot_s), e2e_s=_percentiles_proto(s.e2e_s),
        slo_attainment=s.slo_attainment, input_tokens=s.input_tokens, output_tokens=s.output_tokens,
        energy_j=s.energy_j, cost_usd=s.cost_usd,
        pools=[scheduler_pb2.PoolStats(
            name=p.name, device=p.device, model=p.model, role=_ROLE_TO_PROTO[p.role], instances=p.instances,
            chips_per_instance=p.chips_per_instance, queue_depth=p.queue_depth, running=p.running,
            completed=p.completed, prefill_tokens=p.prefill_tokens, decode_tokens=p.decode_tokens,
            utilization=p.utilization, energy_j=p.energy_j, cost_usd=p.cost_usd, kv_free_tokens=p.kv_free_tokens,
            kv_capacity_tokens=p.kv_capacity_tokens, token_budget=p.token_budget) for p in s.pools])


def worker_info_proto(w: WorkerView) -> scheduler_pb2.WorkerInfo:
    return scheduler_pb2.WorkerInfo(
        worker_id=w.worker_id, instance=w.instance, pool=w.pool, device=w.device, model=w.model,
        role=_ROLE_TO_PROTO[w.role], address=w.address, state=int(w.state), queue_depth=w.queue_depth,
        running=w.running, kv_free_tokens=w.kv_free_tokens, kv_capacity_tokens=w.kv_capacity_tokens)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, core: SchedulerCore):
        self.core = core
        # Answered without a task by front ends' relay (scheduler.frontend): GetStats
        # must stay fast while Generate work keeps the loop busy. With front ends it is
        # also a snapshot method: they answer it from stats the core pushes every 10 ms
        # while someone asks, keeping each connection's own Generate calls visible.
        self.inline_methods = {"GetStats": self.get_stats}
        self.snapshot_methods = frozenset(self.inline_methods)

    async def Generate(self, request, context):
        core = self.core
        try:
            inp = generate_input(request)
        except InvalidRequest as exc:
            core.note_invalid(str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        sent = _md(context.invocation_metadata(), SENT_KEY)
        try:
            sent_unix = float(sent) if sent is not None else None
        except ValueError:
            core.note_invalid(f"metadata '{SENT_KEY}': not a number: {sent!r}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"metadata '{SENT_KEY}': not a number: {sent!r}")
        try:
            async with contextlib.aclosing(core.generate(inp, sent_unix)) as items:
                last = None  # the last tokens, held for the record that follows them at once
                async for item in items:
                    if isinstance(item, RequestOutcome):
                        yield scheduler_pb2.GenerateResponse(
                            tokens=token_chunk_proto(last) if last is not None else None, record=record_proto(item))
                    elif item.last:
                        last = item
                    else:
                        yield scheduler_pb2.GenerateResponse(tokens=token_chunk_proto(item))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except DuplicateRequest as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))

    async def GetStats(self, request, context):
        return self.get_stats(request, context)

    def get_stats(self, request, context) -> scheduler_pb2.SchedulerStats:
        # The clock's speed-up is not a SchedulerStats field; clients that replay traces
        # read it here (infersched replay) to pace arrivals in modelled time.
        context.set_trailing_metadata(((TIME_SCALE_KEY, repr(self.core.options.time_scale)),))
        return stats_proto(self.core.stats())

    async def WatchStats(self, request, context):
        interval = request.interval_s
        if not (math.isfinite(interval) and interval > 0):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"field 'interval_s': must be > 0, got {interval}")
        while True:
            yield stats_proto(self.core.stats())
            await asyncio.sleep(interval)

    async def ListWorkers(self, request, context):
        try:
            workers = self.core.workers(request.pool)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return scheduler_pb2.ListWorkersResponse(workers=[worker_info_proto(w) for w in workers])


# ---------------------------------------------------------------------------
# Prometheus.


class _Metrics:
    """prometheus_client metrics for one SchedulerCore, on their own registry and HTTP server."""

    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
    OVERHEAD_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0)

    def __init__(self, core: SchedulerCore, frontends: FrontendPool | None = None):
        from prometheus_client import CollectorRegistry, Histogram

        self.core = core
        self.frontends = frontends
        self.registry = CollectorRegistry(auto_describe=True)
        self.ttft = Histogram("infersched_ttft_seconds", "Time to first token (modelled seconds)",
                              buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("infersched_tpot_seconds", "Time per output token after the first (modelled seconds)",
                              buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("infersched_e2e_seconds", "Arrival to last token (modelled seconds)",
                             buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.decision = Histogram("infersched_scheduling_overhead_seconds",
                                  "Wall time inside the policy per decision", buckets=self.OVERHEAD_BUCKETS,
                                  registry=self.registry)
        self.control = Histogram("infersched_control_overhead_seconds",
                                 "Wall time per completed request beyond its modelled device time",
                                 buckets=self.OVERHEAD_BUCKETS, registry=self.registry)
        self.registry.register(self)
        core.on_outcome = self._outcome
        core.on_decision = self.decision.observe
        self.server = None
        self.thread = None

    def _outcome(self, outcome: RequestOutcome, control_s: float) -> None:
        if outcome.status != RequestStatus.COMPLETED:
            return
        self.ttft.observe(outcome.ttft_s)
        self.e2e.observe(outcome.finish_s - outcome.arrival_s)
        if outcome.tpot_s is not None:
            self.tpot.observe(outcome.tpot_s)
        self.control.observe(max(control_s, 0.0))

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        core = self.core
        requests = CounterMetricFamily("infersched_requests", "Requests by final status", labels=["status"])
        requests.add_metric(["completed"], core.requests_completed)
        requests.add_metric(["rejected"], core.requests_rejected)
        requests.add_metric(["failed"], core.requests_failed)
        yield requests
        yield CounterMetricFamily("infersched_requests_invalid", "Requests answered INVALID_ARGUMENT",
                                  value=core.requests_invalid)
        yield GaugeMetricFamily("infersched_requests_in_flight", "Accepted requests not yet finished",
                                value=core.in_flight)
        yield CounterMetricFamily("infersched_decisions", "Policy decisions (retries included)",
                                  value=core.decisions_total)
        pools = core.pool_stats()
        yield GaugeMetricFamily("infersched_energy_joules", "Energy of all pools since start (idle included)",
                                value=sum(p.energy_j for p in pools))
        yield GaugeMetricFamily("infersched_cost_usd", "Cost of all pools since start",
                                value=sum(p.cost_usd for p in pools))
        families = {
            "queue_depth": GaugeMetricFamily("infersched_pool_queue_depth", "Requests waiting for prefill or a "
                                             "decode slot", labels=["pool"]),
            "running": GaugeMetricFamily("infersched_pool_running", "Sequences in decode batches", labels=["pool"]),
            "utilization": GaugeMetricFamily("infersched_pool_utilization_ratio",
                                             "Busy share of instance time since start", labels=["pool"]),
            "kv_free_tokens": GaugeMetricFamily("infersched_pool_kv_free_tokens", "KV cache tokens not reserved",
                                                labels=["pool"]),
            "completed": CounterMetricFamily("infersched_pool_completed", "Completed requests that ran a stage here",
                                             labels=["pool"]),
        }
        for p in pools:
            for attr, family in families.items():
                family.add_metric([p.name], getattr(p, attr))
        yield from families.values()
        states = Counter(s.state.name.lower() for s in core.slots)
        workers = GaugeMetricFamily("infersched_workers", "Worker actors by state", labels=["state"])
        for state in WorkerState:
            workers.add_metric([state.name.lower()], states.get(state.name.lower(), 0))
        if self.frontends is not None:
            yield GaugeMetricFamily("infersched_frontends", "Client-facing front-end processes serving",
                                    value=len(self.frontends.pids()))
            yield CounterMetricFamily("infersched_frontend_restarts", "Front-end processes replaced after dying",
                                      value=self.frontends.restarts)
        yield workers

    def serve(self, host: str, port: int) -> int:
        from prometheus_client import start_http_server

        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        return self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# ---------------------------------------------------------------------------
# Ray actor.


def device_resource(device: str) -> str:
    """The custom Ray resource a pool's instances need: one unit per chip."""
    return f"device_{device}"


def pool_resources(cluster: Cluster) -> dict[str, float]:
    """Custom resources a cluster's worker actors need, e.g. {"device_h100-sxm": 2.0}."""
    need: dict[str, float] = {}
    for pool in cluster.pools:
        key = device_resource(pool.config.device)
        need[key] = need.get(key, 0.0) + float(pool.config.instances * pool.perf.chips)
    return need


class SchedulerActor:
    """Async Ray actor: the client-facing gRPC server, the policy core, and the
    supervisor of one WorkerActor per pool instance. Use `scheduler_actor_class()`."""

    def __init__(self, config: ClusterConfig, *, policy: PolicyConfig | str | None = None,
                 options: LiveOptions = LiveOptions(), host: str = "127.0.0.1", port: int = 50051,
                 worker_host: str = "127.0.0.1", metrics_host: str = "127.0.0.1", metrics_port: int | None = None,
                 worker_max_restarts: int = 3, start_timeout_s: float = 120.0, realtime_priority: int = 0,
                 frontends: int = 0):
        self.config = config
        # 0: this actor's event loop serves clients; N: N front-end processes share the
        # port and relay to this loop (scheduler.frontend says when that pays).
        self.frontends = check_frontends(frontends)
        self.realtime_priority = realtime_priority  # SCHED_FIFO priority of this process; 0: the OS default
        self.policy_config = policy
        self.options = options
        self.host = host
        self.port = port
        self.worker_host = worker_host
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.worker_max_restarts = worker_max_restarts
        self.start_timeout_s = start_timeout_s
        self.core: SchedulerCore | None = None
        self.cluster: Cluster | None = None
        self._server = None
        self._frontends: FrontendPool | None = None
        self._metrics: _Metrics | None = None
        self._handles: list = []
        self._reviving: set[int] = set()
        self._replaced = 0
        self._started: asyncio.Future | None = None
        self._stopped = False
        self.address = ""
        self.metrics_address = ""

    async def start(self) -> dict:
        """Start serving and create the workers; returns where it listens. Idempotent."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        return await asyncio.shield(self._started)

    async def _start(self) -> dict:
        import ray

        from scheduler.realtime import set_realtime_priority
        from scheduler.registry import build_policy

        if self.realtime_priority:
            set_realtime_priority(self.realtime_priority)  # before the gRPC server starts its threads

        self.cluster = Cluster(self.config)
        policy = build_policy(self.policy_config or self.config.policy, self.config)
        core = self.core = SchedulerCore(self.cluster, policy, self.options)
        core.on_worker_failed = self._on_worker_failed
        servicer = SchedulerServicer(core)
        bind, advertise = resolve_host(self.host)
        if self.frontends:
            self._frontends = FrontendPool(servicer, self.frontends, self.realtime_priority,
                                           start_timeout_s=self.start_timeout_s)
            port = await self._frontends.start(bind, self.port)
        else:
            def add(server):
                scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
                return [SCHEDULER_SERVICE]

            self._server, port, _ = await start_grpc_server(bind, add, port=self.port)
        self.address = f"{advertise}:{port}"
        if self.metrics_port is not None:
            self._metrics = _Metrics(core, self._frontends)
            mport = self._metrics.serve(self.metrics_host, self.metrics_port)
            self.metrics_address = f"http://{self.metrics_host}:{mport}/metrics"
        me = ray.get_runtime_context().current_actor
        self._handles = [self._create_worker(i, me) for i in range(self.cluster.n_instances)]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.registered.wait() for s in core.slots)), self.start_timeout_s)
        except TimeoutError:
            missing = [s.instance for s in core.slots if not s.registered.is_set()]
            available = ray.cluster_resources()
            lacking = {k: v for k, v in pool_resources(self.cluster).items() if available.get(k, 0.0) < v}
            hint = (f"; the Ray cluster lacks resources {lacking} (start nodes with --resources)" if lacking else "")
            raise RuntimeError(f"workers for instances {missing} did not start within "
                               f"{self.start_timeout_s:.0f} s{hint}") from None
        core.start()
        # Everything allocated so far lives as long as the actor; frozen, it is left out of
        # the full collections that would otherwise scan it each time (one took 55 ms at
        # 500 requests/s, and the event loop stands still meanwhile).
        gc.freeze()
        return self.describe()

    def _create_worker(self, instance: int, me=None):
        import ray

        me = me or ray.get_runtime_context().current_actor
        pool = self.cluster.pool_of(instance)
        spec = WorkerSpec(pool=pool.name, instance=instance, role=int(pool.role), max_batch=pool.config.max_batch,
                          max_batch_tokens=pool.config.max_batch_tokens, token_budget=pool.config.engine_token_budget,
                          link_bytes_per_s=pool.config.link_bytes_per_s,
                          prefix_block_tokens=(self.config.prefix_cache.block_tokens
                                               if self.config.prefix_cache.enabled else 0))
        # A decode worker's input (KV) comes from a prefill worker, which itself produces
        # its first tokens one slack late: decode workers run two slacks behind.
        slack = self.options.worker_slack_s * (2 if pool.role == Role.DECODE else 1)
        return worker_actor_class().options(
            num_cpus=0, max_restarts=self.worker_max_restarts, max_task_retries=0,
            resources={device_resource(pool.config.device): float(pool.perf.chips)},
        ).remote(spec, pool.perf, me, host=self.worker_host, time_scale=self.options.time_scale,
                 rpc_timeout_s=self.options.rpc_timeout_s, input_slack_s=slack)

    def describe(self) -> dict:
        return {"address": self.address, "metrics": self.metrics_address, "cluster": self.config.name,
                "realtime_priority": self.realtime_priority, "frontends": self.frontends,
                "frontend_pids": self._frontends.pids() if self._frontends is not None else [],
                "policy": self.core.policy.name if self.core else "", "time_scale": self.options.time_scale,
                "workers": [{"instance": w.instance, "pool": w.pool, "address": w.address, "state": w.state.name}
                            for w in self.core.workers()] if self.core else []}

    async def register_worker(self, instance: int, worker_id: str, address: str) -> bool:
        """Called by each worker actor when it starts (and again after a restart)."""
        while self.core is None:  # a worker can be faster than _start's bookkeeping
            await asyncio.sleep(0.01)
        if self._stopped:
            return False
        return self.core.register(instance, worker_id, address)

    def _on_worker_failed(self, instance: int) -> None:
        if instance not in self._reviving and not self._stopped:
            self._reviving.add(instance)
            asyncio.get_running_loop().create_task(self._revive(instance))

    async def _revive(self, instance: int) -> None:
        """Bring a failed instance back: a false alarm answers a probe; a crashed actor
        is restarted by Ray and registers itself (or its new address is pulled here);
        an actor out of restarts is replaced."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        core = self.core
        slot = core.slots[instance]
        failed_id = slot.worker_id
        try:
            if await core.probe(instance):
                core.mark_ready(instance)
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.start_timeout_s
            while not self._stopped and slot.state == WorkerState.FAILED and loop.time() < deadline:
                handle = self._handles[instance]
                try:
                    info = await asyncio.wait_for(handle.info.remote(), 10.0)
                    if info["worker_id"] == failed_id:
                        if await core.probe(instance):
                            core.mark_ready(instance)
                        else:
                            await asyncio.sleep(0.2)
                    else:
                        core.register(instance, info["worker_id"], info["address"])
                except ActorDiedError:
                    log.warning("worker actor for instance %d is out of restarts; replacing it", instance)
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                    self._handles[instance] = self._create_worker(instance)
                    self._replaced += 1
                except (ActorUnavailableError, RayActorError, TimeoutError):
                    await asyncio.sleep(0.2)
        finally:
            self._reviving.discard(instance)
            if slot.state == WorkerState.FAILED and not self._stopped:
                log.error("instance %d did not come back within %.0f s", instance, self.start_timeout_s)

    async def worker_handles(self) -> list:
        return list(self._handles)

    async def stats(self) -> SchedulerStatsView:
        return self.core.stats()

    async def ping(self) -> bool:
        return True

    async def stop(self) -> None:
        """Stop serving, stop and kill every worker actor, free the ports (idempotent)."""
        import ray

        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            await self._server.stop(1.0)
            self._server = None
        if self._frontends is not None:
            await self._frontends.stop()
        if self._metrics is not None:
            self._metrics.close()
        if self.core is not None:
            await self.core.close()
        stops = [asyncio.wait_for(h.stop.remote(), 5.0) for h in self._handles]
        await asyncio.gather(*stops, return_exceptions=True)
        for handle in self._handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)


_SCHEDULER_ACTOR_CLASS = None


def scheduler_actor_class():
    """SchedulerActor as a Ray actor class (Ray imported on first use)."""
    global _SCHEDULER_ACTOR_CLASS
    if _SCHEDULER_ACTOR_CLASS is None:
        import ray

        _SCHEDULER_ACTOR_CLASS = ray.remote(SchedulerActor)
    return _SCHEDULER_ACTOR_CLASS


def start_scheduler(config: ClusterConfig, *, name: str | None = None, timeout_s: float = 180.0,
                    **kwargs: Any) -> tuple[Any, dict]:
    """From a Ray driver: create the scheduler actor on this node and start it.
    Returns (actor handle, describe() dict). Blocking; not for use inside actors."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": 0, "max_restarts": 0,
        # On this node, so a scheduler bound to 127.0.0.1 is reachable by local clients.
        "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    }
    if name:
        options["name"] = name
    actor = scheduler_actor_class().options(**options).remote(config, **kwargs)
    try:
        info = ray.get(actor.start.remote(), timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            ray.get(actor.stop.remote(), timeout=10)
        ray.kill(actor, no_restart=True)
        raise
    return actor, info


def stop_scheduler(actor, timeout_s: float = 30.0) -> None:
    """From a Ray driver: stop the scheduler (and its workers) and kill its actor."""
    import ray

    try:
        ray.get(actor.stop.remote(), timeout=timeout_s)
    finally:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


__all__ = [
    "DuplicateRequest", "GenerateInput", "InvalidRequest", "LiveOptions", "Overloaded", "RequestOutcome",
    "SchedulerActor", "SchedulerCore", "SchedulerServicer", "SchedulerStatsView", "TokenEvent", "WorkerState",
    "device_resource", "pool_resources", "scheduler_actor_class", "start_scheduler", "stop_scheduler",
]
