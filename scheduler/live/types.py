"""Values of the live control plane: what clients send and get, what the core sends
workers and hears back, its options and its errors. Plain frozen data; the
servicers and worker clients convert them to and from protos."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from scheduler.reasons import Reason
from scheduler.types import RequestStatus, Role
from workers.report import WorkerState
from workers.work import DecodeSummary, PrefillOutcome

__all__ = [
    "DuplicateRequest", "ErrorKind", "GenerateInput", "InvalidRequest", "LiveOptions", "OutOfRange", "Overloaded",
    "Percentiles", "PromptPayload", "PromptSource", "PoolStatsView", "RequestOutcome", "SchedulerStatsView",
    "TokenEvent", "Work",
    "WorkError", "WorkUpdate", "WorkerState", "WorkerView",
]


class InvalidRequest(ValueError):
    """A malformed request: answered INVALID_ARGUMENT and counted in requests_invalid."""


class OutOfRange(InvalidRequest):
    """A well-formed value beyond what the cluster's models take (context, vocabulary):
    answered OUT_OF_RANGE and counted in requests_invalid."""


class Overloaded(Exception):
    """The queue bound is reached: answered RESOURCE_EXHAUSTED and counted as rejected."""


class DuplicateRequest(Exception):
    """A request id already in flight: answered ALREADY_EXISTS."""


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


@dataclass(frozen=True, slots=True)
class LiveOptions:
    time_scale: float = 0.01  # modelled seconds * time_scale = wall seconds
    max_queue: int = 4096  # requests accepted but not yet past prefill
    max_retries: int = 2  # re-dispatches after worker failures before FAILED
    # Wall seconds a request waits while no instance can serve it (workers starting, all
    # drained or failed) before it ends FAILED; within max_queue, like any queued request.
    max_hold_s: float = 30.0
    retry_backoff_s: float = 0.05  # wall seconds between attempts
    rpc_timeout_s: float = 120.0  # wall seconds, per stage of a request on a worker
    # Wall seconds without a report from a worker before its stats are polled. Every
    # session message already carries the worker's load, so polls only cover quiet stretches.
    stats_interval_s: float = 0.1
    chunk_tokens: int = 16  # tokens per streamed chunk from decode workers
    # Wall seconds worker engines run behind the clock, so dispatches reach them before
    # their modelled send time has passed (see workers.emulated); decode workers, fed by
    # prefill workers that are themselves this far behind, run twice as far. It also
    # bounds how far back a client's send time is honoured. Results reach clients this
    # much later in wall time; their modelled times do not change.
    worker_slack_s: float = 0.1
    seed: int = 0  # the policy's RNG, as in the simulator
    latency_window: int = 10_000  # most recent samples behind the percentiles
    # Wall seconds between two messages to one worker: work placed meanwhile goes out
    # together. The first message after a quiet stretch leaves at once. A message costs
    # each side ~0.1 ms of CPU whatever it carries; requests wait at most this long, in
    # wall time only (workers admit work at the modelled time it was sent).
    dispatch_interval_s: float = 0.005
    # Bytes of requests in flight (GenerateInput.size_bytes) beyond which new ones are
    # refused: memory stays bounded whatever size the requests come in.
    max_pending_bytes: int = 256 << 20

    def __post_init__(self):
        _check_positive("dispatch_interval_s", self.dispatch_interval_s, allow_zero=True)
        _check_positive("worker_slack_s", self.worker_slack_s, allow_zero=True)
        for name in ("time_scale", "retry_backoff_s", "rpc_timeout_s", "stats_interval_s", "max_hold_s"):
            _check_positive(name, getattr(self, name))
        for name in ("max_queue", "chunk_tokens", "latency_window", "max_pending_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")


# ---- client side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptPayload:
    """What a real engine needs to run a request, carried through the core untouched:
    the OpenAI API route and the JSON body the client sent (the HTTP front door fills
    it; requests without one reach emulated workers only as token counts)."""

    route: str  # "completions" or "chat/completions"
    body_json: bytes
    # The request's prompt_tokens were counted by an engine's tokenizer before it was
    # placed (the front door does so only near the context limit): exact already.
    counted: bool = False


class PromptSource(enum.Enum):
    """Where a request's prompt length came from (GetStats counts requests by it)."""

    CLIENT = "client"  # the client sent the length or the token ids
    ESTIMATED = "estimated"  # estimated from the prompt's text (emulated pools have no tokenizer)
    TOKENIZED = "tokenized"  # counted by a serving engine's tokenizer


@dataclass(frozen=True, slots=True)
class GenerateInput:
    request_id: str  # "" = the scheduler assigns one
    prompt_tokens: int
    max_output_tokens: int
    model_tier: str = ""
    min_capability: float = 0.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    prefix_block_hashes: tuple[int, ...] = ()
    sent_unix_s: float | None = None  # when the client sent it
    difficulty: float = 0.0  # the router's difficulty signal (scheduler.types.Request)
    trace_row: int | None = None  # the policy's request number when set (a replayed trace's row)
    payload: PromptPayload | None = None
    size_bytes: int = 0  # what it holds while in flight, against LiveOptions.max_pending_bytes
    prompt_source: PromptSource = PromptSource.CLIENT


@dataclass(frozen=True, slots=True)
class TokenEvent:
    request_id: str
    first_token_index: int
    token_count: int
    emit_s: float
    # The request's last tokens: its RequestOutcome follows at once (the servicer sends
    # both in one message).
    last: bool = False
    text: str = ""  # the tokens' text, from real engines; "" from emulated workers


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """The final record of one request (times on the scheduler clock; None = did not happen)."""

    request_id: str
    status: RequestStatus
    reason: str
    retries: int
    arrival_s: float
    prefill_start_s: float | None
    prefill_end_s: float | None
    kv_transfer_end_s: float | None
    first_token_s: float | None
    finish_s: float
    ttft_s: float | None
    tpot_s: float | None
    prefill_pool: str
    decode_pool: str
    prefill_instance: int
    decode_instance: int
    model: str
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float
    reason_code: Reason = Reason.UNSPECIFIED  # why it was rejected or failed; `reason` says it in words


@dataclass(frozen=True, slots=True)
class Percentiles:
    samples: int = 0
    p50_s: float = 0.0
    p90_s: float = 0.0
    p99_s: float = 0.0
    mean_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolStatsView:
    name: str
    device: str
    model: str
    role: Role
    instances: int
    chips_per_instance: int
    queue_depth: int
    running: int
    completed: int
    prefill_tokens: int
    decode_tokens: int
    utilization: float
    energy_j: float
    cost_usd: float
    kv_free_tokens: int
    kv_capacity_tokens: int
    token_budget: int = 0  # chunked prefill's tokens per iteration; 0: prefill-first
    # Real engines: prompts by how their length was counted ("engine", "estimate", "synthetic").
    prompt_token_counts: dict[str, int] | None = None
    prefix_hit_tokens: int = 0  # served from prefix caches, every level
    kv_tiers: tuple = ()  # workers.report.TierUsage per level below HBM, the store last
    speculative: object = None  # the pool's workers.speculative.SpeculativeConfig; None: plain decoding


@dataclass(frozen=True, slots=True)
class SchedulerStatsView:
    policy: str
    cluster: str
    uptime_s: float
    started_unix_s: float
    requests_total: int
    requests_completed: int
    requests_rejected: int
    requests_failed: int
    requests_invalid: int
    in_flight: int
    reasons: dict[str, int]  # rejections and failures by Reason name
    decisions_total: int
    scheduling_overhead_s: Percentiles
    ttft_s: Percentiles
    tpot_s: Percentiles
    e2e_s: Percentiles
    slo_attainment: float
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float
    pools: list[PoolStatsView]
    control_overhead_s: Percentiles = Percentiles()
    time_scale: float = 0.0
    prompt_lengths: dict[str, int] = field(default_factory=dict)  # accepted requests by PromptSource value
    # Routers' passes by kind (scheduler/live/judges.py): passes, failed, unplaced, seconds, queue_s,
    # energy_j, cost_usd (apart_*: the part charged at batch 1, beside the pools), device, model, pool.
    judgements: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    instance: int
    pool: str
    device: str
    model: str
    role: Role
    address: str
    state: WorkerState
    queue_depth: int
    running: int
    kv_free_tokens: int
    kv_capacity_tokens: int


# ---- worker side: what crosses the WorkerClient seam ---------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """One stage of one request on one instance. `prefill` and `decode` both: a
    colocated instance prefills, then decodes and streams the tokens. `prefill` with a
    `decode_instance`: a prefill-only instance hands the KV over to it. `decode` alone:
    decode the KV handed over to this instance."""

    key: str  # the attempt's key, unique among requests in flight
    prompt_tokens: int
    max_output_tokens: int
    prefill: bool
    decode: bool
    sent_s: float  # scheduler clock: the worker admits the prompt at this moment
    chunk_tokens: int = 16
    prefix_block_hashes: tuple[int, ...] = ()
    decode_instance: int = -1
    decode_link_bytes_per_s: float = 0.0
    payload: PromptPayload | None = None  # the client's request, for real engines


class ErrorKind(enum.Enum):
    """How a failed stage bears on the request and on the instance."""

    INVALID = "invalid"  # the work itself was refused: retrying elsewhere would not help
    BUSY = "busy"  # no room there now: retried elsewhere; the instance is not blamed
    WORKER = "worker"  # the worker or its link failed: retried; the instance is marked failed
    RESTARTED = "restarted"  # a new incarnation replaced the worker: retried; nobody is blamed


@dataclass(frozen=True, slots=True)
class WorkError:
    kind: ErrorKind
    code: str  # a status name for the reason, e.g. "UNAVAILABLE"
    message: str
    peer_instance: int = -1  # a failed KV hand-over: the decode instance to blame


@dataclass(frozen=True, slots=True)
class WorkUpdate:
    """What happened to one request's work on one instance since its last update, in
    this order: prefilled, tokens, decoded; or an error, after which nothing follows.
    A prefill with a hand-over is reported once the decode instance acknowledged the KV."""

    key: str
    prefilled: PrefillOutcome | None = None
    first_token_index: int = 0
    token_count: int = 0
    emit_s: float = 0.0
    decoded: DecodeSummary | None = None
    error: WorkError | None = None
    text: str = ""  # the text of the tokens in this update, from real engines
    # With `decoded`: the prompt's length as the engine counted it (its `usage` or its
    # tokenizer), where it differs from the count the request was placed with; 0: none.
    prompt_tokens: int = 0
