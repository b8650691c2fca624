"""`infersched plan`: size a cluster for a workload under SLOs, write its YAML, verify it by simulation.

Exit status: 0 planned (and verified, when asked); 1 planned but the simulated
SLO attainment stayed below the target after every round; 2 bad input or no
feasible plan.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from infersched.cli.common import (add_runtime_arguments, add_slo_arguments, add_trace_arguments, load_trace,
                                   positive, runtime_options, show_progress, unit_interval, user_error,
                                   workload_spec)
from simulator.plan import OBJECTIVES

DEFAULT_MENU = Path(__file__).resolve().parents[2] / "deploy" / "plan" / "menu.yaml"


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `plan` subcommand; its handler (`args.handler`) is `run`."""
    p = subparsers.add_parser(
        "plan", help="size a cluster for a workload under SLOs (MILP) and verify it by simulation",
        description="Choose instance counts from a menu of devices and models that minimize dollars, joules or "
                    "a mix while serving the trace's load within the TTFT/TPOT SLOs and a quality floor; write "
                    "the cluster YAML and verify it by simulation.")
    add_trace_arguments(p, trace_help="trace file (formats as for simulate). Default: built-in Azure 2023 "
                                      "conversation", requests_help="number of requests (as for simulate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--menu", help="menu of devices and models (default deploy/plan/menu.yaml)")
    add_slo_arguments(p, default=2.0, default_text="2", tpot_default=0.1)
    p.add_argument("--quality-floor", type=unit_interval(zero_ok=True),
                   help="only models with capability >= this may serve (0..1; built-ins use MMLU / 100)")
    p.add_argument("--objective", choices=OBJECTIVES, default="cost",
                   help="minimize dollars (cost), joules (energy) or a normalised mix (default cost)")
    p.add_argument("--energy-weight", type=unit_interval(zero_ok=True), default=0.5,
                   help="with --objective mix: weight of energy, 0..1 (default 0.5)")
    p.add_argument("--headroom", type=unit_interval(zero_ok=False), default=0.7,
                   help="busy share each instance is planned at, (0, 1] (default 0.7)")
    p.add_argument("--target-attainment", type=unit_interval(zero_ok=True), default=0.9,
                   help="SLO attainment the verification must reach (default 0.9)")
    p.add_argument("--max-rounds", type=positive(integer=True), default=3,
                   help="plan-and-verify rounds at most (default 3)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="verify the plan by simulation on the same workload (default on)")
    p.add_argument("--out", metavar="PATH", help="write the cluster YAML here (default: print it)")
    p.add_argument("--json", metavar="PATH", help="write the plan JSON to PATH ('-' for stdout)")
    add_runtime_arguments(p)  # with --parallel/--address every round is planned ahead and verified at once
    p.set_defaults(handler=run)
    return p


def _verify_as_jobs(spec, args, documents: list[dict]) -> list[dict]:
    """Every round's plan simulated at once (simulator/jobs.py); a failed run stops the plan."""
    from scheduler.config import parse_cluster
    from simulator.jobs import SimJob, run_jobs
    from simulator.plan import PlanError

    jobs = [SimJob(f"round {i + 1}", spec, parse_cluster(doc, source=f"<plan {doc.get('name', '')}>"), "slo-aware",
                   {}, args.seed) for i, doc in enumerate(documents)]
    results = run_jobs(jobs, **runtime_options(args))
    if results.failures:
        raise PlanError("verification failed: " + "; ".join(str(f) for f in results.failures))
    return results.summaries


def run(args) -> int:
    from simulator.plan import characterize, cluster_yaml, load_menu, plan_and_verify
    from simulator.plan.report import format_plan, format_round, plan_document
    from simulator.report import write_json
    from simulator.workload import make_workload

    quiet = args.json == "-"
    say = (lambda *a: None) if quiet else print  # noqa: E731
    try:
        menu = load_menu(args.menu or str(DEFAULT_MENU))
        workload = make_workload(load_trace(args, stream=True), n_requests=args.requests, rate_rps=args.rate,
                                 arrival=args.arrival, seed=args.seed)
        stats = characterize(workload)
        say(f"workload: {workload.description}")
        say(f"  {stats.rate_rps:,.2f} req/s; prompt mean {stats.mean_input_tokens:,.0f} (p90 "
            f"{stats.p90_input_tokens:,.0f}) tokens, output mean {stats.mean_output_tokens:,.0f} (p90 "
            f"{stats.p90_output_tokens:,.0f}); demand {stats.prefill_tokens_per_s:,.0f} prefill and "
            f"{stats.decode_tokens_per_s:,.0f} decode tokens/s")
        say(f"menu: {menu.source} ({len(menu.options)} options); SLO TTFT {args.ttft_slo:g} s, TPOT "
            f"{args.tpot_slo * 1e3:g} ms" + (f"; quality floor {args.quality_floor:g}" if args.quality_floor
                                              is not None else ""))
        rounds_seen = []

        def on_round(r) -> None:
            if args.verify:
                say(format_round(len(rounds_seen), r))
            rounds_seen.append(r)

        verify_all = None
        if args.verify and (args.parallel or args.address):
            spec = workload_spec(args)
            verify_all = partial(_verify_as_jobs, spec, args)
        rounds, caps, excluded = plan_and_verify(
            stats, menu, workload if args.verify else None, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
            quality_floor=args.quality_floor, objective=args.objective, energy_weight=args.energy_weight,
            headroom=args.headroom, target_attainment=args.target_attainment, max_rounds=args.max_rounds,
            seed=args.seed, on_round=on_round, verify_all=verify_all,
            progress=show_progress(args))
    except (ValueError, FileNotFoundError) as exc:
        # PlanError, ConfigError and TraceFormatError are ValueErrors; so are bad workload
        # arguments (e.g. --arrival trace with --rate).
        print(f"infersched plan: error: {user_error(exc)}", file=sys.stderr)
        return 2
    final = rounds[-1]
    if final.note:
        say(final.note)
    met = final.verification is None or final.attainment >= args.target_attainment
    header = (f"planned by `infersched plan` for {stats.rate_rps:,.2f} req/s ({workload.description})\n"
              f"objective {final.plan.objective}, headroom {final.headroom:.2f}: ${final.plan.usd_per_hour:,.2f}/h, "
              f"{final.plan.power_w / 1e3:,.2f} kW planned")
    if final.verification is not None:
        header += f"\nsimulated SLO attainment {final.attainment:.3f} (slo-aware policy, seed {args.seed})"
    text = cluster_yaml(final.document, header)
    result = plan_document(
        menu_source=menu.source, stats=stats, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
        quality_floor=args.quality_floor, objective=args.objective, energy_weight=args.energy_weight,
        target_attainment=args.target_attainment if args.verify else None, caps=caps, excluded=excluded,
        rounds=rounds, cluster_yaml_text=text)
    try:
        if args.json:
            write_json(result, args.json)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"infersched plan: error: cannot write the plan: {exc}", file=sys.stderr)
        return 2
    say("")
    say(format_plan(final.plan))
    if not met:
        print(f"infersched plan: warning: simulated SLO attainment {final.attainment:.3f} is below the target "
              f"{args.target_attainment:g} after {len(rounds)} round(s); the last plan is written anyway",
              file=sys.stderr)
    if args.out:
        say(f"wrote {args.out}")
    elif not quiet:
        say("")
        say(text.rstrip())
    return 0 if met else 1
