"""gpu-disagg (10 prefill + 6 decode instances, one Ray actor each) under faults, live:
from the first SERVING health answer no request is lost, and ten worker kills during
one replay lose none. A real local Ray cluster, real gRPC on loopback."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import numpy as np
import pytest

from infersched.v1 import common_pb2
from tests.faults.live import (NOT_SERVING, SERVING, cluster_config, free_port, replay_process,
                               send_every, stats, wait_health, workers)

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

START_TIMEOUT_S = 240.0  # sixteen worker actors on a small, shared host


@pytest.fixture(scope="module")
def disagg(ray_cluster):
    """gpu-disagg's scheduler on the session's Ray cluster, started without waiting: it
    binds its port at once and says NOT_SERVING while its sixteen workers start."""
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    config, _ = cluster_config("gpu-disagg")
    port = free_port()
    actor, _ = start_scheduler(config, port=port, options=LiveOptions(time_scale=0.01), wait=False,
                               start_timeout_s=START_TIMEOUT_S)
    try:
        yield actor, f"127.0.0.1:{port}"
    finally:
        stop_scheduler(actor)


def test_no_request_is_lost_from_the_first_serving_answer(disagg):
    """One request every 10 ms, 300 of them, from the first SERVING answer: all complete."""
    _, address = disagg
    seen = wait_health(address, SERVING, START_TIMEOUT_S)
    results = send_every(address, 300, 0.010, prompt_length=512, max_output_tokens=32)
    assert NOT_SERVING in seen, f"health went {seen}: SERVING before the workers were ready"
    errors = Counter(f"{e.code().name}: {e.details()}" for _, e in results if e is not None)
    assert not errors, errors
    outcomes = Counter((common_pb2.RequestStatus.Name(r.status), r.reason) for r, _ in results)
    assert outcomes == {("REQUEST_STATUS_COMPLETED", ""): 300}
    s = stats(address)
    assert (s.requests_total, s.requests_completed, s.in_flight) == (300, 300, 0)
    assert wait_health(address, SERVING, 5.0, "infersched.v1.Scheduler") == [SERVING]


def test_ten_worker_kills_during_one_replay_lose_nothing(disagg, tmp_path):
    """Ten worker actors killed (Ray restarts them) while a replay runs: every request
    completes, moved to other instances by the scheduler's retries."""
    import ray

    actor, address = disagg
    wait_health(address, SERVING, START_TIMEOUT_S)
    before = {w.instance: w.worker_id for w in workers(address)}
    completed0 = stats(address).requests_completed
    out = tmp_path / "replay.json"
    replay = replay_process(address, out, "--requests", "600", "--speedup", "10")
    killed = []

    def kill_ten():
        handles = ray.get(actor.worker_handles.remote())
        rng = np.random.default_rng(13)
        deadline = time.monotonic() + 60.0
        while stats(address).requests_completed < completed0 + 20:  # the replay is under way
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for instance in rng.permutation(len(handles))[:10].tolist():
            ray.kill(handles[instance], no_restart=False)
            killed.append(instance)
            time.sleep(0.4)

    killer = threading.Thread(target=kill_ten)
    killer.start()
    try:
        _, stderr = replay.communicate(timeout=300)
    finally:
        killer.join(120)
    assert replay.returncode == 0, stderr
    assert len(killed) == 10
    summary = json.loads(out.read_text())
    assert (summary["requests"], summary["completed"], summary["rejected"], summary["failed"]) == (600, 600, 0, 0)
    assert summary["live"]["unknown"] == 0 and summary["live"]["stopped"] is None
    s = stats(address)
    assert s.in_flight == 0 and s.requests_completed - completed0 == 600
    # Every killed instance came back as a new incarnation and is READY again.
    deadline = time.monotonic() + 120.0
    while True:
        now = {w.instance: w for w in workers(address)}
        back = [i for i in killed if now[i].worker_id != before[i] and now[i].state == common_pb2.WORKER_STATE_READY]
        if len(back) == len(killed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(back) == sorted(killed)
