"""Capacity planner: workload statistics, per-option capacity, MILP optimality against brute force,
quality floor, infeasibility messages, the cluster YAML, and plan + simulation on the real trace."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.types import Role
from simulator.plan import (HEADROOM_BACKOFF, PlanError, characterize, cluster_document, cluster_yaml,
                            derive_capacities, load_menu, parse_menu, plan_and_verify, plan_cluster, solve_plan,
                            stats_from_lengths)
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload
from workers.devices import get_device
from workers.models import get_model
from workers.perf import InstancePerf

ROOT = Path(__file__).resolve().parents[2]
MENU = ROOT / "deploy" / "plan" / "menu.yaml"


@pytest.fixture(scope="module")
def conv_stats():
    """The first 2,000 rows of the built-in Azure 2023 conversation trace, at 100 req/s."""
    trace = read_trace(builtin_trace_path(), max_rows=2000)
    return stats_from_lengths(trace.input_tokens, trace.output_tokens, 100.0)


def menu_of(devices, models, **defaults):
    return parse_menu({"defaults": defaults, "devices": devices, "models": models}, "test-menu.yaml")


# ---------------------------------------------------------------------------
# Workload statistics


def test_stats_formulas_on_a_hand_example():
    # Requests (i, o): (100, 1), (300, 3), (500, 5): decode steps o - 1 = 0, 2, 4.
    s = stats_from_lengths([100, 300, 500], [1, 3, 5], 10.0)
    assert s.mean_input_tokens == 300.0
    assert s.decode_steps == 2.0
    assert s.input_pair_tokens == pytest.approx((100**2 + 300**2 + 500**2) / 3 / 300)
    # Weighted by decode steps: ((300 + 1.5) * 2 + (500 + 2.5) * 4) / 6, ((300 + 3) * 2 + (500 + 5) * 4) / 6.
    assert s.decode_context_tokens == pytest.approx((301.5 * 2 + 502.5 * 4) / 6)
    assert s.decode_kv_tokens == pytest.approx((303 * 2 + 505 * 4) / 6)
    assert s.prefill_tokens_per_s == 3000.0
    assert s.decode_tokens_per_s == 20.0


def test_characterize_reads_the_workload():
    trace = read_trace(builtin_trace_path(), max_rows=500)
    wl = make_workload(trace, n_requests=500, rate_rps=42.0, seed=3)
    s = characterize(wl)
    assert s.rate_rps == 42.0 and s.requests == 500
    assert s.mean_input_tokens == pytest.approx(float(np.mean(trace.input_tokens)))
    assert s.mean_output_tokens == pytest.approx(float(np.mean(trace.output_tokens)))


# ---------------------------------------------------------------------------
# Per-option capacity: the operating points sit exactly at the SLO boundaries


def test_capacity_operating_points_meet_the_slos(conv_stats):
    ttft, tpot = 0.4, 0.02
    menu = menu_of(["h100-sxm"], ["llama-3.1-8b"], max_batch=1024)
    caps, excluded, _ = derive_capacities(menu.options, conv_stats, ttft, tpot)
    assert not excluded
    by_role = {c.role: c for c in caps}
    perf = InstancePerf(get_device("h100-sxm"), get_model("llama-3.1-8b"), 1)
    ctx = conv_stats.decode_context_tokens

    dec = by_role[Role.DECODE]
    b = dec.decode_batch
    kv_limit = int(perf.kv_capacity_tokens // conv_stats.decode_kv_tokens)
    assert perf.decode_step_s(b, b * ctx) <= tpot
    assert b == kv_limit or perf.decode_step_s(b + 1, (b + 1) * ctx) > tpot  # largest such batch
    assert dec.requests_per_s == pytest.approx(b / dec.decode_step_s / conv_stats.decode_steps)

    pre = by_role[Role.PREFILL]
    t = pre.prefill_batch_tokens
    assert pre.prefill_iteration_s <= ttft / 2
    assert t == 16384 or pre.prefill_iteration_s * (t + 1) / t > ttft / 2 * 0.999
    assert pre.requests_per_s == pytest.approx(t / pre.prefill_iteration_s / conv_stats.mean_input_tokens)

    both = by_role[Role.BOTH]
    # Prefill-first stalls stretch decode steps by 1 / (1 - f): still within the TPOT SLO.
    assert both.decode_step_s / (1 - both.prefill_share) <= tpot
    tau = conv_stats.mean_input_tokens / both.prefill_tokens_per_s + conv_stats.decode_steps / both.decode_tokens_per_s
    assert both.requests_per_s == pytest.approx(1 / tau)
    # A colocated instance serves fewer requests than a prefill-only or a decode-only one.
    assert both.requests_per_s < min(pre.requests_per_s, dec.requests_per_s)


# ---------------------------------------------------------------------------
# Optimality against brute force


def _feasible(caps, counts, rate, headroom):
    """Requests/s the counts can carry: per model, colocated + min(prefill, decode)."""
    served = 0.0
    for model in {c.model for c in caps}:
        cap = {role: sum(headroom * c.requests_per_s * n for c, n in zip(caps, counts)
                         if c.model == model and c.role == role) for role in Role}
        served += cap[Role.BOTH] + min(cap[Role.PREFILL], cap[Role.DECODE])
    return served >= rate * (1 - 1e-9)


def _min_flow_energy(caps, counts, rate, headroom):
    """Least per-request power to route `rate` through fixed counts (None if impossible).

    A min-cost flow on a series-parallel network (source -> colocated -> sink, or source ->
    prefill -> model -> decode -> sink), which the greedy cheapest-path augmentation solves exactly."""
    left = [headroom * c.requests_per_s * n for c, n in zip(caps, counts)]
    need, total = rate, 0.0
    while need > 1e-9:
        best = None
        for i, c in enumerate(caps):
            if left[i] <= 1e-12:
                continue
            if c.role == Role.BOTH:
                path = (c.power_per_request_j, [i])
            elif c.role == Role.PREFILL:
                decodes = [j for j, d in enumerate(caps) if d.role == Role.DECODE and d.model == c.model
                           and left[j] > 1e-12]
                if not decodes:
                    continue
                j = min(decodes, key=lambda j: caps[j].power_per_request_j)
                path = (c.power_per_request_j + caps[j].power_per_request_j, [i, j])
            else:
                continue
            if best is None or path[0] < best[0]:
                best = path
        if best is None:
            return None
        amount = min(need, *(left[i] for i in best[1]))
        for i in best[1]:
            left[i] -= amount
        need -= amount
        total += amount * best[0]
    return total


def _brute_force(caps, rate, headroom, objective):
    best = None
    for counts in itertools.product(*(range(c.max_instances + 1) for c in caps)):
        if not _feasible(caps, counts, rate, headroom):
            continue
        if objective == "cost":
            value = sum(c.price_usd_per_hour * n for c, n in zip(caps, counts))
        else:
            flow = _min_flow_energy(caps, counts, rate, headroom)
            value = sum(c.power_per_instance_w * n for c, n in zip(caps, counts)) + flow
        if best is None or value < best[0] - 1e-9:
            best = (value, counts)
    return best


@pytest.mark.parametrize("objective", ["cost", "energy"])
@pytest.mark.parametrize("rate", [37.0, 100.0])
def test_milp_matches_brute_force_on_one_model(conv_stats, objective, rate):
    menu = parse_menu({"defaults": {"max_instances": 3},
                       "devices": ["h100-sxm", "b200", {"device": "h200", "roles": ["both"]}],
                       "models": ["llama-3.1-8b"]}, "bf.yaml")
    caps, _, _ = derive_capacities(menu.options, conv_stats, 2.0, 0.1)
    assert len(caps) == 7  # 4^7 = 16,384 count vectors
    plan = solve_plan(caps, rate, objective=objective, headroom=0.7)
    value, counts = _brute_force(caps, rate, 0.7, objective)
    assert plan.objective_value == pytest.approx(value, rel=1e-6)
    planned = {p.capacity.name: p.instances for p in plan.pools}
    assert _feasible(caps, [planned.get(c.name, 0) for c in caps], rate, 0.7)
    assert sum(p.requests_per_s for p in plan.pools if p.capacity.role != Role.DECODE) == pytest.approx(rate)


def test_milp_matches_brute_force_across_models_and_keeps_kv_on_one_model(conv_stats):
    # 3B prefill is the cheapest prefill and 8B decode on b200 a cheap decode, but KV cannot cross models.
    menu = parse_menu({"defaults": {"max_instances": 4}, "options": [
        {"device": "h100-sxm", "model": "llama-3.2-3b", "roles": ["prefill"]},
        {"device": "h100-sxm", "model": "llama-3.1-8b", "roles": ["prefill", "decode"]},
        {"device": "b200", "model": "llama-3.1-8b", "roles": ["decode"]},
        {"device": "b200", "model": "llama-3.2-3b", "roles": ["decode", "both"]},
    ]}, "bf2.yaml")
    caps, _, _ = derive_capacities(menu.options, conv_stats, 2.0, 0.1)
    assert len(caps) == 6
    for rate in (60.0, 150.0):
        plan = solve_plan(caps, rate, objective="cost", headroom=0.7)
        value, _ = _brute_force(caps, rate, 0.7, "cost")
        assert plan.usd_per_hour == pytest.approx(value, rel=1e-9)
        for model in ("llama-3.2-3b", "llama-3.1-8b"):
            flow = {role: sum(p.requests_per_s for p in plan.pools
                              if p.capacity.model == model and p.capacity.role == role) for role in Role}
            assert flow[Role.PREFILL] == pytest.approx(flow[Role.DECODE], abs=1e-6)


def test_mix_objective_interpolates_between_cost_and_energy(conv_stats):
    menu = menu_of(["h100-sxm", "b200", "h200"], ["llama-3.1-8b"], max_instances=20)
    caps, _, _ = derive_capacities(menu.options, conv_stats, 2.0, 0.1)
    by_cost = solve_plan(caps, 200.0, objective="cost")
    by_energy = solve_plan(caps, 200.0, objective="energy")
    w0 = solve_plan(caps, 200.0, objective="mix", energy_weight=0.0)
    w1 = solve_plan(caps, 200.0, objective="mix", energy_weight=1.0)
    half = solve_plan(caps, 200.0, objective="mix", energy_weight=0.5)
    assert w0.usd_per_hour == pytest.approx(by_cost.usd_per_hour) and w0.objective_value == pytest.approx(1.0)
    assert w1.power_w == pytest.approx(by_energy.power_w, rel=1e-6) and w1.objective_value == pytest.approx(1.0)
    assert by_cost.usd_per_hour <= half.usd_per_hour <= by_energy.usd_per_hour + 1e-9
    assert by_energy.power_w <= half.power_w + 1e-6 <= by_cost.power_w + 1e-3


def test_equal_cost_plans_prefer_fewer_pools(conv_stats):
    # Two identical menu entries at the same price: the plan uses one pool, not a split.
    menu = parse_menu({"options": [
        {"device": "h100-sxm", "model": "llama-3.1-8b", "roles": ["both"], "chips_per_instance": 1},
        {"device": "h100-sxm", "model": "llama-3.1-8b", "roles": ["both"], "chips_per_instance": 2,
         "price_usd_per_hour": 5.98}]}, "tie.yaml")
    caps, _, _ = derive_capacities(menu.options, conv_stats, 2.0, 0.1)
    plan = solve_plan(caps, 50.0)
    assert len(plan.pools) == 1


# ---------------------------------------------------------------------------
# Quality floor


def test_quality_floor_excludes_low_capability_models(conv_stats):
    menu = menu_of(["h100-sxm", "b200"], ["llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b"])
    free, _, _ = plan_cluster(conv_stats, menu, ttft_slo_s=2.0, tpot_slo_s=0.1)
    assert {p.capacity.model for p in free.pools} == {"llama-3.2-3b"}  # cheapest without a floor
    floored, caps, excluded = plan_cluster(conv_stats, menu, ttft_slo_s=2.0, tpot_slo_s=0.1, quality_floor=0.69)
    assert {p.capacity.model for p in floored.pools} <= {"llama-3.1-8b", "llama-3.1-70b"}
    assert all(c.capability >= 0.69 for c in caps)
    assert any("below the quality floor 0.69" in e.reason and "llama-3.2-3b" in e.label for e in excluded)
    assert floored.usd_per_hour > free.usd_per_hour
    high, _, _ = plan_cluster(conv_stats, menu, ttft_slo_s=2.0, tpot_slo_s=0.1, quality_floor=0.8)
    assert {p.capacity.model for p in high.pools} == {"llama-3.1-70b"}


# ---------------------------------------------------------------------------
# Infeasible problems and bad input: the message names the constraint


GPU_8B = {"devices": ["h100-sxm", "b200"], "models": ["llama-3.1-8b"]}


def _fastest_step_ms(conv_stats):
    ctx = conv_stats.decode_context_tokens
    steps = {name: InstancePerf(get_device(name), get_model("llama-3.1-8b"), 1).decode_step_s(1, ctx)
             for name in ("h100-sxm", "b200")}
    name = min(steps, key=steps.get)
    return name, steps[name] * 1e3


@pytest.mark.parametrize("menu, kwargs, pattern", [
    ({"devices": ["h100-sxm"], "models": ["llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b"]}, {"quality_floor": 0.9},
     r"^quality floor 0\.9 exceeds every menu model's capability \(best: llama-3\.1-70b 0\.836\)$"),
    ({"devices": ["phone"], "models": ["llama-3.2-1b", "llama-3.1-70b"]}, {"quality_floor": 0.8},
     r"^quality floor 0\.8: the models that meet it \(llama-3\.1-70b\) fit no menu device \(phone/llama-3\.1-70b: "),
    (GPU_8B, {"tpot_slo_s": 0.002},
     r"^TPOT SLO 2 ms is below the fastest decode step of any option \(b200x1/llama-3\.1-8b: \d\.\d ms at batch 1"),
    (GPU_8B, {"ttft_slo_s": 0.01},
     r"^TTFT SLO 0\.01 s is too tight: a p90 prompt \(1,990 tokens\) takes [\d.]+ ms to prefill on the fastest "
     r"option \(b200x1/llama-3\.1-8b\)"),
    ({"devices": [{"device": "h100-sxm", "max_instances": 2}], "models": ["llama-3.1-8b"]}, {},
     r"^no feasible cluster under max_instances: with every option at its max_instances the menu serves at most "
     r"[\d.]+ req/s at headroom 0\.7 .* but the workload arrives at 100\.0 req/s"),
    ({"devices": [{"device": "h100-sxm", "roles": ["prefill"]}], "models": ["llama-3.1-8b"]}, {},
     r"no option can serve a request end to end: .* disaggregated prefill and decode must share a model$"),
    ({"options": [{"device": "h100-sxm", "model": "llama-3.2-3b", "roles": ["prefill"]},
                  {"device": "h100-sxm", "model": "llama-3.1-8b", "roles": ["decode"]}]}, {},
     r"no model has both a prefill option \(llama-3\.2-3b\) and a decode option \(llama-3\.1-8b\); disaggregated "
     r"prefill and decode must share a model$"),
])
def test_infeasible_problems_name_the_failing_constraint(conv_stats, menu, kwargs, pattern):
    args = {"ttft_slo_s": 2.0, "tpot_slo_s": 0.1, **kwargs}
    with pytest.raises(PlanError, match=pattern):
        plan_cluster(conv_stats, parse_menu(menu, "m.yaml"), **args)


def test_tpot_message_names_the_truly_fastest_option(conv_stats):
    name, step_ms = _fastest_step_ms(conv_stats)
    with pytest.raises(PlanError) as info:
        plan_cluster(conv_stats, parse_menu(GPU_8B, "m.yaml"), ttft_slo_s=2.0, tpot_slo_s=0.002)
    assert f"({name}x1/llama-3.1-8b: {step_ms:.1f} ms" in str(info.value)


@pytest.mark.parametrize("menu, message", [
    ({"devices": ["h100"], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].device': unknown device 'h100'; known devices: b200, groq-lpu, h100-sxm"),
    ({"devices": ["h100-sxm"], "models": ["llama-9b"]}, "m.yaml: key 'models[0]': unknown model 'llama-9b'"),
    ({"devices": [{"device": "h100-sxm", "price_usd_per_chip_hour": "cheap"}], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].price_usd_per_chip_hour': expected a number, got 'cheap'"),
    ({"devices": [{"device": "h100-sxm", "max_instances": -1}], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].max_instances': must be >= 0, got -1"),
    ({"devices": [{"device": "h100-sxm", "max_instances": 2.5}], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].max_instances': expected an integer, got 2.5"),
    ({"devices": [{"device": "h100-sxm", "roles": ["both", "colocated"]}], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].roles[1]': unknown role 'colocated'"),
    ({"devices": [{"device": "h100-sxm", "prise": 3}], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'devices[0].prise': unknown key"),
    ({"defaults": {"memory_utilization": 1.5}, "devices": ["h100-sxm"], "models": ["llama-3.1-8b"]},
     "m.yaml: key 'defaults.memory_utilization': must be <= 1, got 1.5"),
    ({"devices": ["h100-sxm"], "models": [{"model": "llama-3.1-8b", "quantization": "fp4"}]},
     "m.yaml: key 'models[0].quantization': unknown 'fp4'"),
    ({"options": [{"device": "h100-sxm", "model": "llama-3.1-70b", "chips_per_instance": 1}]},
     "m.yaml: options[0]: llama-3.1-70b (141.1 GB of weights) leaves 0 tokens of KV in 1 x h100-sxm"),
    ({"devices": ["h100-sxm"]}, "m.yaml: key 'models': devices are listed but no models"),
])
def test_bad_menus_name_the_key(menu, message):
    with pytest.raises(PlanError) as info:
        parse_menu(menu, "m.yaml")
    assert str(info.value).startswith(message)


def test_cross_product_skips_pairs_that_do_not_fit():
    menu = menu_of(["phone", "h100-sxm"], ["llama-3.2-1b", "llama-3.1-8b"])
    labels = {o.label for o in menu.options}
    assert labels == {"phonex1/llama-3.2-1b", "h100-sxmx1/llama-3.2-1b", "h100-sxmx1/llama-3.1-8b"}
    assert [e.label for e in menu.excluded] == ["phone/llama-3.1-8b"]


# ---------------------------------------------------------------------------
# The cluster YAML


def test_plan_yaml_round_trips_through_parse_cluster(conv_stats):
    menu = load_menu(MENU)
    plan, _, _ = plan_cluster(conv_stats, menu, ttft_slo_s=1.0, tpot_slo_s=0.05, quality_floor=0.8)
    doc = cluster_document(plan, name="planned", ttft_slo_s=1.0, tpot_slo_s=0.05)
    text = cluster_yaml(doc, "a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n")
    config = parse_cluster(yaml.safe_load(text), "planned.yaml")
    cluster = Cluster(config)  # devices, models, chips and prefill/decode pairing all check out
    assert config.slo.ttft_s == 1.0 and config.slo.tpot_s == 0.05 and config.policy.name == "slo-aware"
    assert [(p.name, p.instances, p.role) for p in config.pools] == [
        (p.capacity.name, p.instances, p.capacity.role) for p in plan.pools]
    for pool, planned in zip(cluster.pools, plan.pools):
        cap = planned.capacity
        assert pool.perf.model.capability >= 0.8
        assert pool.perf.chips == cap.option.chips
        assert pool.perf.price_usd_per_s * 3600 == pytest.approx(cap.price_usd_per_hour)
        if cap.role != Role.PREFILL:
            assert pool.config.max_batch == cap.decode_batch
        if cap.role != Role.DECODE:
            assert pool.config.max_batch_tokens == cap.prefill_batch_tokens


def test_example_menu_loads():
    menu = load_menu(MENU)
    assert menu.name == "gpu-wafer"
    labels = {o.label for o in menu.options}
    assert {"h100-sxmx1/llama-3.1-8b", "b200x2/llama-3.1-70b", "h100-sxmx2/llama-3.1-70b-fp8",
            "wse-3x1/llama-3.1-8b"} <= labels
    wse = next(o for o in menu.options if o.label == "wse-3x1/llama-3.1-8b")
    assert wse.roles == (Role.BOTH,) and wse.max_instances == 4


# ---------------------------------------------------------------------------
# End to end on the real trace, verified by simulation


def test_missed_target_lowers_the_headroom_and_replans(conv_stats):
    # At 100% planned busy time and a 100 ms TTFT, queueing misses the SLO; the second round
    # plans 20% spare capacity.
    trace = read_trace(builtin_trace_path(), max_rows=2000)
    wl = make_workload(trace, n_requests=2000, rate_rps=300.0)
    stats = characterize(wl)
    rounds, _, _ = plan_and_verify(stats, load_menu(MENU), wl, ttft_slo_s=0.1, tpot_slo_s=0.02,
                                   quality_floor=0.69, headroom=1.0, target_attainment=0.9, max_rounds=3)
    assert len(rounds) >= 2
    assert rounds[0].attainment < 0.9
    assert rounds[1].headroom == pytest.approx(1.0 * HEADROOM_BACKOFF)
    assert rounds[1].plan.usd_per_hour > rounds[0].plan.usd_per_hour
    assert rounds[-1].attainment >= 0.9


def test_plan_rounds_are_bounded(conv_stats):
    trace = read_trace(builtin_trace_path(), max_rows=1000)
    wl = make_workload(trace, n_requests=1000, rate_rps=300.0)
    rounds, _, _ = plan_and_verify(characterize(wl), load_menu(MENU), wl, ttft_slo_s=0.1, tpot_slo_s=0.02,
                                   quality_floor=0.69, headroom=1.0, target_attainment=1.0, max_rounds=2)
    assert len(rounds) <= 2
    assert [r.headroom for r in rounds] == pytest.approx([1.0, HEADROOM_BACKOFF][:len(rounds)])


def test_a_replan_that_does_not_fit_the_menu_keeps_the_last_plan_and_says_why():
    trace = read_trace(builtin_trace_path(), max_rows=2000)
    wl = make_workload(trace, n_requests=2000, rate_rps=300.0)
    stats = characterize(wl)
    probe = menu_of(["b200"], ["llama-3.1-8b"], roles=["both"])
    (cap,), _, _ = derive_capacities(probe.options, stats, 0.1, 0.02)
    enough = int(np.ceil(300.0 / cap.requests_per_s))  # instances at headroom 1.0
    assert int(np.ceil(300.0 / (HEADROOM_BACKOFF * cap.requests_per_s))) > enough
    menu = menu_of(["b200"], ["llama-3.1-8b"], roles=["both"], max_instances=enough)
    rounds, _, _ = plan_and_verify(stats, menu, wl, ttft_slo_s=0.1, tpot_slo_s=0.02, headroom=1.0,
                                   target_attainment=1.0, max_rounds=3)
    assert len(rounds) == 1 and rounds[0].plan.instances == enough
    assert rounds[0].attainment < 1.0
    assert rounds[0].note.startswith(f"no re-plan at headroom {HEADROOM_BACKOFF:.2f}: no feasible cluster under "
                                     "max_instances")
