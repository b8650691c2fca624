"""`infersched serve --http-port` as an OpenAI client sees it: a real serve process (on
the session's local Ray cluster, emulated live-small pools), the official `openai` package on
loopback, and the scheduler's own GetStats, metrics and decision log to check that
every HTTP request was counted."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.config import builtin_cluster_path
from scheduler.live.openai_api import synthetic_text
from tests.serve_process import CLI, READY_MARKER, REPO, read_until, stop_process, word_after

openai = pytest.importorskip("openai", reason="the official OpenAI client: pip install -e '.[engines]'")
pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

START_TIMEOUT_S = 90.0
MAX_QUEUE = 4  # small, so a burst is refused with 429 (requests wait >= 0.1 s for their first token)
MODEL = "llama-3.1-8b"


class Served(NamedTuple):
    proc: subprocess.Popen
    grpc_address: str
    base: str  # http://127.0.0.1:PORT
    metrics: str
    lines: list[str]
    health: list[int]  # /health statuses seen from the first answer until 200
    decisions: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_cluster_address):
    """serve on a port chosen here, so /health can be asked before serve says it is up."""
    port = _free_port()
    decisions = tmp_path_factory.mktemp("http") / "decisions.jsonl"
    proc = subprocess.Popen(
        [*CLI, "serve", "--cluster", str(builtin_cluster_path("live-small")),
         "--port", "0", "--metrics-port", "0", "--http-port", str(port), "--max-queue", str(MAX_QUEUE),
         "--decision-log", str(decisions), "--address", ray_cluster_address],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    health: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and health[-1:] != [200]:
            try:
                health.append(_get(f"{base}/health")[0])
            except OSError:  # not listening yet
                pass
            time.sleep(0.02)
        assert health[-1:] == [200], f"serve did not become healthy: {health[-5:]} {stop_process(proc)}"
        lines = read_until(proc, READY_MARKER, START_TIMEOUT_S)
        grpc_address, metrics = word_after(lines, "listening on "), word_after(lines, "metrics on ")
        yield Served(proc, grpc_address, base, metrics, lines, health, decisions)
    finally:
        stop_process(proc, timeout_s=30)


@pytest.fixture
def client(served):
    # No retries: a 429 or 503 is what the test looks at, not something to wait out.
    return openai.OpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0, timeout=30)


def _stats(served: Served) -> scheduler_pb2.SchedulerStats:
    with grpc.insecure_channel(served.grpc_address) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)


def test_health_answers_503_until_the_scheduler_is_ready(served):
    assert served.health[0] == 503 and served.health[-1] == 200
    assert set(served.health) == {503, 200} and served.health.index(200) == len(served.health) - 1
    assert f"OpenAI-compatible HTTP on {served.base}/v1" in "\n".join(served.lines)


def test_models_lists_the_clusters_model(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize("max_tokens", [1, 7, 40])
def test_chat_completion_answers_one_word_per_token(client, max_tokens):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say something."}],
                                           max_tokens=max_tokens)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == synthetic_text(0, max_tokens)
    assert choice.finish_reason == "length" and reply.model == MODEL and reply.object == "chat.completion"
    # "Say something." is 14 bytes: 4 estimated tokens, plus 4 for the message and 3 to prime the reply.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, max_tokens)


def test_completion_counts_the_prompt_and_the_output(client):
    reply = client.completions.create(model=MODEL, prompt="x" * 400, max_tokens=5)
    assert reply.choices[0].text == synthetic_text(0, 5) and reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (100, 5, 105)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_streamed_text_ends_with_usage_when_asked(client, route):
    n = 40  # several chunks: decode workers stream 16 tokens per chunk
    kwargs = dict(model=MODEL, max_tokens=n, stream=True, stream_options={"include_usage": True})
    if route == "chat":
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        chunks = list(client.completions.create(prompt="hi", **kwargs))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == synthetic_text(0, n)
    assert len({c.id for c in chunks}) == 1 and len(chunks) >= 4
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_none(client):
    chunks = list(client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True))
    assert all(c.choices for c in chunks) and all(getattr(c, "usage", None) is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == synthetic_text(0, 3)


def test_unknown_model_is_404_with_an_openai_error_body(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model" and "llama-3.1-8b" in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, code, message", [
    (b"{\"model\": ", "invalid_json", "not valid JSON"),
    (b"[1, 2]", "invalid_json", "JSON object"),
    (b"{\"prompt\": \"hi\"}", "missing_field", "'model' is required"),
    (b"{\"model\": \"llama-3.1-8b\", \"prompt\": \"hi\", \"max_tokens\": 0}", None, "'max_tokens': must be >= 1"),
])
def test_malformed_bodies_are_400(served, body, code, message):
    status, answer = _post(f"{served.base}/v1/completions", body)
    assert status == 400 and answer["error"]["code"] == code and message in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}


def test_max_tokens_beyond_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=50_000_000)
    assert caught.value.body["code"] == "context_length_exceeded" and "no pool can hold" in caught.value.body["message"]


def test_burst_beyond_the_queue_bound_is_429(served):
    async def burst(n: int):
        aclient = openai.AsyncOpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0, timeout=30)
        async with aclient:
            return await asyncio.gather(*(aclient.completions.create(model=MODEL, prompt="y" * 4000, max_tokens=2)
                                          for _ in range(n)), return_exceptions=True)

    before = _stats(served)
    results = asyncio.run(burst(40))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    served_ok = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) + len(served_ok) == 40, [r for r in results if isinstance(r, Exception)][:3]
    assert refused and len(served_ok) >= MAX_QUEUE
    assert refused[0].body["code"] == "queue_full"
    after = _stats(served)
    assert after.reasons["QUEUE_FULL"] - before.reasons.get("QUEUE_FULL", 0) == len(refused)
    assert after.requests_completed - before.requests_completed == len(served_ok)


def test_stats_metrics_and_decision_log_count_every_http_request(client, served):
    before = _stats(served)
    client.completions.create(model=MODEL, prompt="one", max_tokens=2)
    client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=2)  # token ids: counted, not estimated
    list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}], max_tokens=3,
                                        stream=True))
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x")
    after = _stats(served)
    assert after.requests_total - before.requests_total == 3
    assert after.requests_completed - before.requests_completed == 3
    assert after.requests_invalid - before.requests_invalid == 2
    assert after.prompt_lengths["estimated"] - before.prompt_lengths["estimated"] == 2
    assert after.prompt_lengths["client"] - before.prompt_lengths.get("client", 0) == 1
    assert after.input_tokens - before.input_tokens == 1 + 4 + (4 + 1 + 3)
    assert after.output_tokens - before.output_tokens == 2 + 2 + 3
    assert after.in_flight == 0
    metrics = _get(served.metrics)[1].decode()
    assert 'infersched_http_responses_total{code="404",path="/v1/completions"}' in metrics
    assert "infersched_http_ttft_seconds_count" in metrics
    assert after.decisions_total - before.decisions_total == 3  # one placement each, as a Generate call's
    deadline = time.monotonic() + 5.0  # the log is flushed every second
    while time.monotonic() < deadline:
        ids = {json.loads(line)["id"] for line in served.decisions.read_text().splitlines()}
        if len(ids) >= after.decisions_total:
            break
        time.sleep(0.2)
    assert len(ids) == after.decisions_total
