"""docs/ECONOMICS.md from the saved results: the method, each registered section under its numbered heading, and
the policy reference. Every figure in the text is read from the results dict, so `--doc-only` rebuilds the file
byte for byte.
"""
from __future__ import annotations

from pathlib import Path

from bench.economics.registry import SECTIONS

def _reach(meta: dict) -> str:
    """The reach table as text: the share of queries within reach of each built-in model."""
    rows = meta["reach_table"]
    return ", ".join(f"{share * 100:.0f}% of {name}" for name, share in rows)


def _before_held_out(results: dict) -> list[str]:
    """Goodput-curve sections whose saved results predate choosing on the sizing seed."""
    return [name for name in ("disagg", "cross_device", "prefix") if name in results
            and "sizing_seed" not in results[name]]


# Sections whose policies pay for judgements (routers, verifiers).
JUDGED_SECTIONS = ("hybrid", "advisor", "quality")


def _judgements(results: dict) -> str:
    """How routers' and verifiers' passes were run, saying which sections' results predate pooled judges."""
    stale = [name for name in JUDGED_SECTIONS if name in results and results[name].get("judges") != "pooled"]
    text = ("Routers and verifiers are inference passes of their own (`scheduler/plugins/overhead.py`: prefill of the "
            "prompt, or prompt + answer, and one token; 8B router, 70B verifier by default, on H100s). A pass runs "
            "on the pool that serves the judge's model on its device (`simulator/judges.py`): a `serving: judge` "
            "pool, which takes no request, or a pool that also serves requests with that model (the 70B tier "
            "verifies on the 70B pool, the advisor's 8B executor pool routes). There it queues behind that pool's "
            "work, its energy and dollars are that pool's, and the pass it gates (the first pass after a router, "
            "the re-serve after a verifier) starts when its answer is out. A verifier checks only answers it could "
            "send up (not the top tier's, not the last attempt's).")
    if stale:
        text += (f" Exception: the saved results of {', '.join(stale)} predate this: there each judgement was "
                 "charged at batch 1 on an instance of its own that never queued (time, energy and dollars from "
                 "the performance model), optimistic for latency at high load, and every answer was checked.")
    return text


def write_doc(results: dict, path: Path) -> None:
    meta = results["meta"]
    advisor = results.get("advisor", {}).get("advisor_params", {})
    lines = [
        "# Routing economics: the evidence",
        "",
        f"Produced by `python -m bench.economics` ({meta['date']}, Python {meta['python']}, {meta['machine']}) from "
        f"`bench/results/economics.json`; rerun it to regenerate this file (`--doc-only` rebuilds the text from the "
        "JSON; `--section NAME` reruns one section, NAME in the heading's brackets; `--parallel N` runs the "
        "independent simulations as Ray tasks). Every run replays the Azure 2023 conversation trace "
        f"({meta['trace_rows']:,} rows) scaled to {meta['requests']:,} requests: lengths resampled from the trace, "
        "Poisson arrivals, difficulties from the default reach table. Each configuration runs once per evaluation "
        f"seed ({', '.join(map(str, meta['seeds']))}: other requests each time, the same requests for every "
        "configuration of a seed); figures are means with a 95% Student-t interval over the seeds in brackets, "
        "and comparisons are per seed, then averaged. Every choice a section makes (fleet size, chunked-prefill "
        f"token budget, prefill:decode split, operating rate) is made on a held-out slice (seed {meta['sizing_seed']}) "
        "that no evaluation seed replays, so no configuration is picked on the requests it is judged on"
        + (f" (except in the results of {', '.join(_before_held_out(results))}, saved before this rule: there "
           "variants and operating points were chosen over the evaluation seeds)" if _before_held_out(results) else "")
        + ". Every measured figure in the text is computed from the saved "
        "results; published figures quoted for context are cited where they appear.",
        "",
        "## How quality, energy and cost are counted",
        "",
        "- **Quality.** Each request has a difficulty in [0, 1]; a model of capability c (MMLU / 100 for the "
        "built-in Llama 3 models) answers it correctly when c >= difficulty, so capability is a nested threshold "
        "(a stronger model answers everything a weaker one does; 4-bit weights keep 96.1% of the capability, "
        "the Open LLM Leaderboard v2 recovery of Llama-3.1-8B-Instruct at w4a16). The quality section judges "
        "answers by real per-question results instead. "
        f"Difficulties are drawn from a reach table (`simulator/quality.py`): {_reach(meta)}; the rest beyond "
        "every model. The 8B anchor borrows the Intelligence per Watt study's 71.3%, which is the 2025 win/tie "
        "rate of the best local models (at most 20B active parameters) against frontier models, not a measured "
        "Llama-3.1-8B score; the other anchors are assumptions. `quality` is the share of all requests answered "
        "correctly (rejected ones are not). A trace column `difficulty` replaces the draw.",
        "- **Routers and verifiers.** `router_accuracy` a: the router's judgement of whether a model can answer "
        "is flipped for a share 1 - a of requests (a seeded hash of the request id). `detect_accuracy` v: the "
        "verifier classifies each answer correctly with probability v; a wrong answer it catches is re-served "
        "one tier up (an escalation, paying for both passes), and a right answer it wrongly flags is re-served "
        "too. " + _judgements(results),
        "- **Advisor.** On requests the router judges beyond the executor, the top tier reads the context and "
        f"writes a {advisor.get('advisor_plan_tokens', '')}-token plan, then the executor reads prompt + plan; "
        f"the advised answer's capability is c_exec + {advisor.get('advisor_lift', '')} (c_advisor - c_exec) "
        "(`advisor_lift`, an assumption: section 2 shows quality over a range of it).",
        "- **Energy** (`energy kWh`): board energy, GPU (or laptop package) power (the energy-boundary section "
        "adds host share, PUE and marginal energy): every "
        "provisioned instance's idle power over the run plus the activity-dependent power of every prefill and "
        "decode iteration (the calibrated roofline power model). **Busy-time** energy and dollars count an "
        "instance only while it runs an iteration, split over the requests in it; a GPU running a small batch is "
        "busy, so this is not load-proportional. **Fractional** fleets are: the pool the rule sizes is scaled to "
        "the real-valued size where attainment crosses the rule's threshold, energy and dollars interpolated "
        "between the whole sizes around it. Laptops are owned (no hourly price) but their energy counts.",
        "- **Cost** (`cost $`): instance price per hour x run length for every provisioned instance.",
        "- **Sizing** (sections 1 and 2, `bench/economics/fleet.py`). A pool is sized on a held-out slice of "
        f"requests (seed {meta['sizing_seed']}, no evaluation seed replays it) to the fewest whole instances "
        f"meeting {meta['sizing_target'] * 100:g}% SLO attainment, or, where no size can, the fewest within "
        f"{meta['sizing_near_best'] * 100:g} points of the best attainable; then judged on the evaluation seeds. "
        "Sections 3 and 4 compare fleets of equal price across arrival rates and TPOT SLOs, each family tuned "
        "the same way.",
        "",
    ]
    heads = [line for s in SECTIONS if s.name in results and s.headline for line in s.headline(results[s.name])]
    if heads:
        lines[lines.index("## How quality, energy and cost are counted"):0] = [
            "## Headlines", "", "Each as a range over the regimes named, with the widest 95% interval bounds; "
            "the sections below give every table behind them.", ""] + heads + [""]
    for number, section in enumerate(SECTIONS, 1):
        if section.name in results:
            lines += [f"## {number}. {section.title} [{section.name}]", ""] + section.render(results[section.name])
    lines += POLICY_REFERENCE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


POLICY_REFERENCE = [
    "## The policies and how to run them",
    "",
    "Each is a preset in `scheduler/policies/` over plugins in `scheduler/plugins/`, listed in "
    "`scheduler/registry.py`; weights and parameters live in the cluster YAML (`policy: {name, scorers, params, "
    "staging}`) or come from `infersched compare --param KEY=VALUE`.",
    "",
    "| policy | plugins | parameters (default) |",
    "| --- | --- | --- |",
    "| `cost-aware` | scorer `predicted-cost`: lowest predicted dollars among placements predicted to meet the "
    "SLO | `slo_headroom` (0.5: aim predictions at half the SLO) |",
    "| `energy-aware` | scorer `predicted-energy`: lowest predicted joules, likewise | `slo_headroom` |",
    "| `local-first` | scorer `local-first` (edge when within the edge model's judged reach and the SLO) + "
    "`least-loaded` x0.1; staging `escalate` | `router_accuracy` (1.0), `router_seed` (0), `router_model` "
    "(llama-3.1-8b), `router_device` (h100-sxm), `detect_accuracy` (0.85), `verifier_seed` (1), `verifier_model` "
    "(llama-3.1-70b), `verifier_device` (h100-sxm), `max_attempts` (3), `slo_headroom` |",
    "| `cascade` | filter `lowest-tier`, scorer `predicted-latency`; staging `escalate` | `detect_accuracy`, "
    "`verifier_seed`, `verifier_model`, `verifier_device`, `max_attempts` |",
    "| `advisor` | filter `lowest-tier`, scorer `predicted-latency`; staging `advisor` | `advisor_plan_tokens` (64), "
    "`advisor_lift` (0.9), `router_accuracy`, `router_seed`, `router_model`, `router_device` |",
    "| `conditional-disagg` | scorer `conditional-disagg` + `predicted-latency` x0.5 | `disagg_stall_factor` (1.0 x "
    "TPOT SLO), `disagg_min_prompt_tokens` (derived), `disagg_min_wait_s` (TTFT SLO / 4) |",
    "| `prefix-aware` | scorer `prefix-affinity` (share of the prompt in the instance's prefix cache, 0 above the "
    "load bound) + `predicted-latency` | `prefix_load_slack` (0.25); cluster key `prefix_cache: {enabled, "
    "block_tokens}` (true, 512) |",
    "",
    "Cross-device disaggregation needs no policy of its own: prefill and decode pools on different devices "
    "serving the same model (`deploy/clusters/cross-device.yaml`), placed by any policy, with the KV hand-over "
    "timed over the modelled link.",
    "",
    "```bash",
    "infersched compare --policies local-first,least-loaded@cloud-only --cluster edge-cloud \\",
    "    --trace ../shared/traces/azure2023/AzureLLMInferenceTrace_conv.csv --requests 100000 --rate 20 \\",
    "    --param router_accuracy=0.8 --out out/compare",
    "python -m bench.economics            # this document (--section NAME: one section)",
    "```",
    "",
]
