"""Commands that start a local Ray cluster (`serve`, `--parallel N`) set its authentication
mode before Ray is imported, so Ray does not warn about it on every start; a user's own
RAY_AUTH_MODE is kept. (`serve` is checked in tests/live/test_ports.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY_WARNING = "Token authentication is"


def _compare(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infersched.cli", "compare", "--policies", "cost-aware,slo-aware",
                           "--requests", "100", "--parallel", "2", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_parallel_runs_start_ray_without_its_authentication_warning():
    pytest.importorskip("ray", reason="--parallel runs on Ray (pip install ray)")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    done = _compare(env)
    assert done.returncode == 0, done.stderr
    assert "cost-aware" in done.stdout and RAY_WARNING not in done.stderr, done.stderr


@pytest.mark.parametrize("preset, expected", [(None, "token"), ("disabled", "disabled")])
def test_the_users_setting_wins(preset, expected):
    code = ("import os, sys\n"
            "from infersched.cli.common import local_ray_auth\n"
            "local_ray_auth()\n"
            "print(os.environ['RAY_AUTH_MODE'])\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    if preset is not None:
        env["RAY_AUTH_MODE"] = preset
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.strip() == expected, done.stderr
