"""bench/economics: the committed doc is exactly what --doc-only writes from the committed JSON, and the
section registry and command line agree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.economics import cli
from bench.economics.registry import SECTIONS, by_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["-m", "bench.economics"], ["bench/economics"]])
def test_doc_only_rebuilds_the_committed_doc_byte_for_byte(tmp_path, command):
    out = tmp_path / "ECONOMICS.md"
    subprocess.run([sys.executable, *command, "--doc-only", "--doc", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert out.read_bytes() == (ROOT / "docs" / "ECONOMICS.md").read_bytes()


def test_every_section_in_the_saved_results_is_registered():
    import json

    saved = json.loads((ROOT / "bench" / "results" / "economics.json").read_text())
    assert set(saved) - {"meta"} <= set(by_name())
    assert len(by_name()) == len(SECTIONS)


@pytest.mark.parametrize("argv, names", [
    (["--section", "disagg"], ["disagg"]),
    (["--section", "hybrid", "--section", "prefix"], ["hybrid", "prefix"]),
    (["--only", "advisor,disagg"], ["advisor", "disagg"]),
    ([], []),
])
def test_section_flags_select_sections(argv, names):
    assert cli.parse_args(argv).names == names


def test_unknown_section_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "nope"])
    assert "unknown section 'nope'" in capsys.readouterr().err
