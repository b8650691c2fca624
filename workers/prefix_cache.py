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
"""
from __future__ import annotations

from collections import OrderedDict


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

    def cached_blocks(self, blocks) -> dict[int, int]:
        """Instance id -> number of leading `blocks` it holds, for instances holding at least one.

        The set of instances holding blocks[0..k] only shrinks with k, so the walk
        stops at the first block nobody holds; each instance is visited once, when
        it drops out (or at the end).
        """
        if not blocks:
            return {}
        holders = self.holders
        alive = holders.get(blocks[0], 0)
        depth: dict[int, int] = {}
        if not alive:
            return depth
        k = 1
        for block in blocks[1:]:
            still = alive & holders.get(block, 0)
            dropped = alive ^ still
            while dropped:
                low = dropped & -dropped
                depth[low.bit_length() - 1] = k
                dropped ^= low
            alive = still
            if not alive:
                return depth
            k += 1
        while alive:
            low = alive & -alive
            depth[low.bit_length() - 1] = k
            alive ^= low
        return depth


class PrefixCache:
    """One instance's cached prompt blocks, least recently used first."""

    __slots__ = ("block_tokens", "bit", "index", "blocks")

    def __init__(self, block_tokens: int, instance: int = 0, index: PrefixIndex | None = None):
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        self.block_tokens = int(block_tokens)
        self.bit = 1 << int(instance)
        self.index = index
        self.blocks: OrderedDict[int, None] = OrderedDict()

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
        held = self.blocks
        index = self.index
        bit = self.bit
        for i in range(len(blocks) - 1, -1, -1):
            block = blocks[i]
            if block in held:
                held.move_to_end(block)
            else:
                held[block] = None
                if index is not None:
                    index.add(block, bit)

    def trim(self, max_tokens: int) -> None:
        """Evict least recently used blocks until at most `max_tokens` are cached."""
        held = self.blocks
        keep = max(int(max_tokens), 0) // self.block_tokens
        if len(held) <= keep:
            return
        index = self.index
        bit = self.bit
        pop = held.popitem
        for _ in range(len(held) - keep):
            block, _ = pop(last=False)
            if index is not None:
                index.discard(block, bit)
