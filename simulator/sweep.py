"""Sweep grids (`infersched sweep --grid grid.yaml`): policies x rates x cluster variants x seeds.

The grid file names a base cluster, a workload (a trace and how many requests),
and the axes; every cell is one independent simulation (simulator/jobs.py), run
here or as Ray tasks. A cell at (rate, seed) replays
the same requests for every policy and variant, so differences along those
axes are paired. Writes sweep.json (every cell's full summary), sweep.csv (one
row per cell) and sweep.png (SLO attainment and cost per 1,000 requests vs
rate, one line per policy, one column per variant; means over seeds).

Cluster variants change the base cluster's YAML before it is parsed:
`instances: {POOL: N}` sets pool sizes; `set: {DOTTED.KEY: VALUE}` sets any
key, with pools addressed by name (`pools.h100.max_batch: 64`,
`slo.ttft_s: 0.5`, `policy.params.router_accuracy: 0.8`). Every mistake is
reported as `FILE: key 'KEY': reason` before anything runs.
"""
from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scheduler.config import ClusterConfig, ConfigError, builtin_cluster_path, parse_cluster
from simulator.jobs import SimJob, WorkloadSpec

_TOP_KEYS = {"name", "cluster", "workload", "policies", "params", "rates", "seeds", "variants"}
_WORKLOAD_KEYS = {"trace", "format", "skip_bad_rows", "requests", "arrival", "difficulty_table"}
_VARIANT_KEYS = {"name", "instances", "set"}
_ARRIVALS = ("poisson", "gamma", "diurnal")
CSV_FIELDS = ("policy", "variant", "rate_rps", "seed", "requests", "completed", "rejected", "failed",
              "slo_attainment", "goodput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s",
              "quality", "cost_usd", "cost_usd_per_1k_requests", "energy_j", "energy_per_output_token_j",
              "makespan_s", "error")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    config: ClusterConfig
    instances: dict
    set: dict
    # `set: {policy.params.KEY: V}`: parameters for the grid's policies in this variant
    # (each policy takes the keys its plugins declare), over the grid's own `params`.
    policy_params: dict


@dataclass(frozen=True, slots=True)
class Grid:
    name: str
    source: str
    cluster: str
    workload: WorkloadSpec  # rate and seed filled per cell
    policies: tuple[str, ...]
    params: dict  # as the grid gives them, for every policy
    params_by_policy: dict  # policy -> the share of params its plugins take
    rates_rps: tuple[float, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]

    def jobs(self) -> list[SimJob]:
        """Cells ordered so that runs of one workload (rate, seed) follow each other."""
        from dataclasses import replace

        return [SimJob(cell_label(p, v.name, r, s), replace(self.workload, rate_rps=r, seed=s), v.config, p,
                       self.cell_params(p, v), s)
                for s in self.seeds for r in self.rates_rps for v in self.variants for p in self.policies]

    def cell_params(self, policy: str, variant: Variant) -> dict:
        """The grid's params for `policy`, then the variant's `policy.params` keys its plugins take."""
        from scheduler.registry import accepted_params

        taken = accepted_params(policy)
        return {**self.params_by_policy[policy],
                **{k: v for k, v in variant.policy_params.items() if k in taken}}


def cell_label(policy: str, variant: str, rate_rps: float, seed: int) -> str:
    return f"{policy} {variant} {rate_rps:g}rps seed{seed}"


def _fail(source: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}': {reason}")


def _check_keys(source: str, where: str, raw: Any, allowed: set[str]) -> dict:
    if not isinstance(raw, dict):
        raise _fail(source, where or "<top>", f"expected a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in allowed:
            raise _fail(source, f"{where}.{key}" if where else str(key),
                        f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _mapping(source: str, key: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(source, key, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _list(source: str, key: str, raw: Any, kind: type | tuple, what: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise _fail(source, key, f"expected a non-empty list of {what}")
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, kind):
            raise _fail(source, f"{key}[{i}]", f"expected {what}, got {item!r}")
    if len(set(raw)) != len(raw):
        raise _fail(source, key, "duplicate entries")
    return raw


def _cluster_document(source: str, name: Any, base_dir: Path) -> tuple[dict, str]:
    if not isinstance(name, str) or not name:
        raise _fail(source, "cluster", "expected a built-in cluster name or a YAML path")
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name) if Path(name).is_absolute() else base_dir / name
    else:
        try:
            path = builtin_cluster_path(name)
        except ConfigError as exc:
            raise _fail(source, "cluster", str(exc)) from None
    try:
        return yaml.safe_load(path.read_text()), str(path)
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(source, "cluster", f"cannot read {path}: {exc}") from None


def _pool(source: str, key: str, doc: dict, name: str) -> dict:
    pools = {p.get("name"): p for p in doc.get("pools") or [] if isinstance(p, dict)}
    if name not in pools:
        raise _fail(source, key, f"no pool named {name!r} in the cluster (pools: {', '.join(map(str, pools))})")
    return pools[name]


def _apply_set(source: str, where: str, doc: dict, dotted: str, value: Any) -> None:
    parts = str(dotted).split(".")
    node: Any = doc
    key = f"{where}.{dotted}"
    for i, part in enumerate(parts[:-1]):
        if part == "pools" and node is doc:
            if i + 1 >= len(parts) - 1:
                raise _fail(source, key, "address a pool's key as pools.POOL.KEY")
            node = _pool(source, key, doc, parts[i + 1])
            rest = parts[i + 2:-1]
            for sub in rest:
                node = node.setdefault(sub, {})
                if not isinstance(node, dict):
                    raise _fail(source, key, f"{sub!r} is not a mapping in the cluster")
            node[parts[-1]] = value
            return
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise _fail(source, key, f"{part!r} is not a mapping in the cluster")
    node[parts[-1]] = value


def _variant(source: str, i: int, raw: Any, base: dict, cluster_path: str) -> Variant:
    where = f"variants[{i}]"
    raw = _check_keys(source, where, raw, _VARIANT_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, f"{where}.name", "expected a non-empty name")
    doc = copy.deepcopy(base)
    instances = _mapping(source, f"{where}.instances", raw.get("instances"))
    for pool, count in instances.items():
        key = f"{where}.instances.{pool}"
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _fail(source, key, f"expected a positive number of instances, got {count!r}")
        _pool(source, key, doc, pool)["instances"] = count
    sets = _mapping(source, f"{where}.set", raw.get("set"))
    policy_params = {}
    for dotted, value in sets.items():
        head, _, param = str(dotted).partition("policy.params.")
        if not head and param:
            policy_params[param] = value
        elif str(dotted).split(".")[0] == "policy":
            raise _fail(source, f"{where}.set.{dotted}", "the grid's `policies` name the policies; a variant may "
                                                          "set only their parameters, as policy.params.KEY")
        else:
            _apply_set(source, f"{where}.set", doc, dotted, value)
    try:
        config = parse_cluster(doc, source=cluster_path)
    except ConfigError as exc:
        raise _fail(source, where, str(exc)) from None
    return Variant(name.strip(), config, dict(instances), dict(sets), policy_params)


def _workload(source: str, raw: Any, base_dir: Path) -> WorkloadSpec:
    from simulator.quality import parse_table
    from simulator.traces import FORMATS

    raw = _check_keys(source, "workload", raw or {}, _WORKLOAD_KEYS)
    trace = raw.get("trace")
    if trace is not None:
        if not isinstance(trace, str):
            raise _fail(source, "workload.trace", "expected a trace file path")
        path = Path(trace) if Path(trace).is_absolute() else base_dir / trace
        if not path.exists():
            raise _fail(source, "workload.trace", f"{path} not found")
        trace = str(path.resolve())
    fmt = raw.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _fail(source, "workload.format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
    requests = raw.get("requests")
    if requests is not None and (isinstance(requests, bool) or not isinstance(requests, int) or requests < 1):
        raise _fail(source, "workload.requests", f"expected a positive integer, got {requests!r}")
    arrival = raw.get("arrival", "poisson")
    if arrival not in _ARRIVALS:
        raise _fail(source, "workload.arrival", f"expected one of {', '.join(_ARRIVALS)} (the grid sets the rate), "
                                                f"got {arrival!r}")
    skip = raw.get("skip_bad_rows", False)
    if not isinstance(skip, bool):
        raise _fail(source, "workload.skip_bad_rows", f"expected true or false, got {skip!r}")
    table = raw.get("difficulty_table")
    if table is not None:
        try:
            from simulator.quality import DifficultyModel

            table = DifficultyModel(table=parse_table(str(table))).table
        except ValueError as exc:
            raise _fail(source, "workload.difficulty_table", str(exc)) from None
    return WorkloadSpec(trace=trace, format=fmt, skip_bad_rows=skip, requests=requests, arrival=arrival,
                        difficulty_table=table)


def parse_grid(data: Any, source: str = "<grid>", base_dir: Path | None = None) -> Grid:
    """Validate a parsed grid document; policy names and parameters are checked against every variant."""
    from scheduler.cluster import Cluster
    from scheduler.registry import POLICIES, accepted_params, build_policy, split_params
    from scheduler.validation import Fields

    base_dir = base_dir or Path.cwd()
    data = _check_keys(source, "", data, _TOP_KEYS)
    for key in ("cluster", "policies", "rates"):
        if key not in data:
            raise _fail(source, key, "missing")
    base, cluster_path = _cluster_document(source, data["cluster"], base_dir)
    policies = _list(source, "policies", data["policies"], str, "policy names")
    rates = _list(source, "rates", data["rates"], (int, float), "arrival rates in requests/s")
    for i, rate in enumerate(rates):
        if not rate > 0:
            raise _fail(source, f"rates[{i}]", f"expected a rate > 0, got {rate!r}")
    seeds = _list(source, "seeds", data.get("seeds", [0]), int, "non-negative integer seeds")
    for i, seed in enumerate(seeds):
        if seed < 0:
            raise _fail(source, f"seeds[{i}]", f"expected a non-negative integer, got {seed!r}")
    params = _mapping(source, "params", data.get("params"))
    raw_variants = data.get("variants", [{"name": "base"}])
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _fail(source, "variants", "expected a non-empty list of cluster variants")
    variants = tuple(_variant(source, i, v, base, cluster_path) for i, v in enumerate(raw_variants))
    names = [v.name for v in variants]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _fail(source, f"variants[{i}].name", f"duplicate variant name {name!r}")
    for i, v in enumerate(variants):
        try:
            Cluster(v.config)
        except (ConfigError, KeyError, ValueError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise _fail(source, f"variants[{i}]", str(reason)) from None
    for i, policy in enumerate(policies):
        if policy not in POLICIES:
            raise _fail(source, f"policies[{i}]", f"unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}")
    # A grid's params go to every policy whose plugins take them; each must be taken by one,
    # and its value is checked (naming this file's 'params.KEY') before any variant is tried.
    shares = split_params(policies, params, Fields(source), "params")
    for policy in policies:
        build_policy(policy, variants[0].config, overrides=shares[policy], overrides_source=source,
                     overrides_key="params")
    for i, v in enumerate(variants):
        split_params(policies, v.policy_params, Fields(source), f"variants[{i}].set.policy.params")
    for i, policy in enumerate(policies):
        for v in variants:
            try:
                build_policy(policy, v.config, overrides={**shares[policy], **{
                    k: val for k, val in v.policy_params.items() if k in accepted_params(policy)}})
            except (ConfigError, KeyError, ValueError, TypeError) as exc:
                reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                raise _fail(source, f"policies[{i}]", f"{reason} (variant {v.name!r})") from None
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise _fail(source, "name", f"expected a string, got {name!r}")
    return Grid(name, source, data["cluster"], _workload(source, data.get("workload"), base_dir), tuple(policies),
                dict(params), shares, tuple(float(r) for r in rates), tuple(seeds), variants)


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: grid file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_grid(data, str(path), path.resolve().parent)


def _cell_row(cell: dict) -> dict:
    row = {k: cell[k] for k in ("policy", "variant", "rate_rps", "seed")}
    s = cell.get("summary")
    if s is None:
        return {**row, "error": cell["error"]}
    row.update({k: s[k] for k in ("requests", "completed", "rejected", "failed", "slo_attainment", "goodput_rps",
                                  "quality", "cost_usd", "energy_j", "energy_per_output_token_j", "makespan_s")})
    row.update(ttft_p50_s=s["ttft_s"]["p50"], ttft_p99_s=s["ttft_s"]["p99"], tpot_p50_s=s["tpot_s"]["p50"],
               tpot_p99_s=s["tpot_s"]["p99"], e2e_p99_s=s["e2e_s"]["p99"],
               cost_usd_per_1k_requests=s["cost_usd"] / s["requests"] * 1000 if s["requests"] else None)
    return row


def sweep_document(grid: Grid, jobs: list[SimJob], results) -> dict:
    cells = []
    for job, summary, cell in zip(jobs, results.summaries, _cell_keys(grid)):
        cells.append({**cell, "label": job.label, "summary": summary} if summary is not None else
                     {**cell, "label": job.label, "summary": None,
                      "error": next(f.error for f in results.failures if f.label == job.label)})
    spec = grid.workload
    return {
        "name": grid.name, "grid": grid.source, "cluster": grid.cluster,
        "workload": {"trace": spec.trace, "format": spec.format, "requests": spec.requests, "arrival": spec.arrival,
                     "skip_bad_rows": spec.skip_bad_rows,
                     "difficulty_table": None if spec.difficulty_table is None else [list(p) for p in
                                                                                    spec.difficulty_table]},
        "policies": list(grid.policies), "params": grid.params, "rates_rps": list(grid.rates_rps),
        "seeds": list(grid.seeds),
        "variants": [{"name": v.name, "cluster": v.config.name, "instances": v.instances, "set": v.set}
                     for v in grid.variants],
        "cells": cells, "failed_cells": [c["label"] for c in cells if c["summary"] is None],
    }


def _cell_keys(grid: Grid):
    for s in grid.seeds:
        for r in grid.rates_rps:
            for v in grid.variants:
                for p in grid.policies:
                    yield {"policy": p, "variant": v.name, "rate_rps": r, "seed": s}


def write_csv(doc: dict, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cell in doc["cells"]:
            writer.writerow(_cell_row(cell))
    return path


def _means(doc: dict) -> dict:
    """(policy, variant) -> [(rate, mean SLO attainment, mean $ per 1k requests, mean p99 TTFT)] over seeds."""
    acc: dict = {}
    for cell in doc["cells"]:
        if cell["summary"] is not None:
            row = _cell_row(cell)
            acc.setdefault((cell["policy"], cell["variant"]), {}).setdefault(cell["rate_rps"], []).append(row)
    out = {}
    for key, by_rate in acc.items():
        out[key] = [(rate, *(sum(r[f] for r in rows) / len(rows)
                             for f in ("slo_attainment", "cost_usd_per_1k_requests", "ttft_p99_s")))
                    for rate, rows in sorted(by_rate.items())]
    return out


def plot_sweep(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = _means(doc)
    variants = [v["name"] for v in doc["variants"]]
    fig, axes = plt.subplots(2, len(variants), figsize=(4.2 * len(variants) + 1, 7), squeeze=False, sharex=True,
                             sharey="row")
    for col, variant in enumerate(variants):
        slo_ax, cost_ax = axes[0][col], axes[1][col]
        for policy in doc["policies"]:
            points = means.get((policy, variant))
            if not points:
                continue
            rates = [p[0] for p in points]
            slo_ax.plot(rates, [p[1] * 100 for p in points], marker="o", label=policy)
            cost_ax.plot(rates, [p[2] for p in points], marker="o", label=policy)
        slo_ax.set_title(variant, fontsize=10)
        slo_ax.set_ylabel("SLO attainment (%)")
        cost_ax.set_ylabel("cost per 1,000 requests (US$)")
        cost_ax.set_xlabel("arrival rate (requests/s)")
        for ax in (slo_ax, cost_ax):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    seeds = len(doc["seeds"])
    fig.suptitle(f"{doc['name']}: SLO attainment and cost vs rate" + (f" (mean of {seeds} seeds)" if seeds > 1
                                                                       else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_sweep(doc: dict) -> str:
    pw = max(len("policy"), *(len(p) for p in doc["policies"])) + 2
    vw = max(len("variant"), *(len(v["name"]) for v in doc["variants"])) + 2
    lines = [f"{'policy':<{pw}}{'variant':<{vw}}{'rate':>8}{'SLO':>8}{'p99 TTFT':>10}{'$/1k req':>10}"]
    for (policy, variant), points in _means(doc).items():
        for rate, slo, cost, ttft in points:
            lines.append(f"{policy:<{pw}}{variant:<{vw}}{rate:>8g}{slo * 100:>7.1f}%{ttft:>9.3f}s{cost:>10.3f}")
    if len(doc["seeds"]) > 1:
        lines.append(f"means over {len(doc['seeds'])} seeds")
    return "\n".join(lines)
