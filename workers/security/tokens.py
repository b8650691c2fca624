"""Bearer tokens on gRPC: the server's gate (an interceptor) and the client's side.

A token travels as `authorization: Bearer <token>` metadata on every call. The
server keeps only SHA-256 digests of the tokens it accepts and compares the
presented token's digest with `hmac.compare_digest` (constant time), so
neither a timing difference nor a server's memory gives a token away. Rules
name methods by prefix (first match wins); the standard health and reflection
services stay open (probes and grpcurl need them; they tell nothing secret) and
a method no rule names is refused.
A refused call ends UNAUTHENTICATED before its handler runs, whatever its shape
(a streaming call is refused without reading a message). Tokens never appear in
an error message or a log line.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Sequence

import grpc

AUTHORIZATION = "authorization"
BEARER = "Bearer "
# A token file holds one line; more than this is not a token (and is not read into memory).
MAX_TOKEN_BYTES = 4096
MIN_TOKEN_CHARS = 16


def token_digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, BEARER + token),)


def read_token_file(path: str) -> str:
    """The token in `path` (surrounding whitespace removed). Raises ValueError saying what
    is wrong with the file, never echoing its content."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token file: {exc.strerror}") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise ValueError(f"{path}: a token file holds one token of at most {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token must be printable ASCII (it is sent as gRPC metadata)") from None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the token must be one word of at least {MIN_TOKEN_CHARS} printable characters "
                         "(e.g. `openssl rand -hex 32`)")
    return token


def presented_digest(metadata) -> bytes | None:
    """Digest of the bearer token in a call's metadata; None when there is none."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            return token_digest(value[len(BEARER):]) if value.startswith(BEARER) else None
    return None


def accepted(digest: bytes | None, digests: Sequence[bytes]) -> bool:
    # Every accepted digest is compared, so the time taken does not say which one matched.
    ok = False
    for d in digests:
        ok |= digest is not None and hmac.compare_digest(digest, d)
    return ok


OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenGate(grpc.aio.ServerInterceptor):
    """Server interceptor: a call to a method under a rule's prefix needs a bearer token
    whose digest is among the rule's; health and reflection pass untouched; any other
    method is refused."""

    def __init__(self, rules: Sequence[tuple[str, Sequence[bytes]]], what: str = "this service"):
        self._rules = (*((prefix, None) for prefix in OPEN_SERVICES),
                       *((prefix, tuple(digests)) for prefix, digests in rules))
        self._message = f"{what} needs a valid bearer token (authorization metadata)"
        self._by_method: dict[str, tuple[bytes, ...] | None] = {}

    def _digests(self, method: str) -> tuple[bytes, ...] | None:
        """The digests `method` accepts (cached: a server has a handful of methods); None: open."""
        try:
            return self._by_method[method]
        except KeyError:
            pass
        digests: tuple[bytes, ...] | None = ()
        for prefix, rule in self._rules:
            if method.startswith(prefix):
                digests = rule
                break
        if len(self._by_method) < 256:  # unknown method names from a client must not grow it
            self._by_method[method] = digests
        return digests

    async def intercept_service(self, continuation, details):
        digests = self._digests(details.method)
        if digests is None or accepted(presented_digest(details.invocation_metadata), digests):
            return await continuation(details)
        handler = await continuation(details)
        return None if handler is None else refusal(handler, grpc.StatusCode.UNAUTHENTICATED, self._message)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s shape that ends every call with `code` before reading it."""

    async def refuse(_request, context):
        await context.abort(code, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


def with_metadata(stub, metadata: tuple[tuple[str, str], ...]):
    """`stub` with `metadata` bound to each of its methods: every call, including ones
    added later, carries it, with no per-message cost (unlike a client interceptor)."""
    if metadata:
        for name, method in list(vars(stub).items()):
            if callable(method):
                setattr(stub, name, functools.partial(method, metadata=metadata))
    return stub


def new_token() -> str:
    return os.urandom(32).hex()
