"""Readers for public LLM-inference request traces.

Every reader turns a file into one `Trace`: arrival times (seconds since the
first kept request), input and output token counts, and, for Mooncake traces,
the prefix-block hash ids of each prompt. Formats are recognised from the
content (CSV header or first JSON line), never from the file name, so renamed
or gzipped copies read the same. One module per kind of format:
`csv_formats` (azure, vidur, lengths, burstgpt; wall-clock times in
`wallclock`) and `mooncake` (JSON lines); `rows` holds what they share.

Rules shared by all formats (a broken row raises `TraceFormatError` naming file,
line and field, or is skipped and counted with `skip_bad_rows=True`):
- token counts are plain non-negative integers and must be at least 1: a
  request with no prompt or no output has nothing to schedule;
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

import os
from typing import Iterator

from simulator.traces.csv_formats import describe_formats, detect_from_first_line, read_csv, resolve_layout
from simulator.traces.mooncake import read_mooncake
from simulator.traces.rows import Lines, open_text
from simulator.traces.trace import Trace, TraceFormatError, builtin_trace_path

__all__ = [
    "FORMATS",
    "Trace",
    "TraceFormatError",
    "builtin_trace_path",
    "detect_format",
    "read_trace",
]

FORMATS: tuple[str, ...] = ("azure", "vidur", "lengths", "burstgpt", "mooncake")


def detect_format(path: str | os.PathLike) -> str:
    """The format `read_trace` would pick for this file (reads only its first line)."""
    path = os.fspath(path)
    with open_text(path) as f:
        first = f.readline().rstrip("\n")
    if not first.strip():
        raise TraceFormatError(path, 1, "header", "file is empty" if not first else "line 1 is blank")
    fmt, _, names = detect_from_first_line(first)
    if fmt is None:
        raise TraceFormatError(path, 1, "header", f"unknown format: columns {names} match none of "
                               f"({describe_formats()})")
    return fmt


def read_trace(path: str | os.PathLike, fmt: str | None = None, *, skip_bad_rows: bool = False,
               max_rows: int | None = None) -> Trace:
    """Read a request trace (plain or gzipped) into columns.

    fmt: one of FORMATS to insist on a format; None detects it from the
    content. skip_bad_rows: drop malformed rows (counted in `bad_rows`) instead
    of raising TraceFormatError. max_rows: stop after this many kept rows
    (rows past the cut are not read, so they are not validated either).
    """
    path = os.fspath(path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if max_rows is not None and (isinstance(max_rows, bool) or int(max_rows) != max_rows or max_rows < 1):
        raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    with open_text(path) as f:
        lines = Lines(path, f)
        blocks = lines.blocks()
        first_block = next(blocks, None)
        if first_block is None:
            raise TraceFormatError(path, 1, "header", "file is empty")
        _, first_lines = first_block
        first = first_lines[0]
        if not first.strip():
            raise TraceFormatError(path, 1, "header", "line 1 is blank; expected a CSV header or a JSON object")
        detected, layout, names = detect_from_first_line(first)
        if fmt == "mooncake" or (fmt is None and detected == "mooncake"):
            if detected != "mooncake":
                hint = f"; the content looks like '{detected}'" if detected else ""
                raise TraceFormatError(path, 1, "json",
                                       f"format 'mooncake' expects JSON lines, but line 1 is not a JSON object{hint}")

            def with_first() -> Iterator[tuple[int, list[str]]]:
                yield first_block
                yield from blocks

            return read_mooncake(path, lines, with_first(), skip_bad_rows, max_rows)
        layout = resolve_layout(path, fmt, detected, layout, names)

        def after_header() -> Iterator[tuple[int, list[str]]]:
            if len(first_lines) > 1:
                yield 2, first_lines[1:]
            yield from blocks

        return read_csv(path, lines, after_header(), layout, names, skip_bad_rows, max_rows)
