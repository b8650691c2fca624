"""`infersched model check|list`: the performance model against measurements, and its catalogue."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("model", help="performance model tools")
    msub = p.add_subparsers(dest="model_command", required=True)
    c = msub.add_parser("check", help="compare the performance and energy model against measurements")
    c.add_argument("--device", default="h100-sxm")
    c.add_argument("--model", default="llama-3.1-8b", help="built-in model name or a JSON/YAML model spec file")
    c.add_argument("--chips", type=int, default=1)
    c.add_argument("--measurements", required=True, help="CSV as in ../shared/calibration/")
    c.add_argument("--json", metavar="PATH", help="write the result JSON to PATH ('-' for stdout)")
    lst = msub.add_parser("list", help="list built-in devices and models")
    lst.add_argument("--json", metavar="PATH")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from simulator.report import write_json

    if args.model_command == "list":
        return _list(args, write_json)
    from workers.calibration import format_model_check, run_model_check

    result = run_model_check(args.device, args.model, args.measurements, chips=args.chips)
    if args.json:
        write_json(result, args.json)
    if args.json != "-":
        print(format_model_check(result))
    return 0


def _list(args, write_json) -> int:
    from workers.devices import DEVICES
    from workers.models import MODELS

    listing = {
        "devices": {name: {"kind": d.kind, "memory_gb": d.memory_bytes / 1e9,
                           "memory_bw_tb_s": d.memory_bw_bytes_s / 1e12, "bf16_tflops": d.bf16_flops / 1e12,
                           "price_usd_per_hour": d.price_usd_per_hour} for name, d in DEVICES.items()},
        "models": {name: {"params_b": m.params / 1e9, "layers": m.layers, "hidden": m.hidden}
                   for name, m in MODELS.items()},
    }
    if args.json:
        write_json(listing, args.json)
    else:
        for name, d in listing["devices"].items():
            print(f"device {name:<10} {d['kind']:<6} {d['memory_gb']:>8.1f} GB {d['memory_bw_tb_s']:>8.2f} TB/s "
                  f"{d['bf16_tflops']:>9.1f} TFLOP/s  ${d['price_usd_per_hour'] or 0:.2f}/h")
        for name, m in listing["models"].items():
            print(f"model  {name:<16} {m['params_b']:>7.2f} B params, {m['layers']} layers")
    return 0
