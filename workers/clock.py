"""The clock seam: modelled time for emulated workers, the scheduler core and tests.

Everything that models hardware time (the emulated workers, the live
scheduler core, the core's engine mirrors) reads time only through a `Clock`
and schedules work at modelled times through it, never through `time` or an
event loop directly. Two implementations:

- `ScaledClock`: wall time on the running asyncio loop, scaled: modelled
  seconds * `time_scale` = wall seconds (0.01 runs 100x faster than the
  modelled hardware). What `infersched serve` runs on.
- `VirtualClock`: a heap of callbacks and a `now` that jumps from one to the
  next (SimPy's environment, without processes). Same inputs, same order of
  callbacks, same results: what makes the live core's decisions replayable
  and comparable with the simulator's.

Times that cross process boundaries travel as Unix time (`to_unix`,
`from_unix`), since each process's clock has its own origin. `wall()` is for
measuring the program's own work (the policy's time per decision); a virtual
clock's wall time stands still, so its runs charge that work no time.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Modelled seconds since the clock's origin, and callbacks at modelled times."""

    @property
    def time_scale(self) -> float:
        """Wall seconds per modelled second."""
        ...

    def now(self) -> float: ...

    def wall(self) -> float:
        """Monotonic wall seconds (arbitrary origin), to measure the program's own work."""
        ...

    def to_unix(self, t_s: float) -> float: ...

    def from_unix(self, unix_s: float) -> float: ...

    def call_at(self, t_s: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once the clock reads `t_s` (at once, in order, if that has passed)."""
        ...


class ScaledClock:
    """Wall time on the running asyncio loop, `time_scale` wall seconds per modelled
    second, reading 0 when `start` is called (construction starts it if a loop runs)."""

    __slots__ = ("_scale", "_loop", "_t0")

    def __init__(self, time_scale: float):
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        self._scale = float(time_scale)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        try:
            self.start()
        except RuntimeError:  # no loop runs yet: the owner calls start() on one
            pass

    def start(self) -> None:
        """Read 0 from now on, on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    @property
    def time_scale(self) -> float:
        return self._scale

    def now(self) -> float:
        return (self._loop.time() - self._t0) / self._scale

    def wall(self) -> float:
        return time.perf_counter()

    def to_unix(self, t_s: float) -> float:
        # Against the current reading of both clocks, so a stepped system clock moves
        # the conversion with it instead of leaving a fixed origin behind.
        return time.time() + (t_s - self.now()) * self._scale

    def from_unix(self, unix_s: float) -> float:
        return self.now() + (unix_s - time.time()) / self._scale

    def call_at(self, t_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_at(self._t0 + t_s * self._scale, callback)


class _VirtualTimer:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None] | None):
        self.callback = callback

    def cancel(self) -> None:
        self.callback = None


class VirtualClock:
    """Virtual time: `call_at` queues callbacks, `run_until`/`run` play them in time
    order (ties in the order they were queued), with `now` set to each one's time.
    With the default time_scale 1 and origin 0, Unix conversions are exact."""

    __slots__ = ("_now", "_scale", "_origin_unix", "_heap", "_seq")

    def __init__(self, time_scale: float = 1.0, origin_unix_s: float = 0.0):
        self._now = 0.0
        self._scale = float(time_scale)
        self._origin_unix = float(origin_unix_s)
        self._heap: list = []
        self._seq = itertools.count()

    @property
    def time_scale(self) -> float:
        return self._scale

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return 0.0

    def to_unix(self, t_s: float) -> float:
        return self._origin_unix + t_s * self._scale

    def from_unix(self, unix_s: float) -> float:
        return (unix_s - self._origin_unix) / self._scale

    def call_at(self, t_s: float, callback: Callable[[], None]) -> _VirtualTimer:
        timer = _VirtualTimer(callback)
        heapq.heappush(self._heap, (max(t_s, self._now), next(self._seq), timer))
        return timer

    def next_s(self) -> float:
        """When the next queued callback is due (inf when none is)."""
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def run_until(self, t_s: float) -> None:
        """Play every callback due at or before `t_s` (also those they queue), then stand at `t_s`."""
        heap = self._heap
        while heap and heap[0][0] <= t_s:
            when, _, timer = heapq.heappop(heap)
            callback = timer.callback
            if callback is not None:
                timer.callback = None
                self._now = when
                callback()
        self._now = max(self._now, t_s)

    def run(self, limit_s: float = math.inf) -> None:
        """Play callbacks until none is left (or the next is past `limit_s`)."""
        while (t := self.next_s()) <= limit_s and t < math.inf:
            self.run_until(t)
