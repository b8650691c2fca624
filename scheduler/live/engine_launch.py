"""Real engines started by `serve` as Ray actors (`launch:` on an openai pool).

One `EngineActor` per instance runs the pool's `launch.command` as a child
process on the node Ray placed it on (`num_gpus` GPUs reserved for it, so Ray
puts engines on GPU nodes; CUDA_VISIBLE_DEVICES is what Ray assigned). `{port}`
in the command becomes a free port on that node and `{host}` the address the
engine binds: 127.0.0.1 on a one-node cluster, the node's IP otherwise. The
scheduler waits for each engine's health endpoint, then uses it as that
instance's endpoint. The child dies with the actor (SIGKILL on the actor
process's death, Linux) and on `stop`.

An engine that dies later (its process exits, or its actor is lost) is
relaunched by `relaunch`: the scheduler actor's supervisor calls it for a
FAILED instance whose engine has exited, at most `launch.max_restarts` times
with a doubling backoff (Ray's max_restarts for the engine process); the
instance stays FAILED meanwhile and registers at the new endpoint once
healthy.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile

from scheduler.cluster import Cluster
from scheduler.config import Backend, LaunchConfig
from scheduler.live.mixed_client import MixedWorkerClient
from scheduler.live.openai_client import OpenAIWorkerClient
from scheduler.live.types import LiveOptions
from scheduler.live.worker_client import GrpcWorkerClient
from workers.clock import Clock
from workers.openai_engine import OpenAIEngine

PR_SET_PDEATHSIG = 1
HEALTH_POLL_S = 0.5


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EngineActor:
    """Runs one engine process; use `engine_actor_class()`."""

    def __init__(self, command: tuple[str, ...], host: str, label: str):
        self.command = command
        self.host = host
        self.label = label
        self.process: subprocess.Popen | None = None
        self.log_path = ""
        self.endpoint = ""

    def start(self) -> dict:
        """Start the engine (once) and say where it will listen."""
        if self.process is None:
            import ray

            host = ray.util.get_node_ip_address() if self.host == "node" else self.host
            port = _free_port(host)
            args = [a.replace("{port}", str(port)).replace("{host}", host).replace("{python}", sys.executable)
                    for a in self.command]
            log = tempfile.NamedTemporaryFile(prefix=f"infersched-engine-{self.label}-", suffix=".log", delete=False)
            self.log_path = log.name
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                            start_new_session=True)
            log.close()
            self.endpoint = f"http://{host}:{port}"
        return self.info()

    def restart(self) -> dict:
        """Start the engine again (on a fresh port) after its process exited."""
        self.stop()
        self.process = None
        return self.start()

    def info(self) -> dict:
        code = self.process.poll() if self.process is not None else None
        return {"endpoint": self.endpoint, "pid": self.process.pid if self.process else 0, "exit_code": code,
                "log": self.log_path}

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]
        return ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@functools.cache
def engine_actor_class():
    import ray

    return ray.remote(EngineActor)


def launch_engine(launch: LaunchConfig, label: str, host: str):
    """Create one EngineActor (Ray places it)."""
    return engine_actor_class().options(num_cpus=0, num_gpus=launch.num_gpus, max_restarts=0).remote(
        launch.command, host, label)


async def relaunch(handle, launch: LaunchConfig, label: str, host: str, backoff_s: float):
    """Start a dead engine again after `backoff_s`: its process in the same actor, or in
    a new actor when the old one is gone. Returns the actor that runs it now (then
    `wait_healthy`), or None when the engine is still running (the instance failed for
    another reason: its probe decides)."""
    import ray
    from ray.exceptions import RayActorError

    try:
        if (await asyncio.wait_for(handle.info.remote(), 10.0))["exit_code"] is None:
            return None
        await asyncio.sleep(backoff_s)
        await asyncio.wait_for(handle.restart.remote(), 30.0)
        return handle
    except (RayActorError, TimeoutError):
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)
    await asyncio.sleep(backoff_s)
    return launch_engine(launch, label, host)


async def wait_healthy(handle, model: str, timeout_s: float) -> str:
    """Start the engine behind `handle` and wait until its health endpoint answers;
    returns its endpoint. Raises RuntimeError with the engine's log when it exits or
    does not answer in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        info = await asyncio.wait_for(handle.start.remote(), timeout_s)
    except TimeoutError:
        raise RuntimeError(f"the engine actor was not placed within {timeout_s:.0f} s: does the Ray cluster have "
                           "a node with the GPUs launch.num_gpus asks for?") from None
    async with OpenAIEngine(info["endpoint"], model, connect_timeout_s=2.0, read_timeout_s=5.0) as engine:
        while True:
            if (await engine.health()).healthy:
                return info["endpoint"]
            state = await handle.info.remote()
            if state["exit_code"] is not None or loop.time() > deadline:
                tail = await handle.log_tail.remote()
                why = (f"exited with {state['exit_code']}" if state["exit_code"] is not None
                       else f"not healthy within {timeout_s:.0f} s")
                raise RuntimeError(f"engine at {info['endpoint']} {why}; its log ({state['log']}) ends:\n{tail}")
            await asyncio.sleep(HEALTH_POLL_S)


def is_engine_pool(pool) -> bool:
    return pool.config.backend == Backend.OPENAI


def worker_client(cluster: Cluster, clock: Clock, options: LiveOptions, member=None):
    """The core's WorkerClient: gRPC for emulated pools (as `member` of the worker plane),
    OpenAI-API engines for openai pools, one MixedWorkerClient over both when the cluster
    has both."""
    pools = [is_engine_pool(p) for p in cluster.pools]
    if not any(pools):
        return GrpcWorkerClient(clock, options, member=member)
    engines = OpenAIWorkerClient(cluster, clock, options)
    if all(pools):
        return engines
    grpc_client = GrpcWorkerClient(clock, options, member=member)
    return MixedWorkerClient([engines if is_engine_pool(cluster.pool_of(i)) else grpc_client
                              for i in range(cluster.n_instances)])


async def start_engine_pools(core, cluster: Cluster, host: str) -> dict:
    """Register every openai pool's instances with the core: the configured endpoints
    (one that does not answer its first probe starts FAILED, and rejoins once healthy),
    or engines launched as Ray actors once healthy. Returns the launched actors by instance."""
    launched: dict = {}
    waits = []
    for pool in cluster.pools:
        if not is_engine_pool(pool):
            continue
        config = pool.config
        if config.launch is None:
            for k, endpoint in zip(pool.instances, config.endpoints):
                core.register(k, f"{pool.name}-{k - pool.first_instance}", endpoint)
            continue
        for k in pool.instances:
            launched[k] = handle = launch_engine(config.launch, engine_label(cluster, k), host)
            waits.append((k, pool.name, wait_healthy(handle, config.model, config.launch.start_timeout_s)))
    try:
        endpoints = await asyncio.gather(*(w for _, _, w in waits))
    except BaseException:
        await stop_engines(launched.values())
        raise
    for (k, name, _), endpoint in zip(waits, endpoints):
        core.register(k, f"{name}-{k - cluster.pool_of(k).first_instance}", endpoint)
    probes = [(k, core.workers.probe(k, 2.0)) for pool in cluster.pools if is_engine_pool(pool)
              and pool.config.launch is None for k in pool.instances]
    for (k, _), healthy in zip(probes, await asyncio.gather(*(p for _, p in probes))):
        if not healthy:
            core.mark_failed(k, f"endpoint {core.slots[k].address} is not healthy")
    return launched


def engine_label(cluster: Cluster, instance: int) -> str:
    """`<pool>-<index in the pool>`: the engine's log file name and worker id."""
    pool = cluster.pool_of(instance)
    return f"{pool.name}-{instance - pool.first_instance}"


async def stop_engines(handles) -> None:
    import ray

    handles = list(handles)
    await asyncio.gather(*(asyncio.wait_for(h.stop.remote(), 20.0) for h in handles), return_exceptions=True)
    for handle in handles:
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)
