"""Bounded-memory replays: records of requests in flight only, the rest tallied or streamed to disk."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.registry import build_policy
from simulator.ledger import ColumnWriter, record_chunks
from simulator.metrics import RECORD_COLUMNS, RequestRecords, summarize
from simulator.plots import pool_occupancy
from simulator.report import write_outputs
from simulator.sim import Simulation
from simulator.tally import Tally
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload

# Float sums of energy and dollars are folded in per retired block: equal to the last bits only.
SUMMED_PER_BLOCK = ("busy_energy_j", "busy_cost_usd")
WALL = ("sim_wall_s", "sim_requests_per_s")


def simulation(cluster: str, *, n=6000, rate=300.0, chunk=256, **kw) -> Simulation:
    config = load_cluster(builtin_cluster_path(cluster))
    workload = make_workload(read_trace(builtin_trace_path()), n_requests=n, rate_rps=rate, arrival="poisson",
                             seed=3)
    return Simulation(Cluster(config), build_policy(config.policy, config), workload, seed=3, chunk_size=chunk, **kw)


def same_summary(a: dict, b: dict) -> None:
    for key in a:
        if key in WALL:
            continue
        if key in SUMMED_PER_BLOCK:
            assert b[key] == pytest.approx(a[key], rel=1e-12), key
        else:
            assert b[key] == a[key], key


# Colocated, disaggregated (KV hand-overs), and two multi-pass policies (cascade escalation, advisor).
@pytest.mark.parametrize("cluster", ["gpu-colocated", "gpu-disagg", "tiers", "advisor"])
def test_streamed_records_and_summary_equal_the_in_memory_run(cluster, tmp_path):
    kept = simulation(cluster).run()
    streamed = simulation(cluster, keep_records=False, record_dir=tmp_path / "cols").run()
    assert streamed.records is None
    on_disk = next(record_chunks(streamed, rows=10**9))
    for name, col in kept.records.columns().items():
        np.testing.assert_array_equal(on_disk[name], col, err_msg=name)
    same_summary(summarize(kept), summarize(streamed))


def test_window_size_follows_the_requests_in_flight_not_the_run_length():
    sizes = []
    for n in (10000, 40000):
        sim = simulation("gpu-colocated", n=n, rate=200.0, chunk=256, keep_records=False)
        result = sim.run()
        assert result.tally.n == result.tally.completed == n
        sizes.append(sim.window.mask + 1)
    assert sizes[0] == sizes[1] <= 8192


def test_window_grows_when_a_backlog_outlives_it_and_nothing_is_lost(tmp_path):
    # 5,000 requests in two seconds on one small cluster: thousands queue at once.
    kept = simulation("gpu-colocated", n=5000, rate=2500.0, chunk=128).run()
    sim = simulation("gpu-colocated", n=5000, rate=2500.0, chunk=128, keep_records=False,
                     record_dir=tmp_path / "cols")
    streamed = sim.run()
    assert sim.window.mask + 1 > 4 * 128
    on_disk = next(record_chunks(streamed, rows=10**9))
    for name, col in kept.records.columns().items():
        np.testing.assert_array_equal(on_disk[name], col, err_msg=name)
    same_summary(summarize(kept), summarize(streamed))


@pytest.mark.parametrize("splits", [[1], [7, 100, 1000], [2999, 3000]])
def test_tally_percentiles_do_not_depend_on_how_the_records_are_split(splits):
    result = simulation("hybrid", n=3000).run()
    whole = Tally.from_records(result.cluster, result.records)
    parts = Tally(result.cluster, 3000)
    cols = result.records.columns()
    for lo, hi in zip([0, *splits], [*splits, 3000]):
        parts.add({name: col[lo:hi] for name, col in cols.items()})
    assert parts.latency_stats() == whole.latency_stats()
    assert (parts.completed, parts.meets_slo, parts.correct) == (whole.completed, whole.meets_slo, whole.correct)
    np.testing.assert_array_equal(parts.per_instance, whole.per_instance)


def test_out_dir_from_a_streamed_run_matches_the_in_memory_one(tmp_path):
    kept = simulation("gpu-disagg", n=3000).run()
    streamed = simulation("gpu-disagg", n=3000, keep_records=False, record_dir=tmp_path / "s" / ".cols").run()
    write_outputs(kept, summarize(kept), tmp_path / "k")
    write_outputs(streamed, summarize(streamed), tmp_path / "s")
    assert not (tmp_path / "s" / ".cols").exists()
    with np.load(tmp_path / "k" / "requests.npz") as a, np.load(tmp_path / "s" / "requests.npz") as b:
        assert sorted(a.files) == sorted(b.files) == sorted([*RECORD_COLUMNS, "instance_pool"])
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_occupancy_read_back_in_blocks_equals_the_in_memory_curves(tmp_path, monkeypatch):
    kept = simulation("gpu-disagg", n=3000).run()
    streamed = simulation("gpu-disagg", n=3000, keep_records=False, record_dir=tmp_path / "cols").run()
    monkeypatch.setattr("simulator.ledger.READ_ROWS", 700)  # five blocks
    assert len(list(record_chunks(streamed))) == 5
    for a, b in zip(pool_occupancy(kept), pool_occupancy(streamed)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_column_writer_refuses_fewer_rows_than_announced(tmp_path):
    writer = ColumnWriter(tmp_path, 10)
    writer.write(RequestRecords(9).columns())
    with pytest.raises(RuntimeError, match="wrote 9 request records, expected 10"):
        writer.close()
