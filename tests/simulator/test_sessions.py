"""The prefix-reuse trace (simulator/sessions.py) and prefix caching end to end in the simulator."""
from __future__ import annotations

import math

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, parse_cluster
from scheduler.registry import build_policy
from infersched.cli import main
from simulator.metrics import summarize
from simulator.sessions import reuse_stats, session_trace, write_mooncake
from simulator.sim import Simulation
from simulator.traces import Trace, builtin_trace_path, read_trace
from simulator.workload import make_workload

BLOCK = 512


@pytest.fixture(scope="module")
def base():
    return read_trace(builtin_trace_path())


@pytest.fixture(scope="module")
def sessions(base):
    return session_trace(base, 4000, 40.0, seed=3)


def prompts(trace):
    off, ids = trace.hash_ids
    return [ids[off[i]:off[i + 1]].tolist() for i in range(trace.rows)]


def test_structure_follow_ups_repeat_an_earlier_prompt_and_new_blocks_are_fresh(base):
    # One app with a one-block system prompt (block id 0): any longer shared prefix is a follow-up.
    trace = session_trace(base, 4000, 40.0, seed=3, system_prompts=1, max_system_blocks=1)
    seen: set[int] = set()
    earlier_full: set[tuple] = set()  # every earlier prompt's full blocks (what a next turn may share)
    follow_ups = 0
    for blocks, inp in zip(prompts(trace), trace.input_tokens.tolist()):
        assert len(blocks) == math.ceil(inp / BLOCK)
        shared = 0
        while shared < len(blocks) and blocks[shared] in seen:
            shared += 1
        assert not set(blocks[shared:]) & seen, "blocks after the shared prefix must be new"
        assert shared < len(blocks), "each prompt adds at least one block of its own"
        if shared > 1:
            assert tuple(blocks[:shared]) in earlier_full, "a follow-up repeats a whole earlier prompt"
            follow_ups += 1
        elif len(blocks) > 1:
            assert blocks[0] == 0, "a new conversation starts with its app's system prompt"
        seen.update(blocks)
        earlier_full.add(tuple(blocks[:inp // BLOCK]))
    assert follow_ups > 300


def test_seeded_and_follow_ups_add_reuse(base, sessions):
    again = session_trace(base, 4000, 40.0, seed=3)
    assert np.array_equal(again.hash_ids[1], sessions.hash_ids[1])
    assert np.array_equal(again.arrival_s, sessions.arrival_s)
    other = session_trace(base, 4000, 40.0, seed=4)
    assert not np.array_equal(other.input_tokens, sessions.input_tokens)
    # So many apps that system prompts rarely repeat: the reuse comes from follow-ups.
    shares = [reuse_stats(session_trace(base, 4000, 40.0, seed=3, followup_share=f, system_prompts=10**6,
                                        zipf_exponent=0.0))["reusable_share"] for f in (0.0, 0.5, 0.9)]
    assert shares[0] < 0.01 and shares[0] < shares[1] < shares[2] < 1.0
    assert 0.2 < reuse_stats(sessions)["reusable_share"] < 0.8
    assert abs(sessions.mean_rate_rps - 40.0) < 4.0


def test_mooncake_file_round_trips(tmp_path, sessions):
    path = write_mooncake(sessions, tmp_path / "s.jsonl")
    back = read_trace(path)
    assert back.format == "mooncake" and back.rows == sessions.rows
    assert np.array_equal(back.input_tokens, sessions.input_tokens)
    assert np.array_equal(back.output_tokens, sessions.output_tokens)
    assert np.array_equal(back.hash_ids[0], sessions.hash_ids[0])
    assert np.array_equal(back.hash_ids[1], sessions.hash_ids[1])
    assert np.allclose(back.arrival_s, sessions.arrival_s - sessions.arrival_s[0], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_requests": 0}, "n_requests"), ({"rate_rps": 0.0}, "rate_rps"), ({"followup_share": 1.5}, "followup_share"),
    ({"system_prompts": 0}, "system_prompts"), ({"block_tokens": 0}, "block_tokens"),
])
def test_bad_parameters_are_named(base, kwargs, message):
    args = {"n_requests": 10, "rate_rps": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        session_trace(base, args.pop("n_requests"), args.pop("rate_rps"), **args)


def colocated(instances=4):
    return Cluster(parse_cluster({"name": "t", "pools": [{
        "name": "h100", "device": "h100-sxm", "instances": instances, "model": "llama-3.1-8b", "role": "both",
        "chips_per_instance": 1}]}))


def simulate(cl, trace, policy):
    return summarize(Simulation(cl, build_policy(policy, cl.config), make_workload(trace)).run())


def test_prefix_aware_computes_fewer_prompt_tokens_without_hot_spots(sessions):
    cl = colocated()
    least = simulate(cl, sessions, "least-loaded")
    prefix = simulate(cl, sessions, "prefix-aware")
    total = int(sessions.input_tokens.sum())
    for s in (least, prefix):
        assert s["completed"] == sessions.rows
        assert s["prefill_computed_tokens"] + s["prefix_hit_tokens"] == total
    assert prefix["prefix_hit_tokens"] > 1.1 * least["prefix_hit_tokens"] > 0
    assert prefix["prefix_hit_rate"] <= reuse_stats(sessions)["reusable_share"] + 1e-9
    assert prefix["ttft_s"]["p50"] < least["ttft_s"]["p50"]
    assert prefix["max_instance_load_ratio"] < 1.5
    # Energy follows the work: fewer prompt tokens computed, fewer joules attributed.
    assert prefix["busy_energy_j"] < least["busy_energy_j"]


def test_without_hashes_or_with_caching_off_nothing_is_cached(sessions):
    plain = Trace(path="<plain>", format="vidur", arrival_s=sessions.arrival_s,
                  input_tokens=sessions.input_tokens, output_tokens=sessions.output_tokens)
    s = simulate(colocated(), plain, "prefix-aware")
    assert s["prefix_hit_tokens"] == 0 and s["prefill_computed_tokens"] == int(plain.input_tokens.sum())
    off = Cluster(parse_cluster({"name": "t", "prefix_cache": {"enabled": False}, "pools": [{
        "name": "h100", "device": "h100-sxm", "instances": 4, "model": "llama-3.1-8b", "role": "both",
        "chips_per_instance": 1}]}))
    assert simulate(off, sessions, "prefix-aware")["prefix_hit_tokens"] == 0


def test_disaggregated_prefill_pools_cache_prefixes_too(sessions):
    cl = Cluster(parse_cluster({"name": "t", "pools": [
        {"name": "p", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "prefill",
         "chips_per_instance": 1},
        {"name": "d", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "decode",
         "chips_per_instance": 1}]}))
    s = simulate(cl, sessions, "prefix-aware")
    assert s["completed"] == sessions.rows and s["prefix_hit_rate"] > 0.2
    assert s["pools"]["d"]["prefix_hit_tokens"] == 0


def test_cli_writes_a_session_trace_that_simulate_replays(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sessions", "--out", str(out), "--requests", "300", "--rate", "20", "--seed", "1"]) == 0
    assert "300 requests" in capsys.readouterr().out
    cluster = builtin_cluster_path("gpu-colocated")
    assert main(["simulate", "--trace", str(out), "--cluster", str(cluster), "--policy", "prefix-aware",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "completed 300" in printed and "prefix cache:" in printed


def test_compare_reports_prefix_caching_per_policy(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sessions", "--out", str(out), "--requests", "400", "--rate", "40", "--seed", "2"]) == 0
    cluster = builtin_cluster_path("gpu-colocated")
    assert main(["compare", "--trace", str(out), "--cluster", str(cluster),
                 "--policies", "least-loaded,prefix-aware"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("prefix caching"):].splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:3]}
    assert set(rows) == {"least-loaded", "prefix-aware"}
    cached = {name: float(cols[1].rstrip("%")) for name, cols in rows.items()}
    assert cached["prefix-aware"] > cached["least-loaded"] > 0
