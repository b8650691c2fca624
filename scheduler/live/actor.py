"""The scheduler's Ray actor: the core on a scaled clock, its gRPC server (or front ends),
the OpenAI-compatible HTTP front door, Prometheus metrics, and the supervisor of one
worker actor per pool instance.

An async actor: the core, the gRPC servicers and the worker client share its
event loop, so no locks are needed. Workers register their address when they
start (and again after Ray restarts them). When the core marks an instance
FAILED, the supervisor probes it (a false alarm comes back at once), waits for
Ray to restart a crashed actor (which registers itself, or its new address is
pulled here), or replaces an actor out of restarts. The worker plane's
credentials (workers.security.plane) come in with the constructor arguments and
go to each worker actor the same way; clients' TLS and token
(workers.security.service) guard the gRPC server, front ends and metrics.

The actor itself may be restarted by Ray (`start_scheduler(max_restarts=N)`):
its worker actors, which it owns, die with it; every incarnation starts
itself (a call to its own start() queued from __init__: nobody else calls it
after a restart), binds the same port (so give a fixed one) and creates new
workers (with the same credentials, its constructor arguments), and appends to
the decision log (which `serve` truncates first). Clients meanwhile get
UNAVAILABLE, then held requests until a path is READY.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import logging
import os
from typing import Any

from scheduler.cluster import Cluster
from scheduler.config import ClusterConfig, PolicyConfig
from scheduler.decision_log import DecisionLog
from scheduler.live.bounds import add_scheduler_service
from scheduler.live.core import SchedulerCore
from scheduler.live.http import HttpFrontDoor, PromptCounter
from scheduler.live.metrics import Metrics
from scheduler.live.ports import BindError, Listener, bind_metrics, claim_check
from scheduler.live.relay import FrontendPool, check_frontends
from scheduler.live.servicer import SCHEDULER_SERVICE, SchedulerServicer
from scheduler.live.types import LiveOptions, SchedulerStatsView
from scheduler.live.engine_launch import (engine_label, is_engine_pool, relaunch, start_engine_pools, stop_engines,
                                         wait_healthy, worker_client)
from scheduler.live.worker_client import WorkerClient
from scheduler.types import Role
from workers.actor import WorkerSpec, worker_actor_class
from workers.clock import ScaledClock
from workers.report import WorkerState
from workers.shared_store import store_actor_class
from workers.rpc import resolve_host, set_health, start_grpc_server
from workers.security.plane import ClusterCredentials
from workers.security.service import ServiceSecurity, is_loopback

log = logging.getLogger(__name__)

SCHEDULER_ACTOR_NAME = "infersched-scheduler"
RAY_NAMESPACE = "infersched"
DECISION_LOG_FLUSH_S = 1.0
ENGINE_PROBE_S = 1.0  # between health probes of a failed real engine
ENGINE_BACKOFF_S = (1.0, 30.0)  # before relaunching a dead engine: the first wait, doubling up to the second


def plane_credentials(worker_host: str, tls: bool | None = None) -> ClusterCredentials:
    """Fresh worker-plane credentials; mutual TLS whenever workers bind an address other
    hosts can reach (`tls` None), or as asked (tests select it on loopback)."""
    return ClusterCredentials.generate(tls=not is_loopback(worker_host) if tls is None else tls)


def device_resource(device: str) -> str:
    """The custom Ray resource a pool's instances need: one unit per chip."""
    return f"device_{device}"


def pool_resources(cluster: Cluster) -> dict[str, float]:
    """Custom resources a cluster's worker actors need, e.g. {"device_h100-sxm": 2.0}."""
    need: dict[str, float] = {}
    for pool in cluster.pools:
        if is_engine_pool(pool):  # real engines: Ray places them by num_gpus
            continue
        key = device_resource(pool.config.device)
        need[key] = need.get(key, 0.0) + float(pool.config.instances * pool.perf.chips)
    return need


class SchedulerActor:
    """Async Ray actor: the client-facing gRPC server, the core, and the supervisor of
    one WorkerActor per pool instance. Use `scheduler_actor_class()`."""

    def __init__(self, config: ClusterConfig, *, policy: PolicyConfig | str | None = None,
                 options: LiveOptions = LiveOptions(), host: str = "127.0.0.1", port: int = 50051,
                 worker_host: str = "127.0.0.1", metrics_host: str = "127.0.0.1", metrics_port: int | None = None,
                 metrics_port_fallback: bool = False, worker_max_restarts: int = 3, start_timeout_s: float = 120.0,
                 realtime_priority: int = 0, frontends: int = 0, decision_log: str | None = None,
                 credentials: ClusterCredentials | None = None, security: ServiceSecurity | None = None,
                 http_port: int | None = None):
        self.config = config
        # The worker plane's credentials (workers.security.plane): made by start_scheduler in
        # the driver, so a restarted actor gets the same ones back with its arguments.
        self.credentials = credentials or plane_credentials(worker_host)
        self.security = security  # what clients must present (TLS, token); None: plaintext, open
        self.decision_log_path = decision_log  # absolute path on this node; None: no decision log
        # 0: this actor's event loop serves clients; N: N front-end processes share the
        # port and relay to this loop (scheduler.live.relay says when that pays).
        self.frontends = check_frontends(frontends)
        self.realtime_priority = realtime_priority  # SCHED_FIFO priority of this process; 0: the OS default
        self.policy_config = policy
        self.options = options
        self.host = host
        self.port = port
        self.worker_host = worker_host
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        # Any free port when metrics_port is taken (serve's default port, not one the user chose).
        self.metrics_port_fallback = metrics_port_fallback
        self.metrics_port_taken = 0  # the requested metrics port, when it was taken and another was bound
        self.http_port = http_port  # the OpenAI-compatible HTTP front door on `host`; None: off
        self.worker_max_restarts = worker_max_restarts
        self.start_timeout_s = start_timeout_s
        self.core: SchedulerCore | None = None
        self.cluster: Cluster | None = None
        self._client: WorkerClient | None = None
        self._server = None
        self._health = None
        self._frontends: FrontendPool | None = None
        self._metrics: Metrics | None = None
        self._http: HttpFrontDoor | None = None
        self._decision_log: DecisionLog | None = None
        self._flusher: asyncio.Task | None = None
        self._handles: list = []  # per instance: its worker actor; None for real engines
        self._engines: dict = {}  # instance -> its engine actor, for `launch:` pools
        self._relaunches: collections.Counter = collections.Counter()  # instance -> engines relaunched
        self._store = None  # the StoreService actor holding the cluster's kv_store (workers/shared_store.py)
        self._stores: dict = {}  # model -> the store level's (tier, capacity in blocks)
        self._registered: list[asyncio.Event] = []
        self._reviving: set[int] = set()
        self._replaced = 0
        self._started: asyncio.Future | None = None
        self._stopped = False
        self.address = ""
        self.bind = ""
        self.metrics_address = ""
        self.http_address = ""
        if _in_actor():
            import ray

            ray.get_runtime_context().current_actor.start_until_bound.remote()

    async def start(self) -> dict:
        """Start serving and create the workers; returns where it listens. Idempotent; after
        a BindError (nothing was started) the next call tries again."""
        if self._started is not None and self._started.done() and not self._started.cancelled() \
                and isinstance(self._started.exception(), BindError):
            self._started = None
            if self._flusher is not None:
                self._flusher.cancel()
            if self._decision_log is not None:
                self._decision_log.close()
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        return await asyncio.shield(self._started)

    async def start_until_bound(self) -> None:
        """start(), again every second while its port is taken (a restarted incarnation's
        port can be held for a moment), for up to start_timeout_s; queued by __init__."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            try:
                await self.start()
                return
            except BindError as exc:
                if loop.time() > deadline:
                    log.error("scheduler did not start: %s", exc)
                    return
                log.warning("%s; trying again in 1 s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("scheduler did not start")
                return

    async def _start(self) -> dict:
        import ray

        from scheduler.realtime import set_realtime_priority
        from scheduler.registry import build_policy

        if self.realtime_priority:
            set_realtime_priority(self.realtime_priority)  # before the gRPC server starts its threads

        self.cluster = Cluster(self.config)
        policy = build_policy(self.policy_config or self.config.policy, self.config)
        clock = ScaledClock(self.options.time_scale)
        self._client = worker_client(self.cluster, clock, self.options, member=self.credentials.scheduler)
        if self.decision_log_path:
            self._decision_log = DecisionLog.open(self.decision_log_path, append=True)
            self._flusher = asyncio.get_running_loop().create_task(self._flush_decisions())
        core = self.core = SchedulerCore(self.cluster, policy, self.options, clock, self._client,
                                         decision_log=self._decision_log)
        core.on_worker_failed = self._on_worker_failed
        core.on_serving = self._on_serving
        self._registered = [asyncio.Event() for _ in core.slots]
        servicer = SchedulerServicer(core)
        bind, advertise = resolve_host(self.host)
        claim_check(Listener.SCHEDULER, bind, self.port)
        try:
            if self.frontends:
                self._frontends = FrontendPool(servicer, self.frontends, self.realtime_priority,
                                               start_timeout_s=self.start_timeout_s, security=self.security)
                port = await self._frontends.start(bind, self.port)
            else:
                def add(server):
                    return [add_scheduler_service(server, servicer)]

                # NOT_SERVING until the core can place a request (scheduler.live.readiness).
                self._server, port, self._health = await start_grpc_server(bind, add, port=self.port,
                                                                           security=self.security, serving=False)
        except OSError as exc:
            raise BindError(Listener.SCHEDULER, bind, self.port, str(exc)) from None
        self.address = f"{advertise}:{port}"
        self.bind = f"{bind}:{port}"
        if self.http_port is not None:
            # Served from now on: GET /health answers 503 until the workers registered.
            counter = self._client if isinstance(self._client, PromptCounter) else None
            self._http = HttpFrontDoor(core, self.ready, counter, self.security)
            claim_check(Listener.HTTP, bind, self.http_port)
            try:
                hport = await self._http.start(bind, self.http_port)
            except OSError as exc:  # asyncio's message wraps the errno's in its own words
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise BindError(Listener.HTTP, bind, self.http_port, reason) from None
            scheme = "https" if self.security is not None and self.security.tls else "http"
            self.http_address = f"{scheme}://{advertise}:{hport}"
        if self.metrics_port is not None:
            self._metrics = Metrics(core, self._frontends, self._http)
            serve_metrics = functools.partial(self._metrics.serve, security=self.security)
            mport, fell_back = bind_metrics(serve_metrics, self.metrics_host, self.metrics_port,
                                            fallback=self.metrics_port_fallback)
            self.metrics_port_taken = self.metrics_port if fell_back else 0
            scheme = "https" if self.security is not None and self.security.tls else "http"
            self.metrics_address = f"{scheme}://{self.metrics_host}:{mport}/metrics"
        me = ray.get_runtime_context().current_actor
        self._store = self._create_store()
        self._handles = [None if is_engine_pool(self.cluster.pool_of(i)) else self._create_worker(i, me)
                         for i in range(self.cluster.n_instances)]
        try:
            self._engines = await start_engine_pools(core, self.cluster, self.worker_host)
        except Exception as exc:
            raise RuntimeError(f"real engines did not start: {exc}") from None
        for i, handle in enumerate(self._handles):
            if handle is None:
                self._registered[i].set()
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in self._registered)), self.start_timeout_s)
        except TimeoutError:
            missing = [i for i, r in enumerate(self._registered) if not r.is_set()]
            available = ray.cluster_resources()
            lacking = {k: v for k, v in pool_resources(self.cluster).items() if available.get(k, 0.0) < v}
            hint = (f"; the Ray cluster lacks resources {lacking} (start nodes with --resources)" if lacking else "")
            raise RuntimeError(f"workers for instances {missing} did not start within "
                               f"{self.start_timeout_s:.0f} s{hint}") from None
        # Everything allocated so far lives as long as the actor; frozen, it is left out of
        # the full collections that would otherwise scan it each time (one took 55 ms at
        # 500 requests/s, and the event loop stands still meanwhile).
        gc.freeze()
        return self.describe()

    def _create_store(self):
        """One actor holds the cluster's kv_store for every worker (None without one), owned
        by this actor: it dies with it, and with the workers that wrote to it."""
        if not self.config.prefix_cache.enabled:
            return None
        self._stores = {model: (level.tier, level.capacity) for model, level in self.cluster.make_stores().items()}
        return store_actor_class().remote(self._stores) if self._stores else None

    def _create_worker(self, instance: int, me=None):
        import ray

        me = me or ray.get_runtime_context().current_actor
        pool = self.cluster.pool_of(instance)
        store = (self._stores.get(pool.perf.model.name) if self._store is not None and pool.role != Role.DECODE
                 else None)
        spec = WorkerSpec(pool=pool.name, instance=instance, role=int(pool.role), max_batch=pool.config.max_batch,
                          max_batch_tokens=pool.config.max_batch_tokens, token_budget=pool.config.engine_token_budget,
                          link_bytes_per_s=pool.config.link_bytes_per_s, kv_tiers=pool.config.kv_tiers,
                          prefix_block_tokens=(self.config.prefix_cache.block_tokens
                                               if self.config.prefix_cache.enabled else 0),
                          kv_store=store[0] if store else None, kv_store_blocks=store[1] if store else 0)
        # A decode worker's input (KV) comes from a prefill worker, which itself produces
        # its first tokens one slack late: decode workers run two slacks behind.
        slack = self.options.worker_slack_s * (2 if pool.role == Role.DECODE else 1)
        return worker_actor_class().options(
            num_cpus=0, max_restarts=self.worker_max_restarts, max_task_retries=0,
            resources={device_resource(pool.config.device): float(pool.perf.chips)},
        ).remote(spec, pool.perf, me, host=self.worker_host, time_scale=self.options.time_scale,
                 rpc_timeout_s=self.options.rpc_timeout_s, input_slack_s=slack, credentials=self.credentials.workers,
                 store=self._store if store else None)

    def _on_serving(self, serving: bool) -> None:
        if self._health is not None:
            asyncio.get_running_loop().create_task(set_health(self._health, [SCHEDULER_SERVICE], serving))
        if self._frontends is not None:
            self._frontends.set_serving(serving)

    async def _flush_decisions(self) -> None:
        """Lines reach the file within DECISION_LOG_FLUSH_S (it is written through a 1 MiB
        buffer: a write per decision would cost the event loop a system call each)."""
        while True:
            await asyncio.sleep(DECISION_LOG_FLUSH_S)
            self._decision_log.flush()

    def ready(self) -> bool:
        """The scheduler's readiness, in one place: started, not stopping, and a path through
        the cluster READY (the core's `serving`, which grpc.health.v1 reports too).
        GET /health reports it."""
        started = self._started
        return (started is not None and started.done() and not started.cancelled()
                and started.exception() is None and not self._stopped
                and self.core is not None and self.core.serving)

    def describe(self) -> dict:
        return {"address": self.address, "bind": self.bind, "metrics": self.metrics_address,
                "http": self.http_address, "metrics_port_taken": self.metrics_port_taken,
                "security": self.security.describe() if self.security is not None else "plaintext",
                "worker_tls": self.credentials.tls, "cluster": self.config.name,
                "pid": os.getpid(), "serving": self.core.serving if self.core else False,
                "decision_log": self.decision_log_path or "",
                "realtime_priority": self.realtime_priority, "frontends": self.frontends,
                "frontend_pids": self._frontends.pids() if self._frontends is not None else [],
                "policy": self.core.policy.name if self.core else "", "time_scale": self.options.time_scale,
                "workers": [{"instance": w.instance, "pool": w.pool, "address": w.address, "state": w.state.name}
                            for w in self.core.workers_view()] if self.core else []}

    async def register_worker(self, instance: int, worker_id: str, address: str) -> bool:
        """Called by each worker actor when it starts (and again after a restart)."""
        while self.core is None:  # a worker can be faster than _start's bookkeeping
            await asyncio.sleep(0.01)
        if self._stopped:
            return False
        new = self.core.register(instance, worker_id, address)
        self._registered[instance].set()
        return new

    def _on_worker_failed(self, instance: int) -> None:
        if instance not in self._reviving and not self._stopped:
            self._reviving.add(instance)
            asyncio.get_running_loop().create_task(self._revive(instance))

    async def _revive(self, instance: int) -> None:
        """Bring a failed instance back: a false alarm answers a probe; a crashed actor
        is restarted by Ray and registers itself (or its new address is pulled here);
        an actor out of restarts is replaced."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        core = self.core
        slot = core.slots[instance]
        failed_id = slot.worker_id
        try:
            if await self._client.probe(instance):
                core.mark_ready(instance)
                return
            if self._handles[instance] is None:
                await self._rejoin(instance)
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.start_timeout_s
            while not self._stopped and slot.state == WorkerState.FAILED and loop.time() < deadline:
                handle = self._handles[instance]
                try:
                    info = await asyncio.wait_for(handle.info.remote(), 10.0)
                    if info["worker_id"] == failed_id:
                        if await self._client.probe(instance):
                            core.mark_ready(instance)
                        else:
                            await asyncio.sleep(0.2)
                    else:
                        core.register(instance, info["worker_id"], info["address"])
                except ActorDiedError:
                    log.warning("worker actor for instance %d is out of restarts; replacing it", instance)
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                    self._handles[instance] = self._create_worker(instance)
                    self._replaced += 1
                except (ActorUnavailableError, RayActorError, TimeoutError):
                    await asyncio.sleep(0.2)
        finally:
            self._reviving.discard(instance)
            if slot.state == WorkerState.FAILED and not self._stopped:
                log.error("instance %d did not come back within %.0f s", instance, self.start_timeout_s)

    async def _rejoin(self, instance: int) -> None:
        """A real engine marked FAILED rejoins when its health endpoint answers again; one
        that serve launched and that has died is launched again first (`_relaunch`)."""
        slot = self.core.slots[instance]
        while not self._stopped and slot.state == WorkerState.FAILED:
            await asyncio.sleep(ENGINE_PROBE_S)
            if await self._client.probe(instance):
                log.info("instance %d (%s) is healthy again", instance, slot.address)
                self.core.mark_ready(instance)
            elif instance in self._engines and not await self._relaunch(instance):
                return

    async def _relaunch(self, instance: int) -> bool:
        """Launch instance's dead engine again after a backoff and register it at its new
        endpoint; False once it has used up `launch.max_restarts` (it stays FAILED)."""
        launch = self.cluster.pool_of(instance).config.launch
        done = self._relaunches[instance]
        if done >= launch.max_restarts:
            log.error("the engine of instance %d died and has been relaunched %d times (launch.max_restarts); "
                      "it stays down", instance, done)
            return False
        first, cap = ENGINE_BACKOFF_S
        backoff_s = min(first * 2 ** done, cap)
        label = engine_label(self.cluster, instance)
        handle = await relaunch(self._engines[instance], launch, label, self.worker_host, backoff_s)
        if handle is None:  # still running: keep probing it
            return True
        self._engines[instance] = handle  # stopped with the others at the end, whatever happens next
        self._relaunches[instance] += 1
        try:
            endpoint = await wait_healthy(handle, self.cluster.pool_of(instance).config.model, launch.start_timeout_s)
        except RuntimeError as exc:  # exited again or never answered: the next round decides
            log.error("the relaunched engine of instance %d did not come up: %s", instance, exc)
            return True
        if not self._stopped:
            log.warning("the engine of instance %d died; relaunched (%d of %d) at %s", instance,
                        self._relaunches[instance], launch.max_restarts, endpoint)
            self.core.register(instance, label, endpoint)
        return True

    async def worker_addresses(self) -> list[str]:
        """Where the cluster's workers serve now: the only addresses a worker hands KV to."""
        while self.core is None:
            await asyncio.sleep(0.01)
        return [slot.address for slot in self.core.slots if slot.address]

    async def worker_handles(self) -> list:
        return list(self._handles)

    async def stats(self) -> SchedulerStatsView:
        return self.core.stats()

    async def ping(self) -> bool:
        return True

    async def stop(self) -> None:
        """Stop serving, stop and kill every worker actor, free the ports (idempotent)."""
        import ray

        if self._stopped:
            return
        self._stopped = True
        if self._http is not None:
            await self._http.close()
        if self._server is not None:
            await self._server.stop(1.0)
            self._server = None
        if self._frontends is not None:
            await self._frontends.stop()
        if self._metrics is not None:
            self._metrics.close()
        if self._client is not None:
            await self._client.close()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._decision_log is not None:
            self._decision_log.close()
        workers = [h for h in self._handles if h is not None]
        stops = [asyncio.wait_for(h.stop.remote(), 5.0) for h in workers]
        await asyncio.gather(*stops, stop_engines(self._engines.values()), return_exceptions=True)
        for handle in workers + ([self._store] if self._store is not None else []):
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)


def _in_actor() -> bool:
    """Whether this object is being created as a Ray actor (not as a plain object in a test)."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:
        return False


@functools.cache
def scheduler_actor_class():
    """SchedulerActor as a Ray actor class (Ray imported on first use)."""
    import ray

    return ray.remote(SchedulerActor)


def start_scheduler(config: ClusterConfig, *, name: str | None = None, timeout_s: float = 180.0,
                    max_restarts: int = 0, wait: bool = True, **kwargs: Any) -> tuple[Any, dict]:
    """From a Ray driver: create the scheduler actor on this node and start it.
    Returns (actor handle, describe() dict). Blocking; not for use inside actors.
    `max_restarts`: how often Ray restarts it after its process dies (the module's
    docstring). `wait=False` returns at once with an empty dict: the actor serves
    (NOT_SERVING, holding requests) while its workers start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": 0, "max_restarts": max_restarts,
        # On this node, so a scheduler bound to 127.0.0.1 is reachable by local clients.
        "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    }
    if name:
        options["name"] = name
    worker_tls = kwargs.pop("worker_tls", None)  # None: mutual TLS when workers bind a non-loopback address
    if kwargs.get("credentials") is None:
        kwargs["credentials"] = plane_credentials(kwargs.get("worker_host", "127.0.0.1"), worker_tls)
    actor = scheduler_actor_class().options(**options).remote(config, **kwargs)
    if not wait:
        actor.start.remote()
        return actor, {}
    try:
        info = ray.get(actor.start.remote(), timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            ray.get(actor.stop.remote(), timeout=10)
        ray.kill(actor, no_restart=True)
        raise
    return actor, info


def stop_scheduler(actor, timeout_s: float = 30.0) -> None:
    """From a Ray driver: stop the scheduler (and its workers) and kill its actor."""
    import ray

    try:
        ray.get(actor.stop.remote(), timeout=timeout_s)
    finally:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
