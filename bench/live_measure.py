"""Measurement helpers shared by the live benchmarks: percentiles, CPU time per
process group (from /proc), and Prometheus histogram quantiles between scrapes.

Kept apart from bench/live_throughput.py so bench/http_throughput.py and the
other live benchmarks measure the same way.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
import urllib.request
from pathlib import Path

import numpy as np


def pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 4)


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies over all cores."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def process_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far, grouped: each named root process, and the descendants of
    the serve process by what they are (ray::SchedulerActor, ray::WorkerActor, raylet, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu, name = {}, {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        first = argv[0].decode(errors="replace") if argv and argv[0] else "?"
        if first.startswith("ray::"):
            name[pid] = first.split()[0]
        elif b"scheduler.live.relay.frontend" in argv:
            name[pid] = "frontend"  # the scheduler's client-facing front-end processes
        else:
            name[pid] = os.path.basename(first.split()[0])
    out: dict[str, float] = {}
    root_of = {pid: label for label, pid in roots.items()}
    for pid in cpu:
        q, label = pid, None
        while q > 1 and label is None:
            if q in root_of:
                label = root_of[q]
            q = parent.get(q, 0)
        if label is None:
            continue
        key = label if pid in root_of or label != "serve" else name[pid]
        out[key] = out.get(key, 0.0) + cpu[pid]
    return out


def scrape(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the overhead histograms: name -> {le: count}."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[float, float]] = {}
    for m in re.finditer(r'^(infersched_\w+?)_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out.setdefault(m.group(1), {})[float(m.group(2))] = float(m.group(3))
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Prometheus-style quantile of the observations between two scrapes (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts):
        if cum >= rank:
            if math.isinf(bound):
                return lower
            inside = cum - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, cum
    return lower


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(result: dict, out: str | Path, load_before: float) -> None:
    """Stamps a benchmark's result with the machine, the load average before and after and the UTC
    time, writes it to `out` as JSON and prints it."""
    result.update(machine=f"{platform.machine()}, {os.cpu_count()} cores",
                  load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
