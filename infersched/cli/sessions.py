"""`infersched sessions`: write a trace with prefix reuse (simulator.sessions documents the model)."""
from __future__ import annotations

import argparse
from pathlib import Path

from infersched.cli.common import positive


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sessions", help="write a trace with prefix reuse (multi-turn sessions, shared system prompts)",
        description="Resample a trace's request lengths, add Poisson arrivals and a seeded prefix structure "
                    "(apps with shared system prompts, follow-up turns that repeat the conversation so far) "
                    "and write it as Mooncake JSON lines with 512-token block hash_ids; replay it with "
                    "`infersched simulate --trace FILE`.")
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--base", help="trace whose lengths are resampled (default: built-in Azure conversation)")
    p.add_argument("--requests", type=positive(integer=True), default=100_000,
                   help="requests to write (default 100,000)")
    p.add_argument("--rate", type=positive(), default=100.0, help="mean arrival rate, requests/s (default 100)")
    p.add_argument("--followup-share", type=float, default=0.5,
                   help="share of requests that continue a recent conversation (default 0.5)")
    p.add_argument("--input-scale", type=positive(), default=1.0,
                   help="multiply the resampled prompt lengths (default 1; 10 on the built-in Azure "
                        "conversation trace, mean 1,155 tokens, gives Mooncake-like ~11.5k-token prompts)")
    p.add_argument("--apps", type=int, default=64, help="applications with distinct system prompts (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from simulator.sessions import reuse_stats, session_trace, write_mooncake
    from simulator.traces import builtin_trace_path, read_trace

    base = read_trace(args.base or builtin_trace_path())
    trace = session_trace(base, args.requests, args.rate, seed=args.seed, followup_share=args.followup_share,
                          system_prompts=args.apps, input_scale=args.input_scale)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    path = write_mooncake(trace, args.out)
    stats = reuse_stats(trace)
    print(f"wrote {path}: {stats['requests']:,} requests, {stats['prompt_tokens']:,} prompt tokens, "
          f"{stats['reusable_share']:.1%} in prefixes an earlier prompt had")
    return 0
