"""Checks for values read from YAML documents, with errors that name the file and key.

Cluster files (scheduler/config.py), policy parameters (scheduler/framework.py)
and capacity-plan menus all fail the same way: `file: key 'path': reason`,
where path is the key as a user would look it up (`pools[2].device`,
`policy.params.max_attempts`). `Fields` carries the document's name and the
error type to raise, so each reader writes only its keys and bounds.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A document that cannot be used; the message names file and key."""


class Fields:
    """Validators for the values of one document (`source`), raising `error`."""

    __slots__ = ("source", "error")

    def __init__(self, source: str, error: type[ValueError] = ConfigError):
        self.source = source
        self.error = error

    def fail(self, key: str, reason: str) -> ValueError:
        return self.error(f"{self.source}: key '{key}': {reason}")

    def known_keys(self, where: str, data: dict, allowed: set[str] | frozenset[str]) -> None:
        """Every key of `data` (a mapping found at `where`, e.g. 'pools[0].') is in `allowed`."""
        for key in data:
            if key not in allowed:
                raise self.fail(f"{where}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def mapping(self, key: str, value: Any, what: str = "a mapping") -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected {what}")
        return value

    def number(self, key: str, value: Any, *, integer: bool = False, above: float | None = None,
               at_least: float | None = None, at_most: float | None = None) -> Any:
        """A finite number (an int when `integer`) with optional bounds: > above, >= at_least, <= at_most."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if integer and not float(value).is_integer():
            raise self.fail(key, f"expected an integer, got {value!r}")
        if above is not None and not value > above:
            raise self.fail(key, f"must be > {above:g}, got {value!r}")
        if at_least is not None and not value >= at_least:
            raise self.fail(key, f"must be >= {at_least:g}, got {value!r}")
        if at_most is not None and not value <= at_most:
            raise self.fail(key, f"must be <= {at_most:g}, got {value!r}")
        return int(value) if integer else float(value)

    def string(self, key: str, value: Any) -> str:
        """A non-empty string, stripped."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def flag(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value
