"""What the prefix-cache tiers below HBM did in a run, for the summary JSON.

Per tier name (every pool's tiers of that name together; `store` for the
cluster's kv_store): prompt tokens served from it, bytes read into HBM and
written by demotion, the seconds of loading, the energy of the bytes moved
(both directions, at the tier's `energy_j_per_gb`) and the dollars of its
capacity over the run (at `usd_per_gb_hour`). HBM hits are the engines' total
less the tiers'. Energy and dollars are priced here, not in the engines: moving
a block costs the same whichever request it serves.
"""
from __future__ import annotations

from workers.kv_tiers import GB, HBM, STORE


def kv_tier_usage(engines, makespan_s: float) -> dict:
    """{"prefix_hit_tokens_by_tier": {hbm, tier..., store}, "kv_tiers": {name: figures}}."""
    hits = {HBM: sum(e.prefix_hit_tokens for e in engines)}
    tiers: dict[str, dict] = {}
    seen: set[int] = set()
    hours = makespan_s / 3600.0
    for engine in engines:
        prefix = engine.prefix
        if prefix is None or not prefix.deep:
            continue
        for level, served in zip(prefix.levels, prefix.hit_tokens):
            name = STORE if level.shared else level.tier.name
            hits[name] = hits.get(name, 0) + served
            hits[HBM] -= served
            if id(level) in seen:  # the shared store: one level, many instances
                continue
            seen.add(id(level))
            tier = level.tier
            row = tiers.setdefault(name, {"capacity_gb": 0.0, "read_bytes": 0.0, "written_bytes": 0.0,
                                          "load_s": 0.0, "energy_j": 0.0, "cost_usd": 0.0,
                                          "read_gb_s": tier.read_gb_s, "usd_per_gb_hour": tier.usd_per_gb_hour,
                                          "energy_j_per_gb": tier.energy_j_per_gb})
            capacity_gb = level.capacity * prefix.block_bytes / GB
            row["capacity_gb"] += capacity_gb
            row["read_bytes"] += level.read_bytes
            row["written_bytes"] += level.written_bytes
            row["load_s"] += level.read_bytes / tier.read_bytes_per_s
            row["energy_j"] += (level.read_bytes + level.written_bytes) * tier.energy_j_per_byte
            row["cost_usd"] += capacity_gb * tier.usd_per_gb_hour * hours
    # Tiers first as configured, the store last.
    if STORE in hits:
        hits[STORE] = hits.pop(STORE)
    if STORE in tiers:
        tiers[STORE] = tiers.pop(STORE)
    return {"prefix_hit_tokens_by_tier": hits, "kv_tiers": tiers}
