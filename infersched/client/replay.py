"""The live replay client: a trace sent open loop to a running scheduler, summarized as the simulator does.

`replay` sends a trace's requests open loop at the trace's arrival times
divided by `--speedup`, streams each request's tokens, and builds the same
per-request records and summary as `infersched simulate` from the final
records the scheduler sends. Times are the scheduler's, in modelled seconds
(see scheduler.live.core), so they compare with the simulator's field by field.

The default speed-up is the server's own (1 / time_scale, which GetStats
reports), so the cluster sees the trace's arrival rate in modelled time: what
the simulator replays.

When the scheduler goes away (`max_unavailable` UNAVAILABLE answers in a row),
the replay stops sending, gives calls still open STOP_GRACE_S to end, and
returns what it has: the summary covers the requests sent, and those without
a final record count as FAILED and as `unknown` (the server may or may not
have finished them).

Pool energy, cost, tokens and utilization in the summary are the change in
the scheduler's pool counters over the replay; idle energy and hourly cost are
charged over the makespan, as the simulator charges them.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
from tqdm import tqdm

from infersched.client import MAX_UNAVAILABLE
from infersched.client.stats import RPC_TIMEOUT_S
from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler.config import SloConfig
from scheduler.types import RequestStatus, Role
from simulator.kv_usage import live_kv_tier_usage
from simulator.metrics import PoolUsage, RequestRecords, UtilizationTimeline, summarize
from simulator.sim import SimResult
from workers.itl import ItlHistogram
from workers.security.service import NO_CLIENT_SECURITY, ClientSecurity

_STATUS = {
    common_pb2.REQUEST_STATUS_COMPLETED: RequestStatus.COMPLETED,
    common_pb2.REQUEST_STATUS_REJECTED: RequestStatus.REJECTED,
    common_pb2.REQUEST_STATUS_FAILED: RequestStatus.FAILED,
}
# Seconds calls still open when a replay stops get to end before they count as unknown.
STOP_GRACE_S = 2.0
UNKNOWN_REASON = "unknown: no final record (the scheduler was unavailable)"
_ROLE = {common_pb2.ROLE_PREFILL: Role.PREFILL, common_pb2.ROLE_DECODE: Role.DECODE, common_pb2.ROLE_BOTH: Role.BOTH}


# ---- a cluster as the server describes it --------------------------------------------


def served_cluster(stats: scheduler_pb2.SchedulerStats, slo: SloConfig | None = None):
    """The served cluster rebuilt from GetStats (pools, devices, models, chips, roles, chunking, speculative decoding),
    for the summary when no cluster file is given. Batch limits and prices are not in
    the stats, so per-pool cost comes from the server's counters, not from this; the SLO
    is not either: pass the cluster file (--cluster) for its own."""
    from scheduler.cluster import Cluster
    from scheduler.config import QUANTIZATION_BYTES, ClusterConfig, PoolConfig
    from workers.models import MODELS
    from workers.speculative import SpeculativeConfig

    pools = []
    for p in stats.pools:
        model, quantization = p.model, None
        base, _, label = p.model.rpartition("-")
        if p.model not in MODELS and base in MODELS and label in QUANTIZATION_BYTES:
            model, quantization = base, label  # workers.models.with_dtype names variants "<model>-<dtype>"
        chunking = {"chunked_prefill": True, "token_budget": p.token_budget} if p.token_budget > 0 else {}
        if p.HasField("speculative"):
            s = p.speculative
            chunking["speculative"] = SpeculativeConfig(s.draft_model, s.draft_tokens, s.acceptance)
        pools.append(PoolConfig(name=p.name, device=p.device, instances=p.instances, model=model,
                                role=_ROLE.get(p.role, Role.BOTH), chips_per_instance=p.chips_per_instance,
                                quantization=quantization, **chunking))
    return Cluster(ClusterConfig(name=stats.cluster, pools=tuple(pools), slo=slo or SloConfig(),
                                 source=f"<served cluster {stats.cluster}>"))


def server_time_scale(stats: scheduler_pb2.SchedulerStats, unix_now: float | None = None) -> float:
    """The server's time_scale, from GetStats; from a server that does not report it,
    estimated from its clock (modelled seconds since started_unix_s)."""
    if stats.time_scale > 0:
        return stats.time_scale
    unix_now = time.time() if unix_now is None else unix_now
    if stats.uptime_s <= 0:
        raise ValueError("the scheduler reports no uptime yet; cannot read its time_scale")
    return (unix_now - stats.started_unix_s) / stats.uptime_s


# ---- replay ------------------------------------------------------------------------------


@dataclass
class ReplayResult(SimResult):
    """What simulator.metrics.summarize reads of a simulation, plus what the client saw."""

    time_scale: float = 0.0
    speedup: float = 0.0
    tokens_streamed: int = 0
    client_wall_s: float = 0.0
    # Wall seconds each request was sent after its scheduled time (p50, p99, max): a busy
    # client bunches arrivals, and then the cluster sees another workload than the trace.
    send_lateness_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Requests of the workload sent, and those of them with no final record; why the
    # replay stopped before sending them all ("" when it did not).
    sent: int = 0
    unknown: int = 0
    stopped: str = ""
    failure_reasons: dict | None = None  # FAILED requests by reason (the scheduler's, or "unknown: ...")


async def replay(target: str, workload, *, speedup: float | None = None, cluster=None, slo: SloConfig | None = None,
                 seed: int = 0, rpc_timeout_s: float = 600.0, progress: bool = False,
                 security: ClientSecurity = NO_CLIENT_SECURITY,
                 max_unavailable: int = MAX_UNAVAILABLE) -> ReplayResult:
    """Replay `workload` (simulator.workload.Workload) against the scheduler at `target`,
    with `security`'s TLS and token."""
    n = workload.n_requests
    rec = RequestRecords(n)
    options = [("grpc.max_receive_message_length", 16 << 20)]
    async with security.aio_channel(target, options=options) as channel:
        stub = security.stub(scheduler_pb2_grpc.SchedulerStub, channel)
        stats0 = await stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
        time_scale = server_time_scale(stats0)
        if cluster is None:
            cluster = served_cluster(stats0, slo)
        else:
            _check_same_cluster(cluster, stats0)
        speedup = 1.0 / time_scale if speedup is None else float(speedup)
        if not (math.isfinite(speedup) and speedup > 0):
            raise ValueError(f"speedup must be a positive number, got {speedup!r}")
        prefix = f"replay-{uuid.uuid4().hex[:8]}"
        reasons: dict[str, int] = {}
        codes: dict[str, int] = {}
        failures: dict[str, int] = {}
        counts = {"messages": 0, "tokens": 0, "unavailable_run": 0, "unknown": 0}
        stopped = asyncio.Event()

        def unknown(i: int) -> None:
            rec.status[i] = RequestStatus.FAILED
            counts["unknown"] += 1
            failures[UNKNOWN_REASON] = failures.get(UNKNOWN_REASON, 0) + 1
        itl = ItlHistogram()

        async def attempt(i: int, inp: int, out: int, due: float, hashes, difficulty: float) -> None:
            # Stamped with its scheduled time: the request arrives then in modelled time,
            # however long the client and the loopback take to deliver it.
            request = scheduler_pb2.GenerateRequest(request_id=f"{prefix}-{i}", prompt_length=inp,
                                                    max_output_tokens=out, prefix_block_hashes=hashes,
                                                    sent_unix_s=unix0 + (due - t0), difficulty=difficulty,
                                                    trace_row=i)
            lateness[i] = loop.time() - due
            record = None
            chunks = []  # (first token index, tokens, emit time) as streamed
            try:
                async for item in stub.Generate(request, timeout=rpc_timeout_s):
                    counts["messages"] += 1
                    if item.HasField("tokens"):
                        tokens = item.tokens
                        counts["tokens"] += tokens.token_count
                        chunks.append((tokens.first_token_index, tokens.token_count, tokens.emit_s))
                    if item.HasField("record"):  # the last message (with the last tokens, if they came with it)
                        record = item.record
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    counts["unavailable_run"] += 1
                    if counts["unavailable_run"] >= max_unavailable:
                        stopped.set()
                    unknown(i)
                    return
                counts["unavailable_run"] = 0
                status = (RequestStatus.REJECTED if exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                                   grpc.StatusCode.INVALID_ARGUMENT,
                                                                   grpc.StatusCode.OUT_OF_RANGE)
                          else RequestStatus.FAILED)
                rec.status[i] = status
                reason = f"{exc.code().name}: {exc.details()}"
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reason = "queue full"
                reasons[reason] = reasons.get(reason, 0) + 1
                code = _status_code_name(exc)
                codes[code] = codes.get(code, 0) + 1
                return
            counts["unavailable_run"] = 0
            if record is None:
                rec.status[i] = RequestStatus.FAILED
                reasons["stream ended without a record"] = reasons.get("stream ended without a record", 0) + 1
                return
            _store(rec, i, record, origin)
            if rec.status[i] == RequestStatus.COMPLETED:
                _add_gaps(itl, chunks, record.first_token_s, record.finish_s)
            if rec.status[i] == RequestStatus.REJECTED:
                reasons[record.reason] = reasons.get(record.reason, 0) + 1
                code = common_pb2.ReasonCode.Name(record.reason_code).removeprefix("REASON_CODE_")
                codes[code] = codes.get(code, 0) + 1
            elif rec.status[i] == RequestStatus.FAILED:
                failures[record.reason] = failures.get(record.reason, 0) + 1

        async def one(i: int, inp: int, out: int, due: float, hashes, difficulty: float) -> None:
            try:
                await attempt(i, inp, out, due, hashes, difficulty)
            except asyncio.CancelledError:  # still open when the replay stopped
                unknown(i)
            finally:
                bar.update(1)

        bar = tqdm(total=n, unit="req", desc="replay: requests ended", disable=not progress, file=sys.stderr,
                   leave=False, dynamic_ncols=True, mininterval=0.25)
        loop = asyncio.get_running_loop()
        wall0 = time.perf_counter()
        t0 = loop.time()
        unix0 = time.time()
        origin = (unix0 - stats0.started_unix_s) / time_scale  # scheduler clock now
        tasks = []
        lateness = np.zeros(n)
        for chunk in workload.chunks(8192):
            base = chunk.first_id
            arrivals = chunk.arrival_s.tolist()
            inputs = chunk.input_tokens.tolist()
            outputs = chunk.output_tokens.tolist()
            # Each row's difficulty, drawn as the simulator draws it: placements by tier scorers
            # and the summary's quality then compare with `simulate` on the same rows.
            difficulties = chunk.difficulty.tolist()
            # Prefix-cache block hashes (Mooncake hash_ids), when the trace has them.
            offsets = values = None
            if chunk.hash_ids is not None:
                offsets, values = (a.tolist() for a in chunk.hash_ids)
            rec.arrival_s[base:base + len(arrivals)] = chunk.arrival_s
            rec.input_tokens[base:base + len(arrivals)] = chunk.input_tokens
            rec.output_tokens[base:base + len(arrivals)] = chunk.output_tokens
            rec.difficulty[base:base + len(arrivals)] = chunk.difficulty
            for j, arrival in enumerate(arrivals):
                due = t0 + arrival / speedup
                delay = due - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopped.wait(), delay)
                if stopped.is_set():
                    break
                hashes = values[offsets[j]:offsets[j + 1]] if values is not None else ()
                tasks.append(loop.create_task(one(base + j, inputs[j], outputs[j], due, hashes, difficulties[j])))
            if stopped.is_set():
                break
        why = ""
        every = asyncio.gather(*tasks)
        stop = loop.create_task(stopped.wait())
        await asyncio.wait((every, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if stopped.is_set():
            why = f"{max_unavailable} UNAVAILABLE answers in a row"
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            every.cancel()  # what is still open ends as unknown
            with contextlib.suppress(asyncio.CancelledError):
                await every
        bar.close()
        client_wall = time.perf_counter() - wall0
        stats1 = stats0
        with contextlib.suppress(grpc.aio.AioRpcError):
            stats1 = await stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=STOP_GRACE_S if why
                                         else RPC_TIMEOUT_S)
    sent = len(tasks)
    if sent < n:
        rec = _first(rec, sent)
        lateness = lateness[:sent]
        n = sent

    completed = rec.status == RequestStatus.COMPLETED
    finished = rec.finish_s[completed]
    makespan = max(float(finished.max()) if len(finished) else 0.0,
                   float(np.nanmax(rec.arrival_s)) if n else 0.0)
    pools = _pool_usage(cluster, stats0, stats1, makespan)
    return ReplayResult(
        cluster=cluster, policy_name=stats1.policy, workload_description=workload.description, seed=seed,
        records=rec, pools=pools, utilization=UtilizationTimeline([p.instances for p in pools]),
        makespan_s=makespan, events=counts["messages"], wall_s=client_wall, reject_reasons=reasons,
        reject_codes=dict(sorted(codes.items())),
        time_scale=time_scale, speedup=speedup, tokens_streamed=counts["tokens"], client_wall_s=client_wall, itl=itl,
        send_lateness_s=(float(np.percentile(lateness, 50)), float(np.percentile(lateness, 99)),
                         float(lateness.max())) if n else (0.0, 0.0, 0.0),
        sent=sent, unknown=counts["unknown"], stopped=why, failure_reasons=failures,
        kv_tiers=_tier_usage(cluster, stats0, stats1, makespan))


def _first(rec: RequestRecords, k: int) -> RequestRecords:
    """The first `k` rows of `rec` (the requests a stopped replay sent)."""
    out = RequestRecords(k)
    for name, column in rec.columns().items():
        setattr(out, name, column[:k].copy())
    return out


def _status_code_name(exc: grpc.aio.AioRpcError) -> str:
    """A refused call's key in reject_codes: the scheduler's admission bounds by their reason
    code names (as GetStats counts them), any other status by its name."""
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "PENDING_BYTES" if "--max-pending-bytes" in (exc.details() or "") else "QUEUE_FULL"
    return exc.code().name


def _add_gaps(itl: ItlHistogram, chunks: list, first_token_s: float, finish_s: float) -> None:
    """Inter-token gaps as the client saw them: a chunk of n tokens after the first token gives
    n gaps of (its time - the previous chunk's) / n, one per token as workers/itl.py counts them.
    A chunk's time is when the scheduler relayed it, kept within [first token, finish] of the
    request's record (relays trail the modelled times), so a request's gaps add up to its
    first-to-last-token time, as in the simulator."""
    prev = first_token_s
    for first, count, emit_s in chunks:
        after_first = count - 1 if first == 0 else count
        emit_s = min(max(emit_s, prev), finish_s)
        if after_first > 0:
            itl.add((emit_s - prev) / after_first, after_first)
        prev = emit_s


def _store(rec: RequestRecords, i: int, r: scheduler_pb2.RequestRecord, origin: float) -> None:
    rec.status[i] = _STATUS.get(r.status, RequestStatus.FAILED)
    rec.arrival_s[i] = r.arrival_s - origin
    for column, name in (("prefill_start_s", "prefill_start_s"), ("first_token_s", "first_token_s"),
                         ("kv_ready_s", "kv_transfer_end_s")):
        if r.HasField(name):
            getattr(rec, column)[i] = getattr(r, name) - origin
    if rec.status[i] == RequestStatus.COMPLETED:
        rec.finish_s[i] = r.finish_s - origin
    rec.prefill_instance[i] = r.prefill_instance if r.prefill_pool else -1
    rec.decode_instance[i] = r.decode_instance if r.decode_pool else -1
    rec.energy_j[i] = r.energy_j
    rec.cost_usd[i] = r.cost_usd


def _check_same_cluster(cluster, stats: scheduler_pb2.SchedulerStats) -> None:
    mine = [(p.name, p.config.instances) for p in cluster.pools]
    theirs = [(p.name, p.instances) for p in stats.pools]
    if mine != theirs:
        raise ValueError(f"the cluster file's pools {mine} differ from the server's {theirs}")


def _pool_usage(cluster, stats0, stats1, makespan_s: float) -> list[PoolUsage]:
    from workers.devices import get_device

    up0, up1 = stats0.uptime_s, stats1.uptime_s
    window = max(up1 - up0, 1e-12)
    before = {p.name: p for p in stats0.pools}
    out = []
    for p in stats1.pools:
        b = before[p.name]
        n = p.instances
        device = get_device(p.device)
        idle_w = device.idle_power_w * p.chips_per_instance
        energy = p.energy_j - b.energy_j
        dynamic = max(energy - idle_w * n * window, 0.0)
        price_per_s = (p.cost_usd - b.cost_usd) / (n * window)
        busy = max(p.utilization * n * up1 - b.utilization * n * up0, 0.0)
        out.append(PoolUsage(
            name=p.name, device=p.device, model=p.model, role=_ROLE.get(p.role, Role.BOTH).name.lower(),
            instances=n, chips_per_instance=p.chips_per_instance, busy_s=busy, dynamic_energy_j=dynamic,
            idle_energy_j=idle_w * n * makespan_s, cost_usd=price_per_s * n * makespan_s,
            prefill_tokens=p.prefill_tokens - b.prefill_tokens, decode_tokens=p.decode_tokens - b.decode_tokens,
            prefix_hit_tokens=p.prefix_hit_tokens - b.prefix_hit_tokens,
            utilization=min(1.0, busy / (n * makespan_s)) if makespan_s > 0 else 0.0))
    return out


def _tier_usage(cluster, stats0, stats1, makespan_s: float) -> dict | None:
    """Prompt tokens each prefix-cache level served, and what the tiers moved, over the replay
    (the workers' counts, stats1 less stats0); None when no pool has levels below HBM."""
    counts: dict[str, list] = {}
    hits = 0
    for stats, sign in ((stats1, 1), (stats0, -1)):
        for p in stats.pools:
            hits += sign * p.prefix_hit_tokens
            for t in p.kv_tiers:
                row = counts.setdefault(t.name, [0, 0.0, 0.0])
                row[0] += sign * t.hit_tokens
                row[1] += sign * t.read_bytes
                row[2] += sign * t.written_bytes
    if not counts:
        return None
    return live_kv_tier_usage(cluster, hits, counts, makespan_s)


def live_summary(result: ReplayResult, target: str) -> dict:
    summary = summarize(result)
    summary["live"] = {
        "target": target, "time_scale": result.time_scale, "speedup": result.speedup,
        "client_wall_s": result.client_wall_s, "tokens_streamed": result.tokens_streamed,
        "send_lateness_s": dict(zip(("p50", "p99", "max"), result.send_lateness_s)),
        "generate_rps_wall": result.records.n / result.client_wall_s if result.client_wall_s > 0 else None,
        "sent": result.sent, "unknown": result.unknown, "stopped": result.stopped or None,
        "failure_reasons": result.failure_reasons or {},
    }
    return summary
