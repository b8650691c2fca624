"""Routers' passes on the live plane, as the simulator runs them (simulator/judges.py).

A one-pass policy whose scorer judges each prompt first (`local-first`'s router,
scheduler/plugins/overhead.py) pays for that judgement before the request is placed:

- where the cluster has a pool running the router's model on its device (a `serving: judge` pool
  first, else a colocated pool serving that model: `overhead.judge_pool`), the pass is real work
  there: one prompt of the request's length and one output token, sent to that pool's READY
  instance that could start it soonest. It queues behind that instance's work, its energy and
  dollars are the worker's (in that pool's stats and in the request's record), and the request is
  placed when its answer is out, at that modelled time;
- otherwise it is charged at batch 1 as the simulator charges it: the request waits the pass's
  seconds, its energy and dollars go to the request and to the run's totals beside the pools.

A judgement that fails (its worker lost, refused or past the RPC timeout) lets the request go on
unjudged: it is placed as if the router had answered, and the failure is counted.
Stats carry, per judgement kind, passes, seconds (sent to answer), seconds queued, joules, dollars
and where it ran (`SchedulerCore.stats().judgements`, GetStats' `judgements`).
"""
from __future__ import annotations

from scheduler.live.types import Work, WorkUpdate
from scheduler.plugins.overhead import judge_pool
from scheduler.types import RequestStatus
from workers.report import WorkerState


class _Pass:
    """One judgement's work in flight."""

    __slots__ = ("flight", "kind", "instance", "sent_s", "out_s", "timer")

    def __init__(self, flight, kind: str, instance: int, sent_s: float):
        self.flight = flight
        self.kind = kind
        self.instance = instance
        self.sent_s = sent_s
        self.out_s = sent_s  # when its one token is out (from the worker's spans)
        self.timer = None


class LiveJudges:
    """Open judgements of a live core, and per kind what they cost."""

    def __init__(self, core):
        self.core = core
        self._pools: dict[tuple[str, str], object] = {}
        self.pending: dict[str, _Pass] = {}  # judgement work key -> its pass
        self._open: dict[str, int] = {}  # flight key -> judgements still out
        self._seq = 0
        self.rows: dict[str, dict] = {}

    def _pool(self, o):
        key = (o.model, o.device)
        if key not in self._pools:
            self._pools[key] = judge_pool(self.core.cluster, o.model, o.device) if o.model else None
        return self._pools[key]

    def _row(self, o, pool) -> dict:
        row = self.rows.get(o.kind)
        if row is None:
            row = self.rows[o.kind] = {"passes": 0, "failed": 0, "unplaced": 0, "seconds": 0.0, "queue_s": 0.0,
                                       "energy_j": 0.0, "cost_usd": 0.0, "apart_energy_j": 0.0, "apart_cost_usd": 0.0,
                                       "device": o.device, "model": o.model,
                                       "pool": pool.name if pool is not None else ""}
        return row

    def _instance(self, pool) -> int:
        """The pool's READY instance that could start a prompt soonest, or -1."""
        core = self.core
        ready = [i for i in pool.instances if core.slots[i].state == WorkerState.READY and core.slots[i].worker_id]
        if not ready:
            return -1
        snap = core.snap
        return min(ready, key=lambda i: (snap.ready_s[i], snap.running[i]))

    def gate(self, fl, req, now: float) -> bool:
        """Before a request's first placement: start its judgements. True when the placement waits
        for them (the core places it again when they are out, with `fl.ready_s` set)."""
        core = self.core
        overheads = core.policy.first_overheads(req)
        if not overheads:
            return False
        wait = 0.0
        sent = 0
        for o in overheads:
            pool = self._pool(o)
            row = self._row(o, pool)
            i = self._instance(pool) if pool is not None and o.tokens + 1 <= pool.perf.kv_capacity_tokens else -1
            if i < 0:  # no pool runs it (or none of its instances is ready): charged at batch 1
                row["passes"] += 1
                row["unplaced"] += pool is not None
                row["seconds"] += o.seconds
                row["energy_j"] += o.energy_j
                row["cost_usd"] += o.cost_usd
                row["apart_energy_j"] += o.energy_j
                row["apart_cost_usd"] += o.cost_usd
                fl.energy_j += o.energy_j
                fl.cost_usd += o.cost_usd
                wait += o.seconds
                continue
            self._seq += 1
            key = f"{fl.key}#{o.kind}-{self._seq}"
            p = self.pending[key] = _Pass(fl, o.kind, i, now)
            p.timer = core.clock.call_at(core.now() + core._timeout, lambda key=key: self._timed_out(key))
            core.mirrors.dispatched(i, o.tokens, 1, now, ())
            core.workers.send(i, Work(key, o.tokens, 1, prefill=True, decode=True, sent_s=now,
                                      chunk_tokens=core.options.chunk_tokens))
            sent += 1
        fl.ready_s = max(fl.ready_s, now + wait)
        if sent:
            self._open[fl.key] = sent
        elif wait > 0.0:
            fl.timer = core.clock.call_at(fl.ready_s, lambda: core._place(fl))
        else:
            return False
        return True

    def on_update(self, instance: int, u: WorkUpdate) -> bool:
        """A worker's update of a judgement's work (True), or of something else (False)."""
        p = self.pending.get(u.key)
        if p is None or p.instance != instance:
            return False
        fl = p.flight
        row = self.rows[p.kind]
        for part in (u.prefilled, u.decoded):
            if part is not None:
                row["energy_j"] += part.energy_j
                row["cost_usd"] += part.cost_usd
                fl.energy_j += part.energy_j
                fl.cost_usd += part.cost_usd
        if u.prefilled is not None:
            row["queue_s"] += u.prefilled.queue_s
            p.out_s = p.sent_s + u.prefilled.queue_s + u.prefilled.prefill_s
        if u.decoded is not None:
            p.out_s += u.decoded.decode_s
            row["passes"] += 1
            row["seconds"] += p.out_s - p.sent_s
            self._done(u.key, p.out_s)
        elif u.error is not None:
            row["failed"] += 1
            self._done(u.key, self.core.now())
        return True

    def on_lost(self, instance: int) -> None:
        """The worker of `instance` went away: its judgements fail (their requests go on)."""
        for key, p in list(self.pending.items()):
            if p.instance == instance:
                self.rows[p.kind]["failed"] += 1
                self._done(key, self.core.now())

    def _timed_out(self, key: str) -> None:
        p = self.pending.get(key)
        if p is None:
            return
        p.timer = None
        self.core.workers.cancel(p.instance, key)
        self.rows[p.kind]["failed"] += 1
        self._done(key, self.core.now())

    def _done(self, key: str, out_s: float) -> None:
        p = self.pending.pop(key)
        if p.timer is not None:
            p.timer.cancel()
        fl = p.flight
        fl.ready_s = max(fl.ready_s, out_s)
        left = self._open[fl.key] - 1
        if left:
            self._open[fl.key] = left
            return
        del self._open[fl.key]
        if fl.status == RequestStatus.PENDING:
            self.core._place(fl)

    def cancel(self, fl) -> None:
        """A request ended while its judgements were out (the client went away): stop them."""
        if self._open.pop(fl.key, None) is None:
            return
        for key, p in list(self.pending.items()):
            if p.flight is fl:
                self.core.workers.cancel(p.instance, key)
                if p.timer is not None:
                    p.timer.cancel()
                del self.pending[key]

    def apart(self) -> tuple[float, float]:
        """(joules, dollars) of judgements charged at batch 1, beside the pools."""
        return (sum(r["apart_energy_j"] for r in self.rows.values()),
                sum(r["apart_cost_usd"] for r in self.rows.values()))
