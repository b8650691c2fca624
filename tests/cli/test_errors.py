"""Errors a command-line user sees name the flags and say what to do (real subprocess runs)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def infersched(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infersched.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("command, needle", [
    (["simulate", "--no-progress"], "--requests 100,000,000 exceeds its 19,366 rows"),
    (["plan", "--no-progress"], "--requests 100,000,000 exceeds its 19,366 rows"),
    (["compare", "--policies", "least-loaded", "--no-progress"], "--requests 100,000,000 exceeds its 19,366 rows"),
])
def test_workload_errors_name_the_flags(command, needle):
    proc = infersched(*command, "--arrival", "trace", "--requests", "100000000")
    assert proc.returncode == 2
    assert needle in proc.stderr and "n_requests" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rate_is_named_as_the_flag_for_a_trace_without_timestamps(tmp_path):
    trace = tmp_path / "lengths.csv"
    trace.write_text("input_tokens,output_tokens\n100,20\n200,30\n")
    proc = infersched("simulate", "--trace", str(trace), "--arrival", "poisson", "--no-progress")
    assert proc.returncode == 2
    assert "(--rate)" in proc.stderr and "rate_rps" not in proc.stderr


@pytest.fixture
def refusing_port():
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["replay", "--requests", "5"]])
def test_nothing_listening_is_one_line_suggesting_serve(command, refusing_port):
    target = f"127.0.0.1:{refusing_port}"
    proc = infersched(*command, "--target", target)
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [f"infersched: error: no infersched scheduler answers at {target} (start one with "
                      "`infersched serve`, or give its address with --target HOST:PORT)"]
    assert "failed to connect" not in proc.stderr and "UNAVAILABLE" not in proc.stderr
