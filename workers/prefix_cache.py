"""Prefix caching: which prompt blocks an instance still holds in KV memory.

A prompt is a chain of fixed-size blocks named by hash ids (Mooncake's
`hash_ids`: a block's id stands for its content *and* everything before it,
so equal ids at position k mean an equal k-block prefix). After a prefill the
instance keeps the prompt's blocks; a later prompt that starts with the same
blocks skips computing them, so its prefill costs new * cached + new * (new +
1) / 2 attention pairs over `new` tokens instead of inp * (inp + 1) / 2 over
`inp`.

Cached blocks live in the KV memory that running requests leave free (as in
vLLM and SGLang, a finished request's blocks stay until the memory is needed):
the engine trims the cache to `kv_free` after every admission, least recently
used first. A prompt's blocks are touched last-to-first, so within one prompt
the tail is older than the head and eviction peels prefixes from their ends,
never orphaning the shared start (a cached block is only useful while every
block before it is cached too).

`PrefixIndex` is the router's view: block id -> bitmask of the instances
holding it, kept current by every instance's cache, so a policy finds each
candidate's cached prefix length in one pass over the request's blocks
whatever the number of instances.

Below HBM (workers/kv_tiers.py) a cache may have tiers and a shared store:
`trim` demotes what it evicts, `probe` finds how far a prompt's prefix reaches
into them, `plan_load` decides whether loading beats recomputing and `load`
promotes the blocks back into HBM once the prompt is admitted. An instance's tiers are one
sequence of block copies (`LocalTiers`): a block demoted from host to SSD stays where it is
while the boundary between the two moves past it, and one dict says which tier holds each
block. They register in one router index (every instance's tiers in the first of the
cluster's tier indexes), so the router sees HBM, the instance's own tiers and the store.
A write-through store (kv_store.write: through) takes every prefilled prompt's blocks
(`insert`) instead of the last tier's evictions.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import count, repeat

from workers.kv_tiers import STORE, KvTier, StoreWrite, TierLru
from workers.report import TierUsage


class PrefixIndex:
    """Block id -> bitmask of instances (bit i = instance i) that hold it."""

    __slots__ = ("holders",)

    def __init__(self) -> None:
        self.holders: dict[int, int] = {}

    def add(self, block: int, bit: int) -> None:
        holders = self.holders
        holders[block] = holders.get(block, 0) | bit

    def discard(self, block: int, bit: int) -> None:
        holders = self.holders
        left = holders.get(block, 0) & ~bit
        if left:
            holders[block] = left
        else:
            holders.pop(block, None)

    def reach_blocks(self, blocks, others: tuple, store: "TierLru | None", everyone: int) -> tuple:
        """`cached_blocks` three ways in one walk: held here; here or in any of the `others`
        indexes (an instance's own tiers); and also in the shared `store` (held by
        `everyone`, the mask of all instances; None without a store, or while it is empty).

        The walk keeps each way's set of instances still holding every block so far (it
        only shrinks) and notes an instance's depth when it drops out; once no instance
        holds the prefix locally, a block in the store changes nothing, so the rest of the
        walk only asks the store."""
        get = self.holders.get
        gets = [index.holders.get for index in others if index.holders]  # (tiers share the first index)
        tier_get = gets[0] if len(gets) == 1 else _any_of(gets) if gets else None
        in_store = store.blocks.__contains__ if store is not None and store.blocks else None
        hbm: dict[int, int] = {}
        local: dict[int, int] = {}
        reach: dict[int, int] = {}
        here = near = wide = -1  # instances holding every block so far, each way (-1: all, before the first)
        k = 0
        for b in blocks:
            if not near and in_store(b):  # (near is only empty with a store: else the walk has ended)
                k += 1
                continue
            mask = get(b, 0)
            mine = mask | tier_get(b, 0) if tier_get is not None else mask
            left = here & mask
            if left != here:
                if k:
                    _note(hbm, here ^ left, k)
                here = left
            left = near & mine
            if left != near:
                if k:
                    _note(local, near ^ left, k)
                near = left
            left = wide & (everyone if in_store is not None and in_store(b) else mine)
            if left != wide:
                if k:
                    _note(reach, wide ^ left, k)
                wide = left
                if not wide:
                    return hbm, local, (reach if in_store is not None else None)
            k += 1
        if k:
            _note(hbm, here, k)
            _note(local, near, k)
            _note(reach, wide, k)
        return hbm, local, (reach if in_store is not None else None)

    def cached_blocks(self, blocks) -> dict[int, int]:
        """Instance id -> number of leading `blocks` it holds, for instances holding at least one."""
        return _leading(map(self.holders.get, blocks, repeat(0)))


def _any_of(gets: list):
    """One `get` (block, default) -> the union of several indexes' masks."""
    def get(block: int, default: int) -> int:
        mask = default
        for other in gets:
            mask |= other(block, 0)
        return mask
    return get


def _note(depth: dict, bits: int, k: int) -> None:
    """Depth `k` for each instance in `bits`."""
    while bits:
        low = bits & -bits
        depth[low.bit_length() - 1] = k
        bits ^= low


def _leading(masks) -> dict[int, int]:
    """Instance id -> number of leading blocks held, from each block's mask of holders in order.

    The set of instances holding blocks[0..k] only shrinks with k, so the walk stops at
    the first block nobody holds; each instance is visited once, when it drops out (or
    at the end).
    """
    depth: dict[int, int] = {}
    alive = -1
    k = 0
    for mask in masks:
        still = alive & mask
        dropped = (alive ^ still) if k else 0
        while dropped:
            low = dropped & -dropped
            depth[low.bit_length() - 1] = k
            dropped ^= low
        alive = still
        if not alive:
            return depth
        k += 1
    if k:
        while alive:
            low = alive & -alive
            depth[low.bit_length() - 1] = k
            alive ^= low
    return depth


def _from(seq: list, start: int, base: int):
    """(position, block) pairs of `seq` (whose first item is at position `base`) from `start`."""
    items = iter(seq)
    items.__setstate__(start - base)  # a list iterator resumes at an index without walking there
    return zip(count(start), items)


def _nowhere(block: int) -> None:
    """`LocalTiers.where.get` for a cache without tiers."""
    return None


class TierLevel:
    """One tier below HBM of one instance (a level of its `LocalTiers`): its size, the bytes
    moved, and its blocks (least recently used first) for inspection."""

    __slots__ = ("tier", "capacity", "written_bytes", "read_bytes", "owner", "k")

    shared = False  # (the cluster's store is a TierLru with shared=True)

    def __init__(self, tier: KvTier, capacity: int, owner: "LocalTiers", k: int):
        self.tier = tier
        self.capacity = capacity
        self.written_bytes = 0.0
        self.read_bytes = 0.0
        self.owner = owner
        self.k = k

    @property
    def blocks(self) -> list:
        return self.owner.held(self.k)

    def __len__(self) -> int:
        return self.owner.count[self.k]

    def __contains__(self, block: int) -> bool:
        p = self.owner.where.get(block)
        return p is not None and self.owner.tier_of(block, self.k)


class LocalTiers:
    """An instance's tiers below HBM (host, SSD, ...), each an LRU of at most `capacity` blocks, as
    one sequence of block copies: the last tier's least recently used first, up to the first
    tier's most recently used last. Tier k holds the copies at positions lo[k] .. lo[k-1] - 1
    (tier 0's run to the end). A block tier k evicts becomes the most recently used of tier k + 1:
    the position right below the boundary, where it already is, so demoting it moves the boundary
    and nothing else, and the tiers need one index between them.

    `where`: block -> position of its fastest copy. A block can be in several tiers at once (HBM
    evicts a block into the host tier while the SSD still holds an older copy, kept because a
    prompt recomputed it instead of loading it); the slower copies' positions are in `slower`
    (block -> positions, fastest first), usually empty. A position that neither names is a stale
    copy (the block was put again, promoted, or dropped) and is skipped as boundaries pass it.
    Positions only grow; `base` is the position of seq[0], and the copies below the last tier's
    boundary are cut off from time to time.
    """

    __slots__ = ("seq", "base", "lo", "count", "capacity", "where", "slower", "holders", "bit", "levels",
                 "block_bytes", "compact_after")

    def __init__(self, tiers: tuple, block_bytes: float, index: PrefixIndex | None, bit: int):
        self.seq: list[int] = []
        self.base = 0
        self.lo = [0] * len(tiers)
        self.count = [0] * len(tiers)
        self.capacity = [t.capacity_blocks(block_bytes) for t in tiers]
        self.where: dict[int, int] = {}
        self.slower: dict[int, list[int]] = {}
        self.holders = index.holders if index is not None else None
        self.bit = bit
        self.block_bytes = block_bytes
        self.compact_after = 4096  # dead copies before the sequence is cut
        self.levels = tuple(TierLevel(t, c, self, k) for k, (t, c) in enumerate(zip(tiers, self.capacity)))

    def copies(self, block: int) -> list[int]:
        """Positions of `block`'s copies, fastest first."""
        p = self.where.get(block)
        return [] if p is None else [p] + self.slower.get(block, [])

    def tier_of(self, block: int, k: int) -> bool:
        """Whether tier `k` holds `block`."""
        top = self.base + len(self.seq) if k == 0 else self.lo[k - 1]
        return any(self.lo[k] <= p < top for p in self.copies(block))

    def held(self, k: int) -> list[int]:
        """Tier `k`'s blocks, least recently used first."""
        top = self.base + len(self.seq) if k == 0 else self.lo[k - 1]
        return [b for p, b in enumerate(self.seq[self.lo[k] - self.base:top - self.base], self.lo[k])
                if p in self.copies(b)]

    def put(self, moving: list, mine: list) -> list:
        """HBM's evictions (oldest first) into the first tier, each tier's LRU evictions into the
        next; returns what falls out of the last, oldest first. Bytes written count per tier,
        into each level and `mine` (the instance's own, per level)."""
        seq = self.seq
        where = self.where
        get = where.get
        first = self.lo[0]
        pos = self.base + len(seq)  # the new copies' positions: pos, pos + 1, ...
        holders = self.holders
        hget = holders.get if holders is not None else None
        bit = self.bit
        written = 0
        for b in moving:
            p = get(b)
            if p is None:
                written += 1
                if hget is not None:
                    holders[b] = hget(b, 0) | bit
            elif p < first:  # a slower tier holds it: that copy stays, this one is the fastest
                written += 1
                self.slower.setdefault(b, []).insert(0, p)
            # else: the first tier holds it already; that copy goes stale (touched)
        where.update(zip(moving, range(pos, pos + len(moving))))
        seq.extend(moving)
        size = self.block_bytes
        self.count[0] += written
        self.levels[0].written_bytes += written * size
        mine[0] += written * size
        return self._overflow(mine)

    def _overflow(self, mine: list) -> list:
        """Move each full tier's boundary past its oldest copies until it fits: into the next
        tier (written unless that tier has the block already), out of the last."""
        seq = self.seq
        base = self.base
        get = self.where.get
        slower = self.slower
        counts = self.count
        lo = self.lo
        size = self.block_bytes
        last = len(lo) - 1
        for k in range(last + 1):
            over = counts[k] - self.capacity[k]
            if over <= 0:
                return []
            counts[k] -= over
            copies = _from(seq, lo[k], base)  # (position, block) from the boundary up
            if k < last:
                written = 0
                for p, b in copies:
                    if get(b) == p and (not slower or b not in slower):
                        written += 1  # the only copy: now the next tier's most recently used
                    elif p in self.copies(b):
                        written += self._cross(b, p, lo[k + 1])
                    else:
                        continue  # stale
                    over -= 1
                    if not over:
                        break
                lo[k] = p + 1
                counts[k + 1] += written
                self.levels[k + 1].written_bytes += written * size
                mine[k + 1] += written * size
                continue
            out = []
            append = out.append
            holders = self.holders
            pop = self.where.pop
            if not slower and holders is not None:  # the usual case: every copy is its block's only one
                hget = holders.get
                hpop = holders.pop
                others = ~self.bit
                for p, b in copies:
                    q = pop(b, None)
                    if q != p:  # stale: the block's copy is elsewhere (or gone)
                        if q is not None:
                            self.where[b] = q
                        continue
                    left = hget(b, 0) & others
                    if left:
                        holders[b] = left
                    else:
                        hpop(b)
                    append(b)
                    over -= 1
                    if not over:
                        break
            else:
                for p, b in copies:
                    if get(b) == p and (not slower or b not in slower):
                        pop(b)
                        if holders is not None:
                            left = holders.get(b, 0) & ~self.bit
                            if left:
                                holders[b] = left
                            else:
                                holders.pop(b, None)
                    elif p in self.copies(b):
                        slower[b].pop()  # the slowest copy
                        if not slower[b]:
                            del slower[b]
                    else:
                        continue
                    append(b)
                    over -= 1
                    if not over:
                        break
            lo[k] = p + 1
            self._compact()
            return out
        return []

    def _cross(self, block: int, p: int, below: int) -> int:
        """`block`'s copy at `p`, one of several, crosses into the next tier (which starts at
        `below`): 1 if written there, 0 if that tier's copy (the next slower one) goes stale."""
        rest = self.slower[block]
        j = 0 if self.where[block] == p else rest.index(p) + 1
        if j < len(rest) and rest[j] >= below:
            del rest[j]
            if not rest:
                del self.slower[block]
            return 0
        return 1

    def _compact(self) -> None:
        """Drop the copies below the last tier's boundary once they are most of the sequence."""
        dead = self.lo[-1] - self.base
        if dead > self.compact_after and 2 * dead > len(self.seq):
            del self.seq[:dead]
            self.base += dead

    def take(self, blocks, k: int) -> None:
        """Remove `blocks`, promoted to HBM, from tier `k`, the fastest local holder of each
        (a block that repeats in the prompt left already)."""
        where = self.where
        get = where.get
        slower = self.slower
        at = self.lo[k]
        holders = self.holders
        bit = self.bit
        counts = self.count
        for b in blocks:
            p = get(b)
            if p is None or p < at:
                continue
            counts[k] -= 1
            if slower and b in slower:
                rest = slower[b]
                where[b] = rest.pop(0)
                if not rest:
                    del slower[b]
                continue
            del where[b]
            if holders is not None:
                left = holders.get(b, 0) & ~bit
                if left:
                    holders[b] = left
                else:
                    holders.pop(b, None)


class PrefixCache:
    """One instance's cached prompt blocks, least recently used first."""

    __slots__ = ("block_tokens", "bit", "index", "blocks", "levels", "deep", "block_bytes", "hit_tokens",
                 "load_s", "through", "local", "evict_to", "read_bytes", "written_bytes")

    def __init__(self, block_tokens: int, instance: int = 0, index: PrefixIndex | None = None,
                 tiers: tuple = (), block_bytes: float = 0.0, store: TierLru | None = None,
                 tier_index: PrefixIndex | None = None):
        """`tiers`: the instance's tiers below HBM (KvTier, fastest first), registered in
        `tier_index` when given; `store`: the cluster's shared store, if any."""
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        self.block_tokens = int(block_tokens)
        self.bit = 1 << int(instance)
        self.index = index
        self.blocks: OrderedDict[int, None] = OrderedDict()
        block_bytes = float(block_bytes)
        self.local = LocalTiers(tiers, block_bytes, tier_index, self.bit) if tiers else None
        # Every level below HBM, fastest first, the shared store last.
        self.levels = (self.local.levels if self.local is not None else ()) + ((store,) if store is not None else ())
        self.deep = bool(self.levels)  # the hot path skips everything below HBM when False
        self.block_bytes = block_bytes
        # Prompt tokens served from each level below HBM (the engine counts the total), and the
        # seconds prompts spent loading them.
        self.hit_tokens = [0] * len(self.levels)
        self.load_s = 0.0
        # This instance's own bytes moved per level (the shared store's level counts everyone's).
        self.read_bytes = [0.0] * len(self.levels)
        self.written_bytes = [0.0] * len(self.levels)
        # A write-through store (the last level) is written by every prefill, not by demotion.
        last = self.levels[-1] if self.levels else None
        self.through = last if last is not None and last.shared and last.tier.write == StoreWrite.THROUGH else None
        # Where the last tier's evictions go (HBM's, without tiers): a store written on eviction.
        self.evict_to = store if store is not None and self.through is None else None

    def __len__(self) -> int:
        return len(self.blocks)

    def match(self, blocks) -> int:
        """Leading blocks of `blocks` held here; they become the most recently used."""
        held = self.blocks
        n = 0
        for block in blocks:
            if block not in held:
                break
            n += 1
        move = held.move_to_end
        for i in range(n - 1, -1, -1):  # head last: the shared start is evicted last
            move(blocks[i])
        return n

    def insert(self, blocks) -> None:
        """Keep a prefilled prompt's blocks (all of them most recently used, head last)."""
        new = _touch_head_last(self.blocks, blocks)
        index = self.index
        if index is not None:
            bit = self.bit
            for block in new:
                index.add(block, bit)
        if self.through is not None:
            self._write_through(blocks)

    def _write_through(self, blocks) -> None:
        """A prefilled prompt's blocks into the write-through store (head last: evicted last)."""
        store = self.through
        held = store.blocks
        move = held.move_to_end
        new = 0
        for block in reversed(blocks):  # _touch_head_last, counting instead of listing
            if block in held:
                move(block)
            else:
                held[block] = None
                new += 1
        written = new * self.block_bytes
        store.written_bytes += written
        self.written_bytes[-1] += written
        over = len(held) - store.capacity
        if over > 0:
            pop = held.popitem
            for _ in range(over):
                pop(last=False)

    def write_s(self, blocks) -> float:
        """Seconds to write a prompt's blocks the write-through store lacks (0 without one)."""
        store = self.through
        if store is None:
            return 0.0
        missing = len(blocks) - sum(map(store.blocks.__contains__, blocks))
        return missing * self.block_bytes / store.tier.write_bytes_per_s

    def trim(self, max_tokens: int) -> None:
        """Evict least recently used blocks until at most `max_tokens` are cached."""
        held = self.blocks
        keep = max(int(max_tokens), 0) // self.block_tokens
        if len(held) <= keep:
            return
        index = self.index
        bit = self.bit
        pop = held.popitem
        if self.deep:
            out = [pop(last=False)[0] for _ in range(len(held) - keep)]
            if index is not None:
                _discard_all(index.holders, out, bit)
            self._demote(out)
            return
        for _ in range(len(held) - keep):
            block, _ = pop(last=False)
            if index is not None:
                index.discard(block, bit)

    def _demote(self, moving: list) -> None:
        """HBM evictions (oldest first) move down: through the instance's tiers (LocalTiers.put),
        then what falls out of the last one into a store written on eviction, whose own LRU
        evictions leave the cache. Inlined TierLru.put: this runs for every block leaving HBM."""
        if self.local is not None:
            moving = self.local.put(moving, self.written_bytes)
            if not moving:
                return
        store = self.evict_to
        if store is None:
            return
        held = store.blocks
        move = held.move_to_end
        written = 0
        for b in moving:
            if b in held:
                move(b)
            else:
                held[b] = None
                written += 1
        size = self.block_bytes
        store.written_bytes += written * size
        self.written_bytes[-1] += written * size
        over = len(held) - store.capacity
        if over > 0:
            pop = held.popitem
            for _ in range(over):
                pop(last=False)

    def probe(self, blocks, start: int) -> list:
        """The levels holding blocks[start:], up to the first block no level holds, as runs:
        [level, count] for each stretch of consecutive blocks whose fastest holder is that
        level (an index into `levels`). Nothing moves."""
        runs = []
        local = self.local
        if local is not None:
            where = local.where.get
            bounds = local.lo
            first = bounds[0]
            deeper = len(bounds) > 1
            nlocal = len(bounds)
        else:
            where = _nowhere
            first = deeper = nlocal = 0
        store = self.levels[-1] if self.levels and self.levels[-1].shared else None
        in_store = store.blocks.__contains__ if store is not None else None
        run = None
        last = -1
        for i in range(start, len(blocks)):
            block = blocks[i]
            p = where(block)
            if p is None:
                if in_store is None or not in_store(block):
                    break
                k = nlocal
            elif p >= first or not deeper:
                k = 0
            else:
                k = 1
                while p < bounds[k]:
                    k += 1
            if k == last:
                run[1] += 1
            else:
                run = [k, 1]
                runs.append(run)
                last = k
        return runs

    def plan_load(self, blocks, held: int, inp: int, prefill) -> tuple:
        """An `inp`-token prompt whose first `held` blocks are in HBM: the part of the rest (up to
        the end of one level's run of blocks) whose load makes its prefill shortest alone, with
        the load overlapped (`prefill`: InstancePerf.prefill); none when recomputing is faster.
        Returns (tokens cached with the load, load seconds, the runs to load: (level, blocks)
        each, in order); nothing moves until `load` is called with them, when the prompt is
        admitted."""
        runs = self.probe(blocks, held)
        bt = self.block_tokens
        base = min(held * bt, inp - 1)
        if not runs:
            return base, 0.0, ()

        def compute_s(cached: int) -> float:
            new = inp - cached
            return prefill(new, new * cached + new * (new + 1) * 0.5, 1)[0]

        size = self.block_bytes
        levels = self.levels
        best_s, best, best_runs, best_load_s = compute_s(base), 0, 0, 0.0
        load_s = 0.0
        cut = 0
        for j, (k, n) in enumerate(runs):  # only the end of a level's run: part of a run is never better
            per_block_s = size / levels[k].tier.read_bytes_per_s
            for _ in range(n):  # block by block: the same sum, to the last bit, as reading them one by one
                load_s += per_block_s
            cut += n
            if load_s >= best_s:
                break  # deeper cuts load more
            t = max(compute_s(min((held + cut) * bt, inp - 1)), load_s)
            if t < best_s:
                best_s, best, best_runs, best_load_s = t, cut, j + 1, load_s
        if not best:
            return base, 0.0, ()
        return min((held + best) * bt, inp - 1), best_load_s, tuple((k, n) for k, n in runs[:best_runs])

    def load(self, blocks, held: int, taken, cached: int, load_s: float) -> None:
        """Carry out a `plan_load`: promote the blocks, count the tokens each level served."""
        self.promote(blocks, held, taken)
        hits = self.hit_tokens
        bt = self.block_tokens
        total = 0
        for k, n in taken:
            hits[k] += n * bt
            total += n
        hits[taken[-1][0]] -= (held + total) * bt - cached  # the last prompt token is always computed
        self.load_s += load_s

    def promote(self, blocks, start: int, runs) -> None:
        """Load blocks[start:] run by run ((level, count) each) into HBM: out of the local tier
        holding each run (a copy stays in the shared store), counting bytes read; the prompt's
        blocks are then the most recently used, head last."""
        size = self.block_bytes
        held = self.blocks
        holders = self.index.holders if self.index is not None else None
        bit = self.bit
        levels = self.levels
        mine = self.read_bytes
        i = start
        for k, n in runs:
            level = levels[k]
            level.read_bytes += n * size
            mine[k] += n * size
            part = blocks[i:i + n]
            i += n
            if not level.shared:
                self.local.take(part, k)
            for block in part:
                held[block] = None
            if holders is not None:
                get = holders.get
                for block in part:
                    holders[block] = get(block, 0) | bit
        move = held.move_to_end
        for block in reversed(blocks[:i]):
            move(block)


def _touch_head_last(held: OrderedDict, blocks) -> list:
    """Make a prompt's `blocks` the most recently used of `held` (an LRU), its head last so
    the shared start is evicted last; returns the blocks that were not held."""
    new = []
    for i in range(len(blocks) - 1, -1, -1):
        block = blocks[i]
        if block in held:
            held.move_to_end(block)
        else:
            held[block] = None
            new.append(block)
    return new


def _discard_all(holders: dict, blocks: list, bit: int) -> None:
    """PrefixIndex.discard for many blocks of one instance, inlined."""
    get = holders.get
    for b in blocks:
        left = get(b, 0) & ~bit
        if left:
            holders[b] = left
        else:
            holders.pop(b, None)


def tier_usage(prefix: PrefixCache | None) -> tuple:
    """What this instance's levels below HBM served and moved (TierUsage each, the store last,
    named `store`); () without tiers."""
    if prefix is None or not prefix.deep:
        return ()
    return tuple(TierUsage(STORE if level.shared else level.tier.name, served, read, written)
                 for level, served, read, written in zip(prefix.levels, prefix.hit_tokens, prefix.read_bytes,
                                                         prefix.written_bytes))


def tiered_cache(block_tokens: int, instance: int, index: PrefixIndex | None, tiers, kv_bytes_per_token: float,
                 tier_indexes: tuple = (), store: TierLru | None = None) -> PrefixCache:
    """An instance's prefix cache: HBM, its `tiers` (KvTier, fastest first; all of them register
    in tier_indexes[0] when given, the router only asking whether an instance holds a block in
    any of its tiers) and the cluster's shared `store`."""
    return PrefixCache(block_tokens, instance, index, tuple(tiers), block_tokens * float(kv_bytes_per_token), store,
                       tier_indexes[0] if tier_indexes else None)
