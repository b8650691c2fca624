"""`infersched clusters`: the built-in example clusters, and the name-or-path rule of every `--cluster`.

A `--cluster` value is a YAML path when such a file exists or it looks like
one (ends in .yaml/.yml or names a directory); otherwise it is the name of a
built-in example in deploy/clusters/. Each example's purpose is its
`description` key (the first sentence of its leading comment when it has
none), so the listing stays with the file it describes.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from scheduler.config import ConfigError

CLUSTERS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "clusters"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "clusters", help="list the built-in example clusters (names any --cluster flag accepts)",
        description="List the built-in example clusters in deploy/clusters/: name, pools (instances x device), "
                    "policy and what each is for. Every --cluster flag takes these names or a YAML path.")
    p.set_defaults(handler=run)
    return p


def builtin_names() -> list[str]:
    return sorted(path.stem for path in CLUSTERS_DIR.glob("*.yaml"))


def resolve(name: str) -> Path:
    """The cluster YAML a --cluster value names: an existing or path-like file, else a built-in example."""
    path = Path(name)
    if path.exists() or name.endswith((".yaml", ".yml")) or "/" in name:
        if not path.exists():
            raise ConfigError(f"{name}: cluster file not found (built-in names: {', '.join(builtin_names())})")
        return path
    builtin = CLUSTERS_DIR / f"{name}.yaml"
    if not builtin.exists():
        raise ConfigError(f"--cluster {name!r}: no such file and no built-in cluster of that name "
                          f"(built-in: {', '.join(builtin_names())}; see `infersched clusters`)")
    return builtin


def purpose(text: str) -> str:
    """The first sentence of a YAML file's leading comment block."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    prose = " ".join(lines)
    match = re.match(r"(.+?[.:;])(\s|$)", prose)
    return (match.group(1) if match else prose).rstrip(":;")


def describe(path: Path) -> tuple[str, str, str, str]:
    """(name, pools, policy, purpose) of one cluster YAML, read as the loader reads its keys."""
    import yaml

    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    by_device: dict[str, int] = {}
    for pool in data.get("pools") or []:
        by_device[pool.get("device", "?")] = by_device.get(pool.get("device", "?"), 0) + pool.get("instances", 1)
    count = len(data.get("pools") or [])
    pools = f"{count} pool{'s' if count != 1 else ''}: " + ", ".join(f"{n}x {d}" for d, n in by_device.items())
    policy = data.get("policy")
    policy = policy.get("name") if isinstance(policy, dict) else policy
    return path.stem, pools, policy or "-", data.get("description") or purpose(text)


def format_clusters(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("name", "pools (instances x device)", "policy", "for")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3]
                     for row in [header, *rows])


def run(args) -> int:
    print(format_clusters([describe(CLUSTERS_DIR / f"{name}.yaml") for name in builtin_names()]))
    return 0
