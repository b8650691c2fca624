"""Routers and verifiers are inference passes: their time delays the request, their energy and dollars count."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.plugins.overhead import InferenceCost
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload

EDGE = {"name": "laptop", "device": "m4-max", "instances": 1, "model": "llama-3.1-8b", "quantization": "q4_k_m",
        "role": "both", "max_batch": 4, "max_batch_tokens": 4096}
CLOUD = {"name": "cloud", "device": "h100-sxm", "instances": 1, "chips_per_instance": 2, "model": "llama-3.1-70b",
         "quantization": "fp8", "role": "both"}


def run(params, n=3, gap_s=30.0):
    cl = Cluster(parse_cluster({"name": "t", "pools": [EDGE, CLOUD], "policy": "local-first"}))
    tr = Trace(path="<test>", format="vidur", arrival_s=np.arange(n) * gap_s,
               input_tokens=np.full(n, 400, dtype=np.int64), output_tokens=np.full(n, 30, dtype=np.int64))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config, overrides=params), make_workload(tr)).run()
    return res, summarize(res)


def test_the_router_reads_each_prompt_before_the_request_is_placed():
    free, s_free = run({"router_model": "none", "verifier_model": "none"})
    paid, s_paid = run({"verifier_model": "none"})
    router = InferenceCost("router", "llama-3.1-8b", "h100-sxm", "router_model").cost(400)
    # Alone on an idle cluster, every request starts exactly the router's time later.
    np.testing.assert_allclose(paid.records.ttft_s(), free.records.ttft_s() + router.seconds, rtol=1e-9)
    np.testing.assert_allclose(paid.records.energy_j, free.records.energy_j + router.energy_j, rtol=1e-9)
    row = s_paid["judgements"]["router"]
    assert row["passes"] == 3 and row["energy_j"] == pytest.approx(3 * router.energy_j)
    # In the run's totals beside the pools (whose idle power runs over the slightly longer run).
    assert s_paid["energy_j"] == pytest.approx(sum(p["energy_j"] for p in s_paid["pools"].values())
                                               + 3 * router.energy_j)
    assert s_paid["cost_usd"] == pytest.approx(sum(p["cost_usd"] for p in s_paid["pools"].values())
                                               + 3 * router.cost_usd)
    assert "judgements" in s_free and s_free["judgements"] == {}


def test_the_verifier_checks_the_answers_it_could_send_up_on_the_pool_that_runs_its_model():
    # The 70B verifier runs on the 70B cloud pool (the pool serving its model on its device): it
    # queues there, and its energy and dollars are that pool's, not added again.
    res, s = run({"router_model": "none"})
    row = s["judgements"]["verifier"]
    assert row["pool"] == "cloud" and row["model"] == "llama-3.1-70b"
    # Answers from the top tier are not checked: nothing could re-serve them.
    assert row["passes"] == s["pools"]["laptop"]["passes"] > 0
    assert s["energy_j"] == pytest.approx(sum(p["energy_j"] for p in s["pools"].values()))
    assert s["cost_usd"] == pytest.approx(sum(p["cost_usd"] for p in s["pools"].values()))
    assert s["facility_energy_j"] == pytest.approx(sum(p["facility_energy_j"] for p in s["pools"].values()))
    # The cloud pool prefilled each checked prompt + answer besides the requests it served.
    served = sum(400 for _ in range(s["pools"]["cloud"]["passes"]))
    assert s["pools"]["cloud"]["prefill_tokens"] == served + row["passes"] * 430
    # Each check's energy went to the request it checked (busy energy covers every joule attributed).
    assert s["busy_energy_j"] == pytest.approx(float(res.records.energy_j.sum()))
    assert row["energy_j"] > 0 and row["seconds"] > 0


def test_a_verifier_no_pool_runs_is_charged_at_batch_one_on_its_own_instance():
    res, s = run({"router_model": "none", "verifier_model": "llama-3.1-405b"})
    check = InferenceCost("verifier", "llama-3.1-405b", "h100-sxm", "verifier_model").cost(430)
    row = s["judgements"]["verifier"]
    assert "pool" not in row and row["passes"] == s["pools"]["laptop"]["passes"] > 0
    assert row["energy_j"] == pytest.approx(row["passes"] * check.energy_j)
    # Its instance is a datacenter server: its facility energy counts host share and PUE.
    assert s["facility_energy_j"] > sum(p["facility_energy_j"] for p in s["pools"].values())


JUDGE = {"name": "judge-8b", "device": "h100-sxm", "instances": 1, "chips_per_instance": 1, "model": "llama-3.1-8b",
         "role": "both", "serving": "judge"}


def burst(judges: int, n=64, keep_records=True):
    """n requests at once: the router's passes queue on `judges` judge instances."""
    cl = Cluster(parse_cluster({"name": "t", "pools": [EDGE, CLOUD, dict(JUDGE, instances=judges)],
                                "policy": "local-first"}))
    tr = Trace(path="<test>", format="vidur", arrival_s=np.zeros(n), input_tokens=np.full(n, 3000, dtype=np.int64),
               output_tokens=np.full(n, 20, dtype=np.int64))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config, overrides={"verifier_model": "none"}),
                     make_workload(tr), keep_records=keep_records).run()
    return res, summarize(res)


def test_router_passes_queue_on_the_judge_pool_and_delay_the_requests_behind_them():
    one, s1 = burst(1)
    two, s2 = burst(2)
    for s in (s1, s2):
        assert s["completed"] == 64 and s["rejected"] == s["failed"] == 0
        row = s["judgements"]["router"]
        assert row["pool"] == "judge-8b" and row["passes"] == 64
        # The judge pool takes no request, only the router's passes (each reads the prompt).
        judge = s["pools"]["judge-8b"]
        assert judge["requests"] == 0 and judge["prefill_tokens"] == 64 * 3000
        assert judge["energy_j"] > 0 and judge["cost_usd"] > 0
        assert s["events_per_request"] < 10
    # 192k prompt tokens at once: passes wait for each other, less on two instances than on one.
    assert s1["judgements"]["router"]["queue_s"] > s2["judgements"]["router"]["queue_s"] > 0
    assert s1["judgements"]["router"]["seconds"] > s2["judgements"]["router"]["seconds"]
    # Requests start when their judgement is out: the queue shows in their TTFT.
    assert np.mean(one.records.ttft_s()) > np.mean(two.records.ttft_s())
    # No request starts at its arrival (0 s): each waits for its router's pass.
    assert min(one.records.prefill_start_s) > 0.0 and min(two.records.prefill_start_s) > 0.0


def test_judged_runs_summarize_the_same_with_bounded_records():
    _, full = burst(1, n=200)
    _, bounded = burst(1, n=200, keep_records=False)
    for key in ("completed", "quality", "energy_j", "busy_energy_j", "cost_usd", "judgements"):
        assert full[key] == pytest.approx(bounded[key]) if not isinstance(full[key], dict) else full[key] == bounded[key]


def test_a_judge_pool_serves_no_request_and_is_no_model_tier():
    cfg = {"name": "t", "policy": "cascade",
           "pools": [dict(CLOUD, name="mid"), {"name": "judge-405b", "device": "h100-sxm", "instances": 1,
                                                "chips_per_instance": 8, "model": "llama-3.1-405b",
                                                "quantization": "fp8", "role": "both", "serving": "judge"}]}
    cl = Cluster(parse_cluster(cfg))
    snap = cl.snapshot()
    assert snap.tiers == [cl.pools[0].perf.model.capability]
    assert set(snap.candidates[next(iter(snap.candidates))].tolist()) <= set(cl.pools[0].instances)


@pytest.mark.parametrize("pools, message", [
    ([dict(JUDGE)], "every pool is a judge pool"),
    ([EDGE, dict(JUDGE, role="prefill")], "role both"),
])
def test_judge_pool_configuration_errors(pools, message):
    from scheduler.validation import ConfigError
    with pytest.raises(ConfigError, match=message):
        parse_cluster({"name": "t", "pools": pools})
