"""Workloads: a trace replayed as recorded, or lengths from a trace with
synthetic arrivals, generated lazily in chunks.

Reproducibility is per fixed internal block of `_BLOCK` requests: block b
draws its arrival gaps from `default_rng([seed, 0, b])` and its resampled
lengths from `default_rng([seed, 1, b])`. So the same seed gives the same
requests whatever chunk size the consumer asks for, memory stays bounded by
one block plus one chunk, and changing only the arrival process (Poisson vs
gamma at the same seed) keeps the very same request lengths, which makes
policy comparisons across arrival processes paired rather than noisy.

Every synthetic process puts request 0 at t = 0, like a replayed trace
(trace times are "seconds since the first request").

A workload over a `TraceFile` (simulator/traces/stream.py) reads the trace's
rows block by block as it goes, instead of slicing columns held in memory;
both give the same requests.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from simulator.quality import DifficultyModel
from simulator.traces import Trace, TraceFile
from simulator.traces.stream import ragged_concat, ragged_slice, rebatch

__all__ = ["ARRIVAL_PROCESSES", "RequestChunk", "Workload", "make_workload"]

ARRIVAL_PROCESSES: tuple[str, ...] = ("trace", "poisson", "gamma", "diurnal")

# Requests per internal generation block. 64 Ki keeps numpy's per-call
# overhead under 1% of a block and a block's arrays near 2 MB.
_BLOCK = 65536
_ARRIVAL_STREAM = 0
_LENGTH_STREAM = 1


@dataclass(frozen=True, slots=True, eq=False)
class RequestChunk:
    """Consecutive requests `first_id .. first_id + len - 1` as columns.

    `hash_ids` is CSR relative to this chunk: request first_id + i owns
    `values[offsets[i]:offsets[i + 1]]`.
    """

    first_id: int
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[np.ndarray, np.ndarray] | None = None
    difficulty: np.ndarray | None = None  # per request in [0, 1] (simulator/quality.py)

    def __len__(self) -> int:
        return len(self.input_tokens)

    @property
    def request_ids(self) -> np.ndarray:
        return np.arange(self.first_id, self.first_id + len(self), dtype=np.int64)

    def _slice(self, lo: int, hi: int) -> RequestChunk:
        hashes = None if self.hash_ids is None else ragged_slice(self.hash_ids, lo, hi)
        return RequestChunk(self.first_id + lo, self.arrival_s[lo:hi], self.input_tokens[lo:hi],
                            self.output_tokens[lo:hi], hashes,
                            None if self.difficulty is None else self.difficulty[lo:hi])


def _concat(parts: list[RequestChunk]) -> RequestChunk:
    if len(parts) == 1:
        return parts[0]
    hashes = None if parts[0].hash_ids is None else ragged_concat([p.hash_ids for p in parts])
    difficulty = None
    if parts[0].difficulty is not None:
        difficulty = np.concatenate([p.difficulty for p in parts])
    return RequestChunk(parts[0].first_id, np.concatenate([p.arrival_s for p in parts]),
                        np.concatenate([p.input_tokens for p in parts]),
                        np.concatenate([p.output_tokens for p in parts]), hashes, difficulty)


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """A recipe for `n_requests` requests; `chunks()` generates them on demand.

    rate_rps: the mean arrival rate imposed on synthetic arrivals, or for a
    replay the replayed rows' own mean rate (None for a single row).
    resampled: True when lengths are drawn i.i.d. from the trace's rows,
    False when they are the trace's first n_requests rows in order.
    """

    n_requests: int
    description: str
    arrival: str
    rate_rps: float | None
    seed: int
    resampled: bool
    gamma_cv: float
    diurnal_period_s: float
    diurnal_amplitude: float
    trace: Trace | TraceFile = field(repr=False)
    # Difficulties: a per-row column of the trace (indexed like its lengths), or a
    # seeded reach-table model (simulator/quality.py); None draws from the default table.
    difficulty: DifficultyModel | np.ndarray | None = field(default=None, repr=False)

    @property
    def has_block_hashes(self) -> bool:
        """Whether requests carry prefix-block hash ids (Mooncake traces)."""
        trace = self.trace
        return trace.has_hashes if isinstance(trace, TraceFile) else trace.hash_ids is not None

    def chunks(self, chunk_size: int = 65536) -> Iterator[RequestChunk]:
        """Requests in id order, `chunk_size` at a time (the last chunk may be shorter)."""
        chunk_size = _positive_int(chunk_size, "chunk_size")
        parts: list[RequestChunk] = []
        have = 0
        for block in self._blocks():
            pos = 0
            while pos < len(block):
                take = min(chunk_size - have, len(block) - pos)
                parts.append(block._slice(pos, pos + take))
                have += take
                pos += take
                if have == chunk_size:
                    yield _concat(parts)
                    parts, have = [], 0
        if parts:
            yield _concat(parts)

    def _blocks(self) -> Iterator[RequestChunk]:
        trace = self.trace
        t_carry = 0.0  # last arrival so far (poisson, gamma)
        u_carry = 0.0  # last unit-rate arrival so far (diurnal)
        in_order = None if self.resampled else _rows_in_order(trace, self.n_requests)
        for b, start in enumerate(range(0, self.n_requests, _BLOCK)):
            stop = min(self.n_requests, start + _BLOCK)
            m = stop - start
            rows_here = None if in_order is None else next(in_order)
            if self.arrival == "trace":
                arrival_s = rows_here.arrival_s - rows_here.first_arrival_s
            else:
                rng = np.random.default_rng([self.seed, _ARRIVAL_STREAM, b])
                if self.arrival == "gamma":
                    shape = 1.0 / self.gamma_cv ** 2
                    gaps = rng.gamma(shape, 1.0 / (shape * self.rate_rps), size=m)
                else:
                    # Diurnal draws unit-rate gaps and warps time afterwards.
                    scale = 1.0 if self.arrival == "diurnal" else 1.0 / self.rate_rps
                    gaps = rng.exponential(scale, size=m)
                if b == 0:
                    gaps[0] = 0.0
                if self.arrival == "diurnal":
                    u = u_carry + np.cumsum(gaps)
                    u_carry = float(u[-1])
                    arrival_s = _invert_diurnal(u, self.rate_rps, self.diurnal_period_s, self.diurnal_amplitude)
                else:
                    arrival_s = t_carry + np.cumsum(gaps)
                    t_carry = float(arrival_s[-1])
            rows = None
            if self.resampled:
                rng = np.random.default_rng([self.seed, _LENGTH_STREAM, b])
                rows = rng.integers(0, trace.rows, size=m)
                inputs = trace.input_tokens[rows]
                outputs = trace.output_tokens[rows]
                hashes = None if trace.hash_ids is None else _gather_csr(trace.hash_ids, rows)
            else:
                inputs, outputs, hashes = rows_here.input_tokens, rows_here.output_tokens, rows_here.hash_ids
            difficulty = self.difficulty
            if isinstance(difficulty, np.ndarray):
                difficulty = difficulty[rows] if rows is not None else difficulty[start:stop]
            else:
                difficulty = (difficulty or DifficultyModel(seed=self.seed)).draw(start, m)
            for a in (arrival_s, inputs, outputs, difficulty) + (hashes or ()):
                a.flags.writeable = False
            yield RequestChunk(start, arrival_s, inputs, outputs, hashes, difficulty)


class _InOrder(NamedTuple):
    arrival_s: np.ndarray | None
    first_arrival_s: float  # the trace's first arrival, which replayed times are taken from
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[np.ndarray, np.ndarray] | None


def _rows_in_order(trace: Trace | TraceFile, n: int) -> Iterator[_InOrder]:
    """The trace's first n rows in blocks of _BLOCK: slices of a Trace in memory, or a TraceFile's
    rows read block by block (memory: one block, whatever the file's length)."""
    if isinstance(trace, TraceFile):
        for block in rebatch(trace.blocks(), _BLOCK, n):
            yield _InOrder(block.arrival_s, 0.0, block.input_tokens, block.output_tokens, block.hash_ids)
        return
    first_s = None if trace.arrival_s is None else trace.arrival_s[0]
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        hashes = None
        if trace.hash_ids is not None:
            offsets, values = trace.hash_ids
            hashes = (offsets[start:stop + 1] - offsets[start], values[offsets[start]:offsets[stop]])
        yield _InOrder(None if trace.arrival_s is None else trace.arrival_s[start:stop], first_s,
                       trace.input_tokens[start:stop], trace.output_tokens[start:stop], hashes)


def _gather_csr(csr: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets, values = csr
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # Position j of the output belongs to row r(j); it reads
    # values[starts[r] + (j - new_offsets[r])].
    shift = np.repeat(starts - new_offsets[:-1], lengths)
    return new_offsets, values[shift + np.arange(new_offsets[-1], dtype=np.int64)]


def _invert_diurnal(u: np.ndarray, rate_rps: float, period_s: float, amplitude: float) -> np.ndarray:
    """Times t with Lambda(t) = u, for rate(t) = rate * (1 + A sin(2 pi t / P)).

    Time rescaling: if u are unit-rate Poisson arrival times, Lambda^-1(u) are
    exact arrivals of the non-homogeneous process. Lambda(t) = rate * (t +
    A P / (2 pi) (1 - cos(2 pi t / P))) grows by exactly rate * P per period,
    so whole periods come off in closed form and only the remainder tau in
    [0, P) is solved for, by safeguarded Newton (bisection whenever a Newton
    step would leave the bracket, as happens where rate(t) nears 0 at A = 1).
    """
    omega = 2.0 * math.pi / period_s
    c = amplitude / omega
    periods = np.floor(u / (rate_rps * period_s))
    target = u / rate_rps - periods * period_s  # seconds of mean-rate time within the period
    target = np.clip(target, 0.0, period_s)
    lo = np.zeros_like(target)
    hi = np.full_like(target, period_s)
    tau = target.copy()
    tol_s = 1e-9 * max(1.0, period_s / 86400.0)
    for _ in range(200):
        g = tau + c * (1.0 - np.cos(omega * tau)) - target
        lo = np.where(g <= 0.0, tau, lo)
        hi = np.where(g >= 0.0, tau, hi)
        slope = 1.0 + amplitude * np.sin(omega * tau)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = tau - g / slope
        inside = (slope > 0.0) & (newton > lo) & (newton < hi)
        nxt = np.where(inside, newton, 0.5 * (lo + hi))
        done = np.abs(nxt - tau) <= tol_s
        tau = nxt
        if done.all():
            break
    return periods * period_s + tau


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def _positive_float(value, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def _fmt_rate(rate_rps: float) -> str:
    return f"{rate_rps:,.6g} req/s"


def make_workload(trace: Trace | TraceFile, n_requests: int | None = None, rate_rps: float | None = None,
                  arrival: str | None = None, seed: int = 0, *, gamma_cv: float = 2.0,
                  diurnal_period_s: float = 86400.0, diurnal_amplitude: float = 0.5,
                  difficulty: DifficultyModel | np.ndarray | None = None) -> Workload:
    """Describe n_requests requests drawn from `trace`.

    With no rate and n_requests <= trace rows on a timestamped trace (and
    arrival None or "trace"), the first n rows are replayed at their recorded
    times. Otherwise arrivals are synthesized: "poisson" (default), "gamma"
    (i.i.d. gamma gaps with coefficient of variation gamma_cv; cv > 1 is
    burstier than Poisson) or "diurnal" (Poisson with rate(t) = rate * (1 +
    amplitude sin(2 pi t / diurnal_period_s))), at rate_rps or, if None, the
    trace's mean rate. Lengths are the trace's first n rows in order when
    n <= rows, else n joint (input, output[, hash_ids]) rows drawn i.i.d.
    with replacement.

    A TraceFile (`scan_trace`) is read block by block as the requests are
    generated, so only one block of it is in memory at a time, unless lengths
    are resampled (n > rows), which reads it whole.

    difficulty: a per-row array aligned with the trace's rows (a trace column,
    simulator.quality.read_difficulty_column), a DifficultyModel, or None for
    the default reach table seeded with `seed`.
    """
    if isinstance(difficulty, np.ndarray):
        if len(difficulty) != trace.rows:
            raise ValueError(f"difficulty column has {len(difficulty):,} values for {trace.rows:,} trace rows")
        if len(difficulty) and not (np.all(difficulty >= 0.0) and np.all(difficulty <= 1.0)):
            raise ValueError("difficulty values must be in [0, 1]")
    elif difficulty is not None and not isinstance(difficulty, DifficultyModel):
        raise ValueError(f"difficulty must be an array or a DifficultyModel, got {type(difficulty).__name__}")
    if not isinstance(trace, (Trace, TraceFile)):
        raise ValueError(f"trace must be a Trace or a TraceFile, got {type(trace).__name__}")
    if arrival is not None and arrival not in ARRIVAL_PROCESSES:
        raise ValueError(f"unknown arrival process {arrival!r}; choose one of {', '.join(ARRIVAL_PROCESSES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    rows = trace.rows
    if rows == 0:
        raise ValueError(f"trace {trace.path} has no rows")
    n = rows if n_requests is None else _positive_int(n_requests, "n_requests")
    if rate_rps is not None:
        rate_rps = _positive_float(rate_rps, "rate_rps")
    gamma_cv = _positive_float(gamma_cv, "gamma_cv")
    diurnal_period_s = _positive_float(diurnal_period_s, "diurnal_period_s")
    if not (isinstance(diurnal_amplitude, (int, float, np.floating)) and 0.0 <= diurnal_amplitude <= 1.0):
        # Above 1 the rate would go negative for part of each period.
        raise ValueError(f"diurnal_amplitude must be in [0, 1], got {diurnal_amplitude!r}")
    diurnal_amplitude = float(diurnal_amplitude)

    name = f"{trace.format} trace {Path(trace.path).name}"
    replay_possible = trace.has_timestamps and rate_rps is None and n <= rows
    if arrival == "trace" and not replay_possible:
        if not trace.has_timestamps:
            why = "it has no timestamps"
        elif rate_rps is not None:
            why = "a rate cannot be imposed on recorded timestamps (use poisson, gamma or diurnal)"
        else:
            why = f"n_requests={n:,} exceeds its {rows:,} rows"
        raise ValueError(f"cannot replay {name} at trace timestamps: {why}")

    if arrival == "trace" or (arrival is None and replay_possible):
        if isinstance(trace, TraceFile):
            span_s = trace.first(n).span_s
        else:
            replayed = trace.arrival_s[:n]
            span_s = float(replayed[-1] - replayed[0])
        which = f"all {rows:,} rows" if n == rows else f"first {n:,} of {rows:,} rows"
        return Workload(
            n_requests=n, description=f"{name}, {which} at trace timestamps (span {span_s:,.1f} s)",
            arrival="trace", rate_rps=(n - 1) / span_s if span_s > 0 else None, seed=seed, resampled=False,
            gamma_cv=gamma_cv, diurnal_period_s=diurnal_period_s, diurnal_amplitude=diurnal_amplitude,
            trace=trace, difficulty=difficulty)

    arrival = arrival or "poisson"
    if rate_rps is None:
        rate_rps = trace.mean_rate_rps
        if rate_rps is None:
            why = "has no timestamps" if not trace.has_timestamps else "has no time span to take a mean rate from"
            raise ValueError(f"{name} {why}; give an arrival rate (rate_rps, --rate) for synthetic arrivals")
        rate_note = f"{_fmt_rate(rate_rps)} (the trace's mean rate)"
    else:
        rate_note = _fmt_rate(rate_rps)
    resampled = n > rows
    if resampled and isinstance(trace, TraceFile):
        trace = trace.read()  # rows drawn at random: the lengths must be in memory
    lengths = (f"lengths resampled from {rows:,} rows of {name}" if resampled
               else f"lengths from the first {n:,} of {rows:,} rows of {name}" if n < rows
               else f"lengths from all {rows:,} rows of {name}")
    process = {
        "poisson": f"Poisson arrivals at {rate_note}",
        "gamma": f"gamma arrivals (CV {gamma_cv:g}) at {rate_note}",
        "diurnal": (f"diurnal Poisson arrivals at mean {rate_note} (amplitude {diurnal_amplitude:g}, "
                    f"period {diurnal_period_s:,g} s)"),
    }[arrival]
    return Workload(
        n_requests=n, description=f"{n:,} requests: {lengths}, {process}, seed {seed}",
        arrival=arrival, rate_rps=rate_rps, seed=seed, resampled=resampled, gamma_cv=gamma_cv,
        diurnal_period_s=diurnal_period_s, diurnal_amplitude=diurnal_amplitude, trace=trace,
        difficulty=difficulty)
