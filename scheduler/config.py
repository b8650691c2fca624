"""Cluster configuration: pools, policy and SLOs, read from YAML.

Every error names the offending key as a path (``pools[2].device``) so a user
can find it in the file without reading code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scheduler.types import Role

# Bytes per weight for the `quantization` key of a pool.
QUANTIZATION_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


class ConfigError(ValueError):
    """A cluster file that cannot be used; the message names file and key."""


@dataclass(frozen=True, slots=True)
class SloConfig:
    ttft_s: float = 2.0
    tpot_s: float = 0.1


@dataclass(frozen=True, slots=True)
class PrefixCacheConfig:
    """Per-instance prefix caching of prompt blocks (used when requests carry block hashes).

    block_tokens must match how the trace's hash ids were made: Mooncake's
    traces hash 512-token blocks.
    """

    enabled: bool = True
    block_tokens: int = 512


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """A named preset from the registry, optionally with its plugin list overridden.

    `scorers` maps scorer name -> weight; weights live here, never in plugins.
    """

    name: str = "slo-aware"
    filters: tuple[str, ...] | None = None
    scorers: tuple[tuple[str, float], ...] | None = None
    picker: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    staging: str | None = None  # None: the preset's; "none": one pass


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    device: str
    instances: int
    model: str
    role: Role
    chips_per_instance: int | None = None  # None: the fewest chips that hold the model
    quantization: str | None = None  # None: the model's own dtype
    link_gbps: float = 400.0  # per-instance network link for KV hand-over, gigabits/s
    price_usd_per_hour: float | None = None  # per instance; None: device price x chips
    max_batch: int = 256  # most sequences decoding at once
    max_batch_tokens: int = 16384  # most prompt tokens in one prefill iteration
    memory_utilization: float = 0.9  # share of device memory the engine may use

    @property
    def link_bytes_per_s(self) -> float:
        return self.link_gbps * 1e9 / 8.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    pools: tuple[PoolConfig, ...]
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    source: str = "<inline>"
    prefix_cache: PrefixCacheConfig = field(default_factory=PrefixCacheConfig)


_POOL_KEYS = {
    "name", "device", "instances", "model", "role", "chips_per_instance", "quantization",
    "link_gbps", "price_usd_per_hour", "max_batch", "max_batch_tokens", "memory_utilization",
}
_TOP_KEYS = {"name", "pools", "policy", "slo", "description", "prefix_cache"}
_PREFIX_CACHE_KEYS = {"enabled", "block_tokens"}
_POLICY_KEYS = {"name", "filters", "scorers", "picker", "params", "staging"}
_SLO_KEYS = {"ttft_s", "tpot_s"}


def _fail(source: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}': {reason}")


def _number(source: str, key: str, value: Any, *, integer: bool = False, positive: bool = True,
            allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"expected a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise _fail(source, key, f"expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise _fail(source, key, f"expected a finite number, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise _fail(source, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return int(value) if integer else float(value)


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, key, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _check_keys(source: str, where: str, data: dict, allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(source, f"{where}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _parse_pool(source: str, index: int, raw: Any) -> PoolConfig:
    where = f"pools[{index}]"
    if not isinstance(raw, dict):
        raise _fail(source, where, "expected a mapping")
    _check_keys(source, where + ".", raw, _POOL_KEYS)
    for required in ("name", "device", "instances", "model", "role"):
        if required not in raw:
            raise _fail(source, f"{where}.{required}", "missing")
    kwargs: dict[str, Any] = {
        "name": _string(source, f"{where}.name", raw["name"]),
        "device": _string(source, f"{where}.device", raw["device"]),
        "instances": _number(source, f"{where}.instances", raw["instances"], integer=True),
        "model": _string(source, f"{where}.model", raw["model"]),
    }
    try:
        kwargs["role"] = Role.parse(_string(source, f"{where}.role", raw["role"]))
    except ValueError as exc:
        raise _fail(source, f"{where}.role", str(exc)) from None
    if raw.get("chips_per_instance", "auto") != "auto":
        kwargs["chips_per_instance"] = _number(source, f"{where}.chips_per_instance",
                                               raw["chips_per_instance"], integer=True)
    if raw.get("quantization") is not None:
        quant = _string(source, f"{where}.quantization", raw["quantization"]).lower()
        if quant not in QUANTIZATION_BYTES:
            raise _fail(source, f"{where}.quantization",
                        f"unknown {quant!r}; expected one of {', '.join(QUANTIZATION_BYTES)}")
        kwargs["quantization"] = quant
    for key in ("link_gbps", "max_batch", "max_batch_tokens", "memory_utilization"):
        if key in raw:
            kwargs[key] = _number(source, f"{where}.{key}", raw[key],
                                  integer=key in ("max_batch", "max_batch_tokens"))
    if raw.get("price_usd_per_hour") is not None:
        kwargs["price_usd_per_hour"] = _number(source, f"{where}.price_usd_per_hour",
                                               raw["price_usd_per_hour"], allow_zero=True)
    if "memory_utilization" in kwargs and kwargs["memory_utilization"] > 1.0:
        raise _fail(source, f"{where}.memory_utilization", "must be <= 1")
    return PoolConfig(**kwargs)


def _parse_policy(source: str, raw: Any) -> PolicyConfig:
    if raw is None:
        return PolicyConfig()
    if isinstance(raw, str):
        return PolicyConfig(name=_string(source, "policy", raw))
    if not isinstance(raw, dict):
        raise _fail(source, "policy", "expected a policy name or a mapping")
    _check_keys(source, "policy.", raw, _POLICY_KEYS)
    name = _string(source, "policy.name", raw.get("name", "slo-aware"))
    filters = None
    if "filters" in raw:
        if not isinstance(raw["filters"], list):
            raise _fail(source, "policy.filters", "expected a list of filter names")
        filters = tuple(_string(source, f"policy.filters[{i}]", f) for i, f in enumerate(raw["filters"]))
    scorers = None
    if "scorers" in raw:
        if not isinstance(raw["scorers"], dict):
            raise _fail(source, "policy.scorers", "expected a mapping of scorer name to weight")
        scorers = tuple(
            (_string(source, "policy.scorers", k), _number(source, f"policy.scorers.{k}", v, allow_zero=True))
            for k, v in raw["scorers"].items()
        )
    picker = _string(source, "policy.picker", raw["picker"]) if "picker" in raw else None
    staging = _string(source, "policy.staging", raw["staging"]) if raw.get("staging") is not None else None
    params: tuple[tuple[str, Any], ...] = ()
    if "params" in raw:
        if not isinstance(raw["params"], dict):
            raise _fail(source, "policy.params", "expected a mapping")
        params = tuple(sorted(raw["params"].items()))
    return PolicyConfig(name=name, filters=filters, scorers=scorers, picker=picker, params=params, staging=staging)


def _parse_slo(source: str, raw: Any) -> SloConfig:
    if raw is None:
        return SloConfig()
    if not isinstance(raw, dict):
        raise _fail(source, "slo", "expected a mapping with ttft_s and tpot_s")
    _check_keys(source, "slo.", raw, _SLO_KEYS)
    kwargs = {k: _number(source, f"slo.{k}", v) for k, v in raw.items()}
    return SloConfig(**kwargs)


def _parse_prefix_cache(source: str, raw: Any) -> PrefixCacheConfig:
    if raw is None:
        return PrefixCacheConfig()
    if isinstance(raw, bool):
        return PrefixCacheConfig(enabled=raw)
    if not isinstance(raw, dict):
        raise _fail(source, "prefix_cache", "expected true/false or a mapping with enabled and block_tokens")
    _check_keys(source, "prefix_cache.", raw, _PREFIX_CACHE_KEYS)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail(source, "prefix_cache.enabled", f"expected true or false, got {enabled!r}")
    if "block_tokens" not in raw:
        return PrefixCacheConfig(enabled=enabled)
    return PrefixCacheConfig(enabled=enabled, block_tokens=_number(source, "prefix_cache.block_tokens",
                                                                   raw["block_tokens"], integer=True))


def parse_cluster(data: Any, source: str = "<inline>") -> ClusterConfig:
    """Validate a parsed YAML document. Device/model/policy names are checked later,
    when the cluster is built, against the catalogues and the registry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _check_keys(source, "", data, _TOP_KEYS)
    if "pools" not in data:
        raise _fail(source, "pools", "missing")
    if not isinstance(data["pools"], list) or not data["pools"]:
        raise _fail(source, "pools", "expected a non-empty list of pools")
    pools = tuple(_parse_pool(source, i, raw) for i, raw in enumerate(data["pools"]))
    names = [p.name for p in pools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _fail(source, f"pools[{i}].name", f"duplicate pool name {name!r}")
    roles = {p.role for p in pools}
    if Role.BOTH not in roles and not {Role.PREFILL, Role.DECODE} <= roles:
        raise _fail(source, "pools", "needs a pool with role 'both', or both a 'prefill' and a 'decode' pool")
    return ClusterConfig(
        name=_string(source, "name", data.get("name", Path(source).stem)),
        pools=pools,
        policy=_parse_policy(source, data.get("policy")),
        slo=_parse_slo(source, data.get("slo")),
        source=source,
        prefix_cache=_parse_prefix_cache(source, data.get("prefix_cache")),
    )


def load_cluster(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: cluster file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_cluster(data, str(path))


def builtin_cluster_path(name: str) -> Path:
    """An example cluster from deploy/clusters/ (the README installs the checkout in place)."""
    path = Path(__file__).resolve().parent.parent / "deploy" / "clusters" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no built-in cluster named {name!r} ({path} not found)")
    return path
