"""Prefix-aware routing across tiers: HBM hit > local host/SSD > shared store > recompute,
still load-bounded, on clusters built from YAML with their engines' real caches."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.registry import build_policy
from scheduler.types import Request

POOL = {"name": "h", "instances": 4, "role": "both", "device": "h100-sxm", "model": "llama-3.1-8b",
        "chips_per_instance": 1, "kv_tiers": [{"name": "host", "capacity_gb": 64, "read_gb_s": 54.5,
                                               "write_gb_s": 54.5}]}
STORE = {"capacity_gb": 1000, "read_gb_s": 25, "write_gb_s": 25}


def tiered(store=True):
    cl = Cluster(parse_cluster({"name": "t", "policy": "prefix-aware", "pools": [POOL],
                                **({"kv_store": STORE} if store else {})}))
    snap = cl.snapshot()
    return cl, snap, cl.make_engines(snap, prefix_caching=True)


def demote(engine, blocks):
    """Put `blocks` in this instance's host tier (through HBM and an eviction)."""
    engine.prefix.insert(blocks)
    engine.prefix.trim(0)


def pick(cl, snap, blocks, queued=(0, 0, 0, 0)):
    for i, q in enumerate(queued):
        snap.update(i, q, 0, 0, snap._kv_capacity[i], 0.0)
    policy = build_policy("prefix-aware", cl.config)
    return policy.decide(Request(7, 8 * 512, 10, 0.0, block_hashes=blocks), snap, 0.0,
                         np.random.default_rng(0)).prefill_instance


@pytest.mark.parametrize(("setup", "blocks", "queued", "expected", "why"), [
    ({1: ("hbm", (1, 2)), 2: ("host", (1, 2, 3))}, (1, 2, 3, 4), (0, 0, 0, 0), 1,
     "2 blocks in HBM (2.0) beat 3 in host (1.5)"),
    ({1: ("hbm", (1,)), 2: ("host", (1, 2, 3, 4))}, (1, 2, 3, 4), (0, 0, 0, 0), 2,
     "4 blocks in host (2.0) beat 1 in HBM (1.0)"),
    ({0: ("store", (1, 2, 3, 4)), 3: ("host", (1, 2))}, (1, 2, 3, 4), (0, 0, 0, 0), 3,
     "everyone reaches 4 blocks through the store; instance 3 holds 2 of them locally"),
    ({1: ("hbm", (1, 2)), 2: ("host", (1, 2, 3))}, (1, 2, 3, 4), (0, 2, 0, 0), 2,
     "instance 1 is over the load bound: the host tier's copy is next"),
])
def test_tiered_affinity_orders_levels_within_the_load_bound(setup, blocks, queued, expected, why):
    cl, snap, engines = tiered()
    for i, (level, held) in setup.items():
        if level == "hbm":
            engines[i].prefix.insert(held)
        elif level == "host":
            demote(engines[i], held)
        else:
            store = engines[i].prefix.levels[-1]
            for b in held:
                store.put(b)
    assert pick(cl, snap, blocks, queued) == expected, why


def test_engines_share_one_store_and_register_their_tiers():
    cl, snap, engines = tiered()
    assert snap.prefix_store is engines[0].prefix.levels[-1] is engines[3].prefix.levels[-1]
    assert len(snap.prefix_tier_indexes) == 1
    demote(engines[2], (5, 6))
    assert snap.prefix_tier_indexes[0].cached_blocks((5, 6)) == {2: 2}
    host = engines[2].prefix.levels[0]
    assert host.capacity == int(64e9 // (512 * cl.pools[0].perf.kv_bytes_per_token))
