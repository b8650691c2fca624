"""A trace read in blocks: checked once up front, then handed over block by block.

`read_trace` holds every kept row (24 bytes a row; a week of Azure 2024 is
tens of millions of rows, GBs before a replay starts). `scan_trace` reads the
file once with the same parsing and checks and keeps only what a workload
needs to know in advance (rows, span, the bad-row report) as a `TraceFile`;
`TraceFile.blocks()` reads it again and yields its rows one block at a time
(~25k rows per MB of CSV), so a replay holds one block of the trace, not all
of it. A bad row fails the scan, before any simulation, exactly as
`read_trace` would fail; the blocks join to `read_trace`'s very columns.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from simulator.traces.rows import open_bytes
from simulator.traces.trace import SkippedRow, Trace, TraceBlock, TraceFileError, TraceFormatError

__all__ = ["TraceFile", "rebatch", "scan_trace"]


@dataclass(frozen=True, slots=True, eq=False)
class TraceFile:
    """A trace file's kept rows, described but not held; `blocks()` reads them.

    The report fields (rows, bad_rows, skipped_rows, ...) mean what they mean
    on `Trace`. `span_s` is None without timestamps.
    """

    path: str
    format: str
    rows: int
    span_s: float | None
    bad_rows: int
    skipped_rows: tuple[SkippedRow, ...]
    bad_rows_by_field: tuple[tuple[str, int], ...]
    filtered_rows: int
    rows_before_window: int
    # How the file was read; `blocks()` reads it the same way.
    read_format: str | None
    skip_bad_rows: bool
    max_rows: int | None
    start_s: float
    duration_s: float | None
    # Size and modification time at the scan: a file changed since is refused.
    signature: tuple[int, int]

    @property
    def has_timestamps(self) -> bool:
        return self.span_s is not None

    @property
    def has_hashes(self) -> bool:
        return self.format == "mooncake"

    @property
    def mean_rate_rps(self) -> float | None:
        """(rows - 1) / span, as `Trace.mean_rate_rps`."""
        if self.span_s is None or self.span_s <= 0.0:
            return None
        return (self.rows - 1) / self.span_s

    @property
    def bad_row_reasons(self) -> tuple[str, ...]:
        return tuple(str(TraceFormatError(self.path, *row)) for row in self.skipped_rows)

    def _read_args(self, max_rows: int | None = None) -> dict:
        return dict(fmt=self.read_format, skip_bad_rows=self.skip_bad_rows,
                    max_rows=self.max_rows if max_rows is None else max_rows, start_s=self.start_s,
                    duration_s=self.duration_s)

    def blocks(self) -> Iterator[TraceBlock]:
        """The kept rows in file order, a block at a time (the file is read again)."""
        if _signature(self.path) != self.signature:
            raise TraceFileError(self.path, "changed since it was scanned; run again")
        seen = 0
        for block in _blocks(self.path, **self._read_args()):
            seen += block.rows
            yield block
        if seen != self.rows:
            raise TraceFileError(self.path, f"changed while being read: {seen:,} rows, {self.rows:,} at the scan")

    def read(self) -> Trace:
        """All kept rows in memory (for random access: resampled lengths, sessions)."""
        from simulator.traces import read_trace

        if _signature(self.path) != self.signature:
            raise TraceFileError(self.path, "changed since it was scanned; run again")
        return read_trace(self.path, **self._read_args())

    def first(self, n: int) -> TraceFile:
        """The first n kept rows (n <= rows) as a TraceFile; scans those rows again unless n == rows."""
        if n == self.rows:
            return self
        if not 1 <= n < self.rows:
            raise ValueError(f"first {n:,} of {self.rows:,} rows")
        return scan_trace(self.path, **self._read_args(max_rows=n))


def _signature(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _blocks(path: str, fmt: str | None, skip_bad_rows: bool, max_rows: int | None, start_s: float,
            duration_s: float | None, report: list | None = None, on_block=None) -> Iterator[TraceBlock]:
    """The kept rows of `read_trace(path, ...)` block by block; the finished Reading goes into `report`."""
    from simulator.traces import check_read_arguments, open_reading

    window = check_read_arguments(fmt, max_rows, start_s, duration_s)
    with open_bytes(path) as f:
        reading = open_reading(path, f, fmt, skip_bad_rows, max_rows, window)
        for block in reading.blocks():
            if on_block is not None:
                on_block(f)
            yield block
    if report is not None:
        report.append(reading)


def scan_trace(path: str | os.PathLike, fmt: str | None = None, *, skip_bad_rows: bool = False,
               max_rows: int | None = None, start_s: float = 0.0, duration_s: float | None = None,
               progress: bool = False) -> TraceFile:
    """Read a trace as `read_trace` does (same arguments, same checks, same errors) and keep only
    its description. progress: a bar over the file's bytes on stderr (tqdm)."""
    path = os.fspath(path)
    signature = _signature(path) if os.path.isfile(path) else (0, 0)
    bar = _ByteBar(signature[0], progress)
    rows = 0
    last_s = None
    report: list = []
    try:
        for block in _blocks(path, fmt, skip_bad_rows, max_rows, start_s, duration_s, report, bar.seen):
            rows += block.rows
            if block.arrival_s is not None:
                last_s = block.arrival_s[-1]
    finally:
        bar.close()
    if _signature(path) != signature:
        raise TraceFileError(path, "changed while being scanned; run again")
    reading = report[0]
    out = reading.out
    # Trace.span_s is arrival_s[-1] - arrival_s[0], and the first kept row is at 0.0.
    span_s = None if last_s is None else float(last_s - 0.0)
    return TraceFile(path=path, format=reading.fmt, rows=rows, span_s=span_s, bad_rows=out.bad,
                     skipped_rows=tuple(out.skipped), bad_rows_by_field=tuple(sorted(out.bad_by_field.items())),
                     filtered_rows=out.filtered, rows_before_window=out.before_window, read_format=fmt,
                     skip_bad_rows=skip_bad_rows, max_rows=max_rows, start_s=start_s, duration_s=duration_s,
                     signature=signature)


class _ByteBar:
    """Bytes of the file read so far (compressed bytes for gzip), as a tqdm bar on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        self._last = 0
        if enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading trace", file=sys.stderr,
                             mininterval=0.25, dynamic_ncols=True, leave=False)

    def seen(self, f: IO[bytes]) -> None:
        if self._bar is None:
            return
        raw = getattr(f, "fileobj", None) or f  # a GzipFile reads from .fileobj
        pos = raw.tell()
        if pos > self._last:
            self._bar.update(pos - self._last)
            self._last = pos

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def rebatch(blocks: Iterator[TraceBlock], size: int, limit: int | None = None) -> Iterator[TraceBlock]:
    """The rows of `blocks` cut into blocks of exactly `size` rows (the last may be shorter),
    stopping after `limit` rows (the source is closed then, so no row past it is read)."""
    parts: list[TraceBlock] = []
    have = 0
    done = 0
    try:
        for block in blocks:
            pos = 0
            if limit is not None:
                block = _slice(block, 0, min(block.rows, limit - done - have))
            while pos < block.rows:
                take = min(size - have, block.rows - pos)
                parts.append(_slice(block, pos, pos + take))
                have += take
                pos += take
                if have == size:
                    yield _join(parts)
                    done += have
                    parts, have = [], 0
            if limit is not None and done + have >= limit:
                break
        if parts:
            yield _join(parts)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _slice(b: TraceBlock, lo: int, hi: int) -> TraceBlock:
    if lo == 0 and hi == b.rows:
        return b
    hashes = None if b.hash_ids is None else ragged_slice(b.hash_ids, lo, hi)
    return TraceBlock(None if b.arrival_s is None else b.arrival_s[lo:hi], b.input_tokens[lo:hi],
                      b.output_tokens[lo:hi], hashes)


def ragged_slice(ragged: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows lo..hi of per-row lists stored as (offsets, values), offsets rebased to 0."""
    offsets, values = ragged
    return offsets[lo:hi + 1] - offsets[lo], values[offsets[lo]:offsets[hi]]


def ragged_concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) lists one after another, as one."""
    lengths = np.concatenate([np.diff(offsets) for offsets, _ in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.concatenate([values for _, values in parts])


def _join(parts: list[TraceBlock]) -> TraceBlock:
    if len(parts) == 1:
        return parts[0]
    hashes = None if parts[0].hash_ids is None else ragged_concat([p.hash_ids for p in parts])
    arrival = None if parts[0].arrival_s is None else np.concatenate([p.arrival_s for p in parts])
    return TraceBlock(arrival, np.concatenate([p.input_tokens for p in parts]),
                      np.concatenate([p.output_tokens for p in parts]), hashes)
