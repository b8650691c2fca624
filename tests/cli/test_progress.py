"""Progress bars: on stderr when it is a terminal, none with --no-progress or when stderr is not a terminal."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Each long-running command on a small workload, and the text its bar shows.
COMMANDS = [
    (["simulate", "--requests", "3000"], "simulating"),
    (["compare", "--policies", "least-loaded,cost-aware", "--requests", "2000"], "simulations"),
    (["plan", "--requests", "3000", "--rate", "20", "--max-rounds", "1"], "simulating"),
]


def run_on_terminal(args: list[str], stdout_too: bool = False) -> tuple[int, str]:
    """Run the command with stderr (and stdout_too) on a pseudo-terminal; its exit status and what it showed."""
    main, child = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and a bar sized to it would draw nothing.
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "infersched.cli", *args], cwd=ROOT, env=ENV,
                            stdout=child if stdout_too else subprocess.DEVNULL, stderr=child)
    os.close(child)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return proc.wait(timeout=300), shown.decode(errors="replace")


@pytest.mark.parametrize("args, bar", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_bar_on_a_terminal(args, bar):
    code, shown = run_on_terminal(args)
    assert code == 0, shown
    assert bar in shown and "\r" in shown and "100%" in shown


def test_simulate_shows_the_trace_being_checked(tmp_path):
    """The trace is read once to check it before the replay: a bar over its bytes, then the replay's."""
    code, shown = run_on_terminal(["simulate", "--requests", "3000"])
    assert code == 0, shown
    assert shown.index("reading trace") < shown.index("simulating")


@pytest.mark.parametrize("args, bar", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_no_bar_with_no_progress(args, bar):
    code, shown = run_on_terminal([*args, "--no-progress"])
    assert code == 0, shown
    assert bar not in shown and "%|" not in shown


@pytest.mark.parametrize("args, bar", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_no_bar_when_stderr_is_not_a_terminal(args, bar):
    proc = subprocess.run([sys.executable, "-m", "infersched.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "%|" not in proc.stderr and "\r" not in proc.stderr


def test_every_long_running_command_takes_no_progress():
    from infersched.cli import build_parser

    parser = build_parser()
    for command in (["simulate"], ["compare", "--policies", "x"], ["plan"], ["sweep", "--grid", "g", "--out", "o"],
                    ["replay"]):
        assert parser.parse_args([*command, "--no-progress"]).no_progress is True
