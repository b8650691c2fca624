"""`infersched compare`: several policies on the same workload and cluster, side by side.

Every policy replays the very same requests (same trace rows, arrivals and
difficulties: the workload is built once from the seed), so differences are
the policies', not sampling noise. Prints one table; writes the runs' JSON and
a cost-vs-energy-vs-quality Pareto plot next to it.

An entry of --policies may name its own cluster as POLICY@CLUSTER (a YAML path
or a built-in name such as cloud-only), to compare, say, local-first on an
edge-plus-cloud cluster against least-loaded on the cloud alone.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

DEFAULT_CLUSTER = "demo"


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` subcommand; its handler is `args.handler` (run_compare)."""
    p = subparsers.add_parser(
        "compare", help="run several policies on the same workload and cluster and compare them",
        description="Replay the same workload through several policies and print SLO attainment, p99 "
                    "TTFT/TPOT, quality, dollars, joules, J per token, queries per kWh and share per pool; "
                    "write a cost-vs-energy-vs-quality Pareto plot next to the JSON.")
    p.add_argument("--policies", required=True,
                   help="comma-separated policy names (see `infersched policies`); POLICY@CLUSTER runs that "
                        "policy on another cluster (a YAML path or a built-in name)")
    p.add_argument("--trace", help="trace file (default: the built-in Azure 2023 conversation trace)")
    p.add_argument("--format", choices=["azure", "vidur", "lengths", "burstgpt", "mooncake"])
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--requests", type=int, help="number of requests (default: the whole trace)")
    p.add_argument("--rate", type=float, help="arrival rate in requests/s (synthesized arrivals)")
    p.add_argument("--arrival", choices=["trace", "poisson", "gamma", "diurnal"])
    p.add_argument("--cluster", help=f"cluster YAML (default deploy/clusters/{DEFAULT_CLUSTER}.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter for every run, e.g. router_accuracy=0.8 (repeatable)")
    p.add_argument("--difficulty-table", metavar="C:S,...",
                   help="reach table: capability:share-of-queries-within-reach pairs (default: "
                        "simulator/quality.py, 71%% within an edge-class model's reach)")
    p.add_argument("--slo-ttft", type=float, help="TTFT SLO in seconds (overrides the cluster file's)")
    p.add_argument("--slo-tpot", type=float, help="TPOT SLO in seconds (overrides the cluster file's)")
    p.add_argument("--json", metavar="PATH", help="write the comparison JSON to PATH ('-' for stdout); the "
                                                  "Pareto plot goes next to it (PATH with .png)")
    p.add_argument("--out", metavar="DIR", help="write compare.json, pareto.png and one summary per policy")
    p.set_defaults(handler=run_compare)
    return p


def _parse_params(items: list[str]) -> dict:
    import yaml

    from scheduler.config import ConfigError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _load_cluster(name: str | None):
    from scheduler.config import builtin_cluster_path, load_cluster

    if name is None:
        return load_cluster(builtin_cluster_path(DEFAULT_CLUSTER))
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return load_cluster(name)
    return load_cluster(builtin_cluster_path(name))


def _with_slo(config, ttft_s, tpot_s):
    from scheduler.config import ConfigError

    for flag, value in (("--slo-ttft", ttft_s), ("--slo-tpot", tpot_s)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag}: must be > 0, got {value}")
    slo = config.slo
    if ttft_s is not None:
        slo = replace(slo, ttft_s=ttft_s)
    if tpot_s is not None:
        slo = replace(slo, tpot_s=tpot_s)
    return replace(config, slo=slo)


def run_policies(entries: list[str], workload, cluster_name: str | None = None, seed: int = 0,
                 params: dict | None = None, ttft_s: float | None = None, tpot_s: float | None = None):
    """Run each POLICY[@CLUSTER] entry on `workload`; returns [(label, SimResult, summary)]."""
    from scheduler.cluster import Cluster
    from scheduler.config import ConfigError
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation

    if not entries:
        raise ConfigError("--policies: give at least one policy")
    labels = [e.strip() for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--policies: duplicate entry in {','.join(labels)}")
    base = _with_slo(_load_cluster(cluster_name), ttft_s, tpot_s)
    # Build every cluster and policy first, so a bad name fails before any run.
    plans = []
    for label in labels:
        name, _, cluster = label.partition("@")
        if not name:
            raise ConfigError(f"--policies: empty policy name in {label!r}")
        config = _with_slo(_load_cluster(cluster), ttft_s, tpot_s) if cluster else base
        policy = build_policy(name, config, overrides=params)
        plans.append((label, Cluster(config), policy))
    runs = []
    for label, cluster, policy in plans:
        result = Simulation(cluster, policy, workload, seed=seed).run()
        summary = summarize(result)
        summary["label"] = label
        runs.append((label, result, summary))
    return runs


def pareto_front(summaries: list[dict]) -> list[str]:
    """Labels not dominated on (cost lower, energy lower, quality higher)."""
    front = []
    for a in summaries:
        dominated = False
        for b in summaries:
            if b is a:
                continue
            no_worse = (b["cost_usd"] <= a["cost_usd"] and b["energy_j"] <= a["energy_j"]
                        and b["quality"] >= a["quality"])
            better = (b["cost_usd"] < a["cost_usd"] or b["energy_j"] < a["energy_j"] or b["quality"] > a["quality"])
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(a["label"])
    return front


def _pct(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def short_label(label: str) -> str:
    """POLICY@path/to/cluster.yaml -> POLICY@cluster."""
    name, sep, cluster = label.partition("@")
    return f"{name}@{Path(cluster).stem}" if sep else name


def format_table(summaries: list[dict], front: list[str]) -> str:
    from simulator.report import fmt_s, format_table as table, kwh

    rows = []
    for s in summaries:
        shares = ", ".join(f"{name} {p['share'] * 100:.0f}%" for name, p in s["pools"].items() if p["share"] > 0)
        jtok = s["energy_per_output_token_j"]
        qkwh = s["queries_per_kwh"]
        mark = "*" if s["label"] in front else " "
        rows.append([mark + short_label(s["label"]), _pct(s["slo_attainment"]), fmt_s(s["ttft_s"]["p99"]),
                     fmt_s(s["tpot_s"]["p99"]), _pct(s["quality"]), f"{s['escalations'] + s['advised_requests']:,}",
                     f"{s['cost_usd']:,.2f}", f"{s['served_cost_usd']:,.2f}", kwh(s["energy_j"]),
                     kwh(s["served_energy_j"]), "-" if jtok is None else f"{jtok:.3f}",
                     "-" if qkwh is None else f"{qkwh:,.0f}", shares])
    lines = table(["policy", "SLO", "p99 TTFT", "p99 TPOT", "quality", "esc", "cost $", "served $", "kWh",
                   "served kWh", "J/tok", "q/kWh", "share per pool"], rows, align="<" + ">" * 11 + "<")
    lines.append("* on the cost / energy / quality Pareto front. cost $ and kWh: the provisioned cluster over "
                 "the run (idle included); served: busy time attributed to requests. esc: escalations + advised "
                 "requests. J/tok: energy per output token; q/kWh: completed queries per kWh")
    if any(s.get("prefix_hit_tokens") for s in summaries):
        lines += table(["prefix caching", "cached", "computed tokens", "p50 TTFT", "busiest/mean"],
                       [[" " + short_label(s["label"]), _pct(s["prefix_hit_rate"]), f"{s['prefill_computed_tokens']:,}",
                         fmt_s(s["ttft_s"]["p50"]), f"{s['max_instance_load_ratio']:.2f}x"] for s in summaries],
                       align="<")
        lines.append("cached: share of prompt tokens served from prefix caches; computed: prompt tokens prefilled; "
                     "busiest/mean: requests on the busiest instance over its pool's mean")
    return "\n".join(lines)


def plot_pareto(summaries: list[dict], front: list[str], path: Path, title: str = "") -> Path:
    from simulator.plots import plot_pareto as plot

    return plot(summaries, front, path, title, short_label=short_label)


def run_compare(args) -> int:
    from simulator.quality import DifficultyModel, parse_table, read_difficulty_column
    from simulator.report import write_json
    from simulator.traces import builtin_trace_path, read_trace
    from simulator.workload import make_workload

    params = _parse_params(args.param)
    path = args.trace or str(builtin_trace_path())
    trace = read_trace(path, args.format, skip_bad_rows=args.skip_bad_rows)
    difficulty = None
    if not path.endswith(".jsonl") and trace.bad_rows == 0:
        difficulty = read_difficulty_column(path)
    if difficulty is None:
        table = parse_table(args.difficulty_table) if args.difficulty_table else None
        difficulty = DifficultyModel(table=table, seed=args.seed) if table else DifficultyModel(seed=args.seed)
    workload = make_workload(trace, n_requests=args.requests, rate_rps=args.rate, arrival=args.arrival,
                             seed=args.seed, difficulty=difficulty)
    runs = run_policies(args.policies.split(","), workload, args.cluster, seed=args.seed, params=params,
                        ttft_s=args.slo_ttft, tpot_s=args.slo_tpot)
    summaries = [s for _, _, s in runs]
    front = pareto_front(summaries)
    doc = {"workload": workload.description, "seed": args.seed, "params": params,
           "trace": {"path": trace.path, "format": trace.format, "rows": trace.rows},
           "difficulty": "trace column" if not isinstance(difficulty, DifficultyModel)
           else {"table": [list(p) for p in difficulty.table], "seed": difficulty.seed},
           "pareto_front": front, "runs": summaries}
    written = []
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(doc, str(out / "compare.json"))
        written += [out / "compare.json", plot_pareto(summaries, front, out / "pareto.png", workload.description)]
    if args.json:
        write_json(doc, args.json)
        if args.json != "-":
            written.append(Path(args.json))
            written.append(plot_pareto(summaries, front, Path(args.json).with_suffix(".png"), workload.description))
    if args.json != "-":
        print(f"workload: {workload.description}")
        print(format_table(summaries, front))
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m simulator.compare ...`: the subcommand on its own, with the CLI's error handling."""
    from scheduler.config import ConfigError
    from simulator.traces import TraceFormatError

    parser = argparse.ArgumentParser(prog="infersched")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except (ConfigError, TraceFormatError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"infersched: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
