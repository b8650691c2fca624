"""The menu: every instance shape `infersched plan` may buy, parsed from YAML.

A menu pairs devices with models (`devices` x `models`, plus explicit
`options`); each pair becomes one `MenuOption` per chip count, and pairs that
cannot hold their model are kept as `Excluded` with the reason, so a plan
that leaves them out can say why. Every bad key raises `PlanError` naming the
file and the key (see `parse_menu` for the schema, deploy/plan/menu.yaml for
an example).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scheduler.config import QUANTIZATION_BYTES
from scheduler.types import Role
from scheduler.validation import Fields
from simulator.plan.stats import PlanError
from workers.devices import DeviceSpec, UnknownDeviceError, get_device
from workers.models import ModelSpec, ModelSpecError, UnknownModelError, load_model, with_dtype
from workers.perf import InstancePerf, chips_needed

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


def _roles(v: Fields, key: str, value: Any) -> tuple[Role, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise v.fail(key, f"expected a role or a non-empty list of roles (both, prefill, decode), got {value!r}")
    roles: list[Role] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise v.fail(f"{key}[{i}]", f"expected a role name, got {item!r}")
        try:
            role = Role.parse(item)
        except ValueError as exc:
            raise v.fail(f"{key}[{i}]", str(exc)) from None
        if role not in roles:
            roles.append(role)
    return tuple(roles)


def _chips_choice(v: Fields, key: str, value: Any) -> tuple[int | None, ...]:
    """'auto' -> (None,); an integer -> (n,); a list of integers or 'auto' -> each."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise v.fail(key, "expected 'auto', an integer or a non-empty list of them")
    out: list[int | None] = []
    for i, item in enumerate(items):
        sub = f"{key}[{i}]" if isinstance(value, list) else key
        if item == "auto":
            out.append(None)
        else:
            if isinstance(item, str):
                raise v.fail(sub, f"expected 'auto' or a positive integer, got {item!r}")
            out.append(v.number(sub, item, integer=True, above=0))
    return tuple(dict.fromkeys(out))


def _settings(v: Fields, where: str, raw: dict, base: dict) -> dict:
    """Option settings from one mapping (defaults, a device, an option) layered on `base`."""
    out = dict(base)
    if "roles" in raw:
        out["roles"] = _roles(v, f"{where}roles", raw["roles"])
    if "chips_per_instance" in raw:
        out["chips_per_instance"] = _chips_choice(v, f"{where}chips_per_instance", raw["chips_per_instance"])
    if "max_instances" in raw:
        out["max_instances"] = v.number(f"{where}max_instances", raw["max_instances"], integer=True, at_least=0)
    for key in ("max_batch", "max_batch_tokens"):
        if key in raw:
            out[key] = v.number(f"{where}{key}", raw[key], integer=True, above=0)
    if "link_gbps" in raw:
        out["link_gbps"] = v.number(f"{where}link_gbps", raw["link_gbps"], above=0)
    if "memory_utilization" in raw:
        out["memory_utilization"] = v.number(f"{where}memory_utilization", raw["memory_utilization"],
                                             above=0, at_most=1)
    if raw.get("price_usd_per_chip_hour") is not None:
        out["price_usd_per_chip_hour"] = v.number(f"{where}price_usd_per_chip_hour", raw["price_usd_per_chip_hour"],
                                                  at_least=0)
    if raw.get("price_usd_per_hour") is not None:
        out["price_usd_per_hour"] = v.number(f"{where}price_usd_per_hour", raw["price_usd_per_hour"], at_least=0)
    return out


def _device(v: Fields, key: str, value: Any) -> DeviceSpec:
    if not isinstance(value, str) or not value.strip():
        raise v.fail(key, f"expected a device name, got {value!r}")
    try:
        return get_device(value.strip())
    except UnknownDeviceError as exc:
        raise v.fail(key, str(exc)) from None


def _model(v: Fields, key: str, raw: Any, menu_dir: Path) -> tuple[ModelSpec, str, str | None]:
    """(spec, reference for the cluster YAML, quantization) from a model entry (name or mapping)."""
    if isinstance(raw, dict):
        v.known_keys(f"{key}.", raw, _MODEL_KEYS)
        if "model" not in raw:
            raise v.fail(f"{key}.model", "missing")
        name, quant = raw["model"], raw.get("quantization")
        name_key = f"{key}.model"
    else:
        name, quant, name_key = raw, None, key
    if not isinstance(name, str) or not name.strip():
        raise v.fail(name_key, f"expected a model name or spec file, got {name!r}")
    ref = name.strip()
    try:
        spec = load_model(ref)
    except UnknownModelError as exc:
        # A spec file may be given relative to the menu file.
        beside = menu_dir / ref
        if not beside.is_file():
            raise v.fail(name_key, str(exc)) from None
        ref = str(beside)
        try:
            spec = load_model(ref)
        except (UnknownModelError, ModelSpecError) as exc2:
            raise v.fail(name_key, str(exc2)) from None
    except ModelSpecError as exc:
        raise v.fail(name_key, str(exc)) from None
    if quant is not None:
        if not isinstance(quant, str) or quant.lower() not in QUANTIZATION_BYTES:
            raise v.fail(f"{key}.quantization",
                        f"unknown {quant!r}; expected one of {', '.join(QUANTIZATION_BYTES)}")
        quant = quant.lower()
        spec = with_dtype(spec, QUANTIZATION_BYTES[quant])
    return spec, ref, quant


def _expand(v: Fields, where: str, device: DeviceSpec, model: ModelSpec, ref: str, quant: str | None,
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
                    raise PlanError(f"{v.source}: {where}: {reason}")
                excluded.append(Excluded(label, None, reason))
                continue
        try:
            perf = InstancePerf(device, model, chips, memory_utilization=mem_util)
        except ValueError as exc:
            raise v.fail(f"{where}.chips_per_instance", str(exc)) from None
        if perf.kv_capacity_tokens < settings["max_batch_tokens"]:
            reason = (f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves "
                      f"{max(perf.kv_capacity_tokens, 0):,} tokens of KV in {chips} x {device.name}, fewer than "
                      f"one prefill batch ({settings['max_batch_tokens']:,})")
            if explicit:
                raise PlanError(f"{v.source}: {where}: {reason}")
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
    v = Fields(source, PlanError)
    v.known_keys("", data, _MENU_KEYS)
    menu_dir = Path(base_dir) if base_dir is not None else (Path(source).parent if source != "<menu>" else Path("."))
    defaults_raw = data.get("defaults") or {}
    if not isinstance(defaults_raw, dict):
        raise v.fail("defaults", "expected a mapping")
    v.known_keys("defaults.", defaults_raw, _DEFAULT_KEYS)
    base = {**_DEFAULTS, "roles": _roles(v, "defaults.roles", _DEFAULTS["roles"]),
            "chips_per_instance": (None,)}
    base = _settings(v, "defaults.", defaults_raw, base)

    models_raw = data.get("models") or []
    if not isinstance(models_raw, list):
        raise v.fail("models", "expected a list of models")
    models = [_model(v, f"models[{i}]", raw, menu_dir) for i, raw in enumerate(models_raw)]
    devices_raw = data.get("devices") or []
    if not isinstance(devices_raw, list):
        raise v.fail("devices", "expected a list of devices")
    options_raw = data.get("options") or []
    if not isinstance(options_raw, list):
        raise v.fail("options", "expected a list of options")
    if devices_raw and not models:
        raise v.fail("models", "devices are listed but no models to pair them with")
    if not devices_raw and not options_raw:
        raise v.fail("devices", "the menu lists no devices and no options")

    by_key: dict[tuple, MenuOption] = {}
    explicit_at: dict[tuple, str] = {}
    excluded: list[Excluded] = []
    all_models: dict[str, ModelSpec] = {spec.name: spec for spec, _, _ in models}
    for d, raw in enumerate(devices_raw):
        where = f"devices[{d}]"
        if isinstance(raw, str):
            raw = {"device": raw}
        if not isinstance(raw, dict):
            raise v.fail(where, "expected a device name or a mapping")
        v.known_keys(f"{where}.", raw, _DEVICE_KEYS)
        if "device" not in raw:
            raise v.fail(f"{where}.device", "missing")
        device = _device(v, f"{where}.device", raw["device"])
        settings = _settings(v, f"{where}.", raw, base)
        subset = raw.get("models")
        if subset is not None and (not isinstance(subset, list) or not all(isinstance(s, str) for s in subset)):
            raise v.fail(f"{where}.models", "expected a list of model names from `models`")
        if subset is not None:
            unknown = [s for s in subset if s not in {spec.name for spec, _, _ in models} | {r for _, r, _ in models}]
            if unknown:
                raise v.fail(f"{where}.models", f"{unknown[0]!r} is not in the menu's models")
        for m, (spec, ref, quant) in enumerate(models):
            if subset is not None and spec.name not in subset and ref not in subset:
                continue
            opts, exc = _expand(v, f"{where} x models[{m}]", device, spec, ref, quant, settings, False)
            excluded.extend(exc)
            for o in opts:
                by_key[(o.device.name, o.chips, o.model.name)] = o
    for k, raw in enumerate(options_raw):
        where = f"options[{k}]"
        if not isinstance(raw, dict):
            raise v.fail(where, "expected a mapping with device and model")
        v.known_keys(f"{where}.", raw, _OPTION_KEYS)
        for required in ("device", "model"):
            if required not in raw:
                raise v.fail(f"{where}.{required}", "missing")
        if "price_usd_per_hour" in raw and "price_usd_per_chip_hour" in raw:
            raise v.fail(f"{where}.price_usd_per_hour", "give price_usd_per_hour (per instance) or "
                                                                "price_usd_per_chip_hour, not both")
        device = _device(v, f"{where}.device", raw["device"])
        spec, ref, quant = _model(v, where, {"model": raw["model"], **(
            {"quantization": raw["quantization"]} if "quantization" in raw else {})}, menu_dir)
        all_models.setdefault(spec.name, spec)
        settings = _settings(v, f"{where}.", raw, base)
        opts, _ = _expand(v, where, device, spec, ref, quant, settings, True)
        for o in opts:
            key = (o.device.name, o.chips, o.model.name)
            if key in explicit_at:
                raise v.fail(where, f"{o.label} is already listed as {explicit_at[key]}")
            explicit_at[key] = where
            by_key[key] = o
    name = v.string("name", data.get("name", Path(source).stem if source != "<menu>" else "menu"))
    return Menu(name=name, source=source, options=tuple(by_key.values()), excluded=tuple(excluded),
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
