"""The cluster YAML reference, docs/CLUSTER_YAML.md, from scheduler/config.py's key lists and defaults.

`python -m infersched.cli.cluster_reference > docs/CLUSTER_YAML.md` rewrites it.
The keys are the ones the loader accepts (its known-key sets), the defaults
are its dataclass defaults; only meaning and unit are written here, and a
test fails when a key is added to the loader without a line here, or the file
drifts from what this module prints.
"""
from __future__ import annotations

import dataclasses
import sys

from scheduler import config
from scheduler.config_speculative import SPECULATIVE_KEYS
from workers.kv_tiers import KvTier
from workers.speculative import SpeculativeConfig

# (section, its key set in scheduler/config.py, the dataclass holding its defaults)
SECTIONS = (
    ("top level", "", config._TOP_KEYS, config.ClusterConfig),
    ("pools[]", "pools[].", config._POOL_KEYS, config.PoolConfig),
    ("pools[].launch (backend: openai)", "pools[].launch.", config._LAUNCH_KEYS, config.LaunchConfig),
    ("policy", "policy.", config._POLICY_KEYS, config.PolicyConfig),
    ("slo", "slo.", config._SLO_KEYS, config.SloConfig),
    ("prefix_cache", "prefix_cache.", config._PREFIX_CACHE_KEYS, config.PrefixCacheConfig),
    ("pools[].kv_tiers[]", "pools[].kv_tiers[].", config._KV_TIER_KEYS, KvTier),
    ("pools[].speculative", "pools[].speculative.", SPECULATIVE_KEYS, SpeculativeConfig),
    ("kv_store", "kv_store.", config._KV_STORE_KEYS, KvTier),
)

# The keys a tier and the store share: (unit, default, meaning).
_TIER_KEYS = {
    "capacity_gb": ("GB", "required", "blocks this level holds (per instance for a tier, in all for the store)"),
    "read_gb_s": ("GB/s", "required", "bandwidth a cached prefix loads at into HBM (overlapped with compute layer "
                                      "by layer; recomputed instead when that is faster)"),
    "write_gb_s": ("GB/s", "required", "bandwidth blocks are written at: demotions run in the background "
                                       "(counted, not charged to a request); a write-through store's writes "
                                       "overlap the prefill layer by layer, which lasts at least their time"),
    "usd_per_gb_hour": ("USD/(GB*hour)", "the medium's, else 0", "price of the capacity; 0: not priced"),
    "energy_j_per_gb": ("J/GB", "the medium's, else 0", "energy per GB moved in or out; 0: not priced"),
    "medium": ("-", "none", "`dram`, `nvme` or `rdma`: price and energy per GB default to published figures "
                            "(docs/KV_TIERS.md lists them with their sources)"),
}

# key -> (unit, default where the dataclass has none or says it otherwise, meaning)
KEYS = {
    "name": ("-", "the file name without .yaml", "cluster name, shown in summaries and metrics"),
    "description": ("-", "none", "one line on what the cluster is for (`infersched clusters` lists it)"),
    "pools": ("-", "required", "list of pools, each a set of identical instances (keys below)"),
    "policy": ("-", f"`{config.PolicyConfig().name}`",
               "routing policy: a preset name (`infersched policies`) or a mapping (keys below)"),
    "slo": ("-", f"`{{ttft_s: {config.SloConfig().ttft_s}, tpot_s: {config.SloConfig().tpot_s}}}`",
            "service-level objectives (keys below)"),
    "prefix_cache": ("-", f"`{str(config.PrefixCacheConfig().enabled).lower()}`",
                     "per-instance prefix cache of prompt blocks: true/false or a mapping (keys below)"),
    "pools[].name": ("-", "required", "pool name, unique in the cluster"),
    "pools[].device": ("-", "required", "device catalogue name (`infersched model list`) or a device spec file "
                                        "(`./my-gpu.yaml`, from `infersched model fit`); optional on openai pools "
                                        "(absent: their speed is learned online)"),
    "pools[].instances": ("count", "required", "instances in the pool (each a worker: a Ray actor when live); "
                                               "openai pools: one per endpoint or `launch.instances`"),
    "pools[].model": ("-", "required", "model name (`infersched model list`) or a model spec file; openai pools: "
                                       "the name the engines serve (in the catalogue too when `device` is set)"),
    "pools[].role": ("-", "required", "`prefill`, `decode` or `both`; a cluster needs `both`, or `prefill` and "
                                      "`decode`; openai pools: `both` (the default there)"),
    "pools[].backend": ("-", None, "`emulated` (workers on the device's performance model) or `openai` (real "
                                   "engines speaking the OpenAI HTTP API: vLLM, SGLang, llama.cpp, TGI)"),
    "pools[].endpoints": ("-", "none", "openai: base URLs of running engines (`http://10.0.0.5:8000`), one instance "
                                       "each; or `launch`"),
    "pools[].launch": ("-", "none", "openai: engines `serve` starts as Ray actors (keys below); or `endpoints`"),
    "pools[].aliases": ("-", "none", "other names clients may ask for the pool's model by (the OpenAI API's "
                                     "`model`, as vLLM's `--served-model-name` takes several); each name means one "
                                     "model cluster-wide, and `GET /v1/models` lists them"),
    "pools[].context_tokens": ("tokens", None, "openai without `device`: the longest prompt + output a request may "
                                               "have (the engine's context window)"),
    "pools[].launch.command": ("-", "required", "the engine's command line as a list; `{port}` (required) and "
                                                "`{host}` are filled in per engine, `{python}` is the actor's "
                                                "Python"),
    "pools[].launch.instances": ("count", None, "engines to start, one instance each"),
    "pools[].launch.num_gpus": ("GPUs", None, "GPUs Ray reserves per engine (Ray places engines on GPU nodes; "
                                              "0 for CPU engines)"),
    "pools[].launch.start_timeout_s": ("s", None, "each engine's health endpoint must answer within this"),
    "pools[].launch.max_restarts": ("count", None, "times an engine that died is started again (after 1, 2, 4 ... "
                                                   "up to 30 s), as Ray's max_restarts; it is unhealthy meanwhile "
                                                   "and rejoins when its health endpoint answers"),
    "pools[].chips_per_instance": ("chips", "`auto`: the fewest that hold the model",
                                   "devices per instance (tensor parallel)"),
    "pools[].quantization": ("-", "the model's own dtype", "weight dtype: " + ", ".join(config.QUANTIZATION_BYTES)),
    "pools[].link_gbps": ("Gb/s", None, "per-instance network link for KV hand-over between pools"),
    "pools[].price_usd_per_hour": ("USD/hour", "device price x chips", "price per instance; 0 for owned hardware"),
    "pools[].max_batch": ("sequences", None, "most sequences decoding at once per instance"),
    "pools[].max_batch_tokens": ("tokens", None, "most prompt tokens in one prefill-first iteration"),
    "pools[].chunked_prefill": ("-", None, "each iteration runs the decode batch and fills the rest of "
                                           "`token_budget` with prompt chunks (vLLM v1, Sarathi-Serve); false: "
                                           "prefill-first. Not on decode pools"),
    "pools[].token_budget": ("tokens", None, "tokens per chunked iteration, decode and prompt together; only with "
                                             "`chunked_prefill: true`, above `max_batch` on colocated pools"),
    "pools[].memory_utilization": ("share (0, 1]", None, "share of device memory the engine may use "
                                                         "(weights, then KV cache)"),
    "pools[].pue": ("ratio >= 1", f"{config.DEFAULT_DATACENTER_PUE} (datacenter devices), "
                                  f"{config.DEFAULT_EDGE_PUE} (edge)",
                    "facility power usage effectiveness: `facility_energy_j` = board energy x (1 + the device's "
                    "host_power_share) x pue (simulator/energy.py)"),
    "pools[].serving": ("-", "`pooled`", "`pooled` (any request may use any instance), `own-device` (instance "
                                         "k is user k's device and serves only request ids = k mod instances, one "
                                         "at a time: max_batch 1, role both; idle power counts only while serving) "
                                         "or `judge` (runs routers' and verifiers' passes of its model only: no "
                                         "request is placed there and its model is no tier; role both)"),
    "policy.name": ("-", None, "preset name (`infersched policies`)"),
    "policy.filters": ("-", "the preset's", "list of filter plugin names, replacing the preset's"),
    "policy.scorers": ("-", "the preset's", "mapping scorer name -> weight (>= 0), replacing the preset's"),
    "policy.picker": ("-", "the preset's", "picker plugin name"),
    "policy.params": ("-", "the plugins' defaults", "policy parameters (`infersched policies` lists each with its "
                                                    "default and meaning)"),
    "policy.staging": ("-", "the preset's", "`none` for one pass, or the preset's staged placement"),
    "slo.ttft_s": ("s", None, "time-to-first-token objective"),
    "slo.tpot_s": ("s", None, "time-per-output-token objective"),
    "default_model": ("-", "none", "the model (or alias) that answers HTTP requests naming no `model`; without "
                                   "it such a request is a 400"),
    "kv_store": ("-", "none", "cluster-wide prefix-cache store behind every instance's tiers (Mooncake Store, "
                              "LMCache remote): a mapping (keys below)"),
    "pools[].kv_tiers": ("-", "none", "prefix-cache tiers below HBM on each instance, fastest first: a list of "
                                      "mappings (keys below); not on decode pools"),
    "pools[].kv_tiers[].name": ("-", "required", "tier name, unique in the pool (not `hbm` or `store`); "
                                                 "summaries count hits under it"),
    **{f"pools[].kv_tiers[].{k}": spec for k, spec in _TIER_KEYS.items()},
    **{f"kv_store.{k}": spec for k, spec in _TIER_KEYS.items()},
    "pools[].speculative": ("-", "none", "speculative decoding: a draft model proposes tokens the pool's model "
                                         "verifies in one pass (keys below); not on prefill or openai pools"),
    "pools[].speculative.draft_model": ("-", "required", "catalogue model or spec file sharing the pool model's "
                                                         "tokenizer; it runs on the instance's chips (at the pool's "
                                                         "quantization) and its weights and KV take KV room"),
    "pools[].speculative.draft_tokens": ("tokens", "required", "tokens the draft proposes per round, 1 to 16"),
    "pools[].speculative.acceptance": ("share [0, 1]", "required", "chance the pool's model accepts each drafted "
                                                                   "token; a round yields (1 - a^(k+1)) / (1 - a) "
                                                                   "tokens per sequence on average"),
    "kv_store.write": ("-", "`through`", "when the store is written: `through`, by every prefill as its KV is "
                                         "computed (Mooncake Store, LMCache), or `evict`, only with what falls out "
                                         "of an instance's last tier"),
    "prefix_cache.enabled": ("-", None, "cache prompt blocks per instance (requests carry block hashes)"),
    "prefix_cache.block_tokens": ("tokens", None, "tokens per cached block; must match the trace's hashing "
                                                  "(Mooncake: 512)"),
}

HEADER = """# Cluster YAML reference

Every key `infersched` accepts in a cluster file (`--cluster`), generated by
`python -m infersched.cli.cluster_reference > docs/CLUSTER_YAML.md` from the
loader's key lists and defaults in `scheduler/config.py` (a test fails when
they drift). An unknown key is an error naming its path (`pools[2].devcie`).
The examples in `deploy/clusters/` (`infersched clusters`) use most of them.
"""


def _default(key: str, field_name: str, holder) -> str:
    _, given, _ = KEYS[key]
    if given is not None:
        return given
    field = next(f for f in dataclasses.fields(holder) if f.name == field_name)
    value = field.default
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def reference() -> str:
    lines = [HEADER]
    for title, prefix, keys, holder in SECTIONS:
        lines += [f"## {title}", "", "| key | unit | default | meaning |", "| --- | --- | --- | --- |"]
        for name in sorted(keys, key=lambda k: (k != "name", KEYS[prefix + k][1] != "required", k)):
            key = prefix + name
            unit, _, meaning = KEYS[key]
            lines.append(f"| `{name}` | {unit} | {_default(key, name, holder)} | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
