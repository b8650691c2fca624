"""The `Trace` every reader returns, and the error every reader raises."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def builtin_trace_path() -> Path:
    """Path of the bundled default trace (Azure LLM inference 2023, conv, gzipped)."""
    return Path(__file__).resolve().parent.parent / "data" / "azure_conv_2023.csv.gz"


class TraceFormatError(ValueError):
    """A trace file that cannot be read as its format says, located to the field.

    `skippable`: the error is one data row's, which `skip_bad_rows` would skip
    (not the header's, the compression's or the file's as a whole).
    """

    def __init__(self, path: str | os.PathLike, line: int, field: str, reason: str, skippable: bool = False) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.reason = reason
        self.skippable = skippable
        super().__init__(f"{self.path}:{line}: field '{field}': {reason}")

    # Exceptions cross process boundaries (Ray workers, multiprocessing) by
    # pickling their constructor arguments; the default would pass only the message.
    def __reduce__(self):
        return (type(self), (self.path, self.line, self.field, self.reason, self.skippable))


class TraceFileError(ValueError):
    """A trace path that names no readable file (a directory, no permission)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class SkippedRow(NamedTuple):
    """A data row `skip_bad_rows` dropped, and why."""

    line: int
    field: str
    reason: str


class TraceBlock(NamedTuple):
    """Consecutive kept rows of a trace read in blocks (`TraceFile.blocks`).

    Columns as in `Trace`: arrival_s in seconds since the first kept row of the
    whole read (None without timestamps), hash_ids CSR relative to the block.
    """

    arrival_s: np.ndarray | None
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[np.ndarray, np.ndarray] | None

    @property
    def rows(self) -> int:
        return len(self.input_tokens)


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A request trace held as columns (about 24 bytes per request).

    `hash_ids` is CSR: request i's prefix-block ids are
    `values[offsets[i]:offsets[i + 1]]`. One flat int64 array costs 8 bytes
    per id; a Python list per request would cost about 36 (pointer + int
    object), i.e. ~0.7 GB instead of ~0.16 GB for a million requests of 20 ids.
    Arrays are read-only so a Trace shared between workloads cannot be altered.
    """

    path: str
    format: str
    arrival_s: np.ndarray | None
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[np.ndarray, np.ndarray] | None = None
    bad_rows: int = 0
    # The first rows.MAX_SKIPPED_KEPT skipped rows, and exact counts per field.
    skipped_rows: tuple[SkippedRow, ...] = ()
    bad_rows_by_field: tuple[tuple[str, int], ...] = ()
    filtered_rows: int = 0
    # Valid rows read before a time window's start and not kept: the first kept
    # row is data row rows_before_window (0-based) when no row was bad or filtered.
    rows_before_window: int = 0

    def __post_init__(self) -> None:
        n = len(self.input_tokens)
        if len(self.output_tokens) != n:
            raise ValueError(f"output_tokens has {len(self.output_tokens)} rows, input_tokens {n}")
        if self.arrival_s is not None and len(self.arrival_s) != n:
            raise ValueError(f"arrival_s has {len(self.arrival_s)} rows, input_tokens {n}")
        if self.hash_ids is not None:
            offsets, values = self.hash_ids
            if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(values):
                raise ValueError("hash_ids offsets must have rows + 1 entries, start at 0 and end at len(values)")
        # Hold read-only views: the caller's arrays keep their own flags.
        for name in ("arrival_s", "input_tokens", "output_tokens"):
            a = getattr(self, name)
            if a is not None and a.flags.writeable:
                object.__setattr__(self, name, _read_only(a))
        if self.hash_ids is not None and any(a.flags.writeable for a in self.hash_ids):
            object.__setattr__(self, "hash_ids", tuple(_read_only(a) for a in self.hash_ids))

    @property
    def bad_row_reasons(self) -> tuple[str, ...]:
        """The kept skipped rows as `file:line: field 'name': reason` lines."""
        return tuple(str(TraceFormatError(self.path, *row)) for row in self.skipped_rows)

    @property
    def rows(self) -> int:
        return len(self.input_tokens)

    @property
    def has_timestamps(self) -> bool:
        return self.arrival_s is not None

    @property
    def span_s(self) -> float | None:
        """Seconds from the first to the last request; None for length-only traces."""
        if self.arrival_s is None or len(self.arrival_s) == 0:
            return None
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def mean_rate_rps(self) -> float | None:
        """(rows - 1) / span: the arrival rate that reproduces the trace's span.

        rows - 1 because n arrivals enclose n - 1 gaps; None when the trace has
        no timestamps or a zero span.
        """
        span = self.span_s
        if span is None or span <= 0.0:
            return None
        return (self.rows - 1) / span

    def request_hash_ids(self, i: int) -> np.ndarray | None:
        if self.hash_ids is None:
            return None
        offsets, values = self.hash_ids
        return values[offsets[i]:offsets[i + 1]]
