"""Reading a week-long CSV trace: rows/s of the column-wise reader, before and after, in one run.

Writes a synthetic Azure-2024-format trace (`TIMESTAMP,ContextTokens,
GeneratedTokens`, stamps like `2024-05-10 00:00:00.009930+00:00`, one week
of arrivals) under bench/out/ (ignored by git; reused when present), then
reads it in fresh subprocesses, one at a time:

- baseline: `read_trace` as of --baseline (a git ref, exported with `git
  archive`; default: the reader before the bytes-level column parser);
- current: this checkout's `read_trace`, whole file, first 1M rows
  (`max_rows`, as --requests 1000000 does) and a one-hour window a day in
  (`start_s`/`duration_s`, as --start 86400 --duration 3600 do).

Each line reports wall and CPU seconds, rows read per second on both, and
peak RSS; the machine is shared, so compare the ratios of one run.

    python bench/trace_read.py                    # 20M rows (~0.85 GB file)
    python bench/trace_read.py --rows 2000000     # quicker
Writes bench/results/trace_read.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BASELINE = "10a91fd"  # bounded, fuzzed readers; CSV parsed from str blocks
HEADER = b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
WEEK_S = 7 * 86400


def synthesize(path: Path, rows: int, seed: int = 7) -> None:
    """Poisson arrivals over one week, Azure-2024-like lengths, in 1M-row chunks."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-05-10T00:00:00", "us")
    gap_us = WEEK_S * 1e6 / rows
    t_us = 0
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(HEADER)
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            ticks = t_us + np.cumsum(rng.exponential(gap_us, n).astype(np.int64) + 1)
            t_us = int(ticks[-1])
            stamps = np.datetime_as_string(start + ticks.astype("timedelta64[us]"), unit="us")
            ctx = np.minimum(rng.lognormal(7.0, 1.1, n).astype(np.int64) + 1, 100_000)
            gen = np.minimum(rng.lognormal(5.0, 1.0, n).astype(np.int64) + 1, 8_000)
            f.write("".join(f"{s[:10]} {s[11:]}+00:00,{c},{g}\n"
                            for s, c, g in zip(stamps.tolist(), ctx.tolist(), gen.tolist())).encode())
    tmp.rename(path)


# Peak RSS from VmHWM: ru_maxrss of a child can report the forking parent's size.
MEASURE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from simulator.traces import read_trace
kwargs = json.loads(sys.argv[3])
w0, c0 = time.perf_counter(), time.process_time()
trace = read_trace(sys.argv[2], **kwargs)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
# Rows parsed: a window also reads the rows before it (and the first one after).
read = trace.rows + getattr(trace, "rows_before_window", 0)
print(json.dumps({"rows": trace.rows, "rows_read": read, "wall_s": wall, "cpu_s": cpu,
                  "span_s": trace.span_s, "input_sum": int(trace.input_tokens.sum()),
                  "peak_rss_mb": int(next(line.split()[1] for line in open("/proc/self/status")
                                          if line.startswith("VmHWM:"))) / 1024}))
"""


def measure(code_root: Path, path: Path, **kwargs) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(code_root), str(path), json.dumps(kwargs)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    r.update(rows_per_s_wall=round(r["rows_read"] / r["wall_s"]), rows_per_s_cpu=round(r["rows_read"] / r["cpu_s"]),
             wall_s=round(r["wall_s"], 2), cpu_s=round(r["cpu_s"], 2), peak_rss_mb=round(r["peak_rss_mb"]))
    return r


def export(ref: str, into: Path) -> Path:
    """The packages `read_trace` imports, as of `ref`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "simulator", "scheduler", "workers"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def week_trace(rows: int) -> Path:
    """The synthetic week of `rows` rows under bench/out/, written on first use."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"azure2024_week_{rows}.csv"
    if not path.exists():
        t0 = time.perf_counter()
        synthesize(path, rows)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--baseline", default=BASELINE, help=f"git ref of the reader to compare with (default {BASELINE})")
    args = ap.parse_args()
    path = week_trace(args.rows)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("baseline whole file", export(args.baseline, Path(tmp)), {}),
                 ("current whole file", ROOT, {}),
                 ("current --requests 1000000", ROOT, {"max_rows": 1_000_000}),
                 ("current --start 86400 --duration 3600", ROOT, {"start_s": 86400.0, "duration_s": 3600.0})]
        for name, code, kwargs in cases:
            r = {"case": name, **measure(code, path, **kwargs)}
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
    base, cur = runs[0], runs[1]
    assert (base["rows"], base["input_sum"]) == (cur["rows"], cur["input_sum"]), "readers disagree"
    doc = {"file": path.name, "file_bytes": path.stat().st_size, "rows": args.rows, "baseline": args.baseline,
           "runs": runs, "speedup_wall": round(base["wall_s"] / cur["wall_s"], 2),
           "speedup_cpu": round(base["cpu_s"] / cur["cpu_s"], 2),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "load_avg_1m": round(os.getloadavg()[0], 1)}}
    out = ROOT / "bench" / "results" / "trace_read.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("speedup_wall", "speedup_cpu")}), file=sys.stderr)


if __name__ == "__main__":
    main()
