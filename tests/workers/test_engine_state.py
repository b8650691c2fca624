"""An engine restored from `engine_state` and advanced in time reports the same rows and
wakes as the engine it copies: what the scheduler's mirrors rely on."""
from __future__ import annotations

import math

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from workers.engine import MIXED, ROLE_BOTH, BatchEngine
from workers.engine_state import engine_state, restore_engine


@pytest.mark.parametrize("token_budget", [0, 1024])  # prefill-first; chunked, mid-prompt when copied
def test_a_restored_engine_tracks_the_original(token_budget):
    perf = next(p for p in Cluster(load_cluster(builtin_cluster_path("live-small"))).pools if p.name == "b200").perf
    eng = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    for i, (inp, out) in enumerate([(900, 300), (2000, 40), (300, 700)]):
        eng.submit_prefill(i, inp, out)
    eng.poke(0.0, [])
    for _ in range(3):
        eng.wake(eng.next_wake_s, [])
    if token_budget:
        assert eng.prefilling and eng.activity == MIXED  # copied while a prompt is half computed
    replica = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    restore_engine(replica, engine_state(eng))
    t = eng.next_wake_s - 1e-4
    for e in (eng, replica):
        e.submit_prefill(-1, 500, 20)
        e.poke(t, [])
    for _ in range(8):
        assert replica.next_wake_s == eng.next_wake_s and replica.row(t) == eng.row(t)
        if eng.next_wake_s == math.inf:
            break
        a, b = [], []
        eng.wake(eng.next_wake_s, a)
        replica.wake(replica.next_wake_s, b)
        assert a == b
