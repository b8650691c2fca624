"""Traces read block by block (`scan_trace`, `TraceFile.blocks`) give what a whole-file read gives.

The same rows, report and errors as `read_trace`; replays whose summary JSON
is byte for byte the whole-file replay's on real traces and several policies;
a file changed between the check and the replay is refused.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from infersched.cli.clusters import resolve
from scheduler.cluster import Cluster
from scheduler.config import load_cluster
from scheduler.registry import build_policy
from simulator.jobs import WALL_CLOCK_KEYS
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import (Trace, TraceFile, TraceFileError, TraceFormatError, builtin_trace_path, read_trace,
                              rows, scan_trace)
from simulator.traces.stream import rebatch
from simulator.workload import make_workload

SHARED = Path("/work/shared/traces")
REAL = [SHARED / "azure2023" / "AzureLLMInferenceTrace_conv.csv", SHARED / "vidur" / "splitwise_code.csv",
        SHARED / "vidur" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"]
T0 = "2024-05-10 00:00:00"


def real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not on this machine (see /work/shared/traces/README.md)")
    return path


def mooncake(tmp_path: Path, n: int = 3000, gz: bool = False) -> Path:
    rng = np.random.default_rng(3)
    lines = []
    t = 0
    for i in range(n):
        t += int(rng.integers(0, 40))
        ids = list(range(i % 7, i % 7 + int(rng.integers(0, 12))))
        lines.append(json.dumps({"timestamp": t, "input_length": int(rng.integers(1, 6000)),
                                 "output_length": int(rng.integers(1, 400)), "hash_ids": ids}))
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("m.jsonl.gz" if gz else "m.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def joined(tf: TraceFile) -> dict:
    blocks = list(tf.blocks())
    cols = {"input_tokens": np.concatenate([b.input_tokens for b in blocks]),
            "output_tokens": np.concatenate([b.output_tokens for b in blocks])}
    if blocks[0].arrival_s is not None:
        cols["arrival_s"] = np.concatenate([b.arrival_s for b in blocks])
    if blocks[0].hash_ids is not None:
        lengths = np.concatenate([np.diff(b.hash_ids[0]) for b in blocks])
        cols["hash_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        cols["hash_values"] = np.concatenate([b.hash_ids[1] for b in blocks])
    return cols


def whole(trace: Trace) -> dict:
    cols = {"input_tokens": trace.input_tokens, "output_tokens": trace.output_tokens}
    if trace.arrival_s is not None:
        cols["arrival_s"] = trace.arrival_s
    if trace.hash_ids is not None:
        cols["hash_offsets"], cols["hash_values"] = trace.hash_ids
    return cols


REPORT = ("path", "format", "rows", "span_s", "bad_rows", "skipped_rows", "bad_rows_by_field", "filtered_rows",
          "rows_before_window", "has_timestamps", "mean_rate_rps", "bad_row_reasons")


def assert_same(tf: TraceFile, trace: Trace) -> None:
    for name in REPORT:
        assert getattr(tf, name) == getattr(trace, name), name
    a, b = joined(tf), whole(trace)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


READS = [{}, {"max_rows": 5000}, {"start_s": 600.0, "duration_s": 900.0}, {"start_s": 1200.0}]


@pytest.mark.parametrize("kwargs", READS, ids=["all", "max_rows", "window", "from"])
@pytest.mark.parametrize("chunk", [1 << 20, 3000], ids=["1MB", "3kB"])
@pytest.mark.parametrize("name", ["azure-conv", "splitwise-code", "builtin-gz", "mooncake", "mooncake-gz"])
def test_blocks_join_to_the_whole_file_read(tmp_path, monkeypatch, name, chunk, kwargs):
    path = {"azure-conv": lambda: real(REAL[0]), "splitwise-code": lambda: real(REAL[1]),
            "builtin-gz": builtin_trace_path, "mooncake": lambda: mooncake(tmp_path),
            "mooncake-gz": lambda: mooncake(tmp_path, gz=True)}[name]()
    if name.startswith("mooncake") and "start_s" in kwargs:
        kwargs = {"start_s": kwargs["start_s"] / 200, **({"duration_s": 9.0} if "duration_s" in kwargs else {})}
    monkeypatch.setattr(rows, "CHUNK_BYTES", chunk)  # small reads: many blocks, lines cut between reads
    tf = scan_trace(path, **kwargs)
    assert tf.rows > 0
    assert_same(tf, read_trace(path, **kwargs))


def test_lengths_only_and_skipped_rows(tmp_path, monkeypatch):
    assert_same(scan_trace(real(REAL[2])), read_trace(REAL[2]))
    lines = [f"{T0}.{i:06d}+00:00,{i % 50 + 1},{i % 9 + 1}" for i in range(4000)]
    for i in (5, 1700, 3999):
        lines[i] = lines[i].rsplit(",", 1)[0] + ",x"
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\r\n" + "\r\n".join(lines) + "\r\n")
    monkeypatch.setattr(rows, "CHUNK_BYTES", 2048)
    tf = scan_trace(path, skip_bad_rows=True)
    assert tf.bad_rows == 3 and [r.line for r in tf.skipped_rows] == [7, 1702, 4001]
    assert_same(tf, read_trace(path, skip_bad_rows=True))


@pytest.mark.parametrize("text, kwargs", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n" + f"{T0},5,6\n" * 2, {}),  # duplicate timestamp
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n" + f"{T0},5,0\n", {}),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n" + f"{T0},5,7\n", {"start_s": 10.0}),
    ("a,b\n1,2\n", {}),
    ("", {}),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\nx,2,3\n1.0,-2,3\n", {"skip_bad_rows": True}),
], ids=["duplicate", "zero-output", "empty-window", "unknown-header", "empty", "all-bad"])
def test_the_same_errors(tmp_path, text, kwargs):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError) as whole_err:
        read_trace(path, **kwargs)
    with pytest.raises(TraceFormatError) as scan_err:
        scan_trace(path, **kwargs)
    assert str(scan_err.value) == str(whole_err.value)
    assert scan_err.value.skippable == whole_err.value.skippable


def test_a_changed_file_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("input_tokens,output_tokens\n" + "5,6\n" * 10)
    tf = scan_trace(path)
    path.write_text("input_tokens,output_tokens\n" + "5,6\n" * 11)
    os.utime(path, ns=(1, 1))
    with pytest.raises(TraceFileError, match="changed since it was scanned"):
        list(tf.blocks())


def test_rebatch_cuts_exact_blocks_and_stops_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "CHUNK_BYTES", 1000)
    path = mooncake(tmp_path)
    tf = scan_trace(path)
    source = tf.blocks()
    out = list(rebatch(source, 256, limit=1000))
    assert [b.rows for b in out] == [256, 256, 256, 232]
    assert source.gi_frame is None  # closed: the file is not read further
    trace = read_trace(path, max_rows=1000)
    assert np.array_equal(np.concatenate([b.arrival_s for b in out]), trace.arrival_s)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(b.hash_ids[0]) for b in out]))])
    assert np.array_equal(offsets, trace.hash_ids[0])


def summary(cluster_name: str, policy: str | None, trace, **workload) -> str:
    config = load_cluster(resolve(cluster_name))
    cluster = Cluster(config)
    result = Simulation(cluster, build_policy(policy or config.policy, config), make_workload(trace, **workload),
                        seed=1, keep_records=False).run()
    s = {k: v for k, v in summarize(result).items() if k not in WALL_CLOCK_KEYS}
    s["trace"] = {name: getattr(trace, name) for name in REPORT}
    return json.dumps(s, sort_keys=True, default=str)


@pytest.mark.parametrize("cluster, policy, read, workload", [
    ("gpu-colocated", "least-loaded", {}, {}),
    ("gpu-disagg", "slo-aware", {"start_s": 600.0, "duration_s": 1800.0}, {}),
    ("hybrid", None, {"max_rows": 8000}, {}),
    ("hybrid", "cost-aware", {}, {"n_requests": 6000}),
    ("gpu-colocated", "least-loaded", {"max_rows": 9000}, {"rate_rps": 4.0, "arrival": "gamma"}),
], ids=["colocated-all", "disagg-window", "hybrid-first-rows", "hybrid-n-of-all", "gamma-lengths-in-order"])
def test_replay_summary_is_byte_for_byte_the_whole_file_one(monkeypatch, cluster, policy, read, workload):
    path = real(REAL[0])
    monkeypatch.setattr(rows, "CHUNK_BYTES", 1 << 16)  # many file blocks per 64k-request generation block
    streamed = scan_trace(path, **read)
    assert isinstance(make_workload(streamed, **workload).trace, TraceFile)
    assert summary(cluster, policy, streamed, **workload) == summary(cluster, policy, read_trace(path, **read),
                                                                    **workload)


def test_mooncake_replay_with_prefix_caching_and_resampling(tmp_path):
    path = mooncake(tmp_path, gz=True)
    assert summary("kv-tiers", None, scan_trace(path)) == summary("kv-tiers", None, read_trace(path))
    # More requests than rows: lengths drawn at random, from the rows read whole.
    more = {"n_requests": 4000, "rate_rps": 3.0}
    assert isinstance(make_workload(scan_trace(path), **more).trace, Trace)
    assert summary("kv-tiers", None, scan_trace(path), **more) == summary("kv-tiers", None, read_trace(path), **more)
