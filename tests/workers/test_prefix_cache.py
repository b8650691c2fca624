"""Prefix caching: the router's block index, one instance's LRU cache, and the engine
computing only the prompt tokens past a cached prefix."""
from __future__ import annotations

import pytest

from workers.engine import FIRST_TOKEN, ROLE_BOTH, ROLE_PREFILL, BatchEngine
from workers.prefix_cache import PrefixCache, PrefixIndex

from tests.workers.test_engine import HandPerf


class PairsPerf(HandPerf):
    """Records each prefill's (tokens, attention pairs, sequences)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.prefills = []

    def prefill(self, tokens, attn_pairs, seqs):
        self.prefills.append((tokens, attn_pairs, seqs))
        return super().prefill(tokens, attn_pairs, seqs)

    def mixed(self, batch, ctx_sum0, tokens, pairs, prefix_tokens, seqs, steps=1):
        self.prefills.append((tokens, pairs, prefix_tokens, steps))
        return super().mixed(batch, ctx_sum0, tokens, pairs, prefix_tokens, seqs, steps)


def test_index_reports_each_instances_leading_blocks():
    index = PrefixIndex()
    for instance, blocks in ((0, [1, 2, 3]), (1, [1, 2]), (2, [1, 9]), (3, [2, 3])):
        for b in blocks:
            index.add(b, 1 << instance)
    # Instance 3 holds blocks 2 and 3 but not the start: no usable prefix.
    assert index.cached_blocks([1, 2, 3, 4]) == {0: 3, 1: 2, 2: 1}
    assert index.cached_blocks([1, 2, 3]) == {0: 3, 1: 2, 2: 1}
    assert index.cached_blocks([7, 1]) == {}
    assert index.cached_blocks([]) == {}
    index.discard(2, 1 << 0)
    assert index.cached_blocks([1, 2, 3]) == {0: 1, 1: 2, 2: 1}
    index.discard(1, 0b111)
    assert index.cached_blocks([1, 2]) == {}
    assert 1 not in index.holders  # no empty masks left behind


def test_index_handles_instance_ids_beyond_64():
    index = PrefixIndex()
    cache = PrefixCache(16, instance=100, index=index)
    cache.insert([5, 6])
    assert index.cached_blocks([5, 6, 7]) == {100: 2}


def test_cache_evicts_tails_before_the_shared_head():
    index = PrefixIndex()
    cache = PrefixCache(10, instance=0, index=index)
    cache.insert([1, 2, 3])  # system prompt 1, then 2, 3
    cache.insert([1, 4, 5])  # another conversation on the same system prompt
    assert list(cache.blocks) == [3, 2, 5, 4, 1]  # least recently used first; the shared head last
    cache.trim(30)  # room for 3 blocks
    assert list(cache.blocks) == [5, 4, 1]
    assert index.cached_blocks([1, 2]) == {0: 1}
    assert cache.match([1, 4, 9]) == 2
    assert cache.match([2, 4]) == 0
    cache.trim(9)  # less than one block
    assert len(cache) == 0 and index.holders == {}


def test_cache_rejects_nonpositive_blocks():
    with pytest.raises(ValueError, match="block_tokens"):
        PrefixCache(0)


def run_until_idle(eng, t=0.0):
    events = []
    eng.poke(t, events)
    while eng.activity:
        t = eng.next_wake_s
        eng.wake(t, events)
    return events, t


def test_engine_computes_only_tokens_past_the_cached_prefix():
    perf = PairsPerf()
    eng = BatchEngine(perf, ROLE_BOTH, prefix=PrefixCache(100))
    eng.submit_prefill(1, 350, 2, (11, 12, 13, 14))
    events, t = run_until_idle(eng)
    assert perf.prefills[-1] == (350, 350 * 351 / 2, 1)  # cold: everything computed
    # Same first three blocks (300 tokens), then a new one.
    eng.submit_prefill(2, 380, 2, (11, 12, 13, 99))
    events, t = run_until_idle(eng, t)
    new = 80
    assert perf.prefills[-1] == (new, new * 300 + new * (new + 1) / 2, 1)
    assert eng.prefix_hit_tokens == 300
    assert eng.prefill_tokens == 350 + 80
    first = [e for e in events if e[0] == FIRST_TOKEN]
    assert first[0][3] == pytest.approx(0.080)  # energy (1 J/s) for 80 ms of prefill, not 380
    # A repeated prompt still computes its last token (it yields the first output token).
    eng.submit_prefill(3, 380, 2, (11, 12, 13, 99))
    run_until_idle(eng, t)
    assert perf.prefills[-1][0] == 1
    assert eng.prefix_hit_tokens == 300 + 379


def test_engine_without_hashes_or_cache_is_unchanged():
    a, b = PairsPerf(), PairsPerf()
    cached = BatchEngine(a, ROLE_BOTH, prefix=PrefixCache(100))
    plain = BatchEngine(b, ROLE_BOTH)
    for eng in (cached, plain):
        eng.submit_prefill(1, 300, 3)
        eng.submit_prefill(2, 300, 3, (1, 2, 3))  # ignored by the engine without a cache
        run_until_idle(eng)
    assert a.prefills == b.prefills == [(600, 2 * 300 * 301 / 2, 2)]
    assert plain.prefix_hit_tokens == 0 and not plain.prompt_blocks


def test_cache_lives_in_free_kv_and_is_trimmed_on_admission():
    perf = PairsPerf(kv_capacity_tokens=1000)
    eng = BatchEngine(perf, ROLE_PREFILL, prefix=PrefixCache(100))
    eng.submit_prefill(1, 400, 5, (1, 2, 3, 4))
    events, t = run_until_idle(eng)
    # The prompt's KV is held for the hand-over (400 tokens): the cache fits in the other 600.
    assert len(eng.prefix) == 4
    eng.submit_prefill(2, 500, 5, (7, 8, 9, 10, 11))
    run_until_idle(eng, t)
    # 900 tokens held: room for one cached block, the most recent prompt's head.
    assert list(eng.prefix.blocks) == [7]
    eng.release(1)
    eng.release(2)
    assert eng.kv_reserved == 0


def test_cancelled_prompt_drops_its_blocks():
    eng = BatchEngine(PairsPerf(), ROLE_BOTH, prefix=PrefixCache(100))
    eng.submit_prefill(1, 300, 3, (1, 2, 3))
    assert eng.remove_waiting(1) and not eng.prompt_blocks


def test_chunks_of_a_cached_prompt_attend_to_the_cached_prefix():
    perf = PairsPerf()
    eng = BatchEngine(perf, ROLE_PREFILL, prefix=PrefixCache(100), token_budget=50)
    eng.submit_prefill(1, 300, 2, (11, 12, 13))
    events, t = run_until_idle(eng)
    eng.release(1)
    # Same first two blocks (200 tokens cached), 180 new tokens in chunks of 50: three full
    # chunks as one run, then 30; each chunk reads the prefix before it, cached or computed.
    eng.submit_prefill(2, 380, 2, (11, 12, 99, 98))
    run_until_idle(eng, t)
    assert perf.prefills[-2:] == [(50, 50 * 200 + 50 * 51 / 2, 200, 3), (30, 30 * 350 + 30 * 31 / 2, 350, 1)]
    assert eng.prefix_hit_tokens == 200 and eng.prefill_tokens == 300 + 180

