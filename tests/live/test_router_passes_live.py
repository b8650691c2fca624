"""Routers' passes on the live plane, charged as the simulator charges them (scheduler/live/judges.py).

In process on a virtual clock against real emulated workers: a router's pass delays its request by the
pass's time and adds its energy and dollars, whether a judge pool runs it (queued there) or it is
charged at batch 1; the judged TTFTs are the simulator's. Then end to end: a real local Ray cluster,
the scheduler and worker actors, real gRPC on 127.0.0.1, GetStats carrying the judgements."""
from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.inprocess import run_virtual
from scheduler.live.types import GenerateInput
from scheduler.plugins.overhead import InferenceCost
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload

from test_core import in_process

B200 = {"name": "b200", "device": "b200", "instances": 1, "chips_per_instance": 1, "model": "llama-3.1-8b",
        "role": "both"}
JUDGE = {"name": "judge-8b", "device": "h100-sxm", "instances": 1, "chips_per_instance": 1,
         "model": "llama-3.1-8b", "role": "both", "serving": "judge"}
ONE_PASS = {"name": "local-first", "staging": "none"}


def cluster(pools, params=None) -> dict:
    return {"name": "judged", "slo": {"ttft_s": 5.0, "tpot_s": 0.2}, "pools": pools,
            "policy": dict(ONE_PASS, params=params or {})}


def serve(config: dict, arrivals, prompt=3000, out=20):
    core, _, clock = in_process(config)
    outcomes = run_virtual(core, clock, [(t, GenerateInput(f"r{i}", prompt, out)) for i, t in enumerate(arrivals)])
    return core, sorted(outcomes, key=lambda o: int(o.request_id[1:]))


def test_a_router_no_pool_runs_delays_its_request_by_its_batch_one_time_and_adds_its_energy():
    _, free = serve(cluster([B200], {"router_model": "none"}), [0.0])
    core, paid = serve(cluster([B200]), [0.0])
    router = InferenceCost("router", "llama-3.1-8b", "h100-sxm", "router_model").cost(3000)
    assert paid[0].ttft_s == pytest.approx(free[0].ttft_s + router.seconds, abs=1e-6)
    assert paid[0].energy_j == pytest.approx(free[0].energy_j + router.energy_j, rel=1e-6)
    assert paid[0].cost_usd == pytest.approx(free[0].cost_usd + router.cost_usd, rel=1e-6)
    row = core.stats().judgements["router"]
    assert row["pool"] == "" and row["passes"] == 1 and row["apart_energy_j"] == pytest.approx(router.energy_j)
    stats = core.stats()
    # Beside the pools in the run's totals, as the simulator adds them.
    assert stats.energy_j == pytest.approx(sum(p.energy_j for p in stats.pools) + router.energy_j)
    assert stats.cost_usd == pytest.approx(sum(p.cost_usd for p in stats.pools) + router.cost_usd)


def test_router_passes_queue_on_the_judge_pool_and_every_request_is_counted():
    n = 16
    core, outcomes = serve(cluster([B200, JUDGE]), [0.0] * n)
    stats = core.stats()
    assert stats.requests_completed == stats.requests_total == n and stats.in_flight == 0
    assert all(o.prefill_pool == "b200" for o in outcomes)  # the judge pool takes no request
    row = stats.judgements["router"]
    assert (row["pool"], row["passes"], row["failed"], row["unplaced"]) == ("judge-8b", n, 0, 0)
    assert row["queue_s"] > 0 and row["energy_j"] > 0 and row["apart_energy_j"] == 0.0
    # Sixteen 3,000-token prompts at once: later requests wait for their router's pass.
    ttft = sorted(o.ttft_s for o in outcomes)
    assert ttft[-1] > ttft[0] + row["queue_s"] / n
    assert sum(o.energy_j for o in outcomes) > row["energy_j"]  # each request carries its pass's energy


def test_judged_ttfts_are_the_simulators():
    n = 12
    arrivals = np.arange(n) * 0.05
    config = cluster([B200, JUDGE])
    _, outcomes = serve(config, arrivals.tolist(), prompt=2500, out=30)
    cl = Cluster(parse_cluster(config))
    trace = Trace(path="<test>", format="vidur", arrival_s=arrivals, input_tokens=np.full(n, 2500, dtype=np.int64),
                  output_tokens=np.full(n, 30, dtype=np.int64))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config), make_workload(trace)).run()
    s = summarize(res)
    assert s["judgements"]["router"]["pool"] == "judge-8b" and s["judgements"]["router"]["passes"] == n
    np.testing.assert_allclose([o.ttft_s for o in outcomes], res.records.ttft_s(), rtol=1e-6, atol=1e-6)


# ---- end to end: real Ray, real gRPC on loopback -------------------------------------------------

@pytest.fixture(scope="module")
def served(ray_cluster):
    """A scheduler with a judge pool on the session's Ray cluster (tests/conftest.py)."""
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    config = parse_cluster(cluster([B200, JUDGE]))
    actor, info = start_scheduler(config, options=LiveOptions(time_scale=0.01), port=0, metrics_port=0)
    try:
        yield info["address"]
    finally:
        stop_scheduler(actor)


def test_get_stats_carries_the_routers_passes_over_grpc(served):
    n, prompt = 4, 1500

    async def main():
        async with grpc.aio.insecure_channel(served) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)

            async def one(i):
                records = [m.record async for m in stub.Generate(scheduler_pb2.GenerateRequest(
                    request_id=f"judged-{i}", prompt_length=prompt, max_output_tokens=8), timeout=60)
                           if m.HasField("record")]
                return records[0]
            return await asyncio.gather(*(one(i) for i in range(n)))

    records = asyncio.run(asyncio.wait_for(main(), 120))
    assert all(r.prefill_pool == "b200" and r.energy_j > 0 for r in records)
    with grpc.insecure_channel(served) as channel:
        stats = scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)
    assert stats.requests_completed == n
    row = stats.judgements["router"]
    assert (row.pool, row.model, row.passes, row.failed) == ("judge-8b", "llama-3.1-8b", n, 0)
    assert row.seconds > 0 and row.energy_j > 0 and row.cost_usd > 0 and row.apart_energy_j == 0
    # The judge pool's energy is in the totals through its pool row, not added again.
    assert stats.energy_j == pytest.approx(sum(p.energy_j for p in stats.pools))
    assert "judge-8b" in {p.name for p in stats.pools}
