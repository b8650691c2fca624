"""The CSV trace formats: Azure (2023, 2024), Vidur/Splitwise, length-only and BurstGPT.

A format is a `CsvLayout`: which columns hold the time, the prompt and the
output tokens, how times are written, whether equal timestamps are allowed and
whether rows with 0 output tokens are failed requests to drop (BurstGPT).
A block of lines is parsed column-wise with numpy (`_csv_fast_block`); only a
block that fails a vectorised check is split and re-read row by row
(`_csv_slow_block`), the path that defines what is valid and the only one that
reports an error.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from simulator.traces.mooncake import MOONCAKE_KEYS
from simulator.traces.rows import Collector, Lines, RowError, parse_count, parse_seconds
from simulator.traces.trace import Trace, TraceFormatError
from simulator.traces.wallclock import NS_PER_S, iso_column, iso_time_field, show_ns

# A block that fails the column-wise checks is split this many ways until its
# parts are this small, then read row by row.
_SPLIT_WAYS = 8
_SLOW_BLOCK_LINES = 512


@dataclass(frozen=True, slots=True)
class CsvLayout:
    fmt: str
    time_column: str | None
    time_kind: str | None  # "iso": wall-clock text; "seconds": a float
    input_column: str
    output_column: str
    ties_allowed: bool
    drop_zero_output: bool


_AZURE = CsvLayout("azure", "TIMESTAMP", "iso", "ContextTokens", "GeneratedTokens", False, False)
_VIDUR = CsvLayout("vidur", "arrived_at", "seconds", "num_prefill_tokens", "num_decode_tokens", False, False)
_BURSTGPT = CsvLayout("burstgpt", "Timestamp", "seconds", "Request tokens", "Response tokens", True, True)
_LENGTHS = (
    CsvLayout("lengths", None, None, "num_prefill_tokens", "num_decode_tokens", False, False),
    CsvLayout("lengths", None, None, "input_tokens", "output_tokens", False, False),
)
# Checked in this order, so a header carrying both a time column and length
# columns is read with its timestamps.
_DETECTION_ORDER = (_AZURE, _BURSTGPT, _VIDUR) + _LENGTHS


def needed_columns(layout: CsvLayout) -> tuple[str, ...]:
    cols = (layout.input_column, layout.output_column)
    return (layout.time_column,) + cols if layout.time_column else cols


def detect_from_first_line(first: str) -> tuple[str | None, CsvLayout | None, list[str]]:
    if first.lstrip().startswith("{"):
        return "mooncake", None, []
    names = [c.strip() for c in next(csv.reader([first]), [])]
    present = set(names)
    for layout in _DETECTION_ORDER:
        if present.issuperset(needed_columns(layout)):
            return layout.fmt, layout, names
    return None, None, names


def describe_formats() -> str:
    return "; ".join(f"{lay.fmt}: {', '.join(needed_columns(lay))}" for lay in _DETECTION_ORDER) + (
        "; mooncake: JSON lines with " + ", ".join(MOONCAKE_KEYS))


def _counts_column(col: list[str]) -> np.ndarray | None:
    joined = "".join(col)
    # One C-level scan proves every field is a non-empty run of ASCII digits;
    # anything else (signs, blanks, overflow) is for the row-by-row path to name.
    if not (joined.isascii() and joined.isdigit()) or "" in col:
        return None
    try:
        return np.array(col, dtype=np.int64)
    except OverflowError:
        return None


def _seconds_column(col: list[str]) -> np.ndarray | None:
    joined = "".join(col)
    if "_" in joined or "" in col:
        return None
    try:
        values = np.array(list(map(float, col)), dtype=np.float64)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


def resolve_layout(path: str, fmt: str | None, detected: str | None, detected_layout: CsvLayout | None,
                    names: list[str]) -> CsvLayout:
    hint = f"; the content looks like '{detected}'" if detected else ""
    if fmt is None:
        if detected_layout is None:
            raise TraceFormatError(path, 1, "header", f"unknown format: columns {names} match none of "
                                   f"({describe_formats()})")
        return detected_layout
    candidates = _LENGTHS if fmt == "lengths" else [
        lay for lay in (_AZURE, _VIDUR, _BURSTGPT) if lay.fmt == fmt]
    if detected == "mooncake":
        raise TraceFormatError(path, 1, needed_columns(candidates[0])[0], f"format '{fmt}' expects a CSV header, but "
                               "line 1 is a JSON object; the content looks like 'mooncake'")
    present = set(names)
    for layout in candidates:
        if present.issuperset(needed_columns(layout)):
            return layout
    missing = [c for c in needed_columns(candidates[0]) if c not in present]
    raise TraceFormatError(path, 1, missing[0], f"column missing for format '{fmt}' "
                           f"(header has {names}){hint}")


def read_csv(path: str, lines: Lines, blocks: Iterator[tuple[int, list[str]]], layout: CsvLayout,
              names: list[str], skip: bool, max_rows: int | None) -> Trace:
    for col in needed_columns(layout):
        if names.count(col) > 1:
            raise TraceFormatError(path, 1, col, "column appears more than once in the header")
    ti = names.index(layout.time_column) if layout.time_column else None
    ii = names.index(layout.input_column)
    oi = names.index(layout.output_column)
    time_dtype = None if ti is None else (np.int64 if layout.time_kind == "iso" else np.float64)
    out = Collector(path, skip, max_rows, layout.ties_allowed, layout.time_column, time_dtype,
                     show_ns if layout.time_kind == "iso" else repr)

    def parse(start: int, block: list[str]) -> None:
        if _csv_fast_block(out, start, block, layout, len(names), ti, ii, oi):
            return
        if len(block) <= _SLOW_BLOCK_LINES:
            _csv_slow_block(out, start, block, layout, names, ti, ii, oi)
            return
        # Narrow down to the part that holds the bad row(s): the row-by-row
        # path is ~10x slower per row, so it should see only a few hundred rows
        # around each bad one, not a whole read chunk.
        step = -(-len(block) // _SPLIT_WAYS)
        for lo in range(0, len(block), step):
            if out.full:
                return
            parse(start + lo, block[lo:lo + step])

    for start, block in blocks:
        if out.full:
            break
        parse(start, block)
    unit = None if ti is None else (NS_PER_S if layout.time_kind == "iso" else 1.0)
    return out.finish(layout.fmt, unit, lines.next_line, with_hashes=False)


def _csv_fast_block(out: Collector, start: int, block: list[str], layout: CsvLayout, ncols: int,
                    ti: int | None, ii: int, oi: int) -> bool:
    """Parse a block column-wise; False (nothing kept) if any row needs a closer look."""
    text = "\n".join(block)
    if '"' in text or "" in block:
        return False
    n = len(block)
    # Every row must have exactly ncols fields. Counting the commas before each
    # line end checks that without a Python list per row (splitting row by row
    # costs ~1 us a row plus garbage-collector time at millions of rows).
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    commas = np.flatnonzero(raw == 44)
    if len(commas) != n * (ncols - 1):
        return False
    if ncols > 1:
        ends = np.append(np.flatnonzero(raw == 10), len(raw))
        if not (np.diff(np.searchsorted(commas, ends), prepend=0) == ncols - 1).all():
            return False
    flat = text.replace("\n", ",").split(",")
    inputs = _counts_column(flat[ii::ncols])
    outputs = _counts_column(flat[oi::ncols])
    if inputs is None or outputs is None:
        return False
    times = None
    if ti is not None:
        tcol = flat[ti::ncols]
        times = iso_column(tcol) if layout.time_kind == "iso" else _seconds_column(tcol)
        if times is None:
            return False
    line_of = np.arange(start, start + n)
    dropped = None
    if layout.drop_zero_output:
        keep = outputs != 0
        if not keep.all():
            dropped = np.flatnonzero(~keep)
            inputs, outputs, line_of = inputs[keep], outputs[keep], line_of[keep]
            times = None if times is None else times[keep]
    if (inputs <= 0).any() or (outputs <= 0).any():
        return False
    if times is not None and not out.order_ok(times):
        return False
    if dropped is not None:
        # Only failed requests before the max_rows cut were actually read.
        room = len(inputs) if out.max_rows is None else out.max_rows - out.kept
        last_line = line_of[room - 1] if room < len(inputs) else start + n - 1
        out.filtered += int(np.count_nonzero(dropped + start <= last_line))
    out.add_columns(times, inputs, outputs, line_of)
    return True


def _csv_slow_block(out: Collector, start: int, block: list[str], layout: CsvLayout, names: list[str],
                    ti: int | None, ii: int, oi: int) -> None:
    ncols = len(names)
    for k, line in enumerate(block):
        if out.full:
            break
        lineno = start + k
        if not line.strip():
            continue
        fields = next(csv.reader([line])) if '"' in line else line.split(",")
        try:
            if len(fields) < ncols:
                raise RowError(names[len(fields)], f"missing (row has {len(fields)} fields, header has {ncols})")
            if len(fields) > ncols:
                raise RowError("row", f"row has {len(fields)} fields, header has {ncols}")
            t = None
            if ti is not None:
                if layout.time_kind == "iso":
                    t = iso_time_field(fields[ti], layout.time_column)
                else:
                    t = parse_seconds(fields[ti], layout.time_column)
            n_in = parse_count(fields[ii], layout.input_column)
            n_out = parse_count(fields[oi], layout.output_column)
            if layout.drop_zero_output and n_out == 0:
                out.filtered += 1
                continue
            if n_in == 0:
                raise RowError(layout.input_column, "zero tokens")
            if n_out == 0:
                raise RowError(layout.output_column, "zero tokens")
            if t is not None:
                out.check_order(t)
        except RowError as e:
            out.bad_row(lineno, e.field, e.reason)
            continue
        out.keep_row(lineno, t, n_in, n_out)
    out.flush_rows()
