"""Section 5: prefix-aware vs least-loaded (and others) on a session trace with prefix reuse.

16 colocated H100s; the same requests at each rate for every policy; then the
load bound (`prefix_load_slack`) at the highest rate prefix-aware sustains.
"""
from __future__ import annotations

from simulator.jobs import WorkloadSpec
from simulator.sessions import reuse_stats, session_trace

from bench.economics.common import SEED, Section, cluster_file, pct, run_many, sweep

PREFIX_RATES = [200.0, 250.0, 300.0, 350.0, 375.0, 400.0, 425.0, 450.0, 475.0, 500.0]
PREFIX_POLICIES = ["least-loaded", "round-robin", "slo-aware", "prefix-aware"]
PREFIX_SLACKS = [0.0, 0.1, 0.25, 1.0, 1e9]  # 1e9: no load bound


def run(trace, n: int) -> dict:
    """16 colocated H100s (Llama-3.1-8B, default SLO 2 s / 100 ms) on the session trace
    (simulator/sessions.py): the same requests at each rate for every policy."""
    config = cluster_file("gpu-colocated")

    def sessions_at(rate: float):
        return WorkloadSpec(trace=trace.path, requests=n, rate_rps=rate, seed=SEED, sessions=True)

    out = sweep(sessions_at, [(p, config, p) for p in PREFIX_POLICIES], PREFIX_RATES, 0.99)
    # The rate only scales the arrival gaps: every rate has the same prefix structure.
    sessions = session_trace(trace, n, PREFIX_RATES[0], seed=SEED)
    out.update(reuse=reuse_stats(sessions), workload=sessions.path, slack=[])
    # The load bound: affinity vs hot spots, at the highest rate prefix-aware sustains.
    rate = out["max_rate_rps"]["prefix-aware"] or PREFIX_RATES[0]
    wl = sessions_at(rate)
    for r in run_many([(config, "prefix-aware", wl, {"prefix_load_slack": slack}) for slack in PREFIX_SLACKS]):
        r["rate_rps"] = rate
        out["slack"].append(r)
    return out


def render(px: dict) -> list[str]:
    reuse = px["reuse"]
    lines = ["The shared traces have no prompt content, so `simulator/sessions.py` gives the conversation trace's "
             "lengths a seeded prefix structure (64 apps with Zipf popularity and 1-4 block system prompts; half "
             "of requests continue one of the 1,024 most recent conversations, repeating its previous prompt), "
             "written as Mooncake-style 512-token block `hash_ids` (`infersched sessions`). "
             f"{pct(reuse['reusable_share'])} of its prompt tokens lie in prefixes an earlier prompt had: the most "
             "any cache can save. Every instance caches prompt blocks in the KV memory its requests leave free (LRU), "
             f"under every policy. 16 colocated H100s, Llama-3.1-8B, SLO TTFT <= {px['slo']['ttft_s']:g} s and TPOT "
             f"<= {px['slo']['tpot_s'] * 1e3:g} ms.", "",
             "| policy | rate req/s | prompt tokens from cache | prefill tokens computed | TTFT p50 | TTFT p99 | "
             "SLO attainment | busiest instance / mean |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for policy, runs in px["runs"].items():
        for r in runs:
            lines.append(f"| {policy} | {r['rate_rps']:g} | {pct(r['prefix_hit_rate'])} | "
                         f"{r['prefill_computed_tokens'] / 1e6:,.1f} M | {r['ttft_p50_s'] * 1e3:,.0f} ms | "
                         f"{r['ttft_p99_s'] * 1e3:,.0f} ms | {pct(r['slo_attainment'])} | "
                         f"{r['max_instance_load_ratio']:.2f} |")
    m = px["max_rate_rps"]
    lines += ["", "Highest rate with >= 99% SLO attainment: "
              + ", ".join(f"{p} {m[p]:g} req/s" for p in px["runs"]) + ".", ""]
    ll = {r["rate_rps"]: r for r in px["runs"]["least-loaded"]}
    pa = {r["rate_rps"]: r for r in px["runs"]["prefix-aware"]}
    both = [x for x in px["rates_rps"] if x in ll and x in pa and ll[x]["slo_attainment"] >= 0.99]
    if both:
        x = both[-1]
        saved = 1 - pa[x]["prefill_computed_tokens"] / ll[x]["prefill_computed_tokens"]
        lines += ["### What the numbers say", "",
                  f"- At {x:g} req/s, prefix-aware serves {pct(pa[x]['prefix_hit_rate'])} of prompt tokens from cache "
                  f"against {pct(ll[x]['prefix_hit_rate'])} for least-loaded: {pct(saved)} fewer prefill tokens "
                  f"computed; TTFT p50 {pa[x]['ttft_p50_s'] * 1e3:.0f} vs {ll[x]['ttft_p50_s'] * 1e3:.0f} ms, p99 "
                  f"{pa[x]['ttft_p99_s'] * 1e3:.0f} vs {ll[x]['ttft_p99_s'] * 1e3:.0f} ms; the busiest instance "
                  f"takes {pa[x]['max_instance_load_ratio']:.2f}x the mean number of requests "
                  f"({ll[x]['max_instance_load_ratio']:.2f}x under least-loaded).",
                  f"- Capacity within the SLO (>= 99% attainment): prefix-aware {m['prefix-aware']:g} req/s against "
                  f"{m['least-loaded']:g} for least-loaded ({m['prefix-aware'] / m['least-loaded']:.2f}x; the grid is "
                  "25 req/s near the knees), on the same 16 H100s.",
                  "- Least-loaded already hits the cache often: every instance soon holds the popular system "
                  "prompts, so what prefix-aware adds is the conversation history, which only the instance that "
                  "served the previous turn holds. Near saturation the saved prefill becomes capacity.", ""]
    lines += ["Load bound (`prefix_load_slack`, prefix-aware at "
              f"{px['slack'][0]['rate_rps']:g} req/s): affinity only counts on an instance whose queued + running "
              "sequences, with the request added, stay within ceil((1 + slack) x (all sequences + 1) / instances).", "",
              "| prefix_load_slack | prompt tokens from cache | TTFT p50 | TTFT p99 | busiest instance / mean |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for r in px["slack"]:
        slack = r["params"]["prefix_load_slack"]
        lines.append(f"| {'unbounded' if slack >= 1e9 else f'{slack:g}'} | {pct(r['prefix_hit_rate'])} | "
                     f"{r['ttft_p50_s'] * 1e3:,.0f} ms | {r['ttft_p99_s'] * 1e3:,.0f} ms | "
                     f"{r['max_instance_load_ratio']:.2f} |")
    lines.append("")
    return lines



SECTION = Section("prefix", "Prefix-aware vs least-loaded on a trace with prefix reuse", run, render)
