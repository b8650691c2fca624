"""Capacity planning: the cheapest (or lowest-energy) cluster that serves a workload within its SLOs.

`infersched plan` sizes a cluster in four steps, one module each:

1. `stats`: characterize the workload (`characterize`): arrival rate and the
   length statistics that set prefill and decode demand (`WorkloadStats`).
2. `menu` and `capacity`: for every (device, chips, model, role) the menu
   offers, what one instance serves per second within the TTFT and TPOT SLOs,
   what it costs per hour and what it draws (`derive_capacities`), from the
   performance model the simulator runs.
3. `milp`: integer instance counts per option and request flows that minimize
   dollars, joules or a normalised mix, subject to demand, headroom, same-model
   hand-over, the quality floor and per-option maximum counts (`solve_plan`).
4. `verify`: replay the workload through the chosen cluster with the
   slo-aware policy; while SLO attainment falls short of the target, plan
   more spare capacity and solve again, a bounded number of rounds
   (`plan_and_verify`).

`report` formats the result; the command line is `infersched.cli.plan`. Bad
input (unknown devices or models, numbers that do not parse, a quality floor
no model meets, SLOs no option meets, no feasible cluster within the menu's
max_instances) raises `PlanError`, whose message names the failing key or
constraint.
"""
from simulator.plan.capacity import OptionCapacity, derive_capacities
from simulator.plan.menu import ROLE_NAMES, Excluded, Menu, MenuOption, load_menu, parse_menu
from simulator.plan.milp import OBJECTIVES, Plan, PlannedPool, solve_plan
from simulator.plan.stats import PlanError, WorkloadStats, characterize, stats_from_lengths
from simulator.plan.verify import (HEADROOM_BACKOFF, Round, cluster_document, cluster_yaml, plan_and_verify,
                                   plan_cluster, verify_plan)

__all__ = [
    "PlanError", "WorkloadStats", "MenuOption", "Menu", "OptionCapacity", "Excluded", "PlannedPool", "Plan",
    "Round", "OBJECTIVES", "ROLE_NAMES", "HEADROOM_BACKOFF", "characterize", "stats_from_lengths", "parse_menu",
    "load_menu", "derive_capacities", "solve_plan", "plan_cluster", "cluster_document", "cluster_yaml",
    "verify_plan", "plan_and_verify",
]
