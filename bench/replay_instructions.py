"""Instructions a replayed request costs (valgrind's callgrind), for comparing checkouts on a busy machine.

CPU time on a shared 2-core machine moves with the load; instruction counts do not. Each
(tree, pair) is replayed under callgrind at two sizes and the difference divided by the
difference in requests, so start-up, imports and trace reading cancel out. The workload
is bench/sim_million.py's (conversation trace lengths, Poisson 300 req/s, seed 0).

    python bench/replay_instructions.py --trees BEFORE_DIR,AFTER_DIR \\
        --pairs gpu-colocated:least-loaded,gpu-disagg:slo-aware [--sizes 1000,6000]
Prints one JSON line per (tree, pair): instructions a request, and the events of the larger replay.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replay(tree: str, pair: str, requests: int) -> None:
    sys.path.insert(0, tree)
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.registry import build_policy
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    sys.path.insert(0, str(ROOT / "bench"))
    from sim_million import CONV_TRACE

    cluster, policy = pair.split(":")
    trace = read_trace(CONV_TRACE if CONV_TRACE.exists() else builtin_trace_path())
    workload = make_workload(trace, n_requests=requests, rate_rps=300.0, arrival="poisson", seed=0)
    config = load_cluster(Path(tree) / "deploy" / "clusters" / f"{cluster}.yaml")
    result = Simulation(Cluster(config), build_policy(policy, config), workload, keep_records=False).run()
    print(json.dumps({"events": result.events}))


def instructions(tree: str, pair: str, requests: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                               sys.executable, __file__, "--replay", pair, "--tree", tree, "--requests",
                               str(requests)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": "0"})  # the same dict layouts each run
    total = int(re.search(r"Collected : (\d+)", proc.stderr).group(1))
    events = json.loads(proc.stdout.strip().splitlines()[-1])["events"]
    return total, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=str(ROOT))
    ap.add_argument("--pairs", default="gpu-colocated:least-loaded,gpu-disagg:slo-aware")
    ap.add_argument("--sizes", default="1000,6000")
    ap.add_argument("--replay", help=argparse.SUPPRESS)  # internal: one replay in this process
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay:
        replay(args.tree, args.replay, args.requests)
        return
    small, large = (int(x) for x in args.sizes.split(","))
    for pair in args.pairs.split(","):
        for tree in args.trees.split(","):
            lo, _ = instructions(tree, pair, small)
            hi, events = instructions(tree, pair, large)
            print(json.dumps({"tree": tree, "pair": pair, "sizes": [small, large],
                              "instructions_per_request": round((hi - lo) / (large - small)),
                              "events": events}), flush=True)


if __name__ == "__main__":
    main()
