"""Several policies on the same workload and cluster, side by side (`infersched compare`).

Every policy replays the very same requests (same trace rows, arrivals and
difficulties: the workload is built once from the seed), so differences are
the policies', not sampling noise. Prints one table; writes the runs' JSON and
a cost-vs-energy-vs-quality Pareto plot next to it.

An entry of --policies may name its own cluster as POLICY@CLUSTER (a YAML path
or a built-in name such as cloud-only), to compare, say, local-first on an
edge-plus-cloud cluster against least-loaded on the cloud alone.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

DEFAULT_CLUSTER = "hybrid"


def _load_cluster(name: str | None):
    from scheduler.config import builtin_cluster_path, load_cluster

    if name is None:
        return load_cluster(builtin_cluster_path(DEFAULT_CLUSTER))
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return load_cluster(name)
    return load_cluster(builtin_cluster_path(name))


def _with_slo(config, ttft_s, tpot_s):
    from scheduler.config import ConfigError

    for flag, value in (("--slo-ttft", ttft_s), ("--slo-tpot", tpot_s)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag}: must be > 0, got {value}")
    slo = config.slo
    if ttft_s is not None:
        slo = replace(slo, ttft_s=ttft_s)
    if tpot_s is not None:
        slo = replace(slo, tpot_s=tpot_s)
    return replace(config, slo=slo)


def run_policies(entries: list[str], workload, cluster_name: str | None = None, seed: int = 0,
                 params: dict | None = None, ttft_s: float | None = None, tpot_s: float | None = None):
    """Run each POLICY[@CLUSTER] entry on `workload`; returns [(label, SimResult, summary)]."""
    from scheduler.cluster import Cluster
    from scheduler.config import ConfigError
    from scheduler.registry import accepted_params, build_policy
    from scheduler.validation import Fields
    from simulator.metrics import summarize
    from simulator.sim import Simulation

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
    params = params or {}
    accepted = {name: accepted_params(name) for name in names}
    allowed = frozenset().union(*accepted.values())
    for key in params:
        if key not in allowed:
            listed = ", ".join(sorted(allowed)) or "none (their plugins take no parameters)"
            raise Fields("--param").fail("policy.params",
                                         f"unknown parameter {key!r} for {', '.join(names)}; allowed: {listed}")
    # Build every cluster and policy first, so a bad name fails before any run.
    plans = []
    for label, name in zip(labels, names):
        cluster = label.partition("@")[2]
        config = _with_slo(_load_cluster(cluster), ttft_s, tpot_s) if cluster else base
        policy = build_policy(name, config, overrides={k: v for k, v in params.items() if k in accepted[name]},
                              overrides_source="--param")
        plans.append((label, Cluster(config), policy))
    runs = []
    for label, cluster, policy in plans:
        result = Simulation(cluster, policy, workload, seed=seed).run()
        summary = summarize(result)
        summary["label"] = label
        runs.append((label, result, summary))
    return runs


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


def _ms(x):
    return "-" if x is None else (f"{x:.2f}s" if x >= 10 else f"{x * 1e3:.0f}ms")


def short_label(label: str) -> str:
    """POLICY@path/to/cluster.yaml -> POLICY@cluster."""
    name, sep, cluster = label.partition("@")
    return f"{name}@{Path(cluster).stem}" if sep else name


def format_table(summaries: list[dict], front: list[str]) -> str:
    from simulator.report import _fmt_energy

    head = (f"{'policy':<31}{'SLO':>7}{'p99 TTFT':>10}{'p99 TPOT':>10}{'quality':>9}{'esc':>7}{'cost $':>10}"
            f"{'served $':>10}{'energy':>11}{'served':>11}{'J/tok':>8}{'q/kWh':>10}  share per pool")
    lines = [head]
    for s in summaries:
        shares = ", ".join(f"{name} {p['share'] * 100:.0f}%" for name, p in s["pools"].items() if p["share"] > 0)
        jtok = s["energy_per_output_token_j"]
        qkwh = s["queries_per_kwh"]
        mark = "*" if s["label"] in front else " "
        lines.append(
            f"{mark}{short_label(s['label'])[:30]:<30}{_pct(s['slo_attainment']):>7}{_ms(s['ttft_s']['p99']):>10}"
            f"{_ms(s['tpot_s']['p99']):>10}{_pct(s['quality']):>9}{s['escalations'] + s['advised_requests']:>7,}"
            f"{s['cost_usd']:>10,.2f}{s['served_cost_usd']:>10,.2f}{_fmt_energy(s['energy_j']):>11}"
            f"{_fmt_energy(s['served_energy_j']):>11}{'-' if jtok is None else f'{jtok:.3f}':>8}"
            f"{'-' if qkwh is None else f'{qkwh:,.0f}':>10}  {shares}")
    lines.append("* on the cost / energy / quality Pareto front. cost $ and energy: the provisioned cluster over "
                 "the run (idle included); served: busy time attributed to requests. esc: escalations + advised "
                 "requests. J/tok: energy per output token; q/kWh: completed queries per kWh")
    if any(s.get("prefix_hit_tokens") for s in summaries):
        lines.append(f"{'prefix caching':<31}{'cached':>8}{'computed':>12}{'p50 TTFT':>10}{'busiest/mean':>14}")
        for s in summaries:
            lines.append(f" {short_label(s['label'])[:30]:<30}{_pct(s['prefix_hit_rate']):>8}"
                         f"{s['prefill_computed_tokens'] / 1e6:>10,.2f} M{_ms(s['ttft_s']['p50']):>10}"
                         f"{s['max_instance_load_ratio']:>13.2f}x")
        lines.append("cached: share of prompt tokens served from prefix caches; computed: prompt tokens prefilled; "
                     "busiest/mean: requests on the busiest instance over its pool's mean")
    return "\n".join(lines)


def plot_pareto(summaries: list[dict], front: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    cost = [s["cost_usd"] for s in summaries]
    energy = [s["energy_j"] / 3.6e6 for s in summaries]
    quality = [s["quality"] * 100 for s in summaries]
    sc = ax.scatter(cost, energy, c=quality, cmap="viridis", s=[160 if s["label"] in front else 70 for s in summaries],
                    edgecolors=["red" if s["label"] in front else "black" for s in summaries], linewidths=1.5,
                    zorder=3)
    for s, x, y, q in zip(summaries, cost, energy, quality):
        ax.annotate(f"{short_label(s['label'])}\n{q:.1f}% correct, SLO {s['slo_attainment'] * 100:.0f}%", (x, y),
                    textcoords="offset points", xytext=(8, 6), fontsize=8)
    fig.colorbar(sc, ax=ax, label="quality (% answered correctly)")
    ax.margins(x=0.35, y=0.15)  # room for the labels beside the points
    ax.set_xlabel("cost (US$)")
    ax.set_ylabel("energy (kWh)")
    ax.grid(alpha=0.3)
    import textwrap

    heading = "cost vs energy vs quality (red edge: Pareto front)"
    ax.set_title("\n".join([heading] + ([textwrap.fill(title, 100)] if title else [])), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
