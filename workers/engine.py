"""Continuous batching on one instance, advanced in time by its caller.

The engine is clock-free: the simulator drives it with virtual time, a live
worker with a scaled real clock. The caller submits work, calls `poke(now)`
after submitting, and calls `wake(now)` when `now` reaches `next_wake_s`.

Scheduling is prefill-first, as in vLLM without chunked prefill: when prompts
wait and memory allows, one prefill iteration runs and the decode batch
stalls for its duration (the interference disaggregation removes). Otherwise
the decode batch runs.

Cost grows with requests, not tokens: while decode membership is unchanged
the batch advances many steps in one closed-form segment
(`InstancePerf.decode`). A decode member is stored as an offset against the
instance's global step counter, so the batch's total context at step s is
`ctx_offset_sum + batch * s` and each join or finish is O(log batch).

KV memory is reserved for prompt + output when a request is admitted, so a
running request is never preempted and a waiting one simply waits.

With a `PrefixCache` (workers/prefix_cache.py) a prompt submitted with its
block hashes computes only the tokens past its cached prefix. The reservation
stays prompt + output (conservative: shared blocks are not deduplicated), and
the cache holds finished prompts' blocks in whatever KV memory is left free.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

from workers.roles import Role

if TYPE_CHECKING:
    from workers.perf import InstancePerf
    from workers.prefix_cache import PrefixCache

# Activity of an instance.
IDLE = 0
PREFILL = 1
DECODE = 2

# Event kinds reported by `wake` and `poke`, as tuples
# (kind, request_id, time_s, energy_j, cost_usd, activity_start_s):
FIRST_TOKEN = 0  # prefill done, first token out; energy/cost: the prefill share; start: prefill start
FINISHED = 1  # last token out; energy/cost: the decode share
JOINED = 2  # a handed-over request joined the decode batch (its prefill-side KV can be freed)

# The engine's roles are the Role enum's members (names kept for the engine's callers).
ROLE_PREFILL, ROLE_DECODE, ROLE_BOTH = Role.PREFILL, Role.DECODE, Role.BOTH

INF = math.inf


class BatchEngine:
    __slots__ = (
        "perf", "role", "max_batch", "max_batch_tokens", "kv_capacity", "kv_reserved",
        "waiting", "waiting_tokens", "joining", "step", "batch", "ctx_offset_sum", "finish_heap",
        "members", "held", "activity", "act_start_s", "next_wake_s", "act_steps", "act_ctx0",
        "act_energy_j", "prefill_batch", "prefill_tokens_now", "energy_acc_j", "cost_acc_usd",
        "busy_s", "dynamic_energy_j", "prefill_tokens", "decode_tokens", "prefill_iterations",
        "decode_segments", "last_kind", "_idle_w", "_price_s", "prefix", "prompt_blocks", "prefix_hit_tokens",
        "unforeseen",
    )

    def __init__(self, perf: "InstancePerf", role: int, max_batch: int = 256, max_batch_tokens: int = 16384,
                 prefix: "PrefixCache | None" = None):
        self.perf = perf
        self.role = int(role)
        self.max_batch = int(max_batch)
        self.max_batch_tokens = int(max_batch_tokens)
        self.kv_capacity = int(perf.kv_capacity_tokens)
        self.kv_reserved = 0
        self.waiting: deque = deque()  # (rid, input_tokens, output_tokens) awaiting prefill
        self.waiting_tokens = 0
        self.joining: deque = deque()  # (rid, context_tokens, decode_steps, kv_tokens) awaiting a decode slot
        self.step = 0  # decode steps this instance has run
        self.batch = 0
        self.ctx_offset_sum = 0.0  # sum over members of (context at join - step at join)
        self.finish_heap: list = []  # (finish_step, rid)
        self.members: dict = {}  # rid -> (ctx_offset, kv_tokens, energy_acc at join, cost_acc at join)
        self.held: dict = {}  # prefill-only: rid -> KV tokens held until the hand-over completes
        self.activity = IDLE
        self.act_start_s = 0.0
        self.next_wake_s = INF
        self.act_steps = 0
        self.act_ctx0 = 0.0
        self.act_energy_j = 0.0
        self.prefill_batch: list = []
        self.prefill_tokens_now = 0
        # Per-member running shares of decode energy and cost: a member's share is
        # the difference between its leave and join values (O(1) per event).
        self.energy_acc_j = 0.0
        self.cost_acc_usd = 0.0
        # Totals.
        self.busy_s = 0.0
        self.dynamic_energy_j = 0.0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.prefill_iterations = 0
        self.decode_segments = 0
        self.last_kind = IDLE  # the activity `wake` just completed (live token streaming reads it)
        self._idle_w = perf.idle_power_w
        self._price_s = perf.price_usd_per_s
        # Prefix caching: the cache (None: off), each waiting or prefilling prompt's
        # block hashes (only prompts submitted with some), and prompt tokens served
        # from the cache instead of computed (prefill_tokens counts computed ones).
        self.prefix = prefix
        self.prompt_blocks: dict = {}
        self.prefix_hit_tokens = 0
        # Changes a copy of this engine fed only the same prompts at the same times
        # (submit_prefill, poke, wake) could not foresee: hand-overs, releases,
        # cancellations, prefix-cache hits. The live scheduler keeps such a copy of each
        # worker's engine; a worker resends its state only when this count moved
        # (workers/live.py, Session).
        self.unforeseen = 0

    # ---- submitting work -------------------------------------------------
    def submit_prefill(self, rid: int, input_tokens: int, output_tokens: int, block_hashes=None) -> None:
        """Queue a prompt; `block_hashes` (its prefix-cache blocks in order) lets a
        prefix cache skip the part it already holds."""
        self.waiting.append((rid, input_tokens, output_tokens))
        self.waiting_tokens += input_tokens
        if block_hashes and self.prefix is not None:
            self.prompt_blocks[rid] = block_hashes
            self.unforeseen += 1  # a copy's cache may have evicted what this one holds, or the reverse

    def submit_decode(self, rid: int, input_tokens: int, output_tokens: int) -> None:
        """A request whose KV was handed over (first token already produced)."""
        self.joining.append((rid, input_tokens + 1, output_tokens - 1, input_tokens + output_tokens))
        self.unforeseen += 1

    def release(self, rid: int) -> None:
        """Free the KV a prefill-only instance held for a handed-over request."""
        self.kv_reserved -= self.held.pop(rid)
        self.unforeseen += 1

    # ---- cancellation (live serving) ----------------------------------------
    def remove_waiting(self, rid: int) -> bool:
        """Drop a request still waiting for prefill; False when it is not waiting."""
        for i, (queued, inp, _) in enumerate(self.waiting):
            if queued == rid:
                del self.waiting[i]
                self.waiting_tokens -= inp
                self.prompt_blocks.pop(rid, None)
                self.unforeseen += 1
                return True
        return False

    def remove_joining(self, rid: int) -> bool:
        """Drop a handed-over request still waiting for a decode slot."""
        for i, item in enumerate(self.joining):
            if item[0] == rid:
                del self.joining[i]
                self.unforeseen += 1
                return True
        return False

    def remove_member(self, rid: int) -> None:
        """Take a member out of the decode batch, freeing its slot and KV. The caller
        restarts a segment computed with it (`restart_activity`). O(batch): rare."""
        offset, kv, _, _ = self.members.pop(rid)
        self.unforeseen += 1
        self.ctx_offset_sum -= offset
        self.kv_reserved -= kv
        self.batch -= 1
        self.finish_heap = [item for item in self.finish_heap if item[1] != rid]
        heapq.heapify(self.finish_heap)

    def restart_activity(self, now_s: float, events: list) -> None:
        """Recompute a decode segment that starts at `now_s` after its batch changed
        (a prefill iteration does not depend on the decode batch)."""
        if self.activity != DECODE:
            return
        self.decode_segments -= 1  # the segment never ran
        self.activity = IDLE
        self.act_energy_j = 0.0
        self.next_wake_s = INF
        self._start_next(now_s, events)

    @property
    def queued_requests(self) -> int:
        return len(self.waiting) + len(self.joining)

    @property
    def kv_free(self) -> int:
        return self.kv_capacity - self.kv_reserved

    # ---- advancing in time ---------------------------------------------
    def poke(self, now_s: float, events: list) -> bool:
        """New work or freed memory: start an idle instance (appending JOINED
        events to `events`), or cut the running decode segment at the end of its
        current step so the new work is taken at the next iteration boundary.
        Returns True when next_wake_s changed."""
        if self.activity == IDLE:
            self._start_next(now_s, events)
            return self.activity != IDLE
        if self.activity == DECODE and self.act_steps > 1:
            done = self.perf.decode_steps_within(self.batch, self.act_ctx0, now_s - self.act_start_s)
            steps = done + 1
            if steps < self.act_steps:
                t, e = self.perf.decode(self.batch, self.act_ctx0, steps)
                self.act_steps = steps
                self.act_energy_j = e
                self.next_wake_s = self.act_start_s + t
                return True
        return False

    def wake(self, now_s: float, events: list) -> None:
        """Complete the activity that ends at `now_s` (== next_wake_s), append its
        events to `events`, and start the next activity."""
        self.last_kind = self.activity
        duration = now_s - self.act_start_s
        self.busy_s += duration
        self.dynamic_energy_j += self.act_energy_j
        energy = self.act_energy_j + self._idle_w * duration
        cost = self._price_s * duration
        if self.activity == PREFILL:
            self._finish_prefill(now_s, energy, cost, events)
        elif self.activity == DECODE:
            self._finish_decode(now_s, energy, cost, events)
        self._start_next(now_s, events)

    def _finish_prefill(self, now_s: float, energy: float, cost: float, events: list) -> None:
        # Each prompt pays for the tokens it computed (a cached prefix is free).
        per_token_e = energy / self.prefill_tokens_now
        per_token_c = cost / self.prefill_tokens_now
        start = self.act_start_s
        role = self.role
        prompt_blocks = self.prompt_blocks if self.prefix is not None else None
        for rid, inp, out, computed in self.prefill_batch:
            if prompt_blocks:
                blocks = prompt_blocks.pop(rid, None)
                if blocks:
                    self.prefix.insert(blocks)
            events.append((FIRST_TOKEN, rid, now_s, per_token_e * computed, per_token_c * computed, start))
            if role == ROLE_PREFILL:
                self.held[rid] = inp
            elif out > 1:
                self._join(rid, inp + 1, out - 1, inp + out)
            else:
                self.kv_reserved -= inp + out
                events.append((FINISHED, rid, now_s, 0.0, 0.0, start))
        self.prefill_batch = []
        if self.prefix is not None:
            self.prefix.trim(self.kv_capacity - self.kv_reserved)

    def _finish_decode(self, now_s: float, energy: float, cost: float, events: list) -> None:
        batch = self.batch
        self.energy_acc_j += energy / batch
        self.cost_acc_usd += cost / batch
        self.step += self.act_steps
        self.decode_tokens += batch * self.act_steps
        step = self.step
        heap = self.finish_heap
        members = self.members
        e_acc = self.energy_acc_j
        c_acc = self.cost_acc_usd
        start = self.act_start_s
        while heap and heap[0][0] <= step:
            rid = heapq.heappop(heap)[1]
            offset, kv, e0, c0 = members.pop(rid)
            self.ctx_offset_sum -= offset
            self.kv_reserved -= kv
            self.batch -= 1
            events.append((FINISHED, rid, now_s, e_acc - e0, c_acc - c0, start))

    def _join(self, rid: int, context_tokens: int, steps: int, kv_tokens: int) -> None:
        offset = context_tokens - self.step
        self.ctx_offset_sum += offset
        self.batch += 1
        heapq.heappush(self.finish_heap, (self.step + steps, rid))
        self.members[rid] = (offset, kv_tokens, self.energy_acc_j, self.cost_acc_usd)

    def _start_next(self, now_s: float, events: list) -> None:
        self.act_start_s = now_s
        # 1. Handed-over requests join the decode batch when a slot and memory allow.
        joining = self.joining
        while joining and self.batch < self.max_batch:
            rid, ctx, steps, kv = joining[0]
            if self.kv_reserved + kv > self.kv_capacity:
                break
            joining.popleft()
            self.kv_reserved += kv
            self._join(rid, ctx, steps, kv)
            events.append((JOINED, rid, now_s, 0.0, 0.0, now_s))
        # 2. Prefill-first.
        waiting = self.waiting
        if waiting and self.role != ROLE_DECODE:
            role_both = self.role == ROLE_BOTH
            tokens = 0  # computed this iteration (past any cached prefix)
            taken = 0  # prompt tokens leaving the queue
            pairs = 0.0
            batch: list = []
            slots = self.max_batch - self.batch
            prompt_blocks = self.prompt_blocks if self.prefix is not None else None
            while waiting:
                rid, inp, out = waiting[0]
                need = inp + out if role_both else inp
                cached = 0
                if prompt_blocks:
                    blocks = prompt_blocks.get(rid)
                    if blocks:
                        # At least the last prompt token is computed: it yields the first output token.
                        cached = min(self.prefix.match(blocks) * self.prefix.block_tokens, inp - 1)
                new = inp - cached
                if batch and tokens + new > self.max_batch_tokens:
                    break
                if self.kv_reserved + need > self.kv_capacity:
                    break
                if role_both and len(batch) >= slots:
                    break
                waiting.popleft()
                self.kv_reserved += need
                tokens += new
                taken += inp
                # Causal attention of the new tokens over the cached prefix and each other.
                pairs += new * cached + new * (new + 1) * 0.5
                self.prefix_hit_tokens += cached
                batch.append((rid, inp, out, new))
            if batch:
                self.waiting_tokens -= taken
                if self.prefix is not None:
                    self.prefix.trim(self.kv_capacity - self.kv_reserved)
                t, e = self.perf.prefill(tokens, pairs, len(batch))
                self.activity = PREFILL
                self.prefill_batch = batch
                self.prefill_tokens_now = tokens
                self.prefill_tokens += tokens
                self.prefill_iterations += 1
                self.act_energy_j = e
                self.act_steps = 0
                self.next_wake_s = now_s + t
                return
        # 3. Decode until the first member finishes (or a poke cuts the segment).
        if self.batch:
            steps = self.finish_heap[0][0] - self.step
            ctx0 = self.ctx_offset_sum + self.batch * self.step
            t, e = self.perf.decode(self.batch, ctx0, steps)
            self.activity = DECODE
            self.act_steps = steps
            self.act_ctx0 = ctx0
            self.act_energy_j = e
            self.decode_segments += 1
            self.next_wake_s = now_s + t
            return
        self.activity = IDLE
        self.act_energy_j = 0.0
        self.next_wake_s = INF
