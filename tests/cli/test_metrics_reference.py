"""docs/METRICS.md is what `python -m infersched.cli.metrics_reference` prints from the
scheduler's metrics registry, and lists each family that registry exports. (That a real
`serve` exports exactly these is tests/deploy/test_prometheus.py.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from infersched.cli.metrics_reference import LABELS, families, sample_registry

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "METRICS.md"


def documented() -> dict[str, tuple[str, ...]]:
    """Metric name -> label names, from the reference's table."""
    rows = re.findall(r"^\| `(\w+)` \| \w+ \| ([^|]+) \|", DOC.read_text(encoding="utf-8"), re.M)
    return {name: tuple(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def test_reference_file_is_what_its_generator_prints():
    proc = subprocess.run([sys.executable, "-m", "infersched.cli.metrics_reference"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DOC.read_text(encoding="utf-8"), \
        "docs/METRICS.md is stale: run `python -m infersched.cli.metrics_reference > docs/METRICS.md`"


def test_every_family_and_label_of_the_registry_is_documented():
    exported = {name: labels for name, _, _, labels in families(sample_registry())}
    assert documented() == exported
    assert {label for labels in exported.values() for label in labels} <= set(LABELS)


def test_the_per_pool_latency_histograms_and_rejections_carry_their_labels():
    doc = documented()
    assert doc["infersched_pool_ttft_seconds"] == ("pool",) and doc["infersched_pool_tpot_seconds"] == ("pool",)
    assert doc["infersched_rejections_total"] == ("reason",)
