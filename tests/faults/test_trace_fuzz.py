"""Property-based fuzzing of every trace reader: no input gives a traceback.

Each generated file, read with and without `skip_bad_rows`, either yields a
Trace whose columns hold the documented invariants or raises TraceFormatError
with a one-line `file:line: field 'name': reason` whose line lies in the file.
Files are near-valid on purpose (real headers, plausible rows with one bad
field: huge and signed numbers, NaN, far-off years, deep JSON, stray quotes,
truncated gzip), since random bytes alone rarely get past the header.
Derandomized and without an example database, so every run (and CI) checks
the same cases: 4,800 by default, a bound on what the suite spends here (about
10 s of CPU on a 2-core host; the 12,000 cases CI ran before cost three times as
much, as past a few hundred cases per test Hypothesis spends most of its time
mutating earlier cases). INFERSCHED_FUZZ_SCALE multiplies every test's count
for a longer local run (2.5: the 12,000 cases CI ran before; 25: 120,000), and
INFERSCHED_FUZZ_SEED=N checks another fixed set of cases than the default one.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from simulator.traces import Trace, TraceFile, TraceFormatError, csv_formats, read_trace, scan_trace
from simulator.traces import rows as trace_rows
from simulator.traces.rows import MAX_TOKENS

FUZZ_SCALE = float(os.environ.get("INFERSCHED_FUZZ_SCALE", "1"))
FUZZ_SEED = os.environ.get("INFERSCHED_FUZZ_SEED")


def fuzz(examples: int):
    """`examples` cases (times INFERSCHED_FUZZ_SCALE), the same on every run."""
    configured = settings(max_examples=max(1, round(examples * FUZZ_SCALE)), derandomize=FUZZ_SEED is None,
                          database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
    if FUZZ_SEED is None:
        return configured
    return lambda test: configured(seed(int(FUZZ_SEED))(test))

HEADERS = {
    "azure": "TIMESTAMP,ContextTokens,GeneratedTokens",
    "vidur": "arrived_at,num_prefill_tokens,num_decode_tokens",
    "lengths": "input_tokens,output_tokens",
    "burstgpt": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
}
# Field values are drawn from fixed pools rather than built by nested
# strategies: a draw from a list costs microseconds, a composed text or JSON
# strategy milliseconds, and 10k cases must run in seconds. GOOD stands for a
# valid value that keeps the file in order (it depends on the row number).
GOOD = object()
ODD_TEXT = ["", " ", "x", "-", "+", ".", "1e3", "5.0", "nan", "inf", "-inf", "1e309", "1_000", " 7 ", "\u0663",
            "\u00b2", '"5"', '"', '"a""b"', "\x00", "\ufeff1", "x" * 300, "\u00e9\u00e9", "\ud7ff", "0x10", "1,2"]
COUNTS = [GOOD] * 6 + ODD_TEXT + ["0", "-0", "+5", "-3", "1", "10000000", "10000001", "9223372036854775807",
                                  "9223372036854775808", "9" * 5000, "0" * 30 + "7", "-" + "9" * 30]
SECONDS = [GOOD] * 6 + ODD_TEXT + ["0", "0.0", "-0.0", "-1", "1e10", "1.0000001e10", "1e300", "4.9e-324",
                                   "9" * 400, "1" * 5000]
STAMPS = [GOOD] * 6 + ODD_TEXT + [
    "2024-05-10 00:00:00.009930+00:00", "2023-11-16 18:15:46.6805900", "2024-05-10T00:00:00Z",
    "9999-12-31 23:59:59.9999999", "0000-01-01 00:00:00", "1969-12-31 23:59:59", "2262-04-12 00:00:00",
    "2261-12-31 23:59:59.999999999-14:00", "2023-13-01 00:00:00", "2023-02-29 00:00:00", "2023-01-01 24:00:00",
    "2023-01-01 00:60:00", "2023-01-01 00:00:60", "2024-05-10 00:00:00.+00:00", "2024-05-10 00:00:00.1234567890",
    "2024-05-10 00:00:00+24:00", "2024-05-10 00:00:00+0000", "2024-05-10 00:00:00+14:60", "2024-05-10 00:00:00Zx",
    "2024-05-10 00:00:00.5-", "2024-05-10_00:00:00", "\u0662024-05-10 00:00:00"]
OTHER = ["ChatGPT", "GPT-4", "Conversation log", "", '"a,b"', '"', "x" * 300]


def good_value(name: str, row: int) -> str:
    if name == "TIMESTAMP":
        return f"2024-05-10 00:{row // 60:02d}:{row % 60:02d}.009930+00:00"
    if name in ("arrived_at", "Timestamp"):
        return repr(row * 0.25)
    return str(row % 97 + 1)


def pool(name: str) -> list:
    if name == "TIMESTAMP":
        return STAMPS
    if name in ("arrived_at", "Timestamp"):
        return SECONDS
    return OTHER if name in ("Model", "Log Type") else COUNTS


SHAPES = ["ok", "short", "long", "blank"]


def mixed_radix(index: int, sizes: list[int]) -> list[int]:
    """Digit i in [0, sizes[i]): one drawn integer picks a whole row (index 0: all GOOD)."""
    digits = []
    for size in sizes:
        index, digit = divmod(index, size)
        digits.append(digit)
    return digits


@st.composite
def csv_file(draw) -> str:
    # One draw per row, not per field: a hypothesis draw costs tens of microseconds.
    names = HEADERS[draw(st.sampled_from(sorted(HEADERS)))].split(",")
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    pools = [pool(name) for name in names]
    sizes = [len(p) for p in pools] + [len(SHAPES)]
    rows = []
    for row, index in enumerate(draw(st.lists(st.integers(0, int(np.prod(sizes, dtype=object)) - 1), max_size=6))):
        *picks, shape = mixed_radix(index, sizes)
        values = [p[k] for p, k in zip(pools, picks)]
        fields = [good_value(name, row) if v is GOOD else v for name, v in zip(names, values)]
        if SHAPES[shape] == "short":
            fields = fields[:-1]
        elif SHAPES[shape] == "long":
            fields.append("9")
        rows.append("" if SHAPES[shape] == "blank" else ",".join(fields))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join([",".join(names)] + rows) + draw(st.sampled_from([newline, ""]))


ODD_JSON = [None, True, False, "5", "", [], {}, [[1]], {"a": 1}, 1.5, -1, 0, float("nan"), float("inf"),
            -float("inf"), 2 ** 63, 2 ** 64, 10 ** 400, 10 ** 7 + 1, 1e13, 1e14, 1e300, "x" * 300]
JSON_POOLS = {
    "timestamp": [GOOD] * 6 + ODD_JSON,
    "input_length": [GOOD] * 6 + ODD_JSON,
    "output_length": [GOOD] * 6 + ODD_JSON,
    "hash_ids": [GOOD] * 6 + ODD_JSON + [[1, 2], [-1], [2 ** 63], [2 ** 64], [1.5], ["1"], [True], list(range(300))],
}
MANGLES = ["none", "cut", "deep", "huge-int", "not-object", "extra"]
JSON_SIZES = [len(values) + 1 for values in JSON_POOLS.values()] + [len(MANGLES), 3, 1000]


def mooncake_line(row: int, index: int) -> str:
    *picks, mangle, variant, cut = mixed_radix(index, JSON_SIZES)
    good = {"timestamp": row * 10, "input_length": row % 97 + 1, "output_length": row % 13 + 1,
            "hash_ids": list(range(row % 5))}
    record = {}
    for (key, values), k in zip(JSON_POOLS.items(), picks):
        if k < len(values):  # the last pick leaves the key out
            record[key] = good[key] if values[k] is GOOD else values[k]
    line = json.dumps(record)
    if MANGLES[mangle] == "cut":
        line = line[:cut * len(line) // 1000]
    elif MANGLES[mangle] == "deep":
        depth = [10, 5_000, 200_000][variant]
        line = line[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    elif MANGLES[mangle] == "huge-int":
        line = line.replace('"input_length": ', '"input_length": ' + "9" * [19, 400, 5000][variant], 1)
    elif MANGLES[mangle] == "not-object":
        line = json.dumps(ODD_JSON[cut % len(ODD_JSON)])
    elif MANGLES[mangle] == "extra":
        line = line + ["x", "}", '{"a": 1}'][variant]
    return line


@st.composite
def mooncake_file(draw) -> str:
    top = int(np.prod(JSON_SIZES, dtype=object)) - 1
    lines = [mooncake_line(row, index) for row, index in enumerate(draw(st.lists(st.integers(0, top), max_size=6)))]
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Iterator[Path]:
    """A directory in memory where there is one: each case writes a file, and
    on a disk-backed /tmp that costs milliseconds, more than the read itself."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path_factory.mktemp("fuzz")
        return
    path = Path(tempfile.mkdtemp(prefix="trace-fuzz-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path)


def check(path: Path, n_lines: int, **kwargs) -> Trace | None:
    """Read `path` with and without skip_bad_rows; assert the outcome is one the readers promise."""
    result = None
    for skip in (False, True):
        try:
            trace = read_trace(path, skip_bad_rows=skip, **kwargs)
        except TraceFormatError as e:
            message = str(e)
            assert message.startswith(f"{path}:{e.line}: field '{e.field}': "), message
            assert "\n" not in message and len(message) < len(str(path)) + 1200, message
            assert 1 <= e.line <= n_lines + 2, message  # + the last unterminated line, + 1 past the end
            if not e.skippable:
                break  # not a row's fault: skip_bad_rows raises it too (read below only when it differs)
            continue
        assert 1 <= trace.rows
        for column in (trace.input_tokens, trace.output_tokens):
            assert column.dtype == np.int64 and column.min() >= 1 and column.max() <= MAX_TOKENS
        if trace.arrival_s is not None:
            assert np.isfinite(trace.arrival_s).all() and trace.arrival_s[0] == 0.0
            assert (np.diff(trace.arrival_s) >= 0).all()
        if trace.hash_ids is not None:
            offsets, values = trace.hash_ids
            assert offsets[-1] == len(values) and (np.diff(offsets) >= 0).all()
        assert trace.bad_rows == sum(n for _, n in trace.bad_rows_by_field) >= len(trace.skipped_rows)
        assert skip or trace.bad_rows == 0
        result = trace
        break  # a clean read: skip_bad_rows would give the same
    return result


@fuzz(1600)
@given(text=csv_file(), max_rows=st.one_of(st.none(), st.integers(1, 5)),
       window=st.sampled_from([(0.0, None), (0.0, 0.5), (0.3, None), (0.5, 1.0), (60.0, 1.0)]))
def test_csv_readers_never_crash(scratch, text, max_rows, window):
    path = scratch / "fuzz.csv"
    path.write_text(text, encoding="utf-8", newline="")
    header = set(text.replace("\r", "\n").split("\n")[0].split(","))
    if header == set(HEADERS["lengths"].split(",")):
        window = (0.0, None)  # no timestamps: a window is an argument error, not the file's
    check(path, text.count("\n") + text.count("\r"), max_rows=max_rows, start_s=window[0], duration_s=window[1])


@fuzz(1200)
@given(text=mooncake_file())
def test_mooncake_reader_never_crashes(scratch, text):
    path = scratch / "fuzz.jsonl"
    path.write_text(text, encoding="utf-8")
    check(path, text.count("\n"))


@fuzz(800)
@given(prefix=st.sampled_from([""] + [h + "\n" for h in HEADERS.values()] + ['{"timestamp": 0}\n']),
       body=st.binary(max_size=200), wrap=st.sampled_from(["plain", "gzip", "gzip-cut"]))
def test_arbitrary_bytes_never_crash(scratch, prefix, body, wrap):
    data = prefix.encode() + body
    if wrap != "plain":
        data = gzip.compress(data)
        if wrap == "gzip-cut":
            data = data[:len(data) // 2]
    path = scratch / "fuzz.bin"
    path.write_bytes(data)
    check(path, data.count(b"\n") + data.count(b"\r") + len(prefix) + 200)


@fuzz(600)
@given(text=csv_file())
def test_column_wise_path_agrees_with_row_by_row(scratch, text, monkeypatch):
    """The vectorised CSV path only speeds up what the row-by-row path accepts."""
    path = scratch / "agree.csv"
    path.write_text(text, encoding="utf-8", newline="")
    outcomes = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(csv_formats, "_csv_fast_block", lambda *args: False)
            try:
                trace = read_trace(path, skip_bad_rows=True)
                outcomes.append((trace.arrival_s is None or trace.arrival_s.tolist(), trace.input_tokens.tolist(),
                                 trace.output_tokens.tolist(), trace.skipped_rows, trace.filtered_rows))
            except TraceFormatError as e:
                outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]



def outcome(read, path: Path, **kwargs):
    """What a reader makes of the file: its columns and report, or its error."""
    try:
        trace = read(path, **kwargs)
    except TraceFormatError as e:
        return ("error", str(e), e.skippable)
    if isinstance(trace, TraceFile):
        blocks = list(trace.blocks())
        columns = [None if blocks[0].arrival_s is None else np.concatenate([b.arrival_s for b in blocks]).tolist(),
                   np.concatenate([b.input_tokens for b in blocks]).tolist(),
                   np.concatenate([b.output_tokens for b in blocks]).tolist()]
        if blocks[0].hash_ids is not None:
            columns.append([ids.tolist() for b in blocks
                            for ids in np.split(b.hash_ids[1], b.hash_ids[0][1:-1])])
    else:
        columns = [None if trace.arrival_s is None else trace.arrival_s.tolist(), trace.input_tokens.tolist(),
                   trace.output_tokens.tolist()]
        if trace.hash_ids is not None:
            columns.append([trace.request_hash_ids(i).tolist() for i in range(trace.rows)])
    return (columns, trace.rows, trace.span_s, trace.skipped_rows, trace.bad_rows_by_field, trace.filtered_rows,
            trace.rows_before_window)


@fuzz(600)
@given(text=st.one_of(csv_file(), mooncake_file()), max_rows=st.one_of(st.none(), st.integers(1, 5)),
       window=st.sampled_from([(0.0, None), (0.0, 0.5), (0.5, 1.0)]), skip=st.booleans(),
       chunk=st.sampled_from([7, 64, 1 << 20]))
def test_blocks_agree_with_the_whole_file_read(scratch, monkeypatch, text, max_rows, window, skip, chunk):
    """scan_trace + TraceFile.blocks, reading `chunk` bytes at a time: read_trace's rows or its error."""
    path = scratch / "blocks.txt"
    path.write_text(text, encoding="utf-8", newline="")
    kwargs = dict(skip_bad_rows=skip, max_rows=max_rows, start_s=window[0], duration_s=window[1])
    try:
        whole = outcome(read_trace, path, **kwargs)
    except ValueError:  # a window over a trace without timestamps: the arguments' error, not the file's
        kwargs.update(start_s=0.0, duration_s=None)
        whole = outcome(read_trace, path, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(trace_rows, "CHUNK_BYTES", chunk)
        assert outcome(scan_trace, path, **kwargs) == whole
