"""Cluster configuration: pools, policy and SLOs, read from YAML.

Every error names the offending key as a path (``pools[2].device``) so a user
can find it in the file without reading code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from scheduler.config_speculative import parse_speculative
from scheduler.types import Role
from scheduler.validation import ConfigError, Fields  # ConfigError: callers import it from here too
from workers.engine import DEFAULT_TOKEN_BUDGET
from workers.kv_tiers import HBM, STORE, KvTier, StoreWrite
from workers.speculative import SpeculativeConfig
from workers.tier_media import MEDIA

# Bytes per weight for the `quantization` key of a pool. q4_k_m is llama.cpp's GGUF Q4_K_M as
# laptops run it: 4.89 bits per weight (a Llama-3.1-8B file is 4.92 GB; workers/edge_devices.py).
QUANTIZATION_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "q4_k_m": 4.89 / 8}
# Capability kept at 4-bit weights: Meta-Llama-3.1-8B-Instruct-quantized.w4a16 recovers 96.1% of
# the bf16 model's Open LLM Leaderboard v2 average (98.9% on v1, 93.0% on Arena-Hard; Neural
# Magic / Red Hat AI model card, 2024). 8-bit weights recover ~100% there and keep their capability.
QUANTIZATION_CAPABILITY = {"int4": 0.961, "q4_k_m": 0.961}


class Serving(str, Enum):
    """Who a pool's instances serve."""

    POOLED = "pooled"  # any request may go to any instance (a fleet, or owned devices pooled as one)
    OWN_DEVICE = "own-device"  # instance k is one user's device: it serves only that user's requests
    # Routers' and verifiers' passes only (scheduler/plugins/overhead.py): no request is placed
    # there, and its model is no tier of the cluster; its energy and dollars are the run's.
    JUDGE = "judge"


# Power usage effectiveness when a pool sets none: datacenter devices at the Uptime Institute
# Global Data Center Survey 2024 average (1.56; hyperscalers report less, e.g. Google's 2023
# fleet 1.10: set `pue:` per pool); edge devices sit in rooms that are not cooled for them (1.0).
DEFAULT_DATACENTER_PUE = 1.56
DEFAULT_EDGE_PUE = 1.0


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
    source: str = "<inline>"  # the file the policy came from, for errors in its params


class Backend(str, Enum):
    """What serves a pool's instances."""

    EMULATED = "emulated"  # emulated workers on the device's performance model
    OPENAI = "openai"  # real engines speaking the OpenAI HTTP API (vLLM, SGLang, llama.cpp, TGI)


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """Engines `serve` starts as Ray actors, one per instance; `command` holds `{port}`
    (and may hold `{host}`), filled in per actor."""

    command: tuple[str, ...]
    instances: int = 1
    num_gpus: float = 1.0  # Ray places each engine on a node with this many free GPUs
    start_timeout_s: float = 600.0  # the engine's /health must answer within this
    max_restarts: int = 3  # relaunches of an engine that died, with backoff, before it stays down


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    device: str  # "" on an openai pool without one: its speed is learned online
    instances: int
    model: str
    role: Role
    chips_per_instance: int | None = None  # None: the fewest chips that hold the model
    quantization: str | None = None  # None: the model's own dtype
    link_gbps: float = 400.0  # per-instance network link for KV hand-over, gigabits/s
    price_usd_per_hour: float | None = None  # per instance; None: device price x chips
    max_batch: int = 256  # most sequences decoding at once
    max_batch_tokens: int = 16384  # most prompt tokens in one prefill-first iteration
    memory_utilization: float = 0.9  # share of device memory the engine may use
    # Chunked prefill (vLLM v1, Sarathi-Serve): each iteration runs the decode batch and fills
    # the rest of token_budget with prompt chunks. Off: prefill-first (a prompt stalls decodes).
    chunked_prefill: bool = False
    token_budget: int = DEFAULT_TOKEN_BUDGET  # tokens per iteration, decode and prompt together
    kv_tiers: tuple[KvTier, ...] = ()  # per-instance prefix-cache tiers below HBM, fastest first
    backend: Backend = Backend.EMULATED
    endpoints: tuple[str, ...] = ()  # openai: one instance per base URL
    launch: LaunchConfig | None = None  # openai: engines started by `serve` instead of endpoints
    context_tokens: int = 8192  # openai without a device: the longest prompt + output one request may have
    aliases: tuple[str, ...] = ()  # other names clients may ask for this pool's model by (the OpenAI API's `model`)
    speculative: SpeculativeConfig | None = None  # speculative decoding (scheduler/config_speculative.py)
    pue: float | None = None  # facility power usage effectiveness; None: by device kind (see above)
    serving: Serving = Serving.POOLED

    @property
    def engine_token_budget(self) -> int:
        """The engine's token_budget argument: 0 for prefill-first."""
        return self.token_budget if self.chunked_prefill else 0

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
    kv_store: KvTier | None = None  # cluster-wide prefix-cache store behind every instance's tiers
    default_model: str | None = None  # the model (or alias) of HTTP requests that name none


_POOL_KEYS = {
    "name", "device", "instances", "model", "role", "chips_per_instance", "quantization",
    "link_gbps", "price_usd_per_hour", "max_batch", "max_batch_tokens", "memory_utilization",
    "chunked_prefill", "token_budget", "kv_tiers", "backend", "endpoints", "launch", "context_tokens", "aliases",
    "speculative",
    "pue", "serving",
}
# An openai pool's keys: the engines decide batching, memory and chunking themselves.
_OPENAI_POOL_KEYS = {"name", "backend", "endpoints", "launch", "model", "device", "role", "price_usd_per_hour",
                     "context_tokens", "max_batch", "chips_per_instance", "quantization", "memory_utilization",
                     "aliases"}
_LAUNCH_KEYS = {"command", "instances", "num_gpus", "start_timeout_s", "max_restarts"}
_TOP_KEYS = {"name", "pools", "policy", "slo", "description", "prefix_cache", "kv_store", "default_model"}
_KV_TIER_KEYS = {"name", "capacity_gb", "read_gb_s", "write_gb_s", "usd_per_gb_hour", "energy_j_per_gb", "medium"}
_KV_STORE_KEYS = (_KV_TIER_KEYS - {"name"}) | {"write"}
_PREFIX_CACHE_KEYS = {"enabled", "block_tokens"}
_POLICY_KEYS = {"name", "filters", "scorers", "picker", "params", "staging"}
_SLO_KEYS = {"ttft_s", "tpot_s"}


def _parse_pool(v: Fields, index: int, raw: Any) -> PoolConfig:
    where = f"pools[{index}]"
    raw = v.mapping(where, raw)
    v.known_keys(where + ".", raw, _POOL_KEYS)
    backend = v.string(f"{where}.backend", raw.get("backend", Backend.EMULATED.value))
    if backend not in {b.value for b in Backend}:
        raise v.fail(f"{where}.backend", f"unknown {backend!r}; expected one of {', '.join(b.value for b in Backend)}")
    if backend == Backend.OPENAI:
        return _parse_openai_pool(v, where, raw)
    for key in ("endpoints", "launch", "context_tokens"):
        if key in raw:
            raise v.fail(f"{where}.{key}", "applies only to pools with backend: openai")
    for required in ("name", "device", "instances", "model", "role"):
        if required not in raw:
            raise v.fail(f"{where}.{required}", "missing")
    kwargs: dict[str, Any] = {
        "name": v.string(f"{where}.name", raw["name"]),
        "device": v.string(f"{where}.device", raw["device"]),
        "instances": v.number(f"{where}.instances", raw["instances"], integer=True, above=0),
        "model": v.string(f"{where}.model", raw["model"]),
    }
    try:
        kwargs["role"] = Role.parse(v.string(f"{where}.role", raw["role"]))
    except ValueError as exc:
        raise v.fail(f"{where}.role", str(exc)) from None
    if raw.get("chips_per_instance", "auto") != "auto":
        kwargs["chips_per_instance"] = v.number(f"{where}.chips_per_instance", raw["chips_per_instance"],
                                                integer=True, above=0)
    if raw.get("quantization") is not None:
        quant = v.string(f"{where}.quantization", raw["quantization"]).lower()
        if quant not in QUANTIZATION_BYTES:
            raise v.fail(f"{where}.quantization", f"unknown {quant!r}; expected one of {', '.join(QUANTIZATION_BYTES)}")
        kwargs["quantization"] = quant
    for key in ("link_gbps", "max_batch", "max_batch_tokens"):
        if key in raw:
            kwargs[key] = v.number(f"{where}.{key}", raw[key], integer=key != "link_gbps", above=0)
    if "memory_utilization" in raw:
        kwargs["memory_utilization"] = v.number(f"{where}.memory_utilization", raw["memory_utilization"],
                                                above=0, at_most=1)
    if raw.get("price_usd_per_hour") is not None:
        kwargs["price_usd_per_hour"] = v.number(f"{where}.price_usd_per_hour", raw["price_usd_per_hour"],
                                                at_least=0)
    _parse_chunking(v, where, raw, kwargs)
    _parse_boundary(v, where, raw, kwargs)
    if raw.get("kv_tiers") is not None:
        kwargs["kv_tiers"] = _parse_kv_tiers(v, where, raw["kv_tiers"], kwargs["role"])
    kwargs["aliases"] = _parse_aliases(v, where, raw)
    if raw.get("speculative") is not None:
        kwargs["speculative"] = parse_speculative(v, f"{where}.speculative", raw["speculative"], kwargs["role"])
    pool = PoolConfig(**kwargs)
    if pool.chunked_prefill and pool.role == Role.BOTH and pool.token_budget <= pool.max_batch:
        raise v.fail(f"{where}.token_budget", f"{pool.token_budget} leaves no room for prompt chunks beside a "
                     f"full decode batch (max_batch {pool.max_batch}); it must exceed max_batch")
    return pool


def _parse_openai_pool(v: Fields, where: str, raw: dict) -> PoolConfig:
    """A pool of real engines: `endpoints` (one instance each) or `launch`, `model` the
    name the engines serve, an optional `device` (then `model` must be in the catalogue
    too, and latency is predicted from them), role `both`."""
    v.known_keys(where + ".", raw, _OPENAI_POOL_KEYS)
    for required in ("name", "model"):
        if required not in raw:
            raise v.fail(f"{where}.{required}", "missing")
    if ("endpoints" in raw) == ("launch" in raw):
        raise v.fail(f"{where}.endpoints", "an openai pool needs either endpoints (engines already running) "
                     "or launch (engines serve starts), not both")
    kwargs: dict[str, Any] = {"name": v.string(f"{where}.name", raw["name"]),
                              "model": v.string(f"{where}.model", raw["model"]), "backend": Backend.OPENAI,
                              "device": v.string(f"{where}.device", raw["device"]) if "device" in raw else ""}
    role = v.string(f"{where}.role", raw.get("role", "both"))
    if role != "both":
        raise v.fail(f"{where}.role", f"an openai pool serves whole requests (role both), got {role!r}; "
                     "docs/PD_REAL_ENGINES.md says what disaggregation on real engines would take")
    kwargs["role"] = Role.BOTH
    if "endpoints" in raw:
        endpoints = raw["endpoints"]
        if not isinstance(endpoints, list) or not endpoints:
            raise v.fail(f"{where}.endpoints", "expected a non-empty list of base URLs (http://HOST:PORT)")
        urls = tuple(_endpoint(v, f"{where}.endpoints[{i}]", e) for i, e in enumerate(endpoints))
        for i, url in enumerate(urls):
            if url in urls[:i]:
                raise v.fail(f"{where}.endpoints[{i}]", f"duplicate endpoint {url}")
        kwargs["endpoints"] = urls
        kwargs["instances"] = len(urls)
    else:
        kwargs["launch"] = launch = _parse_launch(v, f"{where}.launch", raw["launch"])
        kwargs["instances"] = launch.instances
    if raw.get("price_usd_per_hour") is not None:
        kwargs["price_usd_per_hour"] = v.number(f"{where}.price_usd_per_hour", raw["price_usd_per_hour"],
                                                at_least=0)
    for key in ("context_tokens", "max_batch"):
        if key in raw:
            kwargs[key] = v.number(f"{where}.{key}", raw[key], integer=True, above=0)
    if not kwargs["device"]:
        for key in ("chips_per_instance", "quantization", "memory_utilization"):
            if key in raw:
                raise v.fail(f"{where}.{key}", "describes the device; set device: too, or leave it out")
    elif raw.get("chips_per_instance", "auto") != "auto":
        kwargs["chips_per_instance"] = v.number(f"{where}.chips_per_instance", raw["chips_per_instance"],
                                                integer=True, above=0)
    kwargs["aliases"] = _parse_aliases(v, where, raw)
    return PoolConfig(**kwargs)


def _parse_aliases(v: Fields, where: str, raw: dict) -> tuple[str, ...]:
    """A pool's other names for its model (as vLLM's --served-model-name takes several)."""
    if raw.get("aliases") is None:
        return ()
    aliases = raw["aliases"]
    if not isinstance(aliases, list):
        raise v.fail(f"{where}.aliases", f"expected a list of names, got {aliases!r}")
    names = tuple(v.string(f"{where}.aliases[{i}]", a) for i, a in enumerate(aliases))
    for i, name in enumerate(names):
        if name in names[:i]:
            raise v.fail(f"{where}.aliases[{i}]", f"duplicate alias {name!r}")
        if name == raw.get("model"):
            raise v.fail(f"{where}.aliases[{i}]", f"{name!r} is the pool's model itself")
    return names


def _check_model_names(v: Fields, pools: tuple[PoolConfig, ...], default: Any) -> str | None:
    """Every name a client may ask for means one model: an alias is no other pool's
    model and no alias of another model; `default_model` is one of the names."""
    owner: dict[str, str] = {p.model: p.model for p in pools}  # served name -> the model it means
    for i, pool in enumerate(pools):
        for j, alias in enumerate(pool.aliases):
            meant = owner.setdefault(alias, pool.model)
            if meant != pool.model:
                other = "the model of another pool" if alias in {p.model for p in pools} else f"an alias of {meant!r}"
                raise v.fail(f"pools[{i}].aliases[{j}]", f"{alias!r} is already {other}; one name, one model")
    if default is None:
        return None
    default = v.string("default_model", default)
    if default not in owner:
        raise v.fail("default_model", f"{default!r} is no pool's model or alias; the pools serve "
                     f"{', '.join(sorted(owner))}")
    return default


def _endpoint(v: Fields, key: str, value: Any) -> str:
    url = v.string(key, value).rstrip("/")
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise v.fail(key, f"expected a base URL like http://10.0.0.5:8000 (no path), got {value!r}")
    return url


def _parse_launch(v: Fields, where: str, raw: Any) -> LaunchConfig:
    raw = v.mapping(where, raw, "a mapping with command, instances and num_gpus")
    v.known_keys(where + ".", raw, _LAUNCH_KEYS)
    command = raw.get("command")
    if not isinstance(command, list) or not command:
        raise v.fail(f"{where}.command", "expected a non-empty list of arguments")
    args = tuple(v.string(f"{where}.command[{i}]", str(a) if isinstance(a, (int, float)) else a)
                 for i, a in enumerate(command))
    if not any("{port}" in a for a in args):
        raise v.fail(f"{where}.command", "must contain {port}: each engine listens on the port serve gives it")
    kwargs: dict[str, Any] = {"command": args}
    if "instances" in raw:
        kwargs["instances"] = v.number(f"{where}.instances", raw["instances"], integer=True, above=0)
    if "num_gpus" in raw:
        kwargs["num_gpus"] = v.number(f"{where}.num_gpus", raw["num_gpus"], at_least=0)
    if "max_restarts" in raw:
        kwargs["max_restarts"] = v.number(f"{where}.max_restarts", raw["max_restarts"], integer=True, at_least=0)
    if "start_timeout_s" in raw:
        kwargs["start_timeout_s"] = v.number(f"{where}.start_timeout_s", raw["start_timeout_s"], above=0)
    return LaunchConfig(**kwargs)


def _parse_chunking(v: Fields, where: str, raw: dict, kwargs: dict) -> None:
    """chunked_prefill and token_budget. A decode pool computes no prompts, so chunking does
    not apply there; a budget without chunking would be ignored, so it is refused."""
    chunked = v.flag(f"{where}.chunked_prefill", raw.get("chunked_prefill", False))
    if chunked and kwargs["role"] == Role.DECODE:
        raise v.fail(f"{where}.chunked_prefill", "a decode pool computes no prompts; "
                     "set it on the prefill or colocated pools")
    if "token_budget" in raw:
        if not chunked:
            raise v.fail(f"{where}.token_budget", "applies only with chunked_prefill: true "
                         "(prefill-first iterations are capped by max_batch_tokens)")
        kwargs["token_budget"] = v.number(f"{where}.token_budget", raw["token_budget"], integer=True, above=0)
    kwargs["chunked_prefill"] = chunked


def _parse_boundary(v: Fields, where: str, raw: dict, kwargs: dict) -> None:
    """pue (>= 1) and serving (pooled | own-device: one user per instance, batch 1, role both |
    judge: routers' and verifiers' passes only, role both)."""
    if raw.get("pue") is not None:
        kwargs["pue"] = v.number(f"{where}.pue", raw["pue"], at_least=1)
    if "serving" not in raw:
        return
    serving = v.string(f"{where}.serving", raw["serving"])
    if serving not in {s.value for s in Serving}:
        raise v.fail(f"{where}.serving", f"unknown {serving!r}; expected one of {', '.join(s.value for s in Serving)}")
    if serving == Serving.OWN_DEVICE:
        if kwargs["role"] != Role.BOTH:
            raise v.fail(f"{where}.serving", "an own-device pool serves whole requests (role both)")
        if raw.get("max_batch", 1) != 1:
            raise v.fail(f"{where}.max_batch", "an own-device pool serves its user's requests one at a time "
                         "(max_batch 1, the Intelligence-per-Watt study's setting)")
        kwargs["max_batch"] = 1
    if serving == Serving.JUDGE and kwargs["role"] != Role.BOTH:
        raise v.fail(f"{where}.serving", "a judge pool runs whole judgement passes (role both)")
    kwargs["serving"] = Serving(serving)


def _parse_kv_tier(v: Fields, where: str, raw: Any, keys: set[str], name: str) -> KvTier:
    """One tier's mapping: capacity and bandwidths required (> 0), prices optional (>= 0)."""
    raw = v.mapping(where, raw, "a mapping with capacity_gb, read_gb_s and write_gb_s")
    v.known_keys(where + ".", raw, keys)
    for required in ("capacity_gb", "read_gb_s", "write_gb_s"):
        if required not in raw:
            raise v.fail(f"{where}.{required}", "missing")
    sizes = {k: v.number(f"{where}.{k}", raw[k], above=0) for k in ("capacity_gb", "read_gb_s", "write_gb_s")}
    prices = {}
    if raw.get("medium") is not None:  # sourced defaults (workers/tier_media.py), overridden below
        medium = MEDIA.get(raw["medium"])
        if medium is None:
            raise v.fail(f"{where}.medium", f"expected one of {', '.join(MEDIA)}, got {raw['medium']!r}")
        prices = {"usd_per_gb_hour": medium.usd_per_gb_hour, "energy_j_per_gb": medium.energy_j_per_gb}
    prices.update({k: v.number(f"{where}.{k}", raw[k], at_least=0)
                   for k in ("usd_per_gb_hour", "energy_j_per_gb") if raw.get(k) is not None})
    if "write" not in keys:
        return KvTier(name=name, **sizes, **prices)
    # The store is written through by default, as Mooncake Store and LMCache do (docs/KV_TIERS.md).
    write = raw.get("write", StoreWrite.THROUGH.value)
    if write not in {w.value for w in StoreWrite}:
        raise v.fail(f"{where}.write", f"expected one of {', '.join(w.value for w in StoreWrite)}, got {write!r}")
    return KvTier(name=name, **sizes, **prices, write=StoreWrite(write))


def _parse_kv_tiers(v: Fields, where: str, raw: Any, role: Role) -> tuple[KvTier, ...]:
    """A pool's tiers below HBM, fastest first; names unique and not the reserved hbm/store."""
    key = f"{where}.kv_tiers"
    if not isinstance(raw, list):
        raise v.fail(key, "expected a list of tiers, fastest first")
    if raw and role == Role.DECODE:
        raise v.fail(key, "a decode pool keeps no prefix cache (its KV arrives by hand-over); "
                          "set tiers on the prefill or colocated pools")
    tiers: list[KvTier] = []
    for i, item in enumerate(raw):
        at = f"{key}[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise v.fail(f"{at}.name", "missing (each tier is a mapping with a name)")
        name = v.string(f"{at}.name", item["name"])
        if name in (HBM, STORE):
            raise v.fail(f"{at}.name", f"{name!r} is reserved (HBM is the first level, the store is kv_store)")
        if any(t.name == name for t in tiers):
            raise v.fail(f"{at}.name", f"duplicate tier name {name!r}")
        tiers.append(_parse_kv_tier(v, at, item, _KV_TIER_KEYS, name))
    return tuple(tiers)


def _parse_policy(v: Fields, raw: Any) -> PolicyConfig:
    if raw is None:
        return PolicyConfig(source=v.source)
    if isinstance(raw, str):
        return PolicyConfig(name=v.string("policy", raw), source=v.source)
    raw = v.mapping("policy", raw, "a policy name or a mapping")
    v.known_keys("policy.", raw, _POLICY_KEYS)
    name = v.string("policy.name", raw.get("name", "slo-aware"))
    filters = None
    if "filters" in raw:
        if not isinstance(raw["filters"], list):
            raise v.fail("policy.filters", "expected a list of filter names")
        filters = tuple(v.string(f"policy.filters[{i}]", f) for i, f in enumerate(raw["filters"]))
    scorers = None
    if "scorers" in raw:
        weights = v.mapping("policy.scorers", raw["scorers"], "a mapping of scorer name to weight")
        scorers = tuple((v.string("policy.scorers", k), v.number(f"policy.scorers.{k}", w, at_least=0))
                        for k, w in weights.items())
    picker = v.string("policy.picker", raw["picker"]) if "picker" in raw else None
    staging = v.string("policy.staging", raw["staging"]) if raw.get("staging") is not None else None
    # Parameter names and values are checked when the policy is built: only the registry
    # knows which parameters its plugins declare.
    params = tuple(sorted(v.mapping("policy.params", raw["params"]).items())) if "params" in raw else ()
    return PolicyConfig(name=name, filters=filters, scorers=scorers, picker=picker, params=params, staging=staging,
                        source=v.source)


def _parse_slo(v: Fields, raw: Any) -> SloConfig:
    if raw is None:
        return SloConfig()
    raw = v.mapping("slo", raw, "a mapping with ttft_s and tpot_s")
    v.known_keys("slo.", raw, _SLO_KEYS)
    return SloConfig(**{k: v.number(f"slo.{k}", value, above=0) for k, value in raw.items()})


def _parse_prefix_cache(v: Fields, raw: Any) -> PrefixCacheConfig:
    if raw is None:
        return PrefixCacheConfig()
    if isinstance(raw, bool):
        return PrefixCacheConfig(enabled=raw)
    raw = v.mapping("prefix_cache", raw, "true/false or a mapping with enabled and block_tokens")
    v.known_keys("prefix_cache.", raw, _PREFIX_CACHE_KEYS)
    enabled = v.flag("prefix_cache.enabled", raw.get("enabled", True))
    if "block_tokens" not in raw:
        return PrefixCacheConfig(enabled=enabled)
    return PrefixCacheConfig(enabled=enabled, block_tokens=v.number("prefix_cache.block_tokens", raw["block_tokens"],
                                                                    integer=True, above=0))


def parse_cluster(data: Any, source: str = "<inline>") -> ClusterConfig:
    """Validate a parsed YAML document. Device/model/policy names are checked later,
    when the cluster is built, against the catalogues and the registry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    v = Fields(source)
    v.known_keys("", data, _TOP_KEYS)
    if "pools" not in data:
        raise v.fail("pools", "missing")
    if not isinstance(data["pools"], list) or not data["pools"]:
        raise v.fail("pools", "expected a non-empty list of pools")
    pools = tuple(_parse_pool(v, i, raw) for i, raw in enumerate(data["pools"]))
    names = [p.name for p in pools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise v.fail(f"pools[{i}].name", f"duplicate pool name {name!r}")
    roles = {p.role for p in pools if p.serving != Serving.JUDGE}
    if not roles:
        raise v.fail("pools", "every pool is a judge pool (serving: judge); requests need a pool to serve them")
    if Role.BOTH not in roles and not {Role.PREFILL, Role.DECODE} <= roles:
        raise v.fail("pools", "needs a pool with role 'both', or both a 'prefill' and a 'decode' pool")
    return ClusterConfig(
        name=v.string("name", data.get("name", Path(source).stem)),
        pools=pools,
        policy=_parse_policy(v, data.get("policy")),
        slo=_parse_slo(v, data.get("slo")),
        source=source,
        prefix_cache=_parse_prefix_cache(v, data.get("prefix_cache")),
        kv_store=(None if data.get("kv_store") is None
                  else _parse_kv_tier(v, "kv_store", data["kv_store"], _KV_STORE_KEYS, STORE)),
        default_model=_check_model_names(v, pools, data.get("default_model")),
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
