"""What `infersched plan` prints and writes: the plan table, one line per round, the plan JSON."""
from __future__ import annotations

from simulator.plan.capacity import OptionCapacity
from simulator.plan.menu import ROLE_NAMES, Excluded
from simulator.plan.milp import Plan
from simulator.plan.stats import WorkloadStats
from simulator.plan.verify import Round, verification_digest


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 1e5 else f"{x:,.0f}"


def format_plan(plan: Plan) -> str:
    header = (f"{'pool':<34}{'role':>8}{'count':>6}{'$/h':>10}{'req/s cap':>11}{'traffic':>9}{'util':>7}"
              f"{'batch':>7}{'kW':>8}")
    lines = [header, "-" * len(header)]
    for p in plan.pools:
        c = p.capacity
        cap = plan.headroom * c.requests_per_s * p.instances
        batch = c.decode_batch or c.prefill_batch_tokens
        lines.append(f"{c.name:<34}{ROLE_NAMES[c.role]:>8}{p.instances:>6}{p.usd_per_hour:>10,.2f}"
                     f"{_fmt_rate(cap):>11}{p.requests_per_s / plan.rate_rps:>9.1%}{p.utilization:>7.0%}"
                     f"{batch:>7}{p.power_w / 1e3:>8.2f}")
    lines.append("-" * len(header))
    lines.append(f"{'total':<34}{'':>8}{plan.instances:>6}{plan.usd_per_hour:>10,.2f}{'':>11}{'':>9}{'':>7}"
                 f"{'':>7}{plan.power_w / 1e3:>8.2f}")
    lines.append(f"{plan.chips} chips, {plan.power_w / plan.rate_rps:,.0f} J per request planned "
                 f"({plan.objective} objective, headroom {plan.headroom:.2f}; req/s cap at headroom; "
                 "batch: decode sequences, or prompt tokens for prefill)")
    return "\n".join(lines)


def format_round(i: int, r: Round) -> str:
    text = (f"round {i + 1}: headroom {r.headroom:.2f}, {r.plan.instances} instances, ${r.plan.usd_per_hour:,.2f}/h, "
            f"{r.plan.power_w / 1e3:,.2f} kW planned")
    if r.verification is not None:
        v = r.verification
        text += (f"; simulated: SLO attainment {v['slo_attainment']:.3f}, p99 TTFT "
                 f"{_fmt_opt(v['ttft_s']['p99'])} s, p99 TPOT {_fmt_opt(v['tpot_s']['p99'], 1e3)} ms, "
                 f"${v['cost_usd']:,.2f} and {v['energy_j'] / 3.6e6:,.3f} kWh over {v['makespan_s']:,.1f} s, "
                 f"{v['rejected']:,} rejected")
    return text


def _fmt_opt(x, scale: float = 1.0) -> str:
    return "-" if x is None else f"{x * scale:,.3g}"


def plan_document(*, menu_source: str, stats: WorkloadStats, ttft_slo_s: float, tpot_slo_s: float,
                  quality_floor: float | None, objective: str, energy_weight: float,
                  target_attainment: float | None, caps: list[OptionCapacity], excluded: list[Excluded],
                  rounds: list[Round], cluster_yaml_text: str) -> dict:
    """The plan JSON: inputs, every option's capacity, what was excluded, every round, the final
    plan and its verification. `target_attainment` is None when the plan was not verified."""
    final = rounds[-1]
    met = final.verification is None or final.attainment >= (target_attainment or 0.0)
    return {
        "menu": menu_source, "workload": stats.as_dict(),
        "slo": {"ttft_s": ttft_slo_s, "tpot_s": tpot_slo_s}, "quality_floor": quality_floor,
        "objective": objective, "energy_weight": energy_weight, "target_attainment": target_attainment,
        "options": [c.as_dict() for c in caps],
        "excluded": [{"option": e.label, "role": e.role, "reason": e.reason} for e in excluded],
        "rounds": [{"headroom": r.headroom, "plan": r.plan.as_dict(), "note": r.note or None,
                    "verification": None if r.verification is None else verification_digest(r.verification)}
                   for r in rounds],
        "plan": final.plan.as_dict(),
        "verification": None if final.verification is None else verification_digest(final.verification),
        "verified": None if final.verification is None else met,
        "cluster_yaml": cluster_yaml_text,
    }
