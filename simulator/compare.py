"""Several policies on the same workload and cluster, side by side (`infersched compare`).

Every policy replays the very same requests (same trace rows, arrivals and
difficulties: each run builds the workload from the same spec and seed, in this
process or in a Ray task, simulator/jobs.py), so differences are
the policies', not sampling noise. Prints one table; writes the runs' JSON and
a cost-vs-energy-vs-quality Pareto plot next to it.

An entry of --policies may name its own cluster as POLICY@CLUSTER (a YAML path
or a built-in name such as cloud-only), to compare, say, local-first on an
edge-plus-cloud cluster against least-loaded on the cloud alone.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from simulator.jobs import SimJob, WorkloadSpec

DEFAULT_CLUSTER = "demo"


def _load_cluster(name: str | None):
    from scheduler.config import builtin_cluster_path, load_cluster

    if name is None:
        return load_cluster(builtin_cluster_path(DEFAULT_CLUSTER))
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return load_cluster(name)
    return load_cluster(builtin_cluster_path(name))


def _with_slo(config, ttft_s, tpot_s):
    from scheduler.config import ConfigError

    for flag, value in (("--ttft-slo", ttft_s), ("--tpot-slo", tpot_s)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag}: must be > 0, got {value}")
    slo = config.slo
    if ttft_s is not None:
        slo = replace(slo, ttft_s=ttft_s)
    if tpot_s is not None:
        slo = replace(slo, tpot_s=tpot_s)
    return replace(config, slo=slo)


def policy_jobs(entries: list[str], workload: WorkloadSpec, cluster_name: str | None = None, seed: int = 0,
                params: dict | None = None, ttft_s: float | None = None, tpot_s: float | None = None) -> list[SimJob]:
    """One job per POLICY[@CLUSTER] entry, all on `workload`; every name is checked before any run."""
    from scheduler.cluster import Cluster
    from scheduler.config import ConfigError
    from scheduler.registry import build_policy, split_params
    from scheduler.validation import Fields

    if not entries:
        raise ConfigError("--policies: give at least one policy")
    labels = [e.strip() for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--policies: duplicate entry in {','.join(labels)}")
    base = _with_slo(_load_cluster(cluster_name), ttft_s, tpot_s)
    names = [label.partition("@")[0] for label in labels]
    if not all(names):
        raise ConfigError(f"--policies: empty policy name in {','.join(labels)!r}")
    # --param applies to every policy whose plugins take it, and must be taken by one.
    shares = split_params(names, params or {}, Fields("--param"), "policy.params")
    jobs = []
    for label, name in zip(labels, names):
        cluster = label.partition("@")[2]
        config = _with_slo(_load_cluster(cluster), ttft_s, tpot_s) if cluster else base
        Cluster(config)  # bad devices, models or parameters fail here, before any run
        build_policy(name, config, overrides=shares[name], overrides_source="--param")
        jobs.append(SimJob(label, workload, config, name, shares[name], seed))
    return jobs


def pareto_front(summaries: list[dict]) -> list[str]:
    """Labels not dominated on (cost lower, energy lower, quality higher)."""
    front = []
    for a in summaries:
        dominated = False
        for b in summaries:
            if b is a:
                continue
            no_worse = (b["cost_usd"] <= a["cost_usd"] and b["energy_j"] <= a["energy_j"]
                        and b["quality"] >= a["quality"])
            better = (b["cost_usd"] < a["cost_usd"] or b["energy_j"] < a["energy_j"] or b["quality"] > a["quality"])
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(a["label"])
    return front


def _pct(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def short_label(label: str) -> str:
    """POLICY@path/to/cluster.yaml -> POLICY@cluster."""
    name, sep, cluster = label.partition("@")
    return f"{name}@{Path(cluster).stem}" if sep else name


def format_table(summaries: list[dict], front: list[str]) -> str:
    from simulator.report import fmt_s, format_table as table, kwh

    rows = []
    for s in summaries:
        shares = ", ".join(f"{name} {p['share'] * 100:.0f}%" for name, p in s["pools"].items() if p["share"] > 0)
        jtok = s["energy_per_output_token_j"]
        qkwh = s["queries_per_kwh"]
        mark = "*" if s["label"] in front else " "
        rows.append([mark + short_label(s["label"]), _pct(s["slo_attainment"]), fmt_s(s["ttft_s"]["p99"]),
                     fmt_s(s["tpot_s"]["p99"]), _pct(s["quality"]), f"{s['escalations'] + s['advised_requests']:,}",
                     f"{s['cost_usd']:,.2f}", f"{s['busy_cost_usd']:,.2f}", kwh(s["energy_j"]),
                     kwh(s["busy_energy_j"]), "-" if jtok is None else f"{jtok:.3f}",
                     "-" if qkwh is None else f"{qkwh:,.0f}", shares])
    lines = table(["policy", "SLO", "p99 TTFT", "p99 TPOT", "quality", "esc", "cost $", "busy $", "kWh",
                   "busy kWh", "J/tok", "q/kWh", "share per pool"], rows, align="<" + ">" * 11 + "<")
    lines.append("* on the cost / energy / quality Pareto front. cost $ and kWh: the provisioned cluster over "
                 "the run (idle included); busy $ and busy kWh: busy time attributed to requests. "
                 "esc: escalations + advised requests. J/tok: energy per output token; "
                 "q/kWh: completed queries per kWh")
    if any(s.get("prefix_hit_tokens") for s in summaries):
        lines += table(["prefix caching", "cached", "computed tokens", "p50 TTFT", "busiest/mean"],
                       [[" " + short_label(s["label"]), _pct(s["prefix_hit_rate"]), f"{s['prefill_computed_tokens']:,}",
                         fmt_s(s["ttft_s"]["p50"]), f"{s['max_instance_load_ratio']:.2f}x"] for s in summaries],
                       align="<")
        lines.append("cached: share of prompt tokens served from prefix caches; computed: prompt tokens prefilled; "
                     "busiest/mean: requests on the busiest instance over its pool's mean")
    if any(s.get("kv_tiers") for s in summaries):
        lines += _tier_table(summaries)
    return "\n".join(lines)


def _tier_table(summaries: list[dict]) -> list[str]:
    """Prefix-cache tiers below HBM: where cached tokens came from, what moving and holding them cost."""
    from simulator.report import format_table as table

    names = list(dict.fromkeys(name for s in summaries for name in s.get("prefix_hit_tokens_by_tier", {})))
    rows = []
    for s in summaries:
        hits = s.get("prefix_hit_tokens_by_tier", {})
        tiers = s.get("kv_tiers", {})
        rows.append([" " + short_label(s["label"])] + [f"{hits.get(n, 0):,}" for n in names]
                    + [f"{sum(t['read_bytes'] for t in tiers.values()) / 1e9:,.1f}",
                       f"{sum(t['written_bytes'] for t in tiers.values()) / 1e9:,.1f}", f"{s.get('kv_load_s', 0.0):,.1f}",
                       f"{sum(t['energy_j'] for t in tiers.values()) / 3.6e6:,.3f}",
                       f"{sum(t['cost_usd'] for t in tiers.values()):,.2f}"])
    lines = table(["kv tiers"] + [f"{n} tok" for n in names] + ["read GB", "written GB", "load s", "tier kWh",
                                                                 "tier $"], rows, align="<")
    lines.append("<tier> tok: prompt tokens served from each level; read/written: bytes loaded into HBM and "
                 "demoted; tier kWh and $: bytes moved and capacity held (in the kWh and cost $ above)")
    return lines


def plot_pareto(summaries: list[dict], front: list[str], path: Path, title: str = "") -> Path:
    from simulator.plots import plot_pareto as plot

    return plot(summaries, front, path, title, short_label=short_label)


