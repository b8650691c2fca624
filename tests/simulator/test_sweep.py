"""The job runner in this process, sweep grids and their mistakes, plan rounds verified at once.

The command is tested in tests/cli/test_sweep_command.py, Ray runs of the same jobs in
tests/deploy/test_sweeps_on_ray.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scheduler.config import ConfigError, builtin_cluster_path, load_cluster
from simulator.jobs import SimJob, WorkloadSpec, report_failures, run_job, run_jobs, without_wall_clock
from simulator.sweep import parse_grid

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "sweeps" / "gpu-rates.yaml"


def small_grid(**changes) -> dict:
    grid = {"name": "small", "cluster": "gpu-colocated", "workload": {"requests": 300},
            "policies": ["least-loaded", "round-robin"], "rates": [100, 400], "seeds": [0, 1],
            "variants": [{"name": "16"}, {"name": "4", "instances": {"h100": 4}},
                         {"name": "4-tight", "instances": {"h100": 4}, "set": {"slo.ttft_s": 0.2}}]}
    grid.update(changes)
    return grid


def test_the_example_grid_is_valid():
    grid = parse_grid(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE), EXAMPLE.parent)
    assert len(grid.jobs()) == 3 * 3 * 3 * 2
    assert {v.name: v.config.pools[0].max_batch for v in grid.variants}["12 x H100, batch 64"] == 64


def test_variants_change_the_base_cluster_before_it_is_parsed():
    grid = parse_grid(small_grid(), "g.yaml")
    base, four, tight = (v.config for v in grid.variants)
    assert (base.pools[0].instances, four.pools[0].instances, tight.pools[0].instances) == (16, 4, 4)
    assert (base.slo.ttft_s, tight.slo.ttft_s) == (2.0, 0.2)
    # Every (rate, seed) is one workload: the same requests for every policy and variant.
    specs = {(j.workload.rate_rps, j.workload.seed) for j in grid.jobs()}
    assert specs == {(100.0, 0), (400.0, 0), (100.0, 1), (400.0, 1)}


@pytest.mark.parametrize("change, key, reason", [
    ({"colour": 1}, "colour", "unknown key"),
    ({"rates": []}, "rates", "non-empty list"),
    ({"rates": [100, -5]}, "rates[1]", "rate > 0"),
    ({"rates": [100, "fast"]}, "rates[1]", "expected arrival rates"),
    ({"seeds": [0, 0]}, "seeds", "duplicate"),
    ({"seeds": [-1]}, "seeds[0]", "non-negative"),
    ({"policies": ["least-loaded", "fastest"]}, "policies[1]", "unknown policy 'fastest'"),
    ({"params": {"detect_acuracy": 0.8}}, "params", "unknown parameter 'detect_acuracy' for least-loaded, "
                                                     "round-robin; allowed: none (their plugins take no parameters)"),
    ({"policies": ["least-loaded", "cascade"], "params": {"detect_accuracy": 2}}, "params.detect_accuracy",
     "must be <= 1, got 2"),
    ({"cluster": "nowhere"}, "cluster", "no built-in cluster named 'nowhere'"),
    ({"workload": {"requests": 0}}, "workload.requests", "positive integer"),
    ({"workload": {"arrival": "trace"}}, "workload.arrival", "the grid sets the rate"),
    ({"workload": {"trace": "missing.csv"}}, "workload.trace", "not found"),
    ({"workload": {"rows": 5}}, "workload.rows", "unknown key"),
    ({"variants": [{"name": "a", "instances": {"a100": 2}}]}, "variants[0].instances.a100", "no pool named 'a100'"),
    ({"variants": [{"name": "a", "instances": {"h100": 0}}]}, "variants[0].instances.h100", "positive number"),
    ({"variants": [{"name": "a", "set": {"pools.gpu.max_batch": 8}}]}, "variants[0].set.pools.gpu.max_batch",
     "no pool named 'gpu'"),
    ({"variants": [{"name": "a", "set": {"pools.h100.device": "tpu"}}]}, "variants[0]", "unknown device 'tpu'"),
    ({"variants": [{"name": "a", "set": {"slo.ttft": 1}}]}, "variants[0]", "unknown key"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "variants[1].name", "duplicate variant name"),
    ({"variants": [{"name": "a", "set": {"policy.name": "slo-aware"}}]}, "variants[0].set.policy.name",
     "a variant may set only their parameters"),
    ({"variants": [{"name": "a", "set": {"policy.params.detect_acuracy": 0.5}}]},
     "variants[0].set.policy.params", "unknown parameter 'detect_acuracy'"),
    ({"variants": [{"instances": {"h100": 2}}]}, "variants[0].name", "non-empty name"),
])
def test_grid_mistakes_name_file_key_and_reason(change, key, reason, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_grid(small_grid(**change), "grid.yaml", tmp_path)
    assert str(err.value).startswith(f"grid.yaml: key '{key}': ")
    assert reason in str(err.value)


def test_grid_params_go_to_the_policies_whose_plugins_take_them():
    grid = parse_grid(small_grid(policies=["least-loaded", "cascade"], params={"detect_accuracy": 0.8}), "g.yaml")
    assert {j.policy: j.params for j in grid.jobs()} == {"least-loaded": {}, "cascade": {"detect_accuracy": 0.8}}


def test_a_variants_policy_params_reach_its_cells_over_the_grids():
    grid = parse_grid(small_grid(policies=["least-loaded", "cascade"], params={"detect_accuracy": 0.8},
                                 variants=[{"name": "base"},
                                           {"name": "blind", "set": {"policy.params.detect_accuracy": 0.5}}]),
                      "g.yaml")
    params = {(j.policy, j.label.split()[1]): j.params for j in grid.jobs()}
    assert params == {("least-loaded", "base"): {}, ("least-loaded", "blind"): {},
                      ("cascade", "base"): {"detect_accuracy": 0.8}, ("cascade", "blind"): {"detect_accuracy": 0.5}}


def jobs_with_one_broken(tmp_path) -> list[SimJob]:
    config = load_cluster(builtin_cluster_path("gpu-colocated"))
    good = WorkloadSpec(requests=400, rate_rps=50.0, seed=3)
    # A trace that is not there when the job runs (as on a node without the file).
    missing = WorkloadSpec(trace=str(tmp_path / "gone.csv"), requests=400, rate_rps=50.0, seed=3)
    return [SimJob("a", good, config, "least-loaded", {}, 3), SimJob("broken", missing, config, "least-loaded", {}, 3),
            SimJob("c", good, config, "round-robin", {}, 3)]


def test_a_failed_job_is_reported_and_the_others_kept(tmp_path, capsys):
    jobs = jobs_with_one_broken(tmp_path)
    results = run_jobs(jobs, progress=False)
    assert [s is None for s in results.summaries] == [False, True, False]
    assert [s["label"] for s in results.ok()] == ["a", "c"]
    assert [(f.label, f.error.split(":")[0]) for f in results.failures] == [("broken", "FileNotFoundError")]
    assert "gone.csv" in results.failures[0].error and "Traceback" in results.failures[0].detail
    assert without_wall_clock(results.summaries[0]) == without_wall_clock(run_job(jobs[0]))
    assert report_failures(results, "sweep") == 1
    err = capsys.readouterr().err
    assert "infersched sweep: run broken: FileNotFoundError" in err and "1 of 3 runs failed: broken" in err


def test_parallel_and_address_are_exclusive():
    with pytest.raises(ValueError, match="exclusive"):
        run_jobs([], parallel=2, address="auto")


def test_plan_rounds_verified_at_once_equal_the_rounds_verified_one_by_one():
    from simulator.plan import characterize, load_menu, plan_and_verify, verify_plan
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    wl = make_workload(read_trace(builtin_trace_path(), max_rows=2000), n_requests=2000, rate_rps=300.0)
    verified_at_once = []

    def verify_all(documents):
        verified_at_once.append(len(documents))
        return [verify_plan(d, wl) for d in documents]

    kwargs = dict(ttft_slo_s=0.1, tpot_slo_s=0.02, quality_floor=0.69, headroom=1.0, target_attainment=0.9,
                  max_rounds=3)
    menu = load_menu(ROOT / "deploy" / "plan" / "menu.yaml")
    one_by_one, _, _ = plan_and_verify(characterize(wl), menu, wl, **kwargs)
    at_once, _, _ = plan_and_verify(characterize(wl), menu, wl, verify_all=verify_all, **kwargs)
    assert verified_at_once == [3]  # every round planned ahead; the rounds kept stop at the first success
    assert len(one_by_one) == 2 and one_by_one[0].attainment < 0.9 <= one_by_one[1].attainment
    assert [(r.headroom, r.document, r.note, without_wall_clock(r.verification)) for r in at_once] == \
        [(r.headroom, r.document, r.note, without_wall_clock(r.verification)) for r in one_by_one]
