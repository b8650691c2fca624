"""The core's side of the relay: `FrontendPool` starts the front-end processes, runs
their calls against the servicer, and restarts a front end that dies.

A front end knows nothing of the scheduler: the request's serialized proto and
metadata come here, the serialized responses and the final status (code,
details, trailing metadata) go back, and the servicer runs unchanged against a
`_RelayContext`. When a link breaks, the core cancels that link's calls (each
counted FAILED, "cancelled", as when a client cancels) and starts a new front
end on the same port. Stopping, it sends each front end SIGTERM.

Snapshots (GetStats). A servicer's `snapshot_methods` (names among its
`inline_methods`) are unary reads whose answer depends on nothing but time.
While some client polls one (a front end saw two calls within
SNAPSHOT_LINGER_S and sent a WANT in the last SNAPSHOT_LINGER_S), the core
computes it every SNAPSHOT_INTERVAL_S and pushes it to every front end, which
answers a call with an empty request from it: a monitoring poll never queues
behind Generate work on the core's loop. Two rules keep it honest: a front end
serves a snapshot for at most SNAPSHOT_MAX_AGE_S (saying how old in the
trailing metadata key SNAPSHOT_AGE_KEY), and read-your-writes per connection:
a connection with another call open, or whose last call closed after what the
snapshot covers, is answered by the core. A snapshot covers the calls that
ended before it came and those the core saw CANCELled before its previous
snapshot, so a servicer must count a cancelled call in the cancelled task's
next step (no awaits on the way).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import grpc
from google.protobuf import message_factory

from scheduler.live.relay.link import (CALL, CANCEL, CREDIT, END, FAILED, HEALTH, LISTENING, MESSAGE,
                                       SCHEDULER_SERVICE_DESCRIPTOR, SNAPSHOT, SNAPSHOT_INTERVAL_S, SNAPSHOT_LINGER_S, STOP_GRACE_S, STREAM_WINDOW,
                                       WANT, FrameLink, OK_CODE)
from workers.security.service import ServiceSecurity, security_frame

log = logging.getLogger(__name__)


def check_frontends(count: int) -> int:
    """A front-end count as serve and the scheduler actor take it: 0 (the actor serves
    clients itself) or more."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"front ends: need an integer >= 0, got {count!r}")
    return count


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

    def __init__(self, servicer: Any, count: int = 1, realtime_priority: int = 0, start_timeout_s: float = 60.0,
                 security: ServiceSecurity | None = None):
        if count < 1:
            raise ValueError(f"front ends: need at least 1, got {count}")
        self.count = count
        self.realtime_priority = realtime_priority
        self.start_timeout_s = start_timeout_s
        self.security = security  # clients' TLS and token: each front end gets it on its stdin
        self.port = 0
        self.restarts = 0
        # method name -> (request class, server-streaming?, the servicer's handler)
        self._methods = {m.name: (message_factory.GetMessageClass(m.input_type), m.server_streaming,
                                  getattr(servicer, m.name))
                         for m in SCHEDULER_SERVICE_DESCRIPTOR.methods}
        # The servicer's own parsing (answering and counting a request that does not
        # parse, ValueError), if it has one.
        self._parse = getattr(servicer, "parse_request", None)
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
        self._serving = False  # what the front ends' health services say (set_serving)

    def set_serving(self, serving: bool) -> None:
        """The scheduler can (or cannot) serve: every front end's health says so."""
        self._serving = serving
        for fe in self._frontends:
            if fe.link is not None and not fe.link.closed:
                fe.link.send([HEALTH, serving], now=True)

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
        argv = [sys.executable, "-m", "scheduler.live.relay.frontend", "--core", self.socket_path, "--host", self._host, "--port", str(port),
                "--realtime-priority", str(self.realtime_priority), "--parent", str(os.getpid()),
                "--snapshot-methods", ",".join(self._snapshot_methods)]
        secret = security_frame(self.security) if self.security is not None and self.security.enabled else None
        if secret is not None:  # on stdin: a key or token never shows on a command line
            argv.append("--security-stdin")
        # Its own session: a terminal's Ctrl-C reaches serve, which stops the core, which
        # stops its front ends; they never stop on their own while the core serves.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if secret is None else subprocess.PIPE,
                                start_new_session=True)
        if secret is not None:
            with proc.stdin:
                proc.stdin.write(secret)
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
                        link.send([HEALTH, self._serving], now=True)
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
        if self._parse is not None:
            try:
                return self._parse(request_class, payload), streaming, handler
            except ValueError as exc:
                raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
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
    return OK_CODE, ""


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
