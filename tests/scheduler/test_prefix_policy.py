"""Prefix-aware routing on hand-built snapshots (exact picks), and the engines both
runtimes build with prefix caches registered in the snapshot's index."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, SloConfig, parse_cluster
from scheduler.plugins.prefix import PrefixAffinity, PrefixAffinityParams
from scheduler.registry import build_policy
from scheduler.types import Request, Stage

H100 = {"device": "h100-sxm", "model": "llama-3.1-8b", "chips_per_instance": 1}


def colocated(instances=4, **top):
    return Cluster(parse_cluster({"name": "t", "policy": "prefix-aware",
                                  "pools": [{"name": "h", "instances": instances, "role": "both", **H100}], **top}))


def with_caches(cl):
    snap = cl.snapshot()
    engines = cl.make_engines(snap, prefix_caching=True)
    return snap, engines


def set_seqs(snap, i, queued):
    snap.update(i, queued, 0, 0, snap._kv_capacity[i], 0.0)


def decide(cl, snap, req, params=None):
    return build_policy("prefix-aware", cl.config, overrides=params).decide(req, snap, 0.0,
                                                                           np.random.default_rng(0))


@pytest.mark.parametrize("queued, blocks, expected, why", [
    ((0, 0, 0, 0), (1, 2, 3, 4), 2, "idle cluster: the instance holding 3 of 4 blocks"),
    ((0, 0, 0, 0), (1, 2, 9), 2, "instances 1 and 2 both hold 2 blocks; equal loads, tie spread"),
    ((0, 0, 0, 0), (5, 6), None, "nobody holds the first block: plain least-loaded"),
    ((4, 4, 4, 4), (1, 2, 3, 4), 2, "equal loads: affinity decides"),
    ((0, 0, 2, 0), (1, 2, 3, 4), 1, "instance 2 has 2 queued with 2 in the cluster: over the bound "
                                    "ceil(1.25 * 3 / 4) = 1, so the next best cache, instance 1"),
    ((8, 8, 10, 8), (1, 2, 3, 4), 2, "10 + 1 <= ceil(1.25 * 35 / 4) = 11: within the bound"),
    ((8, 8, 12, 8), (1, 2, 3, 4), 1, "12 + 1 > ceil(1.25 * 37 / 4) = 12: over the bound"),
    ((0, 0, 0, 0), (), None, "no block hashes: least-loaded"),
])
def test_prefix_aware_prefers_cached_prefixes_within_the_load_bound(queued, blocks, expected, why):
    cl = colocated()
    snap, engines = with_caches(cl)
    engines[1].prefix.insert((1, 2))
    engines[2].prefix.insert((1, 2, 3))
    for i, q in enumerate(queued):
        set_seqs(snap, i, q)
    picked = decide(cl, snap, Request(7, 4 * 512, 10, 0.0, block_hashes=blocks)).prefill_instance
    if expected is None:
        least = min(queued)
        assert queued[picked] == least, why
    elif blocks == (1, 2, 9):
        assert picked in (1, 2), why
    else:
        assert picked == expected, why


def test_affinity_scores_are_the_cached_share_of_the_prompt():
    cl = colocated(3)
    snap, engines = with_caches(cl)
    engines[0].prefix.insert((1, 2))
    engines[1].prefix.insert((1, 2, 3, 4))
    scorer = PrefixAffinity(PrefixAffinityParams(), SloConfig())
    cands = np.arange(3)
    req = Request(0, 1500, 10, 0.0, block_hashes=(1, 2, 3))
    # 2 blocks = 1024 of 1500 tokens; 3 blocks would be 1536 > 1499: capped at inp - 1.
    assert scorer.score(req, snap, Stage.PREFILL, cands, 0.0, -1).tolist() == pytest.approx(
        [1024 / 1500, 1499 / 1500, 0.0])
    assert scorer.score(req, snap, Stage.DECODE, cands, 0.0, 0).tolist() == [0.0, 0.0, 0.0]
    bare = cl.snapshot()  # a runtime without hashes attaches no index
    assert scorer.score(req, bare, Stage.PREFILL, cands, 0.0, -1).tolist() == [0.0, 0.0, 0.0]


def test_make_engines_gives_caches_to_prefill_capable_instances_only():
    cl = Cluster(parse_cluster({"name": "t", "prefix_cache": {"block_tokens": 64}, "pools": [
        {"name": "p", "instances": 2, "role": "prefill", **H100},
        {"name": "d", "instances": 1, "role": "decode", **H100},
        {"name": "c", "instances": 1, "role": "both", **H100}]}))
    snap, engines = with_caches(cl)
    assert [e.prefix is not None for e in engines] == [True, True, False, True]
    assert snap.prefix_block_tokens == 64 and engines[0].prefix.block_tokens == 64
    engines[3].prefix.insert((5,))
    assert snap.prefix_index.cached_blocks((5,)) == {3: 1}
    plain_snap = cl.snapshot()
    assert all(e.prefix is None for e in cl.make_engines(plain_snap, prefix_caching=False))
    assert plain_snap.prefix_index is None
    off = Cluster(parse_cluster({"name": "t", "prefix_cache": False,
                                 "pools": [{"name": "c", "instances": 1, "role": "both", **H100}]}))
    assert off.make_engines(off.snapshot(), prefix_caching=True)[0].prefix is None


@pytest.mark.parametrize("raw, message", [
    ({"block_tokens": 0}, "prefix_cache.block_tokens"),
    ({"block_tokens": 1.5}, "prefix_cache.block_tokens"),
    ({"enabled": "yes"}, "prefix_cache.enabled"),
    ({"size": 3}, "prefix_cache.size"),
    ("on", "prefix_cache"),
])
def test_bad_prefix_cache_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_cluster({"name": "t", "prefix_cache": raw,
                       "pools": [{"name": "c", "instances": 1, "role": "both", **H100}]})


@pytest.mark.parametrize("raw, expected", [
    (None, (True, 512)), (False, (False, 512)), ({"enabled": True}, (True, 512)), ({"block_tokens": 64}, (True, 64)),
])
def test_prefix_cache_config_defaults(raw, expected):
    doc = {"name": "t", "pools": [{"name": "c", "instances": 1, "role": "both", **H100}]}
    if raw is not None:
        doc["prefix_cache"] = raw
    cfg = parse_cluster(doc).prefix_cache
    assert (cfg.enabled, cfg.block_tokens) == expected


def test_bad_load_slack_names_the_key():
    cl = colocated()
    with pytest.raises(ConfigError, match="prefix_load_slack"):
        build_policy("prefix-aware", cl.config, overrides={"prefix_load_slack": -1})
