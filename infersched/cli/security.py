"""Command-line options for TLS and bearer tokens: `serve`'s (what clients must present)
and the clients' (`replay`, `stats` and every other command that calls a scheduler)."""
from __future__ import annotations


def add_serve_security_arguments(p) -> None:
    g = p.add_argument_group("client security (gRPC and metrics)")
    g.add_argument("--tls-cert", metavar="PEM", help="serve gRPC and metrics over TLS with this certificate (chain)")
    g.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    g.add_argument("--tls-client-ca", metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS; needs --tls-cert)")
    g.add_argument("--auth-token-file", metavar="FILE",
                   help="require `authorization: Bearer <token>` (gRPC metadata, HTTP header for metrics) with "
                        "the token in FILE (one line; never printed or logged)")
    p.add_argument("--worker-tls", action="store_true",
                   help="mutual TLS between the scheduler and workers even on loopback (always on when workers "
                        "bind another address, i.e. on a Ray cluster of several nodes)")


def add_client_security_arguments(p) -> None:
    g = p.add_argument_group("connection security")
    g.add_argument("--tls-ca", metavar="PEM", help="connect over TLS, checking the server against this CA")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate, for a server that requires one")
    g.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    g.add_argument("--auth-token-file", metavar="FILE", help="send the bearer token in FILE with every call")


def client_security(args):
    """The ClientSecurity the flags ask for; raises ValueError naming a bad file or flag."""
    from workers.security.service import ClientSecurity

    return ClientSecurity.from_files(tls_ca=args.tls_ca, auth_token_file=args.auth_token_file,
                                     tls_cert=args.tls_cert, tls_key=args.tls_key)

