"""The live scheduler core: the simulator's policy placing requests on workers.

`SchedulerCore` is a synchronous state machine with no I/O ("decide, then
apply"). Events come in as method calls: a client's request (`submit`) or its
cancellation, a worker's load report, a work update, a lost channel, a worker
(re)registering. Effects go out through the `WorkerClient` it was given
(work, cancellations) and each request's `RequestSink` (tokens, then exactly
one outcome). It reads time only through its `Clock`, so the same core runs
live on a `ScaledClock` behind gRPC and in process on a `VirtualClock`, where
the same trace gives the same decisions as the simulator.

Each request is decided by the same policy as in the simulator
(`registry.build_policy` over a `ClusterSnapshot` whose rows the mirrors write,
`scheduler.live.mirror`), as of its arrival plus the core's own time since
(`Clock.wall`, charged unscaled: the scheduler is real code, not emulated
hardware). A colocated placement is one work item (prefill, then decode);
apart, the prefill instance hands the KV to the decode instance itself, then
the decode instance gets the decode. From the dispatch on, record times are
the spans workers report, all modelled device time.

Failures: a stage that fails on a worker (or passes `rpc_timeout_s`) marks
that instance FAILED when the worker is to blame (the policy stops seeing it;
`on_worker_failed` hands it to the supervisor) and the request is placed
again, up to `max_retries` times after `retry_backoff_s`, then ends FAILED
with the reason; a stage lost because its worker died (session broken,
restart, decode peer gone) moves without spending `max_retries`, within
`max_hold_s` of arrival. Tokens the client already received are not sent again.
`max_queue` bounds the requests accepted but not yet past prefill, and
`max_pending_bytes` the bytes of requests in flight (`GenerateInput.size_bytes`):
beyond either `submit` raises Overloaded (counted as rejected, QUEUE_FULL or
PENDING_BYTES). Every end carries a `Reason` code and a bounded detail.

Readiness (`scheduler.live.readiness`): only READY instances are candidates;
while no path is READY requests are held (within `max_queue`, `max_hold_s`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from scheduler.cluster import Cluster, ClusterSnapshot
from scheduler.config import Serving
from scheduler.decision_log import DecisionLog
from scheduler.live.flight import Flight, RequestSink, Slot
from scheduler.live.judges import LiveJudges
from scheduler.live.mirror import Mirrors
from scheduler.live.readiness import HeldRequests, ServingPaths
from scheduler.live.stats import Tally, Usage, pool_stats
from scheduler.live.types import (DuplicateRequest, ErrorKind, GenerateInput, InvalidRequest, LiveOptions,
                                  Overloaded, RequestOutcome, SchedulerStatsView, TokenEvent, Work,
                                  WorkError, WorkerView, WorkUpdate)
from scheduler.live.worker_client import WorkerClient
from scheduler.policy import Policy
from scheduler.reasons import Reason, clip, echo, policy_reason
from scheduler.types import Request, RequestStatus, Role
from workers.clock import Clock
from workers.learned_perf import LearnedPerf
from workers.report import LoadReport, WorkerState
from workers.work import DecodeSummary, PrefillOutcome

log = logging.getLogger(__name__)


def check_live_policy(policy: Policy) -> None:
    """Raise ValueError for a policy the live core would run differently from the
    simulator: one that serves a request in several passes (a staging plugin: cascade
    escalation, advisor calls). Live workers produce no answers to verify, so only the
    first pass would run, a silent change of policy."""
    if policy.staging is not None:
        raise ValueError(
            f"policy {policy.name!r} serves a request in more than one pass (staging {policy.staging.name!r}); "
            "the live control plane places each request once, so it would run only the first pass. Run it "
            "with `infersched simulate` or `compare`; to serve its one-pass routing live, add `staging: none` "
            "under `policy:` in the cluster YAML")


class SchedulerCore:
    """Policy decisions applied to workers through a WorkerClient; every request counted."""

    def __init__(self, cluster: Cluster, policy: Policy, options: LiveOptions, clock: Clock,
                 workers: WorkerClient, decision_log: DecisionLog | None = None):
        check_live_policy(policy)
        self.cluster = cluster
        self.policy = policy
        # Every decision with its per-plugin breakdown, as `infersched simulate
        # --decision-log` writes it (a retry is decided, and logged, again).
        self.decision_log = decision_log
        if decision_log is not None:
            policy.explain = True
        self.options = options
        self.clock = clock
        self.workers = workers
        self.snap: ClusterSnapshot = cluster.snapshot()
        self._base_candidates = {stage: cands.copy() for stage, cands in self.snap.candidates.items()}
        self._rng = np.random.default_rng(options.seed)
        self.started_unix_s = clock.to_unix(0.0)
        self.mirrors = Mirrors(cluster, self.snap)
        self.slots = [Slot(i, cluster.pool_of(i)) for i in range(cluster.n_instances)]
        self._active: dict[str, Flight] = {}
        self._paths = ServingPaths(cluster)
        self.serving = False
        self.on_serving: Callable[[bool], None] | None = None
        self._stages: dict[str, Flight] = {}  # by attempt key
        self._seq = 0
        self._awaiting_first = 0
        self._pending_bytes = 0  # size_bytes of the requests in flight
        self.tally = Tally(options.latency_window, len(cluster.pools))
        # Wall-second options in modelled seconds of the core's clock.
        self._slack = options.worker_slack_s / clock.time_scale
        self._timeout = options.rpc_timeout_s / clock.time_scale
        self._backoff = options.retry_backoff_s / clock.time_scale
        self._held = HeldRequests(clock, options.max_hold_s / clock.time_scale, self._hold_expired)
        self.on_worker_failed: Callable[[int], None] | None = None
        self.on_outcome: Callable[[RequestOutcome, float], None] | None = None
        self.on_decision: Callable[[float], None] | None = None
        # For validation: model name -> capability.
        self._tiers = {p.perf.model.name: (p.perf.model.capability if p.perf.model.capability is not None else 1.0)
                       for p in cluster.pools if p.config.serving != Serving.JUDGE}
        # Routers' passes (scheduler/live/judges.py), as the simulator runs them.
        self.judges = LiveJudges(self)
        self._refresh_candidates()  # every instance is STARTING: none is a candidate yet
        workers.bind(self)

    def now(self) -> float:
        return self.clock.now()

    @property
    def in_flight(self) -> int:
        return self.tally.in_flight

    # ---- workers ----------------------------------------------------------
    def register(self, instance: int, worker_id: str, address: str) -> bool:
        """A worker (re)started at `address`. Idempotent per (worker_id, address); True
        when it is a new incarnation."""
        if not 0 <= instance < len(self.slots):
            raise ValueError(f"instance {instance} out of range (cluster has {len(self.slots)})")
        slot = self.slots[instance]
        if slot.worker_id == worker_id and slot.address == address:
            if slot.state == WorkerState.FAILED:
                self._set_state(slot, self._up_state(slot))
            return False
        if slot.stages:  # lost with the old incarnation; nobody is to blame
            self._lose(slot, WorkError(ErrorKind.RESTARTED, "UNAVAILABLE", "the worker restarted"))
        if slot.worker_id:
            slot.retired.add(slot.usage)
            slot.restarts += 1
        slot.usage = Usage()
        slot.worker_id = worker_id
        slot.address = address
        self.workers.connect(instance, address)
        self.mirrors.reset(instance)
        self._set_state(slot, self._up_state(slot))
        log.info("worker %s registered for instance %d (%s) at %s", worker_id, instance, slot.pool.name, address)
        return True

    @staticmethod
    def _up_state(slot: Slot) -> WorkerState:
        return WorkerState.DRAINED if slot.drained else WorkerState.READY

    def _set_state(self, slot: Slot, state: WorkerState) -> None:
        if slot.state == state:
            return
        slot.state = state
        self._refresh_candidates()

    def _refresh_candidates(self) -> None:
        alive = np.array([s.state == WorkerState.READY for s in self.slots])
        # The policy sees only READY instances: a starting, drained or failed one is out of
        # the candidate sets (filters' precomputed minima stay valid, since a subset only
        # raises them).
        for stage, base in self._base_candidates.items():
            self.snap.candidates[stage] = base[alive[base]]
        serving = self._paths.can_serve(alive)
        if serving == self.serving:
            return
        self.serving = serving
        log.info("scheduler %s", "serving" if serving else "not serving: no path through the cluster is ready")
        if serving and self._held:
            self.clock.call_at(self.now(), self._release_held)
        if self.on_serving is not None:
            self.on_serving(serving)

    def set_drained(self, instance: int, drained: bool) -> None:
        """An operator's drain (or undrain) of one instance; idempotent."""
        slot = self.slots[instance]
        slot.drained = drained
        if drained and slot.state == WorkerState.READY:
            self._set_state(slot, WorkerState.DRAINING if slot.stages else WorkerState.DRAINED)
        elif not drained and slot.state in (WorkerState.DRAINING, WorkerState.DRAINED) and slot.worker_id:
            self._set_state(slot, WorkerState.READY)

    def mark_failed(self, instance: int, reason: str) -> None:
        slot = self.slots[instance]
        if slot.state != WorkerState.READY:
            return
        log.warning("instance %d (%s, %s) failed: %s", instance, slot.pool.name, slot.address, reason)
        self._set_state(slot, WorkerState.FAILED)
        if self.on_worker_failed is not None:
            self.on_worker_failed(instance)

    def mark_ready(self, instance: int) -> None:
        slot = self.slots[instance]
        if slot.worker_id and slot.state == WorkerState.FAILED:
            self._set_state(slot, self._up_state(slot))

    def down_instances(self) -> int:
        """Instances expected back by themselves (starting or failed; drained ones wait for an operator)."""
        return sum(1 for s in self.slots if s.state in (WorkerState.STARTING, WorkerState.FAILED))

    # ---- events from workers (WorkerEvents) ---------------------------------
    def on_report(self, instance: int, report: LoadReport, engine_state: bytes | None) -> None:
        slot = self.slots[instance]
        if slot.state == WorkerState.FAILED:
            return
        if report.state in (WorkerState.DRAINING, WorkerState.DRAINED) and slot.state != report.state:
            # Drained through the Worker service: place nothing more on it (and do not revive it).
            self._set_state(slot, report.state)
        offset = report.now_s - self.clock.from_unix(report.unix_s)
        if not self.mirrors.report(instance, report, engine_state, offset):
            return
        perf = slot.pool.perf
        u = slot.usage
        u.busy_s = report.busy_s
        u.prefill_tokens = report.prefill_tokens
        u.decode_tokens = report.decode_tokens
        u.prefix_hit_tokens = report.prefix_hit_tokens
        u.kv_tiers = report.kv_tiers
        u.uptime_s = report.now_s
        u.energy_j = report.dynamic_energy_j + perf.idle_power_w * report.now_s
        u.cost_usd = perf.price_usd_per_s * report.now_s

    def on_update(self, instance: int, u: WorkUpdate) -> None:
        fl = self._stages.get(u.key)
        if fl is None and self.judges.pending and self.judges.on_update(instance, u):
            return
        if fl is None or fl.at != instance:
            return  # a stage that ended here already (cancelled, timed out, lost)
        first = count = 0
        done = False
        if u.prompt_tokens and u.prompt_tokens != fl.inp:  # the engine's own count replaces the placement's
            self.tally.input_tokens += u.prompt_tokens - fl.inp
            fl.inp = u.prompt_tokens
        if u.prefilled is not None:
            self._prefilled(fl, u.prefilled)
            fl.stage = "decode"
            if fl.sent == 0:
                fl.first_token_s = fl.prefill_end_s
                fl.sent = count = 1
            done = not fl.decodes
        if u.token_count:
            end = u.first_token_index + u.token_count
            if end > fl.sent:
                if not count:
                    first = max(u.first_token_index, fl.sent)
                count += end - max(u.first_token_index, fl.sent)
                fl.sent = end
        if u.decoded is not None:
            self._decoded(fl, u.decoded)
            done = True
        if u.error is not None:
            done = True
        if count:  # tokens counted as sent reach the client, also before a failure
            # A first token alone is stamped with its modelled time, as in the record.
            emit_s = fl.first_token_s if first == 0 and count == 1 else self.now()
            # Done with the decode (or with the only token): the request completes next.
            last = done and u.error is None and (fl.decodes or fl.out == 1)
            fl.sink.tokens(TokenEvent(fl.key, first, count, emit_s, last, u.text))
        if u.error is not None:
            self._stage_failed(fl, u.error)
        elif done:
            self._stage_done(fl)

    def on_speed(self, instance: int, prefill_s_per_token: float, decode_s_per_token: float) -> None:
        """A real engine's measured speed (modelled seconds): where its pool has no device
        to predict from, the policy's latency predictions use it."""
        if isinstance(self.slots[instance].pool.perf, LearnedPerf):
            self.snap.set_learned_speed(instance, prefill_s_per_token, decode_s_per_token)

    def on_prompt_counted(self, instance: int, placed_tokens: int, counted_tokens: int) -> None:
        """A real engine's count of a prompt that arrived after its request ended (nobody
        waited for it): the token totals take it instead of the count it was placed with."""
        self.tally.input_tokens += counted_tokens - placed_tokens

    def on_lost(self, instance: int, error: WorkError) -> None:
        slot = self.slots[instance]
        if error.kind == ErrorKind.WORKER:
            self.mark_failed(instance, f"session: {error.code}: {error.message}")
        self._lose(slot, error)

    def on_unreachable(self, instance: int, reason: str) -> None:
        self.mark_failed(instance, reason)

    def _lose(self, slot: Slot, error: WorkError) -> None:
        self.judges.on_lost(slot.instance)
        for fl in list(slot.stages.values()):
            self._stage_failed(fl, error, worker_died=True)

    # ---- requests -----------------------------------------------------------
    def note_invalid(self, reason: str) -> None:
        self.tally.requests_invalid += 1
        log.debug("invalid request: %s", reason)

    def submit(self, inp: GenerateInput, sink: RequestSink) -> str:
        """Accept one request and place it; its results go to `sink`. Returns its key.
        Raises InvalidRequest, DuplicateRequest or Overloaded (and then `sink` hears nothing)."""
        arrival = now = self.clock.now()
        wall0 = self.clock.wall()
        if inp.sent_unix_s is not None:
            # When the client sent it, if no further back than the workers' slack allows.
            arrival = min(now, max(self.clock.from_unix(inp.sent_unix_s), now - self._slack))
        try:
            min_cap = self._validate(inp)
        except InvalidRequest as exc:
            self.note_invalid(str(exc))
            raise
        self._seq += 1
        key = inp.request_id or f"req-{self._seq}"
        if key in self._active:
            raise DuplicateRequest(f"request {echo(key)} is already in flight")
        tally = self.tally
        tally.requests_total += 1
        tally.input_tokens += inp.prompt_tokens
        tally.prompt_sources[inp.prompt_source.value] += 1
        if self._awaiting_first >= self.options.max_queue:
            tally.finished(RequestStatus.REJECTED, Reason.QUEUE_FULL)
            raise Overloaded(f"{self._awaiting_first} requests are queued for prefill (bound "
                             f"{self.options.max_queue}); retry later")
        if self._pending_bytes + inp.size_bytes > self.options.max_pending_bytes:
            tally.finished(RequestStatus.REJECTED, Reason.PENDING_BYTES)
            raise Overloaded(f"{self._pending_bytes:,} bytes of requests are in flight; {inp.size_bytes:,} more would "
                             f"pass the bound ({self.options.max_pending_bytes:,}, --max-pending-bytes); retry later")
        fl = Flight(key, self._seq - 1 if inp.trace_row is None else inp.trace_row, inp, min_cap, arrival, wall0, sink)
        self._active[key] = fl
        self._awaiting_first += 1
        self._pending_bytes += fl.size_bytes
        self._place(fl)
        return key

    def cancel(self, key: str) -> None:
        """The client went away: stop the request's work and count it FAILED ("cancelled")."""
        fl = self._active.get(key)
        if fl is None or fl.status != RequestStatus.PENDING:
            return
        if fl.akey and fl.at >= 0:
            self.workers.cancel(fl.at, fl.akey)
        self._held.discard(key)
        self._end_stage(fl)
        fl.sink = None
        self._finish(fl, RequestStatus.FAILED, "cancelled", Reason.CANCELLED)

    def _validate(self, inp: GenerateInput) -> float:
        """Check a request against the cluster; returns its minimum capability."""
        if inp.prompt_tokens <= 0:
            raise InvalidRequest(f"field 'prompt_length': must be > 0, got {inp.prompt_tokens}")
        if inp.max_output_tokens <= 0:
            raise InvalidRequest(f"field 'max_output_tokens': must be > 0, got {inp.max_output_tokens}")
        min_cap = inp.min_capability
        if not (math.isfinite(min_cap) and 0.0 <= min_cap <= 1.0):
            raise InvalidRequest(f"field 'min_capability': must be in [0, 1], got {min_cap}")
        if not (math.isfinite(inp.difficulty) and 0.0 <= inp.difficulty <= 1.0):
            raise InvalidRequest(f"field 'difficulty': must be in [0, 1], got {inp.difficulty}")
        if inp.trace_row is not None and inp.trace_row < 0:
            raise InvalidRequest(f"field 'trace_row': must be >= 0, got {inp.trace_row}")
        if inp.model_tier:
            if inp.model_tier not in self._tiers:
                raise InvalidRequest(f"field 'model_tier': unknown tier {echo(inp.model_tier)}; this cluster serves "
                                     f"{', '.join(sorted(self._tiers))}")
            # A tier is a capability floor: a more capable model serves it too.
            min_cap = max(min_cap, self._tiers[inp.model_tier])
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(inp, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"field '{name}': must be > 0, got {value}")
        if inp.sent_unix_s is not None and not math.isfinite(inp.sent_unix_s):
            raise InvalidRequest(f"field 'sent_unix_s': must be a finite time, got {inp.sent_unix_s}")
        need = inp.prompt_tokens + inp.max_output_tokens
        if not self._fits(inp.prompt_tokens, need, min_cap):
            largest = max((p.perf.kv_capacity_tokens for p in self.cluster.pools if p.role != Role.PREFILL
                           and (p.perf.model.capability if p.perf.model.capability is not None else 1.0) >= min_cap),
                          default=0)
            raise InvalidRequest(
                f"fields 'prompt_length' + 'max_output_tokens': {inp.prompt_tokens} + {inp.max_output_tokens} = "
                f"{need} tokens of KV; no pool can hold that (largest decode or colocated pool: {largest})")
        return min_cap

    def fits(self, prompt_tokens: int, max_output_tokens: int, model_tier: str) -> bool:
        """Would a request of this length pass the context check for `model_tier`?"""
        min_cap = self._tiers.get(model_tier, 0.0) if model_tier else 0.0
        return self._fits(prompt_tokens, prompt_tokens + max_output_tokens, min_cap)

    def _fits(self, prompt: int, need: int, min_cap: float) -> bool:
        pools = [p for p in self.cluster.pools
                 if (p.perf.model.capability if p.perf.model.capability is not None else 1.0) >= min_cap]
        for p in pools:
            if p.role == Role.BOTH and p.perf.kv_capacity_tokens >= need:
                return True
            if p.role == Role.PREFILL and p.perf.kv_capacity_tokens >= prompt and any(
                    q.role == Role.DECODE and q.perf.model.name == p.perf.model.name
                    and q.perf.kv_capacity_tokens >= need for q in self.cluster.pools):
                return True
        return False

    def _place(self, fl: Flight) -> None:
        """Decide, then apply: as of the request's arrival plus the core's own time since
        (the mirrors show the instances as they are when the prompt reaches them, which is
        when the workers admit it; transit does not age the view)."""
        fl.timer = None
        if not self.serving:
            self._held.hold(fl)
            return
        clock = self.clock
        now = max(fl.arrival_s + (clock.wall() - fl.wall0), fl.ready_s)
        self.mirrors.refresh(now)
        req = Request(fl.seq, fl.inp, fl.out, now, fl.min_cap, fl.hashes, fl.difficulty)
        if not fl.judged:  # a router reads the prompt first (when the policy has one)
            fl.judged = True
            if self.judges.gate(fl, req, now):
                return
        t = clock.wall()
        decision = self.policy.decide(req, self.snap, now, self._rng)
        dt = clock.wall() - t
        if self.decision_log is not None:
            self.decision_log.write(decision, now)
        self.tally.decisions_total += 1
        self.tally.decision_s.add(dt)
        if self.on_decision is not None:
            self.on_decision(dt)
        if decision.rejected:
            if self.down_instances() and fl.retries < self.options.max_retries:
                # Possibly only because instances are down: wait for the supervisor.
                self._retry_later(fl)
                return
            self._finish(fl, RequestStatus.REJECTED, decision.reject_reason, policy_reason(decision.reject_reason))
            return
        fl.prefill_instance, fl.decode_instance = decision.prefill_instance, decision.decode_instance
        self._dispatch(fl)

    def _hold_expired(self, fl: Flight) -> None:
        self._finish(fl, RequestStatus.FAILED, f"no instance could serve it within {self.options.max_hold_s:g} s "
                                               "(none ready: starting, drained or failed)", Reason.NOT_READY)

    def _release_held(self) -> None:
        for fl in self._held.take_all():
            self._place(fl)

    def _retry_later(self, fl: Flight) -> None:
        fl.retries += 1
        fl.timer = self.clock.call_at(self.now() + self._backoff * fl.retries, lambda: self._place(fl))

    def _dispatch(self, fl: Flight) -> None:
        """The request's first stage: prefill on its prefill instance (with its decode, when
        colocated; with the hand-over to its decode instance, when apart)."""
        p, d = fl.prefill_instance, fl.decode_instance
        slot = self.slots[p]
        peer = self.slots[d] if d != p else None
        for s in (slot, peer):
            if s is not None and (s.state != WorkerState.READY or not s.worker_id):
                self._failed(fl, f"instance {s.instance} ({s.pool.name}) is not ready", True, Reason.NOT_READY)
                return
        fl.attempt += 1
        key = f"{fl.key}#{fl.attempt}"
        # The core's own time since arrival counts at its real (unscaled) duration; the
        # worker admits the prompt at this modelled dispatch time.
        fl.t_dispatch = max(fl.arrival_s + (self.clock.wall() - fl.wall0), fl.ready_s)
        work = Work(key, fl.inp, fl.out, prefill=True, decode=peer is None, sent_s=fl.t_dispatch,
                    chunk_tokens=self.options.chunk_tokens, prefix_block_hashes=fl.hashes,
                    decode_instance=d if peer is not None else -1,
                    decode_link_bytes_per_s=peer.pool.config.link_bytes_per_s if peer is not None else 0.0,
                    payload=fl.payload)
        self.mirrors.dispatched(p, fl.inp, fl.out, fl.t_dispatch, fl.hashes)
        self._start_stage(fl, key, p, "prefill", work.decode)
        self.workers.send(p, work)

    def _start_stage(self, fl: Flight, key: str, instance: int, stage: str, decodes: bool) -> None:
        fl.akey, fl.at, fl.stage, fl.decodes = key, instance, stage, decodes
        self._stages[key] = fl
        self.slots[instance].stages[key] = fl
        fl.timer = self.clock.call_at(self.now() + self._timeout, lambda: self._timed_out(fl, key))

    def _end_stage(self, fl: Flight) -> None:
        if fl.timer is not None:
            fl.timer.cancel()
            fl.timer = None
        if fl.akey:
            self._stages.pop(fl.akey, None)
            if fl.at >= 0:
                slot = self.slots[fl.at]
                slot.stages.pop(fl.akey, None)
                if slot.drained and slot.state == WorkerState.DRAINING and not slot.stages:
                    self._set_state(slot, WorkerState.DRAINED)
        fl.at = -1

    def _timed_out(self, fl: Flight, key: str) -> None:
        fl.timer = None
        if fl.akey != key or fl.at < 0:
            return
        self.workers.cancel(fl.at, key)
        self._stage_failed(fl, WorkError(ErrorKind.WORKER, "DEADLINE_EXCEEDED",
                                         f"no result within {self.options.rpc_timeout_s:g} s"))

    def _stage_done(self, fl: Flight) -> None:
        at = fl.at
        self._end_stage(fl)
        d = fl.decode_instance
        if at != d and fl.out > 1:  # prefilled and handed over: the decode stage follows
            self._start_stage(fl, fl.akey, d, "decode", True)
            self.workers.send(d, Work(fl.akey, fl.inp, fl.out, prefill=False, decode=True, sent_s=fl.t_dispatch,
                                      chunk_tokens=self.options.chunk_tokens, payload=fl.payload))
            return
        self._finish(fl, RequestStatus.COMPLETED, "", Reason.UNSPECIFIED)

    def _stage_failed(self, fl: Flight, error: WorkError, worker_died: bool = False) -> None:
        at = fl.at
        stage = fl.stage
        blamed = self.slots[at]
        if error.peer_instance >= 0 and error.peer_instance == fl.decode_instance != at:
            blamed = self.slots[error.peer_instance]
            worker_died = worker_died or error.code == "UNAVAILABLE"  # the decode peer went away
        self._end_stage(fl)
        if error.kind == ErrorKind.RESTARTED:
            message = f"{stage} on instance {blamed.instance} ({blamed.pool.name}) was lost: {error.message}"
        else:
            message = f"{stage} on instance {blamed.instance} ({blamed.pool.name}) failed: {error.code}: {error.message}"
        if error.kind == ErrorKind.WORKER:
            self.mark_failed(blamed.instance, message)
        self._failed(fl, message, error.kind != ErrorKind.INVALID, _error_reason(error),
                     worker_died=worker_died or error.kind == ErrorKind.RESTARTED)

    def _failed(self, fl: Flight, message: str, retryable: bool, code: Reason, worker_died: bool = False) -> None:
        if worker_died and self.now() - fl.arrival_s < self._held.limit_s:
            fl.moved += 1
            self._retry_later(fl)
            return
        if not retryable or fl.retries - fl.moved >= self.options.max_retries:
            tail = f" (after {fl.retries} retries)" if retryable else ""
            self._finish(fl, RequestStatus.FAILED, f"{message}{tail}", code)
            return
        self._retry_later(fl)

    def _prefilled(self, fl: Flight, p: PrefillOutcome) -> None:
        if fl.awaiting:
            fl.awaiting = False
            self._awaiting_first -= 1
        fl.prefill_start_s = fl.t_dispatch + p.queue_s
        fl.prefill_end_s = fl.prefill_start_s + p.prefill_s
        fl.kv_transfer_end_s = fl.prefill_end_s + p.kv_sent_s if fl.decode_instance != fl.at else None
        fl.energy_j += p.energy_j
        fl.cost_usd += p.cost_usd
        if fl.out == 1:
            fl.finish_s = fl.prefill_end_s

    def _decoded(self, fl: Flight, d: DecodeSummary) -> None:
        if fl.kv_transfer_end_s is not None:  # disaggregated: decode starts when the KV joins the batch
            start = fl.kv_transfer_end_s + d.wait_s
        else:
            start = fl.prefill_end_s
        fl.finish_s = start + d.decode_s
        fl.energy_j += d.energy_j
        fl.cost_usd += d.cost_usd

    def _finish(self, fl: Flight, status: RequestStatus, reason: str, code: Reason) -> None:
        """Count the request as ended and send its final record; `code` is `reason` as
        one of a fixed set (UNSPECIFIED when completed)."""
        if fl.timer is not None:
            fl.timer.cancel()
            fl.timer = None
        fl.status = status
        fl.reason = clip(reason)
        fl.code = code
        if fl.awaiting:
            fl.awaiting = False
            self._awaiting_first -= 1
        self.judges.cancel(fl)
        self._pending_bytes -= fl.size_bytes
        tally = self.tally
        tally.finished(status, code)
        control = 0.0
        if status == RequestStatus.COMPLETED:
            ttft = fl.first_token_s - fl.arrival_s
            e2e = fl.finish_s - fl.arrival_s
            # Tokens streamed: all of max_output_tokens on emulated workers; a real engine
            # may stop sooner (end of sequence, a stop string).
            out = fl.sent
            tpot = (fl.finish_s - fl.first_token_s) / (out - 1) if out > 1 else None
            slo = self.cluster.config.slo
            met = ttft <= (fl.ttft_slo_s or slo.ttft_s) and (tpot is None or tpot <= (fl.tpot_slo_s or slo.tpot_s))
            pools = {self.cluster.pool_of(fl.prefill_instance).index, self.cluster.pool_of(fl.decode_instance).index}
            control = (self.clock.wall() - fl.wall0) - e2e * self.clock.time_scale
            tally.completed(out, ttft, tpot, e2e, met, pools, control)
        else:
            fl.finish_s = self.now()
        del self._active[fl.key]
        outcome = self._outcome(fl)
        if self.on_outcome is not None:
            self.on_outcome(outcome, control)
        if fl.sink is not None:
            fl.sink.finish(outcome)

    def _outcome(self, fl: Flight) -> RequestOutcome:
        placed = fl.prefill_instance >= 0
        completed = fl.status == RequestStatus.COMPLETED
        ttft = fl.first_token_s - fl.arrival_s if fl.first_token_s is not None else None
        tpot = (fl.finish_s - fl.first_token_s) / (fl.sent - 1) if completed and fl.sent > 1 else None
        pre_pool = self.cluster.pool_of(fl.prefill_instance) if placed else None
        dec_pool = self.cluster.pool_of(fl.decode_instance) if placed else None
        return RequestOutcome(
            request_id=fl.key, status=fl.status, reason=fl.reason, reason_code=fl.code, retries=fl.retries,
            arrival_s=fl.arrival_s,
            prefill_start_s=fl.prefill_start_s, prefill_end_s=fl.prefill_end_s,
            kv_transfer_end_s=fl.kv_transfer_end_s if completed else None, first_token_s=fl.first_token_s,
            finish_s=fl.finish_s, ttft_s=ttft, tpot_s=tpot,
            prefill_pool=pre_pool.name if pre_pool else "", decode_pool=dec_pool.name if dec_pool else "",
            prefill_instance=fl.prefill_instance, decode_instance=fl.decode_instance,
            model=pre_pool.perf.model.name if pre_pool else "", input_tokens=fl.inp,
            output_tokens=fl.sent, energy_j=fl.energy_j, cost_usd=fl.cost_usd)

    # ---- views --------------------------------------------------------------
    def workers_view(self, pool: str = "") -> list[WorkerView]:
        if pool and pool not in {p.name for p in self.cluster.pools}:
            raise InvalidRequest(f"field 'pool': unknown pool {pool!r}; pools: "
                                 f"{', '.join(p.name for p in self.cluster.pools)}")
        snap = self.snap
        return [WorkerView(
            worker_id=s.worker_id, instance=s.instance, pool=s.pool.name, device=s.pool.config.device,
            model=s.pool.perf.model.name, role=s.pool.role, address=s.address, state=s.state,
            queue_depth=int(snap.queued_requests[s.instance]), running=int(snap.running[s.instance]),
            kv_free_tokens=int(snap.kv_free[s.instance]), kv_capacity_tokens=int(snap.kv_capacity[s.instance]))
            for s in self.slots if not pool or s.pool.name == pool]

    def pool_stats(self):
        usages = []
        for s in self.slots:
            total = Usage()
            total.add(s.retired)
            total.add(s.usage)
            usages.append(total)
        return pool_stats(self.cluster, self.snap, usages, self.tally.pool_completed, self.now(),
                          getattr(self.workers, "prompt_counts", None))

    def stats(self) -> SchedulerStatsView:
        pools = self.pool_stats()
        t = self.tally
        judged_j, judged_usd = self.judges.apart()  # judgements charged at batch 1, beside the pools
        finished = t.requests_completed + t.requests_rejected + t.requests_failed
        return SchedulerStatsView(
            policy=self.policy.name, cluster=self.cluster.config.name, uptime_s=self.now(),
            started_unix_s=self.started_unix_s, requests_total=t.requests_total,
            requests_completed=t.requests_completed, requests_rejected=t.requests_rejected,
            requests_failed=t.requests_failed, requests_invalid=t.requests_invalid, in_flight=t.in_flight,
            reasons=t.reason_counts(), decisions_total=t.decisions_total,
            scheduling_overhead_s=t.decision_s.summary(), ttft_s=t.ttft.summary(), tpot_s=t.tpot.summary(),
            e2e_s=t.e2e.summary(), slo_attainment=t.slo_met / finished if finished else 0.0,
            input_tokens=t.input_tokens, output_tokens=t.output_tokens,
            energy_j=sum(p.energy_j for p in pools) + judged_j, cost_usd=sum(p.cost_usd for p in pools) + judged_usd,
            pools=pools, control_overhead_s=t.control_s.summary(),
            time_scale=self.clock.time_scale, prompt_lengths=dict(t.prompt_sources),
            judgements={k: dict(v) for k, v in self.judges.rows.items()})


def _error_reason(error: WorkError) -> Reason:
    """The code a failed stage ends its request with, if it is the last attempt."""
    if error.kind == ErrorKind.RESTARTED:
        return Reason.WORKER_RESTARTED
    if error.kind == ErrorKind.INVALID:
        return Reason.WORK_REFUSED
    if error.kind == ErrorKind.BUSY:
        return Reason.WORKER_BUSY
    return Reason.STAGE_TIMEOUT if error.code == "DEADLINE_EXCEEDED" else Reason.WORKER_FAILED
