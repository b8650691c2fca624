"""What the security options cost a gRPC call: the bearer-token interceptor and (mutual) TLS.

One server process serves a minimal service (`bench.Echo`: a unary call, and a
server stream of STREAM_MESSAGES messages, Generate's shape) four times over,
on four loopback ports, behind the real code of workers.security: plaintext,
the token gate, mutual TLS, and both. This client process sends CALLS calls per
mode with CONCURRENCY in flight, the modes in a rotating order each round so
that every mode meets the same machine load; a round's ratio to plaintext is
the figure (the machine is shared and noisy). The server's CPU seconds per call
come from /proc over each mode's calls. A bidirectional stream (the worker
plane's Session and TransferKvStream shape: one long-lived call, many messages)
measures messages per second over plaintext and mutual TLS.

    python bench/auth_overhead.py                      # 7 rounds
    python bench/auth_overhead.py --rounds 3 --calls 1000

Writes bench/results/auth_overhead.json. Everything stays on 127.0.0.1 and stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.rpc import start_grpc_server  # noqa: E402
from workers.security.service import ClientSecurity, ServiceSecurity  # noqa: E402
from workers.security.tls import CertificateAuthority  # noqa: E402
from workers.security.tokens import bearer_metadata, token_digest  # noqa: E402

MODES = ("plaintext", "token", "mtls", "mtls+token")
SERVICE = "bench.Echo"
STREAM_MESSAGES = 4  # a Generate stream: a few token chunks, then the record
PAYLOAD = b"x" * 200
TOKEN = "b" * 64
DEFAULT_OUT = ROOT / "bench" / "results" / "auth_overhead.json"


def identity(self_dir: Path):
    """CA and server/client certificates for 127.0.0.1, written where both processes read them."""
    ca = CertificateAuthority.generate("bench CA")
    server, client = ca.issue("server", hosts=("127.0.0.1",)), ca.issue("client")
    for name, data in (("ca", ca.cert_pem), ("cert", server.cert_pem), ("key", server.key_pem),
                       ("client_cert", client.cert_pem), ("client_key", client.key_pem)):
        (self_dir / f"{name}.pem").write_bytes(data)


def security_of(mode: str, d: Path) -> ServiceSecurity:
    tls = mode.startswith("mtls")
    return ServiceSecurity(token_digest=token_digest(TOKEN) if "token" in mode else None,
                           cert_pem=(d / "cert.pem").read_bytes() if tls else None,
                           key_pem=(d / "key.pem").read_bytes() if tls else None,
                           client_ca_pem=(d / "ca.pem").read_bytes() if tls else None)


def add_echo(server: grpc.aio.Server) -> list[str]:
    async def unary(request, context):
        return request

    async def stream(request, context):
        for _ in range(STREAM_MESSAGES):
            yield request

    async def bidi(requests, context):
        async for request in requests:
            yield request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)}),))
    return [SERVICE]


async def serve(d: Path) -> None:
    servers = [await start_grpc_server("127.0.0.1", add_echo, security=security_of(mode, d)) for mode in MODES]
    print(json.dumps([port for _, port, _ in servers]), flush=True)  # the servers live while `servers` does
    await asyncio.get_running_loop().create_future()  # until killed


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def calls(channel, metadata, n: int, concurrency: int, kind: str) -> None:
    method = channel.unary_unary(f"/{SERVICE}/Unary") if kind == "unary" else \
        channel.unary_stream(f"/{SERVICE}/Stream")
    left = iter(range(n))

    async def worker():
        for _ in left:
            if kind == "unary":
                await method(PAYLOAD, metadata=metadata)
            else:
                async for _ in method(PAYLOAD, metadata=metadata):
                    pass

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bidi_rate(channel, metadata, n: int) -> float:
    call = channel.stream_stream(f"/{SERVICE}/Bidi")(metadata=metadata)
    t0 = time.perf_counter()
    for _ in range(n):
        await call.write(PAYLOAD)
        await call.read()
    rate = n / (time.perf_counter() - t0)
    await call.done_writing()
    return rate


def client_of(mode: str, d: Path) -> ClientSecurity:
    if not mode.startswith("mtls"):
        return ClientSecurity()
    return ClientSecurity(ca_pem=(d / "ca.pem").read_bytes(), cert_pem=(d / "client_cert.pem").read_bytes(),
                          key_pem=(d / "client_key.pem").read_bytes())


async def measure(args, d: Path, server_pid: int, ports: list[int]) -> dict:
    channels = {m: client_of(m, d).aio_channel(f"127.0.0.1:{p}") for m, p in zip(MODES, ports)}
    metadata = {m: bearer_metadata(TOKEN) if "token" in m else () for m in MODES}
    for m in MODES:  # connect (and handshake) before timing
        await calls(channels[m], metadata[m], 20, 4, "unary")
    rounds = []
    for r in range(args.rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
        row = {}
        for kind in ("unary", "stream"):
            for m in order:
                c0, t0 = cpu_s(server_pid), time.perf_counter()
                await calls(channels[m], metadata[m], args.calls, args.concurrency, kind)
                wall, cpu = time.perf_counter() - t0, cpu_s(server_pid) - c0
                row[f"{kind}/{m}"] = {"calls_per_s": args.calls / wall, "server_cpu_us_per_call": cpu / args.calls * 1e6}
        for m in ("plaintext", "mtls"):
            row[f"bidi/{m}"] = {"messages_per_s": await bidi_rate(channels[m], metadata[m], args.messages)}
        rounds.append(row)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v.get('calls_per_s', v.get('messages_per_s')):.0f}/s" for k, v in row.items()), flush=True)
    for channel in channels.values():
        await channel.close()
    return summarize(rounds)


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for key in rounds[0]:
        kind, mode = key.split("/")
        base = f"{kind}/plaintext"
        for metric in rounds[0][key]:
            values = [row[key][metric] for row in rounds]
            ratios = [row[key][metric] / row[base][metric] for row in rounds]
            out.setdefault(key, {})[metric] = {"median": statistics.median(values),
                                               "ratio_to_plaintext_median": statistics.median(ratios),
                                               "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", type=Path, help=argparse.SUPPRESS)  # the server process, started by this script
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2000, help="calls per mode and kind per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--messages", type=int, default=2000, help="messages on the bidirectional stream per round")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.server:
        asyncio.run(serve(args.server))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        d = Path(tmp)
        identity(d)
        proc = subprocess.Popen([sys.executable, __file__, "--server", str(d)], stdout=subprocess.PIPE, text=True)
        try:
            ports = json.loads(proc.stdout.readline())
            result = asyncio.run(measure(args, d, proc.pid, ports))
        finally:
            proc.kill()
            proc.wait(10)
    report = {"machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}",
              "load_average_at_end": os.getloadavg(), "rounds": args.rounds, "calls": args.calls,
              "concurrency": args.concurrency, "stream_messages": STREAM_MESSAGES, "payload_bytes": len(PAYLOAD),
              "results": result}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, metrics in result.items():
        print(key, ", ".join(f"{m} {v['median']:.1f} (x{v['ratio_to_plaintext_median']:.3f} of plaintext, "
                               f"{v['ratio_min']:.3f}-{v['ratio_max']:.3f})" for m, v in metrics.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
