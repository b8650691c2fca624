"""Request difficulty and answer quality.

Each request has a difficulty d in [0, 1]; a model of capability c (MMLU / 100
for the built-ins, workers/models.py) answers it correctly when c >= d. A
workload's difficulties come from a trace column when the trace has one
(`difficulty`), else are drawn per request from a reach table: pairs
(capability, share of queries within reach of a model of that capability),
i.e. the distribution function of d. Drawing inverts it: d = F^-1(u) by
linear interpolation, u uniform.

The default table is an assumption, not a measurement. Its edge anchor (an
8B model reaches 71% of queries) echoes a figure of the "Intelligence per
Watt" study (Saad-Falcon et al., 2025, arXiv 2511.07885), but that 71.3% is
the 2025 share of single-turn chat and reasoning queries on which the best
local models (<= 20B active parameters) win or tie against frontier models:
a different comparison, not Llama-3.1-8B against 405B. The other anchors are
chosen to keep reach monotone in capability and roughly proportional to the
MMLU gaps between the Llama 3 sizes: 1B 45%, 3B 62%, 70B 90%, 405B 95%, and
5% of queries beyond every built-in model. 4-bit pools lose capability
(scheduler/config.py QUANTIZATION_CAPABILITY). Tune it with
`--difficulty-table` or `DifficultyModel(table=...)`; judge answers by real
per-question results instead with simulator/quality_matrix.py.

Draws are a seeded hash of (seed, request id), so request i gets the same
difficulty whatever the chunking, the request count or the arrival process.
"""
from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_REACH_TABLE: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (0.493, 0.45),   # llama-3.2-1b
    (0.634, 0.62),   # llama-3.2-3b
    (0.694, 0.71),   # llama-3.1-8b: assumed (see the module docstring on the 71%)
    (0.836, 0.90),   # llama-3.1-70b
    (0.873, 0.95),   # llama-3.1-405b
    (1.0, 1.0),
)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, vectorized (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = x * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, first_id: int, n: int) -> np.ndarray:
    """Uniform [0, 1) numbers for request ids first_id .. first_id + n - 1 under `seed`."""
    ids = np.arange(first_id, first_id + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        keyed = ids + _splitmix(np.array([seed], dtype=np.uint64) + np.uint64(0xD1B54A32D192ED03))
    return (_splitmix(keyed) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def parse_table(text: str) -> tuple[tuple[float, float], ...]:
    """'0.694:0.71,0.873:0.95' -> pairs; a clear message on a bad entry."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        cap, sep, share = item.partition(":")
        if not sep:
            raise ValueError(f"difficulty table entry {item!r}: expected CAPABILITY:SHARE")
        try:
            pairs.append((float(cap), float(share)))
        except ValueError:
            raise ValueError(f"difficulty table entry {item!r}: capability and share must be numbers") from None
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class DifficultyModel:
    """Seeded per-request difficulties from a reach table (see the module docstring)."""

    table: tuple[tuple[float, float], ...] = DEFAULT_REACH_TABLE
    seed: int = 0

    def __post_init__(self) -> None:
        table = tuple((float(c), float(s)) for c, s in self.table)
        if not table:
            raise ValueError("difficulty table is empty")
        for c, s in table:
            if not (0.0 <= c <= 1.0 and 0.0 <= s <= 1.0) or math.isnan(c) or math.isnan(s):
                raise ValueError(f"difficulty table entry ({c:g}, {s:g}): capability and share must be in [0, 1]")
        table = ((0.0, 0.0),) + tuple(p for p in table if p != (0.0, 0.0))
        if table[-1] != (1.0, 1.0):
            table = table + ((1.0, 1.0),)
        caps = [c for c, _ in table]
        shares = [s for _, s in table]
        if any(b <= a for a, b in zip(caps, caps[1:])) or any(b < a for a, b in zip(shares, shares[1:])):
            raise ValueError("difficulty table: capabilities must increase and shares must not decrease")
        object.__setattr__(self, "table", table)

    def reach(self, capability: float) -> float:
        """Share of queries a model of this capability answers correctly."""
        caps, shares = zip(*self.table)
        return float(np.interp(capability, caps, shares))

    def draw(self, first_id: int, n: int) -> np.ndarray:
        caps, shares = zip(*self.table)
        u = uniforms(self.seed, first_id, n)
        # Invert the step-free CDF; flat stretches (no queries) are skipped.
        return np.interp(u, shares, caps)


def read_difficulty_column(path: str | Path) -> np.ndarray | None:
    """The `difficulty` column of a CSV trace, in row order, or None when it has none.

    Values must be numbers in [0, 1]; a bad one fails naming file, line and field.
    (Rows the trace reader drops as malformed must not be present: the column is
    matched to the trace's rows by position.)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return None
        names = [h.strip().lower() for h in header]
        if "difficulty" not in names:
            return None
        col = names.index("difficulty")
        values = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                d = float(row[col])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{line}: field 'difficulty': expected a number in [0, 1]") from None
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"{path}:{line}: field 'difficulty': {d!r} is outside [0, 1]")
            values.append(d)
    return np.array(values)
