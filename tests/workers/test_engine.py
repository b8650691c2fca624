"""BatchEngine behaviour on a performance model simple enough to check by hand:
prefill costs 1 ms per prompt token, a decode step costs 10 ms + 1 us per
cached context token, a mixed (chunked-prefill) iteration the sum of its
chunk's prefill and its decode step, energy is 1 J per second of activity."""
from __future__ import annotations

import math

import pytest

from workers.engine import (DECODE, FINISHED, FIRST_TOKEN, IDLE, JOINED, MIXED, PREFILL, ROLE_BOTH, ROLE_DECODE,
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

    def mixed(self, batch, ctx_sum0, tokens, pairs, prefix_tokens, seqs, steps=1):
        t = steps * tokens * 1e-3 + (self.decode(batch, ctx_sum0, steps)[0] if batch else 0.0)
        return t, t

    def mixed_steps_within(self, batch, ctx_sum0, tokens, pairs, prefix_tokens, time_s):
        k = 0
        while self.mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, 1, k + 1)[0] <= time_s:
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


# ---- chunked prefill ---------------------------------------------------------------------------

def chunked_run(budget=101, prompt=1000, out1=201, poke_at=None):
    """Request 1 (10 tokens, `out1` out) decodes; request 2 (`prompt` tokens) arrives at 15 ms;
    with `poke_at`, request 3 (50 tokens) then. Returns the engine, its events and its wakes."""
    eng = BatchEngine(HandPerf(kv_capacity_tokens=1_000_000, per_ctx_s=0.0), ROLE_BOTH, token_budget=budget)
    eng.submit_prefill(1, 10, out1)
    eng.poke(0.0, [])
    log = []
    arrivals = [(0.015, 2, prompt)] + ([(poke_at, 3, 50)] if poke_at is not None else [])
    wakes = 0
    while eng.next_wake_s != math.inf:
        if arrivals and arrivals[0][0] < eng.next_wake_s:
            t, rid, inp = arrivals.pop(0)
            eng.submit_prefill(rid, inp, 2)
            eng.poke(t, [])
            continue
        now = eng.next_wake_s
        events = []
        eng.wake(now, events)
        wakes += 1
        log += [(now, e[0], e[1]) for e in events]
    return eng, log, wakes


def times(log, kind, rid):
    return [t for t, k, r in log if k == kind and r == rid]


def test_chunked_decode_advances_every_iteration_beside_a_long_prompt():
    eng, log, _ = chunked_run()
    # Request 1: first token at 10 ms, one decode step to 20 ms (request 2 arrived at 15 ms
    # and waits for the step's end). Then 10 iterations of 100 prompt tokens beside the
    # batch of one (budget 101), 110 ms each: request 2's first token at 1.12 s.
    assert times(log, FIRST_TOKEN, 2) == [pytest.approx(0.02 + 10 * 0.11)]
    # Request 1 made a token in each of those iterations: 1 + 1 + 10 by 1.12 s, then 189 steps.
    assert times(log, FINISHED, 1) == [pytest.approx(1.12 + 189 * 0.010)]
    assert eng.decode_tokens == 200 + 1 and eng.prefill_tokens == 1010
    assert eng.kv_reserved == 0 and not eng.prefilling


def test_prefill_first_stalls_the_same_batch_for_the_whole_prompt():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH)
    eng.submit_prefill(1, 10, 201)
    eng.poke(0.0, [])
    eng.wake(0.01, [])
    eng.submit_prefill(2, 1000, 2)
    eng.poke(0.015, [])
    log, _ = run_until_idle(eng)
    assert times(log, FIRST_TOKEN, 2) == [pytest.approx(0.02 + 1.0)]
    assert times(log, FINISHED, 1) == [pytest.approx(1.02 + 199 * 0.010)]  # 1 s without a token


@pytest.mark.parametrize("prompt", [1000, 10_000, 100_000])
def test_full_chunks_of_one_prompt_run_as_one_segment(prompt):
    # Wakes: request 1's prefill, its first decode step, the run of full chunks, the
    # iteration that finishes the prompt, request 2's decode step, request 1's tail.
    eng, log, wakes = chunked_run(prompt=prompt, out1=prompt // 100 + 100)
    assert wakes == 6
    assert times(log, FIRST_TOKEN, 2) == [pytest.approx(0.02 + prompt / 100 * 0.11)]


def test_a_member_finishing_ends_the_run_of_chunks():
    # Request 1 finishes 5 iterations into the prompt; the budget then gives the prompt 101 a step.
    eng, log, _ = chunked_run(prompt=1000, out1=7)
    assert times(log, FINISHED, 1) == [pytest.approx(0.02 + 5 * 0.11)]
    assert times(log, FIRST_TOKEN, 2) == [pytest.approx(0.02 + 5 * 0.11 + 500 * 1e-3)]


def test_poke_during_a_run_of_chunks_changes_no_timing():
    # Request 3 arrives mid-run: it waits behind the long prompt, and the run cut at the next
    # iteration end resumes with the same shape.
    plain = chunked_run()[1]
    eng, log, wakes = chunked_run(poke_at=0.5)
    assert times(log, FIRST_TOKEN, 2) == pytest.approx(times(plain, FIRST_TOKEN, 2))
    # Request 3's 50 tokens go beside the batch of two (1 and 2) right after: 50 + 10 ms.
    assert times(log, FIRST_TOKEN, 3) == [pytest.approx(1.12 + 0.06)]
    assert times(log, FINISHED, 1) == [pytest.approx(times(plain, FINISHED, 1)[0] + 0.05)]


def test_decode_batch_filling_the_budget_holds_prompts_until_a_finish():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH, token_budget=3)
    for rid in range(3):
        eng.submit_prefill(rid, 1, 5 + rid)
    eng.poke(0.0, [])
    eng.wake(eng.next_wake_s, [])  # one iteration of three 1-token prompts: three members
    assert eng.batch == 3
    eng.submit_prefill(9, 10, 2)
    eng.poke(eng.act_start_s, [])
    assert eng.activity == DECODE and eng.waiting  # no budget left for the prompt
    log, _ = run_until_idle(eng, eng.act_start_s)
    assert times(log, FIRST_TOKEN, 9)[0] >= times(log, FINISHED, 0)[0]
    assert sorted(rid for _, kind, rid in log if kind == FINISHED) == [0, 1, 2, 9]


def test_chunked_energy_and_cost_shares_add_up():
    perf = HandPerf(per_ctx_s=1e-6, idle_w=100.0, price_s=1.0)
    eng = BatchEngine(perf, ROLE_BOTH, token_budget=64)
    for rid, (inp, out) in enumerate([(10, 40), (300, 5), (90, 30), (1, 1), (200, 2)]):
        eng.submit_prefill(rid, inp, out)
    eng.poke(0.0, [])
    shares = {}
    while eng.next_wake_s != math.inf:
        events = []
        eng.wake(eng.next_wake_s, events)
        for kind, rid, t, e, c, start in events:
            se, sc = shares.get(rid, (0.0, 0.0))
            shares[rid] = (se + e, sc + c)
    assert sum(e for e, _ in shares.values()) == pytest.approx(eng.dynamic_energy_j + 100.0 * eng.busy_s)
    assert sum(c for _, c in shares.values()) == pytest.approx(eng.busy_s)
    assert eng.prefill_tokens == 601 and eng.decode_tokens == 39 + 4 + 29 + 1


def test_prefill_only_instance_chunks_a_prompt_and_holds_its_kv():
    eng = BatchEngine(HandPerf(), ROLE_PREFILL, token_budget=100)
    eng.submit_prefill(1, 250, 3)
    eng.submit_prefill(2, 30, 3)
    eng.poke(0.0, [])
    log, end = run_until_idle(eng)
    # Two full chunks as one run (0.2 s), then 50 tokens of 1 and all 30 of 2 together.
    assert eng.prefill_iterations == 3
    assert times(log, FIRST_TOKEN, 1) == times(log, FIRST_TOKEN, 2) == [pytest.approx(0.28)]
    assert eng.held == {1: 250, 2: 30} and eng.batch == 0


def test_cancelled_member_during_a_mixed_iteration_gives_the_prompt_its_slot_of_budget():
    eng = BatchEngine(HandPerf(per_ctx_s=0.0), ROLE_BOTH, token_budget=52)
    eng.submit_prefill(1, 1, 100)
    eng.submit_prefill(2, 1, 100)
    eng.poke(0.0, [])
    eng.wake(eng.next_wake_s, [])  # both prompts in one iteration: two members
    eng.submit_prefill(3, 500, 2)
    eng.restart_activity(eng.act_start_s, [])  # the decode segment becomes chunks of 50
    assert eng.activity == MIXED and eng.prefill_tokens_now == 50
    eng.remove_member(2)
    eng.restart_activity(eng.act_start_s, [])
    assert eng.prefill_tokens_now == 51 and eng.batch == 1
    log, _ = run_until_idle(eng, eng.act_start_s)
    assert times(log, FINISHED, 3) and eng.kv_reserved == 0


def test_token_budget_must_not_be_negative():
    with pytest.raises(ValueError, match="token_budget"):
        BatchEngine(HandPerf(), ROLE_BOTH, token_budget=-1)


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
    # Chunked: a prompt's chunks beside the decode batch keep a new prompt out until the iteration ends.
    chunked = BatchEngine(HandPerf(), ROLE_BOTH, token_budget=101)
    chunked.submit_prefill(1, 10, 500)
    chunked.poke(0.0, [])
    chunked.wake(chunked.next_wake_s, [])  # decoding
    chunked.submit_prefill(2, 1000, 2)
    chunked.poke(chunked.act_start_s + 0.001, [])
    chunked.wake(chunked.next_wake_s, [])  # the decode step ends; prompt chunks join the next ones
    assert chunked.activity == MIXED and chunked.row(chunked.act_start_s)[4] == chunked.next_wake_s
