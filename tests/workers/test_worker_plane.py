"""The authenticated worker plane on real gRPC servers on loopback: emulated workers
behind their cluster's credentials (workers.security.plane). Who may call which
Worker method (the scheduler's token, the peers', a wrong one), mutual TLS with
the cluster CA (a certificate from another CA is refused at the handshake), and
hand-overs only to workers of the cluster (`decode_address` checked against
the addresses the scheduler knows)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from infersched.v1 import worker_pb2, worker_pb2_grpc
from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from workers.clock import ScaledClock
from workers.emulated import EmulatedWorker
from workers.engine import ROLE_DECODE, ROLE_PREFILL
from workers.kv_link import KvLinks
from workers.rpc import WORKER_SERVICE, start_grpc_server
from workers.security.peers import PeerBook
from workers.security.plane import ClusterCredentials, PlaneMember
from workers.security.tls import CertificateAuthority
from workers.servicer import WorkerServicer

SCALE = 0.002
TIMEOUT_S = 20.0
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster(load_cluster(builtin_cluster_path("live-small")))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def emulated(cluster, pool: str, role: int, creds: ClusterCredentials) -> EmulatedWorker:
    perf = next(p for p in cluster.pools if p.name == pool).perf
    w = EmulatedWorker(perf, role, ScaledClock(SCALE))
    KvLinks(w, rpc_timeout_s=5.0, member=creds.workers.member)
    return w


async def serve(w: EmulatedWorker, creds: ClusterCredentials, known: list[str] | None = None):
    """(server, address) of `w` behind `creds`; `known`: the peers' addresses the
    scheduler would give (filled in by the caller once every server listens)."""
    async def fetch():
        return list(known or ())

    servicer = WorkerServicer(w, peers=PeerBook(fetch))

    def add(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [WORKER_SERVICE]

    server, port, _ = await start_grpc_server("127.0.0.1", add, security=creds.workers)
    return server, f"127.0.0.1:{port}"


def work(key: str, prompt: int, out: int, decode_address: str) -> worker_pb2.SessionWork:
    return worker_pb2.SessionWork(prefill=worker_pb2.PrefillRequest(
        request_id=key, prompt_length=prompt, max_output_tokens=out, decode_address=decode_address))


async def last_updates(call, keys: set[str], last: str) -> dict[str, worker_pb2.WorkUpdate]:
    """Each request's update with the field `last` (or an error), read off a Session."""
    found: dict[str, worker_pb2.WorkUpdate] = {}
    while found.keys() != keys:
        for update in (await call.read()).updates:
            if update.HasField(last) or update.HasField("error"):
                found[update.request_id] = update
    return found


def worker_call(stub, method: str, timeout_s: float = 5.0):
    """One call of a Worker method, with empty requests (a stream's first read waits)."""
    return {"GetWorkerStats": lambda: stub.GetWorkerStats(worker_pb2.WorkerStatsRequest(), timeout=timeout_s),
            "Drain": lambda: stub.Drain(worker_pb2.DrainRequest(), timeout=timeout_s),
            "Session": lambda: stub.Session(timeout=timeout_s),
            "TransferKvStream": lambda: stub.TransferKvStream(timeout=timeout_s)}[method]()


async def code_of(call) -> grpc.StatusCode:
    """The status a call ends with (OK when it answers)."""
    try:
        if hasattr(call, "read"):
            await call.read()
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# (who calls, method) -> expected status. The scheduler may call everything; a peer
# only hands KV over; no token or a wrong one gets nothing.
CALLS = [
    ("scheduler", "GetWorkerStats", grpc.StatusCode.OK),
    ("scheduler", "Drain", grpc.StatusCode.OK),
    ("peer", "TransferKvStream", grpc.StatusCode.OK),
    ("peer", "Drain", UNAUTHENTICATED),
    ("peer", "Session", UNAUTHENTICATED),
    ("peer", "GetWorkerStats", UNAUTHENTICATED),
    ("wrong", "Drain", UNAUTHENTICATED),
    ("wrong", "TransferKvStream", UNAUTHENTICATED),
    ("none", "Drain", UNAUTHENTICATED),
    ("none", "Session", UNAUTHENTICATED),
    ("none", "TransferKvStream", UNAUTHENTICATED),
    ("none", "GetWorkerStats", UNAUTHENTICATED),
]


@pytest.mark.parametrize("tls", [False, True], ids=["token", "mtls"])
@pytest.mark.parametrize("who,method,expected", CALLS)
def test_who_may_call_which_worker_method(cluster, tls, who, method, expected):
    creds = ClusterCredentials.generate(tls=tls)
    tls_identity = creds.workers.tls
    caller = {"scheduler": creds.scheduler, "peer": creds.workers.member,
              "wrong": PlaneMember("0" * 64, tls_identity), "none": None}[who]

    async def main():
        w = emulated(cluster, "h100-decode", ROLE_DECODE, creds)
        server, address = await serve(w, creds)
        try:
            if caller is None:  # the cluster's TLS (a member's certificate), no token
                channel = PlaneMember("", tls_identity).channel(address)
                stub = worker_pb2_grpc.WorkerStub(channel)
            else:
                channel, stub = caller.stub(address, worker_pb2_grpc.WorkerStub)
            async with channel:
                code = await code_of(worker_call(stub, method, 1.0 if method == "TransferKvStream" else 5.0))
            return code, w.state
        finally:
            await server.stop(None)
            await w.kv.close()

    code, state = run(main())
    if method == "TransferKvStream" and expected == grpc.StatusCode.OK:
        expected = grpc.StatusCode.DEADLINE_EXCEEDED  # let in: the stream waits for blocks until its deadline
    assert code == expected
    if method == "Drain" and expected == UNAUTHENTICATED:
        assert state.name == "READY"  # a refused Drain changed nothing


@pytest.mark.parametrize("intruder", ["plaintext", "other-ca", "no-client-cert"])
def test_mtls_refuses_a_client_outside_the_cluster_ca_even_with_the_token(cluster, intruder):
    creds = ClusterCredentials.generate(tls=True)
    token = creds.scheduler.token
    other = CertificateAuthority.generate("another CA").issue("intruder")

    async def main():
        w = emulated(cluster, "h100-decode", ROLE_DECODE, creds)
        server, address = await serve(w, creds)
        try:
            if intruder == "plaintext":
                channel = grpc.aio.insecure_channel(address)
            elif intruder == "other-ca":  # trusts the cluster CA, presents another CA's certificate
                channel = PlaneMember(token, type(other)(other.cert_pem, other.key_pem, creds.scheduler.tls.ca_pem)
                                      ).channel(address)
            else:
                channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(creds.scheduler.tls.ca_pem),
                                                  options=(("grpc.ssl_target_name_override",
                                                            "cluster.infersched.internal"),))
            async with channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                code = await code_of(stub.Drain(worker_pb2.DrainRequest(), timeout=5,
                                                metadata=(("authorization", f"Bearer {token}"),)))
            return code, w.state
        finally:
            await server.stop(None)
            await w.kv.close()

    code, state = run(main())
    assert code == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call reaches the worker
    assert state.name == "READY"


@pytest.mark.parametrize("tls", [False, True], ids=["token", "mtls"])
def test_handover_goes_only_to_a_worker_of_the_cluster(cluster, tls):
    """With the scheduler's token a Session on the prefill worker hands KV over to the
    decode worker the scheduler registered (over the peers' credentials, mutual TLS
    when the cluster uses it); a decode_address the scheduler does not know is refused
    PERMISSION_DENIED before any connection is opened."""
    creds = ClusterCredentials.generate(tls=tls)

    async def main():
        pre = emulated(cluster, "h100-prefill", ROLE_PREFILL, creds)
        dec = emulated(cluster, "h100-decode", ROLE_DECODE, creds)
        known: list[str] = []
        (ps, pa), (ds, da) = await serve(pre, creds, known), await serve(dec, creds, known)
        known += [pa, da]
        # Something listening outside the cluster: it must never see a connection.
        connections = []
        stranger = await asyncio.start_server(lambda r, w: connections.append(w.close()), "127.0.0.1", 0)
        sa = f"127.0.0.1:{stranger.sockets[0].getsockname()[1]}"
        try:
            channel, stub = creds.scheduler.stub(pa, worker_pb2_grpc.WorkerStub)
            async with channel:
                call = stub.Session()
                await call.write(worker_pb2.SessionRequest(work=[work("in", 1500, 64, da), work("out", 1500, 64, sa)]))
                found = await last_updates(call, {"in", "out"}, "prefill")
                call.cancel()
            inside, outside = found["in"], found["out"]
            await asyncio.sleep(0.2)  # time enough for a connection, had one been opened
            return inside, outside, len(connections)
        finally:
            stranger.close()
            for server in (ps, ds):
                await server.stop(None)
            for w in (pre, dec):
                await w.kv.close()

    inside, outside, stranger_connections = run(main())
    assert inside.HasField("prefill") and not inside.HasField("error")
    assert inside.prefill.kv_blocks >= 1  # the KV reached the decode worker, which acknowledged it
    assert outside.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "is not a worker of this cluster" in outside.error.message
    assert stranger_connections == 0
