"""The economics document says where judgements ran and where the phone's measured power puts its verdict."""
from __future__ import annotations

import json

import pytest

from bench.economics import boundary, common, hybrid
from bench.economics.doc import JUDGED_SECTIONS, _judgements
from scheduler.cluster import Cluster
from simulator.traces import builtin_trace_path, read_trace
from workers import edge_devices as edge

RESULTS = common.ROOT / "bench" / "results" / "economics.json"


@pytest.fixture(scope="module")
def saved():
    return json.loads(RESULTS.read_text())


def test_the_doc_names_the_sections_whose_judgements_predate_pooled_judges():
    pooled = {name: {"judges": "pooled"} for name in JUDGED_SECTIONS}
    assert "Exception" not in _judgements(pooled)
    stale = dict(pooled, advisor={})
    assert "the saved results of advisor predate this" in _judgements(stale)


def test_phone_power_rows_come_from_the_saved_results_not_the_code(saved):
    res = saved["boundary"]
    assert res["phone_power"] == boundary.phone_power_meta()
    lines = "\n".join(boundary.render(res))
    assert f"{edge.PUBLISHED_PHONE_NPU_W:.1f} W (NPU, measured; as modelled)" in lines
    assert "14.6 W (8B on the CPU (llama.cpp), measured)" in lines
    assert "break-even serving power" in lines
    # A result saved without the measured power still renders, over the former assumed range.
    old = {k: v for k, v in res.items() if k != "phone_power"}
    assert "4.0 W (low)" in "\n".join(boundary.render(old))


def test_break_even_power_reproduces_a_ratio_of_one(saved):
    res = saved["boundary"]
    phone = res["runs"]["own phone, 8B w4"]
    target = res["runs"]["H100, 8B bf16, batched"]
    for r, c in zip(phone, target):
        watts = c["facility_j"] / (r["busy_s"] * r["wall"])
        assert watts * r["busy_s"] * r["wall"] / c["facility_j"] == pytest.approx(1.0)


def test_judge_pools_are_sized_by_their_prefill_work_and_skip_a_model_the_cloud_serves():
    trace = read_trace(common.CONV if common.CONV.exists() else builtin_trace_path())
    low = hybrid.judge_pools(trace, 3.0, "llama-3.1-405b")
    high = hybrid.judge_pools(trace, 40.0, "llama-3.1-405b")
    assert [p["name"] for p in low] == ["judge-router", "judge-verifier"]
    assert all(h["instances"] >= lo["instances"] >= 1 for lo, h in zip(low, high))
    assert sum(p["instances"] for p in high) > sum(p["instances"] for p in low)
    # The 70B cloud pool runs the 70B verifier's passes itself: no verifier pool.
    assert [p["name"] for p in hybrid.judge_pools(trace, 20.0, "llama-3.1-70b")] == ["judge-router"]
    # The clusters take them: no request goes there (serving: judge).
    config = hybrid.edge_cloud("edge-cloud", hybrid.HYBRID_SETTINGS["cloud_405b"][4], 4, "llama-3.1-405b", 8, 1,
                               2048, low)
    cl = Cluster(config)
    snap = cl.snapshot()
    judges = {p.name: p for p in cl.pools if p.config.serving.value == "judge"}
    assert set(judges) == {"judge-router", "judge-verifier"}
    for pool in judges.values():
        assert not set(pool.instances) & set(snap.candidates[next(iter(snap.candidates))].tolist())
