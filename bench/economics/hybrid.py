"""Section 1: owned laptops serving Llama-3.1-8B locally first, a cloud pool behind them, vs cloud-only.

Cloud pools are sized with the sizing rule (common.smallest) for cloud-only and
for each router; the same requests at one rate for every configuration.
"""
from __future__ import annotations

from scheduler.config import SloConfig, parse_cluster
from simulator.jobs import build_workload

from bench.economics.common import Section, kwh, pct, poisson, run_many, signed, smallest, verdict


def edge_cloud(name: str, slo: SloConfig, laptops: int, cloud_model: str, cloud_chips: int, cloud: int):
    """Owned laptops (Llama-3.1-8B int4) plus a cloud pool of H100 instances serving `cloud_model` in fp8."""
    pools = []
    if laptops:
        pools.append({"name": "laptops", "device": "m4-max", "instances": laptops, "model": "llama-3.1-8b",
                      "quantization": "int4", "role": "both", "max_batch": 4, "max_batch_tokens": 4096})
    pools.append({"name": "cloud", "device": "h100-sxm", "instances": cloud, "chips_per_instance": cloud_chips,
                  "model": cloud_model, "quantization": "fp8", "role": "both"})
    return parse_cluster({"name": name, "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "pools": pools})



# ---- 1. local-first hybrid vs cloud-only --------------------------------------------------
HYBRID_SETTINGS = {
    # cloud model, chips per instance, rate, laptops, SLO
    "cloud_70b": ("llama-3.1-70b", 2, 20.0, 48, SloConfig(ttft_s=2.0, tpot_s=0.1)),
    # The same with a 10 s TTFT budget: laptops prefill ~770 tokens/s, so a 2 s SLO keeps most
    # prompts off them; at 10 s latency no longer binds and the router decides.
    "cloud_70b_loose_ttft": ("llama-3.1-70b", 2, 20.0, 48, SloConfig(ttft_s=10.0, tpot_s=0.1)),
    "cloud_405b": ("llama-3.1-405b", 8, 5.0, 16, SloConfig(ttft_s=5.0, tpot_s=0.1)),
}
ORACLE = {"router_accuracy": 1.0, "detect_accuracy": 1.0}
ROUTER80 = {"router_accuracy": 0.8, "detect_accuracy": 1.0}
ROUTER80_VERIFIER90 = {"router_accuracy": 0.8, "detect_accuracy": 0.9}


def run(trace, n: int) -> dict:
    res = {}
    for setting, (model, chips, rate, laptops, slo) in HYBRID_SETTINGS.items():
        print(f" -- {setting}: {model} cloud at {rate:g} req/s, {laptops} laptops", flush=True)
        wl = poisson(trace, n, rate)
        out = {"rate_rps": rate, "laptops": laptops, "cloud_model": model,
               "workload": build_workload(wl)[1].description,
               "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "sized": {}}
        counts = list(range(1, 13))
        k = smallest(lambda c: edge_cloud("cloud-only", slo, 0, model, chips, c), counts, "least-loaded", trace, rate)
        out["sized"]["cloud_only"] = k
        for label, params in (("oracle", ORACLE), ("router80", ROUTER80)):
            out["sized"][label] = smallest(lambda c: edge_cloud("edge-cloud", slo, laptops, model, chips, c), counts,
                                           "local-first", trace, rate, params)
        edge = lambda label: edge_cloud("edge-cloud", slo, laptops, model, chips, out["sized"][label])  # noqa: E731
        runs = {"cloud_only": (edge_cloud("cloud-only", slo, 0, model, chips, k), "least-loaded", wl, None),
                "oracle": (edge("oracle"), "local-first", wl, ORACLE),
                "router80": (edge("router80"), "local-first", wl, ROUTER80),
                "router80_verifier90": (edge("router80"), "local-first", wl, ROUTER80_VERIFIER90),
                # The same cloud as cloud-only, laptops added (nothing right-sized).
                "oracle_same_cloud": (edge("cloud_only"), "local-first", wl, ORACLE)}
        out.update(zip(runs, run_many(list(runs.values()))))
        res[setting] = out
    return res


def _tables(h: dict) -> list[str]:
    lines = []
    for setting, r in h.items():
        if not isinstance(r, dict):
            continue  # bench_wall_s
        base = r["cloud_only"]
        lines += [
            f"### Cloud serving {r['cloud_model']} ({r['rate_rps']:g} req/s, SLO TTFT <= {r['slo']['ttft_s']:g} s, "
            f"TPOT <= {r['slo']['tpot_s'] * 1e3:g} ms, {r['laptops']} laptops)",
            "",
            "| configuration | cloud instances | local share | quality | SLO | escalations | energy kWh | vs cloud-only "
            "| served kWh | vs cloud-only | cost $ |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows = [("cloud-only", "cloud_only", r["sized"]["cloud_only"]),
                ("local-first, oracle router", "oracle", r["sized"]["oracle"]),
                ("local-first, 80% router, perfect verifier", "router80", r["sized"]["router80"]),
                ("local-first, 80% router, 90% verifier", "router80_verifier90", r["sized"]["router80"]),
                ("local-first, oracle, cloud not resized", "oracle_same_cloud", r["sized"]["cloud_only"])]
        for name, key, inst in rows:
            x = r[key]
            lines.append(
                f"| {name} | {inst} | {pct(x['shares'].get('laptops', 0.0))} | {pct(x['quality'], 2)} | "
                f"{pct(x['slo_attainment'])} | {x['escalations']:,} | {kwh(x['energy_j']):.2f} | "
                f"{signed(x['energy_j'] / base['energy_j'] - 1)} | {kwh(x['served_energy_j']):.2f} | "
                f"{signed(x['served_energy_j'] / base['served_energy_j'] - 1)} | {x['cost_usd']:,.2f} |")
        o, r80 = r["oracle"], r["router80"]
        red_o = 1 - o["energy_j"] / base["energy_j"]
        red_80 = 1 - r80["energy_j"] / base["energy_j"]
        lines += ["",
                  f"Energy vs cloud-only at equal quality ({pct(base['quality'], 2)} cloud-only, "
                  f"{pct(o['quality'], 2)} oracle, {pct(r80['quality'], 2)} 80% router with a perfect verifier): "
                  f"{signed(-red_o)} with the oracle router (target: at least 60% less, {verdict(red_o >= 0.6)}), "
                  f"{signed(-red_80)} with the 80%-accurate router.", ""]
    return lines


def _j_per_token(run: dict, pool: str) -> float:
    tokens = run["pool_tokens"].get(pool, 0)
    return run["pool_energy_j"][pool] / tokens if tokens else float("nan")


def _hybrid_notes(h: dict) -> list[str]:
    lines = ["### What the numbers say", ""]
    if "cloud_70b" in h and "cloud_405b" in h:
        a, b = h["cloud_70b"], h["cloud_405b"]
        loose = h.get("cloud_70b_loose_ttft")
        lap = _j_per_token(a["oracle"], "laptops")
        c70 = _j_per_token(a["cloud_only"], "cloud")
        c405 = _j_per_token(b["cloud_only"], "cloud")
        lines += [
            f"- **Where the energy goes.** Per token processed (prompt + output), the laptops spent {lap:.2f} J "
            f"(idle power of all {a['laptops']} included), the batched 70B cloud {c70:.2f} J and the batched 405B "
            f"cloud {c405:.2f} J. Decode is bound by reading the weights once per step for the whole batch, so a "
            "cloud GPU running batches of tens of sequences spends far fewer joules per token than a laptop "
            "running at most four; only against a model as large as 405B is local 8B cheaper per token.",
            f"- **Against a 70B cloud the hybrid costs energy** ({signed(a['oracle']['energy_j'] / a['cloud_only']['energy_j'] - 1)} "
            f"with the oracle router at a 2 s TTFT SLO). Laptops prefill about 770 tokens/s, so under that SLO "
            f"they take only the short in-reach prompts ({pct(a['oracle']['shares'].get('laptops', 0))} of "
            f"requests) and the cloud cannot shrink ({a['sized']['oracle']} vs {a['sized']['cloud_only']} "
            "instances).",
        ]
        if loose:
            lines.append(
                f"  With a 10 s TTFT budget the laptops take {pct(loose['oracle']['shares'].get('laptops', 0))}, "
                f"the cloud shrinks from {loose['sized']['cloud_only']} to {loose['sized']['oracle']} instances "
                f"(cost {signed(loose['oracle']['cost_usd'] / loose['cloud_only']['cost_usd'] - 1)}), and energy "
                f"still rises ({signed(loose['oracle']['energy_j'] / loose['cloud_only']['energy_j'] - 1)}): the "
                "dollars fall, the joules do not.")
        red_o = 1 - b["oracle"]["energy_j"] / b["cloud_only"]["energy_j"]
        red_80 = 1 - b["router80"]["energy_j"] / b["cloud_only"]["energy_j"]
        lines += [
            f"- **Against a 405B frontier cloud** (the study's setting: a local model vs a frontier model in the "
            f"cloud) the oracle router cuts energy by {pct(red_o)} and cost by "
            f"{pct(1 - b['oracle']['cost_usd'] / b['cloud_only']['cost_usd'])} at equal quality "
            f"({pct(b['oracle']['quality'], 2)}): the 60% target is missed. The laptops take "
            f"{pct(b['oracle']['shares'].get('laptops', 0))} of requests, not the 71% within their reach, because "
            "long prompts miss the TTFT SLO on them; and the cloud, sized in whole 8-GPU instances, keeps "
            f"{b['sized']['oracle']} of the {b['sized']['cloud_only']} instances cloud-only needs.",
            f"- **An 80%-accurate router** ({signed(-red_80)} energy vs cloud-only, quality "
            f"{pct(b['router80']['quality'], 2)} with a perfect verifier, {pct(b['router80_verifier90']['quality'], 2)} "
            f"with a 90% one): a misjudged hard request is answered wrongly on a laptop first and re-served in the "
            f"cloud ({b['router80']['escalations']:,} escalations), so its latency spans both passes and its TTFT "
            f"misses the SLO; SLO attainment falls to {pct(b['router80']['slo_attainment'])} whatever the cloud's "
            f"size (sized at {b['sized']['router80']} instances, the smallest within half a point of the best "
            "attainable). Misjudged easy requests go to the cloud and cost energy without changing quality.",
            "- The study's 80% / 64% reductions compare measured energy per query of local accelerators against "
            "cloud serving; this simulator's cloud runs continuous batching at high occupancy, which is the "
            "regime where the cloud is most efficient. The reach table (71% for an 8B model) is the study's; "
            "the energy per token is this repository's calibrated power model (H100 measured, laptop from "
            "published package power), which is where the difference comes from.",
            "",
        ]
    return lines




def render(h: dict) -> list[str]:
    return ["Owned laptops (M4 Max, Llama-3.1-8B int4, batch <= 4) plus a cloud pool; cloud-only is the same "
            "cloud pool alone. `local-first` sends a request to a laptop when the router judges it within the "
            "8B model's reach and a laptop is predicted to meet the SLO; answers the verifier flags are "
            "re-served in the cloud. Cloud pools sized to the smallest meeting the SLO.", ""] \
        + _tables(h) + _hybrid_notes(h)


SECTION = Section("hybrid", "Local-first hybrid vs cloud-only, at equal quality", run, render)
