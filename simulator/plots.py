"""PNG plots: latency CDFs, pool occupancy over time, and the cost/energy/quality Pareto plot.

Busy-instance time says little about decode: an instance with one sequence
in its batch is as "busy" as one with 256, so decode pools sit at 100%. The
occupancy plot therefore shows, per decode-capable pool, the share of batch
slots and of KV memory that running sequences hold (time-averaged per bin,
integrated exactly from the per-request records), and busy time only for
prefill-only pools, where it is the right measure. Legends sit outside the
axes, so no line is covered, and every pool is listed with its mean.
Energy is in kWh, as in every table.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.ledger import record_chunks  # noqa: E402
from simulator.metrics import result_tally  # noqa: E402

JOULES_PER_KWH = 3.6e6
OCCUPANCY_BINS = 240
# Points per CDF curve: evenly spaced order statistics (a line through ten million points
# costs matplotlib gigabytes and looks the same).
CDF_POINTS = 4096


def _cdf(ax, values: np.ndarray, label: str, slo: float | None) -> None:
    """`values` (finite) are sorted in place."""
    values.sort()
    n = len(values)
    if n == 0:
        ax.set_title(f"{label}: no data")
        return
    ranks = np.unique(np.linspace(0, n - 1, min(n, CDF_POINTS)).astype(np.int64))
    ax.plot(values[ranks], (ranks + 1) / n, lw=1.5)
    if slo is not None:
        ax.axvline(slo, color="red", ls="--", lw=1, label=f"SLO {slo:g} s")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (s)")
    ax.set_ylabel("share of requests")
    ax.grid(alpha=0.3, which="both")


def plot_latency_cdfs(result, path: Path) -> Path:
    tally = result_tally(result)  # the completed requests' latencies, kept for the summary
    tally.latency_stats()  # the summary's figures first: the plots reorder the columns
    slo = result.cluster.config.slo
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _cdf(axes[0], tally.ttft_s.filled(), "TTFT", slo.ttft_s)
    _cdf(axes[1], tally.tpot_s.filled(), "TPOT", slo.tpot_s)
    _cdf(axes[2], tally.e2e_s.filled(), "end-to-end latency", None)
    fig.suptitle(f"{result.cluster.config.name} / {result.policy_name}: {tally.completed:,} completed requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def integrated_linear(start_s: np.ndarray, end_s: np.ndarray, base: np.ndarray, slope: np.ndarray,
                      edges_s: np.ndarray) -> np.ndarray:
    """Integral from 0 to each edge of sum_i f_i(t), f_i(t) = base_i + slope_i (t - start_i) on
    [start_i, end_i) and 0 elsewhere. Exact, in O((n + edges) log n), with prefix sums over the
    requests sorted by start and by end: a request that started by T contributes
    c2 T^2 + c1 T + c0; one that also ended by T gives back what it would have added past its end."""
    dur = end_s - start_s
    c2 = slope / 2
    c1 = base - slope * start_s
    c0 = -base * start_s + slope * start_s ** 2 / 2
    done = base * dur + slope * dur ** 2 / 2

    def prefix(order, *cols):
        return [np.concatenate([[0.0], np.cumsum(c[order])]) for c in cols]

    by_start = np.argsort(start_s, kind="stable")
    by_end = np.argsort(end_s, kind="stable")
    s2, s1, s0 = prefix(by_start, c2, c1, c0)
    e2, e1, e0, ed = prefix(by_end, c2, c1, c0, done)
    k = np.searchsorted(start_s[by_start], edges_s, side="right")
    j = np.searchsorted(end_s[by_end], edges_s, side="right")
    t = edges_s
    started = s2[k] * t * t + s1[k] * t + s0[k]
    ended = e2[j] * t * t + e1[j] * t + e0[j] - ed[j]
    return started - ended


OCCUPANCY_COLUMNS = ("first_token_s", "decode_start_s", "finish_s", "decode_instance", "input_tokens",
                     "output_tokens")


def pool_occupancy(result, bins: int = OCCUPANCY_BINS):
    """(bin start times, batch-slot share [pools x bins], KV-memory share [pools x bins]), per pool from the
    requests that decoded there: a sequence holds one batch slot and its prompt plus the tokens generated so
    far (linear in time) of KV from its first decode step to its last. The integrals add up over
    requests, so records read back from disk in blocks give the same curves as records in memory."""
    pools = result.cluster.pools
    makespan = max(float(result.makespan_s), 1e-9)
    edges = np.linspace(0.0, makespan, bins + 1)
    width = np.diff(edges)
    pool_of = np.concatenate([np.full(len(p.instances), i) for i, p in enumerate(pools)]).astype(np.int64)
    seqs = np.zeros((len(pools), bins + 1))
    tokens = np.zeros((len(pools), bins + 1))
    for rec in record_chunks(result, OCCUPANCY_COLUMNS):
        finish = rec["finish_s"]
        start = np.where(np.isfinite(rec["decode_start_s"]), rec["decode_start_s"], rec["first_token_s"])
        ok = (rec["decode_instance"] >= 0) & np.isfinite(start) & np.isfinite(finish) & (finish > start)
        where = pool_of[np.clip(rec["decode_instance"], 0, None)]
        for i in range(len(pools)):
            sel = ok & (where == i)
            if not sel.any():
                continue
            s, f = start[sel], finish[sel]
            seqs[i] += integrated_linear(s, f, np.ones(len(s)), np.zeros(len(s)), edges)
            tokens[i] += integrated_linear(s, f, rec["input_tokens"][sel].astype(np.float64),
                                           rec["output_tokens"][sel] / (f - s), edges)
    n = np.array([len(p.instances) for p in pools], dtype=np.float64)[:, None]
    batch = np.diff(seqs, axis=1) / width / (n * np.array([[p.config.max_batch] for p in pools]))
    kv = np.diff(tokens, axis=1) / width / (n * np.array([[max(p.perf.kv_capacity_tokens, 1)] for p in pools]))
    return edges[:-1], np.clip(batch, 0.0, 1.0), np.clip(kv, 0.0, 1.0)


def _step_panel(ax, times, rows, pools, colors, ylabel: str) -> None:
    for i, row in rows:
        ax.step(times, row * 100, where="post", lw=1.2, color=colors[i])
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_ylim(-3, 103)  # a pool at 0% stays visible above the axis line
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_utilization(result, path: Path) -> Path:
    return _save(utilization_figure(result), path)


def utilization_figure(result):
    """Decode pools: batch-slot and KV-memory occupancy; prefill-only pools: busy instance time."""
    pools = result.cluster.pools
    times, batch, kv = pool_occupancy(result)
    busy_t, busy = result.utilization.series()
    if len(busy_t):  # the last interval's value holds to the end of the run
        busy_t = np.append(busy_t, result.makespan_s)
        busy = np.concatenate([busy, busy[:, -1:]], axis=1)
    tally = result_tally(result)
    used = {i for i in range(len(pools)) if tally.prefill_counts[i] or tally.decode_counts[i]}
    decoders = [i for i, p in enumerate(pools) if p.role.name.lower() != "prefill"]
    prefillers = [i for i, p in enumerate(pools) if p.role.name.lower() == "prefill"]
    panels = [("decode batch slots\nheld (%)", [(i, batch[i]) for i in decoders], times),
              ("KV memory held by\nrunning sequences (%)", [(i, kv[i]) for i in decoders], times)]
    if prefillers:
        panels.append(("prefill instances\nbusy (%)", [(i, busy[i]) for i in prefillers], busy_t))
    panels = [p for p in panels if p[1]]
    colors = [plt.cm.tab10(i % 10) for i in range(len(pools))]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.3 * len(panels) + 1), sharex=True, squeeze=False)
    for ax, (label, rows, t) in zip(axes[:, 0], panels):
        _step_panel(ax, t, rows, pools, colors, label)
    axes[-1, 0].set_xlabel("simulated time (s)")
    handles, labels = [], []
    for i, p in enumerate(pools):
        if i in prefillers:
            mean = f"busy {busy[i].mean() * 100:.0f}%" if busy.shape[1] else "busy -"
        else:
            mean = f"batch {batch[i].mean() * 100:.0f}%, KV {kv[i].mean() * 100:.0f}%"
        handles.append(plt.Line2D([], [], color=colors[i], lw=2))
        labels.append(f"{p.name}\n{p.perf.device.name}, {p.role.name.lower()}, {len(p.instances)} inst\n"
                      + (f"mean {mean}" if i in used else "served no request"))
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.80, 0.93), fontsize=8, frameon=False,
               labelspacing=1.0)
    fig.suptitle(f"{result.cluster.config.name} / {result.policy_name}: pool occupancy over time")
    fig.tight_layout(rect=(0, 0, 0.80, 1))
    return fig


def _overlap_area(box, others) -> float:
    area = 0.0
    for o in others:
        w = min(box.x1, o.x1) - max(box.x0, o.x0)
        h = min(box.y1, o.y1) - max(box.y0, o.y0)
        if w > 0 and h > 0:
            area += w * h
    return area


def _outside_area(box, frame) -> float:
    inside_w = max(0.0, min(box.x1, frame.x1) - max(box.x0, frame.x0))
    inside_h = max(0.0, min(box.y1, frame.y1) - max(box.y0, frame.y0))
    return box.width * box.height - inside_w * inside_h


# Offsets (points) tried around a point, nearest first: right, left, above, below, then diagonals.
_DIRECTIONS = ((1, 0.2), (-1, 0.2), (0, 1), (0, -1.8), (1, 1), (1, -1.5), (-1, 1), (-1, -1.5))
_RADII = (8, 20, 34, 50, 70, 95)


def place_labels(ax, points, texts, fontsize: int = 8) -> list:
    """Annotate each point with its text at the nearest offset where the label covers no label placed
    before it, no point and nothing outside the axes; where none is free, the one overlapping least."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    taken = [matplotlib.transforms.Bbox.from_extents(x - 8, y - 8, x + 8, y + 8) for x, y in px]
    annotations = []
    for (x, y), text in zip(points, texts):
        best = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * radius, dy * radius),
                                  fontsize=fontsize, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                                  va="center", arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5")
                                  if radius > 20 else None)
                ann.update_positions(renderer)
                box = matplotlib.text.Text.get_window_extent(ann, renderer).padded(2)
                cost = _overlap_area(box, taken) + 4 * _outside_area(box, frame)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box)
                else:
                    ann.remove()
                if cost == 0:
                    break
            if best[0] == 0:
                break
        taken.append(best[2])
        annotations.append(best[1])
    return annotations


def plot_pareto(summaries: list[dict], front: list[str], path: Path, title: str = "",
                short_label=lambda label: label) -> Path:
    return _save(pareto_figure(summaries, front, title, short_label), path)


def pareto_figure(summaries: list[dict], front: list[str], title: str = "", short_label=lambda label: label):
    """Cost vs energy, one numbered point per run and a key beside the axes (long labels never overlap
    and never hide a point); colour is quality unless every run ties on it."""
    fig = plt.figure(figsize=(11, 5.5))
    cost = np.array([s["cost_usd"] for s in summaries], dtype=float)
    energy = np.array([s["energy_j"] / JOULES_PER_KWH for s in summaries], dtype=float)
    quality = np.array([s["quality"] * 100 for s in summaries], dtype=float)
    on_front = [s["label"] in front for s in summaries]
    tie = not len(quality) or np.ptp(quality) < 1e-9
    ax = fig.add_axes((0.08, 0.11, 0.58 if tie else 0.52, 0.74))
    style = dict(s=[160 if f else 70 for f in on_front], edgecolors=["red" if f else "black" for f in on_front],
                 linewidths=1.5, zorder=3)
    if tie:
        ax.scatter(cost, energy, color="tab:blue", **style)
    else:
        sc = ax.scatter(cost, energy, c=quality, cmap="viridis", **style)
        fig.colorbar(sc, cax=fig.add_axes((0.62, 0.11, 0.015, 0.74)), label="quality (% answered correctly)")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("cost (US$)")
    ax.set_ylabel("energy (kWh)")
    ax.grid(alpha=0.3)
    heading = "cost vs energy vs quality (red edge: Pareto front)"
    if tie and len(quality):
        heading += f"; every run answered {quality[0]:.1f}% correctly"
    fig.suptitle("\n".join([heading] + ([textwrap.fill(title, 120)] if title else [])), fontsize=9)
    fig.canvas.draw()  # fixes the limits, so label boxes are measured where they will be drawn
    place_labels(ax, list(zip(cost, energy)), [str(k) for k in range(1, len(summaries) + 1)], fontsize=9)
    key = [f"{k:>2}  {'*' if f else ' '} {short_label(s['label'])}\n       "
           + ("" if tie else f"{q:.1f}% correct, ") + f"SLO {s['slo_attainment'] * 100:.1f}%, "
           f"${s['cost_usd']:,.2f}, {s['energy_j'] / JOULES_PER_KWH:,.3f} kWh"
           for k, (s, q, f) in enumerate(zip(summaries, quality, on_front), 1)]
    fig.text(0.70, 0.85, "\n".join(key + ["", "* on the Pareto front"]), va="top", ha="left",
             fontsize=8, family="monospace")
    return fig
