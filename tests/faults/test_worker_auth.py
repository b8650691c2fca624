"""An attacker on the worker plane of a live cluster (a real local Ray cluster, the
scheduler actor and one worker actor per instance of live-small, real gRPC on
loopback), once with the default plane (cluster tokens over plaintext loopback)
and once with mutual TLS selected on loopback. Calls without the scheduler's
token (Drain, Session, TransferKvStream, GetWorkerStats) end UNAUTHENTICATED, a
wrong token too, a client outside the cluster CA never completes a handshake,
and a hand-over to an address outside the cluster is refused; the workers stay
READY and the cluster keeps completing requests, disaggregated ones included
(the scheduler and the peers carry their credentials)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.workers.test_worker_plane import code_of, worker_call
from workers.security.plane import ClusterCredentials, PlaneMember
from workers.security.tls import CertificateAuthority

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RPC_TIMEOUT_S = 30.0


@pytest.fixture(scope="module", params=["token", "mtls"])
def plane(request, ray_cluster, live_small):
    from scheduler.live.actor import start_scheduler, stop_scheduler
    from scheduler.live.types import LiveOptions

    creds = ClusterCredentials.generate(tls=request.param == "mtls")
    actor, info = start_scheduler(live_small[0], policy="round-robin", options=LiveOptions(time_scale=0.01),
                                  port=0, credentials=creds)
    try:
        yield creds, info
    finally:
        stop_scheduler(actor)


def worker_addresses(info) -> list[str]:
    return [w["address"] for w in info["workers"]]


def attempt(address: str, method: str, member: PlaneMember | None, creds: ClusterCredentials) -> grpc.StatusCode:
    """The status one call to a worker ends with. member None: no token, over the cluster's
    transport (its TLS, with a member's certificate, when it has TLS)."""
    async def main():
        if member is None:
            channel = PlaneMember("", creds.workers.tls).channel(address)
            stub = worker_pb2_grpc.WorkerStub(channel)
        else:
            channel, stub = member.stub(address, worker_pb2_grpc.WorkerStub)
        async with channel:
            return await code_of(worker_call(stub, method))

    return asyncio.run(main())


def list_workers(address: str):
    with grpc.insecure_channel(address) as channel:
        return list(scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(scheduler_pb2.ListWorkersRequest(),
                                                                          timeout=5).workers)


@pytest.mark.parametrize("method", ["Drain", "Session", "TransferKvStream", "GetWorkerStats"])
def test_worker_call_without_a_token_is_unauthenticated(plane, method):
    creds, info = plane
    assert [attempt(a, method, None, creds) for a in worker_addresses(info)] == [UNAUTHENTICATED] * 3


def test_drain_with_a_wrong_token_is_unauthenticated(plane):
    creds, info = plane
    wrong = PlaneMember("f" * 64, creds.workers.tls)
    assert [attempt(a, "Drain", wrong, creds) for a in worker_addresses(info)] == [UNAUTHENTICATED] * 3


@pytest.mark.parametrize("intruder", ["plaintext", "other-ca"])
def test_mtls_plane_refuses_a_handshake_from_outside_the_cluster_ca(plane, intruder):
    creds, info = plane
    if creds.workers.tls is None:
        pytest.skip("the token plane has no TLS")
    # Even holding the scheduler's token: the transport is refused first.
    other = CertificateAuthority.generate("another CA").issue("intruder")
    if intruder == "plaintext":
        member = PlaneMember(creds.scheduler.token)
    else:
        member = PlaneMember(creds.scheduler.token, type(other)(other.cert_pem, other.key_pem,
                                                                creds.workers.tls.ca_pem))
    assert [attempt(a, "Drain", member, creds) for a in worker_addresses(info)] == [grpc.StatusCode.UNAVAILABLE] * 3


def test_handover_outside_the_cluster_is_refused(plane):
    """The scheduler's own credentials, a prefill worker, a decode_address no worker of
    the cluster has: PERMISSION_DENIED, and nothing connects to that address."""
    creds, info = plane
    prefill = next(w["address"] for w in info["workers"] if w["pool"] == "h100-prefill")

    async def main():
        connections = []
        stranger = await asyncio.start_server(lambda r, w: connections.append(w.close()), "127.0.0.1", 0)
        try:
            channel, stub = creds.scheduler.stub(prefill, worker_pb2_grpc.WorkerStub)
            async with channel:
                call = stub.Session(timeout=RPC_TIMEOUT_S)
                await call.write(worker_pb2.SessionRequest(work=[worker_pb2.SessionWork(
                    prefill=worker_pb2.PrefillRequest(
                        request_id="outside", prompt_length=100, max_output_tokens=8,
                        decode_address=f"127.0.0.1:{stranger.sockets[0].getsockname()[1]}"))]))
                while True:
                    for update in (await call.read()).updates:
                        if update.request_id == "outside" and update.HasField("error"):
                            call.cancel()
                            await asyncio.sleep(0.2)
                            return update.error, len(connections)
        finally:
            stranger.close()

    error, connections = asyncio.run(asyncio.wait_for(main(), RPC_TIMEOUT_S))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "not a worker of this cluster" in error.message and connections == 0


def test_the_cluster_still_serves_after_the_attacks(plane):
    """Runs last in its module: every worker READY, and requests complete on both paths
    (disaggregated over the peers' hand-over credentials, and colocated)."""
    creds, info = plane
    assert [w.state for w in list_workers(info["address"])] == [common_pb2.WORKER_STATE_READY] * 3

    async def main():
        async with grpc.aio.insecure_channel(info["address"]) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)

            async def one(i):
                items = [item async for item in stub.Generate(scheduler_pb2.GenerateRequest(
                    request_id=f"after-{i}", prompt_length=200, max_output_tokens=16), timeout=RPC_TIMEOUT_S)]
                return items[-1].record

            return await asyncio.gather(*(one(i) for i in range(6)))

    records = asyncio.run(main())
    assert [r.status for r in records] == [common_pb2.REQUEST_STATUS_COMPLETED] * 6
    assert {r.decode_pool for r in records} >= {"h100-decode", "b200"}
