"""`infersched policies`: the built-in routing presets, the plugins they are made of and their parameters."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("policies", help="list the built-in routing policies and plugins")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from scheduler.framework import param_specs
    from scheduler.registry import FILTERS, PICKERS, POLICIES, SCORERS, STAGINGS

    for name, spec in POLICIES.items():
        scorers = ", ".join(f"{n} x{w:g}" for n, w in spec.scorers) or "-"
        staging = f"; staging: {spec.staging}" if spec.staging else ""
        print(f"{name:<14} {spec.description}\n{'':14} filters: {', '.join(spec.filters)}; scorers: {scorers}; "
              f"picker: {spec.picker}{staging}")
    print(f"\nfilters: {', '.join(FILTERS)}\nscorers: {', '.join(SCORERS)}\npickers: {', '.join(PICKERS)}"
          f"\nstaging: {', '.join(STAGINGS)}\n\nparameters (policy.params in the cluster YAML):")
    specs, owners = {}, {}
    for plugin in [*FILTERS.values(), *SCORERS.values(), *PICKERS.values(), *STAGINGS.values()]:
        for key, p in param_specs(plugin).items():
            specs.setdefault(key, p)
            owners.setdefault(key, []).append(plugin.name)
    for key in sorted(specs):
        print(f"  {key:<25} {specs[key].default!s:<5} {', '.join(owners[key])}: {specs[key].doc}")
    return 0
