"""Replaying a week-long trace: the trace read whole vs read block by block, in one run.

Replays the synthetic Azure-2024-format week that bench/trace_read.py writes
(bench/out/azure2024_week_<rows>.csv, made here when absent) through a
cluster at its recorded timestamps, in fresh subprocesses one after another:

- whole: `read_trace` (every kept row in memory, 24 bytes a row) and a
  workload over the Trace, as `simulate` did before;
- streamed: `scan_trace` (the file checked once, nothing kept) and a workload
  over the TraceFile, which reads the rows again block by block as the replay
  goes, as `simulate` does now.

`--feed-only` generates the request chunks the simulator would be fed
without simulating them: the trace's own cost, minutes instead of hours.

Both keep no per-request records (`keep_records=False`, as `simulate`). Each
reports wall and CPU seconds of the read and of the replay, peak RSS
(VmHWM) and the summary's digest; the script checks that the two summaries
are the same (less the wall-clock keys). The machine is shared: compare the
ratios of one run (`--together` runs both cases at once, under one load).

    python bench/trace_replay.py                     # 20M rows
    python bench/trace_replay.py --rows 2000000      # quicker
    python bench/trace_replay.py --feed-only         # the 20M rows fed, not simulated
Writes bench/results/trace_replay.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from trace_read import week_trace  # noqa: E402

MEASURE = """
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
from scheduler.cluster import Cluster
from scheduler.config import load_cluster
from scheduler.registry import build_policy
from simulator.jobs import WALL_CLOCK_KEYS
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import read_trace, scan_trace
from simulator.workload import make_workload

mode, path, cluster_file, policy, feed_only = sys.argv[2:7]
w0, c0 = time.perf_counter(), time.process_time()
trace = (read_trace if mode == "whole" else scan_trace)(path)
read_wall, read_cpu = time.perf_counter() - w0, time.process_time() - c0
workload = make_workload(trace)
if feed_only == "1":  # the requests the simulator would be fed, without simulating them
    digest = hashlib.sha256()
    for chunk in workload.chunks():
        for column in (chunk.arrival_s, chunk.input_tokens, chunk.output_tokens, chunk.difficulty):
            digest.update(column.tobytes())
    summary = {"requests": workload.n_requests, "completed": None, "chunks_sha256": digest.hexdigest()}
else:
    config = load_cluster(cluster_file)
    result = Simulation(Cluster(config), build_policy(policy or config.policy, config), workload,
                        keep_records=False).run()
    summary = {k: v for k, v in summarize(result).items() if k not in WALL_CLOCK_KEYS}
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
text = json.dumps(summary, sort_keys=True)
print(json.dumps({"rows": trace.rows, "requests": summary["requests"], "completed": summary["completed"],
                  "read_wall_s": read_wall, "read_cpu_s": read_cpu, "wall_s": wall, "cpu_s": cpu,
                  "summary_sha256": hashlib.sha256(text.encode()).hexdigest(),
                  "peak_rss_mb": int(next(line.split()[1] for line in open("/proc/self/status")
                                          if line.startswith("VmHWM:"))) / 1024}))
"""


def start(mode: str, path: Path, cluster: str, policy: str, feed_only: bool) -> tuple:
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(ROOT), mode, str(path), cluster, policy,
                             "1" if feed_only else "0"],
                            stdout=subprocess.PIPE, text=True)
    return mode, started, os.getloadavg()[0], proc


def finish(mode: str, started: str, load: float, proc: subprocess.Popen) -> dict:
    stdout, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{mode} run failed with exit status {proc.returncode}")
    r = json.loads(stdout)
    for k in ("read_wall_s", "read_cpu_s", "wall_s", "cpu_s"):
        r[k] = round(r[k], 2)
    r["peak_rss_mb"] = round(r["peak_rss_mb"], 1)
    return {"case": mode, "started": started, "load_avg_1m_at_start": round(load, 1),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 1), **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--cluster", default=str(ROOT / "deploy" / "clusters" / "gpu-colocated.yaml"))
    ap.add_argument("--policy", default="", help="policy (default: the cluster file's)")
    ap.add_argument("--order", default="whole,streamed", help="cases in the order to run them")
    ap.add_argument("--feed-only", action="store_true",
                    help="read the trace and generate the workload's request chunks, without simulating them")
    ap.add_argument("--together", action="store_true", help="run the cases at the same time, not one by one")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "trace_replay.json"))
    args = ap.parse_args()
    path = week_trace(args.rows)
    runs = []
    modes = args.order.split(",")
    if args.together:  # both at once: the same load for both, half the elapsed time
        for r in [finish(*p) for p in [start(m, path, args.cluster, args.policy, args.feed_only) for m in modes]]:
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
    else:
        for mode in modes:
            r = finish(*start(mode, path, args.cluster, args.policy, args.feed_only))
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
    by = {r["case"]: r for r in runs}
    assert len({r["summary_sha256"] for r in runs}) == 1, "whole-file and streamed runs disagree"
    doc = {"file": path.name, "file_bytes": path.stat().st_size, "rows": args.rows, "together": args.together,
           "feed_only": args.feed_only,
           "cluster": Path(args.cluster).name, "policy": args.policy or "(the cluster's)", "runs": runs,
           "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip(),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "numpy": np.__version__}}
    if {"whole", "streamed"} <= by.keys():
        w, s = by["whole"], by["streamed"]
        doc["ratios_streamed_over_whole"] = {k: round(s[k] / w[k], 3) for k in ("peak_rss_mb", "cpu_s", "wall_s")}
    Path(args.results).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc.get("ratios_streamed_over_whole", {})), file=sys.stderr)


if __name__ == "__main__":
    main()
