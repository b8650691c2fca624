"""The framework's list path for small stages (`score_list`, `pick_list`) decides exactly as
its array path: same scores to the bit, same picks, same clamp; and the fused TTFT
predictor stays equal to wait + prefill after a pool learns its speed."""
from __future__ import annotations

import numpy as np
import pytest

import scheduler.policy as policy_module
from scheduler.cluster import Cluster
from scheduler.config import SloConfig, parse_cluster
from scheduler.framework import NoParams
from scheduler.plugins import pickers
from scheduler.policy import Policy, PolicySpec
from scheduler.registry import SCORERS, build_policy
from scheduler.types import Request, Stage
from tests.scheduler.test_framework import Fixed, loaded


def busy(cluster: str, seed: int):
    """`loaded`'s snapshot with iterations ending between t = 0 and 1 s (so waits are cut at 0 or not)."""
    config, snap = loaded(cluster, seed)
    rng = np.random.default_rng(seed)
    for i in range(snap.n_instances):
        snap.update(i, int(snap.queued_requests[i]), int(snap.queued_tokens[i]), int(snap.running[i]),
                    int(snap.kv_free[i]), float(rng.uniform(0.0, 1.0)))
    return config, snap


def requests(n: int) -> list[Request]:
    return [Request(rid, 1 + 97 * rid % 6000, 2 + 31 * rid % 500, 0.0) for rid in range(n)]


@pytest.mark.parametrize("cluster, stage", [("gpu-disagg", Stage.PREFILL), ("gpu-disagg", Stage.DECODE),
                                            ("hybrid", Stage.PREFILL), ("hybrid", Stage.DECODE),
                                            ("gpu-colocated", Stage.PREFILL)])
def test_predicted_latency_lists_are_the_arrays_bit_for_bit(cluster, stage):
    config, snap = busy(cluster, seed=7)
    scorer = SCORERS["predicted-latency"](NoParams(), config.slo)
    cands = snap.candidates[stage]
    assert len(cands) > 1
    for req in requests(300):
        now = (req.request_id % 11) / 10  # before, among and after the iterations' ends
        prefill = int(cands[0]) if stage == Stage.DECODE else -1
        want = scorer.score(req, snap, stage, cands, now, prefill).tolist()
        assert scorer.score_list(req, snap, stage, cands.tolist(), now, prefill) == want


@pytest.mark.parametrize("cluster, policy", [("gpu-disagg", "slo-aware"), ("hybrid", "slo-aware"),
                                             ("gpu-colocated", "slo-aware"), ("gpu-mixed", "slo-aware")])
def test_the_list_path_places_as_the_array_path(cluster, policy, monkeypatch):
    config, snap = busy(cluster, seed=11)
    pol = build_policy(policy, config)
    assert pol._scalar
    decided = {}
    for limit in (0, 1 << 20):  # arrays everywhere, then lists everywhere
        monkeypatch.setattr(policy_module, "SCALAR_MAX_CANDIDATES", limit)
        decided[limit] = [pol.decide(req, snap, (req.request_id % 7) / 7, np.random.default_rng(0))
                          for req in requests(500)]
    assert decided[0] == decided[1 << 20]
    assert len({d[1:3] for d in decided[0]}) > 1  # the scores did tell instances apart


class Listed(Fixed):
    """Given scores, whatever their range, with a list twin."""

    name = "listed"

    def score_list(self, req, snap, stage, cands, now_s, prefill_instance):
        return list(self.values[:len(cands)])


@pytest.mark.parametrize("a, b, wb", [
    ([3.0, 0.9, 0.0, -0.0], [0.0, 0.5, 0.0, 0.0], 1.0),  # above 1 clamps to 1
    ([0.2, -5.0, 0.1, 0.2], [0.0, 0.3, 0.0, 0.0], 1.0),  # below 0 clamps to 0
    ([0.2, 0.6, 0.0, 1.0], [9.0, 0.0, 0.0, 1.0], 0.5),  # weights after the clamp
    ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 0.3),  # exact ties: the jitter spreads them
])
def test_the_list_clamp_weights_and_ties_match_the_arrays(a, b, wb, monkeypatch):
    config = parse_cluster({"name": "x", "pools": [{"name": "a", "device": "h100-sxm", "instances": 4,
                                                    "model": "llama-3.1-8b", "role": "both"}]})
    snap = Cluster(config).snapshot()
    spec = PolicySpec("t", (), (("a", 1.0), ("b", wb)), "argmax")
    pol = Policy(spec, [], [(Listed(a), 1.0), (Listed(b), wb)], pickers.Argmax(NoParams(), SloConfig()))
    assert pol._scalar
    picks = {}
    for limit in (0, 16):
        monkeypatch.setattr(policy_module, "SCALAR_MAX_CANDIDATES", limit)
        picks[limit] = [pol.decide(req, snap, 0.0, None).prefill_instance for req in requests(64)]
    assert picks[0] == picks[16]
    if a == b:
        assert len(set(picks[0])) == 4


def test_the_fused_ttft_follows_a_learned_prefill_speed():
    config, snap = busy("gpu-disagg", seed=5)
    cands = snap.candidates[Stage.PREFILL]
    snap.set_learned_speed(int(cands[0]), 2e-4, 0.01)
    for tokens in (1, 700, 9000):
        unfused = snap.predicted_wait_s(cands, 0.3) + snap.predicted_prefill_s(cands, tokens)
        assert snap.predicted_ttft_s(cands, Stage.PREFILL, 0.3, tokens).tolist() == unfused.tolist()
        assert snap.predicted_ttft_list(cands.tolist(), Stage.PREFILL, 0.3, tokens) == unfused.tolist()


@pytest.mark.parametrize("cluster", ["gpu-disagg", "hybrid", "gpu-mixed", "gpu-colocated"])
def test_filters_that_pass_a_whole_stage_are_skipped_and_decide_the_same(cluster):
    """same-model passes prefill, and decode where every pool serves one model; skipping it
    there changes no decision (each filter asked on every stage decides the same)."""
    config, snap = busy(cluster, seed=13)
    pol = build_policy("slo-aware", config)
    every = build_policy("slo-aware", config)
    decided = [pol.decide(req, snap, 0.2, np.random.default_rng(0)) for req in requests(300)]
    every._bind(snap)
    every._stage_filters = {stage: list(every._filters) for stage in (Stage.PREFILL, Stage.DECODE)}
    assert [every.decide(req, snap, 0.2, np.random.default_rng(0)) for req in requests(300)] == decided
    names = {stage: [f.name for f in fs] for stage, fs in pol._stage_filters.items()}
    assert "same-model" not in names[Stage.PREFILL]
    assert ("same-model" in names[Stage.DECODE]) == (not snap.single_model)


def test_list_copies_start_with_the_first_list_read_and_follow_every_write():
    """A snapshot keeps no list copies until a list predictor reads them; from then on every
    row write reaches them, so they equal the arrays."""
    config, snap = busy("gpu-disagg", seed=3)
    assert not snap.lists
    build_policy("least-loaded", config).decide(requests(1)[0], snap, 0.0, np.random.default_rng(0))
    assert not snap.lists  # least-loaded reads arrays only
    cands = snap.candidates[Stage.DECODE].tolist()
    snap.predicted_tpot_list(cands, 100)
    assert snap.lists
    for i in range(snap.n_instances):
        snap.update(i, i % 3, 50 * i, i % 7, int(snap.kv_capacity[i]) - 1000 * i, 0.1 * i)
    assert snap._ready == snap.ready_s.tolist()
    assert snap._tpot_base == snap.tpot_base_s.tolist()
    assert snap._tpot_per_token == snap.tpot_per_token_s.tolist()


@pytest.mark.parametrize("cluster", ["gpu-disagg", "hybrid"])
def test_predicted_latency_list_scores_are_the_array_scores(cluster):
    """The list predictors with `slo` (prediction and score in one pass) give predicted-latency's
    array scores bit for bit, on a one-pool stage and on stages spanning pools."""
    config, snap = busy(cluster, seed=11)
    scorer = build_policy("slo-aware", config)._scorers[0][0]
    for stage in (Stage.PREFILL, Stage.DECODE):
        cands = snap.candidates[stage]
        for req in requests(40):
            assert scorer.score_list(req, snap, stage, cands.tolist(), 0.25, -1) == \
                scorer.score(req, snap, stage, cands, 0.25, -1).tolist()
