"""scripts/measure_gpu.py without a GPU: arguments, shapes, the CSV and spec files it writes, read back."""
from __future__ import annotations

import importlib.util
import json

import pytest

from scripts.measure_gpu import (CSV_COLUMNS, DEFAULT_SHAPES, decode_grid, parse_args, resolve_shapes,
                                 slice_spec, write_outputs)
from workers.calibration import COLUMNS, load_measurements, row_models
from workers.models import get_model, load_model


def test_defaults_measure_the_8b_1b_3b_and_the_moe_slice(tmp_path):
    args = parse_args(["--out", str(tmp_path)])
    assert [s.name for s in args.specs] == ["llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b", "qwen3-30b-a3b-slice8"]
    assert DEFAULT_SHAPES[-1] == "qwen3-30b-a3b-slice"
    assert not args.energy_all and args.energy_s == 1.5


@pytest.mark.parametrize(("argv", "message"), [
    (["--shapes", "llama-9"], "unknown model 'llama-9'"),
    (["--slice-layers", "0"], "--slice-layers must be >= 1"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_slice_keeps_qwen3_30b_a3b_layer_shape():
    s, full = slice_spec(4), get_model("qwen3-30b-a3b")
    assert (s.layers, s.experts, s.experts_per_token, s.expert_ffn, s.hidden, s.vocab) == (
        4, 128, 8, 768, full.hidden, full.vocab)
    assert s.moe_layers == 4
    assert resolve_shapes(["qwen3-30b-a3b-slice"], 4)[0] == s


def test_decode_grid_is_the_shipped_8b_grid():
    grid = decode_grid()
    assert len(grid) == 17 and (256, 512) in grid and (64, 8192) not in grid


def _results(slice_layers=2):
    spec = slice_spec(slice_layers)
    from scripts.measure_gpu import spec_mapping

    def model(ref, spec_file):
        return {"name": ref, "spec_ref": ref, "spec": spec_file, "params": 1,
                "prefill": [{"tokens": 128, "ms": 9.33}, {"tokens": 512, "ms": 13.978}],
                "decode": [{"batch": 1, "ctx": 512, "ms": 6.9}, {"batch": 4, "ctx": 512, "ms": 7.073}],
                "energy": [{"phase": "prefill", "tokens": 512, "mean_power_w": 662.1, "j_per_token": 0.0193},
                           {"phase": "decode", "batch": 4, "ctx": 512, "mean_power_w": 435.8,
                            "j_per_token": 0.78057}]}
    return {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "copy_GBps_rw": 2970.0, "idle_power_w": 147.0,
            "models": [model("llama-3.2-1b", None), model(f"{spec.name}.yaml", spec_mapping(spec))]}


def test_outputs_read_back_as_measurements_and_shapes(tmp_path):
    paths = write_outputs(_results(), tmp_path)
    assert {p.name for p in paths} == {"measurements.csv", "ceilings.json", "gpu_calibration.json",
                                       "qwen3-30b-a3b-slice2.yaml"}
    header = (tmp_path / "measurements.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS) and set(COLUMNS) <= set(CSV_COLUMNS)
    rows = load_measurements(tmp_path / "measurements.csv")
    assert len(rows) == 8
    assert [(r.phase, r.batch, r.tokens_per_seq, r.joules_per_token) for r in rows[:4]] == [
        ("prefill", 1, 128, None), ("prefill", 1, 512, 0.0193), ("decode", 1, 512, None), ("decode", 4, 512, 0.78057)]
    models = row_models(rows, "llama-3.1-8b", tmp_path / "measurements.csv")
    assert [m.name for m in models] == ["llama-3.2-1b"] * 4 + ["qwen3-30b-a3b-slice2"] * 4
    assert models[-1] == slice_spec(2)
    assert load_model(str(tmp_path / "qwen3-30b-a3b-slice2.yaml")).moe_layers == 2
    ceilings = json.loads((tmp_path / "ceilings.json").read_text())
    assert ceilings["script_version"] == "2" and ceilings["copy_GBps_rw"] == 2970.0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed (the `test` extra installs it)")
def test_cpu_smoke_run_writes_loadable_measurements(tmp_path):
    from scripts.measure_gpu import main

    assert main(["--smoke", "--shapes", "llama-3.2-1b,qwen3-30b-a3b-slice", "--energy-s", "0.01",
                 "--out", str(tmp_path)]) == 0
    rows = load_measurements(tmp_path / "measurements.csv")
    assert len(rows) == 8 and all(r.ms > 0 for r in rows)
    assert {m.name for m in row_models(rows, "llama-3.1-8b", tmp_path / "measurements.csv")} == {
        "llama-3.2-1b-smoke", "qwen3-30b-a3b-slice8-smoke"}
