"""The command-line reference, docs/CLI.md, generated from the argparse parsers.

`python -m infersched.cli.reference > docs/CLI.md` rewrites it; a test fails
when the file and the parsers disagree, so a flag cannot be added, renamed or
re-documented without the reference following. Hidden aliases
(argparse.SUPPRESS) stay out of it, as they stay out of --help.
"""
from __future__ import annotations

import argparse
import sys

HEADER = """# infersched command-line reference

Generated from the argparse parsers by `python -m infersched.cli.reference > docs/CLI.md`
(tests/cli/test_references.py fails when this file drifts from them). `infersched COMMAND --help`
prints the same text. Built-in cluster names for `--cluster`: `infersched clusters`.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in --help order."""
    for action in parser._actions:  # argparse keeps no public list of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _expand(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = {**vars(action), "prog": prog}
        if action.choices is not None:
            params["choices"] = ", ".join(map(str, action.choices))
        text = text % params
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices is not None and action.metavar is None:
        return f"{names} {{{','.join(map(str, action.choices))}}}".replace("|", "\\|")
    metavar = action.metavar or action.dest.upper()
    return f"{names} {metavar}".replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.default == []:
        return ""
    return f"`{action.default}`"


def _section(path: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    description = " ".join((parser.description or summary).split())
    if description:
        lines += [description, ""]
    rows = [a for a in parser._actions
            if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        lines += ["| flag | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| {_flag(a)} | {_default(a)} | {_expand(a, path)} |" for a in rows]
        lines.append("")
    for name, sub_help, sub in _subcommands(parser):
        lines += _section(f"{path} {name}", sub_help, sub, level + 1)
    return lines


def reference() -> str:
    from infersched.cli import build_parser

    parser = build_parser()
    lines = [HEADER, "## Commands", ""]
    subs = _subcommands(parser)
    lines += [f"- [`{name}`](#infersched-{name}): {' '.join(h.split())}" for name, h, _ in subs]
    lines.append("")
    for name, sub_help, sub in subs:
        lines += _section(f"infersched {name}", sub_help, sub, 2)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
