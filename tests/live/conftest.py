"""A real local Ray cluster per test module, declaring the device resources the
live-small cluster's worker actors ask for."""
from __future__ import annotations

import logging

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster


@pytest.fixture(scope="module")
def live_small():
    config = load_cluster(builtin_cluster_path("live-small"))
    return config, Cluster(config)


@pytest.fixture(scope="module")
def ray_local(live_small):
    ray = pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")
    from scheduler.control import RAY_NAMESPACE, pool_resources

    if ray.is_initialized():
        ray.shutdown()
    # On a loaded 2-core machine (the previous module's Ray still exiting) a raylet can
    # miss its start-up deadline; one more try with a fresh session is enough.
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, resources=pool_resources(live_small[1]),
                     namespace=RAY_NAMESPACE, logging_level=logging.WARNING, configure_logging=False)
            break
        except Exception as exc:
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
    try:
        yield ray
    finally:
        ray.shutdown()
