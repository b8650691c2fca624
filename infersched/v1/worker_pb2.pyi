from infersched.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EngineActivity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_ACTIVITY_IDLE: _ClassVar[EngineActivity]
    ENGINE_ACTIVITY_PREFILL: _ClassVar[EngineActivity]
    ENGINE_ACTIVITY_DECODE: _ClassVar[EngineActivity]
    ENGINE_ACTIVITY_MIXED: _ClassVar[EngineActivity]
ENGINE_ACTIVITY_IDLE: EngineActivity
ENGINE_ACTIVITY_PREFILL: EngineActivity
ENGINE_ACTIVITY_DECODE: EngineActivity
ENGINE_ACTIVITY_MIXED: EngineActivity

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_tokens", "prompt_length", "max_output_tokens", "prefix_block_hashes", "decode_address")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    DECODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    prompt_length: int
    max_output_tokens: int
    prefix_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    decode_address: str
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., prompt_length: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., prefix_block_hashes: _Optional[_Iterable[int]] = ..., decode_address: _Optional[str] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("request_id", "first_token_id", "queue_s", "prefill_s", "kv_transfer_s", "prefill_tokens", "cached_prefix_tokens", "kv_blocks", "kv_bytes", "energy_j", "cost_usd")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    first_token_id: int
    queue_s: float
    prefill_s: float
    kv_transfer_s: float
    prefill_tokens: int
    cached_prefix_tokens: int
    kv_blocks: int
    kv_bytes: int
    energy_j: float
    cost_usd: float
    def __init__(self, request_id: _Optional[str] = ..., first_token_id: _Optional[int] = ..., queue_s: _Optional[float] = ..., prefill_s: _Optional[float] = ..., kv_transfer_s: _Optional[float] = ..., prefill_tokens: _Optional[int] = ..., cached_prefix_tokens: _Optional[int] = ..., kv_blocks: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class KvBlock(_message.Message):
    __slots__ = ("meta", "payload")
    META_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    meta: bytes
    payload: bytes
    def __init__(self, meta: _Optional[bytes] = ..., payload: _Optional[bytes] = ...) -> None: ...

class KvTransferAck(_message.Message):
    __slots__ = ("request_id", "blocks_received", "tokens_received", "bytes_received", "kv_free_tokens", "joined_unix_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    JOINED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks_received: int
    tokens_received: int
    bytes_received: int
    kv_free_tokens: int
    joined_unix_s: float
    def __init__(self, request_id: _Optional[str] = ..., blocks_received: _Optional[int] = ..., tokens_received: _Optional[int] = ..., bytes_received: _Optional[int] = ..., kv_free_tokens: _Optional[int] = ..., joined_unix_s: _Optional[float] = ...) -> None: ...

class KvStreamRequest(_message.Message):
    __slots__ = ("block", "cancel_request_id")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    block: KvBlock
    cancel_request_id: str
    def __init__(self, block: _Optional[_Union[KvBlock, _Mapping]] = ..., cancel_request_id: _Optional[str] = ...) -> None: ...

class KvStreamResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[KvStreamResult]
    def __init__(self, results: _Optional[_Iterable[_Union[KvStreamResult, _Mapping]]] = ...) -> None: ...

class KvStreamResult(_message.Message):
    __slots__ = ("request_id", "ack", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ack: KvTransferAck
    error: WorkError
    def __init__(self, request_id: _Optional[str] = ..., ack: _Optional[_Union[KvTransferAck, _Mapping]] = ..., error: _Optional[_Union[WorkError, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "max_output_tokens", "first_token_id", "chunk_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    max_output_tokens: int
    first_token_id: int
    chunk_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., first_token_id: _Optional[int] = ..., chunk_tokens: _Optional[int] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("wait", "timeout_s")
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    timeout_s: float
    def __init__(self, wait: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("state", "in_flight")
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.WorkerState
    in_flight: int
    def __init__(self, state: _Optional[_Union[_common_pb2.WorkerState, str]] = ..., in_flight: _Optional[int] = ...) -> None: ...

class WorkerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("worker_id", "pool", "state", "now_s", "queue_depth", "queued_tokens", "running", "kv_free_tokens", "kv_capacity_tokens", "busy_until_s", "prefill_tokens", "decode_tokens", "completed", "energy_j", "cost_usd", "load", "engine_state")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NOW_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUSY_UNTIL_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ENGINE_STATE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool: str
    state: _common_pb2.WorkerState
    now_s: float
    queue_depth: int
    queued_tokens: int
    running: int
    kv_free_tokens: int
    kv_capacity_tokens: int
    busy_until_s: float
    prefill_tokens: int
    decode_tokens: int
    completed: int
    energy_j: float
    cost_usd: float
    load: LoadReport
    engine_state: bytes
    def __init__(self, worker_id: _Optional[str] = ..., pool: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.WorkerState, str]] = ..., now_s: _Optional[float] = ..., queue_depth: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., running: _Optional[int] = ..., kv_free_tokens: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., busy_until_s: _Optional[float] = ..., prefill_tokens: _Optional[int] = ..., decode_tokens: _Optional[int] = ..., completed: _Optional[int] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., engine_state: _Optional[bytes] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("received", "queued", "queued_tokens", "running", "kv_free_tokens", "busy_remaining_s", "activity", "busy_s", "now_s", "unix_s", "engine_s", "prefill_tokens", "decode_tokens", "dynamic_energy_j", "state", "prefix_hit_tokens", "kv_tiers")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUSY_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    BUSY_S_FIELD_NUMBER: _ClassVar[int]
    NOW_S_FIELD_NUMBER: _ClassVar[int]
    UNIX_S_FIELD_NUMBER: _ClassVar[int]
    ENGINE_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_TIERS_FIELD_NUMBER: _ClassVar[int]
    received: int
    queued: int
    queued_tokens: int
    running: int
    kv_free_tokens: int
    busy_remaining_s: float
    activity: EngineActivity
    busy_s: float
    now_s: float
    unix_s: float
    engine_s: float
    prefill_tokens: int
    decode_tokens: int
    dynamic_energy_j: float
    state: _common_pb2.WorkerState
    prefix_hit_tokens: int
    kv_tiers: _containers.RepeatedCompositeFieldContainer[_common_pb2.KvTierUsage]
    def __init__(self, received: _Optional[int] = ..., queued: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., running: _Optional[int] = ..., kv_free_tokens: _Optional[int] = ..., busy_remaining_s: _Optional[float] = ..., activity: _Optional[_Union[EngineActivity, str]] = ..., busy_s: _Optional[float] = ..., now_s: _Optional[float] = ..., unix_s: _Optional[float] = ..., engine_s: _Optional[float] = ..., prefill_tokens: _Optional[int] = ..., decode_tokens: _Optional[int] = ..., dynamic_energy_j: _Optional[float] = ..., state: _Optional[_Union[_common_pb2.WorkerState, str]] = ..., prefix_hit_tokens: _Optional[int] = ..., kv_tiers: _Optional[_Iterable[_Union[_common_pb2.KvTierUsage, _Mapping]]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("work", "cancel_request_ids")
    WORK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    work: _containers.RepeatedCompositeFieldContainer[SessionWork]
    cancel_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, work: _Optional[_Iterable[_Union[SessionWork, _Mapping]]] = ..., cancel_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionWork(_message.Message):
    __slots__ = ("prefill", "decode", "sent_unix_s", "decode_link_bytes_per_s")
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_LINK_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    prefill: PrefillRequest
    decode: DecodeRequest
    sent_unix_s: float
    decode_link_bytes_per_s: float
    def __init__(self, prefill: _Optional[_Union[PrefillRequest, _Mapping]] = ..., decode: _Optional[_Union[DecodeRequest, _Mapping]] = ..., sent_unix_s: _Optional[float] = ..., decode_link_bytes_per_s: _Optional[float] = ...) -> None: ...

class SessionUpdate(_message.Message):
    __slots__ = ("updates", "load", "engine_state")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ENGINE_STATE_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[WorkUpdate]
    load: LoadReport
    engine_state: bytes
    def __init__(self, updates: _Optional[_Iterable[_Union[WorkUpdate, _Mapping]]] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., engine_state: _Optional[bytes] = ...) -> None: ...

class WorkUpdate(_message.Message):
    __slots__ = ("request_id", "prefill", "kv_sent_s", "tokens", "decoded", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    KV_SENT_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prefill: PrefillResponse
    kv_sent_s: float
    tokens: _common_pb2.TokenChunk
    decoded: DecodeResult
    error: WorkError
    def __init__(self, request_id: _Optional[str] = ..., prefill: _Optional[_Union[PrefillResponse, _Mapping]] = ..., kv_sent_s: _Optional[float] = ..., tokens: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., decoded: _Optional[_Union[DecodeResult, _Mapping]] = ..., error: _Optional[_Union[WorkError, _Mapping]] = ...) -> None: ...

class DecodeResult(_message.Message):
    __slots__ = ("wait_s", "decode_s", "energy_j", "cost_usd")
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    wait_s: float
    decode_s: float
    energy_j: float
    cost_usd: float
    def __init__(self, wait_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., energy_j: _Optional[float] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class WorkError(_message.Message):
    __slots__ = ("code", "message", "failed_peer_address")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    failed_peer_address: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., failed_peer_address: _Optional[str] = ...) -> None: ...
