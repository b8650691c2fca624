"""Fixtures shared by every test package: the live-small cluster config, and one local
Ray cluster for the session (tests/ray_cluster.py), stopped after the last test that
uses it rather than at the end of the session, so the tests after it run without Ray's
processes beside them."""
from __future__ import annotations

import contextlib

import pytest

from tests.ray_cluster import assert_no_live_actors, join, local_ray, session_resources

RAY_FIXTURE = "ray_cluster_address"


def module_of(item) -> str:
    return item.nodeid.split("::", 1)[0]


class SessionRay:
    """The session's Ray cluster: started on first use, stopped when the module of its
    last user ends."""

    def __init__(self):
        self.address: str | None = None
        self.last_module: str | None = None  # the last collected module with a test that uses it
        self.used = False  # by a test of the module running now
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> str:
        if self.address is None:
            stack = contextlib.ExitStack()
            self.address = stack.enter_context(local_ray(session_resources()))
            self._stack = stack
        return self.address

    def stop(self) -> None:
        stack, self._stack, self.address = self._stack, None, None
        if stack is not None:
            stack.close()  # asserts that none of the cluster's processes outlive it


SESSION_RAY = SessionRay()


def pytest_collection_modifyitems(items):
    users = [module_of(item) for item in items if RAY_FIXTURE in getattr(item, "fixturenames", ())]
    SESSION_RAY.last_module = users[-1] if users else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the test's own fixtures first (at a module's end, its scheduler or serve)
    if SESSION_RAY.address is None:
        return
    SESSION_RAY.used |= RAY_FIXTURE in getattr(item, "fixturenames", ())
    if nextitem is not None and module_of(nextitem) == module_of(item):
        return
    try:
        if SESSION_RAY.used:
            import ray

            join(ray, SESSION_RAY.address)
            assert_no_live_actors(ray)
    finally:
        SESSION_RAY.used = False
        if nextitem is None or module_of(item) == SESSION_RAY.last_module:
            SESSION_RAY.stop()


def pytest_sessionfinish():
    SESSION_RAY.stop()  # a run stopped early (-x, Ctrl-C) before the last user's module ended


@pytest.fixture(scope="session")
def ray_cluster_address():
    """The address of the session's local Ray cluster (for `serve --address` and drivers)."""
    return SESSION_RAY.start()


@pytest.fixture(scope="module")
def ray_cluster(ray_cluster_address):
    """The session's Ray cluster with this process joined to it as a driver (the `ray`
    module). Tests start their own scheduler actors on it and stop them."""
    import ray

    join(ray, ray_cluster_address)
    return ray


@pytest.fixture(scope="module")
def live_small():
    """deploy/clusters/live-small.yaml: (config, Cluster)."""
    from scheduler.cluster import Cluster
    from scheduler.config import builtin_cluster_path, load_cluster

    config = load_cluster(builtin_cluster_path("live-small"))
    return config, Cluster(config)
