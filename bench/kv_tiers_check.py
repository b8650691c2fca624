"""Before/after checks for the prefix cache's tiers: every bench/kv_tiers.py configuration's
summary, and the replay CPU of two checkouts measured alternately in one process.

    python bench/kv_tiers_check.py summaries OUT.json [--tree DIR] [--requests N]
        every configuration's summary (replay CPU left out), from the checkout at DIR
    python bench/kv_tiers_check.py compare A.json B.json
        exit 1 unless the two files hold the same summaries, to the bit
    python bench/kv_tiers_check.py cpu --base DIR [--requests N] [--rounds R] [--levels L,..]
        alternating replays of DIR (say a `git archive` of main) and this checkout in one
        process, best of R per level and tree, printed as ratios against each tree's HBM only
    python bench/kv_tiers_check.py one CLUSTER LEVEL [--requests N]
        one replay (for valgrind --tool=callgrind or py-spy); --dry: all but the replay, so
        `valgrind --tool=callgrind` of both, subtracted, counts the replay's instructions

The trace is bench/kv_tiers.py's (--input-scale 10 session trace at 4 req/s, seed 1).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler", "simulator", "workers", "infersched")
REPLAY_MODULES = ("scheduler.cluster", "scheduler.registry", "simulator.metrics", "simulator.sim", "simulator.workload")
TIMINGS = ("replay_cpu_s", "sim_wall_s", "sim_requests_per_s")  # how long the replay took, not what it did


def bench_module():
    sys.path.insert(0, str(ROOT / "bench"))
    import kv_tiers

    return kv_tiers


class Tree:
    """One checkout's project modules, swapped into sys.modules while it runs."""

    def __init__(self, path: Path):
        self.path = str(path.resolve())
        self.modules: dict = {}

    def enter(self) -> None:
        for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
            del sys.modules[name]
        sys.path.insert(0, self.path)
        sys.modules.update(self.modules)
        for name in REPLAY_MODULES:  # loaded outside the timing
            importlib.import_module(name)

    def leave(self) -> None:
        self.modules = {m: mod for m, mod in sys.modules.items() if m.split(".")[0] in PACKAGES}
        assert all(getattr(mod, "__file__", None) is None or mod.__file__.startswith(self.path)
                   for mod in self.modules.values()), f"modules from outside {self.path}"
        sys.path.remove(self.path)


def trace_of(requests: int):
    from simulator.sessions import reuse_stats, session_trace
    from simulator.traces import builtin_trace_path, read_trace

    trace = session_trace(read_trace(builtin_trace_path()), requests, 4.0, seed=1, input_scale=10)
    return trace, reuse_stats(trace)["unique_blocks"]


def replay_records(kind: str, level: tuple, trace, store_gb: float) -> dict:
    """kv_tiers.replay's summary without its timings, with a digest of every request's record
    (times, instances, cached tokens, energy: each column's bytes)."""
    import hashlib

    from scheduler.cluster import Cluster
    from scheduler.config import parse_cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation
    from simulator.workload import make_workload

    kv = bench_module()
    label, tiers, store = level
    pool = {**kv.CLUSTERS[kind], **({"kv_tiers": tiers} if tiers else {})}
    if store is not None and "capacity_gb" not in store:
        store = {**store, "capacity_gb": store_gb}
    cl = Cluster(parse_cluster({"name": f"{kind}{label}", "pools": [pool], **({"kv_store": store} if store else {})}))
    result = Simulation(cl, build_policy("prefix-aware", cl.config), make_workload(trace)).run()
    s = summarize(result)
    for timing in TIMINGS:
        s.pop(timing, None)
    s["records_sha256"] = {name: hashlib.sha256(col.tobytes()).hexdigest()[:16]
                           for name, col in result.records.columns().items()}
    return s


def summaries(args) -> None:
    kv = bench_module()
    tree = Tree(Path(args.tree))
    tree.enter()
    trace, unique = trace_of(args.requests)
    out = {}
    for kind in kv.CLUSTERS:
        store_gb = kv.working_set_gb(kind, unique)
        for level in kv.LEVELS:
            s = replay_records(kind, level, trace, store_gb)
            out[f"{kind} {level[0]}"] = s
            print(kind, level[0], s["prefix_hit_tokens_by_tier"], flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def compare(args) -> None:
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    print(f"{len(a)} and {len(b)} summaries; differ: {differ or 'none'}")
    sys.exit(1 if differ else 0)


def cpu(args) -> None:
    kv = bench_module()
    trees = {"base": Tree(Path(args.base)), "this": Tree(ROOT)}
    levels = [lv for lv in kv.LEVELS if lv[0] in args.levels.split(",")] if args.levels else kv.LEVELS
    if levels[0][0] != "hbm":
        levels = [kv.LEVELS[0]] + levels
    best: dict = {}
    traces: dict = {}  # per tree: each checkout's own Trace class
    for r in range(args.rounds):
        for name, tree in trees.items():
            tree.enter()
            if name not in traces:
                traces[name] = trace_of(args.requests)
            trace, unique = traces[name]
            for kind in args.clusters.split(","):
                store_gb = kv.working_set_gb(kind, unique)
                for level in levels:
                    s = kv.replay(kind, level, trace, store_gb)
                    key = (name, kind, level[0])
                    best[key] = min(best.get(key, 1e9), s["replay_cpu_s"] / s["requests"])
            tree.leave()
        print(f"round {r + 1}/{args.rounds} load {os.getloadavg()[0]:.1f}", flush=True)
    rows = {}
    for kind in args.clusters.split(","):
        for level in levels:
            ratios = {name: best[(name, kind, level[0])] / best[(name, kind, "hbm")] for name in trees}
            rows[f"{kind} {level[0]}"] = {"base_us": best[("base", kind, level[0])] * 1e6,
                                          "this_us": best[("this", kind, level[0])] * 1e6,
                                          "base_ratio": ratios["base"], "this_ratio": ratios["this"]}
            print(f"{kind:8s} {level[0]:20s} base {best[('base', kind, level[0])] * 1e6:6.1f} us "
                  f"{ratios['base']:.2f}x   this {best[('this', kind, level[0])] * 1e6:6.1f} us "
                  f"{ratios['this']:.2f}x", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rounds": args.rounds,
                                              "requests": args.requests, "rows": rows}, indent=1) + "\n")


def one(args) -> None:
    kv = bench_module()
    sys.path.insert(0, str(ROOT))
    trace, unique = trace_of(args.requests)
    level = next(lv for lv in kv.LEVELS if lv[0] == args.level)
    for name in REPLAY_MODULES:  # the same work with --dry
        importlib.import_module(name)
    if args.dry:
        return
    t = time.process_time()
    s = kv.replay(args.cluster, level, trace, kv.working_set_gb(args.cluster, unique))
    print(f"{args.cluster} {args.level}: {(time.process_time() - t) / s['requests'] * 1e6:.1f} us/request "
          f"hit {s['prefix_hit_tokens_by_tier']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("summaries")
    p.add_argument("out")
    p.add_argument("--tree", default=str(ROOT))
    p.add_argument("--requests", type=int, default=3000)
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("cpu")
    p.add_argument("--base", required=True)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--clusters", default="dense,moe-mla")
    p.add_argument("--levels", default="", help="comma-separated LEVELS labels (HBM only always runs)")
    p.add_argument("--out", default="")
    p = sub.add_parser("one")
    p.add_argument("cluster")
    p.add_argument("level")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--dry", action="store_true", help="everything but the replay: subtract its instructions")
    args = ap.parse_args()
    {"summaries": summaries, "compare": compare, "cpu": cpu, "one": one}[args.cmd](args)


if __name__ == "__main__":
    main()
