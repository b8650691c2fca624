"""The cluster's kv_store live: the same long-prompt session trace through the simulator
and through the live scheduler, in process (workers share one store object) and on a real
local Ray cluster (workers in their own processes share a StoreService actor), gives the
same prompt tokens served from each prefix-cache level; the workers report them per tier."""
from __future__ import annotations

import asyncio

import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.core import SchedulerCore
from infersched.client.stats import stats_dict
from scheduler.live.inprocess import InProcessWorkerClient, run_virtual
from scheduler.live.servicer import stats_proto
from scheduler.live.types import GenerateInput, LiveOptions
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from simulator.kv_usage import live_kv_tier_usage
from simulator.metrics import summarize
from simulator.sessions import session_trace
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload
from workers.clock import VirtualClock


N = 60
# Little HBM left for the cache (30% of an H100) and a small host tier, so follow-ups that
# round-robin sends to the other instance are served by the shared store.
POOL = {"name": "h", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "both",
        "memory_utilization": 0.3, "kv_tiers": [{"name": "host", "capacity_gb": 4, "read_gb_s": 54.5,
                                                 "write_gb_s": 54.7}]}
STORE = {"capacity_gb": 400, "read_gb_s": 25, "write_gb_s": 25}


def config(write: str):
    return parse_cluster({"name": f"store-{write}", "policy": "round-robin", "prefix_cache": {"block_tokens": 512},
                          "pools": [POOL], "kv_store": {**STORE, "write": write}})


@pytest.fixture(scope="module")
def workload():
    return make_workload(session_trace(read_trace(builtin_trace_path()), N, 0.5, seed=3, input_scale=10))


def simulated(cfg, workload) -> dict:
    cluster = Cluster(cfg)
    return summarize(Simulation(cluster, build_policy(cfg.policy, cfg), workload).run())["prefix_hit_tokens_by_tier"]


def requests(workload):
    chunk = next(workload.chunks(N))
    offsets, values = chunk.hash_ids
    return [(float(chunk.arrival_s[i]),
             GenerateInput(f"r{i}", int(chunk.input_tokens[i]), int(chunk.output_tokens[i]),
                           prefix_block_hashes=tuple(int(h) for h in values[offsets[i]:offsets[i + 1]])))
            for i in range(N)]


@pytest.mark.parametrize("write", ["through", "evict"])
def test_in_process_workers_serve_what_the_simulator_serves_from_each_level(workload, write):
    cfg = config(write)
    cluster = Cluster(cfg)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=10.0)
    core = SchedulerCore(cluster, build_policy(cfg.policy, cfg), LiveOptions(time_scale=1.0, max_queue=1 << 20),
                         clock, client)
    client.register_all(core)
    outcomes = run_virtual(core, clock, requests(workload))
    assert {o.status for o in outcomes} == {RequestStatus.COMPLETED}
    pools = core.stats().pools
    counts = {t.name: t[1:] for t in pools[0].kv_tiers}
    live = live_kv_tier_usage(cluster, pools[0].prefix_hit_tokens, counts, 1.0)["prefix_hit_tokens_by_tier"]
    want = simulated(cfg, workload)
    assert want["store"] > 0 and want["host"] > 0
    assert live == want
    # The same counts as GetStats and `stats --json` carry them.
    pool = stats_dict(stats_proto(core.stats()))["pools"]["h"]
    assert pool["prefix_hit_tokens"] == sum(want.values())
    assert {name: t["hit_tokens"] for name, t in pool["kv_tiers"].items()} == {"host": want["host"],
                                                                               "store": want["store"]}


def test_write_through_serves_more_from_the_store_than_write_on_evict(workload):
    through, evict = simulated(config("through"), workload), simulated(config("evict"), workload)
    assert through["store"] > evict["store"] and through["hbm"] == evict["hbm"]


def test_ray_workers_share_one_store_and_report_hits_by_tier(ray_cluster, workload):
    """Worker actors in their own processes: the store's hits come from the StoreService actor,
    and the replay summary counts tokens by level as the simulator does."""
    from infersched.client.replay import live_summary, replay
    from scheduler.live.actor import start_scheduler, stop_scheduler

    cfg = config("through")
    actor, info = start_scheduler(cfg, options=LiveOptions(time_scale=0.05), port=0)
    try:
        result = asyncio.run(replay(info["address"], workload, cluster=Cluster(cfg)))
    finally:
        stop_scheduler(actor)
    summary = live_summary(result, info["address"])
    assert summary["completed"] == N
    live, want = summary["prefix_hit_tokens_by_tier"], simulated(cfg, workload)
    assert list(live) == ["hbm", "host", "store"] and want["store"] > 0
    # Round-robin places every request as the simulator does; a store lookup made when a
    # prompt arrives can miss a block written a moment later (workers/shared_store.py).
    total = sum(want.values())
    for level in want:
        assert abs(live[level] - want[level]) <= 0.05 * total, (live, want)
    assert summary["kv_tiers"]["store"]["read_bytes"] > 0 and summary["kv_tiers"]["store"]["written_bytes"] > 0
