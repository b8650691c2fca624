"""The relay's wire: msgpack frames over one Unix socket per front end.

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
                        [HEALTH, serving]              after LISTENING and on each change:
                                                       the gRPC health status to report

Every call ends with exactly one END, or with a CANCEL from the front end, after
which the core sends nothing more for it.
"""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import msgpack

from infersched.v1 import scheduler_pb2

CALL, CANCEL, LISTENING, FAILED, MESSAGE, END, CREDIT, WANT, SNAPSHOT, HEALTH = range(10)
# Stream flow control: the core stops a stream when this many of its messages have not
# yet been taken by gRPC on the front end (which holds them to the client's HTTP/2
# window), and the front end returns credit every CREDIT_EVERY messages. Memory per
# stream stays bounded as in-process, where each yield waits for the send.
STREAM_WINDOW = 32
CREDIT_EVERY = 16
# How long a stopping front end lets its calls finish (as grpc.aio's server.stop(grace)).
STOP_GRACE_S = 1.0
# Snapshot methods (scheduler.live.relay.pool): how often the core pushes them while
# wanted, how old a front end lets one be, and how long a WANT keeps them coming.
SNAPSHOT_INTERVAL_S = 0.01
SNAPSHOT_MAX_AGE_S = 0.05
SNAPSHOT_LINGER_S = 2.0
SNAPSHOT_AGE_KEY = "infersched-snapshot-age-ms"

SCHEDULER_SERVICE_DESCRIPTOR = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]
# A front end's thread name (/proc/PID/comm, what top shows; at most 15 bytes).
PROCESS_NAME = "infersched-fe"
STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
OK_CODE = grpc.StatusCode.OK.value[0]


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
