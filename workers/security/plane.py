"""The worker plane's credentials: who may call a worker, and how members call each other.

`ClusterCredentials.generate` runs once when `serve` starts (in the driver, so
a scheduler actor restarted by Ray gets the same ones back from its
constructor arguments). It makes two random tokens, the scheduler's and the
peers', and, with TLS, a cluster CA that issues one certificate for the
scheduler and one shared by the workers (they are interchangeable peers); the
CA's key is dropped once they are issued. Everything reaches the actors as
constructor arguments through Ray, never a command line or a log line (the
secret fields are left out of every repr).

A worker holds `WorkerCredentials`: the peers' token, only the *digest* of the
scheduler's (so a worker can check the scheduler but never act as it), and its
TLS identity. Its gate (`server_interceptors`) lets TransferKvStream in with
either token and every other Worker method (Session, Drain, GetWorkerStats)
with the scheduler's only. With TLS the server requires a client certificate
from the cluster CA (mutual TLS), so a token is never readable off the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from workers.rpc import WORKER_SERVICE
from workers.security.tls import CLUSTER_TLS_NAME, CertificateAuthority, TlsIdentity
from workers.security.tokens import TokenGate, bearer_metadata, new_token, token_digest, with_metadata

PEER_METHODS = (f"/{WORKER_SERVICE}/TransferKvStream",)


@dataclass(frozen=True, slots=True)
class PlaneMember:
    """How one member (the scheduler or a worker) opens channels to workers."""

    token: str = field(repr=False)
    tls: TlsIdentity | None = None

    def channel(self, address: str, options: tuple = ()) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=self.tls.ca_pem, private_key=self.tls.key_pem,
                                             certificate_chain=self.tls.cert_pem)
        return grpc.aio.secure_channel(address, creds,
                                       options=(*options, ("grpc.ssl_target_name_override", CLUSTER_TLS_NAME)))

    def stub(self, address: str, stub_class, options: tuple = ()):
        """(channel, stub) to a worker; every call on the stub carries this member's token."""
        channel = self.channel(address, options)
        return channel, with_metadata(stub_class(channel), bearer_metadata(self.token))


@dataclass(frozen=True, slots=True)
class WorkerCredentials:
    """What a worker actor holds (module docstring)."""

    member: PlaneMember
    scheduler_digest: bytes = field(repr=False)

    @property
    def tls(self) -> TlsIdentity | None:
        return self.member.tls

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        peers = (token_digest(self.member.token), self.scheduler_digest)
        rules = [(m, peers) for m in PEER_METHODS] + [(f"/{WORKER_SERVICE}/", (self.scheduler_digest,))]
        return [TokenGate(rules, "the Worker service (cluster members only)")]

    def server_credentials(self) -> grpc.ServerCredentials | None:
        tls = self.member.tls
        if tls is None:
            return None
        return grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem,
                                           require_client_auth=True)


@dataclass(frozen=True, slots=True)
class ClusterCredentials:
    """The scheduler's side: its own member credentials and what it hands each worker."""

    scheduler: PlaneMember
    workers: WorkerCredentials

    @classmethod
    def generate(cls, tls: bool) -> "ClusterCredentials":
        scheduler_token, peer_token = new_token(), new_token()
        scheduler_tls = worker_tls = None
        if tls:
            ca = CertificateAuthority.generate()
            scheduler_tls, worker_tls = ca.issue("infersched-scheduler"), ca.issue("infersched-worker")
        return cls(PlaneMember(scheduler_token, scheduler_tls),
                   WorkerCredentials(PlaneMember(peer_token, worker_tls), token_digest(scheduler_token)))

    @property
    def tls(self) -> bool:
        return self.scheduler.tls is not None
