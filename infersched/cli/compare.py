"""`infersched compare`: several policies on one workload, a table and a Pareto plot."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infersched.cli.clusters import resolve
from infersched.cli.common import (CLUSTER_HELP, DEFAULT_CLUSTER, add_runtime_arguments, add_slo_arguments,
                                   add_trace_arguments,
                                   runtime_options, say_skipped, skip_hint, trace_record, workload_spec)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="run several policies on the same workload and cluster and compare them",
        description="Replay the same workload through several policies and print SLO attainment, p99 "
                    "TTFT/TPOT, quality, dollars, joules, J per token, queries per kWh and share per pool; "
                    "write a cost-vs-energy-vs-quality Pareto plot next to the JSON.")
    p.add_argument("--policies", required=True,
                   help="comma-separated policy names (see `infersched policies`); POLICY@CLUSTER runs that "
                        "policy on another cluster (a YAML path or a built-in name)")
    add_trace_arguments(p, trace_help="trace file (default: the built-in Azure 2023 conversation trace)",
                        requests_help="number of requests (default: the whole trace)")
    p.add_argument("--cluster", help=f"{CLUSTER_HELP} (default {DEFAULT_CLUSTER})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter for every run, e.g. router_accuracy=0.8 (repeatable)")
    p.add_argument("--difficulty-table", metavar="C:S,...",
                   help="reach table: capability:share-of-queries-within-reach pairs (default: "
                        "simulator/quality.py, an assumed 71%% within an edge-class model's reach)")
    add_slo_arguments(p, default=None, default_text="the cluster file's")
    p.add_argument("--json", metavar="PATH", help="write the comparison JSON to PATH ('-' for stdout); the "
                                                  "Pareto plot goes next to it (PATH with .png)")
    p.add_argument("--out", metavar="DIR", help="write compare.json, pareto.png and one summary JSON per policy "
                                                "(LABEL.json, the summary `simulate --json` writes)")
    add_runtime_arguments(p)
    p.set_defaults(handler=run)
    return p


def parse_params(items: list[str]) -> dict:
    """--param KEY=VALUE items as a dict; VALUE is read as YAML (numbers, booleans, lists)."""
    import yaml

    from scheduler.config import ConfigError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        params[key.strip()] = yaml.safe_load(value)
    return params


def summary_file_name(label: str) -> str:
    """A run label as a file name: POLICY@CLUSTER with the cluster's path reduced to its stem."""
    policy, _, cluster = label.partition("@")
    return f"{policy}@{Path(cluster).stem}" if cluster else policy


def run(args) -> int:
    """Exit status 0; 1 when a run failed (the others are still reported and written)."""
    from simulator.compare import format_table, pareto_front, plot_pareto, policy_jobs
    from simulator.jobs import build_workload, report_failures, run_jobs
    from simulator.quality import DifficultyModel, parse_table
    from simulator.report import write_json

    params = parse_params(args.param)
    spec = workload_spec(args, difficulty_table=parse_table(args.difficulty_table) if args.difficulty_table
                         else None)
    with skip_hint():
        trace, workload, difficulty = build_workload(spec)  # bad input fails here, before any run
    say_skipped(trace)
    cluster = str(resolve(args.cluster)) if args.cluster else None
    jobs = policy_jobs(args.policies.split(","), spec, cluster, seed=args.seed, params=params,
                       ttft_s=args.ttft_slo, tpot_s=args.tpot_slo)
    results = run_jobs(jobs, **runtime_options(args))
    summaries = results.ok()
    front = pareto_front(summaries)
    doc = {"workload": workload.description, "seed": args.seed, "params": params,
           "trace": {**trace_record(trace, args), "path": args.trace or trace.path},
           "difficulty": "trace column" if not isinstance(difficulty, DifficultyModel)
           else {"table": [list(p) for p in difficulty.table], "seed": difficulty.seed},
           "pareto_front": front, "runs": summaries}
    if results.failures:
        doc["failed_runs"] = [{"label": f.label, "error": f.error} for f in results.failures]
    written = []
    plot = (lambda path: written.append(plot_pareto(summaries, front, path, workload.description))) if summaries \
        else (lambda path: None)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(doc, str(out / "compare.json"))
        written.append(out / "compare.json")
        plot(out / "pareto.png")
        for summary in summaries:
            path = out / f"{summary_file_name(summary['label'])}.json"
            write_json({**summary, "trace": doc["trace"]}, str(path))
            written.append(path)
    if args.json:
        write_json(doc, args.json)
        if args.json != "-":
            written.append(Path(args.json))
            plot(Path(args.json).with_suffix(".png"))
    if args.json != "-":
        print(f"workload: {workload.description}")
        print(format_table(summaries, front))
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return report_failures(results, "compare")
