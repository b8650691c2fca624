"""The client-facing `infersched.v1.Scheduler` service: the only place Scheduler protos
meet the core. Thin: it converts proto <-> core values and delegates.

Generate submits the request to the core with a `ResultStream` as its sink and
streams what arrives: token events that arrive together go out as one chunk,
and the last tokens travel with the final record in one message. A call the
client abandons cancels the request in the same step (no await on the way),
which front ends' stats snapshots rely on (`scheduler.live.relay`). Requests
are checked against `scheduler.live.bounds` before the core sees them.
"""
from __future__ import annotations

import asyncio
import logging
import math

import grpc

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler.live import bounds
from scheduler.live.core import SchedulerCore
from scheduler.live.types import (DuplicateRequest, GenerateInput, InvalidRequest, Overloaded, Percentiles,
                                  RequestOutcome, SchedulerStatsView, TokenEvent, WorkerView)
from scheduler.types import RequestStatus, Role
from workers.servicer import tier_usage_proto

log = logging.getLogger(__name__)

SCHEDULER_SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name

_ROLE_TO_PROTO = {Role.PREFILL: common_pb2.ROLE_PREFILL, Role.DECODE: common_pb2.ROLE_DECODE,
                  Role.BOTH: common_pb2.ROLE_BOTH}
_STATUS_TO_PROTO = {
    RequestStatus.COMPLETED: common_pb2.REQUEST_STATUS_COMPLETED,
    RequestStatus.REJECTED: common_pb2.REQUEST_STATUS_REJECTED,
    RequestStatus.FAILED: common_pb2.REQUEST_STATUS_FAILED,
    RequestStatus.PENDING: common_pb2.REQUEST_STATUS_UNSPECIFIED,
}


def generate_input(request: scheduler_pb2.GenerateRequest, size_bytes: int = 0) -> GenerateInput:
    """GenerateRequest -> core input; raises InvalidRequest naming the field."""
    length = request.prompt_length
    n = len(request.prompt_tokens)
    if length < 0:
        raise InvalidRequest(f"field 'prompt_length': must be > 0, got {length}")
    if n and length and n != length:
        raise InvalidRequest(f"field 'prompt_length': {length} disagrees with the {n} prompt_tokens sent")
    prompt = n or length
    if prompt <= 0:
        raise InvalidRequest("field 'prompt_length': must be > 0 when prompt_tokens is empty, got 0")
    if request.max_output_tokens <= 0:
        raise InvalidRequest(f"field 'max_output_tokens': must be > 0, got {request.max_output_tokens}")
    return GenerateInput(
        request_id=request.request_id, prompt_tokens=prompt, max_output_tokens=request.max_output_tokens,
        model_tier=request.model_tier,
        min_capability=request.min_capability if request.HasField("min_capability") else 0.0,
        ttft_slo_s=request.ttft_slo_s if request.HasField("ttft_slo_s") else None,
        tpot_slo_s=request.tpot_slo_s if request.HasField("tpot_slo_s") else None,
        prefix_block_hashes=tuple(request.prefix_block_hashes),
        sent_unix_s=request.sent_unix_s if request.HasField("sent_unix_s") else None,
        difficulty=request.difficulty if request.HasField("difficulty") else 0.0,
        trace_row=request.trace_row if request.HasField("trace_row") else None, size_bytes=size_bytes)


def token_chunk_proto(event: TokenEvent) -> common_pb2.TokenChunk:
    return common_pb2.TokenChunk(request_id=event.request_id, token_count=event.token_count,
                                 first_token_index=event.first_token_index, emit_s=event.emit_s)


def record_proto(o: RequestOutcome) -> scheduler_pb2.RequestRecord:
    record = scheduler_pb2.RequestRecord(
        request_id=o.request_id, status=_STATUS_TO_PROTO[o.status], reason=o.reason, reason_code=int(o.reason_code),
        retries=o.retries,
        arrival_s=o.arrival_s, finish_s=o.finish_s, prefill_pool=o.prefill_pool, decode_pool=o.decode_pool,
        prefill_instance=o.prefill_instance, decode_instance=o.decode_instance, model=o.model,
        input_tokens=o.input_tokens, output_tokens=o.output_tokens, energy_j=o.energy_j, cost_usd=o.cost_usd)
    for name in ("prefill_start_s", "prefill_end_s", "kv_transfer_end_s", "first_token_s", "ttft_s", "tpot_s"):
        value = getattr(o, name)
        if value is not None:
            setattr(record, name, value)
    return record


def _percentiles_proto(p: Percentiles) -> common_pb2.LatencyPercentiles:
    return common_pb2.LatencyPercentiles(samples=p.samples, p50_s=p.p50_s, p90_s=p.p90_s, p99_s=p.p99_s,
                                         mean_s=p.mean_s)


def stats_proto(s: SchedulerStatsView) -> scheduler_pb2.SchedulerStats:
    return scheduler_pb2.SchedulerStats(
        policy=s.policy, cluster=s.cluster, uptime_s=s.uptime_s, started_unix_s=s.started_unix_s,
        requests_total=s.requests_total, requests_completed=s.requests_completed,
        requests_rejected=s.requests_rejected, requests_failed=s.requests_failed,
        requests_invalid=s.requests_invalid, in_flight=s.in_flight, reasons=s.reasons,
        decisions_total=s.decisions_total, scheduling_overhead_s=_percentiles_proto(s.scheduling_overhead_s),
        ttft_s=_percentiles_proto(s.ttft_s), tpot_s=_percentiles_proto(s.tpot_s), e2e_s=_percentiles_proto(s.e2e_s),
        slo_attainment=s.slo_attainment, input_tokens=s.input_tokens, output_tokens=s.output_tokens,
        energy_j=s.energy_j, cost_usd=s.cost_usd, time_scale=s.time_scale, prompt_lengths=s.prompt_lengths,
        judgements={kind: scheduler_pb2.JudgementStats(**row) for kind, row in s.judgements.items()},
        pools=[scheduler_pb2.PoolStats(
            name=p.name, device=p.device, model=p.model, role=_ROLE_TO_PROTO[p.role], instances=p.instances,
            chips_per_instance=p.chips_per_instance, queue_depth=p.queue_depth, running=p.running,
            completed=p.completed, prefill_tokens=p.prefill_tokens, decode_tokens=p.decode_tokens,
            utilization=p.utilization, energy_j=p.energy_j, cost_usd=p.cost_usd, kv_free_tokens=p.kv_free_tokens,
            kv_capacity_tokens=p.kv_capacity_tokens, token_budget=p.token_budget,
            prompt_token_counts=p.prompt_token_counts, prefix_hit_tokens=p.prefix_hit_tokens,
            kv_tiers=[tier_usage_proto(t) for t in p.kv_tiers],
            speculative=speculative_proto(p.speculative)) for p in s.pools])


def speculative_proto(config) -> scheduler_pb2.SpeculativeDecoding | None:
    """A pool's SpeculativeConfig on the wire; None (the field unset) for plain decoding."""
    if config is None:
        return None
    return scheduler_pb2.SpeculativeDecoding(draft_model=config.draft_model, draft_tokens=config.draft_tokens,
                                             acceptance=config.acceptance)


def worker_info_proto(w: WorkerView) -> scheduler_pb2.WorkerInfo:
    return scheduler_pb2.WorkerInfo(
        worker_id=w.worker_id, instance=w.instance, pool=w.pool, device=w.device, model=w.model,
        role=_ROLE_TO_PROTO[w.role], address=w.address, state=int(w.state), queue_depth=w.queue_depth,
        running=w.running, kv_free_tokens=w.kv_free_tokens, kv_capacity_tokens=w.kv_capacity_tokens)


class ResultStream:
    """One request's sink (a Generate call's, an HTTP request's): what the core produced
    since the handler last looked."""

    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items: list[TokenEvent | RequestOutcome] = []
        self.waiter: asyncio.Future | None = None

    def _put(self, item) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def tokens(self, event: TokenEvent) -> None:
        self._put(event)

    def finish(self, outcome: RequestOutcome) -> None:
        self._put(outcome)

    async def take(self) -> list:
        if not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items


def _merge(held: TokenEvent | None, event: TokenEvent) -> TokenEvent:
    if held is None:
        return event
    return TokenEvent(held.request_id, held.first_token_index, held.token_count + event.token_count, event.emit_s,
                      event.last)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, core: SchedulerCore):
        self.core = core
        # Answered without a task by front ends' relay (scheduler.live.relay): GetStats
        # must stay fast while Generate work keeps the loop busy. With front ends it is
        # also a snapshot method: they answer it from stats the core pushes every 10 ms
        # while someone asks, keeping each connection's own Generate calls visible.
        self.inline_methods = {"GetStats": self.get_stats}
        self.snapshot_methods = frozenset(self.inline_methods)
        self.bounds = bounds.RequestBounds(core.cluster)

    def parse_request(self, request_class, payload: bytes):
        """A request's bytes as its message; InvalidRequest, counted, when they are not one."""
        try:
            return bounds.parse(request_class, payload)
        except InvalidRequest as exc:
            self.core.note_invalid(str(exc))
            raise

    async def Generate(self, request, context):
        core = self.core
        try:
            self.bounds.check(request)
            inp = generate_input(request, bounds.size_bytes(request, context))
        except InvalidRequest as exc:
            core.note_invalid(str(exc))
            await context.abort(bounds.status_of(exc), str(exc))
        stream = ResultStream()
        try:
            key = core.submit(inp, stream)
        except InvalidRequest as exc:  # counted by the core
            await context.abort(bounds.status_of(exc), str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except DuplicateRequest as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        finished = False
        try:
            held = None  # tokens not sent yet: merged with what follows them in the same batch
            while True:
                for item in await stream.take():
                    if isinstance(item, RequestOutcome):
                        finished = True
                        yield scheduler_pb2.GenerateResponse(
                            tokens=token_chunk_proto(held) if held is not None else None, record=record_proto(item))
                        return
                    held = _merge(held, item)
                if held is not None and not held.last:  # the last tokens wait for the record, due at once
                    yield scheduler_pb2.GenerateResponse(tokens=token_chunk_proto(held))
                    held = None
        finally:
            if not finished:
                core.cancel(key)

    async def GetStats(self, request, context):
        return self.get_stats(request, context)

    def get_stats(self, request, context) -> scheduler_pb2.SchedulerStats:
        return stats_proto(self.core.stats())

    async def WatchStats(self, request, context):
        interval = request.interval_s
        if not (math.isfinite(interval) and interval > 0):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"field 'interval_s': must be > 0, got {interval}")
        while True:
            yield stats_proto(self.core.stats())
            await asyncio.sleep(interval)

    async def ListWorkers(self, request, context):
        try:
            workers = self.core.workers_view(request.pool)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return scheduler_pb2.ListWorkersResponse(workers=[worker_info_proto(w) for w in workers])

    async def DrainWorker(self, request, context):
        return await self._set_drained(request, context, True)

    async def UndrainWorker(self, request, context):
        return await self._set_drained(request, context, False)

    async def _set_drained(self, request, context, drained: bool) -> scheduler_pb2.DrainWorkerResponse:
        core = self.core
        target = request.WhichOneof("target")
        if target is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of 'worker_id', 'instance' or 'pool'")
        value = getattr(request, target)
        views = core.workers_view()
        if target == "instance":
            chosen = [value] if 0 <= value < len(views) else []
        else:
            chosen = [w.instance for w in views if getattr(w, target) == value]
        if not chosen:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no worker with {target} {value!r}"[:200]
                                + " (ListWorkers or `infersched stats` names them)")
        for instance in chosen:
            core.set_drained(instance, drained)
        log.warning("%s instances %s by an operator; serving: %s", "drained" if drained else "undrained",
                    chosen, core.serving)
        views = core.workers_view()
        return scheduler_pb2.DrainWorkerResponse(workers=[worker_info_proto(views[i]) for i in chosen],
                                                 serving=core.serving)
