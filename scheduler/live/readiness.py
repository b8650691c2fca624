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

import numpy as np

from scheduler.cluster import Cluster
from scheduler.types import Role


class ServingPaths:
    """Which sets of READY instances make at least one complete path for a request."""

    def __init__(self, cluster: Cluster):
        roles = np.array([int(cluster.pool_of(i).role) for i in range(cluster.n_instances)])
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

