"""Difficulty, answer quality and the accounting of multi-pass requests (escalation, advice)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from simulator.metrics import summarize
from simulator.quality import DEFAULT_REACH_TABLE, DifficultyModel, parse_table, read_difficulty_column
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload


def pool(name, model, chips=1, quant=None, **kw):
    p = {"name": name, "device": "h100-sxm", "instances": 1, "model": model, "role": "both",
         "chips_per_instance": chips, **kw}
    if quant:
        p["quantization"] = quant
    return p


P8 = pool("t8", "llama-3.1-8b")
P70 = pool("t70", "llama-3.1-70b", chips=2, quant="fp8")
P405 = pool("t405", "llama-3.1-405b", chips=8, quant="fp8")


def run(pools, policy, arrivals, inputs, outputs, difficulty, params=None):
    cl = Cluster(parse_cluster({"name": "t", "pools": pools, "policy": policy}))
    trace = Trace(path="<test>", format="vidur", arrival_s=np.asarray(arrivals, dtype=np.float64),
                  input_tokens=np.asarray(inputs, dtype=np.int64), output_tokens=np.asarray(outputs, dtype=np.int64))
    wl = make_workload(trace, difficulty=np.asarray(difficulty, dtype=np.float64))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config, overrides=params), wl).run()
    return res, summarize(res)


def test_default_table_puts_71_percent_within_an_edge_class_models_reach():
    model = DifficultyModel(seed=3)
    assert model.reach(0.694) == pytest.approx(0.71)
    d = model.draw(0, 200_000)
    assert np.all((d >= 0) & (d <= 1))
    assert np.mean(d <= 0.694) == pytest.approx(0.71, abs=0.005)
    assert np.mean(d <= 0.873) == pytest.approx(0.95, abs=0.005)


def test_draws_depend_only_on_seed_and_request_id():
    model = DifficultyModel(seed=5)
    whole = model.draw(0, 1000)
    assert np.array_equal(np.concatenate([model.draw(0, 300), model.draw(300, 700)]), whole)
    assert not np.array_equal(DifficultyModel(seed=6).draw(0, 1000), whole)


def test_custom_table_and_its_errors():
    model = DifficultyModel(table=parse_table("0.5:0.2,0.9:0.9"))
    assert model.reach(0.5) == pytest.approx(0.2)
    assert model.reach(0.7) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="capabilities must increase"):
        DifficultyModel(table=((0.6, 0.5), (0.5, 0.6)))
    with pytest.raises(ValueError, match="must be in"):
        DifficultyModel(table=((0.6, 1.5),))
    with pytest.raises(ValueError, match="CAPABILITY:SHARE"):
        parse_table("0.5")
    assert DEFAULT_REACH_TABLE[3] == (0.694, 0.71)


def test_trace_difficulty_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,difficulty\n10,5,0.2\n20,5,0.9\n")
    assert read_difficulty_column(path).tolist() == [0.2, 0.9]
    path.write_text("num_prefill_tokens,num_decode_tokens,difficulty\n10,5,0.2\n20,5,1.9\n")
    with pytest.raises(ValueError, match=r"t\.csv:3: field 'difficulty'"):
        read_difficulty_column(path)
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n")
    assert read_difficulty_column(path) is None


def test_quality_counts_answers_whose_model_reaches_the_difficulty():
    # One 8B pool (capability 0.694): 0.5 and 0.694 are answered right, 0.7 and 0.95 wrong.
    res, s = run([P8], "least-loaded", [0, 1, 2, 3], [100] * 4, [10] * 4, [0.5, 0.694, 0.7, 0.95])
    assert (s["completed"], s["correct"], s["quality"]) == (4, 2, 0.5)
    assert s["escalations"] == 0
    assert s["queries_per_kwh"] == pytest.approx(4 / (s["energy_j"] / 3.6e6))
    assert s["pools"]["t8"]["capability"] == 0.694


def test_rejected_requests_are_not_answered():
    # The second request's prompt + output cannot fit any KV cache: rejected, not correct.
    res, s = run([P8], "least-loaded", [0, 1], [100, 5_000_000], [10, 10], [0.1, 0.1])
    assert (s["rejected"], s["correct"], s["quality"]) == (1, 1, 0.5)


def _alone(pools, difficulty):
    res, _ = run(pools, "least-loaded", [0.0], [800], [50], [difficulty])
    r = res.records
    return r.energy_j[0], r.cost_usd[0], r.e2e_s()[0], r.ttft_s()[0]


@pytest.mark.parametrize("verifier", ["none", "llama-3.1-70b", "llama-3.1-405b"])
def test_escalation_pays_for_both_passes_and_spans_both_in_latency(verifier):
    # One request beyond the 8B tier (0.8 > 0.694), a perfect verifier: served on 8B, caught,
    # re-served on 70B. Alone on an idle cluster, each pass costs exactly what the same request
    # costs alone on that tier, and the second pass starts when the first finishes and the
    # verifier has read prompt + answer (an inference pass of its own, after the 8B pass only: the
    # 70B answer is the top tier's, nothing could re-serve it; "none" makes judging free). The 70B
    # verifier runs on the 70B pool (the pool serving its model), idle here: one 850-token prefill
    # there; the 405B one, which no pool serves, is charged at batch 1 on an instance of its own.
    from scheduler.plugins.overhead import InferenceCost

    e8, c8, t8, _ = _alone([P8], 0.8)
    e70, c70, t70, ttft70 = _alone([P70], 0.8)
    res, s = run([P8, P70], "cascade", [0.0], [800], [50], [0.8],
                 params={"detect_accuracy": 1.0, "verifier_model": verifier})
    if verifier == "llama-3.1-70b":
        row = s["judgements"]["verifier"]
        perf = Cluster(parse_cluster({"name": "t", "pools": [P70]})).pools[0].perf
        check_s = perf.prefill(850, 850 * 851 / 2, 1)[0]
        assert row["pool"] == "t70" and row["seconds"] == pytest.approx(check_s, rel=1e-9) and row["queue_s"] == 0.0
        check_j, check_usd = row["energy_j"], row["cost_usd"]
    elif verifier == "llama-3.1-405b":
        check = InferenceCost("verifier", verifier, "h100-sxm", "verifier_model").cost(850)
        check_s, check_j, check_usd = check.seconds, check.energy_j, check.cost_usd
    else:
        check_s = check_j = check_usd = 0.0
    r = res.records
    assert (s["escalations"], s["escalated_requests"], s["correct"]) == (1, 1, 1)
    assert r.energy_j[0] == pytest.approx(e8 + e70 + check_j, rel=1e-9)
    assert r.cost_usd[0] == pytest.approx(c8 + c70 + check_usd, rel=1e-9)
    assert r.e2e_s()[0] == pytest.approx(t8 + check_s + t70, rel=1e-9)
    # TTFT is the first token of the answer delivered: the escalated pass's.
    assert r.ttft_s()[0] == pytest.approx(t8 + check_s + ttft70, rel=1e-9)
    assert r.prefill_instance[0] == 1 and r.status[0] == RequestStatus.COMPLETED
    if verifier != "none":
        assert s["judgements"]["verifier"]["passes"] == 1
    if verifier == "llama-3.1-405b":  # its own instance: beside the pools in the totals
        assert s["energy_j"] == pytest.approx(sum(p["energy_j"] for p in s["pools"].values()) + check_j)
    else:  # on the 70B pool: in its energy already
        assert s["energy_j"] == pytest.approx(sum(p["energy_j"] for p in s["pools"].values()))


def test_an_undetected_wrong_answer_stands():
    res, s = run([P8, P70], "cascade", [0.0], [800], [50], [0.8], params={"detect_accuracy": 0.0})
    # A verifier that is always wrong passes the wrong 8B answer (and would flag right ones).
    assert (s["escalations"], s["correct"]) == (0, 0)


def test_cascade_climbs_until_the_answer_is_right_or_the_top():
    res, s = run([P8, P70, P405], "cascade", [0.0, 0.0, 0.0], [300] * 3, [20] * 3, [0.5, 0.85, 0.99],
                 params={"detect_accuracy": 1.0})
    r = res.records
    # 0.5: right on 8B. 0.85: wrong on 8B and 70B, right on 405B. 0.99: beyond every tier.
    assert r.escalations.tolist() == [0, 2, 2]
    assert r.prefill_instance.tolist() == [0, 2, 2]
    assert (s["correct"], s["escalations"]) == (2, 4)
    assert [s["pools"][p]["passes"] for p in ("t8", "t70", "t405")] == [3, 2, 2]


def test_advisor_pass_is_paid_and_lifts_the_answer():
    # Hard request (0.75 > 0.694): 405B reads 800 tokens and writes a 64-token plan, then 8B
    # answers from 864 tokens. Effective capability 0.694 + 0.9 * (0.873 - 0.694) = 0.855.
    res, s = run([P8, P405], "advisor", [0.0], [800], [50], [0.75])
    r = res.records
    assert (s["advised_requests"], s["correct"]) == (1, 1)
    assert r.capability[0] == pytest.approx(0.694 + 0.9 * (0.873 - 0.694))
    assert r.input_tokens[0] == 864 and r.output_tokens[0] == 50
    assert s["pools"]["t405"]["prefill_tokens"] == 800 and s["pools"]["t405"]["decode_tokens"] == 63
    # The executor's 864 tokens, and the router's pass over the prompt: the router's model (8B on H100s)
    # is this pool's, so its pass runs here (simulator/judges.py).
    assert s["pools"]["t8"]["prefill_tokens"] == 864 + 800
    assert s["judgements"]["router"]["pool"] == "t8" and s["judgements"]["router"]["passes"] == 1
    # The final answer is the executor's; both pools served one pass.
    assert (s["pools"]["t8"]["requests"], s["pools"]["t405"]["requests"]) == (1, 0)
    assert (s["pools"]["t8"]["passes"], s["pools"]["t405"]["passes"]) == (1, 1)
    # Easy request: no advice, the executor alone.
    res2, s2 = run([P8, P405], "advisor", [0.0], [800], [50], [0.3])
    assert (s2["advised_requests"], s2["correct"]) == (0, 1)
    assert s2["pools"]["t405"]["prefill_tokens"] == 0
    assert res.records.e2e_s()[0] > res2.records.e2e_s()[0]
    assert res.records.energy_j[0] > res2.records.energy_j[0]


def test_same_seed_same_decisions_for_multi_pass_policies():
    cl = Cluster(parse_cluster({"name": "t", "pools": [P8, P70, P405], "policy": "cascade"}))
    trace = Trace(path="<test>", format="vidur", arrival_s=np.arange(300) * 0.05,
                  input_tokens=np.full(300, 400, dtype=np.int64), output_tokens=np.full(300, 40, dtype=np.int64))
    logs = []
    for _ in range(2):
        wl = make_workload(trace, seed=4)
        res = Simulation(cl, build_policy("cascade", cl.config), wl, seed=4).run()
        logs.append((res.records.decision_log().copy(), res.records.escalations.copy()))
    assert np.array_equal(logs[0][0], logs[1][0]) and np.array_equal(logs[0][1], logs[1][1])
    assert logs[0][1].sum() > 0
