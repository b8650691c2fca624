"""Device catalogue: what one chip can do, what it draws and what it costs.

A device is a roofline (dense FLOP/s, memory capacity and bandwidth,
chip-to-chip bandwidth) plus the efficiency factors, fixed overheads and
energy coefficients that turn the roofline into predicted step times and
joules (see workers/perf.py for how each is used). All figures are per chip;
an instance of several chips is built by InstancePerf.

The H100 efficiency, overhead and energy constants are fitted to measurements
(`python -m workers.calibration fit ../shared/calibration/h100_llama-3.1-8b.csv`).
Other GPUs reuse them: same software stack, same kernel families. A device can also
come from a YAML file (`infersched model fit` writes one; workers/device_files.py).
Devices with a different execution model (wafer, LPU, edge) say in `sources` which figures
come from a datasheet, which from a vendor throughput claim and which are
assumptions.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DeviceSpec", "DEVICES", "UnknownDeviceError", "get_device", "DEVICE_KINDS", "PARALLELISMS"]

DEVICE_KINDS: tuple[str, ...] = ("gpu", "wafer", "lpu", "edge")
# How an instance of several chips splits a model: "tensor" shards every layer over all chips
# (all-reduces per layer, chips stream in parallel); "pipeline" gives each chip a contiguous
# stage of layers, so a pass crosses chips-1 boundaries and the stages run one after another.
PARALLELISMS: tuple[str, ...] = ("tensor", "pipeline")

# Hours in an average year, to turn a purchase price into an hourly amortized cost.
_HOURS_PER_YEAR = 8766.0
# Owned hardware is amortized over three years of round-the-clock service, a common
# depreciation schedule for accelerators in cloud providers' annual reports.
_AMORTIZATION_YEARS = 3.0


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One chip (GPU, wafer, LPU, or edge SoC) and the constants of its performance model.

    Memory is HBM for GPUs, on-chip SRAM for wafer/LPU and the share of unified
    DRAM a model may use on edge devices. `fp8_flops` is the dense 8-bit peak
    (fp8, or int8 where the chip has no fp8); None where there is none.
    `interconnect_bw_bytes_s` is one direction of the chip-to-chip link inside
    an instance. Prices are per chip-hour; None for owned devices whose cost
    is not billed per hour.
    """

    name: str
    kind: str
    bf16_flops: float
    fp8_flops: float | None
    memory_bytes: float
    memory_bw_bytes_s: float
    interconnect_bw_bytes_s: float
    idle_power_w: float
    peak_power_w: float
    price_usd_per_hour: float | None
    # Largest instance: one NVLink domain for GPUs, one deployment for wafer/LPU, one device at the edge.
    max_chips_per_instance: int
    # Fraction of peak FLOP/s reached by large matmuls and attention.
    compute_efficiency: float
    # Fraction of peak bandwidth reached when streaming weights.
    weight_bw_efficiency: float
    # Fraction of peak bandwidth reached reading the KV cache when enough (sequence, KV head) pairs run at once.
    kv_bw_efficiency: float
    # (sequence, KV head) pairs needed to saturate memory in decode attention; fewer leave units idle.
    attn_parallel_units: float
    # Share of the shorter of compute and memory time that does not overlap with the longer one in decode.
    decode_serial_fraction: float
    # Fixed time per layer per iteration (kernel launches, synchronization, pipeline latency).
    prefill_overhead_per_layer_s: float
    decode_overhead_per_layer_s: float
    # Latency of one hop of an all-reduce between chips; an all-reduce over n chips takes log2(n) hops.
    collective_latency_s: float
    # Dynamic energy, on top of idle power: per FLOP executed and per byte read from or written to memory.
    energy_per_flop_j: float
    energy_per_byte_j: float
    # Fixed cost of starting a KV-cache transfer off this device (handshake, registration, first byte).
    kv_transfer_setup_s: float
    # Measured device-to-device copy bandwidth (bytes read + written per second): no stream reads
    # faster, so it bounds weight_bw_efficiency and kv_bw_efficiency. None where not measured.
    measured_copy_bw_bytes_s: float | None = None
    # One of PARALLELISMS; with "pipeline" collective_latency_s is the latency of one stage boundary.
    parallelism: str = "tensor"
    # Power drawn outside the chip's own counters while it serves, as a share of the chip's energy:
    # the host (CPUs, switches, NICs, fans, power-supply losses) of a server, the DRAM, fabric and
    # adapter of a laptop. Facility energy is (1 + host_power_share) x chip energy x the pool's PUE.
    host_power_share: float = 0.0
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"device {self.name!r}: kind must be one of {DEVICE_KINDS}, got {self.kind!r}")
        if self.parallelism not in PARALLELISMS:
            raise ValueError(f"device {self.name!r}: parallelism must be one of {PARALLELISMS}, "
                             f"got {self.parallelism!r}")
        positive = ("bf16_flops", "memory_bytes", "memory_bw_bytes_s", "peak_power_w", "compute_efficiency",
                    "weight_bw_efficiency", "kv_bw_efficiency", "attn_parallel_units")
        for key in positive:
            value = getattr(self, key)
            if not (value > 0) or not math.isfinite(value):
                raise ValueError(f"device {self.name!r}: {key} must be positive, got {value!r}")
        if self.max_chips_per_instance < 1:
            raise ValueError(f"device {self.name!r}: max_chips_per_instance must be >= 1")
        if not 0.0 <= self.idle_power_w <= self.peak_power_w:
            raise ValueError(f"device {self.name!r}: need 0 <= idle_power_w <= peak_power_w")
        if not 0.0 <= self.decode_serial_fraction <= 1.0:
            raise ValueError(f"device {self.name!r}: decode_serial_fraction must be in [0, 1]")
        for key in ("prefill_overhead_per_layer_s", "decode_overhead_per_layer_s", "collective_latency_s",
                    "energy_per_flop_j", "energy_per_byte_j", "kv_transfer_setup_s", "interconnect_bw_bytes_s",
                    "host_power_share"):
            value = getattr(self, key)
            if not (value >= 0) or not math.isfinite(value):
                raise ValueError(f"device {self.name!r}: {key} must be >= 0, got {value!r}")
        if self.measured_copy_bw_bytes_s is not None:
            if not (self.measured_copy_bw_bytes_s > 0):
                raise ValueError(f"device {self.name!r}: measured_copy_bw_bytes_s must be positive")
            ceiling = self.stream_ceiling
            for key in ("weight_bw_efficiency", "kv_bw_efficiency"):
                if getattr(self, key) > ceiling * (1 + 1e-9):
                    raise ValueError(f"device {self.name!r}: {key} {getattr(self, key):.4g} exceeds the measured "
                                     f"copy ceiling ({ceiling:.4g} of the datasheet bandwidth)")

    @property
    def stream_ceiling(self) -> float:
        """Largest attainable share of the datasheet bandwidth: measured copy / datasheet (1 if unmeasured)."""
        if self.measured_copy_bw_bytes_s is None:
            return 1.0
        return min(1.0, self.measured_copy_bw_bytes_s / self.memory_bw_bytes_s)


class UnknownDeviceError(KeyError):
    """A device name not in the catalogue; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


# --- H100 constants fitted to ../shared/calibration/h100_llama-3.1-8b.csv -------------
# Reproduce with: python -m workers.calibration fit ../shared/calibration/h100_llama-3.1-8b.csv
_FIT_SOURCE = "fit to H100 measurements: python -m workers.calibration fit ../shared/calibration/h100_llama-3.1-8b.csv"
# Datasheet figures of the fitted reference, also used to carry the fitted energy to other chips.
_H100_BF16_FLOPS = 989e12
_H100_MEMORY_BW = 3.35e12
_H100_IDLE_W = 147.5
_H100_PEAK_W = 700.0
_H100_SMS = 132
# Measured in the same run as the CSV: no stream reads faster (2.97 / 3.35 = 0.887 of the datasheet).
_H100_COPY_BW = 2.97e12
_H100_COMPUTE_EFFICIENCY = 0.6160
# One shape was measured, so weight streaming is pinned at the copy ceiling and the fixed time per
# layer (about 14 kernels per layer in the measured CUDA-graph decode step) is fitted on top of it.
_H100_WEIGHT_BW_EFFICIENCY = _H100_COPY_BW / _H100_MEMORY_BW
# The fit runs into the same ceiling for KV reads.
_H100_KV_BW_EFFICIENCY = _H100_COPY_BW / _H100_MEMORY_BW
_H100_ATTN_PARALLEL_UNITS = 72.29
_H100_DECODE_SERIAL_FRACTION = 0.3169
_H100_PREFILL_OVERHEAD_PER_LAYER_S = 113.8e-6
_H100_DECODE_OVERHEAD_PER_LAYER_S = 53.55e-6
_H100_ENERGY_PER_FLOP_J = 0.9097e-12
_H100_ENERGY_PER_BYTE_J = 152.1e-12


def _scaled_energy(bf16_flops: float, memory_bw_bytes_s: float, idle_w: float, peak_w: float) -> tuple[float, float]:
    """Energy per FLOP and per byte for a chip without its own energy measurements.

    Assumes the chip spends the same share of its dynamic power range
    (peak - idle) at full compute, and at full bandwidth, as the fitted H100:
    e.g. SRAM devices move a byte for far less energy than HBM because their
    power range is spread over far more bandwidth.
    """
    h100_range_w = _H100_PEAK_W - _H100_IDLE_W
    flop_j = _H100_ENERGY_PER_FLOP_J * (peak_w - idle_w) / h100_range_w * _H100_BF16_FLOPS / bf16_flops
    byte_j = _H100_ENERGY_PER_BYTE_J * (peak_w - idle_w) / h100_range_w * _H100_MEMORY_BW / memory_bw_bytes_s
    return flop_j, byte_j


def _amortized_usd_per_hour(purchase_usd: float) -> float:
    return purchase_usd / (_AMORTIZATION_YEARS * _HOURS_PER_YEAR)


# Host power: an 8-GPU HGX/DGX H100 system is rated 10.2 kW maximum (NVIDIA DGX H100 user guide,
# power specifications) against 8 x 700 W of GPUs; the rest (CPUs, NVSwitches, NICs, fans,
# power-supply losses) is 0.82 of the GPUs' power at full load. The share at full load is used
# at every load: an upper end (hosts idle lower), stated as such in docs/ECONOMICS.md.
_HGX_H100_HOST_SHARE = (10.2e3 - 8 * 700.0) / (8 * 700.0)
_DGX_B200_HOST_SHARE = (14.3e3 - 8 * 1000.0) / (8 * 1000.0)
_HGX_HOST_NOTE = ("DGX H100 user guide: 10.2 kW maximum system power vs 8 x 700 W of GPUs: "
                  "(10.2 - 5.6) / 5.6 = 0.82 (the full-load share, used at every load)")
_SCALED_ENERGY_NOTE = ("derived: H100 fitted energy scaled by this chip's (peak - idle) power "
                       "per FLOP/s (per byte/s for bytes); no measurements of its own")
_NO_COPY_MEASURED = "not measured on this device; efficiencies are bounded by the datasheet bandwidth"
_GPU_REUSE_NOTE = "reused from the H100 fit (same CUDA kernels and engine); no measurements of its own"


def _h100() -> DeviceSpec:
    return DeviceSpec(
        name="h100-sxm",
        kind="gpu",
        bf16_flops=_H100_BF16_FLOPS,
        fp8_flops=1979e12,
        memory_bytes=80e9,
        memory_bw_bytes_s=_H100_MEMORY_BW,
        interconnect_bw_bytes_s=450e9,
        idle_power_w=_H100_IDLE_W,
        peak_power_w=_H100_PEAK_W,
        price_usd_per_hour=2.99,
        max_chips_per_instance=8,
        compute_efficiency=_H100_COMPUTE_EFFICIENCY,
        weight_bw_efficiency=_H100_WEIGHT_BW_EFFICIENCY,
        kv_bw_efficiency=_H100_KV_BW_EFFICIENCY,
        attn_parallel_units=_H100_ATTN_PARALLEL_UNITS,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=_H100_PREFILL_OVERHEAD_PER_LAYER_S,
        decode_overhead_per_layer_s=_H100_DECODE_OVERHEAD_PER_LAYER_S,
        collective_latency_s=3e-6,
        energy_per_flop_j=_H100_ENERGY_PER_FLOP_J,
        energy_per_byte_j=_H100_ENERGY_PER_BYTE_J,
        kv_transfer_setup_s=0.5e-3,
        host_power_share=_HGX_H100_HOST_SHARE,
        measured_copy_bw_bytes_s=_H100_COPY_BW,
        sources={
            "bf16_flops": "NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOP/s dense BF16 (SXM)",
            "fp8_flops": "NVIDIA H100 Tensor Core GPU datasheet: 1,979 TFLOP/s dense FP8 (SXM)",
            "memory_bytes": "NVIDIA H100 datasheet: 80 GB HBM3 (SXM)",
            "memory_bw_bytes_s": "NVIDIA H100 datasheet: 3.35 TB/s HBM3 (SXM)",
            "interconnect_bw_bytes_s": "NVIDIA H100 datasheet: NVLink 900 GB/s bidirectional, 450 GB/s per direction",
            "idle_power_w": "measured 145-150 W idle board power (../shared/calibration/README.md)",
            "peak_power_w": "NVIDIA H100 datasheet: up to 700 W TDP (SXM); calibration board power limit 700 W",
            "price_usd_per_hour": "Lambda Cloud on-demand 8x H100 SXM, about US$2.99 per GPU-hour (2025 list price)",
            "max_chips_per_instance": "HGX H100: 8 GPUs in one NVLink domain",
            "compute_efficiency": _FIT_SOURCE,
            "weight_bw_efficiency": _FIT_SOURCE + " (pinned at the measured copy ceiling: one shape measured)",
            "kv_bw_efficiency": _FIT_SOURCE + " (at the measured copy ceiling)",
            "attn_parallel_units": _FIT_SOURCE + " (H100 SXM has 132 SMs)",
            "decode_serial_fraction": _FIT_SOURCE,
            "prefill_overhead_per_layer_s": _FIT_SOURCE + " (eager PyTorch, no CUDA graph)",
            "decode_overhead_per_layer_s": _FIT_SOURCE + " (CUDA-graph decode; the time above streaming "
                                           "at the copy ceiling)",
            "collective_latency_s": "NCCL small-message all-reduce over NVLink: about 10 us for 8 GPUs "
                                    "(nccl-tests), i.e. about 3 us per log2 step",
            "energy_per_flop_j": _FIT_SOURCE,
            "energy_per_byte_j": _FIT_SOURCE + " (includes clocks-up baseline while streaming HBM)",
            "kv_transfer_setup_s": "assumption: one RDMA registration + handshake per transfer, "
                                   "sub-millisecond in Mooncake/NIXL reports",
            "measured_copy_bw_bytes_s": "measured device-to-device copy, 2.96-2.98 TB/s read + written "
                                        "(../shared/calibration/README.md)",
            "parallelism": "tensor parallelism inside one NVLink domain (the default of vLLM and TensorRT-LLM)",
            "host_power_share": _HGX_HOST_NOTE,
        },
    )


def _h200() -> DeviceSpec:
    idle_w, peak_w, flops, bw = 147.5, 700.0, 989e12, 4.8e12
    e_flop, e_byte = _scaled_energy(flops, bw, idle_w, peak_w)
    return DeviceSpec(
        name="h200",
        kind="gpu",
        bf16_flops=flops,
        fp8_flops=1979e12,
        memory_bytes=141e9,
        memory_bw_bytes_s=bw,
        interconnect_bw_bytes_s=450e9,
        idle_power_w=idle_w,
        peak_power_w=peak_w,
        price_usd_per_hour=3.50,
        max_chips_per_instance=8,
        compute_efficiency=_H100_COMPUTE_EFFICIENCY,
        weight_bw_efficiency=_H100_WEIGHT_BW_EFFICIENCY,
        kv_bw_efficiency=_H100_KV_BW_EFFICIENCY,
        attn_parallel_units=_H100_ATTN_PARALLEL_UNITS,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=_H100_PREFILL_OVERHEAD_PER_LAYER_S,
        decode_overhead_per_layer_s=_H100_DECODE_OVERHEAD_PER_LAYER_S,
        collective_latency_s=3e-6,
        energy_per_flop_j=e_flop,
        energy_per_byte_j=e_byte,
        kv_transfer_setup_s=0.5e-3,
        host_power_share=_HGX_H100_HOST_SHARE,
        sources={
            "bf16_flops": "NVIDIA H200 datasheet: 989 TFLOP/s dense BF16 (same GH100 compute as H100 SXM)",
            "fp8_flops": "NVIDIA H200 datasheet: 1,979 TFLOP/s dense FP8",
            "memory_bytes": "NVIDIA H200 datasheet: 141 GB HBM3e",
            "memory_bw_bytes_s": "NVIDIA H200 datasheet: 4.8 TB/s HBM3e",
            "interconnect_bw_bytes_s": "NVIDIA H200 datasheet: NVLink 900 GB/s bidirectional, 450 GB/s per direction",
            "idle_power_w": "assumption: same GH100 die and board class as the measured H100 (145-150 W)",
            "peak_power_w": "NVIDIA H200 datasheet: up to 700 W TDP (SXM)",
            "price_usd_per_hour": "typical 2025 on-demand list price, about US$3.50 per H200 GPU-hour "
                                  "(e.g. Nebius AI Cloud)",
            "max_chips_per_instance": "HGX H200: 8 GPUs in one NVLink domain",
            "compute_efficiency": _GPU_REUSE_NOTE,
            "weight_bw_efficiency": _GPU_REUSE_NOTE,
            "kv_bw_efficiency": _GPU_REUSE_NOTE,
            "attn_parallel_units": _GPU_REUSE_NOTE + " (H200 has the same 132 SMs)",
            "decode_serial_fraction": _GPU_REUSE_NOTE,
            "prefill_overhead_per_layer_s": _GPU_REUSE_NOTE,
            "decode_overhead_per_layer_s": _GPU_REUSE_NOTE,
            "collective_latency_s": "same NVLink 4 fabric as H100 (nccl-tests, about 3 us per log2 step)",
            "energy_per_flop_j": _SCALED_ENERGY_NOTE,
            "energy_per_byte_j": _SCALED_ENERGY_NOTE,
            "kv_transfer_setup_s": "assumption: as for h100-sxm",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "parallelism": "tensor parallelism inside one NVLink domain (the default of vLLM and TensorRT-LLM)",
            "host_power_share": _HGX_HOST_NOTE + " (DGX H200: the same 10.2 kW)",
        },
    )


def _b200() -> DeviceSpec:
    idle_w, peak_w, flops, bw = 210.0, 1000.0, 2.25e15, 8.0e12
    e_flop, e_byte = _scaled_energy(flops, bw, idle_w, peak_w)
    sms = 148
    return DeviceSpec(
        name="b200",
        kind="gpu",
        bf16_flops=flops,
        fp8_flops=4.5e15,
        memory_bytes=180e9,
        memory_bw_bytes_s=bw,
        interconnect_bw_bytes_s=900e9,
        idle_power_w=idle_w,
        peak_power_w=peak_w,
        price_usd_per_hour=4.99,
        max_chips_per_instance=8,
        compute_efficiency=_H100_COMPUTE_EFFICIENCY,
        weight_bw_efficiency=_H100_WEIGHT_BW_EFFICIENCY,
        kv_bw_efficiency=_H100_KV_BW_EFFICIENCY,
        attn_parallel_units=_H100_ATTN_PARALLEL_UNITS * sms / _H100_SMS,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=_H100_PREFILL_OVERHEAD_PER_LAYER_S,
        decode_overhead_per_layer_s=_H100_DECODE_OVERHEAD_PER_LAYER_S,
        collective_latency_s=3e-6,
        energy_per_flop_j=e_flop,
        energy_per_byte_j=e_byte,
        kv_transfer_setup_s=0.5e-3,
        host_power_share=_DGX_B200_HOST_SHARE,
        sources={
            "bf16_flops": "NVIDIA HGX B200 datasheet: 2.25 PFLOP/s dense FP16/BF16 per GPU",
            "fp8_flops": "NVIDIA HGX B200 datasheet: 4.5 PFLOP/s dense FP8 per GPU",
            "memory_bytes": "NVIDIA HGX B200 datasheet: 1.44 TB HBM3e per 8 GPUs, 180 GB per GPU",
            "memory_bw_bytes_s": "NVIDIA DGX B200 datasheet: 64 TB/s HBM3e per 8 GPUs, 8 TB/s per GPU",
            "interconnect_bw_bytes_s": "NVIDIA Blackwell datasheet: NVLink 5 1.8 TB/s bidirectional, "
                                       "900 GB/s per direction",
            "idle_power_w": "assumption: measured H100 idle share of TDP (147.5/700) applied to 1,000 W",
            "peak_power_w": "NVIDIA HGX B200 datasheet: 1,000 W per GPU",
            "price_usd_per_hour": "Lambda Cloud on-demand 8x B200, about US$4.99 per GPU-hour (2025 list price)",
            "max_chips_per_instance": "HGX B200: 8 GPUs in one NVLink domain",
            "compute_efficiency": _GPU_REUSE_NOTE,
            "weight_bw_efficiency": _GPU_REUSE_NOTE,
            "kv_bw_efficiency": _GPU_REUSE_NOTE,
            "attn_parallel_units": "H100 fit scaled by SM count, 148 (B200) / 132 (H100)",
            "decode_serial_fraction": _GPU_REUSE_NOTE,
            "prefill_overhead_per_layer_s": _GPU_REUSE_NOTE,
            "decode_overhead_per_layer_s": _GPU_REUSE_NOTE,
            "collective_latency_s": "assumption: as NVLink 4 on H100 (about 3 us per log2 step)",
            "energy_per_flop_j": _SCALED_ENERGY_NOTE,
            "energy_per_byte_j": _SCALED_ENERGY_NOTE,
            "kv_transfer_setup_s": "assumption: as for h100-sxm",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "parallelism": "tensor parallelism inside one NVLink domain (the default of vLLM and TensorRT-LLM)",
            "host_power_share": "DGX B200 user guide: about 14.3 kW maximum system power vs 8 x 1,000 W of GPUs: (14.3 - 8) / 8",
        },
    )


# How the wafer serves (the structure of its step time). Cerebras spreads a model over CS-3
# systems a stage of layers per wafer ("20B models fit on a single CS-3 while 70B models fit on
# as few as four systems", launch blog), so a pass is a pipeline with one hop per wafer boundary.
# Weights stay resident in the SRAM of the cores that hold them (44 GB over 900,000 cores) and
# are read in place, every core its own share at once: a layer's read takes (bytes held per
# wafer) / (wafer bandwidth), about 1-2 us at 21 PB/s, whatever the layer's size (workers/perf.py).
# What remains of a layer's time is latency: partial sums reduced and broadcast across the core
# mesh, the cost WaferLLM (He et al., OSDI 2025, arXiv:2502.04563) models wafer decode by. So per
# layer a fixed latency, fitted to one figure of today's software: Llama 3.1 8B at about 2,000
# tokens/s on one wafer after the October 2024 release (Val Town's Cerebras template, 17 Jan
# 2025: "2k tokens per second"; Continue's provider page: "2000+").
# The launch pair (Aug 2024: 8B at 1,800 tokens/s, 70B at 450 on four wafers) is not used: that
# release ran wafer IO synchronously with compute, which the October release changed ("Wafer IO
# has been streamlined to run asynchronously from compute ... This release also implements
# speculative decoding"), so its 70B pass carries transfer time this model does not price
# (docs/FIDELITY.md shows how much). Speculative decoding is priced separately (workers/speculative.py).
_WSE3_8B_TOKENS_S = 2000.0
# The mean context per sequence the fitted figure is taken at, as `model predict` defaults to.
_WSE3_FIT_CONTEXT = 1024
# Assumption: one wafer boundary (Ethernet RDMA through the cluster fabric) costs about 10 us.
_WSE3_HOP_S = 10e-6
_WSE3_MEMORY_BW = 21e15
_WSE3_LINK_BW = 150e9


def _wse3_per_layer_s(without: DeviceSpec) -> float:
    """Fixed seconds per layer that make Llama 3.1 8B decode at batch 1 on one wafer give
    _WSE3_8B_TOKENS_S, given the rest of the device (`without`: no per-layer time)."""
    from workers.models import get_model  # models never import devices: no cycle
    from workers.perf import InstancePerf  # perf imports this module: import when the catalogue is built

    m8 = get_model("llama-3.1-8b")
    rest_s = InstancePerf(without, m8, 1).decode(1, float(_WSE3_FIT_CONTEXT), 1)[0]
    return (1.0 / _WSE3_8B_TOKENS_S - rest_s) / m8.layers


def _wse3() -> DeviceSpec:
    idle_w, peak_w, flops, bw = 7000.0, 23000.0, 125e15, _WSE3_MEMORY_BW
    e_flop, e_byte = _scaled_energy(flops, bw, idle_w, peak_w)
    spec = DeviceSpec(
        name="wse-3",
        kind="wafer",
        bf16_flops=flops,
        fp8_flops=None,
        memory_bytes=44e9,
        memory_bw_bytes_s=bw,
        interconnect_bw_bytes_s=_WSE3_LINK_BW,
        idle_power_w=idle_w,
        peak_power_w=peak_w,
        price_usd_per_hour=_amortized_usd_per_hour(2.5e6),
        max_chips_per_instance=64,
        compute_efficiency=_H100_COMPUTE_EFFICIENCY,
        weight_bw_efficiency=_H100_WEIGHT_BW_EFFICIENCY,
        kv_bw_efficiency=_H100_KV_BW_EFFICIENCY,
        attn_parallel_units=1.0,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=0.0,
        decode_overhead_per_layer_s=0.0,
        collective_latency_s=_WSE3_HOP_S,
        energy_per_flop_j=e_flop,
        energy_per_byte_j=e_byte,
        kv_transfer_setup_s=1e-3,
        parallelism="pipeline",
        host_power_share=0.0,
        sources={
            "bf16_flops": "Cerebras WSE-3 announcement (Mar 2024): 125 PFLOP/s peak AI compute; "
                          "vendor peak, no separate dense figure published",
            "fp8_flops": "no fp8 peak published for WSE-3",
            "memory_bytes": "Cerebras WSE-3 announcement: 44 GB on-chip SRAM (weights stay on the wafer)",
            "memory_bw_bytes_s": "Cerebras WSE-3 announcement: 21 PB/s on-chip memory bandwidth",
            "interconnect_bw_bytes_s": "assumption: 12 x 100 GbE system I/O per CS-3 (as CS-2), 150 GB/s",
            "idle_power_w": "assumption: about 30% of peak; no idle figure published",
            "peak_power_w": "Cerebras CS-3 system specification: about 23 kW",
            "price_usd_per_hour": "assumption: CS-3 at about US$2.5M (press estimates) amortized over 3 years 24x7",
            "max_chips_per_instance": "assumption: a few dozen CS-3 systems per model deployment",
            "compute_efficiency": "reused from the H100 fit (no wafer measurements)",
            "weight_bw_efficiency": "reused from the H100 fit (the measured copy ceiling's share of the "
                                    "datasheet); weights are read in place, a layer in (bytes per wafer) / "
                                    "(this share of 21 PB/s), at most about an eighth of a layer's time",
            "kv_bw_efficiency": "reused from the H100 fit (no wafer measurements)",
            "attn_parallel_units": "assumption: dataflow cores hold the KV cache in place, "
                                   "no launch-occupancy penalty at small batch",
            "decode_serial_fraction": "reused from the H100 fit (no wafer measurements)",
            "prefill_overhead_per_layer_s": "assumption: same per-layer latency as decode",
            "decode_overhead_per_layer_s": "solved so Llama 3.1 8B batch-1 decode on one wafer gives 2,000 "
                                           "tokens/s (Cerebras service after its Oct 2024 release, as quoted "
                                           "by Val Town, Jan 2025, and Continue's docs); mesh latency "
                                           "(reduce/broadcast; WaferLLM, OSDI 2025, models wafer decode by it)",
            "collective_latency_s": "assumption: about 10 us per wafer boundary (Ethernet RDMA); a pass "
                                    "crosses chips-1 boundaries (pipeline of layer stages)",
            "parallelism": "Cerebras: \"20B models fit on a single CS-3 while 70B models fit on as few as "
                           "four systems\", a stage of layers per wafer (Cerebras Inference launch blog)",
            "energy_per_flop_j": _SCALED_ENERGY_NOTE,
            "energy_per_byte_j": _SCALED_ENERGY_NOTE,
            "kv_transfer_setup_s": "assumption: Ethernet RDMA transfer setup, about 1 ms",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "host_power_share": "none: the CS-3 system power (23 kW) is the peak_power_w already",
        },
    )
    per_layer_s = _wse3_per_layer_s(spec)
    return dataclasses.replace(spec, prefill_overhead_per_layer_s=per_layer_s,
                               decode_overhead_per_layer_s=per_layer_s)


# Groq throughput claims used for the LPU's fixed latencies: Artificial Analysis
# benchmarks (Apr 2024) measured Groq at 877 output tokens/s on Llama 3 8B and
# 284 tokens/s on Llama 3 70B.
_GROQ_8B_TOKENS_S = 877.0
_GROQ_70B_TOKENS_S = 284.0


def _groq() -> DeviceSpec:
    idle_w, peak_w, flops, bw = 95.0, 375.0, 188e12, 80e12
    e_flop, e_byte = _scaled_energy(flops, bw, idle_w, peak_w)
    # The LPU is latency-bound at batch 1 like the wafer. Two vendor points pin the two
    # latencies: 8B in bf16 needs 78 chips (log2 = 6.3 hops per all-reduce), 70B needs
    # 682 chips (9.4 hops). Solving 32a + 64*6.29*h = 1/877 and 80a + 160*9.41*h = 1/284:
    hops_8b = math.log2(78)
    hops_70b = math.log2(682)
    t8, t70 = 1.0 / _GROQ_8B_TOKENS_S, 1.0 / _GROQ_70B_TOKENS_S
    hop_s = (t70 - 2.5 * t8) / (160 * hops_70b - 2.5 * 64 * hops_8b)
    per_layer_s = (t8 - 64 * hops_8b * hop_s) / 32
    return DeviceSpec(
        name="groq-lpu",
        kind="lpu",
        bf16_flops=flops,
        fp8_flops=750e12,
        memory_bytes=230e6,
        memory_bw_bytes_s=bw,
        interconnect_bw_bytes_s=240e9,
        idle_power_w=idle_w,
        peak_power_w=peak_w,
        price_usd_per_hour=_amortized_usd_per_hour(20625.0),
        max_chips_per_instance=4096,
        compute_efficiency=_H100_COMPUTE_EFFICIENCY,
        weight_bw_efficiency=_H100_WEIGHT_BW_EFFICIENCY,
        kv_bw_efficiency=_H100_KV_BW_EFFICIENCY,
        attn_parallel_units=1.0,
        decode_serial_fraction=_H100_DECODE_SERIAL_FRACTION,
        prefill_overhead_per_layer_s=per_layer_s,
        decode_overhead_per_layer_s=per_layer_s,
        collective_latency_s=hop_s,
        energy_per_flop_j=e_flop,
        energy_per_byte_j=e_byte,
        kv_transfer_setup_s=1e-3,
        host_power_share=0.0,
        sources={
            "bf16_flops": "Groq GroqChip product brief: 188 TFLOP/s FP16",
            "fp8_flops": "Groq GroqChip product brief: 750 TOPS INT8 (no fp8; int8 used for 8-bit weights)",
            "memory_bytes": "Groq GroqChip product brief: 230 MB on-chip SRAM per chip",
            "memory_bw_bytes_s": "Groq GroqChip product brief: up to 80 TB/s on-die memory bandwidth",
            "interconnect_bw_bytes_s": "approximate: 16 RealScale chip-to-chip links of about 120 Gb/s each "
                                       "(GroqChip product brief)",
            "idle_power_w": "assumption: about 25% of the card's maximum; no idle figure published",
            "peak_power_w": "GroqCard accelerator product brief: 375 W maximum per card (one chip)",
            "price_usd_per_hour": "GroqCard list price about US$20,625 (Mouser listing, 2024) "
                                  "amortized over 3 years 24x7",
            "max_chips_per_instance": "assumption: several 576-chip GroqRack deployments per model",
            "compute_efficiency": "reused from the H100 fit (no LPU measurements)",
            "weight_bw_efficiency": "reused from the H100 fit (no LPU measurements)",
            "kv_bw_efficiency": "reused from the H100 fit (no LPU measurements)",
            "attn_parallel_units": "assumption: statically scheduled streaming, no occupancy penalty at small batch",
            "decode_serial_fraction": "reused from the H100 fit (no LPU measurements)",
            "prefill_overhead_per_layer_s": "assumption: same per-layer latency as decode",
            "decode_overhead_per_layer_s": "solved with collective_latency_s from Artificial Analysis "
                                           "(Apr 2024): 877 tokens/s Llama 3 8B, 284 tokens/s Llama 3 70B",
            "collective_latency_s": "solved with decode_overhead_per_layer_s from the same two benchmarks",
            "energy_per_flop_j": _SCALED_ENERGY_NOTE,
            "energy_per_byte_j": _SCALED_ENERGY_NOTE,
            "kv_transfer_setup_s": "assumption: Ethernet RDMA transfer setup, about 1 ms",
            "measured_copy_bw_bytes_s": _NO_COPY_MEASURED,
            "parallelism": "assumption: every layer sharded over the chips with per-layer all-reduces, "
                           "as the two-point fit above assumes",
            "host_power_share": "not counted: no GroqNode/GroqRack system power figure per chip is published",
        },
    )


# The edge devices are fitted to published measurements in their own module, which reads the
# constants above when its builders run (on the catalogue's first use, below).
from workers.edge_devices import m4_max, phone  # noqa: E402

class _Catalogue(Mapping):
    """The catalogue, built on first use: the edge devices are fitted on the performance model
    (workers/perf.py), which imports this module, so they cannot be built while it loads."""

    def __init__(self, *builders):
        self._builders = builders
        self._devices: dict[str, DeviceSpec] | None = None

    def _all(self) -> dict[str, DeviceSpec]:
        if self._devices is None:
            self._devices = {d.name: d for d in (build() for build in self._builders)}
        return self._devices

    def __getitem__(self, name: str) -> DeviceSpec:
        return self._all()[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


DEVICES: Mapping[str, DeviceSpec] = _Catalogue(_h100, _h200, _b200, _wse3, _groq, m4_max, phone)


def get_device(name: str) -> DeviceSpec:
    """A catalogue device by name, or a device spec file (workers/device_files.py) by path;
    unknown names raise UnknownDeviceError listing the known ones."""
    if name not in DEVICES:
        from workers.device_files import load_device_file, looks_like_path

        if looks_like_path(name):
            return load_device_file(name)
    try:
        return DEVICES[name]
    except KeyError:
        raise UnknownDeviceError(f"unknown device {name!r}; known devices: {', '.join(sorted(DEVICES))}") from None
