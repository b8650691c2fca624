"""What the live fault tests share: a built-in cluster file's config, a
scheduler on a fixed loopback port (a restarted scheduler binds it again), health
polling and Generate calls."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "infersched.cli"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A fresh connection per probe: channels to one target otherwise share a subchannel
# whose reconnect backoff, grown while the scheduler was down, reaches 120 s, so a
# scheduler back after a gap would stay unseen for minutes.
PROBE_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_reconnect_backoff_ms", 1000)]


def cluster_config(name: str):
    config = load_cluster(builtin_cluster_path(name))
    return config, Cluster(config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(address: str, service: str = "", timeout_s: float = 2.0):
    """The health status, or None when nothing answers."""
    try:
        with grpc.insecure_channel(address, options=PROBE_OPTIONS) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s).status
    except grpc.RpcError:
        return None


def wait_health(address: str, want, timeout_s: float, service: str = "") -> list:
    """Poll until health is `want`; returns the distinct statuses seen, in order (None: no answer)."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        got = health(address, service)
        if not seen or seen[-1] != got:
            seen.append(got)
        if got == want:
            return seen
        assert time.monotonic() < deadline, f"health never became {want} within {timeout_s} s: {seen}"
        time.sleep(0.05)


def stats(address: str) -> scheduler_pb2.SchedulerStats:
    with grpc.insecure_channel(address) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)


def workers(address: str) -> list:
    with grpc.insecure_channel(address) as channel:
        return list(scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(
            scheduler_pb2.ListWorkersRequest(), timeout=10).workers)


async def generate(stub, timeout_s: float = 120.0, **fields):
    """(final record or None, AioRpcError or None) of one Generate call."""
    record = None
    try:
        async for item in stub.Generate(scheduler_pb2.GenerateRequest(**fields), timeout=timeout_s):
            if item.HasField("record"):
                record = item.record
    except grpc.aio.AioRpcError as exc:
        return record, exc
    return record, None


def send_every(address: str, n: int, interval_s: float, **fields) -> list:
    """`n` Generate calls, one every `interval_s` (open loop); their (record, error) in order."""
    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tasks = []
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i * interval_s - loop.time()))
                tasks.append(asyncio.ensure_future(generate(stub, request_id=f"every-{i}", **fields)))
            return await asyncio.gather(*tasks)

    return asyncio.run(main())


def cli(*args, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def replay_process(address: str, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "replay", "--target", address, "--json", str(out), "--no-progress", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
