"""The generated references: docs/CLI.md from the parsers, docs/CLUSTER_YAML.md from the cluster loader.

Each file is what its generator prints (no drift), and covers every command, flag and key.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infersched.cli import build_parser
from infersched.cli.cluster_reference import KEYS, SECTIONS

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "CLI.md"
DOC = ROOT / "docs" / "CLUSTER_YAML.md"


@pytest.mark.parametrize("module, path", [("infersched.cli.reference", CLI_MD),
                                          ("infersched.cli.cluster_reference", DOC)])
def test_reference_file_is_what_its_generator_prints(module, path):
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == path.read_text(encoding="utf-8"), \
        f"{path.relative_to(ROOT)} is stale: run `python -m {module} > {path.relative_to(ROOT)}`"


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


def test_every_key_the_loader_accepts_is_documented_and_no_other():
    accepted = {prefix + key for _, prefix, keys, _ in SECTIONS for key in keys}
    assert accepted == set(KEYS), (accepted - set(KEYS), set(KEYS) - accepted)


def test_every_key_the_examples_use_is_in_the_reference():
    text = DOC.read_text(encoding="utf-8")
    for path in sorted((ROOT / "deploy" / "clusters").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        used = set(data)
        for pool in data["pools"]:
            used |= {f"pools[].{k}" for k in pool}
        for section in ("policy", "slo", "prefix_cache"):
            if isinstance(data.get(section), dict):
                used |= {f"{section}.{k}" for k in data[section]}
        assert used <= set(KEYS), (path.name, used - set(KEYS))
        for key in used:
            assert f"| `{key.rpartition('.')[2]}` |" in text, key


def test_defaults_come_from_the_loader():
    from scheduler.config import PoolConfig

    text = DOC.read_text(encoding="utf-8")
    assert f"| `max_batch` | sequences | `{PoolConfig.__dataclass_fields__['max_batch'].default}` |" in text
