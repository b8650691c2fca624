"""BatchEngine behaviour on a performance model simple enough to check by hand:
prefill costs 1 ms per prompt token, a decode step costs 10 ms + 1 us per
cached context token, energy is 1 J per second of activity."""
from __future__ import annotations

import math

import pytest

from workers.engine import (DECODE, FINISHED, FIRST_TOKEN, IDLE, JOINED, PREFILL, ROLE_BOTH, ROLE_DECODE,
                            ROLE_PREFILL, BatchEngine)


class HandPerf:
    """Stands in for InstancePerf with round numbers (same method contract)."""

    def __init__(self, kv_capacity_tokens=10_000, step_s=0.010, per_ctx_s=1e-6, idle_w=0.0, price_s=0.0):
        self.kv_capacity_tokens = kv_capacity_tokens
        self.step_s = step_s
        self.per_ctx_s = per_ctx_s
        self.idle_power_w = idle_w
        self.price_usd_per_s = price_s

    def prefill(self, tokens, attn_pairs, seqs):
        t = tokens * 1e-3
        return t, t

    def decode_step_s(self, batch, ctx_sum):
        return self.step_s + self.per_ctx_s * ctx_sum

    def decode(self, batch, ctx_sum0, steps):
        t = steps * self.step_s + self.per_ctx_s * (steps * ctx_sum0 + batch * steps * (steps - 1) / 2)
        return t, t

    def decode_steps_within(self, batch, ctx_sum0, time_s):
        k = 0
        while self.decode(batch, ctx_sum0, k + 1)[0] <= time_s:
            k += 1
        return k


def run_until_idle(engine, now=0.0, limit=10_000):
    log = []
    for _ in range(limit):
        if engine.next_wake_s == math.inf:
            return log, now
        now = engine.next_wake_s
        events = []
        engine.wake(now, events)
        log += [(now, e[0], e[1]) for e in events]
    raise AssertionError("engine did not go idle")


def test_single_request_colocated_timing():
    perf = HandPerf(per_ctx_s=0.0)
    eng = BatchEngine(perf, ROLE_BOTH)
    eng.submit_prefill(7, input_tokens=100, output_tokens=5)
    assert eng.poke(0.0, [])
    assert eng.activity == PREFILL and eng.next_wake_s == pytest.approx(0.1)
    log, end = run_until_idle(eng)
    # First token at the end of prefill (100 ms), then 4 decode steps of 10 ms.
    assert log == [(pytest.approx(0.1), FIRST_TOKEN, 7), (pytest.approx(0.14), FINISHED, 7)]
    assert eng.activity == IDLE and eng.kv_reserved == 0
    assert eng.decode_tokens == 4 and eng.prefill_tokens == 100


def test_decode_segment_is_one_event_for_many_tokens():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH)
    eng.submit_prefill(1, 10, 1001)
    eng.poke(0.0, [])
    log, end = run_until_idle(eng)
    assert eng.decode_segments == 1  # 1000 tokens in one closed-form step
    assert end == pytest.approx(0.01 + 1000 * 0.010)


def test_context_growth_is_charged_per_step():
    # Batch of one, context 11 at the first decode step, growing by one per step.
    eng = BatchEngine(HandPerf(per_ctx_s=1e-3), ROLE_BOTH)
    eng.submit_prefill(1, 10, 4)
    eng.poke(0.0, [])
    log, end = run_until_idle(eng)
    steps = [0.010 + 1e-3 * ctx for ctx in (11, 12, 13)]
    assert end == pytest.approx(0.010 + sum(steps))


def test_prefill_stalls_decode_and_new_arrival_joins_at_step_boundary():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH)
    eng.submit_prefill(1, 100, 101)  # prefill 0.0-0.1, then 100 decode steps
    eng.poke(0.0, [])
    run = []
    now = eng.next_wake_s
    eng.wake(now, run)
    assert eng.activity == DECODE and eng.next_wake_s == pytest.approx(0.1 + 1.0)
    # Arrival mid-step at t=0.125: the segment is cut at the end of step 3 (t=0.13).
    eng.submit_prefill(2, 50, 2)
    assert eng.poke(0.125, [])
    assert eng.next_wake_s == pytest.approx(0.13)
    log, end = run_until_idle(eng)
    first_token_2 = [t for t, kind, rid in log if kind == FIRST_TOKEN and rid == 2][0]
    assert first_token_2 == pytest.approx(0.13 + 0.05)
    # Request 1 lost 50 ms to request 2's prefill: 0.1 + 100 steps + 0.05 stall.
    finish_1 = [t for t, kind, rid in log if kind == FINISHED and rid == 1][0]
    assert finish_1 == pytest.approx(0.1 + 1.0 + 0.05)


def test_memory_full_requests_wait_not_dropped():
    eng = BatchEngine(HandPerf(kv_capacity_tokens=300, per_ctx_s=0.0), ROLE_BOTH)
    for rid in range(3):  # each needs 150 tokens of KV: only two fit at once
        eng.submit_prefill(rid, 100, 50)
    eng.poke(0.0, [])
    assert eng.prefill_batch and len(eng.prefill_batch) == 2
    log, end = run_until_idle(eng)
    finished = sorted(rid for t, kind, rid in log if kind == FINISHED)
    assert finished == [0, 1, 2]
    first_2 = [t for t, kind, rid in log if kind == FIRST_TOKEN and rid == 2][0]
    finish_0 = [t for t, kind, rid in log if kind == FINISHED and rid == 0][0]
    assert first_2 > finish_0  # request 2 waited for memory to free
    assert eng.kv_reserved == 0


@pytest.mark.parametrize("max_batch_tokens, expected_first_batch", [(1000, 3), (250, 2), (50, 1)])
def test_prefill_token_budget(max_batch_tokens, expected_first_batch):
    eng = BatchEngine(HandPerf(), ROLE_BOTH, max_batch_tokens=max_batch_tokens)
    for rid in range(3):
        eng.submit_prefill(rid, 100, 2)
    eng.poke(0.0, [])
    assert len(eng.prefill_batch) == expected_first_batch


def test_max_batch_limits_decode_slots():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH, max_batch=2)
    for rid in range(3):
        eng.submit_prefill(rid, 10, 11)
    eng.poke(0.0, [])
    assert len(eng.prefill_batch) == 2
    log, _ = run_until_idle(eng)
    assert sorted(rid for _, kind, rid in log if kind == FINISHED) == [0, 1, 2]


def test_prefill_only_holds_kv_until_released_and_decode_joins():
    pre = BatchEngine(HandPerf(kv_capacity_tokens=150), ROLE_PREFILL)
    dec = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_DECODE)
    pre.submit_prefill(1, 100, 3)
    pre.submit_prefill(2, 100, 3)  # does not fit until 1's KV is released
    pre.poke(0.0, [])
    assert [r for r, *_ in pre.prefill_batch] == [1]
    events = []
    pre.wake(pre.next_wake_s, events)
    assert events[0][:2] == (FIRST_TOKEN, 1) and pre.activity == IDLE and pre.kv_reserved == 100
    dec.submit_decode(1, 100, 3)
    joined = []
    dec.poke(0.2, joined)
    assert joined[0][:2] == (JOINED, 1)
    pre.release(1)
    assert pre.poke(0.2, []) and [r for r, *_ in pre.prefill_batch] == [2]
    log, end = run_until_idle(dec, 0.2)
    assert log == [(pytest.approx(0.22), FINISHED, 1)]  # two decode steps after the hand-over


def test_energy_and_cost_shares_add_up():
    perf = HandPerf(per_ctx_s=0.0, idle_w=100.0, price_s=1.0)
    eng = BatchEngine(perf, ROLE_BOTH)
    eng.submit_prefill(1, 100, 11)
    eng.submit_prefill(2, 300, 21)
    eng.poke(0.0, [])
    log = []
    shares = {}
    now = 0.0
    while eng.next_wake_s != math.inf:
        now = eng.next_wake_s
        events = []
        eng.wake(now, events)
        for kind, rid, t, e, c, start in events:
            se, sc = shares.get(rid, (0.0, 0.0))
            shares[rid] = (se + e, sc + c)
    total_energy = eng.dynamic_energy_j + perf.idle_power_w * eng.busy_s
    assert sum(e for e, _ in shares.values()) == pytest.approx(total_energy)
    assert sum(c for _, c in shares.values()) == pytest.approx(eng.busy_s * 1.0)
    # Prefill energy splits by prompt tokens: 1:3.
    assert eng.busy_s == pytest.approx(now)


def test_cancelled_member_frees_slot_and_kv_and_segment_is_recomputed():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH)
    eng.submit_prefill(1, 100, 101)
    eng.submit_prefill(2, 100, 11)
    eng.poke(0.0, [])
    eng.wake(eng.next_wake_s, [])  # both prefilled together; decode runs until 2 finishes
    now = eng.act_start_s
    assert eng.batch == 2 and eng.act_steps == 10
    eng.remove_member(2)
    eng.restart_activity(now, [])
    assert eng.batch == 1 and eng.kv_reserved == 201
    assert eng.act_steps == 100  # the segment now runs to request 1's finish
    log, _ = run_until_idle(eng, now)
    assert [rid for _, kind, rid in log if kind == FINISHED] == [1]


def test_cancel_waiting_and_joining_requests():
    eng = BatchEngine(HandPerf(), ROLE_DECODE)
    eng.submit_decode(5, 100, 10)
    assert eng.remove_joining(5) and not eng.remove_joining(5)
    both = BatchEngine(HandPerf(), ROLE_BOTH)
    both.submit_prefill(6, 300, 2)
    assert both.waiting_tokens == 300
    assert both.remove_waiting(6) and both.waiting_tokens == 0 and not both.remove_waiting(6)


def test_row_is_the_snapshot_row_busy_until_a_prefill_ends():
    """(queued, queued tokens, running, free KV, busy until): a prefill iteration keeps a
    new prompt out until it ends; a decoding or idle instance takes one now."""
    eng = BatchEngine(HandPerf(), ROLE_BOTH, max_batch_tokens=1000)
    assert eng.row(3.0) == (0, 0, 0, 10_000, 3.0)
    for rid, inp in ((1, 800), (2, 500)):
        eng.submit_prefill(rid, inp, 5)
    eng.poke(0.0, [])  # 800 tokens prefill now; 500 wait for the next iteration
    assert eng.row(0.1) == (1, 500, 0, 10_000 - 805, pytest.approx(0.8))
    eng.wake(eng.next_wake_s, [])  # the second prompt's prefill
    eng.wake(eng.next_wake_s, [])  # both decode
    assert eng.activity == DECODE and eng.row(1.5) == (0, 0, 2, 10_000 - 1310, 1.5)
