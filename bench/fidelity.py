"""Predicted vs published figures per device; writes docs/FIDELITY.md and bench/results/fidelity.json.

Every figure in the document comes from this script: published single-stream
output speeds (tokens/s per user, batch 1) with their source and date, the
model's prediction (`workers.predict.predict`, smallest instance that holds
the model, 1,024-token context), the signed error, whether the source says
speculative decoding was used, and the figure's kind: fitted (a device
constant was set from it), not fitted (never used to set one; do not tune a
constant to it: move it to fitted and say so instead), or superseded (serving
software the vendor has replaced; shown, not scored). The median |error| is
over every not-fitted figure. The H100 tables rerun `infersched model check`
and bench/model_holdout.py's splits on ../shared/calibration.

    python bench/fidelity.py      # ~15 s
"""
from __future__ import annotations

import json
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from workers.calibration import run_model_check  # noqa: E402
from workers.devices import get_device  # noqa: E402
from workers.edge_devices import PHONE_POWER_RANGE_W  # noqa: E402
from workers.models import get_model, with_dtype  # noqa: E402
from workers.predict import predict  # noqa: E402

CSV = ROOT.parent / "shared" / "calibration" / "h100_llama-3.1-8b.csv"
AA_OSS = ("Artificial Analysis, gpt-oss-120B (low) API providers page "
          "(artificialanalysis.ai/models/gpt-oss-120b-low/providers)")
GROQ_LIMITS = "Groq rate-limits guide quoting GroqCloud speeds (aipromptshub.co/limits/groq-rate-limits)"
GROQ_SPECDEC = ("Groq llama-3.1-70b-specdec release, \"from 250 T/s to 1660 T/s\", Artificial Analysis measured 1,665 "
                "(theaiobserver.com/?p=321)")
CEREBRAS_OCT24 = ("Cerebras release \"Llama3.1-70B breaks 2,100 tokens/s\"; its notes (kernels rewritten, \"also "
                  "implements speculative decoding\") quoted at news.ycombinator.com/item?id=41942582")
LAUNCH = "Cerebras Inference launch press release"
NEURAPLUS = ("neuraplus-ai.github.io/blog/groq-lpu-vs-gpu-latency-test-results (50-run averages, temperature 0, "
             "max_tokens 512)")
AA_MAVERICK = ("Artificial Analysis per-user speeds for Llama 4 Maverick, as reported with NVIDIA's B200 record "
               "(en.gamegpu.com/iron/nvidia-hit-record-text-generation-speed-with-llama-4-maverick-1038-tokens-per-second)")
VAL_TOWN = ("Val Town Cerebras template: 8B, 70B and 3.3 70B \"at a jaw-dropping 2k tokens per second\" "
            "(val.town/v/cory16457/cerebrasTemplate)")
TOKENOMICS = ("SemiAnalysis Tokenomics, Cerebras page (tokenomics.info/cerebras), from the Artificial Analysis "
              "Cerebras provider page")
KIMI_K26 = ("Artificial Analysis measurement of Cerebras serving Kimi K2.6, as reported "
            "(generalinput.com/blog/cerebras-kimi-k2-6-inference-speed-generative-ui; axbrief.com)")
NIM_70B = ("NVIDIA NIM LLM benchmarking, performance page: Llama-3.3-70b-instruct on 2 x H100 80G "
           "(docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance)")

# Kinds of figure: FITTED set a device constant; TEST was never used to set one (do not tune a
# constant to it: move it to FITTED and say so instead); SUPERSEDED describes serving software
# the vendor has since replaced, so it is shown but neither fitted to nor scored.
FITTED, TEST, SUPERSEDED = "fitted", "not fitted", "superseded"
# Speculative decoding behind a figure: the source says it was used, says it was not, or is silent.
SPEC_YES, SPEC_NO, SPEC_UNSTATED = "yes", "no", "not stated"

# Serving software, where the source or its date places the figure.
AT_LAUNCH = {"software": "Cerebras Inference launch (Aug 2024)"}
AFTER_OCT24 = {"software": "Cerebras Inference after its Oct 2024 release"}

# (device, model, published tokens/s per user, kind, speculative decoding, source, date, note[, setup])
FIGURES = [
    ("wse-3", "llama-3.1-8b", 2000.0, FITTED, SPEC_UNSTATED,
     VAL_TOWN + "; Continue's Cerebras provider docs: \"2000+\"", "2025-01-17",
     "sets the wafer's fixed latency per layer", AFTER_OCT24),
    ("groq-lpu", "llama-3.1-8b", 877.0, FITTED, SPEC_NO, "Artificial Analysis benchmark of Groq, Llama 3 8B",
     "2024-04", ""),
    ("groq-lpu", "llama-3.1-70b", 284.0, FITTED, SPEC_NO, "Artificial Analysis benchmark of Groq, Llama 3 70B",
     "2024-04", ""),
    ("wse-3", "llama-3.1-8b", 1800.0, SUPERSEDED, SPEC_NO, LAUNCH, "2024-08-27",
     "launch software, not used", AT_LAUNCH),
    ("wse-3", "llama-3.1-70b", 450.0, SUPERSEDED, SPEC_NO, LAUNCH + " (4 CS-3 systems)", "2024-08-27",
     "launch software, wafer IO synchronous with compute; not used", AT_LAUNCH),
    ("wse-3", "llama-3.1-70b", 2100.0, TEST, SPEC_YES, CEREBRAS_OCT24, "2024-10-24", "",
     {"software": "Cerebras Inference Oct 2024 release"}),
    ("wse-3", "llama-3.1-70b", 2314.0, TEST, SPEC_UNSTATED,
     "Artificial Analysis figure quoted by Cerebras' Hagay Lupesko, as reported "
     "(anintent.com/blog/cerebras-cs-3-low-latency-inference-api)", "2025 (page as stored)",
     "Llama 3.3 70B, the 3.1 70B shape", AFTER_OCT24),
    ("wse-3", "llama-3.1-70b", 2000.0, TEST, SPEC_UNSTATED, VAL_TOWN, "2025-01-17",
     "the same sentence as the fitted 8B figure: \"3.1 70b, and 3.3 70b\" at 2k", AFTER_OCT24),
    ("wse-3", "llama-3.1-405b", 969.0, TEST, SPEC_UNSTATED, "Cerebras Llama 3.1 405B announcement, as reported "
     "(tomshardware.com, 2024-11-20; ailearningguides.com/cerebras-llama-405b-969-tokens-second)", "2024-11-18", "",
     AFTER_OCT24),
    ("wse-3", "gpt-oss-120b", 1844.1, TEST, SPEC_UNSTATED, AA_OSS, "2026 (page as stored)", "", AFTER_OCT24),
    ("wse-3", "gpt-oss-120b", 3000.0, TEST, SPEC_UNSTATED, "Cerebras gpt-oss-120b announcement, as reported "
     "(ailearningguides.com/cerebras-llama-405b-969-tokens-second)", "2025-08", "vendor peak claim", AFTER_OCT24),
    ("wse-3", "gpt-oss-120b", 2059.0, TEST, SPEC_UNSTATED, TOKENOMICS, "2026 (page as stored)",
     "the figure it anchors its curve on", AFTER_OCT24),
    ("wse-3", "kimi-k2", 981.0, TEST, SPEC_UNSTATED, KIMI_K26, "2026-05-06",
     "Kimi K2.6, predicted with the built-in kimi-k2 shape and fp8 weights (assumption: K2.6 keeps K2's "
     "1T-parameter MoE); the source states neither dtype nor wafers", AFTER_OCT24),
    ("wse-3", "llama-4-maverick", 2500.0, TEST, SPEC_UNSTATED, "Cerebras Llama 4 Maverick announcement, quoted in "
     "news.ycombinator.com/item?id=44141728", "2025-05", "", AFTER_OCT24),
    ("wse-3", "llama-4-scout", 2600.0, TEST, SPEC_UNSTATED, "Vellum LLM leaderboard, Llama 4 Scout on Cerebras "
     "(troy-technical.com, 2026-06-06)", "2026-06", "", AFTER_OCT24),
    ("wse-3", "qwen3-235b-a22b", 1500.0, TEST, SPEC_UNSTATED, "Cerebras inference docs, model page qwen-3-235b "
     "(inference-docs.cerebras.ai/models/qwen-3-235b)", "2025 (page as stored)", "", AFTER_OCT24),
    ("groq-lpu", "llama-3.1-70b", 250.0, TEST, SPEC_NO, GROQ_SPECDEC, "2024-10", "the endpoint before specdec",
     {"software": "GroqCloud llama-3.1-70b endpoint"}),
    ("groq-lpu", "llama-3.1-70b", 1665.0, TEST, SPEC_YES, GROQ_SPECDEC, "2024-10", "llama-3.1-70b-specdec",
     {"software": "GroqCloud llama-3.1-70b-specdec endpoint"}),
    ("groq-lpu", "gpt-oss-120b", 476.0, TEST, SPEC_UNSTATED, "Artificial Analysis measurement of Groq, as reported "
     "(ailearningguides.com/cerebras-llama-405b-969-tokens-second)", "2025", ""),
    ("groq-lpu", "gpt-oss-120b", 500.0, TEST, SPEC_UNSTATED, GROQ_LIMITS, "2026 (page as stored)", ""),
    ("groq-lpu", "llama-3.1-8b", 560.0, TEST, SPEC_UNSTATED, GROQ_LIMITS, "2026 (page as stored)",
     "llama-3.1-8b-instant"),
    ("groq-lpu", "llama-3.1-70b", 280.0, TEST, SPEC_UNSTATED, GROQ_LIMITS, "2026 (page as stored)",
     "llama-3.3-70b-versatile, the 3.1 70B shape"),
    ("groq-lpu", "gpt-oss-20b", 1000.0, TEST, SPEC_UNSTATED, GROQ_LIMITS, "2026 (page as stored)", ""),
    ("groq-lpu", "mixtral-8x7b", 480.0, TEST, SPEC_UNSTATED, NEURAPLUS, "2026 (page as stored)", ""),
    ("groq-lpu", "llama-3.1-8b", 750.0, TEST, SPEC_UNSTATED, NEURAPLUS, "2026 (page as stored)", ""),
    ("groq-lpu", "llama-3.1-70b", 270.0, TEST, SPEC_UNSTATED, NEURAPLUS, "2026 (page as stored)",
     "Llama 3.3 70B, the 3.1 70B shape"),
    ("groq-lpu", "llama-4-maverick", 276.0, TEST, SPEC_UNSTATED, AA_MAVERICK, "2025-05", ""),
    ("groq-lpu", "mixtral-8x7b", 812.0, TEST, SPEC_UNSTATED, "100 requests to GroqCloud, median "
     "(dataku-5px.pages.dev/blog/groq-lpu-800-tokens-per-second-inference-speed)", "2024-02", ""),
    # NVIDIA's NIM benchmarks state the whole setup; tokens/s is 1 / ITL at concurrency 1.
    ("h100-sxm", "llama-3.1-70b", 1000.0 / 18.58, TEST, SPEC_UNSTATED, NIM_70B, "2026 (page as stored)",
     "Llama 3.3 70B; fp8, TP2; 5,000 prompt / 500 output tokens, ITL 18.58 ms",
     {"software": "NVIDIA NIM 1.8.0", "dtype_bytes": 1.0, "chips": 2, "context": 5250}),
    ("h100-sxm", "llama-3.1-70b", 1000.0 / 18.91, TEST, SPEC_UNSTATED, NIM_70B, "2026 (page as stored)",
     "Llama 3.3 70B; fp8, TP2; 500 prompt / 2,000 output tokens, ITL 18.91 ms",
     {"software": "NVIDIA NIM 1.8.0", "dtype_bytes": 1.0, "chips": 2, "context": 1500}),
]
# A figure's setup where its source states one (weight bytes, chips, mean context while decoding);
# otherwise the smallest instance that holds the model at its own dtype and a 1,024-token context.
DEFAULT_CONTEXT = 1024
# Setup keys: software (the serving release, where the source or its date places it), dtype_bytes,
# chips, context.

# Neither vendor names its draft model or acceptance rate. A figure whose source says speculative
# decoding was used is predicted with it (workers/speculative.py, fastest draft length) over a
# stated acceptance range, not fitted: the draft is the family's smallest model and the range is
# the span Leviathan, Kalman and Matias (2023, Table 3) measured across their draft/target pairs.
# The figure is scored against the middle of the range.
SPEC_DRAFT = "llama-3.2-1b"
SPEC_ACCEPTANCE = (0.5, 0.7, 0.9)  # low, scored, high

# Devices with no figure in FIGURES, and why.
NO_FIGURES = {
    "h100-sxm": "fitted to 24 measured points (below); NVIDIA's NIM 70B figures above are not fitted",
    "h200": "nothing fitted (H100 constants reused); no sourced single-stream figure found yet",
    "b200": "nothing fitted (H100 constants reused); NVIDIA's per-user records use speculative decoding "
            "with drafts and acceptance rates they do not state, none listed",
    "m4-max": "fitted to published llama.cpp Q4_K_M figures (workers/edge_devices.py); none held out",
    "phone": "speeds fitted to Qualcomm AI Hub's Snapdragon 8 Elite figures, power to measured whole-device power of "
             f"a Snapdragon 8 Elite phone ({PHONE_POWER_RANGE_W[0]:.1f} W on the NPU; 8B on the CPU "
             f"{PHONE_POWER_RANGE_W[1]:.1f} W, the range docs/ECONOMICS.md shows) (workers/edge_devices.py); none held out",
}


def predictions() -> list[dict]:
    rows = []
    for device, model, published, kind, spec, source, when, note, *rest in FIGURES:
        setup = rest[0] if rest else {}
        dev, spec_model = get_device(device), get_model(model)
        if "dtype_bytes" in setup:
            spec_model = with_dtype(spec_model, setup["dtype_bytes"])
        where = {"batch": 1, "context": setup.get("context", DEFAULT_CONTEXT), "chips": setup.get("chips")}
        r = predict(dev, spec_model, **where)
        predicted = plain = r["decode_tokens_per_s"]
        row = {"device": device, "model": model, "published_tokens_s": published, "plain_tokens_s": plain,
               "kind": kind, "speculative_decoding": spec, "source": source, "date": when, "note": note,
               "chips": r["chips"], "context": where["context"], "software": setup.get("software", "not stated")}
        if spec == SPEC_YES:
            low, mid, high = (predict(dev, spec_model, **where, draft=get_model(SPEC_DRAFT),
                                      acceptance=a)["decode_tokens_per_s"] for a in SPEC_ACCEPTANCE)
            predicted = mid
            row["speculative_range_tokens_s"] = [low, high]
        row.update(predicted_tokens_s=predicted, error=(predicted - published) / published)
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> list[str]:
    out = ["| device | model | chips | published tok/s | predicted | error | spec. decoding | software | source "
           "| date |",
           "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        note = f" ({r['note']})" if r["note"] else ""
        out.append(f"| {r['device']} | {r['model']} | {r['chips']} | {r['published_tokens_s']:,.0f} | "
                   f"{r['predicted_tokens_s']:,.0f} | {r['error'] * 100:+.0f}% | {r['speculative_decoding']} | "
                   f"{r['software']} | "
                   f"{r['source']}{note} | {r['date']} |")
    return out


def h100_tables() -> tuple[list[str], dict]:
    import model_holdout

    check = run_model_check("h100-sxm", "llama-3.1-8b", CSV)
    s = check["summary"]
    lines = ["| | median abs error | max abs error | target |", "| --- | ---: | ---: | ---: |",
             f"| latency | {s['latency_median_abs_error'] * 100:.1f}% | {s['latency_max_abs_error'] * 100:.1f}% "
             "| <= 5% |",
             f"| energy per token | {s['energy_median_abs_error'] * 100:.1f}% | "
             f"{s['energy_max_abs_error'] * 100:.1f}% | <= 10% |", "",
             "Fitted terms:", "", "| term | value |", "| --- | ---: |"]
    lines += [f"| `{t['term']}` | {t['value']:.4g} |" for t in check["terms"]]
    rows = model_holdout.load_measurements(CSV)
    held = {}
    for name, train_if in {"context > 4,096 tokens (fit on the 18 shorter rows)": lambda m: m.tokens_per_seq <= 4096,
                           "decode batch >= 128 (fit on the other 21)": lambda m: m.phase == "prefill"
                           or m.batch <= 64}.items():
        train = [m for m in rows if train_if(m)]
        test = [m for m in rows if not train_if(m)]
        held[name] = model_holdout.summary(model_holdout.errors(model_holdout.fit(train), test))
    loo = []
    for i in range(len(rows)):
        loo += model_holdout.errors(model_holdout.fit(rows[:i] + rows[i + 1:]), [rows[i]])
    held["leave one out (24 fits)"] = model_holdout.summary(loo)
    lines += ["", "Held out (the same fitting procedure on part of the rows, scored on the rest):", "",
              "| held out | latency median / max | energy median / max |", "| --- | ---: | ---: |"]
    for name, h in held.items():
        lines.append(f"| {name} | {h['latency_median_abs_error'] * 100:.1f}% / {h['latency_max_abs_error'] * 100:.1f}% "
                     f"| {h['energy_median_abs_error'] * 100:.1f}% / {h['energy_max_abs_error'] * 100:.1f}% |")
    return lines, {"check": s, "held_out": held}


def _in_range(row: dict) -> bool:
    low, high = row["speculative_range_tokens_s"]
    return low <= row["published_tokens_s"] <= high


def _median(rows: list[dict]) -> float:
    return statistics.median(abs(r["error"]) for r in rows)


# Rows added with the resident-read wafer structure (2026-12-07), for the cut over the rows listed before it.
ADDED_2026_12_07 = {("wse-3", "gpt-oss-120b", 2059.0), ("wse-3", "kimi-k2", 981.0), ("groq-lpu", "llama-3.1-8b", 560.0),
                    ("groq-lpu", "llama-3.1-70b", 280.0), ("wse-3", "llama-3.1-70b", 2000.0),
                    ("groq-lpu", "llama-3.1-8b", 750.0), ("groq-lpu", "llama-3.1-70b", 270.0),
                    ("groq-lpu", "llama-4-maverick", 276.0)}

# Figures found with a stated speed that are not scored: no built-in shape, or another chip.
NOT_SCORED = [
    ("wse-3", "Qwen3-32B (dense)", "~2,100, later ~2,600", "Cerebras inference docs, model page qwen-3-32b "
     "(inference-docs.cerebras.ai/models/qwen-3-32b), two versions of the page", "no built-in qwen3-32b shape"),
    ("wse-3", "GLM 4.7", "1,201", TOKENOMICS, "no built-in GLM shape"),
    ("wse-3", "qwen-3.8-27b", "~1,850", "Cerebras model list as quoted in a Cerebras skill page "
     "(skills.sh/terminalskills/skills/cerebras), Oct 2026", "no built-in shape"),
    ("wse-3", "DeepSeek V3", "1,350", TOKENOMICS, "an estimate from the page's own curve, not a measurement"),
    ("wse-3", "gpt-oss-120b", "~1,700", "gogoai.xin, \"Cerebras claims world's fastest LLM inference speed\"",
     "users' reports through a chain of free relays; no setup stated"),
    ("groq-lpu", "Llama 3.3 70B", "500+", "theneuralbase.com Groq tutorial, \"Tokens per second: what to expect\"",
     "a tutorial's claim; no measurement or setup stated"),
    ("b200", "Llama 4 Maverick", "1,038", AA_MAVERICK, "EAGLE-3 speculative decoding with draft heads the "
     "step model does not price (NVIDIA's record, fp8, 8 GPUs)"),
    ("SambaNova, Amazon", "Llama 4 Maverick", "792, 291", AA_MAVERICK, "no SambaNova device; Amazon's hardware "
     "not stated"),
    ("groq-lpu, wse-3", "Llama 3.1 8B, Llama 3.3 70B", "Groq 780, 330; Cerebras 720, 290",
     "kickllm.com/research/llm-speed-benchmark.html (April 2026)", "aggregated from provider documentation, "
     "Artificial Analysis and the author's tests without saying which figure came from where"),
    ("groq-lpu", "Llama 3.1 8B, Llama 3.3 70B", "750, 280", "tokenwisehq.com/free-tools/model-speed",
     "no source or method stated (nor does the rate-limits guide scored above, kept as it was listed "
     "before)"),
    ("WSE-2", "Llama 3 8B / Qwen2-72B", "2,700 / 840", "WaferLLM (He et al., OSDI 2025, arXiv:2502.04563), "
     "16-bit, per request", "a research system on the previous wafer (WSE-2)"),
]

def launch_gap() -> dict:
    """The launch pair read through today's structure: the launch 8B sets a launch per-layer latency;
    the 70B on four wafers then leaves time per token the structure does not price (synchronous
    wafer IO, by the October 2024 notes). For reading only: no constant is set from it."""
    wse = get_device("wse-3")
    m8, m70 = get_model("llama-3.1-8b"), get_model("llama-3.1-70b")
    today8 = 1.0 / predict(wse, m8, batch=1, context=DEFAULT_CONTEXT)["decode_tokens_per_s"]
    today70 = 1.0 / predict(wse, m70, batch=1, context=DEFAULT_CONTEXT)["decode_tokens_per_s"]
    per_layer_slower_s = (1.0 / 1800.0 - today8) / m8.layers
    launch70 = today70 + m70.layers * per_layer_slower_s
    gap_s = 1.0 / 450.0 - launch70
    return {"launch_per_layer_s": wse.decode_overhead_per_layer_s + per_layer_slower_s,
            "launch_70b_tokens_s": 1.0 / launch70, "gap_s": gap_s, "gap_per_boundary_s": gap_s / 3}


def implied_layers(rows: list[dict]) -> list[str]:
    """Wafer rows: the time per layer each published speed implies (1 / tokens/s / layers) next to the model's."""
    out = ["| model | layers | wafers | published tok/s | implied us/layer | model us/layer |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["device"] != "wse-3" or r["kind"] == SUPERSEDED:
            continue
        layers = get_model(r["model"]).layers
        out.append(f"| {r['model']} | {layers} | {r['chips']} | {r['published_tokens_s']:,.0f} | "
                   f"{1e6 / r['published_tokens_s'] / layers:.1f} | {1e6 / r['plain_tokens_s'] / layers:.1f} |")
    return out


def main() -> None:
    rows = predictions()
    not_fitted = [r for r in rows if r["kind"] == TEST]
    median = _median(not_fitted)
    unspeculative = [r for r in not_fitted if r["speculative_decoding"] != SPEC_YES]
    dense = [r for r in not_fitted if not get_model(r["model"]).is_moe]
    moe = [r for r in not_fitted if get_model(r["model"]).is_moe]
    medians = {"all": median, "without_stated_speculative_decoding": _median(unspeculative),
               "dense": _median(dense), "moe": _median(moe),
               **{d: _median([r for r in not_fitted if r["device"] == d]) for d in ("wse-3", "groq-lpu", "h100-sxm")}}
    before = [r for r in not_fitted if (r["device"], r["model"], round(r["published_tokens_s"], 1))
              not in ADDED_2026_12_07]
    medians["rows_listed_before_2026_12_07"] = _median(before)
    speculative = [r for r in rows if r["speculative_decoding"] == SPEC_YES]
    gap = launch_gap()
    h100_lines, h100 = h100_tables()
    doc = [
        "# Fidelity: predictions against published figures",
        "",
        f"Generated by `python bench/fidelity.py` on {date.today()}; every number below comes from that script.",
        "Speeds are single-stream output tokens/s per user (batch 1); predictions use",
        "`infersched model predict --batch 1 --context 1024` (the smallest instance that holds the model),",
        "or the dtype, chips and mean decode context the source states (given in the row's note).",
        "A figure is *fitted* when a device constant was set from it (the source is named in",
        "`workers/devices.py`); figures *not fitted* were never used to set a constant. *Spec. decoding*",
        "says whether the source states speculative decoding was used (yes / no / not stated).",
        "",
        "## Published figures the model was fitted on",
        "",
        *_table([r for r in rows if r["kind"] == FITTED]),
        "",
        "## Superseded software",
        "",
        "Cerebras' launch figures describe serving software it replaced in October 2024 (\"We've re-written",
        "or optimized the most critical kernels such as MatMul, reduce/broadcast ... Wafer IO has been",
        "streamlined to run asynchronously from compute. This release also implements speculative",
        "decoding\"). They set nothing and are not scored; the predictions below are today's. Read",
        "through today's structure, the launch 8B implies "
        f"{gap['launch_per_layer_s'] * 1e6:.1f} us per layer, and with it the launch 70B on four wafers",
        f"would have run at {gap['launch_70b_tokens_s']:,.0f} tokens/s, not 450: {gap['gap_s'] * 1e6:,.0f} us per "
        f"token more, {gap['gap_per_boundary_s'] * 1e6:,.0f} us per wafer",
        "boundary, the wafer IO the October release took off the critical path (a reading, not a fitted term).",
        "",
        *_table([r for r in rows if r["kind"] == SUPERSEDED]),
        "",
        "## Published figures the model was NOT fitted on",
        "",
        "Rows whose source states speculative decoding are predicted with it: "
        f"{SPEC_DRAFT} drafting, acceptance {SPEC_ACCEPTANCE[1]}, the middle of the range "
        f"{SPEC_ACCEPTANCE[0]}-{SPEC_ACCEPTANCE[2]} (below); every other row is the plain prediction.",
        "",
        *_table(not_fitted),
        "",
        f"Median |error| over all {len(not_fitted)} figures: **{median * 100:.1f}%** (target <= 25%: "
        f"{'met' if median <= 0.25 else 'missed'}). The median is taken over every row of this table,",
        "misses included. Other cuts of the same rows, for reading only: without the "
        f"{len(not_fitted) - len(unspeculative)} figures whose source states speculative decoding "
        f"{medians['without_stated_speculative_decoding'] * 100:.0f}%; wafer figures only "
        f"{medians['wse-3'] * 100:.0f}%; LPU figures only {medians['groq-lpu'] * 100:.0f}%; H100 figures only "
        f"{medians['h100-sxm'] * 100:.0f}%; dense models "
        f"{medians['dense'] * 100:.0f}%; MoE models {medians['moe'] * 100:.0f}%. Over the {len(before)} rows "
        "listed before 2026-12-07 (without the",
        f"{len(not_fitted) - len(before)} added that day: Groq's 8B and 70B from the two pages already cited for "
        "its gpt-oss and Mixtral speeds, the 70B in the",
        "sentence the fitted 8B figure comes from, Artificial Analysis' gpt-oss-120b and Kimi K2.6 on Cerebras "
        "and Maverick on Groq) "
        f"it is {medians['rows_listed_before_2026_12_07'] * 100:.0f}%, "
        "as it was before the wafer's structure changed",
        "that day: the change moved the wafer rows, not the middle of the table.",
        "",
        "Figures found with a stated speed but not scored:",
        "",
        "| chip | model | published tok/s | source | why not scored |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {chip} | {model} | {speed} | {source} | {why} |" for chip, model, speed, source, why in NOT_SCORED],
        "",
        "## Figures served with speculative decoding",
        "",
        "Neither vendor publishes its draft model or acceptance rate, so nothing is fitted to these. The",
        f"step model prices speculation (`model predict --draft {SPEC_DRAFT} --acceptance A`, fastest draft",
        f"length); the range spans acceptance {SPEC_ACCEPTANCE[0]} to {SPEC_ACCEPTANCE[2]}, what Leviathan,",
        "Kalman and Matias (2023, Table 3) measured across their draft/target pairs.",
        "",
        "| device | model | published tok/s | plain prediction | speculative range | published in range | source "
        "| date |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- |",
        *[f"| {r['device']} | {r['model']} | {r['published_tokens_s']:,.0f} | {r['plain_tokens_s']:,.0f} | "
          f"{r['speculative_range_tokens_s'][0]:,.0f}-{r['speculative_range_tokens_s'][1]:,.0f} | "
          f"{'yes' if _in_range(r) else 'no'}"
          f" | {r['source']} | {r['date']} |" for r in speculative],
        "",
        "## What governs a wafer's decode speed",
        "",
        "What the sources say, and what the model does with it:",
        "",
        "- **Weights stay in SRAM; nothing is streamed.** Cerebras places a model on as many CS-3 systems as",
        "  its weights need (\"20B models fit on a single CS-3 while 70B models fit on as few as four",
        "  systems\", launch blog). MemoryX weight streaming is the training path: a CS-3's system I/O is",
        "  12 x 100 GbE (as on CS-2; 150 GB/s), which at 2,000 tokens/s would carry 75 MB of weights per token.",
        "- **Layer stages per wafer, one hop per boundary.** A batch-1 pass crosses the wafers in turn; a",
        "  boundary carries one token's activations (16 KB for a 70B) plus an assumed 10 us of latency.",
        "- **A layer's time is latency, not bytes.** 44 GB at 21 PB/s is read in about 2 us, and each core",
        "  reads only its own SRAM, so a layer's weights are read in parallel by the cores that hold them:",
        "  the read takes (bytes held per wafer) / (wafer bandwidth) whatever the layer's size or how many",
        "  experts its tokens select (`workers/perf.py`). The 8B's 500 us per token is 15.6 us per layer,",
        "  of which reading its weights at full bandwidth would take under 1 us; the rest is latency:",
        "  WaferLLM (He et al., OSDI 2025) models decode on a wafer by the hops partial sums take across",
        "  the core mesh (its PLMR model) and builds its GEMV to bound them. Its own WSE-2 figures (Llama 3 8B 2,700",
        "  tokens/s, Qwen2-72B 840; how the 72B was placed is not in the abstract) put 4.0x the bytes per",
        "  layer at 1.29x the time per layer. The model now prices a layer as one fixed latency (fitted to the 8B figure)",
        "  plus that in-place read. Before, a layer read its bytes at a fixed 140 TB/s, fitted to the",
        "  launch pair, so a 405B layer cost 3.7x an 8B layer; the launch 70B's extra time is wafer IO",
        "  (above), not bytes.",
        "- **Batch** does not change a single user's speed: a pipeline of N wafers can hold N sequences",
        "  in flight (throughput), and within a step the resident read does not grow with the batch",
        "  (compute does).",
        "- **Speculative decoding** is in Cerebras' October 2024 release and Groq's specdec endpoint",
        "  (250 to 1,665 tokens/s); no other source in these tables says whether it was used.",
        "",
        "The time per layer each wafer figure implies, against the model's (plain decoding):",
        "",
        *implied_layers(rows),
        "",
        "Reading the misses: the H100, fitted to 24 measured points of Llama 3.1 8B in bf16 on one GPU,",
        "predicts NVIDIA's NIM figures for a 70B in fp8 on two GPUs within 3-10%. The LPU, fitted to",
        "April 2024 Llama 3 figures, predicts Groq's later plain 70B figures within 1-13%, gpt-oss and",
        "Mixtral within the spread of the published figures and Maverick 28% fast; later 8B figures",
        "(560-750) sit below the April 2024 one it was fitted to. The headline median is met because",
        "most rows are LPU and H100 ones; the wafer's own is far off. On the wafer the published figures fall in two groups. The",
        "8B, gpt-oss-120b and Kimi K2.6 imply 13-17 us per layer, as the model prices it, and are",
        "predicted within 10-21% (gpt-oss' 3,000 is a vendor peak claim). The Llama 3.x 70B and 405B,",
        "Llama 4 Scout and Maverick and Qwen3-235B imply 5-8 us per layer, half of what a layer of the 8B",
        "takes on one wafer; they are predicted 2.2-3.2x too slow. That is the 2-3x speculative decoding",
        "gave Leviathan et al., and Cerebras' October 2024 notes say its service implements it, but",
        "none of those sources states it for its figure, so they are scored as plain predictions. Both",
        "stated speculative figures sit above the top of the acceptance range with a 1B draft: the step",
        "model charges each draft layer the target machine's full per-layer latency.",
        "",
        "## Devices without a figure",
        "",
        "| device | status |",
        "| --- | --- |",
        *[f"| {d} | {why} |" for d, why in NO_FIGURES.items()],
        "",
        "## H100: fitted and held-out",
        "",
        "`infersched model check --device h100-sxm --model llama-3.1-8b --measurements "
        "../shared/calibration/h100_llama-3.1-8b.csv` (24 measured points; the constants are fitted to them):",
        "",
        *h100_lines,
        "",
        "Only one shape was measured, so weight streaming is pinned at the measured copy ceiling",
        "(2.97 TB/s) and the fixed time per decode layer is fitted on top; measuring Llama-3.2-1B and",
        "3B whole and the Qwen3-30B-A3B slice (`scripts/measure_gpu.py`) would fit both and test the",
        "split on shapes not fitted. Those measurements remain to be taken on a GPU.",
        "",
    ]
    (ROOT / "docs" / "FIDELITY.md").write_text("\n".join(doc))
    out = ROOT / "bench" / "results" / "fidelity.json"
    out.write_text(json.dumps({"figures": rows, "not_fitted_median_abs_error": median,
                               "not_fitted_median_abs_error_cuts": medians, "h100": h100}, indent=1) + "\n")
    print(f"not fitted: {len(not_fitted)} figures, median |error| {median * 100:.1f}%")
    print(f"wrote docs/FIDELITY.md and {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
