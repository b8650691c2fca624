"""`backend: openai` pools under a real `infersched serve`: real llama.cpp engines
(llama-cpp-python's server, the tiny test model) beside an emulated pool, driven
over the scheduler's gRPC Generate path.

One serve for the module (engines are slow to start on a small host), on the
session's local Ray cluster (`--address`): two engines the test started
(`endpoints:`), one engine serve launches as a Ray actor (`launch:`, num_gpus 0)
and one emulated colocated instance. The tests
run in file order; the last ones kill an engine and bring it back.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
import yaml

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.engines.llama_server import MODEL_ALIAS, running_llama_server, server_command
from tests.serve_process import start_serve, stop_process, word_after

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

EMULATED_MODEL = "llama-3.1-8b"
COMPLETED = common_pb2.REQUEST_STATUS_COMPLETED
FIRST_WAVE = 36  # requests streaming when an engine is killed


class Served(NamedTuple):
    proc: subprocess.Popen
    address: str
    lines: list[str]
    engines: dict  # pool-instance label -> LlamaServer the test started
    model_path: Path
    log_dir: Path


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory, ray_cluster_address):
    log_dir = tmp_path_factory.mktemp("engines")
    with running_llama_server(tiny_model, log_dir) as a, running_llama_server(tiny_model, log_dir) as b:
        cluster = {
            "name": "real-and-emulated",
            "policy": "least-loaded",
            "pools": [
                {"name": "llama", "backend": "openai", "endpoints": [a.base_url, b.base_url], "model": MODEL_ALIAS,
                 "context_tokens": 512},
                {"name": "launched", "backend": "openai", "model": MODEL_ALIAS, "context_tokens": 512,
                 "launch": {"command": server_command(tiny_model, port="{port}", host="{host}", python="{python}"),
                            "instances": 1, "num_gpus": 0}},
                {"name": "emulated", "device": "b200", "instances": 1, "model": EMULATED_MODEL, "role": "both"},
            ],
        }
        path = log_dir / "cluster.yaml"
        path.write_text(yaml.safe_dump(cluster))
        proc, address, lines = start_serve(path, "--metrics-port", "-1", "--http-port", "0",
                                           "--address", ray_cluster_address)
        try:
            launched = [w.address for w in _workers(address).values() if w.pool == "launched"]
            yield Served(proc, address, lines, {"llama-0": a, "llama-1": b}, tiny_model, log_dir)
        finally:
            stop_process(proc)
        for url in launched:  # serve stopped the engines it launched
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.socket() as probe:
                assert probe.connect_ex((host, int(port))) != 0, f"launched engine {url} outlived serve"


async def _generate(stub, prompt: int, output: int, tier: str = MODEL_ALIAS):
    """One Generate call: (record, tokens streamed)."""
    tokens = 0
    record = None
    async for message in stub.Generate(scheduler_pb2.GenerateRequest(
            prompt_length=prompt, max_output_tokens=output, model_tier=tier), timeout=120):
        if message.HasField("tokens"):
            tokens += message.tokens.token_count
        if message.HasField("record"):
            record = message.record
    return record, tokens


def _run(address: str, calls):
    async def go():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            return await calls(stub)
    return asyncio.run(go())


def _workers(address: str) -> dict[str, scheduler_pb2.WorkerInfo]:
    answer = _run(address, lambda stub: stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=10))
    return {f"{w.pool}-{w.instance}": w for w in answer.workers}


def _stats(address: str) -> scheduler_pb2.SchedulerStats:
    return _run(address, lambda stub: stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10))


def test_serve_registers_every_engine_ready(served):
    workers = _workers(served.address)
    assert {w.pool for w in workers.values()} == {"llama", "launched", "emulated"}
    engines = {w.address for w in workers.values() if w.pool == "llama"}
    assert engines == {e.base_url for e in served.engines.values()}
    launched = next(w for w in workers.values() if w.pool == "launched")
    assert launched.address.startswith("http://127.0.0.1:") and launched.address not in engines
    assert all(w.state == 2 for w in workers.values()), workers  # READY
    assert "time_scale 1" in "\n".join(served.lines)  # real engines run at their own speed


def test_traffic_spreads_over_the_engines_and_streams_every_token(served):
    async def calls(stub):
        return await asyncio.gather(*(_generate(stub, 24, 12) for _ in range(12)))

    results = _run(served.address, calls)
    assert all(r.status == COMPLETED for r, _ in results), [r.reason for r, _ in results]
    assert all(tokens == 12 == r.output_tokens for r, tokens in results)
    pools = {r.prefill_pool for r, _ in results}
    assert pools <= {"llama", "launched"}  # the tier is the engines' model: never the emulated pool
    assert len({r.prefill_instance for r, _ in results}) == 3, [r.prefill_instance for r, _ in results]
    assert all(r.ttft_s > 0 and r.tpot_s > 0 and r.finish_s > r.first_token_s for r, _ in results)


def test_mixed_cluster_serves_emulated_and_real_pools(served):
    async def calls(stub):
        return await asyncio.gather(*(_generate(stub, 24, 6, tier=EMULATED_MODEL) for _ in range(16)))

    results = _run(served.address, calls)
    assert all(r.status == COMPLETED and tokens == 6 for r, tokens in results), [r.reason for r, _ in results]
    assert {r.prefill_pool for r, _ in results} >= {"emulated", "llama"}


def test_stats_count_every_request_by_pool(served):
    stats = _stats(served.address)
    assert stats.requests_total == stats.requests_completed + stats.requests_failed + stats.requests_rejected \
        + stats.in_flight
    assert stats.in_flight == 0 and stats.requests_failed == 0
    pools = {p.name: p for p in stats.pools}
    assert sum(p.completed for p in pools.values()) == stats.requests_completed >= 28
    assert pools["llama"].decode_tokens > 0 and pools["launched"].completed > 0
    # gRPC requests carry token counts only: the engines got synthetic prompts, and the stats say so.
    assert dict(pools["llama"].prompt_token_counts) == {"synthetic": pools["llama"].completed}
    assert not pools["emulated"].prompt_token_counts


def test_prompt_beyond_the_engine_context_is_refused(served):
    async def calls(stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _generate(stub, 500, 100)
        return refused.value

    error = _run(served.address, calls)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE  # the pool's context_tokens bounds the request
    assert "passes the context (512 tokens, model tiny-llama)" in error.details()


def test_the_official_openai_client_reaches_the_real_engines_through_the_http_front_door(served):
    """Chat and completions, streamed and not, through `serve --http-port` to llama.cpp:
    the engines' own text and tokenizer counts come back, and the core counts each request."""
    openai = pytest.importorskip("openai")
    base_url = word_after(served.lines, "OpenAI-compatible HTTP on ")
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=120, max_retries=0)
    before = _stats(served.address).requests_completed

    chat = client.chat.completions.create(model=MODEL_ALIAS, max_tokens=8,
                                          messages=[{"role": "user", "content": "Say hello to the tiny model."}])
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 8
    completion = client.completions.create(model=MODEL_ALIAS, prompt="one two three four", max_tokens=6)
    assert completion.choices[0].text and completion.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model=MODEL_ALIAS, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "Stream five tokens."}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed and chunks[-1].usage.completion_tokens == 5
    assert completion.usage.prompt_tokens > 0 and chat.usage.prompt_tokens > completion.usage.prompt_tokens

    stats = _stats(served.address)
    assert stats.requests_completed == before + 3
    # Far from the context limit every request is placed on its estimate (no tokenizer
    # round trip first), and the stats say so.
    lengths = dict(stats.prompt_lengths)
    assert (lengths.get("tokenized"), lengths.get("estimated")) == (None, 3), lengths
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)


def _openai_client(served):
    openai = pytest.importorskip("openai")
    return openai, openai.OpenAI(base_url=word_after(served.lines, "OpenAI-compatible HTTP on "), api_key="unused",
                                 timeout=120, max_retries=0)


def _engine_count(served, prompt: str) -> int:
    """The prompt's tokens as the engine's own tokenizer counts them."""
    request = urllib.request.Request(served.engines["llama-0"].base_url + "/extras/tokenize",
                                     json.dumps({"input": prompt}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return len(json.load(answer)["tokens"])


def _engine_counted(stats) -> int:
    return sum(p.prompt_token_counts.get("engine", 0) for p in stats.pools)


def test_http_requests_placed_on_the_estimate_report_the_engines_count(served):
    """Placed on the estimate; `usage` and the token totals carry the engine's own count,
    whether the answer waits for it (a whole answer, include_usage) or not (a plain stream,
    whose count corrects the totals after it ends)."""
    _, client = _openai_client(served)
    prompt = "the of and to in is was for on that"  # 36 bytes: estimated 9 tokens
    exact = _engine_count(served, prompt)
    assert exact == 11  # BOS and one token per word: the estimate is short by 2
    before = _stats(served.address)
    whole = client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=4, temperature=0)
    chunks = list(client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    plain = list(client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=4, temperature=0, stream=True))
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens == exact
    assert "".join(c.choices[0].text for c in plain if c.choices) == whole.choices[0].text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = _stats(served.address)
        if stats.input_tokens - before.input_tokens == 3 * exact:
            break
        time.sleep(0.05)
    assert stats.input_tokens - before.input_tokens == 3 * exact
    assert stats.prompt_lengths["estimated"] - before.prompt_lengths["estimated"] == 3
    assert stats.prompt_lengths.get("tokenized", 0) == before.prompt_lengths.get("tokenized", 0)
    assert _engine_counted(stats) - _engine_counted(before) == 3  # exact: by the engine's tokenizer


def test_near_the_context_limit_the_engines_tokenizer_decides(served):
    """`of` x 150: 449 bytes, estimated 113 tokens, 151 by the engine. With 380 more the
    estimate would fit the 512-token context and the engine would cut the answer short
    (llama-cpp-python trims max_tokens); the front door asks the tokenizer and answers
    400. `of` x 50 with 400 more: the bound does not fit, the count does: served whole."""
    openai, client = _openai_client(served)
    before = _stats(served.address)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL_ALIAS, prompt=" ".join(["of"] * 150), max_tokens=380)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and "151 + 380" in error["message"], error
    fits = client.completions.create(model=MODEL_ALIAS, prompt=" ".join(["of"] * 50), max_tokens=400,
                                     extra_body={"ignore_eos": True})
    assert (fits.usage.prompt_tokens, fits.usage.completion_tokens) == (51, 400)
    stats = _stats(served.address)
    assert stats.requests_invalid - before.requests_invalid == 1
    assert stats.prompt_lengths["tokenized"] - before.prompt_lengths.get("tokenized", 0) == 1


def test_an_engine_killed_mid_run_loses_nothing_and_rejoins_when_healthy(served):
    """Kill one engine while requests stream: every request ends and is counted; those
    that had not streamed a token fail over; the rest of the run succeeds; once an engine
    answers on that endpoint again, it serves again."""
    by_address = {e.base_url: e for e in served.engines.values()}
    before = _stats(served.address)
    seen = []

    async def calls(stub):
        # Enough long requests that queues stand behind every engine's stream for a while,
        # even on an idle host where the tiny model decodes fast.
        first = [asyncio.ensure_future(_generate(stub, 24, 480)) for _ in range(FIRST_WAVE)]
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            if all(f.done() for f in first) and len(first) < 3 * FIRST_WAVE:
                # The wave drained before a poll caught a queue (a slow poll on a loaded host):
                # send another rather than give up.
                first += [asyncio.ensure_future(_generate(stub, 24, 480)) for _ in range(FIRST_WAVE)]
            # An engine of ours with a stream running and requests queued behind it (two, so
            # one is still queued if the other starts while the kill lands).
            answer = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool="llama"), timeout=10)
            seen.append([(w.address, w.state, w.running, w.queue_depth) for w in answer.workers])
            victim = next((by_address[w.address] for w in answer.workers
                           if w.state == 2 and w.running and w.queue_depth >= 2), None)
            await asyncio.sleep(0.02)
        assert victim is not None, seen[-5:]
        victim.kill()
        after = await asyncio.gather(*(_generate(stub, 24, 8) for _ in range(9)))
        return victim, await asyncio.gather(*first), after, len(first)

    victim, during, after, sent = _run(served.address, calls)
    broken = [r for r, _ in during if r.status != COMPLETED]
    failed_over = [r for r, _ in during if r.status == COMPLETED and r.retries]
    # The kill hit a stream and requests queued behind it.
    assert broken and failed_over, ([(r.prefill_instance, r.retries, r.status, r.reason) for r, _ in during], seen[-3:])
    assert all(r.prefill_pool == "llama" and "stream broke" in r.reason for r in broken), [r.reason for r in broken]
    assert all(r.status == COMPLETED for r, _ in after), [r.reason for r, _ in after]
    workers = _workers(served.address)
    victim_worker = next(w for w in workers.values() if w.address == victim.base_url)
    assert victim_worker.state == 5  # FAILED
    stats = _stats(served.address)
    assert stats.requests_total - before.requests_total == sent + 9
    assert stats.requests_completed - before.requests_completed == sent + 9 - len(broken)
    assert stats.requests_failed - before.requests_failed == len(broken) and stats.in_flight == 0

    port = int(victim.base_url.rsplit(":", 1)[1])
    with running_llama_server(served.model_path, served.log_dir, port=port):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _workers(served.address)[f"llama-{victim_worker.instance}"].state == 2:
                break
            time.sleep(0.5)
        rejoined = _workers(served.address)[f"llama-{victim_worker.instance}"]
        assert rejoined.state == 2
        assert rejoined.queue_depth == rejoined.running == 0  # its row is current, not as it was when it failed

        async def again(stub):
            return await asyncio.gather(*(_generate(stub, 24, 12) for _ in range(12)))

        results = _run(served.address, again)
        assert all(r.status == COMPLETED for r, _ in results)
        assert victim_worker.instance in {r.prefill_instance for r, _ in results}


def _engine_pid(base_url: str) -> int:
    """The pid of the llama-cpp-python server listening on base_url's port (its command line)."""
    port = base_url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"llama_cpp.server" in args and port.encode() in args:
                return int(entry.name)
    raise AssertionError(f"no engine process serves {base_url}")


def test_a_launched_engine_killed_mid_run_is_relaunched_and_rejoins(served):
    """Kill the engine serve launched while requests stream: every request ends (completed,
    failed over, or failed) and is counted; serve starts the engine again on a new port,
    the instance is unhealthy meanwhile and serves again once its health probe passes."""
    before = _stats(served.address)
    old = next(w for w in _workers(served.address).values() if w.pool == "launched")
    pid = _engine_pid(old.address)
    seen = []

    async def calls(stub):
        wave = [asyncio.ensure_future(_generate(stub, 24, 480)) for _ in range(FIRST_WAVE)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the launched engine streams, with requests behind it
            answer = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool="launched"), timeout=10)
            seen.append([(w.state, w.running, w.queue_depth) for w in answer.workers])
            if any(w.running and w.queue_depth for w in answer.workers):
                break
            await asyncio.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        return await asyncio.gather(*wave)

    during = _run(served.address, calls)
    broken = [r for r, _ in during if r.status != COMPLETED]
    assert broken, ([(r.prefill_pool, r.retries, r.reason) for r, _ in during], seen[-3:])
    assert all(r.prefill_pool == "launched" and "stream broke" in r.reason for r in broken), [r.reason for r in broken]
    stats = _stats(served.address)
    assert stats.requests_total - before.requests_total == FIRST_WAVE and stats.in_flight == 0
    assert stats.requests_completed - before.requests_completed == FIRST_WAVE - len(broken)
    assert stats.requests_failed - before.requests_failed == len(broken)

    deadline = time.monotonic() + 180  # a backoff, a new llama.cpp process, its health probe
    while time.monotonic() < deadline:
        now = _workers(served.address)[f"launched-{old.instance}"]
        if now.state == 2 and now.address != old.address:
            break
        time.sleep(0.5)
    assert now.state == 2 and now.address != old.address, now
    assert _engine_pid(now.address) != pid

    async def again(stub):
        return await asyncio.gather(*(_generate(stub, 24, 12) for _ in range(12)))

    results = _run(served.address, again)
    assert all(r.status == COMPLETED for r, _ in results), [r.reason for r, _ in results]
    assert old.instance in {r.prefill_instance for r, _ in results}
