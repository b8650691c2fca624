"""The live core's counters: latency windows, usage per worker incarnation, and the
views GetStats and Prometheus read. Every request ends completed, rejected or
failed, and is counted once (`Tally.finished`), rejections and failures by their
`Reason` code (a fixed set of keys, whatever the requests carried)."""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

from sortedcontainers import SortedList

from scheduler.cluster import Cluster, ClusterSnapshot
from scheduler.live.types import Percentiles, PoolStatsView
from scheduler.reasons import Reason
from scheduler.types import RequestStatus
from workers.report import TierUsage


class LatencyWindow:
    """The last `size` samples of a latency, for percentiles (bounded memory).

    The samples are also kept sorted as they arrive (O(log n) each), so a
    summary is exact, current and costs a few index lookups: recomputing
    percentiles when GetStats asks (a partial sort of 10,000 samples per window)
    cost milliseconds on the loop that serves Generate."""

    __slots__ = ("ring", "ordered", "n", "total")

    def __init__(self, size: int):
        self.ring = [0.0] * size  # arrival order: the sample that leaves next is at n % size
        self.ordered = SortedList()
        self.n = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        if value != value:  # NaN has no place in an order
            raise ValueError("a latency sample is NaN")
        i = self.n % len(self.ring)
        if self.n >= len(self.ring):
            old = self.ring[i]
            self.ordered.remove(old)
            self.total -= old
        self.ring[i] = value
        self.ordered.add(value)
        self.total += value
        self.n += 1

    def summary(self) -> Percentiles:
        """Percentiles of the window, interpolated linearly between ranks as numpy's default."""
        ordered = self.ordered
        k = len(ordered)
        if k == 0:
            return Percentiles()

        def at(q: float) -> float:
            pos = q * (k - 1)
            low = int(pos)
            below = ordered[low]
            return below + (ordered[min(low + 1, k - 1)] - below) * (pos - low)

        return Percentiles(samples=self.n, p50_s=at(0.5), p90_s=at(0.9), p99_s=at(0.99), mean_s=self.total / k)


@dataclass(slots=True)
class Usage:
    """A worker incarnation's usage counters (from its load reports)."""

    prefill_tokens: int = 0
    decode_tokens: int = 0
    energy_j: float = 0.0
    cost_usd: float = 0.0
    busy_s: float = 0.0
    uptime_s: float = 0.0
    prefix_hit_tokens: int = 0
    kv_tiers: tuple = ()  # TierUsage per level below HBM, as the worker last reported them

    def add(self, other: "Usage") -> None:
        self.kv_tiers = add_tiers(self.kv_tiers, other.kv_tiers)
        self.prefix_hit_tokens += other.prefix_hit_tokens
        self.prefill_tokens += other.prefill_tokens
        self.decode_tokens += other.decode_tokens
        self.energy_j += other.energy_j
        self.cost_usd += other.cost_usd
        self.busy_s += other.busy_s
        self.uptime_s += other.uptime_s


class Tally:
    """Request counts, token totals, decisions and latency windows."""

    def __init__(self, window: int, n_pools: int):
        self.requests_total = 0
        self.requests_completed = 0
        self.requests_rejected = 0
        self.requests_failed = 0
        self.requests_invalid = 0
        self.decisions_total = 0
        self.slo_met = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.reasons: Counter = Counter()  # (RequestStatus, Reason) -> requests
        self.prompt_sources: Counter = Counter()  # accepted requests by PromptSource value
        self.pool_completed = [0] * n_pools
        self.ttft, self.tpot, self.e2e = LatencyWindow(window), LatencyWindow(window), LatencyWindow(window)
        self.decision_s, self.control_s = LatencyWindow(window), LatencyWindow(window)

    @property
    def in_flight(self) -> int:
        return self.requests_total - self.requests_completed - self.requests_rejected - self.requests_failed

    def finished(self, status: RequestStatus, code: Reason) -> None:
        if status == RequestStatus.COMPLETED:
            self.requests_completed += 1
            return
        if status == RequestStatus.REJECTED:
            self.requests_rejected += 1
        else:
            self.requests_failed += 1
        self.reasons[status, code] += 1

    def reason_counts(self) -> dict[str, int]:
        """Rejections and failures by code name (e.g. "QUEUE_FULL")."""
        out: Counter = Counter()
        for (_, code), n in self.reasons.items():
            out[code.name] += n
        return dict(out)

    def completed(self, output_tokens: int, ttft_s: float, tpot_s: float | None, e2e_s: float, slo_met: bool,
                  pools: set[int], control_s: float) -> None:
        self.output_tokens += output_tokens
        self.ttft.add(ttft_s)
        self.e2e.add(e2e_s)
        if tpot_s is not None:
            self.tpot.add(tpot_s)
        self.slo_met += slo_met
        for p in pools:
            self.pool_completed[p] += 1
        self.control_s.add(control_s)


def add_tiers(a: tuple, b: tuple) -> tuple:
    """Two lists of TierUsage summed level by level, by name, in order of first appearance."""
    total = {t.name: list(t) for t in a}
    for t in b:
        row = total.setdefault(t.name, [t.name, 0, 0.0, 0.0])
        row[1] += t.hit_tokens
        row[2] += t.read_bytes
        row[3] += t.written_bytes
    return tuple(TierUsage(*row) for row in total.values())


def pool_stats(cluster: Cluster, snap: ClusterSnapshot, usages: list[Usage], completed: list[int],
               uptime_s: float, prompt_counts: dict | None = None) -> list[PoolStatsView]:
    """Per pool: load from the snapshot, usage summed over its instances' incarnations."""
    # Rows as Python numbers once: GetStats runs on the loop that serves Generate, and
    # numpy slice sums per pool and field cost more than the few instances they add.
    queued, running = snap.queued_requests.tolist(), snap.running.tolist()
    kv_free, kv_capacity = snap.kv_free.tolist(), snap.kv_capacity.tolist()
    out = []
    for pool in cluster.pools:
        r = pool.instances
        mine = usages[r.start:r.stop]
        instance_s = uptime_s * len(r)  # since the scheduler started, restarts included
        out.append(PoolStatsView(
            name=pool.name, device=pool.config.device, model=pool.perf.model.name, role=pool.role,
            instances=pool.config.instances, chips_per_instance=pool.perf.chips,
            queue_depth=int(sum(queued[r.start:r.stop])), running=int(sum(running[r.start:r.stop])),
            completed=completed[pool.index],
            prefill_tokens=sum(u.prefill_tokens for u in mine), decode_tokens=sum(u.decode_tokens for u in mine),
            utilization=min(1.0, sum(u.busy_s for u in mine) / instance_s) if instance_s > 0 else 0.0,
            energy_j=sum(u.energy_j for u in mine), cost_usd=sum(u.cost_usd for u in mine),
            kv_free_tokens=int(sum(kv_free[r.start:r.stop])),
            kv_capacity_tokens=int(sum(kv_capacity[r.start:r.stop])), token_budget=pool.config.engine_token_budget,
            prompt_token_counts=dict(prompt_counts[pool.name]) if prompt_counts and pool.name in prompt_counts
            else None, prefix_hit_tokens=sum(u.prefix_hit_tokens for u in mine),
            kv_tiers=functools.reduce(add_tiers, (u.kv_tiers for u in mine), ()),
            speculative=pool.config.speculative))
    return out
