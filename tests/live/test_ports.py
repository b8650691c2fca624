"""The scheduler's ports as a user meets them: `serve` on a taken gRPC or metrics
port stops with the port and the flag to change it; serve's default metrics port,
when taken, gives way to a free one and says so. Real sockets on loopback and
real `serve` processes: on the session's Ray cluster (`--address`) where the port is
the subject, starting and stopping a local Ray of its own where Ray's warnings are."""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scheduler.live.ports import BindError, Listener, bind_metrics, claim_check
from scheduler.serve import DEFAULT_METRICS_PORT, bind_hint, metrics_port
from tests.ray_cluster import assert_no_live_actors

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "infersched.cli"]
START_TIMEOUT_S = 120.0


@contextlib.contextmanager
def held_port(port: int = 0):
    """A loopback port some other process listens on (yields its number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s.getsockname()[1]


def serve_http(host: str, port: int) -> int:
    """A real listening socket, as the metrics server binds it (closed at once)."""
    with socket.socket() as s:
        s.bind((host, port))
        return s.getsockname()[1]


def test_claim_check_names_a_taken_port():
    with held_port() as port:
        with pytest.raises(BindError) as caught:
            claim_check(Listener.SCHEDULER, "127.0.0.1", port)
    assert str(caught.value) == (f"the scheduler gRPC server cannot listen on 127.0.0.1:{port}: "
                                 f"Address already in use")


def test_claim_check_passes_a_free_port_and_port_zero():
    port = serve_http("127.0.0.1", 0)
    claim_check(Listener.SCHEDULER, "127.0.0.1", port)
    claim_check(Listener.SCHEDULER, "127.0.0.1", 0)


@pytest.mark.parametrize("fallback, falls_back", [(True, True), (False, False)])
def test_a_taken_metrics_port_falls_back_only_when_allowed(fallback, falls_back):
    with held_port() as port:
        if falls_back:
            bound, fell_back = bind_metrics(serve_http, "127.0.0.1", port, fallback=fallback)
            assert fell_back and bound not in (0, port)
        else:
            with pytest.raises(BindError, match=f"metrics HTTP server cannot listen on 127.0.0.1:{port}"):
                bind_metrics(serve_http, "127.0.0.1", port, fallback=fallback)


def test_a_free_metrics_port_is_taken_as_asked():
    port = serve_http("127.0.0.1", 0)
    assert bind_metrics(serve_http, "127.0.0.1", port, fallback=True) == (port, False)


def test_bind_error_crosses_process_boundaries_intact():
    error = pickle.loads(pickle.dumps(BindError(Listener.METRICS, "127.0.0.1", 9, "Permission denied")))
    assert (error.listener, error.host, error.port, error.reason) == (Listener.METRICS, "127.0.0.1", 9,
                                                                      "Permission denied")


@pytest.mark.parametrize("requested, expected", [(None, (DEFAULT_METRICS_PORT, True)), (0, (0, False)),
                                                 (9500, (9500, False)), (-1, (None, False))])
def test_metrics_port_flag(requested, expected):
    assert metrics_port(requested) == expected


@pytest.mark.parametrize("listener, flags", [(Listener.SCHEDULER, ("--port N", "--host")),
                                             (Listener.METRICS, ("--metrics-port N", "--metrics-host")),
                                             (Listener.HTTP, ("--http-port N", "--host"))])
def test_bind_hint_names_the_flags(listener, flags):
    hint = bind_hint(BindError(listener, "127.0.0.1", 50051, "Address already in use"))
    assert "127.0.0.1:50051" in hint and all(flag in hint for flag in flags)


def _serve(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([*CLI, "serve", "--time-scale", "0.01", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("flag, frontends", [("--port", "0"), ("--port", "2"), ("--metrics-port", "0"),
                                             ("--http-port", "0")])
def test_serve_on_a_taken_port_names_it_and_the_flag(flag, frontends, ray_cluster, ray_cluster_address):
    with held_port() as port:
        other = "--metrics-port" if flag == "--port" else "--port"
        proc = _serve(flag, str(port), other, "0", "--frontends", frontends, "--address", ray_cluster_address)
        out, err = proc.communicate(timeout=START_TIMEOUT_S)
    assert_no_live_actors(ray_cluster)  # the scheduler's name is free for the next serve on the cluster
    assert proc.returncode == 2, (out, err)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out, (out, err)
    assert f"choose another port with {flag} N" in out


def test_serve_takes_a_free_metrics_port_when_the_default_is_taken_and_ray_does_not_warn():
    pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # another serve may hold it already: the same case
            stack.enter_context(held_port(DEFAULT_METRICS_PORT))
        proc = _serve("--port", "0")
        try:
            lines, deadline = [], time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and not any("stops it" in ln for ln in lines):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
            text = "\n".join(lines)
            assert f"metrics port {DEFAULT_METRICS_PORT} is in use" in text, (text, proc.poll() is not None
                                                                              and proc.stderr.read())
            metrics = next(ln.split("metrics on ")[1] for ln in lines if "metrics on " in ln)
            assert f":{DEFAULT_METRICS_PORT}/" not in metrics
            with urllib.request.urlopen(metrics, timeout=10) as r:
                assert b"infersched_requests_total" in r.read()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    # serve says which Ray authentication mode it starts Ray in, so Ray does not warn about it.
    if "RAY_AUTH_MODE" not in os.environ:
        assert "Token authentication is" not in err, err
