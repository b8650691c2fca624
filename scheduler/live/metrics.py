"""Prometheus metrics of one scheduler (prometheus_client, text format at
http(s)://METRICS_HOST:METRICS_PORT/metrics, behind `serve`'s TLS and bearer
token when it has them; a registry per scheduler). Every
metric with its labels and units: docs/METRICS.md, generated from this
registry by `python -m infersched.cli.metrics_reference`.

    infersched_requests_total{status}             counter: completed, rejected, failed
    infersched_rejections_total{reason}           counter: rejected requests by reason code
    infersched_failures_total{reason}             counter: failed requests by reason code
    infersched_requests_invalid_total             counter: answered INVALID_ARGUMENT or OUT_OF_RANGE
    infersched_requests_in_flight                 gauge
    infersched_time_scale                         gauge: wall seconds per modelled second (--time-scale)
    infersched_decisions_total                    counter: policy decisions (retries included)
    infersched_ttft_seconds                       histogram, modelled seconds
    infersched_tpot_seconds                       histogram, modelled seconds
    infersched_e2e_seconds                        histogram, modelled seconds
    infersched_pool_ttft_seconds{pool}            histogram, modelled seconds, by the pool that prefilled
    infersched_pool_tpot_seconds{pool}            histogram, modelled seconds, by the pool that decoded
    infersched_scheduling_overhead_seconds        histogram, wall seconds in the policy per decision
    infersched_control_overhead_seconds           histogram, wall seconds per completed request
    infersched_energy_joules                      gauge, all pools since start (idle included)
    infersched_cost_usd                           gauge, all pools since start
    infersched_pool_queue_depth{pool}             gauge
    infersched_pool_running{pool}                 gauge
    infersched_pool_utilization_ratio{pool}       gauge
    infersched_pool_kv_free_tokens{pool}          gauge
    infersched_pool_completed_total{pool}         counter
    infersched_pool_energy_joules_total{pool}     counter: the pool's energy since start (idle included)
    infersched_pool_cost_usd_total{pool}          counter: the pool's cost since start
    infersched_workers{state}                     gauge: worker actors by state
    infersched_frontends                          gauge: front-end processes serving (with --frontends)
    infersched_frontend_restarts_total            counter: front ends replaced after dying (with --frontends)
    process_*                                     prometheus_client's process metrics (CPU, memory, files)
"""
from __future__ import annotations

from collections import Counter

from scheduler.live.core import SchedulerCore
from scheduler.live.relay.pool import FrontendPool
from scheduler.live.types import RequestOutcome
from scheduler.types import RequestStatus, Role
from workers.report import WorkerState
from workers.security.service import ServiceSecurity, serve_http


class Metrics:
    """prometheus_client metrics for one SchedulerCore, on their own registry and HTTP server."""

    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
    OVERHEAD_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0)

    def __init__(self, core: SchedulerCore, frontends: FrontendPool | None = None):
        from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

        self.core = core
        self.frontends = frontends
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* (CPU seconds, memory, open files) of the process serving the metrics: the
        # scheduler actor, whose CPU per request is what bounds a scheduler's throughput.
        ProcessCollector(registry=self.registry)
        self.ttft = Histogram("infersched_ttft_seconds", "Time to first token (modelled seconds)",
                              buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("infersched_tpot_seconds", "Time per output token after the first (modelled seconds)",
                              buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("infersched_e2e_seconds", "Arrival to last token (modelled seconds)",
                             buckets=self.LATENCY_BUCKETS, registry=self.registry)
        # Per pool as well as overall: a dashboard's per-pool percentiles, without a pool
        # label on the overall histograms that would make every existing query sum first.
        self.pool_ttft = Histogram("infersched_pool_ttft_seconds", "Time to first token (modelled seconds) by the "
                                   "pool that ran the prefill", ["pool"], buckets=self.LATENCY_BUCKETS,
                                   registry=self.registry)
        self.pool_tpot = Histogram("infersched_pool_tpot_seconds", "Time per output token after the first "
                                   "(modelled seconds) by the pool that decoded", ["pool"],
                                   buckets=self.LATENCY_BUCKETS, registry=self.registry)
        # Every pool's series from the start, at zero: Prometheus takes a series' first value
        # as its start, so one born with the first requests would lose them from rate().
        # Kept by pool name: labels() costs as much again as the observation.
        self.pool_ttft_of = {p.name: self.pool_ttft.labels(p.name) for p in core.cluster.pools if p.role != Role.DECODE}
        self.pool_tpot_of = {p.name: self.pool_tpot.labels(p.name) for p in core.cluster.pools
                             if p.role != Role.PREFILL}
        self.decision = Histogram("infersched_scheduling_overhead_seconds",
                                  "Wall time inside the policy per decision", buckets=self.OVERHEAD_BUCKETS,
                                  registry=self.registry)
        self.control = Histogram("infersched_control_overhead_seconds",
                                 "Wall time per completed request beyond its modelled device time",
                                 buckets=self.OVERHEAD_BUCKETS, registry=self.registry)
        self.registry.register(self)
        core.on_outcome = self._outcome
        core.on_decision = self.decision.observe
        self.server = None
        self.thread = None

    def _outcome(self, outcome: RequestOutcome, control_s: float) -> None:
        if outcome.status != RequestStatus.COMPLETED:
            return
        self.ttft.observe(outcome.ttft_s)
        self.pool_ttft_of[outcome.prefill_pool].observe(outcome.ttft_s)
        self.e2e.observe(outcome.finish_s - outcome.arrival_s)
        if outcome.tpot_s is not None:
            self.tpot.observe(outcome.tpot_s)
            self.pool_tpot_of[outcome.decode_pool].observe(outcome.tpot_s)
        self.control.observe(max(control_s, 0.0))

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        core = self.core
        requests = CounterMetricFamily("infersched_requests", "Requests by final status", labels=["status"])
        tally = core.tally
        requests.add_metric(["completed"], tally.requests_completed)
        requests.add_metric(["rejected"], tally.requests_rejected)
        requests.add_metric(["failed"], tally.requests_failed)
        yield requests
        # Reason codes are a fixed set: the label's values stay bounded.
        by_reason = {RequestStatus.REJECTED: CounterMetricFamily("infersched_rejections", "Rejected requests by "
                                                                 "reason code", labels=["reason"]),
                     RequestStatus.FAILED: CounterMetricFamily("infersched_failures", "Failed requests by reason "
                                                               "code", labels=["reason"])}
        for (status, code), n in sorted(tally.reasons.items()):
            by_reason[status].add_metric([code.name], n)
        yield from by_reason.values()
        yield CounterMetricFamily("infersched_requests_invalid", "Requests answered INVALID_ARGUMENT or OUT_OF_RANGE",
                                  value=tally.requests_invalid)
        yield GaugeMetricFamily("infersched_requests_in_flight", "Accepted requests not yet finished",
                                value=tally.in_flight)
        # Counters of modelled quantities (energy, cost) grow 1 / time_scale times faster per
        # wall second than the emulated hardware would: a dashboard's rates multiply by this.
        yield GaugeMetricFamily("infersched_time_scale", "Wall seconds per modelled second (serve --time-scale)",
                                value=core.clock.time_scale)
        yield CounterMetricFamily("infersched_decisions", "Policy decisions (retries included)",
                                  value=tally.decisions_total)
        pools = core.pool_stats()
        yield GaugeMetricFamily("infersched_energy_joules", "Energy of all pools since start (idle included)",
                                value=sum(p.energy_j for p in pools))
        yield GaugeMetricFamily("infersched_cost_usd", "Cost of all pools since start",
                                value=sum(p.cost_usd for p in pools))
        families = {
            "queue_depth": GaugeMetricFamily("infersched_pool_queue_depth", "Requests waiting for prefill or a "
                                             "decode slot", labels=["pool"]),
            "running": GaugeMetricFamily("infersched_pool_running", "Sequences in decode batches", labels=["pool"]),
            "utilization": GaugeMetricFamily("infersched_pool_utilization_ratio",
                                             "Busy share of instance time since start", labels=["pool"]),
            "kv_free_tokens": GaugeMetricFamily("infersched_pool_kv_free_tokens", "KV cache tokens not reserved",
                                                labels=["pool"]),
            "completed": CounterMetricFamily("infersched_pool_completed", "Completed requests that ran a stage here",
                                             labels=["pool"]),
            "energy_j": CounterMetricFamily("infersched_pool_energy_joules", "The pool's energy since start (idle "
                                            "included)", labels=["pool"]),
            "cost_usd": CounterMetricFamily("infersched_pool_cost_usd", "The pool's cost since start",
                                            labels=["pool"]),
        }
        for p in pools:
            for attr, family in families.items():
                family.add_metric([p.name], getattr(p, attr))
        yield from families.values()
        states = Counter(s.state.name.lower() for s in core.slots)
        workers = GaugeMetricFamily("infersched_workers", "Worker actors by state", labels=["state"])
        for state in WorkerState:
            workers.add_metric([state.name.lower()], states.get(state.name.lower(), 0))
        if self.frontends is not None:
            yield GaugeMetricFamily("infersched_frontends", "Client-facing front-end processes serving",
                                    value=len(self.frontends.pids()))
            yield CounterMetricFamily("infersched_frontend_restarts", "Front-end processes replaced after dying",
                                      value=self.frontends.restarts)
        yield workers

    def serve(self, host: str, port: int, security: ServiceSecurity | None = None) -> int:
        """Serve on host:port (0: any free port); behind `serve`'s TLS and token when it has them."""
        from prometheus_client import make_wsgi_app, start_http_server

        if security is not None and security.enabled:
            self.server, self.thread = serve_http(make_wsgi_app(self.registry), host, port, security)
        else:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        return self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
