"""What every trace reader shares: opening files, blocks of lines, field parsers, kept rows.

Files are opened by content (gzip magic, byte-order mark), read in blocks of
about `CHUNK_BYTES` bytes of whole lines with their physical line numbers;
`Collector` keeps the valid rows as columns, checks timestamp order across
blocks, applies a time window, and raises or counts (with `skip_bad_rows`)
each bad row as a `TraceFormatError` naming file, line and field.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Iterator

import numpy as np

from simulator.traces.trace import SkippedRow, Trace, TraceBlock, TraceFileError, TraceFormatError

# Bytes per read. About 25k rows of the Azure CSV: big enough to amortise
# the per-block numpy calls, small enough that a bad row sends only one modest
# block down the row-by-row path.
CHUNK_BYTES = 1 << 20
# How many skipped rows a Trace keeps with their reasons (about 200 bytes each,
# so at most ~2 MB); the count, and the count per field, are always exact.
MAX_SKIPPED_KEPT = 10_000
INT64_MAX = (1 << 63) - 1
# A request's prompt or output: no model has a context near 10M tokens, and the
# bound keeps sums over millions of requests far from int64 overflow.
MAX_TOKENS = 10_000_000
# Float timestamps in seconds (vidur, burstgpt): 0 .. ~317 years. A larger
# value is a unit mistake (Unix ms read as s) or garbage, not an arrival time.
MAX_SECONDS = 1e10
# Echoed field values are cut to this many characters so a 1 MB field makes a
# one-line error, not a 1 MB one.
MAX_SHOWN = 64


def shown(text: object) -> str:
    """repr(text), cut to about MAX_SHOWN characters."""
    r = repr(text) if not isinstance(text, str) or len(text) <= 4 * MAX_SHOWN else repr(text[:4 * MAX_SHOWN])
    return r if len(r) <= MAX_SHOWN else r[:MAX_SHOWN - 4] + "...'"


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
        raise RowError(field, f"not an integer: {shown(text)}")
    # Measure before int(): Python refuses to convert more than 4,300 digits.
    significant = digits.lstrip("0")
    if s[0] == "-" and significant:
        raise RowError(field, f"negative: {shown(text)}")
    if len(significant) > 8 or int(significant or "0") > MAX_TOKENS:
        raise RowError(field, f"too large: {shown(text)} (a request has at most {MAX_TOKENS:,} tokens)")
    return int(significant or "0")


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
        raise RowError(field, f"not a number: {shown(text)}") from None
    if not math.isfinite(value):
        raise RowError(field, f"not finite: {shown(text)}")
    if not 0.0 <= value <= MAX_SECONDS:
        raise RowError(field, f"out of range: {shown(text)} (seconds in [0, {MAX_SECONDS:g}])")
    return value


def open_bytes(path: str) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with the gzip magic."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"trace file not found: {path}")
    if os.path.isdir(path):
        raise TraceFileError(path, "is a directory; give a trace file (CSV or JSON lines, .gz ok)")
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
        return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    except OSError as e:
        raise TraceFileError(path, e.strerror or str(e)) from None


def split_lines(block: bytes) -> list[str]:
    """A block's lines as text; undecodable bytes become U+FFFD, which the
    row-by-row path reports as a bad field with its line number."""
    lines = block.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


class Lines:
    """Reads a trace as blocks of whole lines, with the number of the first.

    `byte_blocks` yields (first line number, bytes ending in a newline except
    at the end of the file), about CHUNK_BYTES each, with every line end
    written as one b"\\n" (\\r\\n and a lone \\r are line ends too, as in
    Python's universal newlines) and a leading UTF-8 byte-order mark dropped.
    `blocks` yields the same lines as text.
    """

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path = path
        self.f = f
        self.next_line = 1

    def _read(self) -> bytes:
        try:
            return self.f.read(CHUNK_BYTES)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise TraceFormatError(self.path, self.next_line, "gzip",
                                   f"corrupt or truncated gzip stream: {e}") from None

    def _emit(self, block: bytes) -> tuple[int, bytes]:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = self.next_line
        self.next_line += block.count(b"\n") + (not block.endswith(b"\n"))
        return start, block

    def byte_blocks(self) -> Iterator[tuple[int, bytes]]:
        carry = b""
        first = True
        while True:
            chunk = self._read()
            if first:
                chunk = chunk.removeprefix(b"\xef\xbb\xbf")
                first = False
            if not chunk:
                if carry:
                    yield self._emit(carry)
                return
            data = carry + chunk
            # Cut after the last \n; a \r just before the cut would be cut from its \n.
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield self._emit(data[:cut])

    def blocks(self) -> Iterator[tuple[int, list[str]]]:
        for start, block in self.byte_blocks():
            yield start, split_lines(block)


@dataclass(frozen=True, slots=True)
class Window:
    """Rows whose time lies in [start_s, start_s + duration_s), in seconds from the first valid row."""

    start_s: float = 0.0
    duration_s: float | None = None

    def native(self, unit_per_s: float) -> tuple[float, float]:
        end = math.inf if self.duration_s is None else (self.start_s + self.duration_s) * unit_per_s
        return self.start_s * unit_per_s, end


class Reading:
    """A file being read: each step of `steps` parses one block of lines into `out`.

    `trace()` reads to the end and returns the whole Trace; `blocks()` hands
    the kept rows over block by block instead, so memory stays that of one
    block; both run the very same parsing and checks.
    """

    def __init__(self, out: Collector, steps: Iterator[None], fmt: str, time_unit_per_s: float | None,
                 lines: Lines, with_hashes: bool) -> None:
        self.out = out
        self.steps = steps
        self.fmt = fmt
        self.unit = time_unit_per_s
        self.lines = lines
        self.with_hashes = with_hashes

    def trace(self) -> Trace:
        for _ in self.steps:
            pass
        return self.out.finish(self.fmt, self.unit, self.lines.next_line, self.with_hashes)

    def blocks(self) -> Iterator[TraceBlock]:
        for _ in self.steps:
            block = self.out.drain(self.unit)
            if block is not None:
                yield block
        self.out.check_kept(self.lines.next_line)


class Collector:
    """Kept columns, bad-row bookkeeping, the order check and the time window across blocks.

    Clean blocks arrive as whole columns (`add_columns`); the row-by-row path
    keeps rows one at a time (`keep_row`) into lists flushed once per block,
    because a numpy array per row would cost more than parsing the row.
    Rows before the window are read (their order is checked) but not kept;
    the first row past it ends the reading (`full`).
    """

    def __init__(self, path: str, skip_bad_rows: bool, max_rows: int | None, ties_allowed: bool,
                 time_field: str | None, time_dtype: type | None,
                 show_time: Callable[[float | int], str] = repr,
                 window: tuple[float, float] | None = None) -> None:
        self.path = path
        self.window = window
        self.origin: float | int | None = None
        self.before_window = 0
        self.past_window = False
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
        self.skipped: list[SkippedRow] = []
        self.bad_by_field: dict[str, int] = {}
        self.filtered = 0
        self.kept_origin: float | int | None = None  # first kept row's time, for drained blocks
        self.last_time: float | int | None = None
        self.last_time_line = 0
        self._rows_t: list = []
        self._rows_in: list[int] = []
        self._rows_out: list[int] = []
        self._rows_hash: list[list[int]] = []

    @property
    def full(self) -> bool:
        return self.past_window or (self.max_rows is not None and self.kept >= self.max_rows)

    def _in_window(self, t: float | int) -> bool:
        if self.origin is None:
            self.origin = t
        rel = t - self.origin
        if rel >= self.window[1]:
            self.past_window = True
            return False
        if rel < self.window[0]:
            self.before_window += 1
            return False
        return True

    def bad_row(self, line: int, field: str, reason: str) -> None:
        if not self.skip:
            raise TraceFormatError(self.path, line, field, reason, skippable=True)
        self.bad += 1
        self.bad_by_field[field] = self.bad_by_field.get(field, 0) + 1
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(SkippedRow(line, field, reason))

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
        if self.window is not None and not self._in_window(t):
            self.last_time, self.last_time_line = t, line
            return
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
        """Keep validated columns; `lines` holds each row's line number. Trims to the window and max_rows."""
        if self.window is not None:
            if self.origin is None:
                self.origin = times[0].item()
            self.last_time, self.last_time_line = times[-1].item(), int(lines[-1])
            rel = times - self.origin
            lo, hi = np.searchsorted(rel, self.window, side="left")
            self.before_window += int(lo)
            self.past_window = hi < len(times)
            times, inputs, outputs, lines = times[lo:hi], inputs[lo:hi], outputs[lo:hi], lines[lo:hi]
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

    def drain(self, time_unit_per_s: float | None) -> TraceBlock | None:
        """The rows kept since the last drain, as one block (None when there are none).

        Arrival times are taken from the first kept row with the same arithmetic
        as `finish`, so the blocks of a file join to the very columns `finish`
        would return.
        """
        self.flush_rows()
        if not self.inputs:
            return None
        arrival_s = None
        if time_unit_per_s is not None:
            t = self.times[0] if len(self.times) == 1 else np.concatenate(self.times)
            if self.kept_origin is None:
                self.kept_origin = t[0].item()
            arrival_s = (t - t.dtype.type(self.kept_origin)).astype(np.float64)
            if time_unit_per_s != 1.0:
                arrival_s /= time_unit_per_s
        inputs = self.inputs[0] if len(self.inputs) == 1 else np.concatenate(self.inputs)
        outputs = self.outputs[0] if len(self.outputs) == 1 else np.concatenate(self.outputs)
        hash_ids = None
        if self.hash_lengths:
            offsets = np.zeros(len(inputs) + 1, dtype=np.int64)
            np.cumsum(np.concatenate(self.hash_lengths), out=offsets[1:])
            hash_ids = (offsets, np.concatenate(self.hash_values))
        for kept in (self.times, self.inputs, self.outputs, self.hash_lengths, self.hash_values):
            kept.clear()
        return TraceBlock(arrival_s, inputs, outputs, hash_ids)

    def check_kept(self, next_line: int) -> None:
        """Raise the reader's error for a file with no row to keep."""
        if self.kept:
            return
        if self.bad:
            first = self.skipped[0]
            why = (f"no valid data rows: all {self.bad} data rows are bad (first: line {first.line}, "
                   f"field '{first.field}': {first.reason})")
        elif self.filtered:
            why = f"no data rows left after dropping {self.filtered} rows with 0 output tokens"
        else:
            why = "no data rows"
        if self.window is not None and self.origin is not None:
            why = f"no data rows in the time window ({self.before_window:,} rows before it)"
        raise TraceFormatError(self.path, next_line, "row", why)

    def finish(self, fmt: str, time_unit_per_s: float | None, next_line: int, with_hashes: bool) -> Trace:
        self.flush_rows()
        self.check_kept(next_line)
        # Each column is joined and its blocks dropped before the next one: at
        # tens of millions of rows, holding all blocks and all joins at once
        # would double the peak memory.
        arrival_s = None
        if time_unit_per_s is not None:
            t = np.concatenate(self.times)
            self.times.clear()
            # Subtract in the native unit first so integer ns stay exact, then
            # divide (correctly rounded) rather than multiply by an inexact 1e-9.
            t -= t[0]
            arrival_s = t.astype(np.float64)
            del t
            if time_unit_per_s != 1.0:
                arrival_s /= time_unit_per_s
        inputs = np.concatenate(self.inputs)
        self.inputs.clear()
        outputs = np.concatenate(self.outputs)
        self.outputs.clear()
        hash_ids = None
        if with_hashes:
            offsets = np.zeros(self.kept + 1, dtype=np.int64)
            np.cumsum(np.concatenate(self.hash_lengths), out=offsets[1:])
            hash_ids = (offsets, np.concatenate(self.hash_values))
        return Trace(path=self.path, format=fmt, arrival_s=arrival_s, input_tokens=inputs,
                     output_tokens=outputs, hash_ids=hash_ids, bad_rows=self.bad,
                     skipped_rows=tuple(self.skipped), bad_rows_by_field=tuple(sorted(self.bad_by_field.items())),
                     filtered_rows=self.filtered, rows_before_window=self.before_window)
