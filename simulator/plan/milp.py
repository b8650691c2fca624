"""Step 3 of planning: the instance counts that minimize dollars, joules or a mix (a MILP).

`solve_plan` poses the problem documented on `_Milp` over the option
capacities of step 2 and solves it with HiGHS (`highspy`): a maintained solver
proves optimality where hand-written search would guess. Infeasible problems
raise `PlanError` saying which constraint binds (no end-to-end path, or not
enough capacity under the menu's max_instances).
"""
from __future__ import annotations

import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scheduler.types import Role
from simulator.plan.capacity import OptionCapacity
from simulator.plan.stats import PlanError, check_unit

OBJECTIVES: tuple[str, ...] = ("cost", "energy", "mix")


@dataclass(frozen=True, slots=True)
class PlannedPool:
    capacity: OptionCapacity
    instances: int
    requests_per_s: float  # r: planned flow through the pool

    @property
    def usd_per_hour(self) -> float:
        return self.instances * self.capacity.price_usd_per_hour

    @property
    def power_w(self) -> float:
        return self.capacity.power_w(self.instances, self.requests_per_s)

    @property
    def utilization(self) -> float:
        cap = self.instances * self.capacity.requests_per_s
        return self.requests_per_s / cap if cap > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    pools: tuple[PlannedPool, ...]
    rate_rps: float
    objective: str
    energy_weight: float
    headroom: float
    objective_value: float  # cost: $/h; energy: W; mix: (1 - w) cost / cost* + w energy / energy*
    usd_per_hour: float
    power_w: float

    @property
    def instances(self) -> int:
        return sum(p.instances for p in self.pools)

    @property
    def chips(self) -> int:
        return sum(p.instances * (p.capacity.option.chips if p.capacity.option else 1) for p in self.pools)

    def as_dict(self) -> dict:
        rate = self.rate_rps
        pools = []
        for p in self.pools:
            c = p.capacity
            pools.append({
                **c.as_dict(), "instances": p.instances, "planned_requests_per_s": p.requests_per_s,
                "traffic_share": p.requests_per_s / rate if rate > 0 else 0.0,
                "planned_utilization": p.utilization, "usd_per_hour": p.usd_per_hour, "power_w": p.power_w,
            })
        return {
            "objective": self.objective, "energy_weight": self.energy_weight, "headroom": self.headroom,
            "objective_value": self.objective_value, "usd_per_hour": self.usd_per_hour, "power_w": self.power_w,
            "energy_j_per_request": self.power_w / rate if rate > 0 else None,
            "instances": self.instances, "chips": self.chips, "pools": pools,
        }


_banner_lock = threading.Lock()
_banner_done = False


def _new_highs():
    """A silent highspy.Highs. HiGHS prints a banner from C++ to file descriptor 1 the first time
    one is built in a process, which would corrupt `--json -` output; that first construction
    runs with fd 1 pointed at /dev/null."""
    global _banner_done
    import highspy

    with _banner_lock:
        if not _banner_done:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
            _banner_done = True
        else:
            h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    # The problems are tiny: solve to proven optimality, deterministically.
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    return h


class _Milp:
    """The planning MILP over options o (each an OptionCapacity):

        n_o in {0, ..., N_o}  integer instances      r_o >= 0  requests/s through o
        u_o in {0, 1}         o is in the cluster at all (n_o <= N_o u_o)
        r_o <= h R_o n_o                                   (each instance at most h busy)
        sum_{o: role in {both, prefill}} r_o = lambda      (every request is prefilled once)
        sum_{o in m, prefill} r_o = sum_{o in m, decode} r_o   for each model m
                                                           (KV is handed to a decode pool of the same model)
        cost   = sum p_o n_o                         $/h
        energy = sum (W_o n_o + J_o r_o)             W: W_o = idle + P_d, J_o = E_p - P_d s_p
                                                     (see OptionCapacity)

    It minimizes cost, energy, or (1 - w) cost / cost* + w energy / energy* with cost* and
    energy* the single-objective optima, lexicographically: ties on that objective are broken by
    the other one (energy for cost, cost for energy and mix), then by the fewest pools (sum u_o),
    each stage a solve with the earlier objectives bounded at their optima. Without the later
    stages equal-cost plans come out as arbitrary mixtures of interchangeable pools.
    """

    def __init__(self, caps: Sequence[OptionCapacity], rate_rps: float, headroom: float):
        self.caps = list(caps)
        self.rate = rate_rps
        self.headroom = headroom
        self.k = len(self.caps)

    # Column layout: n_0..n_{k-1}, r_0..r_{k-1}, u_0..u_{k-1}.
    def cost_vec(self) -> np.ndarray:
        return np.concatenate([[c.price_usd_per_hour for c in self.caps], np.zeros(2 * self.k)])

    def energy_vec(self) -> np.ndarray:
        return np.concatenate([[c.power_per_instance_w for c in self.caps],
                               [c.power_per_request_j for c in self.caps], np.zeros(self.k)])

    def pools_vec(self) -> np.ndarray:
        return np.concatenate([np.zeros(2 * self.k), np.ones(self.k)])

    def _build(self, objective: np.ndarray, bounds: Sequence[tuple[np.ndarray, float]] = (),
               fixed_counts: Sequence[int] | None = None):
        """The model with `objective` (3k coefficients) and rows `coeffs . x <= upper` for `bounds`.
        With fixed_counts, n is fixed there, the demand row becomes <= lambda, and the objective
        is ignored in favour of maximizing the requests served (an LP)."""
        import highspy

        h = _new_highs()
        inf = highspy.kHighsInf
        k = self.k
        integer = highspy.HighsVarType.kInteger
        maximize_flow = fixed_counts is not None
        prefill_side = [i for i, c in enumerate(self.caps) if c.role in (Role.BOTH, Role.PREFILL)]
        for i, c in enumerate(self.caps):
            n_max = float(c.max_instances if fixed_counts is None else fixed_counts[i])
            h.addVar(n_max if maximize_flow else 0.0, n_max)
            if not maximize_flow:
                h.changeColIntegrality(i, integer)
        for i in range(k):
            h.addVar(0.0, inf)
        for i in range(k):
            h.addVar(0.0, 1.0)
            if not maximize_flow:
                h.changeColIntegrality(2 * k + i, integer)
        for j in range(3 * k):
            if maximize_flow:
                h.changeColCost(j, -1.0 if j >= k and j - k in prefill_side else 0.0)
            else:
                h.changeColCost(j, float(objective[j]))
        idx = lambda cols: np.array(cols, dtype=np.int32)  # noqa: E731
        for i, c in enumerate(self.caps):
            h.addRow(-inf, 0.0, 2, idx([k + i, i]), np.array([1.0, -self.headroom * c.requests_per_s]))
            h.addRow(-inf, 0.0, 2, idx([i, 2 * k + i]), np.array([1.0, -float(c.max_instances)]))
        h.addRow(-inf if maximize_flow else self.rate, self.rate, len(prefill_side),
                 idx([k + i for i in prefill_side]), np.ones(len(prefill_side)))
        for model in sorted({c.model for c in self.caps}):
            cols = [k + i for i, c in enumerate(self.caps) if c.model == model and c.role != Role.BOTH]
            vals = [1.0 if self.caps[j - k].role == Role.PREFILL else -1.0 for j in cols]
            if cols:
                h.addRow(0.0, 0.0, len(cols), idx(cols), np.array(vals))
        for coeffs, upper in bounds:
            nz = np.flatnonzero(coeffs)
            h.addRow(-inf, float(upper), len(nz), nz.astype(np.int32), coeffs[nz].astype(np.float64))
        return h

    def _run(self, h) -> tuple[np.ndarray, float] | None:
        import highspy

        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
                return None
            raise PlanError(f"the solver stopped without an optimal plan: {h.modelStatusToString(status)}")
        return np.array(h.getSolution().col_value), float(h.getInfo().objective_function_value)

    def minimize(self, *objectives: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Lexicographic minimum: (solution, value of the first objective); None when infeasible."""
        bounds: list[tuple[np.ndarray, float]] = []
        x = None
        for objective in objectives:
            result = self._run(self._build(objective, bounds))
            if result is None:
                if x is None:
                    return None
                break  # a later stage lost to rounding; keep the earlier optimum
            x, value = result
            # Later stages keep this objective at its optimum, up to the solver's rounding.
            bounds.append((objective, value + 1e-7 * max(1.0, abs(value))))
        return x, float(objectives[0] @ x)

    def max_flow(self) -> float:
        """Requests/s the menu serves with every option at its max instances (an LP)."""
        result = self._run(self._build(np.zeros(3 * self.k), fixed_counts=[c.max_instances for c in self.caps]))
        return 0.0 if result is None else -result[1]


def solve_plan(caps: Sequence[OptionCapacity], rate_rps: float, *, objective: str = "cost",
               energy_weight: float = 0.5, headroom: float = 0.7) -> Plan:
    """The optimal plan over `caps` (see _Milp for the model). Raises PlanError when infeasible."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    check_unit("headroom", headroom, zero_ok=False)
    check_unit("energy weight", energy_weight, zero_ok=True)
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise PlanError(f"the arrival rate must be a positive number, got {rate_rps!r}")
    caps = list(caps)
    if not caps:
        raise PlanError("no usable menu option to plan with")
    _check_structure(caps)
    milp = _Milp(caps, rate_rps, headroom)
    cost, energy, pools_used = milp.cost_vec(), milp.energy_vec(), milp.pools_vec()
    if objective == "cost":
        result = milp.minimize(cost, energy, pools_used)
    elif objective == "energy":
        result = milp.minimize(energy, cost, pools_used)
    else:
        by_cost = milp.minimize(cost)
        by_energy = milp.minimize(energy)
        result = None
        if by_cost is not None and by_energy is not None:
            # Each objective over its own optimum, so the weight is a share and not a choice of units.
            mix = ((1.0 - energy_weight) * cost / max(by_cost[1], 1e-9)
                   + energy_weight * energy / max(by_energy[1], 1e-9))
            result = milp.minimize(mix, cost, pools_used)
    if result is None:
        raise PlanError(_capacity_message(milp, caps, rate_rps, headroom))
    x, value = result
    k = len(caps)
    counts = np.rint(x[:k]).astype(int)
    flows = np.maximum(x[k:2 * k], 0.0)
    pools = tuple(PlannedPool(c, int(counts[i]), float(flows[i])) for i, c in enumerate(caps) if counts[i] > 0)
    solution = np.concatenate([counts, flows, (counts > 0).astype(float)])
    return Plan(pools=pools, rate_rps=rate_rps, objective=objective, energy_weight=energy_weight,
                headroom=headroom, objective_value=value, usd_per_hour=float(cost @ solution),
                power_w=float(energy @ solution))


def _check_structure(caps: Sequence[OptionCapacity]) -> None:
    """Some request path must exist: a colocated option, or a prefill and a decode option on one model."""
    if any(c.role == Role.BOTH for c in caps):
        return
    prefill = {c.model for c in caps if c.role == Role.PREFILL}
    decode = {c.model for c in caps if c.role == Role.DECODE}
    if prefill & decode:
        return
    raise PlanError(
        "no option can serve a request end to end: none may run colocated (role both), and no model has both a "
        f"prefill option ({', '.join(sorted(prefill)) or 'none'}) and a decode option "
        f"({', '.join(sorted(decode)) or 'none'}); disaggregated prefill and decode must share a model")


def _capacity_message(milp: _Milp, caps: Sequence[OptionCapacity], rate: float, headroom: float) -> str:
    most = milp.max_flow()
    prefill = sum(headroom * c.requests_per_s * c.max_instances for c in caps if c.role != Role.DECODE)
    decode = sum(headroom * c.requests_per_s * c.max_instances for c in caps if c.role != Role.PREFILL)
    return (f"no feasible cluster under max_instances: with every option at its max_instances the menu serves at "
            f"most {most:,.1f} req/s at headroom {headroom:g} (prefill-capable options {prefill:,.1f} req/s, "
            f"decode-capable {decode:,.1f} req/s), but the workload arrives at {rate:,.1f} req/s; raise "
            "max_instances, add options, or raise --headroom")
