"""Routers' and verifiers' passes as real work: placed on the pool that runs the judge's model.

A judgement (scheduler/plugins/overhead.py) reads a prompt (a router) or a prompt and an answer
(a verifier) and writes one token. Where the cluster has a colocated pool serving the judge's
model on the judge's device (a `serving: judge` pool first, then any pool serving that model), the
pass is submitted to that pool's engine like any other prompt: it queues behind the pool's work
(requests included, on a shared pool), its energy and dollars are the engine's, and the pass it
delays (the request's first pass after a router, the re-serve after a verifier) starts when the
judgement is out. Without such a pool the simulator keeps the batch-1 charge of overhead.py
(time, energy and dollars with no queue), and the summary says which judgements ran where.

The engine knows a judgement by an id of its own (JUDGE_ID_BASE + n); the simulator rewrites its
events to the request judged with kind JUDGED before they reach the records, so they add their
energy and dollars to that request and touch no other column. A request stays in the record window
while a judgement of it is open. Per request this adds one pass (a few events) per judgement.
"""
from __future__ import annotations

from scheduler.plugins.overhead import judge_pool
from scheduler.types import Pass, PassKind
from workers.engine import FINISHED

JUDGE_ID_BASE = 1 << 50  # above any request id; exact in the float64 event arrays
JUDGED = 3  # an engine event of a judgement, rewritten to the request judged (energy and dollars only)


class OnePass:
    """The staging of a one-pass policy whose plugin judges each request first (`local-first` with
    `staging: none`: its router): the runtime's multi-pass path runs the router's pass, then the pass."""

    name = "one-pass"
    logs_passes = False  # a decision log shows its decisions as a one-pass policy's

    def first(self, req, snap) -> Pass:
        return Pass(req, 0, PassKind.FIRST)

    def credit(self, orig, tag: int, capability: float, snap) -> float:
        return capability

    def after(self, orig, tag: int, capability: float, correct: bool, snap, now_s: float):
        return None


class Judges:
    """Open judgements of one simulation, and per kind what they cost."""

    def __init__(self, cluster, engines, snap, log: list, schedule_wake, changed):
        self.cluster = cluster
        self._log = log  # the simulation's engine event list (a poke of an idle colocated engine adds none)
        self.engines = engines
        self.snap = snap
        self._schedule_wake = schedule_wake
        self._changed = changed
        self._pools: dict[tuple[str, str], object] = {}
        self._next = JUDGE_ID_BASE
        self._pending: dict[int, tuple[int, str, float]] = {}  # judgement id -> (request, kind, submitted s)
        # Request id -> [open judgements, seconds still to wait once they are out, continuation].
        self.open: dict[int, list] = {}
        # kind -> passes, seconds (submission to answer, queueing included), queue_s (submission to
        # prefill start), energy_j, cost_usd, device, model, pool.
        self.rows: dict[str, dict] = {}

    def _pool(self, o):
        key = (o.model, o.device)
        if key not in self._pools:
            self._pools[key] = judge_pool(self.cluster, o.model, o.device) if o.model else None
        return self._pools[key]

    def split(self, overheads) -> tuple[list, list]:
        """(judgements a pool runs, judgements charged at batch 1 without a queue)."""
        pooled, rest = [], []
        for o in overheads:
            if o is None:
                continue
            pool = self._pool(o)
            if pool is not None and o.tokens + 1 <= pool.perf.kv_capacity_tokens:
                pooled.append(o)
            else:
                rest.append(o)
        return pooled, rest

    def submit(self, rid: int, pooled: list, now: float, extra_s: float, cont) -> None:
        """Place each judgement on its pool's instance that could start it soonest; when the last is
        out, `cont` runs after `extra_s` more seconds (unqueued judgements of the same step)."""
        snap = self.snap
        for o in pooled:
            pool = self._pool(o)
            ready = snap.ready_s
            i = min(pool.instances, key=lambda j: (ready[j], snap.running[j]))
            jid = self._next
            self._next += 1
            self._pending[jid] = (rid, o.kind, now)
            row = self.rows.get(o.kind)
            if row is None:
                row = self.rows[o.kind] = {"passes": 0, "seconds": 0.0, "queue_s": 0.0, "energy_j": 0.0,
                                           "cost_usd": 0.0, "device": o.device, "model": o.model, "pool": pool.name}
            eng = self.engines[i]
            eng.submit_prefill(jid, o.tokens, 1, ())
            if eng.poke(now, self._log):
                self._schedule_wake(i)
            self._changed(i, now)
        self.open[rid] = [len(pooled), extra_s, cont]

    def event(self, log: list, i: int):
        """log[i] is an event of a judgement: rewrite it to the request judged and book it. Returns
        (request id, seconds still to wait, continuation) when that request's last open judgement is out."""
        kind, jid, t, energy, cost, start = log[i]
        rid, judge_kind, submitted = self._pending[jid]
        log[i] = (JUDGED, rid, t, energy, cost, start)
        row = self.rows[judge_kind]
        row["energy_j"] += energy
        row["cost_usd"] += cost
        if kind != FINISHED:  # the first token: its prefill started at `start`
            row["queue_s"] += start - submitted
            return None
        del self._pending[jid]
        row["passes"] += 1
        row["seconds"] += t - submitted
        state = self.open[rid]
        state[0] -= 1
        if state[0]:
            return None
        del self.open[rid]
        return rid, state[1], state[2]

    def oldest(self) -> int | None:
        """The lowest request id with a judgement open (its record must stay in the window)."""
        return min(self.open) if self.open else None
