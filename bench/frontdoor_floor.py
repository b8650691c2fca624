"""The floor of one process hop: the least a front door between a client and an engine
can do, for bench/frontdoor_overhead.py to measure beside infersched's own front door.

One plain Python process (no Ray, no scheduler core, no policy, no accounting) on
the default asyncio loop, with the libraries infersched's front door uses:
- HTTP (aiohttp): POST /v1/completions and /v1/chat/completions are forwarded to
  the engine as they came, and the engine's answer is written back byte for byte as
  its chunks arrive (no parsing);
- gRPC: infersched.v1.Scheduler/Generate as infersched's servicer answers it to a
  token-count client: a synthetic prompt of `prompt_length` tokens (the same words
  and key as `OpenAIWorkerClient` sends, so the engine does the same work), one
  message per engine chunk that carries text, sent as it arrives, the record (status
  COMPLETED) with the last token.
What infersched adds over this process is its own cost; what this process adds over
calling the engine directly is the cost of any one-hop front door on this machine.

    python bench/frontdoor_floor.py --engine http://127.0.0.1:8000 --model tiny-llama
prints "floor http=PORT grpc=PORT" when it listens, and serves until SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from aiohttp import web  # noqa: E402

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from scheduler.live.openai_client import synthetic_prompt  # noqa: E402

_PASSED_HEADERS = ("Content-Type", "Cache-Control")


class Floor(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, engine: str, model: str):
        self.engine = engine.rstrip("/")
        self.model = model
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60))

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self.session.post(self.engine + request.path, data=body,
                                     headers={"Content-Type": "application/json"}) as upstream:
            response = web.StreamResponse(status=upstream.status,
                                          headers={h: upstream.headers[h] for h in _PASSED_HEADERS
                                                   if h in upstream.headers})
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    async def Generate(self, request, context):
        body = {"model": self.model, "prompt": synthetic_prompt(f"{request.request_id}#1", request.prompt_length),
                "max_tokens": request.max_output_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
        held = None
        index = 0
        async with self.session.post(self.engine + "/v1/completions", json=body) as upstream:
            async for line in upstream.content:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                choices = json.loads(line[5:]).get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                chunk = common_pb2.TokenChunk(request_id=request.request_id, token_count=1, first_token_index=index)
                index += 1
                if index < request.max_output_tokens:
                    yield scheduler_pb2.GenerateResponse(tokens=chunk)
                else:  # the last token (the engine ignores EOS) waits for the record, as serve's does
                    held = chunk
        yield scheduler_pb2.GenerateResponse(tokens=held, record=scheduler_pb2.RequestRecord(
            request_id=request.request_id, status=common_pb2.REQUEST_STATUS_COMPLETED, output_tokens=index))


async def serve(engine: str, model: str) -> None:
    floor = Floor(engine, model)
    await floor.start()
    app = web.Application()
    app.router.add_post("/v1/completions", floor.proxy)
    app.router.add_post("/v1/chat/completions", floor.proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(floor, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"floor http={runner.addresses[0][1]} grpc={grpc_port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)
    await runner.cleanup()
    await floor.session.close()


@contextlib.contextmanager
def floor_process(engine_url: str, model: str) -> Iterator[tuple[str, str]]:
    """This relay on an engine, in a process of its own: yields (gRPC address, OpenAI base URL)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--engine", engine_url, "--model", model],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("floor "):
            raise RuntimeError(f"the floor relay did not start: {line!r}")
        ports = dict(word.split("=") for word in line.split()[1:])
        yield f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['http']}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, help="the engine's base URL, without /v1")
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.engine, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
