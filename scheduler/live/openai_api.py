"""The OpenAI HTTP API as data: parsing `/v1/completions` and `/v1/chat/completions`
bodies into core inputs, and the JSON the API answers with (responses, stream
chunks, model lists, errors). No I/O; `scheduler.live.http` serves it.

A request names a model the cluster serves (`served_models`); it reaches the
core as that model's tier (a capability floor, as Generate's `model_tier`).
Its prompt length is estimated from the text (`estimate_prompt_tokens`: UTF-8
bytes / 4, plus OpenAI's per-message overhead for chat), or taken as given for
token-id prompts; `prompt_tokens_bound` is a length no tokenizer exceeds,
which tells the front door when the estimate is too close to the context
limit to be trusted (it then asks an engine's tokenizer). The
body travels on to real engines as a `PromptPayload`, with `max_tokens` filled
in where the client left it out, so engine and scheduler plan the same length.
Emulated workers produce token counts only: `synthetic_text` gives their
tokens text, one word per token, the same for the same token positions.

A worker client of real engines posts `payload.body_json` to
`/v1/{payload.route}` (with `model` set to its engine's name and `stream` on)
and reports each streamed piece as a WorkUpdate with `token_count` >= 1 and
its `text`; the first token's text rides on the update that carries
`prefilled` (the core counts the first token there). The front door forwards
that text as it is.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from scheduler.cluster import Cluster
from scheduler.live.types import GenerateInput, PromptPayload, PromptSource

COMPLETIONS = "completions"
CHAT = "chat/completions"
CHARS_PER_TOKEN = 4  # UTF-8 bytes per token of English text under common BPE vocabularies
# OpenAI's count for chat prompts: each message costs its text plus ~4 tokens of
# framing (role, separators), and the reply is primed with 3.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
# A conservative bound on a text's tokens: SentencePiece and byte-level BPE vocabularies
# make at most one token per UTF-8 byte, plus BOS, a leading-space piece and EOS.
SPECIAL_TOKENS_BOUND = 3
# Chat templates add role markers and separators per message and some fixed text (a
# default system line); these bound the common templates (Llama 2/3, ChatML, Mistral).
TEMPLATE_TOKENS_PER_MESSAGE_BOUND = 16
TEMPLATE_TOKENS_BOUND = 64
# OpenAI's default for /v1/completions; chat has no documented bound (the context),
# and the scheduler must plan a length, so chat gets a bound of its own.
DEFAULT_MAX_TOKENS = {COMPLETIONS: 16, CHAT: 256}
_WORDS = tuple(f" {w}" for w in (
    "the", "scheduler", "places", "each", "request", "on", "a", "pool", "that", "meets", "its", "latency",
    "target", "at", "the", "lowest", "cost", "and", "energy", "per", "token"))


class ApiError(Exception):
    """An error answered as OpenAI's JSON error body with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def served_models(cluster: Cluster) -> dict[str, str]:
    """Model names clients may ask for -> the tier the core routes them by: every
    pool's model and its `aliases` (a pool serving a more capable model may serve it
    too, as with Generate's model_tier). The one place that maps names to pools."""
    names: dict[str, str] = {}
    for pool in cluster.pools:
        model = pool.perf.model.name
        names[model] = model
        for alias in pool.config.aliases:
            names[alias] = model
    return names


def default_model(cluster: Cluster) -> str | None:
    """The name a request without `model` is served as: the cluster's `default_model`."""
    default = cluster.config.default_model
    for pool in cluster.pools:  # named by a pool's model spec file: that model's own name
        if default == pool.config.model:
            return pool.perf.model.name
    return default


def models_list(cluster: Cluster, created: int) -> dict:
    """GET /v1/models: OpenAI's list format, one entry per name a client may use (each
    model and alias; `root` is the model an alias means), with the pools serving it."""
    pools: dict[str, list[str]] = {}
    for pool in cluster.pools:
        pools.setdefault(pool.perf.model.name, []).append(pool.name)
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": cluster.config.name, "root": model,
         "pools": pools[model]}
        for name, model in served_models(cluster).items()]}


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One parsed request: what the core gets, and how to answer."""

    route: str
    model: str  # the model (tier) the core routes by
    stream: bool
    include_usage: bool
    prompt_tokens: int
    max_tokens: int
    prompt_source: PromptSource
    payload: PromptPayload
    name: str = ""  # the name the client asked for (an alias, or the default model): answers carry it
    prompt_bound: int = 0  # no tokenizer makes more tokens of the prompt (`prompt_tokens_bound`)

    def generate_input(self) -> GenerateInput:
        return GenerateInput(request_id="", prompt_tokens=self.prompt_tokens, max_output_tokens=self.max_tokens,
                             model_tier=self.model, payload=self.payload, prompt_source=self.prompt_source,
                             size_bytes=len(self.payload.body_json))


def _field(body: dict, name: str, kinds: tuple[type, ...], what: str, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"field '{name}' is required", param=name, code="missing_field")
        return None
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise ApiError(400, f"field '{name}': must be {what}, got {json.dumps(value)[:80]}", param=name,
                       code="invalid_type")
    return value


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(route: str, body: dict) -> int:
    """Tokens in a parsed body's prompt, estimated from its text (at least 1)."""
    if route == COMPLETIONS:
        return max(1, estimate_tokens(body["prompt"]))
    total = REPLY_PRIMING_TOKENS
    for message in body["messages"]:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(_message_text(message.get("content")))
    return total


def prompt_tokens_bound(route: str, body: dict) -> int:
    """Tokens that no common tokenizer (with its chat template) exceeds for a parsed
    body's text prompt: the estimate can be trusted wherever this fits."""
    if route == COMPLETIONS:
        return len(body["prompt"].encode("utf-8")) + SPECIAL_TOKENS_BOUND
    total = TEMPLATE_TOKENS_BOUND
    for message in body["messages"]:
        text = _message_text(message.get("content")) + str(message.get("role", ""))
        total += len(text.encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE_BOUND
    return total


def _message_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones count
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _prompt(body: dict) -> tuple[int | None, PromptSource]:
    """A completions prompt: text (estimated later) or token ids (counted); one prompt only."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = body["prompt"] = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "field 'prompt': must not be empty", param="prompt")
        return None, PromptSource.ESTIMATED
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt), PromptSource.CLIENT
    if prompt is None:
        raise ApiError(400, "field 'prompt' is required", param="prompt", code="missing_field")
    raise ApiError(400, "field 'prompt': must be a non-empty string or list of token ids (one prompt per request)",
                   param="prompt", code="invalid_type")


def _messages(body: dict) -> None:
    messages = _field(body, "messages", (list,), "a list of messages", required=True)
    if not messages:
        raise ApiError(400, "field 'messages': must not be empty", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"field 'messages[{i}]': must be an object with a string 'role'",
                           param=f"messages[{i}]", code="invalid_type")
        if not isinstance(m.get("content"), (str, list, type(None))):
            raise ApiError(400, f"field 'messages[{i}].content': must be a string or a list of content parts",
                           param=f"messages[{i}].content", code="invalid_type")


def parse_request(route: str, raw: bytes, models: dict[str, str], default: str | None = None) -> ApiRequest:
    """An HTTP body -> ApiRequest; raises ApiError (400 malformed, 404 unknown model).
    `models` from `served_models`; `default` answers a body without `model`."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    model = _field(body, "model", (str,), "a string") or default
    if model is None:
        raise ApiError(400, "field 'model' is required: this cluster has no default_model; it serves "
                       f"{', '.join(sorted(models))}", param="model", code="missing_field")
    if route == COMPLETIONS:
        counted, source = _prompt(body)
    else:
        _messages(body)
        counted, source = None, PromptSource.ESTIMATED
    n = _field(body, "n", (int,), "an integer")
    if n is not None and n != 1:
        raise ApiError(400, f"field 'n': only 1 choice per request is served, got {n}", param="n")
    names = ("max_completion_tokens", "max_tokens") if route == CHAT else ("max_tokens",)
    given = [(name, _field(body, name, (int,), "a positive integer")) for name in names]
    name, max_tokens = next(((k, v) for k, v in given if v is not None), (names[-1], None))
    if max_tokens is None:
        max_tokens = body[name] = DEFAULT_MAX_TOKENS[route]
        raw = json.dumps(body, separators=(",", ":")).encode()
    elif max_tokens < 1:
        raise ApiError(400, f"field '{name}': must be >= 1, got {max_tokens}", param=name)
    stream = _field(body, "stream", (bool,), "a boolean") or False
    options = _field(body, "stream_options", (dict,), "an object") or {}
    include_usage = options.get("include_usage") is True
    tier = models.get(model)
    if tier is None:
        raise ApiError(404, f"The model '{model}' does not exist; this cluster serves {', '.join(sorted(models))}",
                       param="model", code="model_not_found")
    if counted is not None:
        prompt_tokens = bound = counted
    else:
        prompt_tokens, bound = estimate_prompt_tokens(route, body), prompt_tokens_bound(route, body)
    return ApiRequest(route, tier, stream, include_usage, prompt_tokens, max_tokens, source,
                      PromptPayload(route, raw), model, bound)


def synthetic_text(first_index: int, count: int) -> str:
    """Emulated tokens' text: one word per token, by position in the output."""
    n = len(_WORDS)
    return "".join(_WORDS[(first_index + i) % n] for i in range(count))


def new_id(route: str) -> str:
    return f"{'chatcmpl' if route == CHAT else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(completion_tokens: int, max_tokens: int) -> str:
    return "length" if completion_tokens >= max_tokens else "stop"


def response(req: ApiRequest, rid: str, created: int, model: str, text: str, prompt_tokens: int,
             completion_tokens: int) -> dict:
    """A non-streamed answer; `prompt_tokens` as the request's record counts them (the
    engine's own count where it gave one)."""
    reason = finish_reason(completion_tokens, req.max_tokens)
    if req.route == CHAT:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(req: ApiRequest, rid: str, created: int, model: str, text: str | None, reason: str | None = None,
          first: bool = False) -> dict:
    """One streamed chunk: text (chat's first also names the role), or the finish."""
    if req.route == CHAT:
        delta: dict = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        kind = "text_completion"
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
    if req.include_usage:
        out["usage"] = None
    return out


def usage_chunk(req: ApiRequest, rid: str, created: int, model: str, prompt_tokens: int,
                completion_tokens: int) -> dict:
    """The last chunk when the client asked `stream_options.include_usage`."""
    return {"id": rid, "object": "chat.completion.chunk" if req.route == CHAT else "text_completion",
            "created": created, "model": model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
