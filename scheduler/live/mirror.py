"""The core's mirrors of workers' engines, and the snapshot rows they write.

The policy reads the same `ClusterSnapshot` columns as in the simulator, and
each instance's row is written the way the simulator writes it: from an
engine (`BatchEngine.row`), as of that engine's last transition. The core
keeps a mirror of every worker's engine (same performance model), restored
from the engine state workers send with their load reports. Dispatches no
report includes yet (a report's `received` count tells which) are replayed
into the mirror at their modelled send time, and the mirror is advanced to
the moment of each decision. The engine is deterministic, so the row is what
the worker's engine holds at that moment although reports are a hop old. A
worker whose state cannot be restored (no state, or another engine version)
falls back to its reported row plus its pending dispatches.

Times: a mirror runs on its worker's clock (worker clock = scheduler clock +
`offset`, from each report's Unix time); rows are on the scheduler clock.
"""
from __future__ import annotations

import logging
import math
from collections import deque

from scheduler.cluster import Cluster, ClusterSnapshot
from workers.engine import PREFILL, BatchEngine
from workers.engine_state import restore_engine
from workers.report import LoadReport

log = logging.getLogger(__name__)


class Mirror:
    """One instance's engine as the core believes it stands (on the worker clock)."""

    __slots__ = ("instance", "engine", "ok", "t", "touched", "offset", "fake_id", "sent", "pending", "report")

    def __init__(self, instance: int, engine: BatchEngine):
        self.instance = instance
        self.engine = engine
        self.ok = False  # restored from a state: the engine is exact, not the fallback row
        self.t = 0.0  # how far the engine was driven
        self.touched = 0.0  # its last transition (a wake or an admission): where its row is written
        self.offset = 0.0
        self.fake_id = 0
        self.sent = 0  # prefills dispatched to this incarnation
        # Dispatches no report includes yet: (dispatch number, prompt, output, sent at, hashes).
        self.pending: deque = deque()
        self.report: LoadReport | None = None

    def reset(self) -> None:
        """A new incarnation of the worker: nothing of the old one applies."""
        self.sent = 0
        self.pending.clear()
        self.report = None
        self.ok = False

    def advance(self, t: float, scratch: list) -> None:
        eng = self.engine
        while eng.next_wake_s <= t:
            scratch.clear()
            self.touched = eng.next_wake_s
            eng.wake(eng.next_wake_s, scratch)
        if t > self.t:
            self.t = t

    def submit(self, prompt: int, output: int, t: float, hashes: tuple, scratch: list) -> None:
        """A dispatch the worker has not reported yet, applied when it was sent (workers
        admit work at the modelled time it was sent, so the mirror stays exact)."""
        t = max(t, self.t)
        self.advance(t, scratch)
        self.fake_id -= 1  # negative ids never meet the worker's own
        self.engine.submit_prefill(self.fake_id, prompt, output, hashes)
        scratch.clear()
        self.touched = t
        self.engine.poke(t, scratch)


class Mirrors:
    """Every instance's mirror, writing rows into the snapshot the policy reads."""

    def __init__(self, cluster: Cluster, snap: ClusterSnapshot):
        self.snap = snap
        # Built as the simulator builds its engines: prefill-capable ones carry a prefix
        # cache registered in the snapshot's index, which prefix-aware scorers read.
        engines = cluster.make_engines(snap, prefix_caching=True)
        self.items = [Mirror(i, engine) for i, engine in enumerate(engines)]
        self._next_wake = math.inf  # earliest mirror wake, scheduler clock
        self.now = 0.0  # the latest decision time: rows are kept up to it
        self._scratch: list = []

    def reset(self, i: int) -> None:
        self.items[i].reset()
        self._sync(self.items[i], self.now)

    def dispatched(self, i: int, prompt: int, output: int, sent_s: float, hashes: tuple = ()) -> None:
        m = self.items[i]
        m.sent += 1
        m.pending.append((m.sent, prompt, output, sent_s, hashes))
        if hashes and m.engine.prefix is not None:
            # The worker will hold these blocks once the prompt is prefilled; counting them
            # from dispatch lets the next turn of a conversation follow before that.
            m.engine.prefix.insert(hashes)
        if m.ok:
            m.submit(prompt, output, sent_s + m.offset, hashes, self._scratch)
        self._sync(m, self.now)

    def report(self, i: int, r: LoadReport, state: bytes | None, offset: float) -> bool:
        """Apply a worker's report (and engine state, if it sent one); False when it is
        older than the last one (reports ride on different calls and can overtake each
        other: an older one would take the mirror back before dispatches a newer one showed)."""
        m = self.items[i]
        if m.report is not None and r.now_s < m.report.now_s:
            return False
        pending = m.pending
        while pending and pending[0][0] <= r.received:
            pending.popleft()
        m.report = r
        m.offset = offset
        # A report without the engine state leaves the mirror as it is: it already holds
        # every dispatch, and nothing newer about the worker's engine.
        if state:
            try:
                restore_engine(m.engine, state)
                m.ok = True
            except Exception as exc:  # a state this mirror cannot take: fall back to rows
                m.ok = False
                log.debug("instance %d: engine state not restored: %s", i, exc)
            if m.ok:
                m.t = m.touched = r.engine_s
                for _, prompt, output, sent, hashes in pending:
                    m.submit(prompt, output, sent + offset, hashes, self._scratch)
        self._sync(m, self.now)
        return True

    def refresh(self, now: float) -> None:
        """Rows current as of `now` (a decision time): every mirror whose engine passed a
        wake is advanced first."""
        if now > self.now:
            self.now = now
        if now < self._next_wake:
            return
        self._next_wake = math.inf
        for m in self.items:
            if m.ok:
                self._sync(m, now)

    def _sync(self, m: Mirror, now: float) -> None:
        i = m.instance
        if m.ok:
            eng = m.engine
            offset = m.offset
            m.advance(now + offset, self._scratch)
            queued, tokens, running, kv_free, busy = eng.row(m.touched)
            self.snap.update(i, queued, tokens, running, kv_free, busy - offset)
            wake = eng.next_wake_s - offset if eng.activity else math.inf
            if wake < self._next_wake:  # the row changes when the mirror passes its next wake
                self._next_wake = wake
            return
        r = m.report
        if r is None:
            queued, tokens, running, kv_free, busy = 0, 0, 0, int(self.snap.kv_capacity[i]), now
        else:
            queued, tokens, running, kv_free = r.queued, r.queued_tokens, r.running, r.kv_free
            busy = r.now_s - m.offset + r.busy_remaining_s if r.activity & PREFILL else now
        queued += len(m.pending)
        tokens += sum(p[1] for p in m.pending)
        self.snap.update(i, queued, tokens, running, kv_free, busy)
