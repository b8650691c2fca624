"""Step 1 of planning: what the planner needs to know about a workload.

Everything is in requests per second, so the three roles compose: a prefill
instance serves a request's prompt, a decode instance its output, a colocated
("both") instance both. Symbols used in this package's docstrings:

    lambda     arrival rate, requests/s
    L_in       mean prompt tokens;  Q_in = E[i^2] / E[i]
    L_dec      mean decode steps per request, E[o - 1] (the first token comes out of prefill)
    ctx, kv    decode-step-weighted means of a batch member's context, i + o/2, and of its
               KV reservation, i + o (a request sits in the batch for o - 1 steps, so the
               batch holds long outputs in proportion to their length)
    h          headroom: the busy share each instance is planned at (0.7: 30% spare)

`PlanError` and `check_unit` live here because every later step raises and
validates with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


class PlanError(ValueError):
    """A planning problem that cannot be solved as posed; the message names the key or constraint."""


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """What the planner needs to know about a workload.

    Demand: prefill_tokens_per_s = lambda * L_in, decode_tokens_per_s = lambda * L_dec.
    `input_pair_tokens` is Q_in = E[i^2] / E[i]: a prefill iteration of T tokens made of
    typical prompts has about T * (Q_in + 1) / 2 causal (query, key) pairs.
    """

    requests: int
    rate_rps: float
    mean_input_tokens: float
    p90_input_tokens: float
    mean_output_tokens: float
    p90_output_tokens: float
    input_pair_tokens: float
    decode_steps: float
    decode_context_tokens: float
    decode_kv_tokens: float
    description: str = ""

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.rate_rps * self.mean_input_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        return self.rate_rps * self.decode_steps

    def as_dict(self) -> dict:
        return {
            "requests": self.requests, "rate_rps": self.rate_rps,
            "mean_input_tokens": self.mean_input_tokens, "p90_input_tokens": self.p90_input_tokens,
            "mean_output_tokens": self.mean_output_tokens, "p90_output_tokens": self.p90_output_tokens,
            "decode_steps_per_request": self.decode_steps,
            "decode_context_tokens": self.decode_context_tokens, "decode_kv_tokens": self.decode_kv_tokens,
            "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "description": self.description,
        }


def stats_from_lengths(input_tokens: Sequence[int] | np.ndarray, output_tokens: Sequence[int] | np.ndarray,
                       rate_rps: float, description: str = "") -> WorkloadStats:
    """WorkloadStats from per-request prompt lengths i and output lengths o at `rate_rps`.

        L_in = mean(i)     Q_in = mean(i^2) / mean(i)     L_dec = mean(o - 1)
        ctx  = sum((i + o/2)(o - 1)) / sum(o - 1)   (mean context of a decode-batch member)
        kv   = sum((i + o)(o - 1)) / sum(o - 1)     (mean KV a member reserves: prompt + output)

    ctx and kv weight each request by its o - 1 decode steps, the time it spends in the
    batch. When no request decodes (all o <= 1), they fall back to plain means.
    """
    i = np.asarray(input_tokens, dtype=np.float64)
    o = np.asarray(output_tokens, dtype=np.float64)
    if len(i) != len(o):
        raise PlanError(f"{len(i)} prompt lengths but {len(o)} output lengths")
    if len(i) == 0:
        raise PlanError("the workload has no requests to plan for")
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise PlanError(f"the workload's arrival rate must be a positive number, got {rate_rps!r}")
    steps = np.maximum(o - 1.0, 0.0)
    weight = float(steps.sum())
    if weight > 0:
        ctx = float(((i + o / 2.0) * steps).sum() / weight)
        kv = float(((i + o) * steps).sum() / weight)
    else:
        ctx, kv = float(i.mean()), float((i + o).mean())
    mean_in = float(i.mean())
    return WorkloadStats(
        requests=len(i), rate_rps=float(rate_rps), mean_input_tokens=mean_in,
        p90_input_tokens=float(np.percentile(i, 90)), mean_output_tokens=float(o.mean()),
        p90_output_tokens=float(np.percentile(o, 90)),
        input_pair_tokens=float((i * i).mean() / mean_in) if mean_in > 0 else 0.0,
        decode_steps=float(steps.mean()), decode_context_tokens=ctx, decode_kv_tokens=kv,
        description=description)


def characterize(workload) -> WorkloadStats:
    """WorkloadStats of a `simulator.workload.Workload`: its rate and its requests' lengths."""
    rate = workload.rate_rps
    if rate is None:
        raise PlanError(f"{workload.description}: no arrival rate (a single request, or zero time span); "
                        "give --rate")
    inputs, outputs = [], []
    for chunk in workload.chunks():
        inputs.append(chunk.input_tokens)
        outputs.append(chunk.output_tokens)
    return stats_from_lengths(np.concatenate(inputs), np.concatenate(outputs), rate, workload.description)


def check_unit(name: str, value: Any, zero_ok: bool) -> None:
    """Raise PlanError unless `value` is a number in [0, 1] ((0, 1] when not zero_ok)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > 1 or value < 0 or (value == 0 and not zero_ok):
        raise PlanError(f"{name} must be a number in {'[0, 1]' if zero_ok else '(0, 1]'}, got {value!r}")
