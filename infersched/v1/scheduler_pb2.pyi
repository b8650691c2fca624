from infersched.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt_tokens", "prompt_length", "max_output_tokens", "model_tier", "ttft_slo_s", "tpot_slo_s", "prefix_block_hashes", "min_capability", "sent_unix_s", "difficulty", "trace_row")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TIER_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_S_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    MIN_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ROW_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    prompt_length: int
    max_output_tokens: int
    model_tier: str
    ttft_slo_s: float
    tpot_slo_s: float
    prefix_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    min_capability: float
    sent_unix_s: float
    difficulty: float
    trace_row: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., prompt_length: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., model_tier: _Optional[str] = ..., ttft_slo_s: _Optional[float] = ..., tpot_slo_s: _Optional[float] = ..., prefix_block_hashes: _Optional[_Iterable[int]] = ..., min_capability: _Optional[float] = ..., sent_unix_s: _Optional[float] = ..., difficulty: _Optional[float] = ..., trace_row: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("tokens", "record")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    tokens: _common_pb2.TokenChunk
    record: RequestRecord
    def __init__(self, tokens: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., record: _Optional[_Union[RequestRecord, _Mapping]] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "status", "reason", "retries", "arrival_s", "prefill_start_s", "prefill_end_s", "kv_transfer_end_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "prefill_pool", "decode_pool", "prefill_instance", "decode_instance", "model", "input_tokens", "output_tokens", "energy_j", "cost_usd", "reason_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_START_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_END_S_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_END_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    FINISH_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_POOL_FIELD_NUMBER: _ClassVar[int]
    DECODE_POOL_FIELD_NUMBER: _ClassVar[int]
    PREFILL_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    DECODE_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: _common_pb2.RequestStatus
    reason: str
    retries: int
    arrival_s: float
    prefill_start_s: float
    prefill_end_s: float
    kv_transfer_end_s: float
    first_token_s: float
    finish_s: float
    ttft_s: float
    tpot_s: float
    prefill_pool: str
    decode_pool: str
    prefill_instance: int
    decode_instance: int
    model: str
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float
    reason_code: _common_pb2.ReasonCode
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.RequestStatus, str]] = ..., reason: _Optional[str] = ..., retries: _Optional[int] = ..., arrival_s: _Optional[float] = ..., prefill_start_s: _Optional[float] = ..., prefill_end_s: _Optional[float] = ..., kv_transfer_end_s: _Optional[float] = ..., first_token_s: _Optional[float] = ..., finish_s: _Optional[float] = ..., ttft_s: _Optional[float] = ..., tpot_s: _Optional[float] = ..., prefill_pool: _Optional[str] = ..., decode_pool: _Optional[str] = ..., prefill_instance: _Optional[int] = ..., decode_instance: _Optional[int] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ..., reason_code: _Optional[_Union[_common_pb2.ReasonCode, str]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchStatsRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class SchedulerStats(_message.Message):
    __slots__ = ("policy", "cluster", "uptime_s", "started_unix_s", "requests_total", "requests_completed", "requests_rejected", "requests_failed", "requests_invalid", "in_flight", "reasons", "decisions_total", "scheduling_overhead_s", "ttft_s", "tpot_s", "e2e_s", "slo_attainment", "input_tokens", "output_tokens", "energy_j", "cost_usd", "pools", "time_scale", "prompt_lengths", "judgements")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PromptLengthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class JudgementsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: JudgementStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[JudgementStats, _Mapping]] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_INVALID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_OVERHEAD_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_S_FIELD_NUMBER: _ClassVar[int]
    E2E_S_FIELD_NUMBER: _ClassVar[int]
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENTS_FIELD_NUMBER: _ClassVar[int]
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
    reasons: _containers.ScalarMap[str, int]
    decisions_total: int
    scheduling_overhead_s: _common_pb2.LatencyPercentiles
    ttft_s: _common_pb2.LatencyPercentiles
    tpot_s: _common_pb2.LatencyPercentiles
    e2e_s: _common_pb2.LatencyPercentiles
    slo_attainment: float
    input_tokens: int
    output_tokens: int
    energy_j: float
    cost_usd: float
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    time_scale: float
    prompt_lengths: _containers.ScalarMap[str, int]
    judgements: _containers.MessageMap[str, JudgementStats]
    def __init__(self, policy: _Optional[str] = ..., cluster: _Optional[str] = ..., uptime_s: _Optional[float] = ..., started_unix_s: _Optional[float] = ..., requests_total: _Optional[int] = ..., requests_completed: _Optional[int] = ..., requests_rejected: _Optional[int] = ..., requests_failed: _Optional[int] = ..., requests_invalid: _Optional[int] = ..., in_flight: _Optional[int] = ..., reasons: _Optional[_Mapping[str, int]] = ..., decisions_total: _Optional[int] = ..., scheduling_overhead_s: _Optional[_Union[_common_pb2.LatencyPercentiles, _Mapping]] = ..., ttft_s: _Optional[_Union[_common_pb2.LatencyPercentiles, _Mapping]] = ..., tpot_s: _Optional[_Union[_common_pb2.LatencyPercentiles, _Mapping]] = ..., e2e_s: _Optional[_Union[_common_pb2.LatencyPercentiles, _Mapping]] = ..., slo_attainment: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ..., pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ..., time_scale: _Optional[float] = ..., prompt_lengths: _Optional[_Mapping[str, int]] = ..., judgements: _Optional[_Mapping[str, JudgementStats]] = ...) -> None: ...

class JudgementStats(_message.Message):
    __slots__ = ("passes", "failed", "unplaced", "seconds", "queue_s", "energy_j", "cost_usd", "apart_energy_j", "apart_cost_usd", "device", "model", "pool")
    PASSES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    APART_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    APART_COST_USD_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    passes: int
    failed: int
    unplaced: int
    seconds: float
    queue_s: float
    energy_j: float
    cost_usd: float
    apart_energy_j: float
    apart_cost_usd: float
    device: str
    model: str
    pool: str
    def __init__(self, passes: _Optional[int] = ..., failed: _Optional[int] = ..., unplaced: _Optional[int] = ..., seconds: _Optional[float] = ..., queue_s: _Optional[float] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ..., apart_energy_j: _Optional[float] = ..., apart_cost_usd: _Optional[float] = ..., device: _Optional[str] = ..., model: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("name", "device", "model", "role", "instances", "chips_per_instance", "queue_depth", "running", "completed", "prefill_tokens", "decode_tokens", "utilization", "energy_j", "cost_usd", "kv_free_tokens", "kv_capacity_tokens", "token_budget", "prompt_token_counts", "prefix_hit_tokens", "kv_tiers", "speculative")
    class PromptTokenCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CHIPS_PER_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_TIERS_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    model: str
    role: _common_pb2.Role
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
    token_budget: int
    prompt_token_counts: _containers.ScalarMap[str, int]
    prefix_hit_tokens: int
    kv_tiers: _containers.RepeatedCompositeFieldContainer[_common_pb2.KvTierUsage]
    speculative: SpeculativeDecoding
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., model: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., instances: _Optional[int] = ..., chips_per_instance: _Optional[int] = ..., queue_depth: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., decode_tokens: _Optional[int] = ..., utilization: _Optional[float] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ..., kv_free_tokens: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., token_budget: _Optional[int] = ..., prompt_token_counts: _Optional[_Mapping[str, int]] = ..., prefix_hit_tokens: _Optional[int] = ..., kv_tiers: _Optional[_Iterable[_Union[_common_pb2.KvTierUsage, _Mapping]]] = ..., speculative: _Optional[_Union[SpeculativeDecoding, _Mapping]] = ...) -> None: ...

class SpeculativeDecoding(_message.Message):
    __slots__ = ("draft_model", "draft_tokens", "acceptance")
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    draft_model: str
    draft_tokens: int
    acceptance: float
    def __init__(self, draft_model: _Optional[str] = ..., draft_tokens: _Optional[int] = ..., acceptance: _Optional[float] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "instance", "pool")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    instance: int
    pool: str
    def __init__(self, worker_id: _Optional[str] = ..., instance: _Optional[int] = ..., pool: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("workers", "serving")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    serving: bool
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., serving: _Optional[bool] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "instance", "pool", "device", "model", "role", "address", "state", "queue_depth", "running", "kv_free_tokens", "kv_capacity_tokens")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    instance: int
    pool: str
    device: str
    model: str
    role: _common_pb2.Role
    address: str
    state: _common_pb2.WorkerState
    queue_depth: int
    running: int
    kv_free_tokens: int
    kv_capacity_tokens: int
    def __init__(self, worker_id: _Optional[str] = ..., instance: _Optional[int] = ..., pool: _Optional[str] = ..., device: _Optional[str] = ..., model: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., address: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.WorkerState, str]] = ..., queue_depth: _Optional[int] = ..., running: _Optional[int] = ..., kv_free_tokens: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ...) -> None: ...
