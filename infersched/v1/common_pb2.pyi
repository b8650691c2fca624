from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATUS_UNSPECIFIED: _ClassVar[RequestStatus]
    REQUEST_STATUS_COMPLETED: _ClassVar[RequestStatus]
    REQUEST_STATUS_REJECTED: _ClassVar[RequestStatus]
    REQUEST_STATUS_FAILED: _ClassVar[RequestStatus]

class ReasonCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_CODE_UNSPECIFIED: _ClassVar[ReasonCode]
    REASON_CODE_NO_KV_MEMORY: _ClassVar[ReasonCode]
    REASON_CODE_NO_CAPABLE_MODEL: _ClassVar[ReasonCode]
    REASON_CODE_NO_DECODE_FOR_MODEL: _ClassVar[ReasonCode]
    REASON_CODE_NO_MODEL_TIER: _ClassVar[ReasonCode]
    REASON_CODE_NO_INSTANCES: _ClassVar[ReasonCode]
    REASON_CODE_POLICY: _ClassVar[ReasonCode]
    REASON_CODE_QUEUE_FULL: _ClassVar[ReasonCode]
    REASON_CODE_PENDING_BYTES: _ClassVar[ReasonCode]
    REASON_CODE_CANCELLED: _ClassVar[ReasonCode]
    REASON_CODE_WORKER_FAILED: _ClassVar[ReasonCode]
    REASON_CODE_WORKER_RESTARTED: _ClassVar[ReasonCode]
    REASON_CODE_STAGE_TIMEOUT: _ClassVar[ReasonCode]
    REASON_CODE_NOT_READY: _ClassVar[ReasonCode]
    REASON_CODE_WORK_REFUSED: _ClassVar[ReasonCode]
    REASON_CODE_WORKER_BUSY: _ClassVar[ReasonCode]
    REASON_CODE_SCHEDULER_UNAVAILABLE: _ClassVar[ReasonCode]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_PREFILL: _ClassVar[Role]
    ROLE_DECODE: _ClassVar[Role]
    ROLE_BOTH: _ClassVar[Role]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]
    WORKER_STATE_DRAINED: _ClassVar[WorkerState]
    WORKER_STATE_FAILED: _ClassVar[WorkerState]
REQUEST_STATUS_UNSPECIFIED: RequestStatus
REQUEST_STATUS_COMPLETED: RequestStatus
REQUEST_STATUS_REJECTED: RequestStatus
REQUEST_STATUS_FAILED: RequestStatus
REASON_CODE_UNSPECIFIED: ReasonCode
REASON_CODE_NO_KV_MEMORY: ReasonCode
REASON_CODE_NO_CAPABLE_MODEL: ReasonCode
REASON_CODE_NO_DECODE_FOR_MODEL: ReasonCode
REASON_CODE_NO_MODEL_TIER: ReasonCode
REASON_CODE_NO_INSTANCES: ReasonCode
REASON_CODE_POLICY: ReasonCode
REASON_CODE_QUEUE_FULL: ReasonCode
REASON_CODE_PENDING_BYTES: ReasonCode
REASON_CODE_CANCELLED: ReasonCode
REASON_CODE_WORKER_FAILED: ReasonCode
REASON_CODE_WORKER_RESTARTED: ReasonCode
REASON_CODE_STAGE_TIMEOUT: ReasonCode
REASON_CODE_NOT_READY: ReasonCode
REASON_CODE_WORK_REFUSED: ReasonCode
REASON_CODE_WORKER_BUSY: ReasonCode
REASON_CODE_SCHEDULER_UNAVAILABLE: ReasonCode
ROLE_UNSPECIFIED: Role
ROLE_PREFILL: Role
ROLE_DECODE: Role
ROLE_BOTH: Role
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_DRAINING: WorkerState
WORKER_STATE_DRAINED: WorkerState
WORKER_STATE_FAILED: WorkerState

class TokenChunk(_message.Message):
    __slots__ = ("request_id", "token_ids", "token_count", "first_token_index", "emit_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    EMIT_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_count: int
    first_token_index: int
    emit_s: float
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., token_count: _Optional[int] = ..., first_token_index: _Optional[int] = ..., emit_s: _Optional[float] = ...) -> None: ...

class LatencyPercentiles(_message.Message):
    __slots__ = ("samples", "p50_s", "p90_s", "p99_s", "mean_s")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_S_FIELD_NUMBER: _ClassVar[int]
    samples: int
    p50_s: float
    p90_s: float
    p99_s: float
    mean_s: float
    def __init__(self, samples: _Optional[int] = ..., p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., mean_s: _Optional[float] = ...) -> None: ...

class KvTierUsage(_message.Message):
    __slots__ = ("name", "hit_tokens", "read_bytes", "written_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    hit_tokens: int
    read_bytes: float
    written_bytes: float
    def __init__(self, name: _Optional[str] = ..., hit_tokens: _Optional[int] = ..., read_bytes: _Optional[float] = ..., written_bytes: _Optional[float] = ...) -> None: ...
