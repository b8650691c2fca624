"""Plots: exact occupancy integrals, legends clear of the lines, Pareto labels apart, no colour bar on a tie."""
from __future__ import annotations

import itertools

import matplotlib.text
import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.registry import build_policy
from simulator.compare import pareto_front
from simulator.metrics import summarize
from simulator.plots import integrated_linear, pareto_figure, pool_occupancy, utilization_figure
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload


def _brute(start, end, base, slope, edges, steps=200_000):
    t = np.linspace(0, edges[-1], steps + 1)
    mid = (t[:-1] + t[1:]) / 2
    f = np.zeros_like(mid)
    for s, e, b, k in zip(start, end, base, slope):
        on = (mid >= s) & (mid < e)
        f[on] += b + k * (mid[on] - s)
    cum = np.concatenate([[0.0], np.cumsum(f * np.diff(t))])
    return np.interp(edges, t, cum)


@pytest.mark.parametrize("start, end, base, slope", [
    ([0.0], [10.0], [1.0], [0.0]),                                   # one sequence for the whole run
    ([1.0, 2.0, 2.5], [4.0, 9.0, 3.0], [1.0, 1.0, 1.0], [0.0] * 3),  # overlapping batch slots
    ([0.5, 3.0], [6.0, 7.5], [500.0, 1200.0], [40.0, 10.0]),         # KV growing while decoding
    ([4.0], [4.0 + 1e-3], [8.0], [1000.0]),                          # shorter than a bin
])
def test_integral_of_piecewise_linear_load_is_exact(start, end, base, slope):
    args = [np.array(x, dtype=float) for x in (start, end, base, slope)]
    edges = np.linspace(0, 10, 7)
    assert integrated_linear(*args, edges) == pytest.approx(_brute(*args, edges), abs=1e-3, rel=1e-4)


@pytest.fixture(scope="module")
def runs():
    trace = read_trace(str(builtin_trace_path()), None)
    workload = make_workload(trace, n_requests=3000, rate_rps=20, seed=0)
    out = {}
    for name, policy in (("hybrid", "local-first"), ("demo", None)):
        config = load_cluster(builtin_cluster_path(name))
        out[name] = Simulation(Cluster(config), build_policy(policy or config.policy, config), workload,
                               seed=0).run()
    return out


def test_batch_occupancy_conserves_sequence_seconds(runs):
    result = runs["demo"]
    times, batch, kv = pool_occupancy(result)
    rec = result.records
    width = result.makespan_s / len(times)
    for i, pool in enumerate(result.cluster.pools):
        ids = [k for k, p in enumerate(q for q in result.cluster.pools for _ in q.instances) if p is pool]
        on = np.isin(rec.decode_instance, ids)
        held_s = np.nansum(rec.finish_s[on] - rec.first_token_s[on])
        assert batch[i].sum() * width * len(ids) * pool.config.max_batch == pytest.approx(held_s, rel=1e-6)
        assert 0 <= kv[i].min() and kv[i].max() <= 1
    # Decode pools are far from full although every instance is "busy": the point of the plot.
    assert batch.max() < 1.0


def test_utilization_legend_lists_every_pool_outside_the_axes(runs):
    result = runs["hybrid"]
    fig = utilization_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert [t.split("\n")[0] for t in texts] == [p.name for p in result.cluster.pools]
    box = legend.get_window_extent(renderer)
    assert all(not box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any("batch slots" in label for label in labels) and any("KV" in label for label in labels)
    assert any("prefill instances" in label for label in labels)  # hybrid has a prefill-only pool
    assert all("busy" not in label for label in labels[:2])
    assert any(t.startswith("phones") and "served no request" in t for t in texts)


def _summaries(runs):
    out = []
    for label, result in runs.items():
        s = summarize(result)
        s["label"] = label
        out.append(s)
    return out


def _clones(s: dict, n: int, quality_step: float) -> list[dict]:
    # Runs that land almost on one point: the labels must still come apart.
    return [dict(s, label=f"policy-{k}", cost_usd=s["cost_usd"] * (1 + 1e-4 * k),
                 energy_j=s["energy_j"] * (1 + 1e-4 * (k % 3)), quality=s["quality"] - quality_step * k)
            for k in range(n)]


@pytest.mark.parametrize("n, quality_step, colour_bar", [(6, 0.0, False), (6, 0.01, True), (2, 0.0, False)])
def test_pareto_labels_do_not_overlap_and_colour_bar_only_when_quality_differs(runs, n, quality_step,
                                                                              colour_bar):
    summaries = _clones(_summaries(runs)[1], n, quality_step)
    fig = pareto_figure(summaries, pareto_front(summaries))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [matplotlib.text.Text.get_window_extent(a, renderer) for a in ax.texts]
    assert len(boxes) == n
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert (len(fig.axes) == 2) is colour_bar
    key = fig.texts[-1].get_text()
    assert all(s["label"] in key for s in summaries)
    assert ("every run answered" in fig._suptitle.get_text()) is (not colour_bar)
