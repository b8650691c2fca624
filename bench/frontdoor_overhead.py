"""Front-door overhead: what going through infersched adds over calling the engine directly.

One real engine (llama-cpp-python's server with the tiny test model the engine
tests write; nothing is downloaded), and `infersched serve --http-port` with one
`backend: openai` pool on it (time_scale 1). Requests go one at a time, each
iteration once down every path, the order rotating, so all paths see the same
engine and machine load:
- `direct`: POST /v1/completions, streamed, through `workers.openai_engine` (aiohttp);
- `grpc`: the scheduler's gRPC Generate with token counts; the pool sends the
  engine a synthetic prompt of that length (`synthetic_prompt`);
- with `--http`: `openai_direct`, the official `openai` client streaming from the
  engine, and `openai_http`, the same client through `serve --http-port` (the
  front door forwards the client's prompt text to the engine);
- with `--baseline DIR`: `grpc_baseline` (and `openai_http_baseline`), the same
  through a second `serve` run from another checkout (another commit), so a
  change is measured before and after in one window;
- with `--floor`: `grpc_floor` (and `openai_floor`), the same through
  bench/frontdoor_floor.py, a plain process that only relays (no Ray, no
  scheduler): the cost of any one-hop front door on this machine, the floor
  under infersched's added latency.
Every prompt starts with another word than the one sent before it (64 tokens of
one-token words), so llama.cpp reuses no KV and every request runs cold. A gap
(`--gap-ms`, default 20) separates requests, so work a path leaves behind after
its answer (a serve's load report, the engine's tokenizer counting a prompt
whose answer carried no usage) lands in the gap, not on the next path's request.
Reported: p50 TTFT and end-to-end time as the client sees them on each path,
the added latency (p50 through minus p50 of its direct path) and the p50 of the
per-iteration differences, as JSON and as a table that names each path.
Target: p50 added latency <= 2 ms.

    python bench/frontdoor_overhead.py                 # 200 iterations, gRPC path only
    python bench/frontdoor_overhead.py --http --pairs 150
    python bench/frontdoor_overhead.py --baseline /tmp/before --pairs 150   # A/B against another checkout
    python bench/frontdoor_overhead.py --http --floor --pairs 150           # and the one-hop floor
Writes bench/results/frontdoor_overhead.json.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import yaml  # noqa: E402

from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from scheduler.live.openai_client import SYNTHETIC_WORDS, synthetic_prompt  # noqa: E402
from tests.engines.llama_server import MODEL_ALIAS, running_llama_server  # noqa: E402
from tests.engines.tiny_llama import write_tiny_llama  # noqa: E402
from tests.serve_process import served_process  # noqa: E402
from live_measure import write_result  # noqa: E402
from frontdoor_floor import floor_process  # noqa: E402
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


async def through(stub, request_id: str, prompt_tokens: int, output_tokens: int) -> tuple[float, float, float]:
    """(TTFT, end-to-end, record) seconds of the same request through the scheduler's
    Generate: end-to-end when the call has closed (its status), record when the message
    with the last tokens and the request's record arrived."""
    sent = time.perf_counter()
    first = record = None
    async for message in stub.Generate(scheduler_pb2.GenerateRequest(
            request_id=request_id, prompt_length=prompt_tokens, max_output_tokens=output_tokens), timeout=60):
        if first is None and message.HasField("tokens"):
            first = time.perf_counter()
        if message.HasField("record"):
            record = time.perf_counter()
            if message.record.status != 1:
                raise RuntimeError(f"request {request_id} did not complete: {message.record.reason}")
    return first - sent, time.perf_counter() - sent, record - sent


async def openai_stream(client, prompt: str, output_tokens: int) -> tuple[float, float]:
    """(TTFT, end-to-end) seconds of one streamed completion with the official client."""
    sent = time.perf_counter()
    first = None
    stream = await client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=output_tokens,
                                             temperature=0, stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter()
    return first - sent, time.perf_counter() - sent


class ColdKeys:
    """Names whose synthetic prompts start with another word than the prompt made just
    before (see `synthetic_prompt`): llama.cpp then reuses no KV from the last request."""

    def __init__(self):
        self.last = None
        self.n = 0

    def __call__(self, prefix: str, suffix: str = "") -> str:
        while True:
            self.n += 1
            name = f"{prefix}-{self.n}"
            start = zlib.crc32((name + suffix).encode()) % len(SYNTHETIC_WORDS)
            if start != self.last:
                self.last = start
                return name


# Each through path and the direct path it is compared with.
BASE = {"grpc": "direct", "grpc_baseline": "direct", "grpc_floor": "direct", "openai_http": "openai_direct",
        "openai_http_baseline": "openai_direct", "openai_floor": "openai_direct"}
WHAT = {
    "direct": "aiohttp client -> engine",
    "grpc": "gRPC Generate -> serve (this checkout) -> engine",
    "grpc_baseline": "gRPC Generate -> serve (--baseline checkout) -> engine",
    "grpc_floor": "gRPC Generate -> bare relay process -> engine",
    "openai_direct": "openai client -> engine",
    "openai_http": "openai client -> serve --http-port (this checkout) -> engine",
    "openai_http_baseline": "openai client -> serve --http-port (--baseline checkout) -> engine",
    "openai_floor": "openai client -> bare relay process -> engine",
}


def table(result: dict) -> str:
    """The result as a table a reader can take in without this file: p50 ms per path."""
    width = max(len(WHAT[name]) for name in result["paths"])
    rows = [f"{'path':21s} {'what':{width}s}   TTFT    e2e  added TTFT (iter.)  added e2e (iter.)"]
    for name in result["paths"]:
        line = (f"{name:21s} {WHAT[name]:{width}s} {result[f'{name}_ttft_ms_p50']:6.2f} "
                f"{result[f'{name}_e2e_ms_p50']:6.2f}")
        if name in BASE:
            prefix = "" if name == "grpc" else name + "_"
            line += (f"  {result[f'{prefix}added_ttft_ms_p50']:6.2f} ({result[f'{prefix}iteration_added_ttft_ms_p50']:5.2f})"
                     f"     {result[f'{prefix}added_e2e_ms_p50']:6.2f} ({result[f'{prefix}iteration_added_e2e_ms_p50']:5.2f})")
        rows.append(line)
    rows.append("p50 ms over the iterations; added = p50 through - p50 of its direct path (iter. = p50 of each "
                "iteration's difference). Target: added <= 2 ms.")
    for name in result["paths"]:
        if f"{name}_vs_baseline_ttft_ms_p50" in result:
            rows.append(f"{name} minus {name}_baseline, p50 of each iteration's difference: TTFT "
                        f"{result[f'{name}_vs_baseline_ttft_ms_p50']:+.2f} ms, e2e "
                        f"{result[f'{name}_vs_baseline_e2e_ms_p50']:+.2f} ms (negative: this checkout faster)")
    return "\n".join(rows)


async def measure(engine_url: str, served: dict[str, tuple[str, str]], args) -> dict:
    """`served`: label ("" or "_baseline" or "_floor") -> (gRPC address, HTTP base URL) of a
    serve (or of the floor relay)."""
    import openai

    keys = ColdKeys()
    async with contextlib.AsyncExitStack() as stack:
        engine = await stack.enter_async_context(OpenAIEngine(engine_url, MODEL_ALIAS))
        paths = {"direct": lambda: direct(engine, keys("direct"), args.prompt_tokens, args.output_tokens)}
        for label, (address, http) in served.items():
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            # The attempt key the scheduler gives the first attempt, `<request id>#1`, seeds its prompt.
            paths["grpc" + label] = (lambda stub=stub: through(stub, keys("grpc", "#1"), args.prompt_tokens,
                                                               args.output_tokens))
            if args.http:
                client = openai.AsyncOpenAI(base_url=http, api_key="unused", max_retries=0, timeout=60)
                paths["openai_floor" if label == "_floor" else "openai_http" + label] = (
                    lambda client=client: openai_stream(
                    client, synthetic_prompt(keys("http"), args.prompt_tokens), args.output_tokens))
        if args.http:
            client = openai.AsyncOpenAI(base_url=engine_url + "/v1", api_key="unused", max_retries=0, timeout=60)
            paths["openai_direct"] = lambda: openai_stream(client, synthetic_prompt(keys("http"), args.prompt_tokens),
                                                           args.output_tokens)
        names = list(paths)
        rows = {name: [] for name in names}
        for i in range(args.warmup + args.pairs):
            shift = i % len(names)  # rotate which path goes first
            for name in names[shift:] + names[:shift]:
                await asyncio.sleep(args.gap_ms / 1e3)
                t = await paths[name]()
                if i >= args.warmup:
                    rows[name].append(t)
    a = {name: np.array(r) for name, r in rows.items()}

    def p50_ms(x):
        return round(float(np.percentile(x, 50)) * 1e3, 3)

    result = {}
    for name in names:
        result[f"{name}_ttft_ms_p50"] = p50_ms(a[name][:, 0])
        result[f"{name}_e2e_ms_p50"] = p50_ms(a[name][:, 1])
        if a[name].shape[1] > 2:
            result[f"{name}_record_ms_p50"] = p50_ms(a[name][:, 2])
    for name in names:
        if name in BASE:
            base = BASE[name]
            prefix = "" if name == "grpc" else name + "_"  # `added_*` is the gRPC path's, as before
            for i, what in enumerate(("ttft", "e2e")):
                result[f"{prefix}added_{what}_ms_p50"] = round(
                    result[f"{name}_{what}_ms_p50"] - result[f"{base}_{what}_ms_p50"], 3)
                # Both requests of an iteration ran cold a moment apart: the p50 of their
                # differences is a second, less load-sensitive view of the same quantity.
                result[f"{prefix}iteration_added_{what}_ms_p50"] = p50_ms(a[name][:, i] - a[base][:, i])
    for name in names:
        if name.endswith("_baseline") and name[:-len("_baseline")] in a:
            # This checkout against the baseline's, each iteration's pair a moment apart:
            # the least load-sensitive view of what a change did (negative: this one faster).
            after = name[:-len("_baseline")]
            for i, what in enumerate(("ttft", "e2e")):
                result[f"{after}_vs_baseline_{what}_ms_p50"] = p50_ms(a[after][:, i] - a[name][:, i])
    result["paths"] = names
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="iterations (one request down every path each)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--http", action="store_true", help="also the official openai client, direct and through "
                                                            "serve --http-port")
    parser.add_argument("--baseline", type=Path, help="another checkout: a second serve runs from it, measured "
                                                      "in the same rotation (before/after a change)")
    parser.add_argument("--floor", action="store_true", help="also through bench/frontdoor_floor.py, a bare "
                                                               "relay process: the floor of one hop")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="idle time before each request (background "
                                                                     "work of the one before settles)")
    parser.add_argument("--serve-args", nargs="*", default=[], help="more `serve` flags, e.g. --realtime-priority 1")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "frontdoor_overhead.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="frontdoor-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        model = write_tiny_llama(tmp / "tiny-llama.gguf")
        engine = stack.enter_context(running_llama_server(model, tmp))
        cluster = {"name": "one-engine", "pools": [{"name": "llama", "backend": "openai",
                                                    "endpoints": [engine.base_url], "model": MODEL_ALIAS,
                                                    "context_tokens": 512}]}
        (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
        served = {}
        for label, checkout in (("", ROOT), ("_baseline", args.baseline)):
            if checkout is None:
                continue
            serve = stack.enter_context(served_process(tmp / "cluster.yaml", "--metrics-port", "-1", "--http-port", "0",
                                                       *args.serve_args,
                                                       checkout=checkout.resolve()))
            served[label] = (serve.address, serve.http)
        if args.floor:
            served["_floor"] = stack.enter_context(floor_process(engine.base_url, MODEL_ALIAS))
        result = asyncio.run(measure(engine.base_url, served, args))
    result.update(baseline=str(args.baseline) if args.baseline else None, serve_args=args.serve_args,
                  gap_ms=args.gap_ms,
                  pairs=args.pairs, prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens)
    write_result(result, args.out, load_before)
    print(table(result))
    print(f"load average {result['load_average'][0]} before, {result['load_average'][1]} after "
          f"({result['machine']}, {result['date']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
