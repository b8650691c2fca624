"""Inter-token latency: the histogram against numpy on raw samples, and an engine's closed-form
accounting against every token's time from the same engine driven one iteration at a time."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workers.devices import get_device
from workers.engine import DECODE, FIRST_TOKEN, ROLE_BOTH, ROLE_DECODE, BatchEngine
from workers.itl import ItlHistogram
from workers.models import get_model
from workers.perf import InstancePerf

BOUND = 0.005  # relative error of a percentile read from the histogram (workers/itl.py)


@pytest.mark.parametrize(("seed", "buffer"), [(0, 1 << 15), (1, 7), (2, 1)])
def test_histogram_percentiles_within_bound_of_numpy(seed, buffer, monkeypatch):
    monkeypatch.setattr("workers.itl.BUFFER", buffer)  # bin every `buffer` gaps
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(np.log(0.012), 0.2, 5000), rng.uniform(0.05, 0.4, 60)])
    hist = ItlHistogram()
    for v in values:
        hist.add(float(v))
    summary = hist.summary()
    for p in (50, 90, 99):
        assert summary[f"p{p}"] == pytest.approx(np.percentile(values, p), rel=BOUND)
    assert summary["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert hist.tokens == len(values)


@pytest.mark.parametrize(("first", "slope", "n", "weight"), [
    (0.010, 1e-6, 500, 3), (0.010, 0.0, 40, 7), (0.2, -1e-4, 300, 1), (1e-7, 1e-3, 50, 2), (0.03, 2e-3, 1, 5),
])
def test_series_equals_adding_each_value(first, slope, n, weight):
    series, each = ItlHistogram(), ItlHistogram()
    series.add_series(first, slope, n, weight)
    series.add_series(first, slope, 0, weight)  # nothing
    for k in range(n):
        each.add(first + slope * k, weight)
    assert series.tokens == each.tokens == n * weight
    assert series.sum_s == pytest.approx(each.sum_s, rel=1e-12)
    # Values within rounding of a bucket edge may land on either side of it.
    assert np.abs(series.counts - each.counts).sum() <= 2 * weight * np.count_nonzero(each.counts)
    for p in (0, 50, 90, 99, 100):
        assert series.percentile(p) == pytest.approx(each.percentile(p), rel=0.011)


def test_merge_and_empty():
    a, b = ItlHistogram(), ItlHistogram()
    assert a.summary() == {"p50": None, "p90": None, "p99": None, "mean": None}
    a.add(0.01, 3)
    b.add(0.02, 1)
    a.merge(b)
    assert a.tokens == 4 and a.sum_s == pytest.approx(0.05) and a.percentile(100) == pytest.approx(0.02, rel=BOUND)


def drive(eng: BatchEngine, arrivals, per_iteration: bool):
    """Run requests (t, rid, input, output) through `eng`. With per_iteration, every segment is cut
    to one iteration and each member's token times are recorded: the exact inter-token gaps."""
    tokens: dict[int, list[float]] = {}

    def one_step():
        if per_iteration and eng.act_steps > 1:
            eng.poke(eng.act_start_s, [])

    def wake_until(t):
        while eng.next_wake_s <= t and eng.activity:
            now = eng.next_wake_s
            stepping = list(eng.members) if eng.activity & DECODE else []
            events = []
            eng.wake(now, events)
            for rid in stepping:
                tokens[rid].append(now)
            for kind, rid, *_ in events:
                if kind == FIRST_TOKEN:
                    tokens[rid] = [now]
            one_step()

    for t, rid, inp, out in arrivals:
        wake_until(t)
        eng.submit_prefill(rid, inp, out)
        eng.poke(t, [])
        one_step()
    wake_until(math.inf)
    return np.concatenate([np.diff(v) for v in tokens.values()])


def conversation_arrivals(n, rate, seed):
    from simulator.traces import builtin_trace_path, read_trace

    trace = read_trace(builtin_trace_path())
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(trace.input_tokens), n)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    return [(float(t), i, int(trace.input_tokens[r]), int(trace.output_tokens[r])) for i, (t, r) in
            enumerate(zip(times, rows))]


@pytest.mark.parametrize("token_budget", [0, 8192, 512])
def test_engine_itl_matches_every_tokens_gap(token_budget):
    perf = InstancePerf(get_device("h100-sxm"), get_model("llama-3.1-8b"))
    arrivals = conversation_arrivals(400, 18.0, seed=4)
    closed = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    drive(closed, arrivals, per_iteration=False)
    stepped = BatchEngine(perf, ROLE_BOTH, token_budget=token_budget)
    gaps = drive(stepped, arrivals, per_iteration=True)
    assert 2 * closed.decode_segments < stepped.decode_segments  # the closed form did run
    hist = closed.itl
    assert hist.tokens == len(gaps) == sum(out - 1 for *_, out in arrivals)
    assert hist.sum_s == pytest.approx(gaps.sum(), rel=1e-9)
    for p in (50, 90, 99):
        assert hist.percentile(p) == pytest.approx(np.percentile(gaps, p), rel=BOUND + 1e-3), p


def test_handed_over_request_first_gap_spans_the_hand_over():
    perf = InstancePerf(get_device("h100-sxm"), get_model("llama-3.1-8b"))
    eng = BatchEngine(perf, ROLE_DECODE)
    eng.submit_decode(1, 1000, 3, first_token_s=0.5)  # first token at 0.5 s on the prefill side
    eng.submit_decode(2, 1000, 3)  # unknown: its first gap starts at the join
    eng.poke(0.8, [])
    while eng.next_wake_s != math.inf:
        eng.wake(eng.next_wake_s, [])
    step = perf.decode_step_s(2, 2 * 1001.0)
    assert eng.itl.tokens == 4
    assert eng.itl.sum_s == pytest.approx((0.3 + step) + step + 2 * (eng.last_step_s - 0.8 - step), rel=1e-9)
