"""A front-end process (`serve --frontends N`): serves every method of
`infersched.v1.Scheduler` (taken from the service descriptor) with bytes in and
bytes out, relaying each call to the scheduler core over its Unix socket, and
answering snapshot methods from the core's pushed snapshots when the rules in
`scheduler.live.relay.pool` allow. Health and reflection are served here:
NOT_SERVING until the core says it serves (HEALTH frames), and again when
it says otherwise or goes away. When the link breaks, the
front end ends its open calls UNAVAILABLE and exits; on SIGTERM it stops taking
calls and lets the open ones finish for STOP_GRACE_S over the still-open link.

Started by the core, not by hand: `python -m scheduler.live.relay.frontend`.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import logging
import math
import os
import signal
import sys

import grpc

from scheduler.live.relay.link import (CALL, CANCEL, CREDIT, END, FAILED, HEALTH, LISTENING, MESSAGE, PROCESS_NAME,
                                       SCHEDULER_SERVICE_DESCRIPTOR, SNAPSHOT, SNAPSHOT_AGE_KEY, SNAPSHOT_LINGER_S,
                                       SNAPSHOT_MAX_AGE_S, STOP_GRACE_S, WANT, CREDIT_EVERY, FrameLink, OK_CODE,
                                       STATUS_BY_CODE)
from workers.security.service import ServiceSecurity, security_from_frame


class _Call:
    __slots__ = ("frames", "waiter", "ended", "peer")

    def __init__(self, peer: str | None):
        self.frames: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.ended = False
        self.peer = peer  # its connection, for a call that snapshots must not hide (a write)


class Frontend:
    """The front-end process's state: its link to the core and its open calls."""

    def __init__(self, snapshot_methods: tuple[str, ...] = ()):
        self.link: FrameLink | None = None
        self.lost: asyncio.Future | None = None
        self._calls: dict[int, _Call] = {}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Snapshot methods (the module's docstring); every other call is a write.
        self._snapshot_methods = frozenset(snapshot_methods)
        # method -> (loop time it came, answer, trailing metadata, its `covered`)
        self._snapshots: dict[str, tuple[float, bytes, tuple, int]] = {}
        self._asked_at: dict[str, float] = {}  # method -> loop time of its last call
        self._wanted_at: dict[str, float] = {}  # method -> loop time of its last WANT
        # Read-your-writes: connections with writes open here (how many), and those whose
        # last write closed after what the snapshots cover: (link.sent, loop time) at the
        # close; a snapshot serves such a connection once its `covered` reaches that mark.
        # Entries older than SNAPSHOT_LINGER_S fold into one mark every snapshot must
        # reach (`_folded_mark`), so memory stays bounded while no snapshots come.
        self._open_by_peer: dict[str, int] = {}
        self._unsettled: dict[str, tuple[int, float]] = {}
        self._folded_mark = 0
        self._folded_at = 0.0
        self._health = None  # the health servicer, once serving
        self._health_names: list[str] = []

    def _set_health(self, serving: bool) -> None:
        from workers.rpc import set_health

        if self._health is not None:
            self._loop.create_task(set_health(self._health, self._health_names, serving))

    def _on_frame(self, link: FrameLink, frame: list) -> None:
        if frame[0] == HEALTH:
            self._set_health(bool(frame[1]))
            return
        if frame[0] == SNAPSHOT:
            _, method, response, trailing, covered = frame
            self._snapshots[method] = (self._loop.time(), response, tuple(tuple(pair) for pair in trailing or ()),
                                       covered)
            if self._unsettled:  # settled for every snapshot held: no longer needed
                least = min(snapshot[3] for snapshot in self._snapshots.values())
                self._unsettled = {peer: close for peer, close in self._unsettled.items() if close[0] > least}
            return
        call = self._calls.get(frame[1])
        if call is None:
            return  # cancelled here; the core's last frames for it cross the CANCEL
        call.frames.append(frame)
        if call.waiter is not None and not call.waiter.done():
            call.waiter.set_result(None)

    def _on_lost(self, link: FrameLink, exc) -> None:
        self._set_health(False)
        self._snapshots.clear()
        for call_id in list(self._calls):
            self._on_frame(link, _core_gone(call_id))
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(exc)

    def _open(self, method: str, request: bytes, context, now: bool) -> tuple[int, _Call]:
        self._next_id += 1
        call_id = self._next_id
        peer = None if method in self._snapshot_methods else context.peer()
        call = _Call(peer)
        if self.link.closed:
            call.frames.append(_core_gone(call_id))  # accepted while this process stops
        else:
            self.link.send([CALL, call_id, method, request, context.invocation_metadata()], now=now)
        self._calls[call_id] = call  # sent (or ended): _close undoes what follows
        if peer is not None:
            self._open_by_peer[peer] = self._open_by_peer.get(peer, 0) + 1
        return call_id, call

    async def _next(self, call: _Call) -> list:
        while not call.frames:
            call.waiter = self._loop.create_future()
            await call.waiter
        return call.frames.popleft()

    def _close(self, call_id: int, call: _Call) -> None:
        del self._calls[call_id]
        if not call.ended:
            self.link.send([CANCEL, call_id])
        if call.peer is not None:
            left = self._open_by_peer[call.peer] - 1
            if left:
                self._open_by_peer[call.peer] = left
            else:
                del self._open_by_peer[call.peer]
            now = self._loop.time()
            self._unsettled[call.peer] = (self.link.sent, now)
            if now - self._folded_at > SNAPSHOT_LINGER_S:
                self._folded_at = now
                old = [peer for peer, close in self._unsettled.items() if now - close[1] > SNAPSHOT_LINGER_S]
                for peer in old:
                    self._folded_mark = max(self._folded_mark, self._unsettled.pop(peer)[0])

    def snapshot_or_unary(self, method: str):
        """A snapshot method: answered from the latest snapshot when the rules allow
        (the module's docstring), else relayed as any unary call."""
        relay = self.unary(method)

        async def handler(request: bytes, context):
            now = self._loop.time()
            # Polled (asked twice within SNAPSHOT_LINGER_S): ask the core for snapshots.
            # A one-off call, or polls further apart, go to the core and cost it nothing more.
            polled = now - self._asked_at.get(method, -math.inf) <= SNAPSHOT_LINGER_S
            self._asked_at[method] = now
            if polled and now - self._wanted_at.get(method, -math.inf) >= SNAPSHOT_LINGER_S / 2 \
                    and not self.link.closed:
                self._wanted_at[method] = now
                self.link.send([WANT, method])
            snapshot = self._snapshots.get(method)
            if snapshot is not None and not request:  # computed for the default (empty) request
                age_s = now - snapshot[0]
                covered = snapshot[3]
                peer = context.peer()
                if (age_s <= SNAPSHOT_MAX_AGE_S and covered >= self._folded_mark and peer not in self._open_by_peer
                        and self._unsettled.get(peer, (0,))[0] <= covered):
                    context.set_trailing_metadata(snapshot[2] + ((SNAPSHOT_AGE_KEY, f"{age_s * 1e3:.1f}"),))
                    return snapshot[1]
            return await relay(request, context)

        return handler

    @staticmethod
    async def _end(call: _Call, frame: list, context) -> None:
        call.ended = True
        _, _, code, details, trailing = frame
        if trailing:
            context.set_trailing_metadata(tuple(tuple(pair) for pair in trailing))
        if code != OK_CODE:
            await context.abort(STATUS_BY_CODE.get(code, grpc.StatusCode.UNKNOWN), details)

    def unary(self, method: str):
        async def handler(request: bytes, context):
            call_id, call = self._open(method, request, context, now=True)
            try:
                response = None
                while True:
                    frame = await self._next(call)
                    if frame[0] == MESSAGE:
                        response = frame[2]
                    else:
                        await self._end(call, frame, context)
                        return response
            finally:
                self._close(call_id, call)

        return handler

    def streaming(self, method: str):
        async def handler(request: bytes, context):
            call_id, call = self._open(method, request, context, now=False)
            taken = 0
            try:
                while True:
                    frame = await self._next(call)
                    if frame[0] == MESSAGE:
                        yield frame[2]  # returns once gRPC took it (the client's window allowing)
                        taken += 1
                        if taken == CREDIT_EVERY:
                            self.link.send([CREDIT, call_id, taken])
                            taken = 0
                    else:
                        await self._end(call, frame, context)
                        return
            finally:
                self._close(call_id, call)

        return handler

    def add_services(self, server: grpc.aio.Server) -> list[str]:
        # No (de)serializers: the request bytes go to the core as they came, and the
        # core's serialized responses go out as they are.
        handlers = {m.name: (grpc.unary_stream_rpc_method_handler(self.streaming(m.name)) if m.server_streaming
                             else grpc.unary_unary_rpc_method_handler(self.snapshot_or_unary(m.name))
                             if m.name in self._snapshot_methods
                             else grpc.unary_unary_rpc_method_handler(self.unary(m.name)))
                    for m in SCHEDULER_SERVICE_DESCRIPTOR.methods}
        name = SCHEDULER_SERVICE_DESCRIPTOR.full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        return [name]

    async def run(self, core_socket: str, host: str, port: int, security: ServiceSecurity | None = None) -> int:
        from workers.rpc import start_grpc_server

        loop = self._loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        _, self.link = await loop.create_unix_connection(lambda: FrameLink(self._on_frame, self._on_lost),
                                                        core_socket)
        try:
            server, bound, self._health = await start_grpc_server(host, self.add_services, port=port,
                                                                  security=security, serving=False)
            self._health_names = [SCHEDULER_SERVICE_DESCRIPTOR.full_name]
        except OSError as exc:
            self.link.send([FAILED, str(exc), os.getpid()])
            self.link.close()
            return 2
        self.link.send([LISTENING, bound, os.getpid()])
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        await asyncio.wait((self.lost, stop), return_when=asyncio.FIRST_COMPLETED)
        # No new calls from here; open ones finish within the grace while the core can
        # still answer them (none are left if it went away).
        await server.stop(0 if self.lost.done() else STOP_GRACE_S)
        self.link.close()
        return 0


def _core_gone(call_id: int) -> list:
    return [END, call_id, grpc.StatusCode.UNAVAILABLE.value[0], "the scheduler core went away", None]


def _linux_process_setup(parent_pid: int) -> None:
    """Name this process for top and ps (PR_SET_NAME), and ask the kernel for SIGTERM
    when the process that started it exits (PR_SET_PDEATHSIG), so a front end never
    outlives a core killed without a chance to stop it. No-ops off Linux."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, PROCESS_NAME.encode(), 0, 0, 0)  # PR_SET_NAME
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent_pid and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent was gone before prctl took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROCESS_NAME, description="infersched client-facing front end (started by "
                                 "the scheduler core; not meant to be run by hand)")
    ap.add_argument("--core", required=True, help="the core's Unix socket")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--realtime-priority", type=int, default=0)
    ap.add_argument("--parent", type=int, default=0, help="pid of the core; this process ends with it")
    ap.add_argument("--snapshot-methods", default="", help="comma-separated unary methods the core pushes "
                    "snapshots of")
    ap.add_argument("--security-stdin", action="store_true", help="read the clients' TLS and token from stdin")
    args = ap.parse_args(argv)
    security = security_from_frame(sys.stdin.buffer.read()) if args.security_stdin else None
    logging.basicConfig(level=logging.WARNING, format=f"{PROCESS_NAME}[%(process)d] %(levelname)s %(message)s")
    _linux_process_setup(args.parent)
    if args.realtime_priority:
        from scheduler.realtime import set_realtime_priority

        set_realtime_priority(args.realtime_priority)  # before gRPC starts its threads
    snapshot_methods = tuple(name for name in args.snapshot_methods.split(",") if name)
    return asyncio.run(Frontend(snapshot_methods).run(args.core, args.host, args.port, security))


if __name__ == "__main__":
    sys.exit(main())
