"""The `infersched` command line."""
from __future__ import annotations

import argparse
import sys

from scheduler.config import ConfigError

DEFAULT_CLUSTER = "hybrid"


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate", help="replay a trace through a simulated cluster and report latency, cost and energy",
        description="Replay a trace (the built-in Azure 2023 conversation trace by default) through a "
                    "cluster (deploy/clusters/hybrid.yaml by default) and print the summary.")
    p.add_argument("--trace", help="trace file (Azure, Vidur/Splitwise, length-only CSV, BurstGPT, Mooncake "
                                   "JSONL; .gz ok). Default: built-in Azure 2023 conversation trace")
    p.add_argument("--format", choices=["azure", "vidur", "lengths", "burstgpt", "mooncake"],
                   help="trace format (default: detected from the content)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed trace rows (counted and reported) instead of failing")
    p.add_argument("--requests", type=int, help="number of requests (beyond the trace's rows, lengths are "
                                                "resampled and arrivals synthesized)")
    p.add_argument("--rate", type=float, help="arrival rate in requests/s (synthesized arrivals)")
    p.add_argument("--arrival", choices=["trace", "poisson", "gamma", "diurnal"],
                   help="arrival process for synthesized arrivals (default poisson)")
    p.add_argument("--cluster", help=f"cluster YAML (default deploy/clusters/{DEFAULT_CLUSTER}.yaml)")
    p.add_argument("--policy", help="routing policy (overrides the cluster file's); see `infersched policies`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the summary JSON to PATH ('-' for stdout)")
    p.add_argument("--out", metavar="DIR", help="write summary.json, requests.npz and PNG plots to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--decision-log", metavar="FILE",
                   help="write every placement as a JSON line to FILE: candidates, what each filter removed, "
                        "each scorer's raw and weighted scores, the choice (format: README, Decision log)")


def _add_model(sub) -> None:
    p = sub.add_parser("model", help="performance model tools")
    msub = p.add_subparsers(dest="model_command", required=True)
    c = msub.add_parser("check", help="compare the performance and energy model against measurements")
    c.add_argument("--device", default="h100-sxm")
    c.add_argument("--model", default="llama-3.1-8b", help="built-in model name or a JSON/YAML model spec file")
    c.add_argument("--chips", type=int, default=1)
    c.add_argument("--measurements", required=True, help="CSV as in ../shared/calibration/")
    c.add_argument("--json", metavar="PATH", help="write the result JSON to PATH ('-' for stdout)")
    lst = msub.add_parser("list", help="list built-in devices and models")
    lst.add_argument("--json", metavar="PATH")


def _add_live(sub) -> None:
    p = sub.add_parser("serve", help="run the live cluster on Ray and serve the scheduler over gRPC",
                       description="Start (or join) a Ray cluster, one worker actor per pool instance and the "
                                   "scheduler; serve gRPC until Ctrl-C or SIGTERM.")
    p.add_argument("--cluster", required=True, help="cluster YAML")
    p.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT) instead of starting a local one")
    p.add_argument("--host", default="127.0.0.1", help="address the scheduler binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="scheduler gRPC port (default 50051; 0 = any free)")
    p.add_argument("--time-scale", type=float, default=0.01,
                   help="wall seconds per modelled second (default 0.01: 100x faster than the hardware)")
    p.add_argument("--metrics-port", type=int, default=9464,
                   help="Prometheus metrics port (default 9464; 0 = any free, -1 = off)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 for a scraper on another "
                        "host, e.g. Prometheus in Kubernetes)")
    p.add_argument("--policy", help="routing policy (overrides the cluster file's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the policy's tie-breaking RNG")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="requests queued for prefill before RESOURCE_EXHAUSTED (default 4096)")
    p.add_argument("--max-retries", type=int, default=2, help="re-dispatches after a worker failure (default 2)")
    p.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="run the scheduler actor's threads under SCHED_FIFO at priority N (1-99; Linux, needs "
                        "CAP_SYS_NICE): on busy hosts its RPCs then wait for no other process (default 0: off)")
    p.add_argument("--frontends", type=int, default=0, metavar="N",
                   help="client-facing gRPC in N front-end processes sharing the port, relayed to the scheduler "
                        "core: takes ~0.7 ms of CPU per request off the core's event loop, for hosts with cores to "
                        "spare (default 0: the scheduler actor serves clients itself)")
    r = sub.add_parser("replay", help="replay a trace against a live cluster over gRPC",
                       description="Send a trace's requests open loop to a running `infersched serve`, stream "
                                   "the tokens, and print the same summary as `infersched simulate`.")
    r.add_argument("--target", default="127.0.0.1:50051", help="scheduler address (default 127.0.0.1:50051)")
    r.add_argument("--trace", required=True, help="trace file (formats as for simulate)")
    r.add_argument("--format", choices=["azure", "vidur", "lengths", "burstgpt", "mooncake"])
    r.add_argument("--skip-bad-rows", action="store_true")
    r.add_argument("--requests", type=int, help="number of requests (default: the whole trace)")
    r.add_argument("--speedup", type=float,
                   help="divide arrival times by this (default: the server's 1 / time_scale, i.e. the trace's "
                        "own rate in modelled time)")
    r.add_argument("--cluster", help="the served cluster YAML, for its SLO (default SLO otherwise)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", metavar="PATH", help="write the summary JSON to PATH ('-' for stdout)")
    s = sub.add_parser("stats", help="print a live scheduler's stats")
    s.add_argument("--target", default="127.0.0.1:50051")
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    s.add_argument("--watch", action="store_true", help="stream stats until Ctrl-C")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between --watch updates (default 1)")


def _run_serve(args) -> int:
    from scheduler.serve import run_serve

    return run_serve(args)


def _run_replay(args) -> int:
    from simulator.replay import run_replay

    return run_replay(args)


def _run_stats(args) -> int:
    from simulator.replay import run_stats

    return run_stats(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infersched", description=__doc__.strip() + " "
                                     "Scheduling and simulation of LLM inference on heterogeneous hardware.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_model(sub)
    _add_live(sub)
    from simulator.compare import register as register_compare
    from simulator.plan import register as register_plan
    from simulator.sessions import register as register_sessions

    register_compare(sub)
    register_plan(sub)
    register_sessions(sub)
    sub.add_parser("policies", help="list the built-in routing policies and plugins")
    return parser


def _load_workload(args):
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    path = args.trace or str(builtin_trace_path())
    trace = read_trace(path, args.format, skip_bad_rows=args.skip_bad_rows)
    workload = make_workload(trace, n_requests=args.requests, rate_rps=args.rate, arrival=args.arrival,
                             seed=args.seed)
    return trace, workload


def cmd_simulate(args) -> int:
    from scheduler.cluster import Cluster
    from scheduler.config import builtin_cluster_path, load_cluster
    from scheduler.decision_log import DecisionLog
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.report import format_summary, write_json, write_outputs
    from simulator.sim import Simulation

    config = load_cluster(args.cluster or builtin_cluster_path(DEFAULT_CLUSTER))
    cluster = Cluster(config)
    policy = build_policy(args.policy or config.policy, config)
    trace, workload = _load_workload(args)
    progress = not args.no_progress and args.json != "-"
    log = DecisionLog.open(args.decision_log) if args.decision_log else None
    try:
        result = Simulation(cluster, policy, workload, seed=args.seed, progress=progress, decision_log=log).run()
    finally:
        if log is not None:
            log.close()
    if log is not None:
        print(f"wrote {log.lines:,} decision lines to {args.decision_log}", file=sys.stderr)
    summary = summarize(result)
    summary["trace"] = {"path": trace.path, "format": trace.format, "rows": trace.rows,
                        "bad_rows": trace.bad_rows, "filtered_rows": trace.filtered_rows}
    if args.json:
        write_json(summary, args.json)
    if args.out:
        for path in write_outputs(result, summary, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json != "-":
        if trace.bad_rows:
            print(f"skipped {trace.bad_rows:,} malformed trace rows", file=sys.stderr)
        print(format_summary(summary))
    return 0


def cmd_model(args) -> int:
    from simulator.report import write_json

    if args.model_command == "list":
        from workers.devices import DEVICES
        from workers.models import MODELS

        listing = {
            "devices": {name: {"kind": d.kind, "memory_gb": d.memory_bytes / 1e9,
                               "memory_bw_tb_s": d.memory_bw_bytes_s / 1e12, "bf16_tflops": d.bf16_flops / 1e12,
                               "price_usd_per_hour": d.price_usd_per_hour} for name, d in DEVICES.items()},
            "models": {name: {"params_b": m.params / 1e9, "layers": m.layers, "hidden": m.hidden}
                       for name, m in MODELS.items()},
        }
        if args.json:
            write_json(listing, args.json)
        else:
            for name, d in listing["devices"].items():
                print(f"device {name:<10} {d['kind']:<6} {d['memory_gb']:>8.1f} GB {d['memory_bw_tb_s']:>8.2f} TB/s "
                      f"{d['bf16_tflops']:>9.1f} TFLOP/s  ${d['price_usd_per_hour'] or 0:.2f}/h")
            for name, m in listing["models"].items():
                print(f"model  {name:<16} {m['params_b']:>7.2f} B params, {m['layers']} layers")
        return 0
    from workers.calibration import format_model_check, run_model_check

    result = run_model_check(args.device, args.model, args.measurements, chips=args.chips)
    if args.json:
        write_json(result, args.json)
    if args.json != "-":
        print(format_model_check(result))
    return 0


def cmd_policies(args) -> int:
    from scheduler.registry import FILTERS, PICKERS, POLICIES, SCORERS

    for name, spec in POLICIES.items():
        scorers = ", ".join(f"{n} x{w:g}" for n, w in spec.scorers) or "-"
        print(f"{name:<14} {spec.description}\n{'':14} filters: {', '.join(spec.filters)}; scorers: {scorers}; "
              f"picker: {spec.picker}")
    print(f"\nfilters: {', '.join(FILTERS)}\nscorers: {', '.join(SCORERS)}\npickers: {', '.join(PICKERS)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from simulator.traces import TraceFormatError

    handlers = {"simulate": cmd_simulate, "model": cmd_model, "policies": cmd_policies,
                "serve": _run_serve, "replay": _run_replay, "stats": _run_stats}
    handler = handlers.get(args.command) or args.handler
    try:
        return handler(args)
    except (ConfigError, TraceFormatError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"infersched: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
