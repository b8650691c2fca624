"""Hostile input against the scheduler's client port: scheduler RSS under a metadata flood and a stream burst.

Starts a scheduler (`python -m scheduler.live.standalone`: the same core,
servicer, gRPC server options and front-end relay as `infersched serve`, with
in-process emulated workers instead of Ray actors, so the process measured is
the one that answers the port and nothing else), then from this process:

1. metadata flood: `--calls` Generate calls (default 1,500) each carrying one
   metadata value of `--metadata-bytes` (default 2,000,000), `--concurrency`
   at a time; every one must be refused (RESOURCE_EXHAUSTED, from gRPC's 16 KiB
   metadata bound) and the scheduler keeps serving;
2. burst: `--streams` Generate streams (default 5,000) opened at once over 8
   channels, each read to its end; every one ends with a record or
   RESOURCE_EXHAUSTED (the queue bound), and GetStats adds up.

Reports, per phase, the scheduler's peak RSS growth (VmHWM over the RSS before
the phase, from /proc; with --frontends, for the core and each front end).

    python bench/input_bounds.py                    # the scheduler serves the port itself
    python bench/input_bounds.py --frontends 1      # the port in a front-end process, relayed
Writes bench/results/input_bounds[_fe].json. Loopback only; stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc  # noqa: E402


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def start_scheduler(frontends: int, cluster: str = "live-small", extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen,
                                                                                                      dict]:
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.live.standalone", "--cluster", cluster,
                             "--frontends", str(frontends), *extra], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    return proc, json.loads(proc.stdout.readline())


def stop_scheduler(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def metadata_flood(target: str, calls: int, value_bytes: int, concurrency: int) -> dict:
    """`calls` Generate calls with one `value_bytes` metadata value each; their statuses."""
    statuses: collections.Counter = collections.Counter()
    metadata = (("x-flood", "a" * value_bytes),)
    request = scheduler_pb2.GenerateRequest(prompt_length=16, max_output_tokens=1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        left = iter(range(calls))

        async def worker():
            for _ in left:
                try:
                    async for _ in stub.Generate(request, metadata=metadata, timeout=60):
                        pass
                    statuses["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    statuses[exc.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(statuses)


async def stream_burst(target: str, streams: int, channels: int = 8) -> dict:
    """`streams` Generate streams opened at once, each read to its end; how each ended."""
    ends: collections.Counter = collections.Counter()
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        stubs = [scheduler_pb2_grpc.SchedulerStub(c) for c in chans]

        async def one(i: int):
            request = scheduler_pb2.GenerateRequest(request_id=f"burst-{i}", prompt_length=128, max_output_tokens=16)
            try:
                async for item in stubs[i % channels].Generate(request, timeout=120):
                    if item.HasField("record"):
                        ends[common_pb2.RequestStatus.Name(item.record.status)] += 1
            except grpc.aio.AioRpcError as exc:
                ends[exc.code().name] += 1

        await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        for c in chans:
            await c.close()
    return dict(ends)


async def get_stats(target: str) -> scheduler_pb2.SchedulerStats:
    async with grpc.aio.insecure_channel(target) as channel:
        return await scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)


def phase(pids: list[int], run) -> dict:
    """Run `run()`; the peak RSS growth of each pid over its RSS before."""
    before = {}
    for pid in pids:
        reset_peak(pid)
        before[pid] = memory_mb(pid)["VmRSS"]
    t0 = time.perf_counter()
    result = asyncio.run(run())
    wall = time.perf_counter() - t0
    growth = {str(pid): round(memory_mb(pid)["VmHWM"] - before[pid], 1) for pid in pids}
    return {"result": result, "wall_s": round(wall, 2),
            "rss_before_mb": {str(p): round(v, 1) for p, v in before.items()}, "peak_rss_growth_mb": growth}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontends", type=int, default=0)
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--metadata-bytes", type=int, default=2_000_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    proc, info = start_scheduler(args.frontends)
    target = f"127.0.0.1:{info['port']}"
    pids = [info["pid"], *info["frontend_pids"]]
    try:
        flood = phase(pids, lambda: metadata_flood(target, args.calls, args.metadata_bytes, args.concurrency))
        burst = phase(pids, lambda: stream_burst(target, args.streams))
        stats = asyncio.run(get_stats(target))
    finally:
        stop_scheduler(proc)
    out = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "frontends": args.frontends,
        "scheduler_pid": info["pid"], "frontend_pids": info["frontend_pids"],
        "metadata_flood": {"calls": args.calls, "metadata_bytes": args.metadata_bytes,
                           "concurrency": args.concurrency, **flood},
        "burst": {"streams": args.streams, **burst},
        "stats": {"requests": stats.requests_total, "completed": stats.requests_completed,
                  "rejected": stats.requests_rejected, "failed": stats.requests_failed,
                  "invalid": stats.requests_invalid, "in_flight": stats.in_flight, "reasons": dict(stats.reasons)},
    }
    path = Path(args.out or ROOT / "bench" / "results" / f"input_bounds{'_fe' if args.frontends else ''}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
