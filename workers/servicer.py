"""The `infersched.v1.Worker` gRPC service over an `EmulatedWorker`.

Thin, as gRPC servicers should be: it converts proto <-> worker calls in one
place, answers a bad work item with an error update naming the field (the
stream goes on), and frees a request's slot and KV when its work is
cancelled or its stream ends.

Session. The scheduler's work for many requests on one stream. Progress that
becomes ready before the stream is free again goes out as one message, with
at most one update per request (its token chunks merged, `_Outbox`): the
message count follows the engine's wakes, not the number of requests or
chunks. Each message carries the worker's load report; the engine state
rides along only when the scheduler's mirror could not have foreseen a change
(`BatchEngine.unforeseen`: hand-overs, releases, cancellations, prefix-cache
hits, late admissions) or after ENGINE_STATE_REFRESH_S, since a restore costs
the scheduler a replay of every event since the state's time.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import msgpack

from infersched.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from workers.emulated import EmulatedWorker
from workers.kv_link import KvIntake
from workers.report import LoadReport, TierUsage
from workers.security.peers import NotAPeer, PeerBook
from workers.work import (AlreadyHeld, DecodeSummary, InvalidField, PeerFailed, PrefillOutcome, WorkerError,
                          WorkerStatsView)
from workers.rpc import status_named

log = logging.getLogger(__name__)

# Wall seconds after which a Session message carries the engine's state even when
# nothing the scheduler's mirror cannot foresee happened.
ENGINE_STATE_REFRESH_S = 0.1


def load_report_proto(r: LoadReport) -> worker_pb2.LoadReport:
    return worker_pb2.LoadReport(
        received=r.received, queued=r.queued, queued_tokens=r.queued_tokens, running=r.running,
        kv_free_tokens=r.kv_free, busy_remaining_s=r.busy_remaining_s, activity=r.activity, busy_s=r.busy_s,
        now_s=r.now_s, unix_s=r.unix_s, engine_s=r.engine_s, prefill_tokens=r.prefill_tokens,
        decode_tokens=r.decode_tokens, dynamic_energy_j=r.dynamic_energy_j, state=int(r.state),
        prefix_hit_tokens=r.prefix_hit_tokens, kv_tiers=[tier_usage_proto(t) for t in r.kv_tiers])


def tier_usage_proto(t: TierUsage) -> common_pb2.KvTierUsage:
    return common_pb2.KvTierUsage(name=t.name, hit_tokens=t.hit_tokens, read_bytes=t.read_bytes,
                                  written_bytes=t.written_bytes)


def worker_stats_proto(s: WorkerStatsView) -> worker_pb2.WorkerStats:
    return worker_pb2.WorkerStats(
        worker_id=s.worker_id, pool=s.pool, state=int(s.state), now_s=s.now_s, queue_depth=s.queue_depth,
        queued_tokens=s.queued_tokens, running=s.running, kv_free_tokens=s.kv_free_tokens,
        kv_capacity_tokens=s.kv_capacity_tokens, busy_until_s=s.busy_until_s, prefill_tokens=s.prefill_tokens,
        decode_tokens=s.decode_tokens, completed=s.completed, energy_j=s.energy_j, cost_usd=s.cost_usd)


def work_error(error: WorkerError) -> worker_pb2.WorkError:
    return worker_pb2.WorkError(code=status_named(error.status).value[0], message=str(error),
                                failed_peer_address=error.address if isinstance(error, PeerFailed) else "")


def prompt_length(request: worker_pb2.PrefillRequest) -> int:
    length = request.prompt_length
    if request.prompt_tokens:
        if length and length != len(request.prompt_tokens):
            raise InvalidField(f"field 'prompt_length': {length} disagrees with {len(request.prompt_tokens)} "
                               "prompt_tokens")
        length = len(request.prompt_tokens)
    if length <= 0:
        raise InvalidField(f"field 'prompt_length': must be > 0 (or send prompt_tokens), got {length}")
    return length


class _Outbox:
    """A Session's updates waiting to be sent, and the work it holds open on the worker
    (key -> whether decode follows). The worker's listener for that work."""

    __slots__ = ("updates", "open", "_ready")

    def __init__(self):
        self.updates: dict[str, worker_pb2.WorkUpdate] = {}
        self.open: dict[str, bool] = {}
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

    def prefilled(self, key: str, o: PrefillOutcome) -> None:
        update = self._update(key)
        p = update.prefill
        p.request_id = key
        p.queue_s = o.queue_s
        p.prefill_s = o.prefill_s
        p.kv_transfer_s = o.kv_transfer_s
        p.prefill_tokens = o.prefill_tokens
        p.cached_prefix_tokens = o.cached_tokens
        p.kv_blocks = o.kv_blocks
        p.kv_bytes = o.kv_bytes
        p.energy_j = o.energy_j
        p.cost_usd = o.cost_usd
        update.kv_sent_s = o.kv_sent_s
        if not self.open.get(key, False):
            self.open.pop(key, None)

    def tokens(self, key: str, first: int, count: int, emit_s: float) -> None:
        chunk = self._update(key).tokens
        if chunk.token_count:  # chunks of one request arrive in order: extend the pending one
            chunk.token_count += count
        else:
            chunk.request_id = key
            chunk.first_token_index = first
            chunk.token_count = count
        chunk.emit_s = emit_s

    def decoded(self, key: str, s: DecodeSummary) -> None:
        self._update(key).decoded.CopyFrom(worker_pb2.DecodeResult(
            wait_s=s.wait_s, decode_s=s.decode_s, energy_j=s.energy_j, cost_usd=s.cost_usd))
        self.open.pop(key, None)

    def failed(self, key: str, error: WorkerError) -> None:
        self._update(key).error.CopyFrom(work_error(error))
        self.open.pop(key, None)


class _KvAcks:
    """The receiving end of a TransferKvStream: admitted hand-overs waiting to join the
    decode batch, and the results to send."""

    def __init__(self, worker: EmulatedWorker):
        self.worker = worker
        self.waiting: dict[str, KvIntake] = {}
        self.results: list[worker_pb2.KvStreamResult] = []
        self.ready = asyncio.Event()

    def answer(self, result: worker_pb2.KvStreamResult) -> None:
        self.results.append(result)
        self.ready.set()

    def joined(self, key: str, joined_s: float) -> None:
        intake = self.waiting.pop(key, None)
        if intake is None:
            return
        w = self.worker
        self.answer(worker_pb2.KvStreamResult(request_id=key, ack=worker_pb2.KvTransferAck(
            request_id=key, blocks_received=intake.index, tokens_received=intake.prev_end,
            bytes_received=intake.received_bytes, kv_free_tokens=w.engine.kv_capacity - w.engine.kv_reserved,
            joined_unix_s=w.clock.to_unix(joined_s))))

    def refused(self, key: str, error: WorkerError) -> None:
        if self.waiting.pop(key, None) is not None:
            self.answer(worker_pb2.KvStreamResult(request_id=key, error=work_error(error)))


async def _look_up_store(w: EmulatedWorker, works) -> None:
    """Ask the shared store which blocks of these prompts it holds before the engine sees them
    (workers/shared_store.py); a store that does not answer leaves the worker's view as it was."""
    prompts = [list(work.prefill.prefix_block_hashes) for work in works
               if work.HasField("prefill") and work.prefill.prefix_block_hashes]
    if not prompts:
        return
    try:
        await w.store_lookup(prompts)
    except Exception as exc:
        log.warning("worker %s: the shared KV store did not answer: %r", w.worker_id, exc)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """infersched.v1.Worker over an EmulatedWorker (on the server's event loop)."""

    def __init__(self, worker: EmulatedWorker, *, on_drain: Callable[[], Awaitable[None]] | None = None,
                 peers: PeerBook | None = None):
        self.worker = worker
        self._on_drain = on_drain
        self._peers = peers  # None: any decode_address (a worker outside a cluster, in tests)

    # ---- Session ----------------------------------------------------------
    async def Session(self, request_iterator, context):
        w = self.worker
        outbox = _Outbox()
        reader = asyncio.get_running_loop().create_task(self._read_session(request_iterator, outbox))
        engine = w.engine
        refresh_s = ENGINE_STATE_REFRESH_S / w.clock.time_scale
        state_unforeseen = -1  # engine.unforeseen when the state was last sent (-1: never)
        state_sent_at = -math.inf
        try:
            while True:
                await outbox.ready()
                if outbox.updates:
                    updates = outbox.take()
                    # The report first: it reads the engine as it stands, so the state that
                    # follows matches it.
                    load = load_report_proto(w.load())
                    state = b""
                    now = w.now()
                    if engine.unforeseen != state_unforeseen or now - state_sent_at >= refresh_s:
                        state = w.engine_state()
                        state_unforeseen, state_sent_at = engine.unforeseen, now
                    yield worker_pb2.SessionUpdate(updates=updates, load=load, engine_state=state)
                elif reader.done():
                    return
        finally:
            reader.cancel()
            for key in list(outbox.open):  # the session's work ends with it
                w.cancel(key)

    async def _read_session(self, requests: AsyncIterator[worker_pb2.SessionRequest], outbox: _Outbox) -> None:
        w = self.worker
        try:
            async for message in requests:
                for key in message.cancel_request_ids:
                    if outbox.open.pop(key, None) is not None:
                        w.cancel(key)
                if w.store_lookup is not None:
                    await _look_up_store(w, message.work)
                for work in message.work:
                    address = work.prefill.decode_address
                    if (address and self._peers is not None and work.prefill.request_id not in outbox.open
                            and not await self._peers.allows(address)):
                        outbox.failed(work.prefill.request_id, NotAPeer(
                            f"field 'decode_address': {address[:64]!r} is not a worker of this cluster"))
                        continue
                    self._start(work, outbox)
        except Exception as exc:  # the stream broke (the scheduler went away): the session ends
            log.debug("worker %s: session stream ended: %r", w.worker_id, exc)
        finally:
            outbox.wake()

    def _start(self, work: worker_pb2.SessionWork, outbox: _Outbox) -> None:
        """Hand one work item to the worker; what goes wrong is the item's error update."""
        w = self.worker
        has_prefill, has_decode = work.HasField("prefill"), work.HasField("decode")
        key = work.prefill.request_id or work.decode.request_id
        if key in outbox.open:
            outbox.failed(key, AlreadyHeld(f"request {key!r} already has work in this session"))
            return
        try:
            if not (has_prefill or has_decode):
                raise InvalidField("work: set 'prefill', 'decode' or both")
            if not key:
                raise InvalidField("field 'request_id': must not be empty")
            if has_prefill:
                pre = work.prefill
                if has_decode:
                    dec = work.decode
                    if dec.request_id != pre.request_id:
                        raise InvalidField(f"field 'decode.request_id': {dec.request_id!r} differs from "
                                           f"prefill's {pre.request_id!r}")
                    if dec.max_output_tokens and dec.max_output_tokens != pre.max_output_tokens:
                        raise InvalidField(f"field 'decode.max_output_tokens': {dec.max_output_tokens} differs "
                                           f"from prefill's {pre.max_output_tokens}")
                outbox.open[key] = has_decode
                w.prefill(key, prompt_length(pre), pre.max_output_tokens, outbox,
                          sent_s=w.clock.from_unix(work.sent_unix_s) if work.sent_unix_s else None,
                          block_hashes=tuple(pre.prefix_block_hashes), decode=has_decode,
                          chunk_tokens=work.decode.chunk_tokens, decode_address=pre.decode_address,
                          decode_link_bytes_per_s=work.decode_link_bytes_per_s)
            elif has_decode:
                outbox.open[key] = True
                w.decode(key, work.decode.max_output_tokens, work.decode.chunk_tokens, outbox)
        except WorkerError as exc:
            outbox.failed(key, exc)
        except Exception as exc:  # the scheduler must not wait for an answer that never comes
            log.exception("worker %s: work for request %r failed", w.worker_id, key)
            outbox.failed(key, WorkerError(f"{type(exc).__name__}: {exc}"))

    # ---- KV hand-overs in -----------------------------------------------------
    async def TransferKvStream(self, request_iterator, context):
        acks = _KvAcks(self.worker)
        reader = asyncio.get_running_loop().create_task(self._read_kv_stream(request_iterator, acks))
        try:
            while True:
                await acks.ready.wait()
                acks.ready.clear()
                if acks.results:
                    batch, acks.results = acks.results, []
                    yield worker_pb2.KvStreamResults(results=batch)
                elif reader.done():
                    return
        finally:
            reader.cancel()
            for key in list(acks.waiting):  # not joined yet: dropped with the stream
                acks.waiting.pop(key)
                self.worker.cancel(key)

    async def _read_kv_stream(self, requests, acks: _KvAcks) -> None:
        w = self.worker
        intakes: dict[str, KvIntake] = {}
        refused: set[str] = set()  # requests already answered with an error: their later blocks are dropped
        try:
            async for message in requests:
                if message.HasField("cancel_request_id"):
                    key = message.cancel_request_id
                    intakes.pop(key, None)
                    if acks.waiting.pop(key, None) is not None:
                        w.cancel(key)
                    continue
                block = message.block
                try:
                    key = msgpack.unpackb(block.meta, raw=False).get("request_id")
                except Exception:  # malformed meta: parse_kv_block below names what is wrong
                    key = None
                if not isinstance(key, str) or not key:
                    key, intake = "", KvIntake()  # belongs to no request: answered on its own
                elif key in refused:
                    continue
                else:
                    intake = intakes.setdefault(key, KvIntake())
                try:
                    intake.add(block)
                    if not intake.complete:
                        continue
                    del intakes[key]
                    acks.waiting[key] = intake
                    ready = w.clock.from_unix(intake.ready_unix) if intake.ready_unix else None
                    w.admit_kv(key, intake.prev_end, intake.first["max_output_tokens"], acks, ready_s=ready)
                except WorkerError as exc:
                    acks.waiting.pop(key, None)
                    if key:
                        intakes.pop(key, None)
                        refused.add(key)
                    acks.answer(worker_pb2.KvStreamResult(request_id=key, error=work_error(exc)))
        except Exception as exc:  # the stream broke (the prefill worker went away)
            log.debug("worker %s: hand-over stream ended: %r", w.worker_id, exc)
        finally:
            acks.ready.set()

    # ---- operations ---------------------------------------------------------
    async def Drain(self, request, context):
        w = self.worker
        if request.timeout_s < 0 or not math.isfinite(request.timeout_s):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"field 'timeout_s': must be >= 0, got {request.timeout_s}")
        w.drain()
        if self._on_drain is not None:
            await self._on_drain()
        if request.wait:
            idle = asyncio.get_running_loop().create_future()
            w.when_idle(lambda: idle.done() or idle.set_result(None))
            try:
                await asyncio.wait_for(idle, request.timeout_s or None)
            except TimeoutError:
                pass
        return worker_pb2.DrainResponse(state=int(w.state), in_flight=w.in_flight)

    async def GetWorkerStats(self, request, context):
        w = self.worker
        stats = worker_stats_proto(w.stats())
        stats.load.CopyFrom(load_report_proto(w.load()))
        stats.engine_state = w.engine_state()
        return stats
