"""The cluster's kv_store for live workers in separate processes: one Ray actor holds it.

In one process (the simulator, in-process live runs) every instance's prefix
cache shares one `TierLru` object as its last level. Worker actors cannot share
an object, so `StoreService` holds the store's block index, capacity and LRU
(one `TierLru` per model, as `Cluster.make_stores` splits it) in a Ray actor,
the Mooncake master's role; each worker keeps a `RemoteStore` level in its
prefix cache: its view of which blocks the store holds. The engine reads and
writes the view synchronously, on the worker's clock, at the store's modelled
bandwidths; what it writes goes to the actor right after the engine step, and
a worker asks the actor which of a prompt's blocks the store holds when the
prompt arrives (as Mooncake's conductor and vLLM's store connectors look the
store up before prefill), before the engine sees the prompt.

The actor is a synchronous (single-threaded) Ray actor: Ray runs one caller's
calls to it in the order they were sent, so a worker's lookup sees its own
earlier writes. Blocks other workers write after a lookup, and blocks the
store evicts after it, are not seen until the next lookup: in those windows a
live worker can miss (or load) a block the simulator's shared store would
have held (or dropped).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict

from workers.kv_tiers import KvTier, TierLru

log = logging.getLogger(__name__)


class StoreService:
    """The shared store: per model, the blocks held, least recently written first."""

    def __init__(self, stores: dict[str, tuple[KvTier, int]]):
        """`stores`: model -> (the kv_store tier, its capacity in that model's blocks)."""
        self.levels = {model: TierLru(tier, blocks, shared=True) for model, (tier, blocks) in stores.items()}

    def held(self, model: str, prompts: list) -> list[bytes]:
        """Per prompt (a list of block ids), one byte per block: 1 when the store holds it."""
        blocks = self.levels[model].blocks
        return [bytes(b in blocks for b in prompt) for prompt in prompts]

    def put(self, model: str, written: list) -> None:
        """Blocks a worker wrote, in order: each becomes the most recently written."""
        level = self.levels[model]
        for block in written:
            level.put(block)

    def holding(self, model: str) -> list:
        """The blocks held for `model`, least recently written first."""
        return list(self.levels[model].blocks)


@functools.cache
def store_actor_class():
    """StoreService as a synchronous Ray actor class (Ray imported on first use)."""
    import ray

    return ray.remote(num_cpus=0)(StoreService)


class _View(OrderedDict):
    """The store's blocks as one worker knows them. The engine's writes (a new block, or a
    block written again) are logged for the actor; what a lookup teaches is not."""

    def __init__(self, on_write):
        super().__init__()
        self.on_write = on_write

    def __setitem__(self, block, value) -> None:
        super().__setitem__(block, value)
        self.on_write(block)

    def move_to_end(self, block, last: bool = True) -> None:
        super().move_to_end(block, last)
        self.on_write(block)


class RemoteStore(TierLru):
    """A worker's level for the store held by a `StoreService` actor (`actor`, a Ray handle)."""

    __slots__ = ("actor", "model", "log")

    def __init__(self, tier: KvTier, capacity_blocks: int, actor, model: str):
        super().__init__(tier, capacity_blocks, shared=True)
        self.actor = actor
        self.model = model
        self.log: list = []  # blocks written since the last flush, in order
        self.blocks = _View(self._written)

    def _written(self, block) -> None:
        if not self.log:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop (a worker driven by hand): sent at the next lookup
                pass
        self.log.append(block)

    def flush(self) -> None:
        """Send the blocks written since the last flush (fire and forget: the order is kept)."""
        if self.log:
            written, self.log = self.log, []
            self.actor.put.remote(self.model, written)

    async def lookup(self, prompts: list) -> None:
        """Learn which blocks of `prompts` (lists of block ids) the store holds now."""
        self.flush()
        answers = await self.actor.held.remote(self.model, prompts)
        view = self.blocks
        for prompt, held in zip(prompts, answers):
            for block, here in zip(prompt, held):
                if here:
                    if block not in view:
                        OrderedDict.__setitem__(view, block, None)
                else:
                    view.pop(block, None)
