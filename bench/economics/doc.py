"""docs/ECONOMICS.md from the saved results: the method, each registered section under its numbered heading, and
the policy reference. Every figure in the text is read from the results dict, so `--doc-only` rebuilds the file
byte for byte.
"""
from __future__ import annotations

from pathlib import Path

from bench.economics.registry import SECTIONS

def write_doc(results: dict, path: Path) -> None:
    meta = results["meta"]
    lines = [
        "# Routing economics: the evidence",
        "",
        f"Produced by `python -m bench.economics` ({meta['date']}, Python {meta['python']}, {meta['machine']}) from "
        f"`bench/results/economics.json`; rerun it to regenerate this file (`--doc-only` rebuilds the text from the "
        "JSON). Every run replays the Azure 2023 conversation trace "
        f"({meta['trace_rows']:,} rows) scaled to {meta['requests']:,} requests: lengths resampled from the trace, "
        f"Poisson arrivals, difficulties from the default reach table, all from seed {meta['seed']}, so every "
        "configuration in a table sees the very same requests.",
        "",
        "## How quality, energy and cost are counted",
        "",
        "- **Quality.** Each request has a difficulty in [0, 1]; a model of capability c (MMLU / 100 for the "
        "built-in Llama 3 models) answers it correctly when c >= difficulty. Difficulties are drawn from a reach "
        "table (`simulator/quality.py`): 45% of queries within reach of Llama-3.2-1B, 62% of 3B, **71% of "
        "Llama-3.1-8B** (the edge-class anchor from the Intelligence per Watt study), 90% of 70B, 95% of 405B; "
        "5% beyond every model. `quality` is the share of all requests answered correctly (rejected ones are "
        "not). A trace column `difficulty` replaces the draw.",
        "- **Routers and verifiers.** `router_accuracy` a: the router's judgement of whether a model can answer "
        "is flipped for a share 1 - a of requests (a seeded hash of the request id). `detect_accuracy` v: the "
        "verifier classifies each answer correctly with probability v; a wrong answer it catches is re-served "
        "one tier up (an escalation, paying for both passes), and a right answer it wrongly flags is re-served "
        "too.",
        "- **Advisor.** On requests the router judges beyond the executor, the top tier reads the context and "
        "writes a 64-token plan, then the executor reads prompt + plan; the advised answer's capability is "
        "c_exec + 0.9 (c_advisor - c_exec) (`advisor_lift`, an assumption: the published Sonnet + Opus advisor "
        "result lands near, not at, the stronger model).",
        "- **Energy** (`energy kWh`): every provisioned instance's idle power over the run plus the "
        "activity-dependent power of every prefill and decode iteration (the calibrated roofline power model). "
        "**Served** energy and dollars count only busy time, split over the requests in each iteration: what a "
        "fleet scaled exactly to its load would use. Laptops are owned (no hourly price) but their energy counts.",
        "- **Cost** (`cost $`): instance price per hour x run length for every provisioned instance.",
        "- **Sizing.** In sections 1 and 2 the cloud, frontier, executor and advisor pools are sized to the fewest "
        "instances meeting 99% SLO attainment on the first 20,000 requests (or, where no size can, the fewest "
        "within half a point of the best attainable), so that cheaper never means under-provisioned. Sections 3 "
        "and 4 compare fixed fleets of equal price across arrival rates.",
        "",
    ]
    for number, section in enumerate(SECTIONS, 1):
        if section.name in results:
            lines += [f"## {number}. {section.title}", ""] + section.render(results[section.name])
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
    "`least-loaded` x0.1; staging `escalate` | `router_accuracy` (1.0), `router_seed` (0), `detect_accuracy` (0.9), "
    "`verifier_seed` (1), `max_attempts` (3), `slo_headroom` |",
    "| `cascade` | filter `lowest-tier`, scorer `predicted-latency`; staging `escalate` | `detect_accuracy`, "
    "`verifier_seed`, `max_attempts` |",
    "| `advisor` | filter `lowest-tier`, scorer `predicted-latency`; staging `advisor` | `advisor_plan_tokens` (64), "
    "`advisor_lift` (0.9), `router_accuracy`, `router_seed` |",
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
