"""A real local Ray cluster for tests: one node started by `deploy/local_multinode.sh
--head-only`, declaring device resources, joined by this process as a driver.

tests/conftest.py starts one for the whole session (`ray_cluster`): starting and
stopping a cluster takes 10-20 s on a small host, and the live and fault tests only
need *a* cluster that holds their worker actors. Each test starts its own scheduler
actor (with its workers) on it and stops it, so tests share the Ray processes, never
a scheduler, a worker or a counter; after each module that used it, no actor may be
left alive (`assert_no_live_actors`). `serve --address` joins it the same way, in the
tests whose subject is not serve starting and stopping a Ray instance of its own.
"""
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
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER_SCRIPT = ROOT / "deploy" / "local_multinode.sh"
# Chips of each catalogue device the session cluster declares, at least: more than any
# cluster a test starts asks for (gpu-disagg: 16 H100s), so no test waits on another's
# resources; the built-in clusters' needs raise it where one asks for more.
SESSION_CHIPS = 64.0


def session_resources() -> dict[str, float]:
    """Device resources enough for every built-in cluster and the tests' own clusters."""
    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.live.actor import device_resource, pool_resources
    from workers.devices import DEVICES

    need = {device_resource(name): SESSION_CHIPS for name in DEVICES}
    for path in sorted((ROOT / "deploy" / "clusters").glob("*.yaml")):
        for key, chips in pool_resources(Cluster(load_cluster(path))).items():
            need[key] = max(need.get(key, 0.0), chips)
    return need


def cluster_env() -> dict[str, str]:
    """The environment for local_multinode.sh and the CLI beside a test cluster."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this interpreter's ray
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    # This process's Ray reads RAY_AUTH_MODE once (unset: no token auth), so the
    # cluster runs in the mode this driver already has.
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    return env


@contextlib.contextmanager
def scripted_cluster(*start_args: str, prefix: str = "isl-"):
    """`local_multinode.sh start START_ARGS` in a temp dir of its own; yields the cluster's
    address; stops it after, and asserts that none of its processes are left."""
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Unix socket paths live under it
    env = cluster_env()
    script = lambda *args: subprocess.run(  # noqa: E731
        [str(LOCAL_CLUSTER_SCRIPT), *args, "--temp-dir", temp_dir],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    try:
        started = script("start", *start_args)
        assert started.returncode == 0, f"local_multinode.sh start failed:\n{started.stderr}"
        yield re.search(r"^RAY_ADDRESS=(\S+)$", started.stdout, re.M)[1]
    finally:
        stopped = script("stop")
        left = script("pids").stdout.split()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"local_multinode.sh stop failed:\n{stopped.stderr}"
        assert not left, f"processes of the test cluster still running after stop: {left}"


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

    if ray.is_initialized():
        ray.shutdown()
    with scripted_cluster("--head-only", "--num-cpus", "2", "--head-resources", json.dumps(resources)) as address:
        try:
            join(ray, address)
            yield address
        finally:
            ray.shutdown()


def join(ray, address: str) -> None:
    """This process as a driver of the cluster at `address` (again, when a test that
    runs its own cluster left it)."""
    from scheduler.live.actor import RAY_NAMESPACE

    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == address:
            return
        ray.shutdown()
    ray.init(address=address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING, configure_logging=False)


def assert_no_live_actors(ray, timeout_s: float = 60.0) -> None:
    """Every actor of the cluster is dead (or gone): what a test started, it stopped.
    Actors die a moment after their stop returns (or their driver, a serve, exits)."""
    from ray._private import state

    deadline = time.monotonic() + timeout_s
    while True:
        alive = sorted(f"{a['ActorClassName']} {a.get('Name') or ''}".strip() for a in state.actors().values()
                       if a["State"] != "DEAD")
        if not alive:
            return
        assert time.monotonic() < deadline, f"actors still alive on the shared Ray cluster: {alive}"
        time.sleep(0.2)
