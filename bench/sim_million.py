"""Million-request replay: wall time, peak memory, events per request.

Each configuration runs in a fresh subprocess so its peak RSS is its own.

    python bench/sim_million.py                      # 1,000,000 requests at 300 req/s
    python bench/sim_million.py --requests 200000    # quicker
Writes bench/results/sim_million.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONV_TRACE = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def run_one(cluster: str, policy: str | None, requests: int, rate: float, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    t0 = time.perf_counter()
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    workload = make_workload(trace, n_requests=requests, rate_rps=rate, arrival="poisson", seed=seed)
    config = load_cluster(ROOT / "deploy" / "clusters" / f"{cluster}.yaml")
    sim_cluster = Cluster(config)
    pol = build_policy(policy or config.policy, config)
    cpu0 = time.process_time()
    result = Simulation(sim_cluster, pol, workload, seed=seed, keep_records=False).run()
    # CPU seconds of the replay: on a shared machine other processes stretch wall time far more.
    sim_cpu = time.process_time() - cpu0
    summary = summarize(result)
    total_wall = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "cluster": cluster, "policy": pol.name, "requests": requests, "rate_rps": rate,
        "total_wall_s": round(total_wall, 2), "sim_wall_s": round(result.wall_s, 2),
        "sim_requests_per_s": round(requests / result.wall_s),
        "sim_cpu_s": round(sim_cpu, 2), "sim_cpu_us_per_request": round(sim_cpu / requests * 1e6, 2),
        "events": result.events, "events_per_request": round(result.events / requests, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "completed": summary["completed"], "rejected": summary["rejected"],
        "ttft_p50_s": summary["ttft_s"]["p50"], "ttft_p99_s": summary["ttft_s"]["p99"],
        "tpot_p50_s": summary["tpot_s"]["p50"], "slo_attainment": summary["slo_attainment"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="gpu-colocated:least-loaded,gpu-disagg:slo-aware,hybrid:slo-aware",
                    help="comma-separated cluster:policy pairs")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config in this process
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_million.json"))
    args = ap.parse_args()
    if args.one:
        cluster, policy = args.one.split(":")
        print(json.dumps(run_one(cluster, policy or None, args.requests, args.rate, args.seed)))
        return
    rows = []
    for pair in args.configs.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", pair, "--requests", str(args.requests),
                               "--rate", str(args.rate), "--seed", str(args.seed)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "processor": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
