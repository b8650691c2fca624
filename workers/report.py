"""What every worker backend tells the scheduler about itself: its lifecycle state and
its load report. Plain values, free of gRPC, so emulated workers, in-process
clients and other engine backends all speak them."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class WorkerState(enum.IntEnum):
    """A worker's lifecycle; mirrors infersched.v1.WorkerState (same numbers)."""

    STARTING = 1
    READY = 2
    DRAINING = 3
    DRAINED = 4
    FAILED = 5


class TierUsage(NamedTuple):
    """One prefix-cache level below HBM: prompt tokens it served, bytes read and written."""

    name: str  # the pool's tier name; "store" for the cluster's kv_store
    hit_tokens: int
    read_bytes: float
    written_bytes: float


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A worker's load and usage as of one moment, on its own clock (the proto LoadReport)."""

    received: int  # prefills admitted since the worker started
    queued: int
    queued_tokens: int
    running: int
    kv_free: int
    busy_remaining_s: float  # modelled seconds until the current iteration ends; 0 when idle
    activity: int  # engine activity: workers.engine IDLE, PREFILL, DECODE or MIXED (chunked prefill beside decode)
    busy_s: float  # modelled busy seconds since the worker started
    now_s: float  # the worker clock when the report was taken
    unix_s: float  # the same moment in Unix time
    engine_s: float  # the worker-clock time its engine (and engine state) had been driven to
    prefill_tokens: int = 0
    decode_tokens: int = 0
    dynamic_energy_j: float = 0.0  # activity-dependent energy since the worker started
    state: WorkerState = WorkerState.READY
    prefix_hit_tokens: int = 0  # prompt tokens served from the prefix cache, every level
    kv_tiers: tuple[TierUsage, ...] = ()  # the levels below HBM, the store last
