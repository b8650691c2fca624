"""Goodput curves, DistServe-style: SLO attainment of each configuration at each arrival rate and seed,
read under several TPOT SLOs from one run (the TTFT SLO fixed), and the goodput each SLO gives.

One simulation per (configuration, rate, seed) keeps its per-request records, and attainment is
counted for every TPOT SLO of the grid from them, as simulator/tally.py counts it for the cluster's
own SLO (rejected requests miss; one-token outputs meet any TPOT SLO). This is exact only for
placements that do not read the TPOT SLO: least-loaded, and slo-aware's single predicted-latency
scorer (a monotone score, so the same argmax under every SLO); a test checks the latter.
A placement that does read it (conditional-disagg's stall budget) runs once per TPOT SLO, as its own
configuration bound to that SLO: only that SLO's attainment is read from it.
Goodput: the rate at which attainment crosses the target, interpolated linearly between the last
grid rate that meets it and the first that does not (0 when the lowest misses, the top rate when
none does).
Variants are chosen on a held-out slice: every configuration also runs on the sizing seed, and a
family is represented at each SLO by its variant with the highest goodput there (`best_of`), then
reported on the evaluation seeds, so no family is picked on the requests it is judged on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.jobs import SimJob, build_workload
from bench.economics import common
from bench.economics.stats import ci95


@dataclass(frozen=True, slots=True)
class GridJob:
    label: str
    job: SimJob
    tpot_slos_s: tuple[float, ...]


def run_grid_job(g: GridJob) -> dict:
    """One simulation: its summary, plus `attainment_by_tpot` (one share per TPOT SLO of the grid)."""
    from scheduler.cluster import Cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation

    job = g.job
    policy = build_policy(job.policy, job.cluster, overrides=job.params or None)
    result = Simulation(Cluster(job.cluster), policy, build_workload(job.workload)[1], seed=job.seed,
                        keep_records=True).run()
    s = summarize(result)
    cols = result.records.columns()
    s["attainment_by_tpot"] = attainment_by_tpot(cols, job.cluster.slo.ttft_s, g.tpot_slos_s)
    return s


def attainment_by_tpot(cols: dict, ttft_slo_s: float, tpot_slos_s) -> list[float]:
    from scheduler.types import RequestStatus

    n = len(cols["status"])
    completed = cols["status"] == RequestStatus.COMPLETED
    first, finish, arrival = cols["first_token_s"][completed], cols["finish_s"][completed], cols["arrival_s"][completed]
    out = cols["output_tokens"][completed]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = (finish - first) / (out - 1)
    tpot[out <= 1] = np.nan
    ttft_ok = (first - arrival) <= ttft_slo_s
    return [float((ttft_ok & ~(tpot > slo)).sum() / n) if n else 0.0 for slo in tpot_slos_s]


def goodput(rates: list[float], attainment: list[float], target: float) -> float:
    """The rate where attainment (ascending rates) first falls below `target`, interpolated."""
    last_ok = None
    for i, (rate, a) in enumerate(zip(rates, attainment)):
        if a >= target:
            last_ok = i
            continue
        if last_ok is None:
            return 0.0
        r0, a0 = rates[last_ok], attainment[last_ok]
        return r0 + (a0 - target) / (a0 - a) * (rate - r0)
    return rates[-1] if last_ok is not None else 0.0


def run_curves(workload_at, configs: list[tuple], rates: list[float], seeds: list[int],
               tpot_slos_s: tuple[float, ...], target: float, sizing_seed: int | None = None) -> dict:
    """Every configuration (label, cluster config, policy[, SLO index it is bound to]) at ascending rates,
    once per seed (and once on `sizing_seed`, kept apart for choosing variants), until it misses `target`
    under the loosest TPOT SLO (its own, when bound; then every tighter one misses too)."""
    all_seeds = ([sizing_seed] if sizing_seed is not None else []) + list(seeds)
    bound = {c[0]: c[3] for c in configs if len(c) > 3}
    runs = {label: {str(seed): [] for seed in all_seeds} for label, *_ in configs}
    alive = {(label, seed) for label, *_ in configs for seed in all_seeds}
    for rate in rates:
        batch = [(label, config, policy, seed) for label, config, policy, *_ in configs for seed in all_seeds
                 if (label, seed) in alive]
        if not batch:
            break
        jobs = [GridJob(f"{label} seed {seed} at {rate:g} req/s",
                        SimJob(label, workload_at(rate, seed), config, policy, {}, seed), tuple(tpot_slos_s))
                for label, config, policy, seed in batch]
        for (label, config, policy, seed), s in zip(batch, common.summaries_of(jobs, run_grid_job)):
            runs[label][str(seed)].append({
                "rate_rps": rate, "attainment_by_tpot": s["attainment_by_tpot"],
                "itl_p99_s": s["itl_s"]["p99"], "tpot_p99_s": s["tpot_s"]["p99"], "ttft_p99_s": s["ttft_s"]["p99"],
                "ttft_p50_s": s["ttft_s"]["p50"], "energy_j": s["energy_j"], "cost_usd": s["cost_usd"],
                "completed": s["completed"], "prefix_hit_rate": s["prefix_hit_rate"],
                "prefill_computed_tokens": s["prefill_computed_tokens"],
                "max_instance_load_ratio": s["max_instance_load_ratio"]})
            if s["attainment_by_tpot"][bound.get(label, -1)] < target:
                alive.discard((label, seed))
    sizing = {label: by_seed.pop(str(sizing_seed)) for label, by_seed in runs.items()} if sizing_seed is not None else {}
    out = {"rates_rps": rates, "seeds": list(seeds), "tpot_slos_s": list(tpot_slos_s), "target_attainment": target,
           "price_usd_per_hour": {label: common.price_per_hour(config) for label, config, *_ in configs},
           "runs": runs, "bound_slo": bound}
    out["goodput_rps"] = goodputs(out)
    if sizing_seed is not None:
        out["sizing_seed"] = sizing_seed
        out["sizing_runs"] = sizing
        out["sizing_goodput_rps"] = {label: [None if g is None else g[0] for g in per_slo] for label, per_slo in
                                     goodputs(out | {"runs": {k: {"s": v} for k, v in sizing.items()}}).items()}
    return out


def goodputs(curves: dict) -> dict:
    """label -> per TPOT SLO -> goodput per seed (None at the SLOs a bound configuration was not run for)."""
    bound = curves.get("bound_slo", {})
    out = {}
    for label, by_seed in curves["runs"].items():
        out[label] = []
        for k in range(len(curves["tpot_slos_s"])):
            if bound.get(label, k) != k:
                out[label].append(None)
                continue
            per_seed = []
            for seed_runs in by_seed.values():
                rates = [r["rate_rps"] for r in seed_runs]
                per_seed.append(goodput(rates, [r["attainment_by_tpot"][k] for r in seed_runs],
                                        curves["target_attainment"]))
            out[label].append(per_seed)
    return out


def censored(curves: dict, values: list[float]) -> bool:
    """True when some seed never fell below the target on the grid: its goodput is the top rate, a lower bound."""
    return any(v >= curves["rates_rps"][-1] for v in values)


def goodput_text(curves: dict, values: list[float], spec: str = ".0f") -> str:
    """The interval of goodputs, marked '>=' when the grid's top rate bounds it."""
    return (">= " if censored(curves, values) else "") + ci95(values).fmt(spec)


def best_of(curves: dict, labels: list[str]) -> list[tuple[str, list[float]]]:
    """For each TPOT SLO, the label among `labels` with the highest goodput on the sizing seed (the mean over
    the evaluation seeds when the results have no sizing runs), and its evaluation goodputs: every family
    tuned the same way, its best variant at each SLO chosen on requests it is not judged on."""
    g, held_out = curves["goodput_rps"], curves.get("sizing_goodput_rps")

    def score(label: str, k: int) -> float:
        return held_out[label][k] if held_out else ci95(g[label][k]).mean
    picks = []
    for k in range(len(curves["tpot_slos_s"])):
        ok = [label for label in labels if g[label][k] is not None]
        best = max(ok, key=lambda label: score(label, k))  # ties: the first listed
        picks.append((best, g[best][k]))
    return picks
