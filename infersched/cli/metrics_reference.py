"""The metrics reference, docs/METRICS.md, generated from the scheduler's Prometheus registry.

`python -m infersched.cli.metrics_reference > docs/METRICS.md` rewrites it. It
builds the live scheduler's core in this process (emulated workers on a virtual
clock, the live-small cluster), runs a few requests through it, one of them
rejected at the queue bound and one cancelled, and reads every family the
registry exports: name, type, help and label names come from the registry
itself, so a metric
cannot be added, renamed or relabelled without the reference following (a test
fails when the file drifts, and another that every metric in a real `serve`
scrape is listed). Label meanings are written here; a label without one fails
the generator.
"""
from __future__ import annotations

import sys
from dataclasses import replace

HEADER = """# infersched metrics reference

`infersched serve` exports these at `http://127.0.0.1:9464/metrics` (`--metrics-port`,
`--metrics-host`; Prometheus text format). Generated from the scheduler's metrics registry
by `python -m infersched.cli.metrics_reference > docs/METRICS.md`
(tests/cli/test_metrics_reference.py fails when this file drifts from it). Latencies are
modelled seconds (the emulated hardware's time, as `simulate` reports them, whatever
`--time-scale`); overheads are wall seconds. Counters are queried with their `_total`
name, histograms through `_bucket`, `_sum` and `_count`; prometheus_client adds a
`_created` series (Unix time) to each counter and histogram. The `process_` metrics are
the scheduler actor's process (the one serving them). A Grafana dashboard over these is
`deploy/grafana/infersched.json`.
"""

# What each label's values are. The generator fails on a label missing here.
LABELS = {
    "status": "how the request ended: `completed`, `rejected` or `failed` (every request ends in one)",
    "reason": "why the request was rejected or failed, as a reason code (the `ReasonCode` enum of "
              "proto/infersched/v1/common.proto without its prefix, a fixed set): e.g. `QUEUE_FULL` (over "
              "`--max-queue`), `PENDING_BYTES` (over `--max-pending-bytes`), `NO_KV_MEMORY` (the policy's "
              "memory filter left no candidate), `WORKER_FAILED`, `CANCELLED`",
    "pool": "a pool's `name` from the cluster file",
    "state": "a worker actor's state (every state has a series, zero when no worker is in it)",
}
# Units from Prometheus' base-unit suffixes.
UNITS = (("_seconds", "seconds"), ("_bytes", "bytes"), ("_joules", "joules"), ("_usd", "US dollars"),
         ("_tokens", "tokens"), ("_ratio", "ratio 0..1"))
OTHER_UNITS = {"infersched_time_scale": "wall seconds per modelled second", "process_max_fds": "count",
               "process_open_fds": "count", "process_start_time_seconds": "Unix time (seconds)"}
SKIPPED_LABELS = {"le"}  # the histogram bucket bound, not a label of the metric


class _FrontendCount:
    """The two numbers Metrics reads of a FrontendPool, so the reference shows the
    families `serve --frontends N` adds without starting front-end processes."""

    restarts = 0

    @staticmethod
    def pids() -> list[int]:
        return []


def sample_registry():
    """A Metrics registry over an in-process core that served a few requests, rejected one
    and lost one to its client."""
    from scheduler.cluster import Cluster
    from scheduler.config import builtin_cluster_path, load_cluster
    from scheduler.live.core import SchedulerCore
    from scheduler.live.inprocess import InProcessWorkerClient
    from scheduler.live.metrics import Metrics
    from scheduler.live.types import GenerateInput, LiveOptions, Overloaded
    from scheduler.registry import build_policy
    from workers.clock import VirtualClock

    config = load_cluster(builtin_cluster_path("live-small"))
    cluster = Cluster(config)
    clock = VirtualClock()
    client = InProcessWorkerClient(cluster, clock)
    options = replace(LiveOptions(), time_scale=1.0, max_queue=2)
    core = SchedulerCore(cluster, build_policy(config.policy, config), options, clock, client)
    client.register_all(core)
    metrics = Metrics(core, _FrontendCount())

    class Quiet:
        def tokens(self, event):
            pass

        def finish(self, outcome):
            pass

    for i in range(2):
        core.submit(GenerateInput(f"r{i}", 500, 20), Quiet())
    try:
        core.submit(GenerateInput("over", 500, 20), Quiet())
    except Overloaded:
        pass
    clock.run()
    core.cancel(core.submit(GenerateInput("cancelled", 500, 20), Quiet()))  # a failure, for its family's label
    clock.run()
    return metrics.registry


def families(registry) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(name as queried, type, help, label names) of each family the registry exports."""
    out = []
    for family in registry.collect():
        labels: list[str] = []
        for sample in family.samples:
            labels += [k for k in sample.labels if k not in SKIPPED_LABELS and k not in labels]
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out.append((name, family.type, family.documentation, tuple(labels)))
    return out


def _unit(name: str) -> str:
    base = name.removesuffix("_total")
    if base in OTHER_UNITS:
        return OTHER_UNITS[base]
    return next((unit for suffix, unit in UNITS if base.endswith(suffix)), "count")


def render() -> str:
    from workers.report import WorkerState

    rows = families(sample_registry())
    missing = sorted({label for *_, labels in rows for label in labels} - set(LABELS))
    if missing:
        raise SystemExit(f"metrics_reference: labels without a description in LABELS: {', '.join(missing)}")
    lines = [HEADER, "## Metrics", "", "| metric | type | labels | unit | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, kind, doc, labels in rows:
        shown = ", ".join(f"`{label}`" for label in labels) or "-"
        lines.append(f"| `{name}` | {kind} | {shown} | {_unit(name)} | {doc} |")
    used = [label for label in LABELS if any(label in labels for *_, labels in rows)]
    lines += ["", "## Labels", ""] + [f"- `{label}`: {LABELS[label]}" for label in used]
    lines += ["", "`state` values: " + ", ".join(f"`{s.name.lower()}`" for s in WorkerState) + "."]
    lines += ["", "`infersched_frontends` and `infersched_frontend_restarts_total` are exported only by "
                  "`serve --frontends N`.", ""]
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
