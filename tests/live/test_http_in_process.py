"""The HTTP front door over a SchedulerCore with emulated workers in this process, on a
scaled wall clock: the paths a serve process cannot be steered into from outside (no
capacity, a client that goes away mid-stream, an engine tokenizer behind the hook).
Real aiohttp server and client on loopback; the workers are the live plane's own
emulated engines (scheduler.live.inprocess)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import aiohttp
import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.live.core import SchedulerCore
from scheduler.live.http import HttpFrontDoor, PromptCounter
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.openai_api import synthetic_text
from scheduler.live.types import LiveOptions, PromptPayload, WorkUpdate
from scheduler.registry import build_policy
from workers.clock import ScaledClock
from workers.security.service import ServiceSecurity
from workers.security.tokens import token_digest

MODEL = "llama-3.1-8b"


class WordCounter:
    """A tokenizer behind the PromptCounter hook: one token per whitespace-separated word
    of a completions prompt (what a real pool's worker client would ask its engine)."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    async def count_prompt_tokens(self, model: str, payload: PromptPayload) -> int | None:
        self.asked.append((model, payload.route))
        return len(json.loads(payload.body_json)["prompt"].split())


class TextWorkers(InProcessWorkerClient):
    """The emulated workers, each update's tokens given text as a real engine's would be:
    "<i>" per token i, the first token's on the update that carries `prefilled`."""

    def _deliver(self, instance: int, update: WorkUpdate) -> None:
        first, count = update.first_token_index, update.token_count
        if update.prefilled is not None and not count:
            first, count = 0, 1
        text = "".join(f"<{i}>" for i in range(first, first + count))
        super()._deliver(instance, dataclasses.replace(update, text=text))


@contextlib.asynccontextmanager
async def _front_door(counter=None, max_retries: int = 2, workers_class=InProcessWorkerClient, security=None,
                      max_hold_s: float = 30.0):
    """A front door on loopback over a core with in-process workers, and a client session."""
    config = load_cluster(builtin_cluster_path("live-small"))
    cluster = Cluster(config)
    clock = ScaledClock(0.01)
    workers = workers_class(cluster, clock)
    core = SchedulerCore(cluster, build_policy(config.policy, config), LiveOptions(max_retries=max_retries, max_hold_s=max_hold_s), clock,
                         workers)
    workers.register_all(core)
    door = HttpFrontDoor(core, lambda: True, counter, security)
    port = await door.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield core, door, f"http://127.0.0.1:{port}", session
    finally:
        await door.close()


def test_no_capacity_is_503_before_any_stream_starts():
    async def run():
        async with _front_door(max_retries=0, max_hold_s=0.5) as (core, door, base, session):
            for slot in core.slots:
                core.mark_failed(slot.instance, "taken down by the test")
            answers = []
            for stream in (False, True):
                body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": stream}
                async with session.post(f"{base}/v1/completions", json=body) as r:
                    answers.append((r.status, r.content_type, await r.json()))
            return answers, core.stats()

    answers, stats = asyncio.run(run())
    for status, content_type, body in answers:
        assert (status, content_type) == (503, "application/json")
        assert body["error"]["code"] == "no_capacity" and body["error"]["type"] == "service_unavailable"
    # Every instance down: each request ends (held, then NOT_READY, or rejected) and is counted.
    assert stats.requests_total == 2 == stats.requests_rejected + stats.requests_failed


def test_a_client_leaving_mid_stream_cancels_its_request():
    async def run():
        async with _front_door() as (core, door, base, session):
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 5000, "stream": True}
            async with session.post(f"{base}/v1/completions", json=body) as r:
                first = await r.content.readline()
                r.close()  # the connection goes with it
            for _ in range(200):
                if core.stats().in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            return first, core.stats()

    first, stats = asyncio.run(run())
    assert json.loads(first.removeprefix(b"data: "))["choices"][0]["text"] == synthetic_text(0, 1)
    assert stats.in_flight == 0 and stats.requests_failed == 1 and stats.reasons == {"CANCELLED": 1}


def _context(core) -> int:
    """The largest context a pool of the cluster's model holds (what the core checks against)."""
    return max(p.perf.kv_capacity_tokens for p in core.cluster.pools)


async def _first_chunk(session, url: str, body: dict) -> tuple[int, bytes]:
    """Status and first bytes of a streamed answer; leaving early cancels the request."""
    async with session.post(url, json={**body, "stream": True}) as r:
        return r.status, await r.content.readany()


def test_a_prompt_counter_is_asked_only_near_the_context_limit():
    """Far from the limit the request is placed on its estimate (no round trip to a
    tokenizer); where the estimate's bound plus max_tokens could pass the context, the
    engine's count decides: it fits (placed on that count) or it is a 400."""
    async def run():
        counter = WordCounter()
        assert isinstance(counter, PromptCounter)
        async with _front_door(counter) as (core, door, base, session):
            url = f"{base}/v1/completions"
            body = {"model": MODEL, "prompt": "seven words in this prompt, counted exactly", "max_tokens": 2}
            async with session.post(url, json=body) as r:
                far = await r.json()
            asked_far = list(counter.asked)
            limit = _context(core)
            # 8 one-letter words: 16 bytes, estimated 4 tokens, counted 8; 8 + limit - 10 fits.
            near = {"model": MODEL, "prompt": "a " * 8, "max_tokens": limit - 10}
            status_fits, first = await _first_chunk(session, url, near)
            # 12 words: estimated 6 (would fit), counted 12: 12 + limit - 10 does not.
            async with session.post(url, json={**near, "prompt": "a " * 12}) as r:
                beyond = r.status, await r.json()
            body["prompt"] = [1, 2, 3]  # token ids: the client's count, no engine asked
            async with session.post(url, json=body) as r:
                ids = await r.json()
            await asyncio.sleep(0.05)  # the cancelled stream's request ends
            return counter, far, asked_far, status_fits, first, beyond, ids, core.stats()

    counter, far, asked_far, status_fits, first, beyond, ids, stats = asyncio.run(run())
    assert asked_far == [] and far["usage"]["prompt_tokens"] == 11  # 43 bytes / 4, the estimate
    assert status_fits == 200 and first.startswith(b"data: ")
    assert beyond[0] == 400 and beyond[1]["error"]["code"] == "context_length_exceeded", beyond
    assert counter.asked == [(MODEL, "completions")] * 2 and ids["usage"]["prompt_tokens"] == 3
    assert stats.prompt_lengths == {"estimated": 1, "tokenized": 1, "client": 1}
    assert stats.input_tokens == 11 + 8 + 3 and stats.requests_invalid == 1


@pytest.mark.parametrize("path, method, status", [("/v1/nothing", "GET", 404), ("/v1/completions", "GET", 405)])
def test_unknown_routes_answer_openai_errors(path, method, status):
    async def run():
        async with _front_door() as (core, door, base, session):
            async with session.request(method, f"{base}{path}") as r:
                return r.status, await r.json(), dict(door.responses)

    got, body, responses = asyncio.run(run())
    assert got == status and set(body["error"]) == {"message", "type", "param", "code"}
    assert sum(responses.values()) == 1


class UnreachableTokenizer:
    """A tokenizer endpoint that cannot be reached."""

    async def count_prompt_tokens(self, model: str, payload: PromptPayload) -> int | None:
        raise ConnectionRefusedError("tokenizer endpoint refused the connection")


def test_a_failing_prompt_counter_leaves_the_estimate():
    async def run():
        async with _front_door(UnreachableTokenizer()) as (core, door, base, session):
            body = {"model": MODEL, "prompt": "x" * 40, "max_tokens": _context(core) - 20}  # near the limit
            status, _ = await _first_chunk(session, f"{base}/v1/completions", body)
            await asyncio.sleep(0.05)
            return status, core.stats()

    status, stats = asyncio.run(run())
    assert status == 200 and stats.prompt_lengths == {"estimated": 1} and stats.input_tokens == 10


@pytest.mark.parametrize("stream", [False, True])
def test_an_engines_text_is_forwarded_as_it_is(stream):
    async def run():
        async with _front_door(workers_class=TextWorkers) as (core, door, base, session):
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 40, "stream": stream}
            async with session.post(f"{base}/v1/completions", json=body) as r:
                raw = await r.read()
            return raw, core.stats()

    raw, stats = asyncio.run(run())
    if stream:
        events = [json.loads(line.removeprefix(b"data: ")) for line in raw.split(b"\n\n")
                  if line.startswith(b"data: {")]
        text = "".join(e["choices"][0]["text"] for e in events)
    else:
        text = json.loads(raw)["choices"][0]["text"]
    assert text == "".join(f"<{i}>" for i in range(40)) and stats.requests_completed == 1


def test_with_a_token_every_route_but_health_needs_it_as_the_api_key():
    async def run():
        security = ServiceSecurity(token_digest=token_digest("s3cret-token"))
        async with _front_door(security=security) as (core, door, base, session):
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
            answers = []
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-token"}):
                async with session.post(f"{base}/v1/completions", json=body, headers=headers) as r:
                    answers.append((r.status, await r.json()))
            async with session.get(f"{base}/v1/models") as r:
                models = r.status
            async with session.get(f"{base}/health") as r:
                health = r.status
            return answers, models, health, core.stats()

    answers, models, health, stats = asyncio.run(run())
    assert [status for status, _ in answers] == [401, 401, 200] and (models, health) == (401, 200)
    assert answers[0][1]["error"]["code"] == "invalid_api_key"
    assert stats.requests_total == 1 and stats.requests_invalid == 0
