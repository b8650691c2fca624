"""The scheduler core without Ray: latency windows, and the core driving real worker
services on loopback over their Session streams (dispatches sent together, polls
only for workers whose reports went quiet)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from infersched.v1 import worker_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.control import GenerateInput, LiveOptions, RequestOutcome, SchedulerCore, TokenEvent, _Window
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from workers.live import WORKER_SERVICE, EmulatedWorker, WorkerServicer, start_grpc_server

SCALE = 0.002  # 500x faster than the hardware
TIMEOUT_S = 30.0


@pytest.mark.parametrize("n", [1, 2, 7, 100, 999, 1000, 2500])
def test_window_percentiles_match_numpy(n):
    """The last 1,000 samples (fewer before the window fills), interpolated as numpy does."""
    samples = np.random.default_rng(n).lognormal(size=n)
    window = _Window(1000)
    for value in samples:
        window.add(value)
    got = window.summary()
    kept = samples[-1000:]
    assert got.samples == n
    assert [got.p50_s, got.p90_s, got.p99_s] == pytest.approx(list(np.percentile(kept, (50, 90, 99))), rel=1e-12)
    assert got.mean_s == pytest.approx(kept.mean(), rel=1e-12)


def test_window_summary_is_current_and_empty_window_is_zero():
    window = _Window(3)
    assert window.summary().samples == 0
    for value in (5.0, 1.0, 3.0):
        window.add(value)
    assert (window.summary().p50_s, window.summary().mean_s) == (3.0, 3.0)
    window.add(7.0)  # 5.0 leaves the window at once
    got = window.summary()
    assert (got.samples, got.p50_s, got.mean_s) == (4, 3.0, pytest.approx(11 / 3))
    with pytest.raises(ValueError, match="NaN"):
        window.add(float("nan"))


def test_core_refuses_a_multi_pass_policy_and_serves_its_one_pass_routing():
    config = parse_cluster({
        "name": "two-tiers", "policy": {"name": "cascade"},
        "pools": [{"name": "small", "device": "h100-sxm", "instances": 1, "model": "llama-3.1-8b", "role": "both"},
                  {"name": "large", "device": "h100-sxm", "instances": 1, "chips_per_instance": 8,
                   "model": "llama-3.1-70b", "role": "both"}]})
    cluster = Cluster(config)
    with pytest.raises(ValueError, match="policy 'cascade' serves a request in more than one pass"):
        SchedulerCore(cluster, build_policy(config.policy, config))
    one_pass = build_policy(replace(config.policy, staging="none"), config)
    assert SchedulerCore(cluster, one_pass).policy.staging is None


# ---- the core on loopback workers ---------------------------------------------------------


ONE_B200 = {"name": "one-b200", "policy": "least-loaded",
            "pools": [{"name": "b200", "device": "b200", "instances": 1, "chips_per_instance": 1,
                       "model": "llama-3.1-8b", "role": "both"}]}


class CountingServicer(WorkerServicer):
    """Counts the work items of each Session message and the GetWorkerStats calls."""

    def __init__(self, worker):
        super().__init__(worker)
        self.work_per_message: list[int] = []
        self.stats_calls: list[float] = []  # when each poll came

    async def _read_session(self, requests, outbox, tasks):
        async def counted():
            async for message in requests:
                if message.work:
                    self.work_per_message.append(len(message.work))
                yield message

        await super()._read_session(counted(), outbox, tasks)

    async def GetWorkerStats(self, request, context):
        self.stats_calls.append(time.monotonic())
        return await super().GetWorkerStats(request, context)


async def serve_worker(cluster: Cluster, time_scale: float) -> tuple[CountingServicer, object, str]:
    pool = cluster.pools[0]
    worker = EmulatedWorker(pool.perf, int(pool.role), time_scale=time_scale, input_slack_s=0.0)
    worker.start()
    servicer = CountingServicer(worker)

    def add(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [WORKER_SERVICE]

    server, port, _ = await start_grpc_server("127.0.0.1", add)
    return servicer, server, f"127.0.0.1:{port}"


async def start_core(options: LiveOptions) -> tuple[SchedulerCore, CountingServicer, object]:
    config = parse_cluster(ONE_B200)
    cluster = Cluster(config)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options)
    servicer, server, address = await serve_worker(cluster, options.time_scale)
    core.register(0, "b200-0", address)
    core.start()
    return core, servicer, server


async def complete(core: SchedulerCore, name: str, prompt: int, out: int, delay_s: float = 0.0) -> RequestOutcome:
    await asyncio.sleep(delay_s)
    tokens = 0
    async for item in core.generate(GenerateInput(name, prompt, out)):
        if isinstance(item, TokenEvent):
            tokens += item.token_count
        else:
            assert tokens == out
            return item
    raise AssertionError(f"{name} ended without a record")


@pytest.mark.parametrize("interval_s, per_message", [(0.0, [1, 1, 1]), (0.3, [1, 2])])
def test_dispatches_within_the_interval_share_a_message(interval_s, per_message):
    """Placements 20 ms apart: each in its own message, or, when messages to a worker
    are at least 0.3 s apart, the first at once and the other two together."""
    async def main():
        core, servicer, server = await start_core(LiveOptions(time_scale=SCALE, dispatch_interval_s=interval_s))
        try:
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(complete(core, f"r{i}", 200, 20, 0.02 * i) for i in range(3)))
            return outcomes, servicer.work_per_message, time.monotonic() - t0
        finally:
            await core.close()
            await server.stop(None)

    outcomes, sent, wall_s = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert [o.status for o in outcomes] == [RequestStatus.COMPLETED] * 3
    assert sent == per_message
    assert wall_s >= interval_s


def test_polls_only_workers_whose_reports_went_quiet():
    """Stats polls every 50 ms cover quiet stretches; while a long decode streams, the
    session's messages carry the worker's load and the polls stop."""
    async def main():
        core, servicer, server = await start_core(LiveOptions(time_scale=SCALE, stats_interval_s=0.05))
        try:
            await asyncio.sleep(0.3)
            quiet = len(servicer.stats_calls)
            t0 = time.monotonic()
            outcome = await complete(core, "long", 500, 60_000)  # ~0.5 s of wall time decoding
            busy_s = time.monotonic() - t0
            busy = sum(1 for t in servicer.stats_calls if t >= t0)
            return quiet, busy, busy_s, outcome
        finally:
            await core.close()
            await server.stop(None)

    quiet, busy, busy_s, outcome = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert outcome.status == RequestStatus.COMPLETED
    assert quiet >= 4  # ~6 polls in 0.3 s with nothing else to report
    assert busy_s > 0.3 and busy <= 2


def test_a_new_incarnation_takes_over_without_blame():
    """The instance's worker registers anew (a restart at a new address) while a request
    decodes on the old one: the request is placed again, on the new worker, and
    completes; the instance is not marked failed for the old session's end."""
    async def main():
        core, _, old_server = await start_core(LiveOptions(time_scale=SCALE, retry_backoff_s=0.01))
        failed = []
        core.on_worker_failed = failed.append
        new_servicer, new_server, new_address = await serve_worker(core.cluster, SCALE)
        try:
            request = asyncio.ensure_future(complete(core, "moved", 500, 60_000))
            await asyncio.sleep(0.2)  # decoding on the first worker
            core.register(0, "b200-0-restarted", new_address)
            outcome = await request
            return outcome, failed, new_servicer.work_per_message
        finally:
            await core.close()
            await old_server.stop(None)
            await new_server.stop(None)

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
        config = parse_cluster(TWO_B200)
        cluster = Cluster(config)
        core = SchedulerCore(cluster, build_policy(config.policy, config), LiveOptions(time_scale=SCALE))
        workers, servers = [], []
        for i in range(2):
            w = EmulatedWorker(cluster.pools[0].perf, int(cluster.pools[0].role), time_scale=SCALE,
                               input_slack_s=0.0, prefix_block_tokens=512)
            w.start()
            servicer = WorkerServicer(w)

            def add(server, servicer=servicer):
                worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
                return [WORKER_SERVICE]

            server, port, _ = await start_grpc_server("127.0.0.1", add)
            core.register(i, f"b200-{i}", f"127.0.0.1:{port}")
            workers.append(w)
            servers.append(server)
        core.start()
        try:
            outcomes = []
            for name, prompt, hashes in (("turn-1", 1600, (1, 2, 3, 4)), ("other", 900, (70, 71)),
                                         ("turn-2", 1700, (1, 2, 3, 9))):
                async for item in core.generate(GenerateInput(name, prompt, 8, prefix_block_hashes=hashes)):
                    if isinstance(item, RequestOutcome):
                        outcomes.append(item)
            return outcomes, workers, core
        finally:
            await core.close()
            for server in servers:
                await server.stop(None)

    (first, other, second), workers, core = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert all(o.status == RequestStatus.COMPLETED for o in (first, other, second))
    assert second.prefill_instance == first.prefill_instance
    assert other.prefill_instance != first.prefill_instance  # least-loaded part spreads a new prefix
    worker = workers[first.prefill_instance]
    assert worker.engine.prefix_hit_tokens == 3 * 512
    assert worker.engine.prefill_tokens == 1600 + (1700 - 3 * 512)
    assert core.snap.prefix_index.cached_blocks((1, 2, 3, 9)) == {first.prefill_instance: 4}
