"""Step 4 of planning: solve, write the cluster YAML, verify it by simulation, re-plan.

`plan_cluster` applies the quality floor, derives capacities (step 2) and
solves (step 3), turning an SLO that no option meets into a message that
names it. `verify_plan` replays the workload through the planned cluster
with the slo-aware policy; `plan_and_verify` lowers the headroom (plans more
spare capacity) and solves again while the simulated SLO attainment misses
the target, a bounded number of rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import yaml

from scheduler.config import parse_cluster
from scheduler.types import Role
from simulator.plan.capacity import OptionCapacity, Probe, capability_of, derive_capacities
from simulator.plan.menu import ROLE_NAMES, Excluded, Menu
from simulator.plan.milp import Plan, solve_plan
from simulator.plan.stats import PlanError, WorkloadStats, check_unit

# Verification rounds multiply the headroom by this after each round that misses the target.
HEADROOM_BACKOFF = 0.8


def _slo_message(caps: list[OptionCapacity], excluded: list[Excluded], probes: list[Probe],
                 stats: WorkloadStats, ttft_s: float, tpot_s: float) -> str | None:
    """When options may do a stage but none can within the SLOs, say which SLO rules them all out.
    (A menu that allows no role for a stage at all is answered by _check_structure.)"""
    has_prefill = any(c.role != Role.DECODE for c in caps)
    has_decode = any(c.role != Role.PREFILL for c in caps)
    decoders = [p for p in probes if Role.DECODE in p.roles or Role.BOTH in p.roles]
    prefillers = [p for p in probes if Role.PREFILL in p.roles or Role.BOTH in p.roles]
    if not decoders or not prefillers:
        return None
    if not has_decode:
        fastest = min(decoders, key=lambda p: p.decode_step1_s)
        if fastest.decode_step1_s > tpot_s:
            return (f"TPOT SLO {tpot_s * 1e3:g} ms is below the fastest decode step of any option "
                    f"({fastest.label}: {fastest.decode_step1_s * 1e3:.1f} ms at batch 1, "
                    f"{stats.decode_context_tokens:,.0f} tokens of context)")
    if not has_prefill:
        fastest = min(prefillers, key=lambda p: p.prefill_p90_s)
        if fastest.prefill_p90_s > ttft_s / 2.0:
            return (f"TTFT SLO {ttft_s:g} s is too tight: a p90 prompt ({stats.p90_input_tokens:,.0f} tokens) takes "
                    f"{fastest.prefill_p90_s * 1e3:,.1f} ms to prefill on the fastest option ({fastest.label}), and "
                    "the planner allows half the TTFT SLO per prefill iteration (one waited for, one served)")
    if not has_prefill or not has_decode:
        stage = "decode" if not has_decode else "prefill"
        reasons = "; ".join(f"{e.label} ({e.role}): {e.reason}" for e in excluded if e.role is not None)
        return f"no option can {stage} within the SLOs: {_clip(reasons)}"
    return None


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_cluster(stats: WorkloadStats, menu: Menu, *, ttft_slo_s: float, tpot_slo_s: float,
                 quality_floor: float | None = None, objective: str = "cost", energy_weight: float = 0.5,
                 headroom: float = 0.7) -> tuple[Plan, list[OptionCapacity], list[Excluded]]:
    """Solve the planning problem: (plan, the usable option capacities, what was excluded and why).

    The quality floor is a filter: only options whose model's capability is at least the floor
    may serve (all traffic then meets it; tiered shares of traffic are not modelled).
    Raises PlanError naming the failing constraint: the quality floor, an SLO no option meets,
    no end-to-end path (disaggregated prefill and decode must share a model), or no feasible
    cluster within the menu's max_instances.
    """
    for name, value in (("TTFT SLO", ttft_slo_s), ("TPOT SLO", tpot_slo_s)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise PlanError(f"{name} must be a positive number of seconds, got {value!r}")
    options = list(menu.options)
    excluded = list(menu.excluded)
    if quality_floor is not None:
        check_unit("quality floor", quality_floor, zero_ok=True)
        best = max(menu.models, key=capability_of, default=None)
        if best is None or capability_of(best) < quality_floor:
            best_text = f"best: {best.name} {capability_of(best):.3g}" if best is not None else "the menu has no models"
            raise PlanError(f"quality floor {quality_floor:g} exceeds every menu model's capability ({best_text})")
        excluded += [Excluded(o.label, None, f"capability {capability_of(o.model):.3g} is below the quality floor "
                                             f"{quality_floor:g}")
                     for o in options if capability_of(o.model) < quality_floor]
        options = [o for o in options if capability_of(o.model) >= quality_floor]
        if not options:
            capable = sorted(m.name for m in menu.models if capability_of(m) >= quality_floor)
            reasons = "; ".join(f"{e.label}: {e.reason}" for e in menu.excluded if e.label.split("/")[-1] in capable)
            raise PlanError(f"quality floor {quality_floor:g}: the models that meet it ({', '.join(capable)}) fit no "
                            f"menu device ({_clip(reasons) or 'no option lists them'})")
    if not options:
        reasons = "; ".join(f"{e.label}: {e.reason}" for e in excluded)
        raise PlanError(f"no menu option can hold its model ({_clip(reasons) or 'the menu lists none'})")
    caps, derived_excluded, probes = derive_capacities(options, stats, ttft_slo_s, tpot_slo_s)
    excluded += derived_excluded
    message = _slo_message(caps, derived_excluded, probes, stats, ttft_slo_s, tpot_slo_s)
    if message:
        if quality_floor is not None:
            message += f" (among options meeting the quality floor {quality_floor:g})"
        raise PlanError(message)
    plan = solve_plan(caps, stats.rate_rps, objective=objective, energy_weight=energy_weight, headroom=headroom)
    return plan, caps, excluded


def cluster_document(plan: Plan, *, name: str, ttft_slo_s: float, tpot_slo_s: float,
                     policy: str = "slo-aware") -> dict:
    """The plan as a cluster YAML document (what scheduler.config.parse_cluster reads).

    Each pool carries the operating point the capacity was derived at: max_batch = B*
    (decode and colocated) and max_batch_tokens = T* (prefill and colocated)."""
    pools = []
    for p in plan.pools:
        c, o = p.capacity, p.capacity.option
        if o is None:
            raise PlanError(f"pool {c.name}: no menu option behind it to write as a cluster pool")
        pool: dict[str, Any] = {
            "name": c.name, "device": o.device.name, "instances": p.instances, "chips_per_instance": o.chips,
            "model": o.model_ref, "role": ROLE_NAMES[c.role],
        }
        if o.quantization:
            pool["quantization"] = o.quantization
        pool["link_gbps"] = o.link_gbps
        if o.price_overridden:
            pool["price_usd_per_hour"] = o.price_usd_per_hour
        pool["max_batch"] = c.decode_batch if c.decode_batch else o.max_batch
        pool["max_batch_tokens"] = c.prefill_batch_tokens if c.prefill_batch_tokens else o.max_batch_tokens
        pool["memory_utilization"] = o.memory_utilization
        pools.append(pool)
    return {"name": name, "slo": {"ttft_s": float(ttft_slo_s), "tpot_s": float(tpot_slo_s)}, "policy": policy,
            "pools": pools}


def cluster_yaml(document: dict, header: str = "") -> str:
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    lines = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return lines + body


def verify_plan(document: dict, workload, *, seed: int = 0, policy: str = "slo-aware",
                progress: bool = False) -> dict:
    """Simulate the planned cluster on `workload` with `policy`; the simulator's summary dict."""
    from scheduler.cluster import Cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation

    config = parse_cluster(document, source=f"<plan {document.get('name', '')}>")
    cluster = Cluster(config)
    result = Simulation(cluster, build_policy(policy, config), workload, seed=seed, progress=progress,
                        keep_records=False).run()
    return summarize(result)


@dataclass(frozen=True, slots=True)
class Round:
    headroom: float
    plan: Plan
    document: dict
    verification: dict | None  # the simulator summary; None when not verified
    note: str = ""  # why no further round followed, when a re-plan was impossible

    @property
    def attainment(self) -> float | None:
        return None if self.verification is None else float(self.verification["slo_attainment"])


def verification_digest(summary: dict) -> dict:
    makespan = summary["makespan_s"]
    return {
        "slo_attainment": summary["slo_attainment"], "requests": summary["requests"],
        "completed": summary["completed"], "rejected": summary["rejected"],
        "ttft_p99_s": summary["ttft_s"]["p99"], "tpot_p99_s": summary["tpot_s"]["p99"],
        "cost_usd": summary["cost_usd"], "energy_j": summary["energy_j"], "makespan_s": makespan,
        "usd_per_hour": summary["cost_usd"] / makespan * 3600.0 if makespan > 0 else None,
        "power_w": summary["energy_j"] / makespan if makespan > 0 else None,
        "energy_per_output_token_j": summary["energy_per_output_token_j"],
        "pools": {name: {"utilization": p["utilization"], "share": p["share"]} for name, p in summary["pools"].items()},
    }


def plan_and_verify(stats: WorkloadStats, menu: Menu, workload=None, *, ttft_slo_s: float, tpot_slo_s: float,
                    quality_floor: float | None = None, objective: str = "cost", energy_weight: float = 0.5,
                    headroom: float = 0.7, target_attainment: float = 0.9, max_rounds: int = 3, seed: int = 0,
                    name: str | None = None, on_round=None, verify_all=None,
                    progress: bool = False) -> tuple[list[Round], list[OptionCapacity], list[Excluded]]:
    """Plan; with a workload, verify by simulation and, while SLO attainment < target, re-plan
    with headroom x HEADROOM_BACKOFF, at most `max_rounds` rounds in all. Returns every round;
    the last is the one to use (the first that met the target, or the most provisioned; when
    a lower headroom has no feasible plan, the last round's `note` says so).

    verify_all(documents) -> summaries: verify every round's plan at once (e.g. as Ray tasks),
    planned ahead at each headroom; the rounds returned are the same as verifying one by one."""
    check_unit("target attainment", target_attainment, zero_ok=True)
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise PlanError(f"max rounds must be a positive integer, got {max_rounds!r}")
    ahead = verify_all is not None and workload is not None
    planned: list[tuple[Round, list[OptionCapacity], list[Excluded]]] = []
    rounds: list[Round] = []
    h = headroom
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    cluster_name = name or f"plan-{menu.name}"
    note = ""
    for _ in range(max_rounds):
        try:
            plan, caps, excluded = plan_cluster(stats, menu, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                                                quality_floor=quality_floor, objective=objective,
                                                energy_weight=energy_weight, headroom=h)
        except PlanError as exc:
            if not rounds and not planned:
                raise
            # More spare capacity does not fit the menu: keep the last plan and say why.
            note = f"no re-plan at headroom {h:.2f}: {exc}"
            break
        document = cluster_document(plan, name=cluster_name, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
        if ahead:
            planned.append((Round(h, plan, document, None), caps, excluded))
            h *= HEADROOM_BACKOFF
            continue
        summary = verify_plan(document, workload, seed=seed, progress=progress) if workload is not None else None
        rounds.append(Round(h, plan, document, summary))
        if on_round is not None:
            on_round(rounds[-1])
        if summary is None or summary["slo_attainment"] >= target_attainment:
            break
        h *= HEADROOM_BACKOFF
    if ahead:
        summaries = verify_all([r.document for r, _, _ in planned])
        for (r, caps, excluded), summary in zip(planned, summaries):
            rounds.append(replace(r, verification=summary))
            if on_round is not None:
                on_round(rounds[-1])
            if summary["slo_attainment"] >= target_attainment:
                note = ""
                break
    if note:
        rounds[-1] = replace(rounds[-1], note=note)
    return rounds, caps, excluded
