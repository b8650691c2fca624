"""Trace readers: exact values on hand-written files, every kind of bad input
located to its line and field, and the real public traces against the
statistics published in ../shared/traces/README.md."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from simulator.traces import csv_formats, rows as trace_rows, wallclock
from simulator.traces import (Trace, TraceFileError, TraceFormatError, builtin_trace_path, detect_format,
                              read_trace)

REPO = Path(__file__).resolve().parents[2]
SHARED_TRACES = REPO.parent / "shared" / "traces"
needs_shared = pytest.mark.skipif(not SHARED_TRACES.is_dir(),
                                  reason=f"real traces not present at {SHARED_TRACES}")

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def write(tmp_path: Path, text: str, name: str = "trace.csv", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def azure(rows: list[str], newline: str = "\n") -> str:
    return newline.join([AZURE_HEADER] + rows) + newline


# ---------------------------------------------------------------------------
# Readers on hand-checked files

AZURE_2023 = [
    # 1.4999999 s apart, then 200 ns across midnight, then 60.2499999 s
    ("2023-11-16 23:59:58.5000000,374,44", 0.0),
    ("2023-11-16 23:59:59.9999999,396,109", 1.4999999),
    ("2023-11-17 00:00:00.0000001,879,55", 1.5000001),
    ("2023-11-17 00:01:00.2500000,91,16", 61.75),
]
AZURE_2024 = [
    ("2024-05-10 00:00:00.009930+00:00,1,2", 0.0),
    ("2024-05-10 02:00:00.509930+02:00,3,4", 0.5),     # 00:00:00.50993 UTC
    ("2024-05-09 23:00:01.009930-01:00,5,6", 1.0),     # 00:00:01.00993 UTC
    ("2024-05-11 00:00:00.009930+00:00,7,8", 86400.0),
]
LEAP_DAY = [
    ("2024-02-28 12:00:00.000000+00:00,1,1", 0.0),
    ("2024-03-01 12:00:00.000000+00:00,1,1", 2 * 86400.0),  # 2024 has a 29 February
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("rows", [AZURE_2023, AZURE_2024, LEAP_DAY], ids=["2023-form", "2024-form", "leap-day"])
def test_azure_timestamps_give_exact_seconds(tmp_path, rows, newline):
    path = write(tmp_path, azure([r for r, _ in rows]), newline=newline)
    trace = read_trace(path)
    assert trace.format == "azure"
    np.testing.assert_allclose(trace.arrival_s, [s for _, s in rows], rtol=0, atol=1e-12)
    assert trace.input_tokens.dtype == np.int64 and trace.arrival_s.dtype == np.float64
    assert trace.input_tokens.tolist() == [int(r.split(",")[1]) for r, _ in rows]
    assert trace.output_tokens.tolist() == [int(r.split(",")[2]) for r, _ in rows]
    assert (trace.bad_rows, trace.filtered_rows, trace.hash_ids) == (0, 0, None)


def test_trace_properties(tmp_path):
    trace = read_trace(write(tmp_path, azure([r for r, _ in AZURE_2023])))
    assert trace.rows == 4
    assert trace.span_s == pytest.approx(61.75, abs=1e-12)
    assert trace.mean_rate_rps == pytest.approx(3 / 61.75)  # 4 arrivals enclose 3 gaps
    with pytest.raises(ValueError):
        trace.input_tokens[0] = 1  # columns are read-only


@pytest.mark.parametrize("fmt,text,arrival_s,inputs,outputs", [
    ("vidur", "arrived_at,num_prefill_tokens,num_decode_tokens,extra\n0.5,10,20,x\n1.25,11,21,y\n",
     [0.0, 0.75], [10, 11], [20, 21]),
    ("lengths", "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n3772,54,3826,69.8\n5,1,6,5.0\n",
     None, [3772, 5], [54, 1]),
    ("lengths", "input_tokens,output_tokens\n7,8\n9,10\n", None, [7, 9], [8, 10]),
    ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n"
                 "5,GPT-4,1000,0,1000,API log\n"          # failed request: filtered
                 "5,ChatGPT,30,2,32,API log\n"            # same second: allowed
                 "45.5,\"GPT-4\",7,3,10,Conversation log\n",  # quoted field
     [0.0, 0.0, 40.5], [472, 30, 7], [18, 2, 3]),
])
def test_csv_formats(tmp_path, fmt, text, arrival_s, inputs, outputs):
    path = write(tmp_path, text)
    assert detect_format(path) == fmt
    trace = read_trace(path)
    assert trace.format == fmt
    if arrival_s is None:
        assert trace.arrival_s is None and trace.span_s is None and trace.mean_rate_rps is None
    else:
        np.testing.assert_allclose(trace.arrival_s, arrival_s, rtol=0, atol=1e-12)
    assert trace.input_tokens.tolist() == inputs
    assert trace.output_tokens.tolist() == outputs
    assert trace.filtered_rows == (1 if fmt == "burstgpt" else 0)


def mooncake_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_mooncake(tmp_path):
    path = write(tmp_path, mooncake_lines([
        {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]},
        {"timestamp": 0, "input_length": 915, "output_length": 355, "hash_ids": [0, 462]},
        {"timestamp": 3000, "input_length": 12, "output_length": 1, "hash_ids": []},
        {"timestamp": 5999, "input_length": 1053, "output_length": 26, "hash_ids": [0, 773, 774]},
    ]), name="trace.jsonl")
    trace = read_trace(path)
    assert trace.format == "mooncake"
    assert trace.arrival_s.tolist() == [0.0, 0.0, 3.0, 5.999]
    assert trace.input_tokens.tolist() == [6758, 915, 12, 1053]
    offsets, values = trace.hash_ids
    assert offsets.tolist() == [0, 3, 5, 5, 8]
    assert values.tolist() == [0, 1, 2, 0, 462, 0, 773, 774]
    assert trace.request_hash_ids(1).tolist() == [0, 462]


def test_gzip_is_transparent(tmp_path):
    text = azure([r for r, _ in AZURE_2023], newline="\r\n")
    plain = read_trace(write(tmp_path, text))
    gz = tmp_path / "renamed.bin"  # detected by content, not by name
    gz.write_bytes(gzip.compress(text.encode()))
    zipped = read_trace(gz)
    assert zipped.format == "azure"
    assert np.array_equal(zipped.arrival_s, plain.arrival_s)
    assert np.array_equal(zipped.input_tokens, plain.input_tokens)


def test_byte_order_mark_and_blank_lines(tmp_path):
    rows = [r for r, _ in AZURE_2023]
    path = write(tmp_path, "\ufeff" + AZURE_HEADER + "\n" + rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n\n")
    trace = read_trace(path)
    assert trace.rows == 4 and trace.bad_rows == 0


def test_max_rows_stops_before_later_bad_rows(tmp_path):
    rows = [r for r, _ in AZURE_2023] + ["garbage"]
    trace = read_trace(write(tmp_path, azure(rows)), max_rows=2)
    assert trace.rows == 2
    assert trace.input_tokens.tolist() == [374, 396]


# ---------------------------------------------------------------------------
# Bad input: file, line and field

T0 = "2023-11-16 18:15:46.6805900"
T1 = "2023-11-16 18:15:50.9951690"
T2 = "2023-11-16 18:16:00.0000000"
VIDUR_HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
GOOD_MOON = {"timestamp": 0, "input_length": 5, "output_length": 6, "hash_ids": [1]}


def moon(**change) -> str:
    record = {k: v for k, v in {**GOOD_MOON, **change}.items() if v is not None}
    return json.dumps(record)


BAD_INPUTS = [
    # id, file text, line, field, reason fragment
    ("missing-field", azure([f"{T0},1,2", f"{T1},3"]), 3, "GeneratedTokens", "missing"),
    ("extra-field", azure([f"{T0},1,2", f"{T1},3,4,5"]), 3, "row", "4 fields"),
    ("empty-tokens", azure([f"{T0},1,2", f"{T1},,4"]), 3, "ContextTokens", "empty"),
    ("non-numeric", azure([f"{T0},abc,2"]), 2, "ContextTokens", "not an integer"),
    ("float-tokens", azure([f"{T0},1,2.5"]), 2, "GeneratedTokens", "not an integer"),
    ("negative", azure([f"{T0},-3,2"]), 2, "ContextTokens", "negative"),
    ("zero-input", azure([f"{T0},1,2", f"{T1},0,2"]), 3, "ContextTokens", "zero tokens"),
    ("zero-output", azure([f"{T0},1,0"]), 2, "GeneratedTokens", "zero tokens"),
    ("too-large", azure([f"{T0},99999999999999999999,2"]), 2, "ContextTokens", "too large"),
    ("decreasing", azure([f"{T0},1,2", f"{T2},1,2", f"{T1},1,2"]), 4, "TIMESTAMP", "decreases"),
    ("duplicate", azure([f"{T0},1,2", f"{T1},1,2", f"{T1},1,2"]), 4, "TIMESTAMP", "duplicate"),
    ("bad-date", azure(["2023-02-30 00:00:00.0000000,1,2"]), 2, "TIMESTAMP", "no such date"),
    ("bad-hour", azure(["2023-11-16 24:00:00.0000000,1,2"]), 2, "TIMESTAMP", "out of range"),
    ("not-a-time", azure(["yesterday,1,2"]), 2, "TIMESTAMP", "not a timestamp"),
    ("bad-offset", azure(["2024-05-10 00:00:00.009930+0000,1,2"]), 2, "TIMESTAMP", "not a timestamp"),
    ("empty-file", "", 1, "header", "empty"),
    ("blank-first-line", "\n" + azure([f"{T0},1,2"]), 1, "header", "blank"),
    ("header-only", AZURE_HEADER + "\r\n", 2, "row", "no data rows"),
    ("unknown-format", "a,b,c\n1,2,3\n", 1, "header", "unknown format"),
    ("vidur-nan", f"{VIDUR_HEADER}\n0.0,1,2\nnan,1,2\n", 3, "arrived_at", "not finite"),
    ("vidur-text", f"{VIDUR_HEADER}\nsoon,1,2\n", 2, "arrived_at", "not a number"),
    ("vidur-duplicate", f"{VIDUR_HEADER}\n0.5,1,2\n0.5,1,2\n", 3, "arrived_at", "duplicate"),
    ("burstgpt-zero-request", f"{BURST_HEADER}\n5,ChatGPT,0,18,18,API log\n", 2, "Request tokens", "zero"),
    ("burstgpt-decreasing", f"{BURST_HEADER}\n5,ChatGPT,1,1,2,API log\n4,ChatGPT,1,1,2,API log\n",
     3, "Timestamp", "decreases"),
    ("burstgpt-only-failures", f"{BURST_HEADER}\n5,ChatGPT,3,0,3,API log\n", 3, "row", "0 output tokens"),
    ("json-syntax", moon() + "\n{oops\n", 2, "json", "bad JSON"),
    ("json-not-object", moon() + "\n[1, 2]\n", 2, "json", "JSON object"),
    ("json-missing-hash-ids", moon() + "\n" + moon(hash_ids=None) + "\n", 2, "hash_ids", "missing"),
    ("json-bad-hash-id", moon(hash_ids=[1, -2]) + "\n", 1, "hash_ids", "-2"),
    ("json-string-length", moon(input_length="5") + "\n", 1, "input_length", "not an integer"),
    ("json-bool-length", moon(output_length=True) + "\n", 1, "output_length", "not an integer"),
    ("json-zero-output", moon(output_length=0) + "\n", 1, "output_length", "zero"),
    ("json-decreasing", moon(timestamp=3000) + "\n" + moon(timestamp=2999) + "\n", 2, "timestamp", "decreases"),
    ("json-missing-timestamp", moon(timestamp=None) + "\n", 1, "timestamp", "missing"),
    # Bounds: no count past 10M tokens, no timestamp out of range, no overflow anywhere.
    ("int64-max-tokens", azure([f"{T0},9223372036854775807,2"]), 2, "ContextTokens", "at most 10,000,000"),
    ("ten-million-and-one", azure([f"{T0},1,10000001"]), 2, "GeneratedTokens", "too large"),
    ("five-thousand-digits", azure([f"{T0},{'9' * 5000},2"]), 2, "ContextTokens", "too large"),
    ("year-9999", azure(["9999-12-31 23:59:59.9999999,1,2"]), 2, "TIMESTAMP", "year out of range"),
    ("year-1969", azure(["1969-12-31 23:59:59.9999999,1,2"]), 2, "TIMESTAMP", "year out of range"),
    ("vidur-huge", f"{VIDUR_HEADER}\n1e300,1,2\n", 2, "arrived_at", "out of range"),
    ("vidur-negative", f"{VIDUR_HEADER}\n-0.5,1,2\n", 2, "arrived_at", "out of range"),
    ("vidur-1e309", f"{VIDUR_HEADER}\n1e309,1,2\n", 2, "arrived_at", "not finite"),
    ("json-deep", '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n", 1, "json", "nested too deeply"),
    ("json-deep-list", moon() + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", 2, "json", "nested too deeply"),
    ("json-1e309-ms", moon(timestamp=0) + "\n" + moon().replace('"timestamp": 0', '"timestamp": 1e309') + "\n",
     2, "timestamp", "not a number of ms"),
    ("json-huge-int-ms", moon(timestamp=10 ** 400) + "\n", 1, "timestamp", "not a number of ms"),
    ("json-nan-ms", moon().replace('"timestamp": 0', '"timestamp": NaN') + "\n", 1, "timestamp", "not a number"),
    ("json-2-63-length", moon(input_length=2 ** 63) + "\n", 1, "input_length", "too large"),
    ("json-2-64-hash", moon(hash_ids=[1, 2 ** 64]) + "\n", 1, "hash_ids", "int64"),
    ("json-5000-digits", moon().replace('"input_length": 5', '"input_length": ' + "7" * 5000) + "\n",
     1, "json", "bad JSON"),
]


@pytest.mark.parametrize("text,line,field,fragment", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_line_and_field(tmp_path, text, line, field, fragment):
    path = write(tmp_path, text)
    with pytest.raises(TraceFormatError) as info:
        read_trace(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert str(err).startswith(f"{path}:{line}: field '{field}': ")
    assert fragment in err.reason


def test_echoed_values_are_cut_short(tmp_path):
    with pytest.raises(TraceFormatError) as info:
        read_trace(write(tmp_path, azure([f"{T0},{'x' * 1_000_000},2"])))
    assert info.value.field == "ContextTokens" and len(str(info.value)) < 200 + len(str(tmp_path))


def test_header_too_long_for_csv_is_an_unknown_format(tmp_path):
    with pytest.raises(TraceFormatError) as info:
        read_trace(write(tmp_path, '"' + "a" * 200_000 + '",b\n1,2\n'))
    assert (info.value.line, info.value.field) == (1, "header") and len(str(info.value)) < 2000


def test_error_survives_pickling():
    err = pickle.loads(pickle.dumps(TraceFormatError("t.csv", 7, "ContextTokens", "negative: '-1'", skippable=True)))
    assert (err.path, err.line, err.field, err.skippable, str(err)) == (
        "t.csv", 7, "ContextTokens", True, "t.csv:7: field 'ContextTokens': negative: '-1'")


@pytest.mark.parametrize("fmt,text,field,fragment", [
    ("vidur", azure([f"{T0},1,2"]), "arrived_at", "looks like 'azure'"),
    ("burstgpt", azure([f"{T0},1,2"]), "Timestamp", "looks like 'azure'"),
    ("mooncake", azure([f"{T0},1,2"]), "json", "looks like 'azure'"),
    ("azure", moon() + "\n", "TIMESTAMP", "looks like 'mooncake'"),
    ("lengths", azure([f"{T0},1,2"]), "num_prefill_tokens", "looks like 'azure'"),
])
def test_wrong_explicit_format_is_a_clear_error(tmp_path, fmt, text, field, fragment):
    with pytest.raises(TraceFormatError) as info:
        read_trace(write(tmp_path, text), fmt=fmt)
    assert (info.value.line, info.value.field) == (1, field)
    assert fragment in info.value.reason


def test_explicit_lengths_format_ignores_timestamps(tmp_path):
    trace = read_trace(write(tmp_path, f"{VIDUR_HEADER}\n0.0,1,2\n0.0,3,4\n"), fmt="lengths")
    assert trace.arrival_s is None and trace.input_tokens.tolist() == [1, 3]


@pytest.mark.parametrize("kwargs", [{"fmt": "csv"}, {"max_rows": 0}, {"max_rows": 1.5}])
def test_bad_arguments(tmp_path, kwargs):
    path = write(tmp_path, azure([f"{T0},1,2"]))
    with pytest.raises(ValueError) as info:
        read_trace(path, **kwargs)
    assert not isinstance(info.value, TraceFormatError)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError) as info:
        read_trace(missing)
    assert str(info.value) == f"trace file not found: {missing}"


def test_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TraceFileError) as info:
        read_trace(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: is a directory")


def test_truncated_gzip(tmp_path):
    data = gzip.compress(azure([f"{T0},1,2"] * 1).encode() + b"x" * 10000)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFormatError) as info:
        read_trace(path)
    assert info.value.field == "gzip"


def test_skip_bad_rows_counts_and_keeps_order(tmp_path):
    rows = [
        f"{T0},1,2",            # kept
        "2023-11-16 18:15:40.0000000,5,5",  # decreasing: dropped
        f"{T1},,2",             # empty field
        f"{T1},3,4",            # kept
        f"{T1},5,6",            # duplicate: dropped
        f"{T2},7",              # missing field
        f"{T2},9,10",           # kept
    ]
    trace = read_trace(write(tmp_path, azure(rows)), skip_bad_rows=True)
    assert trace.input_tokens.tolist() == [1, 3, 9]
    assert trace.bad_rows == 4
    assert [r.split(": field ")[1].split(":")[0] for r in trace.bad_row_reasons] == [
        "'TIMESTAMP'", "'ContextTokens'", "'TIMESTAMP'", "'GeneratedTokens'"]
    assert (np.diff(trace.arrival_s) > 0).all()


def test_skip_bad_rows_keeps_a_bounded_list_and_exact_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_rows, "MAX_SKIPPED_KEPT", 10)
    rows = [f"{T0},1,2"] + [f"{T1},x,2"] * 20 + [f"{T1},3"] * 5
    trace = read_trace(write(tmp_path, azure(rows)), skip_bad_rows=True)
    assert (trace.rows, trace.bad_rows, len(trace.skipped_rows)) == (1, 25, 10)
    assert trace.skipped_rows[0] == (3, "ContextTokens", "not an integer: 'x'")
    assert [row.line for row in trace.skipped_rows] == list(range(3, 13))
    assert trace.bad_rows_by_field == (("ContextTokens", 20), ("GeneratedTokens", 5))


def test_all_rows_bad_is_still_an_error(tmp_path):
    with pytest.raises(TraceFormatError, match="no valid data rows"):
        read_trace(write(tmp_path, azure([f"{T0},x,2"])), skip_bad_rows=True)


def synthetic_azure_rows(n: int, seed: int = 3) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ticks = np.cumsum(rng.integers(1, 20_000_000, n))  # 100 ns ticks, up to 2 s apart
    base = np.datetime64("2023-11-16T23:00:00", "ns")
    rows = []
    for i, t in enumerate(ticks):
        stamp = str(base + np.timedelta64(int(t) * 100, "ns")).replace("T", " ")[:27]
        rows.append(f"{stamp},{i % 977 + 1},{i % 131 + 1}")
    return rows, (ticks - ticks[0]) * 1e-7


@pytest.mark.parametrize("chunk_chars", [700, 100_000], ids=["tiny-reads", "default-ish"])
def test_bad_row_deep_in_a_large_file(tmp_path, monkeypatch, chunk_chars):
    """Line numbers stay right across read chunks and block subdivision."""
    monkeypatch.setattr(trace_rows, "CHUNK_BYTES", chunk_chars)
    rows, seconds = synthetic_azure_rows(3000)
    bad = rows.copy()
    bad[2500] = bad[2500].rsplit(",", 1)[0] + ",-7"
    bad[2900] = bad[2900].split(",", 1)[0] + ",1"
    path = write(tmp_path, azure(bad, newline="\r\n"))
    with pytest.raises(TraceFormatError) as info:
        read_trace(path)
    assert (info.value.line, info.value.field) == (2502, "GeneratedTokens")
    trace = read_trace(path, skip_bad_rows=True)
    keep = np.ones(3000, bool)
    keep[[2500, 2900]] = False
    assert trace.bad_rows == 2
    assert [r.split(":")[1] for r in trace.bad_row_reasons] == ["2502", "2902"]
    np.testing.assert_allclose(trace.arrival_s, seconds[keep], rtol=0, atol=1e-9)
    assert trace.input_tokens.tolist() == [i % 977 + 1 for i in range(3000) if keep[i]]


def column(texts: list[str]):
    from simulator.traces.csv_columns import Block, field_bounds

    block = Block(",".join(texts).encode() + b"\n")
    fs, fe = field_bounds(block.a, len(texts))
    return block, fs[0], fe[0]


@pytest.mark.parametrize("texts", [
    ["1", "9", "10", "12345678", "99999999", "10000000", "00000001", "7"],
    ["0", "5", "42", "123", "4096", "65536", "1000000", "31415926"],
])
def test_swar_counts_match_int(texts):
    from simulator.traces.csv_columns import count_column

    assert count_column(*column(texts)).tolist() == [int(t) for t in texts]


@pytest.mark.parametrize("texts", [["123456789"], ["-1"], ["+1"], [" 1"], ["1a"], ["1.0"], ["\u0661"], ["x"]])
def test_swar_counts_refuse_what_is_not_a_short_count(texts):
    from simulator.traces.csv_columns import count_column

    assert count_column(*column(texts + ["1"])) is None


@pytest.mark.parametrize("texts", [
    ["0.0", "4.314579", "19.5", "0.1", "0.3", "123456789.12345", "999999999999999", "3.00000000000001"],
    ["1", "10.25", "86399.999999", "604800.0", "0.00000000000001", "2.675", "1.005", "7"],
])
def test_decimals_match_float(texts):
    from simulator.traces.csv_columns import decimal_column

    assert decimal_column(*column(texts)).tolist() == [float(t) for t in texts]


@pytest.mark.parametrize("text", ["1e5", ".5", "5.", "1.2.3", "-1.0", "1234567890123456", "nan", "1_0"])
def test_decimals_leave_other_forms_to_float(text):
    from simulator.traces.csv_columns import decimal_column

    assert decimal_column(*column([text, "1.0"])) is None


def test_column_wise_and_row_by_row_parsers_agree(tmp_path, monkeypatch):
    rows, _ = synthetic_azure_rows(2000)
    path = write(tmp_path, azure(rows))
    fast = read_trace(path)
    monkeypatch.setattr(csv_formats, "_csv_fast_block", lambda *args: False)
    slow = read_trace(path)
    assert np.array_equal(fast.arrival_s, slow.arrival_s)
    assert np.array_equal(fast.input_tokens, slow.input_tokens)
    assert np.array_equal(fast.output_tokens, slow.output_tokens)


@pytest.mark.parametrize("stamps", [
    ["2023-11-16 18:15:46.6805900", "2023-12-31 23:59:59.9999999", "2024-01-01 00:00:00.0000000"],
    ["2024-05-10 00:00:00.009930+00:00", "2024-05-10 00:00:00.009930-07:30", "2024-05-17 23:59:59.999999+14:00"],
    ["2024-05-10T00:00:00Z", "2000-02-29T12:34:56Z"],
    ["2024-05-10 00:00:00.1", "1970-01-01 00:00:00.9"],
    ["2024-05-10 00:00:00.123456789", "2261-12-31 23:59:59.999999999"],
])
def test_vectorised_timestamps_match_row_parser(stamps):
    expected = [wallclock.parse_iso_ns(s) for s in stamps]
    matrix = np.frombuffer("".join(stamps).encode(), dtype=np.uint8).reshape(len(stamps), -1)
    assert wallclock.iso_matrix(matrix).tolist() == expected
    # numpy is an independent reference for the zone-free forms
    if not any(c in s[19:] for s in stamps for c in "+-Z"):
        ref = np.array([s.replace(" ", "T") for s in stamps], dtype="datetime64[ns]").astype(np.int64)
        assert expected == ref.tolist()


# ---------------------------------------------------------------------------
# Built-in and real traces

README_SHA256_CONV = "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"


def test_builtin_trace_is_the_azure_conv_file():
    path = builtin_trace_path()
    assert path.name == "azure_conv_2023.csv.gz" and (path.parent / "NOTICE.md").is_file()
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == README_SHA256_CONV
    trace = read_trace(path)
    assert (trace.format, trace.rows, trace.bad_rows) == ("azure", 19_366, 0)


REAL = [
    # path, format, rows, input mean, output mean, span_s (None: no timestamps)
    ("azure2023/AzureLLMInferenceTrace_conv.csv", "azure", 19_366, 1154.7, 211.1, 3501.7),
    ("azure2023/AzureLLMInferenceTrace_code.csv", "azure", 8_819, 2047.8, 27.9, 3435.9),
    ("vidur/splitwise_conv.csv", "vidur", 19_366, 1154.7, 211.1, 3501.7),
    ("vidur/splitwise_code.csv", "vidur", 8_819, 2047.8, 27.9, 3435.9),
    ("vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", "lengths", 28_257, 2588.1, 291.4, None),
]


@needs_shared
@pytest.mark.parametrize("rel,fmt,rows,in_mean,out_mean,span_s", REAL, ids=[r[0] for r in REAL])
def test_real_traces_match_published_statistics(rel, fmt, rows, in_mean, out_mean, span_s):
    trace = read_trace(SHARED_TRACES / rel)
    assert (trace.format, trace.rows, trace.bad_rows, trace.filtered_rows) == (fmt, rows, 0, 0)
    assert round(float(trace.input_tokens.mean()), 1) == in_mean
    assert round(float(trace.output_tokens.mean()), 1) == out_mean
    if span_s is None:
        assert trace.arrival_s is None
    else:
        assert round(trace.span_s, 1) == span_s and trace.arrival_s[0] == 0.0


@needs_shared
@pytest.mark.parametrize("kind", ["conv", "code"])
def test_azure_and_vidur_copies_agree(kind):
    """The README checked vidur's arrived_at against TIMESTAMP to 5e-13 s."""
    a = read_trace(SHARED_TRACES / f"azure2023/AzureLLMInferenceTrace_{kind}.csv")
    v = read_trace(SHARED_TRACES / f"vidur/splitwise_{kind}.csv")
    assert np.abs(a.arrival_s - v.arrival_s).max() <= 1e-12
    assert np.array_equal(a.input_tokens, v.input_tokens)
    assert np.array_equal(a.output_tokens, v.output_tokens)


@needs_shared
def test_builtin_equals_shared_conv():
    shared = read_trace(SHARED_TRACES / "azure2023/AzureLLMInferenceTrace_conv.csv")
    builtin = read_trace(builtin_trace_path())
    assert np.array_equal(shared.arrival_s, builtin.arrival_s)
    assert np.array_equal(shared.input_tokens, builtin.input_tokens)


WINDOW_ROWS = [f"2024-05-10 00:00:{s:02d}.500000+00:00,{s + 1},1" for s in range(0, 60, 5)]  # 0, 5, ... 55 s


@pytest.mark.parametrize("row_by_row", [False, True], ids=["column-wise", "row-by-row"])
@pytest.mark.parametrize("start_s,duration_s,inputs", [
    (0.0, 10.0, [1, 6]),
    (10.0, 10.0, [11, 16]),
    (12.5, None, [16, 21, 26, 31, 36, 41, 46, 51, 56]),
    (50.0, 1000.0, [51, 56]),
])
def test_time_window_keeps_rows_in_it(tmp_path, monkeypatch, row_by_row, start_s, duration_s, inputs):
    if row_by_row:
        monkeypatch.setattr(csv_formats, "_csv_fast_block", lambda *args: False)
    trace = read_trace(write(tmp_path, azure(WINDOW_ROWS)), start_s=start_s, duration_s=duration_s)
    assert trace.input_tokens.tolist() == inputs
    np.testing.assert_allclose(trace.arrival_s, [5.0 * k for k in range(len(inputs))])
    assert trace.rows_before_window == (inputs[0] - 1) // 5


@pytest.mark.parametrize("row_by_row", [False, True], ids=["column-wise", "row-by-row"])
def test_time_window_stops_reading_at_its_end(tmp_path, monkeypatch, row_by_row):
    if row_by_row:
        monkeypatch.setattr(csv_formats, "_csv_fast_block", lambda *args: False)
    path = write(tmp_path, azure(WINDOW_ROWS + ["garbage"]))
    assert read_trace(path, start_s=5.0, duration_s=20.0).input_tokens.tolist() == [6, 11, 16, 21]
    with pytest.raises(TraceFormatError) as info:
        read_trace(path, start_s=5.0)
    assert info.value.line == 14


def test_time_window_on_mooncake(tmp_path):
    lines = [moon(timestamp=ms, input_length=ms // 1000 + 1) for ms in (0, 1000, 1000, 2500, 4000)]
    trace = read_trace(write(tmp_path, "\n".join(lines) + "\n", name="t.jsonl"), start_s=1.0, duration_s=2.0)
    assert trace.input_tokens.tolist() == [2, 2, 3] and trace.arrival_s.tolist() == [0.0, 0.0, 1.5]


def test_empty_time_window_is_a_clear_error(tmp_path):
    with pytest.raises(TraceFormatError, match="no data rows in the time window"):
        read_trace(write(tmp_path, azure(WINDOW_ROWS)), start_s=1000.0)


@pytest.mark.parametrize("kwargs", [{"start_s": -1.0}, {"duration_s": 0.0}, {"start_s": float("nan")}])
def test_bad_time_window_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match="must be a finite number"):
        read_trace(write(tmp_path, azure(WINDOW_ROWS)), **kwargs)


def test_time_window_needs_timestamps(tmp_path):
    with pytest.raises(ValueError, match="needs timestamps"):
        read_trace(write(tmp_path, "input_tokens,output_tokens\n1,2\n"), duration_s=5.0)


def test_trace_rejects_inconsistent_columns():
    with pytest.raises(ValueError):
        Trace("x", "lengths", None, np.array([1, 2]), np.array([1]))


@pytest.mark.parametrize("row_by_row", [False, True], ids=["column-wise", "row-by-row"])
def test_burstgpt_failures_counted_only_up_to_max_rows(tmp_path, monkeypatch, row_by_row):
    if row_by_row:
        monkeypatch.setattr(csv_formats, "_csv_fast_block", lambda *args: False)
    rows = ["1,ChatGPT,5,1,6,API log", "2,ChatGPT,5,0,5,API log", "3,ChatGPT,6,2,8,API log",
            "4,ChatGPT,5,0,5,API log", "5,ChatGPT,7,3,10,API log"]
    path = write(tmp_path, BURST_HEADER + "\n" + "\n".join(rows) + "\n")
    assert read_trace(path, max_rows=2).filtered_rows == 1
    full = read_trace(path)
    assert (full.rows, full.filtered_rows, full.input_tokens.tolist()) == (3, 2, [5, 6, 7])
