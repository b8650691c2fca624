"""The OpenAI-API WorkerClient under the live SchedulerCore, in process, against a
real llama.cpp engine: the client's own request body streamed back as text, a
synthetic prompt for token-count clients, prompt lengths counted by the engine,
measured speed in the policy's snapshot, cancellation."""
from __future__ import annotations

import asyncio
import json

import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.core import SchedulerCore
from scheduler.live.engine_launch import worker_client
from scheduler.live.openai_client import SYNTHETIC, OpenAIWorkerClient, synthetic_prompt
from scheduler.live.types import GenerateInput, LiveOptions, PromptPayload
from scheduler.registry import build_policy
from scheduler.types import RequestStatus
from workers.clock import ScaledClock
from workers.learned_perf import PRIOR_DECODE_S_PER_TOKEN, PRIOR_PREFILL_TOKENS_PER_S
from workers.openai_engine import OpenAIEngine, TokenCountSource

PROMPT = "the model token request prefill decode cache batch engine latency"
MESSAGES = [{"role": "user", "content": "hello world"}]


class Sink:
    def __init__(self):
        self.events = []
        self.outcome = None
        self.done = asyncio.Event()

    def tokens(self, event):
        self.events.append(event)

    def finish(self, outcome):
        self.outcome = outcome
        self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


async def _core(engine):
    config = parse_cluster({"name": "one-engine", "pools": [
        {"name": "llama", "backend": "openai", "endpoints": [engine.base_url], "model": engine.model,
         "context_tokens": 512}]})
    cluster = Cluster(config)
    options = LiveOptions(time_scale=1.0)
    clock = ScaledClock(1.0)
    client = worker_client(cluster, clock, options)
    assert isinstance(client, OpenAIWorkerClient)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options, clock, client)
    core.register(0, "llama-0", engine.base_url)
    return core, client


async def _serve(core, inputs):
    sinks = [Sink() for _ in inputs]
    for inp, sink in zip(inputs, sinks):
        core.submit(inp, sink)
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sinks)), 120)
    return sinks


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_the_clients_body_streams_back_the_engines_own_text(llama_engine, route):
    body = {"model": "whatever-the-client-said", "temperature": 0, "max_tokens": 1000}
    body.update({"prompt": PROMPT} if route == "completions" else {"messages": MESSAGES})

    async def go():
        core, client = await _core(llama_engine)
        payload = PromptPayload(route, json.dumps(body).encode())
        [sink] = await _serve(core, [GenerateInput("", 16, 10, payload=payload)])
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as direct:
            whole = await (direct.complete(PROMPT, max_tokens=10, temperature=0) if route == "completions"
                           else direct.chat(MESSAGES, max_tokens=10, temperature=0))
        counts = client.prompt_counts["llama"]
        await client.close()
        return sink, whole, counts

    sink, whole, counts = asyncio.run(go())
    assert sink.outcome.status == RequestStatus.COMPLETED and sink.outcome.output_tokens == 10
    assert sink.text == whole.text and len(sink.events) == 10  # max_tokens is the core's, not the body's
    # llama-cpp-python tokenizes completion prompts (/extras/tokenize) but has no chat template endpoint.
    expected = TokenCountSource.ENGINE if route == "completions" else TokenCountSource.ESTIMATE
    assert counts == {expected.value: 1}


@pytest.mark.parametrize("usage_in_answer", [True, False])
def test_a_request_placed_on_an_estimate_ends_with_the_engines_count(llama_engine, usage_in_answer):
    """Placed on the estimate (16): a stream whose answer carries usage ends with the
    engine's count in its record; one without ends at once and the count corrects the
    totals after (llama-cpp-python's streams carry no usage: its tokenizer counts)."""
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    if usage_in_answer:
        body["stream_options"] = {"include_usage": True}

    async def go():
        core, client = await _core(llama_engine)
        payload = PromptPayload("completions", json.dumps(body).encode())
        [sink] = await _serve(core, [GenerateInput("", 16, 4, payload=payload)])
        at_end = core.stats().input_tokens
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as direct:
            exact = (await direct.count_tokens(PROMPT)).tokens
        for _ in range(200):
            if core.stats().input_tokens == exact:
                break
            await asyncio.sleep(0.01)
        stats = core.stats()
        counts = dict(client.prompt_counts["llama"])
        await client.close()
        return sink, at_end, exact, stats, counts

    sink, at_end, exact, stats, counts = asyncio.run(go())
    assert exact != 16 and sink.outcome.status == RequestStatus.COMPLETED
    assert sink.outcome.input_tokens == (exact if usage_in_answer else 16)
    assert at_end == (exact if usage_in_answer else 16)
    assert stats.input_tokens == exact and stats.pools[0].prefill_tokens == exact
    assert counts == {TokenCountSource.ENGINE.value: 1}


def test_a_token_count_request_gets_a_synthetic_prompt_of_that_length(llama_engine):
    async def go():
        core, client = await _core(llama_engine)
        sinks = await _serve(core, [GenerateInput("", n, 4) for n in (8, 40, 200)])
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as direct:
            counted = [(await direct.count_tokens(synthetic_prompt(f"k{n}", n))).tokens for n in (8, 40, 200)]
        counts = client.prompt_counts["llama"]
        await client.close()
        return sinks, counted, counts

    sinks, counted, counts = asyncio.run(go())
    assert all(s.outcome.status == RequestStatus.COMPLETED and s.outcome.output_tokens == 4 for s in sinks)
    assert counted == [8, 40, 200]  # BOS + one token per word
    assert counts == {SYNTHETIC: 3}


def test_measured_speed_replaces_the_priors_in_the_policys_snapshot(llama_engine):
    async def go():
        core, client = await _core(llama_engine)
        snap = core.snap
        prior = (snap.predicted_prefill_s(snap.candidates[0][:1] * 0, 1000)[0], snap.tpot_base_s[0])
        await _serve(core, [GenerateInput("", 64, 16) for _ in range(4)])
        link = client._links[0]
        measured = link.estimator.snapshot()
        after = (snap.predicted_prefill_s(snap.candidates[0][:1] * 0, 1000)[0], snap.tpot_base_s[0])
        await client.close()
        return prior, measured, after

    prior, measured, after = asyncio.run(go())
    assert prior[0] == pytest.approx(1000 / PRIOR_PREFILL_TOKENS_PER_S, rel=1e-3)
    assert prior[1] == pytest.approx(PRIOR_DECODE_S_PER_TOKEN)
    assert measured.prefill_samples == measured.decode_samples == 4
    assert after[0] == pytest.approx(1000 / measured.prefill_tokens_per_s)
    assert after[1] == pytest.approx(measured.decode_s_per_token)


def test_a_cancelled_request_stops_on_the_engine_and_is_counted(llama_engine):
    async def go():
        core, client = await _core(llama_engine)
        sink = Sink()
        key = core.submit(GenerateInput("", 16, 400), sink)
        while len(sink.events) < 3:
            await asyncio.sleep(0.005)
        core.cancel(key)
        await asyncio.sleep(0.2)
        streamed = len(sink.events)
        link = client._links[0]
        left = (len(link.flights), link.running, len(link.queued_tokens))
        [after] = await _serve(core, [GenerateInput("", 16, 4)])
        await client.close()
        return sink, streamed, left, after, core.stats()

    sink, streamed, left, after, stats = asyncio.run(go())
    assert sink.outcome is None  # the client went away: nobody to tell
    assert streamed < 400 and left == (0, 0, 0)
    assert after.outcome.status == RequestStatus.COMPLETED
    assert stats.requests_total == 2 and stats.requests_completed == 1 and stats.requests_failed == 1
    assert stats.reasons == {"CANCELLED": 1}


def test_a_front_door_can_count_a_prompt_before_placing_it(llama_engine):
    async def go():
        core, client = await _core(llama_engine)
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as direct:
            expected = await direct.count_tokens(PROMPT)
        counted = await client.count_prompt(llama_engine.model, "completions", {"prompt": PROMPT})
        chat = await client.count_prompt(llama_engine.model, "chat/completions", {"messages": MESSAGES})
        ids = await client.count_prompt(llama_engine.model, "completions", {"prompt": [5, 6, 7]})
        other = await client.count_prompt("another-model", "completions", {"prompt": PROMPT})
        await client.close()
        return expected, counted, chat, ids, other

    expected, counted, chat, ids, other = asyncio.run(go())
    assert counted == expected and counted.source == TokenCountSource.ENGINE
    assert chat.source == TokenCountSource.ESTIMATE and chat.tokens > 0
    assert ids.tokens == 3 and other is None
