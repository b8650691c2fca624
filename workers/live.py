"""Live workers: the simulator's continuous-batching engine on a scaled real clock,
served over gRPC from an async Ray actor.

Three layers, innermost first:

- `EmulatedWorker` (asyncio, no I/O) drives one `BatchEngine` on a real clock:
  modelled seconds * `time_scale` = wall seconds (0.01 runs 100x faster than
  the modelled hardware). Its clock reads modelled seconds since the worker
  started. A timer fires when the clock reaches the engine's next wake and the
  engine is woken *at the scheduled modelled time*, so a late timer (a busy
  machine, a GC pause) delays when results are delivered but never changes a
  modelled timing: queueing, batching and every reported span are exactly what
  the engine computes from the arrival times it saw. Work is admitted at the
  modelled time its sender sent it (transit between processes is not modelled
  time), and the engine runs `input_slack_s` wall seconds behind the clock so
  that such work still finds the engine before that time: conservative
  synchronisation with a fixed lookahead. The slack delays results, never their
  modelled times.
- `WorkerServicer` is the `infersched.v1.Worker` gRPC service: it converts
  proto <-> core in one place, answers bad fields with INVALID_ARGUMENT and a
  reason, and frees a request's slot and KV when its call is cancelled. The
  scheduler uses its Session stream: the same prefill and decode work as the
  Prefill and Decode calls, for many requests on one call, with the progress
  that is ready at the same moment gathered into one message (`_Outbox`).
- `WorkerActor` is the async Ray actor: it hosts a grpc.aio server (Worker,
  health, reflection) on `host:0`, registers its address with the scheduler
  (also after Ray restarts it), and exposes a few idempotent methods.

KV hand-over (prefill-only workers): after prefill the worker streams the
request's KV to the decode worker itself, in blocks of `kv_block_tokens` tokens
with msgpack metadata, on one long-lived `TransferKvStream` per decode worker
that carries all its hand-overs there (`_KvLink`; `TransferKv` does the same
for one request per call). The modelled transfer time
`InstancePerf.kv_transfer_s(prompt tokens, min(own link, decode link))` is what
the clock waits: blocks are paced over it, and the source link carries one
hand-over at a time (FIFO), as in the simulator. Payloads are placeholders
sized down from the modelled KV: one byte per MiB of modelled KV (at least one
byte per block); the metadata's `shape`, `dtype` and `modelled_bytes` describe
the real tensor, so accounting stays exact while loopback carries bytes, not
gigabytes. The decode worker acknowledges once the request has joined its
decode batch; the prefill worker then frees its copy as of the modelled end of
the transfer (the simulator frees it at `JOINED`: the same moment unless the
decode batch had no room).

Contract extensions, carried in gRPC metadata of the unary and client-streaming
calls (the Session stream has fields for the load report, the engine state, the
send time, the decode link, the hand-over time and the decode summary, with the
same contents):

- ``infersched-load`` (trailing metadata of every Worker RPC): the worker's
  snapshot row and usage,
  ``"received queued queued_tokens running kv_free busy_remaining_s activity
  busy_s now_s unix_s engine_s prefill_tokens decode_tokens
  dynamic_energy_j"`` (`LoadReport`). `received` counts admitted prefills, so
  the scheduler can tell which of its dispatches a report already includes.
- ``infersched-engine-bin`` (next to every ``infersched-load`` sent to the
  scheduler): the engine's state, msgpack (`engine_state`). The scheduler
  restores it into a replica engine and advances that to each decision, so its
  snapshot row is current although the report is a loopback hop old (see
  "engine replicas" below). A decode batch of 256 is ~15 KB, so servers and
  channels raise gRPC's metadata limit (`GRPC_OPTIONS`).
- ``infersched-decode-link-bps`` (Prefill request): the decode worker's link
  in bytes/s; without it the hand-over runs at this worker's own link.
- ``infersched-sent-unix`` (Prefill request): the caller's Unix time when it
  sent the call. The worker admits the prompt at the modelled time of sending,
  so loopback transit (a real ~0.2 ms) is not inflated by 1 / time_scale into
  modelled queueing. Both ends read the same clock on one machine; across
  nodes the error is their clock offset. KV blocks carry the same idea as
  ``ready_unix_s``: the Unix time at which the modelled transfer completes.
- ``infersched-handover`` (Prefill trailing metadata): ``"sent_s"``, modelled
  seconds from the end of prefill to the KV being complete at the decode
  worker (link queue + transfer); `kv_transfer_s` in the response runs on to
  the acknowledgement, i.e. includes the wait for a decode slot.
- ``infersched-decode`` (Decode trailing metadata):
  ``"wait_s decode_s energy_j cost_usd"``: modelled seconds from KV arrival to
  joining the batch, from joining to the last token, and the decode share of
  energy and cost.
- ``infersched-failed-peer`` (Prefill trailing metadata of a failed
  hand-over): the address of the decode worker that failed.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from infersched.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from workers.engine import (
    DECODE,
    FINISHED,
    FIRST_TOKEN,
    IDLE,
    JOINED,
    ROLE_BOTH,
    ROLE_DECODE,
    ROLE_PREFILL,
    PREFILL,
    BatchEngine,
)
from workers.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from workers.perf import InstancePerf

log = logging.getLogger(__name__)

LOAD_KEY = "infersched-load"
ENGINE_KEY = "infersched-engine-bin"
LINK_KEY = "infersched-decode-link-bps"
SENT_KEY = "infersched-sent-unix"
HANDOVER_KEY = "infersched-handover"
DECODE_KEY = "infersched-decode"
FAILED_PEER_KEY = "infersched-failed-peer"

DEFAULT_CHUNK_TOKENS = 16
# While Decode streams are open, tokens decoded so far are streamed at least this often
# (wall seconds), also in the middle of a long closed-form decode segment.
DEFAULT_STREAM_INTERVAL_S = 0.02
# Wall seconds the engine runs behind the clock (see EmulatedWorker). Work sent to a
# worker reaches it within this slack even on a busy 2-core machine, so it is admitted
# at the exact modelled time it was sent.
DEFAULT_INPUT_SLACK_S = 0.05
# Wall seconds after which a Session message carries the engine's state even when
# nothing the scheduler's replica cannot foresee happened (see Session).
ENGINE_STATE_REFRESH_S = 0.1
# Engine states ride in metadata (a decode batch of 256 is ~15 KB), above gRPC's 8 KiB default.
GRPC_OPTIONS = (("grpc.max_metadata_size", 4 << 20), ("grpc.absolute_max_metadata_size", 4 << 20))
# Servers: grpc-core cancels (CANCELLED) calls that arrive while more than 1,000 wait
# for the Python server to pick them up (3,000 hard), before any handler can see, answer
# or count them. A burst of requests must reach the scheduler's own bound instead
# (max_queue -> RESOURCE_EXHAUSTED), so the limits are raised far above it.
SERVER_OPTIONS = GRPC_OPTIONS + (("grpc.server.max_pending_requests", 1 << 16),
                                 ("grpc.server.max_pending_requests_hard_limit", 1 << 17))
# Tokens of KV per TransferKv block: most prompts fit one block, which keeps the
# hand-over to a few messages (each costs ~0.1 ms of CPU in Python gRPC).
DEFAULT_KV_BLOCK_TOKENS = 4096
# Placeholder payload: one byte per MiB of modelled KV (a 1,000-token Llama-3.1-8B
# prompt is ~128 MiB of KV, so ~128 bytes cross loopback instead).
PAYLOAD_SCALE_BYTES = 1 << 20
# A request whose KV is ready here (colocated prefill, or a hand-over) but that no
# Decode call claims within this many wall seconds is dropped and its KV freed.
DEFAULT_CLAIM_TIMEOUT_S = 30.0
# Pacing KV blocks with sleeps shorter than this costs more than it models: asyncio
# timers resolve to about a millisecond, so shorter waits are skipped (the receiver
# still admits the KV at its modelled completion time, `ready_unix_s`).
_MIN_SLEEP_S = 1e-3

_KV_DTYPES = {4.0: "float32", 2.0: "bfloat16", 1.0: "float8_e4m3fn"}
# grpc.StatusCode names by their numeric value (WorkError carries the number).
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_INF = math.inf


# ---------------------------------------------------------------------------
# Errors the core raises; the servicer maps each to one gRPC status code.


class WorkerError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidField(WorkerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyHeld(WorkerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NotHeld(WorkerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WrongRole(WorkerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Draining(WorkerError):
    code = grpc.StatusCode.UNAVAILABLE


class NoCapacity(WorkerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(WorkerError):
    code = grpc.StatusCode.CANCELLED


class PeerFailed(WorkerError):
    """The decode worker of a hand-over failed or refused it."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, address: str, detail: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        super().__init__(f"decode worker at {address}: {detail}")
        self.address = address
        self.code = code


class WorkerState(enum.IntEnum):
    """Mirrors infersched.v1.WorkerState (same numbers)."""

    STARTING = 1
    READY = 2
    DRAINING = 3
    DRAINED = 4
    FAILED = 5


class _St(enum.IntEnum):
    """Where a request is on this worker."""

    ARRIVING = 7  # KV received, admitted at its modelled completion time
    WAITING = 0  # queued for prefill, or in the prefill iteration running (the engine moves it silently)
    PREFILLING = 1  # in the running prefill iteration, cancelled: leaves when the iteration ends
    HELD = 2  # prefill-only: KV held until the hand-over is acknowledged
    JOINING = 3  # KV here, waiting for a decode slot
    DECODING = 4
    FINISHED = 5
    GONE = 6  # cancelled or delivered


# ---------------------------------------------------------------------------
# Values that cross the core boundary.


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A worker's snapshot row as it reports it (`infersched-load`)."""

    received: int  # prefills admitted since the worker started
    queued: int
    queued_tokens: int
    running: int
    kv_free: int
    busy_remaining_s: float  # modelled seconds until the current iteration ends; 0 when idle
    activity: int  # engine activity: 0 idle, 1 prefill, 2 decode, 3 both (chunked prefill beside decode)
    busy_s: float  # modelled busy seconds since the worker started
    now_s: float  # the worker clock when the report was taken
    unix_s: float  # the same moment in Unix time
    engine_s: float  # the worker-clock time the engine (and its state) had been driven to
    # Usage since the worker started (as GetWorkerStats reports it), so the scheduler's
    # counters are current after every response, not only after a poll.
    prefill_tokens: int = 0
    decode_tokens: int = 0
    dynamic_energy_j: float = 0.0

    def encode(self) -> str:
        return (f"{self.received} {self.queued} {self.queued_tokens} {self.running} {self.kv_free} "
                f"{self.busy_remaining_s:.9g} {self.activity} {self.busy_s:.9g} {self.now_s:.9f} {self.unix_s:.6f} "
                f"{self.engine_s:.9f} {self.prefill_tokens} {self.decode_tokens} {self.dynamic_energy_j:.9g}")

    @classmethod
    def decode(cls, text: str) -> "LoadReport":
        f = text.split()
        if len(f) != 14:
            raise ValueError(f"a load report needs 14 fields, got {len(f)}: {text!r}")
        return cls(int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4]), float(f[5]), int(f[6]), float(f[7]),
                   float(f[8]), float(f[9]), float(f[10]), int(f[11]), int(f[12]), float(f[13]))


@dataclass(frozen=True, slots=True)
class PrefillOutcome:
    """Modelled spans of one prefill on this worker."""

    queue_s: float  # admitted -> prefill start
    prefill_s: float
    energy_j: float
    cost_usd: float
    first_token_s: float  # worker clock
    cached_tokens: int = 0  # prompt tokens served from this worker's prefix cache


@dataclass(frozen=True, slots=True)
class HandOverOutcome:
    kv_transfer_s: float  # end of prefill -> decode worker's acknowledgement (modelled)
    sent_s: float  # end of prefill -> KV complete at the decode worker (modelled link queue + transfer)
    blocks: int
    modelled_bytes: int


@dataclass(frozen=True, slots=True)
class DecodeSummary:
    """What the Decode trailer carries (`infersched-decode`)."""

    wait_s: float  # KV arrival -> joined the decode batch (0 when colocated)
    decode_s: float  # joined (or first token, colocated) -> last token
    energy_j: float
    cost_usd: float

    def encode(self) -> str:
        return f"{self.wait_s:.9g} {self.decode_s:.9g} {self.energy_j:.9g} {self.cost_usd:.9g}"

    @classmethod
    def decode(cls, text: str) -> "DecodeSummary":
        f = text.split()
        if len(f) != 4:
            raise ValueError(f"decode summary needs 4 fields, got {len(f)}: {text!r}")
        return cls(float(f[0]), float(f[1]), float(f[2]), float(f[3]))


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


# A chunk of output tokens: (index of its first token, token count, emit time on the worker clock).
Chunk = tuple[int, int, float]
_END = None


class _Req:
    __slots__ = (
        "key", "eid", "inp", "out", "state", "submit_s", "prefill_start_s", "first_token_s", "kv_arrival_s",
        "join_s", "join_step", "finish_s", "prefill_energy_j", "prefill_cost_usd", "decode_energy_j",
        "decode_cost_usd", "first_token", "joined", "chunks", "chunk_tokens", "emitted", "claimed",
        "cancel_pending", "orphan_timer", "arrival_timer", "cached_tokens",
    )

    def __init__(self, key: str, eid: int, inp: int, out: int, state: _St, loop: asyncio.AbstractEventLoop):
        self.key = key
        self.eid = eid
        self.inp = inp
        self.out = out
        self.state = state
        self.submit_s = 0.0
        self.prefill_start_s = math.nan
        self.first_token_s = math.nan
        self.kv_arrival_s = math.nan
        self.join_s = math.nan
        self.join_step = 0
        self.finish_s = math.nan
        self.prefill_energy_j = 0.0
        self.prefill_cost_usd = 0.0
        self.cached_tokens = 0
        self.decode_energy_j = 0.0
        self.decode_cost_usd = 0.0
        self.first_token: asyncio.Future = loop.create_future()
        self.joined: asyncio.Future = loop.create_future()
        self.chunks: asyncio.Queue | None = None
        self.chunk_tokens = DEFAULT_CHUNK_TOKENS
        self.emitted = 1  # index 0 is the first token, which prefill produces
        self.claimed = False
        self.cancel_pending = False
        self.orphan_timer: asyncio.TimerHandle | None = None
        self.arrival_timer: asyncio.TimerHandle | None = None


# ---------------------------------------------------------------------------
# The emulated worker.


class EmulatedWorker:
    """One BatchEngine on a scaled real clock; per-request futures and token queues.

    Work is keyed by the caller's request key (a string); the engine sees small
    integer ids. Everything runs on one asyncio loop: engine calls are plain
    synchronous code between awaits, so no locks are needed.
    """

    def __init__(self, perf: "InstancePerf", role: int, *, max_batch: int = 256, max_batch_tokens: int = 16384,
                 time_scale: float = 0.01, link_bytes_per_s: float = 50e9, worker_id: str = "", pool: str = "",
                 instance: int = -1, kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS,
                 claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
                 stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
                 input_slack_s: float = DEFAULT_INPUT_SLACK_S, prefix_block_tokens: int = 0, token_budget: int = 0):
        if not time_scale > 0 or not math.isfinite(time_scale):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        if role not in (ROLE_PREFILL, ROLE_DECODE, ROLE_BOTH):
            raise ValueError(f"unknown role {role!r}")
        if not link_bytes_per_s > 0:
            raise ValueError(f"link_bytes_per_s must be positive, got {link_bytes_per_s!r}")
        self.perf = perf
        self.role = int(role)
        # Prompts sent with block hashes skip the prefix this worker still caches (0: no cache).
        prefix = PrefixCache(prefix_block_tokens) if prefix_block_tokens > 0 and role != ROLE_DECODE else None
        # token_budget > 0: chunked prefill with that many tokens per iteration (0: prefill-first).
        self.engine = BatchEngine(perf, role, max_batch, max_batch_tokens, prefix, token_budget)
        self.time_scale = float(time_scale)
        self.link_bytes_per_s = float(link_bytes_per_s)
        self.worker_id = worker_id or f"{pool or 'worker'}-{uuid.uuid4().hex[:8]}"
        self.pool = pool
        self.instance = instance
        self.kv_block_tokens = int(kv_block_tokens)
        self.claim_timeout_s = float(claim_timeout_s)
        self.stream_interval_s = float(stream_interval_s)
        if not input_slack_s >= 0:
            raise ValueError(f"input_slack_s must be >= 0, got {input_slack_s!r}")
        self.input_slack_s = float(input_slack_s)
        self._tick: asyncio.TimerHandle | None = None
        self.state = WorkerState.STARTING
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._reqs: dict[str, _Req] = {}
        self._by_eid: dict[int, _Req] = {}
        self._next_eid = 0
        self._events: list = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._engine_t = 0.0  # latest time the engine was driven to (wake or poke)
        self._remove_pending: set[int] = set()
        self._streaming: set[_Req] = set()
        self._link_free_s = 0.0
        self._idle = asyncio.Event()
        self.received = 0
        self.completed = 0

    # ---- clock ------------------------------------------------------------
    def start(self) -> None:
        """Start the clock (modelled time 0) on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._idle.set()
        self.state = WorkerState.READY

    def now(self) -> float:
        return (self._loop.time() - self._t0) / self.time_scale

    def wall_at(self, modelled_s: float) -> float:
        return self._t0 + modelled_s * self.time_scale

    async def sleep_until(self, modelled_s: float) -> None:
        delay = (modelled_s - self.now()) * self.time_scale
        if delay >= _MIN_SLEEP_S:
            await asyncio.sleep(delay)

    def unix_at(self, modelled_s: float) -> float:
        """Unix time at which this worker's clock reads `modelled_s`."""
        return time.time() + (modelled_s - self.now()) * self.time_scale

    def modelled_at_unix(self, unix_s: float) -> float:
        return self.now() + (unix_s - time.time()) / self.time_scale

    def stop(self) -> None:
        """Cancel everything in flight and stop the clock."""
        for key in list(self._reqs):
            self.cancel(key)
        for handle in (self._timer, self._tick):
            if handle is not None:
                handle.cancel()
        self._timer = self._tick = None
        self.state = WorkerState.DRAINED

    # ---- admission --------------------------------------------------------
    def _check_open(self) -> None:
        if self.state != WorkerState.READY:
            raise Draining(f"worker {self.worker_id} is {self.state.name.lower()}; it takes no new work")

    def _new_req(self, key: str, inp: int, out: int, state: _St) -> _Req:
        if key in self._reqs:
            raise AlreadyHeld(f"request {key!r} is already on worker {self.worker_id}")
        eid = self._next_eid
        self._next_eid += 1
        req = _Req(key, eid, inp, out, state, self._loop)
        self._reqs[key] = req
        self._by_eid[eid] = req
        self._idle.clear()
        return req

    def admit_prefill(self, key: str, input_tokens: int, output_tokens: int, sent_unix: float | None = None,
                      block_hashes: tuple = ()) -> _Req:
        """Queue a prompt for prefill (synchronous: the engine sees it at once). With
        `sent_unix`, the prompt is admitted at the modelled time the caller sent it; with
        `block_hashes`, the part this worker's prefix cache holds is not recomputed."""
        self._check_open()
        if self.role == ROLE_DECODE:
            raise WrongRole(f"worker {self.worker_id} is decode-only; send prefill to a prefill or colocated worker")
        _check_count("prompt_length", input_tokens)
        _check_count("max_output_tokens", output_tokens)
        need = input_tokens if self.role == ROLE_PREFILL else input_tokens + output_tokens
        if need > self.engine.kv_capacity:
            raise NoCapacity(f"request needs {need} tokens of KV; this instance holds at most "
                             f"{self.engine.kv_capacity}")
        req = self._new_req(key, input_tokens, output_tokens, _St.WAITING)
        self.received += 1
        now = self.now()
        sent = min(self.modelled_at_unix(sent_unix), now) if sent_unix else None
        t = self._engine_at(now if sent is None else sent)
        if t != sent:  # not at the time it was sent (no send time, or later than the slack allows)
            self.engine.unforeseen += 1
        req.submit_s = t
        self.engine.submit_prefill(req.eid, input_tokens, output_tokens, block_hashes)
        self._poke(t)
        return req

    def admit_kv(self, key: str, input_tokens: int, output_tokens: int, ready_unix: float | None = None) -> _Req:
        """A handed-over request's KV arrived: from its modelled completion time
        (`ready_unix`; default now) it waits for a decode slot."""
        self._check_open()
        if self.role != ROLE_DECODE:
            raise WrongRole(f"worker {self.worker_id} is not a decode worker; it takes no KV hand-overs")
        _check_count("token_end", input_tokens)
        _check_count("max_output_tokens", output_tokens)
        if output_tokens < 2:
            raise InvalidField("key 'max_output_tokens': a hand-over needs at least 2 output tokens "
                               f"(the first comes from prefill), got {output_tokens}")
        need = input_tokens + output_tokens
        if need > self.engine.kv_capacity:
            raise NoCapacity(f"request needs {need} tokens of KV; this instance holds at most "
                             f"{self.engine.kv_capacity}")
        req = self._new_req(key, input_tokens, output_tokens, _St.ARRIVING)
        now = self.now()
        ready = self.modelled_at_unix(ready_unix) if ready_unix else now
        if ready > now:
            req.arrival_timer = self._loop.call_at(self.wall_at(ready), self._kv_ready, req, ready)
        else:
            self._kv_ready(req, ready)
        return req

    def _kv_ready(self, req: _Req, ready: float) -> None:
        req.arrival_timer = None
        if req.state != _St.ARRIVING:
            return
        now = self.now()
        t = self._engine_at(min(ready, now))
        req.state = _St.JOINING
        req.kv_arrival_s = t
        self.engine.submit_decode(req.eid, req.inp, req.out)
        self._poke(t)

    async def first_token(self, req: _Req) -> PrefillOutcome:
        await self._await(req, req.first_token)
        return PrefillOutcome(
            queue_s=req.prefill_start_s - req.submit_s, prefill_s=req.first_token_s - req.prefill_start_s,
            energy_j=req.prefill_energy_j, cost_usd=req.prefill_cost_usd, first_token_s=req.first_token_s,
            cached_tokens=req.cached_tokens)

    async def joined(self, req: _Req) -> None:
        await self._await(req, req.joined)
        self._arm_orphan(req)

    async def _await(self, req: _Req, fut: asyncio.Future) -> None:
        """Wait for one of a request's milestones. The caller being cancelled cancels the
        request; the request being cancelled elsewhere raises Cancelled."""
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.cancelled() and not asyncio.current_task().cancelling():
                raise Cancelled(f"request {req.key!r} was cancelled on worker {self.worker_id}") from None
            self.cancel(req.key)
            raise

    def keep_for_decode(self, req: _Req) -> None:
        """A colocated request stays here for its Decode call."""
        self._arm_orphan(req)

    # ---- hand-over (prefill-only workers) ---------------------------------
    def kv_blocks(self, req: _Req) -> list[tuple[dict, bytes]]:
        """The request's KV as (metadata, placeholder payload) blocks, in token order."""
        model = self.perf.model
        per_token = self.perf.kv_bytes_per_token
        dtype = _KV_DTYPES.get(float(model.kv_dtype_bytes), "uint8")
        step = self.kv_block_tokens
        n = max(1, -(-req.inp // step))
        blocks = []
        for k in range(n):
            start = k * step
            end = min(req.inp, start + step)
            modelled = int((end - start) * per_token)
            meta = {
                "request_id": req.key, "block_index": k, "num_blocks": n, "token_start": start, "token_end": end,
                "dtype": dtype, "shape": [model.layers, 2, end - start, model.kv_heads, model.head_dim],
                "max_output_tokens": req.out, "modelled_bytes": modelled,
            }
            blocks.append((meta, b"\0" * max(1, modelled // PAYLOAD_SCALE_BYTES)))
        return blocks

    async def hand_over(self, req: _Req, peer_link_bytes_per_s: float | None,
                        send: Callable[[AsyncIterator[tuple[dict, bytes]]], Awaitable[Any]]) -> HandOverOutcome:
        """Stream the KV to the decode worker through `send`, paced over the modelled
        transfer time; free this worker's copy once the decode side acknowledged."""
        if req.state != _St.HELD:
            raise NotHeld(f"request {req.key!r} holds no KV here to hand over")
        link = self.link_bytes_per_s
        if peer_link_bytes_per_s is not None and peer_link_bytes_per_s > 0:
            link = min(link, peer_link_bytes_per_s)
        start = max(req.first_token_s, self._link_free_s)
        duration = self.perf.kv_transfer_s(req.inp, link)
        self._link_free_s = start + duration
        done = start + duration
        blocks = self.kv_blocks(req)
        n = len(blocks)

        async def paced() -> AsyncIterator[tuple[dict, bytes]]:
            for k, (meta, payload) in enumerate(blocks):
                await self.sleep_until(start + duration * (k + 1) / n)
                meta["ready_unix_s"] = self.unix_at(done)
                yield meta, payload

        try:
            await send(paced())
        finally:
            # Acknowledged (the decode side joined it), failed or cancelled: either way
            # this worker is done with the request. Freed as of the modelled completion of
            # the transfer (the decode side joins it then, or soon after).
            self._release_held(req, done)
            self._forget(req)
        return HandOverOutcome(kv_transfer_s=self.now() - req.first_token_s, sent_s=done - req.first_token_s,
                               blocks=n, modelled_bytes=int(req.inp * self.perf.kv_bytes_per_token))

    def release_held(self, req: _Req) -> None:
        """Free the KV of a prefill-only request that needs no hand-over (one output token)."""
        self._release_held(req, req.first_token_s)
        self._forget(req)

    def _release_held(self, req: _Req, at_s: float | None = None) -> None:
        if req.state == _St.HELD:
            req.state = _St.GONE
            t = self._engine_at(self.now() if at_s is None else at_s)
            self.engine.release(req.eid)
            self._poke(t)

    # ---- decode -----------------------------------------------------------
    def claim(self, key: str, max_output_tokens: int = 0, chunk_tokens: int = 0) -> _Req:
        """Attach a Decode stream to a request whose KV is here."""
        req = self._reqs.get(key)
        if req is None or req.state not in (_St.ARRIVING, _St.JOINING, _St.DECODING, _St.FINISHED):
            raise NotHeld(f"no KV for request {key!r} on worker {self.worker_id}; run Prefill here or "
                          "TransferKv to here first")
        if req.claimed:
            raise AlreadyHeld(f"request {key!r} is already being decoded")
        if max_output_tokens and max_output_tokens != req.out:
            raise InvalidField(f"field 'max_output_tokens': {max_output_tokens} differs from the {req.out} the KV "
                               "was reserved for")
        if chunk_tokens < 0:
            raise InvalidField(f"field 'chunk_tokens': must be >= 0, got {chunk_tokens}")
        req.claimed = True
        req.chunk_tokens = chunk_tokens or DEFAULT_CHUNK_TOKENS
        req.chunks = asyncio.Queue()
        if req.orphan_timer is not None:
            req.orphan_timer.cancel()
            req.orphan_timer = None
        if req.state == _St.FINISHED:
            self._push_final(req)
        elif req.state == _St.DECODING:
            self._streaming.add(req)
            self._push_progress(req, self.engine.step, self.now())
            self._arm_tick()
        return req

    def _arm_tick(self) -> None:
        if self._tick is None and self._streaming and self._loop is not None:
            self._tick = self._loop.call_later(self.stream_interval_s, self._on_tick)

    def _on_tick(self) -> None:
        """Stream the tokens decoded so far inside the running segment (read-only: the
        segment's closed form tells how many steps are done by now)."""
        self._tick = None
        if not self._streaming:
            return
        now = self.now()
        eng = self.engine
        if eng.activity & DECODE and now > eng.act_start_s:
            step = eng.step + eng.steps_done_by(now)
            for req in list(self._streaming):
                self._push_progress(req, step, now)
        self._arm_tick()

    async def stream(self, req: _Req) -> AsyncIterator[Chunk]:
        """Token chunks (indices from 1) until the last token."""
        queue = req.chunks
        while True:
            item = await queue.get()
            if item is _END:
                if req.state != _St.FINISHED:
                    raise Cancelled(f"request {req.key!r} was cancelled on worker {self.worker_id}")
                return
            yield item

    def decode_summary(self, req: _Req) -> DecodeSummary:
        wait = 0.0 if math.isnan(req.kv_arrival_s) else req.join_s - req.kv_arrival_s
        start = req.join_s if not math.isnan(req.join_s) else req.first_token_s
        return DecodeSummary(wait_s=wait, decode_s=req.finish_s - start, energy_j=req.decode_energy_j,
                             cost_usd=req.decode_cost_usd)

    def finish_delivery(self, req: _Req) -> None:
        """The Decode stream delivered everything: forget the request."""
        self._forget(req)

    # ---- cancellation -----------------------------------------------------
    def cancel(self, key: str) -> bool:
        """Drop a request wherever it is; its batch slot and KV are freed. True if it was here."""
        req = self._reqs.get(key)
        if req is None or req.cancel_pending:
            return False
        eng = self.engine
        now = self._catch_up()
        state = req.state
        if state == _St.ARRIVING:
            if req.arrival_timer is not None:
                req.arrival_timer.cancel()
                req.arrival_timer = None
        elif state == _St.WAITING and eng.remove_waiting(req.eid):
            pass
        elif state in (_St.WAITING, _St.PREFILLING):
            # The iteration is computing; the request leaves when it ends (see _drop_after_prefill).
            req.state = _St.PREFILLING
            req.cancel_pending = True
            self._fail_futures(req)
            return True
        elif state == _St.HELD:
            eng.release(req.eid)
            self._poke(now)
        elif state == _St.JOINING:
            eng.remove_joining(req.eid)
        elif state == _St.DECODING:
            self._cancel_member(req, now)
        self._streaming.discard(req)
        req.state = _St.GONE
        self._fail_futures(req)
        self._forget(req)
        self._reschedule()
        return True

    def _fail_futures(self, req: _Req) -> None:
        for fut in (req.first_token, req.joined):
            if not fut.done():
                fut.cancel()
        if req.chunks is not None:
            req.chunks.put_nowait(_END)

    def _cancel_member(self, req: _Req, now: float) -> None:
        eng = self.engine
        if req.eid not in eng.members:
            return
        if eng.activity & DECODE and eng.act_start_s < now:
            # The running segment's time was computed with this member in the batch: cut
            # it at the end of the current step and take the member out there.
            eng.poke(now, [])
            self._remove_pending.add(req.eid)
            self._reschedule()
            return
        eng.remove_member(req.eid)
        if eng.activity & DECODE:  # a segment that starts now: recompute it without the member
            self._restart(now)

    def _restart(self, now: float) -> None:
        events: list = []
        self.engine.restart_activity(now, events)
        if events:
            self._handle(now, events)

    # ---- drain / stats ----------------------------------------------------
    def drain(self) -> None:
        if self.state == WorkerState.READY:
            self.state = WorkerState.DRAINING
        if not self._reqs:
            self.state = WorkerState.DRAINED

    async def wait_idle(self, timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass
        if self.state == WorkerState.DRAINING and not self._reqs:
            self.state = WorkerState.DRAINED

    @property
    def in_flight(self) -> int:
        return len(self._reqs)

    def load(self) -> LoadReport:
        """The engine's row as it stands (it runs up to input_slack_s behind the clock;
        `engine_s` says where, and the scheduler's replica advances it from there)."""
        eng = self.engine
        now = self.now()
        busy = max(eng.next_wake_s - now, 0.0) if eng.activity != IDLE else 0.0
        return LoadReport(self.received, len(eng.waiting) + len(eng.joining), int(eng.waiting_tokens), eng.batch,
                          eng.kv_capacity - eng.kv_reserved, busy, eng.activity, eng.busy_s, now, time.time(),
                          self._engine_t, eng.prefill_tokens, eng.decode_tokens, eng.dynamic_energy_j)

    def engine_state(self) -> bytes:
        """The engine's state (msgpack), for the scheduler's replica; see `engine_state`."""
        return engine_state(self.engine)

    def stats(self) -> WorkerStatsView:
        eng = self.engine
        now = self.now()
        perf = self.perf
        return WorkerStatsView(
            worker_id=self.worker_id, pool=self.pool, instance=self.instance, state=self.state, now_s=now,
            queue_depth=len(eng.waiting) + len(eng.joining), queued_tokens=int(eng.waiting_tokens),
            running=eng.batch, kv_free_tokens=eng.kv_capacity - eng.kv_reserved,
            kv_capacity_tokens=eng.kv_capacity, busy_until_s=eng.next_wake_s if eng.activity != IDLE else 0.0,
            prefill_tokens=eng.prefill_tokens, decode_tokens=eng.decode_tokens, completed=self.completed,
            energy_j=eng.dynamic_energy_j + perf.idle_power_w * now, cost_usd=perf.price_usd_per_s * now,
            busy_s=eng.busy_s, received=self.received, in_flight=len(self._reqs))

    # ---- driving the engine -------------------------------------------------
    def _poke(self, now: float) -> None:
        events = self._events
        events.clear()
        self._engine_t = max(self._engine_t, now)
        self.engine.poke(now, events)
        if events:
            self._handle(now, list(events))
        self._reschedule()

    def _catch_up(self) -> float:
        """Run every wake that is due; returns the current modelled time."""
        now = self.now()
        self._advance_to(now)
        return now

    def _engine_at(self, t: float) -> float:
        """Bring the engine to modelled time `t` (no earlier than where it already is)
        and return the time new input is applied at."""
        t = max(t, self._engine_t)
        self._advance_to(t)
        return t

    def _advance_to(self, t: float) -> None:
        if self.engine.next_wake_s <= t:
            self._advance(t)

    def _reschedule(self) -> None:
        t = self.engine.next_wake_s
        if t == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t < _INF and self._loop is not None:
            self._timer = self._loop.call_at(self.wall_at(t) + self.input_slack_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        at = self._timer_at
        self._timer_at = _INF
        # Advance to the scheduled time only: other timers due meanwhile (a KV becoming
        # ready) run next, in time order, and see the engine at their own time.
        self._advance_to(at)
        self._reschedule()

    def _advance(self, now: float) -> None:
        eng = self.engine
        events = self._events
        decoded = False
        last = now
        while eng.next_wake_s <= now:
            t = eng.next_wake_s
            events.clear()
            self._engine_t = max(self._engine_t, t)
            # The prompts this wake completes, with the tokens each computed (the rest came from cache).
            prefilled = eng.prefill_batch if eng.prefix is not None and eng.activity & PREFILL else None
            eng.wake(t, events)
            if prefilled:
                by_eid = self._by_eid
                for eid, inp, _, computed in prefilled:
                    req = by_eid.get(eid)
                    if req is not None:
                        req.cached_tokens = inp - computed
            if eng.last_kind & DECODE:
                decoded = True
            if self._remove_pending:
                self._apply_removals(t, events)
            if events:
                self._handle(t, list(events))
            last = t
        if decoded and self._streaming:
            step = eng.step
            for req in list(self._streaming):
                self._push_progress(req, step, last)

    def _apply_removals(self, t: float, events: list) -> None:
        eng = self.engine
        removed = False
        for eid in self._remove_pending:
            if eid in eng.members:
                eng.remove_member(eid)
                removed = True
        self._remove_pending.clear()
        if removed and eng.activity & DECODE and eng.act_start_s == t:
            eng.restart_activity(t, events)

    def _handle(self, t: float, events: list) -> None:
        """Apply engine events (kind, request id, time, energy, cost, activity start)."""
        eng = self.engine
        for kind, eid, t, energy, cost, start in events:
            req = self._by_eid.get(eid)
            if req is None:
                continue  # cancelled while its iteration ran
            if kind == FIRST_TOKEN:
                req.prefill_start_s = start
                req.first_token_s = t
                req.prefill_energy_j = energy
                req.prefill_cost_usd = cost
                if self.role == ROLE_PREFILL:
                    req.state = _St.HELD
                else:
                    req.state = _St.DECODING
                    req.join_s = t
                    req.join_step = eng.step
                if req.cancel_pending:
                    self._drop_after_prefill(req, t)
                    continue
                if not req.first_token.done():
                    req.first_token.set_result(None)
            elif kind == FINISHED:
                req.finish_s = t
                req.decode_energy_j = energy
                req.decode_cost_usd = cost
                req.state = _St.FINISHED
                self.completed += 1
                self._streaming.discard(req)
                if req.claimed:
                    self._push_final(req)
            elif kind == JOINED:
                req.state = _St.DECODING
                req.join_s = t
                req.join_step = eng.step
                if req.claimed:
                    self._streaming.add(req)
                    self._arm_tick()
                if not req.joined.done():
                    req.joined.set_result(None)

    def _drop_after_prefill(self, req: _Req, t: float) -> None:
        """A request cancelled during its prefill iteration leaves as the iteration ends."""
        eng = self.engine
        if req.state == _St.HELD:
            eng.release(req.eid)
        elif req.eid in eng.members:
            eng.remove_member(req.eid)
            if eng.activity & DECODE and eng.act_start_s == t:
                self._restart(t)
        req.state = _St.GONE
        self._forget(req)

    def _push_progress(self, req: _Req, step: int, emit_s: float) -> None:
        produced = min(req.out, 1 + step - req.join_step)
        if produced - req.emitted >= req.chunk_tokens:
            req.chunks.put_nowait((req.emitted, produced - req.emitted, emit_s))
            req.emitted = produced

    def _push_final(self, req: _Req) -> None:
        if req.out > req.emitted:
            req.chunks.put_nowait((req.emitted, req.out - req.emitted, req.finish_s))
            req.emitted = req.out
        req.chunks.put_nowait(_END)

    def _arm_orphan(self, req: _Req) -> None:
        if not req.claimed and req.orphan_timer is None and self._loop is not None:
            req.orphan_timer = self._loop.call_later(self.claim_timeout_s, self._orphaned, req.key)

    def _orphaned(self, key: str) -> None:
        req = self._reqs.get(key)
        if req is not None and not req.claimed:
            log.warning("worker %s: no Decode claimed request %r within %.0f s; freeing it", self.worker_id, key,
                        self.claim_timeout_s)
            self.cancel(key)

    def _forget(self, req: _Req) -> None:
        if self._reqs.get(req.key) is req:
            del self._reqs[req.key]
        self._by_eid.pop(req.eid, None)
        self._streaming.discard(req)
        if req.orphan_timer is not None:
            req.orphan_timer.cancel()
            req.orphan_timer = None
        if not self._reqs:
            self._idle.set()
            if self.state == WorkerState.DRAINING:
                self.state = WorkerState.DRAINED


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(f"field '{name}': must be a positive integer, got {value!r}")


# ---- engine replicas ----------------------------------------------------------
# A worker ships its engine's state with its load reports; the scheduler restores
# it into a replica (an engine of the same performance model), adds the dispatches
# the report does not include yet, and advances the replica to the moment of each
# decision. The engine is deterministic, so the replica holds what the worker holds
# right now, although the report is a loopback hop old (tens of modelled
# milliseconds at time_scale 0.05). On a Session the state comes only when the
# replica could not have foreseen a change (`BatchEngine.unforeseen`) or after
# ENGINE_STATE_REFRESH_S; between states the replica runs on the dispatches alone.
# Every slot of plain data is carried (so new engine fields travel without changes
# here); times stay on the worker clock.

_PLAIN = (int, float, str, bool, type(None), list, tuple, dict, deque)


def engine_state(eng: BatchEngine) -> bytes:
    # Containers go to msgpack as they are (deques through `default`): no Python loop
    # over the batch. Anything else (the performance model) the replica has itself.
    state = {name: value for name in type(eng).__slots__ if isinstance(value := getattr(eng, name), _PLAIN)}
    return msgpack.packb(state, default=list)


def _typed(template: Any, value: Any) -> Any:
    """`value` (decoded msgpack: sequences are lists) in the container type the engine
    uses for `template`. Entries stay lists where the engine only unpacks them; list
    slots (the finish heap) get tuples back, since the engine pushes tuples and a heap
    cannot compare a list with a tuple."""
    if isinstance(template, deque):
        return deque(value)
    if isinstance(template, list):
        return [tuple(v) if isinstance(v, list) else v for v in value]
    return value


def restore_engine(eng: BatchEngine, blob: bytes) -> None:
    """Overwrite `eng`'s state with a state from `engine_state` (same performance model)."""
    state = msgpack.unpackb(blob, strict_map_key=False)
    slots = set(type(eng).__slots__)
    for name, value in state.items():
        if name in slots:
            setattr(eng, name, _typed(getattr(eng, name), value))


# ---------------------------------------------------------------------------
# gRPC servicer: the only place Worker protos meet the core.


def _meta_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def _prefill_args(request: worker_pb2.PrefillRequest) -> tuple[str, int, int, str]:
    if not request.request_id:
        raise InvalidField("field 'request_id': must not be empty")
    length = request.prompt_length
    if request.prompt_tokens:
        if length and length != len(request.prompt_tokens):
            raise InvalidField(f"field 'prompt_length': {length} disagrees with {len(request.prompt_tokens)} "
                               "prompt_tokens")
        length = len(request.prompt_tokens)
    if length <= 0:
        raise InvalidField(f"field 'prompt_length': must be > 0 (or send prompt_tokens), got {length}")
    if request.max_output_tokens <= 0:
        raise InvalidField(f"field 'max_output_tokens': must be > 0, got {request.max_output_tokens}")
    return request.request_id, length, request.max_output_tokens, request.decode_address


_META_TYPES = {
    "request_id": str, "block_index": int, "num_blocks": int, "token_start": int, "token_end": int,
    "dtype": str, "shape": list, "max_output_tokens": int,
}


def parse_kv_block(block: worker_pb2.KvBlock, index: int, first: dict | None, prev_end: int) -> dict:
    """Validate one KvBlock's metadata against the blocks before it; raises InvalidField
    naming the block index and key."""
    where = f"block {index}"
    try:
        meta = msgpack.unpackb(block.meta, raw=False)
    except Exception as exc:  # msgpack raises several exception types for bad input
        raise InvalidField(f"{where}: field 'meta': not valid msgpack ({exc})") from None
    if not isinstance(meta, dict):
        raise InvalidField(f"{where}: field 'meta': expected a msgpack map, got {type(meta).__name__}")
    for key, kind in _META_TYPES.items():
        if key not in meta:
            raise InvalidField(f"{where}: key '{key}': missing")
        value = meta[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidField(f"{where}: key '{key}': expected an integer, got {value!r}")
        if kind is not int and not isinstance(value, kind):
            raise InvalidField(f"{where}: key '{key}': expected {kind.__name__}, got {value!r}")
    if not meta["request_id"]:
        raise InvalidField(f"{where}: key 'request_id': must not be empty")
    if meta["block_index"] != index:
        raise InvalidField(f"{where}: key 'block_index': expected {index} (blocks are consecutive), "
                           f"got {meta['block_index']}")
    if meta["num_blocks"] < 1 or meta["block_index"] >= meta["num_blocks"]:
        raise InvalidField(f"{where}: key 'num_blocks': {meta['num_blocks']} cannot hold block {index}")
    if first is not None:
        for key in ("request_id", "num_blocks", "max_output_tokens"):
            if meta[key] != first[key]:
                raise InvalidField(f"{where}: key '{key}': {meta[key]!r} differs from block 0's {first[key]!r}")
    if meta["token_start"] != prev_end:
        raise InvalidField(f"{where}: key 'token_start': expected {prev_end} (the previous token_end), "
                           f"got {meta['token_start']}")
    if meta["token_end"] <= meta["token_start"]:
        raise InvalidField(f"{where}: key 'token_end': must exceed token_start {meta['token_start']}, "
                           f"got {meta['token_end']}")
    if meta["max_output_tokens"] < 1:
        raise InvalidField(f"{where}: key 'max_output_tokens': must be > 0, got {meta['max_output_tokens']}")
    return meta


class _KvIntake:
    """One request's KV blocks as they arrive, each checked against the ones before it."""

    __slots__ = ("first", "index", "prev_end", "received_bytes", "ready_unix")

    def __init__(self):
        self.first: dict | None = None
        self.index = 0
        self.prev_end = 0
        self.received_bytes = 0
        self.ready_unix = None

    def add(self, block: worker_pb2.KvBlock) -> None:
        meta = parse_kv_block(block, self.index, self.first, self.prev_end)
        if self.first is None:
            self.first = meta
        self.prev_end = meta["token_end"]
        self.ready_unix = meta.get("ready_unix_s")
        self.received_bytes += len(block.payload)
        self.index += 1

    @property
    def complete(self) -> bool:
        return self.first is not None and self.index == self.first["num_blocks"]

    def check_complete(self) -> None:
        """The blocks so far are all there is; raises InvalidField if that is not a whole hand-over."""
        if self.first is None:
            raise InvalidField("block 0: the stream carried no blocks")
        if not self.complete:
            raise InvalidField(f"block {self.index}: key 'num_blocks': the stream ended after {self.index} of "
                               f"{self.first['num_blocks']} blocks")
        if self.ready_unix is not None and not isinstance(self.ready_unix, (int, float)):
            raise InvalidField(f"block {self.index - 1}: key 'ready_unix_s': expected a number, "
                               f"got {self.ready_unix!r}")

    def ack(self, w: "EmulatedWorker") -> worker_pb2.KvTransferAck:
        return worker_pb2.KvTransferAck(request_id=self.first["request_id"], blocks_received=self.index,
                                        tokens_received=self.prev_end, bytes_received=self.received_bytes,
                                        kv_free_tokens=w.engine.kv_capacity - w.engine.kv_reserved)


class _KvLink:
    """A prefill worker's stream of hand-overs to one decode worker (TransferKvStream):
    blocks out, one result per request back, routed to the hand-over waiting for it."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, address: str, timeout_s: float):
        self.address = address
        self.timeout_s = timeout_s
        self.call = stub.TransferKvStream()
        self._write_lock = asyncio.Lock()  # one write at a time on a gRPC stream
        self._waiting: dict[str, asyncio.Future] = {}
        self.failure: tuple[grpc.StatusCode, str] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def _failed(self) -> PeerFailed:
        code, details = self.failure
        return PeerFailed(self.address, f"{code.name}: {details}", code)

    async def _write(self, message: worker_pb2.KvStreamRequest) -> None:
        if self.failure is not None:
            raise self._failed()
        try:
            async with self._write_lock:
                await self.call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await asyncio.shield(self._reader)  # the stream ended; the reader records why
            raise self._failed() from None

    async def send(self, key: str, blocks: AsyncIterator[tuple[dict, bytes]]) -> worker_pb2.KvTransferAck:
        """Hand one request's blocks over and wait for its ack; raises PeerFailed."""
        result = self._waiting[key] = asyncio.get_running_loop().create_future()
        sent = False
        try:
            async for meta, payload in blocks:
                await self._write(worker_pb2.KvStreamRequest(
                    block=worker_pb2.KvBlock(meta=msgpack.packb(meta), payload=payload)))
                sent = True
            outcome = await asyncio.wait_for(result, self.timeout_s)
        except TimeoutError:
            self._cancel(key)
            raise PeerFailed(self.address, f"no acknowledgement within {self.timeout_s:g} s",
                             grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except asyncio.CancelledError:
            if sent:
                self._cancel(key)
            raise
        finally:
            self._waiting.pop(key, None)
        if outcome is None:
            raise self._failed()
        if outcome.HasField("error"):
            code = grpc.StatusCode[_STATUS_NAMES.get(outcome.error.code, "UNKNOWN")]
            raise PeerFailed(self.address, f"{code.name}: {outcome.error.message}", code)
        return outcome.ack

    def _cancel(self, key: str) -> None:
        if self.failure is None:
            asyncio.get_running_loop().create_task(
                self._write(worker_pb2.KvStreamRequest(cancel_request_id=key))).add_done_callback(_quiet)

    def close(self) -> None:
        self.call.cancel()

    async def _read(self) -> None:
        code, details = grpc.StatusCode.UNAVAILABLE, "the decode worker ended the stream"
        try:
            async for message in self.call:
                for result in message.results:
                    waiter = self._waiting.get(result.request_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(result)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
        finally:
            self.failure = (code, details)
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_result(None)


def _quiet(task: asyncio.Task) -> None:
    """Done callback of a best-effort task: its failure is already handled elsewhere."""
    if not task.cancelled():
        task.exception()


class _Outbox:
    """A Session's updates waiting to be sent. Whatever becomes ready before the stream
    is free again goes out as one message, with at most one update per request (its
    token chunks merged): the message count follows the engine's wakes, not the
    number of requests or chunks."""

    __slots__ = ("updates", "_ready")

    def __init__(self):
        self.updates: dict[str, worker_pb2.WorkUpdate] = {}
        self._ready = asyncio.Event()

    async def ready(self) -> None:
        await self._ready.wait()
        self._ready.clear()

    def wake(self) -> None:
        self._ready.set()

    def take(self) -> list[worker_pb2.WorkUpdate]:
        updates = list(self.updates.values())
        self.updates = {}
        return updates

    def _update(self, key: str) -> worker_pb2.WorkUpdate:
        update = self.updates.get(key)
        if update is None:
            update = self.updates[key] = worker_pb2.WorkUpdate(request_id=key)
            self._ready.set()
        return update

    def prefilled(self, key: str, response: worker_pb2.PrefillResponse, kv_sent_s: float) -> None:
        update = self._update(key)
        update.prefill.CopyFrom(response)
        update.kv_sent_s = kv_sent_s

    def tokens(self, key: str, first: int, count: int, emit_s: float) -> None:
        chunk = self._update(key).tokens
        if chunk.token_count:  # chunks of one request arrive in order: extend the pending one
            chunk.token_count += count
        else:
            chunk.request_id = key
            chunk.first_token_index = first
            chunk.token_count = count
        chunk.emit_s = emit_s

    def decoded(self, key: str, summary: DecodeSummary) -> None:
        self._update(key).decoded.CopyFrom(worker_pb2.DecodeResult(
            wait_s=summary.wait_s, decode_s=summary.decode_s, energy_j=summary.energy_j, cost_usd=summary.cost_usd))

    def error(self, key: str, code: grpc.StatusCode, message: str, failed_peer_address: str = "") -> None:
        update = self._update(key)
        update.error.code = code.value[0]
        update.error.message = message
        update.error.failed_peer_address = failed_peer_address


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """infersched.v1.Worker over an EmulatedWorker."""

    def __init__(self, worker: EmulatedWorker, *, rpc_timeout_s: float = 120.0,
                 on_drain: Callable[[], Awaitable[None]] | None = None):
        self.worker = worker
        self.rpc_timeout_s = rpc_timeout_s
        self._on_drain = on_drain
        # Peer decode workers: address -> (channel, stub); a stub builds a callable per method.
        self._peers: dict[str, tuple[grpc.aio.Channel, worker_pb2_grpc.WorkerStub]] = {}
        self._links: dict[str, _KvLink] = {}  # hand-over streams by decode worker address

    def _load_md(self, engine: bool = True) -> tuple[tuple[str, Any], ...]:
        # The row first: it brings the engine up to now, so the state that follows matches it.
        row = self.worker.load().encode()
        if not engine:
            return ((LOAD_KEY, row),)
        return ((LOAD_KEY, row), (ENGINE_KEY, self.worker.engine_state()))

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        for channel, _ in self._peers.values():
            await channel.close()
        self._peers.clear()

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        peer = self._peers.get(address)
        if peer is None:
            channel = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
            peer = self._peers[address] = (channel, worker_pb2_grpc.WorkerStub(channel))
        return peer[1]

    async def _send_kv(self, address: str, key: str,
                       blocks: AsyncIterator[tuple[dict, bytes]]) -> worker_pb2.KvTransferAck:
        # One stream per decode worker for every hand-over to it: a TransferKv call per
        # request costs both workers ~1 ms of CPU, a message on the stream a tenth of that.
        link = self._links.get(address)
        if link is None or link.failure is not None:
            link = self._links[address] = _KvLink(self._stub(address), address, self.rpc_timeout_s)
        try:
            return await link.send(key, blocks)
        except PeerFailed as exc:
            if exc.code == grpc.StatusCode.UNAVAILABLE and link.failure is not None:
                # The peer may have restarted on a new port; a stale channel keeps failing.
                self._links.pop(address, None)
                peer = self._peers.pop(address, None)
                if peer is not None:
                    await peer[0].close()
            raise

    async def _run_prefill(self, request: worker_pb2.PrefillRequest, peer_link: float | None,
                           sent_unix: float | None, decode_follows: bool = False
                           ) -> tuple[worker_pb2.PrefillResponse, HandOverOutcome]:
        """Prefill one request and, on a prefill-only worker, hand its KV over. Raises
        WorkerError (PeerFailed when the hand-over failed) or ValueError."""
        w = self.worker
        key, inp, out, decode_address = _prefill_args(request)
        if w.role == ROLE_BOTH and decode_address:
            raise InvalidField("field 'decode_address': a colocated worker keeps its KV; leave it empty")
        if w.role == ROLE_PREFILL and not decode_address and out > 1:
            raise InvalidField("field 'decode_address': a prefill-only worker hands KV over; name the "
                               "decode worker")
        req = w.admit_prefill(key, inp, out, sent_unix, tuple(request.prefix_block_hashes))
        pre = await w.first_token(req)
        transfer = HandOverOutcome(0.0, 0.0, 0, 0)
        if w.role == ROLE_PREFILL:
            if out > 1:
                transfer = await w.hand_over(req, peer_link,
                                             lambda blocks: self._send_kv(decode_address, key, blocks))
            else:
                w.release_held(req)
        elif not decode_follows:
            w.keep_for_decode(req)
        response = worker_pb2.PrefillResponse(
            request_id=key, queue_s=pre.queue_s, prefill_s=pre.prefill_s, kv_transfer_s=transfer.kv_transfer_s,
            prefill_tokens=inp - pre.cached_tokens, cached_prefix_tokens=pre.cached_tokens, kv_blocks=transfer.blocks, kv_bytes=transfer.modelled_bytes,
            energy_j=pre.energy_j, cost_usd=pre.cost_usd)
        return response, transfer

    def _claim(self, request: worker_pb2.DecodeRequest) -> _Req:
        if not request.request_id:
            raise InvalidField("field 'request_id': must not be empty")
        if request.max_output_tokens < 0:
            raise InvalidField(f"field 'max_output_tokens': must be >= 0, got {request.max_output_tokens}")
        return self.worker.claim(request.request_id, request.max_output_tokens, request.chunk_tokens)

    async def Prefill(self, request, context):
        try:
            metadata = context.invocation_metadata()
            link = _meta_value(metadata, LINK_KEY)
            sent = _meta_value(metadata, SENT_KEY)
            response, transfer = await self._run_prefill(request, float(link) if link else None,
                                                         float(sent) if sent else None)
        except PeerFailed as exc:
            await context.abort(exc.code, str(exc), trailing_metadata=((FAILED_PEER_KEY, exc.address),))
        except (WorkerError, ValueError) as exc:
            await _abort(context, exc)
        context.set_trailing_metadata(((HANDOVER_KEY, f"{transfer.sent_s:.9g}"),) + self._load_md())
        return response

    async def TransferKv(self, request_iterator, context):
        w = self.worker
        intake = _KvIntake()
        try:
            async for block in request_iterator:
                intake.add(block)
            intake.check_complete()
            req = w.admit_kv(intake.first["request_id"], intake.prev_end, intake.first["max_output_tokens"],
                             intake.ready_unix)
            await w.joined(req)
        except WorkerError as exc:
            await _abort(context, exc)
        context.set_trailing_metadata(self._load_md(engine=False))  # read by a peer worker, not the scheduler
        return intake.ack(w)

    async def TransferKvStream(self, request_iterator, context):
        results: list[worker_pb2.KvStreamResult] = []
        ready = asyncio.Event()
        joining: dict[str, asyncio.Task] = {}  # admitted, waiting to join the batch
        reader = asyncio.get_running_loop().create_task(
            self._read_kv_stream(request_iterator, results, ready, joining))
        try:
            while True:
                await ready.wait()
                ready.clear()
                if results:
                    batch, results[:] = list(results), []
                    yield worker_pb2.KvStreamResults(results=batch)
                elif reader.done():
                    return
        finally:
            reader.cancel()
            for task in list(joining.values()):
                task.cancel()

    async def _read_kv_stream(self, requests, results: list, ready: asyncio.Event,
                              joining: dict[str, asyncio.Task]) -> None:
        w = self.worker
        loop = asyncio.get_running_loop()
        intakes: dict[str, _KvIntake] = {}
        refused: set[str] = set()  # requests already answered with an error: their later blocks are dropped

        def answer(result: worker_pb2.KvStreamResult) -> None:
            results.append(result)
            ready.set()

        async def join(key: str, req: _Req, intake: _KvIntake) -> None:
            try:
                await w.joined(req)
                answer(worker_pb2.KvStreamResult(request_id=key, ack=intake.ack(w)))
            except WorkerError as exc:
                answer(worker_pb2.KvStreamResult(request_id=key, error=_work_error(exc)))
            finally:
                joining.pop(key, None)

        try:
            async for message in requests:
                if message.HasField("cancel_request_id"):
                    key = message.cancel_request_id
                    intakes.pop(key, None)
                    task = joining.get(key)
                    if task is not None:
                        task.cancel()
                    continue
                block = message.block
                try:
                    key = msgpack.unpackb(block.meta, raw=False).get("request_id")
                except Exception:  # malformed meta: parse_kv_block below names what is wrong
                    key = None
                if not isinstance(key, str) or not key:
                    key, intake = "", _KvIntake()  # belongs to no request: answered on its own
                elif key in refused:
                    continue
                else:
                    intake = intakes.setdefault(key, _KvIntake())
                try:
                    intake.add(block)
                    if not intake.complete:
                        continue
                    del intakes[key]
                    intake.check_complete()
                    req = w.admit_kv(key, intake.prev_end, intake.first["max_output_tokens"], intake.ready_unix)
                except WorkerError as exc:
                    if key:
                        intakes.pop(key, None)
                        refused.add(key)
                    answer(worker_pb2.KvStreamResult(request_id=key, error=_work_error(exc)))
                    continue
                joining[key] = loop.create_task(join(key, req, intake))
        except Exception as exc:  # the stream broke (the prefill worker went away)
            log.debug("worker %s: hand-over stream ended: %r", w.worker_id, exc)
        finally:
            ready.set()

    async def Decode(self, request, context):
        w = self.worker
        try:
            req = self._claim(request)
        except WorkerError as exc:
            await _abort(context, exc)
        delivered = False
        try:
            async for first, count, emit_s in w.stream(req):
                yield common_pb2.TokenChunk(request_id=req.key, token_count=count, first_token_index=first,
                                            emit_s=emit_s)
            delivered = True
            context.set_trailing_metadata(((DECODE_KEY, w.decode_summary(req).encode()),) + self._load_md())
        except Cancelled as exc:
            await _abort(context, exc)
        finally:
            if delivered:
                w.finish_delivery(req)
            else:
                w.cancel(req.key)

    async def Session(self, request_iterator, context):
        outbox = _Outbox()
        tasks: dict[str, asyncio.Task] = {}
        reader = asyncio.get_running_loop().create_task(self._read_session(request_iterator, outbox, tasks))
        engine = self.worker.engine
        state_unforeseen = -1  # engine.unforeseen when the state was last sent (-1: never)
        state_sent_at = -math.inf
        try:
            while True:
                await outbox.ready()
                if outbox.updates:
                    updates = outbox.take()
                    # The row first, then the state it describes (as in the unary calls' trailers).
                    load = self.worker.load().encode()
                    # The scheduler's replica of this engine replays what it dispatched at the
                    # times it sent it, so it needs the state only when something else changed
                    # the engine, and now and then against drift (its own rounding and clamps).
                    # A restore costs the scheduler a replay of every event since the state's
                    # time (the engine runs up to the input slack behind the clock).
                    state = b""
                    now = time.monotonic()
                    if engine.unforeseen != state_unforeseen or now - state_sent_at >= ENGINE_STATE_REFRESH_S:
                        state = self.worker.engine_state()
                        state_unforeseen, state_sent_at = engine.unforeseen, now
                    yield worker_pb2.SessionUpdate(updates=updates, load=load, engine_state=state)
                elif reader.done():
                    return
        finally:
            reader.cancel()
            for task in list(tasks.values()):
                task.cancel()

    async def _read_session(self, requests: AsyncIterator[worker_pb2.SessionRequest], outbox: "_Outbox",
                            tasks: dict[str, asyncio.Task]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in requests:
                for key in message.cancel_request_ids:
                    task = tasks.get(key)
                    if task is not None:
                        task.cancel()
                for work in message.work:
                    key = work.prefill.request_id or work.decode.request_id
                    if key in tasks:
                        outbox.error(key, AlreadyHeld.code, f"request {key!r} already has work in this session")
                        continue
                    task = loop.create_task(self._run_work(work, outbox))
                    tasks[key] = task
                    task.add_done_callback(lambda done, key=key: tasks.pop(key) if tasks.get(key) is done else None)
        except Exception as exc:  # the stream broke (the scheduler went away): the session ends
            log.debug("worker %s: session stream ended: %r", self.worker.worker_id, exc)
        finally:
            outbox.wake()

    async def _run_work(self, work: worker_pb2.SessionWork, outbox: "_Outbox") -> None:
        """One request's work in a Session; its progress goes to `outbox`. Cancelled (by a
        cancel message or the end of the session), it frees the request and says nothing."""
        w = self.worker
        has_prefill, has_decode = work.HasField("prefill"), work.HasField("decode")
        key = work.prefill.request_id or work.decode.request_id
        try:
            if has_prefill and has_decode:
                if work.decode.request_id != work.prefill.request_id:
                    raise InvalidField(f"field 'decode.request_id': {work.decode.request_id!r} differs from "
                                       f"prefill's {work.prefill.request_id!r}")
                if w.role != ROLE_BOTH:
                    raise InvalidField("field 'decode': only a colocated worker decodes what it prefilled")
            elif not (has_prefill or has_decode):
                raise InvalidField("work: set 'prefill', 'decode' or both")
            if has_prefill:
                response, transfer = await self._run_prefill(
                    work.prefill, work.decode_link_bytes_per_s or None, work.sent_unix_s or None,
                    decode_follows=has_decode)
                outbox.prefilled(key, response, transfer.sent_s)
            if has_decode:
                req = self._claim(work.decode)
                delivered = False
                try:
                    async for first, count, emit_s in w.stream(req):
                        outbox.tokens(key, first, count, emit_s)
                    delivered = True
                    outbox.decoded(key, w.decode_summary(req))
                finally:
                    if delivered:
                        w.finish_delivery(req)
                    else:
                        w.cancel(req.key)
        except PeerFailed as exc:
            outbox.error(key, exc.code, str(exc), exc.address)
        except (WorkerError, ValueError) as exc:
            outbox.error(key, exc.code if isinstance(exc, WorkerError) else grpc.StatusCode.INVALID_ARGUMENT,
                         str(exc))
        except Exception as exc:  # a unary call would end INTERNAL; the scheduler must not wait for nothing
            log.exception("worker %s: work for request %r failed", w.worker_id, key)
            outbox.error(key, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def Drain(self, request, context):
        w = self.worker
        if request.timeout_s < 0 or not math.isfinite(request.timeout_s):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"field 'timeout_s': must be >= 0, got {request.timeout_s}")
        w.drain()
        if self._on_drain is not None:
            await self._on_drain()
        if request.wait:
            await w.wait_idle(request.timeout_s or None)
        context.set_trailing_metadata(self._load_md())
        return worker_pb2.DrainResponse(state=int(w.state), in_flight=w.in_flight)

    async def GetWorkerStats(self, request, context):
        s = self.worker.stats()
        context.set_trailing_metadata(self._load_md())
        return worker_stats_proto(s)


def worker_stats_proto(s: WorkerStatsView) -> worker_pb2.WorkerStats:
    return worker_pb2.WorkerStats(
        worker_id=s.worker_id, pool=s.pool, state=int(s.state), now_s=s.now_s, queue_depth=s.queue_depth,
        queued_tokens=s.queued_tokens, running=s.running, kv_free_tokens=s.kv_free_tokens,
        kv_capacity_tokens=s.kv_capacity_tokens, busy_until_s=s.busy_until_s, prefill_tokens=s.prefill_tokens,
        decode_tokens=s.decode_tokens, completed=s.completed, energy_j=s.energy_j, cost_usd=s.cost_usd)


def _work_error(exc: WorkerError) -> worker_pb2.WorkError:
    return worker_pb2.WorkError(code=exc.code.value[0], message=str(exc))


async def _abort(context, exc: Exception) -> None:
    code = exc.code if isinstance(exc, WorkerError) else grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(exc))


# ---------------------------------------------------------------------------
# Ray actor.


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker actor serves (plain data; picklable)."""

    pool: str
    instance: int  # global index in the cluster snapshot
    role: int  # engine role: ROLE_PREFILL, ROLE_DECODE or ROLE_BOTH
    max_batch: int
    max_batch_tokens: int
    link_bytes_per_s: float
    prefix_block_tokens: int = 0  # prefix cache block size (0: no prefix cache)
    token_budget: int = 0  # chunked prefill: tokens per iteration (0: prefill-first)


def resolve_host(host: str) -> tuple[str, str]:
    """(address to bind, address to advertise). 'node' binds and advertises this node's
    Ray IP (the address other nodes already reach it by), for workers that peers on
    other nodes must reach; no other interface is opened."""
    if host == "node":
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, ip
    if host in ("0.0.0.0", "[::]", "::"):
        import socket

        return host, socket.gethostbyname(socket.gethostname())
    return host, host


async def start_grpc_server(bind: str, add_services: Callable[[grpc.aio.Server], list[str]],
                            port: int = 0) -> tuple[grpc.aio.Server, int, Any]:
    """A grpc.aio server with `add_services`' services plus health and reflection.
    Returns (server, bound port, health servicer)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server(options=SERVER_OPTIONS)
    names = add_services(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = server.add_insecure_port(f"{bind}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {bind}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {bind}:{port} (in use or not a local address)")
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


class WorkerActor:
    """Async Ray actor serving one instance's Worker service.

    Creation starts the clock and the gRPC server and registers the address with
    the scheduler (`scheduler.register_worker.remote(instance, worker_id, address)`);
    a restart by Ray runs __init__ again, so a restarted worker registers itself
    with its new address. Use `worker_actor_class()` for the Ray class.
    """

    def __init__(self, spec: WorkerSpec, perf: "InstancePerf", scheduler=None, *, host: str = "127.0.0.1",
                 time_scale: float = 0.01, rpc_timeout_s: float = 120.0,
                 claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S, kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS,
                 input_slack_s: float = DEFAULT_INPUT_SLACK_S):
        self.spec = spec
        self.worker_id = f"{spec.pool}-{spec.instance}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.worker = EmulatedWorker(
            perf, spec.role, max_batch=spec.max_batch, max_batch_tokens=spec.max_batch_tokens,
            time_scale=time_scale, link_bytes_per_s=spec.link_bytes_per_s, worker_id=self.worker_id,
            pool=spec.pool, instance=spec.instance, kv_block_tokens=kv_block_tokens,
            claim_timeout_s=claim_timeout_s, input_slack_s=input_slack_s,
            prefix_block_tokens=spec.prefix_block_tokens, token_budget=spec.token_budget)
        self._scheduler = scheduler
        self._host = host
        self._rpc_timeout_s = rpc_timeout_s
        self._server: grpc.aio.Server | None = None
        self._servicer: WorkerServicer | None = None
        self._health = None
        self.address = ""
        self._started = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> str:
        bind, advertise = resolve_host(self._host)
        self.worker.start()
        self._servicer = WorkerServicer(self.worker, rpc_timeout_s=self._rpc_timeout_s, on_drain=self._not_serving)

        def add(server):
            worker_pb2_grpc.add_WorkerServicer_to_server(self._servicer, server)
            return [WORKER_SERVICE]

        self._server, port, self._health = await start_grpc_server(bind, add)
        self.address = f"{advertise}:{port}"
        if self._scheduler is not None:
            try:
                await self._scheduler.register_worker.remote(self.spec.instance, self.worker_id, self.address)
            except Exception as exc:  # the supervisor also pulls addresses; a failed push is not fatal
                log.warning("worker %s could not register with the scheduler: %s", self.worker_id, exc)
        return self.address

    async def _not_serving(self) -> None:
        from grpc_health.v1 import health_pb2

        for name in ("", WORKER_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def get_address(self) -> str:
        """host:port of the Worker service (waits for the server to start)."""
        return await asyncio.shield(self._started)

    async def info(self) -> dict:
        address = await asyncio.shield(self._started)
        return {"worker_id": self.worker_id, "address": address, "instance": self.spec.instance,
                "pool": self.spec.pool, "pid": os.getpid()}

    async def stats(self) -> WorkerStatsView:
        await asyncio.shield(self._started)
        return self.worker.stats()

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving: cancel in-flight work and close the server (idempotent)."""
        await asyncio.shield(self._started)
        self.worker.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._servicer is not None:
            await self._servicer.close()


_WORKER_ACTOR_CLASS = None


def worker_actor_class():
    """WorkerActor as a Ray actor class (Ray imported on first use)."""
    global _WORKER_ACTOR_CLASS
    if _WORKER_ACTOR_CLASS is None:
        import ray

        _WORKER_ACTOR_CLASS = ray.remote(WorkerActor)
    return _WORKER_ACTOR_CLASS
