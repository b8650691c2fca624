"""docs/CLI.md is what `python -m infersched.cli.reference` generates from the parsers (no drift)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from infersched.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "CLI.md"


def test_cli_reference_matches_the_parsers():
    proc = subprocess.run([sys.executable, "-m", "infersched.cli.reference"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CLI_MD.read_text(encoding="utf-8"), \
        "docs/CLI.md is stale: run `python -m infersched.cli.reference > docs/CLI.md`"


def test_every_command_and_visible_flag_is_in_the_reference():
    text = CLI_MD.read_text(encoding="utf-8")

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        assert path == "infersched" or f"## `{path}`" in text, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.help != argparse.SUPPRESS and action.option_strings and action.dest != "help":
                assert f"`{action.option_strings[-1]}`" in text, (path, action.option_strings)

    walk(build_parser(), "infersched")
    assert "--slo-ttft" not in text  # hidden aliases stay out, as in --help
