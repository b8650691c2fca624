"""What the prefix-cache tiers below HBM did in a run, for the summary JSON.

Per tier name (every pool's tiers of that name together; `store` for the
cluster's kv_store): prompt tokens served from it, bytes read into HBM and
written (demotions, write-through), the seconds of loading, the energy of the
bytes moved (both directions, at the tier's `energy_j_per_gb`) and the dollars
of its capacity over the run (at `usd_per_gb_hour`). HBM hits are the engines'
total less the tiers'. Energy and dollars are priced here, not in the engines:
moving a block costs the same whichever request it serves. A simulation reads
its engines; a live replay the per-tier counts the workers reported
(`live_kv_tier_usage`), with capacities from the cluster file.
"""
from __future__ import annotations

from workers.kv_tiers import GB, HBM, STORE, KvTier


def _row(tier: KvTier) -> dict:
    return {"capacity_gb": 0.0, "read_bytes": 0.0, "written_bytes": 0.0, "load_s": 0.0, "energy_j": 0.0,
            "cost_usd": 0.0, "read_gb_s": tier.read_gb_s, "usd_per_gb_hour": tier.usd_per_gb_hour,
            "energy_j_per_gb": tier.energy_j_per_gb}


def _add(row: dict, tier: KvTier, capacity_gb: float, read: float, written: float, hours: float) -> None:
    row["capacity_gb"] += capacity_gb
    row["read_bytes"] += read
    row["written_bytes"] += written
    row["load_s"] += read / tier.read_bytes_per_s
    row["energy_j"] += (read + written) * tier.energy_j_per_byte
    row["cost_usd"] += capacity_gb * tier.usd_per_gb_hour * hours


def _store_last(hits: dict, tiers: dict) -> dict:
    """Tiers first as configured, the store last."""
    if STORE in hits:
        hits[STORE] = hits.pop(STORE)
    if STORE in tiers:
        tiers[STORE] = tiers.pop(STORE)
    return {"prefix_hit_tokens_by_tier": hits, "kv_tiers": tiers}


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
            row = tiers.setdefault(name, _row(level.tier))
            _add(row, level.tier, level.capacity * prefix.block_bytes / GB, level.read_bytes, level.written_bytes,
                 hours)
    return _store_last(hits, tiers)


def live_kv_tier_usage(cluster, hit_tokens: int, counts: dict, makespan_s: float) -> dict:
    """The same from a live run: `hit_tokens` served from every level, `counts` per tier name
    (hit_tokens, read_bytes, written_bytes) summed over the workers; the capacity each level
    has in the cluster file (as the simulator sizes it), priced over `makespan_s`."""
    hits = {HBM: hit_tokens}
    tiers: dict[str, dict] = {}
    hours = makespan_s / 3600.0
    block_tokens = cluster.config.prefix_cache.block_tokens
    capacity_gb: dict[str, float] = {}
    kinds: dict[str, KvTier] = {}
    for pool in cluster.pools:
        if pool.role.name == "DECODE":
            continue
        block_bytes = block_tokens * pool.perf.kv_bytes_per_token
        for tier in pool.config.kv_tiers:
            kinds.setdefault(tier.name, tier)
            capacity_gb[tier.name] = (capacity_gb.get(tier.name, 0.0)
                                      + pool.config.instances * tier.capacity_blocks(block_bytes) * block_bytes / GB)
    perfs = {p.perf.model.name: p.perf for p in cluster.pools if p.role.name != "DECODE"}
    for model, level in cluster.make_stores().items():
        kinds[STORE] = level.tier
        capacity_gb[STORE] = capacity_gb.get(STORE, 0.0) + level.capacity * block_tokens * perfs[model].kv_bytes_per_token / GB
    for name, (served, read, written) in counts.items():
        hits[name] = served
        hits[HBM] -= served
        tier = kinds[name]
        _add(tiers.setdefault(name, _row(tier)), tier, capacity_gb.get(name, 0.0), read, written, hours)
    return _store_last(hits, tiers)
