"""What moving and holding KV costs on each medium below HBM, from published figures.

A tier or the store may name its `medium` (kv_tiers[].medium, kv_store.medium):
its `energy_j_per_gb` (per GB moved in or out) and `usd_per_gb_hour` (capacity)
then default to the figures here; a value given in the cluster file wins.
Each figure carries its arithmetic and sources (docs/KV_TIERS.md prints them).
Energy counts the data path's dynamic energy (memory arrays, links, NICs at
line rate), not idle power: the instance's idle power is already in its device.
Prices are cloud list prices per GB of capacity, the marginal price of the
memory or drive, not of a whole server.
"""
from __future__ import annotations

from dataclasses import dataclass

# pJ/bit -> J/GB: 1e-12 J * 8e9 bits.
_PJ_PER_BIT_TO_J_PER_GB = 8e-3
_HOURS_PER_MONTH = 730.0  # AWS bills GB-months of 730 hours

# DRAM access: 1.3-2.6 nJ per 64-bit word (Horowitz, "Computing's energy problem (and what
# we can do about it)", ISSCC 2014): 20-40 pJ/bit; the midpoint.
DRAM_PJ_PER_BIT = 30.0
# HBM2 access: 3.9 pJ/bit (O'Connor et al., "Fine-Grained DRAM", MICRO 2017).
HBM_PJ_PER_BIT = 3.9
# Host DRAM's marginal cloud price: AWS EC2 on-demand, us-east-1, r7i.xlarge (4 vCPU,
# 32 GiB) $0.2646/h less m7i.xlarge (4 vCPU, 16 GiB) $0.2016/h: $0.063/h for 16 GiB.
DRAM_USD_PER_GB_HOUR = (0.2646 - 0.2016) / (16 * 1.073741824)
# NVMe: Solidigm D7-P5510 7.68 TB, PCIe 4.0 x4: 7,000 MB/s read, 4,194 MB/s write
# (solidigm.com product page); ~18 W active (the drive's specified active power class:
# an assumption where the datasheet was not at hand). Energy per GB: watts over GB/s,
# averaged over a read and a write.
NVME_ACTIVE_W = 18.0
NVME_READ_GB_S, NVME_WRITE_GB_S = 7.0, 4.194
# SSD capacity at cloud block-storage price: AWS EBS gp3, us-east-1, $0.08 per GB-month.
NVME_USD_PER_GB_MONTH = 0.08
# RDMA pool (Mooncake Store): a 400 Gb/s NIC at each end (NVIDIA ConnectX-7, ~20 W
# assumed per card) with its OSFP transceiver (NVIDIA MMS4X00-NS400: 9 W typical at 400 Gb/s,
# docs.nvidia.com), so 2 x 29 W over 50 GB/s, plus the remote DRAM access.
NIC_W, TRANSCEIVER_W, NIC_GB_S = 20.0, 9.0, 50.0


@dataclass(frozen=True, slots=True)
class Medium:
    name: str
    energy_j_per_gb: float
    usd_per_gb_hour: float
    energy_source: str
    price_source: str


MEDIA = {m.name: m for m in (
    Medium("dram", (DRAM_PJ_PER_BIT + HBM_PJ_PER_BIT) * _PJ_PER_BIT_TO_J_PER_GB, DRAM_USD_PER_GB_HOUR,
           "host DRAM 20-40 pJ/bit (Horowitz, ISSCC 2014; midpoint 30) + HBM2 3.9 pJ/bit (O'Connor et al., "
           "MICRO 2017) for each byte copied; PCIe link energy left out",
           "AWS EC2 on-demand us-east-1: r7i.xlarge $0.2646/h - m7i.xlarge $0.2016/h for 16 GiB more DRAM"),
    Medium("nvme", NVME_ACTIVE_W * (1 / NVME_READ_GB_S + 1 / NVME_WRITE_GB_S) / 2
           + (DRAM_PJ_PER_BIT + HBM_PJ_PER_BIT) * _PJ_PER_BIT_TO_J_PER_GB, NVME_USD_PER_GB_MONTH / _HOURS_PER_MONTH,
           "Solidigm D7-P5510 7.68 TB: 7,000 / 4,194 MB/s read/write (product page), ~18 W active (assumed), "
           "averaged over read and write, plus the host DRAM bounce buffer",
           "AWS EBS gp3 us-east-1: $0.08 per GB-month / 730 h"),
    Medium("rdma", 2 * (NIC_W + TRANSCEIVER_W) / NIC_GB_S + (DRAM_PJ_PER_BIT + HBM_PJ_PER_BIT)
           * _PJ_PER_BIT_TO_J_PER_GB, DRAM_USD_PER_GB_HOUR,
           "two 400 Gb/s ends, each a ConnectX-7 NIC (~20 W, assumed) + an OSFP transceiver (MMS4X00-NS400, 9 W "
           "typical, docs.nvidia.com), at 50 GB/s; plus the remote DRAM and local HBM access",
           "pooled DRAM at host DRAM's marginal price (Mooncake Store pools the GPU servers' own DRAM)"),
)}
