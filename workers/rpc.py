"""What both gRPC services (Worker and Scheduler) share: status codes by number and
name, server options, where to bind, and one way to start a server (with the
standard health service and reflection).

Kept in the lowest package so the scheduler and the workers use one definition
of each (the scheduler imports workers, never the reverse). Worker states live
in workers.report, free of gRPC.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc

from infersched.v1 import worker_pb2


WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name

# grpc.StatusCode by its number (WorkError carries the number) and by its name
# (the emulated worker's errors name theirs, so that module stays free of gRPC).
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The status code with this number; UNKNOWN for a number gRPC does not define."""
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def status_named(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN


# Servers: grpc-core cancels (CANCELLED) calls that arrive while more than 1,000 wait
# for the Python server to pick them up (3,000 hard), before any handler can see, answer
# or count them. A burst of requests must reach the scheduler's own bound instead
# (max_queue -> RESOURCE_EXHAUSTED), so the limits are raised far above it.
#
# Metadata: at most MAX_METADATA_BYTES per call, refused by gRPC while it reads the
# headers (RESOURCE_EXHAUSTED), before anything is held for the call. Soft and hard
# limits alike: between the two gRPC refuses at random. 1,500 calls with 2 MB each
# once took a scheduler to 2.16 GB.
MAX_METADATA_BYTES = 16 << 10
SERVER_OPTIONS = (("grpc.server.max_pending_requests", 1 << 16),
                  ("grpc.server.max_pending_requests_hard_limit", 1 << 17),
                  ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                  ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES))


def resolve_host(host: str) -> tuple[str, str]:
    """(address to bind, address to advertise). 'node' binds and advertises this node's
    Ray IP (the address other nodes already reach it by), for workers that peers on
    other nodes must reach; no other interface is opened."""
    if host == "node":
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, ip
    if host in ("0.0.0.0", "[::]", "::"):
        import socket

        return host, socket.gethostbyname(socket.gethostname())
    return host, host


class ServerSecurity(Protocol):
    """What a server needs of workers.security's credentials (None: plaintext, open)."""

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]: ...

    def server_credentials(self) -> grpc.ServerCredentials | None: ...


async def start_grpc_server(bind: str, add_services: Callable[[grpc.aio.Server], list[str]],
                            port: int = 0, security: ServerSecurity | None = None,
                            serving: bool = True) -> tuple[grpc.aio.Server, int, Any]:
    """A grpc.aio server with `add_services`' services plus health and reflection, behind
    `security`'s interceptors and TLS, its health SERVING (or NOT_SERVING until the caller
    says otherwise: `set_health`). Returns (server, bound port, health servicer)."""
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    interceptors = security.server_interceptors() if security is not None else []
    credentials = security.server_credentials() if security is not None else None
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors or None)
    names = add_services(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = (server.add_insecure_port(f"{bind}:{port}") if credentials is None
                 else server.add_secure_port(f"{bind}:{port}", credentials))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {bind}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {bind}:{port} (in use or not a local address)")
    await server.start()
    await set_health(health_servicer, names, serving)
    return server, bound, health_servicer


async def set_health(health_servicer, names: list[str], serving: bool) -> None:
    """The server's overall status ("") and each service's in `names`."""
    from grpc_health.v1 import health_pb2

    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *names):
        await health_servicer.set(name, status)
