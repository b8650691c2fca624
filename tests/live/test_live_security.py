"""`infersched serve` with client security, as a user runs it (separate processes, gRPC
and HTTP on loopback; the first serve joins the session's local Ray cluster, the second
starts its own, as one cluster holds one serve's scheduler): once with mutual
TLS and a bearer token (the scheduler actor serving clients), once with a token
alone in two relay front ends (and mutual TLS on the worker plane, `--worker-tls`). `replay` and `stats` with the right flags work;
without the token they get UNAUTHENTICATED, without the CA or a client certificate
the handshake fails; the metrics endpoint answers the token only (401 otherwise),
over TLS in the first. The token never shows in anything serve prints (checked
when each serve stops). Test
certificates are made here with `cryptography` (workers.security.tls)."""
from __future__ import annotations

import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

from scheduler.config import builtin_cluster_path
from scheduler.serve import exposure_warnings
from workers.security.service import ServiceSecurity
from tests import serve_process
from tests.serve_process import CLI, REPO
from workers.security.tls import CertificateAuthority

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")

START_TIMEOUT_S = 120.0
TOKEN = "s3cret-" + "7" * 40


class Served(NamedTuple):
    proc: subprocess.Popen
    address: str
    metrics: str
    lines: list[str]
    files: dict[str, Path]


def write_material(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate from the
    same CA, one from another CA, and the token file."""
    ca, other = CertificateAuthority.generate("test CA"), CertificateAuthority.generate("other CA")
    server = ca.issue("localhost", hosts=("localhost", "127.0.0.1"))
    client, stranger = ca.issue("replay-client"), other.issue("replay-client")
    files = {"ca": ca.cert_pem, "other_ca": other.cert_pem, "cert": server.cert_pem, "key": server.key_pem, "client_cert": client.cert_pem,
             "client_key": client.key_pem, "stranger_cert": stranger.cert_pem, "stranger_key": stranger.key_pem,
             "token": (TOKEN + "\n").encode(), "wrong_token": ("x" * 40).encode()}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def serve_with(files: dict[str, Path], *flags: str) -> Served:
    served = serve_process.start_serve(builtin_cluster_path("live-small"), "--metrics-port", "0", "--time-scale",
                                       "0.01", *flags, timeout_s=START_TIMEOUT_S)
    return Served(served.proc, served.address, served.metrics, served.lines, files)


def stop_serve(served: Served) -> str:
    """Stop serve (SIGINT) and return everything it printed."""
    return "\n".join(served.lines) + serve_process.stop_process(served.proc, signal.SIGINT)


@pytest.fixture(scope="module")
def mtls_served(tmp_path_factory, ray_cluster_address):
    files = write_material(tmp_path_factory.mktemp("mtls"))
    served = serve_with(files, "--address", ray_cluster_address, "--tls-cert", str(files["cert"]),
                        "--tls-key", str(files["key"]), "--tls-client-ca", str(files["ca"]),
                        "--auth-token-file", str(files["token"]))
    try:
        yield served
    finally:
        printed = stop_serve(served)
        assert TOKEN not in printed, "serve printed the token"


@pytest.fixture(scope="module")
def token_served(tmp_path_factory):
    files = write_material(tmp_path_factory.mktemp("token"))
    served = serve_with(files, "--auth-token-file", str(files["token"]), "--frontends", "2", "--worker-tls")
    try:
        yield served
    finally:
        printed = stop_serve(served)
        assert TOKEN not in printed, "serve printed the token"


def cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def client_flags(files, *, ca=True, cert="client", token="token") -> list[str]:
    flags = []
    if ca:
        flags += ["--tls-ca", str(files["ca" if ca is True else ca])]
    if cert:
        flags += ["--tls-cert", str(files[f"{cert}_cert"]), "--tls-key", str(files[f"{cert}_key"])]
    if token:
        flags += ["--auth-token-file", str(files[token])]
    return flags


def test_startup_line_names_the_real_bind_and_the_security(mtls_served, token_served):
    served = mtls_served
    line = next(ln for ln in served.lines if "listening on" in ln)
    assert line.startswith(f"infersched: scheduler listening on {served.address} (mutual TLS + bearer token")
    assert served.address.startswith("127.0.0.1:")
    line = next(ln for ln in token_served.lines if "listening on" in ln)
    assert f"listening on {token_served.address} (plaintext + bearer token" in line
    assert not any("warning" in ln for ln in served.lines + token_served.lines)
    # The worker plane: tokens on loopback by default, mutual TLS when asked (--worker-tls).
    assert "infersched: worker plane: cluster token" in served.lines
    assert "infersched: worker plane: cluster token, mutual TLS (cluster CA)" in token_served.lines


# (what the client leaves out, the status it gets) against mutual TLS + token.
MTLS_CASES = [
    ({}, None),
    ({"token": None}, "UNAUTHENTICATED"),
    ({"token": "wrong_token"}, "UNAUTHENTICATED"),
    ({"ca": False, "cert": None}, "closed the connection: if it serves TLS, give --tls-ca"),  # plaintext
    ({"cert": None}, "closed the connection"),  # no client certificate
    ({"cert": "stranger"}, "closed the connection"),  # a certificate from another CA
    ({"ca": "other_ca"}, "TLS handshake with"),  # the server's certificate is not from the CA given
]


@pytest.mark.parametrize("left_out,refusal", MTLS_CASES,
                         ids=["all", "no-token", "wrong-token", "plaintext", "no-client-cert", "other-ca-cert",
                              "untrusted-server"])
def test_stats_against_mutual_tls_and_a_token(mtls_served, left_out, refusal):
    served = mtls_served
    done = cli("stats", "--target", served.address, "--json", *client_flags(served.files, **left_out))
    if refusal is None:
        assert done.returncode == 0, done.stderr
        assert '"cluster": "live-small"' in done.stdout
    else:
        assert done.returncode == 2 and refusal in done.stderr, done.stderr
        assert TOKEN not in done.stderr


@pytest.mark.parametrize("token", ["token", None], ids=["with-token", "without"])
def test_replay_against_mutual_tls_and_a_token(mtls_served, token):
    served = mtls_served
    done = cli("replay", "--target", served.address, "--requests", "20", "--no-progress",
               *client_flags(served.files, token=token))
    if token:
        assert done.returncode == 0, done.stderr
        assert "requests 20   completed 20   rejected 0   failed 0" in done.stdout
    else:
        assert done.returncode == 2 and "UNAUTHENTICATED" in done.stderr


def fetch(url: str, *, token: str | None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.parametrize("token,status", [(TOKEN, 200), (None, 401), ("x" * 40, 401)])
def test_metrics_over_mutual_tls_answer_the_token_only(mtls_served, token, status):
    served = mtls_served
    assert served.metrics.startswith("https://")
    context = ssl.create_default_context(cafile=str(served.files["ca"]))
    context.check_hostname = False  # the URL names the bind address; the certificate is checked against the CA
    context.load_cert_chain(served.files["client_cert"], served.files["client_key"])
    code, body = fetch(served.metrics, token=token, context=context)
    assert code == status
    assert ("infersched_requests_total" in body) == (status == 200)


def test_metrics_over_tls_refuse_a_client_without_a_certificate(mtls_served):
    served = mtls_served
    context = ssl.create_default_context(cafile=str(served.files["ca"]))
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        fetch(served.metrics, token=TOKEN, context=context)


@pytest.mark.parametrize("token", ["token", "wrong_token", None])
def test_relay_front_ends_check_the_token(token_served, token):
    files = token_served.files
    flags = ["--auth-token-file", str(files[token])] if token else []
    stats = cli("stats", "--target", token_served.address, *flags)
    replay = cli("replay", "--target", token_served.address, "--requests", "10", "--no-progress", *flags)
    if token == "token":
        assert stats.returncode == 0 and replay.returncode == 0, stats.stderr + replay.stderr
        assert "requests 10   completed 10   rejected 0   failed 0" in replay.stdout
    else:
        for done in (stats, replay):
            assert done.returncode == 2 and "UNAUTHENTICATED" in done.stderr, done.stderr


@pytest.mark.parametrize("token,status", [(TOKEN, 200), (None, 401)])
def test_plaintext_metrics_answer_the_token_only(token_served, token, status):
    assert token_served.metrics.startswith("http://")
    assert fetch(token_served.metrics, token=token)[0] == status


WARNING_CASES = [
    ("127.0.0.1", "127.0.0.1", ServiceSecurity(), []),
    ("0.0.0.0", "127.0.0.1", ServiceSecurity(), ["--host 0.0.0.0"]),
    ("10.1.2.3", "0.0.0.0", ServiceSecurity(), ["--host 10.1.2.3", "--metrics-host 0.0.0.0"]),
    ("0.0.0.0", "0.0.0.0", ServiceSecurity(token_digest=b"d" * 32), []),
    ("::1", "localhost", ServiceSecurity(), []),
]


@pytest.mark.parametrize("host,metrics_host,security,flagged", WARNING_CASES)
def test_exposed_binds_without_tls_or_a_token_are_warned_about(host, metrics_host, security, flagged):
    assert [w.split(" without")[0] for w in exposure_warnings(host, metrics_host, security)] == flagged
