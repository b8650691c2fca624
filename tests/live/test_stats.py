"""Latency windows: exact percentiles (numpy's interpolation) over the most recent
samples, current after every sample, bounded memory."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.live.stats import LatencyWindow


@pytest.mark.parametrize("n", [1, 2, 7, 100, 999, 1000, 2500])
def test_window_percentiles_match_numpy(n):
    """The last 1,000 samples (fewer before the window fills), interpolated as numpy does."""
    samples = np.random.default_rng(n).lognormal(size=n)
    window = LatencyWindow(1000)
    for value in samples:
        window.add(value)
    got = window.summary()
    kept = samples[-1000:]
    assert got.samples == n
    assert [got.p50_s, got.p90_s, got.p99_s] == pytest.approx(list(np.percentile(kept, (50, 90, 99))), rel=1e-12)
    assert got.mean_s == pytest.approx(kept.mean(), rel=1e-12)


def test_window_summary_is_current_and_empty_window_is_zero():
    window = LatencyWindow(3)
    assert window.summary().samples == 0
    for value in (5.0, 1.0, 3.0):
        window.add(value)
    assert (window.summary().p50_s, window.summary().mean_s) == (3.0, 3.0)
    window.add(7.0)  # 5.0 leaves the window at once
    got = window.summary()
    assert (got.samples, got.p50_s, got.mean_s) == (4, 3.0, pytest.approx(11 / 3))
    with pytest.raises(ValueError, match="NaN"):
        window.add(float("nan"))
