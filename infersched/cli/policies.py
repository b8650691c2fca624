"""`infersched policies`: the built-in routing presets and the plugins they are made of."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("policies", help="list the built-in routing policies and plugins")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from scheduler.registry import FILTERS, PICKERS, POLICIES, SCORERS

    for name, spec in POLICIES.items():
        scorers = ", ".join(f"{n} x{w:g}" for n, w in spec.scorers) or "-"
        print(f"{name:<14} {spec.description}\n{'':14} filters: {', '.join(spec.filters)}; scorers: {scorers}; "
              f"picker: {spec.picker}")
    print(f"\nfilters: {', '.join(FILTERS)}\nscorers: {', '.join(SCORERS)}\npickers: {', '.join(PICKERS)}")
    return 0
