"""Client-facing gRPC in front-end processes, relayed to the scheduler core (`serve --frontends N`).

Why. Python gRPC costs a server about 1 ms of CPU per Generate call whatever
the call does (BENCHMARKS.md section 4: a do-nothing server of the Scheduler
service). Hosted on the core's event loop (the default, `--frontends 0`),
that cost and the core's own work (policy, worker sessions, accounting) share
one loop: 1.7 ms of CPU per request, ~85% of a core at 500 requests/s, and
a GetStats waits behind Generate work at each hop a gRPC call takes through
the loop. With front ends, the core sees a call as one
frame in and a frame per response out, batched per event-loop pass: 0.9-1.0
ms per request on the core's loop, the gRPC work on the front ends' (~0.9 ms
each), which scale with N over cores (they share the port with SO_REUSEPORT,
which gRPC sets on Linux; the kernel spreads connections). The same split as
vLLM's API server and engine core (msgpack over a local socket), for the same
reason.

When it pays. On a host with cores to spare, always. On the 2-core development
machine it buys GetStats latency under load at a price: with the scheduler and
the probes under SCHED_FIFO (`--realtime-priority`), GetStats p99 at 500
requests/s was 2.2-4.7 ms in 14 of 17 runs (answered from snapshots, below;
5.1-5.9 ms in noisier windows) against 3.3-12.8 ms in-process; but the
relay adds ~0.25 ms of CPU per request in all, and with both processes
real-time they can hold both cores at once, so a load client on the same
machine waits (its request overhead p99 55-1,244 ms against 34-628 ms
in-process). Without real-time priority neither meets 5 ms there
(BENCHMARKS.md section 4).

What a front end knows: nothing of the scheduler. It serves every method of
`infersched.v1.Scheduler` (taken from the service descriptor) with bytes in and
bytes out: the request's serialized proto and its metadata go to the core, the
serialized responses and the final status (code, details, trailing metadata)
come back. Validation, the policy, counting and the proto conversions stay in
`scheduler.control.SchedulerServicer`, which the core runs unchanged against a
`_RelayContext`. Health and reflection are served by the front end; health
turns NOT_SERVING when the core goes away.

Wire (one connection per front end to the core's Unix socket; msgpack arrays, one per frame):

    front end -> core   [CALL, call_id, method, request bytes, metadata pairs]
                        [CANCEL, call_id]              the client went away
                        [CREDIT, call_id, n]           n more of a stream's messages
                                                       went to gRPC (STREAM_WINDOW)
                        [LISTENING, port, pid]         once, after binding (or
                        [FAILED, reason, pid]          why it could not)
                        [WANT, method]                 snapshots of `method`, please
                                                       (sent at most every SNAPSHOT_LINGER_S / 2)
    core -> front end   [MESSAGE, call_id, response bytes]
                        [END, call_id, status code, details, trailing metadata pairs]
                        [SNAPSHOT, method, response bytes, trailing metadata pairs,
                         frames received from this front end before the previous SNAPSHOT]

Every call ends with exactly one END, or with a CANCEL from the front end, after
which the core sends nothing more for it. When the link breaks, the front end
ends its open calls UNAVAILABLE and exits; the core cancels that link's calls
(each counted FAILED, "cancelled", as when a client cancels) and starts a new
front end on the same port. Stopping, the core sends each front end SIGTERM:
it stops taking calls, lets the open ones finish for STOP_GRACE_S over the
still-open link (as an in-process server.stop(grace) would), then exits.

Snapshots (GetStats). A servicer's `snapshot_methods` (names among its
`inline_methods`) are unary reads whose answer depends on nothing but time. While some client polls one (a front end saw two calls within
SNAPSHOT_LINGER_S and sent a WANT in the last SNAPSHOT_LINGER_S), the core
computes it every SNAPSHOT_INTERVAL_S and pushes it to every front end, which
answers a call with an empty request from it, without a hop to the core: a
monitoring poll never queues behind Generate work on the core's loop. A one-off
call goes to the core. Two rules keep it honest:
- a front end serves a snapshot for at most SNAPSHOT_MAX_AGE_S after it came
  (older, or none yet, and the call goes to the core), and says how long it has
  held it in the trailing metadata key SNAPSHOT_AGE_KEY (milliseconds);
- read-your-writes per connection: a connection (gRPC peer) with another call
  open on this front end (a write, whatever the method), or whose last call
  closed after what the snapshot covers, is answered by the core. A snapshot
  covers the calls that ended (END) before it came, and those the core saw
  CANCELled before its previous snapshot. So a servicer must count a cancelled
  call in the cancelled task's next step (no awaits on the way, as
  SchedulerServicer), which runs within the interval between the two.
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
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import grpc
import msgpack

from google.protobuf import message_factory

from infersched.v1 import scheduler_pb2

log = logging.getLogger(__name__)

CALL, CANCEL, LISTENING, FAILED, MESSAGE, END, CREDIT, WANT, SNAPSHOT = range(9)
# Stream flow control: the core stops a stream when this many of its messages have not
# yet been taken by gRPC on the front end (which holds them to the client's HTTP/2
# window), and the front end returns credit every CREDIT_EVERY messages. Memory per
# stream stays bounded as in-process, where each yield waits for the send.
STREAM_WINDOW = 32
CREDIT_EVERY = 16
# How long a stopping front end lets its calls finish (as grpc.aio's server.stop(grace)).
STOP_GRACE_S = 1.0
# Snapshot methods (see the module's docstring): how often the core pushes them while
# wanted, how old a front end lets one be, and how long a WANT keeps them coming.
SNAPSHOT_INTERVAL_S = 0.01
SNAPSHOT_MAX_AGE_S = 0.05
SNAPSHOT_LINGER_S = 2.0
SNAPSHOT_AGE_KEY = "infersched-snapshot-age-ms"

SCHEDULER_SERVICE_DESCRIPTOR = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]
# A front end's thread name (/proc/PID/comm, what top shows; at most 15 bytes).
PROCESS_NAME = "infersched-fe"
_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
_OK = grpc.StatusCode.OK.value[0]


def check_frontends(count: int) -> int:
    """A front-end count as serve and the scheduler actor take it: 0 (the actor serves
    clients itself) or more."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"front ends: need an integer >= 0, got {count!r}")
    return count


class FrameLink(asyncio.Protocol):
    """A msgpack frame stream over one socket, either side. Frames sent during one
    event-loop pass leave in one write, unless the sender needs them out now (a unary
    call: nothing follows to share the write, and its caller waits)."""

    def __init__(self, on_frame, on_lost):
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._unpacker = msgpack.Unpacker(raw=False)
        self._packer = msgpack.Packer()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.owner: Any = None  # the core's _Frontend for this link
        self.sent = 0  # frames sent, and received, over this link
        self.received = 0

    @property
    def closed(self) -> bool:
        return self._transport is None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        for frame in self._unpacker:
            self.received += 1
            self._on_frame(self, frame)

    def connection_lost(self, exc) -> None:
        self._transport = None
        self._on_lost(self, exc)

    def send(self, *frames: list, now: bool = False) -> None:
        """Queue `frames`, all or none (one that cannot be packed raises first); `now`
        writes them, after what was queued before, at once."""
        if self._transport is None:
            return  # the link is gone: the other side ends its calls itself
        packed = [self._packer.pack(frame) for frame in frames]
        self.sent += len(packed)
        if not self._out and not now:
            self._loop.call_soon(self._flush)
        self._out.extend(packed)
        if now:
            self._flush()

    def _flush(self) -> None:
        if self._transport is not None and self._out:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()


# ---------------------------------------------------------------------------
# Core side.


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class _RelayContext:
    """What a servicer uses of grpc.aio.ServicerContext, for a relayed call: metadata in
    and out, abort, and a status set without raising (as gRPC's generated base class
    does for an unimplemented method)."""

    __slots__ = ("_metadata", "trailing", "code", "details")

    def __init__(self, metadata):
        self._metadata = metadata
        self.trailing = None
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self):
        return self._metadata

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = [tuple(pair) for pair in metadata]

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


class _Relayed:
    """A call running on the core: its task, and its stream's unconfirmed messages."""

    __slots__ = ("task", "unconfirmed", "resume")

    def __init__(self):
        self.task: asyncio.Task | None = None
        self.unconfirmed = 0
        self.resume: asyncio.Future | None = None


class _Frontend:
    """One front-end process as the core sees it."""

    def __init__(self, index: int, proc: subprocess.Popen):
        self.index = index
        self.proc = proc
        self.link: FrameLink | None = None
        self.calls: dict[int, _Relayed] = {}
        self.covered = 0  # frames received from it before the last SNAPSHOT pushed to it
        # Its LISTENING frame's port, or its FAILED frame's reason.
        self.listening: asyncio.Future = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()


class FrontendPool:
    """The core's side: starts `count` front-end processes serving `servicer` on
    host:port, runs their calls against it, and restarts a front end that dies."""

    def __init__(self, servicer: Any, count: int = 1, realtime_priority: int = 0, start_timeout_s: float = 60.0):
        if count < 1:
            raise ValueError(f"front ends: need at least 1, got {count}")
        self.count = count
        self.realtime_priority = realtime_priority
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.restarts = 0
        # method name -> (request class, server-streaming?, the servicer's handler)
        self._methods = {m.name: (message_factory.GetMessageClass(m.input_type), m.server_streaming,
                                  getattr(servicer, m.name))
                         for m in SCHEDULER_SERVICE_DESCRIPTOR.methods}
        # Unary methods the servicer answers without awaiting anything (`inline_methods`:
        # name -> plain function of (request, context)): answered from the frame's
        # callback, with no task and no event-loop pass between the frame and the answer.
        self._inline = dict(getattr(servicer, "inline_methods", {}))
        # Inline methods front ends may answer from a pushed snapshot (the module's docstring).
        self._snapshot_methods = frozenset(getattr(servicer, "snapshot_methods", ()))
        if not self._snapshot_methods <= self._inline.keys():
            raise ValueError(f"snapshot methods {sorted(self._snapshot_methods - self._inline.keys())}: "
                             "not among the servicer's inline_methods")
        self._wanted: dict[str, float] = {}  # snapshot method -> loop time its pushes stop
        self._snapshot_timer: asyncio.TimerHandle | None = None
        self._frontends: list[_Frontend] = []
        self._pending: list[_Frontend] = []  # started, not yet identified by their LISTENING frame
        self._dir = ""
        self._server: asyncio.AbstractServer | None = None
        self._host = "127.0.0.1"
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self._dir, "core.sock")

    async def start(self, host: str, port: int) -> int:
        """Start the front ends; returns the port they listen on. Raises OSError with the
        first front end's reason if it cannot listen (the others are stopped)."""
        loop = asyncio.get_running_loop()
        self._host = host
        self._loop = loop
        self._dir = tempfile.mkdtemp(prefix="infersched-core-")
        self._server = await loop.create_unix_server(lambda: FrameLink(self._on_frame, self._on_lost),
                                                     self.socket_path)
        first = await self._spawn(0, port)
        self.port = first
        rest = [asyncio.ensure_future(self._spawn(i, first)) for i in range(1, self.count)]
        try:
            await asyncio.gather(*rest)
        except BaseException:  # the first failure, as it is; the others are cancelled
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            raise
        return first

    async def _spawn(self, index: int, port: int) -> int:
        if self._stopping:
            raise OSError("the front ends are stopping")
        # The interpreter itself as argv[0]: Python finds its virtual environment from it.
        argv = [sys.executable, "-m", __name__, "--core", self.socket_path, "--host", self._host, "--port", str(port),
                "--realtime-priority", str(self.realtime_priority), "--parent", str(os.getpid()),
                "--snapshot-methods", ",".join(self._snapshot_methods)]
        # Its own session: a terminal's Ctrl-C reaches serve, which stops the core, which
        # stops its front ends; they never stop on their own while the core serves.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        fe = _Frontend(index, proc)
        self._pending.append(fe)
        exited = asyncio.ensure_future(_exit_of(proc))
        try:
            done, _ = await asyncio.wait((fe.listening, exited), timeout=self.start_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if exited in done and not fe.listening.done():
                # Its FAILED frame, if it sent one, may still be on the way.
                await asyncio.wait((fe.listening,), timeout=0.5)
            if fe.listening.done():
                bound = fe.listening.result()
                if isinstance(bound, str):
                    raise OSError(bound)
                fe.lost.add_done_callback(lambda _: self._restart_later(fe))
                return bound
            reason = (f"exited with status {proc.returncode} before listening" if exited.done()
                      else f"did not listen within {self.start_timeout_s:.0f} s")
            raise OSError(f"front end {index} for {self._host}:{port} {reason}")
        except BaseException:
            with contextlib.suppress(ValueError):
                self._frontends.remove(fe)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)  # SIGKILL: milliseconds; no zombie left behind
            raise
        finally:
            exited.cancel()
            with contextlib.suppress(ValueError):
                self._pending.remove(fe)

    def _on_frame(self, link: FrameLink, frame: list) -> None:
        kind = frame[0]
        fe = link.owner
        if kind == CALL and fe is not None:
            call_id = frame[1]
            inline = self._inline.get(frame[2])
            if inline is not None:
                self._answer(link, call_id, frame[2], inline, frame[3], frame[4])
            else:
                relayed = fe.calls[call_id] = _Relayed()
                relayed.task = self._loop.create_task(self._run(fe, link, call_id, relayed, frame[2], frame[3],
                                                                frame[4]))
        elif kind == CREDIT and fe is not None:
            relayed = fe.calls.get(frame[1])
            if relayed is not None:
                relayed.unconfirmed -= frame[2]
                if relayed.resume is not None and not relayed.resume.done():
                    relayed.resume.set_result(None)
        elif kind == CANCEL and fe is not None:
            relayed = fe.calls.pop(frame[1], None)
            if relayed is not None:
                relayed.task.cancel()
        elif kind == WANT and fe is not None:
            if frame[1] in self._snapshot_methods:
                self._wanted[frame[1]] = self._loop.time() + SNAPSHOT_LINGER_S
                if self._snapshot_timer is None and not self._stopping:
                    self._push_snapshots()
        elif kind in (LISTENING, FAILED) and fe is None:
            for fe in self._pending:
                if fe.proc.pid == frame[2] and not fe.listening.done():
                    if kind == FAILED:
                        fe.listening.set_result(frame[1])
                    elif self._stopping:
                        fe.listening.set_result("the front ends are stopping")
                        link.close()
                    else:  # serving from now on: calls may follow at once
                        fe.link, link.owner = link, fe
                        self._frontends.append(fe)
                        fe.listening.set_result(frame[1])
                    return
            log.error("front-end link: %s from pid %s, which this pool did not start; closing it",
                      "LISTENING" if kind == LISTENING else "FAILED", frame[2])
            link.close()
        else:
            log.error("front-end link: unexpected frame %r; closing it", frame[:2])
            link.close()

    def _push_snapshots(self) -> None:
        """Compute each wanted snapshot method's answer once and send it to every front
        end; again in SNAPSHOT_INTERVAL_S while any is still wanted."""
        self._snapshot_timer = None
        now = self._loop.time()
        for method, until in list(self._wanted.items()):
            if until < now:
                del self._wanted[method]
        if not self._wanted or self._stopping:
            return
        snapshots = []
        for method in list(self._wanted):
            context = _RelayContext(())
            try:
                response = self._inline[method](self._methods[method][0](), context)
                if context.code not in (None, grpc.StatusCode.OK):
                    raise RuntimeError(f"status {context.code.name}: {context.details}")
                snapshots.append((method, response.SerializeToString(), context.trailing))
            except Exception:  # the calls go to the core meanwhile; a new WANT tries again
                log.exception("snapshot of %s failed; front ends relay its calls", method)
                del self._wanted[method]
        for fe in self._frontends if snapshots else ():
            if fe.link is not None and not fe.link.closed:
                received = fe.link.received
                try:
                    fe.link.send(*([SNAPSHOT, method, response, trailing, fe.covered]
                                   for method, response, trailing in snapshots))
                except (TypeError, ValueError, OverflowError):  # trailing metadata msgpack cannot carry
                    log.exception("snapshots cannot be sent; front ends relay their calls")
                    self._wanted.clear()
                    return
                fe.covered = received
        if self._wanted:
            self._snapshot_timer = self._loop.call_later(SNAPSHOT_INTERVAL_S, self._push_snapshots)

    def _on_lost(self, link: FrameLink, exc) -> None:
        fe = link.owner
        if fe is None:
            return
        for relayed in fe.calls.values():
            relayed.task.cancel()
        fe.calls.clear()
        if not fe.lost.done():
            fe.lost.set_result(exc)

    def _request(self, method: str, payload: bytes):
        try:
            request_class, streaming, handler = self._methods[method]
        except KeyError:
            raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, f"method {method!r} is not served") from None
        try:
            return request_class.FromString(payload), streaming, handler
        except Exception as exc:  # protobuf's DecodeError, and anything a corrupt message raises
            raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                           f"request is not a valid {request_class.DESCRIPTOR.full_name}: {exc}") from None

    def _answer(self, link: FrameLink, call_id: int, method: str, function, payload: bytes, metadata) -> None:
        """An inline method's whole call, now."""
        context = _RelayContext(metadata)
        try:
            response = function(self._request(method, payload)[0], context).SerializeToString()
        except Exception as exc:
            _end(link, call_id, *_status(context, exc, method), context.trailing, now=True)
            return
        _end(link, call_id, *_status(context, None), context.trailing, [MESSAGE, call_id, response], now=True)

    async def _run(self, fe: _Frontend, link: FrameLink, call_id: int, relayed: _Relayed, method: str,
                   payload: bytes, metadata) -> None:
        context = _RelayContext(metadata)
        message = None  # a unary call's response, sent with its END
        streaming = True
        try:
            request, streaming, handler = self._request(method, payload)
            if streaming:
                async with contextlib.aclosing(handler(request, context)) as responses:
                    async for response in responses:
                        link.send([MESSAGE, call_id, response.SerializeToString()])
                        relayed.unconfirmed += 1
                        while relayed.unconfirmed >= STREAM_WINDOW and not link.closed:
                            relayed.resume = self._loop.create_future()
                            await relayed.resume
            else:
                response = await handler(request, context)
                message = [MESSAGE, call_id, response.SerializeToString()]
            code, details = _status(context, None)
        except asyncio.CancelledError:
            return  # the front end cancelled it (or its link broke): nothing more to send
        except Exception as exc:
            message = None
            code, details = _status(context, exc, method)
        finally:
            fe.calls.pop(call_id, None)
        _end(link, call_id, code, details, context.trailing, message, now=not streaming)

    def _restart_later(self, fe: _Frontend) -> None:
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._restart(fe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, fe: _Frontend) -> None:
        """A front end's link broke while serving: end that process and start another on
        the same port, retrying with back-off until the pool stops."""
        with contextlib.suppress(ValueError):
            self._frontends.remove(fe)
        await _reap(fe.proc, 2.0)
        log.warning("front end %d (pid %d) stopped (status %s); starting another on port %d",
                    fe.index, fe.proc.pid, fe.proc.returncode, self.port)
        backoff_s = 0.2
        while not self._stopping:
            try:
                await self._spawn(fe.index, self.port)
                self.restarts += 1
                return
            except OSError as exc:
                log.error("front end %d did not come back: %s; retrying in %.1f s", fe.index, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def pids(self) -> list[int]:
        return [fe.proc.pid for fe in self._frontends]

    async def stop(self) -> None:
        """SIGTERM every front end (each stops taking calls and gives the open ones
        STOP_GRACE_S to finish over its link), reap them, and close the socket."""
        self._stopping = True
        if self._snapshot_timer is not None:
            self._snapshot_timer.cancel()
            self._snapshot_timer = None
        for task in list(self._tasks):
            task.cancel()
        for fe in self._pending:  # still starting: their _spawn sees the exit and cleans up
            with contextlib.suppress(ProcessLookupError):
                fe.proc.kill()
        frontends, self._frontends = self._frontends, []
        for fe in frontends:
            with contextlib.suppress(ProcessLookupError):
                fe.proc.terminate()
        await asyncio.gather(*(_reap(fe.proc, STOP_GRACE_S + 2.0) for fe in frontends))
        for fe in frontends:
            if fe.link is not None:
                fe.link.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def _status(context: _RelayContext, exc: Exception | None, method: str = "") -> tuple[int, str]:
    """A relayed call's final (code, details), as grpc.aio would end it: an abort's
    status; for another exception the code the handler set, else UNKNOWN, with the
    exception as details; without one, the status the handler set, else OK."""
    if isinstance(exc, _Aborted):
        return exc.code.value[0], exc.details
    if exc is not None:
        if context.code is None:
            log.error("relayed %s failed", method, exc_info=exc)
        code = context.code or grpc.StatusCode.UNKNOWN
        return code.value[0], f"Unexpected {type(exc)!r}: {exc}"
    if context.code is not None:
        return context.code.value[0], context.details
    return _OK, ""


def _end(link: FrameLink, call_id: int, code: int, details: str, trailing, message: list | None = None,
         now: bool = False) -> None:
    """Send a call's END (after its last MESSAGE, if given). Trailing metadata that cannot
    be packed ends the call UNKNOWN instead: every call ends with exactly one status."""
    frames = [[END, call_id, code, details, trailing]]
    if message is not None:
        frames.insert(0, message)
    try:
        link.send(*frames, now=now)
    except (TypeError, ValueError, OverflowError) as exc:
        link.send([END, call_id, grpc.StatusCode.UNKNOWN.value[0], f"trailing metadata: {exc}", None], now=now)


async def _exit_of(proc: subprocess.Popen, poll_s: float = 0.05) -> int:
    while proc.poll() is None:
        await asyncio.sleep(poll_s)
    return proc.returncode


async def _reap(proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait for a front end to exit; SIGTERM, then SIGKILL, if it does not in time."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            await asyncio.wait_for(_exit_of(proc), timeout_s)
            return
        except TimeoutError:
            continue


# ---------------------------------------------------------------------------
# Front-end side.


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

    def _on_frame(self, link: FrameLink, frame: list) -> None:
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
        if code != _OK:
            await context.abort(_STATUS_BY_CODE.get(code, grpc.StatusCode.UNKNOWN), details)

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

    async def run(self, core_socket: str, host: str, port: int) -> int:
        from workers.live import start_grpc_server

        loop = self._loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        _, self.link = await loop.create_unix_connection(lambda: FrameLink(self._on_frame, self._on_lost),
                                                        core_socket)
        try:
            server, bound, _ = await start_grpc_server(host, self.add_services, port=port)
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROCESS_NAME}[%(process)d] %(levelname)s %(message)s")
    _linux_process_setup(args.parent)
    if args.realtime_priority:
        from scheduler.realtime import set_realtime_priority

        set_realtime_priority(args.realtime_priority)  # before gRPC starts its threads
    snapshot_methods = tuple(name for name in args.snapshot_methods.split(",") if name)
    return asyncio.run(Frontend(snapshot_methods).run(args.core, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
