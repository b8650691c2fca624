"""PNG plots: latency CDFs and per-pool utilization over time."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scheduler.types import RequestStatus  # noqa: E402


def _cdf(ax, values: np.ndarray, label: str, slo: float | None) -> None:
    values = np.sort(values[np.isfinite(values)])
    if len(values) == 0:
        ax.set_title(f"{label}: no data")
        return
    y = np.arange(1, len(values) + 1) / len(values)
    ax.plot(values, y, lw=1.5)
    if slo is not None:
        ax.axvline(slo, color="red", ls="--", lw=1, label=f"SLO {slo:g} s")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (s)")
    ax.set_ylabel("share of requests")
    ax.grid(alpha=0.3, which="both")


def plot_latency_cdfs(result, path: Path) -> Path:
    rec = result.records
    slo = result.cluster.config.slo
    done = rec.status == RequestStatus.COMPLETED
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _cdf(axes[0], rec.ttft_s()[done], "TTFT", slo.ttft_s)
    _cdf(axes[1], rec.tpot_s()[done], "TPOT", slo.tpot_s)
    _cdf(axes[2], rec.e2e_s()[done], "end-to-end latency", None)
    fig.suptitle(f"{result.cluster.config.name} / {result.policy_name}: {done.sum():,} completed requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_utilization(result, path: Path) -> Path:
    times, util = result.utilization.series()
    fig, ax = plt.subplots(figsize=(10, 4))
    for pool, row in zip(result.cluster.pools, util):
        ax.step(times, row * 100, where="post", lw=1.2, label=f"{pool.name} ({pool.perf.device.name}, {pool.role.name.lower()})")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("busy instances (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Pool utilization over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
