"""Step 2 of planning: what one instance of each menu option serves within the SLOs.

For every (option, role) the capacity in requests/s at 100% busy, its price
and its power terms come from the same performance model the simulator runs
(`workers.perf.InstancePerf`); `_option_capacities` documents the formulas
(symbols as in `simulator.plan.stats`). Roles an option cannot serve within
the SLOs are returned as `Excluded` with the reason, and `Probe` keeps the
single-request figures that explain an SLO no option meets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from scheduler.types import Role
from simulator.plan.menu import ROLE_NAMES, Excluded, MenuOption
from simulator.plan.stats import WorkloadStats
from workers.models import ModelSpec
from workers.perf import InstancePerf

# A decode-only option whose workload has no decode steps (every output is one token)
# never limits the plan; this stands in for "unbounded" without an infinite coefficient.
_UNBOUNDED_RPS = 1e6


@dataclass(frozen=True, slots=True)
class OptionCapacity:
    """What one instance of an option serves in one role, at 100% busy, within the SLOs.

    The solver reads only `name`, `role`, `model`, `requests_per_s`, `price_usd_per_hour`,
    `max_instances`, `capability` and the power terms; the rest documents the operating point
    (and is written into the cluster YAML).

    Power of n instances carrying r requests/s (see `power_w`): every instance draws
    idle_power_w; prefill draws energy_j_per_request per request (its busy time grows with
    the prompts it serves); decode is memory-bound, so a step's dynamic energy grows with its
    duration and an instance draws about decode_power_w whenever it steps, which a loaded
    instance does all the time it is not prefilling:
        power = n (idle + P_d) + r (E_p - P_d s_p)
    with s_p = prefill_s_per_request (the part of a colocated instance's time taken by prefill).
    """

    name: str
    role: Role
    model: str
    capability: float
    requests_per_s: float  # R: requests/s one instance completes in this role when always busy
    price_usd_per_hour: float
    idle_power_w: float
    energy_j_per_request: float  # E_p: dynamic prefill energy per request (0 for decode)
    max_instances: int
    prefill_tokens_per_s: float = 0.0  # C_p at the chosen prefill batch (0 for decode)
    decode_tokens_per_s: float = 0.0  # C_d at the chosen decode batch (0 for prefill)
    prefill_batch_tokens: int = 0  # T*
    prefill_iteration_s: float = 0.0  # t_p(T*)
    decode_batch: int = 0  # B*
    decode_step_s: float = 0.0  # step(B*)
    prefill_share: float = 0.0  # f: share of a busy instance's time spent in prefill
    decode_power_w: float = 0.0  # P_d: dynamic power while stepping the decode batch (0 for prefill)
    prefill_s_per_request: float = 0.0  # s_p: colocated instance seconds of prefill per request
    option: MenuOption | None = field(default=None, compare=False)

    @property
    def power_per_instance_w(self) -> float:
        return self.idle_power_w + self.decode_power_w

    @property
    def power_per_request_j(self) -> float:
        return self.energy_j_per_request - self.decode_power_w * self.prefill_s_per_request

    def power_w(self, instances: float, requests_per_s: float) -> float:
        return instances * self.power_per_instance_w + requests_per_s * self.power_per_request_j

    def as_dict(self) -> dict:
        out = {
            "name": self.name, "role": ROLE_NAMES[self.role], "model": self.model, "capability": self.capability,
            "requests_per_s": self.requests_per_s, "price_usd_per_hour": self.price_usd_per_hour,
            "idle_power_w": self.idle_power_w, "energy_j_per_request": self.energy_j_per_request,
            "max_instances": self.max_instances, "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s, "prefill_batch_tokens": self.prefill_batch_tokens,
            "prefill_iteration_s": self.prefill_iteration_s, "decode_batch": self.decode_batch,
            "decode_step_s": self.decode_step_s, "prefill_share": self.prefill_share,
            "decode_power_w": self.decode_power_w, "prefill_s_per_request": self.prefill_s_per_request,
        }
        if self.option is not None:
            out |= {"device": self.option.device.name, "chips_per_instance": self.option.chips,
                    "quantization": self.option.quantization}
        return out


@dataclass(frozen=True, slots=True)
class Probe:
    """Single-request figures kept for infeasibility messages."""

    label: str
    roles: tuple[Role, ...]
    prefill_p90_s: float  # one p90 prompt alone
    decode_step1_s: float  # one sequence at the mean decode context


def capability_of(model: ModelSpec) -> float:
    # As the cluster snapshot does: a model without a score is not held back by tiers.
    return 1.0 if model.capability is None else float(model.capability)


def _prefill_point(perf: InstancePerf, stats: WorkloadStats, max_tokens: int, ttft_s: float):
    """(T*, t_p(T*), e_p(T*)): the largest prefill iteration within half the TTFT SLO.

    An iteration of T prompt tokens made of typical prompts has seqs = max(1, T / L_in)
    sequences and pairs = T (Q_in + 1) / 2 causal query-key pairs; (t_p, e_p) =
    perf.prefill(T, pairs, seqs). A prompt that arrives while an iteration runs waits for
    it and is served in the next, so TTFT <= 2 t_p(T) needs t_p(T) <= TTFT / 2. t_p grows
    with T, so T* is found by bisection over [1, max_batch_tokens]. None if even T = 1 is too slow.
    """
    budget = ttft_s / 2.0

    def run(t: int) -> tuple[float, float]:
        seqs = max(1, int(round(t / stats.mean_input_tokens))) if stats.mean_input_tokens > 0 else 1
        return perf.prefill(t, t * (stats.input_pair_tokens + 1.0) / 2.0, min(seqs, t))

    if run(1)[0] > budget:
        return None
    lo, hi = 1, max_tokens
    if run(hi)[0] <= budget:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid)[0] <= budget:
            lo = mid
        else:
            hi = mid
    t, e = run(lo)
    return lo, t, e


def _decode_limit(perf: InstancePerf, stats: WorkloadStats, max_batch: int) -> int:
    """Largest batch whose members' KV reservations fit: floor(kv_capacity / kv), capped at max_batch."""
    return min(max_batch, int(perf.kv_capacity_tokens // max(stats.decode_kv_tokens, 1.0)))


def _step(perf: InstancePerf, stats: WorkloadStats, batch: int) -> float:
    return perf.decode_step_s(batch, batch * stats.decode_context_tokens)


def _largest_batch(perf: InstancePerf, stats: WorkloadStats, limit: int, step_budget_s: float) -> int:
    """Largest B <= limit with step(B) = perf.decode_step_s(B, B * ctx) <= budget (0 if none).
    step grows with B (more KV to read, more FLOPs), so bisection."""
    if limit < 1 or _step(perf, stats, 1) > step_budget_s:
        return 0
    lo, hi = 1, limit
    if _step(perf, stats, hi) <= step_budget_s:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _step(perf, stats, mid) <= step_budget_s:
            lo = mid
        else:
            hi = mid
    return lo


def _option_capacities(option: MenuOption, stats: WorkloadStats, ttft_s: float, tpot_s: float
                       ) -> tuple[list[OptionCapacity], list[Excluded], Probe]:
    """Per-role capacity of one option. The formulas, per instance:

    Prefill (roles prefill, both): T*, t_p, e_p from _prefill_point;
        C_p = T* / t_p(T*) prompt tokens/s,  E_p = L_in e_p(T*) / T* joules per request.
      A prefill-only instance also ships each prompt's KV over its link, one hand-over at a
      time: x_kv = setup + L_in * kv_bytes_per_token / link_bytes_per_s per request, so
        R_prefill = min(C_p / L_in, 1 / x_kv).
      The option is unusable for prefill when one p90 prompt alone takes more than TTFT / 2.

    Decode (roles decode, both): step(B) = decode_step_s(B, B ctx);
        B* = largest B <= min(max_batch, kv_capacity / kv) with step(B) <= TPOT,
        C_d = B* / step(B*) tokens/s,  R_decode = C_d / L_dec.
      (A decode instance below capacity runs a smaller batch with shorter steps: by Little's
      law its batch N satisfies N / step(N) = its decode tokens/s, and N / step(N) grows with
      N, so C_d is the most it can carry within the TPOT SLO.)

    Colocated (role both): a request is prefilled and decoded on the same instance, so a busy
    instance spends its time in the workload's own mix:
        tau(B) = L_in / C_p + L_dec / C_d(B) seconds per request,  R_both = 1 / tau(B),
        prefill share f(B) = (L_in / C_p) / tau(B).
      Scheduling is prefill-first: every prefill iteration stalls the decode batch, so decode
      steps are stretched by 1 / (1 - f) and TPOT ~ step(B) / (1 - f(B)). B* is the batch
      that maximizes R_both subject to step(B) / (1 - f(B)) <= TPOT and the KV limit.

    Cost: price_usd_per_hour per instance, busy or idle. Power: idle_power_w always; prefill
    E_p = L_in e_p(T*) / T* joules per request; decode steps draw P_d = e_step(B*) / step(B*)
    watts (e_step: the dynamic energy of one step, perf.decode(B*, B* ctx, 1)) whenever the
    instance decodes (memory-bound steps draw about the same power at any
    batch, so this holds below B* too), i.e. all the time a loaded decode instance is not
    prefilling: n instances carrying r requests/s draw n (idle + P_d) + r (E_p - P_d s_p) with
    s_p = L_in / C_p for colocated instances (0 otherwise).
    """
    perf = InstancePerf(option.device, option.model, option.chips, price_usd_per_hour=option.price_usd_per_hour,
                        memory_utilization=option.memory_utilization)
    label = option.label
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    p90_in = max(1, int(math.ceil(stats.p90_input_tokens)))
    prefill_p90_s = perf.prefill(p90_in, p90_in * (p90_in + 1) / 2.0, 1)[0]
    step1 = _step(perf, stats, 1)
    probe = Probe(label, option.roles, prefill_p90_s, step1)
    common = dict(model=option.model.name, capability=capability_of(option.model),
                  price_usd_per_hour=option.price_usd_per_hour, idle_power_w=perf.idle_power_w,
                  max_instances=option.max_instances, option=option)

    prefill_reason = None
    point = None
    if prefill_p90_s > ttft_s / 2.0:
        prefill_reason = (f"prefilling one p90 prompt ({p90_in:,} tokens) takes {prefill_p90_s * 1e3:,.1f} ms, "
                          f"over half the TTFT SLO ({ttft_s / 2.0 * 1e3:,.1f} ms)")
    else:
        point = _prefill_point(perf, stats, option.max_batch_tokens, ttft_s)
        if point is None:  # unreachable when the p90 prompt passes; kept for safety
            prefill_reason = f"no prefill iteration fits in half the TTFT SLO ({ttft_s / 2.0 * 1e3:,.1f} ms)"
    kv_limit = _decode_limit(perf, stats, option.max_batch)
    decode_reason = None
    if kv_limit < 1:
        decode_reason = (f"KV memory ({perf.kv_capacity_tokens:,} tokens) holds no decode-batch member "
                         f"({stats.decode_kv_tokens:,.0f} tokens each on average)")
    elif step1 > tpot_s:
        decode_reason = (f"one decode step takes {step1 * 1e3:.2f} ms even at batch 1, over the TPOT SLO "
                         f"({tpot_s * 1e3:.2f} ms)")
    l_in, l_dec = stats.mean_input_tokens, stats.decode_steps

    for role in option.roles:
        name = f"{option.device.name}-x{option.chips}-{option.model.name}-{ROLE_NAMES[role]}"
        if role in (Role.PREFILL, Role.BOTH) and prefill_reason:
            excluded.append(Excluded(label, ROLE_NAMES[role], prefill_reason))
            continue
        if role in (Role.DECODE, Role.BOTH) and decode_reason:
            excluded.append(Excluded(label, ROLE_NAMES[role], decode_reason))
            continue
        if role == Role.PREFILL:
            t_star, t_p, e_p = point
            c_p = t_star / t_p
            link = option.link_gbps * 1e9 / 8.0
            handover_s = perf.kv_transfer_s(int(round(l_in)), link)
            rps = min(c_p / l_in, 1.0 / handover_s) if l_in > 0 else 1.0 / handover_s
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps, energy_j_per_request=l_in * e_p / t_star,
                prefill_tokens_per_s=c_p, prefill_batch_tokens=t_star, prefill_iteration_s=t_p,
                prefill_share=1.0, **common))
        elif role == Role.DECODE:
            b = _largest_batch(perf, stats, kv_limit, tpot_s)
            step = _step(perf, stats, b)
            e_step = perf.decode(b, b * stats.decode_context_tokens, 1)[1]
            c_d = b / step
            rps = c_d / l_dec if l_dec > 0 else _UNBOUNDED_RPS
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps, energy_j_per_request=0.0,
                decode_tokens_per_s=c_d, decode_batch=b, decode_step_s=step, decode_power_w=e_step / step,
                **common))
        else:
            t_star, t_p, e_p = point
            c_p = t_star / t_p
            prefill_s = l_in / c_p  # seconds of prefill per request
            best = None
            b_max = _largest_batch(perf, stats, kv_limit, tpot_s)
            for b in range(1, b_max + 1):
                step = _step(perf, stats, b)
                decode_s = l_dec * step / b
                tau = prefill_s + decode_s
                f = prefill_s / tau if tau > 0 else 0.0
                if f >= 1.0 or step / (1.0 - f) > tpot_s:
                    continue
                if best is None or 1.0 / tau > best[0]:
                    best = (1.0 / tau, b, step, f)
            if best is None:
                step = _step(perf, stats, b_max)
                f = prefill_s / (prefill_s + l_dec * step / b_max)
                excluded.append(Excluded(label, "both", (
                    f"colocated, prefill takes {f:.0%} of a busy instance's time (at batch {b_max}) and stalls "
                    f"decode, stretching the decode step past the TPOT SLO ({tpot_s * 1e3:.1f} ms) at every batch")))
                continue
            rps, b, step, f = best
            e_step = perf.decode(b, b * stats.decode_context_tokens, 1)[1]
            caps.append(OptionCapacity(
                name=name, role=role, requests_per_s=rps,
                energy_j_per_request=l_in * e_p / t_star, prefill_tokens_per_s=c_p, decode_tokens_per_s=b / step,
                prefill_batch_tokens=t_star, prefill_iteration_s=t_p, decode_batch=b, decode_step_s=step,
                prefill_share=f, decode_power_w=e_step / step, prefill_s_per_request=prefill_s, **common))
    return caps, excluded, probe


def derive_capacities(options: Iterable[MenuOption], stats: WorkloadStats, ttft_s: float, tpot_s: float
                      ) -> tuple[list[OptionCapacity], list[Excluded], list[Probe]]:
    """Capacities of every option in every allowed role (see _option_capacities for the formulas),
    the (option, role) pairs that cannot meet the SLOs with the reason, and single-request probes."""
    caps: list[OptionCapacity] = []
    excluded: list[Excluded] = []
    probes: list[Probe] = []
    for option in options:
        c, e, p = _option_capacities(option, stats, ttft_s, tpot_s)
        caps.extend(c)
        excluded.extend(e)
        probes.append(p)
    return caps, excluded, probes
