"""End-to-end: the `infersched` command on the real traces in ../shared/traces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infersched.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TRACES = SHARED / "traces"
CALIBRATION = SHARED / "calibration" / "h100_llama-3.1-8b.csv"
needs_shared = pytest.mark.skipif(not TRACES.exists(), reason="../shared/traces not present beside the repo")

SUMMARY_KEYS = {"requests", "completed", "rejected", "failed", "input_tokens", "output_tokens", "ttft_s", "tpot_s",
                "e2e_s", "slo_attainment", "goodput_rps", "cost_usd", "energy_j", "energy_per_output_token_j",
                "sim_wall_s", "events", "pools"}
POOL_KEYS = {"requests", "prefill_tokens", "decode_tokens", "utilization", "energy_j", "cost_usd"}


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_simulate_prints_the_table(capsys):
    code, out, _ = run_cli(["simulate", "--no-progress", "--requests", "3000"], capsys)
    assert code == 0
    for text in ("cluster demo | policy cost-aware", "TTFT", "TPOT", "end-to-end", "SLO", "goodput", "cost $",
                 "J per output token", "kWh", "laptops", "h100", "routing: ", "cost: ", "energy: "):
        assert text in out


def test_default_demo_routes_across_device_classes_and_bills_no_idle_pool(tmp_path, capsys):
    """The first run a user sees: the whole built-in trace on the default cluster and policy."""
    path = tmp_path / "s.json"
    code, out, _ = run_cli(["simulate", "--no-progress", "--json", str(path)], capsys)
    assert code == 0
    s = json.loads(path.read_text())
    laptops, h100 = s["pools"]["laptops"], s["pools"]["h100"]
    assert s["slo_attainment"] >= 0.995 and s["completed"] == s["requests"] == 19366
    # Both device classes serve a real share; the SLO sends the long prompts to the GPU.
    assert laptops["share"] > 0.3 and h100["share"] > 0.5
    assert laptops["prefill_tokens"] / laptops["requests"] * 3 < h100["prefill_tokens"] / h100["requests"]
    # Every billed pool works for its money: under 5% of the bill pays for idle time.
    assert all(p["requests"] > 0 for p in s["pools"].values())
    assert s["busy_cost_usd"] > 0.95 * s["cost_usd"]
    assert "every pool served requests" in out


@needs_shared
@pytest.mark.parametrize("trace, extra", [
    ("azure2023/AzureLLMInferenceTrace_conv.csv", []),
    ("azure2023/AzureLLMInferenceTrace_code.csv", ["--cluster", str(ROOT / "deploy/clusters/gpu-disagg.yaml")]),
    ("vidur/splitwise_conv.csv", ["--policy", "round-robin"]),
    ("vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", ["--rate", "20"]),
])
def test_simulate_real_traces_json(tmp_path, capsys, trace, extra):
    out_json = tmp_path / "s.json"
    code, _, _ = run_cli(["simulate", "--trace", str(TRACES / trace), "--requests", "2000", "--json",
                          str(out_json), "--no-progress", *extra], capsys)
    assert code == 0
    s = json.loads(out_json.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["requests"] == 2000 and s["completed"] + s["rejected"] + s["failed"] == 2000
    for p in s["pools"].values():
        assert POOL_KEYS <= set(p)
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert s[key]["p50"] <= s[key]["p90"] <= s[key]["p99"]
    assert s["energy_j"] > 0 and s["cost_usd"] > 0
    assert sum(p["requests"] for p in s["pools"].values()) >= s["completed"]


@needs_shared
def test_vidur_and_azure_forms_of_the_same_trace_agree(tmp_path, capsys):
    results = []
    for trace in ("azure2023/AzureLLMInferenceTrace_conv.csv", "vidur/splitwise_conv.csv"):
        path = tmp_path / (Path(trace).stem + ".json")
        assert main(["simulate", "--trace", str(TRACES / trace), "--requests", "1500", "--json", str(path),
                     "--no-progress"]) == 0
        results.append(json.loads(path.read_text()))
    capsys.readouterr()
    a, b = results
    assert a["input_tokens"] == b["input_tokens"] and a["output_tokens"] == b["output_tokens"]
    assert a["ttft_s"]["p50"] == pytest.approx(b["ttft_s"]["p50"], rel=1e-6)


def test_out_dir_writes_json_records_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["simulate", "--requests", "1000", "--rate", "20", "--out", str(out), "--no-progress"],
                           capsys)
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["requests"] == 1000
    rec = np.load(out / "requests.npz")
    assert len(rec["arrival_s"]) == 1000 and set(rec["status"].tolist()) <= {1, 2, 3}
    for png in ("latency_cdf.png", "utilization.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_json_to_stdout_is_pure_json(capsys):
    code, out, _ = run_cli(["simulate", "--requests", "500", "--json", "-"], capsys)
    assert code == 0
    assert json.loads(out)["requests"] == 500


@pytest.mark.parametrize("content, needle", [
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n1.0,-4,5\n", ":3: field 'num_prefill_tokens'"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n1.0,abc,5\n", ":3: field 'num_prefill_tokens'"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n2.0,10,5\n1.0,10,5\n", ":3: field 'arrived_at'"),
    ("arrived_at,num_prefill_tokens\n0.0,10\n", "num_decode_tokens"),
    ("", "empty"),
])
def test_bad_trace_rows_name_file_line_and_field(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, _, err = run_cli(["simulate", "--trace", str(path), "--no-progress"], capsys)
    assert code == 2
    assert str(path) in err and needle in err


def test_bad_row_error_suggests_skip_bad_rows(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n1.0,-4,5\n")
    code, _, err = run_cli(["simulate", "--trace", str(path), "--no-progress"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"infersched: error: {path}:3: field 'num_prefill_tokens': negative: "
                                        "'-4' (--skip-bad-rows skips such rows)"]


def test_skip_bad_rows_prints_ten_and_lists_all_in_the_json(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    rows = ["0.0,10,5"] + [f"{i}.5,x{i},5" for i in range(1, 13)] + ["20.0,20,5", "21.0,7"]
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "\n".join(rows) + "\n")
    out_json = tmp_path / "s.json"
    code, _, err = run_cli(["simulate", "--trace", str(path), "--skip-bad-rows", "--json", str(out_json),
                            "--no-progress"], capsys)
    assert code == 0
    s = json.loads(out_json.read_text())
    assert s["trace"]["bad_rows"] == 13 and s["requests"] == 2
    assert s["trace"]["bad_rows_by_field"] == {"num_prefill_tokens": 12, "num_decode_tokens": 1}
    assert s["trace"]["skipped_rows"][0] == {"line": 3, "field": "num_prefill_tokens",
                                             "reason": "not an integer: 'x1'"}
    assert [r["line"] for r in s["trace"]["skipped_rows"]] == list(range(3, 15)) + [16]
    assert s["trace"]["skipped_rows_omitted"] == 0
    printed = [line.strip() for line in err.splitlines() if line.startswith("  " + str(path))]
    assert printed == [f"{path}:{n}: field 'num_prefill_tokens': not an integer: 'x{n - 2}'" for n in range(3, 13)]
    assert "skipped 13 malformed trace rows (--skip-bad-rows); the first 10:" in err


VIDUR_WITH_BAD_TAIL = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n1.0,20,5\n2.0,30,5\n2.5,40,5\n3.0,x,5\n"


@pytest.mark.parametrize("extra, code", [
    ([], 0),                          # replayed at trace times: only the first 3 rows are read
    (["--rate", "5"], 0),             # synthesized at a given rate: lengths of the first 3 rows
    (["--arrival", "poisson"], 2),    # the trace's mean rate needs every row, so the bad one is read
])
def test_requests_reads_only_the_rows_it_needs(tmp_path, capsys, extra, code):
    path = tmp_path / "t.csv"
    path.write_text(VIDUR_WITH_BAD_TAIL)
    out_json = tmp_path / "s.json"
    got, _, err = run_cli(["simulate", "--trace", str(path), "--requests", "3", "--json", str(out_json),
                           "--no-progress"] + extra, capsys)
    assert got == code, err
    if code == 0:
        assert json.loads(out_json.read_text())["trace"]["rows"] == 3
    else:
        assert f"{path}:6: field 'num_prefill_tokens'" in err


def test_time_window_flags_select_rows_and_are_reported(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(VIDUR_WITH_BAD_TAIL)
    out_json = tmp_path / "s.json"
    code, _, err = run_cli(["simulate", "--trace", str(path), "--start", "1", "--duration", "1.5", "--json",
                            str(out_json), "--no-progress"], capsys)
    assert code == 0, err
    s = json.loads(out_json.read_text())
    assert s["requests"] == 2
    assert {k: s["trace"][k] for k in ("rows", "start_s", "duration_s", "rows_before_window")} == {
        "rows": 2, "start_s": 1.0, "duration_s": 1.5, "rows_before_window": 1}


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp, "{}: is a directory; give a trace file (CSV or JSON lines, .gz ok)"),
    (lambda tmp: tmp / "nope.csv", "trace file not found: {}"),
], ids=["directory", "missing"])
def test_unreadable_trace_is_one_line(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code, _, err = run_cli(["simulate", "--trace", str(path), "--no-progress"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"infersched: error: {message.format(path)}"]


@pytest.mark.parametrize("change, needle", [
    ("device: h100-sxm", "device: h100-sxx"),
    ("policy: slo-aware", "policy: fastest-possible"),
    ("model: llama-3.1-8b", "model: llama-9"),
])
def test_bad_cluster_fails_before_the_run(tmp_path, capsys, change, needle):
    text = (ROOT / "deploy/clusters/gpu-disagg.yaml").read_text().replace(change, needle, 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, out, err = run_cli(["simulate", "--cluster", str(path), "--no-progress"], capsys)
    assert code == 2 and out == ""
    assert needle.split(": ")[1] in err


def test_cluster_where_no_pool_can_hold_the_model(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("pools:\n  - {name: p, device: phone, instances: 1, model: llama-3.1-70b, role: both}\n")
    code, _, err = run_cli(["simulate", "--cluster", str(path), "--no-progress"], capsys)
    assert code == 2 and "does not fit" in err and "pool 'p'" in err


@pytest.mark.skipif(not CALIBRATION.exists(), reason="../shared/calibration not present beside the repo")
def test_model_check_json(capsys):
    code, out, _ = run_cli(["model", "check", "--device", "h100-sxm", "--model", "llama-3.1-8b",
                            "--measurements", str(CALIBRATION), "--json", "-"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["summary"]["latency_median_abs_error"] <= 0.10
    assert result["summary"]["energy_median_abs_error"] <= 0.20
    point = result["points"][0]
    assert {"predicted_ms", "latency_error", "predicted_joules_per_token", "energy_error", "ms"} <= set(point)


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "infersched"
    if not exe.exists():
        pytest.skip("infersched console script not installed in this environment")
    proc = subprocess.run([str(exe), "policies"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "slo-aware" in proc.stdout


def test_model_list_names_every_device_and_model(capsys):
    code, out, _ = run_cli(["model", "list", "--json", "-"], capsys)
    assert code == 0
    listing = json.loads(out)
    assert {"h100-sxm", "h200", "b200", "wse-3", "groq-lpu", "m4-max", "phone"} <= set(listing["devices"])
    assert listing["models"]["llama-3.1-8b"]["params_b"] == pytest.approx(8.03, abs=0.01)


def test_serve_metrics_host_defaults_to_loopback_and_can_be_set():
    from infersched.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--cluster", "c.yaml"]).metrics_host == "127.0.0.1"
    assert parser.parse_args(["serve", "--cluster", "c.yaml", "--metrics-host", "0.0.0.0"]).metrics_host == "0.0.0.0"
