"""Fleet sizing for the economics sections: the rule, the fractional size, and held-out evaluation on real
(small) simulations."""
from __future__ import annotations

import pytest

from bench.economics import common, fleet
from bench.economics.common import cluster_file, poisson
from bench.economics.fleet import at_whole, fractional, fractional_k, rule, sized_family
from scheduler.config import SloConfig
from simulator.traces import builtin_trace_path, read_trace


@pytest.mark.parametrize("attainment, expected", [
    ([(1, 0.50), (2, 0.995), (3, 1.0)], (2, 0.99)),  # the fewest meeting the target
    ([(1, 0.90), (2, 0.96), (3, 0.962), (4, 0.962)], (2, 0.962 - 0.005)),  # none can: within half a point of best
    ([(1, 0.999)], (1, 0.99)),
])
def test_rule_picks_the_fewest_meeting_the_target_or_near_the_best(attainment, expected):
    k, threshold = rule(attainment)
    assert k == expected[0]
    assert threshold == pytest.approx(expected[1])


@pytest.mark.parametrize("attainment, whole, threshold, expected", [
    ([(1, 0.80), (2, 1.0)], 2, 0.99, 1 + 0.19 / 0.20),  # crosses just below 2
    ([(1, 0.995)], 1, 0.99, 1.0),  # one instance already meets it
    ([(2, 0.5), (3, 0.99)], 3, 0.99, 3.0),  # exactly at the threshold
])
def test_fractional_size_interpolates_the_crossing(attainment, whole, threshold, expected):
    assert fractional_k(attainment, whole, threshold) == pytest.approx(expected)


@pytest.fixture(scope="module")
def frontier():
    trace = read_trace(builtin_trace_path())
    slo = SloConfig(ttft_s=5.0, tpot_s=0.1)
    saved = list(common.SEEDS)
    common.SEEDS[:] = [7, 8]
    try:
        yield sized_family(lambda c: cluster_file("frontier", slo, **{"frontier-405b": c}), "least-loaded", None,
                           lambda seed: poisson(trace, 400, 4.0, seed), list(range(1, 5)), every_size=True)
    finally:
        common.SEEDS[:] = saved


def test_fleet_is_sized_on_a_held_out_slice_and_judged_on_the_evaluation_seeds(frontier):
    assert frontier["sizing_seed"] == fleet.SIZING_SEED not in (7, 8)
    assert [r["seed"] for r in at_whole(frontier)] == [7, 8]
    sizes = [k for k, _ in frontier["sizing"]]
    assert sizes == sorted(sizes) and frontier["whole"] in sizes
    # Every size up to one past the rule's runs on every evaluation seed.
    assert sorted(map(int, frontier["by_k"])) == list(range(1, frontier["whole"] + 2))
    assert frontier["whole"] - 1 <= frontier["fractional_k"] <= frontier["whole"]


def test_more_instances_cost_more_and_the_fractional_fleet_lies_between(frontier):
    by_k = frontier["by_k"]
    costs = [sum(r["cost_usd"] for r in by_k[str(k)]) for k in sorted(map(int, by_k))]
    assert costs == sorted(costs)
    k = frontier["fractional_k"]
    lo, hi = by_k[str(int(k // 1))], by_k[str(-int(-k // 1))]
    for x, a, b in zip(fractional(frontier, "energy_j"), lo, hi):
        assert a["energy_j"] <= x <= b["energy_j"]


def test_without_every_size_only_the_sizes_around_the_rule_run():
    trace = read_trace(builtin_trace_path())
    slo = SloConfig(ttft_s=5.0, tpot_s=0.1)
    fam = sized_family(lambda c: cluster_file("frontier", slo, **{"frontier-405b": c}), "least-loaded", None,
                       lambda seed: poisson(trace, 300, 8.0, seed), list(range(1, 6)))
    assert {int(k) for k in fam["by_k"]} == {k for k in (fam["whole"] - 1, fam["whole"], fam["whole"] + 1) if k >= 1}


def test_tuned_family_chooses_its_variant_on_the_sizing_slice_alone():
    """A token budget is chosen by the sizing slice (fewest whole instances, then the smallest fractional
    fleet), and only the chosen one runs on the evaluation seeds."""
    trace = read_trace(builtin_trace_path())
    slo = SloConfig(ttft_s=5.0, tpot_s=0.1)
    saved = list(common.SEEDS)
    common.SEEDS[:] = [7, 8]
    try:
        fam = fleet.tuned_family(lambda b, c: cluster_file("frontier", slo, b, **{"frontier-405b": c}),
                                 [2048, 8192], "least-loaded", None, lambda seed: poisson(trace, 300, 6.0, seed),
                                 list(range(1, 5)))
    finally:
        common.SEEDS[:] = saved
    keys = {v: (whole, k) for v, whole, k in fam["variants"]}
    assert set(keys) == {2048, 8192}
    assert keys[fam["variant"]] == min(keys.values())
    assert (fam["whole"], fam["fractional_k"]) == keys[fam["variant"]]
    # The evaluation runs are of the chosen budget only, on the evaluation seeds only.
    runs = [r for rs in fam["by_k"].values() for r in rs]
    assert {r["seed"] for r in runs} == {7, 8}
    config = cluster_file("frontier", slo, fam["variant"], **{"frontier-405b": fam["whole"]})
    assert {r["price_usd_per_hour"] for r in at_whole(fam)} == {common.price_per_hour(config)}


def test_cluster_file_sets_the_token_budget_of_chunked_pools_only():
    config = cluster_file("advisor", None, 2048)
    assert {p.token_budget for p in config.pools if p.chunked_prefill} == {2048}
