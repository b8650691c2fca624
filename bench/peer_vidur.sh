#!/usr/bin/env bash
# Peer benchmark: wall time and peak RSS of Vidur (PyPI `vidur`, pinned) on the
# first N requests (default 10,000) of the Azure 2023 conversation trace in
# Vidur's processed form (../shared/traces/vidur/splitwise_conv.csv), replayed
# with its own arrival times.
#
# Prints ONE JSON line on stdout:
#   {"simulator":"vidur","version":"0.0.26","requests":10000,"wall_s":...,
#    "peak_rss_mb":...,"runs":[...],"sim_metrics":{...},"config":{...}}
# "wall_s"/"peak_rss_mb" are those of the fastest run made with a warm
# predictor cache (Vidur trains its sklearn predictors once and caches them);
# every run, cold or warm, is listed under "runs".
#
# Environment:
#   PEER_VENV          venv to create/use (default /tmp/infersched-peer-venv)
#   PEER_WORK          scratch dir: converted trace, profile, cache, outputs
#                      (default $PEER_VENV/work)
#   PEER_RUNS          timed runs (default 2)
#   PEER_REQUESTS      requests taken from the head of the trace (default 10000)
#   PEER_REPLICAS      replicas, tp=1 pp=1 each (default 4)
#   PEER_SCHEDULER     vidur replica scheduler: sarathi | vllm | orca |
#                      mnemosyne_fcfs_fixed_chunk ... (default sarathi)
#   PEER_TRACE         trace csv (arrived_at,num_prefill_tokens,num_decode_tokens)
#                      (default <repo>/../shared/traces/vidur/splitwise_conv.csv)
#   VIDUR_PROFILE_DIR  optional: real Vidur profiling data, laid out as
#                        $VIDUR_PROFILE_DIR/compute/{config.json,mlp.csv.xz,attention.csv.xz}
#                        $VIDUR_PROFILE_DIR/network/{config.json,all_reduce.csv.xz,send_recv.csv.xz}
#                      i.e. the contents of the Hugging Face datasets
#                      project-vajra/dev-staging-meta-llama-llama-3-8b-h100 and
#                      project-vajra/dev-staging-h100-dgx that vidur 0.0.26
#                      downloads at run time. Get them on a machine with Hub
#                      access, e.g.
#                        huggingface-cli download --repo-type dataset \
#                          project-vajra/dev-staging-meta-llama-llama-3-8b-h100 --local-dir DIR/compute
#                        huggingface-cli download --repo-type dataset \
#                          project-vajra/dev-staging-h100-dgx --local-dir DIR/network
#                      Unset (the default here, where the Hub is unreachable):
#                      the script SYNTHESISES a profile in Vidur's schema from
#                      a roofline model fitted to ../shared/calibration
#                      (measured H100, Llama-3.1-8B shape). Simulated latencies
#                      are then NOT Vidur's own fidelity numbers; wall time is
#                      what this benchmark is for.
#   PEER_VIDUR_FULL_GRID=1  use Vidur's default random-forest grid search
#                      (27 combos x 10 folds per op; slow cold start). Default:
#                      one combo (250 trees, depth 16, min split 2).
#
# Fetches nothing but PyPI packages (pip). Exits non-zero with the reason on
# stderr if anything fails.
set -euo pipefail

VIDUR_VERSION=0.0.26
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PEER_VENV="${PEER_VENV:-/tmp/infersched-peer-venv}"
PEER_WORK="${PEER_WORK:-$PEER_VENV/work}"
PEER_RUNS="${PEER_RUNS:-2}"
PEER_REQUESTS="${PEER_REQUESTS:-10000}"
PEER_REPLICAS="${PEER_REPLICAS:-4}"
PEER_SCHEDULER="${PEER_SCHEDULER:-sarathi}"
PEER_TRACE="${PEER_TRACE:-$REPO/../shared/traces/vidur/splitwise_conv.csv}"
MAX_TOKENS=4096   # Vidur's max_model_len for meta-llama/Llama-3-8B

die() { echo "peer_vidur: $*" >&2; exit 1; }
log() { echo "peer_vidur: $*" >&2; }

[ -f "$PEER_TRACE" ] || die "trace not found: $PEER_TRACE"
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed for wall time and peak RSS (apt-get install time)"

# ---- venv ------------------------------------------------------------------
PY="$PEER_VENV/bin/python"
if [ ! -x "$PY" ]; then
    log "creating venv $PEER_VENV"
    python3 -m venv "$PEER_VENV" || die "python3 -m venv failed"
fi
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('vidur') != '$VIDUR_VERSION')" 2>/dev/null; then
    log "installing vidur==$VIDUR_VERSION into $PEER_VENV (a few minutes)"
    "$PY" -m pip install -q "vidur==$VIDUR_VERSION" >&2 || die "pip install vidur==$VIDUR_VERSION failed"
fi
"$PY" -c "import vidur.main" || die "vidur does not import (see traceback above)"

mkdir -p "$PEER_WORK"
CACHE="$PEER_WORK/vidur_cache"
TRACE_OUT="$PEER_WORK/trace_${PEER_REQUESTS}.csv"

# ---- inputs: trace in vidur-0.0.26 replay format + profiling data ------------
PROFILE_SRC="${VIDUR_PROFILE_DIR:-}"
PEER_VIDUR_FULL_GRID="${PEER_VIDUR_FULL_GRID:-0}"
export PEER_TRACE PEER_REQUESTS TRACE_OUT CACHE PROFILE_SRC MAX_TOKENS
"$PY" - <<'PYEOF' >&2 || die "preparing inputs failed"
import hashlib, json, os, shutil
import numpy as np, pandas as pd

# vidur 0.0.26's TraceReplayRequestGenerator reads Date/Time/PromptTokenCount/
# CompletionTokenCount (not the arrived_at,... columns of its own processed
# traces), so convert; keep arrival times and token counts unchanged.
n = int(os.environ["PEER_REQUESTS"])
src = pd.read_csv(os.environ["PEER_TRACE"]).head(n)
if len(src) < n:
    raise SystemExit(f"trace has only {len(src)} rows, {n} requested")
pd.DataFrame({
    "Date": "2023-08-21",
    "Time": src["arrived_at"],
    "PromptTokenCount": src["num_prefill_tokens"],
    "CompletionTokenCount": src["num_decode_tokens"],
}).to_csv(os.environ["TRACE_OUT"], index=False)

cache = os.environ["CACHE"]
COMMIT = "0" * 40
def fake_hub_snapshot(kind, repo_id):
    # the layout huggingface_hub.snapshot_download reads offline
    store = os.path.join(cache, "profiling_data", kind,
                         "datasets--" + repo_id.replace("/", "--"))
    snap = os.path.join(store, "snapshots", COMMIT)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(store, "refs"), exist_ok=True)
    with open(os.path.join(store, "refs", "main"), "w") as f:
        f.write(COMMIT)
    return snap

comp = fake_hub_snapshot("compute", "project-vajra/dev-staging-meta-llama-llama-3-8b-h100")
net = fake_hub_snapshot("network", "project-vajra/dev-staging-h100-dgx")
src_dir = os.environ.get("PROFILE_SRC")
stamp = os.path.join(cache, "profile_source.txt")
if src_dir:
    for kind, dst in (("compute", comp), ("network", net)):
        for fn in os.listdir(os.path.join(src_dir, kind)):
            shutil.copy(os.path.join(src_dir, kind, fn), dst)
    origin = "real:" + os.path.abspath(src_dir)
else:
    origin = "synthetic-roofline-from-shared-calibration-v1"
    # Roofline fitted to ../shared/calibration/h100_llama-3.1-8b.csv:
    # batch-1 decode 6.9 ms @512 ctx; prefill 26.2 ms @1024 tokens.
    # Times in ms, per layer, as Vidur's profiles are.
    BW_W, BW_E, F_GEMM, F_ATTN = 2.3e12, 2.8e12, 620e12, 400e12
    def gemm(n, k, m):
        return max((2 * k * m + 2 * n * (k + m)) / BW_W, 2 * n * k * m / F_GEMM) * 1e3 + 0.002
    def elem(n, width, passes):
        return passes * 2 * n * width / BW_E * 1e3 + 0.001
    toks = sorted(set(list(range(1, 65)) + list(range(72, 513, 8)) +
                      list(range(544, 4097, 32)) + list(range(4352, 16385, 256))))
    rows = []
    for t in toks:
        rows.append({
            "time_stats.attn_pre_proj.median": gemm(t, 4096, 6144),
            "time_stats.attn_post_proj.median": gemm(t, 4096, 4096),
            "time_stats.mlp_up_proj.median": gemm(t, 4096, 28672),
            "time_stats.mlp_down_proj.median": gemm(t, 14336, 4096),
            "time_stats.mlp_act.median": elem(t, 43008, 1),
            "time_stats.input_layernorm.median": elem(t, 4096, 2),
            "time_stats.post_attention_layernorm.median": elem(t, 4096, 2),
            "time_stats.attn_rope.median": elem(t, 5120, 2),
            "time_stats.add.median": elem(t, 4096, 3),
            "n_head": 32, "n_kv_head": 8, "n_embd": 4096, "n_expanded_embd": 14336,
            "vocab_size": 128256, "use_gated_mlp": True, "num_tokens": t,
            "num_tensor_parallel_workers": 1,
        })
    pd.DataFrame(rows).to_csv(os.path.join(comp, "mlp.csv.xz"), index=False)

    def kv_save(t):
        return 2 * 2 * t * 2048 / BW_E * 1e3 + 0.002
    arows = []
    base = {"n_embd": 4096, "n_q_head": 32, "n_kv_head": 8, "block_size": 16,
            "num_tensor_parallel_workers": 1, "max_model_len": 16384}
    for kv in range(0, 16385, 512):
        for c in range(64, 4097, 64):   # prefill chunks
            arows.append({**base, "batch_size": 1, "prefill_chunk_size": c,
                          "kv_cache_size": kv, "is_prefill": True,
                          "time_stats.attn_prefill.median":
                              4 * c * (kv + c / 2) * 4096 / F_ATTN * 1e3 + 0.005,
                          "time_stats.attn_decode.median": 0.0,
                          "time_stats.attn_kv_cache_save.median": kv_save(c)})
        for b in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128):   # decode
            # KV read at ~2.8 TB/s, floored by a per-context-token latency that
            # reproduces the batch-1 long-context decode measurements
            t = max(b * kv * 4096 / BW_E, kv * 12.8e-9) * 1e3 + 0.01
            arows.append({**base, "batch_size": b, "prefill_chunk_size": 0,
                          "kv_cache_size": kv, "is_prefill": False,
                          "time_stats.attn_prefill.median": 0.0,
                          "time_stats.attn_decode.median": t,
                          "time_stats.attn_kv_cache_save.median": kv_save(b)})
    pd.DataFrame(arows).to_csv(os.path.join(comp, "attention.csv.xz"), index=False)
    # network files are only read for tp>1 / pp>1; written for completeness
    sizes = [2 ** i for i in range(10, 31)]
    pd.DataFrame([{"time_stats.all_reduce.median": 0.01 + s / 200e9 * 1e3, "rank": 0,
                   "num_workers": w, "size": s, "collective": "all_reduce",
                   "devices_per_node": w, "max_devices_per_node": 8}
                  for w in (1, 2, 4, 8) for s in sizes]).to_csv(
        os.path.join(net, "all_reduce.csv.xz"), index=False)
    pd.DataFrame([{"time_stats.send_recv.median": 0.01 + s / 200e9 * 1e3, "rank": 0,
                   "num_workers": 2, "size": s, "collective": "send_recv",
                   "devices_per_node": d, "max_devices_per_node": 8}
                  for d in (1, 2) for s in sizes]).to_csv(
        os.path.join(net, "send_recv.csv.xz"), index=False)
    with open(os.path.join(comp, "config.json"), "w") as f:
        json.dump({"model": "meta-llama/Llama-3-8B", "device_sku": "h100"}, f)
    with open(os.path.join(net, "config.json"), "w") as f:
        json.dump({"sku": "h100_dgx"}, f)

# a different profile source invalidates vidur's trained-predictor cache
old = open(stamp).read() if os.path.exists(stamp) else None
if old != origin:
    for d in ("predictors", "predictions", "training_predictions"):
        shutil.rmtree(os.path.join(cache, d), ignore_errors=True)
    with open(stamp, "w") as f:
        f.write(origin)
PYEOF

PROFILE_ORIGIN="$(cat "$CACHE/profile_source.txt")"

if [ "$PEER_VIDUR_FULL_GRID" = 1 ]; then
    GRID=()
else
    GRID=(--random_forrest_execution_time_predictor_config_num_estimators 250
          --random_forrest_execution_time_predictor_config_max_depth 16
          --random_forrest_execution_time_predictor_config_min_samples_split 2)
fi

case "$PEER_SCHEDULER" in
    sarathi) SCHED_ARGS=(--sarathi_scheduler_config_batch_size_cap 128 --sarathi_scheduler_config_chunk_size 512) ;;
    vllm) SCHED_ARGS=(--vllm_scheduler_config_batch_size_cap 128 --vllm_scheduler_config_max_tokens_in_batch 4096) ;;
    *) SCHED_ARGS=() ;;
esac

ARGS=(
    --seed 42 --log_level info
    --cluster_config_num_replicas "$PEER_REPLICAS"
    --replica_config_model_name meta-llama/Llama-3-8B
    --replica_config_device h100 --replica_config_network_device h100_dgx
    --replica_config_tensor_parallel_size 1 --replica_config_num_pipeline_stages 1
    --global_scheduler_config_type round_robin
    --replica_scheduler_config_type "$PEER_SCHEDULER" "${SCHED_ARGS[@]}"
    --request_generator_config_type trace_replay
    --trace_request_generator_config_trace_file "$TRACE_OUT"
    --trace_request_generator_config_date 2023-08-21
    --trace_request_generator_config_prefill_scale_factor 1
    --trace_request_generator_config_decode_scale_factor 1
    --trace_request_generator_config_time_scale_factor 1
    --trace_request_generator_config_max_tokens "$MAX_TOKENS"
    --execution_time_predictor_config_type random_forrest
    --random_forrest_execution_time_predictor_config_cache_dir "$CACHE"
    --random_forrest_execution_time_predictor_config_prediction_max_tokens_per_request "$MAX_TOKENS"
    "${GRID[@]}"
    --metrics_config_write_metrics --no-metrics_config_store_plots
    --no-metrics_config_enable_chrome_trace --no-metrics_config_write_json_trace
    --metrics_config_output_dir "$PEER_WORK/out"
)

RUNS_JSON="$PEER_WORK/runs.jsonl"
: > "$RUNS_JSON"
for i in $(seq 1 "$PEER_RUNS"); do
    if [ -d "$CACHE/predictions" ]; then state=warm; else state=cold; fi
    rm -rf "$PEER_WORK/out"; mkdir -p "$PEER_WORK/out"
    log "run $i/$PEER_RUNS (predictor cache $state)"
    if ! (cd "$PEER_WORK" && HF_HUB_OFFLINE=1 WANDB_MODE=disabled MPLBACKEND=Agg \
            /usr/bin/time -v -o "$PEER_WORK/time_$i.txt" \
            "$PY" -m vidur.main "${ARGS[@]}" > "$PEER_WORK/run_$i.log" 2>&1); then
        tail -n 40 "$PEER_WORK/run_$i.log" >&2
        die "vidur run $i failed (full log: $PEER_WORK/run_$i.log)"
    fi
    OUTDIR="$(ls -d "$PEER_WORK"/out/*/ | head -n 1)"
    "$PY" - "$PEER_WORK/time_$i.txt" "$OUTDIR" "$state" "$PEER_WORK/run_$i.log" >> "$RUNS_JSON" <<'PYEOF' || die "parsing run $i failed"
import json, re, sys
tfile, outdir, state, logf = sys.argv[1:5]
t = open(tfile).read()
m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t)
parts = [float(p) for p in m.group(1).split(":")]
wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
log = open(logf).read()
sim_end = re.findall(r"Simulation ended at: ([0-9.eE+-]+)s", log)
print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(rss_kb / 1024, 1),
                  "predictor_cache": state, "outdir": outdir,
                  "simulated_end_s": float(sim_end[-1]) if sim_end else None}))
PYEOF
done

export VIDUR_VERSION PEER_REQUESTS PEER_REPLICAS PEER_SCHEDULER PROFILE_ORIGIN PEER_VIDUR_FULL_GRID RUNS_JSON MAX_TOKENS
"$PY" - <<'PYEOF' || die "summarising failed"
import json, os
import pandas as pd
runs = [json.loads(l) for l in open(os.environ["RUNS_JSON"]) if l.strip()]
warm = [r for r in runs if r["predictor_cache"] == "warm"] or runs
best = min(warm, key=lambda r: r["wall_s"])
metrics = {}
try:
    df = pd.read_csv(os.path.join(runs[-1]["outdir"], "request_metrics.csv"))
    def q(col, p):
        return round(float(df[col].quantile(p)), 4) if col in df else None
    metrics["requests_completed"] = int(len(df))
    for name, col in (("ttft_s", "prefill_e2e_time"), ("e2e_s", "request_e2e_time"),
                      ("tpot_s", "decode_time_execution_plus_preemption_normalized"),
                      ("scheduling_delay_s", "request_scheduling_delay")):
        metrics[name] = {"p50": q(col, 0.5), "p90": q(col, 0.9), "p99": q(col, 0.99)}
    if "request_num_restarts" in df:
        metrics["restarts_total"] = int(df["request_num_restarts"].sum())
except Exception as e:  # metrics are a by-product; timing stands without them
    metrics["error"] = repr(e)
metrics["simulated_end_s"] = runs[-1]["simulated_end_s"]
sched = os.environ["PEER_SCHEDULER"]
cfg = {
    "model": "meta-llama/Llama-3-8B", "device": "h100", "network_device": "h100_dgx",
    "replicas": int(os.environ["PEER_REPLICAS"]), "tp": 1, "pp": 1,
    "global_scheduler": "round_robin", "replica_scheduler": sched,
    "batch_size_cap": 128 if sched in ("sarathi", "vllm") else "vidur default",
    "chunk_size": 512 if sched == "sarathi" else None,
    "max_tokens_in_batch": 4096 if sched == "vllm" else None,
    "arrivals": "trace replay (splitwise_conv arrived_at, time_scale_factor 1)",
    "max_tokens_per_request": int(os.environ["MAX_TOKENS"]),
    "token_clipping": "prompt reduced so prompt+output <= max_tokens (vidur trace replay)",
    "predictor": "random_forrest" + ("" if os.environ["PEER_VIDUR_FULL_GRID"] == "1"
                                     else " (grid: 250 trees, depth 16, split 2)"),
    "profile": os.environ["PROFILE_ORIGIN"],
    "metrics": "request/batch metrics on, plots/chrome trace/json trace off",
}
print(json.dumps({"simulator": "vidur", "version": os.environ["VIDUR_VERSION"],
                  "requests": int(os.environ["PEER_REQUESTS"]),
                  "wall_s": best["wall_s"], "peak_rss_mb": best["peak_rss_mb"],
                  "runs": [{k: r[k] for k in ("wall_s", "peak_rss_mb", "predictor_cache")} for r in runs],
                  "sim_metrics": metrics, "config": cfg}))
PYEOF
