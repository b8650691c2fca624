"""docs/CLUSTER_YAML.md documents exactly the keys scheduler/config.py accepts, with its defaults (no drift)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from infersched.cli.cluster_reference import KEYS, SECTIONS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CLUSTER_YAML.md"


def test_reference_file_is_what_the_generator_prints():
    proc = subprocess.run([sys.executable, "-m", "infersched.cli.cluster_reference"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DOC.read_text(encoding="utf-8"), \
        "docs/CLUSTER_YAML.md is stale: run `python -m infersched.cli.cluster_reference > docs/CLUSTER_YAML.md`"


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
