"""Human-readable tables, JSON, per-request records and plots for a summary."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt_s(value) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value * 1e3:.1f}ms"


def _fmt_energy(joules: float) -> str:
    for unit, scale in (("GJ", 1e9), ("MJ", 1e6), ("kJ", 1e3)):
        if joules >= scale:
            return f"{joules / scale:.2f} {unit}"
    return f"{joules:.1f} J"


def format_summary(s: dict) -> str:
    lines = [
        f"cluster {s['cluster']} | policy {s['policy']} | seed {s['seed']}",
        f"workload: {s['workload']}",
        f"requests {s['requests']:,}   completed {s['completed']:,}   rejected {s['rejected']:,}   "
        f"failed {s['failed']:,}",
    ]
    for reason, count in sorted(s.get("reject_reasons", {}).items()):
        lines.append(f"  rejected {count:,}: {reason}")
    lines.append(f"{'':12}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "end-to-end")):
        d = s.get(key)
        if d is None:
            continue
        lines.append(f"{label:12}" + "".join(f"{_fmt_s(d[k]):>10}" for k in ("p50", "p90", "p99", "mean")))
    slo = s["slo"]
    lines.append(
        f"SLO (TTFT <= {slo['ttft_s']:g} s, TPOT <= {slo['tpot_s'] * 1e3:g} ms): attainment "
        f"{s['slo_attainment'] * 100:.1f}%   goodput {s['goodput_rps']:.2f} req/s   "
        f"throughput {s['throughput_rps']:.2f} req/s over {s['makespan_s']:,.0f} s")
    per_tok = s["energy_per_output_token_j"]
    lines.append(
        f"cost ${s['cost_usd']:,.2f}   energy {_fmt_energy(s['energy_j'])}"
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
    header = (f"{'pool':<16}{'device':<10}{'role':<8}{'inst':>5}{'requests':>10}{'share':>7}"
              f"{'prefill tok':>13}{'decode tok':>12}{'util':>6}{'energy':>11}{'cost $':>10}")
    lines += ["", header]
    for name, p in s["pools"].items():
        lines.append(
            f"{name[:15]:<16}{p['device']:<10}{p['role']:<8}{p['instances']:>5}{p['requests']:>10,}"
            f"{p['share'] * 100:>6.1f}%{p['prefill_tokens']:>13,}{p['decode_tokens']:>12,}"
            f"{p['utilization'] * 100:>5.0f}%{_fmt_energy(p['energy_j']):>11}{p['cost_usd']:>10,.2f}")
    rate = s.get("sim_requests_per_s")
    lines += ["", f"simulated in {s['sim_wall_s']:.2f} s wall: {s['events']:,} events "
                  f"({s['events_per_request']:.2f} per request)"
                  + (f", {rate:,.0f} requests/s" if rate else "")]
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
    names = [p.name for p in result.cluster.pools for _ in p.instances]
    result.records.save(out / "requests.npz", names)
    written.append(out / "requests.npz")
    from simulator.plots import plot_latency_cdfs, plot_utilization

    written.append(plot_latency_cdfs(result, out / "latency_cdf.png"))
    written.append(plot_utilization(result, out / "utilization.png"))
    return written
