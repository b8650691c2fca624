"""Fit the performance model to measurements and check predictions against them.

Measurements are CSV rows of one step each (see ../shared/calibration/README.md
and scripts/measure_gpu.py, which writes them):

    phase,batch,tokens_per_seq,ms,mean_power_w,joules_per_token[,model]

A prefill row is one iteration over `batch` prompts of `tokens_per_seq`
tokens (no cached prefix); a decode row is one step of `batch` sequences each
holding `tokens_per_seq` cached tokens. joules_per_token is per prompt token
for prefill and per generated token for decode. The optional `model` column
names the measured shape (a built-in, or a spec file beside the CSV); rows
without it use the --model given.

The fit separates fixed time per layer from weight streaming, and no stream
is faster than the device's measured copy ceiling. With a single measured
shape the two cannot be told apart (the weights read per step never change),
so streaming is pinned at the ceiling and the fixed per-layer time takes the
rest; with two shapes or more both are fitted.

    python -m workers.calibration fit ../shared/calibration/h100_llama-3.1-8b.csv
    python -m workers.calibration check --device h100-sxm --model llama-3.1-8b PATH
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workers.devices import DeviceSpec, get_device
from workers.models import ModelSpec, get_model, load_model
from workers.perf import InstancePerf

__all__ = [
    "Measurement",
    "MeasurementError",
    "COLUMNS",
    "FitResult",
    "load_measurements",
    "fit_device",
    "fit_h100",
    "FIT_FIELDS",
    "run_model_check",
    "format_model_check",
    "main",
]

COLUMNS: tuple[str, ...] = ("phase", "batch", "tokens_per_seq", "ms", "mean_power_w", "joules_per_token")
OPTIONAL_COLUMNS: tuple[str, ...] = ("model",)
PHASES: tuple[str, ...] = ("prefill", "decode")


class MeasurementError(ValueError):
    """A measurement file is malformed; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured step. Energy columns may be empty where a run measured latency only."""

    phase: str
    batch: int
    tokens_per_seq: int
    ms: float
    mean_power_w: float | None
    joules_per_token: float | None
    line: int = 0
    model: str | None = None  # built-in name or spec path (resolved against the CSV's folder)

    @property
    def tokens(self) -> int:
        """Tokens the step produces energy for: prompt tokens (prefill) or generated tokens (decode)."""
        return self.batch * self.tokens_per_seq if self.phase == "prefill" else self.batch

    def as_row(self) -> dict[str, Any]:
        row = {key: getattr(self, key) for key in COLUMNS}
        if self.model is not None:
            row["model"] = self.model
        return row


def _parse_int(path: Path, line: int, key: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise MeasurementError(f"{path}:{line}: field {key!r}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise MeasurementError(f"{path}:{line}: field {key!r}: must be >= {minimum}, got {value}")
    return value


def _parse_float(path: Path, line: int, key: str, text: str, optional: bool) -> float | None:
    if optional and text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise MeasurementError(f"{path}:{line}: field {key!r}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise MeasurementError(f"{path}:{line}: field {key!r}: must be a positive number, got {text!r}")
    return value


def load_measurements(path: str | Path) -> list[Measurement]:
    """Read a calibration CSV; any malformed row raises MeasurementError naming file, line and field."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise MeasurementError(f"{path}: cannot read measurements: {exc.strerror or exc}") from None
    rows: list[Measurement] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise MeasurementError(f"{path}:1: empty file; expected header {','.join(COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        unknown = [h for h in header if h not in COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise MeasurementError(f"{path}:1: header must be {','.join(COLUMNS)} (and optionally "
                                   f"{','.join(OPTIONAL_COLUMNS)}); missing {missing or 'none'}, "
                                   f"unknown {unknown or 'none'}")
        index = {name: header.index(name) for name in COLUMNS + OPTIONAL_COLUMNS if name in header}
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise MeasurementError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            cell = {name: row[i].strip() for name, i in index.items()}
            phase = cell["phase"]
            if phase not in PHASES:
                raise MeasurementError(f"{path}:{line}: field 'phase': expected one of {PHASES}, got {phase!r}")
            rows.append(Measurement(
                phase=phase,
                batch=_parse_int(path, line, "batch", cell["batch"], 1),
                tokens_per_seq=_parse_int(path, line, "tokens_per_seq", cell["tokens_per_seq"],
                                          1 if phase == "prefill" else 0),
                ms=_parse_float(path, line, "ms", cell["ms"], optional=False),  # type: ignore[arg-type]
                mean_power_w=_parse_float(path, line, "mean_power_w", cell["mean_power_w"], optional=True),
                joules_per_token=_parse_float(path, line, "joules_per_token", cell["joules_per_token"],
                                              optional=True),
                line=line,
                model=cell.get("model") or None,
            ))
    if not rows:
        raise MeasurementError(f"{path}: no measurement rows")
    return rows


def row_models(rows: Sequence[Measurement], default: str | ModelSpec, csv_path: str | Path) -> list[ModelSpec]:
    """The model shape of each row: its `model` column (a built-in, or a spec file relative to the
    CSV's folder), else `default`."""
    base = Path(csv_path).parent
    cache: dict[str | None, ModelSpec] = {}
    out = []
    for m in rows:
        if m.model not in cache:
            if m.model is None:
                cache[None] = default if isinstance(default, ModelSpec) else load_model(default)
            else:
                local = base / m.model
                cache[m.model] = load_model(str(local) if local.is_file() else m.model)
        out.append(cache[m.model])
    return out


def _predict(perf: InstancePerf, m: Measurement) -> tuple[float, float]:
    """(time_s, dynamic_energy_j) of the step a measurement row describes."""
    if m.phase == "prefill":
        t = m.tokens_per_seq
        return perf.prefill(m.batch * t, m.batch * t * (t + 1) * 0.5, m.batch)
    return perf.decode(m.batch, float(m.batch * m.tokens_per_seq), 1)


# --- fitting -----------------------------------------------------------------------

# Latency constants, fitted jointly; then the two energy constants by linear least squares.
FIT_FIELDS: tuple[str, ...] = (
    "compute_efficiency", "weight_bw_efficiency", "kv_bw_efficiency", "attn_parallel_units",
    "decode_serial_fraction", "prefill_overhead_per_layer_s", "decode_overhead_per_layer_s",
    "energy_per_flop_j", "energy_per_byte_j",
)
_LATENCY_FIELDS = FIT_FIELDS[:7]
_START = {
    "compute_efficiency": 0.6, "weight_bw_efficiency": 0.7, "kv_bw_efficiency": 0.8,
    "attn_parallel_units": 64.0, "decode_serial_fraction": 0.3,
    "prefill_overhead_per_layer_s": 20e-6, "decode_overhead_per_layer_s": 20e-6,
}
_ONE_SHAPE = ("one model shape measured: fixed per-layer time and weight streaming cannot be told apart, "
              "so streaming is taken at the measured copy ceiling")


@dataclass(frozen=True, slots=True)
class FitResult:
    """A device fitted to measurements: its constants, which were pinned (and why), the shapes used."""

    device: DeviceSpec
    fitted: dict[str, float]
    pinned: dict[str, str]
    shapes: tuple[str, ...]
    points: int


def _nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.3,
                 iterations: int = 4000, tol: float = 1e-12) -> tuple[np.ndarray, float]:
    """Plain Nelder-Mead minimizer (deterministic; the fit has at most 7 smooth-enough parameters)."""
    n = len(x0)
    simplex = [x0.copy()]
    for i in range(n):
        x = x0.copy()
        x[i] += step
        simplex.append(x)
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                for i in range(1, n + 1):
                    simplex[i] = simplex[0] + 0.5 * (simplex[i] - simplex[0])
                    values[i] = f(simplex[i])
    best = int(np.argmin(values))
    return simplex[best], values[best]


def _upper_bounds(device: DeviceSpec) -> dict[str, float]:
    """Efficiencies and the serial share stay in (0, bound]: no stream beats the copy ceiling."""
    ceiling = device.stream_ceiling
    return {"compute_efficiency": 1.0, "weight_bw_efficiency": ceiling, "kv_bw_efficiency": ceiling,
            "decode_serial_fraction": 1.0}


def _fit_latency(device: DeviceSpec, models: Sequence[ModelSpec], rows: Sequence[Measurement],
                 pinned: dict[str, float] | None = None) -> dict[str, float]:
    """Least squared log error of step latency over the free constants (searched in log space)."""
    pinned = pinned or {}
    free = [name for name in _LATENCY_FIELDS if name not in pinned]
    bounds = _upper_bounds(device)
    measured = np.array([m.ms / 1e3 for m in rows])
    shapes = {id(model): model for model in models}

    def decode(x: np.ndarray) -> dict[str, float]:
        params = dict(pinned)
        for name, value in zip(free, x):
            v = math.exp(value)
            params[name] = min(v, bounds[name]) if name in bounds else v
        return params

    def loss(x: np.ndarray) -> float:
        spec = dataclasses.replace(device, **decode(x))
        perfs = {key: InstancePerf(spec, model) for key, model in shapes.items()}
        predicted = np.array([_predict(perfs[id(model)], m)[0] for model, m in zip(models, rows)])
        # Squared log error: relative, and symmetric between over- and under-prediction.
        return float(np.sum(np.log(predicted / measured) ** 2))

    x = np.log(np.array([min(_START[name], bounds.get(name, math.inf)) for name in free]))
    best = math.inf
    # Restart from the best point until a restart stops helping (Nelder-Mead can stall).
    for _ in range(6):
        x, value = _nelder_mead(loss, x)
        if value > best - 1e-10:
            break
        best = value
    return decode(x)


def _fit_energy(device: DeviceSpec, models: Sequence[ModelSpec], rows: Sequence[Measurement]) -> dict[str, float]:
    """Least squares for energy per FLOP and per byte, on relative error of per-step energy."""
    pairs = [(model, m) for model, m in zip(models, rows) if m.joules_per_token is not None]
    if len(pairs) < 2:
        raise MeasurementError("need at least two rows with joules_per_token to fit energy")
    # Reuse the model's own FLOP and byte accounting: with 1 J per FLOP (or per byte) and no
    # power cap, the "dynamic energy" it returns is the FLOP (byte) count of the step.
    uncapped = dict(idle_power_w=0.0, peak_power_w=1e300)
    flop_dev = dataclasses.replace(device, energy_per_flop_j=1.0, energy_per_byte_j=0.0, **uncapped)
    byte_dev = dataclasses.replace(device, energy_per_flop_j=0.0, energy_per_byte_j=1.0, **uncapped)
    a, b = [], []
    for model, m in pairs:
        perf = InstancePerf(device, model)
        time_s, _ = _predict(perf, m)
        step_j = m.joules_per_token * m.tokens  # type: ignore[operator]
        dynamic_j = step_j - perf.idle_power_w * time_s
        a.append([_predict(InstancePerf(flop_dev, model), m)[1] / step_j,
                  _predict(InstancePerf(byte_dev, model), m)[1] / step_j])
        b.append(dynamic_j / step_j)
    (per_flop, per_byte), *_ = np.linalg.lstsq(np.array(a), np.array(b), rcond=None)
    return {"energy_per_flop_j": float(per_flop), "energy_per_byte_j": float(per_byte)}


def fit_device(rows: Sequence[Measurement], models: Sequence[ModelSpec], base: DeviceSpec,
               name: str | None = None) -> FitResult:
    """Fit `base`'s efficiency, overhead and energy constants to measured rows (models[i] is row i's shape).

    Datasheet figures (peak FLOP/s, bandwidth, power limit), the measured idle power and copy
    ceiling stay as `base` has them. With decode rows of one shape only, weight streaming is
    pinned at the copy ceiling (see the module docstring).
    """
    if len(models) != len(rows):
        raise ValueError("need one model per measurement row")
    decode_shapes = {model.name for model, m in zip(models, rows) if m.phase == "decode"}
    pinned_values: dict[str, float] = {}
    pinned: dict[str, str] = {}
    if len(decode_shapes) < 2:
        pinned_values["weight_bw_efficiency"] = base.stream_ceiling
        pinned["weight_bw_efficiency"] = _ONE_SHAPE + (
            "" if base.measured_copy_bw_bytes_s else " (none measured: the datasheet bandwidth)")
    params = _fit_latency(base, models, rows, pinned_values)
    device = dataclasses.replace(base, **params)
    params.update(_fit_energy(device, models, rows))
    device = dataclasses.replace(base, name=name or base.name, **params)
    shapes = tuple(dict.fromkeys(model.name for model in models))
    return FitResult(device=device, fitted=params, pinned=pinned, shapes=shapes, points=len(rows))


def fit_h100(path: str | Path, model: ModelSpec | None = None) -> dict[str, float]:
    """The H100 constants fitted to a measurement CSV: {field: value} for every name in FIT_FIELDS."""
    rows = load_measurements(path)
    models = row_models(rows, model or get_model("llama-3.1-8b"), path)
    return fit_device(rows, models, get_device("h100-sxm")).fitted


# --- checking ----------------------------------------------------------------------


def _errors(summary_points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    latency = [abs(p["latency_error"]) for p in summary_points]
    energy = [abs(p["energy_error"]) for p in summary_points if p["energy_error"] is not None]
    return {
        "latency_median_abs_error": statistics.median(latency),
        "energy_median_abs_error": statistics.median(energy) if energy else None,
        "latency_max_abs_error": max(latency),
        "energy_max_abs_error": max(energy) if energy else None,
        "points": len(summary_points),
    }


def fitted_terms(device: DeviceSpec) -> list[dict[str, Any]]:
    """Every fitted constant of a device with its value and where it came from."""
    return [{"term": name, "value": getattr(device, name), "source": device.sources.get(name, "")}
            for name in FIT_FIELDS]


def check_rows(device: DeviceSpec, rows: Sequence[Measurement], models: Sequence[ModelSpec],
               chips: int = 1) -> dict[str, Any]:
    """Predict every row and report signed relative errors ((predicted - measured) / measured)."""
    perfs: dict[str, InstancePerf] = {}
    points = []
    for model, m in zip(models, rows):
        perf = perfs.get(model.name) or perfs.setdefault(model.name, InstancePerf(device, model, chips))
        time_s, dynamic_j = _predict(perf, m)
        predicted_jpt = (perf.idle_power_w * time_s + dynamic_j) / m.tokens
        point = m.as_row()
        point["model"] = model.name
        point["predicted_ms"] = time_s * 1e3
        point["latency_error"] = (time_s * 1e3 - m.ms) / m.ms
        point["predicted_joules_per_token"] = predicted_jpt
        point["energy_error"] = (None if m.joules_per_token is None
                                 else (predicted_jpt - m.joules_per_token) / m.joules_per_token)
        points.append(point)
    by_model = {name: _errors([p for p in points if p["model"] == name]) for name in dict.fromkeys(perfs)}
    return {"device": device.name, "chips": chips, "points": points, "summary": _errors(points),
            "by_model": by_model, "terms": fitted_terms(device)}


def run_model_check(device_name: str, model_name_or_path: str, measurements_path: str | Path,
                    chips: int = 1) -> dict[str, Any]:
    """`infersched model check`: predictions against a measurement CSV, and the device's fitted terms."""
    device = get_device(device_name)
    rows = load_measurements(measurements_path)
    models = row_models(rows, model_name_or_path, measurements_path)
    result = check_rows(device, rows, models, chips)
    result["model"] = ", ".join(result["by_model"])
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _abs_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def format_model_check(result: dict[str, Any]) -> str:
    """A fixed-width table of measured vs predicted latency and energy, the summary, then the fitted terms."""
    header = (f"{'phase':<8}{'batch':>6}{'tokens':>8}{'ms':>10}{'pred ms':>10}{'err':>9}"
              f"{'J/token':>10}{'pred J/tok':>11}{'err':>9}")
    several = len(result.get("by_model", {})) > 1
    lines = [f"model check: {result['model']} on {result['device']} x{result.get('chips', 1)}", header,
             "-" * len(header)]
    for p in result["points"]:
        measured_j = "-" if p["joules_per_token"] is None else f"{p['joules_per_token']:.4g}"
        lines.append(
            f"{p['phase']:<8}{p['batch']:>6}{p['tokens_per_seq']:>8}{p['ms']:>10.3f}{p['predicted_ms']:>10.3f}"
            f"{_pct(p['latency_error']):>9}{measured_j:>10}{p['predicted_joules_per_token']:>11.4g}"
            f"{_pct(p['energy_error']):>9}" + (f"  {p['model']}" if several else ""))
    lines.append("-" * len(header))
    groups = [("points", result["summary"])] + ([(name, s) for name, s in result["by_model"].items()]
                                               if several else [])
    for label, s in groups:
        lines.append(f"{label}: {s['points']}   latency |error| median {_abs_pct(s['latency_median_abs_error'])}, "
                     f"max {_abs_pct(s['latency_max_abs_error'])}   energy |error| median "
                     f"{_abs_pct(s['energy_median_abs_error'])}, max {_abs_pct(s['energy_max_abs_error'])}")
    lines.append("fitted terms:")
    for term in result.get("terms", []):
        lines.append(f"  {term['term']:<30} {term['value']:<12.4g} {term['source']}")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.calibration",
                                     description="Fit or check the performance model against measurements.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit the h100-sxm constants to a measurement CSV and print them")
    fit.add_argument("path")
    check = sub.add_parser("check", help="compare predictions with a measurement CSV")
    check.add_argument("path")
    check.add_argument("--device", default="h100-sxm")
    check.add_argument("--model", default="llama-3.1-8b")
    check.add_argument("--chips", type=int, default=1)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            rows = load_measurements(args.path)
            models = row_models(rows, "llama-3.1-8b", args.path)
            result = fit_device(rows, models, get_device("h100-sxm"))
            print(f"# fitted to {args.path}")
            for name in FIT_FIELDS:
                note = f"  # pinned: {result.pinned[name]}" if name in result.pinned else ""
                print(f"{name} = {result.fitted[name]:.4g}{note}")
            s = check_rows(result.device, rows, models)["summary"]
            print(f"# latency |error| with these values: median {s['latency_median_abs_error'] * 100:.1f}%, "
                  f"max {s['latency_max_abs_error'] * 100:.1f}%")
        else:
            result = run_model_check(args.device, args.model, args.path, args.chips)
            print(json.dumps(result, indent=1) if args.json else format_model_check(result))
    except (MeasurementError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
