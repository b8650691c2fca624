"""The PyTorch half of scripts/measure_gpu.py: a random-weight decoder of any ModelSpec shape, timed.

Kept apart so the CSV, spec and argument handling import without torch.
Timing and energy methods are those of ../shared/calibration/measure_gpu.py
(median of CUDA-event timings; NVML energy counter around repetitions).
"""
from __future__ import annotations

import dataclasses
import time
from functools import partial

import torch
import torch.nn.functional as F

from scripts.measure_gpu import ENERGY_POINTS, PREFILL_TOKENS, SCRIPT_VERSION, decode_grid, spec_mapping
from workers.modelspec import ModelSpec

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float32

try:
    import pynvml

    pynvml.nvmlInit()
    NV = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception as exc:  # noqa: BLE001 - no NVML means latency only
    NV = None
    print("nvml unavailable:", exc)


def energy_mj():
    try:
        return None if NV is None else pynvml.nvmlDeviceGetTotalEnergyConsumption(NV)
    except Exception:  # noqa: BLE001
        return None


def power_w():
    try:
        return None if NV is None else pynvml.nvmlDeviceGetPowerUsage(NV) / 1000.0
    except Exception:  # noqa: BLE001
        return None


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        if DEV == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def energy_of(fn, seconds):
    """Run fn repeatedly for ~seconds; return (calls, wall_s, joules, mean_power_w)."""
    sync()
    e0, t0, n, pw = energy_mj(), time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
        if n % 4 == 0:
            sync()
            p = power_w()
            if p is not None:
                pw.append(p)
    sync()
    t1, e1 = time.perf_counter(), energy_mj()
    j = (e1 - e0) / 1000.0 if (e0 is not None and e1 is not None) else None
    return n, t1 - t0, j, (sum(pw) / len(pw) if pw else None)


def _grouped_mm(x, w, offs):
    """x (tokens sorted by expert, K) @ w[e] (N, K)^T per expert segment; experts with no tokens are skipped."""
    if DEV == "cuda" and hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    out = x.new_zeros(x.shape[0], w.shape[1])
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ w[e].T
        start = end
    return out


class Model:
    """Random weights in `spec`'s shape (GQA attention; dense SwiGLU or MoE layers as the spec says)."""

    def __init__(self, s: ModelSpec):
        self.s = s
        g = lambda *shape: torch.randn(*shape, device=DEV, dtype=DT) * 0.02  # noqa: E731
        H, hd = s.hidden, s.head_dim
        self.q, self.kv = s.heads * hd, s.kv_heads * hd
        self.emb = g(s.vocab, H)
        moe_left = s.moe_layers
        self.layers = []
        for i in range(s.layers):
            L = dict(n1=torch.ones(H, device=DEV, dtype=DT), n2=torch.ones(H, device=DEV, dtype=DT),
                     qkv=g(self.q + 2 * self.kv, H), o=g(H, self.q))
            is_moe = s.is_moe and i >= s.dense_layers and (i + 1) % s.moe_layer_step == 0 and moe_left > 0
            if is_moe:
                moe_left -= 1
                f = s.expert_ffn or s.ffn
                L.update(router=g(s.experts, H), w_gu=g(s.experts, 2 * f, H), w_d=g(s.experts, H, f))
            else:
                L.update(gu=g(2 * s.ffn, H), d=g(H, s.ffn))
            self.layers.append(L)
        self.nf = torch.ones(H, device=DEV, dtype=DT)
        self.head = self.emb if s.tied_embeddings else g(s.vocab, H)
        self.params = sum(t.numel() for L in self.layers for t in L.values()) + self.emb.numel() + (
            0 if s.tied_embeddings else self.head.numel())

    def _moe(self, L, h):
        s = self.s
        k, E = s.experts_per_token, s.experts
        w, idx = torch.topk(F.linear(h, L["router"]).float().softmax(-1), k)
        w = (w / w.sum(-1, keepdim=True)).to(h.dtype)
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        tok = order // k
        # Counts by scatter (not bincount) so the shapes stay static for CUDA graphs.
        counts = torch.zeros(E, device=h.device, dtype=torch.int32).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0).to(torch.int32)
        gate, up = _grouped_mm(h[tok], L["w_gu"], offs).chunk(2, dim=-1)
        y = _grouped_mm(F.silu(gate) * up, L["w_d"], offs) * w.flatten()[order, None]
        return torch.zeros_like(h).index_add_(0, tok, y)

    def _mlp(self, L, x):
        h = F.rms_norm(x, (x.shape[-1],), L["n2"])
        if "router" in L:
            return x + self._moe(L, h.reshape(-1, h.shape[-1])).view_as(x)
        gt, up = F.linear(h, L["gu"]).chunk(2, dim=-1)
        return x + F.linear(F.silu(gt) * up, L["d"])

    def prefill(self, ids):
        s, (B, T) = self.s, ids.shape
        x = self.emb[ids]
        for L in self.layers:
            h = F.rms_norm(x, (s.hidden,), L["n1"])
            q, k, v = F.linear(h, L["qkv"]).split([self.q, self.kv, self.kv], dim=-1)
            q = q.view(B, T, s.heads, s.head_dim).transpose(1, 2)
            k = k.view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
            v = v.view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + F.linear(a.transpose(1, 2).reshape(B, T, self.q), L["o"])
            x = self._mlp(L, x)
        return F.linear(F.rms_norm(x[:, -1:], (s.hidden,), self.nf), self.head)

    def make_decode(self, B, ctx):
        """Static buffers + a step function attending over ctx cached tokens (+1 new)."""
        s = self.s
        G = s.heads // s.kv_heads
        kc = [torch.randn(B, s.kv_heads, ctx + 1, s.head_dim, device=DEV, dtype=DT) for _ in self.layers]
        vc = [torch.randn(B, s.kv_heads, ctx + 1, s.head_dim, device=DEV, dtype=DT) for _ in self.layers]
        ids = torch.zeros(B, 1, dtype=torch.long, device=DEV)
        out = {}

        def step():
            x = self.emb[ids]
            for i, L in enumerate(self.layers):
                h = F.rms_norm(x, (s.hidden,), L["n1"])
                q, k, v = F.linear(h, L["qkv"]).split([self.q, self.kv, self.kv], dim=-1)
                kc[i][:, :, ctx] = k.view(B, s.kv_heads, s.head_dim)
                vc[i][:, :, ctx] = v.view(B, s.kv_heads, s.head_dim)
                qg = q.view(B, s.kv_heads, G, s.head_dim)  # grouped queries attend to their KV head
                a = F.scaled_dot_product_attention(qg, kc[i], vc[i])
                x = x + F.linear(a.reshape(B, 1, self.q), L["o"])
                x = self._mlp(L, x)
            out["logits"] = F.linear(F.rms_norm(x, (s.hidden,), self.nf), self.head)
        return step, (kc, vc)


def graphed(step):
    if DEV != "cuda":
        return step
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def ceilings(res, small):
    n = (1 << 20) if small else (1 << 28)
    a = torch.empty(n, device=DEV, dtype=torch.float32)
    b = torch.empty_like(a)
    ms = time_fn(partial(b.copy_, a), reps=20)
    res["copy_GBps_rw"] = 2 * a.numel() * 4 / (ms / 1e3) / 1e9
    m = 256 if small else 8192
    x, y = torch.randn(m, m, device=DEV, dtype=DT), torch.randn(m, m, device=DEV, dtype=DT)
    ms = time_fn(partial(torch.matmul, x, y), reps=10)
    res["gemm_TFLOPs_bf16"] = 2 * m ** 3 / (ms / 1e3) / 1e12
    if DEV == "cuda":
        hb = torch.empty(1 << 28, dtype=torch.uint8, pin_memory=True)
        db = torch.empty(1 << 28, dtype=torch.uint8, device=DEV)
        res["d2h_GBps"] = (1 << 28) / (time_fn(lambda: hb.copy_(db, non_blocking=True), reps=10) / 1e3) / 1e9
        res["h2d_GBps"] = (1 << 28) / (time_fn(lambda: db.copy_(hb, non_blocking=True), reps=10) / 1e3) / 1e9
        del hb, db
        torch.cuda.empty_cache()
    del a, b, x, y
    time.sleep(0.5)
    res["idle_power_w"] = power_w()


def run_model(spec, prefill_lens, grid, energy_points, energy_all, energy_s, res, spec_ref, spec_file):
    torch.manual_seed(0)
    m = Model(spec)
    r = {"name": spec.name, "spec_ref": spec_ref, "spec": spec_file, "params": m.params,
         "prefill": [], "decode": [], "energy": []}
    print(f"[{spec.name}] params={m.params / 1e9:.2f}B", flush=True)
    for T in prefill_lens:
        ids = torch.randint(0, spec.vocab, (1, T), device=DEV)
        with torch.inference_mode():
            ms = time_fn(partial(m.prefill, ids), reps=5 if T >= 8192 else 10)
        r["prefill"].append({"tokens": T, "ms": ms})
        print(f"  prefill T={T:6d} {ms:9.2f} ms  {T / ms * 1e3:10.0f} tok/s", flush=True)
        if (T, 0) in energy_points or energy_all:
            with torch.inference_mode():
                n, s, j, p = energy_of(partial(m.prefill, ids), energy_s)
            r["energy"].append({"phase": "prefill", "tokens": T, "calls": n, "wall_s": s, "joules": j,
                                "mean_power_w": p, "j_per_token": (j / (n * T)) if j else None})
    for B, ctx in grid:
        with torch.inference_mode():
            step, caches = m.make_decode(B, ctx)
            fn = graphed(step)
            ms = time_fn(fn, reps=30, warm=5)
        r["decode"].append({"batch": B, "ctx": ctx, "ms": ms})
        print(f"  decode B={B:4d} ctx={ctx:6d} {ms:8.3f} ms/step  {B / ms * 1e3:9.0f} tok/s", flush=True)
        if (B, ctx) in energy_points or energy_all:
            with torch.inference_mode():
                n, s, j, p = energy_of(fn, energy_s)
            r["energy"].append({"phase": "decode", "batch": B, "ctx": ctx, "calls": n, "wall_s": s, "joules": j,
                                "mean_power_w": p, "j_per_token": (j / (n * B)) if j else None})
        del step, caches, fn
        if DEV == "cuda":
            torch.cuda.empty_cache()
    del m
    if DEV == "cuda":
        torch.cuda.empty_cache()
    res["models"].append(r)


def _smoke(spec: ModelSpec) -> ModelSpec:
    """A tiny model of the same kind, for CPU runs."""
    moe = dict(experts=8, experts_per_token=2, expert_ffn=64) if spec.is_moe else {}
    return dataclasses.replace(spec, name=spec.name + "-smoke", layers=2, hidden=128, heads=4, kv_heads=2,
                               head_dim=32, ffn=256, vocab=1000, capability=None, sources={}, **moe)


def run(args) -> dict:
    small = args.smoke or DEV != "cuda"
    res = {"device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__,
           "models": []}
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        res["sm_count"], res["mem_GiB"] = props.multi_processor_count, props.total_memory / 2 ** 30
    t0 = time.time()
    ceilings(res, small)
    print("ceilings:", {k: v for k, v in res.items() if k != "models"}, flush=True)
    for spec in args.specs:
        if small:
            spec = _smoke(spec)
            prefill, grid, points = [16, 64], [(1, 32), (4, 64)], {(64, 0), (4, 64)}
        else:
            prefill, grid, points = list(PREFILL_TOKENS), decode_grid(), set(ENERGY_POINTS)
        builtin = not small and spec.sources
        ref = spec.name if builtin else f"{spec.name}.yaml"
        run_model(spec, prefill, grid, points, args.energy_all, args.energy_s, res, ref,
                  None if builtin else spec_mapping(spec))
    res["elapsed_s"] = time.time() - t0
    res["script_version"] = SCRIPT_VERSION
    print("done in %.0f s" % res["elapsed_s"])
    return res

