"""Bounds on what one client call may carry, checked before the core sees it.

An open port takes whatever bytes arrive: a 1 MiB `request_id`, a prompt
past every model's context, token ids outside the vocabulary, bytes that are
no protobuf at all. Each gets a status naming the field and its limit (at
most ECHO_BYTES of the value quoted, so neither answers nor logs carry an
unbounded client value) and is counted in `requests_invalid`:
INVALID_ARGUMENT for a malformed value, OUT_OF_RANGE for a well-formed one
beyond what the cluster's models take. Metadata is bounded by gRPC itself
(workers.rpc.MAX_METADATA_BYTES); the bytes of requests in flight by the
core (LiveOptions.max_pending_bytes) from `size_bytes`.

`add_scheduler_service` registers the servicer with raw-bytes handlers, so a
request that does not parse is answered here (as the relay's core side does,
`scheduler.live.relay.pool`) instead of by gRPC as UNKNOWN with a Python
class name, uncounted.
"""
from __future__ import annotations

import contextlib

import grpc
import numpy as np
from google.protobuf import message_factory

from infersched.v1 import scheduler_pb2
from scheduler.cluster import Cluster
from scheduler.live.types import InvalidRequest, OutOfRange
from scheduler.reasons import clip, echo

# request_id and model_tier, in UTF-8 bytes: ids and model names, never documents.
MAX_NAME_BYTES = 128


def status_of(exc: InvalidRequest) -> grpc.StatusCode:
    return grpc.StatusCode.OUT_OF_RANGE if isinstance(exc, OutOfRange) else grpc.StatusCode.INVALID_ARGUMENT


def _check_name(field: str, value: str) -> None:
    # A str holds at most 4 UTF-8 bytes per character: short ones need no encoding.
    if len(value) * 4 > MAX_NAME_BYTES and len(value.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise InvalidRequest(f"field '{field}': {len(value.encode('utf-8', 'replace')):,} bytes, limit "
                             f"{MAX_NAME_BYTES}: {echo(value)}")


class RequestBounds:
    """The limits a cluster's models set on a GenerateRequest: context (prompt plus
    output) and vocabulary, of the tier's model when one is named, else the largest
    among the cluster's models (the request may go to any of them). A model that does
    not state its context leaves it bounded by KV memory alone (the core's check)."""

    __slots__ = ("context_tokens", "vocab", "by_tier")

    def __init__(self, cluster: Cluster):
        models = {p.perf.model.name: p.perf.model for p in cluster.pools}
        self.by_tier = {name: (m.context_tokens, m.vocab) for name, m in models.items()}
        contexts = [m.context_tokens for m in models.values()]
        self.context_tokens = None if None in contexts else max(contexts)
        self.vocab = max(m.vocab for m in models.values())

    def _whose(self, tier: str) -> str:
        return f"model {tier}" if tier in self.by_tier else "the largest among this cluster's models"

    def check(self, request: scheduler_pb2.GenerateRequest) -> None:
        """Raise InvalidRequest (or OutOfRange) naming the first field past its bound."""
        _check_name("request_id", request.request_id)
        _check_name("model_tier", request.model_tier)
        context, vocab = self.by_tier.get(request.model_tier, (self.context_tokens, self.vocab))
        tokens = request.prompt_tokens
        prompt = max(len(tokens), request.prompt_length)
        if context is not None:
            if prompt > context:
                field = "prompt_tokens" if len(tokens) > request.prompt_length else "prompt_length"
                raise OutOfRange(f"field '{field}': {prompt:,} tokens, past the context ({context:,} tokens, "
                                 f"{self._whose(request.model_tier)})")
            if request.max_output_tokens > context - prompt:
                raise OutOfRange(f"field 'max_output_tokens': {request.max_output_tokens:,} after a {prompt:,}-token "
                                 f"prompt passes the context ({context:,} tokens, {self._whose(request.model_tier)})")
        if len(request.prefix_block_hashes) > max(prompt, 0):  # held while in flight: at most one per token
            raise InvalidRequest(f"field 'prefix_block_hashes': {len(request.prefix_block_hashes):,} hashes for a "
                                 f"{prompt:,}-token prompt (at most one per token)")
        if tokens:
            # One numpy pass: min() and max() over a repeated field cost ~10x more.
            ids = np.array(tokens, dtype=np.int64)
            outside = (ids < 0) | (ids >= vocab)
            if not outside.any():
                return
            bad = int(outside.argmax())
            raise OutOfRange(f"field 'prompt_tokens': id {tokens[bad]} at index {bad} is outside the vocabulary "
                             f"[0, {vocab:,}) of {self._whose(request.model_tier)}")


def size_bytes(request, context) -> int:
    """What a call holds while in flight: its message and its metadata."""
    return request.ByteSize() + sum(len(key) + len(value) for key, value in context.invocation_metadata() or ())


def parse(request_class, payload: bytes):
    """`payload` as a `request_class` message; InvalidRequest with a readable reason if it is not one."""
    try:
        return request_class.FromString(payload)
    except Exception as exc:  # protobuf's DecodeError, and whatever else a corrupt message raises
        raise InvalidRequest(clip(f"request is not a valid {request_class.DESCRIPTOR.full_name}: {exc} "
                                  f"({len(payload):,} bytes)")) from None


def add_scheduler_service(server: grpc.aio.Server, servicer) -> str:
    """Register `servicer`'s Scheduler methods taking raw request bytes: each is parsed
    by `servicer.parse_request` (INVALID_ARGUMENT, counted, when it does not parse).
    Returns the service's full name."""
    service = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]
    handlers = {}
    for m in service.methods:
        request_class = message_factory.GetMessageClass(m.input_type)
        method = getattr(servicer, m.name)
        if m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(servicer, request_class, method), response_serializer=_serialize)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                _unary(servicer, request_class, method), response_serializer=_serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    return service.full_name


def _serialize(message) -> bytes:
    return message.SerializeToString()


async def _parsed(servicer, request_class, payload: bytes, context):
    try:
        return servicer.parse_request(request_class, payload)
    except InvalidRequest as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def _streaming(servicer, request_class, method):
    async def handler(payload: bytes, context):
        # Closed with this handler, so a call's end reaches the servicer's stream at once.
        async with contextlib.aclosing(method(await _parsed(servicer, request_class, payload, context),
                                              context)) as responses:
            async for response in responses:
                yield response

    return handler


def _unary(servicer, request_class, method):
    async def handler(payload: bytes, context):
        return await method(await _parsed(servicer, request_class, payload, context), context)

    return handler
