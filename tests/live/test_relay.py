"""Front-end processes relaying the Scheduler service to a core (scheduler.live.relay).

Real front-end processes and real gRPC on loopback; the core side runs in this
process against a small servicer whose behaviour each test can see."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler.live.relay import FrontendPool
from scheduler.live.relay.link import SNAPSHOT_AGE_KEY, SNAPSHOT_LINGER_S, SNAPSHOT_MAX_AGE_S

pytestmark = pytest.mark.timeout(120)


class ProbeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Generate streams one chunk per output token then a record; request id "hold"
    waits after its chunks until cancelled, "flood" streams without end (counting in
    `flooded`), "slow" takes 0.3 s before its record. GetStats echoes metadata "x-echo"
    (and is answered inline, as the scheduler's is); ListWorkers goes through a task."""

    def __init__(self):
        self.held_closed = asyncio.Event()
        self.held_started = asyncio.Event()
        self.flooded = 0
        self.inline_methods = {"GetStats": self.get_stats}

    async def Generate(self, request, context):
        if request.max_output_tokens <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "field 'max_output_tokens': must be > 0")
        while request.request_id == "flood":
            self.flooded += 1
            yield scheduler_pb2.GenerateResponse(tokens=common_pb2.TokenChunk(
                request_id="x" * 1024, first_token_index=self.flooded))  # 1 KiB: windows count bytes
        if request.request_id == "slow":
            await asyncio.sleep(0.3)
        try:
            for i in range(request.max_output_tokens):
                yield scheduler_pb2.GenerateResponse(tokens=common_pb2.TokenChunk(
                    request_id=request.request_id, first_token_index=i, token_count=1))
            if request.request_id == "hold":
                self.held_started.set()
                await asyncio.Event().wait()
            yield scheduler_pb2.GenerateResponse(record=scheduler_pb2.RequestRecord(
                request_id=request.request_id, status=common_pb2.REQUEST_STATUS_COMPLETED,
                output_tokens=request.max_output_tokens))
        finally:
            if request.request_id == "hold":
                self.held_closed.set()

    async def GetStats(self, request, context):
        return self.get_stats(request, context)

    def get_stats(self, request, context):
        context.set_trailing_metadata((("x-trailer", "from-core"),))
        echo = dict(context.invocation_metadata()).get("x-echo", "")
        if echo == "boom":
            raise RuntimeError("stats broke")
        return scheduler_pb2.SchedulerStats(policy=echo, requests_total=7)

    async def ListWorkers(self, request, context):
        await asyncio.sleep(0)
        if request.pool == "boom":
            raise RuntimeError("listing broke")
        return super().ListWorkers(request, context)  # the generated base: UNIMPLEMENTED

    # WatchStats stays the generated base class's.


class CountingScheduler(ProbeScheduler):
    """ProbeScheduler whose GetStats counts (as the scheduler's does) and is a snapshot
    method: Generate counts a completion before its record, a cancel once its call is
    closed; `stats_answers` counts get_stats calls (pushes and relayed calls)."""

    def __init__(self):
        super().__init__()
        self.completed = self.cancelled = self.stats_answers = 0
        self.snapshot_methods = frozenset({"GetStats"})

    async def Generate(self, request, context):
        ended = False
        try:
            async for item in super().Generate(request, context):
                if item.HasField("record"):
                    self.completed += 1
                    ended = True
                yield item
        finally:
            if not ended:
                self.cancelled += 1

    def get_stats(self, request, context):
        self.stats_answers += 1
        context.set_trailing_metadata((("x-trailer", "from-core"),))
        return scheduler_pb2.SchedulerStats(requests_completed=self.completed, requests_failed=self.cancelled)


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def serving(count: int = 1, servicer: ProbeScheduler | None = None):
    """(pool, servicer, port) of `count` front ends relaying to `servicer` (a new
    ProbeScheduler by default); stopped on the way out (stopping again is harmless)."""
    servicer = servicer or ProbeScheduler()
    pool = FrontendPool(servicer, count, start_timeout_s=60)
    try:
        yield pool, servicer, await pool.start("127.0.0.1", 0)
    finally:
        await pool.stop()


async def open_held_call(stub, servicer: ProbeScheduler):
    """A Generate that waits on the core after its first message, once it waits there."""
    call = stub.Generate(scheduler_pb2.GenerateRequest(request_id="hold", prompt_length=5, max_output_tokens=1))
    first = await call.read()
    await asyncio.wait_for(servicer.held_started.wait(), 10)
    return call, first


async def wait_health(health, service: str, want, timeout_s: float = 10.0):
    """The health status of `service` once it is `want` (or the last seen after `timeout_s`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
        if got == want or loop.time() > deadline:
            return got
        await asyncio.sleep(0.02)


def test_relays_streams_statuses_and_metadata_both_ways():
    async def main():
        async with serving() as (pool, _, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = scheduler_pb2_grpc.SchedulerStub(channel)
                items = [r async for r in stub.Generate(scheduler_pb2.GenerateRequest(
                    request_id="r1", prompt_length=10, max_output_tokens=3))]
                assert [r.tokens.first_token_index for r in items[:3]] == [0, 1, 2]
                assert items[-1].record.status == common_pb2.REQUEST_STATUS_COMPLETED
                assert items[-1].record.output_tokens == 3 and len(items) == 4

                call = stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=(("x-echo", "hello"),))
                stats = await call
                assert stats.policy == "hello" and stats.requests_total == 7
                assert ("x-trailer", "from-core") in tuple(await call.trailing_metadata())

                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    async for _ in stub.Generate(scheduler_pb2.GenerateRequest(prompt_length=10)):
                        pass
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert bad.value.details() == "field 'max_output_tokens': must be > 0"

                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.ListWorkers(scheduler_pb2.ListWorkersRequest())
                assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED

                # An exception in a handler ends the call UNKNOWN, inline or in a task,
                # and the relay goes on serving.
                with pytest.raises(grpc.aio.AioRpcError) as broke:
                    await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=(("x-echo", "boom"),))
                assert broke.value.code() == grpc.StatusCode.UNKNOWN and "stats broke" in broke.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as broke:
                    await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool="boom"))
                assert broke.value.code() == grpc.StatusCode.UNKNOWN and "listing broke" in broke.value.details()
                assert (await stub.GetStats(scheduler_pb2.GetStatsRequest())).requests_total == 7

                # Health says what the core says: NOT_SERVING until it can serve, and after.
                health = health_pb2_grpc.HealthStub(channel)
                for core_serving, want in ((None, health_pb2.HealthCheckResponse.NOT_SERVING),
                                           (True, health_pb2.HealthCheckResponse.SERVING),
                                           (False, health_pb2.HealthCheckResponse.NOT_SERVING)):
                    if core_serving is not None:
                        pool.set_serving(core_serving)
                    for service in ("", "infersched.v1.Scheduler"):
                        got = await wait_health(health, service, want)
                        assert got == want, (core_serving, service)

                reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
                async for answer in reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                        list_services="")])):
                    names = {s.name for s in answer.list_services_response.service}
                    break
                assert {"infersched.v1.Scheduler", "grpc.health.v1.Health"} <= names

    run(main())


def test_a_client_cancel_closes_the_call_on_the_core():
    async def main():
        async with serving() as (pool, servicer, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call, first = await open_held_call(scheduler_pb2_grpc.SchedulerStub(channel), servicer)
                assert first.tokens.first_token_index == 0
                call.cancel()
                await asyncio.wait_for(servicer.held_closed.wait(), 10)

    run(main())


def test_a_killed_front_end_ends_its_calls_and_is_replaced_on_the_same_port():
    async def main():
        async with serving() as (pool, servicer, port):
            old_pid = pool.pids()[0]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call, _ = await open_held_call(scheduler_pb2_grpc.SchedulerStub(channel), servicer)
                os.kill(old_pid, signal.SIGKILL)
                with pytest.raises(grpc.aio.AioRpcError) as broken:
                    await call.read()
                assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
            # The core cancelled what the dead front end had in flight.
            await asyncio.wait_for(servicer.held_closed.wait(), 10)
            deadline = time.monotonic() + 30
            while pool.restarts < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pool.restarts == 1 and pool.pids() and pool.pids()[0] != old_pid
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stats = await scheduler_pb2_grpc.SchedulerStub(channel).GetStats(
                    scheduler_pb2.GetStatsRequest(), wait_for_ready=True, timeout=10)
                assert stats.requests_total == 7

    run(main())


async def get_stats(stub) -> tuple[scheduler_pb2.SchedulerStats, dict]:
    """GetStats' answer and its trailing metadata."""
    call = stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)
    return await call, dict(await call.trailing_metadata())


async def until_from_snapshot(stub) -> tuple[scheduler_pb2.SchedulerStats, dict]:
    """GetStats until a front end answers it from a snapshot."""
    deadline = time.monotonic() + 10
    while True:
        stats, trailing = await get_stats(stub)
        if SNAPSHOT_AGE_KEY in trailing or time.monotonic() > deadline:
            return stats, trailing
        await asyncio.sleep(0.005)


def test_get_stats_from_snapshots_shows_each_connection_its_own_calls():
    async def main():
        async with serving(servicer=CountingScheduler()) as (pool, servicer, port):
            async with (grpc.aio.insecure_channel(f"127.0.0.1:{port}") as reader_channel,
                        grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                  options=[("grpc.use_local_subchannel_pool", 1)]) as writer_channel):
                reader = scheduler_pb2_grpc.SchedulerStub(reader_channel)
                writer = scheduler_pb2_grpc.SchedulerStub(writer_channel)
                _, trailing = await get_stats(reader)
                assert SNAPSHOT_AGE_KEY not in trailing, "answered from a snapshot before any was wanted"
                await asyncio.sleep(0.1)
                assert servicer.stats_answers == 1, "a one-off GetStats started the snapshot pushes"
                # Polled now: the core pushes them and the front end answers from them,
                # with the core's trailing metadata and the snapshot's age.
                _, trailing = await until_from_snapshot(reader)
                assert SNAPSHOT_AGE_KEY in trailing, "no GetStats was answered from a snapshot within 10 s"
                assert 0.0 <= float(trailing[SNAPSHOT_AGE_KEY]) <= SNAPSHOT_MAX_AGE_S * 1e3
                assert trailing["x-trailer"] == "from-core"

                # Read-your-writes: right after each Generate ends, the same connection's
                # GetStats counts it (from the core, or a snapshot that covers it).
                for done in range(1, 31):
                    async for _ in writer.Generate(scheduler_pb2.GenerateRequest(
                            request_id=f"r{done}", prompt_length=5, max_output_tokens=1)):
                        pass
                    stats, _ = await get_stats(writer)
                    assert stats.requests_completed == done
                    if done % 10 == 0:
                        await asyncio.sleep(0.05)  # snapshots covering it arrive meanwhile

                # A connection with a call open reads from the core; others from snapshots.
                held, _ = await open_held_call(writer, servicer)
                for _ in range(5):
                    _, trailing = await get_stats(writer)
                    assert SNAPSHOT_AGE_KEY not in trailing
                    await asyncio.sleep(0.01)
                _, trailing = await until_from_snapshot(reader)
                assert SNAPSHOT_AGE_KEY in trailing
                # Once the core has closed a cancelled call, the connection's reads show
                # it; another connection's do when the snapshots before it have aged out.
                held.cancel()
                await asyncio.wait_for(servicer.held_closed.wait(), 10)
                for _ in range(10):
                    assert (await get_stats(writer))[0].requests_failed == 1
                    await asyncio.sleep(0.005)
                await asyncio.sleep(SNAPSHOT_MAX_AGE_S + 0.15)  # + the last snapshot's transit, generously
                assert (await get_stats(reader))[0].requests_failed == 1
                stats, trailing = await until_from_snapshot(writer)
                assert SNAPSHOT_AGE_KEY in trailing and stats.requests_failed == 1

            # Nobody asks: the pushes stop.
            await asyncio.sleep(SNAPSHOT_LINGER_S + 0.5)
            answers = servicer.stats_answers
            await asyncio.sleep(0.3)
            assert servicer.stats_answers == answers, "the core kept computing snapshots nobody asked for"

    run(main())


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket tables")
def test_front_ends_share_the_port_and_stop_with_the_pool():
    async def main():
        async with serving(count=2) as (pool, _, port):
            pids = pool.pids()
            assert len(set(pids)) == 2
            listening = _listening_inodes(port)
            for pid in pids:
                assert _socket_inodes(pid) & listening, f"front end {pid} does not listen on {port}"
            # Connections of their own (no shared subchannel), so the kernel spreads them.
            for i in range(8):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                     options=(("grpc.use_local_subchannel_pool", 1),)) as ch:
                    stats = await scheduler_pb2_grpc.SchedulerStub(ch).GetStats(
                        scheduler_pb2.GetStatsRequest(), metadata=(("x-echo", str(i)),))
                    assert stats.policy == str(i)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        with socket.socket() as s:  # the port is free again (SO_REUSEADDR: TIME_WAIT is no listener)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()

    run(main())


def test_a_port_that_cannot_be_bound_is_a_clear_error():
    async def main():
        with socket.socket() as taken:  # no SO_REUSEPORT: gRPC cannot share it
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            pool = FrontendPool(ProbeScheduler(), 1, start_timeout_s=60)
            try:
                with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
                    await pool.start("127.0.0.1", port)
            finally:
                await pool.stop()

    run(main())


def test_a_stream_the_client_does_not_read_stops_on_the_core():
    """Flow control reaches the core: as in-process, where each yield waits for the
    send, a stream stops producing once the client's window and the relay's are full."""
    async def main():
        async with serving() as (pool, servicer, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = scheduler_pb2_grpc.SchedulerStub(channel).Generate(
                    scheduler_pb2.GenerateRequest(request_id="flood", prompt_length=5, max_output_tokens=1))
                await call.read()
                produced, deadline = -1, time.monotonic() + 15
                while servicer.flooded != produced and time.monotonic() < deadline:
                    produced = servicer.flooded
                    await asyncio.sleep(0.5)
                assert servicer.flooded == produced, "the core kept producing for a client that reads nothing"
                assert produced < 50_000  # ~5,000 of 1 KiB: the client's HTTP/2 window, then the relay's

                async def read(n):
                    for _ in range(n):
                        await call.read()

                # Reading more than it produced needs it to go on (or this times out).
                await asyncio.wait_for(read(produced + 100), 30)
                assert servicer.flooded > produced
                call.cancel()

    run(main())


def test_stopping_lets_open_calls_finish_within_the_grace():
    async def main():
        async with serving() as (pool, _, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = scheduler_pb2_grpc.SchedulerStub(channel).Generate(
                    scheduler_pb2.GenerateRequest(request_id="slow", prompt_length=5, max_output_tokens=2))
                await asyncio.sleep(0.1)  # in flight on the core
                stopping = asyncio.ensure_future(pool.stop())
                items = [item async for item in call]
                assert items[-1].record.status == common_pb2.REQUEST_STATUS_COMPLETED
                await stopping

    run(main())


def _processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("stop_after_s", [0.0, 0.3, 1.5])
def test_stop_during_start_leaves_no_front_end(stop_after_s):
    async def main():
        pool = FrontendPool(ProbeScheduler(), 3, start_timeout_s=60)
        starting = asyncio.ensure_future(pool.start("127.0.0.1", 0))
        await asyncio.sleep(0)
        socket_path = pool.socket_path
        await asyncio.sleep(stop_after_s)
        await pool.stop()
        with contextlib.suppress(OSError):
            await starting  # raced by the stop, or finished before it
        await pool.stop()  # idempotent, and what a caller does after a failed start
        assert _processes_naming(socket_path) == []

    run(main())


def test_the_relay_context_offers_what_the_scheduler_servicer_uses():
    """SchedulerServicer runs against grpc.aio's context in-process and against
    _RelayContext behind front ends: each `context.<name>` it uses must exist on both."""
    import ast
    import inspect

    from scheduler.live import servicer
    from scheduler.live.relay.pool import _RelayContext

    tree = ast.parse(inspect.getsource(servicer.SchedulerServicer))
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "context"}
    assert "abort" in used, "found no context use: the check reads the wrong class"
    assert not {name for name in used if not hasattr(_RelayContext, name)}
