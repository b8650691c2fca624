"""The worker's Ray actor: one emulated instance serving the Worker gRPC service.

Creation starts the worker's clock and gRPC server (Worker, health,
reflection) on `host:0` and registers the address with the scheduler
(`scheduler.register_worker.remote(instance, worker_id, address)`); a restart
by Ray runs __init__ again, so a restarted worker registers itself with its
new address. The Worker service is for the cluster only: the credentials
arrive as a constructor argument (workers.security.plane), and a prefill
worker hands KV only to addresses the scheduler lists (workers.security.peers).
Its methods are idempotent. Use `worker_actor_class()` for the
Ray class (Ray is imported on first use).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from infersched.v1 import worker_pb2_grpc
from workers.clock import ScaledClock
from workers.emulated import DEFAULT_CLAIM_TIMEOUT_S, DEFAULT_INPUT_SLACK_S, EmulatedWorker
from workers.work import WorkerStatsView
from workers.kv_link import DEFAULT_KV_BLOCK_TOKENS, KvLinks
from workers.kv_tiers import KvTier
from workers.rpc import WORKER_SERVICE, resolve_host, start_grpc_server
from workers.security.peers import PeerBook
from workers.security.service import is_loopback
from workers.servicer import WorkerServicer
from workers.shared_store import RemoteStore

if TYPE_CHECKING:
    from workers.perf import InstancePerf
    from workers.security.plane import WorkerCredentials

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker actor serves (plain data; picklable)."""

    pool: str
    instance: int  # global index in the cluster snapshot
    role: int  # engine role: ROLE_PREFILL, ROLE_DECODE or ROLE_BOTH
    max_batch: int
    max_batch_tokens: int
    link_bytes_per_s: float
    prefix_block_tokens: int = 0  # prefix cache block size (0: no prefix cache)
    token_budget: int = 0  # chunked prefill: tokens per iteration (0: prefill-first)
    kv_tiers: tuple = ()  # KvTier levels below HBM, fastest first
    kv_store: KvTier | None = None  # the cluster's store, held by a StoreService actor (workers/shared_store.py)
    kv_store_blocks: int = 0  # its capacity in this model's blocks


class WorkerActor:
    """Async Ray actor serving one instance's Worker service."""

    def __init__(self, spec: WorkerSpec, perf: "InstancePerf", scheduler=None, *, host: str = "127.0.0.1",
                 time_scale: float = 0.01, rpc_timeout_s: float = 120.0,
                 claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S, kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS,
                 input_slack_s: float = DEFAULT_INPUT_SLACK_S, credentials: "WorkerCredentials | None" = None,
                 store=None):
        """`store`: the StoreService actor holding spec.kv_store (None: no shared store)."""
        self.spec = spec
        self.worker_id = f"{spec.pool}-{spec.instance}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        shared = None
        if store is not None and spec.kv_store is not None:
            shared = RemoteStore(spec.kv_store, spec.kv_store_blocks, store, perf.model.name)
        self.worker = EmulatedWorker(
            perf, spec.role, ScaledClock(time_scale), max_batch=spec.max_batch,
            max_batch_tokens=spec.max_batch_tokens, link_bytes_per_s=spec.link_bytes_per_s,
            worker_id=self.worker_id, pool=spec.pool, instance=spec.instance, claim_timeout_s=claim_timeout_s,
            input_slack_s=input_slack_s, prefix_block_tokens=spec.prefix_block_tokens,
            token_budget=spec.token_budget, kv_tiers=spec.kv_tiers, kv_store=shared)
        # The cluster's credentials come from the scheduler as a constructor argument
        # (through Ray: never a command line or a log line).
        self._credentials = credentials
        self._links = KvLinks(self.worker, rpc_timeout_s, kv_block_tokens,
                              credentials.member if credentials is not None else None)
        self._scheduler = scheduler
        self._host = host
        self._server: grpc.aio.Server | None = None
        self._health = None
        self.address = ""
        self._started = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> str:
        bind, advertise = resolve_host(self._host)
        credentials = self._credentials
        if not is_loopback(bind) and (credentials is None or credentials.tls is None):
            # Reachable from other hosts: a token over plaintext could be read off the network.
            raise RuntimeError(f"worker {self.worker_id}: refusing to serve on {bind} without the cluster's "
                               "mutual TLS credentials")
        fetch = self._scheduler.worker_addresses.remote if self._scheduler is not None else None
        servicer = WorkerServicer(self.worker, on_drain=self._not_serving, peers=PeerBook(fetch))

        def add(server):
            worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
            return [WORKER_SERVICE]

        self._server, port, self._health = await start_grpc_server(bind, add, security=credentials)
        self.address = f"{advertise}:{port}"
        if self._scheduler is not None:
            try:
                await self._scheduler.register_worker.remote(self.spec.instance, self.worker_id, self.address)
            except Exception as exc:  # the supervisor also pulls addresses; a failed push is not fatal
                log.warning("worker %s could not register with the scheduler: %s", self.worker_id, exc)
        return self.address

    async def _not_serving(self) -> None:
        from grpc_health.v1 import health_pb2

        for name in ("", WORKER_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def get_address(self) -> str:
        """host:port of the Worker service (waits for the server to start)."""
        return await asyncio.shield(self._started)

    async def info(self) -> dict:
        address = await asyncio.shield(self._started)
        return {"worker_id": self.worker_id, "address": address, "instance": self.spec.instance,
                "pool": self.spec.pool, "pid": os.getpid()}

    async def stats(self) -> WorkerStatsView:
        await asyncio.shield(self._started)
        return self.worker.stats()

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving: cancel in-flight work and close the server (idempotent)."""
        await asyncio.shield(self._started)
        self.worker.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        await self._links.close()


@functools.cache
def worker_actor_class():
    """WorkerActor as a Ray actor class (Ray imported on first use)."""
    import ray

    return ray.remote(WorkerActor)
