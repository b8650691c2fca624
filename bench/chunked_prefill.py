"""Chunked prefill against prefill-first on 16 colocated H100s: inter-token latency and replay speed.

deploy/clusters/gpu-colocated.yaml (16 x H100, Llama-3.1-8B, least-loaded) with each
token budget in --budgets (0: prefill-first, its chunked_prefill key off), Azure 2023
conversation lengths resampled with Poisson arrivals at --rate, the same seed for
every run. Each run is its own process (its peak RSS is its own); the budgets run in
alternating order over --pairs rounds, so each ratio compares runs of one window.

    python bench/chunked_prefill.py                          # 1,000,000 requests at 240 req/s, 2 rounds
    python bench/chunked_prefill.py --requests 200000 --pairs 1 --budgets 0,8192,2048
Targets (issue 11): ITL p99 at least 40% below prefill-first; the chunked replay within
1.3x the wall time of prefill-first. Writes bench/results/chunked_prefill.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONV_TRACE = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def run_one(budget: int, requests: int, rate: float, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    t0 = time.perf_counter()
    config = load_cluster(ROOT / "deploy" / "clusters" / "gpu-colocated.yaml")
    pools = tuple(replace(p, chunked_prefill=budget > 0, token_budget=budget or p.token_budget) for p in config.pools)
    config = replace(config, pools=pools)
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    workload = make_workload(trace, n_requests=requests, rate_rps=rate, arrival="poisson", seed=seed)
    sim = Simulation(Cluster(config), build_policy(config.policy, config), workload, seed=seed)
    cpu0 = time.process_time()
    result = sim.run()
    cpu_s = time.process_time() - cpu0
    s = summarize(result)
    return {
        "token_budget": budget, "requests": requests, "rate_rps": rate,
        "total_wall_s": round(time.perf_counter() - t0, 2), "sim_wall_s": round(result.wall_s, 2),
        "sim_cpu_s": round(cpu_s, 2),
        "events_per_request": round(result.events / requests, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "completed": s["completed"], "slo_attainment": s["slo_attainment"],
        **{f"{key[:-2]}_{p}_s": s[key][p]
           for key in ("itl_s", "ttft_s", "tpot_s") for p in ("p50", "p90", "p99", "mean")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=240.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="0,8192", help="comma-separated token budgets; 0 is prefill-first")
    ap.add_argument("--pairs", type=int, default=2, help="rounds over the budgets, order alternating")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one budget in this process
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "chunked_prefill.json"))
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.requests, args.rate, args.seed)))
        return
    budgets = [int(b) for b in args.budgets.split(",")]
    runs = []
    for round_ in range(args.pairs):
        for budget in (budgets if round_ % 2 == 0 else budgets[::-1]):
            proc = subprocess.run([sys.executable, __file__, "--one", str(budget), "--requests", str(args.requests),
                                   "--rate", str(args.rate), "--seed", str(args.seed)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"round": round_}
            print(json.dumps(row), flush=True)
            runs.append(row)
    base = [r for r in runs if r["token_budget"] == 0]
    verdicts = {}
    for budget in budgets:
        if not budget or not base:
            continue
        mine = [r for r in runs if r["token_budget"] == budget]
        # Ratios within each round (the machine is shared: compare one window at a time). CPU
        # seconds discount the time other jobs held the cores; wall seconds do not.
        walls = [m["sim_wall_s"] / b["sim_wall_s"] for m, b in zip(mine, base)]
        cpus = [m["sim_cpu_s"] / b["sim_cpu_s"] for m, b in zip(mine, base)]
        cut = 1.0 - mine[0]["itl_p99_s"] / base[0]["itl_p99_s"]
        verdicts[str(budget)] = {
            "itl_p99_cut": round(cut, 4), "itl_p99_target_met": cut >= 0.40,
            "sim_wall_ratios": [round(x, 3) for x in walls], "sim_cpu_ratios": [round(x, 3) for x in cpus],
            "sim_wall_ratio_median": round(statistics.median(walls), 3),
            "sim_cpu_ratio_median": round(statistics.median(cpus), 3),
            "wall_target_met": statistics.median(walls) <= 1.3,
        }
    print(json.dumps(verdicts, indent=2))
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs, "verdicts": verdicts}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
