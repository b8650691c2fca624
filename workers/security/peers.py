"""Which addresses a worker may hand KV over to: the workers of its own cluster.

A prefill worker opens a connection to whatever `decode_address` its work
names; unchecked, that lets a caller point it at any host and port. The book
holds the addresses the scheduler has registered (asked from the scheduler
actor through Ray). An address not in it triggers one refresh (a decode worker
restarted by Ray registers a new port), at most every REFRESH_S: within
REFRESH_S of the last one it waits for the next (while workers start, a decode
worker registers just after a prefill worker's refresh and gets work at once);
still unknown, the work is refused.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from workers.work import WorkerError

# A caller naming unknown addresses over and over costs the scheduler at most one
# Ray call per this many seconds.
REFRESH_S = 0.5


class PeerBook:
    def __init__(self, fetch: Callable[[], Awaitable[Iterable[str]]] | None):
        self._fetch = fetch  # None: no scheduler to ask (every address is refused)
        self._known: frozenset[str] = frozenset()
        self._refreshed_at = -REFRESH_S
        self._refreshing: asyncio.Future | None = None

    def knows(self, address: str) -> bool:
        return address in self._known

    async def allows(self, address: str) -> bool:
        if address in self._known:
            return True
        if self._fetch is None:
            return False
        loop = asyncio.get_running_loop()
        if self._refreshing is None:
            self._refreshing = loop.create_task(self._refresh(self._refreshed_at + REFRESH_S - loop.time()))
        await asyncio.shield(self._refreshing)
        return address in self._known

    async def _refresh(self, delay_s: float) -> None:
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            self._known = frozenset(a for a in await self._fetch() if a)
        except Exception:  # the scheduler is away: keep what is known; the caller refuses the rest
            pass
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()
            self._refreshing = None


class NotAPeer(WorkerError):
    status = "PERMISSION_DENIED"
