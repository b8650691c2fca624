"""Section 3: disaggregated vs colocated at equal dollars (16 H100s, Llama-3.1-8B), as goodput curves over
TPOT SLOs and arrival rates, every family tuned the same way.

Families: colocated prefill-first (a prompt stalls every decode on its instance), colocated chunked
prefill (token budget tuned over BUDGETS), disaggregated (prefill:decode split tuned over SPLITS),
and conditional disaggregation (a mixed fleet, layout tuned over MIXED; its rule reads the TPOT SLO,
so it runs once per SLO). At each TPOT SLO each family is represented by its variant with the
highest goodput on the held-out sizing seed, reported on the evaluation seeds. Goodput is
DistServe's (slo_grid.py); the TTFT SLO is fixed at 0.25 s.
"""
from __future__ import annotations

from pathlib import Path

from scheduler.config import SloConfig, parse_cluster

from bench.economics import common
from bench.economics.common import Section, h100_cluster, pct, poisson
from bench.economics.fleet import SIZING_SEED
from bench.economics.slo_grid import best_of, goodput_text, run_curves
from bench.economics.stats import ci95, range_text
from bench.economics.stats import paired_ratio as _ratio

TTFT_SLO_S = 0.25
TPOT_SLOS_S = (0.015, 0.02, 0.025, 0.035, 0.05, 0.1)
TIGHT = SloConfig(ttft_s=TTFT_SLO_S, tpot_s=0.025)  # the cluster SLO (placement does not read the TPOT one)
RATES = [100.0 + 25.0 * i for i in range(17)]  # 100-500 req/s
BUDGETS = (512, 1024, 2048, 4096, 8192)
SPLITS = (8, 9, 10, 11, 12)  # prefill instances of 16
MIXED = ((8, 5, 3), (4, 7, 5))  # conditional-disagg: colocated (chunked, MIXED_BUDGET), prefill, decode instances
MIXED_BUDGET = 1024
TARGET = 0.9
GPUS = 16


def mixed_cluster(name: str, slo: SloConfig, colocated: int, prefill: int, decode: int):
    """16 H100s for conditional-disagg: colocated instances with chunked prefill beside a prefill:decode split."""
    def pool(n, role, k, **keys):
        return {"name": n, "device": "h100-sxm", "role": role, "instances": k, "chips_per_instance": 1,
                "model": "llama-3.1-8b", "link_gbps": 400, **keys}
    return parse_cluster({"name": name, "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "pools": [
        pool("h100", "both", colocated, chunked_prefill=True, token_budget=MIXED_BUDGET),
        pool("h100-prefill", "prefill", prefill), pool("h100-decode", "decode", decode)]})


def configs() -> list[tuple]:
    both = ("h100", "h100-sxm", "both", GPUS)
    out = [("colocated-prefill-first", h100_cluster("colocated-16", TIGHT, both), "least-loaded")]
    out += [(f"colocated-chunked-{b}", h100_cluster(f"chunked-{b}", TIGHT, both, chunked_prefill=True,
                                                    token_budget=b), "least-loaded") for b in BUDGETS]
    out += [(f"disagg-{p}p{GPUS - p}d", h100_cluster(f"disagg-{p}p{GPUS - p}d", TIGHT,
                                                    ("h100-prefill", "h100-sxm", "prefill", p),
                                                    ("h100-decode", "h100-sxm", "decode", GPUS - p)), "slo-aware")
            for p in SPLITS]
    for k, tpot in enumerate(TPOT_SLOS_S):
        slo = SloConfig(ttft_s=TTFT_SLO_S, tpot_s=tpot)
        for c, p, d in MIXED:
            label = f"conditional-{c}c{p}p{d}d@{tpot * 1e3:g}ms"
            out.append((label, mixed_cluster(label, slo, c, p, d), "conditional-disagg", k))
    return out


FAMILIES = {
    "prefill-first": ["colocated-prefill-first"],
    "chunked": [f"colocated-chunked-{b}" for b in BUDGETS],
    "disaggregated": [f"disagg-{p}p{GPUS - p}d" for p in SPLITS],
    "conditional": [f"conditional-{c}c{p}p{d}d@{t * 1e3:g}ms" for t in TPOT_SLOS_S for c, p, d in MIXED],
}


def run(trace, n: int) -> dict:
    out = run_curves(lambda rate, seed: poisson(trace, n, rate, seed), configs(), RATES, common.SEEDS,
                     TPOT_SLOS_S, TARGET, SIZING_SEED)
    out["ttft_slo_s"] = TTFT_SLO_S
    if common.OUT_DIR:
        plot(out, common.OUT_DIR[0] / "economics_disagg.png")
    return out


def _family(sw: dict, family: str) -> list[str]:
    """The family's variants that the saved results hold (the doc follows the results, not the constants)."""
    return [label for label in FAMILIES[family] if label in sw["runs"]]


def _tuned(sw: dict) -> dict:
    return {family: best_of(sw, _family(sw, family)) for family in FAMILIES}


def render(sw: dict) -> list[str]:
    slos = sw["tpot_slos_s"]
    tuned = _tuned(sw)
    lines = [f"{GPUS} H100s serving Llama-3.1-8B, TTFT <= {sw['ttft_slo_s']:g} s; goodput = the arrival rate at "
             f"which {pct(sw['target_attainment'], 0)} of requests meet both SLOs (DistServe's definition), "
             "interpolated between the grid's rates "
             f"({sw['rates_rps'][0]:g}-{sw['rates_rps'][-1]:g} req/s, step {sw['rates_rps'][1] - sw['rates_rps'][0]:g}). "
             f"Each family is tuned the same way, at every SLO: chunked prefill over token budgets "
             f"{', '.join(x.rsplit('-', 1)[1] for x in _family(sw, 'chunked'))}; disaggregation over prefill:decode "
             f"splits {', '.join(x.split('-')[1].replace('p', ':').rstrip('d') for x in _family(sw, 'disaggregated'))}; "
             "conditional disaggregation (`conditional-disagg`: a prompt goes to the prefill:decode split when its "
             "predicted prefill on a colocated instance exceeds the TPOT SLO or the colocated prefill queue is "
             "backed up) over mixed fleets of colocated (chunked prefill, "
             f"{MIXED_BUDGET}-token budget) : prefill : decode instances "
             f"{', '.join(_layout(x) for x in _family(sw, 'conditional') if x.endswith(_at_slo(sw, 0)))}, "
             "run once per TPOT SLO since its rule reads that SLO. "
             + (f"Each family's variant at each SLO is the one with the highest goodput on the held-out seed "
                f"{sw['sizing_seed']}, and its goodput is reported on seeds {', '.join(map(str, sw['seeds']))}: "
                if 'sizing_seed' in sw else f"Mean over seeds {', '.join(map(str, sw['seeds']))}: ")
             + "mean with the 95% interval in brackets; ratios are per seed (the same requests), then averaged.", "",
             "| TPOT SLO | prefill-first req/s | chunked req/s (budget) | disaggregated req/s (P:D) "
             "| conditional req/s (C:P:D) | disagg / chunked | disagg / prefill-first | conditional / chunked |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, slo in enumerate(slos):
        (_, pf), (cl, ch), (dl, dg), (xl, cd) = (tuned[f][k] for f in ("prefill-first", "chunked", "disaggregated",
                                                                      "conditional"))
        lines.append(f"| {slo * 1e3:g} ms | {goodput_text(sw, pf)} | {goodput_text(sw, ch)} ({cl.rsplit('-', 1)[1]}) "
                     f"| {goodput_text(sw, dg)} ({dl.split('-')[1].replace('p', ':').rstrip('d')}) "
                     f"| {goodput_text(sw, cd)} ({_layout(xl)}) "
                     f"| {_ratio(dg, ch).fmt('.2f', suffix='x')} | {_ratio(dg, pf).fmt('.2f', suffix='x')} "
                     f"| {_ratio(cd, ch).fmt('.2f', suffix='x')} |")
    lines += [""] + _rate_table(sw, tuned) + _notes(sw, tuned) + ["Plot: `bench/results/economics_disagg.png` (goodput against TPOT SLO; "
                                         "attainment against rate at each family's tuned variant).", ""]
    return lines


def _layout(label: str) -> str:
    """'8:5:3' from 'conditional-8c5p3d@25ms'."""
    core = label.split("-", 1)[1].split("@")[0]
    return core.replace("c", ":").replace("p", ":").rstrip("d")


def _at_slo(sw: dict, k: int) -> str:
    return f"@{sw['tpot_slos_s'][k] * 1e3:g}ms"


def _attainment_at(runs_by_seed: dict, k: int) -> dict[float, float]:
    """Mean attainment (TPOT SLO index k) per rate, over the rates every seed ran."""
    seeds = list(runs_by_seed.values())
    rates = set.intersection(*({r["rate_rps"] for r in runs} for runs in seeds))
    return {x: ci95([next(r["attainment_by_tpot"][k] for r in runs if r["rate_rps"] == x) for runs in seeds]).mean
            for x in sorted(rates)}


def _rate_table(sw: dict, tuned: dict, k: int = 2) -> list[str]:
    """SLO attainment against arrival rate at one TPOT SLO, for each family's variant tuned there."""
    picks = [(family, tuned[family][k][0]) for family in FAMILIES]
    curves = {label: _attainment_at(sw["runs"][label], k) for _, label in picks}
    rates = sorted({x for c in curves.values() for x in c})
    lines = [f"SLO attainment against arrival rate at TPOT <= {sw['tpot_slos_s'][k] * 1e3:g} ms (mean over the seeds; "
             "a rate is shown while every seed ran it):", "",
             "| variant | " + " | ".join(f"{x:g}" for x in rates) + " |",
             "| --- | " + " | ".join("---:" for _ in rates) + " |"]
    for _, label in picks:
        lines.append(f"| {label} | " + " | ".join(pct(curves[label][x], 0) if x in curves[label] else ""
                                                  for x in rates) + " |")
    return lines + [""]


def _ratios(sw: dict, tuned: dict) -> tuple[list, list]:
    """Disaggregated / tuned chunked and / prefill-first goodput, per TPOT SLO."""
    ks = range(len(sw["tpot_slos_s"]))
    return ([_ratio(tuned["disaggregated"][k][1], tuned["chunked"][k][1]) for k in ks],
            [_ratio(tuned["disaggregated"][k][1], tuned["prefill-first"][k][1]) for k in ks])


def headline(sw: dict) -> list[str]:
    vs_chunked, vs_pf = _ratios(sw, _tuned(sw))
    slos = f"TPOT SLOs {sw['tpot_slos_s'][0] * 1e3:g}-{sw['tpot_slos_s'][-1] * 1e3:g} ms"
    return [f"- **Disaggregation's goodput at equal dollars** (16 H100s, 8B, TTFT <= {sw['ttft_slo_s']:g} s, {slos}): "
            f"{range_text(vs_chunked, suffix='x')} against colocated chunked prefill with its budget tuned; "
            f"{range_text(vs_pf, suffix='x')} against prefill-first colocation, the baseline of the earlier headline"
            + (f"; conditional disaggregation {range_text(_conditional(sw), suffix='x')} of tuned chunked prefill."
               if _family(sw, "conditional") else ".")]


def _conditional(sw: dict) -> list:
    tuned = _tuned(sw)
    return [_ratio(tuned["conditional"][k][1], tuned["chunked"][k][1]) for k in range(len(sw["tpot_slos_s"]))]


def _notes(sw: dict, tuned: dict) -> list[str]:
    slos = sw["tpot_slos_s"]
    vs_chunked, vs_pf = _ratios(sw, tuned)
    tightest = max(range(len(slos)), key=lambda k: vs_pf[k].mean) == 0
    wins = [f"{s * 1e3:g}" for s, r in zip(slos, vs_chunked) if r.lo > 1]
    loses = [f"{s * 1e3:g}" for s, r in zip(slos, vs_chunked) if r.hi < 1]
    lines = ["### What the numbers say", "",
             f"- **Against the prefill-first baseline** disaggregation's goodput ratio runs from "
             f"{min(r.mean for r in vs_pf):.2f}x to {max(r.mean for r in vs_pf):.2f}x over TPOT SLOs "
             f"{slos[0] * 1e3:g}-{slos[-1] * 1e3:g} ms (interval bounds {min(r.lo for r in vs_pf):.2f}-"
             f"{max(r.hi for r in vs_pf):.2f}x)"
             + (": largest at the tightest SLO, where a long prefill in the decode batch's iteration breaks TPOT."
                if tightest else "."),
             f"- **Against chunked prefill with its budget tuned** the ratio runs from "
             f"{min(r.mean for r in vs_chunked):.2f}x to {max(r.mean for r in vs_chunked):.2f}x (interval bounds "
             f"{min(r.lo for r in vs_chunked):.2f}-{max(r.hi for r in vs_chunked):.2f}x). "
             + (f"Disaggregation is ahead beyond the seeds' spread at TPOT SLO {', '.join(wins)} ms. " if wins else
                "At no TPOT SLO of the grid is disaggregation ahead beyond the seeds' spread. ")
             + (f"It is behind beyond the spread at {', '.join(loses)} ms. " if loses else "")
             + ("Against a tuned chunked-prefill baseline, then, the equal-dollar goodput gain of disaggregation "
                "is within the seeds' spread." if not wins and not loses else
                "The gain against prefill-first shrinks against a tuned chunked-prefill baseline."),
             ]
    if _family(sw, "conditional"):
        ks = range(len(slos))
        cond = [_ratio(tuned["conditional"][k][1], tuned["chunked"][k][1]) for k in ks]
        vs_split = [_ratio(tuned["conditional"][k][1], tuned["disaggregated"][k][1]) for k in ks]
        lines.append(f"- **Conditional disaggregation**, run at each TPOT SLO with its rule reading that SLO, reaches "
                     f"{range_text(cond, suffix='x')} of tuned chunked prefill's goodput and "
                     f"{range_text(vs_split, suffix='x')} of the tuned full split's.")
    lines += _itl_note(sw) + [""]
    return lines


def _itl_note(sw: dict) -> list[str]:
    """Chunked vs prefill-first inter-token latency at the highest rate every seed of both ran."""
    pf = sw["runs"]["colocated-prefill-first"]
    best = _tuned(sw)["chunked"][2][0]  # the budget chosen at the third SLO of the grid
    ch = sw["runs"][best]
    common_rates = set.intersection(*({r["rate_rps"] for r in runs} for runs in (*pf.values(), *ch.values())))
    if not common_rates:
        return []
    rate = max(common_rates)

    def itl(runs):
        return ci95([next(r["itl_p99_s"] for r in seed_runs if r["rate_rps"] == rate) for seed_runs in runs.values()])
    a, b = itl(pf), itl(ch)
    return [f"- At {rate:g} req/s, inter-token latency p99 is {b.fmt('.1f', 1e3, ' ms')} with chunked prefill "
            f"({best.rsplit('-', 1)[1]}-token budget) against {a.fmt('.1f', 1e3, ' ms')} prefill-first: a "
            "prompt is spread over iterations instead of pausing the batch for its whole prefill."]


def plot(sw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = _tuned(sw)
    slos_ms = [s * 1e3 for s in sw["tpot_slos_s"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for family, picks in tuned.items():
        cis = [ci95(g) for _, g in picks]
        left.errorbar(slos_ms, [c.mean for c in cis], yerr=[[c.mean - c.lo for c in cis], [c.hi - c.mean for c in cis]],
                      marker="o", capsize=3, label=family)
        label = picks[2][0]  # the variant tuned at the third SLO of the grid
        runs = list(sw["runs"][label].values())
        rates = sorted(set.intersection(*({r["rate_rps"] for r in seed_runs} for seed_runs in runs)))
        att = [ci95([next(r["attainment_by_tpot"][2] for r in seed_runs if r["rate_rps"] == x) for seed_runs in runs]).mean
               for x in rates]
        right.plot(rates, att, marker=".", label=label)
    left.set(xscale="log", xlabel="TPOT SLO (ms)", ylabel=f"goodput (req/s, {pct(sw['target_attainment'], 0)} attainment)",
             title=f"{GPUS} H100s, TTFT <= {sw['ttft_slo_s']:g} s")
    left.set_xticks(slos_ms, [f"{s:g}" for s in slos_ms])
    left.minorticks_off()
    right.axhline(sw["target_attainment"], color="grey", lw=0.8, ls="--")
    right.set(xlabel="arrival rate (req/s)", ylabel="SLO attainment", title=f"TPOT <= {slos_ms[2]:g} ms")
    left.legend()
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECTION = Section("disagg", "Disaggregated vs colocated at equal dollars: goodput over TPOT SLOs", run, render,
                  headline)
