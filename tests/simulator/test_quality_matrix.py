"""Quality from a per-question correctness matrix, on real simulator runs (simulator/quality_matrix.py)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.quality_matrix import CorrectnessMatrix, MatrixError, MatrixQuality, main
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload

B70 = {"name": "b70", "device": "h100-sxm", "instances": 1, "chips_per_instance": 2, "model": "llama-3.1-70b",
       "quantization": "fp8", "role": "both"}
T8 = {"name": "t8", "device": "h100-sxm", "instances": 1, "chips_per_instance": 1, "model": "llama-3.1-8b",
      "role": "both"}
# Question 0: only 8B right (not nested); 1: only 70B; 2: both; 3: neither.
MATRIX = CorrectnessMatrix(("llama-3.1-8b", "llama-3.1-70b"), ("q0", "q1", "q2", "q3"),
                           np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool))


def run(pools, policy, n=400, params=None):
    cl = Cluster(parse_cluster({"name": "t", "pools": pools, "policy": policy}))
    quality = MatrixQuality(MATRIX, cl, seed=3)
    tr = Trace(path="<test>", format="vidur", arrival_s=np.arange(n) * 0.05,
               input_tokens=np.full(n, 200, dtype=np.int64), output_tokens=np.full(n, 20, dtype=np.int64))
    policy = build_policy(cl.config.policy, cl.config, overrides=params)
    res = Simulation(cl, policy, make_workload(tr), quality=quality).run()
    return quality, res, summarize(res)


def test_one_model_scores_exactly_its_matrix_column():
    quality, res, s = run([B70], "least-loaded")
    questions = quality.questions(0, 400)
    assert s["completed"] == 400
    assert s["correct"] == int(MATRIX.correct[questions, 1].sum())


def test_a_stronger_model_can_miss_what_a_weaker_one_answers():
    # Oracle local-first is not needed to see it: served by 70B, question 0 is wrong though 8B gets it.
    quality, res, s = run([B70], "least-loaded")
    q0 = quality.questions(0, 400) == 0
    assert q0.any()
    judged = quality.correct(0, np.full(400, res.cluster.pools[0].perf.model.capability))
    assert not judged[q0].any()


def test_oracle_cascade_routes_each_question_to_the_cheapest_tier_that_answers_it():
    quality, res, s = run([T8, B70], "cascade", params={"detect_accuracy": 1.0})
    questions = quality.questions(0, 400)
    # A perfect verifier escalates 8B's failures to 70B: right when either model is right.
    assert s["correct"] == int(MATRIX.correct[questions].any(axis=1).sum())
    assert s["escalated_requests"] == int((~MATRIX.correct[questions, 0]).sum())


def test_router_signal_is_the_lowest_tier_that_answers():
    quality, res, s = run([T8, B70], "least-loaded", n=10)
    caps = quality.capabilities
    expected = np.array([caps[0], caps[1], caps[0], 1.0])[quality.questions(0, 10)]
    np.testing.assert_array_equal(quality.difficulty(0, 10), expected)


def test_csv_round_trip_and_bad_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "m.csv.gz"
    MATRIX.write_csv(path)
    back = CorrectnessMatrix.read_csv(path)
    assert back.models == MATRIX.models and np.array_equal(back.correct, MATRIX.correct)
    bad = tmp_path / "bad.csv"
    bad.write_text("question_id,llama-3.1-8b\nq0,1\nq1,yes\n")
    with pytest.raises(MatrixError, match=r"bad.csv:3: field 'llama-3.1-8b': expected 0 or 1"):
        CorrectnessMatrix.read_csv(bad)


def test_a_pool_without_a_column_is_an_error():
    cl = Cluster(parse_cluster({"name": "t", "pools": [dict(B70, model="llama-3.1-405b", chips_per_instance=8)]}))
    with pytest.raises(MatrixError, match="no column for pool 'b70'"):
        MatrixQuality(MATRIX, cl)


def test_mmlu_pro_outputs_convert_to_a_matrix(tmp_path):
    import json

    for name, preds in (("a", "AB"), ("b", "BB")):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"question_id": i, "answer": "B", "pred": p} for i, p in enumerate(preds)]))
    out = tmp_path / "m.csv"
    assert main(["mmlu-pro", str(out), f"x={tmp_path / 'a.json'}", f"y={tmp_path / 'b.json'}"]) == 0
    assert out.read_text() == "question_id,x,y\n0,0,1\n1,1,1\n"
