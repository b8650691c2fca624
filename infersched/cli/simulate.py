"""`infersched simulate`: replay a trace through a simulated cluster and print the summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infersched.cli.clusters import resolve
from infersched.cli.common import (CLUSTER_HELP, DEFAULT_CLUSTER, add_progress_argument, add_trace_arguments,
                                   load_trace, show_progress, trace_record)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate", help="replay a trace through a simulated cluster and report latency, cost and energy",
        description="Replay a trace (the built-in Azure 2023 conversation trace by default) through a "
                    f"cluster (deploy/clusters/{DEFAULT_CLUSTER}.yaml by default) and print the summary.")
    add_trace_arguments(p)
    p.add_argument("--cluster", default=DEFAULT_CLUSTER, help=f"{CLUSTER_HELP} (default {DEFAULT_CLUSTER})")
    p.add_argument("--policy", help="routing policy (overrides the cluster file's); see `infersched policies`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the summary JSON to PATH ('-' for stdout)")
    p.add_argument("--out", metavar="DIR", help="write summary.json, requests.npz and PNG plots to DIR")
    add_progress_argument(p)
    p.add_argument("--decision-log", metavar="FILE",
                   help="write every placement as a JSON line to FILE: candidates, what each filter removed, "
                        "each scorer's raw and weighted scores, the choice (format: README, Decision log)")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.decision_log import DecisionLog
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.report import format_summary, write_json, write_outputs
    from simulator.sim import Simulation
    from simulator.workload import make_workload

    config = load_cluster(resolve(args.cluster))
    cluster = Cluster(config)
    cluster.check_predictable()
    policy = build_policy(args.policy or config.policy, config)
    progress = show_progress(args)
    # The trace is checked now and read again block by block as the replay goes.
    trace = load_trace(args, stream=True, progress=progress)
    workload = make_workload(trace, n_requests=args.requests, rate_rps=args.rate, arrival=args.arrival,
                             seed=args.seed)
    log = DecisionLog.open(args.decision_log) if args.decision_log else None
    try:
        # Memory follows the requests in flight: records stream to column files under --out
        # (packed into requests.npz by write_outputs) and are not kept otherwise.
        record_dir = Path(args.out) / ".requests.columns" if args.out else None
        result = Simulation(cluster, policy, workload, seed=args.seed, progress=progress, decision_log=log,
                            keep_records=False, record_dir=record_dir).run()
    finally:
        if log is not None:
            log.close()
    if log is not None:
        print(f"wrote {log.lines:,} decision lines to {args.decision_log}", file=sys.stderr)
    summary = summarize(result)
    summary["trace"] = trace_record(trace, args)
    if args.json:
        write_json(summary, args.json)
    if args.out:
        for path in write_outputs(result, summary, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json != "-":
        print(format_summary(summary))
    return 0
