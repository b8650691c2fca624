"""The live control plane end to end: a real local Ray cluster (the session's), the
scheduler actor and one worker actor per instance of deploy/clusters/live-small.yaml,
real gRPC on loopback. The policy is round-robin so placements alternate between
the disaggregated path (H100 prefill -> H100 decode) and the colocated B200."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scripts import gen_proto

TIME_SCALE = 0.01
MAX_QUEUE = 8
RPC_TIMEOUT_S = 60.0
COMPLETED = common_pb2.REQUEST_STATUS_COMPLETED
FAILED = common_pb2.REQUEST_STATUS_FAILED


@pytest.fixture(scope="module")
def served(ray_cluster, live_small):
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    config, cluster = live_small
    options = LiveOptions(time_scale=TIME_SCALE, max_queue=MAX_QUEUE, max_retries=3, retry_backoff_s=0.4)
    actor, info = start_scheduler(config, policy="round-robin", options=options, port=0, metrics_port=0)
    try:
        yield actor, info, cluster
    finally:
        stop_scheduler(actor)


@pytest.fixture
def address(served):
    return served[1]["address"]


def stats(address: str) -> scheduler_pb2.SchedulerStats:
    with grpc.insecure_channel(address) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=5)


def workers(address: str, pool: str = "") -> list:
    with grpc.insecure_channel(address) as channel:
        return list(scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(
            scheduler_pb2.ListWorkersRequest(pool=pool), timeout=5).workers)


def check_counts(s: scheduler_pb2.SchedulerStats) -> None:
    assert s.requests_total == s.requests_completed + s.requests_rejected + s.requests_failed + s.in_flight


async def collect(stub, **fields):
    """(token chunks, final record or None, AioRpcError or None) of one Generate call."""
    chunks, record = [], None
    try:
        async for item in stub.Generate(scheduler_pb2.GenerateRequest(**fields), timeout=RPC_TIMEOUT_S):
            assert record is None, "the record is in the last message"
            if item.HasField("tokens"):
                chunks.append(item.tokens)
            if item.HasField("record"):
                record = item.record
    except grpc.aio.AioRpcError as exc:
        return chunks, record, exc
    return chunks, record, None


def run_clients(address, *requests):
    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            return await asyncio.gather(*(collect(stub, **r) for r in requests))

    return asyncio.run(asyncio.wait_for(main(), RPC_TIMEOUT_S))


def assert_stream_complete(chunks, n_tokens: int) -> None:
    """Every output token index 0..n-1 arrives exactly once, in order."""
    position = 0
    for chunk in chunks:
        assert chunk.first_token_index == position and chunk.token_count > 0
        position += chunk.token_count
    assert position == n_tokens


def test_workers_registered(address, live_small):
    listed = workers(address)
    assert [(w.instance, w.pool, w.state) for w in listed] == [
        (0, "h100-prefill", common_pb2.WORKER_STATE_READY), (1, "h100-decode", common_pb2.WORKER_STATE_READY),
        (2, "b200", common_pb2.WORKER_STATE_READY)]
    assert len({w.address for w in listed}) == 3 and all(w.address.startswith("127.0.0.1:") for w in listed)
    assert [w.pool for w in workers(address, "b200")] == ["b200"]
    with pytest.raises(grpc.RpcError) as err:
        workers(address, "tpu-pod")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown pool" in err.value.details()


def test_generate_disaggregated_and_colocated(served, address):
    """Both paths stream every token and return a record whose spans are the
    performance model's numbers: these requests run alone on idle instances."""
    cluster = served[2]
    prompt, out = 800, 60
    seen = {}
    for i in range(4):
        (chunks, record, error), = run_clients(address, {"request_id": f"path-{i}", "prompt_length": prompt,
                                                         "max_output_tokens": out})
        assert error is None and record.status == COMPLETED, (error, record)
        assert_stream_complete(chunks, out)
        seen[record.prefill_instance == record.decode_instance] = record
        if len(seen) == 2:
            break
    assert set(seen) == {True, False}, "round-robin placed both requests on the same path"
    co, dis = seen[True], seen[False]
    assert (co.prefill_pool, co.decode_pool) == ("b200", "b200")
    assert (dis.prefill_pool, dis.decode_pool, dis.prefill_instance, dis.decode_instance) == (
        "h100-prefill", "h100-decode", 0, 1)
    pairs = prompt * (prompt + 1) / 2
    for record in (co, dis):
        pool = cluster.pool_of(record.prefill_instance)
        assert record.arrival_s <= record.prefill_start_s <= record.prefill_end_s == record.first_token_s
        assert record.prefill_end_s - record.prefill_start_s == pytest.approx(
            pool.perf.prefill(prompt, pairs, 1)[0], rel=1e-6)
        assert record.ttft_s == pytest.approx(record.first_token_s - record.arrival_s)
        assert record.tpot_s == pytest.approx((record.finish_s - record.first_token_s) / (out - 1))
        assert (record.input_tokens, record.output_tokens, record.model) == (prompt, out, "llama-3.1-8b")
        assert record.energy_j > 0 and record.cost_usd > 0 and record.retries == 0
    assert not co.HasField("kv_transfer_end_s")
    # Colocated: decode alone in the batch from a (prompt + 1)-token context.
    b200 = cluster.pool_of(2).perf
    assert co.finish_s - co.first_token_s == pytest.approx(b200.decode(1, prompt + 1.0, out - 1)[0], rel=1e-6)
    # Disaggregated: the KV hand-over takes the modelled transfer over the 400 Gb/s links.
    h100 = cluster.pool_of(0).perf
    assert dis.kv_transfer_end_s - dis.prefill_end_s == pytest.approx(
        h100.kv_transfer_s(prompt, 400e9 / 8), rel=1e-6)
    assert dis.finish_s - dis.kv_transfer_end_s == pytest.approx(
        cluster.pool_of(1).perf.decode(1, prompt + 1.0, out - 1)[0], rel=1e-6)
    check_counts(stats(address))


def test_one_token_request_completes_without_decode(address):
    for i in range(2):  # one per path
        (chunks, record, error), = run_clients(address, {"prompt_length": 300, "max_output_tokens": 1})
        assert error is None and record.status == COMPLETED
        assert_stream_complete(chunks, 1)
        assert record.finish_s == record.first_token_s and not record.HasField("tpot_s")
    # Its only token comes with the end of the request: one message carries both.
    with grpc.insecure_channel(address) as channel:
        items = list(scheduler_pb2_grpc.SchedulerStub(channel).Generate(
            scheduler_pb2.GenerateRequest(prompt_length=300, max_output_tokens=1), timeout=RPC_TIMEOUT_S))
    assert len(items) == 1 and items[0].tokens.token_count == 1 and items[0].record.status == COMPLETED


BAD_REQUESTS = [
    ({"prompt_length": -5, "max_output_tokens": 10}, "prompt_length"),
    ({"prompt_length": 0, "max_output_tokens": 10}, "prompt_length"),
    ({"prompt_length": 100, "max_output_tokens": 0}, "max_output_tokens"),
    ({"prompt_length": 100, "max_output_tokens": -1}, "max_output_tokens"),
    ({"prompt_length": 100, "max_output_tokens": 10, "model_tier": "llama-9000"}, "unknown tier 'llama-9000'"),
    ({"prompt_length": 2_000_000, "max_output_tokens": 10}, "past the context (131,072 tokens"),
    ({"prompt_tokens": [1, 128_256], "max_output_tokens": 10}, "outside the vocabulary [0, 128,256)"),
    ({"request_id": "r" * 4096, "prompt_length": 100, "max_output_tokens": 10}, "4,096 bytes, limit 128"),
    ({"prompt_tokens": [1, 2, 3], "prompt_length": 5, "max_output_tokens": 10}, "disagrees"),
    ({"prompt_length": 100, "max_output_tokens": 10, "min_capability": 1.5}, "min_capability"),
    ({"prompt_length": 100, "max_output_tokens": 10, "ttft_slo_s": -1.0}, "ttft_slo_s"),
]


def test_bad_input_is_answered_and_counted(address):
    before = stats(address)
    results = run_clients(address, *(fields for fields, _ in BAD_REQUESTS))
    for (fields, reason), (chunks, record, error) in zip(BAD_REQUESTS, results):
        # Past what the models take (context, vocabulary): OUT_OF_RANGE; malformed: INVALID_ARGUMENT.
        expected = grpc.StatusCode.OUT_OF_RANGE if "past" in reason or "outside" in reason \
            else grpc.StatusCode.INVALID_ARGUMENT
        assert error is not None and error.code() == expected, fields
        assert reason in error.details(), (fields, error.details())
        assert not chunks and record is None
    after = stats(address)
    assert after.requests_invalid - before.requests_invalid == len(BAD_REQUESTS)
    assert after.requests_total == before.requests_total  # invalid requests are not accepted
    # The server stays up and serves the next request, also one naming a served tier.
    (chunks, record, error), = run_clients(address, {"prompt_length": 100, "max_output_tokens": 5,
                                                     "model_tier": "llama-3.1-8b"})
    assert error is None and record.status == COMPLETED


def test_duplicate_request_id_in_flight(address):
    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            first = stub.Generate(scheduler_pb2.GenerateRequest(request_id="dup", prompt_length=100,
                                                                max_output_tokens=100_000))
            await first.read()  # in flight now
            _, _, error = await collect(stub, request_id="dup", prompt_length=100, max_output_tokens=5)
            first.cancel()
            return error

    error = asyncio.run(asyncio.wait_for(main(), RPC_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "'dup'" in error.details()


def test_saturation_rejects_beyond_the_queue_bound(address):
    """40 long prompts at once: at most MAX_QUEUE wait for prefill, the rest get
    RESOURCE_EXHAUSTED; every one is counted and the accepted ones complete."""
    before = stats(address)
    n = 40
    results = run_clients(address, *({"prompt_length": 30_000, "max_output_tokens": 2} for _ in range(n)))
    exhausted = [e for _, _, e in results if e is not None]
    completed = [r for _, r, e in results if e is None and r.status == COMPLETED]
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "bound 8" in e.details() for e in exhausted)
    # The bound holds requests that have no first token yet; as prefills finish while the
    # burst arrives, more than MAX_QUEUE get in, but not all 40.
    assert exhausted and len(completed) >= MAX_QUEUE
    assert len(exhausted) + len(completed) == n
    after = stats(address)
    check_counts(after)
    assert after.requests_total - before.requests_total == n
    assert after.requests_rejected - before.requests_rejected == len(exhausted)
    assert after.reasons["QUEUE_FULL"] - before.reasons.get("QUEUE_FULL", 0) == len(exhausted)
    assert after.in_flight == 0


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_client_cancel_frees_slot_and_kv(address):
    before = stats(address)

    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            call = scheduler_pb2_grpc.SchedulerStub(channel).Generate(
                scheduler_pb2.GenerateRequest(request_id="cancel-me", prompt_length=2000,
                                              max_output_tokens=120_000))
            await call.read()  # first token
            await call.read()  # a decode chunk: the request holds a batch slot and KV
            busy = [w for w in workers(address) if w.running]
            call.cancel()
            return busy

    busy = asyncio.run(asyncio.wait_for(main(), RPC_TIMEOUT_S))
    assert len(busy) == 1 and busy[0].kv_free_tokens < busy[0].kv_capacity_tokens

    def freed():
        listed = workers(address)
        return all(w.running == 0 and w.kv_free_tokens == w.kv_capacity_tokens for w in listed) and listed

    wait_for(freed, 10.0, "the cancelled request's slot and KV to be freed")
    after = wait_for(lambda: (s := stats(address)).in_flight == 0 and s, 10.0, "the request to be counted")
    check_counts(after)
    assert after.requests_failed - before.requests_failed == 1
    assert after.reasons["CANCELLED"] - before.reasons.get("CANCELLED", 0) == 1


def test_health_and_reflection(address):
    worker_address = workers(address, "h100-decode")[0].address
    with grpc.insecure_channel(address) as channel, grpc.insecure_channel(worker_address) as wchannel:
        for ch, service in ((channel, ""), (channel, "infersched.v1.Scheduler"), (wchannel, ""),
                            (wchannel, "infersched.v1.Worker")):
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"infersched.v1.Scheduler", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        assert "infersched.v1.Worker" in set(ProtoReflectionDescriptorDatabase(wchannel).get_services())


PROTO_CLIENT = """
import json, sys
import grpc
from google.protobuf import json_format
from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    items = list(stub.Generate(scheduler_pb2.GenerateRequest(prompt_length=50, max_output_tokens=20), timeout=30))
    stats = stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=5)
print(json.dumps({
    "module": scheduler_pb2.__file__,
    "tokens": sum(i.tokens.token_count for i in items if i.HasField("tokens")),
    "record": json_format.MessageToDict(items[-1].record, preserving_proto_field_name=True),
    "stats": json_format.MessageToDict(stats, preserving_proto_field_name=True),
}))
"""


def test_client_compiled_from_proto_only(address, tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools compiles proto/ for this test")
    gen = tmp_path / "gen"
    gen_proto.run_protoc(gen)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(gen)
    done = subprocess.run([sys.executable, "-P", "-c", PROTO_CLIENT, address], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["module"].startswith(str(gen))
    assert reply["tokens"] == 20 and reply["record"]["status"] == "REQUEST_STATUS_COMPLETED"
    s = reply["stats"]
    assert s["cluster"] == "live-small" and s["policy"] == "round-robin"
    total = int(s["requests_total"])
    assert total >= 1 and total == sum(int(s.get(k, 0)) for k in (
        "requests_completed", "requests_rejected", "requests_failed", "in_flight"))
    assert [(p["name"], p["role"]) for p in s["pools"]] == [
        ("h100-prefill", "ROLE_PREFILL"), ("h100-decode", "ROLE_DECODE"), ("b200", "ROLE_BOTH")]
    assert float(s["energy_j"]) > 0 and float(s["uptime_s"]) > 0 and int(s["ttft_s"]["samples"]) >= 1


def test_watch_stats(address):
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        stream = stub.WatchStats(scheduler_pb2.WatchStatsRequest(interval_s=0.05), timeout=10)
        first, second = next(stream), next(stream)
        stream.cancel()
        assert second.uptime_s > first.uptime_s
        with pytest.raises(grpc.RpcError) as err:
            next(stub.WatchStats(scheduler_pb2.WatchStatsRequest(interval_s=0), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_prometheus_metrics(served, address):
    info = served[1]
    s = stats(address)
    text = urllib.request.urlopen(info["metrics"], timeout=5).read().decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['infersched_requests_total{status="completed"}']) == s.requests_completed
    assert float(lines["infersched_requests_invalid_total"]) == s.requests_invalid
    assert float(lines['infersched_workers{state="ready"}']) == 3
    assert 'infersched_pool_queue_depth{pool="b200"}' in lines
    assert float(lines["infersched_ttft_seconds_count"]) == s.requests_completed
    assert any(k.startswith("infersched_scheduling_overhead_seconds_bucket") for k in lines)


def test_worker_killed_mid_flight(served, address):
    """Kill the B200 actor while requests stream from it: each is re-placed and
    completes (or fails after bounded retries), none is lost from the counts, tokens
    are not repeated, and Ray restarts the actor, which registers again."""
    ray = pytest.importorskip("ray")
    actor = served[0]
    before = stats(address)
    old = {w.instance: w for w in workers(address)}
    n, out = 6, 6000

    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            tasks = [asyncio.ensure_future(collect(stub, request_id=f"kill-{i}", prompt_length=1000,
                                                   max_output_tokens=out)) for i in range(n)]
            await asyncio.sleep(0.15)  # all placed, decoding
            ray.kill(ray.get(actor.worker_handles.remote())[2], no_restart=False)
            return await asyncio.gather(*tasks)

    results = asyncio.run(asyncio.wait_for(main(), RPC_TIMEOUT_S))
    records = [r for _, r, _ in results]
    assert all(e is None and r is not None for _, r, e in results), "every request ends with a record"
    for chunks, record, _ in results:
        assert record.status in (COMPLETED, FAILED)
        if record.status == COMPLETED:
            assert_stream_complete(chunks, out)
        else:
            assert "after 3 retries" in record.reason
    moved = [r for r in records if r.retries]
    assert moved, "no request was on the killed worker"
    assert all(r.status == COMPLETED and r.prefill_instance == 0 for r in moved)
    after = stats(address)
    check_counts(after)
    assert after.in_flight == 0 and after.requests_total - before.requests_total == n
    assert (after.requests_completed + after.requests_failed) - (
        before.requests_completed + before.requests_failed) == n
    # Ray restarted the actor; it registered a new incarnation and takes work again.
    back = wait_for(lambda: [w for w in workers(address, "b200")
                             if w.state == common_pb2.WORKER_STATE_READY and w.worker_id != old[2].worker_id],
                    60.0, "the B200 worker to come back")
    assert back[0].address != old[2].address
    placed = set()
    for i in range(4):
        (_, record, error), = run_clients(address, {"prompt_length": 200, "max_output_tokens": 20})
        assert error is None and record.status == COMPLETED
        placed.add(record.prefill_instance)
    assert 2 in placed
    check_counts(stats(address))
