"""The economics goodput curves and intervals on real (small) simulations of the conversation trace."""
from __future__ import annotations

import math

import pytest

from bench.economics import common
from bench.economics.common import h100_cluster, poisson
from bench.economics.slo_grid import GridJob, best_of, goodput, run_curves, run_grid_job
from bench.economics.stats import ci95
from scheduler.config import SloConfig
from simulator.jobs import SimJob
from simulator.traces import builtin_trace_path, read_trace

SLO = SloConfig(ttft_s=0.25, tpot_s=0.025)
BOTH = ("h100", "h100-sxm", "both", 4)


@pytest.fixture(scope="module")
def trace():
    return read_trace(builtin_trace_path())


@pytest.mark.parametrize("rates, attainment, expected", [
    ([100, 200, 300], [1.0, 0.95, 0.85], 200 + (0.05 / 0.10) * 100),  # crosses between 200 and 300
    ([100, 200, 300], [0.95, 0.95, 0.92], 300),  # never falls below: the top rate
    ([100, 200, 300], [0.80, 0.70, 0.60], 0.0),  # the lowest rate already misses
    ([100, 200], [0.90, 0.50], 100.0),  # exactly at the target counts as meeting it
])
def test_goodput_interpolates_the_crossing(rates, attainment, expected):
    assert goodput(rates, attainment, 0.9) == pytest.approx(expected)


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0], [10.0, 10.5, 9.0, 11.0], [0.3, 0.31]])
def test_interval_contains_the_mean_and_widens_with_spread(values):
    ci = ci95(values)
    assert ci.lo < ci.mean < ci.hi
    assert ci.mean == pytest.approx(sum(values) / len(values))
    wider = ci95([ci.mean + 2 * (v - ci.mean) for v in values])
    assert wider.hi - wider.lo == pytest.approx(2 * (ci.hi - ci.lo))


def test_one_value_has_no_interval():
    assert ci95([5.0]) == (5.0, 5.0, 5.0, 1)
    assert math.isnan(ci95([]).mean)


def _attainment(config, policy, trace, rate, seed=7, slos=(0.015, 0.025, 0.05)):
    return run_grid_job(GridJob("t", SimJob("t", poisson(trace, 1500, rate, seed), config, policy, {}, seed),
                                slos))


def test_attainment_at_the_clusters_own_slo_matches_the_simulator(trace):
    s = _attainment(h100_cluster("c", SLO, BOTH), "least-loaded", trace, 60.0)
    assert s["attainment_by_tpot"][1] == pytest.approx(s["slo_attainment"])
    assert s["attainment_by_tpot"] == sorted(s["attainment_by_tpot"])  # a looser SLO never attains less


def test_slo_aware_placement_does_not_read_the_tpot_slo(trace):
    """What lets one disaggregated run be read under every TPOT SLO of the grid."""
    split = (("p", "h100-sxm", "prefill", 2), ("d", "h100-sxm", "decode", 2))
    tight = _attainment(h100_cluster("d", SLO, *split), "slo-aware", trace, 60.0)
    loose = _attainment(h100_cluster("d", SloConfig(ttft_s=0.25, tpot_s=0.1), *split), "slo-aware", trace, 60.0)
    assert tight["attainment_by_tpot"] == loose["attainment_by_tpot"]
    assert tight["tpot_s"] == loose["tpot_s"]


def test_chunked_prefill_beats_prefill_first_on_itl_p99_under_load(trace):
    chunked = _attainment(h100_cluster("c", SLO, BOTH, chunked_prefill=True, token_budget=1024), "least-loaded",
                          trace, 70.0)
    first = _attainment(h100_cluster("c", SLO, BOTH), "least-loaded", trace, 70.0)
    assert chunked["itl_s"]["p99"] < 0.5 * first["itl_s"]["p99"]
    assert chunked["attainment_by_tpot"][0] > first["attainment_by_tpot"][0]


def test_curves_run_every_seed_and_their_interval_contains_the_seed_mean(trace):
    configs = [("colocated", h100_cluster("c", SLO, BOTH), "least-loaded")]
    curves = run_curves(lambda rate, seed: poisson(trace, 600, rate, seed), configs, [40.0, 80.0, 160.0, 320.0],
                        [7, 8, 9], (0.025, 0.1), 0.9)
    per_seed = curves["goodput_rps"]["colocated"][0]
    assert len(per_seed) == 3 and len(set(per_seed)) > 1  # other requests per seed
    ci = ci95(per_seed)
    assert ci.lo <= sum(per_seed) / 3 <= ci.hi
    # A configuration stops at the first rate it misses under the loosest SLO.
    for runs in curves["runs"]["colocated"].values():
        assert all(r["attainment_by_tpot"][-1] >= 0.9 for r in runs[:-1])
    assert curves["price_usd_per_hour"]["colocated"] == pytest.approx(common.price_per_hour(configs[0][1]))


def test_variants_are_chosen_on_the_sizing_seed_and_reported_on_the_others(trace):
    """run_curves keeps the sizing seed's runs apart; best_of picks by them, not by the evaluation seeds."""
    configs = [(f"chunked-{b}", h100_cluster("c", SLO, BOTH, chunked_prefill=True, token_budget=b), "least-loaded")
               for b in (512, 4096)]
    curves = run_curves(lambda rate, seed: poisson(trace, 500, rate, seed), configs, [40.0, 80.0, 160.0, 320.0],
                        [7, 8], (0.025, 0.1), 0.9, sizing_seed=1)
    assert curves["sizing_seed"] == 1 and curves["seeds"] == [7, 8]
    for label in ("chunked-512", "chunked-4096"):
        assert set(curves["runs"][label]) == {"7", "8"}
        assert curves["sizing_runs"][label] and len(curves["goodput_rps"][label][0]) == 2
    for k, (label, values) in enumerate(best_of(curves, ["chunked-512", "chunked-4096"])):
        held = curves["sizing_goodput_rps"]
        assert held[label][k] == max(held[x][k] for x in ("chunked-512", "chunked-4096"))
        assert values == curves["goodput_rps"][label][k]
    # Flip the held-out goodputs: the choice follows them whatever the evaluation seeds say.
    flipped = curves | {"sizing_goodput_rps": {"chunked-512": [1.0, 1.0], "chunked-4096": [2.0, 2.0]}}
    assert [label for label, _ in best_of(flipped, ["chunked-512", "chunked-4096"])] == ["chunked-4096"] * 2
    flipped["sizing_goodput_rps"] = {"chunked-512": [2.0, 2.0], "chunked-4096": [1.0, 1.0]}
    assert [label for label, _ in best_of(flipped, ["chunked-512", "chunked-4096"])] == ["chunked-512"] * 2


def test_a_configuration_bound_to_one_slo_is_read_at_that_slo_only(trace):
    """conditional-disagg reads the TPOT SLO, so it runs once per SLO and counts only there."""
    from bench.economics.disagg import mixed_cluster

    slos = (0.025, 0.1)
    configs = [(f"cond@{s}", mixed_cluster("m", SloConfig(ttft_s=0.25, tpot_s=s), 2, 1, 1), "conditional-disagg", k)
               for k, s in enumerate(slos)]
    curves = run_curves(lambda rate, seed: poisson(trace, 400, rate, seed), configs, [40.0, 80.0, 160.0],
                        [7], slos, 0.9)
    g = curves["goodput_rps"]
    assert g["cond@0.025"][1] is None and g["cond@0.1"][0] is None
    assert g["cond@0.025"][0] is not None and g["cond@0.1"][1] is not None
    assert [label for label, _ in best_of(curves, list(g))] == ["cond@0.025", "cond@0.1"]
    # A bound configuration stops at the first rate it misses under its own SLO.
    for runs in curves["runs"]["cond@0.025"].values():
        assert all(r["attainment_by_tpot"][0] >= 0.9 for r in runs[:-1])
