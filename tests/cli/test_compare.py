"""`infersched compare` end to end on a slice of the real Azure 2023 conversation trace."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from infersched.cli import compare, main
from simulator.compare import pareto_front
from simulator.quality import DifficultyModel

ROOT = Path(__file__).resolve().parents[2]
CONV = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
needs_shared = pytest.mark.skipif(not CONV.exists(), reason="../shared/traces not present beside the repo")


def run(argv, capsys):
    code = main(["compare", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_register_adds_the_subcommand_with_its_handler():
    parser = argparse.ArgumentParser()
    compare.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", "--policies", "a,b", "--param", "router_accuracy=0.8"])
    assert args.handler is compare.run and args.policies == "a,b"


@needs_shared
def test_compare_on_a_real_trace_slice(tmp_path, capsys):
    cloud_only = str(ROOT / "deploy" / "clusters" / "cloud-only.yaml")
    code, out, err = run(["--trace", str(CONV), "--requests", "1500", "--rate", "10", "--seed", "2",
                          "--cluster", str(ROOT / "deploy" / "clusters" / "edge-cloud.yaml"),
                          "--policies", f"local-first,least-loaded,least-loaded@{cloud_only}",
                          "--param", "detect_accuracy=1.0", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
    runs = {r["label"]: r for r in doc["runs"]}
    assert list(runs) == ["local-first", "least-loaded", f"least-loaded@{cloud_only}"]
    # The very same requests in every run.
    assert len({(r["requests"], r["input_tokens"], r["completed"]) for r in runs.values()}) == 1
    # The difficulties are the seeded default draw: cloud-only answers exactly those within
    # the 70B model's reach (capability 0.836).
    d = DifficultyModel(seed=2).draw(0, 1500)
    assert runs[f"least-loaded@{cloud_only}"]["correct"] == int(np.count_nonzero(d <= 0.836))
    # Oracle router + perfect verifier: local-first is as good as cloud-only, and its
    # laptops serve a real share. least-loaded ignores tiers, so it loses quality.
    lf = runs["local-first"]
    assert lf["quality"] == runs[f"least-loaded@{cloud_only}"]["quality"]
    assert lf["pools"]["laptops"]["share"] > 0.1 and lf["escalations"] == 0
    assert runs["least-loaded"]["quality"] < lf["quality"]
    assert doc["pareto_front"] and set(doc["pareto_front"]) <= set(runs)
    for label in ("local-first", "least-loaded", "least-loaded@cloud-only"):
        assert label in out
    assert "share per pool" in out and "laptops" in out


@pytest.mark.parametrize("argv, needle", [
    (["--policies", "least-loaded,thrifty", "--requests", "10"], "unknown policy 'thrifty'"),
    (["--policies", "least-loaded,least-loaded", "--requests", "10"], "duplicate entry"),
    (["--policies", "local-first", "--param", "router_accuracy=2", "--requests", "10"],
     "policy.params.router_accuracy"),
    (["--policies", "local-first", "--param", "oops", "--requests", "10"], "expected KEY=VALUE"),
    (["--policies", "least-loaded,cascade", "--param", "detect_acuracy=0.8", "--requests", "10"],
     "--param: key 'policy.params': unknown parameter 'detect_acuracy' for least-loaded, cascade; allowed: "
     "detect_accuracy, max_attempts, verifier_device, verifier_model, verifier_seed"),
    (["--policies", "cascade@nowhere.yaml", "--requests", "10"], "cluster file not found"),
    (["--policies", "least-loaded", "--requests", "10", "--difficulty-table", "0.7"], "CAPABILITY:SHARE"),
])
def test_bad_input_names_what_fails(argv, needle, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and needle in err


def test_json_to_stdout_and_plot_next_to_a_json_path(tmp_path, capsys):
    code, out, err = run(["--policies", "least-loaded,cost-aware", "--requests", "300", "--rate", "20",
                          "--cluster", "gpu-colocated", "--json", "-"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert [r["label"] for r in doc["runs"]] == ["least-loaded", "cost-aware"]
    path = tmp_path / "cmp.json"
    code, out, err = run(["--policies", "least-loaded,cost-aware", "--requests", "300", "--rate", "20",
                          "--cluster", "gpu-colocated", "--json", str(path)], capsys)
    assert code == 0 and path.exists() and path.with_suffix(".png").exists()


def test_pareto_front():
    runs = [{"label": "a", "cost_usd": 1, "energy_j": 1, "quality": 0.9},
            {"label": "b", "cost_usd": 2, "energy_j": 2, "quality": 0.9},   # dominated by a
            {"label": "c", "cost_usd": 3, "energy_j": 3, "quality": 0.95}]  # better quality: on the front
    assert pareto_front(runs) == ["a", "c"]
