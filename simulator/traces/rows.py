"""What every trace reader shares: opening files, blocks of lines, field parsers, kept rows.

Files are opened by content (gzip magic, byte-order mark), read in blocks of
about `CHUNK_CHARS` characters split into whole lines with their physical line
numbers; `Collector` keeps the valid rows as columns, checks timestamp order
across blocks, and raises or counts (with `skip_bad_rows`) each bad row as a
`TraceFormatError` naming file, line and field.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import IO, Callable, Iterator

import numpy as np

from simulator.traces.trace import Trace, TraceFormatError

# Characters per read. About 30k rows of the Azure CSV: big enough to amortise
# the per-block numpy calls, small enough that a bad row sends only one modest
# block down the row-by-row path.
CHUNK_CHARS = 1 << 20
# How many skipped-row messages a Trace keeps; the count is always exact.
MAX_REASONS = 10
INT64_MAX = (1 << 63) - 1


class RowError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_count(text: str, field: str) -> int:
    s = text.strip()
    if not s:
        raise RowError(field, "empty")
    digits = s[1:] if s[0] in "+-" else s
    if not (digits.isascii() and digits.isdigit()):
        raise RowError(field, f"not an integer: {text!r}")
    if s[0] == "-" and int(digits) != 0:
        raise RowError(field, f"negative: {text!r}")
    value = int(digits)
    if value > INT64_MAX:
        raise RowError(field, f"too large for int64: {text!r}")
    return value


def parse_seconds(text: str, field: str) -> float:
    s = text.strip()
    if not s:
        raise RowError(field, "empty")
    try:
        # float() also takes "1_000"; that is no number a trace writer emits.
        if "_" in s:
            raise ValueError
        value = float(s)
    except ValueError:
        raise RowError(field, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise RowError(field, f"not finite: {text!r}")
    return value


def open_text(path: str) -> IO[str]:
    if not os.path.exists(path):
        raise FileNotFoundError(2, "trace file not found", path)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    # utf-8-sig drops a byte-order mark; undecodable bytes become U+FFFD so the
    # row-by-row path reports them as a bad field with a line number.
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace")
    return open(path, "rt", encoding="utf-8-sig", errors="replace")


class Lines:
    """Yields (first line number, complete lines) blocks; universal newlines."""

    def __init__(self, path: str, f: IO[str]) -> None:
        self.path = path
        self.f = f
        self.next_line = 1

    def blocks(self) -> Iterator[tuple[int, list[str]]]:
        carry = ""
        while True:
            try:
                chunk = self.f.read(CHUNK_CHARS)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise TraceFormatError(self.path, self.next_line, "gzip",
                                       f"corrupt or truncated gzip stream: {e}") from None
            if not chunk:
                if carry:
                    start = self.next_line
                    self.next_line += 1
                    yield start, [carry]
                return
            lines = (carry + chunk).split("\n")
            carry = lines.pop()
            if lines:
                start = self.next_line
                self.next_line += len(lines)
                yield start, lines


class Collector:
    """Kept columns, bad-row bookkeeping and the order check across blocks.

    Clean blocks arrive as whole columns (`add_columns`); the row-by-row path
    keeps rows one at a time (`keep_row`) into lists flushed once per block,
    because a numpy array per row would cost more than parsing the row.
    """

    def __init__(self, path: str, skip_bad_rows: bool, max_rows: int | None, ties_allowed: bool,
                 time_field: str | None, time_dtype: type | None,
                 show_time: Callable[[float | int], str] = repr) -> None:
        self.path = path
        self.show_time = show_time
        self.skip = skip_bad_rows
        self.max_rows = max_rows
        self.ties_allowed = ties_allowed
        self.time_field = time_field
        self.time_dtype = time_dtype
        self.times: list[np.ndarray] = []
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.hash_lengths: list[np.ndarray] = []
        self.hash_values: list[np.ndarray] = []
        self.kept = 0
        self.bad = 0
        self.reasons: list[str] = []
        self.filtered = 0
        self.last_time: float | int | None = None
        self.last_time_line = 0
        self._rows_t: list = []
        self._rows_in: list[int] = []
        self._rows_out: list[int] = []
        self._rows_hash: list[list[int]] = []

    @property
    def full(self) -> bool:
        return self.max_rows is not None and self.kept >= self.max_rows

    def bad_row(self, line: int, field: str, reason: str) -> None:
        err = TraceFormatError(self.path, line, field, reason)
        if not self.skip:
            raise err
        self.bad += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(str(err))

    def check_order(self, t: float | int) -> None:
        if self.last_time is None:
            return
        if t < self.last_time:
            raise RowError(self.time_field, f"timestamp decreases: {self.show_time(t)} comes after "
                                             f"{self.show_time(self.last_time)} on line {self.last_time_line}")
        if t == self.last_time and not self.ties_allowed:
            raise RowError(self.time_field, f"duplicate timestamp: equals line {self.last_time_line}")

    def order_ok(self, times: np.ndarray) -> bool:
        if len(times) == 0:
            return True
        steps = np.diff(times)
        if self.ties_allowed:
            return bool((steps >= 0).all()) and (self.last_time is None or times[0] >= self.last_time)
        return bool((steps > 0).all()) and (self.last_time is None or times[0] > self.last_time)

    def keep_row(self, line: int, t: float | int | None, n_in: int, n_out: int,
                 hash_ids: list[int] | None = None) -> None:
        if t is not None:
            self._rows_t.append(t)
            self.last_time = t
            self.last_time_line = line
        self._rows_in.append(n_in)
        self._rows_out.append(n_out)
        if hash_ids is not None:
            self._rows_hash.append(hash_ids)
        self.kept += 1

    def flush_rows(self) -> None:
        if not self._rows_in:
            return
        if self._rows_t:
            self.times.append(np.array(self._rows_t, dtype=self.time_dtype))
        self.inputs.append(np.array(self._rows_in, dtype=np.int64))
        self.outputs.append(np.array(self._rows_out, dtype=np.int64))
        if self._rows_hash:
            hashes = self._rows_hash
            self.hash_lengths.append(np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes)))
            self.hash_values.append(np.array([h for ids in hashes for h in ids], dtype=np.int64))
        self._rows_t, self._rows_in, self._rows_out, self._rows_hash = [], [], [], []

    def add_columns(self, times: np.ndarray | None, inputs: np.ndarray, outputs: np.ndarray,
                    lines: np.ndarray) -> None:
        """Keep validated columns; `lines` holds each row's line number. Trims to max_rows."""
        n = len(inputs) if self.max_rows is None else min(len(inputs), self.max_rows - self.kept)
        if n <= 0:
            return
        self.inputs.append(inputs[:n])
        self.outputs.append(outputs[:n])
        if times is not None:
            self.times.append(times[:n])
            self.last_time = times[n - 1].item()
            self.last_time_line = int(lines[n - 1])
        self.kept += n

    def finish(self, fmt: str, time_unit_per_s: float | None, next_line: int, with_hashes: bool) -> Trace:
        self.flush_rows()
        if self.kept == 0:
            if self.bad:
                why = f"no valid data rows: all {self.bad} data rows are bad (first: {self.reasons[0]})"
            elif self.filtered:
                why = f"no data rows left after dropping {self.filtered} rows with 0 output tokens"
            else:
                why = "no data rows"
            raise TraceFormatError(self.path, next_line, "row", why)
        arrival_s = None
        if time_unit_per_s is not None:
            t = np.concatenate(self.times)
            # Subtract in the native unit first so integer ns stay exact, then
            # divide (correctly rounded) rather than multiply by an inexact 1e-9.
            arrival_s = (t - t[0]).astype(np.float64)
            if time_unit_per_s != 1.0:
                arrival_s /= time_unit_per_s
        hash_ids = None
        if with_hashes:
            offsets = np.zeros(self.kept + 1, dtype=np.int64)
            np.cumsum(np.concatenate(self.hash_lengths), out=offsets[1:])
            hash_ids = (offsets, np.concatenate(self.hash_values))
        return Trace(path=self.path, format=fmt, arrival_s=arrival_s, input_tokens=np.concatenate(self.inputs),
                     output_tokens=np.concatenate(self.outputs), hash_ids=hash_ids, bad_rows=self.bad,
                     bad_row_reasons=tuple(self.reasons), filtered_rows=self.filtered)
