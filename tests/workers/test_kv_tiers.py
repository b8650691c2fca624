"""KV tiers below HBM: demotion down the levels, loading a prefix found below HBM (overlapped
with compute, or recomputed when that is faster), the shared store, and the router's view."""
from __future__ import annotations

import pytest

from workers.engine import ROLE_BOTH, BatchEngine
from workers.kv_tiers import KvTier, StoreWrite, TierLru
from workers.prefix_cache import PrefixIndex, tiered_cache

from tests.workers.test_engine import HandPerf
from tests.workers.test_prefix_cache import run_until_idle

BLOCK = 100  # tokens per block
KV_BYTES = 1000  # per token: a block is 1e5 bytes


class KvPerf(HandPerf):
    """HandPerf (prefill: 1 ms per computed token) with a KV size per token."""

    kv_bytes_per_token = KV_BYTES


def tier(name, blocks=100, read_gb_s=1.0, write_gb_s=None, write=StoreWrite.EVICT):
    return KvTier(name, capacity_gb=blocks * BLOCK * KV_BYTES / 1e9, read_gb_s=read_gb_s,
                  write_gb_s=read_gb_s if write_gb_s is None else write_gb_s, write=write)


def engine(tiers, store=None, token_budget=0, instance=0, index=None, tier_indexes=()):
    prefix = tiered_cache(BLOCK, instance, index, tiers, KV_BYTES, tier_indexes, store)
    return BatchEngine(KvPerf(kv_capacity_tokens=1000), ROLE_BOTH, prefix=prefix, token_budget=token_budget)


def test_evictions_demote_level_by_level_and_fall_out_of_the_store():
    store = TierLru(tier("store", blocks=2), 2, shared=True)
    cache = tiered_cache(BLOCK, 0, None, (tier("host", 2), tier("ssd", 2)), KV_BYTES, (), store)
    cache.insert(list(range(1, 9)))  # head last: block 8 is the least recently used
    cache.trim(0)
    host, ssd, _ = cache.levels
    assert (list(host.blocks), list(ssd.blocks), list(store.blocks)) == ([2, 1], [4, 3], [6, 5])
    assert (host.written_bytes, ssd.written_bytes, store.written_bytes) == (8e5, 6e5, 4e5)


def cold_then_evicted(eng):
    """Prompt 1 (blocks 1-4) is prefilled, then pushed out of HBM by a 900-token prompt."""
    eng.submit_prefill(1, 400, 1, (1, 2, 3, 4))
    _, t = run_until_idle(eng)
    eng.submit_prefill(2, 900, 1, tuple(range(5, 14)))
    _, t = run_until_idle(eng, t)
    assert 1 not in eng.prefix.blocks
    return t


@pytest.mark.parametrize(("read_gb_s", "hit_tokens", "prefill_s"), [
    (1.0, 400, 0.100),  # 0.4 ms of loading hides under 100 ms computing the new 100 tokens
    (0.002, 400, 0.200),  # loading 4e5 bytes takes 200 ms: longer than the compute, shorter than 500 ms recompute
    (0.0001, 0, 0.500),  # 4 s to load: the engine recomputes all 500 tokens
])
def test_a_prefix_below_hbm_loads_or_is_recomputed(read_gb_s, hit_tokens, prefill_s):
    eng = engine((tier("host", read_gb_s=read_gb_s),))
    t = cold_then_evicted(eng)
    eng.submit_prefill(3, 500, 1, (1, 2, 3, 4, 99))
    eng.poke(t, [])
    assert eng.next_wake_s - t == pytest.approx(prefill_s)
    run_until_idle(eng, t)
    assert eng.prefix_hit_tokens == hit_tokens
    assert eng.prefix.hit_tokens == [hit_tokens]
    host = eng.prefix.levels[0]
    assert host.read_bytes == (4e5 if hit_tokens else 0.0)
    assert (1 in host) == (not hit_tokens)  # a loaded block leaves the host tier for HBM


def test_chunked_prefill_waits_for_a_load_longer_than_its_first_iteration():
    eng = engine((tier("host", read_gb_s=0.002),), token_budget=1000)
    t = cold_then_evicted(eng)
    eng.submit_prefill(3, 500, 1, (1, 2, 3, 4, 99))
    eng.poke(t, [])
    assert eng.next_wake_s - t == pytest.approx(0.200)
    assert eng.prefix_hit_tokens == 400


def test_the_shared_store_serves_blocks_another_instance_evicted():
    store = TierLru(tier("store"), 100, shared=True)
    a = engine((), store, instance=0)
    b = engine((), store, instance=1)
    cold_then_evicted(a)
    assert 1 in store
    b.submit_prefill(3, 500, 1, (1, 2, 3, 4, 99))
    run_until_idle(b)
    assert b.prefix_hit_tokens == 400 and b.prefix.hit_tokens == [400]
    assert 1 in store and store.read_bytes == 4e5  # a read leaves the shared copy


def test_a_write_through_store_takes_every_prefill_once_and_serves_other_instances():
    store = TierLru(tier("store", write=StoreWrite.THROUGH), 100, shared=True)
    a = engine((), store, instance=0)
    b = engine((), store, instance=1)
    a.submit_prefill(1, 400, 1, (1, 2, 3, 4))
    run_until_idle(a)
    # Written at the prefill, before anything is evicted from a's HBM.
    assert list(store.blocks) == [4, 3, 2, 1] and 1 in a.prefix.blocks and store.written_bytes == 4e5
    b.submit_prefill(2, 500, 1, (1, 2, 3, 4, 5))
    run_until_idle(b)
    assert b.prefix.hit_tokens == [400] and store.read_bytes == 4e5
    assert store.written_bytes == 5e5  # only block 5 was new: a block is written once


@pytest.mark.parametrize(("write", "write_gb_s", "prefill_s", "stored"), [
    (StoreWrite.THROUGH, 1.0, 0.400, [4, 3, 2, 1]),  # 0.4 ms of writing hides under 400 ms of compute
    (StoreWrite.THROUGH, 0.0005, 0.800, [4, 3, 2, 1]),  # 4e5 bytes at 0.5 MB/s: the prefill waits 800 ms
    (StoreWrite.EVICT, 0.0005, 0.400, []),  # nothing is written until HBM evicts it
])
def test_write_through_costs_the_prefill_its_write_time(write, write_gb_s, prefill_s, stored):
    store = TierLru(tier("store", write_gb_s=write_gb_s, write=write), 100, shared=True)
    eng = engine((), store)
    eng.submit_prefill(1, 400, 1, (1, 2, 3, 4))
    eng.poke(0.0, [])
    assert eng.next_wake_s == pytest.approx(prefill_s)
    run_until_idle(eng)
    assert list(store.blocks) == stored


def test_a_write_through_store_takes_no_demotions():
    store = TierLru(tier("store", blocks=2, write=StoreWrite.THROUGH), 2, shared=True)
    cache = tiered_cache(BLOCK, 0, None, (tier("host", 2),), KV_BYTES, (), store)
    cache.insert([1, 2, 3])  # written through: the store keeps the two most recent (head last)
    cache.trim(0)
    host = cache.levels[0]
    assert list(store.blocks) == [2, 1] and list(host.blocks) == [2, 1] and store.written_bytes == 3e5


def test_hit_tokens_stop_short_of_the_last_prompt_token():
    eng = engine((tier("host"),))
    t = cold_then_evicted(eng)
    eng.submit_prefill(3, 400, 1, (1, 2, 3, 4))
    run_until_idle(eng, t)
    assert eng.prefix.hit_tokens == [399] and eng.prefix_hit_tokens == 399


def test_router_index_sees_every_level_and_the_store():
    hbm, host = PrefixIndex(), PrefixIndex()
    store = TierLru(tier("store"), 100, shared=True)
    hbm.add(1, 0b001)
    hbm.add(2, 0b001)
    host.add(1, 0b010)
    host.add(2, 0b010)
    host.add(3, 0b010)
    store.put(4)
    blocks = [1, 2, 3, 4, 5]
    assert hbm.cached_blocks(blocks) == {0: 2}
    assert hbm.reach_blocks(blocks, (host,), None, 0b111) == ({0: 2}, {0: 2, 1: 3}, None)
    assert hbm.reach_blocks(blocks, (host,), store, 0b111) == ({0: 2}, {0: 2, 1: 3}, {0: 2, 1: 4})
    assert hbm.reach_blocks([4, 1], (host,), store, 0b111) == ({}, {}, {2: 1, 0: 2, 1: 2})


def test_reach_blocks_matches_each_level_walked_on_its_own():
    """The one-pass walk gives, for every instance, the leading blocks it holds in HBM, in HBM
    or its own tiers, and with the shared store too: as walking each level's masks apart."""
    import random

    from workers.prefix_cache import _leading

    rng = random.Random(7)
    everyone = 0b1111
    for _ in range(300):
        hbm, host = PrefixIndex(), PrefixIndex()
        store = TierLru(tier("store"), 100, shared=True)
        for b in range(12):
            hbm.holders[b] = rng.choice((0, 0, 1, 2, 5, 15))
            host.holders[b] = rng.choice((0, 0, 2, 8, 12))
            if rng.random() < 0.5:
                store.put(b)
        for index in (hbm, host):
            index.holders = {b: m for b, m in index.holders.items() if m}
        prompt = list(range(rng.randrange(13)))
        here = [hbm.holders.get(b, 0) for b in prompt]
        local = [m | host.holders.get(b, 0) for m, b in zip(here, prompt)]
        wide = [everyone if b in store else m for m, b in zip(local, prompt)]
        want = (_leading(here), _leading(local), _leading(wide) if len(store) else None)
        assert hbm.reach_blocks(prompt, (host,), store, everyone) == want, prompt
        assert hbm.reach_blocks(prompt, (host,), None, everyone) == want[:2] + (None,)


def test_a_block_repeated_in_a_prompt_loads_from_a_tier_without_failing():
    """Trace hash ids are not checked for repeats: a prompt naming one block twice still loads."""
    cache = tiered_cache(BLOCK, 0, PrefixIndex(), (tier("host"),), KV_BYTES, (PrefixIndex(),))
    prompt = [7, 8, 7, 9]
    cache.insert(prompt)
    cache.trim(0)  # every block demoted to host
    cached, load_s, taken = cache.plan_load(prompt, cache.match(prompt), 400, KvPerf().prefill)
    assert taken == ((0, 4),) and cached == 399
    cache.load(prompt, 0, taken, cached, load_s)
    assert list(cache.blocks) == [9, 8, 7] and len(cache.levels[0]) == 0 and cache.hit_tokens == [399]
