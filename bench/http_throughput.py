"""Throughput of the OpenAI-compatible HTTP front door (`serve --http-port`) to emulated pools.

Starts `infersched serve` (its own local Ray cluster, live-small's emulated
workers at time_scale 0.001 by default) and, from this process, sends short
completions (`POST /v1/completions`, a 20-word prompt, max_tokens 16) open
loop with Poisson arrivals (seeded) at increasing rates, each for a fixed
time, over one aiohttp connection pool, and reads every answer to its end.
A step is sustained when achieved >= 95% of offered with every answer 200.

    python bench/http_throughput.py                          # 100 ... 500 req/s, 8 s each
    python bench/http_throughput.py --rates 300 --step-s 20  # one rate, longer
    python bench/http_throughput.py --stream                 # server-sent events, usage in the last chunk

Per step: offered and achieved rate (completed / (last answer - first
send)), answers by HTTP status, client latency p50/p99 (send to the end of
the answer, wall), the client's send lag, machine CPU busy share, and CPU per
process group (this client; serve's scheduler actor, worker actors, Ray) in
milliseconds per completed request. Writes bench/results/http_throughput.json.
All traffic stays on 127.0.0.1; serve is stopped with SIGINT at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from live_measure import cpu_model, cpu_times, ms, pct, process_cpu  # noqa: E402
from live_throughput import SUSTAIN_SHARE, stop_serve  # noqa: E402

DEFAULT_CLUSTER = ROOT / "deploy" / "clusters" / "live-small.yaml"
DEFAULT_OUT = ROOT / "bench" / "results" / "http_throughput.json"
HTTP_RE = re.compile(r"OpenAI-compatible HTTP on (http://\S+)/v1")
PROMPT = " ".join(["word"] * 20)
MAX_TOKENS = 16


def start_serve(args, log_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "infersched.cli", "serve", "--cluster", str(args.cluster), "--port", "0",
           "--metrics-port", "-1", "--http-port", "0", "--time-scale", repr(args.time_scale)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + args.start_timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = HTTP_RE.search(log_path.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.2)
    stop_serve(proc)
    raise RuntimeError(f"serve did not start (log {log_path}):\n{log_path.read_text()[-3000:]}")


async def one(session, url: str, body: bytes, stream: bool, sent: list, done: list, statuses: dict) -> None:
    t0 = time.perf_counter()
    sent.append(t0)
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        status = r.status
    t1 = time.perf_counter()
    ok = status == 200 and (data.endswith(b"data: [DONE]\n\n") if stream else b'"usage"' in data)
    key = str(status) if ok or status != 200 else "200-malformed"
    statuses[key] = statuses.get(key, 0) + 1
    if ok:
        done.append((t0, t1))


async def run_step(session, url: str, rate: float, args, rng: np.random.Generator) -> dict:
    body = {"model": args.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    if args.stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    raw = json.dumps(body).encode()
    n = int(rate * args.step_s)
    offsets = np.cumsum(rng.exponential(1.0 / rate, n))
    sent: list[float] = []
    done: list[tuple[float, float]] = []
    statuses: dict[str, int] = {}
    lags = []
    tasks = []
    busy0, total0 = cpu_times()
    cpu0 = process_cpu(args.roots)
    start = time.perf_counter()
    for offset in offsets:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - (start + offset)))
        tasks.append(asyncio.create_task(one(session, url, raw, args.stream, sent, done, statuses)))
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), args.drain_s + args.step_s)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    busy1, total1 = cpu_times()
    cpu1 = process_cpu(args.roots)
    completed = len(done)
    span = (max(t1 for _, t1 in done) - min(sent)) if done else float("nan")
    achieved = completed / span if done else 0.0
    latency = [t1 - t0 for t0, t1 in done]
    cpu_ms = {k: round((cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1e3 / max(completed, 1), 3) for k in cpu1}
    return {
        "offered_rps": rate, "arrivals_rps": round(n / offsets[-1], 1), "sent": n, "completed": completed, "achieved_rps": round(achieved, 1),
        "sustained": achieved >= SUSTAIN_SHARE * rate and completed == n and not errors,
        "statuses": statuses, "errors": errors[:5], "latency_p50_ms": ms(pct(latency, 50)),
        "latency_p99_ms": ms(pct(latency, 99)), "send_lag_p99_ms": ms(pct(lags, 99)),
        "machine_cpu_busy": round((busy1 - busy0) / max(total1 - total0, 1e-9), 3),
        "cpu_ms_per_request": dict(sorted(cpu_ms.items())),
    }


async def drive(args, base: str) -> list[dict]:
    import aiohttp

    rng = np.random.default_rng(args.seed)
    url = f"{base}/v1/completions"
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await run_step(session, url, 50.0, argparse.Namespace(**{**vars(args), "step_s": args.warmup_s}), rng)
        steps = []
        for rate in args.rates:
            step = await run_step(session, url, rate, args, rng)
            steps.append(step)
            print(f"{rate:>6.0f} req/s offered: {step['achieved_rps']:>6.1f} achieved, {step['statuses']}, "
                  f"latency p50 {step['latency_p50_ms']} / p99 {step['latency_p99_ms']} ms, "
                  f"machine CPU {step['machine_cpu_busy'] * 100:.0f}%, cpu ms/req {step['cpu_ms_per_request']}",
                  flush=True)
        return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--time-scale", type=float, default=0.001)
    ap.add_argument("--rates", default="100,200,300,400,500", help="comma-separated offered rates, req/s")
    ap.add_argument("--step-s", type=float, default=8.0, help="seconds of sending per step")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--drain-s", type=float, default=30.0)
    ap.add_argument("--connections", type=int, default=100, help="the client's connection pool size")
    ap.add_argument("--stream", action="store_true", help="stream each answer (server-sent events)")
    ap.add_argument("--start-timeout-s", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    log_path = args.out.with_suffix(".serve.log")
    proc, base = start_serve(args, log_path)
    args.roots = {"client": os.getpid(), "serve": proc.pid}
    print(f"serve's HTTP front door at {base}", flush=True)
    try:
        steps = asyncio.run(drive(args, base))
    finally:
        stop_serve(proc)
        log_path.unlink(missing_ok=True)
    del args.roots
    result = {
        "benchmark": "http_throughput", "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0]},
        "request": {"route": "/v1/completions", "prompt_words": 20, "max_tokens": MAX_TOKENS, "stream": args.stream},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps": steps,
        "max_sustained_rps": max((s["offered_rps"] for s in steps if s["sustained"]), default=0.0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"max sustained: {result['max_sustained_rps']:g} req/s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
