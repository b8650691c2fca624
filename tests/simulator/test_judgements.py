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


def test_every_answer_is_checked_by_the_verifier():
    res, s = run({"router_model": "none"})
    check = InferenceCost("verifier", "llama-3.1-70b", "h100-sxm", "verifier_model").cost(430)
    passes = s["judgements"]["verifier"]["passes"]
    assert passes == s["completed"] + s["escalations"]
    assert s["judgements"]["verifier"]["energy_j"] == pytest.approx(passes * check.energy_j)
    # The verifier's instance is a datacenter server: its facility energy counts host share and PUE.
    assert s["facility_energy_j"] > sum(p["facility_energy_j"] for p in s["pools"].values())
