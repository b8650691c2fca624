"""WorkerClient for pools of real engines that speak the OpenAI HTTP API (`backend: openai`).

Each instance is one engine endpoint, reached through `workers.openai_engine`.
A `Work` (always colocated: prefill and decode on one engine) becomes one
streamed request: the client's own body when the work carries a
`PromptPayload` (the HTTP front door's request), else a synthetic prompt of
`prompt_tokens` common words (a gRPC client sends token counts only; each word
is one token in common vocabularies). The stream's first chunk is reported as
the prefill (TTFT measured here, in the core's modelled seconds), every chunk
as one token with its text, the end as the decode.

Prompt tokens: every stream asks for `usage` (`stream_options.include_usage`),
and where the engine sends it (vLLM, SGLang, llama.cpp's server), its count is
the request's. Where it does not (llama-cpp-python), the engine's tokenizer
endpoint counts the prompt after the stream: waited for when the client's
answer carries `usage` (a whole answer, or a stream with include_usage),
otherwise in the background, correcting the totals when it comes
(`on_prompt_counted`), so no request waits for a count nobody reads. A request
a front door already counted, a token-count request and token ids are exact
as sent. `prompt_counts` says how each prompt was counted, per pool. Each instance's
measured prefill rate and time per output token (EWMA) go to the core
(`on_speed`), which uses them where the pool has no device to predict from.

Failures: an engine that fails before the first token is blamed (the core
marks it FAILED and places the request elsewhere); after tokens have streamed
the request fails (another engine would write different text) and the engine
is marked unreachable. A prober checks every endpoint's health each
`probe_interval_s`; an endpoint that stops answering is marked unreachable.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import zlib

from scheduler.cluster import Cluster
from scheduler.live.types import ErrorKind, LiveOptions, PromptPayload, Work, WorkError, WorkUpdate
from workers.clock import Clock
from workers.engine import DECODE, IDLE, PREFILL
from workers.engine_estimates import LatencyEstimator
from workers.openai_engine import (CompletionStream, EngineError, EngineHTTPError, EngineUnreachable, OpenAIEngine,
                                   TokenCount, TokenCountSource)
from workers.report import LoadReport, WorkerState
from workers.work import DecodeSummary, PrefillOutcome

log = logging.getLogger(__name__)

# Words that are one token each in common vocabularies (Llama, GPT, Qwen): synthetic prompts.
SYNTHETIC_WORDS = ("the of and to in is was for on that with as by at from it an be this are which or his her "
                   "they have had not one all their but were has more been new time first who after two when also "
                   "into over").split()
# prompt_counts keys besides TokenCountSource's ("engine": its tokenizer; "estimate"):
SYNTHETIC = "synthetic"  # prompts made here from a token count
USAGE = "usage"  # the engine's own count, from its stream's `usage`
TOKEN_IDS = "token_ids"  # the client sent token ids: counted already


def _answer_has_usage(body: dict) -> bool:
    """Does the client's answer to this body carry `usage` (a whole answer, or a stream
    with `stream_options.include_usage`)?"""
    if not body.get("stream"):
        return True
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def synthetic_prompt(key: str, tokens: int) -> str:
    """A prompt of `tokens` tokens (the engine adds a BOS token: one word fewer), varied
    by `key` so that engines with prefix caching do not serve it from their cache."""
    start = zlib.crc32(key.encode())
    return " ".join(SYNTHETIC_WORDS[(start + 7 * i) % len(SYNTHETIC_WORDS)] for i in range(max(1, tokens - 1)))


class _Instance:
    """The client's view of one engine endpoint."""

    __slots__ = ("instance", "pool", "address", "engine", "flights", "sent", "queued_tokens", "running",
                 "prefill_tokens", "decode_tokens", "busy_since", "busy_s", "estimator", "healthy", "progress_s")

    def __init__(self, instance: int, pool: str, address: str, engine: OpenAIEngine):
        self.instance = instance
        self.pool = pool
        self.address = address
        self.engine = engine
        self.flights: dict[str, asyncio.Task] = {}
        self.sent = 0  # works received from the core (the load report's `received`)
        self.queued_tokens: dict[str, int] = {}  # requests not yet at their first token
        self.running = 0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.busy_since: float | None = None
        self.busy_s = 0.0  # wall seconds with at least one request in flight
        self.estimator = LatencyEstimator()
        self.healthy = True
        self.progress_s = 0.0  # when a stream last brought a chunk (perf_counter)


class OpenAIWorkerClient:
    """WorkerClient over OpenAI-API engines, one endpoint per instance of `instances`."""

    def __init__(self, cluster: Cluster, clock: Clock, options: LiveOptions = LiveOptions(), *,
                 probe_interval_s: float = 1.0, probe_timeout_s: float = 2.0):
        self.cluster = cluster
        self.clock = clock
        self.options = options
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.events = None
        self._links: dict[int, _Instance] = {}
        self._prober: asyncio.Task | None = None
        self._closing: list[asyncio.Task] = []
        # pool -> {"usage"|"engine"|"token_ids"|"estimate"|"synthetic": n}, how each prompt was counted
        self.prompt_counts: dict[str, collections.Counter] = {}
        self._late_counts: set[asyncio.Task] = set()  # counts nobody waits for (see _run)
        self.closed = False

    def bind(self, events) -> None:
        self.events = events

    def connect(self, instance: int, address: str) -> None:
        old = self._links.pop(instance, None)
        if old is not None:
            self._drop(old)
        pool = self.cluster.pool_of(instance)
        engine = OpenAIEngine(address, pool.config.model, read_timeout_s=self.options.rpc_timeout_s)
        self._links[instance] = _Instance(instance, pool.name, address, engine)
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    def _drop(self, link: _Instance) -> None:
        for task in link.flights.values():
            task.cancel()
        self._closing.append(asyncio.get_running_loop().create_task(link.engine.close()))

    def send(self, instance: int, work: Work) -> None:
        link = self._links[instance]
        link.sent += 1
        link.queued_tokens[work.key] = work.prompt_tokens
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(link, work))
        link.flights[work.key] = task
        task.add_done_callback(lambda t, key=work.key: self._ended(link, key, t))
        if link.busy_since is None:
            link.busy_since = time.perf_counter()

    def cancel(self, instance: int, key: str) -> None:
        link = self._links.get(instance)
        task = link.flights.get(key) if link is not None else None
        if task is not None:
            task.cancel()  # leaving the stream closes its connection: the engine stops generating

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        link = self._links.get(instance)
        if link is None:
            return False
        try:
            health = await asyncio.wait_for(link.engine.health(), max(timeout_s, self.probe_timeout_s))
        except TimeoutError:
            return False
        link.healthy = health.healthy
        if health.healthy:
            # After the caller has marked it ready: the core ignores a FAILED instance's reports.
            asyncio.get_running_loop().call_soon(self._report, link)
        return health.healthy

    async def count_prompt(self, model: str, route: str, body: dict) -> TokenCount | None:
        """The prompt length of a client's request body as an engine serving `model` counts
        it (its tokenizer endpoint; an estimate where it has none), for a front door to put
        in `GenerateInput.prompt_tokens` before the request is placed. None when no healthy
        engine here serves `model`. Raises EngineError when the engine fails."""
        link = next((link for link in self._links.values()
                     if link.healthy and link.engine.model == model), None)
        if link is None:
            return None
        if route == "chat/completions":
            return await link.engine.count_chat_tokens(body.get("messages") or [])
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return await link.engine.count_tokens(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return TokenCount(len(prompt), TokenCountSource.ENGINE)  # token ids: counted already
        return None

    async def count_prompt_tokens(self, model: str, payload: PromptPayload) -> int | None:
        """The HTTP front door's hook (scheduler.live.http.PromptCounter): the engine's own
        count of a request's prompt; None (the front door estimates) when no engine here
        serves `model` or the engine has no tokenizer endpoint."""
        counted = await self.count_prompt(model, payload.route, json.loads(payload.body_json))
        return counted.tokens if counted is not None and counted.source is TokenCountSource.ENGINE else None

    async def close(self) -> None:
        self.closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        tasks = [t for link in self._links.values() for t in link.flights.values()] + list(self._late_counts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(link.engine.close() for link in self._links.values()), *self._closing,
                             return_exceptions=True)
        self._links.clear()

    # ---- one request --------------------------------------------------------
    async def _run(self, link: _Instance, work: Work) -> None:
        route, body = self._request(link, work)
        scale = self.clock.time_scale
        sent = time.perf_counter()
        first = last = None
        tokens = 0
        try:
            stream = CompletionStream(link.engine, "/v1/" + route, body, None, chat=route == "chat/completions")
            async with stream:
                # The load report once the engine has answered the request's headers, while it
                # prefills: the core counted the dispatch in its view already, and a report at
                # dispatch ran before the request was written (aiohttp writes a body a few
                # loop turns after the call), on the first token's way.
                self._report(link)
                async for event in stream:
                    last = link.progress_s = event.arrival_s
                    if first is None:
                        first = last
                        prompt = link.queued_tokens.get(work.key, work.prompt_tokens)
                        outcome = PrefillOutcome(0.0, (first - sent) / scale, prompt, 0, 0.0, 0.0)
                        self.events.on_update(link.instance, WorkUpdate(work.key, prefilled=outcome, text=event.text))
                    else:
                        self.events.on_update(link.instance, WorkUpdate(work.key, first_token_index=tokens,
                                                                        token_count=1, emit_s=self.clock.now(),
                                                                        text=event.text))
                    tokens += 1
                    if tokens == 1:
                        # Chunks already buffered are read without suspending: yield once, so the
                        # client's stream (another task) sends the first token before the rest is
                        # read; later tokens that arrive together go out together. The load
                        # report after that, off the first token's way.
                        await asyncio.sleep(0)
                        self._first_token(link, work.key)
            result = stream.result
        except EngineError as exc:
            self._failed(link, work.key, exc, tokens)
            return
        if first is None:  # the engine finished without a token (an empty answer): nothing to stream
            outcome = PrefillOutcome(0.0, result.e2e_s / scale, work.prompt_tokens, 0, 0.0, 0.0)
            self.events.on_update(link.instance, WorkUpdate(work.key, prefilled=outcome))
            first = last = sent + result.e2e_s
        link.decode_tokens += tokens
        ttft_s = first - sent
        prompt_tokens = self._usage_count(link, work, body, result)
        if prompt_tokens is None and _answer_has_usage(body):
            # The client's answer carries `usage`: the engine's tokenizer counts the prompt now.
            prompt_tokens = await self._count(link, route, body, work)
        if prompt_tokens is not None:
            link.prefill_tokens += prompt_tokens
            self._measured(link, prompt_tokens, ttft_s, result.tpot_s)
        decoded = DecodeSummary(0.0, (last - first) / scale, 0.0, 0.0)
        self.events.on_update(link.instance, WorkUpdate(
            work.key, decoded=decoded, prompt_tokens=prompt_tokens if prompt_tokens is not None else 0))
        if prompt_tokens is None:
            # Nobody waits for the count (a stream without usage): the request ends now, and
            # the count corrects the totals when it comes (an engine with one lock, such as
            # llama-cpp-python's, answers it only after the stream anyway).
            task = asyncio.get_running_loop().create_task(
                self._count_later(link, route, body, work, ttft_s, result.tpot_s))
            self._late_counts.add(task)
            task.add_done_callback(self._late_counts.discard)

    def _request(self, link: _Instance, work: Work) -> tuple[str, dict]:
        """(route, body) of the engine request for one work."""
        engine = link.engine
        if work.payload is None:
            # ignore_eos (vLLM, SGLang; others ignore it): a token-count client asked for this many tokens.
            return "completions", {"model": engine.model, "prompt": synthetic_prompt(work.key, work.prompt_tokens),
                                   "max_tokens": work.max_output_tokens, "temperature": 0, "ignore_eos": True}
        body = json.loads(work.payload.body_json)
        body["model"] = engine.model
        body["max_tokens"] = work.max_output_tokens
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = work.max_output_tokens
        return work.payload.route, body

    def _usage_count(self, link: _Instance, work: Work, body: dict, result) -> int | None:
        """The prompt's exact length without asking the engine again: its stream's `usage`,
        or a count the request already had (token counts, token ids, a front door's
        tokenizer count); None when only the engine's tokenizer can say."""
        counts = self.prompt_counts.setdefault(link.pool, collections.Counter())
        payload = work.payload
        if payload is None:
            counts[SYNTHETIC] += 1
        elif result.usage_reported and result.prompt_tokens is not None:
            counts[USAGE] += 1
        elif payload.counted:
            counts[TokenCountSource.ENGINE.value] += 1
        elif payload.route == "completions" and not isinstance(body.get("prompt"), str):
            counts[TOKEN_IDS] += 1
        else:
            return None
        return result.prompt_tokens if result.usage_reported and result.prompt_tokens else work.prompt_tokens

    async def _count(self, link: _Instance, route: str, body: dict, work: Work) -> int:
        """The engine tokenizer's count of the prompt, else the count it was placed with."""
        counts = self.prompt_counts[link.pool]
        try:
            if route == "chat/completions":
                count = await link.engine.count_chat_tokens(body.get("messages") or [])
            else:
                count = await link.engine.count_tokens(body["prompt"])
        except EngineError:
            count = None
        if count is None or count.source is not TokenCountSource.ENGINE:
            counts[TokenCountSource.ESTIMATE.value] += 1  # the front door's estimate stands
            return work.prompt_tokens
        counts[TokenCountSource.ENGINE.value] += 1
        return count.tokens

    async def _count_later(self, link: _Instance, route: str, body: dict, work: Work, ttft_s: float,
                           tpot_s: float | None) -> None:
        try:
            tokens = await self._count(link, route, body, work)
        except Exception as exc:  # e.g. the instance was reconnected and its session closed
            log.info("counting the prompt of %s on %s after the fact failed: %r", work.key, link.address, exc)
            return
        link.prefill_tokens += tokens
        self._measured(link, tokens, ttft_s, tpot_s)
        on_counted = getattr(self.events, "on_prompt_counted", None)
        if on_counted is not None and tokens != work.prompt_tokens:
            on_counted(link.instance, work.prompt_tokens, tokens)
        if not self.closed and self._links.get(link.instance) is link:
            self._report(link)

    def _failed(self, link: _Instance, key: str, exc: EngineError, tokens: int) -> None:
        if tokens:
            # Another engine would write different text: the request fails, the engine is suspect.
            if isinstance(exc, EngineUnreachable):
                self.events.on_unreachable(link.instance, str(exc))
            error = WorkError(ErrorKind.INVALID, "UNAVAILABLE",
                              f"the stream broke after {tokens} tokens and is not retried: {exc}")
        elif isinstance(exc, EngineHTTPError) and exc.status == 429:
            error = WorkError(ErrorKind.BUSY, "RESOURCE_EXHAUSTED", str(exc))
        elif isinstance(exc, EngineHTTPError) and exc.status is not None and 400 <= exc.status < 500:
            error = WorkError(ErrorKind.INVALID, "INVALID_ARGUMENT", str(exc))
        else:
            error = WorkError(ErrorKind.WORKER, "UNAVAILABLE", str(exc))
        self.events.on_update(link.instance, WorkUpdate(key, error=error))

    # ---- load and speed -----------------------------------------------------
    def _first_token(self, link: _Instance, key: str) -> None:
        link.queued_tokens.pop(key, None)
        link.running += 1
        self._report(link)

    def _ended(self, link: _Instance, key: str, task: asyncio.Task) -> None:
        link.flights.pop(key, None)
        if link.queued_tokens.pop(key, None) is None:
            link.running -= 1
        if not link.flights and link.busy_since is not None:
            link.busy_s += time.perf_counter() - link.busy_since
            link.busy_since = None
        if not task.cancelled() and task.exception() is not None:
            log.error("request %s on %s: %r", key, link.address, task.exception())
        if not self.closed and self._links.get(link.instance) is link:
            self._report(link)

    def _measured(self, link: _Instance, prompt_tokens: int, ttft_s: float, tpot_s: float | None) -> None:
        estimator = link.estimator
        estimator.add_prefill(prompt_tokens, ttft_s)
        if tpot_s is not None:
            estimator.add_decode(tpot_s)
        est = estimator.snapshot()
        on_speed = getattr(self.events, "on_speed", None)
        if on_speed is not None and est.prefill_tokens_per_s:
            scale = self.clock.time_scale
            decode = est.decode_s_per_token if est.decode_s_per_token is not None else 0.0
            on_speed(link.instance, 1.0 / est.prefill_tokens_per_s / scale, decode / scale)

    def _report(self, link: _Instance) -> None:
        if self.events is None:
            return
        queued = len(link.queued_tokens)
        activity = (PREFILL if queued else IDLE) | (DECODE if link.running else IDLE)
        busy_s = link.busy_s + (time.perf_counter() - link.busy_since if link.busy_since is not None else 0.0)
        now = self.clock.now()
        scale = self.clock.time_scale
        kv = self.cluster.pool_of(link.instance).perf.kv_capacity_tokens
        report = LoadReport(link.sent, queued, sum(link.queued_tokens.values()), link.running, kv, 0.0, activity,
                            busy_s / scale, now, self.clock.to_unix(now), now, link.prefill_tokens,
                            link.decode_tokens, 0.0, WorkerState.READY)
        self.events.on_report(link.instance, report, None)

    async def _probe_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.probe_interval_s)
            # An engine streaming right now is alive whatever its health endpoint says:
            # llama-cpp-python answers /v1/models only between generations.
            now = time.perf_counter()
            links = [link for link in self._links.values()
                     if link.healthy and not (link.flights and now - link.progress_s < self.probe_timeout_s)]
            results = await asyncio.gather(*(self._probe_once(link) for link in links))
            for link, reason in zip(links, results):
                if reason and self._links.get(link.instance) is link and not self.closed:
                    link.healthy = False
                    self.events.on_unreachable(link.instance, f"health probe of {link.address}: {reason}")

    async def _probe_once(self, link: _Instance) -> str:
        try:
            health = await asyncio.wait_for(link.engine.health(), self.probe_timeout_s)
        except TimeoutError:
            return f"no answer within {self.probe_timeout_s:g} s"
        return "" if health.healthy else health.detail
