"""The sections of docs/ECONOMICS.md, in document order (the doc numbers them by position).

A section is a module exposing `SECTION = common.Section(name, title, run, render)`;
adding one is that module plus one line here.
"""
from __future__ import annotations

from bench.economics import advisor, boundary, cross_device, disagg, hybrid, matrix_quality, prefix
from bench.economics.common import Section

SECTIONS: list[Section] = [
    hybrid.SECTION,
    advisor.SECTION,
    disagg.SECTION,
    cross_device.SECTION,
    prefix.SECTION,
    boundary.SECTION,
    matrix_quality.SECTION,
]


def by_name() -> dict[str, Section]:
    return {s.name: s for s in SECTIONS}
