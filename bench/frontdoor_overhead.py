"""Front-door overhead: what going through infersched adds over calling the engine directly.

One real engine (llama-cpp-python's server with the tiny test model the engine
tests write; nothing is downloaded), and `infersched serve` with one
`backend: openai` pool on it (time_scale 1). The same requests go both ways,
one at a time and alternating (direct, then through infersched), so both see
the same engine state and machine load:
- direct: POST /v1/completions, streamed, through `workers.openai_engine` (aiohttp);
- through infersched: the scheduler's gRPC Generate with token counts (the
  HTTP front door had not landed when this was written), which the pool sends
  to the engine as the same synthetic prompt (`synthetic_prompt` of the
  request's attempt key, which this script sets) with the same parameters.
Reported: p50 of TTFT and end-to-end time as the client sees them on each path,
and their differences (the added latency). llama.cpp reuses the previous
prompt's KV, so the second request of a pair is faster: the order alternates
and the p50s are compared, not per-pair differences. Target: p50 added latency
<= 2 ms.

    python bench/frontdoor_overhead.py                 # 200 pairs, 64-token prompts, 16 tokens out
    python bench/frontdoor_overhead.py --pairs 500 --output-tokens 4
Writes bench/results/frontdoor_overhead.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import yaml  # noqa: E402

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from scheduler.live.openai_client import synthetic_prompt  # noqa: E402
from tests.engines.llama_server import MODEL_ALIAS, running_llama_server  # noqa: E402
from tests.engines.serve_process import start_serve, stop_serve  # noqa: E402
from tests.engines.tiny_llama import write_tiny_llama  # noqa: E402
from workers.openai_engine import OpenAIEngine  # noqa: E402


async def direct(engine: OpenAIEngine, key: str, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
    """(TTFT, end-to-end) seconds of one streamed request straight to the engine."""
    sent = time.perf_counter()
    first = None
    stream = engine.stream_completion(synthetic_prompt(key, prompt_tokens), max_tokens=output_tokens,
                                      temperature=0, ignore_eos=True)
    async with stream:
        async for _ in stream:
            if first is None:
                first = time.perf_counter()
    return first - sent, time.perf_counter() - sent


async def through(stub, request_id: str, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
    """(TTFT, end-to-end) seconds of the same request through the scheduler's Generate."""
    sent = time.perf_counter()
    first = None
    async for message in stub.Generate(scheduler_pb2.GenerateRequest(
            request_id=request_id, prompt_length=prompt_tokens, max_output_tokens=output_tokens), timeout=60):
        if first is None and message.HasField("tokens"):
            first = time.perf_counter()
        if message.HasField("record") and message.record.status != 1:
            raise RuntimeError(f"request {request_id} did not complete: {message.record.reason}")
    return first - sent, time.perf_counter() - sent


async def measure(engine_url: str, address: str, args) -> dict:
    rows = []
    async with OpenAIEngine(engine_url, MODEL_ALIAS) as engine, grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for i in range(args.warmup + args.pairs):
            request_id = f"bench-{i}"
            key = f"{request_id}#1"  # the attempt key the scheduler gives the first attempt
            # llama.cpp reuses the KV of the previous request's longest common prefix: the
            # second of a pair runs on a warm prompt, so the order alternates.
            if i % 2:
                t = await through(stub, request_id, args.prompt_tokens, args.output_tokens)
                d = await direct(engine, key, args.prompt_tokens, args.output_tokens)
            else:
                d = await direct(engine, key, args.prompt_tokens, args.output_tokens)
                t = await through(stub, request_id, args.prompt_tokens, args.output_tokens)
            if i >= args.warmup:
                rows.append((*d, *t))
    a = np.array(rows)

    def p50_ms(x):
        return round(float(np.percentile(x, 50)) * 1e3, 3)

    result = {"direct_ttft_ms_p50": p50_ms(a[:, 0]), "direct_e2e_ms_p50": p50_ms(a[:, 1]),
              "through_ttft_ms_p50": p50_ms(a[:, 2]), "through_e2e_ms_p50": p50_ms(a[:, 3])}
    # The added latency: p50 through minus p50 direct (each path ran first in half the pairs).
    result["added_ttft_ms_p50"] = round(result["through_ttft_ms_p50"] - result["direct_ttft_ms_p50"], 3)
    result["added_e2e_ms_p50"] = round(result["through_e2e_ms_p50"] - result["direct_e2e_ms_p50"], 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--serve-args", nargs="*", default=[], help="more `serve` flags, e.g. --realtime-priority 1")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "frontdoor_overhead.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="frontdoor-") as tmp:
        tmp = Path(tmp)
        model = write_tiny_llama(tmp / "tiny-llama.gguf")
        with running_llama_server(model, tmp) as engine:
            cluster = {"name": "one-engine", "pools": [{"name": "llama", "backend": "openai",
                                                        "endpoints": [engine.base_url], "model": MODEL_ALIAS,
                                                        "context_tokens": 512}]}
            (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
            proc, address, _ = start_serve(tmp / "cluster.yaml", *args.serve_args)
            try:
                result = asyncio.run(measure(engine.base_url, address, args))
            finally:
                stop_serve(proc)
    result.update(path="grpc Generate (token counts, synthetic prompt)", serve_args=args.serve_args, pairs=args.pairs,
                  prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", load_average=os.getloadavg()[0],
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
