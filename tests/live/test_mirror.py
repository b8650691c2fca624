"""The core's mirrors of workers' engines: restored from a worker's state, with the
dispatches its report does not include replayed at their send times, a mirror writes
the row the worker's own engine has; an older report never takes it back; a state it
cannot take leaves the reported row plus the pending dispatches."""
from __future__ import annotations

import dataclasses

import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.mirror import Mirrors
from workers.clock import VirtualClock
from workers.emulated import EmulatedWorker
from workers.engine import ROLE_BOTH

ONE_B200 = {"name": "one-b200", "policy": "least-loaded",
            "pools": [{"name": "b200", "device": "b200", "instances": 1, "chips_per_instance": 1,
                       "model": "llama-3.1-8b", "role": "both"}]}


class Quiet:
    def prefilled(self, *_): pass
    def tokens(self, *_): pass
    def decoded(self, *_): pass
    def failed(self, *_): pass


@pytest.fixture
def setup():
    cluster = Cluster(parse_cluster(ONE_B200))
    snap = cluster.snapshot()
    clock = VirtualClock()
    worker = EmulatedWorker(cluster.pools[0].perf, ROLE_BOTH, clock, input_slack_s=0.0)
    return Mirrors(cluster, snap), snap, worker, clock


def row(snap):
    return (snap.queued_requests[0], snap.queued_tokens[0], snap.running[0], snap.kv_free[0], snap.busy_until_s[0])


def test_a_restored_mirror_with_a_pending_dispatch_writes_the_workers_row(setup):
    mirrors, snap, w, clock = setup
    mirrors.dispatched(0, 3000, 500, 0.0)
    w.prefill("a", 3000, 500, Quiet(), sent_s=0.0, decode=True)
    report, state = w.load(), w.engine_state()  # taken with a, on its way while b is dispatched
    clock.run_until(0.2)
    mirrors.dispatched(0, 800, 40, 0.2)
    w.prefill("b", 800, 40, Quiet(), sent_s=0.2, decode=True)
    mirrors.report(0, report, state, offset=0.0)  # includes a: b is replayed at 0.2
    clock.run_until(0.5)  # both decoding now, on the worker and in the mirror
    mirrors.refresh(0.5)
    assert row(snap) == tuple(map(float, w.engine.row(w.load().engine_s)))


def test_an_older_report_is_ignored(setup):
    mirrors, snap, w, clock = setup
    w.prefill("a", 3000, 500, Quiet(), decode=True)
    clock.run_until(1.0)
    new = w.load()
    old = dataclasses.replace(new, now_s=0.5, received=0)
    assert mirrors.report(0, new, w.engine_state(), 0.0)
    before = row(snap)
    assert not mirrors.report(0, old, None, 0.0)
    assert row(snap) == before


def test_without_a_state_the_row_is_the_report_plus_pending_dispatches(setup):
    mirrors, snap, w, clock = setup
    w.prefill("a", 3000, 500, Quiet(), decode=True)
    clock.run_until(1.0)
    report = w.load()
    mirrors.report(0, report, b"not msgpack", offset=0.0)  # a state this mirror cannot take
    mirrors.dispatched(0, 700, 10, 1.0)
    mirrors.refresh(1.0)
    assert row(snap)[:4] == (report.queued + 1, report.queued_tokens + 700, report.running, report.kv_free)
