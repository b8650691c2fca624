"""Speculative decoding in the batching engine: SpeculativePerf's step model, its closed forms,
and a real BatchEngine and simulator running pools with a `speculative:` key."""
from __future__ import annotations

import random

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import ConfigError, parse_cluster
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.report import format_summary
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload
from workers.devices import get_device
from workers.engine import FINISHED, ROLE_BOTH, BatchEngine
from workers.models import get_model
from workers.perf import InstancePerf
from workers.predict import predict
from workers.speculative import SpeculativeConfig, SpeculativePerf, expected_tokens

M70, M1B = get_model("llama-3.1-70b"), get_model("llama-3.2-1b")


def spec_perf(device="wse-3", chips=4, draft_tokens=4, acceptance=0.8, model=M70):
    return SpeculativePerf(get_device(device), model, M1B, SpeculativeConfig("llama-3.2-1b", draft_tokens, acceptance),
                           chips=chips, max_seqs=64)


# (Groq is left out: predict sizes the draft for the prompt's KV, a pool for the weights alone.)
@pytest.mark.parametrize(("device", "chips", "k", "alpha"), [
    ("wse-3", 4, 4, 0.8), ("wse-3", 4, 8, 0.95), ("h100-sxm", 2, 3, 0.6),
])
def test_a_batch1_step_is_a_predicted_round_per_expected_token(device, chips, k, alpha):
    perf = spec_perf(device, chips, k, alpha)
    r = predict(get_device(device), M70, batch=1, context=1024, chips=chips, draft=M1B, acceptance=alpha,
                draft_tokens=k)
    assert 1.0 / perf.decode_step_s(1, 1024.0) == pytest.approx(r["decode_tokens_per_s"], rel=1e-12)
    assert r["speculative"]["tokens_per_round"] == pytest.approx(expected_tokens(alpha, k))


@pytest.mark.parametrize(("alpha", "faster"), [(0.9, True), (0.0, False)])
def test_speculation_pays_only_when_drafts_are_accepted(alpha, faster):
    plain = InstancePerf(get_device("wse-3"), M70, 4, max_seqs=64)
    assert (spec_perf(acceptance=alpha).decode(8, 8 * 2000.0, 100)[0] < plain.decode(8, 8 * 2000.0, 100)[0]) is faster


def test_draft_weights_and_kv_come_out_of_the_kv_room():
    plain = InstancePerf(get_device("wse-3"), M70, 4, max_seqs=64)
    perf = spec_perf()
    room = plain.kv_capacity_tokens * plain.kv_bytes_per_token - M1B.weight_bytes
    assert perf.kv_capacity_tokens == int(room / (M70.kv_bytes_per_token + M1B.kv_bytes_per_token))
    assert 0 < perf.kv_capacity_tokens < plain.kv_capacity_tokens


def test_decode_steps_within_agrees_with_decode():
    rng = random.Random(11)
    perf = spec_perf()
    for _ in range(300):
        batch = rng.choice([1, 2, 8, 64])
        ctx = rng.uniform(0, batch * 8000)
        budget = rng.uniform(0, 3)
        k = perf.decode_steps_within(batch, ctx, budget)
        assert perf.decode(batch, ctx, k)[0] <= budget < perf.decode(batch, ctx, k + 1)[0]


def test_mixed_iterations_pay_both_models_and_settle_exactly():
    perf = spec_perf("h100-sxm", 2)
    plain = InstancePerf(get_device("h100-sxm"), M70, 2, max_seqs=64)
    args = (4, 4 * 900.0, 512, 512 * 100 + 512 * 513 / 2, 100.0)
    t, _ = perf.mixed(*args, 1, 3)
    assert t == pytest.approx(plain.mixed(*args, 1, 3)[0] + perf.draft.mixed(*args, 1, 3)[0])
    rng = random.Random(5)
    for _ in range(50):
        budget = rng.uniform(0, 2)
        k = perf.mixed_steps_within(*args, budget)
        assert perf.mixed(*args, 1, k)[0] <= budget < perf.mixed(*args, 1, k + 1)[0]


@pytest.mark.parametrize(("draft", "config", "match"), [
    (get_model("gpt-oss-20b"), SpeculativeConfig("gpt-oss-20b", 4, 0.8), "share the target's tokenizer"),
    (get_model("llama-3.1-405b"), SpeculativeConfig("llama-3.1-405b", 4, 0.8), "does not fit"),
])
def test_unusable_drafts_are_refused(draft, config, match):
    with pytest.raises(ValueError, match=match):
        SpeculativePerf(get_device("wse-3"), M70, draft, config, chips=4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"draft_tokens": 0}, "draft_tokens must be in 1..16"),
    ({"draft_tokens": 17}, "draft_tokens must be in 1..16"),
    ({"acceptance": 1.2}, r"acceptance must be in \[0, 1\]"),
])
def test_bad_speculative_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig(**{"draft_model": "llama-3.2-1b", "draft_tokens": 4, "acceptance": 0.8, **kwargs})


def test_engine_decodes_every_token_once_at_the_speculative_rate():
    """One request alone on a real engine: it finishes after its output tokens' worth of steps,
    each a round over its expected tokens, so at the predicted speculative speed."""
    perf = spec_perf()
    plain = InstancePerf(get_device("wse-3"), M70, 4, max_seqs=64)
    times = {}
    for name, p in (("spec", perf), ("plain", plain)):
        eng = BatchEngine(p, ROLE_BOTH, max_batch=64)
        eng.submit_prefill(1, 1024, 501)
        events: list = []
        eng.poke(0.0, events)
        while eng.next_wake_s < float("inf"):
            eng.wake(eng.next_wake_s, events)
        done = [e for e in events if e[0] == FINISHED]
        assert len(done) == 1 and eng.decode_tokens == 500
        times[name] = done[0][2] - p.prefill(1024, 1024 * 1025 / 2, 1)[0]
    assert times["spec"] == pytest.approx(perf.decode(1, 1025.0, 500)[0], rel=1e-9)
    # 3.36 tokens a round for 4 draft steps (16 layers each at the 70B's per-layer latency, a fifth of
    # its 80) plus one verify pass: about 1.7 plain steps' time.
    assert times["plain"] / times["spec"] > 1.8


def wafer_cluster(speculative=None, role="both"):
    pool = {"name": "w", "device": "wse-3", "instances": 1, "model": "llama-3.1-70b", "role": role}
    if speculative is not None:
        pool["speculative"] = speculative
    return Cluster(parse_cluster({"name": "t", "pools": [pool], "policy": "least-loaded"}))


SPEC = {"draft_model": "llama-3.2-1b", "draft_tokens": 4, "acceptance": 0.8}


def test_simulated_pool_with_speculation_cuts_inter_token_latency_and_counts_every_token():
    n = 300
    trace = Trace(path="<test>", format="vidur", arrival_s=np.arange(n) * 0.5, input_tokens=np.full(n, 512),
                  output_tokens=np.random.default_rng(3).integers(2, 600, n))
    out = {}
    for name, spec in (("plain", None), ("spec", SPEC)):
        res = Simulation(wafer_cluster(spec), build_policy("least-loaded"),
                         make_workload(trace, n_requests=n, rate_rps=2.0, seed=1), seed=1).run()
        s = summarize(res)
        assert s["completed"] == n
        assert s["pools"]["w"]["decode_tokens"] == int((res.records.output_tokens - 1).sum())
        out[name] = s
    assert out["plain"]["pools"]["w"]["speculative"] is None
    assert out["spec"]["pools"]["w"]["speculative"] == {**SPEC, "tokens_per_round": pytest.approx(
        expected_tokens(0.8, 4))}
    assert out["spec"]["itl_s"]["mean"] < 0.6 * out["plain"]["itl_s"]["mean"]
    # The text summary says which pools draft, and with what.
    assert ("speculative decoding: w drafts with llama-3.2-1b (4 tokens a round, acceptance 0.8: 3.36 tokens per "
            "round)") in format_summary(out["spec"]).splitlines()
    assert "speculative decoding" not in format_summary(out["plain"])


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({"speculative": "llama-3.2-1b"}, "pools[0].speculative", "expected a mapping"),
    ({"speculative": {"draft_model": "llama-3.2-1b", "acceptance": 0.8}}, "pools[0].speculative.draft_tokens",
     "missing"),
    ({"speculative": {**SPEC, "draft": 1}}, "pools[0].speculative.draft", "unknown key"),
    ({"speculative": {**SPEC, "draft_tokens": 0}}, "pools[0].speculative.draft_tokens", "must be >= 1"),
    ({"speculative": {**SPEC, "draft_tokens": 2.5}}, "pools[0].speculative.draft_tokens", "expected an integer"),
    ({"speculative": {**SPEC, "acceptance": 1.5}}, "pools[0].speculative.acceptance", "must be <= 1"),
    ({"role": "prefill", "speculative": SPEC}, "pools[0].speculative", "a prefill pool decodes nothing"),
])
def test_speculative_key_is_validated(changes, key, reason):
    pools = [{"name": "p", "device": "wse-3", "instances": 1, "model": "llama-3.1-70b", "role": "both", **changes}]
    if changes.get("role") == "prefill":
        pools.append({**pools[0], "name": "q", "role": "decode", "speculative": SPEC})
    with pytest.raises(ConfigError) as err:
        parse_cluster({"name": "t", "pools": pools}, "c.yaml")
    assert f"c.yaml: key '{key}'" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(("draft", "reason"), [
    ("llama-9b", "unknown model"),
    ("gpt-oss-20b", "share the target's tokenizer"),
])
def test_unusable_draft_is_a_config_error_naming_the_key(draft, reason):
    with pytest.raises(ConfigError, match=f"pool 'w': key 'speculative.draft_model': .*{reason}"):
        wafer_cluster({**SPEC, "draft_model": draft})


def test_live_worker_streams_every_token_at_the_speculative_engines_times():
    """The emulated worker behind live serving runs the pool's SpeculativePerf: each request's
    first token and finish land where a bare engine puts them, and every token streams once."""
    from tests.workers.test_emulated import Heard, engine_times
    from workers.clock import VirtualClock
    from workers.emulated import EmulatedWorker

    perf = wafer_cluster(SPEC).pools[0].perf
    assert isinstance(perf, SpeculativePerf)
    w = EmulatedWorker(perf, ROLE_BOTH, VirtualClock(), input_slack_s=0.0)
    heard = Heard(w.clock)
    jobs = [(f"r{i}", 300 + 250 * i, 40 + 30 * i, 0.01 * i) for i in range(6)]
    for key, inp, out, at in jobs:
        w.clock.call_at(at, lambda key=key, inp=inp, out=out: w.prefill(key, inp, out, heard, decode=True))
    w.clock.run()
    _, finish = engine_times(BatchEngine(perf, ROLE_BOTH), jobs)
    for i, (key, _, out, _) in enumerate(jobs):
        (t_end, *_), = heard.of(key, "decoded")
        assert t_end == pytest.approx(finish[i], abs=1e-12)
        assert sum(e[3][1] for e in heard.of(key, "tokens")) == out - 1
    assert w.stats().completed == len(jobs) and w.engine.decode_tokens == sum(out - 1 for _, _, out, _ in jobs)
