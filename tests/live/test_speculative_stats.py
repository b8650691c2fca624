"""A pool's `speculative:` key on the wire: GetStats carries it, `stats --json` prints it, and a
replay without --cluster (which rebuilds the cluster from GetStats) reports it in its summary
as `simulate --json` does. A real gRPC server on loopback over a SchedulerCore with the live
plane's in-process emulated workers."""
from __future__ import annotations

import asyncio

from infersched.client.replay import live_summary, replay, served_cluster
from infersched.client.stats import stats_dict
from infersched.v1 import scheduler_pb2
from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.bounds import add_scheduler_service
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.servicer import SchedulerServicer, stats_proto
from scheduler.live.types import LiveOptions
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload
from workers.clock import ScaledClock, VirtualClock
from workers.rpc import start_grpc_server

SPECULATIVE = {"draft_model": "llama-3.2-1b", "draft_tokens": 4, "acceptance": 0.8}
CONFIG = parse_cluster({"name": "spec", "policy": "least-loaded", "pools": [
    {"name": "wafer", "device": "wse-3", "instances": 1, "model": "llama-3.1-70b", "role": "both",
     "speculative": SPECULATIVE},
    {"name": "gpu", "device": "h100-sxm", "instances": 1, "model": "llama-3.1-8b", "role": "both"}]})
N = 12


def _core(clock, time_scale: float = 1.0):
    cluster = Cluster(CONFIG)
    client = InProcessWorkerClient(cluster, clock)
    core = SchedulerCore(cluster, build_policy(CONFIG.policy, CONFIG), LiveOptions(time_scale=time_scale), clock,
                         client)
    client.register_all(core)
    return core, client


def test_get_stats_carries_the_speculative_key_and_plain_pools_leave_it_unset():
    core, _ = _core(VirtualClock())
    wire = scheduler_pb2.SchedulerStats.FromString(stats_proto(core.stats()).SerializeToString())
    wafer, gpu = wire.pools
    assert wafer.HasField("speculative") and not gpu.HasField("speculative")
    pools = stats_dict(wire)["pools"]
    assert pools["wafer"]["speculative"] == SPECULATIVE and "speculative" not in pools["gpu"]
    rebuilt = served_cluster(wire)
    assert [p.config.speculative for p in rebuilt.pools] == [CONFIG.pools[0].speculative, None]


def test_replay_without_cluster_reports_speculative_as_simulate_does():
    workload = make_workload(read_trace(builtin_trace_path()), N, rate_rps=2.0, seed=1)

    async def run():
        core, client = _core(ScaledClock(0.01), 0.01)
        server, port, _ = await start_grpc_server("127.0.0.1",
                                                  lambda s: [add_scheduler_service(s, SchedulerServicer(core))])
        try:
            target = f"127.0.0.1:{port}"
            return live_summary(await replay(target, workload), target)
        finally:
            await server.stop(0.5)
            await client.close()

    live = asyncio.run(run())
    simulated = summarize(Simulation(Cluster(CONFIG), build_policy(CONFIG.policy, CONFIG), workload).run())
    assert live["completed"] == N
    assert live["pools"]["wafer"]["speculative"] == simulated["pools"]["wafer"]["speculative"] is not None
    assert live["pools"]["wafer"]["speculative"]["tokens_per_round"] > 3.0
    assert live["pools"]["gpu"]["speculative"] is None
