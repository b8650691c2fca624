"""Fleet sizing, held out: size a pool on one slice of requests (SIZING_SEED), judge it on others (the
evaluation seeds), and show what the sizing rule does.

`sized_family` walks the instance count k of one configuration upward on the sizing slice and stops
where the rule picks its answer; then every k up to one past that answer runs on
every evaluation seed. From those runs:
  - whole: the rule's k (the fewest meeting the target, or within half a point of the best attainable
    when none does), each seed's run at that k;
  - fractional: a load-proportional fleet, k* = where attainment on the sizing slice crosses the same
    threshold, interpolated between whole counts; its energy and dollars are each seed's interpolated
    linearly between the runs at floor(k*) and ceil(k*) (k* = 1 when one instance already meets it);
  - by_k: the runs of the counts around it (every count with every_size), the sizing rule's effect laid out.
"""
from __future__ import annotations

import math

from bench.economics import common
from bench.economics.common import digest, summaries

SIZING_SEED = 1  # a slice of requests no evaluation seed replays
TARGET = 0.99
NEAR_BEST = 0.005


def rule(attainment: list[tuple[int, float]], target: float = TARGET) -> tuple[int, float]:
    """(whole k, threshold) from (k, attainment) pairs in ascending k, as `sized_family` stops."""
    for k, a in attainment:
        if a >= target:
            return k, target
    best = max(a for _, a in attainment)
    threshold = best - NEAR_BEST
    return min(k for k, a in attainment if a >= threshold), threshold


def fractional_k(attainment: list[tuple[int, float]], whole: int, threshold: float) -> float:
    by_k = dict(attainment)
    below = by_k.get(whole - 1)
    if below is None or below >= threshold:
        return float(whole)
    return whole - 1 + (threshold - below) / (by_k[whole] - below)


def size(make_config, policy: str, params: dict | None, workload_at, counts: list[int]) -> dict:
    """The sizing half: attainment on the sizing slice at ascending counts until the rule can answer."""
    seen: list[tuple[int, float]] = []
    for lo in range(0, len(counts), common.WIDTH[0]):
        batch = counts[lo:lo + common.WIDTH[0]]
        for c, s in zip(batch, summaries([(make_config(c), policy, workload_at(SIZING_SEED), params)
                                         for c in batch])):
            seen.append((c, s["slo_attainment"]))
        if any(a >= TARGET for _, a in seen) or (len(seen) >= 3 and seen[-1][1] <= seen[-3][1] + 0.001):
            break
    whole, threshold = rule(seen)
    return {"sizing_seed": SIZING_SEED, "sizing": seen, "threshold": threshold, "whole": whole,
            "fractional_k": fractional_k(seen, whole, threshold)}


def evaluate(sized: dict, make_config, policy: str, params: dict | None, workload_at, counts: list[int],
             every_size: bool = False) -> dict:
    """The evaluation half: the sizes around the rule's (whole - 1, whole, whole + 1: the fractional fleet
    lies between the first two), or every size up to whole + 1, on every evaluation seed."""
    whole = sized["whole"]
    ks = [k for k in counts if k <= whole + 1 and (every_size or k >= whole - 1)]
    items = [(make_config(k), policy, workload_at(seed), params) for k in ks for seed in common.SEEDS]
    runs = [digest(config, policy, params, s) for (config, *_), s in zip(items, summaries(items))]
    by_k = {str(k): runs[i * len(common.SEEDS):(i + 1) * len(common.SEEDS)] for i, k in enumerate(ks)}
    return dict(sized, by_k=by_k)


def sized_family(make_config, policy: str, params: dict | None, workload_at, counts: list[int],
                 every_size: bool = False) -> dict:
    """Size on the sizing slice, then run the sizes around the rule's on every evaluation seed."""
    return evaluate(size(make_config, policy, params, workload_at, counts), make_config, policy, params,
                    workload_at, counts, every_size)


def tuned_family(make_config, variants: list, policy: str, params: dict | None, workload_at, counts: list[int],
                 every_size: bool = False, price=None) -> dict:
    """Every variant (make_config(variant, k): a token budget, an upper-pool layout) sized on the sizing slice;
    the one with the cheapest whole fleet (`price(config)`, default the instance count), then the smallest
    fractional fleet, is evaluated on the evaluation seeds. The choice reads the sizing slice only."""
    sized = {}
    for v in variants:
        sized[v] = size(lambda k, v=v: make_config(v, k), policy, params, workload_at, counts)
    def key(v):
        whole = sized[v]["whole"]
        return (price(make_config(v, whole)) if price else whole, sized[v]["fractional_k"])
    best = min(variants, key=key)  # ties: the first listed
    fam = evaluate(sized[best], lambda k: make_config(best, k), policy, params, workload_at, counts, every_size)
    return fam | {"variant": best, "variants": [[v, sized[v]["whole"], sized[v]["fractional_k"]] for v in variants]}


def at_whole(family: dict) -> list[dict]:
    """Each evaluation seed's run at the rule's whole count."""
    return family["by_k"][str(family["whole"])]


def fractional(family: dict, key: str) -> list[float]:
    """Each evaluation seed's `key` (energy_j, cost_usd) for the fractional fleet."""
    k = family["fractional_k"]
    lo, hi = math.floor(k), math.ceil(k)
    a, b = family["by_k"][str(lo)], family["by_k"][str(hi)]
    return [x[key] + (k - lo) * (y[key] - x[key]) for x, y in zip(a, b)]
