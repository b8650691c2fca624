"""Best-of-k CPU time of one replay, timed in a loop in one process (the minimum is the run the
shared machine disturbed least), for comparing two checkouts in alternating rounds.

    python bench/replay_best_of.py [--tree DIR] CLUSTER:POLICY REQUESTS K
Prints one JSON line: CPU us a request of each of the K replays, and the events.
The workload is bench/sim_million.py's (conversation trace lengths, Poisson 300 req/s, seed 0);
--tree imports the simulator from another checkout (its deploy/clusters too).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair")
    ap.add_argument("requests", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("--tree", default=str(ROOT))
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.registry import build_policy
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    sys.path.insert(0, str(ROOT / "bench"))
    from sim_million import CONV_TRACE

    cluster, policy = args.pair.split(":")
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    workload = make_workload(trace, n_requests=args.requests, rate_rps=300.0, arrival="poisson", seed=0)
    config = load_cluster(Path(args.tree) / "deploy" / "clusters" / f"{cluster}.yaml")
    cpu_us = []
    for _ in range(args.k):
        sim = Simulation(Cluster(config), build_policy(policy, config), workload, keep_records=False)
        t = time.process_time()
        result = sim.run()
        cpu_us.append(round((time.process_time() - t) / args.requests * 1e6, 2))
    print(json.dumps({"pair": args.pair, "requests": args.requests, "cpu_us_per_request": cpu_us,
                      "events": result.events}))


if __name__ == "__main__":
    main()
