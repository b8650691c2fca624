"""The emulated worker without Ray: it reproduces the engine's modelled timings on a
scaled clock, cancellation frees slot and KV in every state, KV blocks are
validated, engine replicas track the worker, and the Worker gRPC service (on
loopback) hands KV over, answers bad calls with a status and a reason, and runs
many requests' work on one Session stream."""
from __future__ import annotations

import asyncio
import contextlib
import math
import time

import grpc
import msgpack
import pytest

from infersched.v1 import worker_pb2, worker_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from workers.engine import MIXED, ROLE_BOTH, ROLE_DECODE, ROLE_PREFILL, BatchEngine
from workers.live import (
    DECODE_KEY,
    HANDOVER_KEY,
    LINK_KEY,
    LOAD_KEY,
    SENT_KEY,
    WORKER_SERVICE,
    AlreadyHeld,
    Cancelled,
    DecodeSummary,
    Draining,
    EmulatedWorker,
    InvalidField,
    LoadReport,
    NoCapacity,
    WorkerServicer,
    engine_state,
    parse_kv_block,
    restore_engine,
    start_grpc_server,
)

SCALE = 0.002  # 500x faster than the hardware: a 1 s decode runs in 2 ms
TIMEOUT_S = 20.0
# The engine runs this far behind the clock (wall seconds). Tests that watch engine
# internals while time passes need it at 0; the timing tests hold for any slack.
SLACK = 0.0


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster(load_cluster(builtin_cluster_path("live-small")))


def perf_of(cluster, name):
    return next(p for p in cluster.pools if p.name == name).perf


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


async def until(condition, what: str) -> None:
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError(f"timed out waiting for {what}")


def check_engine(eng: BatchEngine) -> None:
    """Internal bookkeeping is consistent: what cancellation must preserve."""
    assert eng.batch == len(eng.members) == len(eng.finish_heap)
    assert {rid for _, rid in eng.finish_heap} == set(eng.members)
    assert eng.ctx_offset_sum == pytest.approx(sum(m[0] for m in eng.members.values()))
    # Admitted prompts: the running prefill-first iteration's, or every chunked one's (admitted, not done).
    admitted = eng.prefilling if eng.token_budget else eng.prefill_batch
    in_prefill = sum(entry[1] + (entry[2] if eng.role == ROLE_BOTH else 0) for entry in admitted)
    reserved = sum(m[1] for m in eng.members.values()) + sum(eng.held.values()) + in_prefill
    assert eng.kv_reserved == reserved
    assert eng.waiting_tokens == sum(inp for _, inp, _ in eng.waiting)


async def drive(w: EmulatedWorker, key: str, inp: int, out: int, chunk: int = 8):
    req = w.admit_prefill(key, inp, out)
    pre = await w.first_token(req)
    w.keep_for_decode(req)
    claimed = w.claim(key, out, chunk)
    tokens = []
    async for first, count, _ in w.stream(claimed):
        tokens.append((first, count))
    summary = w.decode_summary(claimed)
    w.finish_delivery(claimed)
    return req.submit_s, pre, summary, tokens


@pytest.mark.parametrize("token_budget", [0, 512])  # prefill-first; chunked (prompts span iterations)
def test_worker_reproduces_engine_timings(cluster, token_budget):
    """Every first token and finish lands at the modelled time the engine gives for
    the same arrival times, however late the wall-clock timers fire; tokens made in
    mixed iterations stream like those of decode segments."""
    perf = perf_of(cluster, "b200")
    jobs = [(i, 300 + 250 * i, 40 + 30 * i, 0.0015 * i) for i in range(6)]

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK, token_budget=token_budget)
        w.start()

        async def one(i, inp, out, delay):
            await asyncio.sleep(delay)
            return await drive(w, f"r{i}", inp, out)

        results = await asyncio.gather(*(one(*j) for j in jobs))
        return w, results

    w, results = run(main())
    # Replay the same arrivals through a bare engine.
    eng = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    arrivals = sorted((results[i][0], i) for i in range(len(jobs)))
    first, finish = {}, {}
    while arrivals or eng.next_wake_s < math.inf:
        events = []
        if arrivals and arrivals[0][0] < eng.next_wake_s:
            t, i = arrivals.pop(0)
            eng.submit_prefill(i, jobs[i][1], jobs[i][2])
            eng.poke(t, events)
        else:
            t = eng.next_wake_s
            eng.wake(t, events)
        for ev in events:
            (first if ev[0] == 0 else finish if ev[0] == 1 else {})[ev[1]] = t
    for i, (submit, pre, summary, tokens) in enumerate(results):
        assert pre.first_token_s == pytest.approx(first[i], abs=1e-9)
        assert pre.first_token_s + summary.decode_s == pytest.approx(finish[i], abs=1e-9)
        # Decode streams every token after the first exactly once, in order.
        assert tokens[0][0] == 1 and sum(c for _, c in tokens) == jobs[i][2] - 1
        assert all(a + n == b for (a, n), (b, _) in zip(tokens, tokens[1:]))
    assert w.stats().completed == len(jobs) and w.in_flight == 0
    assert w.engine.kv_reserved == 0
    if token_budget:  # prompts did span iterations, beside a decoding batch
        assert w.engine.prefill_iterations > len(jobs) and w.engine.itl.tokens == sum(j[2] - 1 for j in jobs)


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "finished-unclaimed"])
def test_cancel_colocated_frees_slot_and_kv(cluster, state):
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        # A long-running neighbour keeps a decode batch going.
        neighbour = w.admit_prefill("n", 500, 4000)
        await w.first_token(neighbour)
        w.keep_for_decode(neighbour)
        if state == "waiting":
            blocker = w.admit_prefill("b", 60_000, 2)  # a long prefill ahead of it
            victim = w.admit_prefill("v", 800, 500)
            assert w.engine.waiting and w.engine.waiting[-1][0] == victim.eid
        elif state == "prefilling":
            victim = w.admit_prefill("v", 60_000, 500)
            await until(lambda: any(r[0] == victim.eid for r in w.engine.prefill_batch), "its prefill")
        elif state == "decoding":
            victim = w.admit_prefill("v", 800, 3000)
            await w.first_token(victim)
            await asyncio.sleep(0.002)  # ~1 s modelled: mid-segment
            assert victim.eid in w.engine.members and w.engine.act_start_s < w.now()
        else:
            victim = w.admit_prefill("v", 800, 3)
            await w.first_token(victim)
            await until(lambda: victim.eid not in w.engine.members, "it to finish")
        before_running = w.engine.batch
        assert w.cancel("v")
        assert not w.cancel("v")  # idempotent
        check_engine(w.engine)
        if state == "prefilling":  # leaves when its iteration ends
            await until(lambda: not w.engine.prefill_batch, "the prefill iteration to end")
        if state == "decoding":  # leaves at the end of the decode step in progress
            await until(lambda: victim.eid not in w.engine.members, "the step to end")
        if state == "waiting":
            await w.first_token(blocker)
            w.cancel("b")
        check_engine(w.engine)
        assert "v" not in w._reqs
        if state == "decoding":
            assert w.engine.batch == before_running - 1
        # Only the neighbour holds KV now, and it still runs to completion.
        assert w.engine.kv_reserved == 500 + 4000
        w.claim("n", 4000, 512)
        async for _ in w.stream(neighbour):
            pass
        assert w.engine.kv_reserved == 0 and w.engine.batch == 0

    run(main())


def test_cancel_waiter_sees_cancelled(cluster):
    async def main():
        w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        w.admit_prefill("blocker", 60_000, 2)
        victim = w.admit_prefill("v", 800, 10)
        waiter = asyncio.ensure_future(w.first_token(victim))
        await asyncio.sleep(0)
        w.cancel("v")
        with pytest.raises(Cancelled):
            await waiter

    run(main())


def test_cancel_decode_side_and_held(cluster):
    async def main():
        dec = EmulatedWorker(perf_of(cluster, "h100-decode"), ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK)
        pre = EmulatedWorker(perf_of(cluster, "h100-prefill"), ROLE_PREFILL, time_scale=SCALE, input_slack_s=SLACK)
        dec.start()
        pre.start()
        a = dec.admit_kv("a", 1000, 2000)
        await dec.joined(a)
        b = dec.admit_kv("b", 1000, 2000)
        await dec.joined(b)
        dec.cancel("a")
        check_engine(dec.engine)
        await until(lambda: dec.engine.batch == 1, "the cancelled member to leave")
        check_engine(dec.engine)
        assert dec.engine.kv_reserved == 3000
        held = pre.admit_prefill("h", 2000, 50)
        await pre.first_token(held)
        assert pre.engine.kv_reserved == 2000
        pre.cancel("h")
        assert pre.engine.kv_reserved == 0 and not pre.engine.held

    run(main())


def test_admission_checks(cluster):
    async def main():
        dec = EmulatedWorker(perf_of(cluster, "h100-decode"), ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK)
        both = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        dec.start()
        both.start()
        with pytest.raises(NoCapacity, match="holds at most"):
            dec.admit_kv("big", 400_000, 100_000)
        with pytest.raises(InvalidField, match="prompt_length"):
            both.admit_prefill("x", 0, 5)
        both.admit_prefill("dup", 10, 5)
        with pytest.raises(AlreadyHeld):
            both.admit_prefill("dup", 10, 5)
        both.drain()
        with pytest.raises(Draining):
            both.admit_prefill("late", 10, 5)
        assert dec.in_flight == 0

    run(main())


def meta(**over):
    base = {"request_id": "r", "block_index": 0, "num_blocks": 2, "token_start": 0, "token_end": 512,
            "dtype": "bfloat16", "shape": [32, 2, 512, 8, 128], "max_output_tokens": 10}
    base.update(over)
    return worker_pb2.KvBlock(meta=msgpack.packb({k: v for k, v in base.items() if v is not None}))


@pytest.mark.parametrize("block, index, prev_end, message", [
    (worker_pb2.KvBlock(meta=b"\xc1"), 0, 0, "block 0: field 'meta': not valid msgpack"),
    (worker_pb2.KvBlock(meta=msgpack.packb([1, 2])), 0, 0, "block 0: field 'meta': expected a msgpack map"),
    (meta(token_end=None), 0, 0, "block 0: key 'token_end': missing"),
    (meta(block_index="0"), 0, 0, "block 0: key 'block_index': expected an integer"),
    (meta(block_index=1), 0, 0, "block 0: key 'block_index': expected 0"),
    (meta(block_index=1, token_start=500, token_end=900), 1, 512, "block 1: key 'token_start': expected 512"),
    (meta(token_end=0), 0, 0, "block 0: key 'token_end': must exceed token_start"),
    (meta(shape="32x2"), 0, 0, "block 0: key 'shape': expected list"),
    (meta(max_output_tokens=0), 0, 0, "block 0: key 'max_output_tokens': must be > 0"),
])
def test_kv_block_validation_names_block_and_key(block, index, prev_end, message):
    first = msgpack.unpackb(meta().meta) if index else None
    with pytest.raises(InvalidField) as err:
        parse_kv_block(block, index, first, prev_end)
    assert str(err.value).startswith(message)


def test_kv_block_must_match_block_zero():
    first = msgpack.unpackb(meta().meta)
    with pytest.raises(InvalidField, match="block 1: key 'request_id': 's' differs from block 0's 'r'"):
        parse_kv_block(meta(request_id="s", block_index=1, token_start=512, token_end=900), 1, first, 512)


@pytest.mark.parametrize("token_budget", [0, 1024])  # prefill-first; chunked, mid-prompt when copied
def test_replica_tracks_the_worker_engine(cluster, token_budget):
    """A replica restored from engine_state and advanced in time reports the same rows
    and wakes as the engine it copies."""
    perf = perf_of(cluster, "b200")
    eng = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    for i, (inp, out) in enumerate([(900, 300), (2000, 40), (300, 700)]):
        eng.submit_prefill(i, inp, out)
    eng.poke(0.0, [])
    for _ in range(3):
        eng.wake(eng.next_wake_s, [])
    if token_budget:
        assert eng.prefilling and eng.activity == MIXED  # copied while a prompt is half computed
    replica = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    restore_engine(replica, engine_state(eng))
    t = eng.next_wake_s - 1e-4
    for e in (eng, replica):
        e.submit_prefill(-1, 500, 20)
        e.poke(t, [])
    for _ in range(8):
        assert replica.next_wake_s == eng.next_wake_s
        assert (replica.batch, replica.kv_reserved, len(replica.waiting)) == (eng.batch, eng.kv_reserved,
                                                                              len(eng.waiting))
        if eng.next_wake_s == math.inf:
            break
        a, b = [], []
        eng.wake(eng.next_wake_s, a)
        replica.wake(replica.next_wake_s, b)
        assert [x[:2] for x in a] == [x[:2] for x in b]


def test_load_report_round_trip():
    r = LoadReport(7, 2, 900, 3, 12345, 0.25, 2, 10.5, 99.125, 1_700_000_000.5, 98.5, 4000, 700, 1234.5)
    assert LoadReport.decode(r.encode()) == r
    s = DecodeSummary(0.01, 1.5, 12.0, 0.003)
    assert DecodeSummary.decode(s.encode()) == pytest.approx(s)
    with pytest.raises(ValueError):
        LoadReport.decode("1 2 3")


# ---- the Worker service on loopback --------------------------------------------------------


async def serve_worker(w: EmulatedWorker):
    servicer = WorkerServicer(w)

    def add(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [WORKER_SERVICE]

    server, port, _ = await start_grpc_server("127.0.0.1", add)
    return server, f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def worker_channel(w: EmulatedWorker):
    """A channel to `w`'s Worker service on loopback; the server stops on the way out."""
    server, address = await serve_worker(w)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield channel
    finally:
        await server.stop(None)


def test_handover_over_grpc_matches_the_link_model(cluster):
    """Prefill on a prefill-only worker hands the KV to a decode worker over TransferKv;
    the hand-over takes the modelled transfer time over the slower link."""
    pre_perf, dec_perf = perf_of(cluster, "h100-prefill"), perf_of(cluster, "h100-decode")
    link = 50e9

    async def main():
        pre = EmulatedWorker(pre_perf, ROLE_PREFILL, time_scale=SCALE, link_bytes_per_s=link, input_slack_s=SLACK,
                             kv_block_tokens=512)
        dec = EmulatedWorker(dec_perf, ROLE_DECODE, time_scale=SCALE, link_bytes_per_s=link / 2,
                             input_slack_s=SLACK)
        pre.start()
        dec.start()
        (ps, pa), (ds, da) = await serve_worker(pre), await serve_worker(dec)
        try:
            async with grpc.aio.insecure_channel(pa) as pc, grpc.aio.insecure_channel(da) as dc:
                call = worker_pb2_grpc.WorkerStub(pc).Prefill(
                    worker_pb2.PrefillRequest(request_id="r1", prompt_length=1500, max_output_tokens=64,
                                              decode_address=da),
                    metadata=((LINK_KEY, repr(link / 2)),))
                resp = await call
                trailing = dict(await call.trailing_metadata())
                chunks = [c async for c in worker_pb2_grpc.WorkerStub(dc).Decode(
                    worker_pb2.DecodeRequest(request_id="r1", max_output_tokens=64, chunk_tokens=16))]
                decode = worker_pb2_grpc.WorkerStub(dc).Decode(worker_pb2.DecodeRequest(request_id="r1"))
                with pytest.raises(grpc.aio.AioRpcError) as gone:
                    await decode.read()
                return resp, trailing, chunks, gone.value, pre, dec
        finally:
            await ps.stop(None)
            await ds.stop(None)

    resp, trailing, chunks, gone, pre, dec = run(main())
    sent_s = float(trailing[HANDOVER_KEY])
    assert sent_s == pytest.approx(pre_perf.kv_transfer_s(1500, link / 2), rel=1e-9)
    assert resp.kv_transfer_s >= sent_s
    assert resp.prefill_s == pytest.approx(pre_perf.prefill(1500, 1500 * 1501 / 2, 1)[0], rel=1e-9)
    assert resp.kv_blocks == 3 and resp.kv_bytes == int(1500 * pre_perf.kv_bytes_per_token)
    assert LoadReport.decode(trailing[LOAD_KEY]).received == 1
    assert [c.first_token_index for c in chunks][0] == 1 and sum(c.token_count for c in chunks) == 63
    assert gone.code() == grpc.StatusCode.FAILED_PRECONDITION  # delivered and forgotten
    assert pre.engine.kv_reserved == 0 and dec.engine.kv_reserved == 0


@pytest.mark.parametrize("request_fields, metadata, code, reason", [
    ({"request_id": "", "prompt_length": 10, "max_output_tokens": 5}, (), "INVALID_ARGUMENT", "request_id"),
    ({"request_id": "a", "prompt_length": -3, "max_output_tokens": 5}, (), "INVALID_ARGUMENT", "prompt_length"),
    ({"request_id": "a", "prompt_length": 10, "max_output_tokens": 0}, (), "INVALID_ARGUMENT",
     "max_output_tokens"),
    ({"request_id": "a", "prompt_tokens": [1, 2], "prompt_length": 3, "max_output_tokens": 5}, (),
     "INVALID_ARGUMENT", "disagrees"),
    ({"request_id": "a", "prompt_length": 10, "max_output_tokens": 5, "decode_address": "127.0.0.1:1"}, (),
     "INVALID_ARGUMENT", "decode_address"),
    ({"request_id": "a", "prompt_length": 10, "max_output_tokens": 5}, ((SENT_KEY, "soon"),),
     "INVALID_ARGUMENT", "could not convert"),
    ({"request_id": "a", "prompt_length": 2_000_000, "max_output_tokens": 5}, (), "RESOURCE_EXHAUSTED",
     "holds at most"),
])
def test_worker_service_rejects_bad_calls(cluster, request_fields, metadata, code, reason):
    async def main():
        w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Prefill(worker_pb2.PrefillRequest(**request_fields), metadata=metadata)
            # The worker stays up and serves a good call afterwards.
            ok = await stub.Prefill(worker_pb2.PrefillRequest(request_id="ok", prompt_length=10,
                                                              max_output_tokens=1))
            return err.value, ok

    err, ok = run(main())
    assert err.code().name == code and reason in err.details()
    assert ok.prefill_tokens == 10


def test_transfer_kv_rejects_malformed_stream(cluster):
    async def main():
        w = EmulatedWorker(perf_of(cluster, "h100-decode"), ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as short:
                await stub.TransferKv(iter([meta()]))  # 1 of 2 blocks
            with pytest.raises(grpc.aio.AioRpcError) as gap:
                await stub.TransferKv(iter([meta(), meta(block_index=1, token_start=600, token_end=900)]))
            with pytest.raises(grpc.aio.AioRpcError) as none:
                await stub.Decode(worker_pb2.DecodeRequest(request_id="nobody")).read()
            return short.value, gap.value, none.value, w

    short, gap, none, w = run(main())
    assert short.code() == grpc.StatusCode.INVALID_ARGUMENT and "block 1: key 'num_blocks'" in short.details()
    assert gap.code() == grpc.StatusCode.INVALID_ARGUMENT and "block 1: key 'token_start'" in gap.details()
    assert none.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert w.engine.kv_reserved == 0 and w.in_flight == 0


def test_decode_cancel_over_grpc_frees_kv(cluster):
    """A client that cancels its Decode stream frees the slot and KV on the worker."""
    async def main():
        w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            await stub.Prefill(worker_pb2.PrefillRequest(request_id="long", prompt_length=1000,
                                                         max_output_tokens=50_000))
            call = stub.Decode(worker_pb2.DecodeRequest(request_id="long", chunk_tokens=1))
            await call.read()
            assert w.engine.batch == 1
            call.cancel()
            for _ in range(1000):
                if w.in_flight == 0:
                    break
                await asyncio.sleep(0.005)
            return w

    w = run(main())
    assert w.in_flight == 0 and w.engine.batch == 0 and w.engine.kv_reserved == 0
    check_engine(w.engine)


def test_decode_trailer_carries_the_summary(cluster):
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            await stub.Prefill(worker_pb2.PrefillRequest(request_id="a", prompt_length=700,
                                                         max_output_tokens=30))
            call = stub.Decode(worker_pb2.DecodeRequest(request_id="a", max_output_tokens=30))
            chunks = [c async for c in call]
            return chunks, dict(await call.trailing_metadata())

    chunks, trailing = run(main())
    summary = DecodeSummary.decode(trailing[DECODE_KEY])
    # Alone in the batch: 29 decode steps from a 701-token context (the trailer carries 9 significant digits).
    assert summary.decode_s == pytest.approx(perf.decode(1, 701.0, 29)[0], rel=1e-8)
    assert summary.wait_s == 0.0 and summary.energy_j > 0
    assert sum(c.token_count for c in chunks) == 29


def test_late_arrival_is_admitted_at_its_send_time(cluster):
    """Work that spends wall time in transit is admitted at the modelled time it was
    sent, as long as the transit fits in the engine's slack behind the clock."""
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=0.05)
        w.start()
        first = w.admit_prefill("a", 2000, 400)  # keeps the engine busy
        await asyncio.sleep(0.02)  # 10 s modelled pass; the engine runs 25 s behind
        sent = time.time() - 0.015  # sent 15 ms ago, arriving only now
        late = w.admit_prefill("b", 500, 10, sent_unix=sent)
        expected = w.modelled_at_unix(sent)
        await w.first_token(late)
        await w.first_token(first)
        return late.submit_s, expected, w.now()

    submit_s, expected, now = run(main())
    assert submit_s == pytest.approx(expected, abs=1e-3)  # 1 ms modelled = 2 us of wall clock
    assert now - submit_s > 5.0  # it really arrived seconds (modelled) after it was sent


def test_server_takes_a_burst_beyond_grpc_default_pending_limit(cluster):
    """grpc-core by default cancels calls that arrive while 1,000 others wait for the
    Python server (so no handler could count them); our servers take a burst of 2,500."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def main():
        w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return await asyncio.gather(*(stub.Check(health_pb2.HealthCheckRequest()) for _ in range(2500)),
                                        return_exceptions=True)

    replies = run(main())
    assert [r for r in replies if isinstance(r, Exception)] == []
    assert all(r.status == 1 for r in replies)  # SERVING


# ---- the Session stream: many requests' work on one call -------------------------------------


def work(key: str, prompt: int, out: int, *, decode: bool = True, **prefill) -> worker_pb2.SessionWork:
    return worker_pb2.SessionWork(
        prefill=worker_pb2.PrefillRequest(request_id=key, prompt_length=prompt, max_output_tokens=out, **prefill),
        decode=worker_pb2.DecodeRequest(request_id=key, max_output_tokens=out) if decode else None)


async def follow(call, keys, last: str = "decoded") -> tuple[dict[str, list], list]:
    """Read a Session until each request in `keys` had its last update (one with the
    field `last`, or an error): (updates by request, messages)."""
    waiting = set(keys)
    updates: dict[str, list] = {}
    messages = []
    while waiting:
        message = await call.read()
        messages.append(message)
        for update in message.updates:
            updates.setdefault(update.request_id, []).append(update)
            if update.HasField(last) or update.HasField("error"):
                waiting.discard(update.request_id)
    return updates, messages


def test_session_runs_colocated_work_with_the_engine_timings(cluster):
    """One work item prefills and decodes; its updates carry the same modelled spans as
    the Prefill and Decode calls, every token once, and each message the worker's load."""
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Session()
            await call.write(worker_pb2.SessionRequest(work=[work("a", 700, 30), work("b", 300, 1)]))
            updates, messages = await follow(call, {"a", "b"})
            call.cancel()
            return updates, messages, w

    updates, messages, w = run(main())
    a = updates["a"]
    prefill = next(u.prefill for u in a if u.HasField("prefill"))
    assert prefill.prefill_s == pytest.approx(perf.prefill(700, 700 * 701 / 2, 1)[0], rel=1e-9)
    chunks = [u.tokens for u in a if u.HasField("tokens")]
    assert chunks[0].first_token_index == 1 and sum(c.token_count for c in chunks) == 29
    assert all(c.first_token_index + c.token_count == n.first_token_index for c, n in zip(chunks, chunks[1:]))
    decoded = a[-1].decoded
    assert a[-1].HasField("decoded") and decoded.wait_s == 0.0 and decoded.energy_j > 0
    # A one-token request ends at its first token: nothing to decode.
    b = updates["b"]
    assert b[-1].decoded.decode_s == 0.0 and not any(u.HasField("tokens") for u in b)
    for message in messages:
        assert len({u.request_id for u in message.updates}) == len(message.updates)  # one update per request
        assert LoadReport.decode(message.load).received <= 2
        if message.engine_state:
            restore_engine(BatchEngine(perf, ROLE_BOTH), message.engine_state)
    assert messages[0].engine_state  # the first message gives the scheduler's replica its base
    assert LoadReport.decode(messages[-1].load).received == 2
    assert w.in_flight == 0 and w.engine.kv_reserved == 0


def test_session_sends_the_engine_state_only_when_a_replica_could_not_foresee_it(cluster):
    """Prompts admitted at their send time leave a replica exact: messages after the first
    carry no state, and a replica fed the same prompts at the same times matches the
    worker's engine. A prompt without a send time, or a cancellation, brings the state."""
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=0.05)
        w.start()
        replica = BatchEngine(perf, ROLE_BOTH)
        async with worker_channel(w) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Session()
            # The base state, before any work (no send time: admitted on receipt).
            await call.write(worker_pb2.SessionRequest(work=[work("base", 100, 1)]))
            first, messages = await follow(call, {"base"})
            base = messages[-1]
            assert base.engine_state
            restore_engine(replica, base.engine_state)
            timed = []
            for k in range(4):
                sent = time.time()
                item = work(f"t{k}", 300 + 100 * k, 20)
                item.sent_unix_s = sent
                timed.append((w.modelled_at_unix(sent), 300 + 100 * k, 20))
                await call.write(worker_pb2.SessionRequest(work=[item]))
                await asyncio.sleep(0.002)
            _, quiet = await follow(call, {f"t{k}" for k in range(4)})
            eng = w.engine
            done = (eng.prefill_tokens, eng.decode_tokens, eng.busy_s, eng.dynamic_energy_j)
            # Cancel a long one mid-decode: the replica cannot know; the state follows.
            await call.write(worker_pb2.SessionRequest(work=[work("long", 500, 100_000)]))
            await until(lambda: w.engine.batch == 1, "the long request to decode")
            await call.write(worker_pb2.SessionRequest(cancel_request_ids=["long"]))
            await until(lambda: w.in_flight == 0, "the cancel to free the request")
            await call.write(worker_pb2.SessionRequest(work=[work("after", 100, 1)]))
            _, after = await follow(call, {"after"})
            call.cancel()
        return replica, timed, quiet, after, done

    replica, timed, quiet, after, done = run(main())
    assert all(not m.engine_state for m in quiet), "prompts admitted at their send time need no state"
    # The replica, given the same prompts at the same times, is where the worker's engine is.
    scratch: list = []
    for rid, (t, inp, out) in enumerate(timed):
        while replica.next_wake_s <= t:
            replica.wake(replica.next_wake_s, scratch)
        replica.submit_prefill(-1 - rid, inp, out)
        replica.poke(t, scratch)
    while replica.next_wake_s < math.inf:  # both run to idle: every timed prompt finished
        replica.wake(replica.next_wake_s, scratch)
    assert (replica.prefill_tokens, replica.decode_tokens) == done[:2]
    assert (replica.busy_s, replica.dynamic_energy_j) == pytest.approx(done[2:], rel=1e-9)
    assert any(m.engine_state for m in after), "a cancellation brings the state"


def test_session_cancel_and_end_free_slot_and_kv(cluster):
    """A cancel message, and the end of the stream, free what the work held."""
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            call = stub.Session()
            await call.write(worker_pb2.SessionRequest(work=[work("long", 1000, 200_000)]))
            await until(lambda: w.engine.batch == 1, "the request to decode")
            await call.write(worker_pb2.SessionRequest(cancel_request_ids=["long"]))
            await until(lambda: w.in_flight == 0, "the cancel to free the request")
            freed_by_cancel = (w.engine.batch, w.engine.kv_reserved)
            await call.write(worker_pb2.SessionRequest(work=[work("left", 1000, 200_000)]))
            await until(lambda: w.engine.batch == 1, "the second request to decode")
            call.cancel()
            await until(lambda: w.in_flight == 0, "the end of the session to free the request")
            return freed_by_cancel, w

    freed_by_cancel, w = run(main())
    assert freed_by_cancel == (0, 0)
    assert w.engine.batch == 0 and w.engine.kv_reserved == 0
    check_engine(w.engine)


@pytest.mark.parametrize("item, code, reason", [
    (worker_pb2.SessionWork(), "INVALID_ARGUMENT", "set 'prefill', 'decode' or both"),
    (worker_pb2.SessionWork(decode=worker_pb2.DecodeRequest(request_id="x")), "FAILED_PRECONDITION", "no KV"),
    (worker_pb2.SessionWork(prefill=worker_pb2.PrefillRequest(request_id="x", prompt_length=10, max_output_tokens=5),
                            decode=worker_pb2.DecodeRequest(request_id="y")), "INVALID_ARGUMENT", "differs"),
    (work("x", -3, 5), "INVALID_ARGUMENT", "prompt_length"),
    (work("x", 2_000_000, 5), "RESOURCE_EXHAUSTED", "holds at most"),
])
def test_session_answers_bad_work_and_goes_on(cluster, item, code, reason):
    async def main():
        w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK)
        w.start()
        async with worker_channel(w) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Session()
            key = item.prefill.request_id or item.decode.request_id
            await call.write(worker_pb2.SessionRequest(work=[item]))
            bad, _ = await follow(call, {key})
            await call.write(worker_pb2.SessionRequest(work=[work("ok", 10, 3)]))
            good, _ = await follow(call, {"ok"})
            call.cancel()
            return bad[key][-1], good["ok"][-1]

    bad, good = run(main())
    assert grpc.StatusCode[code].value[0] == bad.error.code and reason in bad.error.message
    assert good.HasField("decoded")


def test_session_handover_and_a_failed_peer(cluster):
    """Prefill work names the decode worker: the KV goes over at the modelled link time
    and decode work on the decode worker's session streams the rest. A decode worker
    that is gone fails the work with UNAVAILABLE, naming it."""
    pre_perf, dec_perf = perf_of(cluster, "h100-prefill"), perf_of(cluster, "h100-decode")
    link = 50e9

    async def main():
        pre = EmulatedWorker(pre_perf, ROLE_PREFILL, time_scale=SCALE, input_slack_s=SLACK)
        dec = EmulatedWorker(dec_perf, ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK)
        pre.start()
        dec.start()
        (ps, pa), (ds, da) = await serve_worker(pre), await serve_worker(dec)
        try:
            async with grpc.aio.insecure_channel(pa) as pc, grpc.aio.insecure_channel(da) as dc:
                pcall, dcall = worker_pb2_grpc.WorkerStub(pc).Session(), worker_pb2_grpc.WorkerStub(dc).Session()
                handover = work("h", 1500, 64, decode=False, decode_address=da)
                handover.decode_link_bytes_per_s = link
                dead = work("d", 1500, 64, decode=False, decode_address="127.0.0.1:1")
                await pcall.write(worker_pb2.SessionRequest(work=[handover, dead]))
                prefilled, _ = await follow(pcall, {"h", "d"}, last="prefill")
                await dcall.write(worker_pb2.SessionRequest(
                    work=[worker_pb2.SessionWork(decode=worker_pb2.DecodeRequest(request_id="h"))]))
                decoded, _ = await follow(dcall, {"h"})
                pcall.cancel()
                dcall.cancel()
                return prefilled, decoded, pre, dec
        finally:
            await ps.stop(None)
            await ds.stop(None)

    prefilled, decoded, pre, dec = run(main())
    done = prefilled["h"][-1]
    assert done.kv_sent_s == pytest.approx(pre_perf.kv_transfer_s(1500, link), rel=1e-9)
    assert done.prefill.kv_transfer_s >= done.kv_sent_s and done.prefill.kv_blocks == 1
    assert sum(u.tokens.token_count for u in decoded["h"]) == 63 and decoded["h"][-1].HasField("decoded")
    failed = prefilled["d"][-1].error
    assert failed.code == grpc.StatusCode.UNAVAILABLE.value[0] and failed.failed_peer_address == "127.0.0.1:1"
    assert pre.in_flight == 0 and pre.engine.kv_reserved == 0 and dec.engine.kv_reserved == 0


def kv_block(request_id: str, index: int, start: int, end: int, blocks: int = 2) -> worker_pb2.KvStreamRequest:
    # Long outputs: the requests stay in the decode batch while the test looks.
    return worker_pb2.KvStreamRequest(block=meta(request_id=request_id, block_index=index, num_blocks=blocks,
                                                 token_start=start, token_end=end, max_output_tokens=100_000))


def test_kv_stream_takes_interleaved_hand_overs(cluster):
    """Blocks of two requests interleave on one stream; each is checked in its own order
    and acknowledged once it joined the batch; a bad block is answered naming the block
    and key, and the stream goes on; a cancel, and the end of the stream, free requests
    not acknowledged yet."""
    perf = perf_of(cluster, "h100-decode")

    async def main():
        w = EmulatedWorker(perf, ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK, max_batch=2)
        w.start()
        async with worker_channel(w) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).TransferKvStream()
            for message in (kv_block("a", 0, 0, 512), kv_block("b", 0, 0, 300), kv_block("gap", 0, 0, 100),
                            kv_block("a", 1, 512, 900), kv_block("gap", 1, 200, 400), kv_block("b", 1, 300, 700)):
                await call.write(message)
            results = {}
            while len(results) < 3:
                for result in (await call.read()).results:
                    results[result.request_id] = result
            # The batch (2 slots) is full: a third request waits to join, then is cancelled.
            await call.write(kv_block("c", 0, 0, 200, blocks=1))
            await until(lambda: len(w.engine.joining) == 1, "the third request to wait for a slot")
            await call.write(worker_pb2.KvStreamRequest(cancel_request_id="c"))
            await until(lambda: "c" not in w._reqs, "the cancel to free the waiting request")
            # Another waits; the end of the stream frees it.
            await call.write(kv_block("d", 0, 0, 200, blocks=1))
            await until(lambda: len(w.engine.joining) == 1, "the fourth request to wait for a slot")
            call.cancel()
            await until(lambda: "d" not in w._reqs, "the end of the stream to free the waiting request")
            return results, w

    results, w = run(main())
    assert (results["a"].ack.blocks_received, results["a"].ack.tokens_received) == (2, 900)
    assert (results["b"].ack.blocks_received, results["b"].ack.tokens_received) == (2, 700)
    gap = results["gap"].error
    assert gap.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "block 1: key 'token_start'" in gap.message
    assert w.engine.batch == 2 and not w.engine.joining  # a and b hold their KV for a Decode; c is gone


def test_cancelled_hand_over_frees_the_kv_on_both_workers(cluster):
    """Work cancelled while its KV waits for a decode slot at the decode worker: the
    prefill worker gives the hand-over up on its stream and both free the request."""
    pre_perf, dec_perf = perf_of(cluster, "h100-prefill"), perf_of(cluster, "h100-decode")

    async def main():
        pre = EmulatedWorker(pre_perf, ROLE_PREFILL, time_scale=SCALE, input_slack_s=SLACK)
        dec = EmulatedWorker(dec_perf, ROLE_DECODE, time_scale=SCALE, input_slack_s=SLACK, max_batch=1)
        pre.start()
        dec.start()
        (ps, pa), (ds, da) = await serve_worker(pre), await serve_worker(dec)
        try:
            async with grpc.aio.insecure_channel(pa) as pc:
                call = worker_pb2_grpc.WorkerStub(pc).Session()
                await call.write(worker_pb2.SessionRequest(
                    work=[work("long", 500, 100_000, decode=False, decode_address=da)]))
                await follow(call, {"long"}, last="prefill")  # it holds the decode worker's only slot
                await call.write(worker_pb2.SessionRequest(
                    work=[work("wait", 500, 100_000, decode=False, decode_address=da)]))
                await until(lambda: len(dec.engine.joining) == 1, "the second hand-over to wait for a slot")
                await call.write(worker_pb2.SessionRequest(cancel_request_ids=["wait"]))
                await until(lambda: "wait" not in dec._reqs and "wait" not in pre._reqs, "both to free it")
                call.cancel()
                return pre, dec
        finally:
            await ps.stop(None)
            await ds.stop(None)

    pre, dec = run(main())
    assert not dec.engine.joining and dec.engine.batch == 1  # only the first request remains
    assert pre.engine.kv_reserved == 0


def test_session_prefill_reports_the_cached_prefix(cluster):
    """A prompt whose first blocks an earlier prompt left in this worker's prefix cache
    computes only the rest: fewer prefill tokens, a shorter modelled prefill."""
    perf = perf_of(cluster, "b200")

    async def main():
        w = EmulatedWorker(perf, ROLE_BOTH, time_scale=SCALE, input_slack_s=SLACK, prefix_block_tokens=512)
        w.start()
        async with worker_channel(w) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Session()
            await call.write(worker_pb2.SessionRequest(work=[work("a", 1600, 4, prefix_block_hashes=[1, 2, 3, 4])]))
            first, _ = await follow(call, {"a"})
            await call.write(worker_pb2.SessionRequest(work=[work("b", 1700, 4, prefix_block_hashes=[1, 2, 3, 9])]))
            second, _ = await follow(call, {"b"})
            call.cancel()
            return first["a"], second["b"]

    a, b = run(main())
    pa = next(u.prefill for u in a if u.HasField("prefill"))
    pb = next(u.prefill for u in b if u.HasField("prefill"))
    assert (pa.prefill_tokens, pa.cached_prefix_tokens) == (1600, 0)
    assert (pb.prefill_tokens, pb.cached_prefix_tokens) == (1700 - 1536, 1536)
    new = 1700 - 1536
    assert pb.prefill_s == pytest.approx(perf.prefill(new, new * 1536 + new * (new + 1) / 2, 1)[0], rel=1e-9)
