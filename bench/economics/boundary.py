"""Section: the energy boundary. One model (Llama-3.1-8B) and its larger siblings on laptops, phones and
H100s, counted at the board, at the facility (host share x PUE) and at the margin (an owned device's
dynamic energy only), in two regimes:

- the Intelligence-per-Watt study's own setting: every query alone at batch 1, energy while it runs
  (own devices, one per user, and H100 instances at max_batch 1);
- the batched cloud: fleets serving the same arrivals with continuous batching, every provisioned
  instance's energy counted.

Every figure in the text is computed from the runs saved in the results JSON.
"""
from __future__ import annotations

from scheduler.config import SloConfig, parse_cluster

from bench.economics import common
from bench.economics.common import Section, pct, poisson, summaries
from bench.economics.stats import ci95

RATE_RPS = 5.0
SLO = SloConfig(ttft_s=10.0, tpot_s=0.2)  # loose enough for a phone at batch 1 (about 13 tok/s)
USERS = 1000  # own devices: request r is user r mod USERS's

LAPTOP = {"device": "m4-max", "model": "llama-3.1-8b", "quantization": "q4_k_m", "role": "both"}
PHONE = {"device": "phone", "model": "llama-3.1-8b", "quantization": "q4_k_m", "role": "both"}
H100_8B = {"device": "h100-sxm", "model": "llama-3.1-8b", "role": "both", "chips_per_instance": 1}
H100_70B = {"device": "h100-sxm", "model": "llama-3.1-70b", "quantization": "fp8", "role": "both",
            "chips_per_instance": 2}
H100_405B = {"device": "h100-sxm", "model": "llama-3.1-405b", "quantization": "fp8", "role": "both",
             "chips_per_instance": 8}

# (label, regime, pool, instances, extra pool keys, arrival rate multiple)
CONFIGS = (
    ("own laptop, 8B Q4_K_M", "alone", LAPTOP, USERS, {"serving": "own-device"}, 1),
    ("own phone, 8B w4", "alone", PHONE, USERS, {"serving": "own-device"}, 1),
    ("H100, 8B bf16, batch 1", "alone", H100_8B, 16, {"max_batch": 1}, 1),
    ("2 x H100, 70B fp8, batch 1", "alone", H100_70B, 48, {"max_batch": 1}, 1),
    ("48 pooled laptops, batch <= 4", "batched", LAPTOP, 48, {"max_batch": 4, "max_batch_tokens": 4096}, 1),
    ("H100, 8B bf16, batched", "batched", H100_8B, 1, {}, 1),
    ("H100, 8B bf16, batched, 3x the load", "batched", H100_8B, 1, {}, 3),
    ("2 x H100, 70B fp8, batched", "batched", H100_70B, 1, {}, 1),
    ("8 x H100, 405B fp8, batched", "batched", H100_405B, 2, {}, 1),
)


def _cluster(label: str, pool: dict, instances: int, extra: dict):
    return parse_cluster({"name": label.replace(" ", "-").replace(",", ""),
                          "slo": {"ttft_s": SLO.ttft_s, "tpot_s": SLO.tpot_s},
                          "pools": [dict(pool, name="p", instances=instances, **extra)]})


def _per_query(s: dict) -> dict:
    """Joules per completed request at each boundary, provisioned and busy-time."""
    done = max(s["completed"], 1)
    pool = s["pools"]["p"]
    wall = pool["facility_energy_j"] / pool["energy_j"] if pool["energy_j"] else 1.0
    return {"board_j": s["energy_j"] / done, "facility_j": s["facility_energy_j"] / done,
            "marginal_j": s["marginal_energy_j"] / done, "busy_board_j": s["busy_energy_j"] / done,
            "busy_facility_j": s["busy_energy_j"] * wall / done, "wall": wall, "pue": pool["pue"],
            "host_share": pool["host_power_share"], "quality": s["quality"], "slo_attainment": s["slo_attainment"],
            "ttft_p50_s": s["ttft_s"]["p50"], "completed": s["completed"],
            # Sequences in flight per instance (Little's law): how full the batches were.
            "in_flight": s["throughput_rps"] * (s["e2e_s"]["mean"] or 0.0) / pool["instances"],
            "j_per_correct_busy": s["busy_energy_j"] * wall / max(s["correct"], 1),
            # Seconds the devices ran per completed request (their utilization over the run).
            "busy_s": pool["utilization"] * pool["instances"] * s["makespan_s"] / done}


def run_section(trace, n: int) -> dict:
    items, keys = [], []
    for seed in common.SEEDS:
        for label, regime, pool, instances, extra, load in CONFIGS:
            wl = poisson(trace, n, RATE_RPS * load, seed)
            items.append((_cluster(label, pool, instances, extra), "least-loaded", wl, None))
            keys.append((label, seed))
    out = {"rate_rps": RATE_RPS, "slo": {"ttft_s": SLO.ttft_s, "tpot_s": SLO.tpot_s}, "users": USERS,
           "configs": [{"label": label, "regime": regime, "device": pool["device"], "model": pool["model"],
                        "instances": instances, "rate_rps": RATE_RPS * load}
                       for label, regime, pool, instances, _, load in CONFIGS],
           "runs": {label: [] for label, *_ in CONFIGS}, "phone_power": phone_power_meta()}
    for (label, seed), s in zip(keys, summaries(items)):
        out["runs"][label].append(_per_query(s) | {"seed": seed})
    return out


def _ci(res: dict, label: str, key: str):
    return ci95(r[key] for r in res["runs"][label])


def _ratio(res: dict, a: str, b: str, key_a: str, key_b: str):
    """a's figure over b's, per seed, with its interval."""
    return ci95(x[key_a] / y[key_b] for x, y in zip(res["runs"][a], res["runs"][b]))


def render(res: dict) -> list[str]:
    labels = [c["label"] for c in res["configs"]]
    alone = [c["label"] for c in res["configs"] if c["regime"] == "alone"]
    batched = [c["label"] for c in res["configs"] if c["regime"] == "batched"]
    first = res["runs"][labels[0]][0]
    h100 = res["runs"][alone[2]][0]
    lines = [
        f"{res['rate_rps']:g} req/s of the conversation trace, SLO TTFT <= {res['slo']['ttft_s']:g} s, "
        f"TPOT <= {res['slo']['tpot_s'] * 1000:g} ms. Three boundaries: **board** (chip or package power, as "
        f"elsewhere in this document), **facility** (board x (1 + host share) x PUE: host share "
        f"{h100['host_share']:.2f} for an HGX H100 from its 10.2 kW system rating against 8 x 700 W of GPUs, "
        f"{first['host_share']:.2f} for a laptop's DRAM, fabric and adapter; PUE {h100['pue']:g} for a datacenter "
        f"(Uptime Institute 2024 survey average; hyperscalers report about 1.1), {first['pue']:g} at home) and "
        "**marginal** (an owned device counts only the energy serving adds: its dynamic energy at the wall; a "
        "rented GPU is provisioned for the work, so all of it). The laptop's speeds and power and the phone's "
        "speeds are fitted to published measurements (`workers/edge_devices.py`); "
        + ("the phone's power is fitted to a published measurement too, and its verdicts are shown over the measured "
           "range below. " if "phone_power" in res else "the phone's power is an assumption, and its verdicts are "
           "shown over a range of it below. ") + "Routers and verifiers are not involved here.",
        "",
        f"**Each query alone** (the study's setting): every user has a device of their own "
        f"({res['users']:,} users; `serving: own-device`, batch 1), or a query has an H100 instance to itself "
        "(max_batch 1); energy is what the device draws while the query runs (busy time).",
        "",
        "| configuration | board J/query | facility J/query | J per correct answer (facility) | quality | "
        "SLO | TTFT p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in alone:
        lines.append(f"| {label} | {_ci(res, label, 'busy_board_j').fmt('.0f')} | "
                     f"{_ci(res, label, 'busy_facility_j').fmt('.0f')} | "
                     f"{_ci(res, label, 'j_per_correct_busy').fmt('.0f')} | "
                     f"{pct(_ci(res, label, 'quality').mean)} | {pct(_ci(res, label, 'slo_attainment').mean)} | "
                     f"{_ci(res, label, 'ttft_p50_s').mean:.2f} s |")
    lines += [
        "",
        "**Batched cloud**: fleets serving the same arrivals with continuous batching; every provisioned "
        "instance's energy counts (idle included), and the pooled laptops act as a small server farm.",
        "",
        "| configuration | req/s | instances | in flight per instance | board J/query | facility J/query | "
        "marginal J/query | "
        "quality | SLO |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_label = {c["label"]: c for c in res["configs"]}
    for label in batched + [alone[0]]:
        c = by_label[label]
        lines.append(f"| {label} | {c['rate_rps']:g} | {c['instances']:,} | "
                     f"{_ci(res, label, 'in_flight').mean:.1f} | {_ci(res, label, 'board_j').fmt('.0f')} | "
                     f"{_ci(res, label, 'facility_j').fmt('.0f')} | {_ci(res, label, 'marginal_j').fmt('.0f')} | "
                     f"{pct(_ci(res, label, 'quality').mean)} | {pct(_ci(res, label, 'slo_attainment').mean)} |")
    return lines + _findings(res, alone, batched) + _phone_power(res, alone, batched)


def phone_power_meta() -> dict:
    """The phone's measured serving powers (workers/edge_devices.py), saved with the results."""
    from workers import edge_devices as edge

    return {"range_w": list(edge.PHONE_POWER_RANGE_W),
            "rows": [["NPU, measured; as modelled", edge.PUBLISHED_PHONE_NPU_W],
                     ["8B on the CPU (llama.cpp), measured", edge.PUBLISHED_PHONE_CPU_8B_W]]}


def _phone_power(res: dict, alone: list[str], batched: list[str]) -> list[str]:
    """The phone's verdicts over its measured serving powers: its speeds are measured (Qualcomm AI Hub), so
    its busy seconds per query stand, and its energy per query is serving power x those seconds."""
    phone = next((label for label in alone if "phone" in label), None)
    if phone is None or "busy_s" not in res["runs"][phone][0]:
        return []
    meta = res.get("phone_power")
    cloud_alone, cloud8, cloud8_busy = alone[2], batched[1], batched[2]
    by_label = {c["label"]: c for c in res["configs"]}
    runs = res["runs"][phone]
    modelled = ci95(r["busy_board_j"] / r["busy_s"] for r in runs).mean
    if meta is None:  # results saved before the phone's power was measured: the assumed range
        lo, hi = 4.0, 12.0
        rows = [("low", lo), ("as modelled", modelled), ("high", hi)]
    else:
        lo, hi = meta["range_w"]
        rows = [(name, watts) for name, watts in meta["rows"]]
    targets = ((f"{cloud_alone}", cloud_alone, "busy_facility_j"),
               (f"{cloud8} at {by_label[cloud8]['rate_rps']:g} req/s", cloud8, "facility_j"),
               (f"{cloud8_busy}", cloud8_busy, "facility_j"))

    def ratio(watts: float, label: str, key: str):
        return ci95(watts * r["busy_s"] * r["wall"] / c[key] for r, c in zip(runs, res["runs"][label]))

    def even(label: str, key: str):
        """The serving power at which the phone's facility energy per query equals the target's."""
        return ci95(c[key] / (r["busy_s"] * r["wall"]) for r, c in zip(runs, res["runs"][label]))
    if meta is None:
        head = [f"**The phone's power is an assumption** (its speeds are Qualcomm AI Hub measurements, "
                "`workers/edge_devices.py`): with the measured speeds its busy seconds per query stand, so its "
                f"energy per query is serving power x {ci95(r['busy_s'] for r in runs).fmt('.1f', suffix=' s')}. "
                f"Facility energy per query against the H100s above, over serving powers {lo:g}-{hi:g} W:"]
    else:
        head = [f"**The phone's power, measured** (`workers/edge_devices.py`): whole-device power at the battery of "
                f"a Galaxy S25 Ultra (Snapdragon 8 Elite, the SoC of the modelled speeds), {lo:.1f} W on its NPU "
                "(Nexa AI's 10-minute run of a 1.2B model at about 90 tok/s drew 6% of the battery: the same weight "
                "stream per second as 8B at the modelled 12.9 tok/s; a forum report, the weaker source) and "
                f"{hi:.1f} W for Llama-3.1-8B Q4_K_M on its CPU (llama.cpp, Android BatteryManager, median of 30 "
                "runs: Ehsani et al. 2026, github.com/eziyoo/LLMs-on-Devices). The modelled phone serves at the NPU "
                f"figure ({modelled:.1f} W on average while busy in these runs, prefill and decode together). With the measured speeds its busy seconds per query "
                f"stand ({ci95(r['busy_s'] for r in runs).fmt('.1f', suffix=' s')}), so its facility energy per "
                "query is serving power x those seconds x its wall factor:"]
    lines = head + ["",
                    "| phone serving power | facility J/query | " + " | ".join(f"vs {name}" for name, *_ in targets)
                    + " |", "| --- | ---: | " + " | ".join("---:" for _ in targets) + " |"]
    verdicts = []
    for name, watts in rows:
        cells = [ratio(watts, label, key) for _, label, key in targets]
        verdicts.append([c.mean < 1 for c in cells])
        joules = ci95(watts * r["busy_s"] * r["wall"] for r in runs)
        lines.append(f"| {watts:.1f} W ({name}) | {joules.fmt('.0f')} | "
                     + " | ".join(c.fmt(".2f", suffix="x") for c in cells) + " |")
    evens = [(name, even(label, key)) for name, label, key in targets]
    lines.append("| break-even serving power | - | " + " | ".join(e.fmt(".1f", suffix=" W") for _, e in evens) + " |")
    held = [targets[j][0] for j in range(len(targets)) if len({v[j] for v in verdicts}) == 1]
    flips = [targets[j][0] for j in range(len(targets)) if len({v[j] for v in verdicts}) > 1]
    # Break-even powers whose interval reaches into the range [lo, hi] sit on the verdict's edge.
    lower = [name for (name, e) in evens if e.lo > hi]
    higher = [name for (name, e) in evens if e.hi < lo]
    inside = [f"{name} (at {e.fmt('.1f', suffix=' W')})" for (name, e) in evens if e.lo <= hi and e.hi >= lo]
    span_text = f"{lo:.1f}-{hi:.1f} W" + (" (measured)" if meta is not None else "")
    return lines + ["", f"- Over {span_text} the phone's verdict (lower or higher energy per query) "
                    + (f"holds against {'; '.join(held)}" if held else "holds against none of them")
                    + (f", and flips within the range against {'; '.join(flips)}." if flips else "."),
                    "- Where the verdict sits: the phone spends less than "
                    + ("; ".join(lower) if lower else "none of them") + " at any power in the range, more than "
                    + ("; ".join(higher) if higher else "none of them") + " at any power in it"
                    + (f", and breaks even within it or at its edge against {'; '.join(inside)}" if inside else "")
                    + ".", ""]


def _findings(res: dict, alone: list[str], batched: list[str]) -> list[str]:
    """The comparisons the tables support, each phrased from its sign."""
    own, cloud8_alone = alone[0], alone[2]
    pooled, cloud8, cloud8_busy, cloud405 = batched[0], batched[1], batched[2], batched[4]

    def cmp(r) -> str:
        return f"{r.fmt('.2f')}x ({'less' if r.mean < 1 else 'more'})"

    alone_r = _ratio(res, own, cloud8_alone, "busy_facility_j", "busy_facility_j")
    board_r = _ratio(res, own, cloud8, "busy_board_j", "board_j")
    facility_r = _ratio(res, own, cloud8, "busy_facility_j", "facility_j")
    margin_r = _ratio(res, own, cloud8, "marginal_j", "facility_j")
    busy_r = _ratio(res, own, cloud8_busy, "marginal_j", "facility_j")
    busy_board_r = _ratio(res, own, cloud8_busy, "busy_board_j", "board_j")
    pooled_r = _ratio(res, pooled, cloud8, "facility_j", "facility_j")
    pooled_busy_r = _ratio(res, pooled, cloud8_busy, "facility_j", "facility_j")
    frontier_r = _ratio(res, own, cloud405, "marginal_j", "facility_j")
    util = {label: _ci(res, label, "in_flight").mean for label in (cloud8, cloud8_busy)}
    by_label = {c["label"]: c for c in res["configs"]}
    low, high = (f"{by_label[label]['rate_rps']:g} req/s" for label in (cloud8, cloud8_busy))
    cases = ((f"board vs board at {low}", board_r), (f"facility vs facility at {low}", facility_r),
             (f"marginal vs facility at {low}", margin_r), (f"marginal vs facility at {high}", busy_r),
             (f"board vs board at {high}", busy_board_r))
    less = [name for name, r in cases if r.mean < 1]
    more = [name for name, r in cases if r.mean >= 1]
    return [
        "",
        "### What the numbers say",
        "",
        f"- **Under the study's assumption** (each query alone) the own laptop spends {cmp(alone_r)} the facility "
        "energy per query of an H100 running the same 8B model at batch 1: there the GPU's idle power, host and "
        "cooling run for one sequence at a time.",
        f"- **Against one batched H100 at {low}** ({util[cloud8]:.1f} sequences in flight on average) the own laptop spends {cmp(board_r)} per query at the board, {cmp(facility_r)} at the facility, "
        f"and {cmp(margin_r)} when the laptop is charged only its marginal energy and the GPU its facility energy. "
        f"At {high} ({util[cloud8_busy]:.1f} in flight) the batched H100 "
        f"amortizes its idle power over more queries: the laptop's marginal energy is {cmp(busy_r)} its facility "
        f"energy, its board energy {cmp(busy_board_r)} the H100's board energy.",
        "- **Where the verdict flips.** Against the batched H100 the laptop comes out lower in: "
        + ("; ".join(less) if less else "none of these comparisons") + "; higher in: "
        + ("; ".join(more) if more else "none") + ". Decode reads the weights once per step for the whole "
        "batch, so the more sequences an H100 carries per step, the fewer joules each query costs, while a "
        "device decoding one sequence pays the whole weight stream per token; the facility overhead and an "
        "owned device's sunk idle power move the line, the cloud's load moves it back.",
        f"- **Pooled laptops as a server farm** (48, idle power of all of them over the run, at the wall) spend "
        f"{cmp(pooled_r)} the facility energy per query of the lightly loaded H100 and {cmp(pooled_busy_r)} that "
        f"of the busier one.",
        f"- **Against a frontier model** (405B on 8 x H100, batched) the own laptop's marginal energy is "
        f"{cmp(frontier_r)} the cloud's facility energy per query, at other quality "
        f"({pct(_ci(res, own, 'quality').mean)} vs {pct(_ci(res, cloud405, 'quality').mean)}, default reach "
        "table): the study compares local models with frontier ones, where the model gap, not the boundary, "
        "decides.",
        "",
    ]


SECTION = Section("boundary", "The energy boundary: board, facility and marginal, alone and batched", run_section,
                  render)
