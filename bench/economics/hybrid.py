"""Section 1: owned laptops serving Llama-3.1-8B locally first, a cloud pool behind them, vs cloud-only.

Every configuration's cloud pool is sized the same way on a held-out slice (fleet.py) and judged on
the evaluation seeds; energy and dollars are shown for whole instances (the sizing rule) and for a
fractional, load-proportional fleet, beside busy-time energy. The 405B setting is repeated over
arrival rates, since whole 8-GPU instances make its result move with the rate.
"""
from __future__ import annotations

import statistics

from scheduler.cluster import Cluster
from scheduler.config import SloConfig, parse_cluster
from simulator.jobs import build_workload

from bench.economics import common
from bench.economics.common import Section, busy, pct, poisson
from bench.economics.fleet import SIZING_SEED, at_whole, fractional, tuned_family
from bench.economics.stats import ci95, range_text, span
from bench.economics.stats import paired_change as change


def edge_cloud(name: str, slo: SloConfig, laptops: int, cloud_model: str, cloud_chips: int, cloud: int,
               token_budget: int = 8192, judges: tuple = ()):
    """Owned laptops (Llama-3.1-8B int4) plus a cloud pool of H100 instances serving `cloud_model` in fp8
    with chunked prefill (`token_budget` tokens per iteration, tuned per configuration: CLOUD_BUDGETS), and
    the judge pools (`judges`, judge_pools) that run the router's and verifier's passes."""
    pools = list(judges)
    if laptops:
        pools.append({"name": "laptops", "device": "m4-max", "instances": laptops, "model": "llama-3.1-8b",
                      "quantization": "int4", "role": "both", "max_batch": 4, "max_batch_tokens": 4096})
    pools.append({"name": "cloud", "device": "h100-sxm", "instances": cloud, "chips_per_instance": cloud_chips,
                  "model": cloud_model, "quantization": "fp8", "role": "both", "chunked_prefill": True,
                  "token_budget": token_budget})
    return parse_cluster({"name": name, "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "pools": pools})


HYBRID_SETTINGS = {
    # cloud model, chips per instance, rate, laptops, SLO
    "cloud_70b": ("llama-3.1-70b", 2, 20.0, 48, SloConfig(ttft_s=2.0, tpot_s=0.1)),
    # The same with a 10 s TTFT budget: a laptop's prefill is slow, so a 2 s SLO keeps most
    # prompts off the laptops; at 10 s latency no longer binds and the router decides.
    "cloud_70b_loose_ttft": ("llama-3.1-70b", 2, 20.0, 48, SloConfig(ttft_s=10.0, tpot_s=0.1)),
    "cloud_405b": ("llama-3.1-405b", 8, 5.0, 16, SloConfig(ttft_s=5.0, tpot_s=0.1)),
}
# Settings repeated over arrival rates (whole instances make a result move with the rate).
RATE_SWEEPS = {"cloud_405b": (3.0, 4.0, 5.0, 6.0, 7.0), "cloud_70b": (10.0, 20.0, 40.0)}
# The cloud pool's chunked-prefill token budget, tuned for every configuration on the sizing slice.
CLOUD_BUDGETS = (2048, 4096, 8192)
ORACLE = {"router_accuracy": 1.0, "detect_accuracy": 1.0}
ROUTER80 = {"router_accuracy": 0.8, "detect_accuracy": 1.0}
ROUTER80_VERIFIER90 = {"router_accuracy": 0.8, "detect_accuracy": 0.9}
FAMILIES = {  # label: (policy, params, with laptops)
    "cloud_only": ("least-loaded", None, False),
    "oracle": ("local-first", ORACLE, True),
    "router80": ("local-first", ROUTER80, True),
    "router80_verifier90": ("local-first", ROUTER80_VERIFIER90, True),
}
NAMES = {"cloud_only": "cloud-only", "oracle": "local-first, oracle router",
         "router80": "local-first, 80% router, perfect verifier",
         "router80_verifier90": "local-first, 80% router, 90% verifier"}
COUNTS = list(range(1, 13))


# Where local-first's judgements run (scheduler/plugins/overhead.py defaults): the 8B router on H100s,
# the 70B verifier (fp8) on H100s. A pool serving that model there already (the 70B cloud) runs them;
# otherwise a judge pool (`serving: judge`) is added, sized by its prefill work (JUDGE_UTILIZATION).
ROUTER_POOL = {"name": "judge-router", "device": "h100-sxm", "chips_per_instance": 1, "model": "llama-3.1-8b",
               "role": "both", "serving": "judge"}
VERIFIER_POOL = {"name": "judge-verifier", "device": "h100-sxm", "chips_per_instance": 2, "model": "llama-3.1-70b",
                 "quantization": "fp8", "role": "both", "serving": "judge"}
JUDGE_UTILIZATION = 0.8


def judge_pools(trace, rate: float, cloud_model: str) -> tuple[dict, ...]:
    """The judge pools a local-first fleet adds: each sized to the fewest instances whose prefill of the
    passes it runs (every prompt for the router; prompt + answer of every request, an upper bound, for the
    verifier) keeps it within JUDGE_UTILIZATION busy at `rate`."""
    from math import ceil

    mean_in = float(trace.input_tokens.mean())
    mean_out = float(trace.output_tokens.mean())
    pools = []
    for pool, tokens in ((ROUTER_POOL, mean_in), (VERIFIER_POOL, mean_in + mean_out)):
        if pool is VERIFIER_POOL and cloud_model == pool["model"]:
            continue  # the cloud pool serves the verifier's model: its passes run there
        perf = Cluster(parse_cluster({"name": "probe", "pools": [dict(pool, instances=1, serving="pooled")]})).pools[0].perf
        n = int(round(tokens))
        busy_s = rate * perf.prefill(n, n * (n + 1) / 2, 1)[0]
        pools.append(dict(pool, instances=max(1, ceil(busy_s / JUDGE_UTILIZATION))))
    return tuple(pools)


def _families(trace, n: int, setting: str, rate: float, labels=tuple(FAMILIES), every_size=False) -> dict:
    model, chips, _, laptops, slo = HYBRID_SETTINGS[setting]
    judges = judge_pools(trace, rate, model)
    out = {}
    for label in labels:
        policy, params, edge = FAMILIES[label]
        out[label] = tuned_family(
            lambda budget, c, edge=edge: edge_cloud("edge-cloud" if edge else "cloud-only", slo,
                                                    laptops if edge else 0, model, chips, c, budget,
                                                    judges if edge else ()),
            list(CLOUD_BUDGETS), policy, params, lambda seed: poisson(trace, n, rate, seed), COUNTS, every_size)
    return out


def laptop_prefill_tok_s(prompt_tokens: int) -> float:
    """One laptop's modelled prefill speed for a prompt of this length, alone in its batch."""
    perf = Cluster(edge_cloud("probe", SloConfig(ttft_s=1.0, tpot_s=0.1), 1, "llama-3.1-8b", 1, 1)).pools[0].perf
    return prompt_tokens / perf.prefill(prompt_tokens, prompt_tokens * (prompt_tokens + 1) / 2, 1)[0]


def run(trace, n: int) -> dict:
    res = {}
    median_prompt = int(statistics.median(trace.input_tokens.tolist()))  # the trace rows the requests resample
    for setting, (model, chips, rate, laptops, slo) in HYBRID_SETTINGS.items():
        print(f" -- {setting}: {model} cloud at {rate:g} req/s, {laptops} laptops", flush=True)
        out = {"rate_rps": rate, "laptops": laptops, "cloud_model": model,
               "workload": build_workload(poisson(trace, n, rate))[1].description,
               "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
               # Every cloud size of the 405B setting, for the sizing-rule table.
               "families": _families(trace, n, setting, rate, every_size=setting == "cloud_405b")}
        # The same cloud as cloud-only, laptops added (nothing right-sized).
        k, budget = out["families"]["cloud_only"]["whole"], out["families"]["cloud_only"]["variant"]
        out["judge_pools"] = [{"name": p["name"], "model": p["model"], "instances": p["instances"],
                               "chips_per_instance": p["chips_per_instance"]} for p in judge_pools(trace, rate, model)]
        items = [(edge_cloud("edge-cloud", slo, laptops, model, chips, k, budget, judge_pools(trace, rate, model)),
                  "local-first",
                  poisson(trace, n, rate, seed), ORACLE) for seed in common.SEEDS]
        out["oracle_same_cloud"] = [common.digest(c, p, q, s) for (c, p, _, q), s in
                                    zip(items, common.summaries(items))]
        res[setting] = out
    res["rate_sweeps"] = {}
    for setting, rates in RATE_SWEEPS.items():
        sweep = res["rate_sweeps"][setting] = {"setting": setting, "rates_rps": list(rates), "families": {}}
        for rate in rates:
            print(f" -- {setting} at {rate:g} req/s", flush=True)
            fams = (res[setting]["families"] if rate == HYBRID_SETTINGS[setting][2]
                    else _families(trace, n, setting, rate, ("cloud_only", "oracle", "router80")))
            sweep["families"][f"{rate:g}"] = {k: v for k, v in fams.items() if k != "router80_verifier90"}
    res["median_prompt_tokens"] = median_prompt
    res["laptop_prefill_tok_s"] = laptop_prefill_tok_s(median_prompt)
    res["sizing_seed"] = SIZING_SEED
    return res


def _mean(runs: list[dict], key: str) -> float:
    return ci95([r[key] for r in runs]).mean


def _pctci(ci, digits=1) -> str:
    return ci.fmt(f"+.{digits}f", 100, "%")


def comparison(fams: dict, label: str) -> dict:
    """The headline changes of one family against cloud-only: energy and cost, whole and fractional."""
    base, mine = fams["cloud_only"], fams[label]
    bw, mw = at_whole(base), at_whole(mine)
    return {"energy_whole": change([r["energy_j"] for r in mw], [r["energy_j"] for r in bw]),
            "energy_fractional": change(fractional(mine, "energy_j"), fractional(base, "energy_j")),
            "energy_busy": change([busy(r, "energy_j") for r in mw], [busy(r, "energy_j") for r in bw]),
            "cost_whole": change([r["cost_usd"] for r in mw], [r["cost_usd"] for r in bw]),
            "cost_fractional": change(fractional(mine, "cost_usd"), fractional(base, "cost_usd"))}


def _setting_table(r: dict) -> list[str]:
    fams = r["families"]
    lines = [f"### Cloud serving {r['cloud_model']} ({r['rate_rps']:g} req/s, SLO TTFT <= {r['slo']['ttft_s']:g} s, "
             f"TPOT <= {r['slo']['tpot_s'] * 1e3:g} ms, {r['laptops']} laptops)", "",
             "| configuration | cloud instances: whole (fractional) | cloud token budget | local share | quality "
             "| SLO attainment | escalations | energy kWh | energy vs cloud-only: whole | fractional | busy-time "
             "| cost vs cloud-only: whole | fractional |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    if r.get("judge_pools") is not None:  # where the local-first fleets' judgements ran
        judges = [f"{p['instances']} x {p['chips_per_instance']} H100 running {p['model']} ({p['name']})"
                  for p in r["judge_pools"]]
        lines[2:2] = [f"Local-first fleets carry judge pools (`serving: judge`, sized for {JUDGE_UTILIZATION:.0%} "
                      "prefill utilization at this rate; their energy and dollars count): "
                      + ("; ".join(judges) if judges else "none")
                      + ("; the 70B verifier's passes run on the 70B cloud pool." if r["cloud_model"] == "llama-3.1-70b"
                         else "."), ""]
    base = at_whole(fams["cloud_only"])
    for label, fam in fams.items():
        c = comparison(fams, label) if label != "cloud_only" else None
        cells = [_pctci(c[k]) for k in ("energy_whole", "energy_fractional", "energy_busy", "cost_whole",
                                        "cost_fractional")] if c else ["-"] * 5
        lines.append(_row(NAMES[label], f"{fam['whole']} ({fam['fractional_k']:.2f}) | {_budget(fam)}", at_whole(fam),
                          cells))
    same = r["oracle_same_cloud"]
    cells = [_pctci(change([x["energy_j"] for x in same], [x["energy_j"] for x in base])),
             _pctci(change([busy(x, "energy_j") for x in same], [busy(x, "energy_j") for x in base])),
             _pctci(change([x["cost_usd"] for x in same], [x["cost_usd"] for x in base]))]
    lines.append(_row("local-first, oracle, cloud not resized",
                      f"{fams['cloud_only']['whole']} | {_budget(fams['cloud_only'])}", same,
                      [cells[0], "-", cells[1], cells[2], "-"]))
    return lines + [""]


def _row(name: str, instances: str, runs: list[dict], cells: list[str]) -> str:
    return (f"| {name} | {instances} | {pct(_mean([{'s': x['shares'].get('laptops', 0.0)} for x in runs], 's'))} | "
            f"{ci95([x['quality'] for x in runs]).fmt('.2f', 100, '%')} | "
            f"{ci95([x['slo_attainment'] for x in runs]).fmt('.1f', 100, '%')} | "
            f"{_mean(runs, 'escalations'):,.0f} | {_mean(runs, 'energy_j') / 3.6e6:.2f} | " + " | ".join(cells) + " |")


def _sizing_rule_table(fams: dict) -> list[str]:
    base = at_whole(fams["cloud_only"])
    lines = ["Every cloud size, judged on the evaluation seeds (what the sizing rule chose from: attainment on the "
             "sizing slice in the second column):", "",
             "| configuration | cloud instances | attainment, sizing slice | attainment, evaluation | "
             "energy vs sized cloud-only | cost vs sized cloud-only |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, fam in fams.items():
        sizing = dict(fam["sizing"])
        for k, runs in fam["by_k"].items():
            mark = " (rule)" if int(k) == fam["whole"] else ""
            a = sizing.get(int(k))
            lines.append(f"| {NAMES[label]} | {k}{mark} | {pct(a) if a is not None else '-'} | "
                         f"{ci95([x['slo_attainment'] for x in runs]).fmt('.1f', 100, '%')} | "
                         f"{_pctci(change([x['energy_j'] for x in runs], [x['energy_j'] for x in base]))} | "
                         f"{_pctci(change([x['cost_usd'] for x in runs], [x['cost_usd'] for x in base]))} |")
    return lines + [""]


def _budget(fam: dict) -> str:
    """The cloud token budget the sizing slice chose ('8192' where the results predate the tuning)."""
    return f"{fam.get('variant', 8192):,}"


def _rate_table(sweep: dict) -> list[str]:
    lines = ["Cloud instances are whole counts with the chosen cloud token budget in brackets.", "",
             "| rate req/s | cloud-only instances | oracle: instances, energy whole | fractional | cost whole | "
             "80% router: instances, energy whole | fractional | SLO attainment |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rate, fams in sweep["families"].items():
        o, r8 = comparison(fams, "oracle"), comparison(fams, "router80")

        def k(label):
            return f"{fams[label]['whole']} ({_budget(fams[label])})"
        lines.append(f"| {rate} | {k('cloud_only')} | {k('oracle')}: "
                     f"{_pctci(o['energy_whole'])} | {_pctci(o['energy_fractional'])} | {_pctci(o['cost_whole'])} | "
                     f"{k('router80')}: {_pctci(r8['energy_whole'])} | {_pctci(r8['energy_fractional'])} | "
                     f"{ci95([x['slo_attainment'] for x in at_whole(fams['router80'])]).fmt('.1f', 100, '%')} |")
    return lines + [""]


def render(h: dict) -> list[str]:
    settings = [s for s in HYBRID_SETTINGS if s in h]
    lines = ["Owned laptops (M4 Max, Llama-3.1-8B int4, batch <= 4) plus a cloud pool (H100s, fp8, chunked "
             "prefill); cloud-only is the same cloud pool alone. `local-first` sends a request to a laptop when "
             "the router judges it within the 8B model's reach and a laptop is predicted to meet the SLO; answers "
             "the verifier flags are re-served in the cloud. Every configuration's cloud pool is sized by the same "
             f"rule on a held-out slice of requests (seed {h['sizing_seed']}) and judged on seeds "
             f"{', '.join(str(s) for s in _seeds(h))}: mean with the 95% interval in brackets; changes against "
             "cloud-only are per seed (the same requests), then averaged. *Whole* uses the rule's whole instances; "
             "*fractional* a load-proportional fleet (the cloud size where attainment crosses the rule's "
             "threshold, energy and dollars interpolated between whole sizes); *busy-time* counts each instance "
             "only while it runs an iteration (any batch, however small). "
             + (f"The cloud pool's chunked-prefill token budget is tuned for every configuration the same way: each "
                f"of {', '.join(f'{b:,}' for b in _budgets(h))} is sized on the held-out slice, and the one giving "
                "the fewest whole instances (then the smallest fractional fleet) is the one judged."
                if len(_budgets(h)) > 1 else
                f"The cloud pool's chunked-prefill token budget is {_budgets(h)[0]:,} in every configuration "
                "(these results predate its tuning)."), ""]
    for s in settings:
        lines += _setting_table(h[s])
    for sw in _sweeps(h):
        lines += [f"### The {HYBRID_SETTINGS[sw['setting']][0]} setting (TTFT <= "
                  f"{HYBRID_SETTINGS[sw['setting']][4].ttft_s:g} s) across arrival rates", ""]
        lines += _rate_table(sw)
        if sw["setting"] == "cloud_405b":
            lines += _sizing_rule_table(h[sw["setting"]]["families"])
    return lines + _notes(h)


def _sweeps(h: dict) -> list[dict]:
    """The rate sweeps the results hold (one under `rate_sweep` in results that predate the 70B sweep)."""
    return list(h["rate_sweeps"].values()) if "rate_sweeps" in h else ([h["rate_sweep"]] if "rate_sweep" in h else [])


def _budgets(h: dict) -> list[int]:
    fam = next(iter(h[next(s for s in HYBRID_SETTINGS if s in h)]["families"].values()))
    return [v for v, *_ in fam.get("variants", [[8192]])]


def _seeds(h: dict) -> list[int]:
    fam = next(iter(h[next(s for s in HYBRID_SETTINGS if s in h)]["families"].values()))
    return sorted({r["seed"] for r in at_whole(fam)})


def _j_per_token(r: dict, pool: str) -> float:
    tokens = r["pool_tokens"].get(pool, 0)
    return r["pool_energy_j"][pool] / tokens if tokens else float("nan")


def _swing(changes) -> float:
    return max(c.mean for c in changes) - min(c.mean for c in changes)


def _notes(h: dict) -> list[str]:
    lines = ["### What the numbers say", ""]
    if "cloud_70b" in h and "cloud_405b" in h:
        a, b = h["cloud_70b"]["families"], h["cloud_405b"]["families"]
        lap = ci95([_j_per_token(x, "laptops") for x in at_whole(a["oracle"])])
        c70 = ci95([_j_per_token(x, "cloud") for x in at_whole(a["cloud_only"])])
        c405 = ci95([_j_per_token(x, "cloud") for x in at_whole(b["cloud_only"])])
        o70 = comparison(a, "oracle")
        lines += [
            f"- **Where the energy goes.** Per token processed (prompt + output), the laptops spent {lap.fmt('.2f')} J "
            f"(idle power of all {h['cloud_70b']['laptops']} included), the batched 70B cloud {c70.fmt('.2f')} J and "
            f"the batched 405B cloud {c405.fmt('.2f')} J. Decode reads the weights once per step for the whole batch, "
            "so a cloud GPU running large batches spends fewer joules per token than a laptop running at most four; "
            + ("local 8B is cheaper per token than the batched cloud only against the 405B model."
               if c70.mean < lap.mean < c405.mean else
               f"here local 8B is {'cheaper' if lap.mean < c70.mean else 'dearer'} per token than the 70B cloud and "
               f"{'cheaper' if lap.mean < c405.mean else 'dearer'} than the 405B one."),
            f"- **Against a 70B cloud** the oracle hybrid changes energy by {_pctci(o70['energy_whole'])} (whole "
            f"instances) and {_pctci(o70['energy_fractional'])} (fractional) at a {h['cloud_70b']['slo']['ttft_s']:g} s "
            f"TTFT SLO. A laptop prefills a median prompt ({h['median_prompt_tokens']:,} tokens) at about "
            f"{h['laptop_prefill_tok_s']:,.0f} tokens/s in this model, so under that SLO the laptops take only short "
            "in-reach prompts.",
        ]
        if "cloud_70b_loose_ttft" in h:
            lo = comparison(h["cloud_70b_loose_ttft"]["families"], "oracle")
            lines.append(f"  With a {h['cloud_70b_loose_ttft']['slo']['ttft_s']:g} s TTFT budget: energy "
                         f"{_pctci(lo['energy_whole'])} (whole), {_pctci(lo['energy_fractional'])} (fractional); "
                         f"cost {_pctci(lo['cost_whole'])} (whole).")
        judged = [(s, h[s]) for s in ("cloud_70b", "cloud_405b") if h[s].get("judge_pools")]
        if judged:
            parts = []
            for setting, r in judged:
                names = [p["name"] for p in r["judge_pools"]]
                runs = at_whole(r["families"]["oracle"])
                share = ci95([sum(x["pool_energy_j"].get(n, 0.0) for n in names) / x["energy_j"] for x in runs])
                parts.append(f"{share.fmt('.1f', 100, '%')} of the oracle hybrid's energy against the "
                             f"{r['cloud_model'].rsplit('-', 1)[1].upper()} cloud at {r['rate_rps']:g} req/s "
                             f"({', '.join(names)})")
            lines.append("- **What judging costs.** The judge pools spend " + "; ".join(parts) + ". The 70B "
                         "verifier's passes run batched on the 70B cloud pool where the cloud serves 70B; a "
                         "judgement charged at batch 1 on an instance of its own pays that instance's idle power "
                         "and host for one sequence at a time.")
    for sw in _sweeps(h):
        model = HYBRID_SETTINGS[sw["setting"]][0].rsplit("-", 1)[1].upper()
        gpus = HYBRID_SETTINGS[sw["setting"]][1]
        for label, name in (("oracle", "oracle router"), ("router80", "80%-accurate router")):
            whole = [comparison(f, label)["energy_whole"] for f in sw["families"].values()]
            frac = [comparison(f, label)["energy_fractional"] for f in sw["families"].values()]
            (wl, wh), (fl, fh) = span(whole), span(frac)
            lines.append(
                f"- **Local-first vs a {model} cloud, {name}**, over {sw['rates_rps'][0]:g}-{sw['rates_rps'][-1]:g} req/s: "
                f"energy change {min(c.mean for c in whole):+.1%} to {max(c.mean for c in whole):+.1%} with whole "
                f"instances (interval bounds {wl:+.1%} to {wh:+.1%}), {min(c.mean for c in frac):+.1%} to "
                f"{max(c.mean for c in frac):+.1%} with a fractional fleet ({fl:+.1%} to {fh:+.1%}). "
                + (f"The whole-instance figure moves more with the rate than the fractional one: one {gpus}-GPU "
                   "instance more or less is most of the difference there."
                   if _swing(whole) > _swing(frac) + 0.05 else
                   "Whole and fractional fleets move alike with the rate here."))
    if "cloud_405b" in h:
        r80 = h["cloud_405b"]["families"]["router80"]
        lines.append(
            f"- With the 80% router a misjudged hard request is answered on a laptop first and re-served in the "
            f"cloud, so its TTFT spans both passes: attainment on the sizing slice stops improving at "
            f"{pct(max(a for _, a in r80['sizing']))}, and the rule then takes the fewest instances within half a "
            "point of that (the table above shows every size).")
    lines += ["- The study's 80% / 64% reductions compare measured energy per query of local accelerators against "
              "cloud serving; this simulator's cloud runs continuous batching at high occupancy, the regime where "
              "the cloud is most efficient, and counts GPU board power only.", ""]
    return lines


def headline(h: dict) -> list[str]:
    out = []
    for sw in _sweeps(h):
        model, gpus, _, _, slo = HYBRID_SETTINGS[sw["setting"]]
        for label, name in (("oracle", "oracle router"), ("router80", "80% router")):
            cs = [comparison(f, label) for f in sw["families"].values()]
            out.append(f"- **Local-first energy vs a {model.rsplit('-', 1)[1].upper()} cloud, {name}** "
                       f"({sw['rates_rps'][0]:g}-{sw['rates_rps'][-1]:g} req/s, TTFT <= {slo.ttft_s:g} s): "
                       f"{range_text([c['energy_whole'] for c in cs], '+.1f', 100, '%')} "
                       f"with whole {gpus}-GPU instances, {range_text([c['energy_fractional'] for c in cs], '+.1f', 100, '%')} "
                       "with a fractional fleet.")
    swept = {sw["setting"] for sw in _sweeps(h)}
    for setting in ("cloud_70b", "cloud_70b_loose_ttft"):
        if setting in h and setting not in swept:
            c = comparison(h[setting]["families"], "oracle")
            out.append(f"- **Local-first energy vs a 70B cloud**, oracle router, TTFT <= {h[setting]['slo']['ttft_s']:g} s: "
                       f"{_pctci(c['energy_whole'])} whole, {_pctci(c['energy_fractional'])} fractional "
                       f"(cost {_pctci(c['cost_whole'])} whole).")
    return out


SECTION = Section("hybrid", "Local-first hybrid vs cloud-only, at equal quality", run, render, headline)
