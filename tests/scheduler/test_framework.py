"""The plugin framework: strict parameters for every built-in plugin, the registry's checks,
and the framework's arithmetic (clamping, weights, the per-plugin breakdown)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, SloConfig, parse_cluster
from scheduler.framework import NoParams, Registry, UnknownNameError, WithoutParams, param, param_catalogue, param_specs
from scheduler.plugins import pickers, scorers
from scheduler.policy import Policy, PolicySpec
from scheduler.registry import FILTERS, PICKERS, POLICIES, SCORERS, STAGINGS, build_policy
from scheduler.types import Request, Stage

SOURCE = "deploy/clusters/x.yaml"
POOLS = [{"name": "a", "device": "h100-sxm", "instances": 3, "model": "llama-3.1-8b", "role": "both"},
         {"name": "p", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "prefill"},
         {"name": "d", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "decode"}]

# (extension point, plugin name) for every built-in plugin.
PLUGINS = [(kind, name) for kind, reg in (("filters", FILTERS), ("scorers", SCORERS), ("picker", PICKERS),
                                           ("staging", STAGINGS)) for name in reg]


def policy_with(kind: str, name: str, params: dict) -> dict:
    """A YAML policy mapping whose only plugin with parameters is `name` (round-robin takes none)."""
    policy = {"name": "round-robin", "filters": [], "scorers": {}, "params": params}
    if kind == "filters":
        policy["filters"] = [name]
    elif kind == "scorers":
        policy["scorers"] = {name: 1.0}
    else:
        policy[kind] = name
    return policy


def build(policy: dict):
    config = parse_cluster({"name": "x", "pools": POOLS, "policy": policy}, SOURCE)
    return build_policy(config.policy, config)


def registry(kind: str) -> Registry:
    return {"filters": FILTERS, "scorers": SCORERS, "picker": PICKERS, "staging": STAGINGS}[kind]


@pytest.mark.parametrize("kind, name", PLUGINS)
def test_an_unknown_parameter_names_the_key_the_file_and_the_allowed_keys(kind, name):
    allowed = ", ".join(sorted(param_specs(registry(kind)[name]))) or "none (its plugins take no parameters)"
    with pytest.raises(ConfigError) as err:
        build(policy_with(kind, name, {"prefx_load_slak": 3}))
    assert str(err.value) == (f"{SOURCE}: key 'policy.params': unknown parameter 'prefx_load_slak' for round-robin; "
                              f"allowed: {allowed}")


def bad_values():
    """(plugin kind, plugin, key, bad value, what the error says) for every declared parameter
    (numbers, and the router's and verifier's model and device names)."""
    for kind, name in PLUGINS:
        for key, spec in param_specs(registry(kind)[name]).items():
            if spec.kind is str:
                yield kind, name, key, 7, "expected a non-empty string, got 7"
                yield kind, name, key, "lots", f"unknown {'device' if key.endswith('device') else 'model'} 'lots'"
                continue
            yield kind, name, key, "lots", "expected a number, got 'lots'"
            yield kind, name, key, True, "expected a number, got True"
            if spec.kind is int:
                yield kind, name, key, 1.5, "expected an integer, got 1.5"
            above, at_least, at_most = spec.bounds
            if at_least is not None:
                yield kind, name, key, at_least - 1, f"must be >= {at_least:g}"
            if at_most is not None:
                yield kind, name, key, at_most + 1, f"must be <= {at_most:g}"


@pytest.mark.parametrize("kind, name, key, value, reason", list(bad_values()))
def test_a_bad_parameter_value_names_the_key_and_the_file(kind, name, key, value, reason):
    with pytest.raises(ConfigError) as err:
        build(policy_with(kind, name, {key: value}))
    assert str(err.value).startswith(f"{SOURCE}: key 'policy.params.{key}': {reason}")


@pytest.mark.parametrize("key, value, attr, expected", [
    ("prefix_load_slack", 0.5, "load_slack", 0.5),
    ("max_attempts", 2.0, "max_attempts", 2),  # an integral float is accepted as an int
    ("disagg_min_prompt_tokens", None, "min_prompt_tokens", None),  # optional: None is its default
])
def test_good_values_reach_the_plugin(key, value, attr, expected):
    owner = next((kind, name) for kind, name in PLUGINS if key in param_specs(registry(kind)[name]))
    pol = build(policy_with(*owner, {key: value}))
    plugin = {"filters": lambda: pol._filters[0], "scorers": lambda: pol._scorers[0][0],
              "picker": lambda: pol._picker, "staging": lambda: pol.staging}[owner[0]]()
    got = getattr(plugin, attr)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("overrides, source, needle", [
    ({"prefix_load_slack": -1}, "--param", "--param: key 'policy.params.prefix_load_slack': must be >= 0"),
    ({"router_accuracy": 0.9}, "overrides", "overrides: key 'policy.params': unknown parameter 'router_accuracy' "
                                            "for prefix-aware; allowed: prefix_load_slack"),
])
def test_overrides_are_checked_and_named_by_their_source(overrides, source, needle):
    with pytest.raises(ConfigError) as err:
        build_policy("prefix-aware", overrides=overrides, overrides_source=source)
    assert str(err.value).startswith(needle)


def test_later_layers_win_and_the_slo_reaches_the_plugins():
    config = parse_cluster({"name": "x", "pools": POOLS, "slo": {"ttft_s": 4.0, "tpot_s": 0.2},
                            "policy": {"name": "cascade", "params": {"max_attempts": 2, "detect_accuracy": 0.5}}},
                           SOURCE)
    pol = build_policy(config.policy, config, overrides={"max_attempts": 5})
    assert (pol.staging.max_attempts, pol.staging.detect_accuracy) == (5, 0.5)
    assert (pol._scorers[0][0].ttft_slo_s, pol._scorers[0][0].tpot_slo_s) == (4.0, 0.2)


def test_every_preset_builds_with_its_defaults():
    for name in POLICIES:
        assert build_policy(name).name == name


@dataclass(frozen=True, slots=True)
class SlackParams:
    prefix_load_slack: float = param(0.5, at_least=0.0)  # the built-in default is 0.25


class Named(WithoutParams):
    name = "least-loaded"

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        return np.ones(len(cands))


class Unfrozen(Named):
    @dataclass
    class Params:
        x: float = 1.0


class Untyped(Named):
    @dataclass(frozen=True)
    class Params:
        x: list = param(None)


class NoMethod:
    name = "no-method"
    Params = NoParams


class OtherSlack(Named):
    name = "other-slack"
    Params = SlackParams


@pytest.mark.parametrize("kind, entries, error, needle", [
    ("scorer", (scorers.LeastLoaded, Named), ValueError, "scorer name 'least-loaded' is registered twice"),
    ("picker", (pickers.Argmax, pickers.Argmax), ValueError, "picker name 'argmax' is registered twice"),
    ("policy", (POLICIES["cascade"], POLICIES["cascade"]), ValueError, "policy name 'cascade' is registered twice"),
    ("scorer", (Unfrozen,), TypeError, "Params must be a frozen dataclass"),
    ("scorer", (Untyped,), TypeError, "type must be float, int, bool or str"),
    ("scorer", (NoMethod,), TypeError, "scorer 'no-method' (NoMethod) lacks score"),
    ("filter", (Named,), TypeError, "lacks reason, mask"),
])
def test_the_registry_refuses_duplicates_and_malformed_plugins(kind, entries, error, needle):
    with pytest.raises(error, match=re.escape(needle)):
        Registry(kind, entries)


def test_a_parameter_shared_by_two_plugins_must_be_declared_alike():
    with pytest.raises(TypeError, match="parameter 'prefix_load_slack' is declared differently"):
        param_catalogue([SCORERS["prefix-affinity"], OtherSlack])


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown picker 'best'; known: argmax, random-tiebreak, round-robin"):
        PICKERS["best"]
    assert "best" not in PICKERS and PICKERS.get("best") is None and "argmax" in PICKERS


class Fixed(WithoutParams):
    """A scorer that returns given values, whatever their range."""

    name = "fixed"

    def __init__(self, values):
        self.values = values

    def score(self, req, snap, stage, cands, now_s, prefill_instance):
        return np.array(self.values[:len(cands)], dtype=np.float64)


def colocated_snapshot(instances: int = 3):
    config = parse_cluster({"name": "x", "pools": [dict(POOLS[0], instances=instances)]})
    return Cluster(config).snapshot()


@pytest.mark.parametrize("a, b, wa, wb, chosen, why", [
    ([3.0, 0.9, 0.0], [0.0, 0.5, 0.0], 1.0, 1.0, 1, "3.0 clamps to 1.0: 1.0 + 0.0 < 0.9 + 0.5"),
    ([0.2, -5.0, 0.1], [0.0, 0.3, 0.0], 1.0, 1.0, 1, "-5 clamps to 0: 0.2 < 0 + 0.3"),
    ([0.2, 0.6, 0.0], [1.0, 0.0, 0.0], 1.0, 0.3, 1, "weights after the clamp: 0.2 + 0.3 < 0.6"),
    ([0.2, 0.6, 0.0], [9.0, 0.0, 0.0], 1.0, 0.5, 0, "clamped 9 -> 1, weighted 0.5: 0.7 > 0.6"),
])
def test_the_framework_clamps_each_score_then_weights_it(a, b, wa, wb, chosen, why):
    snap = colocated_snapshot()
    spec = PolicySpec("t", (), (("a", wa), ("b", wb)), "argmax")
    pol = Policy(spec, [], [(Fixed(a), wa), (Fixed(b), wb)], pickers.Argmax(NoParams(), SloConfig()))
    pol.explain = True
    d = pol.decide(Request(0, 100, 10, 0.0), snap, 0.0, np.random.default_rng(0))
    assert d.prefill_instance == chosen, why
    (placement,) = d.placements
    assert placement.scores[0].raw == tuple(a)
    assert placement.scores[0].weighted == tuple(min(max(x, 0.0), 1.0) * wa for x in a)
    assert placement.scores[1].weighted == tuple(min(max(x, 0.0), 1.0) * wb for x in b)


def loaded(cluster: str, seed: int):
    """A built-in cluster's snapshot with seeded random queues and batches."""
    from scheduler.config import builtin_cluster_path, load_cluster

    config = load_cluster(builtin_cluster_path(cluster))
    snap = Cluster(config).snapshot()
    rng = np.random.default_rng(seed)
    for i in range(snap.n_instances):
        queued, running = int(rng.integers(0, 6)), int(rng.integers(0, 40))
        cap = snap._kv_capacity[i]
        snap.update(i, queued, queued * 700, running, cap - min(cap, 900 * (queued + running)), 0.0)
    return config, snap


@pytest.mark.parametrize("cluster, policy", [("hybrid", "slo-aware"), ("gpu-disagg", "slo-aware"),
                                             ("gpu-mixed", "conditional-disagg"), ("edge-cloud", "local-first"),
                                             ("hybrid", "cost-aware"), ("hybrid", "energy-aware"),
                                             ("gpu-colocated", "least-loaded")])
def test_the_breakdown_sums_to_the_total_the_picker_ranked(cluster, policy):
    config, snap = loaded(cluster, seed=3)
    plain = build_policy(policy, config)
    explained = build_policy(policy, config)
    explained.explain = True
    checked = 0
    for rid in range(200):
        req = Request(rid, 100 + 97 * rid % 6000, 20 + 31 * rid % 500, 0.0, difficulty=(rid % 10) / 10)
        d = explained.decide(req, snap, 0.0, np.random.default_rng(rid))
        same = plain.decide(req, snap, 0.0, np.random.default_rng(rid))
        assert same[:4] == d[:4] and same.placements is None, "explaining changed the decision"
        for p in d.placements:
            if not p.scores:
                continue
            for i in range(len(p.candidates)):
                total = 0.0
                for part in p.scores:
                    total += part.weighted[i]
                assert total == p.total[i]
            assert all(0.0 <= w <= part.weight for part in p.scores for w in part.weighted)
            best = max(p.total)
            assert p.total[p.candidates.index(p.chosen)] >= best - 1e-6  # argmax, up to its tie-break jitter
            checked += 1
    assert checked >= 100


def test_placements_record_what_each_filter_removed():
    snap = colocated_snapshot()
    pol = build_policy("least-loaded")
    pol.explain = True
    capacity = int(snap.kv_capacity.min())
    d = pol.decide(Request(0, capacity, 10, 0.0), snap, 0.0, np.random.default_rng(0))
    (p,) = d.placements
    assert d.rejected and p.removed == (("fits-memory", (0, 1, 2)),) and p.candidates == ()
    assert (p.chosen, p.reason) == (-1, FILTERS["fits-memory"].reason) == (-1, d.reject_reason)
    assert p.stage == Stage.PREFILL and p.scores == () and p.total == ()


def test_the_readme_plugin_example_registers_and_scores():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Writing a plugin"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    roomy = namespace["Roomy"]
    reg = Registry("scorer", (*SCORERS.values(), roomy))
    assert set(param_specs(reg["roomy"])) == {"roomy_min_share"}
    snap = colocated_snapshot()
    snap.update(1, 0, 0, 0, 0.1 * snap._kv_capacity[1], 0.0)  # instance 1: 10% of its KV free
    spec = PolicySpec("roomy-first", (), (("roomy", 1.0),), "argmax")
    pol = Policy(spec, [], [(roomy(roomy.Params(roomy_min_share=0.5), SloConfig()), 1.0)],
                 pickers.Argmax(NoParams(), SloConfig()))
    pol.explain = True
    d = pol.decide(Request(1, 100, 10, 0.0), snap, 0.0, np.random.default_rng(0))
    assert d.placements[0].scores[0].raw == (1.0, 0.0, 1.0) and d.prefill_instance in (0, 2)
