"""EWMA estimates of an engine's prefill rate and decode time (pure arithmetic;
the same estimates measured from a real engine are in tests/engines)."""
from __future__ import annotations

import pytest

from workers.engine_estimates import Ewma, LatencyEstimator


@pytest.mark.parametrize("alpha, samples, expected", [
    (0.2, [10.0], 10.0),                    # the first sample is the start value
    (0.2, [10.0, 20.0], 12.0),              # 10 + 0.2 * (20 - 10)
    (0.5, [10.0, 20.0, 20.0], 17.5),        # 15, then 15 + 0.5 * 5
    (1.0, [10.0, 20.0, 3.0], 3.0),          # alpha 1 keeps only the last sample
])
def test_ewma_values(alpha, samples, expected):
    ewma = Ewma(alpha)
    for sample in samples:
        ewma.add(sample)
    assert ewma.value == pytest.approx(expected)
    assert ewma.samples == len(samples)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_ewma_rejects_alpha_outside_0_1(alpha):
    with pytest.raises(ValueError, match="alpha"):
        Ewma(alpha)


def test_estimator_rates_and_predictions():
    estimator = LatencyEstimator(alpha=0.5)
    assert estimator.snapshot().predict_ttft_s(100) is None
    estimator.add_prefill(prompt_tokens=1000, ttft_s=0.5)   # 2000 tok/s
    estimator.add_prefill(prompt_tokens=1000, ttft_s=1.0)   # 1000 tok/s -> 1500
    estimator.add_decode(0.010)
    estimates = estimator.snapshot()
    assert estimates.prefill_tokens_per_s == pytest.approx(1500.0)
    assert estimates.predict_ttft_s(3000) == pytest.approx(2.0)
    assert estimates.predict_decode_s(101) == pytest.approx(1.0)
    assert (estimates.prefill_samples, estimates.decode_samples) == (2, 1)


def test_estimator_ignores_samples_that_measure_nothing():
    estimator = LatencyEstimator()
    estimator.add_prefill(prompt_tokens=0, ttft_s=0.1)
    estimator.add_prefill(prompt_tokens=10, ttft_s=0.0)
    estimator.add_decode(0.0)
    assert estimator.snapshot().prefill_samples == estimator.snapshot().decode_samples == 0
