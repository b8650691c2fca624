"""The scheduler core without Ray. In process, on a virtual clock, with real emulated
workers behind the WorkerClient seam: it handles failures, retries, cancellation and
its bounds deterministically (its agreement with the simulator is
test_decision_contract.py). Over gRPC on loopback, against real worker services: dispatches
share Session messages, quiet workers are polled, a new incarnation takes over."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from infersched.v1 import worker_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster, parse_cluster
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.types import (DuplicateRequest, GenerateInput, InvalidRequest, LiveOptions, Overloaded,
                                  RequestOutcome, TokenEvent)
from scheduler.live.worker_client import GrpcWorkerClient
from scheduler.plugins.tiers import Router, RouterParams
from scheduler.reasons import Reason
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from workers.clock import ScaledClock, VirtualClock
from workers.emulated import EmulatedWorker
from workers.report import WorkerState
from workers.rpc import WORKER_SERVICE, start_grpc_server
from workers.servicer import WorkerServicer

SCALE = 0.002  # 500x faster than the hardware
TIMEOUT_S = 30.0
# Virtual runs: the policy's seed, and an options set with room for any burst.
VIRTUAL = LiveOptions(time_scale=1.0, max_queue=1 << 20, chunk_tokens=64, retry_backoff_s=0.5)


class Sink:
    """A RequestSink that keeps everything it hears, in order."""

    def __init__(self):
        self.tokens_heard: list[TokenEvent] = []
        self.outcome: RequestOutcome | None = None

    def tokens(self, event):
        assert self.outcome is None, "tokens after the outcome"
        self.tokens_heard.append(event)

    def finish(self, outcome):
        assert self.outcome is None, "two outcomes"
        self.outcome = outcome

    @property
    def token_count(self) -> int:
        return sum(e.token_count for e in self.tokens_heard)


def in_process(config_or_name, policy: str | None = None, options: LiveOptions = VIRTUAL):
    config = load_cluster(builtin_cluster_path(config_or_name)) if isinstance(config_or_name, str) \
        else parse_cluster(config_or_name)
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=1.0)
    core = SchedulerCore(cluster, build_policy(policy or config.policy, config), options, clock, client)
    client.register_all(core)
    return core, client, clock


def test_core_refuses_a_multi_pass_policy_and_serves_its_one_pass_routing():
    config = parse_cluster({
        "name": "two-tiers", "policy": {"name": "cascade"},
        "pools": [{"name": "small", "device": "h100-sxm", "instances": 1, "model": "llama-3.1-8b", "role": "both"},
                  {"name": "large", "device": "h100-sxm", "instances": 1, "chips_per_instance": 8,
                   "model": "llama-3.1-70b", "role": "both"}]})
    cluster = Cluster(config)
    clock = VirtualClock()
    with pytest.raises(ValueError, match="policy 'cascade' serves a request in more than one pass"):
        SchedulerCore(cluster, build_policy(config.policy, config), VIRTUAL, clock, InProcessWorkerClient(cluster, clock))
    one_pass = build_policy(replace(config.policy, staging="none"), config)
    assert SchedulerCore(cluster, one_pass, VIRTUAL, clock, InProcessWorkerClient(cluster, clock)).policy.staging is None


def test_a_drained_worker_fails_over_and_the_request_completes_elsewhere():
    """Work refused by a worker that drained behind the core's back (UNAVAILABLE) blames
    that instance, leaves it out of the candidates, and is placed again elsewhere."""
    core, client, clock = in_process(TWO_B200_RR)
    client.workers[0].drain()
    sink = Sink()
    core.submit(GenerateInput("a", 500, 20), sink)
    clock.run()
    assert sink.outcome.status == RequestStatus.COMPLETED and sink.outcome.retries == 1
    assert sink.outcome.prefill_instance == 1 and sink.token_count == 20
    assert core.slots[0].state == WorkerState.FAILED
    assert core.snap.candidates[next(iter(core.snap.candidates))].tolist() == [1]


def test_retries_are_bounded_and_the_reason_is_kept():
    core, client, clock = in_process(TWO_B200_RR, options=replace(VIRTUAL, max_retries=1))
    for w in client.workers:
        w.drain()
    sink = Sink()
    core.submit(GenerateInput("a", 500, 20), sink)
    clock.run()
    o = sink.outcome
    assert o.status == RequestStatus.FAILED and o.retries == 1
    assert "failed: UNAVAILABLE" in o.reason and o.reason.endswith("(after 1 retries)")
    assert o.reason_code == Reason.WORKER_FAILED
    assert core.stats().reasons == {"WORKER_FAILED": 1}


def test_a_cancelled_request_frees_its_worker_and_counts_as_failed():
    core, client, clock = in_process(TWO_B200_RR)
    sink = Sink()
    key = core.submit(GenerateInput("long", 800, 50_000), sink)
    clock.run_until(5.0)
    w = client.workers[0]  # round-robin: the first request goes to the first instance
    assert sink.tokens_heard and w.engine.batch == 1
    core.cancel(key)
    clock.run_until(6.0)
    assert w.in_flight == 0 and w.engine.batch == 0 and w.engine.kv_reserved == 0
    stats = core.stats()
    assert (stats.requests_failed, stats.reasons, stats.in_flight) == (1, {"CANCELLED": 1}, 0)
    assert sink.outcome is None  # the client is gone: nothing is sent to it


def test_the_queue_bound_rejects_and_counts():
    core, _, clock = in_process(TWO_B200_RR, options=replace(VIRTUAL, max_queue=2))
    sinks = [Sink() for _ in range(3)]
    core.submit(GenerateInput("a", 30_000, 5), sinks[0])
    core.submit(GenerateInput("b", 30_000, 5), sinks[1])
    with pytest.raises(Overloaded, match="bound 2"):
        core.submit(GenerateInput("c", 100, 5), sinks[2])
    with pytest.raises(DuplicateRequest):
        core.submit(GenerateInput("a", 100, 5), Sink())
    clock.run()
    stats = core.stats()
    assert (stats.requests_total, stats.requests_completed, stats.requests_rejected) == (3, 2, 1)
    assert stats.reasons == {"QUEUE_FULL": 1} and sinks[2].outcome is None


def test_the_pending_bytes_bound_rejects_counts_and_frees_bytes_when_requests_end():
    core, _, clock = in_process(TWO_B200_RR, options=replace(VIRTUAL, max_pending_bytes=1000))
    core.submit(GenerateInput("a", 100, 5, size_bytes=600), Sink())
    with pytest.raises(Overloaded, match="600 bytes of requests are in flight; 600 more"):
        core.submit(GenerateInput("b", 100, 5, size_bytes=600), Sink())
    core.submit(GenerateInput("c", 100, 5, size_bytes=400), Sink())  # exactly at the bound
    clock.run()
    late = Sink()
    core.submit(GenerateInput("d", 100, 5, size_bytes=1000), late)  # the first two ended: their bytes are free
    clock.run()
    stats = core.stats()
    assert late.outcome.status == RequestStatus.COMPLETED
    assert (stats.requests_total, stats.requests_completed, stats.requests_rejected) == (4, 3, 1)
    assert stats.reasons == {"PENDING_BYTES": 1}


@pytest.mark.parametrize("inp, field", [
    (GenerateInput("x", 0, 5), "prompt_length"),
    (GenerateInput("x", 10, 5, min_capability=1.5), "min_capability"),
    (GenerateInput("x", 10, 5, model_tier="gpt-9"), "model_tier"),
    (GenerateInput("x", 10, 5, ttft_slo_s=-1.0), "ttft_slo_s"),
    (GenerateInput("x", 10, 5, sent_unix_s=float("inf")), "sent_unix_s"),
    (GenerateInput("x", 10, 5, difficulty=1.5), "difficulty"),
    (GenerateInput("x", 5_000_000, 5), "no pool can hold that"),
])
def test_invalid_requests_are_refused_naming_the_field_and_counted(inp, field):
    core, _, _ = in_process(TWO_B200_RR)
    with pytest.raises(InvalidRequest, match=field):
        core.submit(inp, Sink())
    assert core.stats().requests_invalid == 1 and core.stats().requests_total == 0


@pytest.mark.parametrize("difficulty, pool", [(0.3, "laptops"), (0.8, "cloud-70b")])
def test_the_requests_difficulty_reaches_the_policy(difficulty, pool):
    """local-first sends a request to a laptop only when its 8B model (capability 0.694)
    reaches the request's difficulty, as the simulator's does with the trace's."""
    config = load_cluster(builtin_cluster_path("edge-cloud"))
    config = replace(config, policy=replace(config.policy, staging="none", params={"router_accuracy": 1.0}))
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=1.0)
    core = SchedulerCore(cluster, build_policy(config.policy, config), VIRTUAL, clock, client)
    client.register_all(core)
    sink = Sink()
    core.submit(GenerateInput("q", 200, 10, difficulty=difficulty), sink)
    clock.run()
    assert sink.outcome.status == RequestStatus.COMPLETED
    assert cluster.pool_of(sink.outcome.prefill_instance).name == pool


def test_a_late_send_time_is_honoured_within_the_slack():
    """A request stamped with its client's send time arrives then, if no further back
    than the workers' slack; otherwise when it reached the core."""
    core, _, clock = in_process(TWO_B200_RR, options=replace(VIRTUAL, worker_slack_s=0.25))
    clock.run_until(10.0)
    near, far = Sink(), Sink()
    core.submit(GenerateInput("near", 100, 2, sent_unix_s=clock.to_unix(9.9)), near)
    core.submit(GenerateInput("far", 100, 2, sent_unix_s=clock.to_unix(5.0)), far)
    clock.run()
    assert near.outcome.arrival_s == pytest.approx(9.9) and far.outcome.arrival_s == pytest.approx(9.75)


TWO_B200_RR = {"name": "two-b200", "policy": "round-robin",
               "pools": [{"name": "b200", "device": "b200", "instances": 2, "chips_per_instance": 1,
                          "model": "llama-3.1-8b", "role": "both"}]}


# ---- the core over gRPC, against worker services on loopback ---------------------------------


ONE_B200 = {"name": "one-b200", "policy": "least-loaded",
            "pools": [{"name": "b200", "device": "b200", "instances": 1, "chips_per_instance": 1,
                       "model": "llama-3.1-8b", "role": "both"}]}


class CountingServicer(WorkerServicer):
    """Counts the work items of each Session message and the GetWorkerStats calls."""

    def __init__(self, worker):
        super().__init__(worker)
        self.work_per_message: list[int] = []
        self.stats_calls: list[float] = []  # when each poll came

    async def _read_session(self, requests, outbox):
        async def counted():
            async for message in requests:
                if message.work:
                    self.work_per_message.append(len(message.work))
                yield message

        await super()._read_session(counted(), outbox)

    async def GetWorkerStats(self, request, context):
        self.stats_calls.append(time.monotonic())
        return await super().GetWorkerStats(request, context)


async def serve_worker(cluster: Cluster, i: int = 0, prefix_block_tokens: int = 0):
    pool = cluster.pool_of(i)
    worker = EmulatedWorker(pool.perf, int(pool.role), ScaledClock(SCALE), input_slack_s=0.0,
                            prefix_block_tokens=prefix_block_tokens)
    servicer = CountingServicer(worker)

    def add(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [WORKER_SERVICE]

    server, port, _ = await start_grpc_server("127.0.0.1", add)
    return servicer, server, f"127.0.0.1:{port}"


async def grpc_core(spec: dict, options: LiveOptions, prefix_block_tokens: int = 0):
    config = parse_cluster(spec)
    cluster = Cluster(config)
    clock = ScaledClock(options.time_scale)
    client = GrpcWorkerClient(clock, options)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options, clock, client)
    served = []
    for i in range(cluster.n_instances):
        servicer, server, address = await serve_worker(cluster, i, prefix_block_tokens)
        core.register(i, f"worker-{i}", address)
        served.append((servicer, server))
    return core, client, served


async def stop(client, served) -> None:
    await client.close()
    for _, server in served:
        await server.stop(None)


async def complete(core: SchedulerCore, name: str, prompt: int, out: int, delay_s: float = 0.0,
                   hashes: tuple = ()) -> RequestOutcome:
    await asyncio.sleep(delay_s)
    done = asyncio.get_running_loop().create_future()

    class Waiting(Sink):
        def finish(self, outcome):
            super().finish(outcome)
            done.set_result(self)

    core.submit(GenerateInput(name, prompt, out, prefix_block_hashes=hashes), Waiting())
    sink = await done
    assert sink.token_count == (out if sink.outcome.status == RequestStatus.COMPLETED else sink.token_count)
    return sink.outcome


@pytest.mark.parametrize("interval_s, per_message", [(0.0, [1, 1, 1]), (0.3, [1, 2])])
def test_dispatches_within_the_interval_share_a_message(interval_s, per_message):
    """Placements 20 ms apart: each in its own message, or, when messages to a worker
    are at least 0.3 s apart, the first at once and the other two together."""
    async def main():
        core, client, served = await grpc_core(ONE_B200, LiveOptions(time_scale=SCALE, dispatch_interval_s=interval_s))
        try:
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(complete(core, f"r{i}", 200, 20, 0.02 * i) for i in range(3)))
            return outcomes, served[0][0].work_per_message, time.monotonic() - t0
        finally:
            await stop(client, served)

    outcomes, sent, wall_s = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert [o.status for o in outcomes] == [RequestStatus.COMPLETED] * 3
    assert sent == per_message
    assert wall_s >= interval_s


def test_polls_only_workers_whose_reports_went_quiet():
    """Stats polls every 50 ms cover quiet stretches; while a long decode streams, the
    session's messages carry the worker's load and the polls (nearly) stop. Rates, not
    counts in a fixed window, so a loaded machine that stretches both phases still passes."""
    async def main():
        core, client, served = await grpc_core(ONE_B200, LiveOptions(time_scale=SCALE, stats_interval_s=0.05))
        servicer = served[0][0]
        try:
            t_quiet = time.monotonic()
            while len(servicer.stats_calls) < 6 and time.monotonic() - t_quiet < 10.0:
                await asyncio.sleep(0.05)
            quiet, quiet_s = len(servicer.stats_calls), time.monotonic() - t_quiet
            t0 = time.monotonic()
            outcome = await complete(core, "long", 500, 60_000)  # ~0.5 s of wall time decoding
            busy_s = time.monotonic() - t0
            busy = sum(1 for t in servicer.stats_calls if t >= t0)
            return quiet, quiet_s, busy, busy_s, outcome
        finally:
            await stop(client, served)

    quiet, quiet_s, busy, busy_s, outcome = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert outcome.status == RequestStatus.COMPLETED
    assert quiet >= 6  # polls keep coming with nothing else to report
    assert busy_s > 0.3
    assert busy / busy_s <= max(2 / busy_s, 0.25 * quiet / quiet_s)


def test_a_new_incarnation_takes_over_without_blame():
    """The instance's worker registers anew (a restart at a new address) while a request
    decodes on the old one: the request is placed again, on the new worker, and
    completes; the instance is not marked failed for the old session's end."""
    async def main():
        core, client, served = await grpc_core(ONE_B200, LiveOptions(time_scale=SCALE, retry_backoff_s=0.01))
        failed = []
        core.on_worker_failed = failed.append
        new_servicer, new_server, new_address = await serve_worker(core.cluster)
        served.append((new_servicer, new_server))
        try:
            request = asyncio.ensure_future(complete(core, "moved", 500, 60_000))
            await asyncio.sleep(0.2)  # decoding on the first worker
            core.register(0, "worker-0-restarted", new_address)
            outcome = await request
            return outcome, failed, new_servicer.work_per_message
        finally:
            await stop(client, served)

    outcome, failed, new_work = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert outcome.status == RequestStatus.COMPLETED and outcome.retries == 1
    assert failed == [] and new_work == [1]


TWO_B200 = {"name": "two-b200", "policy": "prefix-aware", "prefix_cache": {"block_tokens": 512},
            "pools": [{"name": "b200", "device": "b200", "instances": 2, "chips_per_instance": 1,
                       "model": "llama-3.1-8b", "role": "both"}]}


def test_prefix_aware_follows_the_conversation_and_the_worker_skips_the_cached_prefix():
    """Live: the next turn of a conversation goes where its prefix went, and that
    worker's engine computes only the tokens past the cached blocks."""
    async def main():
        core, client, served = await grpc_core(TWO_B200, LiveOptions(time_scale=SCALE), prefix_block_tokens=512)
        try:
            outcomes = []
            for name, prompt, hashes in (("turn-1", 1600, (1, 2, 3, 4)), ("other", 900, (70, 71)),
                                         ("turn-2", 1700, (1, 2, 3, 9))):
                outcomes.append(await complete(core, name, prompt, 8, hashes=hashes))
            return outcomes, [s.worker for s, _ in served], core
        finally:
            await stop(client, served)

    (first, other, second), workers, core = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert all(o.status == RequestStatus.COMPLETED for o in (first, other, second))
    assert second.prefill_instance == first.prefill_instance
    assert other.prefill_instance != first.prefill_instance  # least-loaded part spreads a new prefix
    worker = workers[first.prefill_instance]
    assert worker.engine.prefix_hit_tokens == 3 * 512
    assert worker.engine.prefill_tokens == 1600 + (1700 - 3 * 512)
    assert core.snap.prefix_index.cached_blocks((1, 2, 3, 9)) == {first.prefill_instance: 4}


def test_outcome_spans_add_up_over_grpc():
    """A request's record: arrival <= prefill start <= prefill end = first token <= finish,
    TTFT and TPOT from those times, all on the core's clock."""
    async def main():
        core, client, served = await grpc_core(ONE_B200, LiveOptions(time_scale=SCALE))
        try:
            return await complete(core, "a", 1000, 100)
        finally:
            await stop(client, served)

    o = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert o.arrival_s <= o.prefill_start_s <= o.prefill_end_s == o.first_token_s <= o.finish_s
    assert o.ttft_s == pytest.approx(o.first_token_s - o.arrival_s)
    assert o.tpot_s == pytest.approx((o.finish_s - o.first_token_s) / 99)
    assert np.isfinite(o.energy_j) and o.energy_j > 0 and o.output_tokens == 100


def test_a_replayed_rows_number_decides_the_routers_misjudgement():
    """With router_accuracy < 1 the router misjudges a seeded share of requests by their
    number. A request naming its trace row is judged as the simulator judges that row,
    whatever order it reached the core in; without one, by its arrival count."""
    config = load_cluster(builtin_cluster_path("edge-cloud"))
    config = replace(config, policy=replace(config.policy, staging="none", params={"router_accuracy": 0.5}))
    router = Router(RouterParams(router_accuracy=0.5))
    rows = [r for r in range(100, 140) if router.misjudges(r) != router.misjudges(139 - r)][:6]
    assert len(rows) == 6
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=1.0)
    core = SchedulerCore(cluster, build_policy(config.policy, config), VIRTUAL, clock, client)
    client.register_all(core)
    for row in reversed(rows):  # arrival counts differ from the rows
        sink = Sink()
        core.submit(GenerateInput(f"row-{row}", 200, 10, difficulty=0.3, trace_row=row), sink)
        clock.run()
        # An 8B laptop model (capability 0.694) can answer difficulty 0.3: the router sends it
        # there unless it misjudges the row.
        expected = "cloud-70b" if router.misjudges(row) else "laptops"
        assert cluster.pool_of(sink.outcome.prefill_instance).name == expected, row
    with pytest.raises(InvalidRequest, match="trace_row"):
        core.submit(GenerateInput("bad", 200, 10, trace_row=-1), Sink())
