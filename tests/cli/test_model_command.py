"""`infersched model list/predict/check/fit` and device spec files, run in-process as a user would."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, load_cluster
from infersched.cli import main
from workers.device_files import DeviceFileError, load_device_file
from workers.devices import get_device
from workers.models import MODELS, get_model
from workers.perf import InstancePerf
from workers.predict import PredictionError, predict

H100_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "calibration" / "h100_llama-3.1-8b.csv"
needs_csv = pytest.mark.skipif(not H100_CSV.is_file(), reason="../shared/calibration/h100_llama-3.1-8b.csv absent")

PREDICT_FIELDS = ["device", "model", "chips", "batch", "context", "decode_tokens_per_s", "ttft_s",
                  "joules_per_output_token", "usd_per_million_output_tokens", "kv_capacity_tokens"]


def test_model_list_json_has_sizes_and_smallest_instances(capsys):
    assert main(["model", "list", "--json", "-"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing["models"]) == set(MODELS)
    ds = listing["models"]["deepseek-v3"]
    assert (round(ds["params_b"]), round(ds["active_params_b"]), ds["kv_bytes_per_token"]) == (671, 38, 70272)
    assert ds["smallest_instance_chips"]["h100-sxm"] is None and ds["smallest_instance_chips"]["h200"] == 8
    assert listing["models"]["llama-3.1-8b"]["smallest_instance_chips"]["wse-3"] == 1


def test_model_list_table_names_every_model_and_device(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in MODELS)
    assert "gqa+w128" in out and "mla" in out


def test_predict_json_fields(capsys):
    args = ["model", "predict", "--device", "wse-3", "--model", "gpt-oss-120b", "--batch", "1",
            "--context", "1024", "--json", "-"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == PREDICT_FIELDS
    perf = InstancePerf(get_device("wse-3"), get_model("gpt-oss-120b"), result["chips"], max_seqs=1)
    assert result["decode_tokens_per_s"] == pytest.approx(1.0 / perf.decode_step_s(1, 1024.0))
    assert result["ttft_s"] == pytest.approx(perf.prefill(1024, 1024 * 1025 / 2, 1)[0])


def test_predict_energy_and_price_per_output_token():
    r = predict(get_device("h100-sxm"), get_model("llama-3.1-8b"), batch=64, context=2048)
    step_s = 1.0 / r["decode_tokens_per_s"]
    assert r["usd_per_million_output_tokens"] == pytest.approx(2.99 / 3600 * step_s / 64 * 1e6)
    # At batch 64 the H100 draws between idle and peak power.
    assert 147.5 * step_s / 64 < r["joules_per_output_token"] < 700 * step_s / 64


def test_predict_for_a_model_no_instance_holds_is_one_line(capsys):
    assert main(["model", "predict", "--device", "phone", "--model", "deepseek-v3"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "needs about 94 x phone" in out and "serves with one chip" in out
    with pytest.raises(PredictionError, match=r"needs about 10 x h100-sxm .* at most 8"):
        predict(get_device("h100-sxm"), get_model("deepseek-v3"), batch=8, context=4096)


def test_predict_with_too_few_chips_says_why():
    with pytest.raises(PredictionError, match="hold 0 tokens of KV"):
        predict(get_device("h100-sxm"), get_model("llama-3.1-70b"), chips=1)


@needs_csv
def test_model_check_reports_fitted_terms(capsys):
    assert main(["model", "check", "--measurements", str(H100_CSV), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    terms = {t["term"]: t for t in result["terms"]}
    assert {"decode_overhead_per_layer_s", "weight_bw_efficiency", "energy_per_byte_j"} <= set(terms)
    assert "copy ceiling" in terms["weight_bw_efficiency"]["source"]
    assert result["summary"]["latency_median_abs_error"] <= 0.05


@needs_csv
def test_model_fit_writes_a_device_spec_pools_can_name(tmp_path, capsys, monkeypatch):
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps({"copy_GBps_rw": 2900.0, "idle_power_w": 120.0}))
    out = tmp_path / "my-gpu.yaml"
    assert main(["model", "fit", "--measurements", str(H100_CSV), "--base", "h100-sxm",
                 "--ceilings", str(ceilings), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    device = load_device_file(out)
    assert device.name == "my-gpu" and device.idle_power_w == 120.0
    # Streaming pinned at the new measured ceiling, 2.9 / 3.35 of the datasheet.
    assert device.weight_bw_efficiency == pytest.approx(2.9 / 3.35)
    assert "fit to" in device.sources["decode_overhead_per_layer_s"]
    # A pool names it by path; the cluster builds and the instance uses the fitted constants.
    monkeypatch.chdir(tmp_path)
    cluster_file = tmp_path / "c.yaml"
    cluster_file.write_text(yaml.safe_dump({"name": "c", "pools": [
        {"name": "p", "device": "./my-gpu.yaml", "instances": 1, "model": "gpt-oss-20b", "role": "both"}]}))
    pool = Cluster(load_cluster(cluster_file)).pools[0]
    assert pool.perf.device.name == "my-gpu" and pool.perf.idle_power_w == 120.0


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nbase: h100-sxm\nmemory_byte: 1\n", ": memory_byte: unknown key"),
    ("name: x\nbase: h100\n", ": base: unknown device 'h100'"),
    ("name: x\nbase: h100-sxm\nmemory_bytes: lots\n", ": memory_bytes: must be a number"),
    ("name: x\n", ": kind: missing (give `base: DEVICE`"),
    ("name: x\nbase: h100-sxm\nweight_bw_efficiency: 0.95\n", ": weight_bw_efficiency 0.95 exceeds the measured copy"),
    ("- 1\n", ": device spec must be a mapping"),
    ("name: x\nbase: wse-3\nparallelism: expert\n", ": parallelism must be one of ('tensor', 'pipeline')"),
])
def test_device_file_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(DeviceFileError) as info:
        load_device_file(path)
    assert f"{path}{message}" in str(info.value)


def test_device_file_sets_parallelism(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: tp-wafer\nbase: wse-3\nparallelism: tensor\n")
    device = load_device_file(path)
    # Tensor-parallel wafers pay 2 all-reduces of log2(4) = 2 hops per layer (320 for 70B) where a
    # pipeline pays 3 boundaries; the extra hops outweigh the wafers reading in parallel.
    wse = get_device("wse-3")
    pipeline = InstancePerf(wse, get_model("llama-3.1-70b"), 4, max_seqs=1)
    tensor = InstancePerf(device, get_model("llama-3.1-70b"), 4, max_seqs=1)
    assert device.parallelism == "tensor"
    assert tensor.decode_step_s(1, 1024) > pipeline.decode_step_s(1, 1024) + 200 * wse.collective_latency_s


def test_bad_device_file_in_a_pool_is_a_config_error(tmp_path):
    (tmp_path / "d.yaml").write_text("name: x\nbase: nope\n")
    cluster_file = tmp_path / "c.yaml"
    cluster_file.write_text(yaml.safe_dump({"name": "c", "pools": [
        {"name": "p", "device": str(tmp_path / "d.yaml"), "instances": 1, "model": "llama-3.1-8b",
         "role": "both"}]}))
    with pytest.raises(ConfigError, match="pool 'p': key 'device': .*base: unknown device 'nope'"):
        Cluster(load_cluster(cluster_file))


@pytest.mark.parametrize("model", ["deepseek-v3", "gpt-oss-120b", "llama-4-maverick", "mixtral-8x7b"])
def test_moe_models_simulate_in_a_pool(tmp_path, capsys, model):
    cluster_file = tmp_path / "c.yaml"
    cluster_file.write_text(yaml.safe_dump({"name": "c", "pools": [
        {"name": "p", "device": "b200", "instances": 1, "model": model, "role": "both"}]}))
    assert main(["simulate", "--cluster", str(cluster_file), "--requests", "200", "--rate", "2",
                 "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 200 and summary["failed"] == 0


@pytest.mark.parametrize(("flags", "rc", "needle"), [
    (["--draft", "llama-3.2-1b", "--acceptance", "0.8"], 0, '"draft": "llama-3.2-1b"'),
    (["--draft", "llama-3.2-1b"], 2, "--draft and --acceptance go together"),
    (["--acceptance", "0.8"], 2, "--draft and --acceptance go together"),
    (["--draft", "llama-3.2-1b", "--acceptance", "2"], 1, "acceptance must be in [0, 1]"),
])
def test_predict_speculative_flags(capsys, flags, rc, needle):
    args = ["model", "predict", "--device", "wse-3", "--model", "llama-3.1-70b", "--json", "-", *flags]
    assert main(args) == rc
    captured = capsys.readouterr()
    assert needle in captured.out + captured.err
