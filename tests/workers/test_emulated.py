"""The emulated worker on a virtual clock, without any I/O: it reproduces the engine's
modelled timings, admits work at its send time within the slack, frees slot and KV
when work is cancelled in any state, and hands KV over at the modelled link time,
keeping its copy until the decode side joined it."""
from __future__ import annotations

import math

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from workers.clock import VirtualClock
from workers.emulated import EmulatedWorker
from workers.engine import ROLE_BOTH, ROLE_DECODE, ROLE_PREFILL, BatchEngine
from workers.report import WorkerState
from workers.work import AlreadyHeld, Cancelled, Draining, HandOver, InvalidField, NoCapacity, NotHeld, WrongRole


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster(load_cluster(builtin_cluster_path("live-small")))


def perf_of(cluster, name):
    return next(p for p in cluster.pools if p.name == name).perf


class Heard:
    """A WorkListener and KvListener that keeps what it heard, with the clock's time."""

    def __init__(self, clock):
        self.clock = clock
        self.events: list[tuple] = []

    def _add(self, *event):
        self.events.append((self.clock.now(), *event))

    def prefilled(self, key, outcome):
        self._add("prefilled", key, outcome)

    def tokens(self, key, first, count, emit_s):
        self._add("tokens", key, (first, count, emit_s))

    def decoded(self, key, summary):
        self._add("decoded", key, summary)

    def failed(self, key, error):
        self._add("failed", key, error)

    def joined(self, key, joined_s):
        self._add("joined", key, joined_s)

    def refused(self, key, error):
        self._add("refused", key, error)

    def of(self, key, kind=None):
        return [e for e in self.events if e[2] == key and (kind is None or e[1] == kind)]


def check_engine(eng: BatchEngine) -> None:
    """Internal bookkeeping is consistent: what cancellation must preserve."""
    assert eng.batch == len(eng.members) == len(eng.finish_heap)
    assert {rid for _, rid in eng.finish_heap} == set(eng.members)
    assert eng.ctx_offset_sum == pytest.approx(sum(m[0] for m in eng.members.values()))
    # Admitted prompts: the running prefill-first iteration's, or every chunked one's (admitted, not done).
    admitted = eng.prefilling if eng.token_budget else eng.prefill_batch
    in_prefill = sum(entry[1] + (entry[2] if eng.role == ROLE_BOTH else 0) for entry in admitted)
    reserved = sum(m[1] for m in eng.members.values()) + sum(eng.held.values()) + in_prefill
    assert eng.kv_reserved == reserved
    assert eng.waiting_tokens == sum(inp for _, inp, _ in eng.waiting)


def worker(cluster, pool: str, role: int, clock=None, **kwargs) -> EmulatedWorker:
    return EmulatedWorker(perf_of(cluster, pool), role, clock or VirtualClock(), input_slack_s=0.0, **kwargs)


def engine_times(eng: BatchEngine, jobs) -> tuple[dict, dict]:
    """A bare engine fed `jobs` (key, input, output, arrival): each job's first-token and finish times
    by its index, what a worker on the same perf must reproduce."""
    first, finish = {}, {}
    arrivals = sorted((at, i) for i, (_, _, _, at) in enumerate(jobs))
    while arrivals or eng.next_wake_s < math.inf:
        events = []
        if arrivals and arrivals[0][0] < eng.next_wake_s:
            t, i = arrivals.pop(0)
            eng.submit_prefill(i, jobs[i][1], jobs[i][2])
            eng.poke(t, events)
        else:
            t = eng.next_wake_s
            eng.wake(t, events)
        for ev in events:
            (first if ev[0] == 0 else finish if ev[0] == 1 else {})[ev[1]] = t
    return first, finish


@pytest.mark.parametrize("token_budget", [0, 512])  # prefill-first; chunked (prompts span iterations)
def test_worker_reproduces_engine_timings(cluster, token_budget):
    """Every first token and finish lands at the modelled time the engine gives for the
    same arrivals; each request streams every token after the first once, in order,
    also those made in chunked prefill's mixed iterations."""
    w = worker(cluster, "b200", ROLE_BOTH, token_budget=token_budget)
    clock, heard = w.clock, Heard(w.clock)
    jobs = [(f"r{i}", 300 + 250 * i, 40 + 30 * i, 0.75 * i) for i in range(6)]
    for key, inp, out, at in jobs:
        clock.call_at(at, lambda key=key, inp=inp, out=out: w.prefill(key, inp, out, heard, decode=True,
                                                                       chunk_tokens=8))
    clock.run()
    first, finish = engine_times(BatchEngine(w.perf, ROLE_BOTH, token_budget=token_budget), jobs)
    for i, (key, _, out, at) in enumerate(jobs):
        (t_pre, _, _, pre), = heard.of(key, "prefilled")
        (t_end, _, _, summary), = heard.of(key, "decoded")
        assert t_pre == at + pre.queue_s + pre.prefill_s == pytest.approx(first[i], abs=1e-12)
        assert t_end == pytest.approx(finish[i], abs=1e-12) and t_pre + summary.decode_s == pytest.approx(t_end)
        chunks = [e[3][:2] for e in heard.of(key, "tokens")]
        assert chunks[0][0] == 1 and sum(c for _, c in chunks) == out - 1
        assert all(a + n == b for (a, n), (b, _) in zip(chunks, chunks[1:]))
    assert w.stats().completed == len(jobs) and w.in_flight == 0 and w.engine.kv_reserved == 0
    if token_budget:  # prompts did span iterations, beside a decoding batch
        assert w.engine.prefill_iterations > len(jobs)


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "finished-unclaimed"])
def test_cancel_colocated_frees_slot_and_kv(cluster, state):
    w = worker(cluster, "b200", ROLE_BOTH)
    clock, heard = w.clock, Heard(w.clock)
    w.prefill("n", 500, 100_000, heard, decode=True)  # a long-running neighbour keeps a decode batch going
    clock.run_until(1.0)
    if state == "waiting":
        w.prefill("b", 60_000, 2, heard, decode=True)  # a long prefill ahead of it
        w.prefill("v", 800, 500, heard)
        assert w.engine.waiting[-1][0] == w._reqs["v"].eid
    elif state == "prefilling":
        w.prefill("v", 60_000, 500, heard)
        clock.run_until(1.1)  # the decode step in progress ends, then the prefill starts
        assert any(r[0] == w._reqs["v"].eid for r in w.engine.prefill_batch)
    elif state == "decoding":
        w.prefill("v", 800, 3000, heard, decode=True)
        clock.run_until(2.0)  # mid-segment
        assert w._reqs["v"].eid in w.engine.members and w.engine.act_start_s < w.now()
    else:
        w.prefill("v", 800, 3, heard)
        clock.run_until(2.0)
        assert w._reqs["v"].eid not in w.engine.members
    victim = w._reqs["v"].eid
    before_running = w.engine.batch
    assert w.cancel("v")
    assert not w.cancel("v")  # idempotent
    check_engine(w.engine)
    clock.run_until(clock.now() + 60.0)  # a prefilling victim leaves as its iteration ends, a decoding one at the step's
    check_engine(w.engine)
    assert "v" not in w._reqs and victim not in w.engine.members and not heard.of("v", "failed")
    if state == "decoding":
        assert w.engine.batch == before_running - 1
    if state == "waiting":
        w.cancel("b")
    assert w.engine.kv_reserved == 500 + 100_000  # only the neighbour holds KV now, and it runs to completion
    clock.run()
    assert heard.of("n", "decoded") and w.engine.kv_reserved == 0 and w.engine.batch == 0


def test_stop_tells_each_listener_its_work_was_cancelled(cluster):
    w = worker(cluster, "b200", ROLE_BOTH)
    heard = Heard(w.clock)
    w.prefill("blocker", 60_000, 2, heard)
    w.prefill("v", 800, 10, heard, decode=True)
    w.stop()
    assert [type(e[3]) for e in heard.events if e[1] == "failed"] == [Cancelled, Cancelled]
    assert w.state == WorkerState.DRAINED and w.in_flight == 0


class Transport:
    """A KvTransport for two workers on one clock: the KV lands when the transfer is done."""

    def __init__(self, src: EmulatedWorker, dst: EmulatedWorker | None):
        self.src, self.dst = src, dst
        self.sent: list[HandOver] = []
        self.aborted: list[str] = []
        src.kv = self

    def send(self, h):
        self.sent.append(h)
        if self.dst is not None:
            self.src.clock.call_at(h.done_s, lambda: self.dst.admit_kv(h.key, h.prompt_tokens, h.max_output_tokens,
                                                                       self, ready_s=h.done_s))

    def abort(self, key, address):
        self.aborted.append(key)

    def joined(self, key, joined_s):
        self.src.clock.call_at(joined_s, lambda: self.src.handed_over(key, self.src.clock.to_unix(joined_s)))

    def refused(self, key, error):
        raise AssertionError(f"{key} refused: {error}")


def test_hand_over_runs_at_the_link_time_and_frees_the_kv_once_joined(cluster):
    """Two hand-overs queue on the prefill worker's link (FIFO, at the slower of the two
    links); the second waits for the decode worker's only slot, and the prefill worker
    holds its KV until then, as the simulator frees it at JOINED."""
    clock = VirtualClock()
    pre = worker(cluster, "h100-prefill", ROLE_PREFILL, clock, link_bytes_per_s=50e9)
    dec = worker(cluster, "h100-decode", ROLE_DECODE, clock, max_batch=1, claim_timeout_s=1e6)
    transport, heard = Transport(pre, dec), Heard(clock)
    for key, out in (("a", 5000), ("b", 20)):
        pre.prefill(key, 1500, out, heard, decode_address="dec", decode_link_bytes_per_s=1e9)
    clock.run_until(5.0)  # a decodes (for ~20 s), holding the decode worker's only slot
    a, b = transport.sent
    assert a.done_s - a.start_s == pytest.approx(pre.perf.kv_transfer_s(1500, 1e9), rel=1e-12)
    assert b.start_s == a.done_s > pre._reqs["b"].first_token_s  # one hand-over at a time
    (t_a, _, _, pa), = heard.of("a", "prefilled")  # acknowledged as it joined: when its KV was complete
    first_token_s = pa.queue_s + pa.prefill_s  # submitted at 0
    assert t_a == a.done_s and pa.kv_sent_s == pytest.approx(a.done_s - first_token_s, rel=1e-12)
    assert not heard.of("b", "prefilled")  # b waits for a's slot
    assert pre.engine.kv_reserved == 1500  # so its KV stays on the prefill worker
    dec.decode("a", 5000, 0, heard)
    clock.run_until(1000.0)  # a is done; b joined, decoded and waits to be claimed
    (t_b, _, _, pb), = heard.of("b", "prefilled")
    assert pb.kv_transfer_s > pb.kv_sent_s  # the ack came after the wait for a slot
    assert pre.engine.kv_reserved == 0 and pre.in_flight == 0
    dec.decode("b", 20, 0, heard)
    clock.run()
    assert heard.of("b", "decoded") and dec.engine.kv_reserved == 0


def test_cancel_held_kv_aborts_the_hand_over_and_decode_side_frees(cluster):
    clock = VirtualClock()
    pre = worker(cluster, "h100-prefill", ROLE_PREFILL, clock)
    dec = worker(cluster, "h100-decode", ROLE_DECODE, clock)
    transport, heard = Transport(pre, None), Heard(clock)  # the KV never lands
    pre.prefill("h", 2000, 50, heard, decode_address="nowhere")
    clock.run()
    assert pre.engine.kv_reserved == 2000 and transport.sent
    pre.cancel("h")
    assert transport.aborted == ["h"] and pre.engine.kv_reserved == 0 and not pre.engine.held
    for key in ("a", "b"):
        dec.admit_kv(key, 1000, 2000, heard)
    clock.run_until(0.5)
    assert {e[2] for e in heard.events if e[1] == "joined"} == {"a", "b"}
    dec.cancel("a")
    check_engine(dec.engine)
    clock.run_until(1.0)
    check_engine(dec.engine)
    assert dec.engine.batch == 1 and dec.engine.kv_reserved == 3000


@pytest.mark.parametrize("call, error, message", [
    (lambda w, d, h: d.admit_kv("big", 400_000, 100_000, h), NoCapacity, "holds at most"),
    (lambda w, d, h: w.prefill("x", 0, 5, h), InvalidField, "prompt_length"),
    (lambda w, d, h: w.prefill("x", 10, 5, h, decode_address="peer"), InvalidField, "decode_address"),
    (lambda w, d, h: d.prefill("x", 10, 5, h), WrongRole, "decode-only"),
    (lambda w, d, h: w.admit_kv("x", 10, 5, h), WrongRole, "not a decode worker"),
    (lambda w, d, h: w.decode("nobody", 5, 0, h), NotHeld, "no KV"),
    (lambda w, d, h: (w.prefill("dup", 10, 5, h), w.prefill("dup", 10, 5, h)), AlreadyHeld, "already"),
    (lambda w, d, h: (w.drain(), w.prefill("late", 10, 5, h)), Draining, "drained"),
])
def test_admission_checks(cluster, call, error, message):
    clock = VirtualClock()
    both, dec = worker(cluster, "b200", ROLE_BOTH, clock), worker(cluster, "h100-decode", ROLE_DECODE, clock)
    with pytest.raises(error, match=message):
        call(both, dec, Heard(clock))


@pytest.mark.parametrize("sent_s, late", [(10.0, False), (0.5, True)])
def test_late_work_is_admitted_at_its_send_time_unless_the_engine_moved_past_it(cluster, sent_s, late):
    """The engine runs 0.05 s of wall time (25 modelled seconds at time_scale 0.002)
    behind the clock, so work that spent time in transit finds it before its send time
    and is admitted then; work sent before the engine's last transition is admitted
    there instead, which a mirror of the engine could not foresee."""
    clock = VirtualClock(time_scale=0.002)
    w = EmulatedWorker(perf_of(cluster, "b200"), ROLE_BOTH, clock, input_slack_s=0.05)
    heard = Heard(clock)
    w.prefill("a", 2000, 400, heard, decode=True)
    clock.run_until(40.0)
    (_, _, _, summary), (_, _, _, pre) = heard.of("a", "decoded")[0], heard.of("a", "prefilled")[0]
    finished_s = pre.queue_s + pre.prefill_s + summary.decode_s
    assert 1.0 < finished_s < 10.0 and w.load().engine_s == finished_s  # the engine's last transition
    unforeseen = w.engine.unforeseen
    w.prefill("b", 500, 10, heard, sent_s=sent_s)
    assert w._reqs["b"].submit_s == (finished_s if late else sent_s)
    assert w.engine.unforeseen == unforeseen + late


def test_load_report_and_drain(cluster):
    w = worker(cluster, "b200", ROLE_BOTH)
    heard = Heard(w.clock)
    w.prefill("a", 1000, 200, heard, decode=True)
    w.clock.run_until(0.05)
    report = w.load()
    assert (report.received, report.running + report.queued, report.state) == (1, 1, WorkerState.READY)
    assert report.kv_free == w.engine.kv_capacity - 1200 and report.engine_s <= report.now_s == 0.05
    idle = []
    w.drain()
    w.when_idle(lambda: idle.append(w.clock.now()))
    assert w.state == WorkerState.DRAINING and not idle
    w.clock.run()
    assert w.state == WorkerState.DRAINED and idle == [heard.of("a", "decoded")[0][0]]
