"""workers.openai_engine against a real llama.cpp engine (llama-cpp-python's
server with the tiny test model): streaming and not, tokenizer endpoint,
health, typed errors from a killed, paused or refusing engine, cancellation,
and EWMA estimates that follow measured times. No mocked engine."""
from __future__ import annotations

import asyncio

import pytest

from workers.openai_engine import (EngineHTTPError, EngineProtocolError, EngineTimeout, EngineUnreachable, OpenAIEngine,
                                   TokenCountSource, TokenizerDialect)

MAX_TOKENS = 16
PROMPT = "the model token request prefill decode cache batch engine latency"
MESSAGES = [{"role": "user", "content": "hello world"}]


def run(coro):
    return asyncio.run(coro)


async def _stream(engine: OpenAIEngine, *, chat: bool, max_tokens: int = MAX_TOKENS, pause=None,
                  prompt: str = PROMPT, prompt_tokens: int | None = None):
    """Stream one request; `pause(n)` runs after the n-th chunk (a test's hook into timing)."""
    stream = (engine.stream_chat(MESSAGES, max_tokens=max_tokens, temperature=0) if chat
              else engine.stream_completion(prompt, max_tokens=max_tokens, temperature=0,
                                            prompt_tokens=prompt_tokens))
    async with stream:
        async for n, _event in _enumerate(stream):
            if pause is not None:
                await pause(n)
    return stream.result


async def _enumerate(stream):
    n = 0
    async for event in stream:
        n += 1
        yield n, event


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_stream_measures_every_token_and_matches_the_unstreamed_answer(llama_engine, chat):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            streamed = await _stream(engine, chat=chat)
            whole = await (engine.chat(MESSAGES, max_tokens=MAX_TOKENS, temperature=0) if chat
                           else engine.complete(PROMPT, max_tokens=MAX_TOKENS, temperature=0))
            return streamed, whole

    streamed, whole = run(go())
    assert streamed.text == whole.text
    assert streamed.completion_tokens == whole.completion_tokens == MAX_TOKENS
    assert len(streamed.token_arrivals_s) == MAX_TOKENS  # one chunk per token for this model
    assert list(streamed.token_arrivals_s) == sorted(streamed.token_arrivals_s)
    assert streamed.ttft_s == streamed.token_arrivals_s[0] > 0
    span = streamed.token_arrivals_s[-1] - streamed.token_arrivals_s[0]
    assert streamed.tpot_s == pytest.approx(span / (MAX_TOKENS - 1))
    assert streamed.e2e_s >= streamed.token_arrivals_s[-1]
    assert streamed.finish_reason == whole.finish_reason == "length"
    assert whole.ttft_s is None and whole.tpot_s is None  # not measurable without a stream


def test_stream_without_usage_counts_chunks_and_keeps_the_callers_prompt_count(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            counted = await engine.count_tokens(PROMPT)
            streamed = await _stream(engine, chat=False, prompt_tokens=counted.tokens)
            return streamed, await engine.complete(PROMPT, max_tokens=MAX_TOKENS)

    streamed, whole = run(go())
    assert not streamed.usage_reported  # llama-cpp-python ignores stream_options.include_usage
    assert streamed.completion_tokens == whole.completion_tokens == MAX_TOKENS
    assert streamed.prompt_tokens == whole.prompt_tokens


def test_count_tokens_uses_llama_cpp_pythons_endpoint_and_agrees_with_usage(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            dialect = await engine.tokenizer_dialect()
            counted = await engine.count_tokens(PROMPT)
            usage = (await engine.complete(PROMPT, max_tokens=1)).prompt_tokens
            return dialect, counted, usage

    dialect, counted, usage = run(go())
    assert dialect is TokenizerDialect.LLAMA_CPP_PYTHON
    assert counted.source is TokenCountSource.ENGINE
    assert counted.tokens == usage


def test_chat_tokens_without_a_template_endpoint_are_an_estimate_and_say_so(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            return await engine.count_chat_tokens(MESSAGES)

    counted = run(go())
    assert counted.source is TokenCountSource.ESTIMATE
    assert counted.tokens > 0


def test_health_is_true_for_a_serving_engine(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            return await engine.health(), await engine.models()

    health, models = run(go())
    assert health.healthy, health.detail
    assert models == [llama_engine.model]


def test_killed_engine_is_unhealthy_and_requests_fail_as_unreachable(disposable_llama_engine):
    server = disposable_llama_engine

    async def go():
        async with OpenAIEngine(server.base_url, server.model, connect_timeout_s=2) as engine:
            assert (await engine.health()).healthy
            server.kill()
            health = await engine.health()
            with pytest.raises(EngineUnreachable) as failed:
                await _stream(engine, chat=False)
            return health, failed.value

    health, error = run(go())
    assert not health.healthy
    assert "cannot connect" in health.detail
    assert error.tokens_streamed == 0  # nothing streamed: safe to send elsewhere
    assert error.endpoint == server.base_url + "/v1/completions"


def test_engine_killed_mid_stream_fails_with_the_tokens_already_streamed(disposable_llama_engine):
    server = disposable_llama_engine

    async def kill_after_first(n):
        if n == 1:
            server.kill()

    async def go():
        async with OpenAIEngine(server.base_url, server.model) as engine:
            with pytest.raises(EngineUnreachable) as failed:
                await _stream(engine, chat=False, max_tokens=400, pause=kill_after_first)
            return failed.value

    error = run(go())
    assert 1 <= error.tokens_streamed < 400
    assert "connection lost" in error.message


def test_paused_engine_times_out(disposable_llama_engine):
    server = disposable_llama_engine

    async def go():
        async with OpenAIEngine(server.base_url, server.model, read_timeout_s=0.5) as engine:
            server.pause()
            try:
                with pytest.raises(EngineTimeout) as failed:
                    await _stream(engine, chat=False)
            finally:
                server.resume()
            return failed.value

    assert "timeout" in str(run(go()))


def test_http_error_carries_the_status_and_the_engines_message(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            with pytest.raises(EngineHTTPError) as failed:
                await engine.complete("hello " * 600, max_tokens=4)  # the engine has n_ctx 512
            return failed.value

    error = run(go())
    assert error.status == 400
    assert "maximum context length is 512 tokens" in error.message
    assert error.tokens_streamed == 0


def test_stream_that_ends_without_done_is_a_protocol_error(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            # llama-cpp-python answers 200 and closes the stream when a streamed prompt
            # overflows its context, where the unstreamed request gets a 400.
            with pytest.raises(EngineProtocolError) as failed:
                await _stream(engine, chat=False, prompt="hello " * 600)
            return failed.value

    error = run(go())
    assert "without [DONE]" in error.message
    assert error.tokens_streamed == 0


def test_cancelled_stream_closes_its_connection_and_the_engine_serves_the_next(disposable_llama_engine):
    server = disposable_llama_engine

    async def go():
        async with OpenAIEngine(server.base_url, server.model) as engine:
            stream = engine.stream_completion(PROMPT, max_tokens=400, temperature=0)
            first_token = asyncio.Event()

            async def consume():
                async with stream:
                    async for _ in stream:
                        first_token.set()
                        await asyncio.sleep(3600)  # blocks until cancelled

            task = asyncio.create_task(consume())
            await first_token.wait()
            server.pause()  # the stream is surely still in flight when it is cancelled
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            server.resume()
            after = await _stream(engine, chat=False)
            return stream, after, engine.connections_opened

    cancelled, after, connections = run(go())
    assert cancelled.result is None
    assert after.completion_tokens == MAX_TOKENS
    assert connections == 2  # the cancelled stream's connection was closed, not reused


def test_sequential_requests_reuse_one_pooled_connection(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            for chat in (False, True, False, True):
                await _stream(engine, chat=chat)
            await engine.complete(PROMPT, max_tokens=2)
            await engine.count_tokens(PROMPT)
            return engine.connections_opened

    assert run(go()) == 1


def test_concurrent_streams_all_complete_on_their_own_connections(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            results = await asyncio.gather(*(_stream(engine, chat=bool(i % 2)) for i in range(4)))
            return results, engine.connections_opened

    results, connections = run(go())
    assert [r.completion_tokens for r in results] == [MAX_TOKENS] * 4
    assert connections == 4


def test_ewma_estimates_start_at_the_first_sample_and_move_with_later_ones(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model, ewma_alpha=0.5) as engine:
            assert engine.estimates.prefill_tokens_per_s is None
            tokens = (await engine.count_tokens(PROMPT)).tokens
            first = await _stream(engine, chat=False, prompt_tokens=tokens)
            after_first = engine.estimates
            second = await _stream(engine, chat=False, prompt_tokens=tokens)
            return first, after_first, second, engine.estimates

    first, after_first, second, after_second = run(go())
    rate_1 = first.prompt_tokens / first.ttft_s
    rate_2 = second.prompt_tokens / second.ttft_s
    assert after_first.prefill_tokens_per_s == pytest.approx(rate_1)
    assert after_first.decode_s_per_token == pytest.approx(first.tpot_s)
    assert after_second.prefill_tokens_per_s == pytest.approx(rate_1 + 0.5 * (rate_2 - rate_1))
    assert after_second.decode_s_per_token == pytest.approx(first.tpot_s + 0.5 * (second.tpot_s - first.tpot_s))
    assert (after_second.prefill_samples, after_second.decode_samples) == (2, 2)


def test_decode_estimate_rises_when_the_engine_stalls_mid_stream(disposable_llama_engine):
    server = disposable_llama_engine
    stall_s = 1.0

    async def stall_after_second(n):
        if n == 2:
            server.pause()
            await asyncio.sleep(stall_s)
            server.resume()

    async def go():
        async with OpenAIEngine(server.base_url, server.model) as engine:
            await _stream(engine, chat=False)
            before = engine.estimates.decode_s_per_token
            slow = await _stream(engine, chat=False, pause=stall_after_second)
            return before, slow, engine.estimates.decode_s_per_token

    before, slow, after = run(go())
    assert slow.tpot_s >= stall_s / (MAX_TOKENS - 1)  # the stall is inside the decode span
    assert after > before
    assert after == pytest.approx(before + 0.2 * (slow.tpot_s - before))


def test_estimates_predict_from_the_measured_rates(llama_engine):
    async def go():
        async with OpenAIEngine(llama_engine.base_url, llama_engine.model) as engine:
            await _stream(engine, chat=False, prompt_tokens=(await engine.count_tokens(PROMPT)).tokens)
            return engine.estimates

    estimates = run(go())
    assert estimates.predict_ttft_s(1000) == pytest.approx(1000 / estimates.prefill_tokens_per_s)
    assert estimates.predict_decode_s(11) == pytest.approx(10 * estimates.decode_s_per_token)


def test_refused_port_is_unreachable_without_waiting():
    from tests.engines.llama_server import free_port

    async def go():
        async with OpenAIEngine(f"http://127.0.0.1:{free_port()}", "none") as engine:
            with pytest.raises(EngineUnreachable) as failed:
                await engine.complete("x", max_tokens=1)
            return failed.value

    error = run(go())
    assert "cannot connect" in error.message
    assert error.status is None
