"""The prefix cache's levels below HBM against a plain model of them: one LRU (OrderedDict) per
level, demotions passed down in batches, and the router's view of an instance's tiers as the
union of what each holds (the cache keeps one index for all of them, updated only when a block
enters or leaves the last of the instance's tiers to hold it). Hypothesis drives random inserts,
lookups, trims and loads, with repeated blocks, copies in several tiers and tiers of any size
(zero included), and after every step compares each level's blocks in LRU order, the bytes
moved, and the router's indexes."""
from __future__ import annotations

from collections import OrderedDict

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from workers.kv_tiers import KvTier, StoreWrite, TierLru
from workers.prefix_cache import PrefixIndex, tiered_cache

BLOCK = 10  # tokens per block
KV_BYTES = 100  # per token: a block is 1,000 bytes
SIZE = BLOCK * KV_BYTES

prompts = st.lists(st.integers(0, 5), min_size=1, max_size=7)  # few ids: repeats, and copies in several tiers


def tier(name: str, blocks: int, write: StoreWrite = StoreWrite.EVICT) -> KvTier:
    return KvTier(name, capacity_gb=blocks * SIZE / 1e9, read_gb_s=1.0, write_gb_s=1.0, write=write)


class Model:
    """HBM, each tier and the store as an LRU of its own, least recently used first."""

    def __init__(self, caps: list[int], store_cap: int | None, through: bool):
        self.hbm: OrderedDict = OrderedDict()
        self.tiers = [OrderedDict() for _ in caps]
        self.caps = list(caps)
        self.store = OrderedDict() if store_cap is not None else None
        self.store_cap = store_cap
        self.through = through
        levels = len(caps) + (store_cap is not None)
        self.written = [0] * levels
        self.read = [0] * levels

    def insert(self, blocks) -> None:
        for b in reversed(blocks):
            self._touch(self.hbm, b)
        if self.through:
            new = 0
            for b in reversed(blocks):
                new += self._touch(self.store, b)
            self.written[-1] += new
            while len(self.store) > self.store_cap:
                self.store.popitem(last=False)

    @staticmethod
    def _touch(lru: OrderedDict, b) -> int:
        if b in lru:
            lru.move_to_end(b)
            return 0
        lru[b] = None
        return 1

    def match(self, blocks) -> int:
        n = 0
        while n < len(blocks) and blocks[n] in self.hbm:
            n += 1
        for i in range(n - 1, -1, -1):
            self.hbm.move_to_end(blocks[i])
        return n

    def trim(self, keep: int) -> None:
        moving = [self.hbm.popitem(last=False)[0] for _ in range(max(len(self.hbm) - keep, 0))]
        levels = list(zip(self.tiers, self.caps))
        if self.store is not None and not self.through:
            levels.append((self.store, self.store_cap))
        for k, (lru, cap) in enumerate(levels):
            for b in moving:
                self.written[k] += self._touch(lru, b)
            over = len(lru) - cap
            if over <= 0:
                return
            moving = [lru.popitem(last=False)[0] for _ in range(over)]

    def probe(self, blocks, start: int) -> list:
        levels = self.tiers + ([self.store] if self.store is not None else [])
        runs: list = []
        for b in blocks[start:]:
            k = next((k for k, lru in enumerate(levels) if b in lru), None)
            if k is None:
                break
            if runs and runs[-1][0] == k:
                runs[-1][1] += 1
            else:
                runs.append([k, 1])
        return runs

    def promote(self, blocks, start: int, runs) -> None:
        i = start
        for k, n in runs:
            self.read[k] += n
            part = blocks[i:i + n]
            i += n
            if k < len(self.tiers):
                for b in part:
                    self.tiers[k].pop(b, None)
            for b in part:
                self.hbm[b] = None
        for b in reversed(blocks[:i]):
            self.hbm.move_to_end(b)


class TiersAgainstModel(RuleBasedStateMachine):
    @initialize(caps=st.lists(st.integers(0, 4), max_size=3), store=st.sampled_from([None, "evict", "through"]),
                store_cap=st.integers(0, 6))
    def build(self, caps, store, store_cap):
        self.index, self.tier_index = PrefixIndex(), PrefixIndex()
        shared = None
        if store is not None:
            write = StoreWrite.THROUGH if store == "through" else StoreWrite.EVICT
            shared = TierLru(tier("store", store_cap, write), store_cap, shared=True)
        self.cache = tiered_cache(BLOCK, 0, self.index, [tier(f"t{k}", c) for k, c in enumerate(caps)], KV_BYTES,
                                  (self.tier_index,), shared)
        self.model = Model(caps, store_cap if store is not None else None, store == "through")

    @rule(blocks=prompts)
    def insert(self, blocks):
        self.cache.insert(blocks)
        self.model.insert(blocks)

    @rule(blocks=prompts)
    def match(self, blocks):
        assert self.cache.match(blocks) == self.model.match(blocks)

    @rule(keep=st.integers(0, 6))
    def trim(self, keep):
        self.cache.trim(keep * BLOCK)
        self.model.trim(keep)

    @precondition(lambda self: self.cache.deep)
    @rule(blocks=prompts, data=st.data())
    def load(self, blocks, data):
        held = self.cache.match(blocks)
        assert held == self.model.match(blocks)
        runs = self.cache.probe(blocks, held)
        assert runs == self.model.probe(blocks, held)
        if runs:
            taken = [tuple(r) for r in runs[:data.draw(st.integers(1, len(runs)))]]
            self.cache.promote(blocks, held, taken)
            self.model.promote(blocks, held, taken)

    @invariant()
    def same_levels(self):
        cache, model = self.cache, self.model
        assert list(cache.blocks) == list(model.hbm)
        local = [lv for lv in cache.levels if not lv.shared]
        assert [list(lv.blocks) for lv in local] == [list(lru) for lru in model.tiers]
        assert [len(lv) for lv in local] == [len(lru) for lru in model.tiers]
        for lv, lru in zip(local, model.tiers):
            assert all((b in lv) == (b in lru) for b in range(6))
        if model.store is not None:
            assert list(cache.levels[-1].blocks) == list(model.store)
        assert cache.written_bytes == [n * SIZE for n in model.written]
        assert cache.read_bytes == [n * SIZE for n in model.read]
        assert [lv.written_bytes for lv in cache.levels] == [n * SIZE for n in model.written]
        assert [lv.read_bytes for lv in cache.levels] == [n * SIZE for n in model.read]
        # The router: HBM in one index, every tier of the instance in the other.
        assert self.index.holders == dict.fromkeys(model.hbm, 1)
        assert self.tier_index.holders == {b: 1 for lru in model.tiers for b in lru}


TiersAgainstModel.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_tiers_against_model = TiersAgainstModel.TestCase
