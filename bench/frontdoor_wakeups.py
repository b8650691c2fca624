"""Where a front-door request wakes the scheduler's process: context switches and CPU
per request, per thread of the scheduler actor's process, on the gRPC and the HTTP path.

One real engine (llama-cpp-python, the tiny test model) behind `serve --http-port` with
one `backend: openai` pool, as bench/frontdoor_overhead.py runs it; `--requests`
streamed requests one at a time on each path (64 prompt tokens, 16 out), then the idle
rate. Threads are named as py-spy names them (the asyncio loop, grpc's poller and
event-engine threads, Ray's main thread). Counts come from /proc (voluntary and
involuntary switches; CPU in clock ticks, so per-request CPU is coarse). Linux only.

    python bench/frontdoor_wakeups.py                       # this checkout
    python bench/frontdoor_wakeups.py --checkout /tmp/before
    python bench/frontdoor_wakeups.py --floor               # also bench/frontdoor_floor.py's relay
With `--floor` the same requests go through bench/frontdoor_floor.py too (a bare relay
process: no Ray, no scheduler), counted in its process under "floor": the wakeups any
one-hop front door costs on this machine.
Writes bench/results/frontdoor_wakeups.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import yaml  # noqa: E402

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from scheduler.live.openai_client import synthetic_prompt  # noqa: E402
from tests.engines.llama_server import MODEL_ALIAS, running_llama_server  # noqa: E402
from tests.engines.tiny_llama import write_tiny_llama  # noqa: E402
from tests.serve_process import served_process  # noqa: E402
from live_measure import write_result  # noqa: E402
from frontdoor_floor import floor_process  # noqa: E402

TICK_MS = 1e3 / os.sysconf("SC_CLK_TCK")


def listening_pid(port: int) -> int:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


def python_thread_names(pid: int) -> dict[str, str]:
    """Native thread id -> Python thread name (py-spy's dump), where py-spy is installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return {line.split()[1]: line.split('"')[1] for line in dump.splitlines() if line.startswith("Thread ")}


def sample(pid: int, names: dict[str, str]) -> dict[str, tuple[str, int, int]]:
    """Thread id -> (name, context switches, CPU ticks)."""
    rows = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        values = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        switches = int(values["voluntary_ctxt_switches"]) + int(values["nonvoluntary_ctxt_switches"])
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rows[tid] = (names.get(tid, comm), switches, int(fields[11]) + int(fields[12]))
    return rows


def per_request(before: dict, after: dict, n: int) -> dict[str, dict[str, float]]:
    switches, cpu = collections.Counter(), collections.Counter()
    for tid, (name, s, c) in after.items():
        if tid in before:
            switches[name] += s - before[tid][1]
            cpu[name] += c - before[tid][2]
    return {name: {"switches": round(switches[name] / n, 2), "cpu_ms": round(cpu[name] * TICK_MS / n, 3)}
            for name in sorted(switches, key=lambda k: -switches[k]) if switches[name]}


async def measure(address: str, http: str, n: int) -> dict:
    """`address`, `http`: the gRPC address and OpenAI base URL of the process measured."""
    import openai

    pid = listening_pid(int(address.rsplit(":", 1)[1]))
    names = python_thread_names(pid)
    result = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        async def grpc_one(i: int) -> int:
            messages = 0
            async for _ in stub.Generate(scheduler_pb2.GenerateRequest(request_id=f"w{i}-{time.time_ns()}",
                                                                       prompt_length=64, max_output_tokens=16)):
                messages += 1
            return messages

        client = openai.AsyncOpenAI(base_url=http, api_key="unused", max_retries=0, timeout=60)

        async def http_one(i: int) -> int:
            stream = await client.completions.create(model=MODEL_ALIAS, prompt=synthetic_prompt(f"w{i}", 64),
                                                     max_tokens=16, temperature=0, stream=True,
                                                     extra_body={"ignore_eos": True})
            return sum([1 async for _ in stream])

        for path, one in (("grpc", grpc_one), ("http", http_one)):
            for i in range(5):
                await one(-1 - i)
            before, t0 = sample(pid, names), time.perf_counter()
            messages = sum([await one(i) for i in range(n)])
            elapsed = time.perf_counter() - t0
            result[path] = {"ms_per_request": round(elapsed / n * 1e3, 2), "messages_per_request": messages / n,
                            "threads": per_request(before, sample(pid, names), n)}
    await asyncio.sleep(1.0)
    before = sample(pid, names)
    await asyncio.sleep(2.0)
    result["idle_per_s"] = per_request(before, sample(pid, names), 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="serve from another checkout")
    parser.add_argument("--floor", action="store_true", help="also count bench/frontdoor_floor.py's relay")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "frontdoor_wakeups.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wakeups-") as tmp:
        tmp = Path(tmp)
        model = write_tiny_llama(tmp / "tiny-llama.gguf")
        with running_llama_server(model, tmp) as engine:
            cluster = {"name": "one-engine", "pools": [{"name": "llama", "backend": "openai",
                                                        "endpoints": [engine.base_url], "model": MODEL_ALIAS,
                                                        "context_tokens": 512}]}
            (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
            with served_process(tmp / "cluster.yaml", "--metrics-port", "-1", "--http-port", "0",
                                checkout=args.checkout.resolve()) as served:
                result = asyncio.run(measure(served.address, served.http, args.requests))
            if args.floor:
                with floor_process(engine.base_url, MODEL_ALIAS) as (address, http):
                    result["floor"] = asyncio.run(measure(address, http, args.requests))
    result.update(checkout=str(args.checkout), requests=args.requests)
    write_result(result, args.out, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
