"""One spelling per flag across commands, defaults that need no flags, and outputs where they are promised."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infersched.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def infersched(*args: str, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infersched.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def visible_flags() -> dict[str, set[str]]:
    """Each command's flags as --help shows them (hidden aliases excluded)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
            for name, p in sub.choices.items()}


def test_slo_flags_are_spelled_the_same_in_compare_and_plan():
    flags = visible_flags()
    for command in ("compare", "plan"):
        assert {"--ttft-slo", "--tpot-slo"} <= flags[command]
    assert not any("--slo-" in f for fs in flags.values() for f in fs)


@pytest.mark.parametrize("alias, flag", [("--slo-ttft", "ttft_slo"), ("--slo-tpot", "tpot_slo")])
def test_old_slo_spelling_is_a_hidden_alias(alias, flag):
    args = build_parser().parse_args(["compare", "--policies", "least-loaded", alias, "1.5"])
    assert getattr(args, flag) == 1.5


def test_no_flag_is_spelled_two_ways():
    """No two visible flags differ only by word order or separator (e.g. --slo-ttft beside --ttft-slo)."""
    every = {f for fs in visible_flags().values() for f in fs if f.startswith("--")}
    canonical: dict[frozenset, str] = {}
    for flag in sorted(every):
        key = frozenset(flag[2:].replace("_", "-").split("-"))
        assert key not in canonical, f"{flag} and {canonical[key]}"
        canonical[key] = flag


def test_replay_has_the_builtin_trace_and_serve_a_cluster_by_default():
    parser = build_parser()
    assert parser.parse_args(["replay"]).trace is None  # load_trace reads the built-in one, as for simulate
    assert parser.parse_args(["serve"]).cluster == "live-small"


def test_compare_out_writes_one_summary_per_policy(tmp_path):
    out = tmp_path / "cmp"
    proc = infersched("compare", "--policies", "least-loaded,cost-aware,least-loaded@gpu-colocated",
                      "--requests", "100", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "cost-aware.json",
                                                     "least-loaded.json", "least-loaded@gpu-colocated.json",
                                                     "pareto.png"]
    compared = {run["label"]: run for run in json.loads((out / "compare.json").read_text())["runs"]}
    single = json.loads((out / "least-loaded@gpu-colocated.json").read_text())
    assert single["completed"] == compared["least-loaded@gpu-colocated"]["completed"] == 100
    assert single["trace"]["rows"] == 100 and "pools" in single
