"""bench/frontdoor_floor.py, the bare relay that bench/frontdoor_overhead.py measures as the
floor of one hop: it must serve what the engine serves, or the floor it measures is not one.
A real llama.cpp engine (the tiny test model), the official openai client, real gRPC on 127.0.0.1."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from bench.frontdoor_floor import floor_process
from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler.live.openai_client import synthetic_prompt
from tests.engines.llama_server import MODEL_ALIAS, SKIP_REASON, running_llama_server, server_importable
from tests.engines.tiny_llama import write_tiny_llama


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    """(engine, relay's gRPC address, relay's OpenAI base URL)."""
    pytest.importorskip("gguf", reason="the gguf package writes the test model (pip install -e '.[engines]')")
    pytest.importorskip("openai", reason="pip install -e '.[engines]'")
    if not server_importable():
        pytest.skip(SKIP_REASON)
    tmp = tmp_path_factory.mktemp("floor")
    model = write_tiny_llama(tmp / "tiny-llama.gguf")
    with running_llama_server(model, tmp) as engine, floor_process(engine.base_url, MODEL_ALIAS) as (address, http):
        yield engine, address, http


async def _texts(base_url: str, prompt: str, stream: bool) -> str:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    answer = await client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=8, temperature=0,
                                             stream=stream)
    if not stream:
        return answer.choices[0].text
    return "".join([chunk.choices[0].text async for chunk in answer if chunk.choices])


@pytest.mark.parametrize("stream", [True, False])
def test_the_relay_answers_as_the_engine_does(relay, stream):
    engine, _, http = relay
    prompt = synthetic_prompt("floor-text", 32)
    direct = asyncio.run(_texts(engine.base_url + "/v1", prompt, stream))
    assert direct
    assert asyncio.run(_texts(http, prompt, stream)) == direct


def test_the_relays_generate_streams_every_token_then_a_completed_record(relay):
    _, address, _ = relay

    async def generate():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            return [m async for m in stub.Generate(scheduler_pb2.GenerateRequest(
                request_id="floor-1", prompt_length=32, max_output_tokens=8), timeout=60)]

    messages = asyncio.run(generate())
    assert [m.tokens.first_token_index for m in messages] == list(range(8))
    assert sum(m.tokens.token_count for m in messages) == 8
    assert [m.HasField("record") for m in messages] == [False] * 7 + [True]
    assert messages[-1].record.status == common_pb2.REQUEST_STATUS_COMPLETED
    assert messages[-1].record.output_tokens == 8
