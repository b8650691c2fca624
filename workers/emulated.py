"""An emulated worker: the simulator's continuous-batching engine on a `Clock`.

`EmulatedWorker` is a synchronous state machine with no I/O: work comes in as
method calls, progress goes out through listener callbacks, and it waits only
through its clock's timers. The same worker runs live (a `ScaledClock`, under
the gRPC servicer in `workers.servicer`) and in process on a `VirtualClock`
(the live core's deterministic tests).

Time. A timer fires when the clock reaches the engine's next wake, and the
engine is woken *at the scheduled modelled time*: a late timer (a busy
machine, a GC pause) delays when results are delivered, never a modelled
timing. Work is admitted at the modelled time its sender sent it (transit is
not modelled time), and the engine runs `input_slack_s` wall seconds behind
the clock so that such work still finds it before then: conservative
synchronisation with a fixed lookahead.

KV hand-over (prefill-only workers). After prefill the worker asks its
`KvTransport` to move the request's KV to the decode worker; the modelled
transfer `InstancePerf.kv_transfer_s(prompt, min(own link, decode link))` is
what the transport paces, and the source link carries one hand-over at a time
(FIFO), as in the simulator. When the decode side acknowledges (the request
joined its batch), this worker frees its copy as of that moment, as the
simulator frees it at JOINED, and reports the prefill done.
"""
from __future__ import annotations

import enum
import logging
import math
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from workers.clock import Clock, Timer
from workers.engine import (DECODE, FINISHED, FIRST_TOKEN, IDLE, JOINED, PREFILL, ROLE_BOTH, ROLE_DECODE,
                            ROLE_PREFILL, BatchEngine)
from workers.engine_state import engine_state
from workers.prefix_cache import tier_usage, tiered_cache
from workers.report import LoadReport, WorkerState
from workers.work import (AlreadyHeld, Cancelled, DecodeSummary, Draining, HandOver, InvalidField, KvListener,
                          KvTransport, NoCapacity, NotHeld, PeerFailed, PrefillOutcome, WorkerError, WorkerStatsView,
                          WorkListener, WrongRole)

if TYPE_CHECKING:
    from workers.perf import InstancePerf

log = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 16
# While decodes stream, tokens decoded so far go out at least this often (wall
# seconds), also in the middle of a long closed-form decode segment.
DEFAULT_STREAM_INTERVAL_S = 0.02
# Wall seconds the engine runs behind the clock. Work sent to a worker reaches it
# within this slack even on a busy 2-core machine, so it is admitted at the exact
# modelled time it was sent.
DEFAULT_INPUT_SLACK_S = 0.05
# A request whose KV is ready here but that no decode work claims within this many
# wall seconds is dropped and its KV freed.
DEFAULT_CLAIM_TIMEOUT_S = 30.0


class _St(enum.IntEnum):
    """Where a request is on this worker."""

    ARRIVING = 7  # KV received, admitted at its modelled completion time
    WAITING = 0  # queued for prefill, or in the prefill iteration running (the engine moves it silently)
    PREFILLING = 1  # in the running prefill iteration, cancelled: leaves when the iteration ends
    HELD = 2  # prefill-only: KV held until the hand-over is acknowledged
    JOINING = 3  # KV here, waiting for a decode slot
    DECODING = 4
    FINISHED = 5
    GONE = 6  # cancelled or delivered


class _Req:
    __slots__ = (
        "key", "eid", "inp", "out", "state", "submit_s", "prefill_start_s", "first_token_s", "kv_arrival_s",
        "join_s", "join_step", "finish_s", "prefill_energy_j", "prefill_cost_usd", "decode_energy_j",
        "decode_cost_usd", "cached_tokens", "listener", "kv_listener", "claimed", "chunk_tokens", "emitted",
        "cancel_pending", "orphan_timer", "arrival_timer", "decode_address", "decode_link", "handover",
    )

    def __init__(self, key: str, eid: int, inp: int, out: int, state: _St):
        self.key = key
        self.eid = eid
        self.inp = inp
        self.out = out
        self.state = state
        self.submit_s = 0.0
        self.prefill_start_s = math.nan
        self.first_token_s = math.nan
        self.kv_arrival_s = math.nan
        self.join_s = math.nan
        self.join_step = 0
        self.finish_s = math.nan
        self.prefill_energy_j = 0.0
        self.prefill_cost_usd = 0.0
        self.decode_energy_j = 0.0
        self.decode_cost_usd = 0.0
        self.cached_tokens = 0
        self.listener: WorkListener | None = None
        self.kv_listener: KvListener | None = None
        self.claimed = False  # decode work is attached: tokens stream to the listener
        self.chunk_tokens = DEFAULT_CHUNK_TOKENS
        self.emitted = 1  # index 0 is the first token, which prefill produces
        self.cancel_pending = False
        self.orphan_timer: Timer | None = None
        self.arrival_timer: Timer | None = None
        self.decode_address = ""
        self.decode_link = 0.0
        self.handover: HandOver | None = None


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(f"field '{name}': must be a positive integer, got {value!r}")


class EmulatedWorker:
    """One BatchEngine on a clock; work keyed by the caller's request key (the engine
    sees small integer ids). Not thread-safe: one thread (or event loop) drives it."""

    def __init__(self, perf: "InstancePerf", role: int, clock: Clock, *, max_batch: int = 256,
                 max_batch_tokens: int = 16384, link_bytes_per_s: float = 50e9, worker_id: str = "",
                 pool: str = "", instance: int = -1, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
                 stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S, input_slack_s: float = DEFAULT_INPUT_SLACK_S,
                 prefix_block_tokens: int = 0, token_budget: int = 0, kv: KvTransport | None = None,
                 kv_tiers: tuple = (), kv_store=None):
        if role not in (ROLE_PREFILL, ROLE_DECODE, ROLE_BOTH):
            raise ValueError(f"unknown role {role!r}")
        if not link_bytes_per_s > 0:
            raise ValueError(f"link_bytes_per_s must be positive, got {link_bytes_per_s!r}")
        if not input_slack_s >= 0:
            raise ValueError(f"input_slack_s must be >= 0, got {input_slack_s!r}")
        self.perf = perf
        self.role = int(role)
        self.clock = clock
        # Prompts sent with block hashes skip the prefix this worker still caches (0: no cache),
        # in HBM or in its kv_tiers (KvTier) and the shared kv_store (a TierLru) below.
        prefix = None
        if prefix_block_tokens > 0 and role != ROLE_DECODE:
            kv_bytes = perf.kv_bytes_per_token if kv_tiers or kv_store is not None else 0.0
            prefix = tiered_cache(prefix_block_tokens, 0, None, kv_tiers, kv_bytes, (), kv_store)
        # token_budget > 0: chunked prefill with that many tokens per iteration (0: prefill-first).
        self.engine = BatchEngine(perf, role, max_batch, max_batch_tokens, prefix, token_budget)
        # A store held by another process (workers/shared_store.py): its servicer asks it which
        # blocks a prompt will find before the prompt reaches the engine. None: nothing to ask.
        self.store_lookup = getattr(kv_store, "lookup", None)
        self.link_bytes_per_s = float(link_bytes_per_s)
        self.worker_id = worker_id or f"{pool or 'worker'}-{uuid.uuid4().hex[:8]}"
        self.pool = pool
        self.instance = instance
        self.kv = kv
        # Wall-second settings, in modelled seconds of this clock.
        scale = clock.time_scale
        self._claim_timeout = claim_timeout_s / scale
        self._stream_interval = stream_interval_s / scale
        self._slack = input_slack_s / scale
        self.state = WorkerState.READY
        self._reqs: dict[str, _Req] = {}
        self._by_eid: dict[int, _Req] = {}
        self._next_eid = 0
        self._events: list = []
        self._timer: Timer | None = None
        self._timer_at = math.inf
        self._tick: Timer | None = None
        self._engine_t = 0.0  # latest time the engine was driven to (wake or poke)
        self._remove_pending: set[int] = set()
        self._streaming: set[_Req] = set()
        self._link_free_s = 0.0
        self._when_idle: list[Callable[[], None]] = []
        self.received = 0
        self.completed = 0
        # Called after the engine moved (a wake, an admission, a release): an in-process
        # client reports the worker's load then. None: nobody asks.
        self.on_engine: Callable[[], None] | None = None

    def now(self) -> float:
        return self.clock.now()

    def stop(self) -> None:
        """Cancel everything in flight (each listener hears Cancelled) and stop the timers."""
        for key in list(self._reqs):
            self.cancel(key, notify=True)
        self._reqs.clear()  # prefills cancelled mid-iteration too: no iteration ends any more
        self._by_eid.clear()
        for timer in (self._timer, self._tick):
            if timer is not None:
                timer.cancel()
        self._timer = self._tick = None
        self._timer_at = math.inf
        self.state = WorkerState.DRAINED

    # ---- work in --------------------------------------------------------
    def prefill(self, key: str, prompt_tokens: int, max_output_tokens: int, listener: WorkListener, *,
                sent_s: float | None = None, block_hashes: tuple = (), decode: bool = False, chunk_tokens: int = 0,
                decode_address: str = "", decode_link_bytes_per_s: float = 0.0) -> None:
        """Queue a prompt for prefill, at the modelled time `sent_s` it was sent (no later
        than now; default now). `decode`: a colocated worker decodes it afterwards and
        streams its tokens; `decode_address`: a prefill-only worker hands its KV there.
        With `block_hashes`, the part this worker's prefix cache holds is not recomputed.
        Raises WorkerError; progress goes to `listener`."""
        self._check_open()
        if self.role == ROLE_DECODE:
            raise WrongRole(f"worker {self.worker_id} is decode-only; send prefill to a prefill or colocated worker")
        _check_count("prompt_length", prompt_tokens)
        _check_count("max_output_tokens", max_output_tokens)
        if self.role == ROLE_BOTH and decode_address:
            raise InvalidField("field 'decode_address': a colocated worker keeps its KV; leave it empty")
        if self.role == ROLE_PREFILL and not decode_address and max_output_tokens > 1:
            raise InvalidField("field 'decode_address': a prefill-only worker hands KV over; name the decode worker")
        if decode and self.role != ROLE_BOTH:
            raise InvalidField("field 'decode': only a colocated worker decodes what it prefilled")
        if chunk_tokens < 0:
            raise InvalidField(f"field 'chunk_tokens': must be >= 0, got {chunk_tokens}")
        need = prompt_tokens if self.role == ROLE_PREFILL else prompt_tokens + max_output_tokens
        if need > self.engine.kv_capacity:
            raise NoCapacity(f"request needs {need} tokens of KV; this instance holds at most "
                             f"{self.engine.kv_capacity}")
        req = self._new_req(key, prompt_tokens, max_output_tokens, _St.WAITING)
        req.listener = listener
        req.claimed = decode
        req.chunk_tokens = chunk_tokens or DEFAULT_CHUNK_TOKENS
        req.decode_address = decode_address
        req.decode_link = decode_link_bytes_per_s
        self.received += 1
        now = self.now()
        sent = None if sent_s is None else min(sent_s, now)
        t = self._engine_at(now if sent is None else sent)
        if t != sent:  # not at the time it was sent (no send time, or later than the slack allows)
            self.engine.unforeseen += 1
        req.submit_s = t
        self.engine.submit_prefill(req.eid, prompt_tokens, max_output_tokens, block_hashes)
        self._poke(t)

    def decode(self, key: str, max_output_tokens: int, chunk_tokens: int, listener: WorkListener) -> None:
        """Decode a request whose KV is here (handed over, or a colocated prefill's) and
        stream its tokens to `listener`."""
        req = self._reqs.get(key)
        if req is None or req.state not in (_St.ARRIVING, _St.JOINING, _St.DECODING, _St.FINISHED):
            raise NotHeld(f"no KV for request {key!r} on worker {self.worker_id}; prefill it here or hand "
                          "its KV over to here first")
        if req.claimed:
            raise AlreadyHeld(f"request {key!r} is already being decoded")
        if max_output_tokens and max_output_tokens != req.out:
            raise InvalidField(f"field 'max_output_tokens': {max_output_tokens} differs from the {req.out} the KV "
                               "was reserved for")
        if chunk_tokens < 0:
            raise InvalidField(f"field 'chunk_tokens': must be >= 0, got {chunk_tokens}")
        req.claimed = True
        req.listener = listener
        req.chunk_tokens = chunk_tokens or DEFAULT_CHUNK_TOKENS
        if req.orphan_timer is not None:
            req.orphan_timer.cancel()
            req.orphan_timer = None
        if req.state == _St.FINISHED:
            self._push_final(req)
        elif req.state == _St.DECODING:
            self._streaming.add(req)
            self._push_progress(req, self.engine.step, self.now())
            self._arm_tick()

    def admit_kv(self, key: str, input_tokens: int, output_tokens: int, listener: KvListener,
                 ready_s: float | None = None) -> None:
        """A handed-over request's KV arrived: from its modelled completion time
        (`ready_s`, default now) it waits for a decode slot; `listener` hears when it
        joined the batch. Raises WorkerError."""
        self._check_open()
        if self.role != ROLE_DECODE:
            raise WrongRole(f"worker {self.worker_id} is not a decode worker; it takes no KV hand-overs")
        _check_count("token_end", input_tokens)
        _check_count("max_output_tokens", output_tokens)
        if output_tokens < 2:
            raise InvalidField("key 'max_output_tokens': a hand-over needs at least 2 output tokens "
                               f"(the first comes from prefill), got {output_tokens}")
        need = input_tokens + output_tokens
        if need > self.engine.kv_capacity:
            raise NoCapacity(f"request needs {need} tokens of KV; this instance holds at most "
                             f"{self.engine.kv_capacity}")
        req = self._new_req(key, input_tokens, output_tokens, _St.ARRIVING)
        req.kv_listener = listener
        now = self.now()
        ready = now if ready_s is None else ready_s
        if ready > now:
            req.arrival_timer = self.clock.call_at(ready, lambda: self._kv_ready(req, ready))
        else:
            self._kv_ready(req, ready)

    def _check_open(self) -> None:
        if self.state != WorkerState.READY:
            raise Draining(f"worker {self.worker_id} is {self.state.name.lower()}; it takes no new work")

    def _new_req(self, key: str, inp: int, out: int, state: _St) -> _Req:
        if key in self._reqs:
            raise AlreadyHeld(f"request {key!r} is already on worker {self.worker_id}")
        eid = self._next_eid
        self._next_eid += 1
        req = _Req(key, eid, inp, out, state)
        self._reqs[key] = req
        self._by_eid[eid] = req
        return req

    def _kv_ready(self, req: _Req, ready: float) -> None:
        req.arrival_timer = None
        if req.state != _St.ARRIVING:
            return
        t = self._engine_at(min(ready, self.now()))
        req.state = _St.JOINING
        req.kv_arrival_s = t
        self.engine.submit_decode(req.eid, req.inp, req.out)
        self._poke(t)

    # ---- hand-over (prefill-only workers) ---------------------------------
    def _start_hand_over(self, req: _Req) -> None:
        link = self.link_bytes_per_s
        if req.decode_link > 0:
            link = min(link, req.decode_link)
        start = max(req.first_token_s, self._link_free_s)
        done = start + self.perf.kv_transfer_s(req.inp, link)
        self._link_free_s = done
        req.handover = HandOver(req.key, req.decode_address, req.inp, req.out, start, done)
        if self.kv is None:
            self.hand_over_failed(req.key, PeerFailed(req.decode_address, "this worker has no KV transport"))
            return
        self.kv.send(req.handover)

    def handed_over(self, key: str, joined_unix_s: float, blocks: int = 1) -> None:
        """The decode worker acknowledged the request's KV (it joined its batch then):
        free this worker's copy as of that moment and report the prefill done."""
        req = self._reqs.get(key)
        if req is None or req.state != _St.HELD or req.handover is None:
            return  # cancelled meanwhile
        h = req.handover
        self._release_held(req, max(self.clock.from_unix(joined_unix_s), h.done_s))
        self._forget(req)
        req.listener.prefilled(key, self._prefill_outcome(
            req, kv_transfer_s=self.now() - req.first_token_s, kv_sent_s=h.done_s - req.first_token_s,
            kv_blocks=blocks, kv_bytes=int(req.inp * self.perf.kv_bytes_per_token)))

    def hand_over_failed(self, key: str, error: WorkerError) -> None:
        req = self._reqs.get(key)
        if req is None or req.state != _St.HELD:
            return
        self._release_held(req, req.handover.done_s if req.handover is not None else None)
        self._forget(req)
        req.listener.failed(key, error)

    def _release_held(self, req: _Req, at_s: float | None = None) -> None:
        if req.state == _St.HELD:
            req.state = _St.GONE
            t = self._engine_at(self.now() if at_s is None else at_s)
            self.engine.release(req.eid)
            self._poke(t)

    def _prefill_outcome(self, req: _Req, **handover) -> PrefillOutcome:
        return PrefillOutcome(
            queue_s=req.prefill_start_s - req.submit_s, prefill_s=req.first_token_s - req.prefill_start_s,
            prefill_tokens=req.inp - req.cached_tokens, cached_tokens=req.cached_tokens,
            energy_j=req.prefill_energy_j, cost_usd=req.prefill_cost_usd, **handover)

    # ---- cancellation -----------------------------------------------------
    def cancel(self, key: str, notify: bool = False) -> bool:
        """Drop a request wherever it is; its batch slot and KV are freed. `notify`: its
        listener hears Cancelled (by default cancelled work says nothing). True if it was here."""
        req = self._reqs.get(key)
        if req is None or req.cancel_pending:
            return False
        eng = self.engine
        now = self._catch_up()
        state = req.state
        if state == _St.ARRIVING:
            if req.arrival_timer is not None:
                req.arrival_timer.cancel()
                req.arrival_timer = None
        elif state == _St.WAITING and eng.remove_waiting(req.eid):
            pass
        elif state in (_St.WAITING, _St.PREFILLING):
            # The iteration is computing; the request leaves when it ends (see _drop_after_prefill).
            req.state = _St.PREFILLING
            req.cancel_pending = True
            self._cancelled(req, state, notify)
            return True
        elif state == _St.HELD:
            if req.handover is not None and self.kv is not None:
                self.kv.abort(key, req.handover.address)
            eng.release(req.eid)
            self._poke(now)
        elif state == _St.JOINING:
            eng.remove_joining(req.eid)
        elif state == _St.DECODING:
            self._cancel_member(req, now)
        req.state = _St.GONE
        self._forget(req)
        self._cancelled(req, state, notify)
        self._reschedule()
        return True

    def _cancelled(self, req: _Req, state: _St, notify: bool) -> None:
        if not notify:
            return
        error = Cancelled(f"request {req.key!r} was cancelled on worker {self.worker_id}")
        if req.listener is not None:
            req.listener.failed(req.key, error)
        elif req.kv_listener is not None and state in (_St.ARRIVING, _St.JOINING):
            req.kv_listener.refused(req.key, error)

    def _cancel_member(self, req: _Req, now: float) -> None:
        eng = self.engine
        if req.eid not in eng.members:
            return
        if eng.activity & DECODE and eng.act_start_s < now:
            # The running segment's time was computed with this member in the batch: cut
            # it at the end of the current step and take the member out there.
            eng.poke(now, [])
            self._remove_pending.add(req.eid)
            self._reschedule()
            return
        eng.remove_member(req.eid)
        if eng.activity & DECODE:  # a segment that starts now: recompute it without the member
            self._restart(now)

    def _restart(self, now: float) -> None:
        events: list = []
        self.engine.restart_activity(now, events)
        if events:
            self._handle(events)

    # ---- drain / stats ----------------------------------------------------
    def drain(self) -> None:
        if self.state == WorkerState.READY:
            self.state = WorkerState.DRAINING
        if not self._reqs:
            self.state = WorkerState.DRAINED

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` once nothing is in flight (now, if nothing is)."""
        if self._reqs:
            self._when_idle.append(callback)
        else:
            callback()

    @property
    def in_flight(self) -> int:
        return len(self._reqs)

    def load(self) -> LoadReport:
        """The engine's load as it stands (it runs up to the input slack behind the clock;
        `engine_s` says where, and the scheduler's mirror advances it from there)."""
        eng = self.engine
        now = self.now()
        busy = max(eng.next_wake_s - now, 0.0) if eng.activity != IDLE else 0.0
        return LoadReport(self.received, len(eng.waiting) + len(eng.joining), int(eng.waiting_tokens), eng.batch,
                          eng.kv_capacity - eng.kv_reserved, busy, eng.activity, eng.busy_s, now,
                          self.clock.to_unix(now), self._engine_t, eng.prefill_tokens, eng.decode_tokens,
                          eng.dynamic_energy_j, self.state, eng.prefix_hit_tokens, tier_usage(eng.prefix))

    def engine_state(self) -> bytes:
        return engine_state(self.engine)

    def stats(self) -> WorkerStatsView:
        eng = self.engine
        now = self.now()
        perf = self.perf
        return WorkerStatsView(
            worker_id=self.worker_id, pool=self.pool, instance=self.instance, state=self.state, now_s=now,
            queue_depth=len(eng.waiting) + len(eng.joining), queued_tokens=int(eng.waiting_tokens),
            running=eng.batch, kv_free_tokens=eng.kv_capacity - eng.kv_reserved,
            kv_capacity_tokens=eng.kv_capacity, busy_until_s=eng.next_wake_s if eng.activity != IDLE else 0.0,
            prefill_tokens=eng.prefill_tokens, decode_tokens=eng.decode_tokens, completed=self.completed,
            energy_j=eng.dynamic_energy_j + perf.idle_power_w * now, cost_usd=perf.price_usd_per_s * now,
            busy_s=eng.busy_s, received=self.received, in_flight=len(self._reqs))

    # ---- driving the engine -------------------------------------------------
    def _poke(self, now: float) -> None:
        events = self._events
        events.clear()
        self._engine_t = max(self._engine_t, now)
        self.engine.poke(now, events)
        if events:
            self._handle(list(events))
        self._reschedule()
        if self.on_engine is not None:
            self.on_engine()

    def _catch_up(self) -> float:
        """Run every wake that is due; returns the current modelled time."""
        now = self.now()
        self._advance_to(now)
        return now

    def _engine_at(self, t: float) -> float:
        """Bring the engine to modelled time `t` (no earlier than where it already is)
        and return the time new input is applied at."""
        t = max(t, self._engine_t)
        self._advance_to(t)
        return t

    def _advance_to(self, t: float) -> None:
        if self.engine.next_wake_s <= t:
            self._advance(t)

    def _reschedule(self) -> None:
        t = self.engine.next_wake_s
        if t == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t < math.inf:
            self._timer = self.clock.call_at(t + self._slack, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        at = self._timer_at
        self._timer_at = math.inf
        # Advance to the scheduled time only: other timers due meanwhile (a KV becoming
        # ready) run next, in time order, and see the engine at their own time.
        self._advance_to(at)
        self._reschedule()

    def _advance(self, now: float) -> None:
        eng = self.engine
        events = self._events
        decoded = False
        last = now
        while eng.next_wake_s <= now:
            t = eng.next_wake_s
            events.clear()
            self._engine_t = max(self._engine_t, t)
            # The prompts this wake completes, with the tokens each computed (the rest came from cache).
            prefilled = eng.prefill_batch if eng.prefix is not None and eng.activity & PREFILL else None
            eng.wake(t, events)
            if prefilled:
                by_eid = self._by_eid
                for eid, inp, _, computed in prefilled:
                    req = by_eid.get(eid)
                    if req is not None:
                        req.cached_tokens = inp - computed
            if eng.last_kind & DECODE:
                decoded = True
            if self._remove_pending:
                self._apply_removals(t, events)
            if events:
                self._handle(list(events))
            last = t
        if decoded and self._streaming:
            step = eng.step
            for req in list(self._streaming):
                self._push_progress(req, step, last)
        if self.on_engine is not None:
            self.on_engine()

    def _apply_removals(self, t: float, events: list) -> None:
        eng = self.engine
        removed = False
        for eid in self._remove_pending:
            if eid in eng.members:
                eng.remove_member(eid)
                removed = True
        self._remove_pending.clear()
        if removed and eng.activity & DECODE and eng.act_start_s == t:
            eng.restart_activity(t, events)

    def _handle(self, events: list) -> None:
        """Apply engine events (kind, request id, time, energy, cost, activity start)."""
        eng = self.engine
        for kind, eid, t, energy, cost, start in events:
            req = self._by_eid.get(eid)
            if req is None:
                continue  # cancelled while its iteration ran
            if kind == FIRST_TOKEN:
                req.prefill_start_s = start
                req.first_token_s = t
                req.prefill_energy_j = energy
                req.prefill_cost_usd = cost
                if self.role == ROLE_PREFILL:
                    req.state = _St.HELD
                else:
                    req.state = _St.DECODING
                    req.join_s = t
                    req.join_step = eng.step
                if req.cancel_pending:
                    self._drop_after_prefill(req, t)
                    continue
                self._first_token(req)
            elif kind == FINISHED:
                req.finish_s = t
                req.decode_energy_j = energy
                req.decode_cost_usd = cost
                req.state = _St.FINISHED
                self.completed += 1
                self._streaming.discard(req)
                if req.claimed:
                    self._push_final(req)
                else:
                    self._arm_orphan(req)
            elif kind == JOINED:
                req.state = _St.DECODING
                req.join_s = t
                req.join_step = eng.step
                if req.claimed:
                    self._streaming.add(req)
                    self._arm_tick()
                else:
                    self._arm_orphan(req)
                if req.kv_listener is not None:
                    listener, req.kv_listener = req.kv_listener, None
                    listener.joined(req.key, t)

    def _first_token(self, req: _Req) -> None:
        if self.role == ROLE_PREFILL:
            if req.out > 1:
                self._start_hand_over(req)
            else:  # nothing to decode: done at the first token
                self._release_held(req, req.first_token_s)
                self._forget(req)
                req.listener.prefilled(req.key, self._prefill_outcome(req))
            return
        req.listener.prefilled(req.key, self._prefill_outcome(req))
        if req.claimed:
            if req.state == _St.DECODING:
                self._streaming.add(req)
                self._arm_tick()
        elif req.state == _St.DECODING:
            self._arm_orphan(req)  # prefill-only work on a colocated worker: decode work claims it

    def _drop_after_prefill(self, req: _Req, t: float) -> None:
        """A request cancelled during its prefill iteration leaves as the iteration ends."""
        eng = self.engine
        if req.state == _St.HELD:
            eng.release(req.eid)
        elif req.eid in eng.members:
            eng.remove_member(req.eid)
            if eng.activity & DECODE and eng.act_start_s == t:
                self._restart(t)
        req.state = _St.GONE
        self._forget(req)

    # ---- streaming --------------------------------------------------------
    def _arm_tick(self) -> None:
        if self._tick is None and self._streaming:
            self._tick = self.clock.call_at(self.now() + self._stream_interval, self._on_tick)

    def _on_tick(self) -> None:
        """Stream the tokens decoded so far inside the running segment (read-only: the
        segment's closed form tells how many steps are done by now)."""
        self._tick = None
        if not self._streaming:
            return
        now = self.now()
        eng = self.engine
        if eng.activity & DECODE and now > eng.act_start_s:
            step = eng.step + eng.steps_done_by(now)
            for req in list(self._streaming):
                self._push_progress(req, step, now)
        self._arm_tick()

    def _push_progress(self, req: _Req, step: int, emit_s: float) -> None:
        produced = min(req.out, 1 + step - req.join_step)
        if produced - req.emitted >= req.chunk_tokens:
            req.listener.tokens(req.key, req.emitted, produced - req.emitted, emit_s)
            req.emitted = produced

    def _push_final(self, req: _Req) -> None:
        """The request's last tokens and its decode summary; the worker forgets it."""
        if req.out > req.emitted:
            req.listener.tokens(req.key, req.emitted, req.out - req.emitted, req.finish_s)
            req.emitted = req.out
        wait = 0.0 if math.isnan(req.kv_arrival_s) else req.join_s - req.kv_arrival_s
        start = req.join_s if not math.isnan(req.join_s) else req.first_token_s
        self._forget(req)
        req.listener.decoded(req.key, DecodeSummary(wait_s=wait, decode_s=req.finish_s - start,
                                                    energy_j=req.decode_energy_j, cost_usd=req.decode_cost_usd))

    def _arm_orphan(self, req: _Req) -> None:
        if not req.claimed and req.orphan_timer is None:
            req.orphan_timer = self.clock.call_at(self.now() + self._claim_timeout, lambda: self._orphaned(req.key))

    def _orphaned(self, key: str) -> None:
        req = self._reqs.get(key)
        if req is not None and not req.claimed:
            log.warning("worker %s: no decode work claimed request %r in time; freeing it", self.worker_id, key)
            self.cancel(key)

    def _forget(self, req: _Req) -> None:
        if self._reqs.get(req.key) is req:
            del self._reqs[req.key]
        self._by_eid.pop(req.eid, None)
        self._streaming.discard(req)
        if req.orphan_timer is not None:
            req.orphan_timer.cancel()
            req.orphan_timer = None
        if not self._reqs:
            if self.state == WorkerState.DRAINING:
                self.state = WorkerState.DRAINED
            waiting, self._when_idle = self._when_idle, []
            for callback in waiting:
                callback()
