"""A real local Ray cluster per test module, declaring the device resources the
live-small cluster's worker actors ask for, joined by this process as a driver."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER_SCRIPT = ROOT / "deploy" / "local_multinode.sh"


@pytest.fixture(scope="module")
def live_small():
    config = load_cluster(builtin_cluster_path("live-small"))
    return config, Cluster(config)


@pytest.fixture(scope="module")
def ray_local(live_small):
    """A one-node cluster from `deploy/local_multinode.sh --head-only` (`local_ray`)."""
    from scheduler.live.actor import pool_resources

    with local_ray(pool_resources(live_small[1])) as ray:
        yield ray


@contextlib.contextmanager
def local_ray(resources: dict[str, float]):
    """A one-node Ray cluster declaring `resources`, joined by this process as a driver.

    Not `ray.init()` in this process: that forks Ray's GCS and raylet from the
    test process, which by then runs gRPC and Ray threads left by earlier
    tests, and Ray runs Python in the child before exec. A fork that lands
    while one of those threads holds a lock leaves the child stuck before
    exec (CI saw a GCS that never wrote its first log line, and a raylet that
    missed its start-up deadline). `ray start` forks them from a fresh process.
    """
    ray = pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")
    if not sys.platform.startswith("linux"):
        pytest.skip("the local cluster script targets Linux hosts")
    from scheduler.live.actor import RAY_NAMESPACE

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="isl-", dir="/tmp")  # short: Unix socket paths live under it
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this interpreter's ray
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    # This process's Ray reads RAY_AUTH_MODE once (unset: no token auth), so the
    # cluster runs in the mode this driver already has.
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    script = lambda *args: subprocess.run(  # noqa: E731
        [str(LOCAL_CLUSTER_SCRIPT), *args, "--temp-dir", temp_dir],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    try:
        started = script("start", "--head-only", "--num-cpus", "2",
                         "--head-resources", json.dumps(resources))
        assert started.returncode == 0, f"local_multinode.sh start failed:\n{started.stderr}"
        address = re.search(r"^RAY_ADDRESS=(\S+)$", started.stdout, re.M)[1]
        ray.init(address=address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING, configure_logging=False)
        yield ray
    finally:
        ray.shutdown()
        stopped = script("stop")
        left = script("pids").stdout.split()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"local_multinode.sh stop failed:\n{stopped.stderr}"
        assert not left, f"processes of the test cluster still running after stop: {left}"
