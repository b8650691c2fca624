"""The contract between the two runtimes: the same trace and seed through the simulator
and through the live scheduler core give the same decision log, byte for byte.

The live side is the real core (`SchedulerCore`) with real emulated workers in
process (`InProcessWorkerClient`: the same engines, admission rules and KV
hand-overs as the worker actors, behind the same WorkerClient seam) on a
virtual clock, so nothing depends on the machine. The logs carry every
decision's candidates, filters' removals and each scorer's raw and weighted
scores, so they match only if the policy saw the same snapshot at the same
time; beyond the log, every request's placement, first-token time and finish
time must be equal to the bit.
"""
from __future__ import annotations

import io

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.decision_log import DecisionLog
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient, run_virtual
from scheduler.live.types import GenerateInput, LiveOptions
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload
from workers.clock import VirtualClock

SEED = 0
# Room for any burst, stages that never time out, and chunks large enough to keep the
# token traffic (which decides nothing) small.
OPTIONS = LiveOptions(time_scale=1.0, seed=SEED, max_queue=1 << 20, rpc_timeout_s=1e9, chunk_tokens=256)


def both_runtimes(cluster_name: str, policy: str, n: int):
    """(simulated records, its decision log, live outcomes by request index, its decision
    log, the core) for the first n trace rows."""
    config = load_cluster(builtin_cluster_path(cluster_name))
    workload = make_workload(read_trace(builtin_trace_path(), max_rows=n), n_requests=n, seed=SEED)
    sim_log, live_log = io.StringIO(), io.StringIO()
    simulated = Simulation(Cluster(config), build_policy(policy, config), workload, seed=SEED,
                           decision_log=DecisionLog(sim_log)).run().records
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=10.0)
    core = SchedulerCore(cluster, build_policy(policy, config), OPTIONS, clock, client,
                         decision_log=DecisionLog(live_log))
    client.register_all(core)
    chunk = next(workload.chunks(n))
    requests = [(float(chunk.arrival_s[i]), GenerateInput(f"r{i}", int(chunk.input_tokens[i]),
                                                          int(chunk.output_tokens[i]))) for i in range(n)]
    live = {int(o.request_id[1:]): o for o in run_virtual(core, clock, requests)}
    return simulated, sim_log.getvalue(), live, live_log.getvalue(), core


@pytest.mark.parametrize("cluster_name, policy, n", [
    ("live-small", "slo-aware", 2000),
    ("live-small", "round-robin", 2000),  # half the requests through a KV hand-over
    ("hybrid", "energy-aware", 2000),  # five pools, three models, edge devices
    ("live-small", "least-loaded", 300),
    ("live-small", "cost-aware", 300),
    ("live-small", "conditional-disagg", 300),
    ("live-small", "prefix-aware", 300),
    ("gpu-disagg", "slo-aware", 300),
])
def test_the_live_core_makes_the_simulators_decisions(cluster_name, policy, n):
    simulated, sim_log, live, live_log, core = both_runtimes(cluster_name, policy, n)
    assert sim_log.count("\n") >= n  # a line per placement: at least one per request
    if live_log != sim_log:
        first = next(i for i, (a, b) in enumerate(zip(live_log.splitlines(), sim_log.splitlines())) if a != b)
        raise AssertionError(f"decision logs differ from line {first + 1}:\nlive      "
                             f"{live_log.splitlines()[first]}\nsimulated {sim_log.splitlines()[first]}")
    assert len(live) == n and {o.status for o in live.values()} == {RequestStatus.COMPLETED}
    got = [(live[i].prefill_instance, live[i].decode_instance, live[i].first_token_s, live[i].finish_s)
           for i in range(n)]
    want = list(zip(simulated.prefill_instance.tolist(), simulated.decode_instance.tolist(),
                    simulated.first_token_s.tolist(), simulated.finish_s.tolist()))
    mismatched = [i for i in range(n) if got[i] != want[i]]
    assert not mismatched, f"{len(mismatched)} requests differ, first: {mismatched[0]}: live {got[mismatched[0]]} " \
                           f"vs simulated {want[mismatched[0]]}"
    assert core.stats().decisions_total == n  # one decision each, no retries
