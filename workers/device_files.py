"""Device specs in YAML files: what `infersched model fit` writes and pools name (`device: ./my-gpu.yaml`).

A file holds `name`, optionally `base` (a catalogue device whose fields it
starts from) and any DeviceSpec field to set, plus an optional `sources`
mapping (field -> where the value came from). Without `base` every field is
required. Unknown keys are errors, so a typo is not silently ignored; every
error reads `file: key: reason`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from workers.devices import DEVICES, DeviceSpec, UnknownDeviceError

__all__ = ["DeviceFileError", "load_device_file", "device_to_mapping", "write_device_file", "looks_like_path"]

_FIELDS = {f.name: f for f in dataclasses.fields(DeviceSpec)}
_OPTIONAL_NUMBERS = {"fp8_flops", "price_usd_per_hour", "measured_copy_bw_bytes_s"}


class DeviceFileError(ValueError):
    """A device spec file is malformed; the message names the file and key."""


def looks_like_path(name: str) -> bool:
    """A device argument names a file (rather than a catalogue device) when it has a spec suffix or a slash."""
    return name.endswith((".yaml", ".yml", ".json")) or "/" in name


def load_device_file(path: str | Path) -> DeviceSpec:
    path = Path(path)
    if not path.is_file():
        raise UnknownDeviceError(f"unknown device {str(path)!r}: no such file "
                                 f"(catalogue devices: {', '.join(sorted(DEVICES))})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DeviceFileError(f"{path}: cannot parse device spec: {exc}") from None
    if not isinstance(data, dict):
        raise DeviceFileError(f"{path}: device spec must be a mapping of keys to values")
    values: dict[str, Any] = {}
    base_name = data.get("base")
    if base_name is not None:
        if base_name not in DEVICES:
            raise DeviceFileError(f"{path}: base: unknown device {base_name!r}; "
                                  f"known devices: {', '.join(sorted(DEVICES))}")
        base = DEVICES[base_name]
        values = {name: getattr(base, name) for name in _FIELDS}
        values["sources"] = dict(base.sources)
    for key, value in data.items():
        if key == "base":
            continue
        if key not in _FIELDS:
            raise DeviceFileError(f"{path}: {key}: unknown key; allowed keys: base, {', '.join(_FIELDS)}")
        if key == "sources":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise DeviceFileError(f"{path}: sources: must map field names to strings")
            values["sources"] = {**values.get("sources", {}), **value}
        elif key in ("name", "kind", "parallelism"):
            if not isinstance(value, str) or not value:
                raise DeviceFileError(f"{path}: {key}: must be a non-empty string, got {value!r}")
            values[key] = value
        elif key == "max_chips_per_instance":
            if isinstance(value, bool) or not isinstance(value, int):
                raise DeviceFileError(f"{path}: {key}: must be an integer, got {value!r}")
            values[key] = value
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not (ok or (value is None and key in _OPTIONAL_NUMBERS)):
                raise DeviceFileError(f"{path}: {key}: must be a number, got {value!r}")
            values[key] = None if value is None else float(value)
    missing = [name for name in _FIELDS if name not in values and _FIELDS[name].default is dataclasses.MISSING
               and name != "sources"]
    if missing:
        raise DeviceFileError(f"{path}: {missing[0]}: missing (give `base: DEVICE` to start from a catalogue "
                              f"device, or set {', '.join(missing)})")
    try:
        return DeviceSpec(**values)
    except ValueError as exc:
        text = str(exc)
        prefix = f"device {values.get('name')!r}: "
        raise DeviceFileError(f"{path}: {text[len(prefix):] if text.startswith(prefix) else text}") from None


def device_to_mapping(device: DeviceSpec, base: str | None = None) -> dict[str, Any]:
    """A device as a spec-file mapping: with `base`, only the fields that differ from it."""
    reference = DEVICES.get(base) if base else None
    out: dict[str, Any] = {"name": device.name}
    if reference is not None:
        out["base"] = base
    for name in _FIELDS:
        if name in ("name", "sources"):
            continue
        value = getattr(device, name)
        if reference is None or value != getattr(reference, name):
            out[name] = value
    changed = [name for name in out if name not in ("name", "base")]
    out["sources"] = {name: device.sources[name] for name in changed if name in device.sources}
    return out


def write_device_file(device: DeviceSpec, path: str | Path, base: str | None = None,
                      header: str = "") -> Path:
    path = Path(path)
    text = yaml.safe_dump(device_to_mapping(device, base), sort_keys=False, width=110)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
    return path
