"""KV hand-over between workers over gRPC: blocks out on one stream per decode worker,
checked and admitted on the other side.

Sending (`KvLinks`, the `KvTransport` of a prefill-only worker): a request's KV
goes as blocks of `block_tokens` tokens with msgpack metadata, paced over the
modelled transfer the worker computed, on one long-lived `TransferKvStream`
per decode worker that carries all its hand-overs there (`_KvLink`): in
Python gRPC a message costs a fraction of what a call costs.
Payloads are placeholders sized down from the modelled KV: one byte per MiB
(at least one per block); the metadata's `shape`, `dtype` and
`modelled_bytes` describe the real tensor, so accounting stays exact while
loopback carries bytes, not gigabytes. Each block says when the modelled
transfer completes (`ready_unix_s`); the decode worker admits the KV then and
acknowledges once it joined its decode batch.

Receiving (`KvIntake`): each block is checked against the ones before it;
anything malformed is INVALID_ARGUMENT naming the block index and key.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import msgpack

from infersched.v1 import worker_pb2, worker_pb2_grpc
from workers.clock import Clock
from workers.work import HandOver, InvalidField, PeerFailed, WorkerError
from workers.rpc import status_code

if TYPE_CHECKING:
    from workers.emulated import EmulatedWorker
    from workers.security.plane import PlaneMember
    from workers.perf import InstancePerf

log = logging.getLogger(__name__)

# Tokens of KV per block: most prompts fit one block, which keeps the hand-over to a
# few messages (each costs ~0.1 ms of CPU in Python gRPC).
DEFAULT_KV_BLOCK_TOKENS = 4096
# Placeholder payload: one byte per MiB of modelled KV (a 1,000-token Llama-3.1-8B
# prompt is ~128 MiB of KV, so ~128 bytes cross loopback instead).
PAYLOAD_SCALE_BYTES = 1 << 20
# Pacing blocks with sleeps shorter than this costs more than it models: asyncio
# timers resolve to about a millisecond, so shorter waits are skipped (the receiver
# still admits the KV at its modelled completion time, `ready_unix_s`).
_MIN_SLEEP_S = 1e-3
_KV_DTYPES = {4.0: "float32", 2.0: "bfloat16", 1.0: "float8_e4m3fn"}


def kv_blocks(perf: "InstancePerf", key: str, prompt_tokens: int, max_output_tokens: int,
              block_tokens: int = DEFAULT_KV_BLOCK_TOKENS) -> list[tuple[dict, bytes]]:
    """A request's KV as (metadata, placeholder payload) blocks, in token order."""
    model = perf.model
    per_token = perf.kv_bytes_per_token
    dtype = _KV_DTYPES.get(float(model.kv_dtype_bytes), "uint8")
    n = max(1, -(-prompt_tokens // block_tokens))
    blocks = []
    for k in range(n):
        start = k * block_tokens
        end = min(prompt_tokens, start + block_tokens)
        modelled = int((end - start) * per_token)
        meta = {
            "request_id": key, "block_index": k, "num_blocks": n, "token_start": start, "token_end": end,
            "dtype": dtype, "shape": [model.layers, 2, end - start, model.kv_heads, model.head_dim],
            "max_output_tokens": max_output_tokens, "modelled_bytes": modelled,
        }
        blocks.append((meta, b"\0" * max(1, modelled // PAYLOAD_SCALE_BYTES)))
    return blocks


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
    ready = meta.get("ready_unix_s")
    if ready is not None and (isinstance(ready, bool) or not isinstance(ready, (int, float))):
        raise InvalidField(f"{where}: key 'ready_unix_s': expected a number, got {ready!r}")
    return meta


class KvIntake:
    """One request's KV blocks as they arrive, each checked against the ones before it."""

    __slots__ = ("first", "index", "prev_end", "received_bytes", "ready_unix")

    def __init__(self):
        self.first: dict | None = None
        self.index = 0
        self.prev_end = 0
        self.received_bytes = 0
        self.ready_unix: float | None = None

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


async def sleep_until(clock: Clock, t_s: float) -> None:
    delay = (t_s - clock.now()) * clock.time_scale
    if delay >= _MIN_SLEEP_S:
        await asyncio.sleep(delay)


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
        return PeerFailed(self.address, f"{code.name}: {details}", code.name)

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
                             "DEADLINE_EXCEEDED") from None
        except asyncio.CancelledError:
            if sent:
                self._cancel(key)
            raise
        finally:
            self._waiting.pop(key, None)
        if outcome is None:
            raise self._failed()
        if outcome.HasField("error"):
            code = status_code(outcome.error.code)
            raise PeerFailed(self.address, f"{code.name}: {outcome.error.message}", code.name)
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


class KvLinks:
    """A prefill worker's KvTransport over gRPC: one `_KvLink` per decode worker, one
    task per hand-over (pacing its blocks, then waiting for the ack)."""

    def __init__(self, worker: "EmulatedWorker", rpc_timeout_s: float = 120.0,
                 block_tokens: int = DEFAULT_KV_BLOCK_TOKENS, member: "PlaneMember | None" = None):
        self.worker = worker
        self._member = member  # the cluster credentials peers are reached with (None: plaintext, no token)
        self.rpc_timeout_s = rpc_timeout_s
        self.block_tokens = block_tokens
        self._channels: dict[str, tuple[grpc.aio.Channel, worker_pb2_grpc.WorkerStub]] = {}
        self._links: dict[str, _KvLink] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        worker.kv = self

    def send(self, handover: HandOver) -> None:
        task = asyncio.get_running_loop().create_task(self._hand_over(handover))
        self._tasks[handover.key] = task
        task.add_done_callback(lambda done, key=handover.key: self._tasks.pop(key, None)
                               if self._tasks.get(key) is done else None)

    def abort(self, key: str, address: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _hand_over(self, h: HandOver) -> None:
        w = self.worker
        clock = w.clock
        blocks = kv_blocks(w.perf, h.key, h.prompt_tokens, h.max_output_tokens, self.block_tokens)
        n = len(blocks)
        duration = h.done_s - h.start_s
        ready_unix = clock.to_unix(h.done_s)

        async def paced() -> AsyncIterator[tuple[dict, bytes]]:
            for k, (meta, payload) in enumerate(blocks):
                await sleep_until(clock, h.start_s + duration * (k + 1) / n)
                meta["ready_unix_s"] = ready_unix
                yield meta, payload

        try:
            ack = await self._send(h.address, h.key, paced())
        except WorkerError as exc:
            w.hand_over_failed(h.key, exc)
        except Exception as exc:  # not a peer's answer: the work must still end, with a reason
            log.exception("worker %s: hand-over of %r failed", w.worker_id, h.key)
            w.hand_over_failed(h.key, PeerFailed(h.address, f"{type(exc).__name__}: {exc}", "INTERNAL"))
        else:
            w.handed_over(h.key, ack.joined_unix_s or clock.to_unix(clock.now()), n)

    async def _send(self, address: str, key: str,
                    blocks: AsyncIterator[tuple[dict, bytes]]) -> worker_pb2.KvTransferAck:
        link = self._links.get(address)
        if link is None or link.failure is not None:
            link = self._links[address] = _KvLink(self._stub(address), address, self.rpc_timeout_s)
        try:
            return await link.send(key, blocks)
        except PeerFailed as exc:
            if exc.status == "UNAVAILABLE" and link.failure is not None:
                # The peer may have restarted on a new port; a stale channel keeps failing.
                self._links.pop(address, None)
                peer = self._channels.pop(address, None)
                if peer is not None:
                    await peer[0].close()
            raise

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        peer = self._channels.get(address)
        if peer is None:
            if self._member is None:
                channel = grpc.aio.insecure_channel(address)
                peer = (channel, worker_pb2_grpc.WorkerStub(channel))
            else:
                peer = self._member.stub(address, worker_pb2_grpc.WorkerStub)
            self._channels[address] = peer
        return peer[1]

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for link in self._links.values():
            link.close()
        self._links.clear()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
