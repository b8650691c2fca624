"""Reason codes and input bounds: a fixed set of codes mirrored by the proto enum,
bounded details, counts by code (GetStats, Prometheus, summaries), and the limits
a cluster's models set on a GenerateRequest."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from prometheus_client import generate_latest

from infersched.v1 import common_pb2, scheduler_pb2
from scheduler.cluster import Cluster
from scheduler.config import parse_cluster
from scheduler.live.bounds import MAX_NAME_BYTES, RequestBounds
from scheduler.live.core import SchedulerCore
from scheduler.live.inprocess import InProcessWorkerClient
from scheduler.live.metrics import Metrics
from scheduler.live.types import GenerateInput, InvalidRequest, LiveOptions, OutOfRange, Overloaded
from scheduler.plugins.filters import FitsMemory, ModelTier, SameModel
from scheduler.plugins.tiers import LowestTier
from scheduler.reasons import DETAIL_BYTES, ECHO_BYTES, Reason, clip, count_by_code, echo, policy_reason
from scheduler.registry import build_policy
from workers.clock import VirtualClock

TWO_MODELS = {"name": "two-models", "policy": "round-robin",
              "pools": [{"name": "small", "device": "h100-sxm", "instances": 1, "model": "qwen3-30b-a3b",
                         "role": "both"},
                        {"name": "large", "device": "h100-sxm", "instances": 1, "chips_per_instance": 2,
                         "model": "llama-3.1-8b", "role": "both"}]}


def test_reason_mirrors_the_proto_enum_name_for_name_number_for_number():
    proto = {name.removeprefix("REASON_CODE_"): number
             for name, number in common_pb2.ReasonCode.items()}
    assert proto == {r.name: r.value for r in Reason}


@pytest.mark.parametrize("text, code", [
    (FitsMemory.reason, Reason.NO_KV_MEMORY), (ModelTier.reason, Reason.NO_CAPABLE_MODEL),
    (SameModel.reason, Reason.NO_DECODE_FOR_MODEL), (LowestTier.reason, Reason.NO_MODEL_TIER),
    ("no prefill instances", Reason.NO_INSTANCES), ("no decode instances", Reason.NO_INSTANCES),
    ("a plugin's own words", Reason.POLICY)])
def test_policy_reasons_map_to_codes(text, code):
    assert policy_reason(text) == code


def test_summary_codes_sum_reasons_that_share_a_code():
    assert count_by_code({"no decode instances": 2, "no prefill instances": 1, FitsMemory.reason: 4}) == \
        {"NO_INSTANCES": 3, "NO_KV_MEMORY": 4}


@pytest.mark.parametrize("text", ["", "short", "x" * DETAIL_BYTES, "x" * 10_000, "é" * 1000, "\U0001f600" * 100])
def test_a_detail_is_clipped_to_its_bound_on_a_character_boundary(text):
    clipped = clip(text)
    assert len(clipped.encode()) <= DETAIL_BYTES
    assert clipped == text or clipped.endswith(f"... ({len(text.encode()):,} bytes)")


@pytest.mark.parametrize("value", ["", "id-1", "x" * ECHO_BYTES, "x" * (1 << 20), "é" * 500, b"\xff" * 100])
def test_an_echo_quotes_at_most_64_bytes_of_the_value(value):
    quoted = echo(value)
    assert len(quoted.encode()) <= 4 * ECHO_BYTES + 40
    assert ("x" * (ECHO_BYTES + 1)) not in quoted


def core_of(config: dict, **options) -> tuple[SchedulerCore, VirtualClock]:
    cfg = parse_cluster(config)
    cluster = Cluster(cfg)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock, stream_interval_s=1.0)
    core = SchedulerCore(cluster, build_policy(cfg.policy, cfg), replace(LiveOptions(time_scale=1.0), **options),
                         clock, client)
    client.register_all(core)
    return core, clock


class Quiet:
    def tokens(self, event):
        pass

    def finish(self, outcome):
        self.outcome = outcome


def test_prometheus_counts_rejections_and_failures_by_reason_label():
    core, clock = core_of(TWO_MODELS, max_queue=1)
    metrics = Metrics(core)
    key = core.submit(GenerateInput("a", 100, 50), Quiet())
    with pytest.raises(Overloaded):
        core.submit(GenerateInput("b", 100, 5), Quiet())
    core.cancel(key)
    clock.run()
    text = generate_latest(metrics.registry).decode()
    assert 'infersched_rejections_total{reason="QUEUE_FULL"} 1.0' in text
    assert 'infersched_failures_total{reason="CANCELLED"} 1.0' in text
    assert core.stats().reasons == {"QUEUE_FULL": 1, "CANCELLED": 1}


def bounds_check(**fields) -> None:
    RequestBounds(Cluster(parse_cluster(TWO_MODELS))).check(scheduler_pb2.GenerateRequest(**fields))


@pytest.mark.parametrize("fields, error, words", [
    # Without a tier the largest context among the models bounds the prompt: llama's 131,072.
    ({"prompt_length": 100_000, "max_output_tokens": 10}, None, ""),
    ({"prompt_length": 131_073, "max_output_tokens": 1}, OutOfRange, "the largest among this cluster's models"),
    # With one, its model's: qwen3-30b-a3b takes 40,960.
    ({"prompt_length": 100_000, "max_output_tokens": 10, "model_tier": "qwen3-30b-a3b"}, OutOfRange,
     "40,960 tokens, model qwen3-30b-a3b"),
    ({"prompt_length": 40_000, "max_output_tokens": 961, "model_tier": "qwen3-30b-a3b"}, OutOfRange,
     "'max_output_tokens'"),
    ({"prompt_length": 40_000, "max_output_tokens": 960, "model_tier": "qwen3-30b-a3b"}, None, ""),
    # Vocabularies: qwen's 151,936 is the larger; llama's 128,256 bounds the llama tier.
    ({"prompt_tokens": [151_935], "max_output_tokens": 1}, None, ""),
    ({"prompt_tokens": [151_936], "max_output_tokens": 1}, OutOfRange, "[0, 151,936)"),
    ({"prompt_tokens": [130_000], "max_output_tokens": 1, "model_tier": "llama-3.1-8b"}, OutOfRange,
     "[0, 128,256) of model llama-3.1-8b"),
    ({"prompt_length": 2, "max_output_tokens": 1, "prefix_block_hashes": [7, 8]}, None, ""),
    ({"prompt_length": 2, "max_output_tokens": 1, "prefix_block_hashes": [7, 8, 9]}, InvalidRequest,
     "3 hashes for a 2-token prompt"),
    ({"request_id": "r" * MAX_NAME_BYTES, "prompt_length": 1, "max_output_tokens": 1}, None, ""),
    ({"request_id": "r" * (MAX_NAME_BYTES + 1), "prompt_length": 1, "max_output_tokens": 1}, InvalidRequest,
     "limit 128"),
])
def test_request_bounds_follow_the_cluster_models(fields, error, words):
    if error is None:
        bounds_check(**fields)
        return
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        bounds_check(**fields)


def test_a_model_without_a_stated_context_leaves_prompts_to_the_kv_check(tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"name": "tiny", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 4, "ffn": 128,
                                "vocab": 1000, "dtype_bytes": 2}))
    cluster = Cluster(parse_cluster({"name": "no-context", "pools": [
        {"name": "p", "device": "h100-sxm", "instances": 1, "model": str(spec), "role": "both"}]}))
    bounds = RequestBounds(cluster)
    assert bounds.context_tokens is None
    bounds.check(scheduler_pb2.GenerateRequest(prompt_length=10_000_000, max_output_tokens=1))
    with pytest.raises(OutOfRange, match=r"\[0, 1,000\)"):
        bounds.check(scheduler_pb2.GenerateRequest(prompt_tokens=[1000], max_output_tokens=1))
