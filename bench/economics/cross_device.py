"""Section 4: prefill on H100s and decode on H200s vs H100-only fleets of about the same price, as goodput
over TPOT SLOs with the colocated baseline's chunked-prefill budget tuned as in section 3.

Same TTFT SLO, rates, seeds and goodput definition as section 3 (bench/economics/disagg.py).
"""
from __future__ import annotations

from dataclasses import replace

from bench.economics import common
from bench.economics.common import Section, cluster_file, h100_cluster, poisson
from bench.economics.fleet import SIZING_SEED
from bench.economics.disagg import RATES, TARGET, TIGHT, TPOT_SLOS_S, TTFT_SLO_S
from bench.economics.slo_grid import best_of, goodput_text, run_curves
from bench.economics.stats import range_text
from bench.economics.stats import paired_ratio as _ratio

BUDGETS = (512, 1024, 2048, 4096)
COLOCATED = [f"h100-colocated-15-chunked-{b}" for b in BUDGETS]
SPLIT_H100 = "h100-disagg-9p6d"
SPLIT_H200 = "h100p-h200d-9p5d"


def configs():
    both = ("h100", "h100-sxm", "both", 15)
    return [(label, h100_cluster(f"colocated-15-chunked-{b}", TIGHT, both, chunked_prefill=True, token_budget=b),
             "least-loaded") for label, b in zip(COLOCATED, BUDGETS)] + [
        (SPLIT_H100, h100_cluster("disagg-9p6d", TIGHT, ("h100-prefill", "h100-sxm", "prefill", 9),
                                  ("h100-decode", "h100-sxm", "decode", 6)), "slo-aware"),
        (SPLIT_H200, replace(cluster_file("cross-device"), slo=TIGHT), "slo-aware")]


def _held_out(sw: dict) -> str:
    return f" on the held-out seed {sw['sizing_seed']}" if "sizing_seed" in sw else ""


def _colocated(sw: dict) -> list[str]:
    return [label for label in COLOCATED if label in sw["runs"]]


def run(trace, n: int) -> dict:
    out = run_curves(lambda rate, seed: poisson(trace, n, rate, seed), configs(), RATES, common.SEEDS,
                     TPOT_SLOS_S, TARGET, SIZING_SEED)
    out["ttft_slo_s"] = TTFT_SLO_S
    return out


def render(sw: dict) -> list[str]:
    price = sw["price_usd_per_hour"]
    g = sw["goodput_rps"]
    colocated = best_of(sw, _colocated(sw))
    lines = ["Prefill on H100s (compute per dollar), decode on H200s (more bandwidth per dollar), against H100-only "
             f"fleets at about the same price: 15 colocated H100s with chunked prefill (${price[_colocated(sw)[0]]:.2f}/h, "
             f"budget tuned over {', '.join(x.rsplit('-', 1)[1] for x in _colocated(sw))} at each SLO{_held_out(sw)}), 9 + 6 split H100s "
             f"(${price[SPLIT_H100]:.2f}/h), 9 H100 + 5 H200 (${price[SPLIT_H200]:.2f}/h). Same TTFT SLO, rates, "
             "seeds and goodput definition as section 3.", "",
             "| TPOT SLO | colocated req/s (budget) | H100 split req/s | H100 + H200 split req/s "
             "| H100+H200 / colocated | H100+H200 / H100 split |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, slo in enumerate(sw["tpot_slos_s"]):
        label, col = colocated[k]
        lines.append(f"| {slo * 1e3:g} ms | {goodput_text(sw, col)} ({label.rsplit('-', 1)[1]}) | "
                     f"{goodput_text(sw, g[SPLIT_H100][k])} | {goodput_text(sw, g[SPLIT_H200][k])} | "
                     f"{_ratio(g[SPLIT_H200][k], col).fmt('.2f', suffix='x')} | "
                     f"{_ratio(g[SPLIT_H200][k], g[SPLIT_H100][k]).fmt('.2f', suffix='x')} |")
    ks = range(len(sw["tpot_slos_s"]))
    vs_split = [_ratio(g[SPLIT_H200][k], g[SPLIT_H100][k]) for k in ks]
    vs_col = [_ratio(g[SPLIT_H200][k], colocated[k][1]) for k in ks]
    ahead = [f"{sw['tpot_slos_s'][k] * 1e3:g}" for k in ks if vs_col[k].lo > 1]
    lines += ["", "### What the numbers say", "",
              f"- Against tuned chunked-prefill colocation the H100 + H200 split's goodput ratio runs from "
              f"{min(r.mean for r in vs_col):.2f}x to {max(r.mean for r in vs_col):.2f}x (interval bounds "
              f"{min(r.lo for r in vs_col):.2f}-{max(r.hi for r in vs_col):.2f}x); it is ahead beyond the seeds' "
              f"spread {'at TPOT SLO ' + ', '.join(ahead) + ' ms only' if ahead else 'at no TPOT SLO of the grid'}.",
              f"- The H100 + H200 fleet costs {price[SPLIT_H200] / price[SPLIT_H100] - 1:+.1%} against the all-H100 "
              f"split (five H200s for six H100s), and its goodput ratio to that fleet runs from "
              f"{min(r.mean for r in vs_split):.2f}x to {max(r.mean for r in vs_split):.2f}x over the TPOT SLOs "
              f"(interval bounds {min(r.lo for r in vs_split):.2f}-{max(r.hi for r in vs_split):.2f}x). Both split "
              "fleets have the same nine H100 prefill instances, so where prefill (TTFT) is what breaks first the "
              "decode side's bandwidth shows as one instance fewer, not as more goodput.", ""]
    return lines


def headline(sw: dict) -> list[str]:
    g = sw["goodput_rps"]
    colocated = best_of(sw, _colocated(sw))
    ks = range(len(sw["tpot_slos_s"]))
    return [f"- **H100 prefill + H200 decode** at about equal price: goodput "
            f"{range_text([_ratio(g[SPLIT_H200][k], colocated[k][1]) for k in ks], suffix='x')} of tuned chunked "
            f"colocation and {range_text([_ratio(g[SPLIT_H200][k], g[SPLIT_H100][k]) for k in ks], suffix='x')} of "
            "the all-H100 split, over the same TPOT SLOs."]


SECTION = Section("cross_device", "Cross-device disaggregation vs GPU-only", run, render, headline)
