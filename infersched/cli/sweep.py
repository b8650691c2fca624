"""`infersched sweep --grid grid.yaml`: every cell of a grid as an independent simulation.

Exit status: 0 every cell ran; 1 some failed (the others are written, the failed
ones named); 2 a bad grid file (`FILE: key 'KEY': reason`) before anything runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infersched.cli.common import add_runtime_arguments, runtime_options


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `sweep` subcommand; its handler (`args.handler`) is `run`."""
    p = subparsers.add_parser(
        "sweep", help="simulate a grid of policies x rates x cluster variants x seeds",
        description="Run every cell of a YAML grid (policies x arrival rates x cluster variants x seeds) as an "
                    "independent simulation, here or as Ray tasks; write sweep.json, sweep.csv and sweep.png.")
    p.add_argument("--grid", required=True, help="grid YAML (see deploy/sweeps/gpu-rates.yaml)")
    p.add_argument("--out", required=True, metavar="DIR", help="write sweep.json, sweep.csv and sweep.png here")
    add_runtime_arguments(p)
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from simulator.jobs import build_workload, report_failures, run_jobs
    from simulator.report import write_json
    from simulator.sweep import format_sweep, load_grid, plot_sweep, sweep_document, write_csv

    grid = load_grid(args.grid)
    jobs = grid.jobs()
    build_workload(jobs[0].workload)  # a trace that cannot be read fails here, before any run
    print(f"sweep {grid.name}: {len(jobs)} runs ({len(grid.policies)} policies x {len(grid.rates_rps)} rates x "
          f"{len(grid.variants)} variants x {len(grid.seeds)} seeds)", file=sys.stderr)
    results = run_jobs(jobs, **runtime_options(args))
    doc = sweep_document(grid, jobs, results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(doc, str(out / "sweep.json"))
    written = [out / "sweep.json", write_csv(doc, out / "sweep.csv")]
    if results.ok():
        written.append(plot_sweep(doc, out / "sweep.png"))
    print(format_sweep(doc))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return report_failures(results, "sweep")
