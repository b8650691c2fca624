"""live-small (H100 prefill + H100 decode + a colocated B200) under operator drains and
a scheduler crash, live: drained workers get no new work and health turns NOT_SERVING
when no path is left; a killed scheduler actor comes back on its port (the recovery
time is asserted loosely here and measured by bench/live_faults.py) while the replay
that was running stops and keeps every outcome it had."""
from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import pytest

from infersched.v1 import common_pb2, scheduler_pb2_grpc
from tests.faults.live import (NOT_SERVING, SERVING, cli, cluster_config, free_port, generate, health,
                               replay_process, send_every, stats, wait_health, workers)

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

START_TIMEOUT_S = 120.0
RECOVERY_LIMIT_S = 90.0  # a loose bound for a shared 2-core host; bench/live_faults.py measures it
COMPLETED = common_pb2.REQUEST_STATUS_COMPLETED


@pytest.fixture
def small(ray_cluster):
    """A fresh live-small scheduler on the session's Ray cluster (round-robin, so every
    instance takes work) that Ray restarts once if its process dies."""
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    config, _ = cluster_config("live-small")
    port = free_port()
    actor, info = start_scheduler(config, policy="round-robin", port=port, max_restarts=1,
                                  options=LiveOptions(time_scale=0.01), start_timeout_s=START_TIMEOUT_S)
    try:
        yield actor, info["address"]
    finally:
        stop_scheduler(actor)


def placements(results) -> set:
    assert all(e is None and r.status == COMPLETED for r, e in results), results
    return {r.prefill_instance for r, _ in results}


def test_drain_and_undrain_from_the_command_line(small):
    _, address = small
    drained = cli("drain", "--target", address, "--worker", "2")
    assert drained.returncode == 0, drained.stderr
    assert re.match(r"instance 2 \(b200, worker b200-2-\S+\): DRAINED\nscheduler serving\n$", drained.stdout)
    assert placements(send_every(address, 6, 0.02, prompt_length=300, max_output_tokens=8)) == {0}
    assert [w.state for w in workers(address)][2] == common_pb2.WORKER_STATE_DRAINED

    # No path left: NOT_SERVING, and a request is held (not failed) until a path is back.
    drained = cli("drain", "--target", address, "--pool", "h100-prefill")
    assert drained.returncode == 0 and drained.stdout.endswith("scheduler NOT serving: no path through the "
                                                               "cluster is ready\n"), drained
    assert health(address) == NOT_SERVING and health(address, "infersched.v1.Scheduler") == NOT_SERVING

    async def held_then_undrained():
        async with grpc.aio.insecure_channel(address) as channel:
            call = asyncio.ensure_future(generate(scheduler_pb2_grpc.SchedulerStub(channel), prompt_length=300,
                                                  max_output_tokens=8))
            await asyncio.sleep(1.0)
            assert not call.done()
            undrained = await asyncio.to_thread(cli, "undrain", "--target", address, "--worker", "2")
            assert undrained.returncode == 0 and undrained.stdout.endswith("scheduler serving\n"), undrained
            return await call

    record, error = asyncio.run(held_then_undrained())
    assert error is None and record.status == COMPLETED and record.prefill_instance == 2
    assert health(address) == SERVING
    assert cli("undrain", "--target", address, "--pool", "h100-prefill").returncode == 0
    assert placements(send_every(address, 6, 0.02, prompt_length=300, max_output_tokens=8)) == {0, 2}

    unknown = cli("drain", "--target", address, "--worker", "no-such-worker")
    assert unknown.returncode == 2 and "NOT_FOUND: no worker with worker_id 'no-such-worker'" in unknown.stderr
    s = stats(address)
    assert s.requests_total == s.requests_completed == 13


def test_a_killed_scheduler_comes_back_and_the_replay_keeps_its_partial_results(small, tmp_path):
    import ray

    actor, address = small
    pid = ray.get(actor.start.remote(), timeout=30)["pid"]
    out = tmp_path / "replay.json"
    replay = replay_process(address, out, "--requests", "4000", "--speedup", "10")
    deadline = time.monotonic() + 60.0
    while stats(address).requests_completed < 30:
        assert time.monotonic() < deadline and replay.poll() is None
        time.sleep(0.1)
    killed_at = time.monotonic()
    ray.kill(actor, no_restart=False)
    _, stderr = replay.communicate(timeout=120)
    # As `serve` does: ask the actor to start until it answers (Ray restarts its process;
    # its own start queued from __init__ does not always run).
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while True:
        try:
            ray.get(actor.start.remote(), timeout=5)
            break
        except Exception:
            assert time.monotonic() < deadline, "the scheduler actor did not start again"
    wait_health(address, SERVING, RECOVERY_LIMIT_S)
    recovery_s = time.monotonic() - killed_at
    assert recovery_s < RECOVERY_LIMIT_S

    assert replay.returncode == 1, stderr
    said = re.search(r"replay stopped after 20 UNAVAILABLE answers in a row from \S+: sent ([\d,]+) of 4,000 "
                     r"requests, ([\d,]+) completed, ([\d,]+) unknown", stderr)
    assert said, stderr
    sent, completed, unknown = (int(g.replace(",", "")) for g in said.groups())
    summary = json.loads(out.read_text())
    assert summary["requests"] == sent < 4000 and summary["completed"] == completed >= 30
    assert summary["live"]["sent"] == sent and summary["live"]["unknown"] == unknown >= 20
    assert summary["completed"] + summary["rejected"] + summary["failed"] == sent
    assert summary["live"]["stopped"] == "20 UNAVAILABLE answers in a row"

    # The new incarnation serves on the same port with new workers, from fresh counters.
    info = ray.get(actor.start.remote(), timeout=30)
    assert info["pid"] != pid and info["address"] == address and len(info["workers"]) == 3
    results = send_every(address, 4, 0.02, prompt_length=300, max_output_tokens=8)
    assert placements(results) == {0, 2}
    assert stats(address).requests_completed == 4
