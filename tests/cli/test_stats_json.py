"""`stats --json` speaks the `simulate --json` summary's language: numbers as numbers, the same key names."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infersched.client.stats import stats_json
from infersched.v1 import common_pb2, scheduler_pb2

ROOT = Path(__file__).resolve().parents[2]

# Keys only a running scheduler has (counters of a service that is still up, queue state now).
LIVE_ONLY = {"uptime_s", "started_unix_s", "invalid", "in_flight", "decisions", "scheduling_overhead_s"}
LIVE_ONLY_POOL = {"queue_depth", "running", "completed", "kv_free_tokens", "kv_capacity_tokens"}


def stats_message() -> scheduler_pb2.SchedulerStats:
    lat = common_pb2.LatencyPercentiles
    return scheduler_pb2.SchedulerStats(
        policy="slo-aware", cluster="live-small", uptime_s=12.5, started_unix_s=1.7e9, requests_total=300,
        requests_completed=297, requests_rejected=2, requests_failed=1, requests_invalid=4, in_flight=0,
        reasons={"QUEUE_FULL": 2, "WORKER_RESTARTED": 1}, decisions_total=301,
        scheduling_overhead_s=lat(samples=301, p50_s=2e-5, p90_s=4e-5, p99_s=1e-4, mean_s=2.5e-5),
        ttft_s=lat(samples=297, p50_s=0.12, p90_s=0.35, p99_s=0.9, mean_s=0.18),
        tpot_s=lat(samples=297, p50_s=0.021, p90_s=0.03, p99_s=0.045, mean_s=0.023),
        e2e_s=lat(samples=297, p50_s=4.2, p90_s=9.8, p99_s=20.5, mean_s=5.1), slo_attainment=0.95,
        input_tokens=210_000, output_tokens=35_000, energy_j=5.5e5, cost_usd=0.31,
        pools=[scheduler_pb2.PoolStats(name="h100-decode", device="h100-sxm", model="llama-3.1-8b",
                                       role=common_pb2.ROLE_DECODE, instances=1, chips_per_instance=1, queue_depth=0,
                                       running=0, completed=297, prefill_tokens=0, decode_tokens=35_000,
                                       utilization=0.4, energy_j=2e5, cost_usd=0.1, kv_free_tokens=900,
                                       kv_capacity_tokens=1000)])


def simulate_summary() -> dict:
    proc = subprocess.run([sys.executable, "-m", "infersched.cli", "simulate", "--cluster", "live-small",
                           "--requests", "50", "--json", "-"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_numbers_are_numbers():
    s = json.loads(stats_json(stats_message()))
    assert (s["requests"], s["completed"], s["rejected"], s["failed"]) == (300, 297, 2, 1)
    assert s["ttft_s"] == {"p50": 0.12, "p90": 0.35, "p99": 0.9, "mean": 0.18, "samples": 297}
    assert s["reject_codes"] == {"QUEUE_FULL": 2, "WORKER_RESTARTED": 1}
    assert s["pools"]["h100-decode"]["decode_tokens"] == 35_000 and s["pools"]["h100-decode"]["role"] == "decode"


def test_key_names_match_the_simulate_summary():
    stats = json.loads(stats_json(stats_message()))
    summary = simulate_summary()
    assert set(stats) - LIVE_ONLY <= set(summary), set(stats) - LIVE_ONLY - set(summary)
    for latency in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(stats[latency]) - {"samples"} == set(summary[latency])
    pool = stats["pools"]["h100-decode"]
    assert set(pool) - LIVE_ONLY_POOL <= set(summary["pools"]["h100-decode"])
    for key in ("role", "device", "model"):
        assert pool[key] == summary["pools"]["h100-decode"][key]
