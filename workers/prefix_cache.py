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
promotes the blocks back into HBM once the prompt is admitted. An instance's tiers share
one router index (every instance's tiers register in the first of the cluster's tier
indexes), so a block demoted from host to SSD changes no index, and the router sees HBM,
the instance's own tiers and the store. A write-through store (kv_store.write: through)
takes every prefilled prompt's blocks (`insert`) instead of the last tier's evictions.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import repeat

from workers.kv_tiers import STORE, StoreWrite, TierLru
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


class PrefixCache:
    """One instance's cached prompt blocks, least recently used first."""

    __slots__ = ("block_tokens", "bit", "index", "blocks", "levels", "deep", "block_bytes", "hit_tokens",
                 "load_s", "through", "demote_to", "read_bytes", "written_bytes", "nlocal")

    def __init__(self, block_tokens: int, instance: int = 0, index: PrefixIndex | None = None,
                 levels: tuple[TierLru, ...] = (), block_bytes: float = 0.0):
        """`levels`: the tiers below HBM, fastest first, the shared store (if any) last."""
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        self.block_tokens = int(block_tokens)
        self.bit = 1 << int(instance)
        self.index = index
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.levels = tuple(levels)
        self.deep = bool(self.levels)  # the hot path skips everything below HBM when False
        self.block_bytes = float(block_bytes)
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
        self.demote_to = self.levels[:-1] if self.through is not None else self.levels
        self.nlocal = sum(not level.shared for level in self.levels)  # the instance's own tiers, first

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
        """HBM evictions (oldest first) move down: into the first level, each level's own LRU
        evictions one further; the store's fall out of the cache. Inlined TierLru.put: this
        runs for every block leaving HBM."""
        size = self.block_bytes
        mine = self.written_bytes
        last = self.nlocal - 1
        for k, level in enumerate(self.demote_to):
            held = level.blocks
            move = held.move_to_end
            index = level.index
            bit = level.bit
            # The instance's tiers share one router index: only HBM's evictions can be new to it.
            holders = index.holders if index is not None and k == 0 else None
            written = 0
            if holders is not None:
                get = holders.get
                for b in moving:
                    if b in held:
                        move(b)
                    else:
                        held[b] = None
                        written += 1
                        holders[b] = get(b, 0) | bit
            else:
                for b in moving:
                    if b in held:
                        move(b)
                    else:
                        held[b] = None
                        written += 1
            level.written_bytes += written * size
            mine[k] += written * size
            over = len(held) - level.capacity
            if over <= 0:
                return
            pop = held.popitem
            moving = [pop(last=False)[0] for _ in range(over)]
            if k == last and index is not None:  # out of the instance's tiers (a faster one may hold a copy)
                self._untier(moving, k)

    def _untier(self, blocks: list, k: int) -> None:
        """`blocks` left tier `k`: out of the tier index, but for those another of the instance's
        tiers still holds (a block put into a faster tier while a slower one kept its copy)."""
        level = self.levels[k]
        for j in range(self.nlocal):  # (a loop per other tier, not a generator per block)
            if j != k:
                held = self.levels[j].blocks
                if held:
                    blocks = [b for b in blocks if b not in held]
        _discard_all(level.index.holders, blocks, level.bit)

    def probe(self, blocks, start: int) -> list:
        """The levels holding blocks[start:], up to the first block no level holds, as runs:
        [level, count] for each stretch of consecutive blocks whose fastest holder is that
        level (an index into `levels`). Nothing moves."""
        runs = []
        held = [level.blocks for level in self.levels]
        run = None
        last = -1
        for i in range(start, len(blocks)):
            block = blocks[i]
            k = 0
            for level in held:
                if block in level:
                    break
                k += 1
            else:
                break
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
            i += n
            if not level.shared:
                part = blocks[i - n:i]
                below = level.blocks
                for block in part:
                    below.pop(block, None)  # (None: a block that repeats in the prompt left already)
                if level.index is not None:
                    self._untier(part, k)
        # The loaded blocks into HBM, then every block up to the cut the most recently used, head
        # last: the loaded ones (touched last to first) first, then the prefix HBM held (whose
        # moves put it after them), the same order as touching blocks[:i] last to first.
        move = held.move_to_end
        get = holders.get if holders is not None else None
        for j in range(i - 1, start - 1, -1):
            block = blocks[j]
            if block in held:
                move(block)
            else:
                held[block] = None
                if get is not None:
                    holders[block] = get(block, 0) | bit
        for j in range(start - 1, -1, -1):
            move(blocks[j])


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
    in tier_indexes[0] when given: the router asks whether an instance holds a block in any of
    its tiers, so a block moving from one tier to the next changes no index) and the cluster's
    shared `store`."""
    block_bytes = block_tokens * float(kv_bytes_per_token)
    bit = 1 << int(instance)
    tier_index = tier_indexes[0] if tier_indexes else None
    levels = [TierLru(t, t.capacity_blocks(block_bytes), tier_index, bit) for t in tiers]
    if store is not None:
        levels.append(store)
    return PrefixCache(block_tokens, instance, index, tuple(levels), block_bytes)
