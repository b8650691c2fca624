"""When the live scheduler can serve, and what an operator's drain does to a worker.

A request needs a path through the cluster: a colocated (both-role) instance, or
a prefill instance and a decode instance of the same model. The scheduler
serves (its gRPC health says SERVING) exactly while at least one path has all
its instances READY: not before the workers that make one have registered,
and not while every path is drained or failed. Until then the core holds
requests instead of letting the policy reject them (see SchedulerCore._hold).

Drain is the operator's: a drained instance leaves the candidate sets at once,
finishes what it holds (DRAINING, then DRAINED) and stays out, across worker
restarts, until it is undrained.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scheduler.cluster import Cluster
from scheduler.config import Serving
from scheduler.types import Role
from workers.clock import Clock


class ServingPaths:
    """Which sets of READY instances make at least one complete path for a request."""

    def __init__(self, cluster: Cluster):
        # Judge pools (`serving: judge`) run routers' passes only: no path for a request.
        roles = np.array([int(cluster.pool_of(i).role) if cluster.pool_of(i).config.serving != Serving.JUDGE
                          else -1 for i in range(cluster.n_instances)])
        models = np.array([cluster.pool_of(i).perf.model.name for i in range(cluster.n_instances)])
        self._both = np.flatnonzero(roles == int(Role.BOTH))
        # Per model with both: (its prefill instances, its decode instances).
        self._split = []
        for model in sorted(set(models.tolist())):
            prefill = np.flatnonzero((models == model) & (roles == int(Role.PREFILL)))
            decode = np.flatnonzero((models == model) & (roles == int(Role.DECODE)))
            if len(prefill) and len(decode):
                self._split.append((prefill, decode))

    def can_serve(self, ready: np.ndarray) -> bool:
        """`ready`: one bool per instance, True for READY."""
        if ready[self._both].any():
            return True
        return any(ready[p].any() and ready[d].any() for p, d in self._split)


class HeldRequests:
    """Requests (the core's flights: `.key`, `.timer`) waiting for a path, each for at
    most `limit_s` modelled seconds, after which `expired(flight)` is called."""

    def __init__(self, clock: Clock, limit_s: float, expired: Callable[[object], None]):
        self.limit_s = limit_s
        self._clock = clock
        self._expired = expired
        self._held: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, flight) -> None:
        self._held[flight.key] = flight
        flight.timer = self._clock.call_at(self._clock.now() + self.limit_s, lambda: self._expire(flight))

    def _expire(self, flight) -> None:
        flight.timer = None
        if self._held.pop(flight.key, None) is flight:
            self._expired(flight)

    def discard(self, key: str) -> None:
        self._held.pop(key, None)

    def take_all(self) -> list:
        """Every held flight, its hold timer cancelled."""
        held, self._held = list(self._held.values()), {}
        for flight in held:
            if flight.timer is not None:
                flight.timer.cancel()
                flight.timer = None
        return held

