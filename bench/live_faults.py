"""The live plane under faults, as a user meets them: readiness, worker kills, a scheduler crash.

Starts `infersched serve --cluster gpu-disagg` (its own local Ray cluster, 10
prefill + 6 decode worker actors) on a fixed loopback port and, from this
process, in three phases on the same serve:

1. first SERVING: polls grpc.health.v1 from the moment serve starts; at its
   first SERVING answer sends one Generate every 10 ms, 300 in all, and counts
   how many completed (lost = not completed, whatever the reason);
2. worker kills: runs `infersched replay` (600 requests of the built-in trace,
   --speedup 10) and SIGKILLs ten distinct worker processes (their pids are in
   the worker ids ListWorkers reports), one every 0.4 s once 20 requests have
   completed; Ray restarts them. Reports the replay's outcome counts;
3. scheduler crash: runs a longer replay, SIGKILLs the scheduler actor's
   process (its pid is on serve's ready line) once 30 requests completed, and
   measures the recovery time: from the kill to the first SERVING answer of the
   new incarnation (same port, new workers). Reports the replay's exit status
   and its partial summary (sent, completed, unknown).

    python bench/live_faults.py            # writes bench/results/live_faults.json

All traffic stays on 127.0.0.1; every step is bounded, serve is stopped with
SIGINT (then killed by PID), so the run stops by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from grpc_health.v1 import health_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infersched.v1 import common_pb2  # noqa: E402
from tests.faults.live import SERVING, free_port, send_every, stats, wait_health, workers  # noqa: E402

CLI = [sys.executable, "-m", "infersched.cli"]
READY_RE = re.compile(r"ready: .*\(scheduler actor pid (\d+)\)")
STOPPED_RE = re.compile(r"sent ([\d,]+) of [\d,]+ requests, ([\d,]+) completed, ([\d,]+) unknown")


def wait_serving(address: str, timeout_s: float) -> tuple[float, list]:
    """Monotonic time of the first SERVING answer, and the distinct statuses seen up to it."""
    seen = wait_health(address, SERVING, timeout_s)
    return time.monotonic(), seen


def completed(address: str) -> int:
    return stats(address).requests_completed


def every_10ms(address: str, n: int) -> Counter:
    results = send_every(address, n, 0.010, prompt_length=512, max_output_tokens=32)
    return Counter(e.code().name if e is not None else common_pb2.RequestStatus.Name(r.status) if r else "no record"
                   for r, e in results)


def replay(address: str, out: Path, requests: int) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "replay", "--target", address, "--requests", str(requests), "--speedup", "10",
                             "--json", str(out), "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_completed(address: str, at_least: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while completed(address) < at_least:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the replay ended or stalled before {at_least} requests completed")
        time.sleep(0.1)


def outcome(summary: dict) -> dict:
    return {k: summary[k] for k in ("requests", "completed", "rejected", "failed")} | {
        k: summary["live"][k] for k in ("sent", "unknown", "stopped", "failure_reasons")}


def status_names(seen: list) -> list[str]:
    return [health_pb2.HealthCheckResponse.ServingStatus.Name(s) if s is not None else "no answer" for s in seen]


def phase_kills(address: str, work: Path) -> dict:
    """Ten distinct worker processes SIGKILLed during one replay."""
    out = work / "kills.json"
    proc = replay(address, out, 600)
    wait_completed(address, completed(address) + 20, proc)
    ids = [w.worker_id for w in workers(address)]
    killed = []
    for i in np.random.default_rng(13).permutation(len(ids))[:10].tolist():
        os.kill(int(ids[i].split("-")[-2]), signal.SIGKILL)  # <pool>-<instance>-<pid>-<hex>
        killed.append(i)
        time.sleep(0.4)
    proc.communicate(timeout=300)
    summary = json.loads(out.read_text())
    return {"killed_instances": killed, "replay_exit": proc.returncode, **outcome(summary),
            "lost": summary["requests"] - summary["completed"]}


def phase_crash(address: str, work: Path, pid: int, timeout_s: float) -> dict:
    """The scheduler actor's process SIGKILLed during a replay."""
    out = work / "crash.json"
    proc = replay(address, out, 4000)
    wait_completed(address, completed(address) + 30, proc)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back_at, seen = wait_serving(address, timeout_s)
    _, stderr = proc.communicate(timeout=300)
    said = STOPPED_RE.search(stderr)
    return {"recovery_s": round(back_at - killed_at, 2), "health_during": status_names(seen),
            "replay_exit": proc.returncode, "replay_said": said.group(0) if said else stderr[-500:],
            **outcome(json.loads(out.read_text()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start-timeout-s", type=float, default=300.0)
    ap.add_argument("--phases", default="serving,kills,crash",
                    help="which phases to run, in this order (default serving,kills,crash)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live_faults.json")
    args = ap.parse_args()
    phases = args.phases.split(",")
    port = free_port()
    address = f"127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="live-faults-"))
    log_path = work / "serve.log"
    log = open(log_path, "w")
    t_start = time.monotonic()
    serve = subprocess.Popen([*CLI, "serve", "--cluster", "gpu-disagg", "--port", str(port), "--metrics-port", "-1",
                              "--time-scale", "0.01"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    result: dict = {"cluster": "gpu-disagg", "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                         "python": platform.python_version()}}
    try:
        first_serving, seen = wait_serving(address, args.start_timeout_s)
        if "serving" in phases:  # at once: one request every 10 ms from the first SERVING answer
            counts = every_10ms(address, 300)
            result["first_serving"] = {
                "seconds_to_serving": round(first_serving - t_start, 2), "health_before": status_names(seen),
                "sent": 300, "outcomes": dict(counts), "lost": 300 - counts.get("REQUEST_STATUS_COMPLETED", 0)}
            print("first SERVING:", result["first_serving"], flush=True)
        if "kills" in phases:
            result["worker_kills"] = phase_kills(address, work)
            print("ten worker kills:", result["worker_kills"], flush=True)
        if "crash" in phases:
            pid = int(READY_RE.search(log_path.read_text())[1])
            result["scheduler_kill"] = phase_crash(address, work, pid, args.start_timeout_s)
            print("scheduler kill:", result["scheduler_kill"], flush=True)
        result["serve_log"] = [ln for ln in log_path.read_text().splitlines() if ln.startswith("infersched:")]
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(90)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(10)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
