"""Cluster YAML: `kv_tiers` per pool and the cluster-wide `kv_store`, each error naming its key."""
from __future__ import annotations

import pytest

from scheduler.config import ConfigError, parse_cluster
from workers.kv_tiers import KvTier, StoreWrite
from workers.tier_media import MEDIA

GOOD_POOL = {"name": "p", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "both"}
HOST = {"name": "host", "capacity_gb": 512, "read_gb_s": 54.5, "write_gb_s": 54.5}
SSD = {"name": "ssd", "capacity_gb": 4000, "read_gb_s": 6, "write_gb_s": 3, "usd_per_gb_hour": 0.0001,
       "energy_j_per_gb": 2.5}
STORE = {"capacity_gb": 20000, "read_gb_s": 25, "write_gb_s": 25, "usd_per_gb_hour": 0.0001}


def doc(tiers=None, store=None, **pool):
    data = {"name": "t", "pools": [{**GOOD_POOL, **pool, **({} if tiers is None else {"kv_tiers": tiers})}]}
    if store is not None:
        data["kv_store"] = store
    return data


def test_tiers_and_store_parse_in_order_with_optional_prices():
    cfg = parse_cluster(doc([HOST, SSD], STORE))
    assert cfg.pools[0].kv_tiers == (KvTier("host", 512.0, 54.5, 54.5),
                                     KvTier("ssd", 4000.0, 6.0, 3.0, 0.0001, 2.5))
    assert cfg.kv_store == KvTier("store", 20000.0, 25.0, 25.0, 0.0001, 0.0, StoreWrite.THROUGH)


@pytest.mark.parametrize(("medium", "given", "energy_j_per_gb", "usd_per_gb_hour"), [
    ("dram", {}, MEDIA["dram"].energy_j_per_gb, MEDIA["dram"].usd_per_gb_hour),
    ("nvme", {"usd_per_gb_hour": 0.5}, MEDIA["nvme"].energy_j_per_gb, 0.5),  # a given figure wins
])
def test_a_medium_gives_sourced_defaults(medium, given, energy_j_per_gb, usd_per_gb_hour):
    tier = parse_cluster(doc([{**HOST, "medium": medium, **given}])).pools[0].kv_tiers[0]
    assert (tier.energy_j_per_gb, tier.usd_per_gb_hour) == (energy_j_per_gb, usd_per_gb_hour)
    assert energy_j_per_gb > 0 and usd_per_gb_hour > 0


@pytest.mark.parametrize(("write", "policy"), [("through", StoreWrite.THROUGH), ("evict", StoreWrite.EVICT)])
def test_store_write_policy_parses(write, policy):
    assert parse_cluster(doc(store={**STORE, "write": write})).kv_store.write == policy


def test_no_tiers_by_default():
    cfg = parse_cluster(doc())
    assert cfg.pools[0].kv_tiers == () and cfg.kv_store is None


@pytest.mark.parametrize(("data", "key", "reason"), [
    (doc({"name": "host"}), "pools[0].kv_tiers", "expected a list"),
    (doc([{**HOST, "capacity_gb": 0}]), "pools[0].kv_tiers[0].capacity_gb", "must be > 0"),
    (doc([{**HOST, "read_gb_s": "fast"}]), "pools[0].kv_tiers[0].read_gb_s", "expected a number"),
    (doc([{k: v for k, v in HOST.items() if k != "write_gb_s"}]), "pools[0].kv_tiers[0].write_gb_s", "missing"),
    (doc([{k: v for k, v in HOST.items() if k != "name"}]), "pools[0].kv_tiers[0].name", "missing"),
    (doc([HOST, HOST]), "pools[0].kv_tiers[1].name", "duplicate"),
    (doc([{**HOST, "name": "hbm"}]), "pools[0].kv_tiers[0].name", "reserved"),
    (doc([{**HOST, "name": "store"}]), "pools[0].kv_tiers[0].name", "reserved"),
    (doc([{**HOST, "usd_per_gb_hour": -1}]), "pools[0].kv_tiers[0].usd_per_gb_hour", "must be >= 0"),
    (doc([{**HOST, "colour": "red"}]), "pools[0].kv_tiers[0].colour", "unknown key"),
    (doc(store={**STORE, "name": "x"}), "kv_store.name", "unknown key"),
    (doc(store={**STORE, "write_gb_s": float("inf")}), "kv_store.write_gb_s", "finite"),
    (doc(store=[STORE]), "kv_store", "expected a mapping"),
    (doc(store={**STORE, "write": "back"}), "kv_store.write", "expected one of through, evict, got 'back'"),
    (doc([{**HOST, "write": "through"}]), "pools[0].kv_tiers[0].write", "unknown key"),
    (doc(store={**STORE, "medium": "tape"}), "kv_store.medium", "expected one of dram, nvme, rdma, got 'tape'"),
])
def test_invalid_tiers_name_the_key(data, key, reason):
    with pytest.raises(ConfigError) as err:
        parse_cluster(data, "c.yaml")
    assert f"c.yaml: key '{key}'" in str(err.value) and reason in str(err.value)


def test_decode_pool_refuses_tiers():
    data = {"pools": [{**GOOD_POOL, "role": "prefill"}, {**GOOD_POOL, "name": "d", "role": "decode", "kv_tiers": [HOST]}]}
    with pytest.raises(ConfigError, match=r"key 'pools\[1\].kv_tiers': a decode pool keeps no prefix cache"):
        parse_cluster(data, "c.yaml")
