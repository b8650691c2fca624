"""`backend: openai` pools in the cluster YAML: what is accepted, and the error (file,
key, reason) for each way to get one wrong."""
from __future__ import annotations

import pytest

from scheduler.cluster import Cluster
from scheduler.config import Backend, ConfigError, LaunchConfig, parse_cluster
from workers.learned_perf import LearnedPerf
from workers.perf import InstancePerf

ENGINES = {"name": "vllm", "backend": "openai", "endpoints": ["http://10.0.0.5:8000", "http://10.0.0.6:8000/"],
           "model": "meta-llama/Llama-3.1-8B-Instruct"}
LAUNCH = {"command": ["vllm", "serve", "m", "--port", "{port}"], "instances": 2, "num_gpus": 1}


def doc(**changes):
    pool = {**ENGINES, **changes}
    return {"name": "real", "pools": [{k: v for k, v in pool.items() if v is not None}]}


def test_endpoints_make_one_instance_each_and_learn_speed_without_a_device():
    config = parse_cluster(doc(), "real.yaml")
    pool = config.pools[0]
    assert pool.backend == Backend.OPENAI and pool.instances == 2 and pool.device == ""
    assert pool.endpoints == ("http://10.0.0.5:8000", "http://10.0.0.6:8000")
    cluster = Cluster(config)
    perf = cluster.pools[0].perf
    assert isinstance(perf, LearnedPerf) and perf.model.name == "meta-llama/Llama-3.1-8B-Instruct"
    assert perf.kv_capacity_tokens == pool.context_tokens


def test_a_device_with_a_catalogued_model_predicts_from_the_performance_model():
    cluster = Cluster(parse_cluster(doc(device="h100-sxm", model="llama-3.1-8b"), "real.yaml"))
    assert isinstance(cluster.pools[0].perf, InstancePerf)


def test_launch_gives_the_instance_count():
    pool = parse_cluster(doc(endpoints=None, launch=LAUNCH), "real.yaml").pools[0]
    assert pool.instances == 2 and pool.launch == LaunchConfig(tuple(LAUNCH["command"]), 2, 1.0)


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({"backend": "grpc"}, "pools[0].backend", "unknown 'grpc'"),
    ({"endpoints": None}, "pools[0].endpoints", "either endpoints"),
    ({"launch": LAUNCH}, "pools[0].endpoints", "not both"),
    ({"endpoints": []}, "pools[0].endpoints", "non-empty list"),
    ({"endpoints": ["10.0.0.5:8000"]}, "pools[0].endpoints[0]", "base URL"),
    ({"endpoints": ["http://h:1/v1"]}, "pools[0].endpoints[0]", "no path"),
    ({"endpoints": ["http://h:1", "http://h:1/"]}, "pools[0].endpoints[1]", "duplicate"),
    ({"model": None}, "pools[0].model", "missing"),
    ({"role": "prefill"}, "pools[0].role", "role both"),
    ({"context_tokens": 0}, "pools[0].context_tokens", "must be > 0"),
    ({"quantization": "fp8"}, "pools[0].quantization", "set device"),
    ({"max_batch_tokens": 4}, "pools[0].max_batch_tokens", "unknown key"),
    ({"endpoints": None, "launch": {**LAUNCH, "command": ["vllm", "serve"]}}, "pools[0].launch.command",
     "must contain {port}"),
    ({"endpoints": None, "launch": {**LAUNCH, "command": "vllm serve"}}, "pools[0].launch.command", "list"),
    ({"endpoints": None, "launch": {**LAUNCH, "instances": 0}}, "pools[0].launch.instances", "must be > 0"),
    ({"endpoints": None, "launch": {**LAUNCH, "num_gpus": -1}}, "pools[0].launch.num_gpus", "must be >= 0"),
    ({"endpoints": None, "launch": {**LAUNCH, "gpus": 1}}, "pools[0].launch.gpus", "unknown key"),
    ({"endpoints": None, "launch": {**LAUNCH, "max_restarts": -1}}, "pools[0].launch.max_restarts", "must be >= 0"),
    ({"endpoints": None, "launch": {**LAUNCH, "max_restarts": 1.5}}, "pools[0].launch.max_restarts", "integer"),
])
def test_openai_pool_errors_name_the_key(changes, key, reason):
    with pytest.raises(ConfigError) as err:
        parse_cluster(doc(**changes), "real.yaml")
    assert f"real.yaml: key '{key}'" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("key", ["endpoints", "launch", "context_tokens"])
def test_engine_keys_are_refused_on_emulated_pools(key):
    pool = {"name": "p", "device": "h100-sxm", "instances": 1, "model": "llama-3.1-8b", "role": "both", key: 1}
    with pytest.raises(ConfigError, match=f"key 'pools\\[0\\].{key}': applies only to pools with backend: openai"):
        parse_cluster({"pools": [pool]}, "c.yaml")


def test_a_device_with_an_uncatalogued_model_says_how_to_learn_instead():
    with pytest.raises(ConfigError, match="leave device: out to learn it online"):
        Cluster(parse_cluster(doc(device="h100-sxm"), "real.yaml"))


def test_simulating_a_pool_whose_speed_is_only_learned_live_is_refused():
    with pytest.raises(ConfigError, match="pool 'vllm': key 'device': missing; a real-engine pool"):
        Cluster(parse_cluster(doc(), "real.yaml")).check_predictable()
    Cluster(parse_cluster(doc(device="h100-sxm", model="llama-3.1-8b"), "real.yaml")).check_predictable()
