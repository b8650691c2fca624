"""The clock seam: a virtual clock plays callbacks in time order (ties in queue order),
a scaled clock runs modelled time on the asyncio loop at time_scale wall seconds each."""
from __future__ import annotations

import asyncio
import math

import pytest

from workers.clock import ScaledClock, VirtualClock


def test_virtual_clock_plays_callbacks_in_time_then_queue_order():
    clock = VirtualClock()
    seen = []
    for t, name in [(2.0, "b"), (1.0, "a"), (2.0, "c"), (0.5, "early")]:
        clock.call_at(t, lambda t=t, name=name: seen.append((clock.now(), name)))
    clock.run_until(1.5)
    assert seen == [(0.5, "early"), (1.0, "a")] and clock.now() == 1.5
    clock.run()
    assert seen[2:] == [(2.0, "b"), (2.0, "c")] and clock.now() == 2.0


def test_virtual_clock_runs_what_callbacks_queue_and_skips_cancelled_ones():
    clock = VirtualClock()
    seen = []
    dropped = clock.call_at(1.0, lambda: seen.append("dropped"))
    clock.call_at(1.0, lambda: clock.call_at(0.0, lambda: seen.append(("past", clock.now()))))
    dropped.cancel()
    clock.run()
    assert seen == [("past", 1.0)]  # a time already passed runs now, never back in time
    assert clock.next_s() == math.inf


@pytest.mark.parametrize("scale, origin", [(1.0, 0.0), (0.05, 1.7e9)])
def test_virtual_clock_unix_conversions_invert(scale, origin):
    clock = VirtualClock(time_scale=scale, origin_unix_s=origin)
    assert clock.to_unix(10.0) == pytest.approx(origin + 10.0 * scale)
    assert clock.from_unix(clock.to_unix(123.25)) == pytest.approx(123.25)
    assert clock.wall() == clock.wall() == 0.0


def test_virtual_clock_with_scale_one_converts_exactly():
    clock = VirtualClock()
    assert all(clock.from_unix(clock.to_unix(t)) == t for t in (0.1, 1e-9, 12345.678901234))


def test_scaled_clock_fires_callbacks_at_scaled_wall_times():
    async def main():
        clock = ScaledClock(0.01)  # 100 modelled seconds per wall second
        fired = asyncio.get_running_loop().create_future()
        clock.call_at(5.0, lambda: fired.set_result(clock.now()))
        return await asyncio.wait_for(fired, 2.0)

    assert asyncio.run(main()) >= 5.0


def test_scaled_clock_refuses_a_bad_scale():
    with pytest.raises(ValueError, match="time_scale"):
        ScaledClock(0.0)
