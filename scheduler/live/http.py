"""The OpenAI-compatible HTTP front door (`serve --http-port`): aiohttp on the core's
own event loop, beside gRPC.

It lives in the scheduler actor, where the core is: the core is a synchronous
state machine owned by one loop, so a request submitted here is placed in the
same step that parses it, with no relay hop; the gRPC front ends
(`scheduler.live.relay`) forward serialized protos, not HTTP.

Every request goes through `SchedulerCore.submit` like a Generate call, so
GetStats, Prometheus and the decision log count it; a body refused before it
reaches the core is counted invalid. Tokens arrive as the core's TokenEvents:
a real engine's text rides on them; an emulated worker's tokens get
`synthetic_text`. A streamed answer's headers go out once the request is placed
(while the engine prefills, as an engine's own do); a request refused at
submission (400, 429), rejected, or held while no instance is ready gets a
proper status (503) instead; a failure after the headers ends the stream with
an OpenAI-style error event. TTFT and TPOT are measured here on the stream in
wall seconds (`on_stream_latency`, exported by `scheduler.live.metrics`).

Prompt lengths: a request is placed on the estimate from its text
(`scheduler.live.openai_api`), with no round trip to an engine first. Only
where a bound no tokenizer exceeds (`prompt_tokens_bound`) plus `max_tokens`
would not fit the context of a pool serving the model does the front door ask
an engine's tokenizer (when the worker client is a `PromptCounter`, the hook
for real pools), so the context check (400 `context_length_exceeded`) is
right either way. The engine's own count (its `usage`, or its tokenizer) then
comes back with the request's record (`RequestOutcome.input_tokens`), and the
answer's `usage` carries it. GetStats says how each request was placed
(`prompt_lengths`) and, per real-engine pool, how its prompt was counted
(`prompt_token_counts`). A request an engine refuses as invalid before any
token (e.g. its own context check) is answered 400 with the engine's message.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from aiohttp import web

from scheduler.live import openai_api as api
from scheduler.live.core import SchedulerCore
from scheduler.live.servicer import ResultStream
from scheduler.live.types import InvalidRequest, Overloaded, PromptPayload, PromptSource, RequestOutcome
from scheduler.reasons import Reason
from scheduler.types import RequestStatus
from workers.security.service import ServiceSecurity

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"


@runtime_checkable
class PromptCounter(Protocol):
    """A worker client that can count a prompt's tokens with a serving engine's tokenizer."""

    async def count_prompt_tokens(self, model: str, payload: PromptPayload) -> int | None:
        """The prompt's tokens as an engine serving `model` counts them (`payload.body_json`
        is the client's body); None when none of them has a tokenizer endpoint."""
        ...


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json")


def _error(exc: api.ApiError) -> web.Response:
    return _json(exc.status, exc.body())


# Failures that say the cluster had no path to serve on, not that serving went wrong.
_NO_CAPACITY = frozenset({Reason.NOT_READY, Reason.NO_INSTANCES, Reason.SCHEDULER_UNAVAILABLE})


def _outcome_error(outcome: RequestOutcome) -> api.ApiError:
    if outcome.status == RequestStatus.REJECTED or outcome.reason_code in _NO_CAPACITY:
        return api.ApiError(503, f"no capacity: {outcome.reason}", "service_unavailable", code="no_capacity")
    if outcome.reason_code == Reason.WORK_REFUSED and not outcome.output_tokens:
        # Refused before any token (not a stream broken midway): the request is the client's to fix.
        return api.ApiError(400, f"the engine refused the request: {outcome.reason}", code="invalid_request")
    return api.ApiError(500, f"the request failed: {outcome.reason}", "server_error", code="request_failed")


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class HttpFrontDoor:
    """The OpenAI API over one SchedulerCore. `ready()` is the scheduler's readiness
    (GET /health answers 503 until it holds); `counter`, when given, counts prompts;
    `security`, serve's TLS and bearer token (the token is the clients' API key; every
    route but /health, which probes call, needs it)."""

    def __init__(self, core: SchedulerCore, ready: Callable[[], bool], counter: PromptCounter | None = None,
                 security: ServiceSecurity | None = None):
        self.core = core
        self.ready = ready
        self.counter = counter
        self.security = security if security is not None and security.enabled else None
        self.models = api.served_models(core.cluster)
        self.default_model = api.default_model(core.cluster)
        self.responses: Counter = Counter()  # (route pattern, HTTP status) -> responses sent
        # Wall seconds measured on each completed stream: (TTFT, TPOT or None).
        self.on_stream_latency: Callable[[float, float | None], None] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_and_shape_errors])
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/health", self._health)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on (host, port), 0 = any free port; returns the port."""
        # Cancel a handler whose client went away, so its request is cancelled in the core.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        tls = self.security.ssl_context() if self.security is not None and self.security.tls else None
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _count_and_shape_errors(self, request: web.Request, handler):
        """Count every response by path and status; aiohttp's own 404/405 as OpenAI JSON;
        no token, no answer (401) where serve has one."""
        try:
            if (self.security is not None and request.path != "/health"
                    and not self.security.http_authorized(request.headers.get("Authorization"))):
                response = _error(api.ApiError(401, "a valid API key is required: the cluster's bearer token "
                                                    "(Authorization: Bearer TOKEN)", code="invalid_api_key"))
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            response = _json(exc.status, api.error_body(f"{request.method} {request.path}: {exc.reason}",
                                                        "invalid_request_error"))
        resource = request.match_info.route.resource
        # Routes by their pattern (a label per model or mistyped path would grow without bound).
        self.responses[(resource.canonical if resource is not None else "(unmatched)", response.status)] += 1
        return response

    async def _health(self, request: web.Request) -> web.Response:
        if self.ready():
            return _json(200, {"status": "ok"})
        return _json(503, {"status": "starting"})

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, api.models_list(self.core.cluster, int(self.core.started_unix_s)))

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        for entry in api.models_list(self.core.cluster, int(self.core.started_unix_s))["data"]:
            if entry["id"] == name:
                return _json(200, entry)
        return _error(api.ApiError(404, f"The model '{name}' does not exist", param="model",
                                   code="model_not_found"))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, api.COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, api.CHAT)

    async def _generate(self, request: web.Request, route: str) -> web.StreamResponse:
        t0 = time.perf_counter()
        core = self.core
        try:
            req = api.parse_request(route, await request.read(), self.models, self.default_model)
        except api.ApiError as exc:
            core.note_invalid(exc.message)
            return _error(exc)
        if not self.ready():
            return _error(api.ApiError(503, "the scheduler is starting; retry when GET /health answers 200",
                                       "service_unavailable", code="not_ready"))
        if (self.counter is not None and req.prompt_source == PromptSource.ESTIMATED
                and not core.fits(req.prompt_bound, req.max_tokens, req.model)):
            req = await self._count(req)  # near the context limit: the estimate may be too short
        stream = ResultStream()
        try:
            key = core.submit(req.generate_input(), stream)
        except InvalidRequest as exc:  # counted by the core: e.g. prompt + max_tokens beyond any pool's context
            return _error(api.ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded"))
        except Overloaded as exc:
            return _error(api.ApiError(429, str(exc), "rate_limit_error", code="queue_full"))
        finished = False
        try:
            if req.stream:
                response = await self._stream(request, req, stream, t0)
            else:
                response = await self._whole(req, stream)
            finished = True
            return response
        finally:
            if not finished:
                core.cancel(key)

    async def _count(self, req: api.ApiRequest) -> api.ApiRequest:
        """The engine's count of the prompt, else the estimate stands."""
        try:
            counted = await self.counter.count_prompt_tokens(req.model, req.payload)
        except Exception as exc:  # a tokenizer that fails must not fail the request
            log.warning("counting a prompt's tokens failed (%s); using the estimate", exc)
            return req
        if not counted:
            return req
        return dataclasses.replace(req, prompt_tokens=counted, prompt_source=PromptSource.TOKENIZED,
                                   payload=dataclasses.replace(req.payload, counted=True))

    async def _whole(self, req: api.ApiRequest, stream: ResultStream) -> web.Response:
        parts: list[str] = []
        while True:
            for item in await stream.take():
                if isinstance(item, RequestOutcome):
                    if item.status != RequestStatus.COMPLETED:
                        return _error(_outcome_error(item))
                    body = api.response(req, api.new_id(req.route), int(time.time()), req.name, "".join(parts),
                                        item.input_tokens, item.output_tokens)
                    return _json(200, body)
                parts.append(item.text or api.synthetic_text(item.first_token_index, item.token_count))

    async def _stream(self, request: web.Request, req: api.ApiRequest, stream: ResultStream,
                      t0: float) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        if not stream.items and self.core.serving:
            # Placed on an instance (a rejection would be in `stream` already): the headers go
            # now, while the engine prefills, as an engine's own do, so the client has its
            # stream set up when the first token comes. A failure from here on ends the stream
            # with an error event, as one after the first token does.
            # Before the engine's request leaves (the worker client's task sends it a loop turn
            # or two later): that write wakes the engine, which on a busy host takes this
            # process's core for its prefill, and headers sent after it reached the client
            # 0.4-1.3 ms later in TTFT (BENCHMARKS 11.1).
            await response.prepare(request)
            await response.write(b"")  # aiohttp holds headers for the first body bytes
            items = await stream.take()
        else:  # rejected, or held until an instance is ready: a failure gets its status (503, ...)
            items = await stream.take()
            if isinstance(items[0], RequestOutcome) and items[0].status != RequestStatus.COMPLETED:
                return _error(_outcome_error(items[0]))
            await response.prepare(request)
        rid, created, model = api.new_id(req.route), int(time.time()), req.name
        first = True
        t_first = t_last = 0.0
        sent = 0
        while True:
            out: list[bytes] = []
            outcome = None
            for item in items:
                if isinstance(item, RequestOutcome):
                    outcome = item
                    continue
                text = item.text or api.synthetic_text(item.first_token_index, item.token_count)
                out.append(_sse(api.chunk(req, rid, created, model, text, first=first)))
                first = False
                sent += item.token_count
            if out:
                t_last = time.perf_counter()
                if not t_first:
                    t_first = t_last
            if outcome is not None:
                if outcome.status == RequestStatus.COMPLETED:
                    out.append(_sse(api.chunk(req, rid, created, model, None,
                                              api.finish_reason(outcome.output_tokens, req.max_tokens))))
                    if req.include_usage:
                        out.append(_sse(api.usage_chunk(req, rid, created, model, outcome.input_tokens,
                                                        outcome.output_tokens)))
                    if self.on_stream_latency is not None and t_first:
                        tpot = (t_last - t_first) / (sent - 1) if sent > 1 else None
                        self.on_stream_latency(t_first - t0, tpot)
                else:
                    out.append(_sse(_outcome_error(outcome).body()))
                out.append(_DONE)
                await response.write_eof(b"".join(out))  # the last chunk and the body's end: one write
                return response
            await response.write(b"".join(out))
            items = await stream.take()

