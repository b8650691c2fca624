"""How well the performance model predicts points it was not fitted on.

The shipped H100 constants are fitted to every row of the calibration CSV, so
`infersched model check` measures fit, not prediction. Here the same fitting
procedure runs on a subset and is scored on the held-out rows:

- long context: fit on rows with <= 4,096 tokens per sequence, predict the longer ones;
- large batch: fit on prefill and decode batches <= 64, predict batches 128 and 256;
- leave one out: each row predicted by a fit on the other 23.

    python bench/model_holdout.py      # ~10 s; writes bench/results/model_holdout.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.calibration import _predict, fit_device, load_measurements  # noqa: E402
from workers.devices import get_device  # noqa: E402
from workers.models import get_model  # noqa: E402
from workers.perf import InstancePerf  # noqa: E402

CSV = ROOT.parent / "shared" / "calibration" / "h100_llama-3.1-8b.csv"


def fit(rows):
    """The shipped procedure on a subset: streaming pinned at the copy ceiling, the rest fitted."""
    model = get_model("llama-3.1-8b")
    return InstancePerf(fit_device(rows, [model] * len(rows), get_device("h100-sxm")).device, model)


def errors(perf, rows):
    out = []
    for m in rows:
        t, dyn = _predict(perf, m)
        jpt = (perf.idle_power_w * t + dyn) / m.tokens
        out.append({"phase": m.phase, "batch": m.batch, "tokens_per_seq": m.tokens_per_seq,
                    "latency_error": (t * 1e3 - m.ms) / m.ms,
                    "energy_error": (jpt - m.joules_per_token) / m.joules_per_token})
    return out


def summary(points):
    lat = [abs(p["latency_error"]) for p in points]
    en = [abs(p["energy_error"]) for p in points]
    return {"points": len(points), "latency_median_abs_error": statistics.median(lat),
            "latency_max_abs_error": max(lat), "energy_median_abs_error": statistics.median(en),
            "energy_max_abs_error": max(en)}


def main() -> None:
    rows = load_measurements(CSV)
    splits = {
        "long_context": lambda m: m.tokens_per_seq <= 4096,
        "large_batch": lambda m: m.phase == "prefill" or m.batch <= 64,
    }
    result = {}
    for name, train_if in splits.items():
        train = [m for m in rows if train_if(m)]
        test = [m for m in rows if not train_if(m)]
        result[name] = {"train_points": len(train), **summary(errors(fit(train), test)),
                        "held_out": errors(fit(train), test)}
        print(name, json.dumps({k: v for k, v in result[name].items() if k != "held_out"}))
    loo = []
    for i in range(len(rows)):
        loo += errors(fit(rows[:i] + rows[i + 1:]), [rows[i]])
    result["leave_one_out"] = summary(loo)
    print("leave_one_out", json.dumps(result["leave_one_out"]))
    out = ROOT / "bench" / "results" / "model_holdout.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
