"""Replay length vs memory: peak RSS and wall time at 1M, 5M, 10M (50M) requests.

Each size runs `infersched simulate`'s path (records bounded by the requests
in flight, summary from the tally) in a fresh child process; its peak RSS is
the child's own, read from the kernel's resource usage of that child
(os.wait4), as are its CPU seconds; its wall time covers workload
generation, the replay and the summary. `--keep-records` runs the old path (every record in memory) for
comparison; `--out` streams the records to a requests.npz as well.

    python bench/sim_memory.py                              # 1M, 5M, 10M
    python bench/sim_memory.py --sizes 1000000,50000000
    python bench/sim_memory.py --sizes 1000000,2000000 --keep-records
Writes bench/results/sim_memory.json (or --results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONV_TRACE = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def run_one(cluster: str, policy: str, requests: int, rate: float, keep: bool, out: str | None) -> dict:
    sys.path.insert(0, str(ROOT))
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.report import write_outputs
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    t0 = time.perf_counter()
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    workload = make_workload(trace, n_requests=requests, rate_rps=rate, arrival="poisson", seed=0)
    config = load_cluster(ROOT / "deploy" / "clusters" / f"{cluster}.yaml")
    record_dir = Path(out) / ".requests.columns" if out and not keep else None
    result = Simulation(Cluster(config), build_policy(policy, config), workload, seed=0, keep_records=keep,
                        record_dir=record_dir).run()
    summary = summarize(result)
    if out:
        write_outputs(result, summary, out)
    return {"cluster": cluster, "policy": policy, "requests": requests, "keep_records": keep, "out": bool(out),
            "wall_s": round(time.perf_counter() - t0, 2), "sim_wall_s": round(result.wall_s, 2),
            "completed": summary["completed"], "rejected": summary["rejected"], "failed": summary["failed"],
            "ttft_p99_s": summary["ttft_s"]["p99"], "events_per_request": round(summary["events_per_request"], 3)}


def measure(args, requests: int) -> dict:
    """One size in a child process: its result line plus its own peak RSS."""
    cmd = [sys.executable, __file__, "--one", str(requests), "--cluster", args.cluster, "--policy", args.policy,
           "--rate", str(args.rate)] + (["--keep-records"] if args.keep_records else [])
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.out:
            cmd += ["--one-out", tmp]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"size {requests:,} failed with exit status {proc.returncode}")
        npz_mb = os.path.getsize(Path(tmp) / "requests.npz") / 2**20 if args.out else None
    row = json.loads(stdout.strip().splitlines()[-1])
    row["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    # CPU seconds of the child: on a shared machine other processes stretch wall time far more.
    row["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    if npz_mb is not None:
        row["requests_npz_mb"] = round(npz_mb, 1)
    accounted = row["completed"] + row["rejected"] + row["failed"]
    if accounted != requests:
        raise SystemExit(f"size {requests:,}: {accounted:,} requests accounted")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,5000000,10000000")
    ap.add_argument("--cluster", default="gpu-colocated")
    ap.add_argument("--policy", default="least-loaded")
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--keep-records", action="store_true", help="every record in memory (the old path)")
    ap.add_argument("--out", action="store_true", help="also write requests.npz and the plots (to a temp dir)")
    ap.add_argument("--tmp", default=None, help="where --out writes (default: the system temp dir)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    ap.add_argument("--one-out", help=argparse.SUPPRESS)  # internal: where that run writes --out
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "sim_memory.json"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.cluster, args.policy, args.one, args.rate, args.keep_records, args.one_out)))
        return
    load0 = os.getloadavg()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(args, size)
        row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["wall_over_first"] = round(row["wall_s"] / base["wall_s"], 2)
        row["cpu_over_first"] = round(row["cpu_s"] / base["cpu_s"], 2)
        row["rss_bytes_per_request"] = round(row["peak_rss_mb"] * 2**20 / row["requests"], 1)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg_before": [round(x, 2) for x in load0]}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
