"""Decisions of the economics policies on small hand-built snapshots (table-driven, exact).

Each case builds a tiny cluster, sets instance state through `ClusterSnapshot.update`
(the same call the runtimes make) and checks the instance the policy picks.
"""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, SloConfig, parse_cluster
from scheduler.plugins.staging import Advisor, AdvisorParams, Escalate, EscalateParams
from scheduler.registry import build_policy
from scheduler.types import PassKind, Request


def pool(name, device, model, role="both", instances=1, **kw):
    return {"name": name, "device": device, "instances": instances, "model": model, "role": role, **kw}


def make(pools, policy="least-loaded", slo=None):
    doc = {"name": "t", "pools": pools, "policy": policy}
    if slo:
        doc["slo"] = slo
    return Cluster(parse_cluster(doc))


def busy(snap, i, queued=0, queued_tokens=0, running=0):
    """Set instance i's state (KV reserved in proportion to what it holds)."""
    cap = snap._kv_capacity[i]
    snap.update(i, queued, queued_tokens, running, cap - min(cap, 1000 * (queued + running)), 0.0)


def decide(cl, policy, req, state=(), params=None):
    snap = cl.snapshot()
    for args in state:
        busy(snap, *args)
    pol = build_policy(policy, cl.config, overrides=params)
    return pol.decide(req, snap, 0.0, np.random.default_rng(0))


# instance 0: H100 ($2.99/h), 1: B200 ($4.99/h, 2.25x the FLOP/s and 2.4x the bandwidth),
# 2: an owned M4 Max laptop ($0/h, slow): all serving Llama-3.1-8B (int4 on the laptop).
MIXED = [pool("h100", "h100-sxm", "llama-3.1-8b", chips_per_instance=1),
         pool("b200", "b200", "llama-3.1-8b", chips_per_instance=1),
         pool("laptop", "m4-max", "llama-3.1-8b", quantization="int4", max_batch=4, max_batch_tokens=4096)]


@pytest.mark.parametrize("inp, out, state, cost, energy, why", [
    (100, 10, (), 2, 1, "a short request meets the SLO on the laptop, which costs $0/h; per token the laptop "
                        "draws 86 W x 3.1 ms = 0.26 J at its batch of 4, the B200 783 W x 0.09 ms = 0.07 J "
                        "at a batch of 32, so energy goes to the B200"),
    (500, 200, (), 2, 1, "still within the laptop's TTFT and TPOT at half the SLO"),
    (3000, 200, (), 1, 1, "a 3k-token prompt takes the laptop over the TTFT target; B200 does the work in "
                          "less than 3/5 of the H100 time, so it is cheaper and lower-energy per request"),
    (8000, 100, (), 1, 1, "long prompt: B200 again"),
    (3000, 200, ((1, 300, 0, 0),), 0, 0, "B200 has no free decode slot (load >= 1): the H100 meets the SLO"),
    (100, 10, ((2, 4, 0, 0),), 0, 1, "laptop slots all taken: the cheapest of the rest is the H100, since a "
                                     "10-token answer is mostly fixed per-layer time the B200 does not shorten, "
                                     "billed at $2.99/h instead of $4.99/h; the B200 still spends fewer joules"),
    (100, 10, ((1, 300, 0, 0),), 2, 0, "B200 full: the laptop is still cheapest; the H100 (700 W at "
                                       "batch 32) beats the laptop on joules"),
])
def test_cost_and_energy_aware_pick_the_cheapest_placement_meeting_the_slo(inp, out, state, cost, energy, why):
    cl = make(MIXED)
    assert decide(cl, "cost-aware", Request(0, inp, out, 0.0), state).prefill_instance == cost, why
    assert decide(cl, "energy-aware", Request(0, inp, out, 0.0), state).prefill_instance == energy, why


def test_cost_aware_falls_back_to_the_fastest_when_nothing_meets_the_slo():
    # Every slot taken everywhere: no candidate meets the SLO; the lowest predicted TTFT wins,
    # and all three have the same (empty) prefill queue, so the fastest prefill: B200.
    cl = make(MIXED)
    state = ((0, 300, 0, 0), (1, 300, 0, 0), (2, 4, 0, 0))
    assert decide(cl, "cost-aware", Request(0, 3000, 100, 0.0), state).prefill_instance == 1


def test_cost_aware_compares_disaggregated_and_colocated_on_the_whole_request():
    # A prefill-only H100 + decode H100 vs a colocated B200: the prefill stage scores the
    # prefill pool with the decode pool's per-token cost added, so the choice is not biased
    # toward prefill-only instances that "have no decode cost".
    cl = make([pool("pre", "h100-sxm", "llama-3.1-8b", "prefill", chips_per_instance=1),
               pool("dec", "h100-sxm", "llama-3.1-8b", "decode", chips_per_instance=1),
               pool("b200", "b200", "llama-3.1-8b", chips_per_instance=1)])
    snap = cl.snapshot()
    assert snap.partner_decode_usd_per_token[0] > 0.0
    assert snap.partner_decode_usd_per_token[2] == 0.0
    d = decide(cl, "cost-aware", Request(0, 2000, 400, 0.0))
    assert (d.prefill_instance, d.decode_instance) == (2, 2)


# instance 0: laptop (8B int4: capability 0.694 x 0.961 = 0.667 after the 4-bit penalty, edge);
# 1: cloud 70B (capability 0.836).
INT4_8B = 0.694 * 0.961
EDGE_CLOUD = [pool("laptop", "m4-max", "llama-3.1-8b", quantization="int4", max_batch=4, max_batch_tokens=4096),
              pool("cloud", "h100-sxm", "llama-3.1-70b", quantization="fp8", chips_per_instance=2)]


@pytest.mark.parametrize("difficulty, rid, params, state, expected, why", [
    (0.50, 0, {}, (), 0, "within the edge model's reach: local"),
    (INT4_8B, 0, {}, (), 0, "exactly at the edge model's int4 capability: local"),
    (0.68, 0, {}, (), 1, "within bf16 8B's reach but not int4's (96.1% recovery): cloud"),
    (0.70, 0, {}, (), 1, "beyond the edge model: cloud"),
    (0.50, 0, {}, ((0, 4, 0, 0),), 1, "laptop's slots all taken: it cannot meet the SLO, cloud"),
    (0.50, 0, {"router_accuracy": 0.0}, (), 1, "a router that is always wrong sends easy requests to the cloud"),
    (0.90, 0, {"router_accuracy": 0.0}, (), 0, "... and hard ones to the laptop"),
    # unit_hash(request id, seed 0) decides which requests an 80%-accurate router misjudges:
    # request 0 draws 0.11 (judged right), request 3 draws 0.87 (misjudged).
    (0.50, 0, {"router_accuracy": 0.8}, (), 0, "hash 0.11 < 0.8: judged right, local"),
    (0.50, 3, {"router_accuracy": 0.8}, (), 1, "hash 0.87 >= 0.8: misjudged as too hard, cloud"),
])
def test_local_first(difficulty, rid, params, state, expected, why):
    from scheduler.plugins.coin import unit_hash

    assert unit_hash(0, 0) < 0.8 <= unit_hash(3, 0)
    cl = make(EDGE_CLOUD)
    req = Request(rid, 500, 100, 0.0, difficulty=difficulty)
    assert decide(cl, "local-first", req, state, params).prefill_instance == expected, why


def test_local_first_leaves_long_prompts_to_the_cloud():
    # 4,000 prompt tokens take the laptop past half the 2 s TTFT SLO.
    cl = make(EDGE_CLOUD)
    assert decide(cl, "local-first", Request(0, 4000, 100, 0.0, difficulty=0.1)).prefill_instance == 1


# instance 0: 8B (0.694), 1-2: 70B (0.836), 3: 405B (0.873).
TIERS = [pool("t8", "h100-sxm", "llama-3.1-8b", chips_per_instance=1),
         pool("t70", "h100-sxm", "llama-3.1-70b", quantization="fp8", chips_per_instance=2, instances=2),
         pool("t405", "h100-sxm", "llama-3.1-405b", quantization="fp8", chips_per_instance=8)]


@pytest.mark.parametrize("min_capability, state, expected", [
    (0.0, (), 0),            # the lowest tier first
    (0.836, (), 2),          # re-served one tier up: a 70B instance (the tie broken by id jitter)
    (0.836, ((2, 2, 4000, 0),), 1),  # the 70B instance without a prefill queue
    (0.873, (), 3),          # top tier
])
def test_cascade_places_on_the_lowest_tier_allowed(min_capability, state, expected):
    cl = make(TIERS)
    req = Request(0, 500, 100, 0.0, min_capability=min_capability, difficulty=0.9)
    assert decide(cl, "cascade", req, state).prefill_instance == expected


def test_cascade_rejects_a_floor_no_tier_meets_with_a_clear_reason():
    d = decide(make(TIERS), "cascade", Request(0, 500, 100, 0.0, min_capability=0.95))
    assert d.rejected and "capable enough" in d.reject_reason


@pytest.mark.parametrize("capability, correct, accuracy, attempt, expected", [
    (0.694, False, 1.0, 0, 0.836),   # wrong, caught: one tier up
    (0.836, False, 1.0, 1, 0.873),   # wrong again: the top tier
    (0.873, False, 1.0, 2, None),    # max_attempts 3 reached
    (0.873, False, 1.0, 0, None),    # already on the top tier: the answer stands
    (0.694, True, 1.0, 0, None),     # right, and a perfect verifier agrees
    (0.694, False, 0.0, 0, None),    # a verifier that is always wrong misses the failure...
    (0.694, True, 0.0, 0, 0.836),    # ...and escalates a right answer
])
def test_escalate_after_a_pass(capability, correct, accuracy, attempt, expected):
    cl = make(TIERS)
    snap = cl.snapshot()
    esc = Escalate(EscalateParams(detect_accuracy=accuracy, max_attempts=3), SloConfig())
    orig = Request(7, 500, 100, 0.0, difficulty=0.86)
    nxt = esc.after(orig, attempt, capability, correct, snap, 12.5)
    if expected is None:
        assert nxt is None
    else:
        req, tag, kind = nxt
        assert (req.min_capability, tag, kind) == (expected, attempt + 1, PassKind.ESCALATION)
        assert (req.request_id, req.input_tokens, req.output_tokens, req.arrival_s) == (7, 500, 100, 12.5)


def test_advisor_stages():
    cl = make(TIERS)
    snap = cl.snapshot()
    adv = Advisor(AdvisorParams(advisor_plan_tokens=64, advisor_lift=0.5), SloConfig())
    easy = Request(1, 500, 100, 0.0, difficulty=0.6)
    hard = Request(2, 500, 100, 0.0, difficulty=0.8)
    assert adv.first(easy, snap) == (easy, 0, PassKind.FIRST)
    first, tag, kind = adv.first(hard, snap)
    # The advisor pass: the top tier reads the 500-token context and writes a 64-token plan.
    assert (first.min_capability, first.input_tokens, first.output_tokens, tag, kind) == (0.873, 500, 64, 1,
                                                                                           PassKind.FIRST)
    req, tag2, kind = adv.after(hard, tag, 0.873, True, snap, 3.0)
    # The executor pass reads prompt + plan and writes the answer, on the lowest tier.
    assert (req.input_tokens, req.output_tokens, req.min_capability, tag2, kind) == (564, 100, 0.0, 2, PassKind.ADVICE)
    assert adv.after(hard, tag2, 0.694, False, snap, 9.0) is None
    # Effective capability of the advised answer: halfway (lift 0.5) from 0.694 to 0.873.
    assert adv.credit(hard, tag2, 0.694, snap) == pytest.approx(0.7835)
    assert adv.credit(easy, 0, 0.694, snap) == 0.694
    # Placement: the advisor pass goes to the 405B instance, the executor pass to the 8B one.
    assert decide(cl, "advisor", first).prefill_instance == 3
    assert decide(cl, "advisor", req).prefill_instance == 0


MIXED_DISAGG = [pool("col", "h100-sxm", "llama-3.1-8b", chips_per_instance=1, instances=2),
                pool("pre", "h100-sxm", "llama-3.1-8b", "prefill", chips_per_instance=1),
                pool("dec", "h100-sxm", "llama-3.1-8b", "decode", chips_per_instance=1)]


# On an idle H100 (Llama-3.1-8B) a 1,024-token prefill is predicted at 27 ms, 4,096 tokens at 101 ms.
@pytest.mark.parametrize("inp, slo, params, state, expected, why", [
    (500, {}, {}, (), (1, 1), "short prompt, idle: colocated (the tie broken by id jitter)"),
    (3900, {}, {}, (), (1, 1), "96 ms of prefill stalls colocated decode less than the 100 ms TPOT SLO"),
    (4096, {}, {}, (), (2, 3), "101 ms would stall colocated decode past the TPOT SLO: disaggregated"),
    (1024, {"ttft_s": 0.25, "tpot_s": 0.025}, {}, (), (2, 3), "27 ms > a 25 ms TPOT SLO: disaggregated"),
    (500, {}, {"disagg_min_prompt_tokens": 400}, (), (2, 3), "an explicit prompt-length threshold"),
    (500, {}, {}, ((0, 8, 40000), (1, 8, 40000)), (2, 3), "every colocated instance has > 0.5 s of prefill queued"),
    (500, {}, {}, ((1, 8, 40000),), (0, 0), "one colocated instance free: colocated there"),
    (4096, {}, {}, ((2, 8, 40000),), (1, 1), "long, but the prefill-only instance is backed up: colocated"),
])
def test_conditional_disagg(inp, slo, params, state, expected, why):
    cl = make(MIXED_DISAGG, slo=slo or None)
    d = decide(cl, "conditional-disagg", Request(0, inp, 100, 0.0), state, params)
    assert (d.prefill_instance, d.decode_instance) == expected, why


@pytest.mark.parametrize("policy, needle", [
    ({"name": "cascade", "staging": "retry"}, "unknown staging 'retry'"),
    ({"name": "local-first", "params": {"router_accuracy": 1.5}}, "policy.params.router_accuracy"),
    ({"name": "cascade", "params": {"detect_accuracy": "high"}}, "policy.params.detect_accuracy"),
    ({"name": "cascade", "params": {"max_attempts": 0}}, "policy.params.max_attempts"),
    ({"name": "advisor", "params": {"advisor_plan_tokens": 1.5}}, "policy.params.advisor_plan_tokens"),
    ({"name": "cost-aware", "scorers": {"predicted-cost": "lots"}}, "policy.scorers.predicted-cost"),
    ({"name": "thrifty"}, "unknown policy 'thrifty'"),
])
def test_bad_policy_config_names_what_fails(policy, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        cl = make(TIERS, policy=policy)
        build_policy(cl.config.policy, cl.config)


def test_staging_none_turns_a_multi_pass_preset_into_one_pass():
    cl = make(TIERS, policy={"name": "cascade", "staging": "none"})
    assert build_policy(cl.config.policy, cl.config).staging is None


@pytest.mark.parametrize("name, policy, staging", [
    ("edge-cloud", "local-first", "escalate"),
    ("cloud-only", "least-loaded", None),
    ("advisor", "advisor", "advisor"),
    ("frontier", "least-loaded", None),
    ("tiers", "cascade", "escalate"),
    ("cross-device", "slo-aware", None),
    ("gpu-mixed", "conditional-disagg", None),
])
def test_example_clusters_build_with_their_policies(name, policy, staging):
    from pathlib import Path

    from scheduler.config import load_cluster

    config = load_cluster(Path(__file__).resolve().parents[2] / "deploy" / "clusters" / f"{name}.yaml")
    cl = Cluster(config)
    pol = build_policy(config.policy, config)
    assert pol.name == policy
    assert (pol.staging.name if pol.staging else None) == staging
    assert cl.snapshot().n_instances == sum(p.instances for p in config.pools)


def test_cross_device_cluster_hands_h100_prefill_to_h200_decode():
    from pathlib import Path

    from scheduler.config import load_cluster

    config = load_cluster(Path(__file__).resolve().parents[2] / "deploy" / "clusters" / "cross-device.yaml")
    cl = Cluster(config)
    d = decide(cl, "slo-aware", Request(0, 1000, 100, 0.0))
    assert cl.pool_of(d.prefill_instance).perf.device.name == "h100-sxm"
    assert cl.pool_of(d.decode_instance).perf.device.name == "h200"
