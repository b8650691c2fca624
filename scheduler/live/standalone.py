"""A scheduler without Ray, for fault tests and bench scripts of the client side.

The same SchedulerCore, SchedulerServicer, gRPC server options and front-end
relay as `infersched serve`, on a scaled clock; only the workers differ: one
in-process EmulatedWorker per instance (`scheduler.live.inprocess`, the same
engines the worker actors run) instead of one Ray actor each. What the fault
tests measure, how the client-facing port holds up under hostile input and
bursts, lives entirely in the process this module runs, so its RSS is the
scheduler's, with no Ray processes to start or to tell apart.

    python -m scheduler.live.standalone --cluster live-small [--frontends N]

prints one JSON line (port, pid, front-end pids) once it serves on 127.0.0.1,
and serves until SIGTERM, SIGINT or its stdin closes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.live.bounds import add_scheduler_service
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.relay import FrontendPool
from scheduler.live.servicer import SchedulerServicer
from scheduler.live.types import LiveOptions
from scheduler.registry import build_policy
from workers.clock import ScaledClock
from workers.rpc import start_grpc_server


async def serve(cluster_name: str, options: LiveOptions, frontends: int = 0, host: str = "127.0.0.1",
                port: int = 0) -> int:
    config = load_cluster(cluster_name if cluster_name.endswith((".yaml", ".yml")) else
                          builtin_cluster_path(cluster_name))
    cluster = Cluster(config)
    clock = ScaledClock(options.time_scale)
    client = InProcessWorkerClient(cluster, clock)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options, clock, client)
    client.register_all(core)
    servicer = SchedulerServicer(core)
    loop = asyncio.get_running_loop()
    pool = server = None
    if frontends:
        pool = FrontendPool(servicer, frontends, start_timeout_s=60)
        bound = await pool.start(host, port)
    else:
        server, bound, _ = await start_grpc_server(host, lambda s: [add_scheduler_service(s, servicer)], port=port)
    print(json.dumps({"port": bound, "pid": os.getpid(),
                      "frontend_pids": pool.pids() if pool else []}), flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1 << 16) or stop.done()
                    or stop.set_result(None))
    await stop
    loop.remove_reader(sys.stdin.fileno())
    if server is not None:
        await server.stop(0.5)
    if pool is not None:
        await pool.stop()
    await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.live.standalone", description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="live-small")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--frontends", type=int, default=0)
    ap.add_argument("--time-scale", type=float, default=0.01)
    defaults = LiveOptions()
    ap.add_argument("--max-queue", type=int, default=defaults.max_queue)
    ap.add_argument("--max-pending-bytes", type=int, default=defaults.max_pending_bytes)
    args = ap.parse_args(argv)
    options = LiveOptions(time_scale=args.time_scale, max_queue=args.max_queue,
                          max_pending_bytes=args.max_pending_bytes)
    return asyncio.run(serve(args.cluster, options, args.frontends, port=args.port))


if __name__ == "__main__":
    sys.exit(main())
