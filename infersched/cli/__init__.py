"""The `infersched` command line, on top of workers, scheduler and simulator.

One module per command group, each with `register(subparsers)` that adds its
subcommands and sets `handler` (the function `main` calls with the parsed
arguments). Shared arguments (trace selection, number types) live in
`common`. A command that fails on bad input (cluster file, trace row, menu,
argument values) prints `infersched: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from infersched.cli import clusters, compare, live, model, operate, plan, policies, sessions, simulate, sweep
from infersched.cli.common import USER_ERRORS, user_error

# In `infersched --help` order.
COMMANDS = (simulate, model, live, operate, compare, plan, sweep, sessions, policies, clusters)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infersched", description="The `infersched` command line. Scheduling "
                                     "and simulation of LLM inference on heterogeneous hardware.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as exc:
        print(f"infersched: error: {user_error(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
