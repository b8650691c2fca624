"""README commands: every example that calls a bare `infersched` comes after the line that puts it on PATH."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
ACTIVATE = ". .venv/bin/activate"


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines inside ``` blocks."""
    inside, lines = False, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append((number, line))
    return lines


def test_bare_infersched_only_after_the_readme_says_to_activate_the_venv():
    text = README.read_text(encoding="utf-8")
    said = text.index(ACTIVATE)
    said_line = text[:said].count("\n") + 1
    bare = [(n, line) for n, line in code_lines(text)
            if re.match(r"\s*(\$ )?infersched\b", line) or re.search(r"[;&|]\s*infersched\b", line)]
    assert bare, "the README has no infersched examples"
    early = [(n, line) for n, line in bare if n < said_line]
    assert not early, f"bare `infersched` before the README says `{ACTIVATE}`: {early}"
