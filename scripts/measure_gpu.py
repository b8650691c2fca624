"""Measure prefill and decode latency and energy of model shapes on one GPU, for `infersched model fit`.

Provenance: ../shared/calibration/measure_gpu.py measured the shipped H100
Llama-3.1-8B data (../shared/calibration/README.md); this is that script with
its decoder and timing unchanged, plus: shapes from workers/models.py
(head_dim, tied embeddings, MoE layers), an MoE layer slice, argument
handling, and output ready for `infersched model fit/check`.

Random weights (timing does not depend on values); a minimal decoder in
plain PyTorch: fused QKV, SDPA attention (flash, grouped-query), SwiGLU MLP,
or a MoE MLP (router, top-k, one grouped GEMM over the experts the tokens
chose: torch._grouped_mm, so experts no token picked are not read).
Decode steps are captured in CUDA graphs, as serving engines do. Energy is
the GPU's NVML energy counter around ~1.5 s of repetitions.

    python scripts/measure_gpu.py --out calib/            # 8B, 1B, 3B and the Qwen3-30B-A3B slice
    python scripts/measure_gpu.py --shapes llama-3.2-1b --energy-all --out calib/
    infersched model fit --measurements calib/measurements.csv --ceilings calib/ceilings.json --out my-gpu.yaml

Writes measurements.csv (one row per step, a `model` column per row),
ceilings.json (copy bandwidth, GEMM rate, idle power, script version), the
slice's model spec (so the CSV's `model` column resolves), and
gpu_calibration.json (everything, raw). Without CUDA it runs a tiny smoke
configuration on the CPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.models import get_model  # noqa: E402
from workers.modelspec import ModelSpec  # noqa: E402

SCRIPT_VERSION = "2"  # 1: ../shared/calibration/measure_gpu.py (Llama-3.1-8B only)
CSV_COLUMNS = ("phase", "batch", "tokens_per_seq", "ms", "mean_power_w", "joules_per_token", "model")
DEFAULT_SHAPES = ("llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b", "qwen3-30b-a3b-slice")
SLICE_OF = "qwen3-30b-a3b"
SLICE_LAYERS = 8
PREFILL_TOKENS = (128, 512, 1024, 2048, 4096, 8192, 16384)
DECODE_BATCHES = (1, 4, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 2048, 8192)
DECODE_TOKEN_BUDGET = 262144  # batch x context, as in the 8B run (its KV fits beside the weights)
# (batch, context) points with energy measured by default: (N, 0) is an N-token prefill.
ENERGY_POINTS = ((2048, 0), (8192, 0), (1, 2048), (32, 2048), (128, 2048), (256, 512))


def slice_spec(layers: int = SLICE_LAYERS) -> ModelSpec:
    """The first `layers` layers of Qwen3-30B-A3B (128 experts, top-8) with its embedding and lm_head."""
    import dataclasses

    full = get_model(SLICE_OF)
    return dataclasses.replace(full, name=f"{SLICE_OF}-slice{layers}", layers=layers, capability=None, sources={})


def resolve_shapes(names: list[str], slice_layers: int = SLICE_LAYERS) -> list[ModelSpec]:
    """Model shapes to measure: built-in names, or `qwen3-30b-a3b-slice` for the MoE slice."""
    out = []
    for name in names:
        out.append(slice_spec(slice_layers) if name == f"{SLICE_OF}-slice" else get_model(name))
    return out


def decode_grid(contexts=DECODE_CONTEXTS, batches=DECODE_BATCHES, budget=DECODE_TOKEN_BUDGET):
    return [(b, ctx) for ctx in contexts for b in batches if b * ctx <= budget]


def spec_mapping(spec: ModelSpec) -> dict:
    """A ModelSpec as the keys a spec file holds (None and default values left out)."""
    from workers.modelspec import OPTIONAL_KEYS, REQUIRED_KEYS

    defaults = {k: ModelSpec.__dataclass_fields__[k].default for k in OPTIONAL_KEYS}
    out = {k: getattr(spec, k) for k in REQUIRED_KEYS}
    out.update({k: getattr(spec, k) for k in OPTIONAL_KEYS
                if k not in ("capability",) and getattr(spec, k) != defaults[k]})
    return out


def csv_rows(results: dict) -> list[dict]:
    """measurements.csv rows from the raw results: one per prefill length and decode point, energy where measured."""
    rows = []
    for r in results["models"]:
        energy = {(e["phase"], e.get("batch", 1), e.get("tokens", e.get("ctx"))): e for e in r["energy"]}
        for p in r["prefill"]:
            e = energy.get(("prefill", 1, p["tokens"]))
            rows.append(_row("prefill", 1, p["tokens"], p["ms"], e, r["spec_ref"]))
        for d in r["decode"]:
            e = energy.get(("decode", d["batch"], d["ctx"]))
            rows.append(_row("decode", d["batch"], d["ctx"], d["ms"], e, r["spec_ref"]))
    return rows


def _row(phase, batch, tokens, ms, energy, model) -> dict:
    return {"phase": phase, "batch": batch, "tokens_per_seq": tokens, "ms": round(ms, 4),
            "mean_power_w": "" if not energy or energy["mean_power_w"] is None else round(energy["mean_power_w"], 1),
            "joules_per_token": "" if not energy or energy["j_per_token"] is None else round(energy["j_per_token"], 6),
            "model": model}


def write_outputs(results: dict, out: Path) -> list[Path]:
    """measurements.csv, ceilings.json, each non-built-in shape's spec YAML, gpu_calibration.json."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results["models"]:
        if r.get("spec"):
            path = out / r["spec_ref"]
            path.write_text(yaml.safe_dump(r["spec"], sort_keys=False))
            written.append(path)
    path = out / "measurements.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(results))
    written.append(path)
    ceilings = {k: results.get(k) for k in ("device", "torch", "copy_GBps_rw", "gemm_TFLOPs_bf16", "d2h_GBps",
                                            "h2d_GBps", "idle_power_w", "sm_count", "mem_GiB")}
    ceilings["script_version"] = SCRIPT_VERSION
    path = out / "ceilings.json"
    path.write_text(json.dumps(ceilings, indent=1) + "\n")
    written.append(path)
    path = out / "gpu_calibration.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    written.append(path)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="measure_gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default $OUT or ./out)")
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                   help=f"comma-separated built-in models and/or {SLICE_OF}-slice (default: %(default)s)")
    p.add_argument("--slice-layers", type=int, default=SLICE_LAYERS,
                   help=f"layers in the {SLICE_OF} slice (default {SLICE_LAYERS})")
    p.add_argument("--energy-all", action="store_true", default=bool(os.environ.get("ENERGY_ALL")),
                   help="measure energy at every point (default: a few points per shape)")
    p.add_argument("--energy-s", type=float, default=float(os.environ.get("ENERGY_S", "1.5")),
                   help="seconds of repetitions per energy point (default 1.5)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and grid (what runs without CUDA)")
    args = p.parse_args(argv)
    if args.slice_layers < 1:
        p.error("--slice-layers must be >= 1")
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    try:
        args.specs = resolve_shapes(names, args.slice_layers)
    except KeyError as exc:
        p.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from scripts import measure_torch  # torch only from here on

    results = measure_torch.run(args)
    for path in write_outputs(results, Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
