"""The one list of built-in plugins and policy presets.

Adding a policy: write scheduler/policies/<name>.py defining POLICY, and add
one line to POLICIES below. Adding a plugin: a class in scheduler/plugins/
and one line in FILTERS, SCORERS or PICKERS.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from scheduler.config import ClusterConfig, ConfigError, PolicyConfig
from scheduler.plugins import disagg, economics, filters, pickers, prefix, scorers, staging, tiers
from scheduler.policies import (advisor, cascade, conditional_disagg, cost_aware, energy_aware, least_loaded,
                                local_first, prefix_aware, round_robin, slo_aware)
from scheduler.policy import Policy, PolicySpec

FILTERS = {p.name: p for p in (filters.FitsMemory, filters.ModelTier, filters.SameModel, tiers.LowestTier)}
SCORERS = {p.name: p for p in (scorers.LeastLoaded, scorers.PredictedLatency, scorers.KvHeadroom,
                               economics.PredictedCost, economics.PredictedEnergy, tiers.LocalFirst,
                               disagg.ConditionalDisagg, prefix.PrefixAffinity)}
PICKERS = {p.name: p for p in (pickers.Argmax, pickers.RandomTieBreak, pickers.RoundRobin)}
# Staging plugins: requests served in more than one pass ("none": one pass).
STAGINGS = {p.name: p for p in (staging.Escalate, staging.Advisor)}

POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
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
    )
}


class UnknownPolicyError(ConfigError):
    pass


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise UnknownPolicyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def resolve_spec(config: PolicyConfig | str) -> PolicySpec:
    """Preset by name, with any plugin lists or weights the YAML overrides."""
    if isinstance(config, str):
        config = PolicyConfig(name=config)
    spec = _lookup(POLICIES, "policy", config.name)
    if config.filters is not None:
        spec = replace(spec, filters=config.filters)
    if config.scorers is not None:
        spec = replace(spec, scorers=config.scorers)
    if config.picker is not None:
        spec = replace(spec, picker=config.picker)
    if config.params:
        spec = replace(spec, params={**spec.params, **dict(config.params)})
    if config.staging is not None:
        spec = replace(spec, staging=None if config.staging == "none" else config.staging)
    return spec


def build_policy(config: PolicyConfig | str, cluster_config: ClusterConfig | None = None,
                 overrides: dict[str, Any] | None = None) -> Policy:
    spec = resolve_spec(config)
    params: dict[str, Any] = {}
    if cluster_config is not None:
        params.update(ttft_slo_s=cluster_config.slo.ttft_s, tpot_slo_s=cluster_config.slo.tpot_s)
    params.update(spec.params)
    params.update(overrides or {})
    fs = [_lookup(FILTERS, "filter", n)(params) for n in spec.filters]
    ss = [(_lookup(SCORERS, "scorer", n)(params), float(w)) for n, w in spec.scorers]
    pk = _lookup(PICKERS, "picker", spec.picker)(params)
    st = _lookup(STAGINGS, "staging", spec.staging)(params) if spec.staging else None
    return Policy(spec, fs, ss, pk, st)
