"""One WorkerClient over several: each instance's calls go to its pool's backend.

A cluster may mix emulated pools (gRPC workers) with pools of real engines
(`backend: openai`); the core drives one client, and this one hands each call
to the client that serves the instance. Events reach the core straight from
the inner clients.
"""
from __future__ import annotations

import asyncio

from scheduler.live.types import Work
from scheduler.live.worker_client import WorkerClient, WorkerEvents


class MixedWorkerClient:
    """WorkerClient routing by instance: `routes[instance]` serves it."""

    def __init__(self, routes: list[WorkerClient]):
        self.routes = routes
        self.clients = list({id(c): c for c in routes}.values())

    def bind(self, events: WorkerEvents) -> None:
        for client in self.clients:
            client.bind(events)

    def connect(self, instance: int, address: str) -> None:
        self.routes[instance].connect(instance, address)

    def send(self, instance: int, work: Work) -> None:
        self.routes[instance].send(instance, work)

    def cancel(self, instance: int, key: str) -> None:
        self.routes[instance].cancel(instance, key)

    async def probe(self, instance: int, timeout_s: float = 1.0) -> bool:
        return await self.routes[instance].probe(instance, timeout_s)

    async def count_prompt(self, model: str, route: str, body: dict):
        """See OpenAIWorkerClient.count_prompt; None when no real-engine pool serves `model`."""
        for client in self.clients:
            counter = getattr(client, "count_prompt", None)
            if counter is not None:
                return await counter(model, route, body)
        return None

    async def count_prompt_tokens(self, model: str, payload) -> int | None:
        """The HTTP front door's hook: the count of the real-engine client serving `model`."""
        for client in self.clients:
            counter = getattr(client, "count_prompt_tokens", None)
            if counter is not None:
                return await counter(model, payload)
        return None

    @property
    def prompt_counts(self) -> dict:
        """Pools of real engines: prompts by how their length was counted."""
        return {pool: counts for c in self.clients for pool, counts in getattr(c, "prompt_counts", {}).items()}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))
