"""`infersched policies` lists every preset, plugin and parameter the registry holds."""
from __future__ import annotations

from infersched.cli import main
from scheduler.registry import PARAMS, POLICIES, STAGINGS


def test_policies_lists_presets_staging_and_every_parameter(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in POLICIES:
        assert any(line.startswith(f"{name} ") for line in lines), name
    assert f"staging: {', '.join(STAGINGS)}" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("parameter (policy.params)"))
    listed = {line.split()[0] for line in lines[header + 1:] if not line.startswith(" ")}
    assert listed == set(PARAMS)
    router = next(line for line in lines if line.startswith("router_accuracy "))
    assert router.split(None, 2) == ["router_accuracy", "1.0",
                                     "local-first, advisor: share of requests the router judges right"]
