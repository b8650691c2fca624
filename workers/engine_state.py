"""A `BatchEngine`'s state as bytes, and back: how the scheduler mirrors workers' engines.

A worker ships its engine's state with its load reports; the scheduler
restores it into a mirror (an engine of the same performance model), adds the
dispatches the report does not include yet, and advances the mirror to the
moment of each decision. The engine is deterministic, so the mirror holds
what the worker holds at that moment although the report is a hop old. Every
slot of plain data is carried (new engine fields travel without changes
here); times stay on the worker's clock. Containers go to msgpack as they are
(deques through `default`): no Python loop over the batch.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import msgpack

from workers.engine import BatchEngine

_PLAIN = (int, float, str, bool, type(None), list, tuple, dict, deque)


def engine_state(eng: BatchEngine) -> bytes:
    # Anything not plain data (the performance model, the prefix cache) the mirror has itself.
    state = {name: value for name in type(eng).__slots__ if isinstance(value := getattr(eng, name), _PLAIN)}
    return msgpack.packb(state, default=list)


def _typed(template: Any, value: Any) -> Any:
    """`value` (decoded msgpack: sequences are lists) in the container type the engine
    uses for `template`. Entries stay lists where the engine only unpacks them; list
    slots (the finish heap) get tuples back, since the engine pushes tuples and a heap
    cannot compare a list with a tuple."""
    if isinstance(template, deque):
        return deque(value)
    if isinstance(template, list):
        return [tuple(v) if isinstance(v, list) else v for v in value]
    return value


def restore_engine(eng: BatchEngine, blob: bytes) -> None:
    """Overwrite `eng`'s state with a state from `engine_state` (same performance model)."""
    state = msgpack.unpackb(blob, strict_map_key=False)
    slots = set(type(eng).__slots__)
    for name, value in state.items():
        if name in slots:
            setattr(eng, name, _typed(getattr(eng, name), value))
