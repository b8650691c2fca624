"""Speculative decoding in simulated pools: inter-token latency against queueing as load grows.

One colocated pool per run (--pools: a wafer pool of Llama 3.1 70B on four
WSE-3s, an H100 pool of Llama 3.1 8B on one GPU), plain or with a
`speculative:` key (Llama 3.2 1B drafting --draft-tokens tokens at
--acceptance), Azure 2023 conversation lengths resampled with Poisson
arrivals at each rate in --rates (per instance), the same seed everywhere.
Reports ITL and TPOT percentiles, completed requests, events per request
and the simulator's CPU seconds; the plain and speculative runs of a rate
alternate in one process, so their CPU seconds compare within one window.

    python bench/speculative.py                  # 20,000 requests per run
    python bench/speculative.py --requests 5000 --rates 1,30 --pools h100-8b
Writes bench/results/speculative.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONV_TRACE = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"

from scheduler.cluster import Cluster  # noqa: E402
from scheduler.config import parse_cluster  # noqa: E402
from scheduler.registry import build_policy  # noqa: E402
from simulator.metrics import summarize  # noqa: E402
from simulator.sim import Simulation  # noqa: E402
from simulator.traces import builtin_trace_path, read_trace  # noqa: E402
from simulator.workload import make_workload  # noqa: E402

POOLS = {
    "wafer-70b": {"name": "p", "device": "wse-3", "instances": 4, "model": "llama-3.1-70b", "role": "both"},
    "h100-8b": {"name": "p", "device": "h100-sxm", "instances": 4, "model": "llama-3.1-8b", "role": "both",
                "chips_per_instance": 1},
}


def run(pool: dict, speculative: dict | None, trace, requests: int, rate: float, seed: int) -> dict:
    doc = {**pool, **({"speculative": speculative} if speculative else {})}
    cluster = Cluster(parse_cluster({"name": "speculative-bench", "pools": [doc], "policy": "least-loaded"}))
    workload = make_workload(trace, n_requests=requests, rate_rps=rate * pool["instances"], arrival="poisson",
                             seed=seed)
    cpu0 = time.process_time()
    result = Simulation(cluster, build_policy("least-loaded"), workload, seed=seed).run()
    cpu_s = time.process_time() - cpu0
    s = summarize(result)
    return {"speculative": speculative is not None, "rate_rps_per_instance": rate, "completed": s["completed"],
            "itl_p50_s": s["itl_s"]["p50"], "itl_p99_s": s["itl_s"]["p99"], "tpot_p50_s": s["tpot_s"]["p50"],
            "ttft_p50_s": s["ttft_s"]["p50"], "makespan_s": s["makespan_s"],
            "events_per_request": result.events / requests, "sim_cpu_s": cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rates", default="1,30", help="arrivals per second per instance, comma-separated")
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--acceptance", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    spec = {"draft_model": "llama-3.2-1b", "draft_tokens": args.draft_tokens, "acceptance": args.acceptance}
    rows = []
    for name in args.pools.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            for speculative in (None, spec):
                row = {"pool": name, **run(POOLS[name], speculative, trace, args.requests, rate, args.seed)}
                rows.append(row)
                print(f"{name:10} {rate:5g}/s {'spec ' if speculative else 'plain'} completed {row['completed']:,} "
                      f"ITL p50/p99 {row['itl_p50_s'] * 1e3:7.2f} / {row['itl_p99_s'] * 1e3:7.2f} ms  "
                      f"TPOT p50 {row['tpot_p50_s'] * 1e3:7.2f} ms  TTFT p50 {row['ttft_p50_s'] * 1e3:8.1f} ms  "
                      f"makespan {row['makespan_s']:,.0f} s  events/request {row['events_per_request']:.2f}  "
                      f"sim {row['sim_cpu_s']:.2f} s CPU",
                      flush=True)
    out = ROOT / "bench" / "results" / "speculative.json"
    out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "runs": rows}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
