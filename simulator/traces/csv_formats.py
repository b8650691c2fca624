"""The CSV trace formats: Azure (2023, 2024), Vidur/Splitwise, length-only and BurstGPT.

A format is a `CsvLayout`: which columns hold the time, the prompt and the
output tokens, how times are written, whether equal timestamps are allowed and
whether rows with 0 output tokens are failed requests to drop (BurstGPT).
A block of lines is parsed column-wise from its bytes with numpy
(`_csv_fast_block`, `csv_columns`); only a block that fails a vectorised check
is split and re-read row by row (`_csv_slow_block`), the path that defines
what is valid and the only one that reports an error.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from simulator.traces.mooncake import MOONCAKE_KEYS
from simulator.traces.csv_columns import Block, count_column, decimal_column, field_bounds, fixed_width
from simulator.traces.rows import (MAX_SECONDS, MAX_TOKENS, Collector, Lines, Reading, RowError, Window,
                                   parse_count, parse_seconds, shown, split_lines)
from simulator.traces.trace import TraceFormatError
from simulator.traces.wallclock import NS_PER_S, iso_matrix, iso_time_field, show_ns

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
    try:
        names = [c.strip() for c in next(csv.reader([first]), [])]
    except csv.Error:
        # A header csv cannot split (e.g. a field past its size limit) matches no format.
        names = [shown(first)]
    present = set(names)
    for layout in _DETECTION_ORDER:
        if present.issuperset(needed_columns(layout)):
            return layout.fmt, layout, names
    return None, None, names


def describe_formats() -> str:
    return "; ".join(f"{lay.fmt}: {', '.join(needed_columns(lay))}" for lay in _DETECTION_ORDER) + (
        "; mooncake: JSON lines with " + ", ".join(MOONCAKE_KEYS))


def _seconds_column(block: Block, fs: np.ndarray, fe: np.ndarray) -> np.ndarray | None:
    values = decimal_column(block, fs, fe)
    if values is None:
        # Exponents, long mantissas: float() per field, still without a row split.
        data = block.a.tobytes()
        texts = [data[i:j] for i, j in zip(fs.tolist(), fe.tolist())]
        if any(b"_" in t or not t for t in texts):
            return None
        try:
            values = np.array(list(map(float, texts)), dtype=np.float64)
        except ValueError:
            return None
    return values if ((values >= 0.0) & (values <= MAX_SECONDS)).all() else None


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


def read_csv(path: str, lines: Lines, blocks: Iterator[tuple[int, bytes]], layout: CsvLayout,
              names: list[str], skip: bool, max_rows: int | None, window: Window | None) -> Reading:
    for col in needed_columns(layout):
        if names.count(col) > 1:
            raise TraceFormatError(path, 1, col, "column appears more than once in the header")
    ti = names.index(layout.time_column) if layout.time_column else None
    ii = names.index(layout.input_column)
    oi = names.index(layout.output_column)
    time_dtype = None if ti is None else (np.int64 if layout.time_kind == "iso" else np.float64)
    unit = None if ti is None else (NS_PER_S if layout.time_kind == "iso" else 1.0)
    if window is not None and unit is None:
        raise ValueError(f"a time window needs timestamps, and {path} is a '{layout.fmt}' trace without them")
    out = Collector(path, skip, max_rows, layout.ties_allowed, layout.time_column, time_dtype,
                     show_ns if layout.time_kind == "iso" else repr, None if window is None else window.native(unit))

    def parse(start: int, data: bytes) -> None:
        if _csv_fast_block(out, start, data, layout, len(names), ti, ii, oi):
            return
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
        if len(ends) == 0 or ends[-1] != len(data):
            ends = np.append(ends, len(data))
        if len(ends) <= _SLOW_BLOCK_LINES:
            _csv_slow_block(out, start, split_lines(data), layout, names, ti, ii, oi)
            return
        # Narrow down to the part that holds the bad row(s): the row-by-row
        # path is ~50x slower per row, so it should see only a few hundred rows
        # around each bad one, not a whole read chunk.
        step = -(-len(ends) // _SPLIT_WAYS)
        lo = 0
        for first in range(0, len(ends), step):
            if out.full:
                return
            last = min(first + step, len(ends)) - 1
            parse(start + first, data[lo:ends[last]])
            lo = ends[last]

    def steps() -> Iterator[None]:
        for start, block in blocks:
            if out.full:
                break
            parse(start, block)
            yield

    return Reading(out, steps(), layout.fmt, unit, lines, with_hashes=False)


def _csv_fast_block(out: Collector, start: int, data: bytes, layout: CsvLayout, ncols: int,
                    ti: int | None, ii: int, oi: int) -> bool:
    """Parse a block column-wise from its bytes; False (nothing kept) if any row needs a closer look."""
    if not data or b'"' in data:
        return False
    block = Block(data)
    a = block.a
    bounds = field_bounds(a, ncols)
    if bounds is None:
        return False
    fs, fe = bounds
    n = len(fs)
    inputs = count_column(block, fs[:, ii], fe[:, ii])
    outputs = count_column(block, fs[:, oi], fe[:, oi])
    if inputs is None or outputs is None:
        return False
    times = None
    if ti is not None:
        if layout.time_kind == "iso":
            stamps = fixed_width(block, fs[:, ti], fe[:, ti])
            times = None if stamps is None else iso_matrix(stamps)
        else:
            times = _seconds_column(block, fs[:, ti], fe[:, ti])
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
    if ((inputs <= 0) | (inputs > MAX_TOKENS)).any() or ((outputs <= 0) | (outputs > MAX_TOKENS)).any():
        return False
    if times is not None and not out.order_ok(times):
        return False
    if dropped is not None:
        # Only failed requests before the max_rows cut were actually read.
        room = len(inputs) if out.max_rows is None else out.max_rows - out.kept
        last_line = line_of[room - 1] if 0 < room < len(inputs) else start + n - 1
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
        try:
            try:
                fields = next(csv.reader([line])) if '"' in line else line.split(",")
            except csv.Error as e:
                raise RowError("row", f"not a CSV row: {e}") from None
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
