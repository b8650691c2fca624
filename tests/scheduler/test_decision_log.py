"""The decision log's lines for colocated, disaggregated and rejected requests, and its
number format (tests/simulator/test_sim_decision_log.py: multi-pass runs, reproducibility)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.decision_log import DecisionLog, decision_lines, placement_line
from scheduler.registry import build_policy
from scheduler.types import Decision, Placement, Request, ScorePart, Stage

PLACEMENT_KEYS = ["t", "id", "pass", "stage", "candidates", "removed", "scores", "total", "chosen", "colocated",
                  "reason"]


def pool(name, role, instances, **kw):
    return {"name": name, "device": "h100-sxm", "instances": instances, "model": "llama-3.1-8b", "role": role,
            "chips_per_instance": 1, **kw}


def explained(pools, policy="least-loaded"):
    cl = Cluster(parse_cluster({"name": "t", "pools": pools}))
    pol = build_policy(policy, cl.config)
    pol.explain = True
    return cl.snapshot(), pol


def logged(decision: Decision, now_s: float = 1.25) -> list[dict]:
    out = io.StringIO()
    DecisionLog(out).write(decision, now_s)
    lines = out.getvalue().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert list(row) == PLACEMENT_KEYS
    return rows


def test_a_colocated_request_is_one_prefill_line():
    snap, pol = explained([pool("a", "both", 3)])
    snap.update(0, 2, 1000, 5, snap._kv_capacity[0] - 5000, 0.0)  # instance 0 busy: 1 or 2 wins
    (row,) = logged(pol.decide(Request(7, 500, 50, 1.25), snap, 1.25, np.random.default_rng(0)))
    assert row["t"] == 1.25 and row["id"] == 7 and row["pass"] == 0 and row["stage"] == "prefill"
    assert row["candidates"] == [0, 1, 2] and row["removed"] == {}
    assert row["chosen"] in (1, 2) and row["colocated"] is True and row["reason"] == ""
    # least-loaded: 1 / (1 + load); instance 0 holds 7 sequences of 256 slots.
    ll = row["scores"]["least-loaded"]
    assert ll["weight"] == 1.0 and ll["raw"][1:] == [1.0, 1.0] and ll["raw"][0] == round(1 / (1 + 7 / 256), 6)
    assert ll["weighted"] == ll["raw"] == row["total"]


def test_a_disaggregated_request_is_a_prefill_line_then_a_decode_line():
    snap, pol = explained([pool("p", "prefill", 2), pool("d", "decode", 2)])
    decision = pol.decide(Request(3, 500, 50, 0.0), snap, 0.0, np.random.default_rng(0))
    prefill, decode = logged(decision)
    assert (prefill["stage"], prefill["candidates"], prefill["chosen"]) == ("prefill", [0, 1],
                                                                           decision.prefill_instance)
    assert (decode["stage"], decode["candidates"], decode["chosen"]) == ("decode", [2, 3], decision.decode_instance)
    assert prefill["colocated"] is False and decode["colocated"] is False


def test_a_rejection_names_the_filter_that_removed_every_candidate():
    snap, pol = explained([pool("a", "both", 2), pool("small", "both", 1, memory_utilization=0.3)])
    big = int(snap.kv_capacity.max())
    small = int(snap.kv_capacity.min())
    (row,) = logged(pol.decide(Request(1, small, 10, 0.0), snap, 0.0, np.random.default_rng(0)))
    assert row["removed"] == {"fits-memory": [2]} and row["candidates"] == [0, 1]  # the small one cannot hold it
    (row,) = logged(pol.decide(Request(2, big, 10, 0.0), snap, 0.0, np.random.default_rng(0)))
    assert row["removed"] == {"fits-memory": [0, 1, 2]} and row["candidates"] == []
    assert row["chosen"] is None and row["scores"] == {} and row["total"] == []
    assert row["reason"] == "no instance has KV memory for prompt + output tokens"


def test_a_decision_without_placements_cannot_be_logged():
    with pytest.raises(ValueError, match="policy.explain = True"):
        decision_lines(Decision(0, 1, 1), 0.0)


def test_floats_have_six_digits_and_non_finite_ones_are_null():
    p = Placement(Stage.DECODE, (4, 5), (), (ScorePart("x", 0.5, (float("nan"), 1 / 3), (0.0, 1 / 6)),),
                  (0.0, 1 / 6), 5, "")
    assert placement_line(p, 9, 2.0, 1) == (
        '{"t":2.000000,"id":9,"pass":1,"stage":"decode","candidates":[4,5],"removed":{},"scores":{"x":'
        '{"weight":0.500000,"raw":[null,0.333333],"weighted":[0.000000,0.166667]}},"total":[0.000000,0.166667],'
        '"chosen":5,"colocated":false,"reason":""}')
