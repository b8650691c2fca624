"""`infersched clusters` and built-in cluster names on every --cluster flag (real subprocess runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.stem for p in (ROOT / "deploy" / "clusters").glob("*.yaml"))


def infersched(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infersched.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_clusters_lists_every_example_with_pools_policy_and_purpose():
    proc = infersched("clusters")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "pools"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == EXAMPLES
    assert "1 pool: 16x h100-sxm" in rows["gpu-colocated"] and "least-loaded" in rows["gpu-colocated"]
    assert "2 pools: 16x h100-sxm" in rows["gpu-disagg"]
    assert "cost-aware" in rows["demo"] and "the default: laptops" in rows["demo"]
    for name, row in rows.items():  # every example says what it is for
        assert len(row.split("  ")[-1].strip()) > 20, name


@pytest.mark.parametrize("command", [
    ["simulate", "--requests", "50", "--no-progress", "--json", "-"],
    ["compare", "--policies", "least-loaded", "--requests", "50", "--no-progress", "--json", "-"],
])
def test_builtin_name_works_for_cluster(command):
    proc = infersched(*command, "--cluster", "gpu-disagg")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    pools = doc["pools"] if "pools" in doc else doc["runs"][0]["pools"]
    assert set(pools) == {"h100-prefill", "h100-decode"}


def test_unknown_cluster_name_lists_the_builtin_ones():
    proc = infersched("simulate", "--cluster", "gpu-disag", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gpu-disagg" in proc.stderr and "infersched clusters" in proc.stderr


def test_serve_and_replay_resolve_builtin_names():
    from infersched.cli import build_parser
    from infersched.cli.clusters import resolve

    args = build_parser().parse_args(["serve"])
    assert args.cluster == "live-small" and resolve(args.cluster) == ROOT / "deploy/clusters/live-small.yaml"
    assert resolve(str(ROOT / "deploy/clusters/tiers.yaml")) == ROOT / "deploy/clusters/tiers.yaml"
