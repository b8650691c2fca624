"""Calibration: reading measurements, fitting the H100, and checking predictions against the real CSV."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.calibration import (
    COLUMNS,
    FIT_FIELDS,
    MeasurementError,
    fit_h100,
    format_model_check,
    load_measurements,
    main,
    run_model_check,
)
from workers.devices import get_device

# tests/workers/<this file> -> repository root -> ../shared/calibration
H100_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "calibration" / "h100_llama-3.1-8b.csv"
needs_csv = pytest.mark.skipif(not H100_CSV.is_file(),
                               reason=f"calibration data not present at {H100_CSV} (../shared is not mounted)")


def write_csv(tmp_path: Path, *rows: str, header: str = ",".join(COLUMNS)) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("\n".join((header,) + rows) + "\n")
    return path


def test_load_measurements_parses_rows(tmp_path):
    path = write_csv(tmp_path, "prefill,1,128,9.33,452.1,0.03935", "decode,4,512,7.073,,")
    rows = load_measurements(path)
    assert [(r.phase, r.batch, r.tokens_per_seq, r.ms, r.line) for r in rows] == [
        ("prefill", 1, 128, 9.33, 2), ("decode", 4, 512, 7.073, 3)]
    assert rows[1].mean_power_w is None and rows[1].joules_per_token is None
    # Energy is per prompt token for prefill, per generated token for decode.
    assert (rows[0].tokens, rows[1].tokens) == (128, 4)


@pytest.mark.parametrize(("rows", "header", "where"), [
    (("decode,4,512,fast,435.8,0.78",), None, ":2: field 'ms'"),
    (("prefill,1,128,9.3,452.1,0.04", "decode,x,512,7.0,435.8,0.78"), None, ":3: field 'batch'"),
    (("prefil,1,128,9.3,452.1,0.04",), None, ":2: field 'phase'"),
    (("prefill,1,0,9.3,452.1,0.04",), None, ":2: field 'tokens_per_seq'"),
    (("decode,4,512,-7.0,435.8,0.78",), None, ":2: field 'ms'"),
    (("decode,4,512,7.0,435.8",), None, ":2: expected 6 fields"),
    (("decode,4,512,7.0,435.8,0.78",), "phase,batch,tokens,ms,mean_power_w,joules_per_token", ":1: header"),
])
def test_measurement_errors_name_file_line_and_field(tmp_path, rows, header, where):
    path = write_csv(tmp_path, *rows, header=header or ",".join(COLUMNS))
    with pytest.raises(MeasurementError) as info:
        load_measurements(path)
    assert f"{path}{where}" in str(info.value)


def test_missing_measurement_file_is_reported(tmp_path):
    with pytest.raises(MeasurementError, match="cannot read"):
        load_measurements(tmp_path / "nope.csv")


@needs_csv
def test_real_csv_loads():
    rows = load_measurements(H100_CSV)
    assert len(rows) == 24
    assert sum(r.phase == "prefill" for r in rows) == 7


@needs_csv
def test_model_check_on_h100_is_within_targets():
    result = run_model_check("h100-sxm", "llama-3.1-8b", H100_CSV)
    s = result["summary"]
    assert (result["device"], result["model"], s["points"]) == ("h100-sxm", "llama-3.1-8b", 24)
    # Targets: median |error| <= 5% latency, <= 10% energy.
    assert s["latency_median_abs_error"] <= 0.05 and s["energy_median_abs_error"] <= 0.10
    # With streaming pinned at the copy ceiling the worst point is short prefill (512 tokens, +10.8%),
    # where eager kernel launches and streaming overlap in ways one per-layer constant cannot follow.
    assert s["latency_max_abs_error"] < 0.12 and s["energy_max_abs_error"] < 0.12


@needs_csv
def test_model_check_points_carry_measured_and_predicted_columns():
    result = run_model_check("h100-sxm", "llama-3.1-8b", H100_CSV)
    point = result["points"][0]
    assert set(COLUMNS) <= set(point)
    assert {"predicted_ms", "latency_error", "predicted_joules_per_token", "energy_error"} <= set(point)
    # Signed relative error.
    assert point["latency_error"] == pytest.approx((point["predicted_ms"] - point["ms"]) / point["ms"])
    json.dumps(result)  # plain data, ready for --json


@needs_csv
def test_format_model_check_has_table_and_summary():
    text = format_model_check(run_model_check("h100-sxm", "llama-3.1-8b", H100_CSV))
    assert "pred ms" in text and "latency |error| median" in text
    assert len(text.splitlines()) == 24 + 5 + 1 + len(FIT_FIELDS)
    assert "decode_overhead_per_layer_s" in text


@needs_csv
def test_fit_reproduces_the_catalogue_literals():
    fitted = fit_h100(H100_CSV)
    h100 = get_device("h100-sxm")
    for name in FIT_FIELDS:
        assert fitted[name] == pytest.approx(getattr(h100, name), rel=0.01), name
    # One shape measured: streaming pinned at the copy ceiling, fixed time per layer fitted above it.
    assert fitted["weight_bw_efficiency"] == pytest.approx(2.97 / 3.35)
    assert 40e-6 < fitted["decode_overhead_per_layer_s"] < 70e-6


@needs_csv
def test_cli_fit_prints_every_constant(capsys):
    assert main(["fit", str(H100_CSV)]) == 0
    out = capsys.readouterr().out
    for name in FIT_FIELDS:
        assert f"{name} = " in out


def test_cli_reports_bad_input(tmp_path, capsys):
    path = write_csv(tmp_path, "decode,4,512,fast,435.8,0.78")
    assert main(["check", str(path)]) == 2
    assert "field 'ms'" in capsys.readouterr().err
