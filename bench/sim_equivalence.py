"""Same results from two checkouts: replay a grid of cluster x policy x workload in each and compare.

A change to the simulator's hot paths must not change what it computes. Each replay's
digest holds: every record column hashed (sha256 of its bytes), the ITL histogram, the
event count, the summary JSON (its two wall-clock fields dropped), and, for a subset, the
decision log's sha256.

    python bench/sim_equivalence.py digest --tree DIR --out A.json [--requests 2000]
    python bench/sim_equivalence.py compare A.json B.json
`digest` imports the simulator from DIR (a checkout, e.g. one made with `git archive`);
`compare` prints the replays whose digests differ, field by field, and exits 1 if any do.
The grid: every built-in cluster but live-small x every built-in policy x the conversation
trace at 300 req/s (GPU clusters) or 40 req/s (the rest), at 600 req/s on GPU clusters, and
a session trace with prefix reuse; pairs a cluster cannot run (a policy needing pools it has
not) are recorded as their error and compared as such.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU = ("gpu-colocated", "gpu-disagg", "gpu-mixed")
WALL_FIELDS = ("sim_wall_s", "sim_requests_per_s")  # the summary's two wall-clock fields


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digest(tree: str, requests: int, log_every: int) -> dict:
    sys.path.insert(0, tree)
    import numpy as np

    from scheduler.cluster import Cluster
    from scheduler.config import load_cluster
    from scheduler.decision_log import DecisionLog
    from scheduler.registry import POLICIES, build_policy
    from simulator.metrics import summarize
    from simulator.sessions import session_trace
    from simulator.sim import Simulation
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    trace = read_trace(builtin_trace_path())
    sessions = session_trace(trace, requests, 40.0, seed=1)
    clusters = sorted(p.stem for p in (Path(tree) / "deploy" / "clusters").glob("*.yaml") if p.stem != "live-small")
    out = {}
    k = 0
    for cluster in clusters:
        config = load_cluster(Path(tree) / "deploy" / "clusters" / f"{cluster}.yaml")
        rates = (300.0, 600.0) if cluster in GPU else (40.0,)
        loads = [(f"conv@{r:g}", make_workload(trace, n_requests=requests, rate_rps=r, arrival="poisson", seed=0))
                 for r in rates]
        loads.append(("sessions@40", make_workload(sessions, n_requests=requests)))
        for policy in POLICIES:
            for name, workload in loads:
                key = f"{cluster}:{policy}:{name}"
                k += 1
                buf = io.StringIO() if k % log_every == 0 else None
                try:
                    sim = Simulation(Cluster(config), build_policy(policy, config), workload, seed=0,
                                     decision_log=DecisionLog(buf) if buf is not None else None)
                    res = sim.run()
                except Exception as exc:  # recorded and compared: both trees should fail alike
                    out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                summary = summarize(res)
                for f in WALL_FIELDS:
                    summary.pop(f, None)
                cols = {c: _sha(np.ascontiguousarray(v).tobytes()) for c, v in res.records.columns().items()}
                itl = res.itl
                row = {"events": res.events, "columns": cols,
                       "itl": _sha(itl.counts.tobytes() + repr((itl.tokens, itl.sum_s)).encode()),
                       "summary": _sha(json.dumps(summary, sort_keys=True, default=repr).encode())}
                if buf is not None:
                    row["decision_log"] = _sha(buf.getvalue().encode())
                out[key] = row
    return out


def compare(a: dict, b: dict) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        if ra == rb:
            continue
        if ra is None or rb is None:
            diffs.append(f"{key}: only in {'second' if ra is None else 'first'}")
            continue
        fields = sorted(f for f in set(ra) | set(rb) if ra.get(f) != rb.get(f))
        if "columns" in fields:
            cols = sorted(c for c in ra["columns"] if ra["columns"].get(c) != rb["columns"].get(c))
            fields = [f for f in fields if f != "columns"] + [f"columns.{c}" for c in cols]
        diffs.append(f"{key}: {', '.join(fields)}")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("digest")
    d.add_argument("--tree", default=str(ROOT))
    d.add_argument("--out", required=True)
    d.add_argument("--requests", type=int, default=2000)
    d.add_argument("--log-every", type=int, default=2, help="write the decision log of every n-th replay")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "digest":
        rows = digest(args.tree, args.requests, args.log_every)
        Path(args.out).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        errors = sum(1 for r in rows.values() if "error" in r)
        logs = sum(1 for r in rows.values() if "decision_log" in r)
        print(f"{len(rows)} replays ({errors} errors, {logs} decision logs) -> {args.out}")
        return
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    diffs = compare(a, b)
    for line in diffs:
        print(line)
    same = sum(1 for k in a if a.get(k) == b.get(k))
    print(f"{same} of {len(set(a) | set(b))} replays identical")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
