"""The gRPC contract: generated modules match proto/, and a real server speaks it.

One loopback server (port 0) serves the Scheduler service (GetStats only), the
Worker service (every method UNIMPLEMENTED), health and reflection. The
reflection test reads the service shapes back over the wire; the client test
talks to the server from a separate process whose stubs were compiled from the
.proto files in this test, so it shares no Python code with the server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from scripts import gen_proto

SCHEDULER = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
WORKER = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
RPC_TIMEOUT_S = 5.0
NO_GRPC_TOOLS = (f"grpcio-tools is not installed (pip install grpcio-tools=={gen_proto.GRPC_TOOLS_VERSION}); "
                 "it compiles proto/ for this test")


def expected_stats() -> scheduler_pb2.SchedulerStats:
    """Distinct non-default values in every field kind (counters, doubles,
    nested messages, enums, maps, repeated), so a dropped or renamed field shows."""
    lat = common_pb2.LatencyPercentiles
    return scheduler_pb2.SchedulerStats(
        policy="least-loaded",
        cluster="gpu-disagg",
        uptime_s=12.5,
        started_unix_s=1_700_000_000.25,
        # 990 + 7 + 2 + 1 = 1000: the documented invariant holds.
        requests_total=1000,
        requests_completed=990,
        requests_rejected=7,
        requests_failed=2,
        requests_invalid=3,
        in_flight=1,
        reasons={"no-capacity": 7, "worker-failed": 2},
        decisions_total=1002,
        scheduling_overhead_s=lat(samples=1002, p50_s=2.0e-5, p90_s=4.0e-5, p99_s=1.5e-4, mean_s=2.5e-5),
        ttft_s=lat(samples=990, p50_s=0.12, p90_s=0.35, p99_s=0.9, mean_s=0.18),
        tpot_s=lat(samples=985, p50_s=0.021, p90_s=0.03, p99_s=0.045, mean_s=0.023),
        e2e_s=lat(samples=990, p50_s=4.2, p90_s=9.8, p99_s=20.5, mean_s=5.1),
        slo_attainment=0.95,
        input_tokens=2_048_000,
        output_tokens=256_000,
        energy_j=5.4e6,
        cost_usd=12.34,
        pools=[
            scheduler_pb2.PoolStats(
                name="h100-prefill", device="H100-SXM", model="llama-3.1-70b", role=common_pb2.ROLE_PREFILL,
                instances=4, chips_per_instance=2, queue_depth=3, running=0, completed=990,
                prefill_tokens=2_048_000, decode_tokens=0, utilization=0.62, energy_j=3.1e6, cost_usd=7.5,
                kv_free_tokens=120_000, kv_capacity_tokens=400_000),
            scheduler_pb2.PoolStats(
                name="decode", device="H200", model="llama-3.1-70b", role=common_pb2.ROLE_DECODE,
                instances=2, chips_per_instance=4, queue_depth=0, running=37, completed=990,
                prefill_tokens=0, decode_tokens=256_000, utilization=0.81, energy_j=2.3e6, cost_usd=4.84,
                kv_free_tokens=900_000, kv_capacity_tokens=1_600_000),
        ],
    )


class StatsOnlyScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Answers GetStats with fixed stats; the other methods stay UNIMPLEMENTED."""

    def __init__(self, stats: scheduler_pb2.SchedulerStats):
        self._stats = stats

    def GetStats(self, request, context):
        return self._stats


@pytest.fixture(scope="module")
def server_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(StatsOnlyScheduler(expected_stats()), server)
    worker_pb2_grpc.add_WorkerServicer_to_server(worker_pb2_grpc.WorkerServicer(), server)
    health_servicer = health.HealthServicer()
    for service in ("", SCHEDULER, WORKER):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SCHEDULER, WORKER, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0, "could not bind a loopback port"
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(RPC_TIMEOUT_S)


@pytest.fixture
def channel(server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server_address) as ch:
        yield ch


def test_generated_modules_match_proto():
    pytest.importorskip("grpc_tools", reason=NO_GRPC_TOOLS)
    problems = gen_proto.drift()
    installed = gen_proto.installed_grpc_tools_version()
    assert not problems, (
        f"generated code drifted from proto/ (checked in with grpcio-tools {gen_proto.GRPC_TOOLS_VERSION}, "
        f"installed {installed}); run `python -m scripts.gen_proto`:\n  " + "\n  ".join(problems))


def test_reflection_lists_the_contract_services(channel):
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"infersched.v1.Scheduler", "infersched.v1.Worker", "grpc.health.v1.Health"} <= services


# (service, method, client streams, server streams): the RPC shapes the
# runtimes rely on, read back from the live server rather than from our modules.
RPC_SHAPES = [
    ("infersched.v1.Scheduler", "Generate", False, True),
    ("infersched.v1.Scheduler", "GetStats", False, False),
    ("infersched.v1.Scheduler", "WatchStats", False, True),
    ("infersched.v1.Scheduler", "ListWorkers", False, False),
    ("infersched.v1.Scheduler", "DrainWorker", False, False),
    ("infersched.v1.Scheduler", "UndrainWorker", False, False),
    ("infersched.v1.Worker", "TransferKvStream", True, True),
    ("infersched.v1.Worker", "Drain", False, False),
    ("infersched.v1.Worker", "GetWorkerStats", False, False),
    ("infersched.v1.Worker", "Session", True, True),
]


def test_reflection_serves_the_rpc_shapes(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    for service, method, client_streaming, server_streaming in RPC_SHAPES:
        found = pool.FindServiceByName(service).methods_by_name[method]
        assert (found.client_streaming, found.server_streaming) == (client_streaming, server_streaming), \
            f"{service}.{method}"
    for service in ("infersched.v1.Scheduler", "infersched.v1.Worker"):
        methods = {m.name for m in pool.FindServiceByName(service).methods}
        assert methods == {m for s, m, _, _ in RPC_SHAPES if s == service}


@pytest.mark.parametrize("service", ["", "infersched.v1.Scheduler", "infersched.v1.Worker"])
def test_health_reports_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                      timeout=RPC_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# Runs in a fresh interpreter whose only copy of infersched.v1 is the one
# compiled from proto/ by the test; prints what GetStats returned, as JSON.
CLIENT = """
import json, sys
import grpc
from google.protobuf import json_format
from infersched.v1 import scheduler_pb2, scheduler_pb2_grpc

address = sys.argv[1]
with grpc.insecure_channel(address) as channel:
    stats = scheduler_pb2_grpc.SchedulerStub(channel).GetStats(scheduler_pb2.GetStatsRequest(), timeout=5)
print(json.dumps({
    "module": scheduler_pb2.__file__,
    "stats": json_format.MessageToDict(stats, preserving_proto_field_name=True),
}))
"""


def test_client_compiled_from_proto_gets_stats(server_address, tmp_path):
    pytest.importorskip("grpc_tools", reason=NO_GRPC_TOOLS)
    gen = tmp_path / "gen"
    gen_proto.run_protoc(gen)
    # Packages as protoc laid them out; no __init__.py needed (namespace packages).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(gen)
    # -P: do not put the working directory on sys.path; cwd is the temp dir anyway.
    done = subprocess.run([sys.executable, "-P", "-c", CLIENT, server_address], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)

    assert Path(reply["module"]).resolve().is_relative_to(gen.resolve()), reply["module"]
    got = reply["stats"]
    assert got == json_format.MessageToDict(expected_stats(), preserving_proto_field_name=True)
    # Spot checks in the proto3 JSON mapping: 64-bit ints as strings, enums by name.
    assert got["requests_total"] == "1000"
    assert got["ttft_s"]["p99_s"] == 0.9
    assert got["reasons"] == {"no-capacity": "7", "worker-failed": "2"}
    assert [(p["name"], p["role"]) for p in got["pools"]] == [("h100-prefill", "ROLE_PREFILL"),
                                                               ("decode", "ROLE_DECODE")]
