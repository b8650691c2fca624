"""Report tables: units on every cell, energy in kWh, columns that never merge, the three lines under the table."""
from __future__ import annotations

import pytest

from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from scheduler.registry import build_policy
from simulator.compare import format_table as compare_table
from simulator.metrics import summarize
from simulator.report import describe, fmt_kwh, fmt_s, format_summary, format_table
from simulator.sim import Simulation
from simulator.traces import builtin_trace_path, read_trace
from simulator.workload import make_workload


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.0008, "0.8 ms"), (0.5, "500.0 ms"), (2.083, "2.08 s"), (1204.4, "1,204 s"),
])
def test_durations_carry_their_unit(seconds, text):
    assert fmt_s(seconds) == text


@pytest.mark.parametrize("joules, text", [
    (0.0, "0 kWh"), (28_010.0, "0.0078 kWh"), (702_000.0, "0.195 kWh"), (59.11e6, "16.42 kWh"),
    (3.6e9, "1,000 kWh"),
])
def test_energy_is_kwh_everywhere(joules, text):
    assert fmt_kwh(joules) == text


@pytest.mark.parametrize("rows", [
    [["pool-with-a-long-name", "100.0%", "1,154,576,216"]],
    [["a", "100.0%", "9,999,999,999,999"], ["b", "0.0%", "0"]],
    [["x" * 40, "-", "1"]],
])
def test_columns_never_merge(rows):
    lines = format_table(["pool", "share", "prefill tok"], rows, align="<")
    for line, row in zip(lines[1:], rows):
        # Every cell is still a separate whitespace-delimited field.
        assert line.split() == [c for c in row if c]
    assert len({len(line) for line in lines}) == 1  # right-aligned last column: equal widths


def test_table_rejects_a_row_wider_than_its_header():
    with pytest.raises(ValueError, match="2 columns"):
        format_table(["a", "b"], [["1", "2", "3"]])


def _run(cluster: str, requests: int, policy: str | None = None) -> dict:
    config = load_cluster(builtin_cluster_path(cluster))
    trace = read_trace(str(builtin_trace_path()), None)
    workload = make_workload(trace, n_requests=requests, seed=0)
    result = Simulation(Cluster(config), build_policy(policy or config.policy, config), workload, seed=0).run()
    return summarize(result)


@pytest.fixture(scope="module")
def demo() -> dict:
    return _run("demo", 3000)


@pytest.fixture(scope="module")
def hybrid() -> dict:
    return _run("hybrid", 3000)


def test_summary_shows_units_and_three_lines_under_the_pool_table(demo):
    text = format_summary(demo)
    lines = text.splitlines()
    e2e = next(line for line in lines if line.startswith("end-to-end"))
    units = e2e.split()[2::2]  # "end-to-end  2.58 s  4.26 s ...": number, unit, number, unit
    assert len(units) == 4 and set(units) <= {"ms", "s"}
    assert "MJ" not in text and "kWh" in text
    start = next(i for i, line in enumerate(lines) if line.startswith("routing: "))
    assert [line.split(":")[0] for line in lines[start:start + 3]] == ["routing", "cost", "energy"]
    assert lines[start - 2].startswith("h100") or lines[start - 2].startswith("laptops")


def test_demo_lines_say_where_requests_went_and_why(demo):
    routing, cost, energy = describe(demo)
    lap = demo["pools"]["laptops"]
    assert f"laptops (m4-max) {lap['share'] * 100:.1f}%" in routing
    assert f"mean prompt {lap['prefill_tokens'] / lap['requests']:,.0f} tokens" in routing
    assert "every pool served requests" in routing
    assert f"${demo['cost_usd']:,.2f}" in cost and "laptops owned ($0/h)" in cost
    assert "pools that served nothing" not in cost
    assert fmt_kwh(demo["energy_j"]) in energy and "on laptops" in energy and "on h100" in energy


def test_hybrid_lines_name_the_pools_billed_for_nothing(hybrid):
    routing, cost, _ = describe(hybrid)
    idle = [name for name, p in hybrid["pools"].items() if p["requests"] == 0]
    assert idle and f"served none: {', '.join(idle)}" in routing
    idle_usd = sum(hybrid["pools"][name]["cost_usd"] for name in idle)
    assert f"${idle_usd:,.2f} on pools that served nothing" in cost


def test_lines_for_a_cluster_of_owned_devices_only():
    s = {"pools": {"phones": {"device": "phone", "requests": 10, "share": 1.0, "prefill_tokens": 500,
                              "decode_tokens": 100, "cost_usd": 0.0, "energy_j": 7200.0, "idle_energy_j": 3600.0}},
         "cost_usd": 0.0, "busy_cost_usd": 0.0, "energy_j": 7200.0, "energy_per_output_token_j": 72.0,
         "makespan_s": 60.0}
    routing, cost, energy = describe(s)
    assert routing == "routing: phones (phone) 100.0% (mean prompt 50 tokens); every pool served requests"
    assert cost == "cost: $0.00: every device is owned (no hourly price)"
    assert energy.startswith("energy: 0.002 kWh (50.0% idle power), 72.000 J per output token")


def test_compare_table_keeps_columns_apart_past_a_billion_tokens(demo):
    big = dict(demo, label="cost-aware@" + "a-very-long-cluster-name" * 2, busy_energy_j=4.2e12,
               energy_j=4.3e12, queries_per_kwh=1.0, cost_usd=1_234_567.0, busy_cost_usd=1_234_000.0)
    lines = compare_table([demo | {"label": "cost-aware"}, big], ["cost-aware"]).splitlines()
    header = lines[0].split("  ")
    cols = [c.strip() for c in header if c.strip()]
    assert cols[:3] == ["policy", "SLO", "p99 TTFT"] and "kWh" in cols
    for line in lines[1:3]:
        cells = line.split()
        assert len(cells) >= 12  # no two numbers ran together
    assert "1,194,444" in lines[2]  # 4.3e12 J in kWh


def test_policies_table_aligns_every_description_after_the_longest_name():
    from scheduler.registry import POLICIES
    from simulator.report import format_policies

    lines = format_policies(width=100).splitlines()
    footer = next(i for i, line in enumerate(lines) if line.startswith("filters: "))
    rows = lines[1:footer - 1]
    column = lines[0].index("what it does")
    assert column == max(len(n) for n in POLICIES) + 2
    for line in rows:
        if line:  # blank lines part the policies
            assert len(line) <= 100 and line[column - 2:column] == "  " and line[column] != " "
    starts = [line.split()[0] for line in rows if line and not line.startswith(" ")]
    assert starts == list(POLICIES)
