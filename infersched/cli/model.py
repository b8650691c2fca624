"""`infersched model list|predict|check|fit`: thin wrappers over workers/.

Each subcommand parses its flags here and calls one function in workers/
(predict.listing, predict.predict, calibration.run_model_check,
calibration.fit_device + device_files.write_device_file).
"""
from __future__ import annotations

import sys
from datetime import date

__all__ = ["register"]


def register(subparsers):
    p = subparsers.add_parser("model", help="performance model tools: list, predict, check, fit")
    msub = p.add_subparsers(dest="model_command", required=True)
    lst = msub.add_parser("list", help="built-in devices and models: parameters, KV bytes per token, "
                                       "smallest instance per device")
    lst.add_argument("--json", metavar="PATH", help="write the listing as JSON to PATH ('-' for stdout)")
    lst.set_defaults(handler=_list)

    pr = msub.add_parser("predict", help="one instance's decode speed, TTFT, energy and price per output token")
    pr.add_argument("--device", required=True, help="catalogue device or device spec file")
    pr.add_argument("--model", required=True, help="built-in model or model spec file")
    pr.add_argument("--batch", type=int, default=1, help="sequences decoding at once (default 1)")
    pr.add_argument("--context", type=int, default=1024,
                    help="tokens each sequence holds, and the prompt length for TTFT (default 1024)")
    pr.add_argument("--chips", type=int, help="chips per instance (default: the fewest that hold the model "
                                              "and batch x context tokens of KV)")
    pr.add_argument("--draft", metavar="MODEL", help="speculative decoding: draft model (built-in or spec file), "
                                                     "run on the same instance; needs --acceptance")
    pr.add_argument("--acceptance", type=float, help="speculative decoding: chance the model accepts a drafted "
                                                     "token (0..1)")
    pr.add_argument("--draft-tokens", type=int, help="speculative decoding: tokens drafted per round (default: "
                                                     "the count with the most tokens/s)")
    pr.add_argument("--json", metavar="PATH", help="write the prediction as JSON to PATH ('-' for stdout)")
    pr.set_defaults(handler=_predict)

    c = msub.add_parser("check", help="compare the performance and energy model against measurements")
    c.add_argument("--device", default="h100-sxm", help="catalogue device or device spec file")
    c.add_argument("--model", default="llama-3.1-8b",
                   help="model of rows without a `model` column: built-in name or JSON/YAML spec file")
    c.add_argument("--chips", type=int, default=1)
    c.add_argument("--measurements", required=True, help="CSV as written by scripts/measure_gpu.py")
    c.add_argument("--json", metavar="PATH", help="write the result JSON to PATH ('-' for stdout)")
    c.set_defaults(handler=_check)

    f = msub.add_parser("fit", help="fit a device's efficiency, overhead and energy constants to measurements "
                                    "and write a device spec pools can name")
    f.add_argument("--measurements", required=True, help="CSV as written by scripts/measure_gpu.py")
    f.add_argument("--base", default="h100-sxm",
                   help="catalogue device whose datasheet figures, price and other constants the spec keeps "
                        "(default h100-sxm)")
    f.add_argument("--model", default="llama-3.1-8b", help="model of rows without a `model` column")
    f.add_argument("--ceilings", metavar="JSON",
                   help="ceilings.json from scripts/measure_gpu.py: sets the measured copy bandwidth "
                        "(the streaming bound) and idle power")
    f.add_argument("--name", help="device name in the spec (default: the output file's stem)")
    f.add_argument("--out", required=True, help="device spec YAML to write; use it as `device: ./FILE` in a pool")
    f.set_defaults(handler=_fit)
    return p


def _write_json(obj, path: str) -> None:
    from simulator.report import write_json

    write_json(obj, path)


def _list(args) -> int:
    from workers.models import MODELS
    from workers.predict import listing

    result = listing(MODELS)
    if args.json:
        _write_json(result, args.json)
        if args.json == "-":
            return 0
    for name, d in result["devices"].items():
        print(f"device {name:<10} {d['kind']:<6} {d['memory_gb']:>8.1f} GB {d['memory_bw_tb_s']:>8.2f} TB/s "
              f"{d['bf16_tflops']:>9.1f} TFLOP/s  ${d['price_usd_per_hour'] or 0:.2f}/h  "
              f"<= {d['max_chips_per_instance']} chips")
    devices = list(result["devices"])
    print(f"\n{'model':<17}{'total':>9}{'active':>9}{'weights':>9}{'KV B/tok':>10}  attention  "
          f"smallest instance holding it + {result['instance_kv_tokens']:,} tokens of KV (chips)")
    print(f"{'':<17}{'B':>9}{'B':>9}{'GB':>9}{'':>10}  {'':<9}  " + " ".join(f"{d:>8}" for d in devices))
    for name, m in result["models"].items():
        kv = f"{m['kv_bytes_per_token']:,.0f}"
        attention = m["attention"] + (f"+w{m['sliding_window']}" if m["sliding_window"] else "")
        chips = " ".join(f"{'-' if c is None else c:>8}" for c in m["smallest_instance_chips"].values())
        print(f"{name:<17}{m['params_b']:>9.1f}{m['active_params_b']:>9.1f}{m['weight_gb']:>9.1f}{kv:>10}  "
              f"{attention:<9}  {chips}")
    print("\nKV B/tok: cache bytes a token adds in full-attention layers (+wN: windowed layers hold the last N "
          "tokens); -: no instance of that device holds it")
    return 0


def _predict(args) -> int:
    from workers.devices import get_device
    from workers.models import load_model
    from workers.predict import PredictionError, predict

    device, model = get_device(args.device), load_model(args.model)
    if (args.draft is None) != (args.acceptance is None) or (args.draft_tokens and not args.draft):
        print("infersched: --draft and --acceptance go together (--draft-tokens needs both)", file=sys.stderr)
        return 2
    draft = load_model(args.draft) if args.draft else None
    try:
        result = predict(device, model, batch=args.batch, context=args.context, chips=args.chips, draft=draft,
                         acceptance=args.acceptance, draft_tokens=args.draft_tokens)
    except (PredictionError, ValueError) as exc:
        print(f"infersched: {exc}", file=sys.stderr if args.json == "-" else sys.stdout)
        return 1
    if args.json:
        _write_json(result, args.json)
        if args.json == "-":
            return 0
    print(f"{result['model']} on {result['chips']} x {result['device']}, batch {result['batch']}, "
          f"context {result['context']:,}: {result['decode_tokens_per_s']:,.1f} tokens/s per sequence, "
          f"TTFT {result['ttft_s'] * 1e3:,.1f} ms, {result['joules_per_output_token']:.4g} J and "
          f"${result['usd_per_million_output_tokens']:.4g} per million output tokens, "
          f"KV capacity {result['kv_capacity_tokens']:,} tokens")
    if "speculative" in result:
        spec = result["speculative"]
        print(f"speculative: {spec['draft']} drafts {spec['draft_tokens']} tokens a round at acceptance "
              f"{spec['acceptance']:g}, {spec['tokens_per_round']:.2f} tokens per round")
    return 0


def _check(args) -> int:
    from workers.calibration import format_model_check, run_model_check

    result = run_model_check(args.device, args.model, args.measurements, chips=args.chips)
    if args.json:
        _write_json(result, args.json)
    if args.json != "-":
        print(format_model_check(result))
    return 0


def _fit(args) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from workers.calibration import FIT_FIELDS, check_rows, fit_device, load_measurements, row_models
    from workers.device_files import write_device_file
    from workers.devices import get_device

    base = get_device(args.base)
    sources = dict(base.sources)
    if args.ceilings:
        ceilings = json.loads(Path(args.ceilings).read_text(encoding="utf-8"))
        updates = {}
        if ceilings.get("copy_GBps_rw"):
            updates["measured_copy_bw_bytes_s"] = float(ceilings["copy_GBps_rw"]) * 1e9
            sources["measured_copy_bw_bytes_s"] = f"measured device-to-device copy ({args.ceilings})"
        if ceilings.get("idle_power_w"):
            updates["idle_power_w"] = float(ceilings["idle_power_w"])
            sources["idle_power_w"] = f"measured idle board power ({args.ceilings})"
        # A measured ceiling below the base's efficiencies would make the base invalid: start under it.
        ceiling = updates.get("measured_copy_bw_bytes_s", base.memory_bw_bytes_s) / base.memory_bw_bytes_s
        for key in ("weight_bw_efficiency", "kv_bw_efficiency"):
            updates[key] = min(getattr(base, key), ceiling)
        base = dataclasses.replace(base, **updates)
    rows = load_measurements(args.measurements)
    models = row_models(rows, args.model, args.measurements)
    name = args.name or Path(args.out).stem
    result = fit_device(rows, models, base, name=name)
    note = f"fit to {args.measurements} ({', '.join(result.shapes)}; {result.points} points) on {date.today()}"
    for field in FIT_FIELDS:
        sources[field] = note + (f"; pinned: {result.pinned[field]}" if field in result.pinned else "")
    device = dataclasses.replace(result.device, sources=sources)
    check = check_rows(device, rows, models)["summary"]
    header = (f"Device spec fitted by `infersched model fit` from {args.measurements} on top of {args.base}.\n"
              f"Latency |error| median {check['latency_median_abs_error'] * 100:.1f}%, max "
              f"{check['latency_max_abs_error'] * 100:.1f}% over {check['points']} points.\n"
              f"Use it in a pool as `device: {args.out}`.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    path = write_device_file(device, args.out, base=args.base, header=header)
    for field in FIT_FIELDS:
        pinned = f"  (pinned: {result.pinned[field]})" if field in result.pinned else ""
        print(f"{field:<30} {getattr(device, field):.4g}{pinned}")
    print(f"latency |error| median {check['latency_median_abs_error'] * 100:.1f}%, max "
          f"{check['latency_max_abs_error'] * 100:.1f}%; energy |error| median "
          + ("-" if check["energy_median_abs_error"] is None else f"{check['energy_median_abs_error'] * 100:.1f}%"))
    print(f"wrote {path} (device name {device.name!r})")
    return 0
