"""Client-facing security of `serve` (the Scheduler gRPC service and the metrics
endpoint) and the clients' side of it (`replay`, `stats`).

Both are optional and independent: TLS (`--tls-cert/--tls-key`, plus
`--tls-client-ca` to require client certificates) and a bearer token
(`--auth-token-file`). The server reads the files once at start and keeps only
the token's digest. The metrics endpoint takes the same TLS and token (an
`Authorization: Bearer` header, as Prometheus' `authorization` scrape option
sends it), served by prometheus_client's WSGI app behind a small check.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

import grpc

from workers.security.tokens import (BEARER, TokenGate, accepted, bearer_metadata, read_token_file, token_digest,
                                     with_metadata)


def read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path}: the {what} is not in PEM format")
    return data


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServiceSecurity:
    """What `serve` asks of its clients (module docstring)."""

    token_digest: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)
    client_ca_pem: bytes | None = None

    @classmethod
    def from_files(cls, *, tls_cert: str | None = None, tls_key: str | None = None, tls_client_ca: str | None = None,
                   auth_token_file: str | None = None) -> "ServiceSecurity":
        """Raises ValueError naming the file or flag that is wrong."""
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if tls_client_ca and not tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
        return cls(token_digest=token_digest(read_token_file(auth_token_file)) if auth_token_file else None,
                   cert_pem=read_pem(tls_cert, "TLS certificate") if tls_cert else None,
                   key_pem=read_pem(tls_key, "TLS key") if tls_key else None,
                   client_ca_pem=read_pem(tls_client_ca, "client CA certificate") if tls_client_ca else None)

    @property
    def tls(self) -> bool:
        return self.cert_pem is not None

    @property
    def enabled(self) -> bool:
        return self.tls or self.token_digest is not None

    def describe(self) -> str:
        parts = [("mutual TLS" if self.client_ca_pem else "TLS") if self.tls else "plaintext"]
        if self.token_digest is not None:
            parts.append("bearer token")
        return " + ".join(parts)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if self.token_digest is None:
            return []
        return [TokenGate([("/", (self.token_digest,))], "this scheduler")]

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.client_ca_pem,
                                           require_client_auth=self.client_ca_pem is not None)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side SSLContext (for HTTP). `ssl` loads keys from files only: they are
        written to a private temporary directory and removed once loaded."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="infersched-tls-") as tmp:  # mode 0700
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert, self.cert_pem), (key, self.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            context.load_cert_chain(cert, key)
        if self.client_ca_pem is not None:
            context.load_verify_locations(cadata=self.client_ca_pem.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def http_authorized(self, header: str | None) -> bool:
        if self.token_digest is None:
            return True
        presented = token_digest(header[len(BEARER):]) if header and header.startswith(BEARER) else None
        return accepted(presented, (self.token_digest,))


def serve_http(app, host: str, port: int, security: ServiceSecurity | None):
    """Serve the WSGI `app` on host:port in a daemon thread, behind `security`'s TLS and
    token. Returns (server, thread)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # no access log (prometheus_client's is silent too)
            pass

    def guarded(environ, start_response):
        if security is not None and not security.http_authorized(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a valid bearer token is required (Authorization header)\n"]
        return app(environ, start_response)

    server_class = ThreadingWSGIServer
    if ":" in host.strip("[]"):
        import socket

        server_class = type("ThreadingWSGIServer6", (ThreadingWSGIServer,), {"address_family": socket.AF_INET6})
    server = make_server(host.strip("[]"), port, guarded, server_class, handler_class=Quiet)
    if security is not None and security.tls:
        server.socket = security.ssl_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="infersched-metrics")
    thread.start()
    return server, thread


# gRPC's default reconnect backoff grows to 120 s: a client that saw the scheduler go
# away (a restart under Ray takes 20-40 s) could then wait two minutes after it is back.
# Capped at 2 s, a reconnect costs one cheap connection attempt per 2 s of outage.
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                     ("grpc.max_reconnect_backoff_ms", 2000))


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """A client's side (`replay`, `stats`): the CA to check the server with, an optional
    client certificate, and the token to send."""

    token: str | None = field(default=None, repr=False)
    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(cls, *, tls_ca: str | None = None, auth_token_file: str | None = None,
                   tls_cert: str | None = None, tls_key: str | None = None) -> "ClientSecurity":
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if tls_cert and not tls_ca:
            raise ValueError("--tls-cert needs --tls-ca (a client certificate is sent over TLS only)")
        return cls(token=read_token_file(auth_token_file) if auth_token_file else None,
                   ca_pem=read_pem(tls_ca, "CA certificate") if tls_ca else None,
                   cert_pem=read_pem(tls_cert, "TLS certificate") if tls_cert else None,
                   key_pem=read_pem(tls_key, "TLS key") if tls_key else None)

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    def channel(self, target: str, options=()) -> grpc.Channel:
        options = [*RECONNECT_OPTIONS, *options]
        if self.ca_pem is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, self._credentials(), options=options)

    def aio_channel(self, target: str, options=()) -> grpc.aio.Channel:
        options = [*RECONNECT_OPTIONS, *options]
        if self.ca_pem is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials(), options=options)

    def stub(self, stub_class, channel):
        """A stub whose every call carries the token (if any)."""
        return with_metadata(stub_class(channel), bearer_metadata(self.token) if self.token else ())


NO_CLIENT_SECURITY = ClientSecurity()


def security_frame(security: ServiceSecurity) -> bytes:
    """`security` as bytes for a child process's stdin (relay front ends)."""
    import msgpack

    return msgpack.packb([security.token_digest, security.cert_pem, security.key_pem, security.client_ca_pem])


def security_from_frame(frame: bytes) -> ServiceSecurity:
    import msgpack

    return ServiceSecurity(*msgpack.unpackb(frame))
