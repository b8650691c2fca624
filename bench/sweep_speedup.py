"""`infersched compare` of four policies: sequential vs `--parallel 2` vs `--address` on a two-node cluster.

    python bench/sweep_speedup.py                     # 400,000 requests per policy, seq and --parallel 2
    python bench/sweep_speedup.py --multinode         # also on deploy/local_multinode.sh's two nodes
    python bench/sweep_speedup.py --requests 50000 --rounds 2

Each command runs as its own process and is timed whole (imports, reading the
trace, starting or joining Ray, shipping the checkout, every simulation, writing
the JSON); the runs of one round follow each other, so their ratio is measured in
one window. Every run's JSON must equal the sequential one's except the wall-clock
fields. Writes bench/results/sweep_speedup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.jobs import without_wall_clock  # noqa: E402

SCRIPT = ROOT / "deploy" / "local_multinode.sh"


def _env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    env.pop("RAY_ADDRESS", None)
    return env


def compare(args, out: Path, *extra: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "infersched.cli", "compare", "--cluster", args.cluster, "--policies", args.policies,
           "--requests", str(args.requests), "--rate", str(args.rate), "--seed", "0", "--json", str(out),
           "--no-progress", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    wall_s = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    doc = json.loads(out.read_text())
    doc["runs"] = [without_wall_clock(r) for r in doc["runs"]]
    return wall_s, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="least-loaded,round-robin,slo-aware,prefix-aware")
    ap.add_argument("--cluster", default="hybrid")
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (sequential, parallel[, multinode])")
    ap.add_argument("--multinode", action="store_true", help="also join deploy/local_multinode.sh's two nodes")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "sweep_speedup.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    temp_dir = tempfile.mkdtemp(prefix="isb-", dir="/tmp")
    address = None
    rounds = []
    try:
        if args.multinode:
            # Task workers at nice 0 like the sequential run (Ray's default, 15, yields to every other
            # process on a shared machine; --parallel's local instance does the same).
            started = subprocess.run([str(SCRIPT), "start", "--temp-dir", temp_dir], capture_output=True, text=True,
                                     env=dict(_env(), RAY_worker_niceness="0"), cwd=ROOT, timeout=180)
            if started.returncode != 0:
                sys.exit(f"local_multinode.sh start failed:\n{started.stderr}")
            address = re.search(r"^RAY_ADDRESS=(\S+)$", started.stdout, re.M)[1]
        for i in range(args.rounds):
            load_before = os.getloadavg()[0]
            seq_s, seq = compare(args, tmp / "seq.json")
            par_s, par = compare(args, tmp / "par.json", "--parallel", "2")
            row = {"load_avg_1m_before": round(load_before, 2), "sequential_s": round(seq_s, 1),
                   "parallel_2_s": round(par_s, 1), "parallel_2_speedup": round(seq_s / par_s, 2),
                   "parallel_2_same_json": par == seq}
            if address:
                multi_s, multi = compare(args, tmp / "multi.json", "--address", address)
                row.update(two_nodes_s=round(multi_s, 1), two_nodes_speedup=round(seq_s / multi_s, 2),
                           two_nodes_same_json=multi == seq)
            row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            row["sequential_sim_wall_s"] = {r["label"]: round(r["sim_wall_s"], 1)
                                            for r in json.loads((tmp / "seq.json").read_text())["runs"]}
            print(f"round {i + 1}: {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        if address:
            subprocess.run([str(SCRIPT), "stop", "--temp-dir", temp_dir], capture_output=True, env=_env(),
                           timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"command": f"infersched compare --cluster {args.cluster} --policies {args.policies} --requests {args.requests} --rate "
                         f"{args.rate:g} --seed 0", "rounds": rounds,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine(),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
