"""A live scheduler's stats as `infersched stats` prints them: a table, or the proto's JSON mapping."""
from __future__ import annotations

import json

from infersched.v1 import common_pb2, scheduler_pb2

# Seconds a client waits for one unary call (GetStats) before giving up.
RPC_TIMEOUT_S = 10.0


def format_stats(s: scheduler_pb2.SchedulerStats) -> str:
    def lat(p: common_pb2.LatencyPercentiles, scale: float = 1.0, unit: str = "ms") -> str:
        if not p.samples:
            return "-"
        return (f"p50 {p.p50_s * scale:.3g}{unit}  p90 {p.p90_s * scale:.3g}{unit}  p99 {p.p99_s * scale:.3g}{unit}"
                f"  (n={p.samples:,})")

    lines = [
        f"cluster {s.cluster} | policy {s.policy} | up {s.uptime_s:,.1f} s (modelled)",
        f"requests {s.requests_total:,}   completed {s.requests_completed:,}   rejected {s.requests_rejected:,}   "
        f"failed {s.requests_failed:,}   in flight {s.in_flight:,}   invalid {s.requests_invalid:,}",
    ]
    for reason, count in sorted(s.reasons.items()):
        lines.append(f"  {count:,}: {reason}")
    lines += [
        f"TTFT        {lat(s.ttft_s, 1e3)}",
        f"TPOT        {lat(s.tpot_s, 1e3)}",
        f"end-to-end  {lat(s.e2e_s, 1.0, ' s')}",
        f"policy      {lat(s.scheduling_overhead_s, 1e6, ' us')} per decision, {s.decisions_total:,} decisions",
        f"SLO attainment {s.slo_attainment * 100:.1f}%   energy {s.energy_j / 1e3:,.1f} kJ   cost ${s.cost_usd:,.4f}   "
        f"tokens in {s.input_tokens:,} / out {s.output_tokens:,}",
        "",
        f"{'pool':<16}{'device':<10}{'role':<9}{'inst':>5}{'queue':>7}{'running':>8}{'completed':>10}"
        f"{'util':>6}{'kv free':>9}{'energy kJ':>11}{'cost $':>9}",
    ]
    for p in s.pools:
        role = common_pb2.Role.Name(p.role).removeprefix("ROLE_").lower()
        kv = p.kv_free_tokens / p.kv_capacity_tokens if p.kv_capacity_tokens else 0.0
        lines.append(f"{p.name[:15]:<16}{p.device:<10}{role:<9}{p.instances:>5}{p.queue_depth:>7}{p.running:>8}"
                     f"{p.completed:>10,}{p.utilization * 100:>5.0f}%{kv * 100:>8.0f}%{p.energy_j / 1e3:>11,.1f}"
                     f"{p.cost_usd:>9.4f}")
    return "\n".join(lines)


def stats_json(s: scheduler_pb2.SchedulerStats) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(s, preserving_proto_field_name=True), indent=2)
