"""Simulation jobs as Ray tasks give the sequential results: on deploy/local_multinode.sh's two-node
cluster (--address: the checkout shipped with runtime_env) and on a local instance (--parallel 2).

The cluster is started by the script, from a fresh process, as the live tests do
(tests/ray_cluster.py says why not `ray.init()` here). This process only joins it
as a driver (`ray.init(address=...)` forks nothing). `--parallel` starts its Ray
instance with `ray.init(num_cpus=N)`, which forks Ray's processes, so it is run as
the CLI in a subprocess: a fresh process, like a user's.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scheduler.config import builtin_cluster_path, load_cluster
from infersched.cli import main as cli_main
from simulator.jobs import SimJob, WorkloadSpec, run_jobs, without_wall_clock
from tests.ray_cluster import cluster_env, scripted_cluster

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray (pip install ray)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local cluster script targets Linux hosts"),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ["least-loaded", "round-robin", "slo-aware", "cost-aware"]


@pytest.fixture(scope="module")
def two_nodes():
    """deploy/local_multinode.sh's default cluster: a head and a worker node, one CPU each."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    with scripted_cluster(prefix="iss-") as address:
        try:
            yield address
        finally:
            if ray.is_initialized():
                ray.shutdown()


def policy_jobs(spec: WorkloadSpec) -> list[SimJob]:
    config = load_cluster(builtin_cluster_path("gpu-colocated"))
    return [SimJob(p, spec, config, p, {}, spec.seed) for p in POLICIES]


def test_jobs_on_the_two_node_cluster_equal_the_sequential_run(two_nodes):
    jobs = policy_jobs(WorkloadSpec(requests=3000, rate_rps=300.0, seed=5))
    on_ray = run_jobs(jobs, address=two_nodes, progress=False)
    here = run_jobs(jobs, progress=False)
    assert on_ray.failures == [] and here.failures == []
    assert [without_wall_clock(s) for s in on_ray.summaries] == [without_wall_clock(s) for s in here.summaries]
    assert [s["label"] for s in on_ray.summaries] == POLICIES
    assert len({s["slo_attainment"] for s in here.summaries}) > 1  # the policies differ: a real comparison


def test_a_failed_task_is_reported_and_the_others_kept(two_nodes, tmp_path):
    jobs = policy_jobs(WorkloadSpec(requests=500, rate_rps=50.0, seed=1))[:2]
    # A trace missing on the node that runs the job.
    jobs.append(SimJob("broken", WorkloadSpec(trace=str(tmp_path / "gone.csv"), seed=1), jobs[0].cluster,
                       "least-loaded", {}, 1))
    results = run_jobs(jobs, address=two_nodes, progress=False)
    assert [s["label"] for s in results.ok()] == POLICIES[:2] and results.summaries[2] is None
    [failure] = results.failures
    assert failure.label == "broken" and failure.error.startswith("FileNotFoundError") and "gone.csv" in failure.error
    # The task ran the checkout Ray shipped (runtime_env working_dir), not this directory.
    shipped = re.search(r'File "([^"]*simulator/jobs\.py)"', failure.detail)[1]
    assert not shipped.startswith(str(ROOT)) and "working_dir" in shipped


def test_sweep_with_address_writes_the_sequential_cells(two_nodes, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "cluster": "gpu-colocated", "workload": {"requests": 600}, "policies": ["least-loaded", "slo-aware"],
        "rates": [100, 300], "variants": [{"name": "16"}, {"name": "6", "instances": {"h100": 6}}]}))
    remote = subprocess.run([sys.executable, "-m", "infersched.cli", "sweep", "--grid", str(grid), "--out",
                             str(tmp_path / "ray"), "--address", two_nodes],
                            capture_output=True, text=True, timeout=240, env=cluster_env(), cwd=ROOT)
    assert remote.returncode == 0, remote.stderr
    assert cli_main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "here"), "--no-progress"]) == 0
    cells = [json.loads((tmp_path / d / "sweep.json").read_text())["cells"] for d in ("ray", "here")]
    for cell in cells[0] + cells[1]:
        cell["summary"] = without_wall_clock(cell["summary"])
    assert len(cells[0]) == 8 and cells[0] == cells[1]


def test_compare_parallel_2_writes_the_sequential_json(tmp_path):
    def compare(*extra: str) -> dict:
        out = tmp_path / f"compare{len(extra)}.json"
        done = subprocess.run([sys.executable, "-m", "infersched.cli", "compare", "--policies", ",".join(POLICIES),
                               "--cluster", "gpu-colocated", "--requests", "2000", "--rate", "250", "--seed", "4",
                               "--json", str(out), *extra],
                              capture_output=True, text=True, timeout=240, env=cluster_env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        doc = json.loads(out.read_text())
        doc["runs"] = [without_wall_clock(r) for r in doc["runs"]]
        return doc

    assert compare("--parallel", "2") == compare()


def test_plan_verified_on_the_cluster_writes_the_sequential_plan(two_nodes, tmp_path):
    # Headroom 1.0 at a 100 ms TTFT misses the target, so the plan takes a second round.
    args = ["plan", "--rate", "300", "--requests", "2000", "--ttft-slo", "0.1", "--tpot-slo", "0.02",
            "--quality-floor", "0.69", "--headroom", "1.0"]
    remote = subprocess.run([sys.executable, "-m", "infersched.cli", *args, "--json", str(tmp_path / "ray.json"),
                             "--address", two_nodes], capture_output=True, text=True, timeout=240, env=cluster_env(),
                            cwd=ROOT)
    assert remote.returncode == 0, remote.stderr
    assert cli_main([*args, "--json", str(tmp_path / "here.json")]) == 0
    on_ray, here = (json.loads((tmp_path / f"{d}.json").read_text()) for d in ("ray", "here"))
    assert len(here["rounds"]) == 2 and on_ray == here
