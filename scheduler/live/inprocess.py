"""Emulated workers in this process, behind the WorkerClient seam, on one shared clock.

`InProcessWorkerClient` holds one real `EmulatedWorker` per instance of a
cluster (the same engines, hand-overs and admission rules as the live
workers) and carries work, updates and KV hand-overs between them and the
core as clock callbacks, never re-entering the caller. Each worker reports its
load and engine state as soon as its engine changes in a way the core's mirror
could not foresee (`BatchEngine.unforeseen`: a KV joining, a release); wakes
and admissions at their send times the mirror replays by itself, so it is
exact at every decision. On a `VirtualClock`, `run_virtual` runs a request stream
through a `SchedulerCore` deterministically: the same trace and seed give the
simulator's decisions (tests/live/test_decision_contract.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from scheduler.cluster import Cluster
from scheduler.live.types import GenerateInput, RequestOutcome, TokenEvent, Work, WorkError, WorkUpdate
from scheduler.live.worker_client import WorkerEvents, error_kind
from workers.clock import Clock, Timer, VirtualClock
from workers.emulated import DEFAULT_STREAM_INTERVAL_S, EmulatedWorker
from workers.report import WorkerState
from workers.work import DecodeSummary, HandOver, PeerFailed, PrefillOutcome, WorkerError


def _address(instance: int) -> str:
    return f"inprocess:{instance}"


class _Listener:
    """One instance's WorkListener: each callback becomes a WorkUpdate for the core."""

    __slots__ = ("client", "instance")

    def __init__(self, client: "InProcessWorkerClient", instance: int):
        self.client = client
        self.instance = instance

    def prefilled(self, key: str, o: PrefillOutcome) -> None:
        self.client._deliver(self.instance, WorkUpdate(key, prefilled=o))

    def tokens(self, key: str, first: int, count: int, emit_s: float) -> None:
        self.client._deliver(self.instance, WorkUpdate(key, first_token_index=first, token_count=count, emit_s=emit_s))

    def decoded(self, key: str, s: DecodeSummary) -> None:
        self.client._deliver(self.instance, WorkUpdate(key, decoded=s))

    def failed(self, key: str, error: WorkerError) -> None:
        peer = -1
        if isinstance(error, PeerFailed) and error.address.startswith("inprocess:"):
            peer = int(error.address.split(":")[1])
        self.client._deliver(self.instance, WorkUpdate(key, error=WorkError(error_kind(error.status), error.status,
                                                                            str(error), peer)))


class _HandOvers:
    """One prefill instance's KvTransport: the KV lands on the decode worker when the
    modelled transfer completes; its join (or refusal) goes back to this worker."""

    __slots__ = ("client", "instance", "pending", "targets")

    def __init__(self, client: "InProcessWorkerClient", instance: int):
        self.client = client
        self.instance = instance
        self.pending: dict[str, Timer] = {}  # hand-overs not landed yet
        self.targets: dict[str, str] = {}  # hand-overs not answered yet: the decode worker's address

    def send(self, h: HandOver) -> None:
        self.targets[h.key] = h.address
        self.pending[h.key] = self.client.clock.call_at(h.done_s, lambda: self._land(h))

    def abort(self, key: str, address: str) -> None:
        self.targets.pop(key, None)
        timer = self.pending.pop(key, None)
        if timer is not None:
            timer.cancel()
        else:
            self.client.worker_at(address).cancel(key)

    def _land(self, h: HandOver) -> None:
        del self.pending[h.key]
        try:
            self.client.worker_at(h.address).admit_kv(h.key, h.prompt_tokens, h.max_output_tokens, self,
                                                      ready_s=h.done_s)
        except WorkerError as exc:
            self.refused(h.key, exc)

    def joined(self, key: str, joined_s: float) -> None:
        self.targets.pop(key, None)
        src = self.client.workers[self.instance]
        unix_s = self.client.clock.to_unix(joined_s)
        self.client.later(lambda: src.handed_over(key, unix_s))

    def refused(self, key: str, error: WorkerError) -> None:
        address = self.targets.pop(key, "")
        src = self.client.workers[self.instance]
        self.client.later(lambda: src.hand_over_failed(key, PeerFailed(address, str(error), error.status)))


class InProcessWorkerClient:
    """WorkerClient over one EmulatedWorker per instance of `cluster`, all on `clock`."""

    def __init__(self, cluster: Cluster, clock: Clock, *, stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S):
        self.clock = clock
        self.events: WorkerEvents | None = None
        prefix = cluster.config.prefix_cache
        self.workers: list[EmulatedWorker] = []
        stores = cluster.make_stores()  # one process: the workers share the cluster's kv_store
        for pool in cluster.pools:
            for i in pool.instances:
                w = EmulatedWorker(
                    pool.perf, int(pool.role), clock, max_batch=pool.config.max_batch,
                    max_batch_tokens=pool.config.max_batch_tokens, link_bytes_per_s=pool.config.link_bytes_per_s,
                    worker_id=f"{pool.name}-{i}", pool=pool.name, instance=i, input_slack_s=0.0,
                    stream_interval_s=stream_interval_s, token_budget=pool.config.engine_token_budget,
                    prefix_block_tokens=prefix.block_tokens if prefix.enabled else 0,
                    kv_tiers=pool.config.kv_tiers, kv_store=stores.get(pool.perf.model.name))
                w.kv = _HandOvers(self, i)
                w.on_engine = lambda i=i: self._moved(i)
                self.workers.append(w)
        self._listeners = [_Listener(self, i) for i in range(len(self.workers))]
        self._moving: set[int] = set()  # reports due at the next callback
        self._reported = [-1] * len(self.workers)  # each engine's `unforeseen` when it last reported

    def register_all(self, core) -> None:
        """Register every worker with `core` (as worker actors do when they start)."""
        for w in self.workers:
            core.register(w.instance, w.worker_id, _address(w.instance))

    def worker_at(self, address: str) -> EmulatedWorker:
        return self.workers[int(address.split(":")[1])]

    def later(self, callback: Callable[[], None]) -> None:
        self.clock.call_at(self.clock.now(), callback)

    # ---- WorkerClient -------------------------------------------------------
    def bind(self, events: WorkerEvents) -> None:
        self.events = events

    def connect(self, instance: int, address: str) -> None:
        if address != _address(instance):
            raise ValueError(f"instance {instance} is served in process at {_address(instance)}, not {address}")

    def send(self, instance: int, work: Work) -> None:
        w = self.workers[instance]
        listener = self._listeners[instance]
        try:
            if work.prefill:
                w.prefill(work.key, work.prompt_tokens, work.max_output_tokens, listener, sent_s=work.sent_s,
                          block_hashes=work.prefix_block_hashes, decode=work.decode,
                          chunk_tokens=work.chunk_tokens,
                          decode_address=_address(work.decode_instance) if work.decode_instance >= 0 else "",
                          decode_link_bytes_per_s=work.decode_link_bytes_per_s)
            else:
                w.decode(work.key, work.max_output_tokens, work.chunk_tokens, listener)
        except WorkerError as exc:
            listener.failed(work.key, exc)

    def cancel(self, instance: int, key: str) -> None:
        self.later(lambda: self.workers[instance].cancel(key))

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        return self.workers[instance].state == WorkerState.READY

    async def close(self) -> None:
        for w in self.workers:
            w.stop()

    # ---- to the core ----------------------------------------------------------
    def _deliver(self, instance: int, update: WorkUpdate) -> None:
        self.later(lambda: self.events.on_update(instance, update))

    def _moved(self, instance: int) -> None:
        # Only a change a mirror could not foresee (BatchEngine.unforeseen) is reported:
        # wakes and admissions at their send times the core's mirror replays by itself.
        if self.workers[instance].engine.unforeseen != self._reported[instance] and instance not in self._moving:
            self._moving.add(instance)
            self.later(lambda: self._report(instance))

    def _report(self, instance: int) -> None:
        self._moving.discard(instance)
        w = self.workers[instance]
        self._reported[instance] = w.engine.unforeseen
        self.events.on_report(instance, w.load(), w.engine_state())


class _Collect:
    """A RequestSink keeping each request's outcome (tokens are not kept)."""

    def __init__(self, outcomes: list[RequestOutcome]):
        self.outcomes = outcomes

    def tokens(self, event: TokenEvent) -> None:
        pass

    def finish(self, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)


def run_virtual(core, clock: VirtualClock, requests: Iterable[tuple[float, GenerateInput]]) -> list[RequestOutcome]:
    """Submit each (arrival time, request) once the clock reaches its time (after every
    callback due by then, as the simulator handles events before an arrival at the same
    time), then run until nothing is left. Returns the outcomes in the order they ended."""
    outcomes: list[RequestOutcome] = []
    sink = _Collect(outcomes)
    for arrival_s, inp in requests:
        clock.run_until(arrival_s)
        core.submit(inp, sink)
    clock.run()
    return outcomes


__all__ = ["InProcessWorkerClient", "run_virtual"]
