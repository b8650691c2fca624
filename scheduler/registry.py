"""The one list of built-in plugins and policy presets.

Adding a plugin: a class in scheduler/plugins/ (scheduler/framework.py says
what it defines) and one line in FILTERS, SCORERS, PICKERS or STAGINGS.
Adding a policy: scheduler/policies/<name>.py defining POLICY, and one line
in POLICIES. A duplicate name, a plugin missing its method or Params, or two
plugins declaring one parameter differently fails here, at import.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

from scheduler.config import ClusterConfig, PolicyConfig, SloConfig
from scheduler.framework import ParamLayer, Registry, param_catalogue, resolve_params
from scheduler.plugins import disagg, economics, filters, pickers, prefix, scorers, staging, tiers
from scheduler.policies import (advisor, cascade, conditional_disagg, cost_aware, energy_aware, least_loaded,
                                local_first, prefix_aware, round_robin, slo_aware)
from scheduler.policy import Policy, PolicySpec
from scheduler.validation import Fields

FILTERS = Registry("filter", (filters.FitsMemory, filters.ModelTier, filters.SameModel, tiers.LowestTier))
SCORERS = Registry("scorer", (scorers.LeastLoaded, scorers.PredictedLatency, scorers.KvHeadroom,
                              economics.PredictedCost, economics.PredictedEnergy, tiers.LocalFirst,
                              disagg.ConditionalDisagg, prefix.PrefixAffinity))
PICKERS = Registry("picker", (pickers.Argmax, pickers.RandomTieBreak, pickers.RoundRobin))
# Staging plugins: requests served in more than one pass ("none": one pass).
STAGINGS = Registry("staging", (staging.Escalate, staging.Advisor))

POLICIES = Registry("policy", (
    round_robin.POLICY,
    least_loaded.POLICY,
    slo_aware.POLICY,
    cost_aware.POLICY,
    energy_aware.POLICY,
    local_first.POLICY,
    cascade.POLICY,
    advisor.POLICY,
    conditional_disagg.POLICY,
    prefix_aware.POLICY,
))

# Every parameter any built-in declares; building it checks that shared names agree.
PARAMS = param_catalogue([*FILTERS.values(), *SCORERS.values(), *PICKERS.values(), *STAGINGS.values()])


def resolve_spec(config: PolicyConfig | str) -> PolicySpec:
    """Preset by name, with any plugin lists or weights the YAML overrides."""
    if isinstance(config, str):
        config = PolicyConfig(name=config)
    spec = POLICIES[config.name]
    if config.filters is not None:
        spec = replace(spec, filters=config.filters)
    if config.scorers is not None:
        spec = replace(spec, scorers=config.scorers)
    if config.picker is not None:
        spec = replace(spec, picker=config.picker)
    if config.staging is not None:
        spec = replace(spec, staging=None if config.staging == "none" else config.staging)
    return spec


def plugin_classes(spec: PolicySpec) -> list[type]:
    """The plugin classes a spec names, each once (an unknown name raises framework.UnknownNameError)."""
    classes = [FILTERS[n] for n in spec.filters] + [SCORERS[n] for n, _ in spec.scorers] + [PICKERS[spec.picker]]
    if spec.staging:
        classes.append(STAGINGS[spec.staging])
    return list(dict.fromkeys(classes))


def accepted_params(config: PolicyConfig | str) -> frozenset[str]:
    """The parameter names a policy's plugins declare."""
    return frozenset(param_catalogue(plugin_classes(resolve_spec(config))))


def split_params(policies: Sequence[str], params: Mapping[str, Any], where: Fields, key: str) -> dict[str, dict]:
    """Parameters given once for several policies (compare --param, a sweep grid's params): each
    policy's share is the keys its plugins take; a key none of them takes fails, naming them all."""
    taken = {name: accepted_params(name) for name in policies}
    allowed = frozenset().union(*taken.values())
    for k in params:
        if k not in allowed:
            listed = ", ".join(sorted(allowed)) or "none (their plugins take no parameters)"
            raise where.fail(key, f"unknown parameter {k!r} for {', '.join(policies)}; allowed: {listed}")
    return {name: {k: v for k, v in params.items() if k in taken[name]} for name in policies}


def build_policy(config: PolicyConfig | str, cluster_config: ClusterConfig | None = None,
                 overrides: Mapping[str, Any] | None = None, overrides_source: str = "overrides",
                 overrides_key: str = "policy.params") -> Policy:
    """The policy a config names. Parameters: the preset's, then the cluster file's
    `policy.params`, then `overrides` (found at `overrides_key` in `overrides_source`, e.g.
    '--param' or a sweep grid file, for errors), each key checked against the parameters
    the policy's plugins declare."""
    spec = resolve_spec(config)
    classes = plugin_classes(spec)
    layers = [ParamLayer(Fields(f"policy preset {spec.name!r}"), "params", dict(spec.params))]
    if isinstance(config, PolicyConfig) and config.params:
        layers.append(ParamLayer(Fields(config.source), "policy.params", dict(config.params)))
    if overrides:
        layers.append(ParamLayer(Fields(overrides_source), overrides_key, overrides))
    params = resolve_params(spec.name, classes, layers)
    slo = cluster_config.slo if cluster_config is not None else SloConfig()

    def make(cls: type) -> Any:
        return cls(params[cls], slo)

    return Policy(spec, [make(FILTERS[n]) for n in spec.filters], [(make(SCORERS[n]), w) for n, w in spec.scorers],
                  make(PICKERS[spec.picker]), make(STAGINGS[spec.staging]) if spec.staging else None)
