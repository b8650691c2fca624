"""Edge devices (a laptop, a phone) fitted to published measurements of an 8B model at 4 bits.

The GPU constants are fitted to H100 measurements; an edge device runs
other kernels (llama.cpp Metal, NPU runtimes), so its efficiencies and
energy coefficients are solved here from published figures for Llama 3 8B
at about 4.9 bits per weight, in closed form on the same roofline as
workers/perf.py (`published_*` below are the targets; tests check that the
simulator reproduces them):

- decode at batch 1 streams the weights once per token:
  1 / tok_s = layers * decode_overhead + weight_bytes / (eff_bw * bandwidth);
- prefill of a 512-token prompt is compute-bound:
  512 / pp_tok_s = layers * prefill_overhead + 2 * params * 512 / (eff_c * peak);
- energy: dynamic power while decoding over the bytes streamed per second
  gives joules per byte; joules per FLOP from a published per-FLOP figure.

A GGUF Q4_K_M file of Llama 3.1 8B is 4.92 GB (4.89 bits per weight), not
0.5 bytes per weight: the `q4_k_m` quantization (scheduler/config.py) uses
that width. Each figure names its source; which are measurements and which
are assumptions is said there.
"""
from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.devices import DeviceSpec

# workers.devices builds its catalogue from m4_max() and phone() below, so they read its
# constants when called, not when this module is imported (either may be imported first).

# Llama 3.1 8B: parameters and layers (config.json), and the Q4_K_M GGUF file size.
_LLAMA8B_PARAMS = 8.03e9
_LLAMA8B_LAYERS = 32
Q4_K_M_BITS_PER_WEIGHT = 4.89
_Q4_K_M_SOURCE = ("Llama-3.1-8B Q4_K_M GGUF: 4.92 GB, 4.89 bits per weight (bartowski/Meta-Llama-3.1-8B-Instruct-"
                  "GGUF file list; llama.cpp reports 4.58 GiB)")

# --- M4 Max (40-core GPU, 546 GB/s) -------------------------------------------------------
_M4_MAX_BW = 546e9
_M4_MAX_FLOPS = 18.4e12
# No llama-bench run of Llama 3 8B on an M4 Max was found; the nearest published runs are scaled
# by memory bandwidth (decode streams the weights, so tokens/s follows bandwidth):
#   M3 Max 40-core (400 GB/s), 8B Q4_K_M, tg512 48.97 tok/s -> x 546/400 = 66.8
#     (XiongjieDai/GPU-Benchmarks-on-LLM-Inference README, llama.cpp, May 2024)
#   M1 Max 32-core (400 GB/s), 8B Q4_K_M, tg128 46.2 tok/s -> x 546/400 = 63.1
#     (brand-o/normiebench issue #40, llama.cpp Metal, 2026)
# The target is their mean, 65 tok/s: 26% below the 88 tok/s the H100 efficiencies gave.
PUBLISHED_M4_MAX_DECODE_TOK_S = (48.97 + 46.2) / 2 * 546 / 400
# Prefill is compute-bound; the M3 Max pp512 of 693 tok/s (same README) is used unscaled: the
# M4 Max's 40 cores run a little faster, but no measurement says by how much.
PUBLISHED_M4_MAX_PREFILL_TOK_S = 693.32
# Power. Package power while decoding on an Apple M-series GPU: about 30 W (0.39 J/token at
# 77 tok/s, powermetrics combined CPU+GPU+ANE, mycelium.fyi "Intelligence per watt: what we
# measure", 2026). Energy per FLOP of the M4 Max GPU: about 2.7 pJ (reverse-engineered from SMC
# and IOReport counters, Hacker News post by user ricebunny, 2025).
PUBLISHED_M4_MAX_DECODE_W = 30.0
_M4_MAX_IDLE_W = 7.0
_M4_MAX_E_FLOP_J = 2.7e-12
# Host share: what the wall sees beyond the package counters. In the same SMC study a GPU load
# raised system DC power by 179 W, of which 133 W GPU and 46 W DRAM + fabric (0.35 of the GPU);
# a USB-C power adapter loses about 10% more.
_M4_MAX_HOST_SHARE = 1.35 * 1.1 - 1.0


def fitted(device: DeviceSpec, weight_bytes_per_param: float, decode_tok_s: float | None,
           prefill_tok_s: float | None, decode_w: float | None = None) -> DeviceSpec:
    """`device` with weight_bw_efficiency (= kv_bw_efficiency), compute_efficiency and
    energy_per_byte_j solved so workers/perf.py gives Llama 3.1 8B at this width the published
    batch-1 decode rate (short context), 512-token prefill rate and package power while decoding.

    Time is affine in 1/efficiency on the bound that dominates, so a few fixed-point steps on the
    perf model itself land on the targets (no second copy of its arithmetic here)."""
    from workers.models import get_model, with_dtype  # workers.models does not import devices
    from workers.perf import InstancePerf  # imported late: perf reads DeviceSpec from workers.devices

    model = with_dtype(get_model("llama-3.1-8b"), weight_bytes_per_param)
    for _ in range(8):
        perf = InstancePerf(device, model)
        changes = {}
        if prefill_tok_s is not None:
            t, _ = perf.prefill(512, 512 * 513 / 2, 1)
            fixed = _LLAMA8B_LAYERS * device.prefill_overhead_per_layer_s
            changes["compute_efficiency"] = device.compute_efficiency * (t - fixed) / (512 / prefill_tok_s - fixed)
        if decode_tok_s is not None:
            t, _ = perf.decode(1, 64.0, 1)
            fixed = _LLAMA8B_LAYERS * device.decode_overhead_per_layer_s
            eff = min(1.0, device.weight_bw_efficiency * (t - fixed) / (1 / decode_tok_s - fixed))
            changes["weight_bw_efficiency"] = changes["kv_bw_efficiency"] = eff
        device = dataclasses.replace(device, **changes)
    if decode_w is not None:
        # A step's dynamic energy is e_flop * FLOPs + e_byte * bytes: measure both parts on the
        # model (e_byte = 0, then the current e_byte) and solve e_byte for the target power.
        t, with_bytes = InstancePerf(device, model).decode(1, 64.0, 1)
        _, flops_only = InstancePerf(dataclasses.replace(device, energy_per_byte_j=0.0), model).decode(1, 64.0, 1)
        per_unit = (with_bytes - flops_only) / device.energy_per_byte_j
        target_j = (decode_w - device.idle_power_w) * t
        device = dataclasses.replace(device, energy_per_byte_j=(target_j - flops_only) / per_unit)
    return device


_M4_FIT = ("solved from the published 8B Q4_K_M figures in workers/edge_devices.py "
           f"(decode {PUBLISHED_M4_MAX_DECODE_TOK_S:.0f} tok/s, prefill {PUBLISHED_M4_MAX_PREFILL_TOK_S:.0f} tok/s)")


def m4_max() -> DeviceSpec:
    from workers.devices import (_H100_DECODE_OVERHEAD_PER_LAYER_S, _H100_DECODE_SERIAL_FRACTION,
                                 _H100_PREFILL_OVERHEAD_PER_LAYER_S, _NO_COPY_MEASURED, DeviceSpec)

    gpu_cores = 40
    return fitted(DeviceSpec(
        name="m4-max",
        kind="edge",
        bf16_flops=_M4_MAX_FLOPS,
        fp8_flops=None,
        memory_bytes=96e9,
        memory_bw_bytes_s=_M4_MAX_BW,
        interconnect_bw_bytes_s=0.0,
        idle_power_w=_M4_MAX_IDLE_W,
        peak_power_w=90.0,
        price_usd_per_hour=None,
        max_chips_per_instance=1,
        compute_efficiency=0.5,  # provisional: solved by fitted()
        weight_bw_efficiency=0.5,
        kv_bw_efficiency=0.5,
        attn_parallel_units=72.29 * gpu_cores / 132,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=_H100_PREFILL_OVERHEAD_PER_LAYER_S,
        decode_overhead_per_layer_s=_H100_DECODE_OVERHEAD_PER_LAYER_S,
        collective_latency_s=0.0,
        energy_per_flop_j=_M4_MAX_E_FLOP_J,
        energy_per_byte_j=100e-12,  # provisional: solved by fitted()
        kv_transfer_setup_s=5e-3,
        host_power_share=_M4_MAX_HOST_SHARE,
        sources={
            "bf16_flops": "M4 Max 40-core GPU: about 18.4 TFLOP/s FP32 (40 cores x 128 ALUs x 2 x 1.8 GHz); "
                          "FP16 runs at the same rate",
            "fp8_flops": "Apple GPUs have no fp8 matrix units",
            "memory_bytes": "Apple M4 Max: up to 128 GB unified memory; macOS lets the GPU wire about 75% "
                            "of it by default, 96 GB",
            "memory_bw_bytes_s": "Apple M4 Max press release (Oct 2024): 546 GB/s memory bandwidth",
            "interconnect_bw_bytes_s": "single device; no chip-to-chip link",
            "idle_power_w": "approximate: package power idle with a model resident, a few watts "
                            "(a MacBook Pro M1 Max draws 10 W at the wall browsing: mactechnews.de, 2021)",
            "peak_power_w": "approximate: package power under full GPU load (a MacBook Pro M1 Max draws up to "
                            "110 W at the wall under full load: mactechnews.de, 2021)",
            "price_usd_per_hour": "owned device, not billed per hour",
            "max_chips_per_instance": "one laptop",
            "compute_efficiency": _M4_FIT,
            "weight_bw_efficiency": _M4_FIT + "; " + _Q4_K_M_SOURCE,
            "kv_bw_efficiency": "the weight-streaming share (no KV-bound measurement)",
            "attn_parallel_units": "H100 fit scaled by parallel cores, 40 GPU cores / 132 SMs",
            "decode_serial_fraction": "reused from the H100 fit (no Apple measurements)",
            "prefill_overhead_per_layer_s": "reused from the H100 fit (folded into the prefill fit)",
            "decode_overhead_per_layer_s": "reused from the H100 fit (folded into the decode fit)",
            "collective_latency_s": "single device; no collectives",
            "energy_per_flop_j": "about 2.7 pJ per FLOP of M4 Max GPU compute, reverse-engineered from SMC and "
                                 "IOReport counters (Hacker News, user ricebunny, 2025)",
            "energy_per_byte_j": f"(decode package power {PUBLISHED_M4_MAX_DECODE_W:.0f} W - idle) / bytes streamed "
                                 "per second at the published decode rate; 30 W: 0.39 J/token at 77 tok/s, "
                                 "powermetrics (mycelium.fyi, 2026)",
            "kv_transfer_setup_s": "assumption: a LAN/Wi-Fi round trip and connection setup, about 5 ms",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "parallelism": "single device; no model splitting",
            "host_power_share": "wall power beyond the package counters: DRAM + fabric were 0.35 of the GPU's "
                                "rise in an SMC study of an M4 Max (Hacker News, user ricebunny, 2025), "
                                "x 1.1 for USB-C adapter losses (assumption)",
        },
    ), Q4_K_M_BITS_PER_WEIGHT / 8, PUBLISHED_M4_MAX_DECODE_TOK_S, PUBLISHED_M4_MAX_PREFILL_TOK_S,
        PUBLISHED_M4_MAX_DECODE_W)


# --- Phone (Snapdragon 8 Elite class, 84.8 GB/s) -------------------------------------------
_PHONE_BW = 84.8e9
_PHONE_FLOPS = 22e12
# Qualcomm ships Llama 3 8B for the Hexagon NPU as w4a16 (+ a few w8a16 layers), 4.8 GB
# (Qualcomm AI Hub model card qualcomm/Llama-v3-8B-Chat).
# Speed: Qualcomm AI Hub's measurement of a Llama-3.1-8B-architecture model at w4a16 on a
# Snapdragon 8 Elite QRD (QNN/Genie runtime, model card qualcomm/Llama-SEA-LION-v3.5-8B-R,
# ai-hub-models v0.31-v0.37): response rate 12.93 tokens/s; time to first token 0.159 s for a
# prompt of up to 128 tokens and 5.10 s for 4,096 tokens, i.e. about 800 prompt tokens/s either
# way. (The former model's 225 tokens/s scaled mllm-NPU's Qwen1.5-1.8B figure by FLOPs; its
# ~10 tokens/s decode borrowed the laptop's llama.cpp bandwidth share; the model before that
# prefilled at 1,890 tokens/s from 45 TOPS of INT8, which w4a16 kernels do not use.)
PUBLISHED_PHONE_DECODE_TOK_S = 12.9262
PUBLISHED_PHONE_PREFILL_TOK_S = 4096 / 5.100256
# Power, from two published measurements on a Galaxy S25 Ultra (Snapdragon 8 Elite, the SoC of the
# speeds above), both whole-device power at the battery (Android BatteryManager, unrooted):
# - Llama-3.1-8B Q4_K_M on the CPU (llama.cpp, 8 threads, 119-token prompt, 100 output tokens,
#   screen on at minimum brightness, median of 30 runs): 14.60 W average over each run (IQR 0.79),
#   at 10.45 tok/s decode and 18.27 tok/s prefill; the idle baseline subtracted from its energy is
#   0.10 A at the screen's minimum brightness, 0.44 W at 4.39 V. Ehsani, Giamattei, Malavolta,
#   Pietrantuono, "Sustainability Is Not Linear" (2026), github.com/eziyoo/LLMs-on-Devices
#   data/aggregated/final_results.csv (MIT licence).
# - LFM2-1.2B at 4 bits on the Hexagon NPU (Nexa Android SDK), 10 minutes sustained at about
#   90 tok/s: 6% of the battery (5,000 mAh at 3.88 V nominal, 19.4 Wh), 7.0 W on average
#   (Nexa AI, r/LocalLLM, 2025). Decode is weight streaming: 0.7 GB x 90 tok/s and the 8B
#   model's 4.9 GB x 12.9 tok/s on the NPU are both about 63 GB/s, so the NPU's draw for 8B is
#   taken as this one. It is a forum report (its display state unstated), the weaker of the two.
# The modelled phone serves at the NPU figure (the speeds are the NPU's); the CPU figure bounds it
# from above. docs/ECONOMICS.md (section 6) shows the verdicts over PHONE_POWER_RANGE_W.
PUBLISHED_PHONE_NPU_W = 0.06 * 5.0 * 3.88 * 3600 / 600
PUBLISHED_PHONE_CPU_8B_W = 14.60
_PHONE_IDLE_W = 0.10 * 4.388
_PHONE_PEAK_W = PUBLISHED_PHONE_NPU_W
PHONE_POWER_RANGE_W = (PUBLISHED_PHONE_NPU_W, PUBLISHED_PHONE_CPU_8B_W)
_PHONE_POWER_SOURCES = (
    f"measured whole-device power on a Galaxy S25 Ultra (Snapdragon 8 Elite): {PUBLISHED_PHONE_NPU_W:.1f} W on the "
    "Hexagon NPU (LFM2-1.2B 4-bit at ~90 tok/s, 6% of the battery in 10 min; Nexa AI, r/LocalLLM, 2025; the same "
    "weight stream per second as 8B at 12.9 tok/s); 14.6 W for Llama-3.1-8B Q4_K_M on the CPU with llama.cpp "
    "(BatteryManager, median of 30 runs; Ehsani et al. 2026, github.com/eziyoo/LLMs-on-Devices)")


def phone() -> DeviceSpec:
    from workers.devices import (_H100_DECODE_OVERHEAD_PER_LAYER_S, _H100_DECODE_SERIAL_FRACTION,
                                 _H100_PREFILL_OVERHEAD_PER_LAYER_S, _NO_COPY_MEASURED, DeviceSpec)

    device = fitted(DeviceSpec(
        name="phone",
        kind="edge",
        bf16_flops=_PHONE_FLOPS,
        fp8_flops=None,
        memory_bytes=8e9,
        memory_bw_bytes_s=_PHONE_BW,
        interconnect_bw_bytes_s=0.0,
        idle_power_w=_PHONE_IDLE_W,
        peak_power_w=_PHONE_PEAK_W,
        price_usd_per_hour=None,
        max_chips_per_instance=1,
        compute_efficiency=0.5,  # provisional: solved by fitted()
        weight_bw_efficiency=0.5,  # provisional: solved by fitted()
        kv_bw_efficiency=0.5,
        attn_parallel_units=8.0,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=_H100_PREFILL_OVERHEAD_PER_LAYER_S,
        decode_overhead_per_layer_s=_H100_DECODE_OVERHEAD_PER_LAYER_S,
        collective_latency_s=0.0,
        energy_per_flop_j=1e-12,  # provisional: set below
        energy_per_byte_j=1e-12,
        kv_transfer_setup_s=30e-3,
        host_power_share=0.1,
        sources={
            "bf16_flops": "assumption: half the INT8 rate for FP16 on the Hexagon NPU (45 TOPS INT8)",
            "fp8_flops": "none used: w4a16 kernels compute with 16-bit activations (Qualcomm AI Hub "
                         "Llama-v3-8B-Chat is w4a16), so the 45 TOPS INT8 rate does not apply",
            "memory_bytes": "flagship phone with 16 GB LPDDR5X; assumption: about half is available "
                            "to one foreground model, 8 GB",
            "memory_bw_bytes_s": "Snapdragon 8 Elite product brief: LPDDR5X at 5,300 MHz on a 64-bit bus, 84.8 GB/s",
            "interconnect_bw_bytes_s": "single device; no chip-to-chip link",
            "idle_power_w": "measured: the idle baseline of a Galaxy S25 Ultra with the screen at minimum "
                            "brightness, 0.10 A at 4.39 V (Ehsani et al. 2026, github.com/eziyoo/LLMs-on-Devices)",
            "peak_power_w": "serving power, " + _PHONE_POWER_SOURCES + f"; the NPU figure is modelled, the range "
                            f"{PHONE_POWER_RANGE_W[0]:.1f}-{PHONE_POWER_RANGE_W[1]:.1f} W is shown in docs/ECONOMICS.md",
            "price_usd_per_hour": "owned device, not billed per hour",
            "max_chips_per_instance": "one phone",
            "compute_efficiency": f"solved so 8B prefill runs at {PUBLISHED_PHONE_PREFILL_TOK_S:.0f} tok/s: Qualcomm "
                                  "AI Hub, Llama-3.1-8B architecture w4a16 on Snapdragon 8 Elite, TTFT 5.10 s "
                                  "for 4,096 tokens (qualcomm/Llama-SEA-LION-v3.5-8B-R model card)",
            "weight_bw_efficiency": f"solved so 8B decode runs at {PUBLISHED_PHONE_DECODE_TOK_S:.2f} tok/s: Qualcomm AI "
                                    "Hub response rate on Snapdragon 8 Elite (same model card)",
            "kv_bw_efficiency": "as weight_bw_efficiency",
            "attn_parallel_units": "assumption: one sequence's 8 KV heads fill the NPU's vector units",
            "decode_serial_fraction": "reused from the H100 fit (no NPU measurements)",
            "prefill_overhead_per_layer_s": "reused from the H100 fit (folded into the prefill fit)",
            "decode_overhead_per_layer_s": "reused from the H100 fit (no NPU measurements)",
            "collective_latency_s": "single device; no collectives",
            "energy_per_flop_j": "the measured serving power above idle (peak - idle) at the fitted compute rate",
            "energy_per_byte_j": "the measured serving power above idle (peak - idle) at the fitted streaming rate",
            "kv_transfer_setup_s": "assumption: mobile network round trip and connection setup, about 30 ms",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "parallelism": "single device; no model splitting",
            "host_power_share": "assumption: charger losses, about 10% (the measured power is at the battery, "
                                "display included)",
        },
        # Fitted at the Q4_K_M width the phone pools are configured with (4.92 GB, against the
        # measured w4a16 file's 4.8 GB), so a pool reproduces the measured rates.
    ), Q4_K_M_BITS_PER_WEIGHT / 8, PUBLISHED_PHONE_DECODE_TOK_S, PUBLISHED_PHONE_PREFILL_TOK_S)
    # The measured serving power above idle at full streaming and at full compute, as the fitted
    # rates reach them.
    dyn_w = _PHONE_PEAK_W - _PHONE_IDLE_W
    return dataclasses.replace(device, energy_per_byte_j=dyn_w / (device.weight_bw_efficiency * _PHONE_BW),
                               energy_per_flop_j=dyn_w / (device.compute_efficiency * _PHONE_FLOPS))
