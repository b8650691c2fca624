"""The discrete-event simulator: a heap of timed events and one step per event.

Arrivals stream in from the workload (merged with the heap, never pushed into
it), the policy core decides each one against the live snapshot, and each
instance's `BatchEngine` advances in closed form between events. Events per
request are O(1): an arrival, a prefill completion (shared by the batch), a
KV hand-over for disaggregated requests, and a finish (decode segments end at
finishes, or early when new work arrives). A million requests is a few
million events. Per-request records exist only for the requests in flight
when `keep_records=False` (simulator/ledger.py).
"""
from __future__ import annotations

import heapq
import itertools
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from scheduler.cluster import Cluster, ClusterSnapshot
from scheduler.decision_log import DecisionLog
from scheduler.policy import Policy
from scheduler.types import PassKind, Request, RequestStatus, Role
from simulator.judges import JUDGE_ID_BASE, Judges, OnePass
from simulator.kv_usage import kv_tier_usage
from simulator.ledger import ColumnWriter, RecordWindow
from simulator.metrics import PoolUsage, RequestRecords, UtilizationTimeline
from simulator.tally import Tally
from simulator.workload import Workload
from workers.engine import FINISHED, FIRST_TOKEN, JOINED, BatchEngine
from workers.itl import ItlHistogram

_WAKE = 0  # payload: instance id
_KV_READY = 1  # payload: (request id, decode instance, input tokens, output tokens, first token s)
_DEFERRED = 2  # payload: request id whose next pass waits for a router's or verifier's judgement
_SAMPLE_EVERY_MASK = 1023  # sample pool utilization every 1,024 arrivals
_BOTH = int(Role.BOTH)
# The arrival loop builds Request tuples positionally (tuple.__new__, a third of the cost of
# Request(...)); a new Request field must be added there too.
if Request._fields != ("request_id", "input_tokens", "output_tokens", "arrival_s", "min_capability",
                       "block_hashes", "difficulty"):
    raise ImportError("simulator.sim builds Request positionally; update Simulation.run for its new fields")



@dataclass(slots=True)
class SimResult:
    cluster: Cluster
    policy_name: str
    workload_description: str
    seed: int
    records: RequestRecords | None  # None unless the run kept every record in memory
    pools: list[PoolUsage]
    utilization: UtilizationTimeline
    makespan_s: float
    events: int
    wall_s: float
    reject_reasons: dict[str, int] = field(default_factory=dict)
    # Rejections by reason code name (scheduler.reasons); None: derived from reject_reasons.
    reject_codes: dict[str, int] | None = None
    # Multi-pass policies: passes placed per pool (an escalated or advised request counts
    # once per pass on each pool it used); None when every request was one pass.
    pool_passes: list[int] | None = None
    # Inter-token gaps of every output token after the first, all instances together.
    itl: ItlHistogram | None = None
    # Prefix-cache tiers below HBM (simulator/kv_usage.py); None where the runtime has no engines.
    kv_tiers: dict | None = None
    # The summary's accumulators (simulator/tally.py), and the per-request column files
    # (simulator/ledger.py) when the run streamed its records to disk.
    tally: Tally | None = None
    record_dir: Path | None = None
    # Router and verifier judgements (scheduler/plugins/overhead.py): kind -> passes, seconds,
    # energy_j, cost_usd and device; empty when the policy judges nothing.
    overheads: dict = field(default_factory=dict)


class Simulation:
    def __init__(self, cluster: Cluster, policy: Policy, workload: Workload, *, seed: int = 0,
                 progress: bool = False, chunk_size: int = 65536, decision_log: DecisionLog | None = None,
                 keep_records: bool = True, record_dir: Path | None = None, quality=None):
        """keep_records=False bounds memory by the requests in flight (simulator/ledger.py): the
        result then has no `records`, and its per-request columns go to `record_dir` if given.
        `quality`: a MatrixQuality (simulator/quality_matrix.py) judging answers by real
        per-question results instead of the difficulty threshold; None: the threshold."""
        self.cluster = cluster
        self.policy = policy
        self.workload = workload
        self.seed = seed
        self.progress = progress
        self.chunk_size = chunk_size
        self.snap: ClusterSnapshot = cluster.snapshot()
        # Prefix caches when the requests carry block hashes (and the cluster enables them).
        self.engines: list[BatchEngine] = cluster.make_engines(self.snap, workload.has_block_hashes)
        self.instance_pool = [pool.index for pool in cluster.pools for _ in pool.instances]
        # Four arrival chunks of slots to start with; the window doubles if more are in flight.
        self.window = RecordWindow(workload.n_requests, None if keep_records else 4 * chunk_size)
        self.records = self.window.records
        self._mask = self.window.mask
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self._writer = ColumnWriter(self.record_dir, workload.n_requests) if record_dir is not None else None
        # Settled requests' summary, folded in as the window retires them (bounded runs only).
        self.quality = quality
        self.tally = Tally(cluster, workload.n_requests, quality) if self.window.bounded else None
        self.utilization = UtilizationTimeline([p.config.instances for p in cluster.pools])
        self._link_free_s = [0.0] * cluster.n_instances  # per prefill instance's outbound link
        self._n_pools = len(cluster.pools)
        self._transfer_s: list[dict[int, float]] = [{} for _ in range(self._n_pools ** 2)]
        self._heap: list = []
        self._seq = itertools.count()
        # Engine events since the last flush, written to the records in bulk: a numpy
        # scatter per column per flush instead of several scalar writes per event.
        self._log: list = []
        self.reject_reasons: dict[str, int] = {}
        # Multi-pass policies (cascade escalation, advisor): the request as it arrived, the
        # staging plugin's tag for its pass in flight and that pass's number, per request id.
        # A one-pass policy that judges each request first (a router) runs through the multi-pass path.
        self.staging = policy.staging if policy.staging is not None or not policy.judges_first else OnePass()
        self._passes: dict[int, tuple[Request, int, int]] = {}
        # Every decision, with its per-plugin breakdown, when a log is attached.
        self.decision_log = decision_log
        if decision_log is not None:
            policy.explain = True
        self._capability = self.snap.capability.tolist()
        # Disaggregated passes from placement until they join a decode batch: request id ->
        # (prefill instance, decode instance, input tokens, output tokens), so hand-overs read
        # no record columns (a numpy scalar read plus int() costs ~0.1 us; a hand-over took 8).
        self._split: dict[int, tuple[int, int, int, int]] = {}
        # Prefill-only and decode-only instances changed since the policy last read the snapshot,
        # with the time of their last change. Their rows are written just before the next read
        # (`_settle`): one changed twice in between (a prefill instance's wake, then its release
        # at the join) is written once, with what the last change's write would have written.
        # Colocated instances are written at once: they rarely change twice between two
        # arrivals (2.44 -> 2.32 writes a request), less than the bookkeeping costs.
        self._stale: dict[int, float] = {}
        self._pool_passes = [0] * len(cluster.pools)
        # Passes waiting for a judgement: request id -> (request as it arrived, pass, pass number).
        self._deferred: dict[int, tuple] = {}
        self._settling: dict[int, tuple] = {}  # deferred re-serves: the answer that stands if they find no room
        self._overheads: dict[str, dict] = {}
        self._check_overhead = getattr(self.staging, "check_overhead", None)
        # Judgements run on the pool serving the judge's model, where the cluster has one.
        self._judges = (Judges(cluster, self.engines, self.snap, self._log, self._schedule_wake, self._changed)
                        if self.staging is not None else None)

    # ---- helpers ---------------------------------------------------------
    def _settle(self) -> None:
        """Write the changed instances' rows into the snapshot (before the policy or a staging
        plugin reads it). A row depends on the time only through an idle or decoding instance's
        `busy_until_s` (the time of its last change), so writing it late changes nothing."""
        update = self.snap.update
        engines = self.engines
        for i, t in self._stale.items():
            queued, tokens, running, kv_free, busy = engines[i].row(t)
            update(i, queued, tokens, running, kv_free, busy)
        self._stale.clear()

    def _changed(self, i: int, now: float) -> None:
        """Instance `i` changed at `now`: write its row (colocated) or mark it stale."""
        eng = self.engines[i]
        if eng.role == _BOTH:
            queued, tokens, running, kv_free, busy = eng.row(now)
            self.snap.update(i, queued, tokens, running, kv_free, busy)
        else:
            self._stale[i] = now

    def _schedule_wake(self, i: int) -> None:
        t = self.engines[i].next_wake_s
        if t < math.inf:
            heapq.heappush(self._heap, (t, next(self._seq), _WAKE, i))

    def _route(self, i: int, now: float, first: int) -> None:
        """Follow-on work for events of a prefill-only or decode-only engine (log[first:] as of the call)."""
        log = self._log
        split = self._split
        for j in range(first, len(log)):
            ev = log[j]
            kind = ev[0]
            if kind == FIRST_TOKEN:
                self._hand_over(i, ev[1], now, split[ev[1]])
            elif kind == JOINED:  # decode holds the KV now; the prefill instance frees its copy
                rid = ev[1]
                src = split.pop(rid)[0]
                src_eng = self.engines[src]
                src_eng.release(rid)
                if src_eng.poke(now, log):  # a prefill-only engine reports no events here
                    self._schedule_wake(src)
                self._stale[src] = now

    def _hand_over(self, src: int, rid: int, now: float, placed: tuple[int, int, int, int]) -> None:
        """The prompt `placed` (prefill, decode, input, output) on `src` has its first token: its KV
        leaves on `src`'s link for the decode instance."""
        _, dst, inp, out = placed
        if out <= 1:  # nothing to decode: done at the first token
            del self._split[rid]
            self.engines[src].release(rid)
            self._log.append((FINISHED, rid, now, 0.0, 0.0, now))
            return
        # Transfer times per (source pool, destination pool) and prompt length, computed once
        # each: the model's KV size per token is a chain of properties (~1.5 us a call).
        pools = self.instance_pool
        times = self._transfer_s[pools[src] * self._n_pools + pools[dst]]
        transfer = times.get(inp)
        if transfer is None:
            src_pool = self.cluster.pools[self.instance_pool[src]]
            dst_pool = self.cluster.pools[self.instance_pool[dst]]
            link = min(src_pool.config.link_bytes_per_s, dst_pool.config.link_bytes_per_s)
            transfer = times[inp] = src_pool.perf.kv_transfer_s(inp, link)
        # The source's link carries one hand-over at a time (FIFO), so bursts queue.
        free = self._link_free_s[src]
        done = (now if now >= free else free) + transfer  # max(now, free)
        self._link_free_s[src] = done
        heapq.heappush(self._heap, (done, next(self._seq), _KV_READY, (rid, dst, inp, out, now)))

    def _kv_ready(self, handed: tuple[int, int, int, int, float], now: float) -> None:
        rid, dst, inp, out, first_token_s = handed
        self.records.kv_ready_s[rid & self._mask] = now
        eng = self.engines[dst]
        eng.submit_decode(rid, inp, out, first_token_s)
        first = len(self._log)
        if eng.poke(now, self._log):
            self._schedule_wake(dst)
        if len(self._log) > first:
            self._route(dst, now, first)
        self._stale[dst] = now

    def _place(self, req: Request, now: float, rng: np.random.Generator, pass_index: int) -> str:
        """Decide and submit one pass; returns the reject reason ('' when placed)."""
        decision = self.policy.decide(req, self.snap, now, rng)
        if self.decision_log is not None:
            self.decision_log.write(decision, now, pass_index)
        p = decision.prefill_instance
        if p < 0:
            return decision.reject_reason or "rejected"
        rid = req.request_id
        k = rid & self._mask
        rec = self.records
        d = decision.decode_instance
        rec.prefill_instance[k] = p
        rec.decode_instance[k] = d
        self._pool_passes[self.instance_pool[p]] += 1
        if d != p:
            self._pool_passes[self.instance_pool[d]] += 1
            self._split[rid] = (p, d, req.input_tokens, req.output_tokens)
        rec.input_tokens[k] = req.input_tokens
        rec.output_tokens[k] = req.output_tokens
        eng = self.engines[p]
        eng.submit_prefill(rid, req.input_tokens, req.output_tokens, req.block_hashes)
        if eng.poke(now, self._log):
            self._schedule_wake(p)
        self._changed(p, now)
        return ""

    def _charge(self, rid: int, overheads) -> float:
        """Book judgements on the request and the run; the seconds they add before its next pass."""
        delay = 0.0
        k = rid & self._mask
        for o in overheads:
            if o is None:
                continue
            row = self._overheads.setdefault(o.kind, {"passes": 0, "seconds": 0.0, "energy_j": 0.0,
                                                      "cost_usd": 0.0, "device": o.device})
            row["passes"] += 1
            row["seconds"] += o.seconds
            row["energy_j"] += o.energy_j
            row["cost_usd"] += o.cost_usd
            self.records.energy_j[k] += o.energy_j
            self.records.cost_usd[k] += o.cost_usd
            delay += o.seconds
        return delay

    def _judge(self, rid: int, overheads, now: float, verdict) -> bool:
        """Judgements a pool runs go there (simulator/judges.py), the others are charged; True when a
        pool took one: the request goes on when it is out (`verdict`: a verifier's, else a router's)."""
        pooled, rest = self._judges.split(overheads)
        if not pooled:
            return False
        self._judges.submit(rid, pooled, now, self._charge(rid, rest), verdict)
        return True

    def _judged(self, i: int, now: float, rng: np.random.Generator) -> None:
        """log[i] is an event of a judgement; when the request's last is out, it goes on."""
        done = self._judges.event(self._log, i)
        if done is None:
            return
        rid, wait, verdict = done
        if verdict is not None:  # the verifier's answer decides the next pass
            orig, tag, capability, credit, right, index = verdict
            if self._stale:
                self._settle()
            step = self.staging.after(orig, tag, capability, right, self.snap, now + wait)
            if step is None:
                self.records.capability[rid & self._mask] = credit
                return
            self._deferred[rid] = (orig, step, index)
            self._settling[rid] = (orig, tag, credit)
        if wait > 0.0:
            heapq.heappush(self._heap, (now + wait, next(self._seq), _DEFERRED, rid))
        else:
            self._deferred_pass(rid, now, rng)

    def _arrive_staged(self, req: Request, now: float, rng: np.random.Generator) -> None:
        if self._stale:
            self._settle()
        first = self.staging.first(req, self.snap)
        overheads = self.policy.first_overheads(req)
        if overheads and self._judge(req.request_id, overheads, now, None):
            self._deferred[req.request_id] = (req, first, 0)
            return
        delay = self._charge(req.request_id, overheads)
        if delay > 0.0:  # the router reads the prompt before the first pass is placed
            self._deferred[req.request_id] = (req, first, 0)
            heapq.heappush(self._heap, (now + delay, next(self._seq), _DEFERRED, req.request_id))
            return
        self._place_first(req, first, now, rng)

    def _place_first(self, req: Request, first, now: float, rng: np.random.Generator) -> None:
        if self.decision_log is not None and getattr(self.staging, "logs_passes", True):
            self.decision_log.write_pass(first, now, 0)
        reason = self._place(first.request, now, rng, 0)
        if reason:
            self.records.status[req.request_id & self._mask] = RequestStatus.REJECTED
            self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
            return
        self._passes[req.request_id] = (req, first.tag, 0)

    def _place_next(self, orig: Request, step, index: int, now: float, rng: np.random.Generator) -> bool:
        """Place a request's next pass; False when it found no room (the answer so far stands)."""
        if self.decision_log is not None:
            self.decision_log.write_pass(step, now, index)
        if self._place(step.request, now, rng, index):
            return False
        rid = orig.request_id
        self._passes[rid] = (orig, step.tag, index)
        k = rid & self._mask
        if step.kind == PassKind.ADVICE:
            self.records.advised[k] = 1
        else:
            self.records.escalations[k] += 1
        return True

    def _deferred_pass(self, rid: int, now: float, rng: np.random.Generator) -> None:
        """A judgement finished: place the pass that waited for it."""
        if self._stale:
            self._settle()  # the policy reads the snapshot
        orig, step, index = self._deferred.pop(rid)
        if index == 0:
            self._place_first(orig, step, now, rng)
            return
        _, _, credit = self._settling.pop(rid)
        if not self._place_next(orig, step, index, now, rng):
            self.records.capability[rid & self._mask] = credit  # no room: the answer so far stands

    def _after_passes(self, first: int, now: float, rng: np.random.Generator) -> None:
        """For each pass that finished (log[first:]), start the request's next pass or settle it;
        a verifier's judgement (when the policy pays for one) delays the next pass."""
        log = self._log
        end = len(log)
        rec = self.records
        staging = self.staging
        check = self._check_overhead
        for i in range(first, end):
            ev = log[i]
            rid = ev[1]
            if rid >= JUDGE_ID_BASE:
                self._judged(i, now, rng)
                continue
            if ev[0] != FINISHED:
                continue
            state = self._passes.get(rid)
            if state is None:
                continue
            orig, tag, index = state
            if self._stale:
                self._settle()
            k = rid & self._mask
            capability = self._capability[rec.prefill_instance[k]]
            credit = staging.credit(orig, tag, capability, self.snap)
            right = credit >= orig.difficulty if self.quality is None else self.quality.correct_one(rid, credit)
            judgement = check(orig, tag, capability, self.snap) if check is not None else None
            if judgement is not None and self._judge(rid, (judgement,), now,
                                                     (orig, tag, capability, credit, right, index + 1)):
                del self._passes[rid]
                continue
            delay = self._charge(rid, (judgement,))
            step = staging.after(orig, tag, capability, right, self.snap, now + delay)
            del self._passes[rid]
            if step is not None:
                if delay > 0.0:
                    self._deferred[rid] = (orig, step, index + 1)
                    self._settling[rid] = (orig, tag, credit)
                    heapq.heappush(self._heap, (now + delay, next(self._seq), _DEFERRED, rid))
                    continue
                if self._place_next(orig, step, index + 1, now, rng):
                    continue
                # The next pass found no room: the answer delivered so far stands.
            rec.capability[k] = credit

    def _event(self, t: float, kind: int, payload: int, rng: np.random.Generator) -> None:
        """One heap event: an instance's iteration ends, or a KV hand-over lands."""
        if kind != _WAKE:
            if kind == _KV_READY:
                self._kv_ready(payload, t)
            else:
                self._deferred_pass(payload, t, rng)
            return
        eng = self.engines[payload]
        if eng.next_wake_s != t:
            return  # superseded: a poke moved this instance's wake
        log = self._log
        first = len(log)
        if self._stale and self.staging is not None:
            self._settle()  # staging reads the snapshot mid-event: this instance's row as of before it
        eng.wake(t, log)
        if len(log) > first:
            if eng.role != _BOTH:  # disaggregated: hand-overs, joins
                self._route(payload, t, first)
            if self.staging is not None:
                self._after_passes(first, t, rng)
        wake = eng.next_wake_s
        if wake < math.inf:
            heapq.heappush(self._heap, (wake, next(self._seq), _WAKE, payload))
        self._changed(payload, t)

    def _flush(self) -> None:
        """Write logged events into the records."""
        rec = self.records
        if self._log:
            n = len(self._log)
            # fromiter over the flattened tuples is about twice as fast as np.array(list of tuples).
            a = np.fromiter(itertools.chain.from_iterable(self._log), dtype=np.float64, count=6 * n).reshape(n, 6)
            self._log.clear()
            kind = a[:, 0]
            rid = a[:, 1].astype(np.int64) & self._mask
            t = a[:, 2]
            m = kind == FIRST_TOKEN
            rec.first_token_s[rid[m]] = t[m]
            rec.prefill_start_s[rid[m]] = a[m, 5]
            m = kind == FINISHED
            rec.finish_s[rid[m]] = t[m]
            rec.status[rid[m]] = RequestStatus.COMPLETED
            m = kind == JOINED
            rec.decode_start_s[rid[m]] = t[m]
            np.add.at(rec.energy_j, rid, a[:, 3])
            np.add.at(rec.cost_usd, rid, a[:, 4])

    def _retire(self, limit: int) -> None:
        """Hand the settled requests before `limit` (and before any multi-pass request still
        going, or waiting for a judgement) to the tally and the column files, freeing their slots."""
        if self._passes:
            limit = min(limit, min(self._passes))
        if self._deferred:
            limit = min(limit, min(self._deferred))
        if self._judges is not None and self._judges.open:
            limit = min(limit, self._judges.oldest())
        end = self.window.settled_until(limit)
        if end > self.window.lo:
            cols = self.window.retire(end)
            self.tally.add(cols)
            if self._writer is not None:
                self._writer.write(cols)

    def _sample_utilization(self, now: float) -> None:
        busy = [0.0] * len(self.cluster.pools)
        for i, eng in enumerate(self.engines):
            # Completed activities plus the elapsed part of the current one.
            busy[self.instance_pool[i]] += eng.busy_s + (now - eng.act_start_s if eng.activity else 0.0)
        self.utilization.sample(now, busy)

    # ---- the loop ----------------------------------------------------------
    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        heap = self._heap
        heappop = heapq.heappop
        heappush = heapq.heappush
        seq = self._seq
        window = self.window
        rec = self.records
        mask = self._mask
        snap_update = self.snap.update
        # Rows from BatchEngine.row, unbound and unpacked on the hot paths below: a bound
        # method and a starred call cost ~0.2 us more per write (3.5 writes per
        # disaggregated request, ~3% of a replay).
        engine_row = BatchEngine.row
        stale = self._stale
        split = self._split
        snap = self.snap
        engines = self.engines
        decide = self.policy.decide
        log = self._log
        event = self._event
        staging = self.staging
        decision_log = self.decision_log
        inf = math.inf
        # Request(...) through its generated __new__ costs ~0.9 us here; tuple.__new__ with
        # every field in order builds the same named tuple in ~0.3 us.
        new_request = tuple.__new__
        no_hashes = ()
        n_events = 0
        bar = _Progress(self.workload.n_requests, enabled=self.progress)
        for chunk in self.workload.chunks(self.chunk_size):
            base = chunk.first_id
            n = len(chunk.arrival_s)
            if window.admit(base + n):
                rec = self.records = window.records
                mask = self._mask = window.mask
            slots = window.index(base, base + n)
            rec.arrival_s[slots] = chunk.arrival_s
            rec.input_tokens[slots] = chunk.input_tokens
            rec.output_tokens[slots] = chunk.output_tokens
            if self.quality is not None:  # the router's signal comes from the matrix
                chunk = replace(chunk, difficulty=self.quality.difficulty(base, n))
            rec.difficulty[slots] = chunk.difficulty
            arrivals = chunk.arrival_s.tolist()
            inputs = chunk.input_tokens.tolist()
            outputs = chunk.output_tokens.tolist()
            difficulties = chunk.difficulty.tolist()
            hash_offsets = hash_values = None
            if chunk.hash_ids is not None:
                hash_offsets = chunk.hash_ids[0].tolist()
                hash_values = chunk.hash_ids[1].tolist()
            blocks = no_hashes
            for j in range(n):
                now = arrivals[j]
                while heap and heap[0][0] <= now:
                    t, _, kind, payload = heappop(heap)
                    n_events += 1
                    if kind != _WAKE:
                        if kind == _KV_READY:  # `_kv_ready` inlined: once per handed-over request
                            rid, dst, inp, out, first_token_s = payload
                            rec.kv_ready_s[rid & mask] = t
                            eng = engines[dst]
                            eng.submit_decode(rid, inp, out, first_token_s)
                            first = len(log)
                            if eng.poke(t, log):
                                heappush(heap, (eng.next_wake_s, next(seq), _WAKE, dst))
                            if len(log) > first:
                                self._route(dst, t, first)
                            stale[dst] = t
                        else:
                            self._deferred_pass(payload, t, rng)
                        continue
                    # `_event` inlined: this branch runs ~2.6 times per request, and the
                    # call plus attribute look-ups cost ~5-10% of the whole replay.
                    eng = engines[payload]
                    if eng.next_wake_s != t:
                        continue  # superseded: a poke moved this instance's wake
                    first = len(log)
                    if stale and staging is not None:
                        self._settle()  # staging reads the snapshot mid-event
                    eng.wake(t, log)
                    if len(log) > first:
                        if eng.role != _BOTH:  # disaggregated: hand-overs, joins
                            self._route(payload, t, first)
                        if staging is not None:
                            self._after_passes(first, t, rng)
                    wake = eng.next_wake_s
                    if wake < inf:
                        heappush(heap, (wake, next(seq), _WAKE, payload))
                    if eng.role == _BOTH:
                        queued, tokens, running, kv_free, busy = engine_row(eng, t)
                        snap_update(payload, queued, tokens, running, kv_free, busy)
                    else:
                        stale[payload] = t
                rid = base + j
                n_events += 1
                inp = inputs[j]
                out = outputs[j]
                if hash_values is not None:
                    blocks = tuple(hash_values[hash_offsets[j]:hash_offsets[j + 1]])
                req = new_request(Request, (rid, inp, out, now, 0.0, blocks, difficulties[j]))
                if staging is not None:
                    self._arrive_staged(req, now, rng)
                    if not rid & _SAMPLE_EVERY_MASK:
                        self._sample_utilization(now)
                    continue
                # Single-pass policies: `_place` inlined (no per-pass accounting needed).
                if stale:  # `_settle` inlined
                    for i, t in stale.items():
                        queued, tokens, running, kv_free, busy = engine_row(engines[i], t)
                        snap_update(i, queued, tokens, running, kv_free, busy)
                    stale.clear()
                decision = decide(req, snap, now, rng)
                if decision_log is not None:
                    decision_log.write(decision, now)
                p = decision.prefill_instance
                if p < 0:
                    rec.status[rid & mask] = RequestStatus.REJECTED
                    reason = decision.reject_reason
                    self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
                    continue
                d = decision.decode_instance
                rec.prefill_instance[rid & mask] = p
                rec.decode_instance[rid & mask] = d
                if d != p:
                    split[rid] = (p, d, inp, out)
                eng = engines[p]
                eng.submit_prefill(rid, inp, out, blocks)
                if eng.poke(now, log):  # prefill-capable engines report no events on a poke
                    heappush(heap, (eng.next_wake_s, next(seq), _WAKE, p))
                if eng.role == _BOTH:
                    queued, tokens, running, kv_free, busy = engine_row(eng, now)
                    snap_update(p, queued, tokens, running, kv_free, busy)
                else:
                    stale[p] = now
                if not rid & _SAMPLE_EVERY_MASK:
                    self._sample_utilization(now)
            self._flush()
            if window.bounded:
                self._retire(base + n)
            bar.update(base + n)
        while heap:
            t, _, kind, payload = heappop(heap)
            n_events += 1
            event(t, kind, payload, rng)
            if len(log) >= self.chunk_size * 2:
                self._flush()
                self._sample_utilization(t)
        self._flush()
        self._settle()
        bar.close()
        n_requests = self.workload.n_requests
        if window.bounded:
            self._retire(n_requests)
        elif self._writer is not None:
            self._writer.write(rec.columns())
        if window.settled_until(n_requests) < n_requests:
            pending = int(np.count_nonzero(rec.status[window.index(window.lo, n_requests)] == RequestStatus.PENDING))
            raise RuntimeError(f"simulation ended with {pending} requests neither completed nor rejected")
        if self._writer is not None:
            self._writer.close()
        tally = self.tally if window.bounded else Tally.from_records(self.cluster, rec, self.quality)
        makespan = max(tally.max_finish_s, tally.last_arrival_s)
        self._sample_utilization(makespan)
        pools = [
            PoolUsage.from_engines(pool, [engines[i] for i in pool.instances], makespan)
            for pool in self.cluster.pools
        ]
        itl = ItlHistogram()
        for eng in engines:
            itl.merge(eng.itl)
        return SimResult(
            cluster=self.cluster, policy_name=self.policy.name,
            workload_description=self.workload.description, seed=self.seed,
            records=None if window.bounded else rec, pools=pools,
            utilization=self.utilization, makespan_s=makespan, events=n_events,
            wall_s=time.perf_counter() - wall0, reject_reasons=dict(self.reject_reasons),
            pool_passes=list(self._pool_passes) if self.staging is not None else None, itl=itl,
            kv_tiers=kv_tier_usage(engines, makespan), tally=tally, record_dir=self.record_dir,
            overheads=self._judgements(),
        )


    def _judgements(self) -> dict:
        """Per judgement kind: charged at batch 1 (no `pool`), or run on a pool (its name in `pool`)."""
        out = {k: dict(v) for k, v in self._overheads.items()}
        for kind, row in (self._judges.rows if self._judges is not None else {}).items():
            out[kind if kind not in out else f"{kind} on {row['pool']}"] = dict(row)
        return out


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
        if self._bar is not None and done > self._last:
            self._bar.update(done - self._last)
            self._last = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._last)
            self._bar.close()
