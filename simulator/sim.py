"""The discrete-event simulator: a heap of timed events and one step per event.

Arrivals stream in from the workload (merged with the heap, never pushed into
it), the policy core decides each one against the live snapshot, and each
instance's `BatchEngine` advances in closed form between events. Events per
request are O(1): an arrival, a prefill completion (shared by the batch), a
KV hand-over for disaggregated requests, and a finish (decode segments end at
finishes, or early when new work arrives). A million requests is a few
million events.
"""
from __future__ import annotations

import heapq
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from scheduler.cluster import Cluster, ClusterSnapshot
from scheduler.policy import Policy
from scheduler.types import Request, RequestStatus
from simulator.metrics import PoolUsage, RequestRecords, UtilizationTimeline
from simulator.workload import Workload
from workers.engine import FINISHED, FIRST_TOKEN, JOINED, BatchEngine

_WAKE = 0  # payload: instance id
_KV_READY = 1  # payload: request id

_PROGRESS_EVERY = 8192  # arrivals between progress-bar updates


@dataclass(slots=True)
class SimResult:
    cluster: Cluster
    policy_name: str
    workload_description: str
    seed: int
    records: RequestRecords
    pools: list[PoolUsage]
    utilization: UtilizationTimeline
    makespan_s: float
    events: int
    wall_s: float
    reject_reasons: dict[str, int] = field(default_factory=dict)


class Simulation:
    def __init__(self, cluster: Cluster, policy: Policy, workload: Workload, *, seed: int = 0,
                 progress: bool = False, chunk_size: int = 65536):
        self.cluster = cluster
        self.policy = policy
        self.workload = workload
        self.seed = seed
        self.progress = progress
        self.chunk_size = chunk_size
        self.snap: ClusterSnapshot = cluster.snapshot()
        self.engines = [
            BatchEngine(pool.perf, int(pool.role), pool.config.max_batch, pool.config.max_batch_tokens)
            for pool in cluster.pools for _ in pool.instances
        ]
        self.instance_pool = np.array([pool.index for pool in cluster.pools for _ in pool.instances])
        self.records = RequestRecords(workload.n_requests)
        self.utilization = UtilizationTimeline(len(cluster.pools),
                                               [p.config.instances for p in cluster.pools])
        self._link_free_s = [0.0] * cluster.n_instances  # per prefill instance's outbound link
        self._heap: list = []
        self._seq = 0
        self._events = 0
        self.reject_reasons: dict[str, int] = {}

    # ---- helpers ---------------------------------------------------------
    def _sync(self, i: int) -> None:
        """Copy one engine's state into the snapshot the policy reads."""
        eng = self.engines[i]
        snap = self.snap
        snap.queued_requests[i] = len(eng.waiting) + len(eng.joining)
        snap.queued_tokens[i] = eng.waiting_tokens
        snap.running[i] = eng.batch
        snap.kv_free[i] = eng.kv_capacity - eng.kv_reserved
        snap.busy_until_s[i] = eng.next_wake_s if eng.activity else 0.0

    def _schedule_wake(self, i: int) -> None:
        t = self.engines[i].next_wake_s
        if t < math.inf:
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, _WAKE, i))

    def _apply_events(self, i: int, now: float, events: list) -> None:
        """Record what an engine reported and start any follow-on work."""
        rec = self.records
        eng = self.engines[i]
        for kind, rid, energy_j, cost_usd in events:
            if kind == FIRST_TOKEN:
                rec.prefill_start_s[rid] = eng.last_start_s
                rec.first_token_s[rid] = now
                rec.energy_j[rid] += energy_j
                rec.cost_usd[rid] += cost_usd
                if eng.role == 0:  # prefill-only: hand the KV over, or finish a one-token request
                    self._hand_over(i, rid, now)
            elif kind == FINISHED:
                rec.finish_s[rid] = now
                rec.status[rid] = RequestStatus.COMPLETED
                rec.energy_j[rid] += energy_j
                rec.cost_usd[rid] += cost_usd
            else:  # JOINED: decode has the KV now; the prefill instance may free its copy
                rec.decode_start_s[rid] = now
                src = int(rec.prefill_instance[rid])
                src_eng = self.engines[src]
                src_eng.release(rid)
                # A prefill-only engine never has joiners, so its poke reports no events.
                if src_eng.poke(now, []):
                    self._schedule_wake(src)
                self._sync(src)

    def _hand_over(self, src: int, rid: int, now: float) -> None:
        rec = self.records
        out = int(rec.output_tokens[rid])
        if out <= 1:
            self.engines[src].release(rid)
            rec.finish_s[rid] = now
            rec.status[rid] = RequestStatus.COMPLETED
            return
        dst = int(rec.decode_instance[rid])
        src_pool = self.cluster.instance_pool[src]
        dst_pool = self.cluster.instance_pool[dst]
        link = min(src_pool.config.link_bytes_per_s, dst_pool.config.link_bytes_per_s)
        # The source's link carries one hand-over at a time (FIFO), so bursts queue.
        start = max(now, self._link_free_s[src])
        done = start + src_pool.perf.kv_transfer_s(int(rec.input_tokens[rid]), link)
        self._link_free_s[src] = done
        self._seq += 1
        heapq.heappush(self._heap, (done, self._seq, _KV_READY, rid))

    def _step(self, now: float, kind: int, payload: int, events: list) -> None:
        if kind == _WAKE:
            eng = self.engines[payload]
            if eng.next_wake_s != now:
                return  # superseded by a poke that moved the wake
            events.clear()
            eng.wake(now, events)
            self.utilization.add(self.instance_pool[payload], eng.last_start_s, now)
            self._apply_events(payload, now, events)
            self._schedule_wake(payload)
            self._sync(payload)
        else:
            rid = payload
            rec = self.records
            rec.kv_ready_s[rid] = now
            dst = int(rec.decode_instance[rid])
            eng = self.engines[dst]
            eng.submit_decode(rid, int(rec.input_tokens[rid]), int(rec.output_tokens[rid]))
            events.clear()
            if eng.poke(now, events):
                self._schedule_wake(dst)
            self._apply_events(dst, now, events)
            self._sync(dst)

    # ---- the loop ----------------------------------------------------------
    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        heap = self._heap
        rec = self.records
        snap = self.snap
        engines = self.engines
        decide = self.policy.decide
        step = self._step
        events: list = []
        n_events = 0
        bar = _Progress(self.workload.n_requests, enabled=self.progress)
        for chunk in self.workload.chunks(self.chunk_size):
            base = chunk.first_id
            n = len(chunk.arrival_s)
            rec.arrival_s[base:base + n] = chunk.arrival_s
            rec.input_tokens[base:base + n] = chunk.input_tokens
            rec.output_tokens[base:base + n] = chunk.output_tokens
            arrivals = chunk.arrival_s.tolist()
            inputs = chunk.input_tokens.tolist()
            outputs = chunk.output_tokens.tolist()
            for j in range(n):
                now = arrivals[j]
                while heap and heap[0][0] <= now:
                    t, _, kind, payload = heapq.heappop(heap)
                    n_events += 1
                    step(t, kind, payload, events)
                rid = base + j
                n_events += 1
                inp = inputs[j]
                out = outputs[j]
                decision = decide(Request(rid, inp, out, now), snap, now, rng)
                p = decision.prefill_instance
                if p < 0:
                    rec.status[rid] = RequestStatus.REJECTED
                    reason = decision.reject_reason
                    self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
                    continue
                rec.prefill_instance[rid] = p
                rec.decode_instance[rid] = decision.decode_instance
                eng = engines[p]
                eng.submit_prefill(rid, inp, out)
                events.clear()
                if eng.poke(now, events):
                    self._schedule_wake(p)
                if events:
                    self._apply_events(p, now, events)
                self._sync(p)
                if (rid & (_PROGRESS_EVERY - 1)) == 0:
                    bar.update(rid)
        while heap:
            t, _, kind, payload = heapq.heappop(heap)
            n_events += 1
            step(t, kind, payload, events)
        bar.close()
        pending = int(np.count_nonzero(rec.status == RequestStatus.PENDING))
        if pending:
            raise RuntimeError(f"simulation ended with {pending} requests neither completed nor rejected")
        finished = rec.finish_s[rec.status == RequestStatus.COMPLETED]
        makespan = float(finished.max()) if len(finished) else 0.0
        makespan = max(makespan, float(rec.arrival_s[-1]) if len(rec.arrival_s) else 0.0)
        pools = [
            PoolUsage.from_engines(pool, [engines[i] for i in pool.instances], makespan)
            for pool in self.cluster.pools
        ]
        return SimResult(
            cluster=self.cluster, policy_name=self.policy.name,
            workload_description=self.workload.description, seed=self.seed, records=rec, pools=pools,
            utilization=self.utilization, makespan_s=makespan, events=n_events,
            wall_s=time.perf_counter() - wall0, reject_reasons=dict(self.reject_reasons),
        )


class _Progress:
    """A progress bar on stderr (tqdm when available and stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        self._last = 0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return
        self._bar = tqdm(total=total, unit="req", unit_scale=True, desc="simulating", file=sys.stderr,
                         mininterval=0.25, dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._last)
            self._last = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._last)
            self._bar.close()


def simulate(cluster: Cluster, policy: Policy, workload: Workload, *, seed: int = 0,
             progress: bool = False) -> SimResult:
    return Simulation(cluster, policy, workload, seed=seed, progress=progress).run()

