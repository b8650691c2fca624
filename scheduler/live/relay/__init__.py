"""Client-facing gRPC in front-end processes, relayed to the scheduler core (`serve --frontends N`).

Python gRPC costs a server about as much CPU per Generate call as the rest of
the scheduler's work for the request; hosted on the core's event loop (the
default, `--frontends 0`) the two share one loop, and a GetStats waits behind
Generate work at each hop. With front ends the core sees a call as one frame in
and a frame per response out, and the gRPC work moves to N processes sharing
the port (SO_REUSEPORT): the split of vLLM's API server and engine core, for
the same reason. BENCHMARKS.md section 4 says when it pays on which machine.

`link` is the wire (msgpack frames over a Unix socket), `pool` the core's side
(`FrontendPool`), `frontend` the front-end process.
"""
from scheduler.live.relay.pool import FrontendPool, check_frontends

__all__ = ["FrontendPool", "check_frontends"]
