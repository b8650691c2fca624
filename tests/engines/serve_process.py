"""`infersched serve` as a user runs it, for the engine tests and benches: a
subprocess on port 0, ready once it prints where it listens."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "infersched.cli"]
START_TIMEOUT_S = 180.0


def start_serve(cluster: Path, *args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """(process, scheduler address, lines printed); raises RuntimeError if it does not start."""
    proc = subprocess.Popen([*CLI, "serve", "--cluster", str(cluster), "--port", "0", "--metrics-port", "-1", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if "stops it" in line:
            break
    address = next((ln.split("listening on ")[1].split()[0] for ln in lines if "listening on" in ln), None)
    if address is None:
        stop_serve(proc)
        raise RuntimeError(f"serve did not start: {lines} {proc.stderr.read()}")
    return proc, address, lines


def stop_serve(proc: subprocess.Popen) -> None:
    """SIGTERM (serve stops its actors and engines), SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
