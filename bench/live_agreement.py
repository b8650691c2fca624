"""Simulated vs live on Ray: the same trace slice through the simulator and through the
live control plane (scheduler and worker actors, real gRPC on loopback, wall clock).

The first 2,000 rows of the Azure 2023 conversation trace at their recorded
times (424 s), deploy/clusters/live-small.yaml, seed 0: through
`simulator.sim.Simulation` and through a local Ray cluster at time_scale 1/20
(~22 s of wall time per policy). `slo-aware` is the policy under test;
`round-robin` sends half the requests through the H100 prefill -> decode pair
(KV hand-over included). Reports each pool's share, TTFT and TPOT p50 on both
sides, and the share of requests placed on the same instance. The client
replays from its own process, as a user's would. The deterministic contract
(the same decisions, bit for bit, on a virtual clock) is a test:
tests/live/test_decision_contract.py; this measures how close the wall-clock
plane stays to it.

    python bench/live_agreement.py                  # both policies
    python bench/live_agreement.py --policies slo-aware
Writes bench/results/live_agreement.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.cluster import Cluster  # noqa: E402
from scheduler.config import builtin_cluster_path, load_cluster  # noqa: E402
from scheduler.registry import build_policy  # noqa: E402
from simulator.metrics import summarize  # noqa: E402
from simulator.sim import Simulation  # noqa: E402
from simulator.traces import builtin_trace_path, read_trace  # noqa: E402
from simulator.workload import make_workload  # noqa: E402

REQUESTS = 2000
SEED = 0
SPEEDUP = 20.0
SHARED_TRACE = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
DEFAULT_OUT = ROOT / "bench" / "results" / "live_agreement.json"

# Replays the slice against the live cluster and writes the summary and each request's
# prefill instance (what the policy decided).
CLIENT = """
import asyncio, json, sys
import numpy as np
from scheduler.cluster import Cluster
from scheduler.config import load_cluster
from infersched.client.replay import live_summary, replay
from simulator.traces import read_trace
from simulator.workload import make_workload

target, trace, cluster_file, out, n, seed = sys.argv[1:7]
n, seed = int(n), int(seed)
workload = make_workload(read_trace(trace, max_rows=n), n_requests=n, seed=seed)
result = asyncio.run(replay(target, workload, cluster=Cluster(load_cluster(cluster_file)), seed=seed))
summary = live_summary(result, target)
summary["speedup"] = result.speedup
json.dump(summary, open(out + ".json", "w"))
np.save(out + ".npy", result.records.prefill_instance)
"""


def compare(policy: str, trace: Path, n: int) -> dict:
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    config = load_cluster(builtin_cluster_path("live-small"))
    workload = make_workload(read_trace(trace, max_rows=n), n_requests=n, seed=SEED)
    simulated = Simulation(Cluster(config), build_policy(policy, config), workload, seed=SEED).run()
    sim = summarize(simulated)
    # The workers' engines run 0.25 s of wall time behind the clock so that on a busy
    # 2-core machine every request and hand-over reaches its worker before its modelled
    # arrival; 128-token chunks keep the stream traffic (and so the CPU) low.
    options = LiveOptions(time_scale=1.0 / SPEEDUP, seed=SEED, chunk_tokens=128, worker_slack_s=0.25)
    actor, info = start_scheduler(config, policy=policy, options=options, port=0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "live"
        try:
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-c", CLIENT, info["address"], str(trace),
                                   str(builtin_cluster_path("live-small")), str(out), str(n), str(SEED)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=600)
            wall_s = time.monotonic() - t0
        finally:
            stop_scheduler(actor)
        if done.returncode != 0:
            raise RuntimeError(f"the replay client failed:\n{done.stderr[-3000:]}")
        live = json.loads(out.with_suffix(".json").read_text())
        placed = np.load(out.with_suffix(".npy"))
    return {
        "policy": policy, "requests": n, "replay_wall_s": round(wall_s, 1),
        "completed": {"simulated": sim["completed"], "live": live["completed"]},
        "same_placement": float((placed == simulated.records.prefill_instance).mean()),
        "share": {name: {"simulated": sim["pools"][name]["share"], "live": live["pools"][name]["share"]}
                  for name in sim["pools"]},
        "ttft_p50_s": {"simulated": sim["ttft_s"]["p50"], "live": live["ttft_s"]["p50"]},
        "tpot_p50_s": {"simulated": sim["tpot_s"]["p50"], "live": live["tpot_s"]["p50"]},
        "send_lateness_s": live["live"]["send_lateness_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="slo-aware,round-robin")
    ap.add_argument("--requests", type=int, default=REQUESTS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    import ray

    from scheduler.live.actor import RAY_NAMESPACE, pool_resources

    trace = SHARED_TRACE if SHARED_TRACE.exists() else builtin_trace_path()
    need = pool_resources(Cluster(load_cluster(builtin_cluster_path("live-small"))))
    ray.init(resources=need, include_dashboard=False, namespace=RAY_NAMESPACE, logging_level=logging.WARNING)
    try:
        results = [compare(policy, trace, args.requests) for policy in args.policies.split(",")]
    finally:
        ray.shutdown()
    for r in results:
        print(f"\n{r['policy']}: {r['same_placement']:.1%} placed as in the simulation "
              f"(replay {r['replay_wall_s']} s)")
        print(f"{'':24}{'simulated':>12}{'live':>12}")
        for name, share in r["share"].items():
            print(f"share {name:<18}{share['simulated']:>11.1%}{share['live']:>12.1%}")
        for key in ("ttft_p50_s", "tpot_p50_s"):
            print(f"{key[:4].upper()} p50 (ms){'':10}{r[key]['simulated'] * 1e3:>12.2f}{r[key]['live'] * 1e3:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": platform.os.cpu_count(), "python": platform.python_version()},
                                    "trace": str(trace), "speedup": SPEEDUP, "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
