"""Per-request records (columnar), per-pool usage, and the summary everyone reads.

The summary dict is the JSON schema of `infersched simulate --json` and, for
the live cluster, of `infersched replay --json`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scheduler.config import Serving
from scheduler.reasons import count_by_code
from simulator.energy import boundary_summary
from simulator.tally import PERCENTILES, Tally, percentiles
from workers.speculative import speculative_report

__all__ = ["PERCENTILES", "PoolUsage", "RECORD_COLUMNS", "RequestRecords", "UtilizationTimeline", "summarize"]



# Every per-request column: (dtype, value before anything happened). NaN where a stage did not happen.
# Quality (simulator/quality.py): `difficulty` is the request's; `capability` is the effective
# capability of the answer delivered when a staging plugin set it (NaN: the capability of the model
# of the final prefill instance); `escalations` and `advised` count passes beyond the first, by kind.
RECORD_COLUMNS: dict[str, tuple[type, float]] = {
    "arrival_s": (np.float64, np.nan), "prefill_start_s": (np.float64, np.nan),
    "first_token_s": (np.float64, np.nan), "kv_ready_s": (np.float64, np.nan),
    "decode_start_s": (np.float64, np.nan), "finish_s": (np.float64, np.nan),
    "input_tokens": (np.int64, 0), "output_tokens": (np.int64, 0),
    "prefill_instance": (np.int32, -1), "decode_instance": (np.int32, -1),
    "status": (np.int8, 0), "energy_j": (np.float64, 0.0), "cost_usd": (np.float64, 0.0),
    "difficulty": (np.float64, 0.0), "capability": (np.float64, np.nan),
    "escalations": (np.int8, 0), "advised": (np.int8, 0),
}


class RequestRecords:
    """One row per request, stored as columns (RECORD_COLUMNS)."""

    TIME_COLUMNS = ("arrival_s", "prefill_start_s", "first_token_s", "kv_ready_s", "decode_start_s", "finish_s")

    def __init__(self, n: int):
        self.n = n
        for name, (dtype, fill) in RECORD_COLUMNS.items():
            setattr(self, name, np.full(n, fill, dtype=dtype))

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in RECORD_COLUMNS}

    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    def tpot_s(self) -> np.ndarray:
        """Mean time per output token after the first; NaN for one-token outputs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (self.finish_s - self.first_token_s) / (self.output_tokens - 1)
        tpot[self.output_tokens <= 1] = np.nan
        return tpot

    def decision_log(self) -> np.ndarray:
        """(prefill instance, decode instance) per request: what the policy decided."""
        return np.stack([self.prefill_instance, self.decode_instance], axis=1)

    def save(self, path: Path, instance_pool_names: list[str]) -> None:
        """Compressed columnar file (numpy .npz); load with numpy.load."""
        np.savez_compressed(path, **self.columns(), instance_pool=np.array(instance_pool_names))


@dataclass(frozen=True, slots=True)
class PoolUsage:
    name: str
    device: str
    model: str
    role: str
    instances: int
    chips_per_instance: int
    busy_s: float
    dynamic_energy_j: float
    idle_energy_j: float
    cost_usd: float
    prefill_tokens: int
    decode_tokens: int
    utilization: float
    prefix_hit_tokens: int = 0  # prompt tokens served from prefix caches instead of computed
    # Hot spots: the busiest instance over the pool's mean, by busy time and by prompt tokens computed.
    busy_max_over_mean: float = 1.0
    prefill_tokens_max_over_mean: float = 1.0

    @classmethod
    def from_engines(cls, pool, engines, makespan_s: float) -> "PoolUsage":
        busy = sum(e.busy_s for e in engines)
        perf = pool.perf
        n = len(engines)
        return cls(
            name=pool.name, device=perf.device.name, model=perf.model.name, role=pool.role.name.lower(),
            instances=n, chips_per_instance=perf.chips, busy_s=busy,
            dynamic_energy_j=sum(e.dynamic_energy_j for e in engines),
            # A user's own device is on for its user anyway: it is charged idle power only while
            # it serves. Every other instance is provisioned for the run.
            idle_energy_j=perf.idle_power_w * (busy if pool.config.serving == Serving.OWN_DEVICE else makespan_s * n),
            # Provisioned instances are paid for by the hour, busy or not.
            cost_usd=perf.price_usd_per_s * makespan_s * n,
            prefill_tokens=sum(e.prefill_tokens for e in engines),
            decode_tokens=sum(e.decode_tokens for e in engines),
            utilization=busy / (n * makespan_s) if makespan_s > 0 else 0.0,
            prefix_hit_tokens=sum(e.prefix_hit_tokens for e in engines),
            busy_max_over_mean=_max_over_mean([e.busy_s for e in engines]),
            prefill_tokens_max_over_mean=_max_over_mean([e.prefill_tokens for e in engines]),
        )

    @property
    def energy_j(self) -> float:
        return self.dynamic_energy_j + self.idle_energy_j


def _max_over_mean(values) -> float:
    total = sum(values)
    return max(values) * len(values) / total if total else 1.0


class UtilizationTimeline:
    """Per-pool busy time sampled as the run goes, for the utilization-over-time plot.

    The runtime calls `sample` every few thousand arrivals with each pool's
    cumulative busy seconds; utilization between two samples is the busy time
    gained over the instance-seconds elapsed. Sampling costs nothing per
    event, and memory stays bounded: past MAX_SAMPLES every other sample is
    dropped.
    """

    MAX_SAMPLES = 2048

    def __init__(self, instances_per_pool: list[int]):
        self.instances = np.array(instances_per_pool, dtype=np.float64)
        self.times_s: list[float] = [0.0]
        self.busy_s: list[list[float]] = [[0.0] * len(instances_per_pool)]

    def sample(self, now_s: float, busy_per_pool_s: list[float]) -> None:
        if now_s <= self.times_s[-1]:
            return
        self.times_s.append(now_s)
        self.busy_s.append(busy_per_pool_s)
        if len(self.times_s) > self.MAX_SAMPLES:
            self.times_s = self.times_s[::2]
            self.busy_s = self.busy_s[::2]

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(interval start times, utilization [pools x intervals])."""
        t = np.asarray(self.times_s)
        busy = np.asarray(self.busy_s).T
        if len(t) < 2:
            return t[:0], busy[:, :0]
        util = np.diff(busy, axis=1) / (self.instances[:, None] * np.diff(t)[None, :])
        return t[:-1], np.clip(util, 0.0, 1.0)


def result_tally(result) -> Tally:
    """The run's summary accumulators: folded in as it ran, or from its in-memory records."""
    tally = getattr(result, "tally", None)
    if tally is None:
        tally = Tally.from_records(result.cluster, result.records)
        result.tally = tally
    return tally


def summarize(result) -> dict:
    """The summary JSON of one simulation (see README for the schema)."""
    t = result_tally(result)
    cluster = result.cluster
    itl = getattr(result, "itl", None)
    slo = cluster.config.slo
    makespan = result.makespan_s
    n = t.n
    kv = getattr(result, "kv_tiers", None) or {}
    tier_rows = kv.get("kv_tiers", {})
    # The tiers' capacity and moves are the cluster's too (simulator/kv_usage.py).
    # Router and verifier passes (scheduler/plugins/overhead.py): those run on a pool (`pool` set,
    # simulator/judges.py) are in its energy and dollars already; the others ran on batch-1
    # instances of their own, added here.
    overheads = getattr(result, "overheads", None) or {}
    apart = [r for r in overheads.values() if not r.get("pool")]
    energy = (sum(p.energy_j for p in result.pools) + sum(r["energy_j"] for r in tier_rows.values())
              + sum(r["energy_j"] for r in apart))
    cost = (sum(p.cost_usd for p in result.pools) + sum(r["cost_usd"] for r in tier_rows.values())
            + sum(r["cost_usd"] for r in apart))
    out_tokens = t.output_tokens
    placed_total = max(t.placed, 1)
    n_correct = t.correct
    passes = getattr(result, "pool_passes", None)
    latency = t.latency_stats()
    pools = {}
    for p, usage in zip(cluster.pools, result.pools):
        # Requests per instance (prefill side) over the pool's mean: how evenly a pool is used.
        requests_ratio = _max_over_mean(t.per_instance[p.instances.start:p.instances.stop].tolist())
        pools[p.name] = {
            "device": usage.device,
            "model": usage.model,
            "role": usage.role,
            "instances": usage.instances,
            "chips_per_instance": usage.chips_per_instance,
            "requests": int(t.served_counts[p.index]),
            "prefill_requests": int(t.prefill_counts[p.index]),
            "decode_requests": int(t.decode_counts[p.index]),
            "share": float(t.served_counts[p.index] / placed_total),
            "prefill_tokens": usage.prefill_tokens,
            "prefix_hit_tokens": usage.prefix_hit_tokens,
            "decode_tokens": usage.decode_tokens,
            "instance_requests_max_over_mean": requests_ratio,
            "instance_busy_max_over_mean": usage.busy_max_over_mean,
            "instance_prefill_tokens_max_over_mean": usage.prefill_tokens_max_over_mean,
            "utilization": usage.utilization,
            "energy_j": usage.energy_j,
            "idle_energy_j": usage.idle_energy_j,
            "cost_usd": usage.cost_usd,
            "capability": float(t.pool_capability[p.index]),
            "chunked_prefill": p.config.chunked_prefill,
            "token_budget": p.config.token_budget if p.config.chunked_prefill else None,
            "speculative": speculative_report(p.config.speculative),
            # Passes served (escalations and advice included); equals requests for one-pass policies.
            "passes": int(passes[p.index]) if passes is not None else int(t.served_counts[p.index]),
        }
    hit_tokens = sum(u.prefix_hit_tokens for u in result.pools)
    prompt_tokens = hit_tokens + sum(u.prefill_tokens for u in result.pools)
    load_ratios = [pools[p.name]["instance_requests_max_over_mean"] for p in cluster.pools if p.role.name != "DECODE"]
    return {
        "cluster": cluster.config.name,
        "policy": result.policy_name,
        "workload": result.workload_description,
        "seed": result.seed,
        "requests": n,
        "completed": t.completed,
        "rejected": t.rejected,
        "failed": t.failed,
        "reject_reasons": result.reject_reasons,
        # The same rejections by code, named as the live scheduler's GetStats counts them.
        "reject_codes": result.reject_codes if result.reject_codes is not None else count_by_code(result.reject_reasons),
        "input_tokens": t.input_tokens,
        "output_tokens": out_tokens,
        # Prompt tokens prefilled: computed, and served from a prefix cache instead.
        "prefill_computed_tokens": prompt_tokens - hit_tokens,
        "prefix_hit_tokens": hit_tokens,
        "prefix_hit_rate": hit_tokens / prompt_tokens if prompt_tokens else 0.0,
        "prefix_hit_tokens_by_tier": kv.get("prefix_hit_tokens_by_tier", {"hbm": hit_tokens}),
        "kv_tiers": tier_rows,
        "kv_load_s": sum(r["load_s"] for r in tier_rows.values()),
        # Requests placed on the busiest prefill-capable instance over its pool's mean (1.0 = even).
        "max_instance_load_ratio": max(load_ratios) if load_ratios else 1.0,
        "ttft_s": latency["ttft_s"],
        "tpot_s": latency["tpot_s"],
        # Every output token's gap to the previous one (token-weighted, as vLLM's benchmark_serving
        # reports ITL), from the engines' histograms: percentiles within 0.5% (workers/itl.py).
        "itl_s": itl.summary() if itl is not None else percentiles(np.empty(0)),
        "e2e_s": latency["e2e_s"],
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "slo_attainment": t.meets_slo / n if n else 0.0,
        "goodput_rps": t.meets_slo / makespan if makespan > 0 else 0.0,
        "throughput_rps": t.completed / makespan if makespan > 0 else 0.0,
        "output_tokens_per_s": float(out_tokens / makespan) if makespan > 0 else 0.0,
        "makespan_s": makespan,
        "cost_usd": cost,
        # Board (chip) energy; the facility and marginal boundaries: simulator/energy.py.
        "energy_j": energy,
        **boundary_summary(cluster, result.pools, pools, overheads),
        # Each judgement kind ("router", "verifier"): passes, seconds, energy_j, cost_usd, device; and
        # where a pool ran them, its name (`pool`), the model and the seconds spent queueing (`queue_s`).
        "judgements": overheads,
        "energy_per_output_token_j": energy / out_tokens if out_tokens else None,
        # Energy attributed to requests (busy time only: idle power of provisioned but
        # unused instances is in energy_j, not here).
        "busy_energy_j": t.energy_j,
        # Likewise dollars: each instance's price over the time it was busy, split over the
        # requests it served (what per-use billing or a right-sized fleet would pay).
        "busy_cost_usd": t.cost_usd,
        "quality": n_correct / n if n else 0.0,
        "correct": n_correct,
        "escalations": t.escalations,
        "escalated_requests": t.escalated_requests,
        "advised_requests": t.advised_requests,
        "queries_per_kwh": float(t.completed / (energy / 3.6e6)) if energy > 0 else None,
        "correct_per_kwh": float(n_correct / (energy / 3.6e6)) if energy > 0 else None,
        "cost_per_correct_usd": cost / n_correct if n_correct else None,
        "cost_per_million_output_tokens_usd": cost / out_tokens * 1e6 if out_tokens else None,
        "sim_wall_s": result.wall_s,
        "events": result.events,
        "events_per_request": result.events / n if n else 0.0,
        "sim_requests_per_s": n / result.wall_s if result.wall_s > 0 else None,
        "pools": pools,
    }
