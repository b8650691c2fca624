"""The Mooncake JSON-lines trace format: timestamp (ms), input_length, output_length, hash_ids."""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from simulator.traces.rows import INT64_MAX, MAX_TOKENS, Collector, Lines, Reading, RowError, Window, shown

MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
# Milliseconds since the trace's start: 0 .. ~317 years.
MAX_MS = 1e13


def _json_count(record: dict, key: str) -> int:
    if key not in record:
        raise RowError(key, "missing")
    v = record[key]
    if type(v) is not int:  # bool is an int subclass; true is no token count
        raise RowError(key, f"not an integer: {shown(v)}")
    if v < 0:
        raise RowError(key, "negative")
    if v == 0:
        raise RowError(key, "zero tokens")
    if v > MAX_TOKENS:
        raise RowError(key, f"too large (a request has at most {MAX_TOKENS:,} tokens)")
    return v


def _mooncake_record(line: str) -> tuple[float, int, int, list[int]]:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise RowError("json", f"bad JSON: {e}") from None
    except RecursionError:
        raise RowError("json", "bad JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise RowError("json", f"expected a JSON object, got {type(record).__name__}")
    if "timestamp" not in record:
        raise RowError("timestamp", "missing")
    t = record["timestamp"]
    # Compared before any conversion: an int of 400 digits has no float, and
    # NaN fails both comparisons.
    if type(t) not in (int, float) or not 0 <= t <= MAX_MS:
        raise RowError("timestamp", f"not a number of ms in [0, {MAX_MS:g}]: {shown(t)}")
    n_in = _json_count(record, "input_length")
    n_out = _json_count(record, "output_length")
    if "hash_ids" not in record:
        raise RowError("hash_ids", "missing")
    ids = record["hash_ids"]
    if not isinstance(ids, list):
        raise RowError("hash_ids", f"expected a list of integers, got {type(ids).__name__}")
    if len(ids) > MAX_TOKENS:
        raise RowError("hash_ids", f"{len(ids):,} ids, more than a request's {MAX_TOKENS:,} tokens")
    # One pass over the types in C; the per-id loop runs only to name a culprit.
    if set(map(type, ids)) - {int} or (ids and (min(ids) < 0 or max(ids) > INT64_MAX)):
        bad = next(h for h in ids if type(h) is not int or not 0 <= h <= INT64_MAX)
        raise RowError("hash_ids", f"not a non-negative int64: {shown(bad)}")
    return float(t), n_in, n_out, ids


def read_mooncake(path: str, lines: Lines, blocks: Iterator[tuple[int, list[str]]], skip: bool,
                   max_rows: int | None, window: Window | None) -> Reading:
    out = Collector(path, skip, max_rows, ties_allowed=True, time_field="timestamp", time_dtype=np.float64,
                     show_time=lambda ms: f"{ms:g} ms", window=None if window is None else window.native(1e3))
    def steps() -> Iterator[None]:
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
                except RowError as e:
                    out.bad_row(lineno, e.field, e.reason)
                    continue
                out.keep_row(lineno, t, n_in, n_out, ids)
            out.flush_rows()
            yield
            if out.full:
                break

    return Reading(out, steps(), "mooncake", 1e3, lines, with_hashes=True)
