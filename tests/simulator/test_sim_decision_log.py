"""The decision log from simulation runs: multi-pass requests and byte-for-byte reproducibility
(tests/cli/test_simulate_decision_log.py: the summary is the same with or without it)."""
from __future__ import annotations

import io
import json

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.decision_log import DecisionLog
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload

PLACEMENT_KEYS = ["t", "id", "pass", "stage", "candidates", "removed", "scores", "total", "chosen", "colocated",
                  "reason"]
PASS_KEYS = ["t", "id", "pass", "stage", "kind", "input_tokens", "output_tokens", "min_capability"]


def simulate(cluster: str, n: int, log: DecisionLog | None, rate: float = 20.0):
    config = load_cluster(builtin_cluster_path(cluster))
    trace = read_trace(builtin_trace_path())
    workload = make_workload(trace, n_requests=n, rate_rps=rate, seed=5)
    return Simulation(Cluster(config), build_policy(config.policy, config), workload, seed=5,
                      decision_log=log).run()


@pytest.mark.parametrize("cluster, kind, counted", [("tiers", "escalation", "escalations"),
                                                    ("advisor", "advice", "advised_requests")])
def test_multi_pass_requests_log_each_pass_before_its_placements(cluster, kind, counted):
    out = io.StringIO()
    result = simulate(cluster, 1500, DecisionLog(out))
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    passes = [r for r in rows if r["stage"] == "pass"]
    assert all(list(r) == PASS_KEYS for r in passes)
    assert all(list(r) == PLACEMENT_KEYS for r in rows if r["stage"] != "pass")
    # Every pass line is followed by its placement, same request and pass number.
    for i, r in enumerate(rows):
        if r["stage"] == "pass":
            nxt = rows[i + 1]
            assert (nxt["stage"], nxt["id"], nxt["pass"], nxt["t"]) == ("prefill", r["id"], r["pass"], r["t"])
    firsts = [r for r in passes if r["kind"] == "first"]
    assert len(firsts) == 1500 and all(r["pass"] == 0 for r in firsts)
    later = [r for r in passes if r["kind"] == kind]
    assert all(r["pass"] >= 1 for r in later)
    # Placed later passes are what the simulator counts (a later pass may find no room).
    placed = sum(1 for i, r in enumerate(rows) if r["stage"] == "pass" and r["kind"] == kind
                 and rows[i + 1]["chosen"] is not None)
    assert placed == summarize(result)[counted] > 0


def test_the_log_is_the_same_bytes_every_run(tmp_path):
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in paths:
        with DecisionLog.open(path) as log:
            simulate("gpu-disagg", 800, log, rate=40.0)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert len(paths[0].read_text().splitlines()) == 1600  # every request: a prefill and a decode line
