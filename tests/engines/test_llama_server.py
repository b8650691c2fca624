"""The test engine is a real OpenAI-compatible server: the official `openai`
client gets completions and chat completions from it, streamed and not, with
`usage`. The tiny model decodes greedily to exactly `max_tokens` (see
tests/engines/tiny_llama.py), so token counts are exact."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai", reason="the official OpenAI client (pip install -e '.[engines]')")

MAX_TOKENS = 12
PROMPT = "the quick brown fox jumps over the lazy dog"
MESSAGES = [{"role": "system", "content": "you are a model"},
            {"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def client(llama_engine):
    with openai.OpenAI(base_url=llama_engine.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_models_lists_the_served_alias(client, llama_engine):
    assert [m.id for m in client.models.list().data] == [llama_engine.model]


def test_completion_reports_usage_and_runs_to_max_tokens(client, llama_engine):
    answer = client.completions.create(model=llama_engine.model, prompt=PROMPT,
                                       max_tokens=MAX_TOKENS, temperature=0)
    usage = answer.usage
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].text
    assert usage.completion_tokens == MAX_TOKENS
    assert usage.prompt_tokens > len(PROMPT.split())  # BOS plus at least a token per word
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_completion_reports_usage_and_runs_to_max_tokens(client, llama_engine):
    answer = client.chat.completions.create(model=llama_engine.model, messages=MESSAGES,
                                            max_tokens=MAX_TOKENS, temperature=0)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens == MAX_TOKENS
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + MAX_TOKENS


def test_streamed_completion_is_one_chunk_per_token_and_matches_unstreamed(client, llama_engine):
    whole = client.completions.create(model=llama_engine.model, prompt=PROMPT,
                                      max_tokens=MAX_TOKENS, temperature=0).choices[0].text
    chunks = [c.choices[0].text for c in client.completions.create(
        model=llama_engine.model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True)
        if c.choices and c.choices[0].text]
    assert len(chunks) == MAX_TOKENS
    assert "".join(chunks) == whole


def test_streamed_chat_matches_unstreamed(client, llama_engine):
    whole = client.chat.completions.create(model=llama_engine.model, messages=MESSAGES,
                                           max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
    chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=llama_engine.model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True)
        if c.choices and c.choices[0].delta.content]
    assert len(chunks) == MAX_TOKENS
    assert "".join(chunks) == whole
