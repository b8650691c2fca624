"""Section: quality judged by real per-question results instead of the nested difficulty threshold.

The matrix is MMLU-Pro's published per-question outputs of real models (TIGER-AI-Lab/MMLU-Pro,
Apache-2.0, `eval_results/model_outputs_*_5shots.zip`), converted with
`python -m simulator.quality_matrix mmlu-pro` to `bench/out/mmlu_pro_correctness.csv.gz`; it is
not bundled (the doc says how to rebuild it). No per-question results of Llama-3.1-405B are
published there, so the frontier tier answers with gemini-1.5-pro-002's column, a stated proxy.
Each configuration runs twice on the same requests: judged by the threshold (simulator/quality.py)
and by the matrix (simulator/quality_matrix.py). Without the matrix the section says how to get it.
"""
from __future__ import annotations

from scheduler.config import SloConfig, parse_cluster
from simulator.jobs import SimJob, run_job

from bench.economics import common
from bench.economics.common import Section, cluster_file, pct, poisson, summaries_of
from bench.economics.stats import ci95

MATRIX = common.ROOT / "bench" / "out" / "mmlu_pro_correctness.csv.gz"
SOURCE = ("TIGER-AI-Lab/MMLU-Pro (github.com/TIGER-AI-Lab/MMLU-Pro, Apache License 2.0), eval_results/"
          "model_outputs_{Meta-Llama-3_1-8B-Instruct, Meta-Llama-3_1-70B-Instruct, gemini-1.5-pro-002}_5shots.zip "
          "at commit f418b11")
FRONTIER_PROXY = "gemini-1.5-pro-002"
COLUMNS = (("llama-3.1-405b", FRONTIER_PROXY),)
SLO = SloConfig(ttft_s=5.0, tpot_s=0.1)
RATE_RPS = 5.0
VERIFIER_ACCURACY = 0.85  # scheduler/plugins/staging.py PUBLISHED_JUDGE_ACCURACY
LIFTS = (0.5, 0.9)
ROUTERS = (0.8, 1.0)


def _only(name: str, model: str, chips: int, instances: int, quantization: str | None = None):
    pool = {"name": name, "device": "h100-sxm", "instances": instances, "chips_per_instance": chips,
            "model": model, "role": "both", "chunked_prefill": True, "token_budget": 8192}
    if quantization:
        pool["quantization"] = quantization
    return parse_cluster({"name": name, "slo": {"ttft_s": SLO.ttft_s, "tpot_s": SLO.tpot_s}, "pools": [pool]})


def _configs():
    """(label, cluster, policy, params)."""
    out = [("frontier-only (405B)", cluster_file("frontier", SLO), "least-loaded", {}),
           ("70B only", _only("only-70b", "llama-3.1-70b", 2, 2, "fp8"), "least-loaded", {}),
           ("8B only", _only("only-8b", "llama-3.1-8b", 1, 4), "least-loaded", {}),
           ("cascade 8B -> 70B -> 405B", cluster_file("tiers", SLO), "cascade",
            {"detect_accuracy": VERIFIER_ACCURACY})]
    for router in ROUTERS:
        for lift in LIFTS:
            out.append((f"advisor, router {router:g}, lift {lift:g}", cluster_file("advisor", SLO), "advisor",
                        {"router_accuracy": router, "advisor_lift": lift}))
    return out


def _matrix_facts() -> dict:
    from simulator.quality_matrix import CorrectnessMatrix

    m = CorrectnessMatrix.read_csv(MATRIX)
    col = {name: m.correct[:, m.models.index(name)] for name in ("llama-3.1-8b", "llama-3.1-70b", FRONTIER_PROXY)}
    return {"questions": len(m.question_ids), "accuracy": {k: float(v.mean()) for k, v in col.items()},
            "small_right_70b_wrong": float((col["llama-3.1-8b"] & ~col["llama-3.1-70b"]).mean()),
            "small_right_frontier_wrong": float((col["llama-3.1-8b"] & ~col[FRONTIER_PROXY]).mean()),
            "any_right": float((col["llama-3.1-8b"] | col["llama-3.1-70b"] | col[FRONTIER_PROXY]).mean())}


def run_section(trace, n: int) -> dict:
    if not MATRIX.exists():
        return {"matrix": None}
    configs = _configs()
    jobs, keys = [], []
    for seed in common.SEEDS:
        wl = poisson(trace, n, RATE_RPS, seed)
        for label, cluster, policy, params in configs:
            for judged in ("threshold", "matrix"):
                jobs.append(SimJob(f"{label} ({judged}) seed {seed}", wl, cluster, policy, dict(params), seed,
                                   quality_matrix=str(MATRIX) if judged == "matrix" else None,
                                   quality_columns=COLUMNS))
                keys.append((label, judged))
    runs: dict = {label: {"threshold": [], "matrix": []} for label, *_ in configs}
    for (label, judged), s in zip(keys, summaries_of(jobs, run_job)):
        runs[label][judged].append({"quality": s["quality"], "cost_usd": s["cost_usd"], "energy_j": s["energy_j"],
                                    "slo_attainment": s["slo_attainment"], "escalations": s["escalations"],
                                    "advised_requests": s["advised_requests"], "requests": s["requests"]})
    return {"matrix": str(MATRIX.relative_to(common.ROOT)), "source": SOURCE, "frontier_proxy": FRONTIER_PROXY,
            "facts": _matrix_facts(), "rate_rps": RATE_RPS, "verifier_accuracy": VERIFIER_ACCURACY,
            "slo": {"ttft_s": SLO.ttft_s, "tpot_s": SLO.tpot_s}, "configs": [c[0] for c in configs], "runs": runs}


def _q(res, label, judged):
    return ci95(r["quality"] for r in res["runs"][label][judged])


def render(res: dict) -> list[str]:
    if not res.get("matrix"):
        return ["No correctness matrix was found at `bench/out/mmlu_pro_correctness.csv.gz`, so quality is only "
                "the threshold model's (section 2 shows it as a range over `advisor_lift` and router accuracy). "
                "To build it: take `eval_results/model_outputs_*_5shots.zip` from github.com/TIGER-AI-Lab/MMLU-Pro "
                "(Apache-2.0), unzip, and run `python -m simulator.quality_matrix mmlu-pro "
                "bench/out/mmlu_pro_correctness.csv.gz llama-3.1-8b=...8B-Instruct...json "
                "llama-3.1-70b=...70B-Instruct...json gemini-1.5-pro-002=...json`.", ""]
    f = res["facts"]
    acc = f["accuracy"]
    frontier = res["configs"][0]
    lines = [
        f"Answers judged by real per-question results: {f['questions']:,} MMLU-Pro questions answered by "
        f"Llama-3.1-8B-Instruct ({pct(acc['llama-3.1-8b'])} right), Llama-3.1-70B-Instruct "
        f"({pct(acc['llama-3.1-70b'])}) and, standing in for the 405B frontier tier (no per-question 405B "
        f"results are published there), {res['frontier_proxy']} ({pct(acc[res['frontier_proxy']])}). Source: "
        f"{res['source']}; the matrix is rebuilt with `python -m simulator.quality_matrix mmlu-pro` and not "
        f"bundled. Each request draws a question; it is right when the model that answered it got that question "
        f"right (4-bit pools keep 96.1% of right answers; an advised answer is right when the executor's is, or "
        f"with probability `advisor_lift` when the advisor's is). Capability is not nested: the 8B model answers "
        f"{pct(f['small_right_70b_wrong'])} of the questions that 70B gets wrong, and "
        f"{pct(f['small_right_frontier_wrong'])} that the frontier proxy gets wrong; "
        f"{pct(f['any_right'])} are answered by at least one of the three. {res['rate_rps']:g} req/s, SLO TTFT "
        f"<= {res['slo']['ttft_s']:g} s; the cascade's verifier is priced and {res['verifier_accuracy']:g} "
        "accurate. The same requests run under the threshold model (default reach table) and under the matrix.",
        "",
        "| configuration | quality, threshold | quality, matrix | of frontier-only, threshold | "
        "of frontier-only, matrix | SLO |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {j: _q(res, frontier, j).mean for j in ("threshold", "matrix")}
    for label in res["configs"]:
        t, m = _q(res, label, "threshold"), _q(res, label, "matrix")
        slo = ci95(r["slo_attainment"] for r in res["runs"][label]["matrix"]).mean
        lines.append(f"| {label} | {t.fmt('.2f', 100, '%')} | {m.fmt('.2f', 100, '%')} | "
                     f"{pct(t.mean / base['threshold'])} | {pct(m.mean / base['matrix'])} | {pct(slo)} |")
    advisors = [c for c in res["configs"] if c.startswith("advisor")]
    rel = {j: [_q(res, c, j).mean / base[j] for c in advisors] for j in ("threshold", "matrix")}
    cascade = res["configs"][3]
    lines += [
        "",
        "### What the numbers say",
        "",
        f"- Over router accuracy {', '.join(f'{r:g}' for r in ROUTERS)} and `advisor_lift` "
        f"{', '.join(f'{x:g}' for x in LIFTS)}, the advisor reaches {pct(min(rel['threshold']))}-"
        f"{pct(max(rel['threshold']))} of frontier-only quality under the threshold model and "
        f"{pct(min(rel['matrix']))}-{pct(max(rel['matrix']))} when answers are judged by the matrix.",
        f"- The cascade reaches {pct(_q(res, cascade, 'threshold').mean / base['threshold'])} of frontier-only "
        f"quality under the threshold and {pct(_q(res, cascade, 'matrix').mean / base['matrix'])} under the "
        "matrix. With real answers a higher tier can be wrong where a lower one was right, so a combination can "
        "beat the frontier alone: it keeps the 8B model's right answers on questions the frontier misses. Where "
        "that shows above 100%, it is partly the router's and verifier's knowledge: an oracle router (accuracy "
        "1) sees per-question correctness, which no deployed router does.",
        "- The matrix is one benchmark (multiple-choice MMLU-Pro), not the conversation trace's prompts: it "
        "replaces the nested threshold's shape with a measured one, not the workload's difficulty mix.",
        "",
    ]
    return lines


SECTION = Section("quality", "Quality from real per-question results", run_section, render)
