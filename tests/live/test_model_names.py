"""Model aliases and the cluster's default model, as users of vLLM's --served-model-name,
LiteLLM or SGLang's router expect them: the YAML (each mistake named by file and key)
and the HTTP front door as the official `openai` client sees it (a real aiohttp server
on loopback over a SchedulerCore with the live plane's in-process emulated workers)."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, parse_cluster
from scheduler.live.core import SchedulerCore
from scheduler.live.http import HttpFrontDoor
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.openai_api import synthetic_text
from scheduler.live.types import LiveOptions
from scheduler.registry import build_policy
from workers.clock import ScaledClock

openai = pytest.importorskip("openai", reason="the official OpenAI client: pip install -e '.[engines]'")

SMALL = {"name": "small", "device": "h100-sxm", "instances": 1, "model": "llama-3.2-1b", "role": "both",
         "aliases": ["tiny", "acme/tiny-instruct"]}
BIG = {"name": "big", "device": "b200", "instances": 1, "model": "llama-3.1-8b", "role": "both", "aliases": ["chat"]}
ENGINES = {"name": "engines", "backend": "openai", "endpoints": ["http://10.0.0.5:8000"], "model": "my-engine-model"}


def doc(*pools, **top):
    return {"name": "names", "pools": [dict(p) for p in pools], **top}


def test_aliases_and_the_default_model_are_read():
    config = parse_cluster(doc(SMALL, BIG, {**ENGINES, "aliases": ["house"]}, default_model="chat"), "n.yaml")
    assert [p.aliases for p in config.pools] == [("tiny", "acme/tiny-instruct"), ("chat",), ("house",)]
    assert config.default_model == "chat"
    assert parse_cluster(doc(SMALL), "n.yaml").default_model is None


@pytest.mark.parametrize(("pools", "top", "key", "reason"), [
    ([{**SMALL, "aliases": "tiny"}], {}, "pools[0].aliases", "expected a list of names"),
    ([{**SMALL, "aliases": ["tiny", ""]}], {}, "pools[0].aliases[1]", "non-empty string"),
    ([{**SMALL, "aliases": ["tiny", "tiny"]}], {}, "pools[0].aliases[1]", "duplicate alias 'tiny'"),
    ([{**SMALL, "aliases": ["llama-3.2-1b"]}], {}, "pools[0].aliases[0]", "the pool's model itself"),
    ([SMALL, {**BIG, "aliases": ["llama-3.2-1b"]}], {}, "pools[1].aliases[0]", "the model of another pool"),
    ([SMALL, {**BIG, "aliases": ["tiny"]}], {}, "pools[1].aliases[0]", "an alias of 'llama-3.2-1b'"),
    ([{**ENGINES, "aliases": [7]}], {}, "pools[0].aliases[0]", "non-empty string"),
    ([SMALL, BIG], {"default_model": "gpt-9"}, "default_model", "no pool's model or alias"),
    ([SMALL, BIG], {"default_model": ""}, "default_model", "non-empty string"),
])
def test_name_mistakes_are_named_by_file_and_key(pools, top, key, reason):
    with pytest.raises(ConfigError) as err:
        parse_cluster(doc(*pools, **top), "names.yaml")
    assert f"names.yaml: key '{key}'" in str(err.value) and reason in str(err.value), str(err.value)


def test_an_alias_shared_by_two_pools_of_one_model_is_one_name():
    other = {**BIG, "name": "big-2", "device": "h100-sxm"}
    config = parse_cluster(doc(BIG, other), "n.yaml")
    assert [p.aliases for p in config.pools] == [("chat",), ("chat",)]


@contextlib.asynccontextmanager
async def front_door(config):
    """The front door on loopback over a core with in-process emulated workers, and the
    official async client pointed at it."""
    cluster = Cluster(config)
    clock = ScaledClock(0.01)
    workers = InProcessWorkerClient(cluster, clock)
    core = SchedulerCore(cluster, build_policy(config.policy, config), LiveOptions(), clock, workers)
    workers.register_all(core)
    door = HttpFrontDoor(core, lambda: True)
    port = await door.start("127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                timeout=30)
    try:
        async with client:
            yield core, client
    finally:
        await door.close()
        await workers.close()


def completed_by_pool(core) -> dict[str, int]:
    return {p.name: p.completed for p in core.stats().pools}


def test_models_lists_every_name_with_the_model_it_means():
    async def run():
        async with front_door(parse_cluster(doc(SMALL, BIG, default_model="chat"), "n.yaml")) as (core, client):
            listed = (await client.models.list()).data
            alias = await client.models.retrieve("acme/tiny-instruct")
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("gpt-9")
            return listed, alias

    listed, alias = asyncio.run(run())
    assert {m.id: m.model_extra["root"] for m in listed} == {
        "llama-3.2-1b": "llama-3.2-1b", "tiny": "llama-3.2-1b", "acme/tiny-instruct": "llama-3.2-1b",
        "llama-3.1-8b": "llama-3.1-8b", "chat": "llama-3.1-8b"}
    assert alias.id == "acme/tiny-instruct" and alias.model_extra["pools"] == ["small"]


def test_an_alias_is_served_as_its_model_and_answered_under_the_name_asked():
    async def run():
        async with front_door(parse_cluster(doc(SMALL, BIG), "n.yaml")) as (core, client):
            before = completed_by_pool(core)
            reply = await client.completions.create(model="tiny", prompt="hi", max_tokens=3)
            chunks = [c async for c in await client.chat.completions.create(
                model="acme/tiny-instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True)]
            return reply, chunks, before, completed_by_pool(core), core.stats()

    reply, chunks, before, after, stats = asyncio.run(run())
    assert reply.model == "tiny" and reply.choices[0].text == synthetic_text(0, 3)
    assert {c.model for c in chunks} == {"acme/tiny-instruct"}
    # Either pool may serve the 1B model (a more capable model may stand in, as with
    # Generate's model_tier): each request was placed and counted like one naming it.
    assert sum(after.values()) - sum(before.values()) == 2 == stats.requests_completed


def test_the_default_model_answers_a_request_that_names_none():
    async def run():
        async with front_door(parse_cluster(doc(SMALL, BIG, default_model="chat"), "n.yaml")) as (core, client):
            before = completed_by_pool(core)
            reply = await client.post("/completions", body={"prompt": "hi", "max_tokens": 4},
                                      cast_to=openai.types.Completion)
            return reply, before, completed_by_pool(core)

    reply, before, after = asyncio.run(run())
    assert reply.model == "chat" and reply.choices[0].text == synthetic_text(0, 4)
    # "chat" means the 8B model: only the pool serving it (or a more capable one) may take it.
    assert after["big"] - before["big"] == 1 and after["small"] == before["small"]


def test_without_a_default_a_request_naming_no_model_is_400_and_an_unknown_name_404():
    async def run():
        async with front_door(parse_cluster(doc(SMALL, BIG), "n.yaml")) as (core, client):
            with pytest.raises(openai.BadRequestError) as missing:
                await client.post("/completions", body={"prompt": "hi", "max_tokens": 4},
                                  cast_to=openai.types.Completion)
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.completions.create(model="gpt-9", prompt="hi", max_tokens=2)
            return missing.value.body, unknown.value.body, core.stats()

    missing, unknown, stats = asyncio.run(run())
    assert missing["code"] == "missing_field" and "no default_model" in missing["message"]
    assert unknown["code"] == "model_not_found"
    assert "acme/tiny-instruct, chat, llama-3.1-8b, llama-3.2-1b, tiny" in unknown["message"]
    assert stats.requests_invalid == 2 and stats.requests_total == 0
