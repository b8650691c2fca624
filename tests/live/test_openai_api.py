"""The OpenAI API bodies as the front door parses them: one behaviour per case, no server."""
from __future__ import annotations

import json

import pytest

from scheduler.live import openai_api as api
from scheduler.live.types import PromptSource

MODELS = {"llama-3.1-8b": "llama-3.1-8b"}


def _parse(route: str, body: dict):
    return api.parse_request(route, json.dumps(body).encode(), MODELS)


@pytest.mark.parametrize("route, body, status, param", [
    (api.COMPLETIONS, {"prompt": "hi"}, 400, "model"),
    (api.COMPLETIONS, {"model": 7, "prompt": "hi"}, 400, "model"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b"}, 400, "prompt"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": ""}, 400, "prompt"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": ["a", "b"]}, 400, "prompt"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": [1, True]}, 400, "prompt"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": "hi", "n": 2}, 400, "n"),
    (api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": "hi", "stream": "yes"}, 400, "stream"),
    (api.CHAT, {"model": "llama-3.1-8b"}, 400, "messages"),
    (api.CHAT, {"model": "llama-3.1-8b", "messages": []}, 400, "messages"),
    (api.CHAT, {"model": "llama-3.1-8b", "messages": [{"content": "hi"}]}, 400, "messages[0]"),
    (api.CHAT, {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    (api.CHAT, {"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
])
def test_bad_bodies_name_the_field(route, body, status, param):
    with pytest.raises(api.ApiError) as caught:
        _parse(route, body)
    assert caught.value.status == status and caught.value.param == param
    assert set(caught.value.body()["error"]) == {"message", "type", "param", "code"}


def test_a_missing_max_tokens_is_filled_in_for_the_engine_too():
    req = _parse(api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": "hi"})
    assert req.max_tokens == api.DEFAULT_MAX_TOKENS[api.COMPLETIONS] == 16
    assert json.loads(req.payload.body_json)["max_tokens"] == 16 and req.payload.route == "completions"


def test_a_given_body_travels_to_the_engine_byte_for_byte():
    raw = b'{"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 3, "temperature": 0.5}'
    req = api.parse_request(api.COMPLETIONS, raw, MODELS)
    assert req.payload.body_json == raw and req.max_tokens == 3


def test_chat_prefers_max_completion_tokens():
    req = _parse(api.CHAT, {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 9, "max_completion_tokens": 4})
    assert req.max_tokens == 4


@pytest.mark.parametrize("prompt, tokens, source", [
    ("abcd", 1, PromptSource.ESTIMATED),
    ("abcde", 2, PromptSource.ESTIMATED),
    ("é" * 4, 2, PromptSource.ESTIMATED),  # UTF-8 bytes, not characters
    ([5, 6, 7], 3, PromptSource.CLIENT),
    ([[5, 6]], 2, PromptSource.CLIENT),  # a batch of one
])
def test_completion_prompt_length(prompt, tokens, source):
    req = _parse(api.COMPLETIONS, {"model": "llama-3.1-8b", "prompt": prompt, "max_tokens": 1})
    assert (req.prompt_tokens, req.prompt_source) == (tokens, source)
    inp = req.generate_input()
    assert (inp.prompt_tokens, inp.prompt_source, inp.model_tier) == (tokens, source, "llama-3.1-8b")


def test_chat_prompt_counts_message_framing_and_text_parts():
    messages = [{"role": "system", "content": "12345678"},
                {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]
    req = _parse(api.CHAT, {"model": "llama-3.1-8b", "messages": messages})
    assert req.prompt_tokens == api.REPLY_PRIMING_TOKENS + 2 * api.MESSAGE_OVERHEAD_TOKENS + 2 + 1


def test_synthetic_text_depends_only_on_token_positions():
    whole = api.synthetic_text(0, 50)
    assert api.synthetic_text(0, 1) + api.synthetic_text(1, 16) + api.synthetic_text(17, 33) == whole
    assert len(whole.split()) == 50


def test_stream_chunks_carry_usage_only_when_asked():
    asked = _parse(api.CHAT, {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True, "stream_options": {"include_usage": True}})
    plain = _parse(api.CHAT, {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True})
    assert api.chunk(asked, "id", 0, "m", "x")["usage"] is None and "usage" not in api.chunk(plain, "id", 0, "m", "x")
    last = api.usage_chunk(asked, "id", 0, "m", 12, 5)  # the record's prompt count (an engine's, where it gave one)
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 12, "completion_tokens": 5,
                                                       "total_tokens": 17}


@pytest.mark.parametrize("route, body, bound", [
    (api.COMPLETIONS, {"prompt": "of " * 10}, 30 + api.SPECIAL_TOKENS_BOUND),  # a token per byte at most
    (api.COMPLETIONS, {"prompt": "é"}, 2 + api.SPECIAL_TOKENS_BOUND),  # UTF-8 bytes, not characters
    (api.CHAT, {"messages": [{"role": "user", "content": "hi"}]},
     api.TEMPLATE_TOKENS_BOUND + 6 + api.TEMPLATE_TOKENS_PER_MESSAGE_BOUND),
    (api.COMPLETIONS, {"prompt": [5, 6, 7]}, 3),  # token ids: the count is exact
])
def test_the_prompt_bound_is_never_below_the_estimate(route, body, bound):
    req = _parse(route, {"model": "llama-3.1-8b", **body})
    assert req.prompt_bound == bound >= req.prompt_tokens
