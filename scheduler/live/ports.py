"""The scheduler's listening ports: bind errors that say which port failed, and the
metrics port's fallback.

A second `serve` on one host used to die with a bare "[Errno 98] Address already
in use" from whichever server bound first, or, on the gRPC port, bind it beside
the first. Every bind in the scheduler actor raises BindError instead, naming
the server and the host:port, so the command line can name the flag that
changes it. The metrics port is the one a user rarely chooses: when the
default is taken, the metrics server takes any free port and says so, rather
than stopping a scheduler that would otherwise run.
"""
from __future__ import annotations

import errno
import enum
import socket


class Listener(enum.Enum):
    """A server the scheduler actor binds; its value is what messages call it."""

    SCHEDULER = "scheduler gRPC"
    METRICS = "metrics HTTP"


class BindError(Exception):
    """A listener could not bind host:port. Plain args, so it crosses Ray intact."""

    def __init__(self, listener: Listener, host: str, port: int, reason: str):
        super().__init__(listener, host, port, reason)
        self.listener, self.host, self.port, self.reason = listener, host, port, reason

    def __str__(self) -> str:
        return f"the {self.listener.value} server cannot listen on {self.host}:{self.port}: {self.reason}"


def bind_metrics(serve, host: str, port: int, *, fallback: bool) -> tuple[int, bool]:
    """`serve(host, port) -> bound port`, with the fallback: when `port` is in use and
    `fallback` is set, any free port. Returns (bound port, whether it fell back)."""
    try:
        return serve(host, port), False
    except OSError as exc:
        if fallback and port != 0 and exc.errno == errno.EADDRINUSE:
            return bind_metrics(serve, host, 0, fallback=False)[0], True
        raise BindError(Listener.METRICS, host, port, exc.strerror or str(exc)) from None


def claim_check(listener: Listener, host: str, port: int) -> None:
    """Raise BindError when a plain socket cannot bind host:port. gRPC binds with
    SO_REUSEPORT (the front ends share one port that way), so a second scheduler on
    a taken port would otherwise bind it too and take half its clients' calls."""
    if port == 0:
        return
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closing server's port is free
            probe.bind((host, port))
    except OSError as exc:
        raise BindError(listener, host, port, exc.strerror or str(exc)) from None
