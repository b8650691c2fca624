"""The worker seam: how the scheduler core talks to workers, and its gRPC implementation.

The core calls a `WorkerClient` (send work, cancel it, connect a worker's new
incarnation) and hears back through `WorkerEvents` (load reports, work
updates, lost channels), always on the core's own thread or event loop. It
never sees a proto: this is the only scheduler module that touches
`worker_pb2`. Other backends (in-process emulated workers on a virtual clock,
`scheduler.live.inprocess`; real engines) implement the same protocol.

`GrpcWorkerClient` keeps one long-lived `Session` stream per worker (opened on
the first dispatch to an incarnation): work placed on one worker within
`dispatch_interval_s` goes out in one message, and every message in carries
the worker's load report, applied before the updates it brings. Workers whose
reports went quiet for `stats_interval_s` are polled (GetWorkerStats); a poll
that cannot reach the worker says so (`on_unreachable`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Protocol

import grpc

from infersched.v1 import worker_pb2, worker_pb2_grpc
from scheduler.live.types import ErrorKind, LiveOptions, Work, WorkError, WorkUpdate
from workers.clock import Clock
from workers.report import LoadReport, TierUsage, WorkerState
from workers.rpc import status_code
from workers.security.plane import PlaneMember
from workers.work import DecodeSummary, PrefillOutcome

log = logging.getLogger(__name__)


class WorkerEvents(Protocol):
    """What a WorkerClient tells the core about instance `instance`'s current worker."""

    def on_report(self, instance: int, report: LoadReport, engine_state: bytes | None) -> None: ...

    def on_update(self, instance: int, update: WorkUpdate) -> None: ...

    def on_lost(self, instance: int, error: WorkError) -> None:
        """The channel to the worker ended: every stage in flight there is lost."""
        ...

    def on_unreachable(self, instance: int, reason: str) -> None:
        """The worker stopped answering (its channel may still look open)."""
        ...


class WorkerClient(Protocol):
    """How the core reaches workers. Calls return at once; results come as events."""

    def bind(self, events: WorkerEvents) -> None: ...

    def connect(self, instance: int, address: str) -> None:
        """`address` serves instance `instance` from now on; the previous incarnation's
        channel is dropped without events (the core already accounted for its work)."""
        ...

    def send(self, instance: int, work: Work) -> None: ...

    def cancel(self, instance: int, key: str) -> None: ...

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        """Does the worker answer, and take work? Its answer's report reaches the core."""
        ...

    async def close(self) -> None: ...


# Statuses (by name) that mean "this attempt failed, another worker may succeed".
_RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL", "UNKNOWN",
                        "RESOURCE_EXHAUSTED", "ABORTED"})


def error_kind(status: str) -> ErrorKind:
    """How a worker's failure status bears on the request and the instance."""
    if status not in _RETRYABLE:
        return ErrorKind.INVALID
    return ErrorKind.BUSY if status == "RESOURCE_EXHAUSTED" else ErrorKind.WORKER


def load_report(p: worker_pb2.LoadReport) -> LoadReport:
    return LoadReport(p.received, p.queued, p.queued_tokens, p.running, p.kv_free_tokens, p.busy_remaining_s,
                      p.activity, p.busy_s, p.now_s, p.unix_s, p.engine_s, p.prefill_tokens, p.decode_tokens,
                      p.dynamic_energy_j, WorkerState(p.state) if p.state else WorkerState.READY,
                      p.prefix_hit_tokens,
                      tuple(TierUsage(t.name, t.hit_tokens, t.read_bytes, t.written_bytes) for t in p.kv_tiers))


class _Link:
    """The client's end of one worker incarnation."""

    __slots__ = ("instance", "address", "channel", "stub", "session", "reported_at", "poll_failures", "down")

    def __init__(self, instance: int, address: str, member: PlaneMember | None = None):
        self.instance = instance
        self.address = address
        if member is None:  # workers outside a cluster's credentials (tests of the client alone)
            self.channel = grpc.aio.insecure_channel(address)
            self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        else:  # every call carries the scheduler's token; mutual TLS where the cluster uses it
            self.channel, self.stub = member.stub(address, worker_pb2_grpc.WorkerStub)
        self.session: _Session | None = None
        self.reported_at = -math.inf  # loop time of its last report
        self.poll_failures = 0
        self.down = False  # said unreachable: not polled until it answers a probe or reconnects


class _Session:
    """The client's end of one worker's Session stream: work and cancellations out,
    gathered into one message at most every `interval_s`; messages in: the load report
    first, then the updates. When the stream ends (not closed here), the core hears
    `on_lost`."""

    __slots__ = ("client", "link", "call", "interval_s", "work", "cancels", "pending", "closed", "reader", "writer")

    def __init__(self, client: "GrpcWorkerClient", link: _Link, interval_s: float):
        self.client = client
        self.link = link
        self.call = link.stub.Session()
        self.interval_s = interval_s
        self.work: list[worker_pb2.SessionWork] = []
        self.cancels: list[str] = []
        self.pending = asyncio.Event()
        self.closed = False
        loop = asyncio.get_running_loop()
        self.reader = loop.create_task(self._read())
        self.writer = loop.create_task(self._write())

    def add(self, work: worker_pb2.SessionWork) -> None:
        self.work.append(work)
        self.pending.set()

    def cancel(self, key: str) -> None:
        self.cancels.append(key)
        self.pending.set()

    def close(self) -> None:
        self.closed = True
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
        except Exception:  # the stream failed: the reader sees why
            self.call.cancel()

    async def _read(self) -> None:
        client = self.client
        link = self.link
        instance = link.instance
        code, details = grpc.StatusCode.UNAVAILABLE, "the worker ended the session"
        try:
            async for message in self.call:
                events = client.events
                if message.HasField("load"):
                    link.reported_at = asyncio.get_running_loop().time()
                    events.on_report(instance, load_report(message.load), message.engine_state or None)
                for update in message.updates:
                    events.on_update(instance, client.work_update(update))
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
        finally:
            self.writer.cancel()
            if link.session is self:
                link.session = None
            if not self.closed and not client.closed:
                client.events.on_lost(instance, WorkError(error_kind(code.name), code.name, details))


class GrpcWorkerClient:
    """WorkerClient over the Worker gRPC service (on the core's event loop)."""

    def __init__(self, clock: Clock, options: LiveOptions = LiveOptions(), member: PlaneMember | None = None):
        self.clock = clock
        self.options = options
        self.member = member  # the scheduler's worker-plane credentials (workers.security.plane)
        self.events: WorkerEvents | None = None
        self._links: dict[int, _Link] = {}
        self._by_address: dict[str, int] = {}
        self._poller: asyncio.Task | None = None
        self.closed = False

    def bind(self, events: WorkerEvents) -> None:
        self.events = events

    def connect(self, instance: int, address: str) -> None:
        old = self._links.pop(instance, None)
        if old is not None:
            self._drop(old)
        self._links[instance] = _Link(instance, address, self.member)
        self._by_address[address] = instance
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    def _drop(self, link: _Link) -> None:
        if link.session is not None:
            link.session.close()
            link.session = None
        if self._by_address.get(link.address) == link.instance:
            del self._by_address[link.address]
        task = asyncio.get_running_loop().create_task(link.channel.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def send(self, instance: int, work: Work) -> None:
        link = self._links[instance]
        session = link.session
        if session is None:
            session = link.session = _Session(self, link, self.options.dispatch_interval_s)
        prefill = decode = None
        if work.prefill:
            peer = self._links.get(work.decode_instance) if work.decode_instance >= 0 else None
            prefill = worker_pb2.PrefillRequest(
                request_id=work.key, prompt_length=work.prompt_tokens, max_output_tokens=work.max_output_tokens,
                prefix_block_hashes=work.prefix_block_hashes, decode_address=peer.address if peer else "")
        if work.decode:
            decode = worker_pb2.DecodeRequest(request_id=work.key, max_output_tokens=work.max_output_tokens,
                                              chunk_tokens=work.chunk_tokens)
        session.add(worker_pb2.SessionWork(
            prefill=prefill, decode=decode, sent_unix_s=self.clock.to_unix(work.sent_s) if work.prefill else 0.0,
            decode_link_bytes_per_s=work.decode_link_bytes_per_s))

    def cancel(self, instance: int, key: str) -> None:
        link = self._links.get(instance)
        if link is not None and link.session is not None:
            link.session.cancel(key)

    def work_update(self, u: worker_pb2.WorkUpdate) -> WorkUpdate:
        prefilled = decoded = error = None
        if u.HasField("prefill"):
            p = u.prefill
            prefilled = PrefillOutcome(p.queue_s, p.prefill_s, p.prefill_tokens, p.cached_prefix_tokens, p.energy_j,
                                       p.cost_usd, p.kv_transfer_s, u.kv_sent_s, p.kv_blocks, p.kv_bytes)
        if u.HasField("decoded"):
            d = u.decoded
            decoded = DecodeSummary(d.wait_s, d.decode_s, d.energy_j, d.cost_usd)
        if u.HasField("error"):
            e = u.error
            code = status_code(e.code)
            peer = self._by_address.get(e.failed_peer_address, -1) if e.failed_peer_address else -1
            error = WorkError(error_kind(code.name), code.name, e.message, peer)
        if u.HasField("tokens"):
            t = u.tokens
            return WorkUpdate(u.request_id, prefilled, t.first_token_index, t.token_count, t.emit_s, decoded, error)
        return WorkUpdate(u.request_id, prefilled, decoded=decoded, error=error)

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        link = self._links.get(instance)
        if link is None:
            return False
        try:
            stats = await link.stub.GetWorkerStats(worker_pb2.WorkerStatsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        if self._links.get(instance) is link:
            link.down = False
            link.poll_failures = 0
            self._reported(link, stats)
        return stats.state == WorkerState.READY

    def _reported(self, link: _Link, stats: worker_pb2.WorkerStats) -> None:
        link.reported_at = asyncio.get_running_loop().time()
        if stats.HasField("load"):
            self.events.on_report(link.instance, load_report(stats.load), stats.engine_state or None)

    async def _poll_loop(self) -> None:
        interval = self.options.stats_interval_s
        loop = asyncio.get_running_loop()
        while not self.closed:
            # A worker whose session messages keep its report fresh needs no poll.
            stale = loop.time() - interval
            quiet = [link for link in self._links.values() if not link.down and link.reported_at <= stale]
            if quiet:
                await asyncio.gather(*(self._poll(link) for link in quiet))
            await asyncio.sleep(interval)

    async def _poll(self, link: _Link) -> None:
        try:
            stats = await link.stub.GetWorkerStats(worker_pb2.WorkerStatsRequest(),
                                                   timeout=max(1.0, 10 * self.options.stats_interval_s))
        except grpc.aio.AioRpcError as exc:
            if self._links.get(link.instance) is not link or self.closed:
                return
            link.poll_failures += 1
            if exc.code() == grpc.StatusCode.UNAVAILABLE or link.poll_failures >= 3:
                link.down = True
                self.events.on_unreachable(link.instance, f"stats poll: {exc.code().name}: {exc.details()}")
            return
        if self._links.get(link.instance) is link:
            link.poll_failures = 0
            self._reported(link, stats)

    async def close(self) -> None:
        self.closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for link in self._links.values():
            if link.session is not None:
                link.session.close()
            await link.channel.close()
        self._links.clear()
