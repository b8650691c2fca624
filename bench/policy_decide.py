"""Cost of one Policy.decide call, with the breakdown off (the simulator's path) and on (explain mode).

Each (cluster, policy) pair decides a fixed list of requests against a snapshot
of the built-in cluster with seeded random queues and batches; the figure is the
best of several repeats, in CPU microseconds per decision (process time: on a shared
machine, other processes stretch wall time far more than CPU time). Run it from another
checkout (`python bench/policy_decide.py` there) to compare two versions of the
policy core in one window: a checkout without explain mode reports only `off_us`.

    python bench/policy_decide.py
    python bench/policy_decide.py --pairs gpu-colocated:least-loaded --repeats 9
Writes bench/results/policy_decide.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = "gpu-colocated:least-loaded,gpu-disagg:slo-aware,hybrid:slo-aware,gpu-mixed:conditional-disagg"


def time_pair(cluster: str, policy: str, requests: int, repeats: int) -> dict:
    import numpy as np

    from scheduler.cluster import Cluster
    from scheduler.config import builtin_cluster_path, load_cluster
    from scheduler.registry import build_policy
    from scheduler.types import Request

    config = load_cluster(builtin_cluster_path(cluster))
    snap = Cluster(config).snapshot()
    state = np.random.default_rng(3)
    for i in range(snap.n_instances):
        queued, running = int(state.integers(0, 6)), int(state.integers(0, 40))
        cap = snap._kv_capacity[i]
        snap.update(i, queued, queued * 700, running, cap - min(cap, 900 * (queued + running)), 0.0)
    reqs = [Request(i, 100 + 97 * i % 6000, 20 + 31 * i % 500, 0.0) for i in range(requests)]
    pol = build_policy(policy, config)
    row = {"cluster": cluster, "policy": policy, "instances": snap.n_instances}
    for mode in ("off", "on"):
        if mode == "on":
            if not hasattr(pol, "explain"):
                break
            pol.explain = True
        decide, rng = pol.decide, np.random.default_rng(0)
        best = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            for r in reqs:
                decide(r, snap, 0.0, rng)
            best = min(best, time.process_time() - t)
        row[f"{mode}_us"] = round(best / requests * 1e6, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=PAIRS, help="comma-separated cluster:policy pairs")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "policy_decide.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = []
    for pair in args.pairs.split(","):
        cluster, policy = pair.split(":")
        rows.append(time_pair(cluster, policy, args.requests, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_average": os.getloadavg()[0], "root": str(ROOT), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
