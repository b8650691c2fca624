"""`infersched sweep`: a bad grid exits 2 before any run; a good one writes JSON, CSV and a plot."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from infersched.cli import main as cli_main


# 2 policies x 2 rates x 3 variants x 2 seeds of 300 requests.
GRID = """
name: small
cluster: gpu-colocated
workload: {requests: 300}
policies: [least-loaded, round-robin]
rates: [100, 400]
seeds: [0, 1]
variants:
  - {name: "16"}
  - {name: "4", instances: {h100: 4}}
  - {name: 4-tight, instances: {h100: 4}, set: {slo.ttft_s: 0.2}}
"""


def small_grid(**changes) -> dict:
    return {**yaml.safe_load(GRID), **changes}


def test_a_bad_grid_file_exits_2_before_any_run(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(small_grid(rates=[0])))
    assert cli_main(["sweep", "--grid", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: key 'rates[0]': expected a rate > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_writes_every_cell_as_json_csv_and_a_plot(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(small_grid()))
    assert cli_main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(doc["cells"]) == 2 * 2 * 3 * 2 and doc["failed_cells"] == []
    assert all(c["summary"]["requests"] == 300 for c in doc["cells"])
    rows = list(csv.DictReader((tmp_path / "out" / "sweep.csv").open()))
    assert [(r["policy"], r["variant"], float(r["rate_rps"]), int(r["seed"])) for r in rows] == \
        [(c["policy"], c["variant"], c["rate_rps"], c["seed"]) for c in doc["cells"]]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 10_000
    by = {(c["policy"], c["variant"], c["rate_rps"], c["seed"]): c["summary"] for c in doc["cells"]}
    # Four instances at 400 req/s are overloaded where sixteen are not; a tighter TTFT SLO
    # on the same cluster is met by fewer requests.
    assert by[("least-loaded", "4", 400.0, 0)]["slo_attainment"] < by[("least-loaded", "16", 400.0, 0)][
        "slo_attainment"]
    assert by[("least-loaded", "4-tight", 400.0, 0)]["slo_attainment"] < by[("least-loaded", "4", 400.0, 0)][
        "slo_attainment"]
    # Another seed draws other arrivals (the lengths are the trace's first 300 rows either way).
    assert by[("least-loaded", "16", 100.0, 0)]["makespan_s"] != by[("least-loaded", "16", 100.0, 1)]["makespan_s"]
    assert "least-loaded  4-tight" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--parallel", "2", "--address", "auto"], ["--parallel", "0"]])
def test_runtime_flags_are_checked_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["compare", "--policies", "least-loaded", *flags])
    assert exit_.value.code == 2 and "--parallel" in capsys.readouterr().err
