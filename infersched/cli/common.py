"""Arguments and helpers more than one command shares: trace selection, numbers, errors.

Every command that reads a trace takes the same `--trace/--format/--skip-bad-rows/
--start/--duration/--requests` (and, where arrivals may be synthesized, `--rate/--arrival`), reads it
through `load_trace` and reports it in its JSON through `trace_record`, so a flag
or a field added here reaches simulate, compare, plan and replay alike.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from scheduler.config import ConfigError
from simulator.traces import FORMATS, Trace, TraceFile, TraceFormatError

# Skipped rows printed on stderr; the summary JSON carries more (see trace_record).
SKIPPED_SHOWN = 10

DEFAULT_CLUSTER = "demo"
CLUSTER_HELP = "cluster YAML path or built-in name (see `infersched clusters`)"
ARRIVALS = ("trace", "poisson", "gamma", "diurnal")
# What a command reports as `infersched: error: ...` with exit status 2 instead of a traceback.
USER_ERRORS = (ConfigError, TraceFormatError, FileNotFoundError, KeyError, ValueError)


def positive(integer: bool = False):
    """An argparse type: a positive number (or integer), with a message naming the bad text."""
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    return parse


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def unit_interval(zero_ok: bool):
    """An argparse type: a number in [0, 1] ((0, 1] when not zero_ok)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value > 1 or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be in {'[0, 1]' if zero_ok else '(0, 1]'}, got {text!r}")
        return value
    return parse


def add_trace_arguments(p: argparse.ArgumentParser, *, required: bool = False, synthesis: bool = True,
                        trace_help: str | None = None, requests_help: str | None = None) -> None:
    """--trace, --format, --skip-bad-rows, --requests and, with `synthesis`, --rate and --arrival."""
    p.add_argument("--trace", required=required,
                   help=trace_help or "trace file (Azure, Vidur/Splitwise, length-only CSV, BurstGPT, Mooncake "
                                      "JSONL; .gz ok). Default: built-in Azure 2023 conversation trace")
    p.add_argument("--format", choices=FORMATS, help="trace format (default: detected from the content)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed trace rows (counted and reported) instead of failing")
    p.add_argument("--start", type=non_negative, default=0.0, metavar="S",
                   help="use the trace's requests from S seconds after its first one (default 0)")
    p.add_argument("--duration", type=positive(), metavar="S",
                   help="use the trace's requests within S seconds from --start (default: to the end); "
                        "rows after the window are not read")
    p.add_argument("--requests", type=positive(integer=True),
                   help=requests_help or "number of requests (beyond the trace's rows, lengths are resampled "
                                         "and arrivals synthesized)")
    if synthesis:
        p.add_argument("--rate", type=positive(), help="arrival rate in requests/s (synthesized arrivals)")
        p.add_argument("--arrival", choices=ARRIVALS,
                       help="arrival process for synthesized arrivals (default poisson)")


def load_trace(args, *, stream: bool = False, progress: bool = False) -> Trace | TraceFile:
    """The trace the arguments name (the built-in one when --trace is absent).

    Prints the rows --skip-bad-rows skipped (the first SKIPPED_SHOWN) on stderr.
    With --requests N, reading stops after N rows whenever the workload uses
    only the first N (arrivals replayed, or synthesized at a given --rate);
    a synthesized arrival process without --rate needs the whole trace's mean rate.
    stream: check the file and return a TraceFile, read again block by block
    by the workload (memory: one block, not the trace); progress: a bar while
    it is checked.
    """
    from simulator.traces import builtin_trace_path, read_trace, scan_trace

    rate = getattr(args, "rate", None)
    arrival = getattr(args, "arrival", None)
    max_rows = args.requests if rate is not None or arrival in (None, "trace") else None
    path = args.trace or str(builtin_trace_path())
    with skip_hint():
        if stream:
            trace = scan_trace(path, args.format, skip_bad_rows=args.skip_bad_rows, max_rows=max_rows,
                               start_s=args.start, duration_s=args.duration, progress=progress)
        else:
            trace = read_trace(path, args.format, skip_bad_rows=args.skip_bad_rows, max_rows=max_rows,
                               start_s=args.start, duration_s=args.duration)
    say_skipped(trace)
    return trace


@contextmanager
def skip_hint():
    """A skippable bad row's error says that --skip-bad-rows skips it."""
    try:
        yield
    except TraceFormatError as e:
        if not e.skippable:
            raise
        raise TraceFormatError(e.path, e.line, e.field, f"{e.reason} (--skip-bad-rows skips such rows)") from None


def workload_spec(args, **more):
    """The trace arguments as a simulator.jobs.WorkloadSpec, which reads the trace as load_trace does.

    The trace path is made absolute: the runs may read it in another working directory (a Ray task's).
    """
    from simulator.jobs import WorkloadSpec

    return WorkloadSpec(trace=str(Path(args.trace).resolve()) if args.trace else None, format=args.format,
                        skip_bad_rows=args.skip_bad_rows, requests=args.requests, rate_rps=args.rate,
                        arrival=args.arrival, seed=args.seed, start_s=args.start, duration_s=args.duration, **more)


def trace_record(trace: Trace | TraceFile, args) -> dict:
    """The `trace` object of a summary JSON, with the time window the arguments gave.

    `skipped_rows` lists the first rows.MAX_SKIPPED_KEPT (10,000) skipped rows
    with line, field and reason; `skipped_rows_omitted` counts the rest and
    `bad_rows_by_field` counts all of them, so the JSON stays a few MB even
    when millions of rows are bad.
    """
    return {"path": trace.path, "format": trace.format, "rows": trace.rows, "bad_rows": trace.bad_rows,
            "bad_rows_by_field": dict(trace.bad_rows_by_field),
            "skipped_rows": [row._asdict() for row in trace.skipped_rows],
            "skipped_rows_omitted": trace.bad_rows - len(trace.skipped_rows),
            "filtered_rows": trace.filtered_rows, "start_s": args.start, "duration_s": args.duration,
            "rows_before_window": trace.rows_before_window}


def say_skipped(trace: Trace | TraceFile) -> None:
    if not trace.bad_rows:
        return
    shown = trace.bad_row_reasons[:SKIPPED_SHOWN]
    more = f"; the first {len(shown)}" if trace.bad_rows > len(shown) else ""
    lines = [f"skipped {trace.bad_rows:,} malformed trace rows (--skip-bad-rows){more}:"]
    lines += [f"  {reason}" for reason in shown]
    if trace.bad_rows > len(shown):
        from simulator.traces.rows import MAX_SKIPPED_KEPT

        lines.append(f"  (the summary JSON's trace.skipped_rows lists up to {MAX_SKIPPED_KEPT:,} with reasons)")
    print("\n".join(lines), file=sys.stderr)


# Library parameter names in error messages, and the flags a command-line user gives them with.
FLAG_NAMES = ((re.compile(r"\(rate_rps, --rate\)"), "(--rate)"), (re.compile(r"\bn_requests="), "--requests "),
              (re.compile(r"\bn_requests\b"), "--requests"), (re.compile(r"\brate_rps\b"), "--rate"),
              (re.compile(r"^seed\b"), "--seed"), (re.compile(r"\barrival process\b"), "--arrival"))


def user_error(exc: BaseException) -> str:
    """The message for a USER_ERRORS exception, naming flags where the library names its parameters.

    (A KeyError's repr would add quotes, so its first argument is the message.)
    """
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    for pattern, flag in FLAG_NAMES:
        text = pattern.sub(flag, text)
    return text


def add_slo_arguments(p: argparse.ArgumentParser, *, default: float | None, default_text: str,
                      tpot_default: float | None = None) -> None:
    """--ttft-slo and --tpot-slo (seconds); the older --slo-ttft/--slo-tpot stay as hidden aliases."""
    for stage, what, value in (("ttft", "time-to-first-token", default), ("tpot", "time-per-output-token",
                                                                           tpot_default)):
        shown = default_text if value is None else f"{value:g}"
        p.add_argument(f"--{stage}-slo", type=positive(), default=value, metavar="S",
                       help=f"{what} SLO in seconds (default {shown})")
        p.add_argument(f"--slo-{stage}", dest=f"{stage}_slo", type=positive(), default=value,
                       help=argparse.SUPPRESS)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--parallel N / --address and --no-progress, for commands that run several simulations."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--parallel", type=positive(integer=True), metavar="N",
                       help="run the simulations as Ray tasks on a local Ray instance with N CPUs (default: one "
                            "after another in this process; the results are the same)")
    group.add_argument("--address", metavar="auto|HOST:PORT",
                       help="run the simulations as Ray tasks on this existing Ray cluster, shipping this checkout "
                            "to it (trace files outside the checkout must exist at the same path on every node)")
    add_progress_argument(p)


def show_progress(args) -> bool:
    """A progress bar goes to stderr when it is a terminal, unless --no-progress or JSON to stdout."""
    return not getattr(args, "no_progress", False) and getattr(args, "json", None) != "-" and sys.stderr.isatty()


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not "
                                                              "a terminal)")


def local_ray_auth() -> None:
    """Token authentication for a local Ray cluster this command starts, said explicitly.

    Ray (2.59 on) turns token authentication on for a new local cluster and warns
    on every start that it did so unless RAY_AUTH_MODE is set; the setting is read
    once, when Ray is imported, so it is made before anything imports Ray. A user's
    own RAY_AUTH_MODE wins; a joined cluster (--address) keeps the mode its drivers
    are told to use (deploy/local_multinode.sh prints it).
    """
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def runtime_options(args) -> dict:
    """simulator.jobs.run_jobs keyword arguments from the flags of add_runtime_arguments."""
    if args.parallel is not None:
        local_ray_auth()
    return {"parallel": args.parallel, "address": args.address, "progress": show_progress(args)}
