"""Why a request was rejected or failed, as one of a fixed set of codes.

Free-text reasons carry ports, byte counts and client values, so counting by
them grows without bound (40 requests once made 31 keys). Every count by
reason (GetStats, Prometheus labels, the simulator's and replay's summaries)
is keyed by `Reason` instead; the words stay next to it as a bounded detail
(`clip`). `Reason` mirrors the proto enum `infersched.v1.ReasonCode`: the
same names after its `REASON_CODE_` prefix, the same numbers (a contract
test checks), so the core stays free of proto types.
"""
from __future__ import annotations

import enum

from scheduler.plugins.filters import FitsMemory, ModelTier, SameModel
from scheduler.plugins.tiers import LowestTier

# A detail's bound, and how much of one client value it may quote.
DETAIL_BYTES = 256
ECHO_BYTES = 64


class Reason(enum.IntEnum):
    UNSPECIFIED = 0
    NO_KV_MEMORY = 1
    NO_CAPABLE_MODEL = 2
    NO_DECODE_FOR_MODEL = 3
    NO_MODEL_TIER = 4
    NO_INSTANCES = 5
    POLICY = 6
    QUEUE_FULL = 7
    PENDING_BYTES = 8
    CANCELLED = 9
    WORKER_FAILED = 10
    WORKER_RESTARTED = 11
    STAGE_TIMEOUT = 12
    NOT_READY = 13
    WORK_REFUSED = 14
    WORKER_BUSY = 15
    SCHEDULER_UNAVAILABLE = 16


# The built-in filters' reject reasons (their `reason` attribute) by code.
_POLICY_REASONS = {FitsMemory.reason: Reason.NO_KV_MEMORY, ModelTier.reason: Reason.NO_CAPABLE_MODEL,
                   SameModel.reason: Reason.NO_DECODE_FOR_MODEL, LowestTier.reason: Reason.NO_MODEL_TIER}


def policy_reason(text: str) -> Reason:
    """The code of a policy's reject reason (Decision.reject_reason): a built-in
    filter's, "no <stage> instances" when a stage has no candidate, else POLICY."""
    code = _POLICY_REASONS.get(text)
    if code is not None:
        return code
    if text.startswith("no ") and text.endswith(" instances"):
        return Reason.NO_INSTANCES
    return Reason.POLICY


def count_by_code(reasons: dict[str, int]) -> dict[str, int]:
    """Policy reject counts keyed by text -> keyed by code name (summed), sorted."""
    out: dict[str, int] = {}
    for text, n in reasons.items():
        name = policy_reason(text).name
        out[name] = out.get(name, 0) + n
    return dict(sorted(out.items()))


def clip(text: str, limit: int = DETAIL_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), saying so."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    tail = f"... ({len(raw):,} bytes)"
    return raw[:max(0, limit - len(tail))].decode("utf-8", "ignore") + tail


def echo(value: str | bytes) -> str:
    """A client value quoted for an error or a log line: repr of at most ECHO_BYTES bytes."""
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    if len(raw) <= ECHO_BYTES:
        return repr(value)
    return f"{raw[:ECHO_BYTES].decode('utf-8', 'ignore')!r}... ({len(raw):,} bytes)"
