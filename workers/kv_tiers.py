"""KV cache tiers below HBM: per-instance host/SSD tiers and a cluster-wide shared store.

A tier is a capacity, a read and a write bandwidth, and optional prices:
dollars per GB-hour of capacity and joules per GB moved. `TierLru` is one
tier's blocks, least recently used first. The prefix cache (workers/prefix_cache.py)
stacks them: HBM, then the instance's tiers fastest first, then the shared store.
A block evicted from one level demotes to the next (the shared store sits behind
every instance's last tier); a block found below HBM is promoted back into HBM
when a prompt loads it, leaving the local tier but staying in the shared
store, which every instance reads.

Demotions run in the background, off the prompt's critical path, as LMCache's
and vLLM's offloading connectors do: their bytes and energy are counted, their
time is not charged to a request. The store's `write` policy says when it is
written: `through` (Mooncake Store, LMCache: every prefill puts its blocks,
layer by layer beside compute, so a prefill lasts at least its write time) or
`evict` (it only takes what falls out of an instance's last tier).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

GB = 1e9

# Names with a fixed meaning in summaries (`prefix_hit_tokens_by_tier`), so not usable for a tier.
HBM = "hbm"
STORE = "store"


class StoreWrite(str, Enum):
    """When the shared store is written (kv_store.write)."""

    THROUGH = "through"  # every prefill's blocks, as they are computed
    EVICT = "evict"  # what falls out of an instance's last tier


@dataclass(frozen=True, slots=True)
class KvTier:
    """One tier's size and speed; prices are optional (0: not priced)."""

    name: str
    capacity_gb: float
    read_gb_s: float
    write_gb_s: float
    usd_per_gb_hour: float = 0.0
    energy_j_per_gb: float = 0.0
    write: StoreWrite = StoreWrite.EVICT  # the store's policy; a tier below HBM takes evictions only

    @property
    def read_bytes_per_s(self) -> float:
        return self.read_gb_s * GB

    @property
    def write_bytes_per_s(self) -> float:
        return self.write_gb_s * GB

    @property
    def energy_j_per_byte(self) -> float:
        return self.energy_j_per_gb / GB

    def capacity_blocks(self, block_bytes: float) -> int:
        return int(self.capacity_gb * GB // block_bytes) if block_bytes > 0 else 0


class TierLru:
    """One tier's blocks, least recently used first, at most `capacity` of them.

    `index` (a PrefixIndex, optional) learns which instance (`bit`) holds each block,
    so the router sees the tier; the shared store needs none (any instance reads it).
    """

    __slots__ = ("tier", "capacity", "blocks", "index", "bit", "shared", "written_bytes", "read_bytes")

    def __init__(self, tier: KvTier, capacity_blocks: int, index=None, bit: int = 0, shared: bool = False):
        self.tier = tier
        self.shared = shared  # the cluster's store: a read leaves the block in place
        self.capacity = int(capacity_blocks)
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.index = index
        self.bit = bit
        self.written_bytes = 0.0
        self.read_bytes = 0.0

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, block: int) -> bool:
        return block in self.blocks

    def put(self, block: int) -> list:
        """Keep `block` (most recently used); returns the blocks it pushed out, oldest first."""
        held = self.blocks
        if block in held:
            held.move_to_end(block)
            return []
        if self.capacity <= 0:
            return [block]
        held[block] = None
        if self.index is not None:
            self.index.add(block, self.bit)
        if len(held) <= self.capacity:
            return []
        out = []
        pop = held.popitem
        while len(held) > self.capacity:
            old, _ = pop(last=False)
            if self.index is not None:
                self.index.discard(old, self.bit)
            out.append(old)
        return out

    def take(self, block: int) -> None:
        """Remove a block promoted to a faster level."""
        del self.blocks[block]
        if self.index is not None:
            self.index.discard(block, self.bit)
