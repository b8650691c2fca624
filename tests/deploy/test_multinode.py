"""`infersched serve --address` on a multi-node Ray cluster started by deploy/local_multinode.sh.

One machine, two Ray nodes (two raylets on this host): the head declares
`device_h100-sxm: 2`, the worker node `device_b200: 1`, which is what
deploy/clusters/live-small.yaml asks for. serve joins that cluster; each pool's
worker actors must land on the node of their device, a trace slice replayed
over gRPC must complete in full and reach pools on both nodes, SIGINT
must stop serve and its actors, and `stop` must end every Ray process
without SIGKILL. Everything is real: `ray start`, the CLI as a
subprocess, gRPC on loopback.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="the multi-node launch runs on Ray (pip install 'ray[default]')"),
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="placement is read from /proc (Linux) and the script targets Linux hosts"),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local_multinode.sh"
CLUSTER = ROOT / "deploy" / "clusters" / "live-small.yaml"
TRACE = ROOT / "simulator" / "data" / "azure_conv_2023.csv.gz"
TIME_SCALE = 0.01
REQUESTS = 300
# Devices per node, as the script starts them by default.
HEAD_DEVICE, WORKER_DEVICE = "h100-sxm", "b200"


# What the script prints for drivers that join (RAY_AUTH_MODE), set once it has started.
_CLUSTER_ENV: dict[str, str] = {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The `ray` and `python` next to this interpreter: the Ray that serve imports.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    env.update(_CLUSTER_ENV)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "infersched.cli", *args]


@pytest.fixture(scope="module")
def multinode():
    temp_dir = tempfile.mkdtemp(prefix="isr-", dir="/tmp")  # short: Unix socket paths live under it
    env = _env()
    try:
        started = subprocess.run([str(SCRIPT), "start", "--temp-dir", temp_dir], capture_output=True, text=True,
                                 timeout=180, env=env, cwd=ROOT)
        assert started.returncode == 0, f"local_multinode.sh start failed:\n{started.stderr}"
        printed = dict(re.findall(r"^(RAY_\w+)=(\S+)$", started.stdout, re.M))
        address = printed.pop("RAY_ADDRESS")
        _CLUSTER_ENV.update(printed)  # RAY_AUTH_MODE: drivers must match the cluster's
        yield address, temp_dir
    finally:
        _CLUSTER_ENV.clear()
        subprocess.run([str(SCRIPT), "stop", "--temp-dir", temp_dir], capture_output=True, timeout=120, env=env)
        left = subprocess.run([str(SCRIPT), "pids", "--temp-dir", temp_dir], capture_output=True, text=True,
                              timeout=60, env=env).stdout.split()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the cluster still running after stop: {left}"


class Serve:
    """`infersched serve --address ...` as a subprocess, its output read on a thread."""

    def __init__(self, address: str):
        self.proc = subprocess.Popen(
            _cli("serve", "--cluster", str(CLUSTER), "--address", address, "--host", "127.0.0.1", "--port", "0",
                 "--metrics-port", "-1", "--time-scale", str(TIME_SCALE), "--policy", "round-robin"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"serve exited ({self.proc.wait()}) before printing {pattern!r}:\n"
                                     + "".join(self.output))
            self.output.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"serve did not print {pattern!r} within {timeout_s:g} s:\n" + "".join(self.output))

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # this serve process only
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def serve(multinode):
    address, _ = multinode
    server = Serve(address)
    try:
        target = server.wait_for(r"scheduler listening on (\S+)", timeout_s=180).group(1)
        yield server, target
    finally:
        server.stop()


def _placement(address: str) -> list[dict]:
    """Each worker actor's pool, PID and Ray node, from a separate Ray driver.

    A worker process is a child of its node's raylet, whose command line
    carries `--node_id=<hex>`; that ties each actor to a node without the
    dashboard (off in the script's cluster)."""
    code = r"""
import json, logging, sys
import ray
from scheduler.control import RAY_NAMESPACE, SCHEDULER_ACTOR_NAME
ray.init(address=sys.argv[1], namespace=RAY_NAMESPACE, logging_level=logging.ERROR, log_to_driver=False,
         configure_logging=False)
try:
    handles = ray.get(ray.get_actor(SCHEDULER_ACTOR_NAME).worker_handles.remote(), timeout=60)
    infos = ray.get([h.info.remote() for h in handles], timeout=60)
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    out = []
    for info in infos:
        with open(f"/proc/{info['pid']}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        node = next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
        out.append({**info, "node_id": node, "node_resources": nodes.get(node, {})})
    print(json.dumps(out))
finally:
    ray.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120,
                          env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_worker_actors_land_on_the_node_of_their_device(multinode, serve):
    from scheduler.config import load_cluster
    from scheduler.control import device_resource

    address, _ = multinode
    devices = {p.name: p.device for p in load_cluster(CLUSTER).pools}
    workers = _placement(address)
    assert sorted(w["pool"] for w in workers) == sorted(devices)
    for w in workers:
        key = device_resource(devices[w["pool"]])
        assert w["node_resources"].get(key, 0) >= 1, f"{w['pool']} runs on a node without {key}: {w}"
    by_device = {devices[w["pool"]]: w["node_id"] for w in workers}
    head = [w for w in workers if w["node_resources"].get("node:__internal_head__")]
    assert len({w["node_id"] for w in workers}) == 2, workers
    assert {devices[w["pool"]] for w in head} == {HEAD_DEVICE}, "h100 pools on the head node"
    assert by_device[WORKER_DEVICE] not in {w["node_id"] for w in head}, "b200 pool on the worker node"


def test_workers_registered_and_ready_over_grpc(serve):
    import grpc

    from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

    _, target = serve
    with grpc.insecure_channel(target) as channel:
        reply = scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=30)
    assert len(reply.workers) == 3
    for w in reply.workers:
        assert w.state == common_pb2.WORKER_STATE_READY, w
    # With more than one node, workers advertise their node's IP (for peers on other
    # nodes); both nodes run on this host, so all share one.
    hosts = {w.address.rsplit(":", 1)[0] for w in reply.workers}
    assert len(hosts) == 1 and all(int(w.address.rsplit(":", 1)[1]) > 0 for w in reply.workers), hosts


def test_replay_completes_every_request_across_both_nodes(serve, tmp_path):
    _, target = serve
    out = tmp_path / "replay.json"
    done = subprocess.run(
        _cli("replay", "--target", target, "--trace", str(TRACE), "--requests", str(REQUESTS),
             "--speedup", str(1 / TIME_SCALE), "--cluster", str(CLUSTER), "--json", str(out)),
        capture_output=True, text=True, timeout=240, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    assert (summary["requests"], summary["completed"], summary["rejected"], summary["failed"]) == (
        REQUESTS, REQUESTS, 0, 0)
    served = {name: pool["requests"] for name, pool in summary["pools"].items()}
    # Round-robin alternates prefill candidates: the b200 pool (worker node) and the
    # h100 prefill pool, which hands over to h100 decode (head node). Both nodes serve.
    assert served["b200"] > 0 and served["h100-prefill"] > 0 and served["h100-decode"] > 0, served


def test_sigint_stops_serve_and_its_actors(multinode, serve):
    address, _ = multinode
    server, target = serve
    pids = [w["pid"] for w in _placement(address)]
    assert server.stop() == 0, "".join(server.output)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "worker actor processes outlived serve"
    host, port = target.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_stop_ends_every_ray_process_on_sigterm(multinode):
    """Last: `stop` sends SIGTERM to the raylets, then the rest, then the GCS; none needs SIGKILL."""
    _, temp_dir = multinode
    before = subprocess.run([str(SCRIPT), "pids", "--temp-dir", temp_dir], capture_output=True, text=True,
                            timeout=60, env=_env()).stdout.split()
    assert before, "the cluster is running"
    done = subprocess.run([str(SCRIPT), "stop", "--temp-dir", temp_dir], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    m = re.search(r"(\d+) of (\d+) processes ended on SIGTERM .*\(sent to 2 raylets, then \d+ others, then 1 GCS\)",
                  done.stderr)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= len(before), done.stderr
    assert "SIGKILL" not in done.stderr, done.stderr
    assert not [pid for pid in map(int, before) if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
