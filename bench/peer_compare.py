"""Side by side with Vidur on the same 10,000-request workload.

The workload and cluster mirror bench/peer_vidur.sh: the first 10,000 rows of
the Azure 2023 conversation trace (Vidur's processed form) at their own arrival
times, prompts clipped so prompt + output <= 4,096 tokens as Vidur does, four
H100 replicas of Llama-3(.1)-8B with round-robin routing and at most 128
sequences per batch. infersched runs twice: prefill-first, and chunked prefill
with a 512-token budget per iteration, the chunk size Vidur's Sarathi
scheduler runs with there.

    bash bench/peer_vidur.sh > bench/results/peer_vidur.json   # the peer (minutes)
    python bench/peer_compare.py                                 # ours, and the ratio
Writes bench/results/peer_compare.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.cluster import Cluster  # noqa: E402
from scheduler.config import parse_cluster  # noqa: E402
from scheduler.registry import build_policy  # noqa: E402
from simulator.metrics import summarize  # noqa: E402
from simulator.sim import Simulation  # noqa: E402
from simulator.traces import Trace, read_trace  # noqa: E402
from simulator.workload import make_workload  # noqa: E402

TRACE = ROOT.parent / "shared" / "traces" / "vidur" / "splitwise_conv.csv"
REQUESTS = 10_000
MAX_TOKENS = 4096
SARATHI_CHUNK = 512  # bench/peer_vidur.sh: --sarathi_scheduler_config_chunk_size 512


def cluster_doc(token_budget: int) -> dict:
    pool = {"name": "h100", "device": "h100-sxm", "instances": 4, "chips_per_instance": 1,
            "model": "llama-3.1-8b", "role": "both", "max_batch": 128}
    if token_budget:
        pool |= {"chunked_prefill": True, "token_budget": token_budget}
    return {"name": "vidur-peer", "policy": "round-robin", "pools": [pool]}


def run_ours(token_budget: int = 0) -> tuple[float, dict]:
    t0 = time.perf_counter()
    trace = read_trace(TRACE)
    out = trace.output_tokens[:REQUESTS]
    inp = np.minimum(trace.input_tokens[:REQUESTS], MAX_TOKENS - out)  # Vidur's clipping
    clipped = Trace(path=trace.path, format=trace.format, arrival_s=trace.arrival_s[:REQUESTS],
                    input_tokens=inp, output_tokens=out)
    config = parse_cluster(cluster_doc(token_budget))
    cluster = Cluster(config)
    result = Simulation(cluster, build_policy(config.policy, config), make_workload(clipped)).run()
    summary = summarize(result)
    return time.perf_counter() - t0, summary


def measure(token_budget: int) -> dict:
    walls = []
    for _ in range(3):
        wall, summary = run_ours(token_budget)
        walls.append(wall)
    out = {"wall_s": round(min(walls), 3), "runs_wall_s": [round(w, 3) for w in walls],
           "completed": summary["completed"]}
    for key in ("ttft_s", "tpot_s", "e2e_s", "itl_s"):
        out |= {f"{key[:-2]}_{p}_s": summary[key][p] for p in ("p50", "p90", "p99")}
    return out


def main() -> None:
    ours = measure(0)
    row = {"requests": REQUESTS, "infersched": ours, "infersched_chunked": measure(SARATHI_CHUNK)}
    peer_file = ROOT / "bench" / "results" / "peer_vidur.json"
    if peer_file.exists():
        peer = json.loads(peer_file.read_text())
        row["vidur"] = {k: peer.get(k) for k in ("version", "wall_s", "peak_rss_mb", "sim_metrics")}
        row["speedup"] = round(peer["wall_s"] / ours["wall_s"], 1)
        row["speedup_chunked"] = round(peer["wall_s"] / row["infersched_chunked"]["wall_s"], 1)
    print(json.dumps(row, indent=2))
    (ROOT / "bench" / "results" / "peer_compare.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
