"""The command line: run every section (or `--section NAME`, repeatable), save the JSON, write the doc.

`--doc-only` runs nothing and rebuilds the doc from the saved JSON. Running some
sections keeps the others' saved results, so the doc always has every section.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

from infersched.cli.common import add_runtime_arguments, runtime_options
from simulator.jobs import ray_session
from simulator.traces import builtin_trace_path, read_trace

from bench.economics import common, fleet
from bench.economics.doc import write_doc
from bench.economics.registry import by_name

USAGE = __import__("bench.economics", fromlist=["__doc__"]).__doc__


def reach_table() -> list[tuple[str, float]]:
    """(model, share of queries within its reach) for the built-in models the default table anchors."""
    from simulator.quality import DEFAULT_REACH_TABLE
    from workers.models import MODELS

    by_capability = {m.capability: name for name, m in MODELS.items() if name.startswith("llama-")}
    return [(by_capability[c], share) for c, share in DEFAULT_REACH_TABLE if c in by_capability]


def parse_args(argv=None):
    sections = by_name()
    ap = argparse.ArgumentParser(prog="python -m bench.economics", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seeds", default=",".join(map(str, common.SEEDS)),
                    help="comma-separated workload seeds, one run of each configuration per seed")
    ap.add_argument("--section", action="append", choices=list(sections), metavar="NAME",
                    help="run this section only (repeatable): " + ", ".join(sections))
    ap.add_argument("--only", help="comma-separated sections (the same as --section for each)")
    ap.add_argument("--json", default=str(common.ROOT / "bench" / "results" / "economics.json"))
    ap.add_argument("--doc", default=str(common.ROOT / "docs" / "ECONOMICS.md"))
    ap.add_argument("--doc-only", action="store_true", help="regenerate the document from the JSON, run nothing")
    add_runtime_arguments(ap)
    args = ap.parse_args(argv)
    names = list(args.section or [])
    for name in (args.only.split(",") if args.only else []):
        if name not in sections:
            ap.error(f"--only: unknown section {name!r} (choose from {', '.join(sections)})")
        names.append(name)
    args.names = names
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.doc_only:
        write_doc(json.loads(Path(args.json).read_text()), Path(args.doc))
        print(f"wrote {args.doc}")
        return
    sections = by_name()
    trace = read_trace(common.CONV if common.CONV.exists() else builtin_trace_path())
    names = args.names or list(sections)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.exists() and args.names else {}
    results["meta"] = {"trace": str(Path(trace.path).name), "trace_rows": trace.rows, "requests": args.requests,
                       "seed": common.SEED, "seeds": [int(x) for x in args.seeds.split(",")], "python": platform.python_version(), "machine": platform.machine(),
                       "date": time.strftime("%Y-%m-%d"), "reach_table": reach_table(),
                       "sizing_seed": fleet.SIZING_SEED, "sizing_target": fleet.TARGET,
                       "sizing_near_best": fleet.NEAR_BEST}
    common.RUNTIME.update(runtime_options(args))
    common.OUT_DIR[:] = [path.parent]
    common.SEEDS[:] = [int(x) for x in args.seeds.split(",")]
    on_ray = args.parallel is not None or args.address is not None
    with ray_session(args.parallel, args.address) if on_ray else nullcontext() as ray:
        if ray is not None:
            common.WIDTH[0] = max(1, int(ray.cluster_resources().get("CPU", 1)))
        for name in names:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            results[name] = sections[name].run(trace, args.requests)
            # Judgements ran on the pool serving the judge's model where the cluster has one
            # (simulator/judges.py); results without this key were charged at batch 1, unqueued.
            results[name]["judges"] = "pooled"
            results[name]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    write_doc(results, Path(args.doc))
    print(f"wrote {args.doc}")
