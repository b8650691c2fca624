"""`infersched simulate --decision-log`: the same summary as without it, one line per placement."""
from __future__ import annotations

import json

from infersched.cli import main
from scheduler.config import builtin_cluster_path


def test_simulate_gives_the_same_summary_with_and_without_a_decision_log(tmp_path, capsys):
    argv = ["simulate", "--cluster", str(builtin_cluster_path("hybrid")), "--requests", "1500", "--rate", "30",
            "--no-progress", "--json"]
    assert main(argv + [str(tmp_path / "plain.json")]) == 0
    log = tmp_path / "decisions.jsonl"
    assert main(argv + [str(tmp_path / "logged.json"), "--decision-log", str(log)]) == 0
    assert f"decision lines to {log}" in capsys.readouterr().err
    plain, with_log = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "logged"))
    for summary in (plain, with_log):
        del summary["sim_wall_s"], summary["sim_requests_per_s"]
    assert plain == with_log
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["id"] for r in rows} == set(range(1500))
    assert sum(r["chosen"] is None for r in rows) == plain["rejected"]
