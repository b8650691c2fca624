"""Continuous batching on one instance, advanced in time by its caller.

The engine is clock-free: the simulator drives it with virtual time, a live
worker with a scaled real clock. The caller submits work, calls `poke(now)`
after submitting, and calls `wake(now)` when `now` reaches `next_wake_s`.

Two schedules. Prefill-first (`token_budget=0`, vLLM before v1): when prompts
wait and memory allows, one prefill iteration runs and the decode batch stalls
for its duration. Chunked prefill (`token_budget=N`, vLLM v1 / Sarathi-Serve):
every iteration runs the decode batch first, then fills the rest of the N-token
budget with prompt chunks in arrival order, so a long prompt spans iterations
and a chunk's attention reads the prefix already computed (or cached).

Cost grows with requests, not tokens: while decode membership is unchanged the
batch advances many steps in one closed-form segment (`InstancePerf.decode`),
and so do iterations of one prompt's full chunks beside it (`InstancePerf.mixed`:
same shape, its prefix and the batch's context growing linearly). A member is
stored as an offset against the global step counter, so the batch's total
context at step s is `ctx_offset_sum + batch * s` and each join or finish is
O(log batch). Each step's gap is added to a token-weighted inter-token latency
histogram (workers/itl.py) as one series per segment.

KV memory is reserved for prompt + output when a prompt is admitted, so a
running request is never preempted and a waiting one simply waits. With a
`PrefixCache` a prompt submitted with its block hashes computes only the tokens
past its cached prefix; the cache keeps finished prompts' blocks in free KV.
A prefix below HBM (host, SSD, shared store: workers/kv_tiers.py) loads at its
level's read bandwidth layer by layer beside compute (Mooncake, LMCache): an
iteration (a chunked segment's first) lasts the longer of compute and loads,
and a prompt loads only the part of its prefix that beats recomputing it; a
write-through store takes a prompt's new blocks at its write bandwidth the same way.
"""
from __future__ import annotations

import math
from collections import deque
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING

from workers.itl import ItlHistogram
from workers.roles import Role

if TYPE_CHECKING:
    from workers.perf import InstancePerf
    from workers.prefix_cache import PrefixCache

# Activity of an instance, as bits: an iteration computes prompts, advances the decode batch, or both.
IDLE = 0
PREFILL = 1
DECODE = 2
MIXED = PREFILL | DECODE  # chunked prefill: prompt chunks beside a decode step

# Event kinds reported by `wake` and `poke`, as tuples
# (kind, request_id, time_s, energy_j, cost_usd, activity_start_s):
FIRST_TOKEN = 0  # prefill done, first token out; energy/cost: the prefill share; start: prefill start
FINISHED = 1  # last token out; energy/cost: the decode share
JOINED = 2  # a handed-over request joined the decode batch (its prefill-side KV can be freed)

# The engine's roles are the Role enum's members (names kept for the engine's callers).
ROLE_PREFILL, ROLE_DECODE, ROLE_BOTH = Role.PREFILL, Role.DECODE, Role.BOTH

# vLLM v1's max_num_batched_tokens for its OpenAI server on GPUs with >= 70 GiB (H100, H200,
# MI300x): vllm/engine/arg_utils.py, EngineArgs._set_default_args_v1 (2048 on smaller GPUs).
DEFAULT_TOKEN_BUDGET = 8192

INF = math.inf


class BatchEngine:
    __slots__ = (
        "perf", "role", "max_batch", "max_batch_tokens", "token_budget", "kv_capacity", "kv_reserved",
        "waiting", "waiting_tokens", "joining", "step", "batch", "ctx_offset_sum", "finish_heap",
        "members", "held", "activity", "act_start_s", "next_wake_s", "act_steps", "act_ctx0",
        "act_energy_j", "prefill_batch", "prefill_tokens_now", "prefilling", "act_plan", "act_pairs",
        "act_prefix", "energy_acc_j", "cost_acc_usd",
        "busy_s", "dynamic_energy_j", "prefill_tokens", "decode_tokens", "prefill_iterations",
        "decode_segments", "last_kind", "_idle_w", "_price_s", "prefix", "prompt_blocks", "prefix_hit_tokens",
        "unforeseen", "itl", "last_step_s", "fresh", "load_now_s", "act_load_s", "load_plan", "write_now_s",
    )

    def __init__(self, perf: "InstancePerf", role: int, max_batch: int = 256, max_batch_tokens: int = 16384,
                 prefix: "PrefixCache | None" = None, token_budget: int = 0):
        if token_budget < 0:
            raise ValueError(f"token_budget must be >= 0 (0: prefill-first), got {token_budget!r}")
        self.perf = perf
        self.role = int(role)
        self.max_batch = int(max_batch)
        self.max_batch_tokens = int(max_batch_tokens)  # prefill-first: most prompt tokens per iteration
        self.token_budget = int(token_budget)  # chunked prefill: tokens per iteration (0: prefill-first)
        self.kv_capacity = int(perf.kv_capacity_tokens)
        self.kv_reserved = 0
        self.waiting: deque = deque()  # (rid, input_tokens, output_tokens) awaiting prefill
        self.waiting_tokens = 0
        self.joining: deque = deque()  # (rid, context_tokens, decode_steps, kv_tokens, first_token_s) awaiting a slot
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
        # The prompts the running activity completes: (rid, input_tokens, output_tokens, computed).
        self.prefill_batch: list = []
        self.prefill_tokens_now = 0  # prompt tokens the running activity computes per iteration
        # Chunked prefill: admitted prompts (KV reserved) in arrival order, each
        # (rid, input, output, to_compute, computed, cached, energy_j, cost_usd, start_s);
        # the running iteration's chunk per prompt (the first len(act_plan) of them), and its
        # attention pairs and prefix tokens read at its first iteration.
        self.prefilling: deque = deque()
        self.act_plan: list = []
        self.act_pairs = 0.0
        self.act_prefix = 0.0
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
        # Seconds of prefix loads from below HBM for the prompts an activity is starting, and
        # the running chunked segment's (the tiers' energy is priced per byte in summaries).
        self.load_now_s = 0.0
        self.act_load_s = 0.0
        self.load_plan = None  # a looked-up prompt's load from below HBM, carried out if it is admitted
        # Seconds of write-through to the shared store for the prompts an activity is starting: it
        # overlaps compute layer by layer like loads, on the other direction of the link.
        self.write_now_s = 0.0
        # Changes a copy of this engine fed only the same prompts at the same times
        # (submit_prefill, poke, wake) could not foresee: hand-overs, releases,
        # cancellations, prefix-cache hits. The live scheduler keeps such a copy of each
        # worker's engine; a worker resends its state only when this count moved
        # (workers/servicer.py, Session).
        self.unforeseen = 0
        # Inter-token latency: the gaps, when the batch last produced tokens, and members that
        # have not produced one since joining (rid -> their first token's time).
        self.itl = ItlHistogram()
        self.last_step_s = 0.0
        self.fresh: dict = {}

    # ---- submitting work -------------------------------------------------
    def submit_prefill(self, rid: int, input_tokens: int, output_tokens: int, block_hashes=None) -> None:
        """Queue a prompt; `block_hashes` (its prefix-cache blocks in order) lets a
        prefix cache skip the part it already holds."""
        self.waiting.append((rid, input_tokens, output_tokens))
        self.waiting_tokens += input_tokens
        if block_hashes and self.prefix is not None:
            self.prompt_blocks[rid] = block_hashes
            self.unforeseen += 1  # a copy's cache may have evicted what this one holds, or the reverse

    def submit_decode(self, rid: int, input_tokens: int, output_tokens: int,
                      first_token_s: float | None = None) -> None:
        """A request whose KV was handed over (first token already produced, at `first_token_s`
        when known: its first inter-token gap then spans the hand-over, else it starts at the join)."""
        self.joining.append((rid, input_tokens + 1, output_tokens - 1, input_tokens + output_tokens, first_token_s))
        self.unforeseen += 1

    def release(self, rid: int) -> None:
        """Free the KV a prefill-only instance held for a handed-over request."""
        self.kv_reserved -= self.held.pop(rid)
        self.unforeseen += 1

    # ---- cancellation (live serving) ----------------------------------------
    def remove_waiting(self, rid: int) -> bool:
        """Drop a request still waiting for prefill; False when it is not waiting (an admitted
        prompt, chunked or not, leaves when its prefill completes)."""
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
        restarts an activity computed with it (`restart_activity`). O(batch): rare."""
        offset, kv, _, _ = self.members.pop(rid)
        self.unforeseen += 1
        self.ctx_offset_sum -= offset
        self.kv_reserved -= kv
        self.batch -= 1
        self.fresh.pop(rid, None)
        self.finish_heap = [item for item in self.finish_heap if item[1] != rid]
        heapify(self.finish_heap)

    def restart_activity(self, now_s: float, events: list) -> None:
        """Recompute an activity that starts at `now_s` after its decode batch changed
        (a prefill-first iteration does not depend on the decode batch)."""
        if not self.activity & DECODE:
            return
        if self.activity == DECODE:
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

    def row(self, now_s: float) -> tuple[int, int, int, int, float]:
        """This instance's snapshot row as of `now_s`, in `ClusterSnapshot.update`'s order:
        (queued requests, queued prompt tokens, running, free KV tokens, busy until).
        `busy_until_s` is when a new prompt could start: the end of an iteration
        that computes prompts (prefill or chunked), or `now_s` for a decoding or idle
        instance (a poke cuts a decode segment at its next step, not at the segment's end)."""
        return (len(self.waiting) + len(self.joining), self.waiting_tokens, self.batch,
                self.kv_capacity - self.kv_reserved, self.next_wake_s if self.activity & PREFILL else now_s)

    # ---- advancing in time ---------------------------------------------
    def steps_done_by(self, now_s: float) -> int:
        """Iterations of the running activity complete by `now_s` (the decode batch has made
        that many tokens since the activity started)."""
        elapsed = now_s - self.act_start_s
        if self.act_steps <= 1 or elapsed <= 0.0:
            return self.act_steps if now_s >= self.next_wake_s else 0
        if self.activity == DECODE:
            done = self.perf.decode_steps_within(self.batch, self.act_ctx0, elapsed)
        else:  # a run of one prompt's full chunks
            done = self.perf.mixed_steps_within(self.batch, self.act_ctx0, self.prefill_tokens_now, self.act_pairs,
                                                self.act_prefix, elapsed)
        return done if done < self.act_steps else self.act_steps

    def _run_cost(self, steps: int) -> tuple[float, float]:
        """(time_s, dynamic_energy_j) of the running segment's first `steps` iterations."""
        if self.activity == DECODE:
            return self.perf.decode(self.batch, self.act_ctx0, steps)
        t, e = self.perf.mixed(self.batch, self.act_ctx0, self.prefill_tokens_now, self.act_pairs, self.act_prefix,
                               len(self.act_plan), steps)
        if self.act_load_s:
            t += _load_excess_s(self.act_load_s, t, steps)
        return t, e

    def poke(self, now_s: float, events: list) -> bool:
        """New work or freed memory: start an idle instance (appending JOINED
        events to `events`), or cut the running segment at the end of its current
        iteration so the new work is taken at the next iteration boundary.
        Returns True when next_wake_s changed."""
        if self.activity == IDLE:
            self._start_next(now_s, events)
            return self.activity != IDLE
        if self.act_steps > 1:
            steps = self.steps_done_by(now_s) + 1
            if steps < self.act_steps:
                t, e = self._run_cost(steps)
                self.act_steps = steps
                self.act_energy_j = e
                self.next_wake_s = self.act_start_s + t
                return True
        return False

    def wake(self, now_s: float, events: list) -> None:
        """Complete the activity that ends at `now_s` (== next_wake_s), append its
        events to `events`, and start the next activity."""
        activity = self.activity
        self.last_kind = activity
        duration = now_s - self.act_start_s
        self.busy_s += duration
        self.dynamic_energy_j += self.act_energy_j
        energy = self.act_energy_j + self._idle_w * duration
        cost = self._price_s * duration
        if activity == DECODE:
            steps = self.act_steps
            # The first step's end: the segment's first gap (and the slope of the rest).
            first_end = now_s if steps == 1 else self.act_start_s + self.perf.decode_step_s(self.batch, self.act_ctx0)
            self._advance_batch(steps, energy, cost, first_end, now_s, events)
        elif self.token_budget and activity:
            self._finish_chunks(now_s, energy, cost, events)
        elif activity == PREFILL:
            self._finish_prefill(now_s, energy, cost, events)
        self._start_next(now_s, events)

    def _complete_prompt(self, rid: int, inp: int, out: int, now_s: float, energy: float, cost: float,
                         start_s: float, events: list) -> None:
        """A prompt's last token is computed: the first output token is out."""
        if self.prompt_blocks and self.prefix is not None:
            blocks = self.prompt_blocks.pop(rid, None)
            if blocks:
                self.prefix.insert(blocks)
        events.append((FIRST_TOKEN, rid, now_s, energy, cost, start_s))
        if self.role == ROLE_PREFILL:
            self.held[rid] = inp
        elif out > 1:  # joins the decode batch (as a handed-over request joins in `_start_next`)
            step = self.step
            offset = inp + 1 - step
            self.ctx_offset_sum += offset
            self.batch += 1
            heappush(self.finish_heap, (step + out - 1, rid))
            self.members[rid] = (offset, inp + out, self.energy_acc_j, self.cost_acc_usd)
            self.fresh[rid] = now_s
        else:
            self.kv_reserved -= inp + out
            events.append((FINISHED, rid, now_s, 0.0, 0.0, start_s))

    def _finish_prefill(self, now_s: float, energy: float, cost: float, events: list) -> None:
        # Each prompt pays for the tokens it computed (a cached prefix is free).
        per_token_e = energy / self.prefill_tokens_now
        per_token_c = cost / self.prefill_tokens_now
        start = self.act_start_s
        for rid, inp, out, computed in self.prefill_batch:
            self._complete_prompt(rid, inp, out, now_s, per_token_e * computed, per_token_c * computed, start, events)
        self.prefill_batch = []
        if self.prefix is not None:
            self.prefix.trim(self.kv_capacity - self.kv_reserved)

    def _advance_batch(self, steps: int, energy: float, cost: float, first_step_end_s: float, now_s: float,
                       events: list) -> None:
        """The decode batch made `steps` tokens each, at first_step_end_s, ..., now_s, for `energy`
        and `cost` in total: record the gaps, take each member's share, finish the members done.

        The first gap runs from each member's previous token (or its first token, for members
        that joined since); the later ones are the iterations' own times, which grow linearly
        within a segment: one line through the first and the segment's total (exact when
        compute or memory is the larger over the whole segment)."""
        batch = self.batch
        itl = self.itl
        fresh = self.fresh
        first = first_step_end_s - self.act_start_s
        n = steps - 1
        slope = ((now_s - first_step_end_s) - n * first) / (n * (n + 1) * 0.5) if n else 0.0
        if not fresh and self.last_step_s == self.act_start_s:
            # The batch made its previous tokens as this segment started: every step's gap is the
            # step's own time, one series (the common case: a segment after a segment).
            itl.add_series(first, slope, steps, batch)
        else:
            continuing = batch - len(fresh)
            if continuing:
                itl.add(first_step_end_s - self.last_step_s, continuing)
            if fresh:
                for first_token_s in fresh.values():
                    itl.add(first_step_end_s - first_token_s)
                fresh.clear()
            if n:
                itl.add_series(first + slope, slope, n, batch)
        self.last_step_s = now_s
        self.energy_acc_j += energy / batch
        self.cost_acc_usd += cost / batch
        self.step += steps
        self.decode_tokens += batch * steps
        step = self.step
        heap = self.finish_heap
        if heap[0][0] > step:
            return
        members = self.members
        e_acc = self.energy_acc_j
        c_acc = self.cost_acc_usd
        start = self.act_start_s
        while heap and heap[0][0] <= step:
            rid = heappop(heap)[1]
            offset, kv, e0, c0 = members.pop(rid)
            self.ctx_offset_sum -= offset
            self.kv_reserved -= kv
            self.batch -= 1
            events.append((FINISHED, rid, now_s, e_acc - e0, c_acc - c0, start))

    def _finish_chunks(self, now_s: float, energy: float, cost: float, events: list) -> None:
        """End of chunked-prefill iterations: the decode batch advanced (MIXED), prompts grew by
        their chunks; energy and cost are shared per token computed or decoded."""
        steps = self.act_steps
        batch = self.batch
        chunk = self.prefill_tokens_now
        per_token = 1.0 / ((chunk + batch) * steps)
        if batch:
            first_end = now_s
            if steps > 1:
                first_end = self.act_start_s + self.perf.mixed(batch, self.act_ctx0, chunk, self.act_pairs,
                                                               self.act_prefix, 1, 1)[0]
            share = batch * steps * per_token
            self._advance_batch(steps, energy * share, cost * share, first_end, now_s, events)
        self.prefill_tokens += chunk * steps
        self.prefill_iterations += steps
        pre = self.prefilling
        partial = None
        for take in self.act_plan:
            rid, inp, out, to_compute, computed, cached, e, c, start = pre.popleft()
            tokens = take * steps
            computed += tokens
            e += energy * tokens * per_token
            c += cost * tokens * per_token
            if computed < to_compute:  # only the plan's last prompt can stop short
                partial = (rid, inp, out, to_compute, computed, cached, e, c, start)
            else:
                self._complete_prompt(rid, inp, out, now_s, e, c, start, events)
        if partial is not None:
            pre.appendleft(partial)
        self.act_plan = []
        self.prefill_batch = []
        if self.prefix is not None:
            self.prefix.trim(self.kv_capacity - self.kv_reserved)

    def _cached_prefix(self, rid: int, inp: int) -> int:
        """Prompt tokens a prefix cache holds for this prompt (at least its last token is computed:
        it yields the first output token)."""
        blocks = self.prompt_blocks.get(rid)
        prefix = self.prefix
        if not blocks or prefix is None:
            return 0
        held = prefix.match(blocks)
        self.load_plan = None
        if prefix.deep and held < len(blocks) and held * prefix.block_tokens < inp - 1:
            cached, load_s, taken = prefix.plan_load(blocks, held, inp, self.perf.prefill)
            if taken:
                self.load_plan = (blocks, held, taken, cached, load_s)
            return cached
        return min(held * prefix.block_tokens, inp - 1)

    def _admit_prefix(self, rid: int) -> None:
        """The prompt whose prefix was just looked up is admitted: carry out its planned load,
        and time the write of its blocks to a write-through store."""
        plan = self.load_plan
        if plan is not None:
            self.load_plan = None
            self.prefix.load(*plan)
            self.load_now_s += plan[4]
            self.unforeseen += 1
        if self.prefix.through is not None:
            blocks = self.prompt_blocks.get(rid)
            if blocks:
                self.write_now_s += self.prefix.write_s(blocks)

    def _transfer_s(self) -> float:
        """Seconds the starting activity's loads and writes take (reads and writes run on
        the two directions of a link at once), taken out of the engine."""
        t = self.load_now_s if self.load_now_s > self.write_now_s else self.write_now_s
        self.load_now_s = self.write_now_s = 0.0
        return t

    def _start_next(self, now_s: float, events: list) -> None:
        self.act_start_s = now_s
        # 1. Handed-over requests join the decode batch when a slot and memory allow.
        joining = self.joining
        while joining and self.batch < self.max_batch:
            rid, ctx, steps, kv, first_token_s = joining[0]
            if self.kv_reserved + kv > self.kv_capacity:
                break
            joining.popleft()
            self.kv_reserved += kv
            # `_join` inlined: once per handed-over request.
            step = self.step
            offset = ctx - step
            self.ctx_offset_sum += offset
            self.batch += 1
            heappush(self.finish_heap, (step + steps, rid))
            self.members[rid] = (offset, kv, self.energy_acc_j, self.cost_acc_usd)
            self.fresh[rid] = now_s if first_token_s is None else first_token_s
            events.append((JOINED, rid, now_s, 0.0, 0.0, now_s))
        # 2. Prompts: chunks beside the decode batch, or prefill-first.
        if self.role != ROLE_DECODE and (self.waiting or self.prefilling):
            if self.token_budget:
                if self._start_chunks(now_s):
                    return
            elif self._start_prefill(now_s):
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

    def _start_prefill(self, now_s: float) -> bool:
        """Prefill-first: one iteration of as many waiting prompts as the token cap, memory and
        slots allow (at least one, however long). False when none can start."""
        waiting = self.waiting
        role_both = self.role == ROLE_BOTH
        tokens = 0  # computed this iteration (past any cached prefix)
        taken = 0  # prompt tokens leaving the queue
        pairs = 0.0
        batch: list = []
        slots = self.max_batch - self.batch
        while waiting:
            rid, inp, out = waiting[0]
            need = inp + out if role_both else inp
            if self.kv_reserved + need > self.kv_capacity:
                break
            if role_both and len(batch) >= slots:
                break
            # Looked up only for a prompt memory admits: a prompt waiting for memory is not
            # looked up again at every iteration.
            cached = self._cached_prefix(rid, inp) if self.prompt_blocks else 0
            new = inp - cached
            if batch and tokens + new > self.max_batch_tokens:
                break
            waiting.popleft()
            if self.prompt_blocks:
                self._admit_prefix(rid)
            self.kv_reserved += need
            tokens += new
            taken += inp
            # Causal attention of the new tokens over the cached prefix and each other.
            pairs += new * cached + new * (new + 1) * 0.5
            self.prefix_hit_tokens += cached
            batch.append((rid, inp, out, new))
        if not batch:
            return False
        self.waiting_tokens -= taken
        if self.prefix is not None:
            self.prefix.trim(self.kv_capacity - self.kv_reserved)
        t, e = self.perf.prefill(tokens, pairs, len(batch))
        if self.load_now_s or self.write_now_s:
            # Layer-wise overlap: the iteration lasts the longer of compute and moving KV.
            t = max(t, self._transfer_s())
        self.activity = PREFILL
        self.prefill_batch = batch
        self.prefill_tokens_now = tokens
        self.prefill_tokens += tokens
        self.prefill_iterations += 1
        self.act_energy_j = e
        self.act_steps = 0
        self.next_wake_s = now_s + t
        return True

    def _start_chunks(self, now_s: float) -> bool:
        """Chunked prefill: the decode batch takes one token of the budget per member, prompts
        the rest in arrival order, each from where it stopped. A prompt is admitted (its KV
        reserved) when the budget reaches it. When the first prompt alone fills the budget and
        more, its full chunks repeat unchanged until it is nearly done or a member finishes:
        those iterations run as one closed-form segment. False when no prompt can run."""
        budget = self.token_budget - self.batch
        if budget <= 0:
            return False  # the decode batch fills the budget; prompts wait for a member to finish
        pre = self.prefilling
        left = 0  # tokens the admitted prompts still have to compute
        for entry in pre:
            left += entry[3] - entry[4]
        waiting = self.waiting
        role_both = self.role == ROLE_BOTH
        admitted = False
        while waiting and left < budget:
            rid, inp, out = waiting[0]
            need = inp + out if role_both else inp
            if self.kv_reserved + need > self.kv_capacity:
                break
            if role_both and self.batch + len(pre) >= self.max_batch:
                break
            cached = self._cached_prefix(rid, inp) if self.prompt_blocks else 0
            waiting.popleft()
            if self.prompt_blocks:
                self._admit_prefix(rid)
            self.waiting_tokens -= inp
            self.kv_reserved += need
            self.prefix_hit_tokens += cached
            pre.append((rid, inp, out, inp - cached, 0, cached, 0.0, 0.0, now_s))
            left += inp - cached
            admitted = True
        if not pre:
            return False
        if admitted and self.prefix is not None:
            self.prefix.trim(self.kv_capacity - self.kv_reserved)
        plan = []
        completes = []
        tokens = 0
        pairs = 0.0
        prefix = 0.0
        steps = 1
        for rid, inp, out, to_compute, computed, cached, _, _, _ in pre:
            remaining = to_compute - computed
            room = budget - tokens
            take = remaining if remaining < room else room
            before = cached + computed  # the prompt's prefix this chunk attends to
            plan.append(take)
            tokens += take
            pairs += take * before + take * (take + 1) * 0.5
            prefix += before
            if take == remaining:
                completes.append((rid, inp, out, to_compute))
            elif len(plan) == 1:
                # Full chunks of this prompt alone: the same shape every iteration until its
                # remainder fits in one (or a member finishes and the budget changes).
                steps = (remaining - 1) // take
                if self.batch:
                    until_finish = self.finish_heap[0][0] - self.step
                    if until_finish < steps:
                        steps = until_finish
            if tokens == budget:
                break
        ctx0 = self.ctx_offset_sum + self.batch * self.step
        t, e = self.perf.mixed(self.batch, ctx0, tokens, pairs, prefix, len(plan), steps)
        self.act_load_s = self._transfer_s() if self.load_now_s or self.write_now_s else 0.0
        if self.act_load_s:
            t += _load_excess_s(self.act_load_s, t, steps)
        self.activity = MIXED if self.batch else PREFILL
        self.act_plan = plan
        self.act_steps = steps
        self.act_ctx0 = ctx0
        self.act_pairs = pairs
        self.act_prefix = prefix
        self.prefill_batch = completes
        self.prefill_tokens_now = tokens
        self.act_energy_j = e
        self.next_wake_s = now_s + t
        return True


def _load_excess_s(load_s: float, segment_s: float, steps: int) -> float:
    """What loading adds to a chunked segment: the load overlaps its first iteration (the
    segment's iterations taken as equal), the rest of the segment waits for it."""
    excess = load_s - segment_s / steps
    return excess if excess > 0.0 else 0.0
