"""A live scheduler's stats as `infersched stats` prints them: a table, or JSON keyed as `simulate --json` is."""
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
    if s.prompt_lengths:
        lines.append("prompt lengths  " + "   ".join(f"{source} {n:,}" for source, n in sorted(s.prompt_lengths.items())))
    for kind, j in sorted(s.judgements.items()):
        lines.append(f"{kind} passes {j.passes:,} on {j.pool or 'no pool (charged at batch 1)'}: {j.seconds:,.2f} s "
                     f"({j.queue_s:,.2f} s queued), {j.energy_j / 1e3:,.2f} kJ, ${j.cost_usd:,.4f}"
                     + (f", {j.failed:,} failed" if j.failed else ""))
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


def latency_dict(p: common_pb2.LatencyPercentiles) -> dict:
    """Percentiles in seconds under the simulate summary's names (p50, p90, p99, mean), and their sample count."""
    return {"p50": p.p50_s, "p90": p.p90_s, "p99": p.p99_s, "mean": p.mean_s, "samples": p.samples}


def stats_dict(s: scheduler_pb2.SchedulerStats) -> dict:
    """The stats as `stats --json` prints them: numbers as numbers, keys as in `simulate --json` where the
    meaning is the same (requests, completed, ttft_s.p50, pools.NAME.energy_j, ...).

    reject_codes counts rejections and failures by reason code, as the simulate and replay summaries do.
    """
    pools = {}
    for p in s.pools:
        pools[p.name] = {
            "device": p.device, "model": p.model, "role": common_pb2.Role.Name(p.role).removeprefix("ROLE_").lower(),
            "instances": p.instances, "chips_per_instance": p.chips_per_instance, "queue_depth": p.queue_depth,
            "running": p.running, "completed": p.completed, "prefill_tokens": p.prefill_tokens,
            "decode_tokens": p.decode_tokens, "utilization": p.utilization, "energy_j": p.energy_j,
            "cost_usd": p.cost_usd, "kv_free_tokens": p.kv_free_tokens, "kv_capacity_tokens": p.kv_capacity_tokens}
        pools[p.name]["prefix_hit_tokens"] = p.prefix_hit_tokens
        if p.kv_tiers:  # prefix-cache levels below HBM: what each served and moved
            pools[p.name]["kv_tiers"] = {t.name: {"hit_tokens": t.hit_tokens, "read_bytes": t.read_bytes,
                                                  "written_bytes": t.written_bytes} for t in p.kv_tiers}
        if p.HasField("speculative"):  # as the simulate summary's pools.NAME.speculative, less tokens_per_round
            pools[p.name]["speculative"] = {"draft_model": p.speculative.draft_model,
                                            "draft_tokens": p.speculative.draft_tokens,
                                            "acceptance": p.speculative.acceptance}
        if p.prompt_token_counts:  # real engines: how prompt lengths were counted
            pools[p.name]["prompt_token_counts"] = dict(sorted(p.prompt_token_counts.items()))
    return {
        "cluster": s.cluster, "policy": s.policy, "uptime_s": s.uptime_s, "started_unix_s": s.started_unix_s,
        "requests": s.requests_total, "completed": s.requests_completed, "rejected": s.requests_rejected,
        "failed": s.requests_failed, "invalid": s.requests_invalid, "in_flight": s.in_flight,
        "reject_codes": dict(sorted(s.reasons.items())), "decisions": s.decisions_total,
        "scheduling_overhead_s": latency_dict(s.scheduling_overhead_s), "ttft_s": latency_dict(s.ttft_s),
        "tpot_s": latency_dict(s.tpot_s), "e2e_s": latency_dict(s.e2e_s), "slo_attainment": s.slo_attainment,
        "input_tokens": s.input_tokens, "output_tokens": s.output_tokens, "energy_j": s.energy_j,
        "cost_usd": s.cost_usd, "prompt_lengths": dict(sorted(s.prompt_lengths.items())),
        # Routers' passes by kind (scheduler/live/judges.py), as the simulator's summary has them.
        "judgements": {kind: {"passes": j.passes, "failed": j.failed, "unplaced": j.unplaced, "seconds": j.seconds,
                              "queue_s": j.queue_s, "energy_j": j.energy_j, "cost_usd": j.cost_usd,
                              "apart_energy_j": j.apart_energy_j, "apart_cost_usd": j.apart_cost_usd,
                              "device": j.device, "model": j.model, "pool": j.pool}
                       for kind, j in sorted(s.judgements.items())},
        "pools": pools,
    }


def stats_json(s: scheduler_pb2.SchedulerStats) -> str:
    return json.dumps(stats_dict(s), indent=2)
