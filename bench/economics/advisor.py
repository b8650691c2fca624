"""Section 2: an 8B executor advised by 405B on hard requests vs frontier-only (405B), and the cascade.

Frontier, executor and advisor pools sized with the sizing rule (common.smallest);
the advisor fleet takes the cheaper of one or two advisor instances.
"""
from __future__ import annotations

from dataclasses import replace

from scheduler.cluster import Cluster
from scheduler.config import SloConfig, parse_cluster
from simulator.jobs import build_workload

from bench.economics.common import Section, cluster_file, kwh, pct, poisson, run, smallest, verdict

ADVISOR_SLO = SloConfig(ttft_s=5.0, tpot_s=0.1)


def _advisor_cluster(executors: int, advisors: int):
    return replace(cluster_file("advisor", ADVISOR_SLO, **{"executor-8b": executors, "advisor-405b": advisors}))


def run_section(trace, n: int) -> dict:
    rate = 5.0
    wl = poisson(trace, n, rate)
    res = {"rate_rps": rate, "workload": build_workload(wl)[1].description, "sized": {}}
    k = smallest(lambda c: cluster_file("frontier", ADVISOR_SLO, **{"frontier-405b": c}), list(range(1, 7)),
                 "least-loaded", trace, rate)
    res["sized"]["frontier_only"] = k
    res["frontier_only"] = run(cluster_file("frontier", ADVISOR_SLO, **{"frontier-405b": k}), "least-loaded", wl)
    for label, params in (("advisor", {"router_accuracy": 1.0}), ("advisor_router80", {"router_accuracy": 0.8})):
        best = None
        for advisors in (1, 2):
            e = smallest(lambda c: _advisor_cluster(c, advisors), list(range(1, 9)), "advisor", trace, rate, params)
            cfg = _advisor_cluster(e, advisors)
            price = sum(p.perf.price_usd_per_s for p in Cluster(cfg).pools for _ in range(p.config.instances))
            if best is None or price < best[0]:
                best = (price, e, advisors)
        _, e, advisors = best
        res["sized"][label] = {"executor-8b": e, "advisor-405b": advisors}
        res[label] = run(_advisor_cluster(e, advisors), "advisor", wl, params)
    e = smallest(lambda c: _advisor_cluster(c, 0) if False else parse_cluster(
        {"name": "executor-only", "slo": {"ttft_s": ADVISOR_SLO.ttft_s, "tpot_s": ADVISOR_SLO.tpot_s},
         "pools": [{"name": "executor-8b", "device": "h100-sxm", "instances": c, "chips_per_instance": 1,
                    "model": "llama-3.1-8b", "role": "both"}]}), list(range(1, 9)), "least-loaded", trace, rate)
    res["sized"]["executor_only"] = e
    res["executor_only"] = run(parse_cluster(
        {"name": "executor-only", "slo": {"ttft_s": ADVISOR_SLO.ttft_s, "tpot_s": ADVISOR_SLO.tpot_s},
         "pools": [{"name": "executor-8b", "device": "h100-sxm", "instances": e, "chips_per_instance": 1,
                    "model": "llama-3.1-8b", "role": "both"}]}), "least-loaded", wl)
    res["cascade_tiers"] = run(cluster_file("tiers", ADVISOR_SLO), "cascade", wl)
    return res


def _table(a: dict) -> list[str]:
    f = a["frontier_only"]
    lines = [
        f"{a['rate_rps']:g} req/s, SLO TTFT <= 5 s, TPOT <= 100 ms; every fleet the smallest meeting 99% "
        "attainment on the first 20,000 requests.",
        "",
        "| configuration | instances | quality | of frontier quality | SLO | advised | cost $ | cost ratio | served $ "
        "| served ratio | energy kWh |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    sized = a["sized"]
    rows = [("frontier-only (405B fp8, 8 x H100)", "frontier_only", f"{sized['frontier_only']} x 405B"),
            ("advisor, oracle router", "advisor",
             f"{sized['advisor']['executor-8b']} x 8B + {sized['advisor']['advisor-405b']} x 405B"),
            ("advisor, 80% router", "advisor_router80",
             f"{sized['advisor_router80']['executor-8b']} x 8B + {sized['advisor_router80']['advisor-405b']} x 405B"),
            ("executor-only (8B)", "executor_only", f"{sized['executor_only']} x 8B"),
            ("cascade 8B -> 70B -> 405B, 90% verifier", "cascade_tiers", "4 x 8B + 2 x 70B + 1 x 405B")]
    for name, key, inst in rows:
        x = a[key]
        lines.append(
            f"| {name} | {inst} | {pct(x['quality'], 2)} | {pct(x['quality'] / f['quality'])} | "
            f"{pct(x['slo_attainment'])} | {x['advised_requests']:,} | {x['cost_usd']:,.2f} | "
            f"{x['cost_usd'] / f['cost_usd']:.2f} | {x['served_cost_usd']:,.2f} | "
            f"{x['served_cost_usd'] / f['served_cost_usd']:.2f} | {kwh(x['energy_j']):.2f} |")
    x = a["advisor"]
    q, c = x["quality"] / f["quality"], x["cost_usd"] / f["cost_usd"]
    lines += ["", f"Advisor vs frontier-only: {pct(q)} of frontier quality at {c:.2f}x its cost (target >= 95% at "
                  f"<= 0.5x: {verdict(q >= 0.95 and c <= 0.5)}).", ""]
    return lines


def _advisor_notes(a: dict) -> list[str]:
    f, x = a["frontier_only"], a["advisor"]
    util_note = ""
    if "pool_tokens" in x:
        util_note = (f" The advisor pool processed {x['pool_tokens'].get('advisor-405b', 0):,} tokens against "
                     f"{f['pool_tokens'].get('frontier-405b', 0):,} for frontier-only.")
    q = x["quality"] / f["quality"]
    c = x["cost_usd"] / f["cost_usd"]
    sc = x["served_cost_usd"] / f["served_cost_usd"]
    lines = [
        "### What the numbers say", "",
        f"- Quality: the advisor reaches {pct(q)} of frontier-only quality (target 95%: {verdict(q >= 0.95)}); "
        f"{x['advised_requests']:,} of {x['requests']:,} requests were advised. The executor alone reaches "
        f"{pct(a['executor_only']['quality'] / f['quality'])}.",
        f"- Cost: {c:.2f}x frontier-only (target <= 0.5x: {verdict(c <= 0.5)}). The fleets are sized in whole "
        f"instances: frontier-only needs {a['sized']['frontier_only']} x 8 H100s; the advisor fleet "
        f"{a['sized']['advisor']['executor-8b']} x 1 H100 + {a['sized']['advisor']['advisor-405b']} x 8 H100s, and "
        "the advisor instance, an indivisible 8-GPU unit, is busy only for the advised requests' prefill and plan. "
        f"Counting busy time only (a fleet scaled exactly to load) the ratio is {sc:.2f}x.{util_note}",
        f"- An 80%-accurate router drops quality to {pct(a['advisor_router80']['quality'] / f['quality'])} of "
        "frontier: a hard request it misjudges as easy goes to the executor alone, and advice spent on an easy "
        "one buys nothing.",
        f"- The cascade (8B -> 70B -> 405B with a 90% verifier) reaches "
        f"{pct(a['cascade_tiers']['quality'] / f['quality'])} of frontier quality with "
        f"{a['cascade_tiers']['escalations']:,} escalations, at {a['cascade_tiers']['cost_usd'] / f['cost_usd']:.2f}x "
        f"the cost on its fixed 3-tier fleet, and {pct(a['cascade_tiers']['slo_attainment'])} SLO attainment: "
        "an escalated request's TTFT spans its failed passes.",
        "",
    ]
    return lines



def render(a: dict) -> list[str]:
    return _table(a) + _advisor_notes(a)


SECTION = Section("advisor", "Advisor vs frontier-only", run_section, render)
