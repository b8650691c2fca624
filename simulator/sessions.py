"""A trace with prefix reuse: real request lengths, multi-turn sessions and shared system prompts.

The public traces beside the repo carry lengths and times but no prompt
content, so nothing in them says which prompts share a prefix. This module
adds that structure, seeded and documented, on top of real lengths, and
writes it in Mooncake's format (`hash_ids` of 512-token blocks), so the same
file runs through `infersched simulate --trace` like any recorded trace, and a
recorded Mooncake trace can replace it.

The model, per request in arrival order (lengths resampled from the base
trace, prompt lengths optionally scaled by `input_scale` for long-context
studies, Poisson arrivals):

- Apps. `system_prompts` applications, chosen by Zipf popularity (exponent
  `zipf_exponent`), each with a system prompt of 1..`max_system_blocks`
  blocks fixed per app. A new conversation starts with its app's system
  prompt (cut to leave at least one block of its own).
- Sessions. With probability `followup_share` a request continues one of the
  `session_window` most recently active conversations: its prompt repeats
  that conversation's previous prompt (every full block of it) and adds new
  blocks. Lengths come from the base trace, so a follow-up continues a
  conversation whose previous prompt is shorter than its own; up to
  `followup_tries` recent conversations are drawn, and if none fits the
  request starts a new conversation instead.
- Blocks past the shared prefix get fresh ids: nothing else repeats.

Block ids follow Mooncake's convention: an id names a block *and* its whole
prefix, so two prompts share block k only when they share blocks 0..k.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from scheduler.config import PrefixCacheConfig
from simulator.traces import Trace

DEFAULT_BLOCK_TOKENS = PrefixCacheConfig().block_tokens  # 512, Mooncake's block size, what the engines assume


def session_trace(base: Trace, n_requests: int, rate_rps: float, *, seed: int = 0,
                  block_tokens: int = DEFAULT_BLOCK_TOKENS, followup_share: float = 0.5,
                  system_prompts: int = 64, zipf_exponent: float = 1.1, max_system_blocks: int = 4,
                  session_window: int = 1024, followup_tries: int = 8, input_scale: float = 1.0) -> Trace:
    """`n_requests` requests with lengths drawn from `base` and prefix structure as in the module doc."""
    if n_requests <= 0:
        raise ValueError(f"n_requests must be positive, got {n_requests}")
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be a positive number, got {rate_rps}")
    if not (math.isfinite(input_scale) and input_scale > 0):
        raise ValueError(f"input_scale must be a positive number, got {input_scale}")
    if not 0.0 <= followup_share <= 1.0:
        raise ValueError(f"followup_share must be in [0, 1], got {followup_share}")
    for name, value in (("block_tokens", block_tokens), ("system_prompts", system_prompts),
                        ("max_system_blocks", max_system_blocks), ("session_window", session_window),
                        ("followup_tries", followup_tries)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if base.rows == 0:
        raise ValueError(f"base trace {base.path} has no rows")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, base.rows, size=n_requests)
    inputs = base.input_tokens[rows].astype(np.int64)
    if input_scale != 1.0:
        inputs = np.maximum(np.rint(inputs * input_scale).astype(np.int64), 1)
    outputs = base.output_tokens[rows].astype(np.int64)
    gaps = rng.exponential(1.0 / rate_rps, size=n_requests)
    gaps[0] = 0.0
    arrival_s = np.cumsum(gaps)
    # Zipf popularity over apps, and each app's system prompt length in blocks.
    weights = 1.0 / np.arange(1, system_prompts + 1) ** zipf_exponent
    apps = rng.choice(system_prompts, size=n_requests, p=weights / weights.sum())
    system_blocks = rng.integers(1, max_system_blocks + 1, size=system_prompts)
    follow = rng.random(n_requests) < followup_share
    picks = rng.integers(0, session_window, size=(n_requests, followup_tries)).tolist()

    next_id = 0
    system_ids: list[list[int]] = []
    for k in system_blocks.tolist():
        system_ids.append(list(range(next_id, next_id + k)))
        next_id += k
    # Recent conversations, most recent last: each holds its last prompt's blocks.
    recent: list[list[int]] = []
    lengths = np.empty(n_requests, dtype=np.int64)
    values: list[int] = []
    n_blocks = ((inputs + block_tokens - 1) // block_tokens).tolist()
    inputs_list = inputs.tolist()
    for i in range(n_requests):
        nb = n_blocks[i]
        prefix: list[int] | None = None
        slot = -1
        if follow[i] and recent:
            window = len(recent)
            for pick in picks[i]:
                j = window - 1 - pick % window
                # Every full block of the previous prompt is shared; the new turn adds at least one.
                prev = recent[j]
                if len(prev) < nb:
                    prefix, slot = prev, j
                    break
        if prefix is None:
            prefix = system_ids[apps[i]][:max(nb - 1, 0)]
        fresh = nb - len(prefix)
        blocks = prefix + list(range(next_id, next_id + fresh))
        next_id += fresh
        values.extend(blocks)
        lengths[i] = nb
        # The conversation's next turn may share this prompt's full blocks only (a prompt
        # shorter than a block leaves nothing to share, and its conversation is not continued).
        full = blocks[:inputs_list[i] // block_tokens]
        if slot >= 0:
            del recent[slot]
        if full:
            recent.append(full)
            if len(recent) > session_window:
                del recent[0]
    offsets = np.zeros(n_requests + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    name = (f"sessions({Path(base.path).name}, n={n_requests}, rate={rate_rps:g}, seed={seed}, "
            f"followup={followup_share:g}, apps={system_prompts}"
            f"{f', input_scale={input_scale:g}' if input_scale != 1.0 else ''})")
    return Trace(path=name, format="mooncake", arrival_s=arrival_s, input_tokens=inputs,
                 output_tokens=outputs, hash_ids=(offsets, np.asarray(values, dtype=np.int64)))


def reuse_stats(trace: Trace, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> dict:
    """How much prefix reuse a trace offers: the share of prompt tokens in blocks an
    earlier prompt already had (an upper bound on what any cache of any size saves)."""
    if trace.hash_ids is None:
        raise ValueError(f"{trace.path} has no hash_ids")
    offsets, values = trace.hash_ids
    seen: set[int] = set()
    reusable = 0
    ids = values.tolist()
    off = offsets.tolist()
    inputs = trace.input_tokens.tolist()
    for i in range(trace.rows):
        k = 0
        for block in ids[off[i]:off[i + 1]]:
            if block not in seen:
                break
            k += 1
        reusable += min(k * block_tokens, max(inputs[i] - 1, 0))
        seen.update(ids[off[i]:off[i + 1]])
    total = int(trace.input_tokens.sum())
    # Distinct blocks: the working set a cache must hold to serve every reuse.
    return {"requests": trace.rows, "prompt_tokens": total, "reusable_prefix_tokens": reusable,
            "reusable_share": reusable / total if total else 0.0, "unique_blocks": len(seen)}


def write_mooncake(trace: Trace, path: str | Path) -> Path:
    """Write `trace` as Mooncake JSON lines (timestamp in ms, input/output lengths, hash_ids)."""
    if trace.hash_ids is None or trace.arrival_s is None:
        raise ValueError("a Mooncake trace needs timestamps and hash_ids")
    path = Path(path)
    offsets, values = trace.hash_ids
    ids = values.tolist()
    off = offsets.tolist()
    t_ms = (trace.arrival_s - trace.arrival_s[0]) * 1e3
    with path.open("w") as f:
        for i, (t, inp, out) in enumerate(zip(t_ms.tolist(), trace.input_tokens.tolist(),
                                              trace.output_tokens.tolist())):
            f.write(json.dumps({"timestamp": round(t, 3), "input_length": inp, "output_length": out,
                                "hash_ids": ids[off[i]:off[i + 1]]}, separators=(", ", ": ")))
            f.write("\n")
    return path
