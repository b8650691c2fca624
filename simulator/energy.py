"""The energy boundary: board, facility and marginal energy of a run, per pool and in all.

`energy_j` everywhere else is board energy: what the chips draw (idle power of
every provisioned instance plus the activity-dependent part). Two wider
boundaries sit beside it:

- facility: board x (1 + the device's `host_power_share`) x the pool's PUE.
  The host share is what the server (CPUs, switches, fans, power supplies) or
  the laptop (DRAM, fabric, adapter) draws beyond the chip; PUE is the
  building's cooling and power distribution on top (pool key `pue`, default by
  device kind: scheduler/config.py). Every device is counted as a dedicated
  server here: a pooled laptop serving others is a small server farm.
- marginal: what serving adds. Rented and datacenter devices are provisioned
  for the work, so their marginal energy is their facility energy; an owned
  edge device (no hourly price) would be on for its owner anyway, so only its
  dynamic energy counts, at the wall ((1 + host share) x PUE).

The default shares are full-load ratios applied at every load (an upper end
for hosts that idle lower); docs/ECONOMICS.md states them with the results.
"""
from __future__ import annotations

from scheduler.config import DEFAULT_DATACENTER_PUE, DEFAULT_EDGE_PUE


def pool_pue(pool) -> float:
    """The pool's PUE: its `pue` key, else the default for its device kind."""
    if pool.config.pue is not None:
        return pool.config.pue
    return DEFAULT_EDGE_PUE if pool.perf.device.kind == "edge" else DEFAULT_DATACENTER_PUE


def is_owned_edge(pool) -> bool:
    """An edge device with no hourly price: somebody's own laptop or phone."""
    return pool.perf.device.kind == "edge" and pool.perf.price_usd_per_s == 0.0


def pool_boundary(pool, usage) -> dict:
    """Facility and marginal energy of one pool from its board energy (a PoolUsage)."""
    host = getattr(pool.perf.device, "host_power_share", 0.0)  # a learned (openai) pool has none
    wall = (1.0 + host) * pool_pue(pool)
    facility = usage.energy_j * wall
    marginal = usage.dynamic_energy_j * wall if is_owned_edge(pool) else facility
    return {"facility_energy_j": facility, "marginal_energy_j": marginal, "pue": pool_pue(pool),
            "host_power_share": host, "serving": pool.config.serving.value}


def judgement_wall(device_name: str) -> float:
    """Facility energy per board joule of a router's or verifier's instance (default PUE of its kind)."""
    from workers.devices import get_device

    device = get_device(device_name)
    pue = DEFAULT_EDGE_PUE if device.kind == "edge" else DEFAULT_DATACENTER_PUE
    return (1.0 + device.host_power_share) * pue


def boundary_summary(cluster, usages, pool_rows: dict, overheads: dict | None = None) -> dict:
    """Run totals for the summary; adds each pool's boundary fields to `pool_rows` (name -> dict).
    Router and verifier instances (`overheads`, simulator/sim.py) are provisioned for the work:
    their facility energy is their marginal energy too (judgements run on a pool are in its rows)."""
    facility = marginal = 0.0
    for row in (overheads or {}).values():
        if row.get("pool"):
            continue  # run on a pool: in its energy below
        wall = row["energy_j"] * judgement_wall(row["device"])
        facility += wall
        marginal += wall
    for pool, usage in zip(cluster.pools, usages):
        row = pool_boundary(pool, usage)
        pool_rows[pool.name].update(row)
        facility += row["facility_energy_j"]
        marginal += row["marginal_energy_j"]
    return {"facility_energy_j": facility, "marginal_energy_j": marginal}
