"""Workload synthesis: replay fidelity, reproducibility whatever the chunk
size, and arrival processes whose statistics match their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.traces import Trace, builtin_trace_path, read_trace
from simulator.workload import RequestChunk, Workload, _invert_diurnal, make_workload


@pytest.fixture(scope="module")
def conv() -> Trace:
    return read_trace(builtin_trace_path())


def lengths_only(rows: int = 50) -> Trace:
    i = np.arange(rows, dtype=np.int64)
    return Trace("lengths.csv", "lengths", None, i + 1, 2 * i + 1)


def with_hashes(rows: int = 40) -> Trace:
    """Row i has input i + 1 (so a request's row is recoverable) and i % 4 + 1 hash ids."""
    i = np.arange(rows, dtype=np.int64)
    counts = i % 4 + 1
    offsets = np.concatenate([[0], np.cumsum(counts)])
    values = np.concatenate([10 * r + np.arange(c) for r, c in zip(i, counts)]).astype(np.int64)
    return Trace("m.jsonl", "mooncake", i * 0.5, i + 1, i + 2, (offsets, values))


def collect(workload: Workload, chunk_size: int = 65536) -> tuple[list[RequestChunk], dict[str, np.ndarray]]:
    chunks = list(workload.chunks(chunk_size))
    columns = {
        "arrival_s": np.concatenate([c.arrival_s for c in chunks]),
        "input_tokens": np.concatenate([c.input_tokens for c in chunks]),
        "output_tokens": np.concatenate([c.output_tokens for c in chunks]),
    }
    return chunks, columns


# ---------------------------------------------------------------------------
# Replay


@pytest.mark.parametrize("n", [None, 1000, 1])
def test_replay_first_n_rows_equals_the_trace(conv, n):
    workload = make_workload(conv, n)
    rows = conv.rows if n is None else n
    assert (workload.arrival, workload.n_requests, workload.resampled) == ("trace", rows, False)
    chunks, cols = collect(workload, chunk_size=777)
    assert [c.first_id for c in chunks] == list(range(0, rows, 777))
    assert np.array_equal(cols["arrival_s"], conv.arrival_s[:rows])
    assert np.array_equal(cols["input_tokens"], conv.input_tokens[:rows])
    assert np.array_equal(cols["output_tokens"], conv.output_tokens[:rows])


def test_replay_description_and_rate(conv):
    workload = make_workload(conv, 1000)
    assert workload.description == ("azure trace azure_conv_2023.csv.gz, first 1,000 of 19,366 rows at "
                                    "trace timestamps (span 216.0 s)")
    assert workload.rate_rps == pytest.approx(999 / conv.arrival_s[999])
    assert "all 19,366 rows" in make_workload(conv).description


def test_replay_rebases_to_zero():
    trace = Trace("t.csv", "vidur", np.array([10.0, 11.0, 13.0]), np.array([1, 2, 3]), np.array([1, 1, 1]))
    (chunk,) = make_workload(trace).chunks()
    assert chunk.arrival_s.tolist() == [0.0, 1.0, 3.0]


def test_replay_keeps_hash_ids_rebased_per_chunk():
    trace = with_hashes()
    chunks = list(make_workload(trace).chunks(chunk_size=7))
    for chunk in chunks:
        offsets, values = chunk.hash_ids
        assert offsets[0] == 0 and offsets[-1] == len(values)
        for j, rid in enumerate(chunk.request_ids):
            assert values[offsets[j]:offsets[j + 1]].tolist() == trace.request_hash_ids(rid).tolist()


# ---------------------------------------------------------------------------
# Synthetic arrivals


@pytest.mark.parametrize("arrival", ["poisson", "gamma", "diurnal"])
def test_same_seed_same_requests_whatever_the_chunk_size(conv, arrival):
    # 140,000 requests span three internal blocks; resampled because n > rows.
    workload = make_workload(conv, 140_000, rate_rps=300.0, arrival=arrival, seed=7,
                             diurnal_period_s=60.0)
    assert workload.resampled
    _, reference = collect(workload)
    for size in (999, 50_000, 140_000):
        chunks, cols = collect(workload, size)
        assert [len(c) for c in chunks[:-1]] == [size] * (len(chunks) - 1)
        for name in reference:
            assert np.array_equal(cols[name], reference[name]), (size, name)
    again = collect(make_workload(conv, 140_000, rate_rps=300.0, arrival=arrival, seed=7,
                                  diurnal_period_s=60.0))[1]
    other_seed = collect(make_workload(conv, 140_000, rate_rps=300.0, arrival=arrival, seed=8,
                                       diurnal_period_s=60.0))[1]
    assert np.array_equal(again["arrival_s"], reference["arrival_s"])
    assert not np.array_equal(other_seed["arrival_s"], reference["arrival_s"])
    assert reference["arrival_s"][0] == 0.0
    assert (np.diff(reference["arrival_s"]) >= 0).all()


def test_arrival_process_does_not_change_lengths(conv):
    """Same seed, different process: paired comparisons see the same requests."""
    a = collect(make_workload(conv, 30_000, rate_rps=50.0, arrival="poisson", seed=3))[1]
    b = collect(make_workload(conv, 30_000, rate_rps=50.0, arrival="gamma", seed=3))[1]
    assert np.array_equal(a["input_tokens"], b["input_tokens"])
    assert not np.array_equal(a["arrival_s"], b["arrival_s"])


def test_poisson_rate_and_exponential_gaps(conv):
    n, rate = 100_000, 300.0
    arrival_s = collect(make_workload(conv, n, rate_rps=rate, arrival="poisson"))[1]["arrival_s"]
    gaps = np.diff(arrival_s)
    assert (n - 1) / arrival_s[-1] == pytest.approx(rate, rel=0.02)
    # Exponential gaps have CV 1 and P(gap > mean) = 1/e.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)
    assert np.mean(gaps > 1 / rate) == pytest.approx(math.exp(-1), abs=0.01)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_burstiness(conv, cv):
    n, rate = 100_000, 40.0
    workload = make_workload(conv, n, rate_rps=rate, arrival="gamma", gamma_cv=cv)
    gaps = np.diff(collect(workload)[1]["arrival_s"])
    assert 1 / gaps.mean() == pytest.approx(rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.10)


def test_diurnal_rate_follows_the_sine(conv):
    rate, period, amplitude = 50.0, 100.0, 0.8
    workload = make_workload(conv, 100_000, rate_rps=rate, arrival="diurnal", diurnal_period_s=period,
                             diurnal_amplitude=amplitude)
    t = collect(workload)[1]["arrival_s"]
    whole = t[t < math.floor(t[-1] / period) * period]  # complete periods only
    assert len(whole) / (math.floor(t[-1] / period) * period) == pytest.approx(rate, rel=0.02)
    bins = 8
    observed = np.bincount((np.mod(whole, period) / period * bins).astype(int), minlength=bins) / len(whole)
    edges = np.linspace(0.0, 2 * math.pi, bins + 1)
    # Integral of 1 + A sin over each phase bin, as a share of the period.
    expected = (np.diff(edges) + amplitude * (np.cos(edges[:-1]) - np.cos(edges[1:]))) / (2 * math.pi)
    np.testing.assert_allclose(observed, expected, rtol=0.05)


@pytest.mark.parametrize("amplitude", [0.0, 0.5, 1.0])
def test_diurnal_inversion_is_exact(amplitude):
    rate, period = 3.0, 10.0
    u = np.sort(np.random.default_rng(0).uniform(0, 1000, 5000))
    t = _invert_diurnal(u, rate, period, amplitude)
    omega = 2 * math.pi / period
    big_lambda = rate * (t + amplitude / omega * (1 - np.cos(omega * t)))
    np.testing.assert_allclose(big_lambda, u, rtol=0, atol=1e-8)
    assert (np.diff(t) >= 0).all()


# ---------------------------------------------------------------------------
# Lengths


def test_resampled_lengths_match_the_trace(conv):
    workload = make_workload(conv, 100_000, rate_rps=300.0, seed=1)
    cols = collect(workload)[1]
    assert cols["input_tokens"].mean() == pytest.approx(conv.input_tokens.mean(), rel=0.02)
    assert cols["output_tokens"].mean() == pytest.approx(conv.output_tokens.mean(), rel=0.03)
    # Joint pairs: every (input, output) drawn exists as a row of the trace.
    pairs = set(zip(conv.input_tokens.tolist(), conv.output_tokens.tolist()))
    assert set(zip(cols["input_tokens"][:5000].tolist(), cols["output_tokens"][:5000].tolist())) <= pairs


def test_n_within_trace_with_rate_keeps_rows_in_order(conv):
    workload = make_workload(conv, 500, rate_rps=10.0)
    cols = collect(workload)[1]
    assert (workload.arrival, workload.resampled) == ("poisson", False)
    assert np.array_equal(cols["input_tokens"], conv.input_tokens[:500])


def test_resampled_hash_ids_follow_their_rows():
    trace = with_hashes()
    for chunk in make_workload(trace, 500, rate_rps=5.0, seed=2).chunks(chunk_size=64):
        offsets, values = chunk.hash_ids
        for j in range(len(chunk)):
            row = chunk.input_tokens[j] - 1
            assert values[offsets[j]:offsets[j + 1]].tolist() == trace.request_hash_ids(row).tolist()


def test_default_rate_is_the_trace_mean_rate(conv):
    workload = make_workload(conv, 50_000)
    assert (workload.arrival, workload.resampled) == ("poisson", True)
    assert workload.rate_rps == pytest.approx(conv.mean_rate_rps)
    assert workload.description == ("50,000 requests: lengths resampled from 19,366 rows of azure trace "
                                    "azure_conv_2023.csv.gz, Poisson arrivals at 5.53014 req/s "
                                    "(the trace's mean rate), seed 0")


def test_length_only_trace_needs_a_rate():
    with pytest.raises(ValueError, match="rate"):
        make_workload(lengths_only())
    workload = make_workload(lengths_only(), 10, rate_rps=2.0)
    assert workload.description == ("10 requests: lengths from the first 10 of 50 rows of lengths trace "
                                    "lengths.csv, Poisson arrivals at 2 req/s, seed 0")


# ---------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kwargs,fragment", [
    ({"n_requests": 0}, "n_requests"),
    ({"n_requests": -5}, "n_requests"),
    ({"n_requests": 2.5}, "n_requests"),
    ({"rate_rps": 0.0}, "rate_rps"),
    ({"rate_rps": -1.0}, "rate_rps"),
    ({"rate_rps": float("nan")}, "rate_rps"),
    ({"arrival": "bursty"}, "unknown arrival process"),
    ({"arrival": "gamma", "gamma_cv": 0.0}, "gamma_cv"),
    ({"arrival": "diurnal", "diurnal_amplitude": 1.5}, "diurnal_amplitude"),
    ({"arrival": "diurnal", "diurnal_period_s": -1.0}, "diurnal_period_s"),
    ({"seed": -1}, "seed"),
    ({"arrival": "trace", "rate_rps": 5.0}, "cannot replay"),
    ({"arrival": "trace", "n_requests": 20_000}, "exceeds"),
])
def test_bad_arguments_are_value_errors(conv, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        make_workload(conv, **kwargs)


def test_replay_needs_timestamps():
    with pytest.raises(ValueError, match="no timestamps"):
        make_workload(lengths_only(), arrival="trace")


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_bad_chunk_size(conv, size):
    with pytest.raises(ValueError, match="chunk_size"):
        next(make_workload(conv, 10).chunks(size))
