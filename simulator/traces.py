"""Readers for public LLM-inference request traces.

Every reader turns a file into one `Trace`: arrival times (seconds since the
first kept request), input and output token counts, and, for Mooncake traces,
the prefix-block hash ids of each prompt. Formats are recognised from the
content (CSV header or first JSON line), never from the file name, so renamed
or gzipped copies read the same.

| format     | columns / keys                                            | time unit |
| ---------- | --------------------------------------------------------- | --------- |
| `azure`    | TIMESTAMP, ContextTokens, GeneratedTokens                  | wall clock |
| `vidur`    | arrived_at, num_prefill_tokens, num_decode_tokens          | s |
| `lengths`  | num_prefill_tokens, num_decode_tokens (or input_tokens, output_tokens) | none |
| `burstgpt` | Timestamp, Model, Request tokens, Response tokens, ...     | s |
| `mooncake` | JSON lines: timestamp, input_length, output_length, hash_ids | ms |

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

Speed: a block of lines is parsed column-wise with numpy (timestamps from their
fixed-width digits, the date looked up once per distinct day); only a block
that fails a vectorised check is re-read row by row to find and name the bad
row. That keeps a clean file at about 1.5 us per row (1M Azure rows in 1.2-1.7 s
on a 2-core box), and the row-by-row path, about 7 us per row, which
defines the semantics, is the only one that ever reports an error.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

__all__ = [
    "FORMATS",
    "Trace",
    "TraceFormatError",
    "builtin_trace_path",
    "detect_format",
    "read_trace",
]

FORMATS: tuple[str, ...] = ("azure", "vidur", "lengths", "burstgpt", "mooncake")

# Characters per read. About 30k rows of the Azure CSV: big enough to amortise
# the per-block numpy calls, small enough that a bad row sends only one modest
# block down the row-by-row path.
_CHUNK_CHARS = 1 << 20
# A block that fails the column-wise checks is split this many ways until its
# parts are this small, then read row by row.
_SPLIT_WAYS = 8
_SLOW_BLOCK_LINES = 512
# How many skipped-row messages a Trace keeps; the count is always exact.
_MAX_REASONS = 10
_INT64_MAX = (1 << 63) - 1

_NS_PER_S = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_S
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def builtin_trace_path() -> Path:
    """Path of the bundled default trace (Azure LLM inference 2023, conv, gzipped)."""
    return Path(__file__).resolve().parent / "data" / "azure_conv_2023.csv.gz"


class TraceFormatError(ValueError):
    """A trace file that cannot be read as its format says, located to the field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(f"{self.path}:{line}: field '{field}': {reason}")

    # Exceptions cross process boundaries (Ray workers, multiprocessing) by
    # pickling their constructor arguments; the default would pass only the message.
    def __reduce__(self):
        return (type(self), (self.path, self.line, self.field, self.reason))


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
    bad_row_reasons: tuple[str, ...] = ()
    filtered_rows: int = 0

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


# ---------------------------------------------------------------------------
# Format layouts and detection


@dataclass(frozen=True, slots=True)
class _CsvLayout:
    fmt: str
    time_column: str | None
    time_kind: str | None  # "iso": wall-clock text; "seconds": a float
    input_column: str
    output_column: str
    ties_allowed: bool
    drop_zero_output: bool


_AZURE = _CsvLayout("azure", "TIMESTAMP", "iso", "ContextTokens", "GeneratedTokens", False, False)
_VIDUR = _CsvLayout("vidur", "arrived_at", "seconds", "num_prefill_tokens", "num_decode_tokens", False, False)
_BURSTGPT = _CsvLayout("burstgpt", "Timestamp", "seconds", "Request tokens", "Response tokens", True, True)
_LENGTHS = (
    _CsvLayout("lengths", None, None, "num_prefill_tokens", "num_decode_tokens", False, False),
    _CsvLayout("lengths", None, None, "input_tokens", "output_tokens", False, False),
)
# Checked in this order, so a header carrying both a time column and length
# columns is read with its timestamps.
_DETECTION_ORDER = (_AZURE, _BURSTGPT, _VIDUR) + _LENGTHS
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _needed(layout: _CsvLayout) -> tuple[str, ...]:
    cols = (layout.input_column, layout.output_column)
    return (layout.time_column,) + cols if layout.time_column else cols


def _detect_from_first_line(first: str) -> tuple[str | None, _CsvLayout | None, list[str]]:
    if first.lstrip().startswith("{"):
        return "mooncake", None, []
    names = [c.strip() for c in next(csv.reader([first]), [])]
    present = set(names)
    for layout in _DETECTION_ORDER:
        if present.issuperset(_needed(layout)):
            return layout.fmt, layout, names
    return None, None, names


def _describe_formats() -> str:
    return "; ".join(f"{lay.fmt}: {', '.join(_needed(lay))}" for lay in _DETECTION_ORDER) + (
        "; mooncake: JSON lines with " + ", ".join(_MOONCAKE_KEYS))


def detect_format(path: str | os.PathLike) -> str:
    """The format `read_trace` would pick for this file (reads only its first line)."""
    path = os.fspath(path)
    with _open_text(path) as f:
        first = f.readline().rstrip("\n")
    if not first.strip():
        raise TraceFormatError(path, 1, "header", "file is empty" if not first else "line 1 is blank")
    fmt, _, names = _detect_from_first_line(first)
    if fmt is None:
        raise TraceFormatError(path, 1, "header", f"unknown format: columns {names} match none of "
                               f"({_describe_formats()})")
    return fmt


# ---------------------------------------------------------------------------
# Field parsers (the row-by-row path; they define what is valid)


class _RowError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _parse_count(text: str, field: str) -> int:
    s = text.strip()
    if not s:
        raise _RowError(field, "empty")
    digits = s[1:] if s[0] in "+-" else s
    if not (digits.isascii() and digits.isdigit()):
        raise _RowError(field, f"not an integer: {text!r}")
    if s[0] == "-" and int(digits) != 0:
        raise _RowError(field, f"negative: {text!r}")
    value = int(digits)
    if value > _INT64_MAX:
        raise _RowError(field, f"too large for int64: {text!r}")
    return value


def _parse_seconds(text: str, field: str) -> float:
    s = text.strip()
    if not s:
        raise _RowError(field, "empty")
    try:
        # float() also takes "1_000"; that is no number a trace writer emits.
        if "_" in s:
            raise ValueError
        value = float(s)
    except ValueError:
        raise _RowError(field, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _RowError(field, f"not finite: {text!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _day_ns(year: int, month: int, day: int) -> int:
    return (_dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY


_ISO_FORM = "YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]"


def _parse_iso_ns(text: str) -> int:
    """Wall-clock text to integer ns since 1970 UTC (no zone = UTC).

    Integer ns keep the 100 ns ticks of the 2023 trace exact; a float of
    seconds since 1970 would round them to about 240 ns.
    """
    s = text.strip()
    if len(s) < 19 or s[4] != "-" or s[7] != "-" or s[10] not in " T" or s[13] != ":" or s[16] != ":":
        raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {text!r}")
    digits = s[0:4] + s[5:7] + s[8:10] + s[11:13] + s[14:16] + s[17:19]
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {text!r}")
    year, month, day = int(s[0:4]), int(s[5:7]), int(s[8:10])
    hour, minute, second = int(s[11:13]), int(s[14:16]), int(s[17:19])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time of day out of range: {text!r}")
    try:
        day_ns = _day_ns(year, month, day)
    except ValueError:
        raise ValueError(f"no such date: {text!r}") from None
    rest = s[19:]
    zone = ""
    if rest.endswith("Z"):
        rest, zone = rest[:-1], "Z"
    elif len(rest) >= 6 and rest[-6] in "+-":
        rest, zone = rest[:-6], rest[-6:]
    frac_ns = 0
    if rest:
        frac = rest[1:]
        if rest[0] != "." or not (frac.isascii() and frac.isdigit()) or len(frac) > 9:
            raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {text!r}")
        frac_ns = int(frac) * 10 ** (9 - len(frac))
    offset_ns = 0
    if zone and zone != "Z":
        hh, mm = zone[1:3], zone[4:6]
        if zone[3] != ":" or not (hh + mm).isascii() or not (hh + mm).isdigit() or int(hh) > 23 or int(mm) > 59:
            raise ValueError(f"bad UTC offset {zone!r} (want +HH:MM): {text!r}")
        offset_ns = (int(hh) * 60 + int(mm)) * 60 * _NS_PER_S * (1 if zone[0] == "+" else -1)
    return day_ns + ((hour * 60 + minute) * 60 + second) * _NS_PER_S + frac_ns - offset_ns


def _show_ns(ns: int) -> str:
    return str(np.datetime64(ns, "ns")).replace("T", " ")


def _iso_time_field(text: str, field: str) -> int:
    try:
        return _parse_iso_ns(text)
    except ValueError as e:
        raise _RowError(field, str(e)) from None


# ---------------------------------------------------------------------------
# Column-wise fast path (None = "cannot vouch for this block, go row by row")


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


def _iso_column(col: list[str]) -> np.ndarray | None:
    """Vectorised `_parse_iso_ns` for a block whose stamps share one layout."""
    first = col[0]
    width = len(first)
    if width < 19 or len(set(map(len, col))) != 1:
        return None
    joined = "".join(col)
    if not joined.isascii():
        return None
    a = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(len(col), width)
    template = first.encode("ascii")
    literal = [4, 7, 10, 13, 16]
    digit_pos = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
    pos = 19
    n_frac = 0
    if pos < width and template[pos:pos + 1] == b".":
        literal.append(pos)
        pos += 1
        while pos < width and 48 <= template[pos] <= 57:
            pos += 1
            n_frac += 1
        if not 1 <= n_frac <= 9:
            return None
        digit_pos += list(range(20, 20 + n_frac))
    tz_sign = None
    if width - pos == 1 and template[pos:] == b"Z":
        literal.append(pos)
    elif width - pos == 6 and template[pos:pos + 1] in (b"+", b"-") and template[pos + 3:pos + 4] == b":":
        literal.append(pos + 3)
        digit_pos += [pos + 1, pos + 2, pos + 4, pos + 5]
        signs = a[:, pos]
        if not ((signs == 43) | (signs == 45)).all():
            return None
        tz_sign = np.where(signs == 43, 1, -1)
    elif width != pos:
        return None
    if not (a[:, literal] == np.frombuffer(template, dtype=np.uint8)[literal]).all():
        return None
    if first[10] not in " T":
        return None
    d = a - np.uint8(48)  # uint8 wraps below '0', so one <= 9 test checks digits
    if not (d[:, digit_pos] <= 9).all():
        return None
    d = d.astype(np.int64)

    def num(start: int, count: int) -> np.ndarray:
        out = d[:, start]
        for k in range(1, count):
            out = out * 10 + d[:, start + k]
        return out

    year, month, day = num(0, 4), num(5, 2), num(8, 2)
    hour, minute, second = num(11, 2), num(14, 2), num(17, 2)
    if (hour > 23).any() or (minute > 59).any() or (second > 59).any():
        return None
    ymd = (year * 100 + month) * 100 + day
    unique, inverse = np.unique(ymd, return_inverse=True)
    try:
        day_ns = np.array([_day_ns(int(v) // 10000, int(v) // 100 % 100, int(v) % 100) for v in unique],
                          dtype=np.int64)
    except ValueError:
        return None
    ns = day_ns[inverse.reshape(-1)] + ((hour * 60 + minute) * 60 + second) * _NS_PER_S
    if n_frac:
        ns += num(20, n_frac) * 10 ** (9 - n_frac)
    if tz_sign is not None:
        hh, mm = num(pos + 1, 2), num(pos + 4, 2)
        if (hh > 23).any() or (mm > 59).any():
            return None
        ns -= tz_sign * (hh * 60 + mm) * 60 * _NS_PER_S
    return ns


# ---------------------------------------------------------------------------
# Input plumbing


def _open_text(path: str) -> IO[str]:
    if not os.path.exists(path):
        raise FileNotFoundError(2, "trace file not found", path)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    # utf-8-sig drops a byte-order mark; undecodable bytes become U+FFFD so the
    # row-by-row path reports them as a bad field with a line number.
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace")
    return open(path, "rt", encoding="utf-8-sig", errors="replace")


class _Lines:
    """Yields (first line number, complete lines) blocks; universal newlines."""

    def __init__(self, path: str, f: IO[str]) -> None:
        self.path = path
        self.f = f
        self.next_line = 1

    def blocks(self) -> Iterator[tuple[int, list[str]]]:
        carry = ""
        while True:
            try:
                chunk = self.f.read(_CHUNK_CHARS)
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


class _Collector:
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
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(str(err))

    def check_order(self, t: float | int) -> None:
        if self.last_time is None:
            return
        if t < self.last_time:
            raise _RowError(self.time_field, f"timestamp decreases: {self.show_time(t)} comes after "
                                             f"{self.show_time(self.last_time)} on line {self.last_time_line}")
        if t == self.last_time and not self.ties_allowed:
            raise _RowError(self.time_field, f"duplicate timestamp: equals line {self.last_time_line}")

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


# ---------------------------------------------------------------------------
# CSV formats


def _resolve_layout(path: str, fmt: str | None, detected: str | None, detected_layout: _CsvLayout | None,
                    names: list[str]) -> _CsvLayout:
    hint = f"; the content looks like '{detected}'" if detected else ""
    if fmt is None:
        if detected_layout is None:
            raise TraceFormatError(path, 1, "header", f"unknown format: columns {names} match none of "
                                   f"({_describe_formats()})")
        return detected_layout
    candidates = _LENGTHS if fmt == "lengths" else [
        lay for lay in (_AZURE, _VIDUR, _BURSTGPT) if lay.fmt == fmt]
    if detected == "mooncake":
        raise TraceFormatError(path, 1, _needed(candidates[0])[0], f"format '{fmt}' expects a CSV header, but "
                               "line 1 is a JSON object; the content looks like 'mooncake'")
    present = set(names)
    for layout in candidates:
        if present.issuperset(_needed(layout)):
            return layout
    missing = [c for c in _needed(candidates[0]) if c not in present]
    raise TraceFormatError(path, 1, missing[0], f"column missing for format '{fmt}' "
                           f"(header has {names}){hint}")


def _read_csv(path: str, lines: _Lines, blocks: Iterator[tuple[int, list[str]]], layout: _CsvLayout,
              names: list[str], skip: bool, max_rows: int | None) -> Trace:
    for col in _needed(layout):
        if names.count(col) > 1:
            raise TraceFormatError(path, 1, col, "column appears more than once in the header")
    ti = names.index(layout.time_column) if layout.time_column else None
    ii = names.index(layout.input_column)
    oi = names.index(layout.output_column)
    time_dtype = None if ti is None else (np.int64 if layout.time_kind == "iso" else np.float64)
    out = _Collector(path, skip, max_rows, layout.ties_allowed, layout.time_column, time_dtype,
                     _show_ns if layout.time_kind == "iso" else repr)

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
    unit = None if ti is None else (_NS_PER_S if layout.time_kind == "iso" else 1.0)
    return out.finish(layout.fmt, unit, lines.next_line, with_hashes=False)


def _csv_fast_block(out: _Collector, start: int, block: list[str], layout: _CsvLayout, ncols: int,
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
        times = _iso_column(tcol) if layout.time_kind == "iso" else _seconds_column(tcol)
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


def _csv_slow_block(out: _Collector, start: int, block: list[str], layout: _CsvLayout, names: list[str],
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
                raise _RowError(names[len(fields)], f"missing (row has {len(fields)} fields, header has {ncols})")
            if len(fields) > ncols:
                raise _RowError("row", f"row has {len(fields)} fields, header has {ncols}")
            t = None
            if ti is not None:
                if layout.time_kind == "iso":
                    t = _iso_time_field(fields[ti], layout.time_column)
                else:
                    t = _parse_seconds(fields[ti], layout.time_column)
            n_in = _parse_count(fields[ii], layout.input_column)
            n_out = _parse_count(fields[oi], layout.output_column)
            if layout.drop_zero_output and n_out == 0:
                out.filtered += 1
                continue
            if n_in == 0:
                raise _RowError(layout.input_column, "zero tokens")
            if n_out == 0:
                raise _RowError(layout.output_column, "zero tokens")
            if t is not None:
                out.check_order(t)
        except _RowError as e:
            out.bad_row(lineno, e.field, e.reason)
            continue
        out.keep_row(lineno, t, n_in, n_out)
    out.flush_rows()


# ---------------------------------------------------------------------------
# Mooncake JSON lines


def _json_count(record: dict, key: str) -> int:
    if key not in record:
        raise _RowError(key, "missing")
    v = record[key]
    if type(v) is not int:  # bool is an int subclass; true is no token count
        raise _RowError(key, f"not an integer: {v!r}")
    if v < 0:
        raise _RowError(key, f"negative: {v!r}")
    if v == 0:
        raise _RowError(key, "zero tokens")
    return v


def _mooncake_record(line: str) -> tuple[float, int, int, list[int]]:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise _RowError("json", f"bad JSON: {e}") from None
    if not isinstance(record, dict):
        raise _RowError("json", f"expected a JSON object, got {type(record).__name__}")
    if "timestamp" not in record:
        raise _RowError("timestamp", "missing")
    t = record["timestamp"]
    if type(t) not in (int, float) or not math.isfinite(t):
        raise _RowError("timestamp", f"not a finite number of ms: {t!r}")
    n_in = _json_count(record, "input_length")
    n_out = _json_count(record, "output_length")
    if "hash_ids" not in record:
        raise _RowError("hash_ids", "missing")
    ids = record["hash_ids"]
    if not isinstance(ids, list):
        raise _RowError("hash_ids", f"expected a list of integers, got {type(ids).__name__}")
    # One pass over the types in C; the per-id loop runs only to name a culprit.
    if set(map(type, ids)) - {int} or (ids and (min(ids) < 0 or max(ids) > _INT64_MAX)):
        bad = next(h for h in ids if type(h) is not int or not 0 <= h <= _INT64_MAX)
        raise _RowError("hash_ids", f"not a non-negative int64: {bad!r}")
    return float(t), n_in, n_out, ids


def _read_mooncake(path: str, lines: _Lines, blocks: Iterator[tuple[int, list[str]]], skip: bool,
                   max_rows: int | None) -> Trace:
    out = _Collector(path, skip, max_rows, ties_allowed=True, time_field="timestamp", time_dtype=np.float64,
                     show_time=lambda ms: f"{ms:g} ms")
    for start, block in blocks:
        for k, line in enumerate(block):
            if out.full:
                break
            if not line.strip():
                continue
            lineno = start + k
            try:
                t, n_in, n_out, ids = _mooncake_record(line)
                out.check_order(t)
            except _RowError as e:
                out.bad_row(lineno, e.field, e.reason)
                continue
            out.keep_row(lineno, t, n_in, n_out, ids)
        out.flush_rows()
        if out.full:
            break
    return out.finish("mooncake", 1e3, lines.next_line, with_hashes=True)


# ---------------------------------------------------------------------------


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
    with _open_text(path) as f:
        lines = _Lines(path, f)
        blocks = lines.blocks()
        first_block = next(blocks, None)
        if first_block is None:
            raise TraceFormatError(path, 1, "header", "file is empty")
        _, first_lines = first_block
        first = first_lines[0]
        if not first.strip():
            raise TraceFormatError(path, 1, "header", "line 1 is blank; expected a CSV header or a JSON object")
        detected, layout, names = _detect_from_first_line(first)
        if fmt == "mooncake" or (fmt is None and detected == "mooncake"):
            if detected != "mooncake":
                hint = f"; the content looks like '{detected}'" if detected else ""
                raise TraceFormatError(path, 1, "json",
                                       f"format 'mooncake' expects JSON lines, but line 1 is not a JSON object{hint}")

            def with_first() -> Iterator[tuple[int, list[str]]]:
                yield first_block
                yield from blocks

            return _read_mooncake(path, lines, with_first(), skip_bad_rows, max_rows)
        layout = _resolve_layout(path, fmt, detected, layout, names)

        def after_header() -> Iterator[tuple[int, list[str]]]:
            if len(first_lines) > 1:
                yield 2, first_lines[1:]
            yield from blocks

        return _read_csv(path, lines, after_header(), layout, names, skip_bad_rows, max_rows)
