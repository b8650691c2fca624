"""`infersched policies`: the built-in routing presets, the plugins they are made of and their parameters."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("policies", help="list the built-in routing policies, plugins and parameters")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from simulator.report import format_policies

    print(format_policies())
    return 0
