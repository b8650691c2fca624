"""What the summary needs of the per-request records, folded in block by block.

A ten-million-request replay cannot keep ~110 bytes of records per request
and then derive the summary from them all at once (numpy temporaries double
that). `Tally.add` takes the records of consecutive requests that are
settled (completed, rejected or failed) and keeps counts, sums, per-pool and
per-instance counts and three compact columns: the TTFT, TPOT and end-to-end
latency of completed requests, float64 and in request order, 24 bytes per
completed request. The percentiles and means come from those columns, so
they are exactly those of the whole-run arrays whatever the block sizes;
only the float sums of energy and dollars are summed per block (differences
in the last bits). Blocks must come in request-id order.
"""
from __future__ import annotations

import numpy as np

from scheduler.types import RequestStatus

PERCENTILES = (50, 90, 99)
_COMPLETED = int(RequestStatus.COMPLETED)


class _Column:
    """A float64 column filled by appends into space reserved up front (pages are touched as filled)."""

    def __init__(self, capacity: int):
        self.values = np.empty(capacity, dtype=np.float64)
        self.n = 0

    def append(self, values: np.ndarray) -> None:
        end = self.n + len(values)
        if end > len(self.values):
            grown = np.empty(max(end, 2 * len(self.values)), dtype=np.float64)
            grown[:self.n] = self.values[:self.n]
            self.values = grown
        self.values[self.n:end] = values
        self.n = end

    def filled(self) -> np.ndarray:
        return self.values[:self.n]


def percentiles(values: np.ndarray, *, in_place: bool = False) -> dict[str, float | None]:
    """p50/p90/p99 and mean of finite `values` (`in_place`: the array may be reordered)."""
    values = values[np.isfinite(values)] if not in_place else values
    if len(values) == 0:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    mean = float(values.mean())  # before the in-place partition reorders the values
    pcts = np.percentile(values, PERCENTILES, overwrite_input=in_place)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, pcts)}
    out["mean"] = mean
    return out


class Tally:
    """Summary accumulators for one run (see the module docstring)."""

    def __init__(self, cluster, n_requests: int, quality=None):
        self.pool_of_instance = np.array([p.index for p in cluster.pools for _ in p.instances], dtype=np.int64)
        self.pool_capability = np.array([p.perf.model.capability if p.perf.model.capability is not None else 1.0
                                         for p in cluster.pools])
        self.slo = cluster.config.slo
        self.quality = quality  # a MatrixQuality, or None: capability >= difficulty
        n_pools = len(cluster.pools)
        self.n = 0
        self.completed = self.rejected = self.failed = 0
        self.input_tokens = self.output_tokens = 0
        self.meets_slo = self.correct = 0
        self.escalations = self.escalated_requests = self.advised_requests = 0
        self.energy_j = self.cost_usd = 0.0
        self.max_finish_s = 0.0
        self.last_arrival_s = 0.0
        self.prefill_counts = np.zeros(n_pools, dtype=np.int64)
        self.decode_counts = np.zeros(n_pools, dtype=np.int64)
        self.served_counts = np.zeros(n_pools, dtype=np.int64)
        self.placed = 0
        self.per_instance = np.zeros(cluster.n_instances, dtype=np.int64)
        self.ttft_s = _Column(n_requests)
        self.tpot_s = _Column(n_requests)
        self.e2e_s = _Column(n_requests)
        self._stats: dict | None = None

    @classmethod
    def from_records(cls, cluster, records, quality=None) -> "Tally":
        tally = cls(cluster, records.n, quality)
        tally.add(records.columns())
        return tally

    def add(self, cols: dict[str, np.ndarray]) -> None:
        """Fold in the records of the next requests in id order, every one settled."""
        status = cols["status"]
        if not len(status):
            return
        first_id = self.n
        self.n += len(status)
        completed = status == _COMPLETED
        n_completed = int(completed.sum())
        self.completed += n_completed
        self.rejected += int((status == RequestStatus.REJECTED).sum())
        self.failed += int((status == RequestStatus.FAILED).sum())
        out = cols["output_tokens"]
        self.input_tokens += int(cols["input_tokens"].sum())
        self.output_tokens += int(out[completed].sum())
        arrival = cols["arrival_s"]
        first = cols["first_token_s"]
        finish = cols["finish_s"]
        self.last_arrival_s = max(self.last_arrival_s, float(arrival[-1]))
        if n_completed:
            self.max_finish_s = max(self.max_finish_s, float(finish[completed].max()))
        ttft = (first - arrival)[completed]
        e2e = (finish - arrival)[completed]
        done_out = out[completed]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (finish[completed] - first[completed]) / (done_out - 1)
        tpot[done_out <= 1] = np.nan
        # One-token outputs have no TPOT; they meet the TPOT SLO trivially.
        self.meets_slo += int(((ttft <= self.slo.ttft_s) & ~(tpot > self.slo.tpot_s)).sum())
        for column, values in ((self.ttft_s, ttft), (self.tpot_s, tpot), (self.e2e_s, e2e)):
            column.append(values[np.isfinite(values)])
        prefill = cols["prefill_instance"]
        placed = prefill >= 0
        self.placed += int(placed.sum())
        n_pools = len(self.prefill_counts)
        prefill_pool = self.pool_of_instance[prefill[placed]]
        decode_pool = self.pool_of_instance[cols["decode_instance"][placed]]
        self.prefill_counts += np.bincount(prefill_pool, minlength=n_pools)
        self.decode_counts += np.bincount(decode_pool, minlength=n_pools)
        self.served_counts += np.bincount(np.concatenate([prefill_pool, decode_pool[decode_pool != prefill_pool]]),
                                          minlength=n_pools)
        self.per_instance += np.bincount(prefill[placed], minlength=len(self.per_instance))
        # Quality: a completed request is answered correctly when the capability that answered
        # it reaches its difficulty; rejected and failed requests are not answered at all.
        capability = np.full(len(status), np.nan)
        capability[placed] = self.pool_capability[prefill_pool]
        staged = ~np.isnan(cols["capability"])
        capability[staged] = cols["capability"][staged]
        if self.quality is None:
            self.correct += int((completed & (capability >= cols["difficulty"])).sum())
        else:
            self.correct += int((completed & self.quality.correct(first_id, capability)).sum())
        self.energy_j += float(cols["energy_j"].sum())
        self.cost_usd += float(cols["cost_usd"].sum())
        self.escalations += int(cols["escalations"].sum())
        self.escalated_requests += int(np.count_nonzero(cols["escalations"]))
        self.advised_requests += int(np.count_nonzero(cols["advised"]))
        self._stats = None

    def latency_stats(self) -> dict[str, dict]:
        """ttft_s, tpot_s, e2e_s percentiles; computed once (the columns are partitioned in place)."""
        if self._stats is None:
            self._stats = {name: percentiles(getattr(self, name).filled(), in_place=True)
                           for name in ("ttft_s", "tpot_s", "e2e_s")}
        return self._stats
