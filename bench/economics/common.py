"""Shared running, sizing and formatting helpers for the economics sections.

Every section builds plain jobs (simulator/jobs.py) and runs them through
`summaries`, so `--parallel N` / `--address` send them to Ray as independent
tasks with a progress bar; the results are the same however they run. `digest`
keeps the fields the document reads. Sizing is fleet.py; rate and SLO curves slo_grid.py.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from scheduler.cluster import Cluster
from scheduler.config import SloConfig, load_cluster, parse_cluster
from simulator.jobs import SimJob, WorkloadSpec, run_job, run_jobs

ROOT = Path(__file__).resolve().parent.parent.parent
CONV = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
CLUSTERS = ROOT / "deploy" / "clusters"
SEED = 7
SEEDS = [7, 8, 9]  # one run per seed: other requests (lengths, arrivals, difficulties) each time
RUNTIME: dict = {}  # run_jobs options from the command line
OUT_DIR: list[Path] = []  # where the results JSON goes (plots are written beside it)
WIDTH = [1]  # sizing candidates simulated at once: the CPUs the runs have


@dataclass(frozen=True, slots=True)
class Section:
    """One section of the document: `run(trace, requests) -> dict` (saved under `name` in the results
    JSON) and `render(that dict) -> list[str]` (the Markdown below its numbered heading)."""

    name: str  # the key in economics.json and the value of --section
    title: str
    run: Callable[..., dict]
    render: Callable[[dict], list[str]]
    # The section's headline figures as Markdown bullets, for the summary at the top of the doc.
    headline: Callable[[dict], list[str]] | None = None


def cluster_file(name: str, slo: SloConfig | None = None, token_budget: int | None = None, **pool_instances):
    """A cluster of deploy/clusters with its pools' instance counts, SLO and (for the chunked-prefill pools)
    token budget replaced where given."""
    config = load_cluster(CLUSTERS / f"{name}.yaml")
    if token_budget is not None:
        config = replace(config, pools=tuple(replace(p, token_budget=token_budget) if p.chunked_prefill else p
                                             for p in config.pools))
    if pool_instances:
        config = replace(config, pools=tuple(replace(p, instances=pool_instances.get(p.name, p.instances))
                                             for p in config.pools))
    if slo is not None:
        config = replace(config, slo=slo)
    return config


def h100_cluster(name: str, slo: SloConfig, *pools, **pool_keys):
    """8B pools from (pool name, device, role, instances); `pool_keys` (e.g. chunked_prefill,
    token_budget) go to every pool."""
    return parse_cluster({
        "name": name, "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "pools": [{"name": n, "device": d, "role": r, "instances": k, "chips_per_instance": 1,
                   "model": "llama-3.1-8b", "link_gbps": 400, **pool_keys} for n, d, r, k in pools]})


def poisson(trace, n: int, rate: float, seed: int = SEED) -> WorkloadSpec:
    """The experiment's workload at a given rate: n requests resampled from `trace`, Poisson arrivals."""
    return WorkloadSpec(trace=trace.path, requests=n, rate_rps=rate, arrival="poisson", seed=seed)


def summaries(items: list[tuple]) -> list[dict]:
    """Simulator summaries of (config, policy, workload spec, params) runs, in order; a failed run stops the bench."""
    jobs = [SimJob(f"{config.name} {policy} {json.dumps(params or {})} at {spec.rate_rps:g} req/s", spec, config,
                   policy, dict(params or {}), spec.seed) for config, policy, spec, params in items]
    return summaries_of(jobs, run_job)


def summaries_of(jobs: list, fn) -> list[dict]:
    """fn(job) for every job, here or as Ray tasks (--parallel/--address), in order; a failure stops the bench."""
    results = run_jobs(jobs, fn=fn, **RUNTIME)
    if results.failures:
        sys.exit("economics: runs failed: " + "; ".join(str(f) for f in results.failures))
    return results.summaries


def price_per_hour(config) -> float:
    return sum(p.perf.price_usd_per_s * 3600 * p.config.instances for p in Cluster(config).pools)


def digest(config, policy: str, params: dict | None, s: dict) -> dict:
    price_h = price_per_hour(config)
    keep = ("seed", "requests", "completed", "rejected", "slo_attainment", "goodput_rps", "quality", "correct", "escalations",
            "escalated_requests", "advised_requests", "cost_usd", "busy_cost_usd", "energy_j", "busy_energy_j",
            "energy_per_output_token_j", "queries_per_kwh", "makespan_s", "sim_wall_s", "prefill_computed_tokens",
            "prefix_hit_tokens", "prefix_hit_rate", "max_instance_load_ratio")
    out = {k: s[k] for k in keep}
    out.update(cluster=config.name, policy=policy, params=params or {}, price_usd_per_hour=price_h,
               slo={"ttft_s": config.slo.ttft_s, "tpot_s": config.slo.tpot_s},
               ttft_p99_s=s["ttft_s"]["p99"], tpot_p99_s=s["tpot_s"]["p99"], ttft_p50_s=s["ttft_s"]["p50"],
               shares={k: round(v["share"], 4) for k, v in s["pools"].items()},
               pool_energy_j={k: v["energy_j"] for k, v in s["pools"].items()},
               pool_tokens={k: v["prefill_tokens"] + v["decode_tokens"] for k, v in s["pools"].items()},
               pool_instances={k: v["instances"] for k, v in s["pools"].items()})
    print(f"  {config.name:<14} {policy:<18} {json.dumps(params or {}):<48} SLO {out['slo_attainment']:.3f} "
          f"quality {out['quality']:.4f} ${out['cost_usd']:.1f} (busy ${out['busy_cost_usd']:.1f}) "
          f"E {out['energy_j'] / 3.6e6:.2f} kWh (busy {out['busy_energy_j'] / 3.6e6:.2f}) "
          f"[{out['sim_wall_s']:.1f} s]", flush=True)
    return out


def busy(run: dict, key: str) -> float:
    """A saved run's busy-time `energy_j` or `cost_usd` (results saved before the rename call it served_*)."""
    return run.get(f"busy_{key}", run.get(f"served_{key}"))


def run_many(items: list[tuple]) -> list[dict]:
    return [digest(config, policy, params, s) for (config, policy, _, params), s in zip(items, summaries(items))]


def pct(x, digits=1):
    return f"{x * 100:.{digits}f}%"
