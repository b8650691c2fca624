"""An asyncio client for one inference engine that speaks the OpenAI HTTP API
(vLLM, SGLang, llama.cpp's server, llama-cpp-python's server, TGI's Messages API).

It streams completions and chat completions and stamps each token's arrival,
so TTFT and TPOT are measured, not modelled; it counts prompt tokens with the
engine's own tokenizer endpoint where the engine has one (and says when it
fell back to an estimate); it probes health; it keeps per-instance EWMA
estimates of prefill rate and per-token decode time that a latency scorer can
use when no device or model is configured. Errors are typed (`EngineError`
subclasses) and carry the endpoint, the HTTP status and the engine's message.

One `OpenAIEngine` per endpoint holds one long-lived aiohttp session, so
requests reuse pooled keep-alive connections. aiohttp rather than httpx: its
client stays fast with hundreds of concurrent streams (httpx's AsyncClient
does not, encode/httpx#3215) and the same library serves HTTP, which an
OpenAI-compatible front door needs. This module knows nothing about the
scheduler: a `WorkerClient` backend wraps it.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp

from workers.engine_estimates import EngineEstimates, LatencyEstimator

Messages = Sequence[dict[str, Any]]
CHARS_PER_TOKEN_ESTIMATE = 4  # English text under common BPE vocabularies


class TokenCountSource(Enum):
    ENGINE = "engine"  # the engine's tokenizer endpoint counted them
    ESTIMATE = "estimate"  # no usable endpoint: bytes / CHARS_PER_TOKEN_ESTIMATE


class TokenizerDialect(Enum):
    """Which tokenizer endpoint an engine has; found by `tokenizer_dialect()`."""
    VLLM = "vllm"  # POST /tokenize {model, prompt | messages} -> {count, tokens}
    LLAMA_CPP = "llama.cpp"  # POST /tokenize {content} -> {tokens}; /apply-template
    LLAMA_CPP_PYTHON = "llama-cpp-python"  # POST /extras/tokenize {input} -> {tokens}
    NONE = "none"


class EngineError(Exception):
    """A request to an engine failed; `endpoint` says which engine."""

    def __init__(self, endpoint: str, message: str, *, status: int | None = None,
                 tokens_streamed: int = 0):
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.message = message
        self.status = status
        # A request that failed before its first token may be retried elsewhere.
        self.tokens_streamed = tokens_streamed


class EngineUnreachable(EngineError):
    """The connection was refused, reset or lost."""


class EngineHTTPError(EngineError):
    """The engine answered with an HTTP error status; `message` is its own text."""


class EngineTimeout(EngineError):
    """No byte arrived within the connect or read timeout."""


class EngineProtocolError(EngineError):
    """The engine's answer was not the OpenAI API's shape."""


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    source: TokenCountSource


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    latency_s: float
    detail: str  # the path that answered, or why it failed


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One streamed chunk of generated text and when it arrived."""
    text: str
    arrival_s: float  # on the engine client's clock (perf_counter by default)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int | None  # the engine's `usage`, else the caller's count, else None
    completion_tokens: int
    finish_reason: str | None
    sent_s: float
    ttft_s: float | None  # streamed requests only
    tpot_s: float | None  # mean time per output token after the first; >= 2 tokens
    e2e_s: float
    token_arrivals_s: tuple[float, ...]  # offsets from `sent_s`, one per text chunk
    usage_reported: bool  # False: completion_tokens counts chunks, not engine tokens


class OpenAIEngine:
    """Client of one engine endpoint. Use `async with OpenAIEngine(...)` or `close()`."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 max_connections: int = 256, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 60.0, ewma_alpha: float = 0.2,
                 now: Callable[[], float] = time.perf_counter):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                              sock_read=read_timeout_s)
        self._now = now
        self._session: aiohttp.ClientSession | None = None
        self._dialect: TokenizerDialect | None = None
        self._estimator = LatencyEstimator(ewma_alpha)
        self.connections_opened = 0  # TCP connections made; more than the peak concurrency means churn

    async def __aenter__(self) -> OpenAIEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_create_end.append(self._count_connection)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  headers=self._headers, trace_configs=[tracing])
        return self._session

    async def _count_connection(self, *_: object) -> None:
        self.connections_opened += 1

    @property
    def estimates(self) -> EngineEstimates:
        """EWMA prefill rate and decode time per token measured on this endpoint."""
        return self._estimator.snapshot()

    # -- plain requests -------------------------------------------------------

    async def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = self.base_url + path
        try:
            async with self._http().request(method, url, json=body) as response:
                if response.status >= 400:
                    raise EngineHTTPError(url, await _error_message(response), status=response.status)
                return await response.json(content_type=None)
        except asyncio.TimeoutError as exc:  # first: TimeoutError is an OSError too
            raise EngineTimeout(url, "no answer within the timeout") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _connection_error(url, exc, 0) from exc
        except (json.JSONDecodeError, aiohttp.ContentTypeError) as exc:
            raise EngineProtocolError(url, f"answer is not JSON: {exc}") from exc

    async def health(self) -> Health:
        """Probe /health (vLLM, SGLang, llama.cpp, TGI), else /v1/models; never raises."""
        started = self._now()
        detail = ""
        for path in ("/health", "/v1/models"):
            try:
                await self._request("GET", path)
                return Health(True, self._now() - started, path)
            except EngineHTTPError as exc:
                detail = str(exc)
                if exc.status != 404:
                    break
            except EngineError as exc:
                detail = str(exc)
                break
        return Health(False, self._now() - started, detail)

    async def models(self) -> list[str]:
        """The model names the engine serves (GET /v1/models)."""
        answer = await self._request("GET", "/v1/models")
        try:
            return [entry["id"] for entry in answer["data"]]
        except (KeyError, TypeError) as exc:
            raise EngineProtocolError(self.base_url + "/v1/models", f"no data[].id in {answer!r:.200}") from exc

    # -- tokenizer ------------------------------------------------------------

    async def tokenizer_dialect(self) -> TokenizerDialect:
        """Find which tokenizer endpoint the engine has (once; cached)."""
        if self._dialect is None:
            self._dialect = await self._detect_dialect()
        return self._dialect

    async def _detect_dialect(self) -> TokenizerDialect:
        # A 4xx means "not this endpoint or not this body" (TGI's /tokenize wants
        # `inputs` and answers 422); a 5xx or a connection error is raised and
        # nothing is cached, so the next call asks again.
        try:
            answer = await self._request("POST", "/tokenize", {"model": self.model, "prompt": "a"})
            # llama.cpp ignores `prompt` and answers {"tokens": []}; vLLM adds a count.
            if isinstance(answer, dict) and "tokens" in answer:
                return TokenizerDialect.VLLM if "count" in answer else TokenizerDialect.LLAMA_CPP
        except EngineHTTPError as exc:
            if exc.status is None or exc.status >= 500:
                raise
        try:
            await self._request("POST", "/extras/tokenize", {"model": self.model, "input": "a"})
            return TokenizerDialect.LLAMA_CPP_PYTHON
        except EngineHTTPError as exc:
            if exc.status is None or exc.status >= 500:
                raise
        return TokenizerDialect.NONE

    async def count_tokens(self, prompt: str) -> TokenCount:
        """Tokens of a completion prompt, as the engine will count them."""
        dialect = await self.tokenizer_dialect()
        if dialect is TokenizerDialect.VLLM:
            answer = await self._request("POST", "/tokenize", {"model": self.model, "prompt": prompt})
            return TokenCount(int(answer["count"]), TokenCountSource.ENGINE)
        if dialect is TokenizerDialect.LLAMA_CPP:
            # llama.cpp's /completion adds BOS; /tokenize does not unless asked.
            answer = await self._request("POST", "/tokenize", {"content": prompt, "add_special": True})
            return TokenCount(len(answer["tokens"]), TokenCountSource.ENGINE)
        if dialect is TokenizerDialect.LLAMA_CPP_PYTHON:
            answer = await self._request("POST", "/extras/tokenize", {"model": self.model, "input": prompt})
            return TokenCount(len(answer["tokens"]), TokenCountSource.ENGINE)
        return TokenCount(estimate_tokens(prompt), TokenCountSource.ESTIMATE)

    async def count_chat_tokens(self, messages: Messages) -> TokenCount:
        """Tokens of a chat prompt after the engine's chat template, where the engine
        can say; otherwise an estimate from the message texts."""
        dialect = await self.tokenizer_dialect()
        if dialect is TokenizerDialect.VLLM:
            answer = await self._request("POST", "/tokenize", {"model": self.model, "messages": list(messages)})
            return TokenCount(int(answer["count"]), TokenCountSource.ENGINE)
        if dialect is TokenizerDialect.LLAMA_CPP:
            rendered = await self._request("POST", "/apply-template", {"messages": list(messages)})
            return await self.count_tokens(rendered["prompt"])
        # llama-cpp-python has no template endpoint: the texts plus a few tokens of
        # role markup per message is an estimate, and is reported as one.
        text = "\n".join(f"{m.get('role', '')}\n{_content_text(m)}" for m in messages)
        return TokenCount(estimate_tokens(text) + 4 * len(messages), TokenCountSource.ESTIMATE)

    # -- generation -----------------------------------------------------------

    def stream_completion(self, prompt: str, *, max_tokens: int, prompt_tokens: int | None = None,
                          **params: Any) -> CompletionStream:
        """Stream POST /v1/completions. `prompt_tokens` (from `count_tokens`) stands in
        for the engine's `usage` when a stream carries none (llama-cpp-python's do not),
        so the prefill rate can still be measured; `params` go into the body as they
        are (temperature, seed, stop, ...)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, **params}
        return CompletionStream(self, "/v1/completions", body, prompt_tokens, chat=False)

    def stream_chat(self, messages: Messages, *, max_tokens: int, prompt_tokens: int | None = None,
                    **params: Any) -> CompletionStream:
        """Stream POST /v1/chat/completions; as `stream_completion`."""
        body = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, **params}
        return CompletionStream(self, "/v1/chat/completions", body, prompt_tokens, chat=True)

    async def complete(self, prompt: str, *, max_tokens: int, **params: Any) -> Completion:
        """Non-streaming POST /v1/completions: end-to-end time only, no TTFT/TPOT."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, **params}
        return await self._complete_once("/v1/completions", body, chat=False)

    async def chat(self, messages: Messages, *, max_tokens: int, **params: Any) -> Completion:
        """Non-streaming POST /v1/chat/completions."""
        body = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, **params}
        return await self._complete_once("/v1/chat/completions", body, chat=True)

    async def _complete_once(self, path: str, body: dict, *, chat: bool) -> Completion:
        sent_s = self._now()
        answer = await self._request("POST", path, {**body, "stream": False})
        e2e_s = self._now() - sent_s
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            usage = answer["usage"]
            return Completion(text or "", int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
                              choice.get("finish_reason"), sent_s, None, None, e2e_s, (), True)
        except (KeyError, IndexError, TypeError) as exc:
            raise EngineProtocolError(self.base_url + path, f"not a completion: {answer!r:.200}") from exc

    def _record(self, completion: Completion) -> None:
        if completion.prompt_tokens and completion.ttft_s:
            self._estimator.add_prefill(completion.prompt_tokens, completion.ttft_s)
        if completion.tpot_s is not None:
            self._estimator.add_decode(completion.tpot_s)


class CompletionStream:
    """One streamed request: `async with` it, `async for` its `TokenEvent`s, then
    read `result`. Leaving the block early (break, exception, task cancellation)
    closes the HTTP connection, which vLLM, SGLang and llama.cpp take as an abort."""

    def __init__(self, engine: OpenAIEngine, path: str, body: dict, prompt_tokens: int | None,
                 *, chat: bool):
        self._engine = engine
        self._url = engine.base_url + path
        # include_usage puts the engine's exact token counts in the last chunk.
        self._body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        self._prompt_tokens = prompt_tokens
        self._chat = chat
        self._response: aiohttp.ClientResponse | None = None
        self._arrivals: list[float] = []
        self._text: list[str] = []
        self._usage: dict | None = None
        self._finish_reason: str | None = None
        self.sent_s = 0.0
        self.result: Completion | None = None

    async def __aenter__(self) -> CompletionStream:
        engine = self._engine
        self.sent_s = engine._now()
        try:
            self._response = await engine._http().post(self._url, json=self._body)
        except asyncio.TimeoutError as exc:
            raise EngineTimeout(self._url, "no answer within the timeout") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _connection_error(self._url, exc, 0) from exc
        if self._response.status >= 400:
            message = await _error_message(self._response)
            self._response.release()
            raise EngineHTTPError(self._url, message, status=self._response.status)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._response is None:
            return
        if self.result is None:
            self._response.close()  # drop the connection: the engine stops generating
        else:
            self._response.release()  # back to the pool for the next request

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TokenEvent]:
        assert self._response is not None, "use `async with` before iterating"
        now = self._engine._now
        done = False
        try:
            async for raw in self._response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    await self._response.read()  # the chunked body's end, so the connection is reusable
                    break
                event = self._parse(data)
                if event is not None:
                    arrival = now()
                    self._arrivals.append(arrival - self.sent_s)
                    self._text.append(event)
                    yield TokenEvent(event, arrival)
        except asyncio.TimeoutError as exc:
            raise EngineTimeout(self._url, f"stream stalled after {len(self._arrivals)} chunks",
                                tokens_streamed=len(self._arrivals)) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise _connection_error(self._url, exc, len(self._arrivals)) from exc
        if not done:
            # A clean close without [DONE] is a failure the engine did not report:
            # llama-cpp-python ends a stream this way when the prompt overflows its context.
            raise EngineProtocolError(self._url, f"stream ended without [DONE] after {len(self._arrivals)} chunks",
                                      tokens_streamed=len(self._arrivals))
        self._finish(now() - self.sent_s)

    def _parse(self, data: bytes) -> str | None:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise EngineProtocolError(self._url, f"bad stream chunk {data[:200]!r}: {exc}",
                                      tokens_streamed=len(self._arrivals)) from exc
        if "error" in chunk:  # vLLM and SGLang report mid-stream failures this way
            error = chunk["error"]
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise EngineHTTPError(self._url, message, status=error.get("code") if isinstance(error, dict) else None,
                                  tokens_streamed=len(self._arrivals))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        text = (choice.get("delta") or {}).get("content") if self._chat else choice.get("text")
        return text or None  # role-only and empty chunks carry no token

    def _finish(self, e2e_s: float) -> None:
        arrivals = tuple(self._arrivals)
        usage = self._usage or {}
        completion_tokens = int(usage.get("completion_tokens", len(arrivals)))
        # Engines without usage in streams (llama-cpp-python) leave the caller's count.
        prompt_tokens = usage.get("prompt_tokens", self._prompt_tokens)
        ttft_s = arrivals[0] if arrivals else None
        tpot_s = None
        if arrivals and completion_tokens >= 2:
            # Engines may merge tokens into one chunk; the span over the engine's
            # own token count is still the mean time per token.
            tpot_s = (arrivals[-1] - arrivals[0]) / (completion_tokens - 1)
        self.result = Completion("".join(self._text), None if prompt_tokens is None else int(prompt_tokens),
                                 completion_tokens, self._finish_reason, self.sent_s, ttft_s, tpot_s,
                                 e2e_s, arrivals, self._usage is not None)
        self._engine._record(self.result)


def estimate_tokens(text: str) -> int:
    """Tokens of `text` without a tokenizer: UTF-8 bytes / CHARS_PER_TOKEN_ESTIMATE."""
    return max(1, math.ceil(len(text.encode()) / CHARS_PER_TOKEN_ESTIMATE))


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))


async def _error_message(response: aiohttp.ClientResponse) -> str:
    """The engine's own message from an error body (OpenAI, FastAPI or plain text)."""
    raw = await response.text()
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        return f"HTTP {response.status}: {raw.strip()[:500]}"
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return f"HTTP {response.status}: {error if isinstance(error, str) else json.dumps(error)[:500]}"
    return f"HTTP {response.status}: {raw.strip()[:500]}"


def _connection_error(url: str, exc: BaseException, tokens_streamed: int) -> EngineUnreachable:
    if tokens_streamed:
        return EngineUnreachable(url, f"connection lost after {tokens_streamed} chunks: {exc}",
                                 tokens_streamed=tokens_streamed)
    return EngineUnreachable(url, f"cannot connect: {exc}")
