"""What an instance does: prefill, decode or both (colocated).

The enum lives in `workers` because the engine needs it and `workers` imports
nothing from `scheduler`; `scheduler.types` re-exports it for the policy
core. It is an IntEnum so snapshot arrays and the engine can store it as a
small int and compare without conversions.
"""
from __future__ import annotations

import enum


class Role(enum.IntEnum):
    PREFILL = 0  # prompts only; the KV cache is handed to a decode instance
    DECODE = 1  # decodes handed-over requests only
    BOTH = 2  # colocated: prefill and decode on the same instance

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}; expected one of prefill, decode, both") from None
