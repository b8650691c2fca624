"""Human-readable tables, JSON, per-request records and plots for a summary.

Energy is printed in kWh everywhere (tables, plots, `plan`): the unit of
electricity bills and of queries-per-kWh. Times carry their unit on every
cell. Tables size each column to its widest cell, so large numbers never run
into their neighbours.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

JOULES_PER_KWH = 3.6e6


def fmt_s(value: float | None) -> str:
    """A duration with its unit: '840 ms', '2.08 s', '1,204 s'."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.1f} ms"


def fmt_kwh(joules: float) -> str:
    """Energy in kWh with three significant digits (at least two decimals)."""
    kwh = joules / JOULES_PER_KWH
    if kwh == 0:
        return "0 kWh"
    if kwh >= 100:
        return f"{kwh:,.0f} kWh"
    if kwh >= 0.01:
        return f"{kwh:.{2 if kwh >= 1 else 3}f} kWh"
    return f"{kwh:.2g} kWh"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "",
                 gap: int = 2) -> list[str]:
    """Lines of a plain-text table: each column as wide as its widest cell, `gap` spaces apart.

    `align` holds one character per column, '<' (left) or '>' (right); missing
    ones mean right, the usual for numbers. A row may be shorter than the
    header (trailing cells empty). The last column is not padded on the right.
    """
    ncols = len(headers)
    cells = [list(headers)] + [list(r) + [""] * (ncols - len(r)) for r in rows]
    if any(len(r) > ncols for r in cells):
        raise ValueError(f"a row has more than the {ncols} columns of the header")
    widths = [max(len(r[i]) for r in cells) for i in range(ncols)]
    align = align.ljust(ncols, ">")
    sep = " " * gap
    out = []
    for r in cells:
        parts = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        out.append(sep.join(parts).rstrip())
    return out


def kwh(joules: float) -> str:
    """Energy in kWh, the number alone (for a column headed 'kWh')."""
    return fmt_kwh(joules).removesuffix(" kWh")


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _top(pools: dict, key: str, n: int = 3) -> tuple[list[tuple[str, dict]], int]:
    """The n pools with the largest `key` (above zero), and how many more are above zero."""
    ranked = sorted(((name, p) for name, p in pools.items() if p[key] > 0), key=lambda item: -item[1][key])
    return ranked[:n], max(len(ranked) - n, 0)


def _more(count: int, what: str) -> str:
    return f"; {count} more {what}" if count else ""


def describe(s: dict) -> list[str]:
    """Three sentences on what a run shows: where requests went and why, what the bill paid for, where the
    joules went. Computed from the summary, so they hold for any cluster and policy."""
    pools = s["pools"]
    served, more = _top(pools, "requests")
    routing = []
    for name, p in served:
        n = p["requests"]
        size = (f"mean prompt {p['prefill_tokens'] / n:,.0f} tokens" if p["prefill_tokens"]
                else f"mean output {p['decode_tokens'] / n:,.0f} tokens")
        routing.append(f"{name} ({p['device']}) {_pct(p['share'])} ({size})")
    unused = [name for name, p in pools.items() if p["requests"] == 0]
    lines = ["routing: " + (", ".join(routing) if routing else "no request was placed") + _more(more, "pools")
             + (f"; served none: {', '.join(unused)}" if unused else "; every pool served requests")]

    cost = s["cost_usd"]
    if cost > 0:
        billed, more = _top(pools, "cost_usd")
        parts = [f"{_pct(p['cost_usd'] / cost)} on {name} ({_pct(p['share'])} of requests)" for name, p in billed]
        owned = [name for name, p in pools.items() if p["cost_usd"] == 0]
        idle_usd = sum(p["cost_usd"] for p in pools.values() if p["requests"] == 0)
        text = (f"cost: ${cost:,.2f} over {s['makespan_s'] / 3600:.2f} h, " + ", ".join(parts) + _more(more, "pools")
                + (f"; {', '.join(owned)} owned ($0/h)" if owned else "")
                + f"; {_pct(max(0.0, 1 - s['busy_cost_usd'] / cost))} paid for idle time")
        if idle_usd:
            text += f", ${idle_usd:,.2f} on pools that served nothing"
        lines.append(text)
    else:
        lines.append("cost: $0.00: every device is owned (no hourly price)")

    energy = s["energy_j"]
    if energy > 0:
        used, more = _top(pools, "energy_j")
        idle_j = sum(p.get("idle_energy_j", 0.0) for p in pools.values())
        per_tok = s["energy_per_output_token_j"]
        parts = [f"{_pct(p['energy_j'] / energy)} on {name} ({_pct(p['share'])} of requests)" for name, p in used]
        lines.append(f"energy: {fmt_kwh(energy)} ({_pct(idle_j / energy)} idle power)"
                     + (f", {per_tok:.3f} J per output token" if per_tok else "") + ", " + ", ".join(parts)
                     + _more(more, "pools"))
    else:
        lines.append("energy: none drawn")
    return lines


def format_summary(s: dict) -> str:
    lines = [
        f"cluster {s['cluster']} | policy {s['policy']} | seed {s['seed']}",
        f"workload: {s['workload']}",
        f"requests {s['requests']:,}   completed {s['completed']:,}   rejected {s['rejected']:,}   "
        f"failed {s['failed']:,}",
    ]
    for reason, count in sorted(s.get("reject_reasons", {}).items()):
        lines.append(f"  rejected {count:,}: {reason}")
    lines += format_table(["latency", "p50", "p90", "p99", "mean"],
                          [[label] + [fmt_s(s[key][k]) for k in ("p50", "p90", "p99", "mean")]
                           for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"),
                                              ("e2e_s", "end-to-end")) if s.get(key) is not None],
                          align="<")
    slo = s["slo"]
    lines.append(
        f"SLO (TTFT <= {slo['ttft_s']:g} s, TPOT <= {slo['tpot_s'] * 1e3:g} ms): attainment "
        f"{s['slo_attainment'] * 100:.1f}%   goodput {s['goodput_rps']:.2f} req/s   "
        f"throughput {s['throughput_rps']:.2f} req/s over {s['makespan_s']:,.0f} s")
    per_tok = s["energy_per_output_token_j"]
    lines.append(
        f"cost ${s['cost_usd']:,.2f}   energy {fmt_kwh(s['energy_j'])}"
        + (f" ({per_tok:.3f} J per output token)" if per_tok is not None else "")
        + f"   tokens in {s['input_tokens']:,} / out {s['output_tokens']:,}")
    if "quality" in s:
        qkwh = s.get("queries_per_kwh")
        extra = ""
        if s.get("escalations"):
            extra += f"   escalations {s['escalations']:,} ({s['escalated_requests']:,} requests)"
        if s.get("advised_requests"):
            extra += f"   advised {s['advised_requests']:,}"
        lines.append(
            f"quality {s['quality'] * 100:.1f}% answered correctly ({s['correct']:,})"
            + (f"   {qkwh:,.0f} queries per kWh" if qkwh else "") + extra)
    if s.get("prefix_hit_tokens"):
        lines.append(
            f"prefix cache: {s['prefix_hit_rate'] * 100:.1f}% of prompt tokens served from cache "
            f"({s['prefix_hit_tokens']:,} of {s['prefix_hit_tokens'] + s['prefill_computed_tokens']:,})   "
            f"busiest instance {s['max_instance_load_ratio']:.2f}x its pool's mean requests")
    if s.get("kv_tiers"):
        by_tier = ", ".join(f"{name} {tokens:,}" for name, tokens in s["prefix_hit_tokens_by_tier"].items())
        lines.append(f"kv tiers: cached tokens by level: {by_tier}; {s['kv_load_s']:,.1f} s loading")
    rows = [[name, p["device"], p["role"], f"{p['instances']:,}", f"{p['requests']:,}", _pct(p["share"]),
             f"{p['prefill_tokens']:,}", f"{p['decode_tokens']:,}", f"{p['utilization'] * 100:.0f}%",
             kwh(p["energy_j"]), f"{p['cost_usd']:,.2f}"] for name, p in s["pools"].items()]
    lines.append("")
    lines += format_table(["pool", "device", "role", "inst", "requests", "share", "prefill tok", "decode tok",
                           "busy", "energy kWh", "cost $"], rows, align="<<<")
    drafted = [f"{name} drafts with {sp['draft_model']} ({sp['draft_tokens']} tokens a round, acceptance "
               f"{sp['acceptance']:g}: {sp['tokens_per_round']:.2f} tokens per round)"
               for name, p in s["pools"].items() if (sp := p.get("speculative"))]
    if drafted:
        lines.append("speculative decoding: " + "; ".join(drafted))
    lines += [""] + describe(s)
    rate = s.get("sim_requests_per_s")
    rate_text = f", {rate:,.0f} requests/s" if rate else ""
    live = s.get("live")
    if live is None:
        lines += ["", f"simulated in {s['sim_wall_s']:.2f} s wall: {s['events']:,} events "
                      f"({s['events_per_request']:.2f} per request){rate_text}"]
    else:  # `replay`: nothing was simulated; its events are the Generate streams' messages
        lines += ["", f"replayed live against {live['target']} in {live['client_wall_s']:.2f} s wall: "
                      f"{live['tokens_streamed']:,} tokens streamed in {s['events']:,} messages "
                      f"({s['events_per_request']:.2f} per request){rate_text}",
                  f"server time_scale {live['time_scale']:.4g} (its emulated hardware runs "
                  f"{1 / live['time_scale']:.4g}x faster than real); arrivals compressed {live['speedup']:.4g}x"]
    return "\n".join(lines)


def format_policies(width: int = 100) -> str:
    """`infersched policies`: one row per policy (name, what it does, its plugins), descriptions wrapped to
    `width` columns and aligned after the longest name; then the plugin names and every parameter a
    cluster file may set under `policy.params`, with its default, the plugins that read it and its meaning."""
    import textwrap

    from scheduler.framework import param_specs
    from scheduler.registry import FILTERS, PICKERS, POLICIES, SCORERS, STAGINGS

    name_w = max(len("policy"), *(len(n) for n in POLICIES))
    wrap = max(width - name_w - 2, 30)
    rows = []
    for name, spec in POLICIES.items():
        scorers = ", ".join(f"{n} x{w:g}" for n, w in spec.scorers) or "-"
        staging = f"; staging: {spec.staging}" if spec.staging else ""
        text = textwrap.wrap(spec.description, wrap) + textwrap.wrap(
            f"filters: {', '.join(spec.filters)}; scorers: {scorers}; picker: {spec.picker}{staging}", wrap)
        rows += [[name if i == 0 else "", line] for i, line in enumerate(text)] + [[]]
    lines = format_table(["policy", "what it does"], rows[:-1], align="<<")
    lines += ["", f"filters: {', '.join(FILTERS)}", f"scorers: {', '.join(SCORERS)}",
              f"pickers: {', '.join(PICKERS)}", f"staging: {', '.join(STAGINGS)}", ""]
    specs, owners = {}, {}
    for plugin in [*FILTERS.values(), *SCORERS.values(), *PICKERS.values(), *STAGINGS.values()]:
        for key, spec in param_specs(plugin).items():
            specs.setdefault(key, spec)
            owners.setdefault(key, []).append(plugin.name)
    doc_w = max(width - 25 - 8 - 2 * 2, 30)
    params = []
    for key in sorted(specs):
        text = textwrap.wrap(f"{', '.join(owners[key])}: {specs[key].doc}", doc_w)
        params += [[key if i == 0 else "", str(specs[key].default) if i == 0 else "", line]
                   for i, line in enumerate(text)]
    lines += format_table(["parameter (policy.params)", "default", "read by: meaning"], params, align="<<<")
    return "\n".join(lines)


def write_json(obj: dict, path: str) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False)
    if path == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def write_outputs(result, summary: dict, out_dir: str | Path) -> list[Path]:
    """summary.json, requests.npz (columnar per-request records) and PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    write_json(summary, str(out / "summary.json"))
    written.append(out / "summary.json")
    from simulator.ledger import pack_npz
    from simulator.plots import plot_latency_cdfs, plot_utilization

    # Plots first: a run that streamed its records reads them back from its column files.
    plots = [plot_latency_cdfs(result, out / "latency_cdf.png"), plot_utilization(result, out / "utilization.png")]
    names = [p.name for p in result.cluster.pools for _ in p.instances]
    if result.records is not None:
        result.records.save(out / "requests.npz", names)
    else:
        pack_npz(result.record_dir, out / "requests.npz", names)
    written.append(out / "requests.npz")
    return written + plots
