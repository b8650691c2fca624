"""Section 2: an 8B executor advised by 405B on hard requests vs frontier-only (405B), the executor alone,
and the 8B -> 70B -> 405B cascade, every fleet sized the same way on a held-out slice (fleet.py).

Multi-pool fleets are sized one pool at a time: for each count of the larger pools in a small grid
(advisor instances; the cascade's 70B and 405B tiers), the 8B pool by the rule, then the cheapest
whole fleet. Every fleet's chunked-prefill token budget (BUDGETS, one for all its pools) is chosen the
same way, on the sizing slice only (fleet.tuned_family). Quality is then shown as a range over `advisor_lift` and router accuracy on the advisor
fleet, since both are assumptions of the model rather than measurements.
"""
from __future__ import annotations

from scheduler.config import SloConfig, parse_cluster

from bench.economics import common
from bench.economics.common import Section, busy, cluster_file, pct, poisson
from bench.economics.fleet import at_whole, fractional, tuned_family
from bench.economics.stats import ci95, paired_ratio, range_text

ADVISOR_SLO = SloConfig(ttft_s=5.0, tpot_s=0.1)
RATE_RPS = 5.0
COUNTS = list(range(1, 13))
ADVISORS = (1, 2)
CASCADE_UPPER = ((1, 1), (2, 1), (3, 1), (2, 2))  # (70B instances, 405B instances)
LIFTS = (0.5, 0.75, 0.9)
ROUTER_ACCURACIES = (0.7, 0.8, 0.9, 1.0)
BUDGETS = (2048, 4096, 8192)


def _advisor_cluster(executors: int, advisors: int, budget: int | None = None):
    return cluster_file("advisor", ADVISOR_SLO, budget, **{"executor-8b": executors, "advisor-405b": advisors})


def _executor_only(executors: int, budget: int = 8192):
    return parse_cluster(
        {"name": "executor-only", "slo": {"ttft_s": ADVISOR_SLO.ttft_s, "tpot_s": ADVISOR_SLO.tpot_s},
         "pools": [{"name": "executor-8b", "device": "h100-sxm", "instances": executors, "chips_per_instance": 1,
                    "model": "llama-3.1-8b", "role": "both", "chunked_prefill": True, "token_budget": budget}]})


def _cascade_cluster(small: int, mid: int, top: int, budget: int | None = None):
    return cluster_file("tiers", ADVISOR_SLO, budget, **{"tier-8b": small, "tier-70b": mid, "tier-405b": top})


def run_section(trace, n: int) -> dict:
    def wl(seed):
        return poisson(trace, n, RATE_RPS, seed)
    res = {"rate_rps": RATE_RPS, "slo": {"ttft_s": ADVISOR_SLO.ttft_s, "tpot_s": ADVISOR_SLO.tpot_s},
           "advisor_params": dict(cluster_file("advisor").policy.params)}
    price = common.price_per_hour
    res["frontier_only"] = tuned_family(
        lambda b, c: cluster_file("frontier", ADVISOR_SLO, b, **{"frontier-405b": c}), list(BUDGETS),
        "least-loaded", None, wl, COUNTS)
    res["executor_only"] = tuned_family(lambda b, c: _executor_only(c, b), list(BUDGETS), "least-loaded", None,
                                        wl, COUNTS)
    for label, params in (("advisor", {"router_accuracy": 1.0}), ("advisor_router80", {"router_accuracy": 0.8})):
        fam = tuned_family(lambda v, c: _advisor_cluster(c, *v), [(a, b) for a in ADVISORS for b in BUDGETS],
                           "advisor", params, wl, COUNTS, price=price)
        res[label] = fam | {"upper": {"advisor-405b": fam["variant"][0]}}
    fam = tuned_family(lambda v, c: _cascade_cluster(c, *v), [(m, t, b) for m, t in CASCADE_UPPER for b in BUDGETS],
                       "cascade", None, wl, COUNTS, price=price)
    res["cascade"] = fam | {"upper": {"tier-70b": fam["variant"][0], "tier-405b": fam["variant"][1]}}
    # Quality as a range over the model's assumptions, on the oracle-sized advisor fleet.
    config = _advisor_cluster(res["advisor"]["whole"], *res["advisor"]["variant"])
    grid = [(lift, acc) for lift in LIFTS for acc in ROUTER_ACCURACIES]
    items = [(config, "advisor", wl(seed), {"advisor_lift": lift, "router_accuracy": acc})
             for lift, acc in grid for seed in common.SEEDS]
    runs = [common.digest(c, p, q, s) for (c, p, _, q), s in zip(items, common.summaries(items))]
    k = len(common.SEEDS)
    res["assumptions"] = [{"advisor_lift": lift, "router_accuracy": acc, "runs": runs[i * k:(i + 1) * k]}
                          for i, (lift, acc) in enumerate(grid)]
    return res


NAMES = {"frontier_only": "frontier-only (405B fp8, 8 x H100)", "advisor": "advisor, oracle router",
         "advisor_router80": "advisor, 80% router", "executor_only": "executor-only (8B)",
         "cascade": "cascade 8B -> 70B -> 405B, 90% verifier"}


def _fleet(label: str, fam: dict) -> str:
    upper = fam.get("upper", {})
    small = {"frontier_only": "405B", "cascade": "8B"}.get(label, "8B")
    parts = [f"{fam['whole']} x {small}"] + [f"{v} x {k.split('-')[-1].upper()}" for k, v in upper.items()]
    variant = fam.get("variant", 8192)
    budget = variant[-1] if isinstance(variant, (list, tuple)) else variant
    return " + ".join(parts) + f", budget {budget:,}"


def _budgets(a: dict) -> list[int]:
    variants = a["frontier_only"].get("variants", [[8192]])
    return [v for v, *_ in variants]


def _quality_ratio(runs, base):
    return paired_ratio([r["quality"] for r in runs], [b["quality"] for b in base])


def render(a: dict) -> list[str]:
    f = at_whole(a["frontier_only"])
    lines = [f"{a['rate_rps']:g} req/s, SLO TTFT <= {a['slo']['ttft_s']:g} s, TPOT <= {a['slo']['tpot_s'] * 1e3:g} "
             "ms; every fleet sized by the same rule as section 1 on the held-out slice, judged on the evaluation "
             "seeds; intervals and per-seed ratios as there. "
             + (f"Each fleet's chunked-prefill token budget (one for all its pools, from "
                f"{', '.join(f'{b:,}' for b in _budgets(a))}) and upper-pool layout are chosen on the held-out slice "
                "too: the cheapest whole fleet, then the smallest fractional one. " if len(_budgets(a)) > 1 else
                f"Every pool's chunked-prefill token budget is {_budgets(a)[0]:,} (these results predate its tuning). ")
             + "*Fractional* scales the pool the rule sizes (the 405B "
             "frontier pool; the 8B pool of the others) to where attainment crosses the threshold; *busy-time* "
             "prices each instance only while it runs an iteration."
             + (" The advisor's router (8B) reads each prompt on the 8B executor pool and the cascade's verifier (70B) "
                "each answer it could send up on the 70B pool: the pools serving those models, where the passes queue "
                "with the requests (`simulator/judges.py`)." if a.get("judges") == "pooled" else ""), "",
             "| configuration | fleet (whole) | fractional size | quality | of frontier quality | SLO attainment "
             "| advised | cost ratio: whole | fractional | busy-time | energy ratio: whole |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in ("frontier_only", "advisor", "advisor_router80", "executor_only", "cascade"):
        fam = a[label]
        runs = at_whole(fam)
        lines.append(
            f"| {NAMES[label]} | {_fleet(label, fam)} | {fam['fractional_k']:.2f} | "
            f"{ci95([r['quality'] for r in runs]).fmt('.2f', 100, '%')} | {_quality_ratio(runs, f).fmt('.1f', 100, '%')} | "
            f"{ci95([r['slo_attainment'] for r in runs]).fmt('.1f', 100, '%')} | "
            f"{ci95([r['advised_requests'] for r in runs]).mean:,.0f} | "
            f"{_ratio([r['cost_usd'] for r in runs], [r['cost_usd'] for r in f])} | "
            f"{_ratio(fractional(fam, 'cost_usd'), fractional(a['frontier_only'], 'cost_usd'))} | "
            f"{_ratio([busy(r, 'cost_usd') for r in runs], [busy(r, 'cost_usd') for r in f])} | "
            f"{_ratio([r['energy_j'] for r in runs], [r['energy_j'] for r in f])} |")
    return lines + [""] + _assumptions(a) + _notes(a)


def _ratio(xs, base) -> str:
    return paired_ratio(xs, base).fmt(".2f", suffix="x")


def _assumptions(a: dict) -> list[str]:
    f = at_whole(a["frontier_only"])
    lines = ["Advisor quality over its two assumptions, on the oracle-sized advisor fleet (of frontier-only quality; "
             "the fleet, and so its cost, is the same in every cell):", "",
             "| advisor_lift | " + " | ".join(f"router {acc:g}" for acc in ROUTER_ACCURACIES) + " |",
             "| ---: | " + " | ".join("---:" for _ in ROUTER_ACCURACIES) + " |"]
    for lift in LIFTS:
        cells = [_quality_ratio(c["runs"], f).fmt(".1f", 100, "%") for c in a["assumptions"]
                 if c["advisor_lift"] == lift]
        lines.append(f"| {lift:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def _notes(a: dict) -> list[str]:
    f = at_whole(a["frontier_only"])
    x = a["advisor"]
    runs = at_whole(x)
    q = _quality_ratio(runs, f)
    cost = paired_ratio([r["cost_usd"] for r in runs], [b["cost_usd"] for b in f])
    frac = paired_ratio(fractional(x, "cost_usd"), fractional(a["frontier_only"], "cost_usd"))
    qs = [_quality_ratio(c["runs"], f) for c in a["assumptions"]]
    costs = [paired_ratio([r["cost_usd"] for r in c["runs"]], [b["cost_usd"] for b in f]) for c in a["assumptions"]]
    adv_gpus = x["upper"]["advisor-405b"] * 8 + x["whole"]
    front_gpus = a["frontier_only"]["whole"] * 8
    return [
        "### What the numbers say", "",
        f"- **Quality.** With the oracle router and the default lift the advisor reaches {q.fmt('.1f', 100, '%')} of "
        f"frontier-only quality; over advisor_lift {LIFTS[0]:g}-{LIFTS[-1]:g} and router accuracy "
        f"{ROUTER_ACCURACIES[0]:g}-{ROUTER_ACCURACIES[-1]:g} it ranges from {min(c.mean for c in qs):.1%} to "
        f"{max(c.mean for c in qs):.1%} (interval bounds {min(c.lo for c in qs):.1%}-{max(c.hi for c in qs):.1%}). "
        "The quality model makes this a function of the assumed lift: an advised answer's capability is "
        "c_exec + lift (c_advisor - c_exec), and a request is answered when capability >= difficulty.",
        f"- **Cost.** {cost.fmt('.2f', suffix='x')} frontier-only with whole instances ({adv_gpus} GPUs against "
        f"{front_gpus}), {frac.fmt('.2f', suffix='x')} with a fractional fleet; across the assumption grid the "
        f"cost ratio stays within {min(c.mean for c in costs):.3f}-{max(c.mean for c in costs):.3f}: it is set by "
        "the fleet, not by the policy's parameters.",
        f"- **The 80% router** drops quality to {_quality_ratio(at_whole(a['advisor_router80']), f).fmt('.1f', 100, '%')} "
        "of frontier: a hard request misjudged as easy goes to the executor alone.",
        f"- **The cascade**, sized like the others ({_fleet('cascade', a['cascade'])}), reaches "
        f"{_quality_ratio(at_whole(a['cascade']), f).fmt('.1f', 100, '%')} of frontier quality at "
        f"{_ratio([r['cost_usd'] for r in at_whole(a['cascade'])], [r['cost_usd'] for r in f])} its cost, with "
        f"{pct(ci95([r['slo_attainment'] for r in at_whole(a['cascade'])]).mean)} SLO attainment: an escalated "
        "request's TTFT spans its failed passes" + (" and the verifier's pass between them, queued on the 70B pool "
                                                    "with that tier's requests." if a.get("judges") == "pooled"
                                                    else "."),
        "",
    ]


def headline(a: dict) -> list[str]:
    f = at_whole(a["frontier_only"])
    runs = at_whole(a["advisor"])
    qs = [_quality_ratio(c["runs"], f) for c in a["assumptions"]]
    return [f"- **Advisor vs frontier-only** ({a['rate_rps']:g} req/s): quality "
            f"{range_text(qs, '.1f', 100, '%')} of frontier over advisor_lift {LIFTS[0]:g}-{LIFTS[-1]:g} and router "
            f"accuracy {ROUTER_ACCURACIES[0]:g}-{ROUTER_ACCURACIES[-1]:g}; cost "
            f"{_ratio([r['cost_usd'] for r in runs], [r['cost_usd'] for r in f])} with whole instances, "
            f"{_ratio(fractional(a['advisor'], 'cost_usd'), fractional(a['frontier_only'], 'cost_usd'))} fractional."]


SECTION = Section("advisor", "Advisor vs frontier-only", run_section, render, headline)
