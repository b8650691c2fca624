"""Cluster YAML validation: every error names the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scheduler.config import ConfigError, load_cluster, parse_cluster
from scheduler.types import Role

CLUSTERS = Path(__file__).resolve().parents[2] / "deploy" / "clusters"

GOOD_POOL = {"name": "p", "device": "h100-sxm", "instances": 2, "model": "llama-3.1-8b", "role": "both"}


def doc(**pool_changes):
    pool = {**GOOD_POOL, **pool_changes}
    return {"name": "t", "pools": [{k: v for k, v in pool.items() if v is not None}]}


def test_minimal_cluster_defaults():
    cfg = parse_cluster(doc())
    assert cfg.pools[0].role == Role.BOTH
    assert cfg.pools[0].chips_per_instance is None
    assert cfg.policy.name == "slo-aware"
    assert cfg.pools[0].link_bytes_per_s == 400e9 / 8


@pytest.mark.parametrize("data, key", [
    (doc(device=None), "pools[0].device"),
    (doc(instances=0), "pools[0].instances"),
    (doc(instances=1.5), "pools[0].instances"),
    (doc(instances="two"), "pools[0].instances"),
    (doc(role="both-ways"), "pools[0].role"),
    (doc(quantization="int3"), "pools[0].quantization"),
    (doc(link_gbps=-1), "pools[0].link_gbps"),
    (doc(memory_utilization=1.5), "pools[0].memory_utilization"),
    (doc(colour="red"), "pools[0].colour"),
    ({"name": "t"}, "pools"),
    ({"name": "t", "pools": []}, "pools"),
    ({**doc(), "slo": {"ttft_s": 0}}, "slo.ttft_s"),
    ({**doc(), "slo": {"ttfb_s": 1}}, "slo.ttfb_s"),
    ({**doc(), "policy": {"scorers": {"least-loaded": "heavy"}}}, "policy.scorers.least-loaded"),
    ({**doc(), "policy": {"filters": "fits-memory"}}, "policy.filters"),
    ({**doc(), "extra": 1}, "extra"),
    ({"pools": [GOOD_POOL, GOOD_POOL]}, "pools[1].name"),
    ({"pools": [{**GOOD_POOL, "role": "prefill"}]}, "pools"),
])
def test_invalid_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_cluster(data, "c.yaml")
    assert f"key '{key}'" in str(err.value)
    assert str(err.value).startswith("c.yaml")


def test_policy_as_name_or_mapping():
    assert parse_cluster({**doc(), "policy": "round-robin"}).policy.name == "round-robin"
    cfg = parse_cluster({**doc(), "policy": {"name": "slo-aware", "scorers": {"least-loaded": 2}}})
    assert cfg.policy.scorers == (("least-loaded", 2.0),)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_cluster(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cluster(bad)


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({"chunked_prefill": "yes"}, "pools[0].chunked_prefill", "expected true or false"),
    ({"role": "decode", "chunked_prefill": True}, "pools[0].chunked_prefill", "a decode pool computes no prompts"),
    ({"token_budget": 4096}, "pools[0].token_budget", "applies only with chunked_prefill: true"),
    ({"chunked_prefill": True, "token_budget": 0}, "pools[0].token_budget", "must be > 0"),
    ({"chunked_prefill": True, "token_budget": 1.5}, "pools[0].token_budget", "expected an integer"),
    ({"chunked_prefill": True, "token_budget": 256}, "pools[0].token_budget", "must exceed max_batch"),
    ({"chunked_prefill": True, "max_batch": 8192}, "pools[0].token_budget", "must exceed max_batch"),
])
def test_chunked_prefill_keys_are_validated(changes, key, reason):
    with pytest.raises(ConfigError) as err:
        parse_cluster(doc(**changes), "c.yaml")
    assert f"c.yaml: key '{key}'" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(("changes", "chunked", "engine_budget"), [
    ({}, False, 0),  # prefill-first unless asked
    ({"chunked_prefill": False}, False, 0),
    ({"chunked_prefill": True}, True, 8192),  # vLLM v1's default on H100-class GPUs
    ({"chunked_prefill": True, "token_budget": 2048}, True, 2048),
    ({"chunked_prefill": True, "token_budget": 64, "max_batch": 16}, True, 64),
    ({"role": "prefill", "chunked_prefill": True, "token_budget": 100}, True, 100),  # no decode batch to leave room for
    ({"role": "decode", "chunked_prefill": False}, False, 0),
])
def test_chunked_prefill_keys(changes, chunked, engine_budget):
    pools = [{**GOOD_POOL, **changes}]
    if changes.get("role") in ("prefill", "decode"):
        other = "decode" if changes["role"] == "prefill" else "prefill"
        pools.append({**GOOD_POOL, "name": "q", "role": other})
    pool = parse_cluster({"name": "t", "pools": pools}).pools[0]
    assert (pool.chunked_prefill, pool.engine_token_budget) == (chunked, engine_budget)


@pytest.mark.parametrize("name", ["gpu-colocated", "gpu-disagg", "hybrid"])
def test_shipped_examples_parse(name):
    cfg = load_cluster(CLUSTERS / f"{name}.yaml")
    assert cfg.name == name
    assert yaml.safe_load((CLUSTERS / f"{name}.yaml").read_text())["pools"]
