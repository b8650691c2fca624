"""Live control plane under load: Generate throughput, control-plane overhead, GetStats latency.

Starts `infersched serve` (its own local Ray cluster, emulated workers at a
high speed-up: time_scale 0.001 by default, so a request's modelled device
time costs a thousandth of it in wall time) and, from this separate client
process, sends Generate open loop (Poisson arrivals, seeded) at increasing
rates, each for a fixed time, consuming every token stream to its final
record. A second client process calls GetStats every 20 ms throughout, each
time followed by a health check on a reference server: a grpc.aio server
with nothing but the health service, in a process of its own. It meets the
same machine load at the same moments, so its latency is the floor a unary
RPC in Python has on this machine then, whatever the server does.

    python bench/live_throughput.py                           # 100 ... 600 req/s, 8 s each
    python bench/live_throughput.py --rates 500 --step-s 20   # one rate, longer
    python bench/live_throughput.py --output-cap 16          # one token chunk per request
    python bench/live_throughput.py --policy round-robin --out bench/results/live_throughput_split.json
                                                              # half through the KV hand-over path
    python bench/live_throughput.py --realtime-priority 10 --out bench/results/live_throughput_rt.json
                                                              # scheduler (and the probes) under SCHED_FIFO
    python bench/live_throughput.py --realtime-priority 10 --floor --out bench/results/live_throughput_floor.json
                                                              # the same load on a do-nothing Scheduler server
    python bench/live_throughput.py --realtime-priority 10 --frontends 1 --out bench/results/live_throughput_fe.json
                                                              # client gRPC in a front-end process
    python bench/live_throughput.py --frontends 2 --client-channels 8   # the load over 8 connections, spread
                                                              # over 2 front ends (for hosts with more cores)
    python bench/live_throughput.py --serve-flag=--worker-tls   # mutual TLS on the worker plane
    python bench/live_throughput.py --replot                 # the PNG again, from the JSON
Writes bench/results/live_throughput.json and a plot next to it (.png). All traffic stays on 127.0.0.1;
the run stops by itself (each step is bounded, serve is stopped with SIGINT,
then killed by PID if it does not exit).

With `--floor`, no scheduler runs: the same client and prober meet a
do-nothing grpc.aio server of the Scheduler service (`floor_server_main`, one
process) that holds each Generate for FLOOR_HOLD_S and answers with what the
scheduler sends for most requests (one message: all the tokens and the record), and
answers GetStats with a stats message of live-small's size. Its CPU per
request and GetStats latency are what the gRPC service alone costs on this
machine at each rate: the floor under the scheduler's numbers.

Per step it reports:
- offered and achieved rate: achieved = completed requests / (last final
  record - first send); a step is sustained when achieved >= 95% of offered
  with nothing rejected or failed and every stream ended;
- send lag: how late the client sent against its schedule (shows whether the
  client, not the server, was the limit);
- control-plane overhead per request, everything except modelled device
  time: client wall time from sending Generate to its final record minus
  (record.finish_s - record.arrival_s) x time_scale. The record's span is on
  the scheduler clock in modelled seconds (see scheduler.live.core), so this
  leaves the client's and the scheduler's gRPC and Python work, the policy,
  the worker RPCs and the emulation's timer slack. The scheduler's own view of
  the same quantity (measured from Generate's arrival in the scheduler, so
  without the client side) comes from its Prometheus histogram
  `infersched_control_overhead_seconds`, as the change over the step;
- policy time per decision: GetStats `scheduling_overhead_s` at the end of the
  step (the scheduler's window of recent decisions) and the step's change in
  `infersched_scheduling_overhead_seconds` (bucket-interpolated quantiles);
- GetStats latency p50/p99/max from the prober process over the step (and,
  once, with no load before the first step), next to the reference server's
  health-check latency over the same step;
- machine CPU busy share over the step (/proc/stat, all cores), and CPU
  cores used per process: this client, the prober, and serve's process tree
  by kind (scheduler actor, worker actors, raylet, GCS, ...), also as CPU
  milliseconds per completed request.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.realtime import set_realtime_priority  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from live_measure import cpu_model, cpu_times, histogram_quantile, ms, pct, process_cpu, scrape  # noqa: E402

DEFAULT_CLUSTER = ROOT / "deploy" / "clusters" / "live-small.yaml"
DEFAULT_OUT = ROOT / "bench" / "results" / "live_throughput.json"
LISTEN_RE = re.compile(r"scheduler listening on (\S+)")
METRICS_RE = re.compile(r"metrics on (\S+)")
SUSTAIN_SHARE = 0.95
PROBE_INTERVAL_S = 0.02


# ---- GetStats prober (its own process) ------------------------------------------------------


def probe_main(target: str, reference: str, stop, results, realtime_priority: int = 0) -> None:
    """Every PROBE_INTERVAL_S: GetStats on the scheduler, then a health check on the
    reference server. Samples: (unix time, GetStats s, ok, reference s)."""
    import grpc

    if realtime_priority:
        set_realtime_priority(realtime_priority)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc

    samples = []
    with grpc.insecure_channel(target) as channel, grpc.insecure_channel(reference) as ref_channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        ref = health_pb2_grpc.HealthStub(ref_channel)
        stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)  # connect before timing
        ref.Check(health_pb2.HealthCheckRequest(), timeout=10)
        while not stop.is_set():
            t_unix = time.time()
            t = time.perf_counter()
            try:
                stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=5)
                ok = True
            except grpc.RpcError:
                ok = False
            t_ref = time.perf_counter()
            ref.Check(health_pb2.HealthCheckRequest(), timeout=5)
            done = time.perf_counter()
            samples.append((t_unix, t_ref - t, ok, done - t_ref))
            time.sleep(PROBE_INTERVAL_S)
    results.put(samples)


def serve_forever(ports, realtime_priority: int, add_servicers) -> None:
    """Run a grpc.aio server on a free loopback port in this process until it is killed;
    `add_servicers(server)` (a coroutine function) registers what it serves. The port
    goes to the `ports` queue once it listens."""
    import grpc

    if realtime_priority:
        set_realtime_priority(realtime_priority)

    async def main():
        server = grpc.aio.server()
        await add_servicers(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def reference_server_main(ports, realtime_priority: int = 0) -> None:
    """A grpc.aio server with nothing but the health service, in its own process: what a
    unary RPC costs on this machine under the same load, without the scheduler."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def add(server):
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    serve_forever(ports, realtime_priority, add)


# Wall seconds a floor-server Generate holds before answering (about a live-small
# request's modelled time at time_scale 0.001).
FLOOR_HOLD_S = 0.005


def floor_server_main(ports, time_scale: float, realtime_priority: int = 0) -> None:
    """The Scheduler service doing nothing but answer, in its own process (see --floor)."""
    from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

    pools = [scheduler_pb2.PoolStats(name=name, device=device, model="llama-3.1-8b", role=role, instances=1,
                                     chips_per_instance=1, completed=123456, prefill_tokens=10**9,
                                     decode_tokens=10**8, utilization=0.5, energy_j=1e6, cost_usd=10.0,
                                     kv_free_tokens=10**6, kv_capacity_tokens=2 * 10**6)
             for name, device, role in (("h100-prefill", "h100-sxm", common_pb2.ROLE_PREFILL),
                                        ("h100-decode", "h100-sxm", common_pb2.ROLE_DECODE),
                                        ("b200", "b200", common_pb2.ROLE_BOTH))]
    latency = common_pb2.LatencyPercentiles(p50_s=0.01, p90_s=0.02, p99_s=0.05, mean_s=0.012, samples=10_000)
    stats = scheduler_pb2.SchedulerStats(
        policy="slo-aware", cluster="live-small", uptime_s=100.0, requests_total=50_000, requests_completed=50_000,
        reasons={"queue full": 0}, decisions_total=50_000, scheduling_overhead_s=latency, ttft_s=latency,
        tpot_s=latency, e2e_s=latency, slo_attainment=0.99, input_tokens=10**9, output_tokens=10**8,
        energy_j=3e6, cost_usd=30.0, pools=pools)
    modelled_s = FLOOR_HOLD_S / time_scale

    class FloorScheduler(scheduler_pb2_grpc.SchedulerServicer):
        async def Generate(self, request, context):
            await asyncio.sleep(FLOOR_HOLD_S)
            out = request.max_output_tokens
            yield scheduler_pb2.GenerateResponse(tokens=common_pb2.TokenChunk(
                request_id=request.request_id, first_token_index=0, token_count=out, emit_s=modelled_s),
                                                 record=scheduler_pb2.RequestRecord(
                request_id=request.request_id, status=common_pb2.REQUEST_STATUS_COMPLETED, arrival_s=0.0,
                prefill_start_s=0.0, prefill_end_s=modelled_s / 10, first_token_s=modelled_s / 10,
                finish_s=modelled_s, ttft_s=modelled_s / 10, tpot_s=modelled_s / max(out, 1), prefill_pool="b200",
                decode_pool="b200", prefill_instance=2, decode_instance=2, model="llama-3.1-8b",
                input_tokens=request.prompt_length, output_tokens=out, energy_j=100.0, cost_usd=0.001))

        async def GetStats(self, request, context):
            return stats

    async def add(server):
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(FloorScheduler(), server)

    serve_forever(ports, realtime_priority, add)


# ---- load generator ---------------------------------------------------------------------------


class Step:
    def __init__(self, rate: float, n: int):
        self.rate = rate
        self.n = n
        self.lag_s: list[float] = []
        self.overhead_s: list[float] = []
        self.route: list[str] = []  # "colocated" or "disaggregated", per overhead sample
        self.e2e_wall_s: list[float] = []
        self.ttft_wall_s: list[float] = []
        self.statuses: dict[str, int] = {}
        self.first_send = math.inf
        self.last_done = -math.inf

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


async def run_step(stubs: list, step: Step, lengths: np.ndarray, rng: np.random.Generator, time_scale: float,
                   tag: str, drain_s: float) -> None:
    import grpc

    from infersched.v1 import common_pb2, scheduler_pb2

    completed = common_pb2.REQUEST_STATUS_COMPLETED

    async def one(i: int, prompt: int, output: int) -> None:
        sent = time.perf_counter()
        step.first_send = min(step.first_send, sent)
        first = None
        record = None
        try:
            call = stubs[i % len(stubs)].Generate(scheduler_pb2.GenerateRequest(
                request_id=f"{tag}-{i}", prompt_length=prompt, max_output_tokens=output), timeout=60)
            async for item in call:
                if first is None and item.HasField("tokens"):
                    first = time.perf_counter()
                if item.HasField("record"):  # the last message, possibly with the tokens
                    record = item.record
        except grpc.aio.AioRpcError as exc:
            step.count(exc.code().name)
            return
        done = time.perf_counter()
        step.last_done = max(step.last_done, done)
        if record is None:
            step.count("NO_RECORD")
            return
        if record.status != completed:
            step.count(common_pb2.RequestStatus.Name(record.status))
            return
        step.count("COMPLETED")
        wall = done - sent
        step.e2e_wall_s.append(wall)
        if first is not None:
            step.ttft_wall_s.append(first - sent)
        step.overhead_s.append(wall - (record.finish_s - record.arrival_s) * time_scale)
        step.route.append("colocated" if record.prefill_instance == record.decode_instance else "disaggregated")

    gaps = rng.exponential(1.0 / step.rate, step.n)
    schedule = np.cumsum(gaps) - gaps[0]
    picks = rng.integers(0, len(lengths), step.n)
    tasks = []
    t0 = time.perf_counter()
    for i in range(step.n):
        delay = t0 + schedule[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        step.lag_s.append(max(0.0, time.perf_counter() - (t0 + schedule[i])))
        prompt, output = lengths[picks[i]]
        tasks.append(asyncio.create_task(one(i, int(prompt), int(output))))
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        for _ in pending:
            step.count("NOT_DONE_IN_DRAIN")


# ---- serve process --------------------------------------------------------------------------


def start_serve(args, log_path: Path) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "infersched.cli", "serve", "--cluster", str(args.cluster), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", "0", "--time-scale", repr(args.time_scale), "--seed", str(args.seed)]
    if args.policy:
        cmd += ["--policy", args.policy]
    if args.realtime_priority:
        cmd += ["--realtime-priority", str(args.realtime_priority)]
    if args.frontends:
        cmd += ["--frontends", str(args.frontends)]
    cmd += args.serve_flag
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + args.start_timeout_s
    target = metrics = None
    while time.monotonic() < deadline:
        text = log_path.read_text()
        target = target or (LISTEN_RE.search(text) and LISTEN_RE.search(text).group(1))
        metrics = metrics or (METRICS_RE.search(text) and METRICS_RE.search(text).group(1))
        if target and metrics:
            return proc, target, metrics
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_serve(proc)
    raise RuntimeError(f"serve did not start (log {log_path}):\n{log_path.read_text()[-3000:]}")


def stop_serve(proc: subprocess.Popen, timeout_s: float = 60.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # the serve process only, by its PID; Ray's own processes exit with it
            proc.wait(10)
    return proc.returncode


# ---- main -----------------------------------------------------------------------------------


async def drive(args, target: str, metrics_url: str, lengths: np.ndarray, time_scale: float,
                roots: dict[str, int]) -> list[dict]:
    import grpc

    from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc

    rng = np.random.default_rng(args.seed)
    out = []
    # Each channel its own connection (not gRPC's process-wide shared subchannel), so
    # several front ends share the load as they would share many clients'.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with contextlib.AsyncExitStack() as channels:
        stubs = [scheduler_pb2_grpc.SchedulerStub(await channels.enter_async_context(
            grpc.aio.insecure_channel(target, options=options))) for _ in range(args.client_channels)]
        stub = stubs[0]
        for each in stubs:
            await each.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)
        if args.warmup_s > 0:
            warm = Step(min(args.rates[0], 100.0), max(1, int(min(args.rates[0], 100.0) * args.warmup_s)))
            await run_step(stubs, warm, lengths, rng, time_scale, "warmup", args.drain_s)
        for k, rate in enumerate(args.rates):
            step = Step(rate, max(1, int(round(rate * args.step_s))))
            before = scrape(metrics_url) if metrics_url else {}
            busy0, total0 = cpu_times()
            procs0 = process_cpu(roots)
            t_unix0 = time.time()
            await run_step(stubs, step, lengths, rng, time_scale, f"s{k}", args.drain_s)
            t_unix1 = time.time()
            busy1, total1 = cpu_times()
            procs1 = process_cpu(roots)
            after = scrape(metrics_url) if metrics_url else {}
            stats = await stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)
            span = step.last_done - step.first_send
            completed = step.statuses.get("COMPLETED", 0)
            achieved = completed / span if span > 0 else 0.0
            policy_hist = (before.get("infersched_scheduling_overhead_seconds", {}),
                           after.get("infersched_scheduling_overhead_seconds", {}))
            control_hist = (before.get("infersched_control_overhead_seconds", {}),
                            after.get("infersched_control_overhead_seconds", {}))
            row = {
                "offered_rps": rate, "sent": step.n, "statuses": step.statuses,
                "achieved_rps": round(achieved, 1),
                "sustained": bool(completed == step.n and achieved >= SUSTAIN_SHARE * rate),
                "send_lag_ms": {"p50": ms(pct(step.lag_s, 50)), "p99": ms(pct(step.lag_s, 99))},
                "control_overhead_ms": {"p50": ms(pct(step.overhead_s, 50)), "p99": ms(pct(step.overhead_s, 99)),
                                        "mean": ms(float(np.mean(step.overhead_s)) if step.overhead_s else None)},
                "control_overhead_ms_by_route": {
                    route: {"requests": len(values), "p50": ms(pct(values, 50)), "p99": ms(pct(values, 99))}
                    for route in ("colocated", "disaggregated")
                    for values in [[o for o, r in zip(step.overhead_s, step.route) if r == route]]},
                "scheduler_control_overhead_ms": {
                    "p50": ms(histogram_quantile(*control_hist, 0.5)),
                    "p99": ms(histogram_quantile(*control_hist, 0.99))},
                "e2e_wall_ms": {"p50": ms(pct(step.e2e_wall_s, 50)), "p99": ms(pct(step.e2e_wall_s, 99))},
                "ttft_wall_ms": {"p50": ms(pct(step.ttft_wall_s, 50)), "p99": ms(pct(step.ttft_wall_s, 99))},
                "policy_ms_getstats_window": {"p50": ms(stats.scheduling_overhead_s.p50_s),
                                              "p99": ms(stats.scheduling_overhead_s.p99_s),
                                              "samples": stats.scheduling_overhead_s.samples},
                "policy_ms_step": {"p50": ms(histogram_quantile(*policy_hist, 0.5)),
                                   "p99": ms(histogram_quantile(*policy_hist, 0.99))},
                "cpu_busy_share": round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None,
                # CPU seconds per wall second of the step, by process (2.0 = both cores).
                "cpu_cores_by_process": {k: round((procs1.get(k, 0.0) - procs0.get(k, 0.0)) / (t_unix1 - t_unix0), 3)
                                         for k in sorted(procs1) if procs1.get(k, 0.0) - procs0.get(k, 0.0) > 0.005},
                # The same CPU per completed request, in milliseconds.
                "cpu_ms_per_request_by_process": {
                    k: round(1e3 * (procs1.get(k, 0.0) - procs0.get(k, 0.0)) / completed, 3)
                    for k in sorted(procs1) if completed and procs1.get(k, 0.0) - procs0.get(k, 0.0) > 0.005},
                "window_unix_s": [t_unix0, t_unix1],
            }
            out.append(row)
            print(f"offered {rate:>6.0f}/s  achieved {row['achieved_rps']:>6.1f}/s  "
                  f"{'sustained' if row['sustained'] else 'NOT sustained'}  {step.statuses}  "
                  f"overhead p50/p99 {row['control_overhead_ms']['p50']}/{row['control_overhead_ms']['p99']} ms  "
                  f"policy p50/p99 {row['policy_ms_step']['p50']}/{row['policy_ms_step']['p99']} ms  "
                  f"cpu {row['cpu_busy_share']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER)
    ap.add_argument("--time-scale", type=float, default=0.001)
    ap.add_argument("--policy", default=None,
                    help="policy to serve (default: the cluster's; round-robin sends half of live-small's "
                         "requests through its prefill -> decode pair)")
    ap.add_argument("--rates", default="100,200,300,400,500,600",
                    help="comma-separated offered rates in requests/s, one step each")
    ap.add_argument("--step-s", type=float, default=8.0, help="seconds of sending per step")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--drain-s", type=float, default=30.0, help="wait at most this long for a step's streams")
    ap.add_argument("--start-timeout-s", type=float, default=180.0)
    ap.add_argument("--idle-s", type=float, default=3.0, help="GetStats probing with no load before the steps")
    ap.add_argument("--output-cap", type=int, default=0,
                    help="cap each request's output tokens (0 = the trace's own lengths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                    help="serve --realtime-priority N, and the same SCHED_FIFO priority for the GetStats prober "
                         "and the reference server (the measuring side; the load client stays as it is)")
    ap.add_argument("--frontends", type=int, default=0, metavar="N",
                    help="serve --frontends N: client gRPC in N front-end processes relayed to the core")
    ap.add_argument("--client-channels", type=int, default=1, metavar="K",
                    help="the load client's gRPC connections, requests round-robin over them (with --frontends N, "
                         "the kernel spreads connections over the front ends)")
    ap.add_argument("--floor", action="store_true",
                    help="no scheduler: the same load on a do-nothing Scheduler server (the gRPC floor)")
    ap.add_argument("--serve-flag", action="append", default=[], metavar="FLAG",
                    help="pass FLAG on to serve (repeatable), e.g. --serve-flag=--worker-tls")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from --out's JSON")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.png')}")
        return 0
    args.rates = [float(r) for r in args.rates.split(",")]

    import grpc
    import ray

    from simulator.traces import builtin_trace_path, read_trace

    trace = read_trace(builtin_trace_path())
    lengths = np.stack([trace.input_tokens, trace.output_tokens], axis=1).astype(np.int64)
    if args.output_cap > 0:
        lengths[:, 1] = np.minimum(lengths[:, 1], args.output_cap)

    ctx = mp.get_context("spawn")
    stop, results, ports = ctx.Event(), ctx.Queue(), ctx.Queue()
    if args.floor:
        proc = ctx.Process(target=floor_server_main, args=(ports, args.time_scale, args.realtime_priority),
                           daemon=True)
        proc.start()
        target, metrics_url = f"127.0.0.1:{ports.get(timeout=60)}", None
        print(f"floor server listening on {target}", flush=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="infersched-bench-"))
        proc, target, metrics_url = start_serve(args, work / "serve.log")
        print(f"serve listening on {target}, metrics {metrics_url}", flush=True)
    reference = ctx.Process(target=reference_server_main, args=(ports, args.realtime_priority), daemon=True)
    reference.start()
    reference_target = f"127.0.0.1:{ports.get(timeout=60)}"
    prober = ctx.Process(target=probe_main, args=(target, reference_target, stop, results, args.realtime_priority),
                         daemon=True)
    prober.start()
    time.sleep(args.idle_s)  # GetStats with no load, for comparison
    idle_until = time.time()
    samples: list = []
    try:
        roots = {"floor_server" if args.floor else "serve": proc.pid, "client": os.getpid(),
                 "getstats_prober": prober.pid,
                 "reference_server": reference.pid}
        steps = asyncio.run(drive(args, target, metrics_url, lengths, args.time_scale, roots))
    finally:
        stop.set()
        try:
            samples = results.get(timeout=30)
        except Exception:
            samples = []
        prober.join(10)
        for child in (prober, reference):
            if child.is_alive():
                child.kill()
        if args.floor:
            proc.kill()
        else:
            print(f"serve exited with {stop_serve(proc)}", flush=True)

    for row in steps:
        t0, t1 = row.pop("window_unix_s")
        lat = [s[1] for s in samples if t0 <= s[0] <= t1 and s[2]]
        errors = sum(1 for s in samples if t0 <= s[0] <= t1 and not s[2])
        row["getstats_ms"] = {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)), "max": ms(max(lat) if lat else None),
                              "samples": len(lat), "errors": errors}
        ref = [s[3] for s in samples if t0 <= s[0] <= t1]
        row["reference_rpc_ms"] = {"p50": ms(pct(ref, 50)), "p99": ms(pct(ref, 99))}
    idle = [s[1] for s in samples if s[0] < idle_until and s[2]]
    idle_ref = [s[3] for s in samples if s[0] < idle_until]
    if args.floor:  # no policy ran: the stats message is a fixed one
        for row in steps:
            for key in ("policy_ms_getstats_window", "policy_ms_step", "scheduler_control_overhead_ms"):
                row.pop(key)
    sustained = [r for r in steps if r["sustained"]]
    best = max(sustained, key=lambda r: r["offered_rps"]) if sustained else None
    # "Under that load": the first step offering >= 500 req/s, sustained or not.
    at_500 = next((r for r in steps if r["offered_rps"] >= 500), None)
    # At the first step offering >= 500 req/s. Policy time: GetStats' window of recent
    # decisions at the end of that step; GetStats latency: the prober over that step.
    getstats_p99 = at_500["getstats_ms"]["p99"] if at_500 else None
    targets = {"getstats_p99_under_5ms": getstats_p99 is not None and getstats_p99 < 5.0}
    if not args.floor:  # no policy runs on the floor server
        targets = {"sustains_500_rps": bool(at_500 and at_500["sustained"]),
                   "policy_p50_under_0.2ms": bool(at_500 and at_500["policy_ms_getstats_window"]["p50"] < 0.2),
                   "policy_p99_under_2ms": bool(at_500 and at_500["policy_ms_getstats_window"]["p99"] < 2.0),
                   **targets}
    result = {
        "benchmark": "live_throughput",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                    "ray": ray.__version__, "grpcio": grpc.__version__, "platform": platform.platform()},
        "config": {"cluster": str(args.cluster.relative_to(ROOT) if args.cluster.is_relative_to(ROOT)
                                  else args.cluster),
                   "policy": args.policy or "(the cluster's)",
                   "floor": args.floor,
                   "frontends": args.frontends,
                   "client_channels": args.client_channels,
                   "realtime_priority": args.realtime_priority, "serve_flags": args.serve_flag,
                   "time_scale": args.time_scale, "step_s": args.step_s, "warmup_s": args.warmup_s,
                   "arrivals": "poisson", "seed": args.seed,
                   "lengths": "Azure 2023 conversation trace (built-in), sampled with replacement"
                              + (f", output capped at {args.output_cap} tokens" if args.output_cap > 0 else ""),
                   "mean_prompt_tokens": round(float(lengths[:, 0].mean()), 1),
                   "mean_output_tokens": round(float(lengths[:, 1].mean()), 1),
                   "getstats_probe_interval_s": PROBE_INTERVAL_S},
        "getstats_idle_ms": {"p50": ms(pct(idle, 50)), "p99": ms(pct(idle, 99)), "samples": len(idle)},
        "reference_rpc_idle_ms": {"p50": ms(pct(idle_ref, 50)), "p99": ms(pct(idle_ref, 99))},
        "steps": steps,
        "max_sustained_rps": best["offered_rps"] if best else 0.0,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result["targets"]), f"max sustained {result['max_sustained_rps']:g} req/s", flush=True)
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")
    return 0


def plot(result: dict, path: Path) -> None:
    """Achieved rate, control-plane overhead and GetStats latency (with the reference
    server's floor) against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    offered = [s["offered_rps"] for s in steps]
    fig, (rate, overhead, stats) = plt.subplots(1, 3, figsize=(15, 4.2))
    rate.plot(offered, offered, ":", color="grey", label="offered")
    rate.plot(offered, [s["achieved_rps"] for s in steps], "o-", label="achieved")
    rate.set(xlabel="offered requests/s", ylabel="requests/s", title="Generate throughput")
    for q, style in (("p50", "o-"), ("p99", "s--")):
        overhead.plot(offered, [s["control_overhead_ms"][q] for s in steps], style, label=q)
        stats.plot(offered, [s["getstats_ms"][q] for s in steps], style, label=f"GetStats {q}")
        stats.plot(offered, [s["reference_rpc_ms"][q] for s in steps], style, color="grey", alpha=0.6,
                   label=f"reference server {q}")
    overhead.set(xlabel="offered requests/s", ylabel="ms", yscale="log",
                 title="control-plane overhead per request")
    stats.axhline(5.0, color="red", linewidth=0.8, label="GetStats p99 target")
    stats.set(xlabel="offered requests/s", ylabel="ms", title="GetStats latency under load")
    for ax in (rate, overhead, stats):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    config = result["config"]
    floor = config.get("floor")
    what = ("do-nothing Scheduler server (--floor)" if floor
            else f"{config['cluster']}, policy {config.get('policy')}")
    if config.get("frontends"):
        what += f", client gRPC in {config['frontends']} front-end process(es)"
    if config.get("client_channels", 1) > 1:
        what += f", {config['client_channels']} client connections"
    rt = config.get("realtime_priority")
    fifo = f", {'server' if floor else 'scheduler'} and probes SCHED_FIFO {rt}" if rt else ""
    fig.suptitle(f"{what}, time_scale {config['time_scale']:g}, {result['machine']['cpus']} CPUs{fifo}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
