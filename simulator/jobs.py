"""Run independent simulations one after another in this process, or as Ray tasks.

A job is plain picklable data: how to build the workload (a `WorkloadSpec`,
rebuilt inside the task from the trace file and the seed rather than shipping
millions of rows), a parsed cluster config, a policy name with its parameter
overrides, and the seed. Every runtime replays the same requests with the same
seed, so parallel summaries equal sequential ones except `WALL_CLOCK_KEYS`.

`run_jobs(jobs)` runs them here; `parallel=N` starts a local Ray instance with
N CPUs; `address="auto"|"HOST:PORT"` joins an existing cluster and ships this
checkout to it with Ray's runtime_env (working_dir, large paths excluded).
Trace files outside the checkout must be readable at the same path on every
node. A job that raises is reported (its label and error) and the others are
kept; the caller decides how to exit. A tqdm bar counts finished jobs when
stderr is a terminal.
"""
from __future__ import annotations

import logging
import sys
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from scheduler.config import ClusterConfig

ROOT = Path(__file__).resolve().parent.parent
# Summary keys that measure this machine's wall clock, not the simulated system.
WALL_CLOCK_KEYS = frozenset({"sim_wall_s", "sim_requests_per_s"})
# What --address ships of this checkout: code and the built-in data, not environments or results.
SHIPPED_EXCLUDES = [".venv", ".venv*", "venv", ".git", "**/__pycache__", "*.pyc", ".pytest_cache", "bench/out",
                    "bench/results", "out", "*.npz", "*.png", "*.egg-info", "build", "dist"]
_CACHED_WORKLOADS = 2  # workloads kept per process: jobs of one spec in a row reuse it


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Arguments of `make_workload` over a trace file; `build()` gives the same requests anywhere.

    difficulty_table None: the trace's `difficulty` column when it has one, else the default
    reach table (simulator/quality.py) seeded with `seed`.
    """

    trace: str | None = None  # None: the built-in Azure 2023 conversation trace
    format: str | None = None
    skip_bad_rows: bool = False
    requests: int | None = None
    rate_rps: float | None = None
    arrival: str | None = None
    seed: int = 0
    difficulty_table: tuple[tuple[float, float], ...] | None = None
    # True: a session trace (simulator/sessions.py) with prefix reuse, drawn from the trace's lengths.
    sessions: bool = False
    start_s: float = 0.0  # the trace's time window (read_trace's start_s, duration_s)
    duration_s: float | None = None

    def build(self):
        """(trace, workload, difficulty) where difficulty is a DifficultyModel or a trace column."""
        from simulator.quality import DifficultyModel, read_difficulty_column
        from simulator.traces import builtin_trace_path, read_trace, scan_trace
        from simulator.workload import make_workload

        path = _local_path(self.trace) if self.trace else str(builtin_trace_path())
        # Only the first `requests` rows are read when the workload uses no more (as the CLI reads).
        first_only = not self.sessions and (self.rate_rps is not None or self.arrival in (None, "trace"))
        # Sessions draw from the lengths at random and need them in memory; other workloads read
        # the trace block by block as they replay it (a TraceFile).
        trace = (read_trace if self.sessions else scan_trace)(
            path, self.format, skip_bad_rows=self.skip_bad_rows, max_rows=self.requests if first_only else None,
            start_s=self.start_s, duration_s=self.duration_s)
        difficulty = None
        if self.difficulty_table is None and trace.format != "mooncake" and trace.bad_rows == 0 \
                and trace.filtered_rows == 0 and not self.sessions:
            difficulty = read_difficulty_column(path)
            if difficulty is not None:  # the trace may be a window or a prefix of the file's rows
                difficulty = difficulty[trace.rows_before_window:trace.rows_before_window + trace.rows]
        if difficulty is None:
            difficulty = DifficultyModel(seed=self.seed, **({"table": self.difficulty_table}
                                                            if self.difficulty_table else {}))
        if self.sessions:
            from simulator.sessions import session_trace

            trace = session_trace(trace, self.requests or trace.rows, self.rate_rps, seed=self.seed)
            return trace, make_workload(trace, seed=self.seed, difficulty=difficulty), difficulty
        workload = make_workload(trace, n_requests=self.requests, rate_rps=self.rate_rps, arrival=self.arrival,
                                 seed=self.seed, difficulty=difficulty)
        return trace, workload, difficulty


@dataclass(frozen=True, slots=True)
class SimJob:
    label: str
    workload: WorkloadSpec
    cluster: ClusterConfig
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # A per-question correctness matrix (simulator/quality_matrix.py) judging answers instead of
    # the difficulty threshold, and catalogue model -> matrix column where the names differ.
    quality_matrix: str | None = None
    quality_columns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class JobFailure:
    label: str
    error: str  # "ExceptionType: message"
    detail: str = ""  # the task's traceback, for logs

    def __str__(self) -> str:
        return f"{self.label}: {self.error}"


@dataclass(frozen=True, slots=True)
class JobResults:
    """One entry per job, in job order: the summary dict, or None where it failed."""

    summaries: list[dict | None]
    failures: list[JobFailure]

    def ok(self) -> list[dict]:
        return [s for s in self.summaries if s is not None]


def without_wall_clock(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in WALL_CLOCK_KEYS}


def _local_path(path: str) -> str:
    """A path under the driver's checkout, as seen from a shipped copy of it (cwd there)."""
    p = Path(path)
    if p.exists() or not p.is_absolute():
        return path
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return path


_built: OrderedDict = OrderedDict()


def build_workload(spec: WorkloadSpec):
    """spec.build(), kept for the next jobs of the same spec in this process (the driver's included)."""
    if spec not in _built:
        _built[spec] = spec.build()
        while len(_built) > _CACHED_WORKLOADS:
            _built.popitem(last=False)
    return _built[spec]


def run_job(job: SimJob) -> dict:
    """Simulate one job; the simulator's summary with `label` added."""
    from scheduler.cluster import Cluster
    from scheduler.registry import build_policy
    from simulator.metrics import summarize
    from simulator.sim import Simulation

    policy = build_policy(job.policy, job.cluster, overrides=job.params or None)
    cluster = Cluster(job.cluster)
    quality = None
    if job.quality_matrix is not None:
        from simulator.quality_matrix import CorrectnessMatrix, MatrixQuality

        quality = MatrixQuality(CorrectnessMatrix.read_csv(job.quality_matrix), cluster, dict(job.quality_columns),
                                seed=job.workload.seed)
    result = Simulation(cluster, policy, build_workload(job.workload)[1], seed=job.seed, keep_records=False,
                        quality=quality).run()
    summary = summarize(result)
    summary["label"] = job.label
    return summary


def _guarded(fn: Callable, job) -> tuple[str, Any, str]:
    try:
        return "ok", fn(job), ""
    except Exception as exc:  # noqa: BLE001 - one job's failure must not lose the others
        return "error", f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="simulations", disable=not (progress and sys.stderr.isatty()),
                file=sys.stderr, leave=False)


def run_jobs(jobs: Sequence, *, parallel: int | None = None, address: str | None = None, progress: bool = True,
             fn: Callable = run_job) -> JobResults:
    """Run `fn(job)` for every job: here when neither parallel nor address is given, else as Ray tasks.

    `fn` must be a module-level function (Ray pickles it by reference); jobs need a `label`.
    """
    if parallel is not None and address is not None:
        raise ValueError("--parallel and --address are exclusive: --parallel starts a local Ray instance, "
                         "--address joins an existing cluster")
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"--parallel: expected a positive number of CPUs, got {parallel!r}")
    outcomes: list = [None] * len(jobs)
    with _bar(len(jobs), progress) as bar:
        if parallel is None and address is None:
            for i, job in enumerate(jobs):
                outcomes[i] = _guarded(fn, job)
                bar.update(1)
        else:
            _run_on_ray(jobs, fn, outcomes, bar, parallel, address)
    summaries: list[dict | None] = []
    failures = []
    for job, (status, value, detail) in zip(jobs, outcomes):
        summaries.append(value if status == "ok" else None)
        if status != "ok":
            failures.append(JobFailure(job.label, value, detail))
    return JobResults(summaries, failures)


def code_runtime_env() -> dict:
    """Ship this checkout to a cluster's workers (they import it from their working directory)."""
    return {"working_dir": str(ROOT), "excludes": list(SHIPPED_EXCLUDES)}


@contextmanager
def ray_session(parallel: int | None = None, address: str | None = None):
    """Ray for the jobs run inside: joined or started here and shut down after, or the session this
    process already has (then left as it is). Several run_jobs calls in one session start Ray once."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs = dict(logging_level=logging.WARNING, configure_logging=False, log_to_driver=False)
    if address is not None:
        ray.init(address=address, runtime_env=code_runtime_env(), **kwargs)
    else:
        # Ray runs task workers at nice 15 by default; these tasks stand in for this process's
        # own work, so they run at its priority, as the runs would one after another here.
        ray.init(num_cpus=parallel, include_dashboard=False, _system_config={"worker_niceness": 0}, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_on_ray(jobs, fn, outcomes, bar, parallel, address) -> None:
    with ray_session(parallel, address) as ray:
        task = ray.remote(num_cpus=1, max_retries=0)(_guarded)
        pending = {task.remote(fn, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    outcomes[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or the task could not start
                    outcomes[i] = ("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", str(exc))
                bar.update(1)


def report_failures(results: JobResults, command: str) -> int:
    """Print each failure to stderr; the exit status (0 none failed, 1 some did)."""
    for failure in results.failures:
        print(f"infersched {command}: run {failure}", file=sys.stderr)
    if results.failures:
        print(f"infersched {command}: {len(results.failures)} of {len(results.summaries)} runs failed: "
              f"{', '.join(f.label for f in results.failures)}", file=sys.stderr)
    return 1 if results.failures else 0

