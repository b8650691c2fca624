"""Speculative decoding priced in the step model: tokens per round, round time, and predict's use of it."""
import pytest

from workers.devices import get_device
from workers.models import get_model
from workers.perf import InstancePerf
from workers.predict import PredictionError, predict
from workers.speculative import MAX_DRAFT_TOKENS, expected_tokens, speculative_round

WSE = get_device("wse-3")
H100 = get_device("h100-sxm")


@pytest.mark.parametrize(("alpha", "k", "tokens"), [
    (0.0, 4, 1.0),                 # every draft rejected: the target's own token only
    (1.0, 4, 5.0),                 # every draft accepted, plus the target's token
    (0.5, 1, 1.5),
    (0.8, 4, (1 - 0.8 ** 5) / 0.2),  # Leviathan et al. 2023, eq. 1
])
def test_expected_tokens_per_round(alpha, k, tokens):
    assert expected_tokens(alpha, k) == pytest.approx(tokens)


def _perfs(device, target, draft, chips):
    return (InstancePerf(device, get_model(target), chips, max_seqs=1),
            InstancePerf(device, get_model(draft), 1, max_seqs=1))


def test_round_prices_draft_steps_and_one_verify_pass():
    target, draft = _perfs(WSE, "llama-3.1-70b", "llama-3.2-1b", 4)
    r = speculative_round(target, draft, 1, 1024, 0.8, draft_tokens=4)
    verify_s = target.mixed(1, 1024.0, 4, 4 * 1025 + 10, 1025.0, 1)[0]
    assert r.round_s == pytest.approx(draft.decode(1, 1024.0, 4)[0] + verify_s)
    assert r.tokens_per_round == pytest.approx(expected_tokens(0.8, 4))


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95])
def test_default_draft_tokens_are_the_fastest(alpha):
    target, draft = _perfs(WSE, "llama-3.1-70b", "llama-3.2-1b", 4)
    best = speculative_round(target, draft, 1, 1024, alpha)
    rates = [r.tokens_per_round / r.round_s for r in
             (speculative_round(target, draft, 1, 1024, alpha, k) for k in range(1, MAX_DRAFT_TOKENS + 1))]
    assert best.tokens_per_round / best.round_s == pytest.approx(max(rates))


@pytest.mark.parametrize(("device", "chips", "alpha", "faster"), [
    (WSE, 4, 0.9, True),   # latency-bound: a verify pass costs about one decode step
    (WSE, 4, 0.0, False),  # nothing accepted: the draft's steps are pure overhead
    (H100, 2, 0.9, True),
])
def test_speculation_pays_only_when_drafts_are_accepted(device, chips, alpha, faster):
    plain = predict(device, get_model("llama-3.1-70b"), chips=chips)
    spec = predict(device, get_model("llama-3.1-70b"), chips=chips, draft=get_model("llama-3.2-1b"),
                   acceptance=alpha, draft_tokens=4)
    assert (spec["decode_tokens_per_s"] > plain["decode_tokens_per_s"]) is faster
    assert spec["speculative"] == {"draft": "llama-3.2-1b", "acceptance": alpha, "draft_tokens": 4,
                                   "tokens_per_round": pytest.approx(expected_tokens(alpha, 4))}
    # Price and energy follow the tokens each round yields.
    ratio = plain["decode_tokens_per_s"] / spec["decode_tokens_per_s"]
    assert spec["usd_per_million_output_tokens"] == pytest.approx(plain["usd_per_million_output_tokens"] * ratio,
                                                                  rel=1e-9)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"draft": get_model("llama-3.2-1b")}, ValueError, "both a draft model and an acceptance"),
    ({"acceptance": 0.5}, ValueError, "both a draft model and an acceptance"),
    ({"draft": get_model("llama-3.2-1b"), "acceptance": 1.5}, ValueError, r"acceptance must be in \[0, 1\]"),
    ({"draft": get_model("llama-3.2-1b"), "acceptance": 0.5, "draft_tokens": 0}, ValueError, "draft tokens"),
    ({"draft": get_model("llama-3.1-405b"), "acceptance": 0.5}, PredictionError, "does not fit"),
])
def test_bad_speculative_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        predict(WSE, get_model("llama-3.1-70b"), **kwargs)
