"""Readiness and operator drain in the scheduler core, in process on a virtual clock with
real emulated workers: the core serves only while a path through the cluster is READY,
holds requests (never fails them) until one is, and an operator's drain keeps an
instance out of the candidate sets until undrain, across re-registration."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster, parse_cluster
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient, _address
from scheduler.live.readiness import ServingPaths
from scheduler.live.types import GenerateInput, LiveOptions
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from workers.clock import VirtualClock
from workers.report import WorkerState

OPTIONS = LiveOptions(time_scale=1.0, max_queue=1 << 10, chunk_tokens=64, max_hold_s=50.0)
TWO_B200_RR = {"name": "two-b200", "policy": "round-robin",
               "pools": [{"name": "b200", "device": "b200", "instances": 2, "chips_per_instance": 1,
                          "model": "llama-3.1-8b", "role": "both"}]}


class Sink:
    def __init__(self):
        self.outcome = None
        self.count = 0

    def tokens(self, event):
        self.count += event.token_count

    def finish(self, outcome):
        assert self.outcome is None, "two outcomes"
        self.outcome = outcome


def unregistered(config, options: LiveOptions = OPTIONS):
    """A core whose workers have not registered yet (all STARTING), and a log of on_serving."""
    config = load_cluster(builtin_cluster_path(config)) if isinstance(config, str) else parse_cluster(config)
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=1.0)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options, clock, client)
    heard: list[bool] = []
    core.on_serving = heard.append
    return core, client, clock, heard


def register(core, client, *instances: int) -> None:
    for i in instances:
        core.register(i, client.workers[i].worker_id, _address(i))


@pytest.mark.parametrize("config, ready, serving", [
    ("gpu-disagg", [], False),
    ("gpu-disagg", [0, 3], False),  # prefill instances only
    ("gpu-disagg", [12], False),  # a decode instance only
    ("gpu-disagg", [3, 12], True),
    ("live-small", [0], False),  # h100 prefill
    ("live-small", [2], True),  # the colocated b200
    ("live-small", [0, 1], True),
], ids=lambda v: str(v))
def test_serving_needs_one_complete_path(config, ready, serving):
    cluster = Cluster(load_cluster(builtin_cluster_path(config)))
    mask = np.zeros(cluster.n_instances, dtype=bool)
    mask[ready] = True
    assert ServingPaths(cluster).can_serve(mask) is serving


def test_starting_instances_are_no_candidates_and_early_requests_are_held_until_ready():
    core, client, clock, heard = unregistered("gpu-disagg")
    assert not core.serving and all(len(c) == 0 for c in core.snap.candidates.values())
    sinks = [Sink() for _ in range(5)]
    for i, sink in enumerate(sinks):
        core.submit(GenerateInput(f"early-{i}", 400, 30), sink)
    register(core, client, 0)  # a prefill instance: still no path
    clock.run_until(10.0)
    assert not core.serving and all(s.outcome is None for s in sinks)
    register(core, client, 10)  # a decode instance: a path
    clock.run()
    assert heard == [True]
    assert [s.outcome.status for s in sinks] == [RequestStatus.COMPLETED] * 5
    assert {(s.outcome.prefill_instance, s.outcome.decode_instance) for s in sinks} == {(0, 10)}
    assert all(s.outcome.retries == 0 and s.count == 30 for s in sinks)


def test_a_request_held_past_max_hold_fails_naming_why():
    core, _, clock, _ = unregistered(TWO_B200_RR, replace(OPTIONS, max_hold_s=5.0))
    sink = Sink()
    core.submit(GenerateInput("early", 400, 30), sink)
    clock.run()
    assert sink.outcome.status == RequestStatus.FAILED
    assert sink.outcome.reason.startswith("no instance could serve it within 5 s")
    assert sink.outcome.finish_s == pytest.approx(5.0)
    assert core.stats().in_flight == 0


def test_held_requests_count_against_the_queue_bound_and_a_cancel_frees_them():
    from scheduler.live.types import Overloaded

    core, client, clock, _ = unregistered(TWO_B200_RR, replace(OPTIONS, max_queue=2))
    a, b = Sink(), Sink()
    key = core.submit(GenerateInput("a", 400, 30), a)
    core.submit(GenerateInput("b", 400, 30), b)
    with pytest.raises(Overloaded):
        core.submit(GenerateInput("c", 400, 30), Sink())
    core.cancel(key)
    register(core, client, 0, 1)
    clock.run()
    assert a.outcome is None and b.outcome.status == RequestStatus.COMPLETED
    s = core.stats()
    assert (s.requests_completed, s.requests_failed, s.requests_rejected, s.in_flight) == (1, 1, 1, 0)


def test_drain_all_stops_serving_and_undrain_releases_the_held_requests():
    core, client, clock, heard = unregistered(TWO_B200_RR)
    register(core, client, 0, 1)
    for i in (0, 1):
        core.set_drained(i, True)
    assert heard == [True, False] and not core.serving
    assert [s.state for s in core.slots] == [WorkerState.DRAINED] * 2
    sink = Sink()
    core.submit(GenerateInput("during", 400, 30), sink)
    clock.run_until(20.0)
    assert sink.outcome is None
    core.set_drained(1, False)
    clock.run()
    assert heard == [True, False, True]
    assert sink.outcome.status == RequestStatus.COMPLETED and sink.outcome.prefill_instance == 1


def test_a_drained_instance_finishes_its_work_gets_none_new_and_stays_drained_across_a_restart():
    core, client, clock, _ = unregistered(TWO_B200_RR)
    register(core, client, 0, 1)
    busy = Sink()
    core.submit(GenerateInput("busy", 400, 2000), busy)  # round-robin: instance 0
    clock.run_until(1.0)
    core.set_drained(0, True)
    assert core.slots[0].state == WorkerState.DRAINING and core.serving
    later = [Sink() for _ in range(4)]
    for i, sink in enumerate(later):
        core.submit(GenerateInput(f"later-{i}", 300, 10), sink)
    clock.run()
    assert busy.outcome.status == RequestStatus.COMPLETED and busy.outcome.prefill_instance == 0
    assert core.slots[0].state == WorkerState.DRAINED
    assert {s.outcome.prefill_instance for s in later} == {1}
    core.register(0, "b200-0-restarted", _address(0))  # a new incarnation of the drained instance
    assert core.slots[0].state == WorkerState.DRAINED
    core.set_drained(0, False)
    assert core.slots[0].state == WorkerState.READY
    again = [Sink() for _ in range(2)]
    for i, sink in enumerate(again):
        core.submit(GenerateInput(f"again-{i}", 300, 10), sink)
    clock.run()
    assert {s.outcome.prefill_instance for s in again} == {0, 1}


def test_stages_lost_with_their_workers_move_without_spending_the_retry_budget():
    """Three worker deaths under one request with max_retries=1: it moves each time and
    completes; past max_hold_s a death counts against the budget again."""
    from scheduler.live.types import ErrorKind, WorkError

    core, client, clock, _ = unregistered(TWO_B200_RR, replace(OPTIONS, max_retries=1, max_hold_s=50.0))
    register(core, client, 0, 1)
    sink = Sink()
    key = core.submit(GenerateInput("survivor", 400, 3000), sink)
    died = WorkError(ErrorKind.WORKER, "UNAVAILABLE", "Stream removed")
    for t in (2.0, 4.0, 6.0):
        clock.run_until(t)
        at = core._active[key].at
        core.on_lost(at, died)
        core.mark_ready(at)  # back at once (a false alarm, or Ray restarted it at once)
    clock.run()
    o = sink.outcome
    assert o.status == RequestStatus.COMPLETED and o.retries == 3 and sink.count == 3000

    core, client, clock, _ = unregistered(TWO_B200_RR, replace(OPTIONS, max_retries=1, max_hold_s=1.0))
    register(core, client, 0, 1)
    late = Sink()
    key = core.submit(GenerateInput("late", 400, 3000), late)
    for t in (2.0, 3.0):
        clock.run_until(t)
        at = core._active[key].at
        core.on_lost(at, died)
        core.mark_ready(at)
    clock.run()
    assert late.outcome.status == RequestStatus.FAILED and late.outcome.reason.endswith("(after 1 retries)")
