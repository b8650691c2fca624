"""`infersched serve`, `replay` and `stats` as a user runs them: separate processes,
a local Ray cluster that serve starts and shuts down, gRPC on loopback."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.config import builtin_cluster_path
from scheduler.realtime import fifo_permitted
from tests.serve_process import CLI, start_serve, stop_process

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ray_cluster_pids", REPO / "deploy" / "ray_cluster_pids.py")
ray_cluster_pids = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ray_cluster_pids)
START_TIMEOUT_S = 90.0


# serve runs its scheduler under SCHED_FIFO where the host allows it (root, CAP_SYS_NICE).
REALTIME_PRIORITY = 1 if fifo_permitted() else 0


class Served(NamedTuple):
    proc: subprocess.Popen
    address: str
    metrics: str
    lines: list[str]
    decisions: Path  # serve's --decision-log


def cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=[0, 2], ids=["in-process", "2-frontends"])
def serve(request, tmp_path_factory):
    """A running `infersched serve` (port 0: any free port, a decision log), and what it
    printed: once serving clients from the scheduler actor, once from two front-end processes."""
    decisions = tmp_path_factory.mktemp("serve") / "decisions.jsonl"
    served = start_serve(builtin_cluster_path("live-small"), "--metrics-port", "0", "--time-scale", "0.01",
                         "--frontends", str(request.param), "--decision-log", str(decisions),
                         *(["--realtime-priority", str(REALTIME_PRIORITY)] if REALTIME_PRIORITY else []),
                         timeout_s=START_TIMEOUT_S)
    try:
        assert f"decisions logged to {decisions}" in "\n".join(served.lines)
        yield Served(served.proc, served.address, served.metrics, served.lines, decisions)
    finally:
        stop_process(served.proc, signal.SIGKILL)


def test_serve_prints_where_it_listens(serve):
    address, metrics, lines = serve.address, serve.metrics, serve.lines
    assert address.startswith("127.0.0.1:") and metrics.startswith("http://127.0.0.1:")
    assert "cluster live-small, policy slo-aware, 3 workers, time_scale 0.01" in lines[0]
    assert any(ln.startswith("infersched: ready: 3 workers registered, health SERVING (scheduler actor pid ")
               for ln in lines), lines
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)


@pytest.mark.skipif(not REALTIME_PRIORITY, reason="this host does not allow SCHED_FIFO (needs CAP_SYS_NICE)")
def test_realtime_priority_reaches_the_scheduler_actor_threads(serve):
    proc, lines = serve.proc, serve.lines
    assert f"scheduler threads run under SCHED_FIFO, priority {REALTIME_PRIORITY}" in "\n".join(lines)
    below = _descendants(proc.pid)
    actors = [pid for pid, cmdline in below.items() if cmdline.startswith("ray::SchedulerActor")]
    assert len(actors) == 1, below
    frontends = _frontend_pids(lines)
    assert all(below.get(pid, "").find("scheduler.live.relay.frontend") >= 0 for pid in frontends), below
    tids = [int(t) for pid in (actors[0], *frontends) for t in os.listdir(f"/proc/{pid}/task")]
    assert {os.sched_getscheduler(t) for t in tids} == {os.SCHED_FIFO}
    assert {os.sched_getparam(t).sched_priority for t in tids} == {REALTIME_PRIORITY}
    workers = [pid for pid, cmdline in below.items() if cmdline.startswith("ray::WorkerActor")]
    assert workers and all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in workers)


def _frontend_pids(lines: list[str]) -> list[int]:
    """The front-end pids serve printed (none when the scheduler actor serves clients)."""
    line = next((ln for ln in lines if "front-end process" in ln), "")
    return [int(pid) for pid in line.split("pids ")[1].split()] if line else []


def _descendants(root: int) -> dict[int, str]:
    """PID -> command line of every process below `root`."""
    parent, args = ray_cluster_pids.processes()
    out = {}
    for pid in parent:
        up = parent[pid]
        while up > 1 and up != root:
            up = parent.get(up, 0)
        if up == root:
            out[pid] = args.get(pid, "")
    return out


def test_replay_defaults_to_the_builtin_trace_with_a_bar_on_a_terminal(serve):
    address = serve.address
    spec = importlib.util.spec_from_file_location("cli_progress", REPO / "tests" / "cli" / "test_progress.py")
    progress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(progress)
    code, shown = progress.run_on_terminal(["replay", "--target", address, "--requests", "30"], stdout_too=True)
    assert code == 0, shown
    assert "replay: requests ended" in shown and "30/30" in shown and "sent " not in shown
    assert "azure_conv_2023.csv.gz" in shown  # the workload line names the built-in trace


def test_replay_prints_the_simulate_summary(serve, tmp_path):
    address = serve.address
    out = tmp_path / "live.json"
    done = cli("replay", "--target", address, "--trace", str(REPO / "simulator/data/azure_conv_2023.csv.gz"),
               "--requests", "100", "--json", str(out), "--cluster", str(builtin_cluster_path("live-small")))
    assert done.returncode == 0, done.stderr
    assert "requests 100   completed 100   rejected 0   failed 0" in done.stdout
    assert "replayed live against" in done.stdout and "simulated in" not in done.stdout
    assert "runs 100x faster than real" in done.stdout
    live = json.loads(out.read_text())
    sim = cli("simulate", "--trace", str(REPO / "simulator/data/azure_conv_2023.csv.gz"), "--requests", "100",
              "--cluster", str(builtin_cluster_path("live-small")), "--json", "-", "--no-progress")
    assert sim.returncode == 0, sim.stderr
    simulated = json.loads(sim.stdout)
    # The same JSON schema as `infersched simulate --json` (plus the live section).
    assert set(simulated) <= set(live) and set(live) - set(simulated) == {"live"}
    assert set(live["pools"]) == set(simulated["pools"])
    assert live["completed"] == 100 and live["live"]["speedup"] == 100.0
    assert live["input_tokens"] == simulated["input_tokens"]
    # Each row's difficulty travels with it: answers are judged as the simulator judges them.
    assert (live["quality"], live["correct"]) == (simulated["quality"], simulated["correct"])
    assert live["quality"] < 1.0
    assert sum(p["prefill_tokens"] for p in live["pools"].values()) == live["input_tokens"]
    # Inter-token gaps from the streamed chunks add up, per request, to first token -> last
    # token, as the simulator's do: the token-weighted means agree as TPOT's do.
    assert live["itl_s"]["mean"] == pytest.approx(simulated["itl_s"]["mean"], rel=0.25)
    assert live["pools"]["b200"]["chunked_prefill"] and live["pools"]["b200"]["token_budget"] == 8192


def test_serve_logs_every_decision_as_simulate_does(serve):
    """Each request served is a decision in the log (a prefill line, and a decode line when
    it went apart), in the format of `simulate --decision-log`; lines reach the file within
    the flush interval. (Ids are the policy's request numbers: a replay earlier in this
    module named its trace rows, so ids may repeat across clients; decisions are counted
    by their prefill lines.)"""
    address, decisions = serve.address, serve.decisions

    async def send(n: int):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for i in range(n):
                async for _ in stub.Generate(scheduler_pb2.GenerateRequest(prompt_length=300 + i, max_output_tokens=4),
                                             timeout=30):
                    pass
            return await stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)

    stats = asyncio.run(send(5))
    deadline = time.monotonic() + 10.0
    while True:
        lines = [json.loads(line) for line in decisions.read_text().splitlines()]
        prefills = sum(d["stage"] == "prefill" for d in lines)
        if prefills >= stats.decisions_total or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert prefills == stats.decisions_total >= 5
    assert {d["stage"] for d in lines} <= {"prefill", "decode"}
    last = lines[-1] if lines[-1]["stage"] == "prefill" else lines[-2]
    assert list(last) == ["t", "id", "pass", "stage", "candidates", "removed", "scores", "total", "chosen",
                          "colocated", "reason"]
    assert last["chosen"] in last["candidates"] and last["reason"] == "" and last["scores"]


def test_stats_json_and_table(serve):
    address = serve.address
    done = cli("stats", "--target", address, "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["requests"] >= 100 and s["in_flight"] == 0
    assert s["requests"] == s["completed"] + s["rejected"] + s["failed"]
    assert isinstance(s["ttft_s"]["p50"], float) and 0 < s["ttft_s"]["samples"] <= s["completed"]
    assert set(s["pools"]) == {"h100-prefill", "h100-decode", "b200"}
    table = cli("stats", "--target", address, timeout=30)
    assert table.returncode == 0 and "h100-decode" in table.stdout and "TTFT" in table.stdout


def test_metrics_count_the_front_ends(serve, request):
    metrics = serve.metrics
    text = urllib.request.urlopen(metrics, timeout=10).read().decode()
    frontends = request.node.callspec.params["serve"]
    if frontends:
        assert f"infersched_frontends {frontends:.1f}" in text
        assert "infersched_frontend_restarts_total 0.0" in text
    else:
        assert "infersched_frontends" not in text


def test_stats_error_names_the_target():
    done = cli("stats", "--target", "127.0.0.1:1", timeout=30)
    assert done.returncode == 2 and "no infersched scheduler answers at 127.0.0.1:1" in done.stderr


def test_serve_rejects_a_bad_cluster_file_before_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [{name: a, device: tpu-v9, instances: 1, model: llama-3.1-8b, role: both}]\n")
    done = cli("serve", "--cluster", str(bad), "--port", "0", timeout=60)
    assert done.returncode == 2 and "key 'device'" in done.stderr


def test_serve_refuses_a_multi_pass_policy_before_starting_ray():
    """advisor.yaml's policy calls a second model on hard requests; live, only the first
    pass would run, so serve says so instead of serving a different policy."""
    done = cli("serve", "--cluster", str(builtin_cluster_path("advisor")), "--port", "0", timeout=60)
    assert done.returncode == 2
    assert "policy 'advisor' serves a request in more than one pass" in done.stderr
    assert "staging: none" in done.stderr


def test_sigterm_stops_cleanly(serve, request):
    """Last in this module: stopping frees the gRPC and metrics ports and leaves no actor."""
    proc, address, metrics, lines = serve.proc, serve.address, serve.metrics, serve.lines
    frontends = _frontend_pids(lines)
    assert len(frontends) == request.node.callspec.params["serve"]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "infersched: stopped" in out
    for pid in frontends:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=1)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(metrics, timeout=2)
