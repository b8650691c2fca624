"""KV tiers end to end: a long-prompt session trace through the simulator with HBM only, a
host tier, and a host tier plus the shared store; the summary's per-tier figures; and an
emulated (live) worker with tiers timing prompts as the engine does."""
from __future__ import annotations

import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.registry import build_policy
from simulator.compare import format_table
from simulator.metrics import summarize
from simulator.sessions import session_trace
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload
from workers.clock import VirtualClock
from workers.emulated import EmulatedWorker
from workers.engine import FIRST_TOKEN, ROLE_BOTH, BatchEngine
from workers.prefix_cache import tiered_cache

from tests.workers.test_emulated import Heard

# Little HBM left for the cache (30% of an H100: ~60k tokens), so reuse must come from below.
POOL = {"name": "h", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "both",
        "chips_per_instance": 1, "memory_utilization": 0.3}
HOST = {"name": "host", "capacity_gb": 64, "read_gb_s": 54.5, "write_gb_s": 54.7, "energy_j_per_gb": 10.0,
        "usd_per_gb_hour": 0.01}
STORE = {"capacity_gb": 4000, "read_gb_s": 25, "write_gb_s": 25, "usd_per_gb_hour": 0.0001}


@pytest.fixture(scope="module")
def trace():
    return session_trace(read_trace(builtin_trace_path()), 400, 1.0, seed=1, input_scale=10)


@pytest.fixture(scope="module")
def runs(trace):
    out = {}
    for label, pool, top in [("hbm", POOL, {}), ("host", {**POOL, "kv_tiers": [HOST]}, {}),
                             ("store", {**POOL, "kv_tiers": [HOST]}, {"kv_store": STORE})]:
        cl = Cluster(parse_cluster({"name": label, "pools": [pool], **top}))
        out[label] = summarize(Simulation(cl, build_policy("prefix-aware", cl.config), make_workload(trace)).run())
    return out


def test_every_level_adds_hits_and_the_split_adds_up(trace, runs):
    for s in runs.values():
        assert s["completed"] + s["rejected"] == trace.rows
        assert sum(s["prefix_hit_tokens_by_tier"].values()) == s["prefix_hit_tokens"]
        assert s["prefill_computed_tokens"] + s["prefix_hit_tokens"] == int(trace.input_tokens.sum())
    assert list(runs["hbm"]["prefix_hit_tokens_by_tier"]) == ["hbm"] and runs["hbm"]["kv_tiers"] == {}
    assert list(runs["store"]["prefix_hit_tokens_by_tier"]) == ["hbm", "host", "store"]
    assert runs["store"]["prefix_hit_tokens_by_tier"]["store"] > 0
    assert runs["hbm"]["prefix_hit_rate"] < runs["host"]["prefix_hit_rate"] < runs["store"]["prefix_hit_rate"]
    assert runs["store"]["ttft_s"]["p50"] < runs["hbm"]["ttft_s"]["p50"]


def test_tier_figures_price_bytes_and_capacity(runs):
    s = runs["host"]
    host = s["kv_tiers"]["host"]
    assert host["read_bytes"] > 0 and host["written_bytes"] >= host["read_bytes"]
    assert host["load_s"] == pytest.approx(host["read_bytes"] / 54.5e9)
    assert s["kv_load_s"] == pytest.approx(host["load_s"])
    assert host["energy_j"] == pytest.approx((host["read_bytes"] + host["written_bytes"]) * 10.0 / 1e9)
    assert host["capacity_gb"] == pytest.approx(2 * 64, rel=1e-3)  # two instances, whole blocks
    assert host["cost_usd"] == pytest.approx(host["capacity_gb"] * 0.01 * s["makespan_s"] / 3600)
    pools_cost = sum(p["cost_usd"] for p in s["pools"].values())
    assert s["cost_usd"] == pytest.approx(pools_cost + host["cost_usd"])


def test_compare_shows_the_tiers(runs):
    table = format_table([{**s, "label": f"prefix-aware@{k}"} for k, s in runs.items()], [])
    assert "kv tiers" in table and "store tok" in table and "host tok" in table


def test_an_emulated_worker_with_tiers_times_prompts_as_the_engine_does():
    cl = Cluster(parse_cluster({"name": "t", "pools": [{**POOL, "kv_tiers": [HOST]}]}))
    perf = cl.pools[0].perf
    tiers = cl.pools[0].config.kv_tiers
    w = EmulatedWorker(perf, ROLE_BOTH, VirtualClock(), input_slack_s=0.0, prefix_block_tokens=512, kv_tiers=tiers)
    heard = Heard(w.clock)
    eng = BatchEngine(perf, ROLE_BOTH, prefix=tiered_cache(512, 0, None, tiers, perf.kv_bytes_per_token))
    # Ten 12k-token prompts, then the first again: its blocks were pushed down to host.
    prompts = [tuple(range(100 * i, 100 * i + 24)) for i in range(10)] + [tuple(range(24))]
    for i, blocks in enumerate(prompts):
        w.clock.call_at(5.0 * i, lambda i=i, b=blocks: w.prefill(f"r{i}", 12288, 2, heard, block_hashes=b,
                                                                 decode=True))
    w.clock.run()
    first, events = {}, []
    for i, blocks in enumerate(prompts):
        eng.submit_prefill(i, 12288, 2, blocks)
        eng.poke(5.0 * i, events)
        while eng.next_wake_s <= 5.0 * (i + 1):
            eng.wake(eng.next_wake_s, events)
    first = {e[1]: e[2] for e in events if e[0] == FIRST_TOKEN}
    assert eng.prefix.hit_tokens[0] > 0 and w.engine.prefix.hit_tokens == eng.prefix.hit_tokens
    for i in range(len(prompts)):
        (t, *_), = heard.of(f"r{i}", "prefilled")
        assert t == pytest.approx(first[i], abs=1e-9)
