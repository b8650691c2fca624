"""`infersched serve` as a user runs it, for the tests and benches that need a whole
serve: a subprocess on port 0, read until it prints that it is ready ("... stops
it"), with what it printed parsed (the gRPC address, the metrics URL, the OpenAI
base URL). One place for the start/wait/stop loop that the live, security,
Prometheus and engine tests and bench/frontdoor_overhead.py share.

`checkout` runs serve from another checkout of the repository (its scheduler
actor imports that code too: Ray puts the driver's directory on its workers'
path), so a bench can compare two commits in one window.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "infersched.cli")
START_TIMEOUT_S = 180.0
READY_MARKER = "stops it"  # serve's last start-up line: "Ctrl-C (or SIGTERM) stops it"


def word_after(lines: list[str], prefix: str) -> str | None:
    """The word after `prefix` in the first line holding it."""
    line = next((ln for ln in lines if prefix in ln), None)
    return line.split(prefix, 1)[1].split()[0] if line is not None else None


class Served(NamedTuple):
    proc: subprocess.Popen
    address: str  # the scheduler's gRPC host:port
    lines: list[str]  # what serve printed while it started

    @property
    def metrics(self) -> str | None:
        """The Prometheus endpoint's URL, None with --metrics-port -1."""
        return word_after(self.lines, "metrics on ")

    @property
    def http(self) -> str | None:
        """The OpenAI base URL (http://host:port/v1), None without --http-port."""
        return word_after(self.lines, "OpenAI-compatible HTTP on ")


def read_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """Lines of `proc`'s stdout up to the first holding `marker`; AssertionError with
    what it printed (and its stderr, once it has exited) when the marker never comes."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {lines}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def start_serve(cluster: Path | str, *flags: str, checkout: Path = REPO, command: Sequence[str] = CLI,
                timeout_s: float = START_TIMEOUT_S) -> Served:
    """`serve --cluster CLUSTER --port 0 FLAGS...` started and ready; AssertionError (serve
    stopped) when it does not get there."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if checkout != REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(checkout), env.get("PYTHONPATH"))))
    proc = subprocess.Popen([*command, "serve", "--cluster", str(cluster), "--port", "0", *flags], cwd=checkout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = read_until(proc, READY_MARKER, timeout_s)
        address = word_after(lines, "listening on ")
        assert address, f"serve printed no address: {lines}"
    except BaseException:
        stop_process(proc, signal.SIGKILL)
        raise
    return Served(proc, address, lines)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> str:
    """Signal a serve (SIGTERM and SIGINT stop its actors and engines) or an engine, SIGKILL
    if it does not exit in time; returns what it printed since it started (stdout, then
    stderr; "" when they were not piped here). A paused (SIGSTOP) process is continued
    first: it could not act on the signal."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
    return (out or "") + (err or "")


@contextlib.contextmanager
def served_process(cluster: Path | str, *flags: str, **options) -> Iterator[Served]:
    """`start_serve` for the length of a with-block, stopped (SIGTERM) after it."""
    served = start_serve(cluster, *flags, **options)
    try:
        yield served
    finally:
        stop_process(served.proc)
