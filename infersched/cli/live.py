"""`infersched serve`, `replay` and `stats`: the live cluster, and a client that drives and watches it."""
from __future__ import annotations

import sys

from infersched.cli.clusters import resolve
from infersched.cli.security import add_client_security_arguments, add_serve_security_arguments, client_security
from infersched.cli.common import (CLUSTER_HELP, add_progress_argument, add_trace_arguments, load_trace,
                                   local_ray_auth, show_progress, trace_record)
from infersched.client import MAX_UNAVAILABLE

# The smallest live example: two H100 instances (prefill, decode) and a B200, one Ray actor each.
DEFAULT_SERVE_CLUSTER = "live-small"


def register(sub) -> None:
    _add_serve(sub)
    _add_replay(sub)
    _add_stats(sub)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the live cluster on Ray and serve the scheduler over gRPC",
                       description="Start (or join) a Ray cluster, one worker actor per pool instance and the "
                                   "scheduler; serve gRPC until Ctrl-C or SIGTERM.")
    p.add_argument("--cluster", default=DEFAULT_SERVE_CLUSTER,
                   help=f"{CLUSTER_HELP} (default {DEFAULT_SERVE_CLUSTER}: three instances, one actor each)")
    p.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT) instead of starting a local one")
    p.add_argument("--host", default="127.0.0.1", help="address the scheduler binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="scheduler gRPC port (default 50051; 0 = any free)")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
                        "/v1/models, /health) on PORT of --host (0 = any free; default: off)")
    p.add_argument("--time-scale", type=float, default=None,
                   help="wall seconds per modelled second (default 0.01: 100x faster than the hardware; 1 when "
                        "the cluster has real engines, backend: openai, which run at their own speed)")
    p.add_argument("--metrics-port", type=int,
                   help="Prometheus metrics port (default 9464, or any free port when 9464 is in use; "
                        "0 = any free, -1 = off)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 for a scraper on another "
                        "host, e.g. Prometheus in Kubernetes)")
    p.add_argument("--policy", help="routing policy (overrides the cluster file's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the policy's tie-breaking RNG")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="requests queued for prefill before RESOURCE_EXHAUSTED (default 4096)")
    p.add_argument("--max-pending-bytes", type=int, default=256 << 20, metavar="BYTES",
                   help="bytes of requests (messages and metadata) in flight before RESOURCE_EXHAUSTED "
                        "(default 268435456: 256 MiB)")
    p.add_argument("--max-retries", type=int, default=2, help="re-dispatches after a worker failure (default 2)")
    p.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="run the scheduler actor's threads under SCHED_FIFO at priority N (1-99; Linux, needs "
                        "CAP_SYS_NICE): on busy hosts its RPCs then wait for no other process (default 0: off)")
    p.add_argument("--frontends", type=int, default=0, metavar="N",
                   help="client-facing gRPC in N front-end processes sharing the port, relayed to the scheduler "
                        "core: takes ~0.7 ms of CPU per request off the core's event loop, for hosts with cores to "
                        "spare (default 0: the scheduler actor serves clients itself)")
    p.add_argument("--decision-log", metavar="FILE",
                   help="write every placement the scheduler decides as a JSON line, in the format of "
                        "`simulate --decision-log` (flushed every second)")
    p.add_argument("--scheduler-restarts", type=int, default=3, metavar="N",
                   help="times Ray restarts the scheduler actor after its process dies, with new workers on the "
                        "same port (default 3; 0: serve exits instead)")
    add_serve_security_arguments(p)
    p.set_defaults(handler=run_serve)


def _add_replay(sub) -> None:
    r = sub.add_parser("replay", help="replay a trace against a live cluster over gRPC",
                       description="Send a trace's requests open loop to a running `infersched serve`, stream "
                                   "the tokens, and print the same summary as `infersched simulate`.")
    r.add_argument("--target", default="127.0.0.1:50051", help="scheduler address (default 127.0.0.1:50051)")
    add_trace_arguments(r, synthesis=False, requests_help="number of requests (default: the whole trace)")
    r.add_argument("--speedup", type=float,
                   help="divide arrival times by this (default: the server's 1 / time_scale, i.e. the trace's "
                        "own rate in modelled time)")
    r.add_argument("--cluster", help=f"the served cluster ({CLUSTER_HELP}), for its SLO (default SLO otherwise)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", metavar="PATH", help="write the summary JSON to PATH ('-' for stdout)")
    r.add_argument("--max-unavailable", type=int, default=MAX_UNAVAILABLE, metavar="N",
                   help=f"stop after N UNAVAILABLE answers in a row (the scheduler is gone), write the summary of "
                        f"what was sent so far and exit 1 (default {MAX_UNAVAILABLE})")
    add_progress_argument(r)
    add_client_security_arguments(r)
    r.set_defaults(handler=run_replay)


def _add_stats(sub) -> None:
    s = sub.add_parser("stats", help="print a live scheduler's stats")
    s.add_argument("--target", default="127.0.0.1:50051")
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    s.add_argument("--watch", action="store_true", help="stream stats until Ctrl-C")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between --watch updates (default 1)")
    add_client_security_arguments(s)
    s.set_defaults(handler=run_stats)


def rpc_error(target: str, exc) -> str:
    """One line for a failed RPC: nothing listening gets a hint to start `serve`, not gRPC's connect text."""
    import grpc

    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        details = exc.details() or ""
        if "handshake" in details.lower():
            return f"TLS handshake with {target} failed ({details.rsplit(': ', 1)[-1]}): check --tls-ca"
        if "Socket closed" in details:  # a TLS server closing a plaintext or certificate-less connection
            return (f"{target} closed the connection: if it serves TLS, give --tls-ca (and --tls-cert/--tls-key "
                    "when it requires client certificates)")
        return (f"no infersched scheduler answers at {target} (start one with `infersched serve`, "
                f"or give its address with --target HOST:PORT)")
    return f"{target}: {exc.code().name}: {exc.details()}"


def run_serve(args) -> int:
    if args.address is None:
        local_ray_auth()
    from scheduler.serve import run_serve as serve

    args.cluster = str(resolve(args.cluster))
    return serve(args)


def run_replay(args) -> int:
    import asyncio

    import grpc

    from infersched.client.replay import live_summary, replay
    from scheduler.types import RequestStatus
    from simulator.report import format_summary, write_json
    from simulator.workload import make_workload

    security = client_security(args)
    trace = load_trace(args, stream=True)
    workload = make_workload(trace, n_requests=args.requests, seed=args.seed)
    cluster = None
    slo = None
    if args.cluster:
        from scheduler.cluster import Cluster
        from scheduler.config import load_cluster

        cluster = Cluster(load_cluster(resolve(args.cluster)))
        slo = cluster.config.slo
    quiet = args.json == "-"
    if not quiet:
        print(f"replaying {workload.n_requests:,} requests to {args.target}", file=sys.stderr)
    try:
        result = asyncio.run(replay(args.target, workload, speedup=args.speedup, cluster=cluster, slo=slo,
                                    seed=args.seed, progress=show_progress(args), security=security,
                                    max_unavailable=args.max_unavailable))
    except grpc.aio.AioRpcError as exc:
        print(f"infersched: error: {rpc_error(args.target, exc)}", file=sys.stderr)
        return 2
    summary = live_summary(result, args.target)
    summary["trace"] = trace_record(trace, args)
    if args.json:
        write_json(summary, args.json)
    if not quiet:
        print(format_summary(summary))
    if result.stopped:
        completed = int((result.records.status == RequestStatus.COMPLETED).sum())
        print(f"infersched: error: replay stopped after {result.stopped} from {args.target}: sent {result.sent:,} "
              f"of {workload.n_requests:,} requests, {completed:,} completed, {result.unknown:,} unknown (no final "
              f"record){'; the summary above covers the requests sent' if not quiet else ''}", file=sys.stderr)
        return 1
    return 0


def run_stats(args) -> int:
    import grpc

    from infersched.client.stats import RPC_TIMEOUT_S, format_stats, stats_json
    from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc

    security = client_security(args)
    try:
        with security.channel(args.target) as channel:
            stub = security.stub(scheduler_pb2_grpc.SchedulerStub, channel)
            if not args.watch:
                stats = stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
                print(stats_json(stats) if args.json else format_stats(stats))
                return 0
            for stats in stub.WatchStats(scheduler_pb2.WatchStatsRequest(interval_s=args.interval)):
                print(stats_json(stats) if args.json else format_stats(stats) + "\n", flush=True)
    except grpc.RpcError as exc:
        print(f"infersched: error: {rpc_error(args.target, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
