"""`infersched serve`: the live cluster on Ray until Ctrl-C or SIGTERM.

Starts a local Ray cluster that declares one custom resource per device class
(``device_<name>``, one unit per chip; see scheduler.live.actor.pool_resources),
or joins an existing one with ``--address auto|HOST:PORT`` whose nodes must
offer those resources. Then it starts the scheduler actor on this node, which
creates one worker actor per pool instance, and prints where it listens and
when it is ready (its gRPC health turns SERVING). When the scheduler actor's
process dies, Ray restarts it (--scheduler-restarts times) with new workers on
the same port; serve says when it is back and how long it took. On
Ctrl-C or SIGTERM it stops the scheduler, kills every actor it created (their
ports close with their processes) and shuts Ray down if it started it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from scheduler.cluster import Cluster
from scheduler.config import Backend, load_cluster
from scheduler.live.actor import (DECISION_LOG_FLUSH_S, RAY_NAMESPACE, SCHEDULER_ACTOR_NAME, pool_resources,
                                  start_scheduler, stop_scheduler)
from scheduler.live.core import check_live_policy
from scheduler.live.ports import BindError, Listener
from scheduler.live.relay import check_frontends
from scheduler.live.types import LiveOptions
from scheduler.realtime import check_priority
from scheduler.registry import build_policy
from workers.security.service import ServiceSecurity, is_loopback

HEALTH_CHECK_S = 5.0
DEFAULT_TIME_SCALE = 0.01  # emulated clusters run 100x faster than their hardware
DEFAULT_METRICS_PORT = 9464
# The flags that move each listener, for bind errors.
LISTENER_FLAGS = {Listener.SCHEDULER: ("--port", "--host"), Listener.METRICS: ("--metrics-port", "--metrics-host"),
                  Listener.HTTP: ("--http-port", "--host")}


def _say(message: str) -> None:
    print(f"infersched: {message}", flush=True)


def _watch(actor, info: dict, stop: threading.Event) -> int:
    """Until `stop`: check the actor answers; after Ray restarted it, wait until it has
    started again (start() is idempotent) and say so. Returns serve's exit status."""
    import ray
    from ray.exceptions import ActorDiedError

    lost_at = None
    while not stop.wait(HEALTH_CHECK_S if lost_at is None else 0.2):
        try:
            now = ray.get(actor.start.remote(), timeout=HEALTH_CHECK_S * 2 if lost_at is None else 1.0)
        except ActorDiedError as exc:
            _say(f"error: the scheduler actor died and is out of restarts: {exc}")
            return 1
        except Exception as exc:  # restarting (or too busy to answer in time): ask again
            if lost_at is None:
                lost_at = time.monotonic()
                _say(f"warning: the scheduler actor is not answering ({type(exc).__name__}); waiting for Ray "
                     "to restart it")
            continue
        if now["pid"] != info["pid"]:
            gap = f" {time.monotonic() - lost_at:.1f} s after it stopped answering" if lost_at is not None else ""
            _say(f"scheduler restarted (pid {info['pid']} -> {now['pid']}): listening on {now['address']}, "
                 f"{len(now['workers'])} new workers registered, ready{gap}")
            info = now
        lost_at = None
    _say("stopping")
    return 0


def bind_hint(error: BindError) -> str:
    """A bind error with the flags that change the port or the address."""
    port_flag, host_flag = LISTENER_FLAGS[error.listener]
    return (f"{error}; choose another port with {port_flag} N ({port_flag} 0: any free port), "
            f"or another address with {host_flag}")


def metrics_port(requested: int | None) -> tuple[int | None, bool]:
    """(port for the metrics server or None for off, whether a taken port falls back to any free one):
    only serve's default falls back; a port the user names is that port or an error."""
    if requested is None:
        return DEFAULT_METRICS_PORT, True
    return (None if requested < 0 else requested), False


def exposure_warnings(host: str, metrics_host: str, security: ServiceSecurity) -> list[str]:
    """What serving on these addresses without TLS or a token exposes (one line each)."""
    if security.enabled:
        return []
    return [f"{flag} {h} without --tls-cert or --auth-token-file: anyone who can reach this address can "
            f"{what} (plaintext, no authentication)"
            for flag, h, what in (("--host", host, "send requests and read stats"),
                                  ("--metrics-host", metrics_host, "read the metrics"))
            if not is_loopback(h)]


def run_serve(args) -> int:
    import ray

    config = load_cluster(args.cluster)
    cluster = Cluster(config)  # device, model and fit errors surface before Ray starts
    check_live_policy(build_policy(args.policy or config.policy, config))
    if args.realtime_priority:
        check_priority(args.realtime_priority)
    check_frontends(args.frontends)
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        _say(f"error: --http-port {args.http_port}: need a port in 0..65535 (0 = any free)")
        return 2
    # Written by the scheduler actor, which runs on this node: a path resolved here.
    decision_log = os.path.abspath(args.decision_log) if args.decision_log else None
    if decision_log and not os.path.isdir(os.path.dirname(decision_log)):
        _say(f"error: --decision-log {args.decision_log}: directory {os.path.dirname(decision_log)} does not exist")
        return 2
    if decision_log:
        open(decision_log, "w").close()  # the scheduler appends: a restarted one keeps what was logged
    try:
        # The files are read here: a bad one stops serve before Ray starts. Only the token's digest is kept.
        security = ServiceSecurity.from_files(tls_cert=args.tls_cert, tls_key=args.tls_key,
                                              tls_client_ca=args.tls_client_ca, auth_token_file=args.auth_token_file)
    except ValueError as exc:
        _say(f"error: {exc}")
        return 2
    metrics_host = args.metrics_host if args.metrics_port is None or args.metrics_port >= 0 else "127.0.0.1"
    for warning in exposure_warnings(args.host, metrics_host, security):
        _say(f"warning: {warning}")  # before anything starts, and not only in a log: the operator decides
    time_scale = args.time_scale
    if time_scale is None:
        time_scale = 1.0 if any(p.backend == Backend.OPENAI for p in config.pools) else DEFAULT_TIME_SCALE
    options = LiveOptions(time_scale=time_scale, seed=args.seed, max_queue=args.max_queue,
                          max_retries=args.max_retries, max_pending_bytes=args.max_pending_bytes)
    need = pool_resources(cluster)
    started_ray = args.address is None
    if started_ray:
        ray.init(resources=need, include_dashboard=False, namespace=RAY_NAMESPACE, logging_level=logging.WARNING)
    else:
        ray.init(address=args.address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING)
    stop = threading.Event()
    actor = None
    try:
        if not started_ray:
            have = ray.cluster_resources()
            lacking = {k: v for k, v in need.items() if have.get(k, 0.0) < v}
            if lacking:
                _say(f"error: the Ray cluster at {args.address} lacks resources {lacking}; start its nodes with "
                     f"`ray start ... --resources '{{\"device_<name>\": <chips>}}'`")
                return 2
        gpus = sum(p.launch.instances * p.launch.num_gpus for p in config.pools if p.launch is not None)
        if gpus > ray.cluster_resources().get("GPU", 0.0):
            # Ray would hold the engine actors until such nodes join; say so instead of waiting.
            _say(f"error: launch: needs {gpus:g} GPUs in all and the Ray cluster has "
                 f"{ray.cluster_resources().get('GPU', 0.0):g}; join GPU nodes (--address) or lower num_gpus")
            return 2
        alive_nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        # Workers on other nodes must be reachable by the scheduler and by each other.
        worker_host = "node" if alive_nodes > 1 else "127.0.0.1"
        mport, mfallback = metrics_port(args.metrics_port)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            actor, info = start_scheduler(
                config, name=SCHEDULER_ACTOR_NAME, policy=args.policy, options=options, host=args.host,
                port=args.port, worker_host=worker_host, metrics_host=args.metrics_host, metrics_port=mport,
                metrics_port_fallback=mfallback,
                realtime_priority=args.realtime_priority, frontends=args.frontends, decision_log=decision_log,
                security=security if security.enabled else None, worker_tls=True if args.worker_tls else None,
                http_port=args.http_port, max_restarts=args.scheduler_restarts)
        except Exception as exc:  # Ray wraps the actor's exception; its message says what failed
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, BindError):
                _say(f"error: {bind_hint(cause)}")
                return 2
            _say(f"error: could not start the scheduler: {cause}")
            return 1
        reach = f", reachable as {info['address']}" if info["address"] != info["bind"] else ""
        _say(f"scheduler listening on {info['bind']} ({info['security']}{reach}; cluster {info['cluster']}, "
             f"policy {info['policy']}, {len(info['workers'])} workers, time_scale {info['time_scale']:g})")
        _say(f"worker plane: cluster token{', mutual TLS (cluster CA)' if info['worker_tls'] else ''}")
        if info["frontends"]:
            _say(f"clients are served by {info['frontends']} front-end process(es): "
                 f"pids {' '.join(map(str, info['frontend_pids']))}")
        if info["realtime_priority"]:
            _say(f"scheduler threads run under SCHED_FIFO, priority {info['realtime_priority']}")
        if info["http"]:
            _say(f"OpenAI-compatible HTTP on {info['http']}/v1 (health: {info['http']}/health)")
        if info["metrics_port_taken"]:
            _say(f"metrics port {info['metrics_port_taken']} is in use (another serve?): took a free port instead; "
                 f"--metrics-port N chooses one")
        if info["metrics"]:
            _say(f"metrics on {info['metrics']}")
        if info["decision_log"]:
            _say(f"decisions logged to {info['decision_log']} (flushed every {DECISION_LOG_FLUSH_S:g} s)")
        _say(f"ready: {len(info['workers'])} workers registered, health "
             f"{'SERVING' if info['serving'] else 'NOT_SERVING (every worker is drained)'} "
             f"(scheduler actor pid {info['pid']})")
        _say("Ctrl-C or SIGTERM stops it")
        return _watch(actor, info, stop)
    finally:
        if actor is not None:
            try:
                stop_scheduler(actor)
            except Exception as exc:
                print(f"infersched: warning: scheduler did not stop cleanly: {exc}", file=sys.stderr)
        if started_ray:
            ray.shutdown()
        if actor is not None:
            _say("stopped")
