"""`infersched plan` as a user runs it: bad arguments, the plan written as YAML and JSON, verified on the real trace."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from infersched.cli import main
from infersched.cli.plan import register, run
from scheduler.config import parse_cluster
from simulator.traces import builtin_trace_path

ROOT = Path(__file__).resolve().parents[2]
MENU = ROOT / "deploy" / "plan" / "menu.yaml"


def main_plan(argv: list[str]) -> int:
    """`infersched plan ARGV`'s exit status (argparse exits with 2 on a bad argument)."""
    try:
        return main(["plan", *argv])
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["--energy-weight", "heavy"], "argument --energy-weight: must be a number, got 'heavy'"),
    (["--energy-weight", "1.5"], "argument --energy-weight: must be in [0, 1], got '1.5'"),
    (["--headroom", "0"], "argument --headroom: must be in (0, 1], got '0'"),
    (["--ttft-slo", "-1"], "argument --ttft-slo: must be positive, got '-1'"),
    (["--requests", "many"], "argument --requests: must be an integer, got 'many'"),
    (["--quality-floor", "0.95", "--requests", "200", "--no-verify"],
     "quality floor 0.95 exceeds every menu model's capability (best: llama-3.1-70b 0.836)"),
    (["--menu", "no-such-menu.yaml", "--requests", "200"], "no-such-menu.yaml: menu file not found"),
])
def test_cli_bad_input_exits_2_with_the_reason(capsys, argv, message):
    assert main_plan(argv) == 2
    assert message in capsys.readouterr().err


def test_register_adds_the_plan_subcommand():
    parser = argparse.ArgumentParser(prog="infersched")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["plan", "--rate", "300", "--no-verify", "--objective", "energy"])
    assert args.command == "plan" and args.handler is run
    assert args.rate == 300.0 and args.verify is False and args.objective == "energy"


def test_plan_end_to_end_on_the_conv_trace(tmp_path, capsys):
    out_yaml, out_json = tmp_path / "cluster.yaml", tmp_path / "plan.json"
    code = main_plan(["--trace", str(builtin_trace_path()), "--requests", "2000", "--rate", "100",
                      "--menu", str(MENU), "--ttft-slo", "2", "--tpot-slo", "0.1", "--quality-floor", "0.69",
                      "--out", str(out_yaml), "--json", str(out_json)])
    assert code == 0
    shown = capsys.readouterr().out
    for text in ("round 1: headroom 0.70", "SLO attainment", "pool", "$/h", "total", f"wrote {out_yaml}"):
        assert text in shown
    result = json.loads(out_json.read_text())
    assert result["workload"]["requests"] == 2000 and result["workload"]["rate_rps"] == 100.0
    assert result["verified"] is True and result["verification"]["slo_attainment"] >= 0.9
    assert result["verification"]["completed"] == 2000
    plan = result["plan"]
    assert plan["usd_per_hour"] == pytest.approx(sum(p["usd_per_hour"] for p in plan["pools"]))
    assert sum(p["planned_requests_per_s"] for p in plan["pools"] if p["role"] != "decode") == pytest.approx(100.0)
    assert all(p["capability"] >= 0.69 for p in plan["pools"])
    # The simulated cluster is the one planned: same price per hour, and power within 15%.
    assert result["verification"]["usd_per_hour"] == pytest.approx(plan["usd_per_hour"])
    # Power within 20%: the plan prices a stepping decode instance at its full-batch power; with fixed
    # per-layer time in the step, partly filled batches draw less (the plan overestimates by ~19% here).
    assert result["verification"]["power_w"] == pytest.approx(plan["power_w"], rel=0.20)
    config = parse_cluster(yaml.safe_load(out_yaml.read_text()), str(out_yaml))
    assert sum(p.instances for p in config.pools) == plan["instances"]
    assert out_yaml.read_text() == result["cluster_yaml"]


def test_json_to_stdout_is_pure_json(capsys):
    assert main_plan(["--requests", "300", "--rate", "20", "--no-verify", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verification"] is None and result["plan"]["pools"]
