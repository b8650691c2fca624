"""Capacity planning: the cheapest (or lowest-energy) cluster that serves a workload within its SLOs.

`infersched plan` sizes a cluster in four steps:

1. **Characterize the workload** (`characterize`): arrival rate and the
   length statistics that set prefill and decode demand (`WorkloadStats`).
2. **Derive each menu option's capacity** (`derive_capacities`): for every
   (device, chips, model, role) in the menu, what one instance serves per
   second while meeting the TTFT and TPOT SLOs, what it costs per hour and
   what it draws, from the same performance model the simulator runs
   (`workers.perf.InstancePerf`).
3. **Solve a MILP** (`solve_plan`, with HiGHS through `highspy`): integer
   instance counts per option and continuous request flows that minimize
   dollars, joules, or a normalised mix, subject to demand, headroom,
   same-model hand-over, the quality floor and per-option maximum counts.
4. **Verify by simulation** (`verify_plan`): replay the same workload through
   the chosen cluster with the slo-aware policy; when SLO attainment falls
   short of the target, lower the headroom (plan more spare capacity) and
   solve again, a bounded number of rounds (`plan_and_verify`).

Everything is in requests per second, so the three roles compose: a prefill
instance serves a request's prompt, a decode instance its output, a colocated
("both") instance both. Symbols used in the docstrings below:

    lambda     arrival rate, requests/s
    L_in       mean prompt tokens;  Q_in = E[i^2] / E[i]
    L_dec      mean decode steps per request, E[o - 1] (the first token comes out of prefill)
    ctx, kv    decode-step-weighted means of a batch member's context, i + o/2, and of its
               KV reservation, i + o (a request sits in the batch for o - 1 steps, so the
               batch holds long outputs in proportion to their length)
    h          headroom: the busy share each instance is planned at (0.7: 30% spare)

Bad input (unknown devices or models, numbers that do not parse, a quality
floor no model meets, SLOs no option meets, no feasible cluster within the
menu's max_instances) raises `PlanError`, whose message names the failing
key or constraint; the command line prints it and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from scheduler.config import QUANTIZATION_BYTES, parse_cluster
from scheduler.types import Role
from workers.devices import DeviceSpec, UnknownDeviceError, get_device
from workers.models import ModelSpec, ModelSpecError, UnknownModelError, load_model, with_dtype
from workers.perf import InstancePerf, chips_needed

__all__ = [
    "PlanError", "WorkloadStats", "MenuOption", "Menu", "OptionCapacity", "Excluded", "PlannedPool", "Plan",
    "Round", "OBJECTIVES", "characterize", "stats_from_lengths", "parse_menu", "load_menu",
    "derive_capacities", "solve_plan", "plan_cluster", "cluster_document", "cluster_yaml", "verify_plan",
    "plan_and_verify", "register", "run_plan", "main_plan",
]

OBJECTIVES: tuple[str, ...] = ("cost", "energy", "mix")
ROLE_NAMES = {Role.BOTH: "both", Role.PREFILL: "prefill", Role.DECODE: "decode"}

# Defaults of a menu option; PoolConfig's defaults where the cluster YAML has the same key.
_DEFAULTS: dict[str, Any] = {
    "roles": ("both", "prefill", "decode"),
    "max_instances": 64,
    "chips_per_instance": "auto",
    "link_gbps": 400.0,
    "memory_utilization": 0.9,
    "max_batch": 256,
    "max_batch_tokens": 16384,
}
# A decode-only option whose workload has no decode steps (every output is one token)
# never limits the plan; this stands in for "unbounded" without an infinite coefficient.
_UNBOUNDED_RPS = 1e6
# Verification rounds multiply the headroom by this after each round that misses the target.
HEADROOM_BACKOFF = 0.8


class PlanError(ValueError):
    """A planning problem that cannot be solved as posed; the message names the key or constraint."""


# ---------------------------------------------------------------------------
# 1. Workload


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """What the planner needs to know about a workload.

    Demand: prefill_tokens_per_s = lambda * L_in, decode_tokens_per_s = lambda * L_dec.
    `input_pair_tokens` is Q_in = E[i^2] / E[i]: a prefill iteration of T tokens made of
    typical prompts has about T * (Q_in + 1) / 2 causal (query, key) pairs.
    """

    requests: int
    rate_rps: float
    mean_input_tokens: float
    p90_input_tokens: float
    mean_output_tokens: float
    p90_output_tokens: float
    input_pair_tokens: float
    decode_steps: float
    decode_context_tokens: float
    decode_kv_tokens: float
    description: str = ""

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.rate_rps * self.mean_input_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        return self.rate_rps * self.decode_steps

    def as_dict(self) -> dict:
        return {
            "requests": self.requests, "rate_rps": self.rate_rps,
            "mean_input_tokens": self.mean_input_tokens, "p90_input_tokens": self.p90_input_tokens,
            "mean_output_tokens": self.mean_output_tokens, "p90_output_tokens": self.p90_output_tokens,
            "decode_steps_per_request": self.decode_steps,
            "decode_context_tokens": self.decode_context_tokens, "decode_kv_tokens": self.decode_kv_tokens,
            "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "description": self.description,
        }


def stats_from_lengths(input_tokens: Sequence[int] | np.ndarray, output_tokens: Sequence[int] | np.ndarray,
                       rate_rps: float, description: str = "") -> WorkloadStats:
    """WorkloadStats from per-request prompt lengths i and output lengths o at `rate_rps`.

        L_in = mean(i)     Q_in = mean(i^2) / mean(i)     L_dec = mean(o - 1)
        ctx  = sum((i + o/2)(o - 1)) / sum(o - 1)   (mean context of a decode-batch member)
        kv   = sum((i + o)(o - 1)) / sum(o - 1)     (mean KV a member reserves: prompt + output)

    ctx and kv weight each request by its o - 1 decode steps, the time it spends in the
    batch. When no request decodes (all o <= 1), they fall back to plain means.
    """
    i = np.asarray(input_tokens, dtype=np.float64)
    o = np.asarray(output_tokens, dtype=np.float64)
    if len(i) != len(o):
        raise PlanError(f"{len(i)} prompt lengths but {len(o)} output lengths")
    if len(i) == 0:
        raise PlanError("the workload has no requests to plan for")
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise PlanError(f"the workload's arrival rate must be a positive number, got {rate_rps!r}")
    steps = np.maximum(o - 1.0, 0.0)
    weight = float(steps.sum())
    if weight > 0:
        ctx = float(((i + o / 2.0) * steps).sum() / weight)
        kv = float(((i + o) * steps).sum() / weight)
    else:
        ctx, kv = float(i.mean()), float((i + o).mean())
    mean_in = float(i.mean())
    return WorkloadStats(
        requests=len(i), rate_rps=float(rate_rps), mean_input_tokens=mean_in,
        p90_input_tokens=float(np.percentile(i, 90)), mean_output_tokens=float(o.mean()),
        p90_output_tokens=float(np.percentile(o, 90)),
        input_pair_tokens=float((i * i).mean() / mean_in) if mean_in > 0 else 0.0,
        decode_steps=float(steps.mean()), decode_context_tokens=ctx, decode_kv_tokens=kv,
        description=description)


def characterize(workload) -> WorkloadStats:
    """WorkloadStats of a `simulator.workload.Workload`: its rate and its requests' lengths."""
    rate = workload.rate_rps
    if rate is None:
        raise PlanError(f"{workload.description}: no arrival rate (a single request, or zero time span); "
                        "give --rate")
    inputs, outputs = [], []
    for chunk in workload.chunks():
        inputs.append(chunk.input_tokens)
        outputs.append(chunk.output_tokens)
    return stats_from_lengths(np.concatenate(inputs), np.concatenate(outputs), rate, workload.description)


# ---------------------------------------------------------------------------
# The menu


@dataclass(frozen=True, slots=True)
class MenuOption:
    """One instance shape the planner may buy: `chips` x `device` holding `model`, in any of `roles`.

    `price_usd_per_hour` is per instance (the device's price x chips unless the menu
    overrides it); `where` locates the option in the menu file for messages.
    """

    device: DeviceSpec
    model: ModelSpec
    model_ref: str  # what the cluster YAML's `model:` key gets (built-in name or spec path)
    quantization: str | None
    chips: int
    roles: tuple[Role, ...]
    max_instances: int
    price_usd_per_hour: float
    price_overridden: bool
    link_gbps: float
    memory_utilization: float
    max_batch: int
    max_batch_tokens: int
    where: str

    @property
    def label(self) -> str:
        return f"{self.device.name}x{self.chips}/{self.model.name}"


@dataclass(frozen=True, slots=True)
class Excluded:
    """An option (or one of its roles) the planner cannot use, and why."""

    label: str
    role: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Menu:
    name: str
    source: str
    options: tuple[MenuOption, ...]
    excluded: tuple[Excluded, ...]  # device x model pairs that do not fit
    models: tuple[ModelSpec, ...]  # every model the menu names, for the quality-floor message


_DEVICE_KEYS = {"device", "price_usd_per_chip_hour", "roles", "max_instances", "chips_per_instance", "link_gbps",
                "memory_utilization", "max_batch", "max_batch_tokens", "models"}
_MODEL_KEYS = {"model", "quantization"}
_OPTION_KEYS = (_DEVICE_KEYS - {"models"}) | _MODEL_KEYS | {"price_usd_per_hour"}
_DEFAULT_KEYS = set(_DEFAULTS)
_MENU_KEYS = {"name", "description", "defaults", "devices", "models", "options"}


def _fail(source: str, key: str, reason: str) -> PlanError:
    return PlanError(f"{source}: key '{key}': {reason}")


def _check_keys(source: str, where: str, raw: dict, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise _fail(source, f"{where}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _number(source: str, key: str, value: Any, *, integer: bool = False, allow_zero: bool = False,
            upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(source, key, f"expected a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise _fail(source, key, f"expected an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise _fail(source, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if upper is not None and value > upper:
        raise _fail(source, key, f"must be <= {upper:g}, got {value!r}")
    return int(value) if integer else float(value)


def _roles(source: str, key: str, value: Any) -> tuple[Role, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise _fail(source, key, f"expected a role or a non-empty list of roles (both, prefill, decode), got {value!r}")
    roles: list[Role] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _fail(source, f"{key}[{i}]", f"expected a role name, got {item!r}")
        try:
            role = Role.parse(item)
        except ValueError as exc:
            raise _fail(source, f"{key}[{i}]", str(exc)) from None
        if role not in roles:
            roles.append(role)
    return tuple(roles)


def _chips_choice(source: str, key: str, value: Any) -> tuple[int | None, ...]:
    """'auto' -> (None,); an integer -> (n,); a list of integers or 'auto' -> each."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(source, key, "expected 'auto', an integer or a non-empty list of them")
    out: list[int | None] = []
    for i, item in enumerate(items):
        sub = f"{key}[{i}]" if isinstance(value, list) else key
        if item == "auto":
            out.append(None)
        else:
            if isinstance(item, str):
                raise _fail(source, sub, f"expected 'auto' or a positive integer, got {item!r}")
            out.append(_number(source, sub, item, integer=True))
    return tuple(dict.fromkeys(out))


def _settings(source: str, where: str, raw: dict, base: dict) -> dict:
    """Option settings from one mapping (defaults, a device, an option) layered on `base`."""
    out = dict(base)
    if "roles" in raw:
        out["roles"] = _roles(source, f"{where}roles", raw["roles"])
    if "chips_per_instance" in raw:
        out["chips_per_instance"] = _chips_choice(source, f"{where}chips_per_instance", raw["chips_per_instance"])
    if "max_instances" in raw:
        out["max_instances"] = _number(source, f"{where}max_instances", raw["max_instances"], integer=True,
                                       allow_zero=True)
    for key in ("max_batch", "max_batch_tokens"):
        if key in raw:
            out[key] = _number(source, f"{where}{key}", raw[key], integer=True)
    if "link_gbps" in raw:
        out["link_gbps"] = _number(source, f"{where}link_gbps", raw["link_gbps"])
    if "memory_utilization" in raw:
        out["memory_utilization"] = _number(source, f"{where}memory_utilization", raw["memory_utilization"],
                                            upper=1.0)
    if raw.get("price_usd_per_chip_hour") is not None:
        out["price_usd_per_chip_hour"] = _number(source, f"{where}price_usd_per_chip_hour",
                                                 raw["price_usd_per_chip_hour"], allow_zero=True)
    if raw.get("price_usd_per_hour") is not None:
        out["price_usd_per_hour"] = _number(source, f"{where}price_usd_per_hour", raw["price_usd_per_hour"],
                                            allow_zero=True)
    return out


def _device(source: str, key: str, value: Any) -> DeviceSpec:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, key, f"expected a device name, got {value!r}")
    try:
        return get_device(value.strip())
    except UnknownDeviceError as exc:
        raise _fail(source, key, str(exc)) from None


def _model(source: str, key: str, raw: Any, menu_dir: Path) -> tuple[ModelSpec, str, str | None]:
    """(spec, reference for the cluster YAML, quantization) from a model entry (name or mapping)."""
    if isinstance(raw, dict):
        _check_keys(source, f"{key}.", raw, _MODEL_KEYS)
        if "model" not in raw:
            raise _fail(source, f"{key}.model", "missing")
        name, quant = raw["model"], raw.get("quantization")
        name_key = f"{key}.model"
    else:
        name, quant, name_key = raw, None, key
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, name_key, f"expected a model name or spec file, got {name!r}")
    ref = name.strip()
    try:
        spec = load_model(ref)
    except UnknownModelError as exc:
        # A spec file may be given relative to the menu file.
        beside = menu_dir / ref
        if not beside.is_file():
            raise _fail(source, name_key, str(exc)) from None
        ref = str(beside)
        try:
            spec = load_model(ref)
        except (UnknownModelError, ModelSpecError) as exc2:
            raise _fail(source, name_key, str(exc2)) from None
    except ModelSpecError as exc:
        raise _fail(source, name_key, str(exc)) from None
    if quant is not None:
        if not isinstance(quant, str) or quant.lower() not in QUANTIZATION_BYTES:
            raise _fail(source, f"{key}.quantization",
                        f"unknown {quant!r}; expected one of {', '.join(QUANTIZATION_BYTES)}")
        quant = quant.lower()
        spec = with_dtype(spec, QUANTIZATION_BYTES[quant])
    return spec, ref, quant


def _expand(source: str, where: str, device: DeviceSpec, model: ModelSpec, ref: str, quant: str | None,
            settings: dict, explicit: bool) -> tuple[list[MenuOption], list[Excluded]]:
    """One MenuOption per chip count of a (device, model) pair; pairs that do not fit are excluded
    (an error when the menu named the pair explicitly)."""
    options: list[MenuOption] = []
    excluded: list[Excluded] = []
    mem_util = settings["memory_utilization"]
    for chips in settings["chips_per_instance"]:
        label = f"{device.name}x{chips}/{model.name}" if chips else f"{device.name}/{model.name}"
        if chips is None:
            # As the cluster builder does: the fewest chips holding the weights plus one full prefill batch.
            chips = chips_needed(device, model, min_kv_tokens=settings["max_batch_tokens"],
                                 memory_utilization=mem_util)
            if chips is None:
                reason = (f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) with "
                          f"{settings['max_batch_tokens']} tokens of KV does not fit in any {device.name} instance "
                          f"(at most {device.max_chips_per_instance} chips)")
                if explicit:
                    raise PlanError(f"{source}: {where}: {reason}")
                excluded.append(Excluded(label, None, reason))
                continue
        try:
            perf = InstancePerf(device, model, chips, memory_utilization=mem_util)
        except ValueError as exc:
            raise _fail(source, f"{where}.chips_per_instance", str(exc)) from None
        if perf.kv_capacity_tokens < settings["max_batch_tokens"]:
            reason = (f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves "
                      f"{max(perf.kv_capacity_tokens, 0):,} tokens of KV in {chips} x {device.name}, fewer than "
                      f"one prefill batch ({settings['max_batch_tokens']:,})")
            if explicit:
                raise PlanError(f"{source}: {where}: {reason}")
            excluded.append(Excluded(f"{device.name}x{chips}/{model.name}", None, reason))
            continue
        if "price_usd_per_hour" in settings:
            price, overridden = settings["price_usd_per_hour"], True
        elif "price_usd_per_chip_hour" in settings:
            price, overridden = settings["price_usd_per_chip_hour"] * chips, True
        else:
            price, overridden = (device.price_usd_per_hour or 0.0) * chips, False
        options.append(MenuOption(
            device=device, model=model, model_ref=ref, quantization=quant, chips=chips, roles=settings["roles"],
            max_instances=settings["max_instances"], price_usd_per_hour=float(price), price_overridden=overridden,
            link_gbps=settings["link_gbps"], memory_utilization=mem_util, max_batch=settings["max_batch"],
            max_batch_tokens=settings["max_batch_tokens"], where=where))
    return options, excluded


def parse_menu(data: Any, source: str = "<menu>", base_dir: str | Path | None = None) -> Menu:
    """A menu from its parsed YAML: every (device, model) pair of `devices` x `models`, plus `options`.

    Schema (see deploy/plan/menu.yaml):
        name, description
        defaults:  roles, max_instances, chips_per_instance, link_gbps, memory_utilization,
                   max_batch, max_batch_tokens
        devices:   list of {device, price_usd_per_chip_hour?, models? (subset of `models`), and any
                   key of defaults}
        models:    list of built-in names / spec files, or {model, quantization}
        options:   explicit (device, model) pairs: {device, model, quantization?, price_usd_per_hour?
                   (per instance), price_usd_per_chip_hour?, and any key of defaults}; an option
                   for a pair also in devices x models replaces it.
    chips_per_instance is 'auto' (the fewest chips that hold the model), an integer or a list of
    both (each a separate option). Owned devices without a price cost 0 per hour unless priced here.
    """
    if not isinstance(data, dict):
        raise PlanError(f"{source}: expected a mapping at the top level")
    _check_keys(source, "", data, _MENU_KEYS)
    menu_dir = Path(base_dir) if base_dir is not None else (Path(source).parent if source != "<menu>" else Path("."))
    defaults_raw = data.get("defaults") or {}
    if not isinstance(defaults_raw, dict):
        raise _fail(source, "defaults", "expected a mapping")
    _check_keys(source, "defaults.", defaults_raw, _DEFAULT_KEYS)
    base = {**_DEFAULTS, "roles": _roles(source, "defaults.roles", _DEFAULTS["roles"]),
            "chips_per_instance": (None,)}
    base = _settings(source, "defaults.", defaults_raw, base)

    models_raw = data.get("models") or []
    if not isinstance(models_raw, list):
        raise _fail(source, "models", "expected a list of models")
    models = [_model(source, f"models[{i}]", raw, menu_dir) for i, raw in enumerate(models_raw)]
    devices_raw = data.get("devices") or []
    if not isinstance(devices_raw, list):
        raise _fail(source, "devices", "expected a list of devices")
    options_raw = data.get("options") or []
    if not isinstance(options_raw, list):
        raise _fail(source, "options", "expected a list of options")
    if devices_raw and not models:
        raise _fail(source, "models", "devices are listed but no models to pair them with")
    if not devices_raw and not options_raw:
        raise _fail(source, "devices", "the menu lists no devices and no options")

    by_key: dict[tuple, MenuOption] = {}
    explicit_at: dict[tuple, str] = {}
    excluded: list[Excluded] = []
    all_models: dict[str, ModelSpec] = {spec.name: spec for spec, _, _ in models}
    for d, raw in enumerate(devices_raw):
        where = f"devices[{d}]"
        if isinstance(raw, str):
            raw = {"device": raw}
        if not isinstance(raw, dict):
            raise _fail(source, where, "expected a device name or a mapping")
        _check_keys(source, f"{where}.", raw, _DEVICE_KEYS)
        if "device" not in raw:
            raise _fail(source, f"{where}.device", "missing")
        device = _device(source, f"{where}.device", raw["device"])
        settings = _settings(source, f"{where}.", raw, base)
        subset = raw.get("models")
        if subset is not None and (not isinstance(subset, list) or not all(isinstance(s, str) for s in subset)):
            raise _fail(source, f"{where}.models", "expected a list of model names from `models`")
        if subset is not None:
            unknown = [s for s in subset if s not in {spec.name for spec, _, _ in models} | {r for _, r, _ in models}]
            if unknown:
                raise _fail(source, f"{where}.models", f"{unknown[0]!r} is not in the menu's models")
        for m, (spec, ref, quant) in enumerate(models):
            if subset is not None and spec.name not in subset and ref not in subset:
                continue
            opts, exc = _expand(source, f"{where} x models[{m}]", device, spec, ref, quant, settings, False)
            excluded.extend(exc)
            for o in opts:
                by_key[(o.device.name, o.chips, o.model.name)] = o
    for k, raw in enumerate(options_raw):
        where = f"options[{k}]"
        if not isinstance(raw, dict):
            raise _fail(source, where, "expected a mapping with device and model")
        _check_keys(source, f"{where}.", raw, _OPTION_KEYS)
        for required in ("device", "model"):
            if required not in raw:
                raise _fail(source, f"{where}.{required}", "missing")
        if "price_usd_per_hour" in raw and "price_usd_per_chip_hour" in raw:
            raise _fail(source, f"{where}.price_usd_per_hour", "give price_usd_per_hour (per instance) or "
                                                                "price_usd_per_chip_hour, not both")
        device = _device(source, f"{where}.device", raw["device"])
        spec, ref, quant = _model(source, where, {"model": raw["model"], **(
            {"quantization": raw["quantization"]} if "quantization" in raw else {})}, menu_dir)
        all_models.setdefault(spec.name, spec)
        settings = _settings(source, f"{where}.", raw, base)
        opts, _ = _expand(source, where, device, spec, ref, quant, settings, True)
        for o in opts:
            key = (o.device.name, o.chips, o.model.name)
            if key in explicit_at:
                raise _fail(source, where, f"{o.label} is already listed as {explicit_at[key]}")
            explicit_at[key] = where
            by_key[key] = o
    name = data.get("name", Path(source).stem if source != "<menu>" else "menu")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "name", f"expected a non-empty string, got {name!r}")
    return Menu(name=name.strip(), source=source, options=tuple(by_key.values()), excluded=tuple(excluded),
                models=tuple(all_models.values()))


def load_menu(path: str | Path) -> Menu:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{path}: menu file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"{path}: not valid YAML: {exc}") from None
    return parse_menu(data, str(path), path.parent)


# ---------------------------------------------------------------------------
# 2. Per-option capacity under the SLOs


@dataclass(frozen=True, slots=True)
class OptionCapacity:
    """What one instance of an option serves in one role, at 100% busy, within the SLOs.

    The solver reads only `name`, `role`, `model`, `requests_per_s`, `price_usd_per_hour`,
    `max_instances`, `capability` and the power terms; the rest documents the operating point
    (and is written into the cluster YAML).

    Power of n instances carrying r requests/s (see `power_w`): every instance draws
    idle_power_w; prefill draws energy_j_per_request per request (its busy time grows with
    the prompts it serves); decode is memory-bound, so a step's dynamic energy grows with its
    duration and an instance draws about decode_power_w whenever it steps, which a loaded
    instance does all the time it is not prefilling:
        power = n (idle + P_d) + r (E_p - P_d s_p)
    with s_p = prefill_s_per_request (the part of a colocated instance's time taken by prefill).
    """

    name: str
    role: Role
    model: str
    capability: float
    requests_per_s: float  # R: requests/s one instance completes in this role when always busy
    price_usd_per_hour: float
    idle_power_w: float
    energy_j_per_request: float  # E_p: dynamic prefill energy per request (0 for decode)
    max_instances: int
    prefill_tokens_per_s: float = 0.0  # C_p at the chosen prefill batch (0 for decode)
    decode_tokens_per_s: float = 0.0  # C_d at the chosen decode batch (0 for prefill)
    prefill_batch_tokens: int = 0  # T*
    prefill_iteration_s: float = 0.0  # t_p(T*)
    decode_batch: int = 0  # B*
    decode_step_s: float = 0.0  # step(B*)
    prefill_share: float = 0.0  # f: share of a busy instance's time spent in prefill
    decode_power_w: float = 0.0  # P_d: dynamic power while stepping the decode batch (0 for prefill)
    prefill_s_per_request: float = 0.0  # s_p: colocated instance seconds of prefill per request
    option: MenuOption | None = field(default=None, compare=False)

    @property
    def power_per_instance_w(self) -> float:
        return self.idle_power_w + self.decode_power_w

    @property
    def power_per_request_j(self) -> float:
        return self.energy_j_per_request - self.decode_power_w * self.prefill_s_per_request

    def power_w(self, instances: float, requests_per_s: float) -> float:
        return instances * self.power_per_instance_w + requests_per_s * self.power_per_request_j

    def as_dict(self) -> dict:
        out = {
            "name": self.name, "role": ROLE_NAMES[self.role], "model": self.model, "capability": self.capability,
            "requests_per_s": self.requests_per_s, "price_usd_per_hour": self.price_usd_per_hour,
            "idle_power_w": self.idle_power_w, "energy_j_per_request": self.energy_j_per_request,
            "max_instances": self.max_instances, "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s, "prefill_batch_tokens": self.prefill_batch_tokens,
            "prefill_iteration_s": self.prefill_iteration_s, "decode_batch": self.decode_batch,
            "decode_step_s": self.decode_step_s, "prefill_share": self.prefill_share,
            "decode_power_w": self.decode_power_w, "prefill_s_per_request": self.prefill_s_per_request,
        }
        if self.option is not None:
            out |= {"device": self.option.device.name, "chips_per_instance": self.option.chips,
                    "quantization": self.option.quantization}
        return out


@dataclass(frozen=True, slots=True)
class _Probe:
    """Single-request figures kept for infeasibility messages."""

    label: str
    roles: tuple[Role, ...]
    prefill_p90_s: float  # one p90 prompt alone
    decode_step1_s: float  # one sequence at the mean decode context


def _capability(model: ModelSpec) -> float:
    # As the cluster snapshot does: a model without a score is not held back by tiers.
    return 1.0 if model.capability is None else float(model.capability)


def _prefill_point(perf: InstancePerf, stats: WorkloadStats, max_tokens: int, ttft_s: float):
    """(T*, t_p(T*), e_p(T*)): the largest prefill iteration within half the TTFT SLO.

    An iteration of T prompt tokens made of typical prompts has seqs = max(1, T / L_in)
    sequences and pairs = T (Q_in + 1) / 2 causal query-key pairs; (t_p, e_p) =
    perf.prefill(T, pairs, seqs). A prompt that arrives while an iteration runs waits for
    it and is served in the next, so TTFT <= 2 t_p(T) needs t_p(T) <= TTFT / 2. t_p grows
    with T, so T* is found by bisection over [1, max_batch_tokens]. None if even T = 1 is too slow.
    """
    budget = ttft_s / 2.0

    def run(t: int) -> tuple[float, float]:
        seqs = max(1, int(round(t / stats.mean_input_tokens))) if stats.mean_input_tokens > 0 else 1
        return perf.prefill(t, t * (stats.input_pair_tokens + 1.0) / 2.0, min(seqs, t))

    if run(1)[0] > budget:
        return None
    lo, hi = 1, max_tokens
    if run(hi)[0] <= budget:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid)[0] <= budget:
            lo = mid
        else:
            hi = mid
    t, e = run(lo)
    return lo, t, e


def _decode_limit(perf: InstancePerf, stats: WorkloadStats, max_batch: int) -> int:
    """Largest batch whose members' KV reservations fit: floor(kv_capacity / kv), capped at max_batch."""
    return min(max_batch, int(perf.kv_capacity_tokens // max(stats.decode_kv_tokens, 1.0)))


def _step(perf: InstancePerf, stats: WorkloadStats, batch: int) -> float:
    return perf.decode_step_s(batch, batch * stats.decode_context_tokens)


def _largest_batch(perf: InstancePerf, stats: WorkloadStats, limit: int, step_budget_s: float) -> int:
    """Largest B <= limit with step(B) = perf.decode_step_s(B, B * ctx) <= budget (0 if none).
    step grows with B (more KV to read, more FLOPs), so bisection."""
    if limit < 1 or _step(perf, stats, 1) > step_budget_s:
        return 0
    lo, hi = 1, limit
    if _step(perf, stats, hi) <= step_budget_s:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _step(perf, stats, mid) <= step_budget_s:
            lo = mid
        else:
            hi = mid
    return lo


def _option_capacities(option: MenuOption, stats: WorkloadStats, ttft_s: float, tpot_s: float
                       ) -> tuple[list[OptionCapacity], list[Excluded], _Probe]:
    """Per-role capacity of one option. The formulas, per instance:

    Prefill (roles prefill, both): T*, t_p, e_p from _prefill_point;
        C_p = T* / t_p(T*) prompt tokens/s,  E_p = L_in e_p(T*) / T* joules per request.
      A prefill-only instance also ships each prompt's KV over its link, one hand-over at a
      time: x_kv = setup + L_in * kv_bytes_per_token / link_bytes_per_s per request, so
        R_prefill = min(C_p / L_in, 1 / x_kv).
      The option is unusable for prefill when one p90 prompt alone takes more than TTFT / 2.

    Decode (roles decode, both): step(B) = decode_step_s(B, B ctx);
        B* = largest B <= min(max_batch, kv_capacity / kv) with step(B) <= TPOT,
        C_d = B* / step(B*) tokens/s,  R_decode = C_d / L_dec.
      (A decode instance below capacity runs a smaller batch with shorter steps: by Little's
      law its batch N satisfies N / step(N) = its decode tokens/s, and N / step(N) grows with
      N, so C_d is the most it can carry within the TPOT SLO.)

    Colocated (role both): a request is prefilled and decoded on the same instance, so a busy
    instance spends its time in the workload's own mix:
        tau(B) = L_in / C_p + L_dec / C_d(B) seconds per request,  R_both = 1 / tau(B),
        prefill share f(B) = (L_in / C_p) / tau(B).
      Scheduling is prefill-first: every prefill iteration stalls the decode batch, so decode
      steps are stretched by 1 / (1 - f) and TPOT ~ step(B) / (1 - f(B)). B* is the batch
      that maximizes R_both subject to step(B) / (1 - f(B)) <= TPOT and the KV limit.

    Cost: price_usd_per_hour per instance, busy or idle. Power: idle_power_w always; prefill
    E_p = L_in e_p(T*) / T* joules per request; decode steps draw P_d = e_step(B*) / step(B*)
    watts (e_step: the dynamic energy of one step, perf.decode(B*, B* ctx, 1)) whenever the
    instance decodes (memory-bound steps draw about the same power at any
    batch, so this holds below B* too), i.e. all the time a loaded decode instance is not
    prefilling: n instances carrying r requests/s draw n (idle + P_d) + r (E_p - P_d s_p) with
    s_p = L_in / C_p for colocated instances (0 otherwise).
    """
    perf = InstancePerf(option.device, option.model, option.chips, price_usd_per_hour=option.price_usd_per_hour,
                        memory_utilization=option.memory_utilization)
    label = option.label
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    p90_in = max(1, int(math.ceil(stats.p90_input_tokens)))
    prefill_p90_s = perf.prefill(p90_in, p90_in * (p90_in + 1) / 2.0, 1)[0]
    step1 = _step(perf, stats, 1)
    probe = _Probe(label, option.roles, prefill_p90_s, step1)
    common = dict(model=option.model.name, capability=_capability(option.model),
                  price_usd_per_hour=option.price_usd_per_hour, idle_power_w=perf.idle_power_w,
                  max_instances=option.max_instances, option=option)

    prefill_reason = None
    point = None
    if prefill_p90_s > ttft_s / 2.0:
        prefill_reason = (f"prefilling one p90 prompt ({p90_in:,} tokens) takes {prefill_p90_s * 1e3:,.1f} ms, "
                          f"over half the TTFT SLO ({ttft_s / 2.0 * 1e3:,.1f} ms)")
    else:
        point = _prefill_point(perf, stats, option.max_batch_tokens, ttft_s)
        if point is None:  # unreachable when the p90 prompt passes; kept for safety
            prefill_reason = f"no prefill iteration fits in half the TTFT SLO ({ttft_s / 2.0 * 1e3:,.1f} ms)"
    kv_limit = _decode_limit(perf, stats, option.max_batch)
    decode_reason = None
    if kv_limit < 1:
        decode_reason = (f"KV memory ({perf.kv_capacity_tokens:,} tokens) holds no decode-batch member "
                         f"({stats.decode_kv_tokens:,.0f} tokens each on average)")
    elif step1 > tpot_s:
        decode_reason = (f"one decode step takes {step1 * 1e3:.2f} ms even at batch 1, over the TPOT SLO "
                         f"({tpot_s * 1e3:.2f} ms)")
    l_in, l_dec = stats.mean_input_tokens, stats.decode_steps

    for role in option.roles:
        name = f"{option.device.name}-x{option.chips}-{option.model.name}-{ROLE_NAMES[role]}"
        if role in (Role.PREFILL, Role.BOTH) and prefill_reason:
            excluded.append(Excluded(label, ROLE_NAMES[role], prefill_reason))
            continue
        if role in (Role.DECODE, Role.BOTH) and decode_reason:
            excluded.append(Excluded(label, ROLE_NAMES[role], decode_reason))
            continue
        if role == Role.PREFILL:
            t_star, t_p, e_p = point
            c_p = t_star / t_p
            link = option.link_gbps * 1e9 / 8.0
            handover_s = perf.kv_transfer_s(int(round(l_in)), link)
            rps = min(c_p / l_in, 1.0 / handover_s) if l_in > 0 else 1.0 / handover_s
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps, energy_j_per_request=l_in * e_p / t_star,
                prefill_tokens_per_s=c_p, prefill_batch_tokens=t_star, prefill_iteration_s=t_p,
                prefill_share=1.0, **common))
        elif role == Role.DECODE:
            b = _largest_batch(perf, stats, kv_limit, tpot_s)
            step = _step(perf, stats, b)
            e_step = perf.decode(b, b * stats.decode_context_tokens, 1)[1]
            c_d = b / step
            rps = c_d / l_dec if l_dec > 0 else _UNBOUNDED_RPS
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps, energy_j_per_request=0.0,
                decode_tokens_per_s=c_d, decode_batch=b, decode_step_s=step, decode_power_w=e_step / step,
                **common))
        else:
            t_star, t_p, e_p = point
            c_p = t_star / t_p
            prefill_s = l_in / c_p  # seconds of prefill per request
            best = None
            b_max = _largest_batch(perf, stats, kv_limit, tpot_s)
            for b in range(1, b_max + 1):
                step = _step(perf, stats, b)
                decode_s = l_dec * step / b
                tau = prefill_s + decode_s
                f = prefill_s / tau if tau > 0 else 0.0
                if f >= 1.0 or step / (1.0 - f) > tpot_s:
                    continue
                if best is None or 1.0 / tau > best[0]:
                    best = (1.0 / tau, b, step, f)
            if best is None:
                step = _step(perf, stats, b_max)
                f = prefill_s / (prefill_s + l_dec * step / b_max)
                excluded.append(Excluded(label, "both", (
                    f"colocated, prefill takes {f:.0%} of a busy instance's time (at batch {b_max}) and stalls "
                    f"decode, stretching the decode step past the TPOT SLO ({tpot_s * 1e3:.1f} ms) at every batch")))
                continue
            rps, b, step, f = best
            e_step = perf.decode(b, b * stats.decode_context_tokens, 1)[1]
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps,
                energy_j_per_request=l_in * e_p / t_star, prefill_tokens_per_s=c_p, decode_tokens_per_s=b / step,
                prefill_batch_tokens=t_star, prefill_iteration_s=t_p, decode_batch=b, decode_step_s=step,
                prefill_share=f, decode_power_w=e_step / step, prefill_s_per_request=prefill_s, **common))
    return caps, excluded, probe


def derive_capacities(options: Iterable[MenuOption], stats: WorkloadStats, ttft_s: float, tpot_s: float
                      ) -> tuple[list[OptionCapacity], list[Excluded], list[_Probe]]:
    """Capacities of every option in every allowed role (see _option_capacities for the formulas),
    the (option, role) pairs that cannot meet the SLOs with the reason, and single-request probes."""
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    probes: list[_Probe] = []
    for option in options:
        c, e, p = _option_capacities(option, stats, ttft_s, tpot_s)
        caps.extend(c)
        excluded.extend(e)
        probes.append(p)
    return caps, excluded, probes


# ---------------------------------------------------------------------------
# 3. The MILP


@dataclass(frozen=True, slots=True)
class PlannedPool:
    capacity: OptionCapacity
    instances: int
    requests_per_s: float  # r: planned flow through the pool

    @property
    def usd_per_hour(self) -> float:
        return self.instances * self.capacity.price_usd_per_hour

    @property
    def power_w(self) -> float:
        return self.capacity.power_w(self.instances, self.requests_per_s)

    @property
    def utilization(self) -> float:
        cap = self.instances * self.capacity.requests_per_s
        return self.requests_per_s / cap if cap > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    pools: tuple[PlannedPool, ...]
    rate_rps: float
    objective: str
    energy_weight: float
    headroom: float
    objective_value: float  # cost: $/h; energy: W; mix: (1 - w) cost / cost* + w energy / energy*
    usd_per_hour: float
    power_w: float

    @property
    def instances(self) -> int:
        return sum(p.instances for p in self.pools)

    @property
    def chips(self) -> int:
        return sum(p.instances * (p.capacity.option.chips if p.capacity.option else 1) for p in self.pools)

    def as_dict(self) -> dict:
        rate = self.rate_rps
        pools = []
        for p in self.pools:
            c = p.capacity
            pools.append({
                **c.as_dict(), "instances": p.instances, "planned_requests_per_s": p.requests_per_s,
                "traffic_share": p.requests_per_s / rate if rate > 0 else 0.0,
                "planned_utilization": p.utilization, "usd_per_hour": p.usd_per_hour, "power_w": p.power_w,
            })
        return {
            "objective": self.objective, "energy_weight": self.energy_weight, "headroom": self.headroom,
            "objective_value": self.objective_value, "usd_per_hour": self.usd_per_hour, "power_w": self.power_w,
            "energy_j_per_request": self.power_w / rate if rate > 0 else None,
            "instances": self.instances, "chips": self.chips, "pools": pools,
        }


_banner_lock = threading.Lock()
_banner_done = False


def _new_highs():
    """A silent highspy.Highs. HiGHS prints a banner from C++ to file descriptor 1 the first time
    one is built in a process, which would corrupt `--json -` output; that first construction
    runs with fd 1 pointed at /dev/null."""
    global _banner_done
    import highspy

    with _banner_lock:
        if not _banner_done:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
            _banner_done = True
        else:
            h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    # The problems are tiny: solve to proven optimality, deterministically.
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    return h


class _Milp:
    """The planning MILP over options o (each an OptionCapacity):

        n_o in {0, ..., N_o}  integer instances      r_o >= 0  requests/s through o
        u_o in {0, 1}         o is in the cluster at all (n_o <= N_o u_o)
        r_o <= h R_o n_o                                   (each instance at most h busy)
        sum_{o: role in {both, prefill}} r_o = lambda      (every request is prefilled once)
        sum_{o in m, prefill} r_o = sum_{o in m, decode} r_o   for each model m
                                                           (KV is handed to a decode pool of the same model)
        cost   = sum p_o n_o                         $/h
        energy = sum (W_o n_o + J_o r_o)             W: W_o = idle + P_d, J_o = E_p - P_d s_p
                                                     (see OptionCapacity)

    It minimizes cost, energy, or (1 - w) cost / cost* + w energy / energy* with cost* and
    energy* the single-objective optima, lexicographically: ties on that objective are broken by
    the other one (energy for cost, cost for energy and mix), then by the fewest pools (sum u_o),
    each stage a solve with the earlier objectives bounded at their optima. Without the later
    stages equal-cost plans come out as arbitrary mixtures of interchangeable pools.
    """

    def __init__(self, caps: Sequence[OptionCapacity], rate_rps: float, headroom: float):
        self.caps = list(caps)
        self.rate = rate_rps
        self.headroom = headroom
        self.k = len(self.caps)

    # Column layout: n_0..n_{k-1}, r_0..r_{k-1}, u_0..u_{k-1}.
    def cost_vec(self) -> np.ndarray:
        return np.concatenate([[c.price_usd_per_hour for c in self.caps], np.zeros(2 * self.k)])

    def energy_vec(self) -> np.ndarray:
        return np.concatenate([[c.power_per_instance_w for c in self.caps],
                               [c.power_per_request_j for c in self.caps], np.zeros(self.k)])

    def pools_vec(self) -> np.ndarray:
        return np.concatenate([np.zeros(2 * self.k), np.ones(self.k)])

    def _build(self, objective: np.ndarray, bounds: Sequence[tuple[np.ndarray, float]] = (),
               fixed_counts: Sequence[int] | None = None):
        """The model with `objective` (3k coefficients) and rows `coeffs . x <= upper` for `bounds`.
        With fixed_counts, n is fixed there, the demand row becomes <= lambda, and the objective
        is ignored in favour of maximizing the requests served (an LP)."""
        import highspy

        h = _new_highs()
        inf = highspy.kHighsInf
        k = self.k
        integer = highspy.HighsVarType.kInteger
        maximize_flow = fixed_counts is not None
        prefill_side = [i for i, c in enumerate(self.caps) if c.role in (Role.BOTH, Role.PREFILL)]
        for i, c in enumerate(self.caps):
            n_max = float(c.max_instances if fixed_counts is None else fixed_counts[i])
            h.addVar(n_max if maximize_flow else 0.0, n_max)
            if not maximize_flow:
                h.changeColIntegrality(i, integer)
        for i in range(k):
            h.addVar(0.0, inf)
        for i in range(k):
            h.addVar(0.0, 1.0)
            if not maximize_flow:
                h.changeColIntegrality(2 * k + i, integer)
        for j in range(3 * k):
            if maximize_flow:
                h.changeColCost(j, -1.0 if j >= k and j - k in prefill_side else 0.0)
            else:
                h.changeColCost(j, float(objective[j]))
        idx = lambda cols: np.array(cols, dtype=np.int32)  # noqa: E731
        for i, c in enumerate(self.caps):
            h.addRow(-inf, 0.0, 2, idx([k + i, i]), np.array([1.0, -self.headroom * c.requests_per_s]))
            h.addRow(-inf, 0.0, 2, idx([i, 2 * k + i]), np.array([1.0, -float(c.max_instances)]))
        h.addRow(-inf if maximize_flow else self.rate, self.rate, len(prefill_side),
                 idx([k + i for i in prefill_side]), np.ones(len(prefill_side)))
        for model in sorted({c.model for c in self.caps}):
            cols = [k + i for i, c in enumerate(self.caps) if c.model == model and c.role != Role.BOTH]
            vals = [1.0 if self.caps[j - k].role == Role.PREFILL else -1.0 for j in cols]
            if cols:
                h.addRow(0.0, 0.0, len(cols), idx(cols), np.array(vals))
        for coeffs, upper in bounds:
            nz = np.flatnonzero(coeffs)
            h.addRow(-inf, float(upper), len(nz), nz.astype(np.int32), coeffs[nz].astype(np.float64))
        return h

    def _run(self, h) -> tuple[np.ndarray, float] | None:
        import highspy

        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
                return None
            raise PlanError(f"the solver stopped without an optimal plan: {h.modelStatusToString(status)}")
        return np.array(h.getSolution().col_value), float(h.getInfo().objective_function_value)

    def minimize(self, *objectives: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Lexicographic minimum: (solution, value of the first objective); None when infeasible."""
        bounds: list[tuple[np.ndarray, float]] = []
        x = None
        for objective in objectives:
            result = self._run(self._build(objective, bounds))
            if result is None:
                if x is None:
                    return None
                break  # a later stage lost to rounding; keep the earlier optimum
            x, value = result
            # Later stages keep this objective at its optimum, up to the solver's rounding.
            bounds.append((objective, value + 1e-7 * max(1.0, abs(value))))
        return x, float(objectives[0] @ x)

    def max_flow(self) -> float:
        """Requests/s the menu serves with every option at its max instances (an LP)."""
        result = self._run(self._build(np.zeros(3 * self.k), fixed_counts=[c.max_instances for c in self.caps]))
        return 0.0 if result is None else -result[1]


def solve_plan(caps: Sequence[OptionCapacity], rate_rps: float, *, objective: str = "cost",
               energy_weight: float = 0.5, headroom: float = 0.7) -> Plan:
    """The optimal plan over `caps` (see _Milp for the model). Raises PlanError when infeasible."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    _check_unit("headroom", headroom, zero_ok=False)
    _check_unit("energy weight", energy_weight, zero_ok=True)
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise PlanError(f"the arrival rate must be a positive number, got {rate_rps!r}")
    caps = list(caps)
    if not caps:
        raise PlanError("no usable menu option to plan with")
    _check_structure(caps)
    milp = _Milp(caps, rate_rps, headroom)
    cost, energy, pools_used = milp.cost_vec(), milp.energy_vec(), milp.pools_vec()
    if objective == "cost":
        result = milp.minimize(cost, energy, pools_used)
    elif objective == "energy":
        result = milp.minimize(energy, cost, pools_used)
    else:
        by_cost = milp.minimize(cost)
        by_energy = milp.minimize(energy)
        result = None
        if by_cost is not None and by_energy is not None:
            # Each objective over its own optimum, so the weight is a share and not a choice of units.
            mix = ((1.0 - energy_weight) * cost / max(by_cost[1], 1e-9)
                   + energy_weight * energy / max(by_energy[1], 1e-9))
            result = milp.minimize(mix, cost, pools_used)
    if result is None:
        raise PlanError(_capacity_message(milp, caps, rate_rps, headroom))
    x, value = result
    k = len(caps)
    counts = np.rint(x[:k]).astype(int)
    flows = np.maximum(x[k:2 * k], 0.0)
    pools = tuple(PlannedPool(c, int(counts[i]), float(flows[i])) for i, c in enumerate(caps) if counts[i] > 0)
    solution = np.concatenate([counts, flows, (counts > 0).astype(float)])
    return Plan(pools=pools, rate_rps=rate_rps, objective=objective, energy_weight=energy_weight,
                headroom=headroom, objective_value=value, usd_per_hour=float(cost @ solution),
                power_w=float(energy @ solution))


def _check_unit(name: str, value: Any, zero_ok: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > 1 or value < 0 or (value == 0 and not zero_ok):
        raise PlanError(f"{name} must be a number in {'[0, 1]' if zero_ok else '(0, 1]'}, got {value!r}")


def _check_structure(caps: Sequence[OptionCapacity]) -> None:
    """Some request path must exist: a colocated option, or a prefill and a decode option on one model."""
    if any(c.role == Role.BOTH for c in caps):
        return
    prefill = {c.model for c in caps if c.role == Role.PREFILL}
    decode = {c.model for c in caps if c.role == Role.DECODE}
    if prefill & decode:
        return
    raise PlanError(
        "no option can serve a request end to end: none may run colocated (role both), and no model has both a "
        f"prefill option ({', '.join(sorted(prefill)) or 'none'}) and a decode option "
        f"({', '.join(sorted(decode)) or 'none'}); disaggregated prefill and decode must share a model")


def _capacity_message(milp: _Milp, caps: Sequence[OptionCapacity], rate: float, headroom: float) -> str:
    most = milp.max_flow()
    prefill = sum(headroom * c.requests_per_s * c.max_instances for c in caps if c.role != Role.DECODE)
    decode = sum(headroom * c.requests_per_s * c.max_instances for c in caps if c.role != Role.PREFILL)
    return (f"no feasible cluster under max_instances: with every option at its max_instances the menu serves at "
            f"most {most:,.1f} req/s at headroom {headroom:g} (prefill-capable options {prefill:,.1f} req/s, "
            f"decode-capable {decode:,.1f} req/s), but the workload arrives at {rate:,.1f} req/s; raise "
            "max_instances, add options, or raise --headroom")


# ---------------------------------------------------------------------------
# Putting it together


def _slo_message(caps: list[OptionCapacity], excluded: list[Excluded], probes: list[_Probe],
                 stats: WorkloadStats, ttft_s: float, tpot_s: float) -> str | None:
    """When options may do a stage but none can within the SLOs, say which SLO rules them all out.
    (A menu that allows no role for a stage at all is answered by _check_structure.)"""
    has_prefill = any(c.role != Role.DECODE for c in caps)
    has_decode = any(c.role != Role.PREFILL for c in caps)
    decoders = [p for p in probes if Role.DECODE in p.roles or Role.BOTH in p.roles]
    prefillers = [p for p in probes if Role.PREFILL in p.roles or Role.BOTH in p.roles]
    if not decoders or not prefillers:
        return None
    if not has_decode:
        fastest = min(decoders, key=lambda p: p.decode_step1_s)
        if fastest.decode_step1_s > tpot_s:
            return (f"TPOT SLO {tpot_s * 1e3:g} ms is below the fastest decode step of any option "
                    f"({fastest.label}: {fastest.decode_step1_s * 1e3:.1f} ms at batch 1, "
                    f"{stats.decode_context_tokens:,.0f} tokens of context)")
    if not has_prefill:
        fastest = min(prefillers, key=lambda p: p.prefill_p90_s)
        if fastest.prefill_p90_s > ttft_s / 2.0:
            return (f"TTFT SLO {ttft_s:g} s is too tight: a p90 prompt ({stats.p90_input_tokens:,.0f} tokens) takes "
                    f"{fastest.prefill_p90_s * 1e3:,.1f} ms to prefill on the fastest option ({fastest.label}), and "
                    "the planner allows half the TTFT SLO per prefill iteration (one waited for, one served)")
    if not has_prefill or not has_decode:
        stage = "decode" if not has_decode else "prefill"
        reasons = "; ".join(f"{e.label} ({e.role}): {e.reason}" for e in excluded if e.role is not None)
        return f"no option can {stage} within the SLOs: {_clip(reasons)}"
    return None


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_cluster(stats: WorkloadStats, menu: Menu, *, ttft_slo_s: float, tpot_slo_s: float,
                 quality_floor: float | None = None, objective: str = "cost", energy_weight: float = 0.5,
                 headroom: float = 0.7) -> tuple[Plan, list[OptionCapacity], list[Excluded]]:
    """Solve the planning problem: (plan, the usable option capacities, what was excluded and why).

    The quality floor is a filter: only options whose model's capability is at least the floor
    may serve (all traffic then meets it; tiered shares of traffic are not modelled).
    Raises PlanError naming the failing constraint: the quality floor, an SLO no option meets,
    no end-to-end path (disaggregated prefill and decode must share a model), or no feasible
    cluster within the menu's max_instances.
    """
    for name, value in (("TTFT SLO", ttft_slo_s), ("TPOT SLO", tpot_slo_s)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise PlanError(f"{name} must be a positive number of seconds, got {value!r}")
    options = list(menu.options)
    excluded = list(menu.excluded)
    if quality_floor is not None:
        _check_unit("quality floor", quality_floor, zero_ok=True)
        best = max(menu.models, key=_capability, default=None)
        if best is None or _capability(best) < quality_floor:
            best_text = f"best: {best.name} {_capability(best):.3g}" if best is not None else "the menu has no models"
            raise PlanError(f"quality floor {quality_floor:g} exceeds every menu model's capability ({best_text})")
        excluded += [Excluded(o.label, None, f"capability {_capability(o.model):.3g} is below the quality floor "
                                             f"{quality_floor:g}")
                     for o in options if _capability(o.model) < quality_floor]
        options = [o for o in options if _capability(o.model) >= quality_floor]
        if not options:
            capable = sorted(m.name for m in menu.models if _capability(m) >= quality_floor)
            reasons = "; ".join(f"{e.label}: {e.reason}" for e in menu.excluded if e.label.split("/")[-1] in capable)
            raise PlanError(f"quality floor {quality_floor:g}: the models that meet it ({', '.join(capable)}) fit no "
                            f"menu device ({_clip(reasons) or 'no option lists them'})")
    if not options:
        reasons = "; ".join(f"{e.label}: {e.reason}" for e in excluded)
        raise PlanError(f"no menu option can hold its model ({_clip(reasons) or 'the menu lists none'})")
    caps, derived_excluded, probes = derive_capacities(options, stats, ttft_slo_s, tpot_slo_s)
    excluded += derived_excluded
    message = _slo_message(caps, derived_excluded, probes, stats, ttft_slo_s, tpot_slo_s)
    if message:
        if quality_floor is not None:
            message += f" (among options meeting the quality floor {quality_floor:g})"
        raise PlanError(message)
    plan = solve_plan(caps, stats.rate_rps, objective=objective, energy_weight=energy_weight, headroom=headroom)
    return plan, caps, excluded


def cluster_document(plan: Plan, *, name: str, ttft_slo_s: float, tpot_slo_s: float,
                     policy: str = "slo-aware") -> dict:
    """The plan as a cluster YAML document (what scheduler.config.parse_cluster reads).

    Each pool carries the operating point the capacity was derived at: max_batch = B*
    (decode and colocated) and max_batch_tokens = T* (prefill and colocated)."""
    pools = []
    for p in plan.pools:
        c, o = p.capacity, p.capacity.option
        if o is None:
            raise PlanError(f"pool {c.name}: no menu option behind it to write as a cluster pool")
        pool: dict[str, Any] = {
            "name": c.name, "device": o.device.name, "instances": p.instances, "chips_per_instance": o.chips,
            "model": o.model_ref, "role": ROLE_NAMES[c.role],
        }
        if o.quantization:
            pool["quantization"] = o.quantization
        pool["link_gbps"] = o.link_gbps
        if o.price_overridden:
            pool["price_usd_per_hour"] = o.price_usd_per_hour
        pool["max_batch"] = c.decode_batch if c.decode_batch else o.max_batch
        pool["max_batch_tokens"] = c.prefill_batch_tokens if c.prefill_batch_tokens else o.max_batch_tokens
        pool["memory_utilization"] = o.memory_utilization
        pools.append(pool)
    return {"name": name, "slo": {"ttft_s": float(ttft_slo_s), "tpot_s": float(tpot_slo_s)}, "policy": policy,
            "pools": pools}


def cluster_yaml(document: dict, header: str = "") -> str:
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    lines = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return lines + body


def verify_plan(document: dict, workload, *, seed: int = 0, policy: str = "slo-aware") -> dict:
    """Simulate the planned cluster on `workload` with `policy`; the simulator's summary dict."""
    from scheduler.cluster import Cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation

    config = parse_cluster(document, source=f"<plan {document.get('name', '')}>")
    cluster = Cluster(config)
    result = Simulation(cluster, build_policy(policy, config), workload, seed=seed).run()
    return summarize(result)


@dataclass(frozen=True, slots=True)
class Round:
    headroom: float
    plan: Plan
    document: dict
    verification: dict | None  # the simulator summary; None when not verified
    note: str = ""  # why no further round followed, when a re-plan was impossible

    @property
    def attainment(self) -> float | None:
        return None if self.verification is None else float(self.verification["slo_attainment"])


def _verification_digest(summary: dict) -> dict:
    makespan = summary["makespan_s"]
    return {
        "slo_attainment": summary["slo_attainment"], "requests": summary["requests"],
        "completed": summary["completed"], "rejected": summary["rejected"],
        "ttft_p99_s": summary["ttft_s"]["p99"], "tpot_p99_s": summary["tpot_s"]["p99"],
        "cost_usd": summary["cost_usd"], "energy_j": summary["energy_j"], "makespan_s": makespan,
        "usd_per_hour": summary["cost_usd"] / makespan * 3600.0 if makespan > 0 else None,
        "power_w": summary["energy_j"] / makespan if makespan > 0 else None,
        "energy_per_output_token_j": summary["energy_per_output_token_j"],
        "pools": {name: {"utilization": p["utilization"], "share": p["share"]} for name, p in summary["pools"].items()},
    }


def plan_and_verify(stats: WorkloadStats, menu: Menu, workload=None, *, ttft_slo_s: float, tpot_slo_s: float,
                    quality_floor: float | None = None, objective: str = "cost", energy_weight: float = 0.5,
                    headroom: float = 0.7, target_attainment: float = 0.9, max_rounds: int = 3, seed: int = 0,
                    name: str | None = None, on_round=None,
                    verify_all=None) -> tuple[list[Round], list[OptionCapacity], list[Excluded]]:
    """Plan; with a workload, verify by simulation and, while SLO attainment < target, re-plan
    with headroom x HEADROOM_BACKOFF, at most `max_rounds` rounds in all. Returns every round;
    the last is the one to use (the first that met the target, or the most provisioned; when
    a lower headroom has no feasible plan, the last round's `note` says so).

    verify_all(documents) -> summaries: verify every round's plan at once (e.g. as Ray tasks),
    planned ahead at each headroom; the rounds returned are the same as verifying one by one."""
    _check_unit("target attainment", target_attainment, zero_ok=True)
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise PlanError(f"max rounds must be a positive integer, got {max_rounds!r}")
    ahead = verify_all is not None and workload is not None
    planned: list[tuple[Round, list[OptionCapacity], list[Excluded]]] = []
    rounds: list[Round] = []
    h = headroom
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    cluster_name = name or f"plan-{menu.name}"
    note = ""
    for _ in range(max_rounds):
        try:
            plan, caps, excluded = plan_cluster(stats, menu, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                                                quality_floor=quality_floor, objective=objective,
                                                energy_weight=energy_weight, headroom=h)
        except PlanError as exc:
            if not rounds and not planned:
                raise
            # More spare capacity does not fit the menu: keep the last plan and say why.
            note = f"no re-plan at headroom {h:.2f}: {exc}"
            break
        document = cluster_document(plan, name=cluster_name, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
        if ahead:
            planned.append((Round(h, plan, document, None), caps, excluded))
            h *= HEADROOM_BACKOFF
            continue
        summary = verify_plan(document, workload, seed=seed) if workload is not None else None
        rounds.append(Round(h, plan, document, summary))
        if on_round is not None:
            on_round(rounds[-1])
        if summary is None or summary["slo_attainment"] >= target_attainment:
            break
        h *= HEADROOM_BACKOFF
    if ahead:
        summaries = verify_all([r.document for r, _, _ in planned])
        for (r, caps, excluded), summary in zip(planned, summaries):
            rounds.append(replace(r, verification=summary))
            if on_round is not None:
                on_round(rounds[-1])
            if summary["slo_attainment"] >= target_attainment:
                note = ""
                break
    if note:
        rounds[-1] = replace(rounds[-1], note=note)
    return rounds, caps, excluded


# ---------------------------------------------------------------------------
# Command line


def _unit_arg(zero_ok: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value > 1 or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be in {'[0, 1]' if zero_ok else '(0, 1]'}, got {text!r}")
        return value
    return parse


def _positive_arg(integer: bool = False):
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    return parse


def _default_menu() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "menus" / "menu.yaml", here.parent / "deploy" / "plan" / "menu.yaml"):
        if candidate.exists():
            return candidate
    return here.parent / "deploy" / "plan" / "menu.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", help="trace file (formats as for simulate). Default: built-in Azure 2023 conversation")
    p.add_argument("--format", choices=["azure", "vidur", "lengths", "burstgpt", "mooncake"],
                   help="trace format (default: detected from the content)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip malformed trace rows instead of failing")
    p.add_argument("--requests", type=_positive_arg(integer=True),
                   help="number of requests (as for simulate)")
    p.add_argument("--rate", type=_positive_arg(), help="arrival rate in requests/s to plan for")
    p.add_argument("--arrival", choices=["trace", "poisson", "gamma", "diurnal"],
                   help="arrival process for synthesized arrivals (default poisson)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--menu", help="menu of devices and models (default deploy/plan/menu.yaml)")
    p.add_argument("--ttft-slo", type=_positive_arg(), default=2.0,
                   help="time-to-first-token SLO, seconds (default 2)")
    p.add_argument("--tpot-slo", type=_positive_arg(), default=0.1,
                   help="time-per-output-token SLO, seconds (default 0.1)")
    p.add_argument("--quality-floor", type=_unit_arg(zero_ok=True),
                   help="only models with capability >= this may serve (0..1; built-ins use MMLU / 100)")
    p.add_argument("--objective", choices=OBJECTIVES, default="cost",
                   help="minimize dollars (cost), joules (energy) or a normalised mix (default cost)")
    p.add_argument("--energy-weight", type=_unit_arg(zero_ok=True), default=0.5,
                   help="with --objective mix: weight of energy, 0..1 (default 0.5)")
    p.add_argument("--headroom", type=_unit_arg(zero_ok=False), default=0.7,
                   help="busy share each instance is planned at, (0, 1] (default 0.7)")
    p.add_argument("--target-attainment", type=_unit_arg(zero_ok=True), default=0.9,
                   help="SLO attainment the verification must reach (default 0.9)")
    p.add_argument("--max-rounds", type=_positive_arg(integer=True), default=3,
                   help="plan-and-verify rounds at most (default 3)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="verify the plan by simulation on the same workload (default on)")
    p.add_argument("--out", metavar="PATH", help="write the cluster YAML here (default: print it)")
    p.add_argument("--json", metavar="PATH", help="write the plan JSON to PATH ('-' for stdout)")
    from simulator.jobs import add_runtime_arguments

    add_runtime_arguments(p)  # with --parallel/--address every round is planned ahead and verified at once


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `plan` subcommand to an argparse subparsers object; its handler is `run_plan`
    (set as the `handler` default, so `args.handler(args)` runs it)."""
    p = subparsers.add_parser(
        "plan", help="size a cluster for a workload under SLOs (MILP) and verify it by simulation",
        description="Choose instance counts from a menu of devices and models that minimize dollars, joules or "
                    "a mix while serving the trace's load within the TTFT/TPOT SLOs and a quality floor; write "
                    "the cluster YAML and verify it by simulation.")
    add_arguments(p)
    p.set_defaults(handler=run_plan)
    return p


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 1e5 else f"{x:,.0f}"


def format_plan(plan: Plan) -> str:
    header = (f"{'pool':<34}{'role':>8}{'count':>6}{'$/h':>10}{'req/s cap':>11}{'traffic':>9}{'util':>7}"
              f"{'batch':>7}{'kW':>8}")
    lines = [header, "-" * len(header)]
    for p in plan.pools:
        c = p.capacity
        cap = plan.headroom * c.requests_per_s * p.instances
        batch = c.decode_batch or c.prefill_batch_tokens
        lines.append(f"{c.name:<34}{ROLE_NAMES[c.role]:>8}{p.instances:>6}{p.usd_per_hour:>10,.2f}"
                     f"{_fmt_rate(cap):>11}{p.requests_per_s / plan.rate_rps:>9.1%}{p.utilization:>7.0%}"
                     f"{batch:>7}{p.power_w / 1e3:>8.2f}")
    lines.append("-" * len(header))
    lines.append(f"{'total':<34}{'':>8}{plan.instances:>6}{plan.usd_per_hour:>10,.2f}{'':>11}{'':>9}{'':>7}"
                 f"{'':>7}{plan.power_w / 1e3:>8.2f}")
    lines.append(f"{plan.chips} chips, {plan.power_w / plan.rate_rps:,.0f} J per request planned "
                 f"({plan.objective} objective, headroom {plan.headroom:.2f}; req/s cap at headroom; "
                 "batch: decode sequences, or prompt tokens for prefill)")
    return "\n".join(lines)


def _format_round(i: int, r: Round) -> str:
    text = (f"round {i + 1}: headroom {r.headroom:.2f}, {r.plan.instances} instances, ${r.plan.usd_per_hour:,.2f}/h, "
            f"{r.plan.power_w / 1e3:,.2f} kW planned")
    if r.verification is not None:
        v = r.verification
        text += (f"; simulated: SLO attainment {v['slo_attainment']:.3f}, p99 TTFT "
                 f"{_fmt_opt(v['ttft_s']['p99'])} s, p99 TPOT {_fmt_opt(v['tpot_s']['p99'], 1e3)} ms, "
                 f"${v['cost_usd']:,.2f} and {v['energy_j'] / 3.6e6:,.3f} kWh over {v['makespan_s']:,.1f} s, "
                 f"{v['rejected']:,} rejected")
    return text


def _fmt_opt(x, scale: float = 1.0) -> str:
    return "-" if x is None else f"{x * scale:,.3g}"


def _verify_as_jobs(spec, args, documents: list[dict]) -> list[dict]:
    """Every round's plan simulated at once (simulator/jobs.py); a failed run stops the plan."""
    from simulator.jobs import SimJob, run_jobs, runtime_options

    jobs = [SimJob(f"round {i + 1}", spec, parse_cluster(doc, source=f"<plan {doc.get('name', '')}>"), "slo-aware",
                   {}, args.seed) for i, doc in enumerate(documents)]
    results = run_jobs(jobs, **runtime_options(args))
    if results.failures:
        raise PlanError("verification failed: " + "; ".join(str(f) for f in results.failures))
    return results.summaries


def run_plan(args) -> int:
    """The `plan` subcommand. Exit status: 0 planned (and verified, when asked); 1 planned but the
    simulated SLO attainment stayed below the target after every round; 2 bad input or no feasible plan."""
    from simulator.report import write_json
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    quiet = args.json == "-"
    say = (lambda *a: None) if quiet else print  # noqa: E731
    try:
        menu_path = args.menu or str(_default_menu())
        menu = load_menu(menu_path)
        trace_path = args.trace or str(builtin_trace_path())
        trace = read_trace(trace_path, args.format, skip_bad_rows=args.skip_bad_rows)
        workload = make_workload(trace, n_requests=args.requests, rate_rps=args.rate, arrival=args.arrival,
                                 seed=args.seed)
        stats = characterize(workload)
        say(f"workload: {workload.description}")
        say(f"  {stats.rate_rps:,.2f} req/s; prompt mean {stats.mean_input_tokens:,.0f} (p90 "
            f"{stats.p90_input_tokens:,.0f}) tokens, output mean {stats.mean_output_tokens:,.0f} (p90 "
            f"{stats.p90_output_tokens:,.0f}); demand {stats.prefill_tokens_per_s:,.0f} prefill and "
            f"{stats.decode_tokens_per_s:,.0f} decode tokens/s")
        say(f"menu: {menu.source} ({len(menu.options)} options); SLO TTFT {args.ttft_slo:g} s, TPOT "
            f"{args.tpot_slo * 1e3:g} ms" + (f"; quality floor {args.quality_floor:g}" if args.quality_floor
                                              is not None else ""))

        def on_round(r: Round) -> None:
            if args.verify:
                say(_format_round(len(rounds_seen), r))
            rounds_seen.append(r)

        rounds_seen: list[Round] = []
        verify_all = None
        if args.verify and (args.parallel or args.address):
            from simulator.jobs import WorkloadSpec

            spec = WorkloadSpec(trace=str(Path(trace_path).resolve()), format=args.format,
                                skip_bad_rows=args.skip_bad_rows, requests=args.requests, rate_rps=args.rate,
                                arrival=args.arrival, seed=args.seed)
            verify_all = partial(_verify_as_jobs, spec, args)
        rounds, caps, excluded = plan_and_verify(
            stats, menu, workload if args.verify else None, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
            quality_floor=args.quality_floor, objective=args.objective, energy_weight=args.energy_weight,
            headroom=args.headroom, target_attainment=args.target_attainment, max_rounds=args.max_rounds,
            seed=args.seed, on_round=on_round, verify_all=verify_all)
    except (ValueError, FileNotFoundError) as exc:
        # PlanError, ConfigError and TraceFormatError are ValueErrors; so are bad workload
        # arguments (e.g. --arrival trace with --rate).
        print(f"infersched plan: error: {exc}", file=sys.stderr)
        return 2
    final = rounds[-1]
    if final.note:
        say(final.note)
    met = final.verification is None or final.attainment >= args.target_attainment
    header = (f"planned by `infersched plan` for {stats.rate_rps:,.2f} req/s ({workload.description})\n"
              f"objective {final.plan.objective}, headroom {final.headroom:.2f}: ${final.plan.usd_per_hour:,.2f}/h, "
              f"{final.plan.power_w / 1e3:,.2f} kW planned")
    if final.verification is not None:
        header += f"\nsimulated SLO attainment {final.attainment:.3f} (slo-aware policy, seed {args.seed})"
    text = cluster_yaml(final.document, header)
    result = {
        "menu": menu.source, "workload": stats.as_dict(),
        "slo": {"ttft_s": args.ttft_slo, "tpot_s": args.tpot_slo}, "quality_floor": args.quality_floor,
        "objective": args.objective, "energy_weight": args.energy_weight,
        "target_attainment": args.target_attainment if args.verify else None,
        "options": [c.as_dict() for c in caps],
        "excluded": [{"option": e.label, "role": e.role, "reason": e.reason} for e in excluded],
        "rounds": [{"headroom": r.headroom, "plan": r.plan.as_dict(), "note": r.note or None,
                    "verification": None if r.verification is None else _verification_digest(r.verification)}
                   for r in rounds],
        "plan": final.plan.as_dict(),
        "verification": None if final.verification is None else _verification_digest(final.verification),
        "verified": None if final.verification is None else met,
        "cluster_yaml": text,
    }
    try:
        if args.json:
            write_json(result, args.json)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"infersched plan: error: cannot write the plan: {exc}", file=sys.stderr)
        return 2
    say("")
    say(format_plan(final.plan))
    if not met:
        print(f"infersched plan: warning: simulated SLO attainment {final.attainment:.3f} is below the target "
              f"{args.target_attainment:g} after {len(rounds)} round(s); the last plan is written anyway",
              file=sys.stderr)
    if args.out:
        say(f"wrote {args.out}")
    elif not quiet:
        say("")
        say(text.rstrip())
    return 0 if met else 1


def main_plan(argv: list[str] | None = None) -> int:
    """`infersched plan` on its own (for tests and `python -m simulator.plan`)."""
    parser = argparse.ArgumentParser(prog="infersched plan", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports bad numbers itself, with status 2
        return int(exc.code or 0)
    return run_plan(args)


if __name__ == "__main__":
    sys.exit(main_plan())
