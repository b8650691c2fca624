"""Readers for public LLM-inference request traces.

Every reader turns a file into one `Trace`: arrival times (seconds since the
first kept request), input and output token counts, and, for Mooncake traces,
the prefix-block hash ids of each prompt. Formats are recognised from the
content (CSV header or first JSON line), never from the file name, so renamed
or gzipped copies read the same. One module per kind of format:
`csv_formats` (azure, vidur, lengths, burstgpt; wall-clock times in
`wallclock`) and `mooncake` (JSON lines); `rows` holds what they share.
`read_trace` returns every kept row in memory; `scan_trace` (`stream`) checks
the file the same way and returns a `TraceFile` whose rows are read again,
block by block, when a workload replays them.

Rules shared by all formats (a broken row raises `TraceFormatError` naming file,
line and field, or is skipped and counted with `skip_bad_rows=True`):
- token counts are plain non-negative integers and must be at least 1 (a
  request with no prompt or no output has nothing to schedule) and at most
  10M (`rows.MAX_TOKENS`);
- timestamps are finite and in range: wall-clock years 1970-2261, seconds in
  [0, 1e10], Mooncake ms in [0, 1e13];
- timestamps never decrease. Equal timestamps are duplicates (an error) in
  `azure` and `vidur`, whose ticks are 100 ns / 1 us and float seconds, but
  legitimate in `burstgpt` (1 s ticks) and `mooncake` (1 ms ticks; the
  published Mooncake traces put dozens of requests on the same tick);
- blank lines are ignored; line numbers are physical lines, header = line 1.

Format semantics that drop rows without calling them errors are counted in
`Trace.filtered_rows`: BurstGPT logs failed requests with 0 response tokens
(about 1.8% of BurstGPT_1.csv, per its README: 1,429.7k rows with failures vs
1,404.3k without).
"""

from __future__ import annotations

import math
import os
from typing import IO, Iterator

from simulator.traces.csv_formats import describe_formats, detect_from_first_line, read_csv, resolve_layout
from simulator.traces.mooncake import read_mooncake
from simulator.traces.rows import Lines, Reading, Window, open_bytes, split_lines
from simulator.traces.stream import TraceFile, scan_trace
from simulator.traces.trace import (SkippedRow, Trace, TraceBlock, TraceFileError, TraceFormatError,
                                    builtin_trace_path)

__all__ = [
    "FORMATS",
    "SkippedRow",
    "Trace",
    "TraceBlock",
    "TraceFile",
    "TraceFileError",
    "TraceFormatError",
    "builtin_trace_path",
    "detect_format",
    "read_trace",
    "scan_trace",
]

FORMATS: tuple[str, ...] = ("azure", "vidur", "lengths", "burstgpt", "mooncake")


def detect_format(path: str | os.PathLike) -> str:
    """The format `read_trace` would pick for this file (reads only its first line)."""
    path = os.fspath(path)
    with open_bytes(path) as f:
        first = next(Lines(path, f).blocks(), (1, [""]))[1][0]
    if not first.strip():
        raise TraceFormatError(path, 1, "header", "file is empty" if not first else "line 1 is blank")
    fmt, _, names = detect_from_first_line(first)
    if fmt is None:
        raise TraceFormatError(path, 1, "header", f"unknown format: columns {names} match none of "
                               f"({describe_formats()})")
    return fmt


def read_trace(path: str | os.PathLike, fmt: str | None = None, *, skip_bad_rows: bool = False,
               max_rows: int | None = None, start_s: float = 0.0, duration_s: float | None = None) -> Trace:
    """Read a request trace (plain or gzipped) into columns.

    fmt: one of FORMATS to insist on a format; None detects it from the
    content. skip_bad_rows: drop malformed rows (counted in `bad_rows`) instead
    of raising TraceFormatError. max_rows: stop after this many kept rows
    (rows past the cut are not read, so they are not validated either).
    start_s, duration_s: keep only rows whose time, in seconds after the first
    valid row's, lies in [start_s, start_s + duration_s) (no end when None);
    rows before it are read but not kept, rows after it are not read.
    `scan_trace` reads the same rows without holding them (`TraceFile`).
    """
    path = os.fspath(path)
    window = check_read_arguments(fmt, max_rows, start_s, duration_s)
    with open_bytes(path) as f:
        return open_reading(path, f, fmt, skip_bad_rows, max_rows, window).trace()


def check_read_arguments(fmt: str | None, max_rows: int | None, start_s: float,
                         duration_s: float | None) -> Window | None:
    """ValueError for a bad argument of `read_trace`; the time window they give (None: all rows)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if max_rows is not None and (isinstance(max_rows, bool) or int(max_rows) != max_rows or max_rows < 1):
        raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    for name, value in (("start_s", start_s), ("duration_s", duration_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0 or (name == "duration_s" and value == 0)):
            raise ValueError(f"{name} must be a finite number >= 0 (> 0 for duration_s), got {value!r}")
    return None if not start_s and duration_s is None else Window(float(start_s), duration_s)


def open_reading(path: str, f: IO[bytes], fmt: str | None, skip_bad_rows: bool, max_rows: int | None,
                 window: Window | None) -> Reading:
    """The reader for the open file `f`, its header read and its format resolved."""
    lines = Lines(path, f)
    blocks = lines.byte_blocks()
    first_block = next(blocks, None)
    if first_block is None:
        raise TraceFormatError(path, 1, "header", "file is empty")
    _, data = first_block
    head, _, rest = data.partition(b"\n")
    first = head.decode("utf-8", errors="replace")
    if not first.strip():
        raise TraceFormatError(path, 1, "header", "line 1 is blank; expected a CSV header or a JSON object")
    detected, layout, names = detect_from_first_line(first)
    if fmt == "mooncake" or (fmt is None and detected == "mooncake"):
        if detected != "mooncake":
            hint = f"; the content looks like '{detected}'" if detected else ""
            raise TraceFormatError(path, 1, "json",
                                   f"format 'mooncake' expects JSON lines, but line 1 is not a JSON object{hint}")

        def text_blocks() -> Iterator[tuple[int, list[str]]]:
            yield 1, split_lines(data)
            for start, block in blocks:
                yield start, split_lines(block)

        return read_mooncake(path, lines, text_blocks(), skip_bad_rows, max_rows, window)
    layout = resolve_layout(path, fmt, detected, layout, names)

    def after_header() -> Iterator[tuple[int, bytes]]:
        if rest:
            yield 2, rest
        yield from blocks

    return read_csv(path, lines, after_header(), layout, names, skip_bad_rows, max_rows, window)
