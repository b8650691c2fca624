"""`infersched drain` and `undrain`: an operator takes live workers out of service
and back (the Scheduler service's DrainWorker and UndrainWorker RPCs)."""
from __future__ import annotations

import sys

from infersched.cli.live import rpc_error
from infersched.cli.security import add_client_security_arguments, client_security


def register(sub) -> None:
    for name, about in (
            ("drain", "Stop placing new work on workers; they finish what they hold and stay out (also across "
                      "restarts) until undrained."),
            ("undrain", "Return drained workers to service.")):
        p = sub.add_parser(name, help=f"{name} live workers", description=about)
        p.add_argument("--target", default="127.0.0.1:50051", help="scheduler address (default 127.0.0.1:50051)")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--worker", metavar="ID",
                           help="one worker: its instance index (as request records name it) or its worker id "
                                "(as the ListWorkers RPC names it)")
        which.add_argument("--pool", help="every worker of this pool")
        add_client_security_arguments(p)
        p.set_defaults(handler=run_drain, drain=name == "drain")


def drain_request(worker: str | None, pool: str | None):
    from infersched.v1 import scheduler_pb2

    if pool is not None:
        return scheduler_pb2.DrainWorkerRequest(pool=pool)
    if worker.isdigit():
        return scheduler_pb2.DrainWorkerRequest(instance=int(worker))
    return scheduler_pb2.DrainWorkerRequest(worker_id=worker)


def run_drain(args) -> int:
    import grpc

    from infersched.client.stats import RPC_TIMEOUT_S
    from infersched.v1 import common_pb2, scheduler_pb2_grpc

    request = drain_request(args.worker, args.pool)
    security = client_security(args)
    try:
        with security.channel(args.target) as channel:
            stub = security.stub(scheduler_pb2_grpc.SchedulerStub, channel)
            call = stub.DrainWorker if args.drain else stub.UndrainWorker
            response = call(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        print(f"infersched: error: {rpc_error(args.target, exc)}", file=sys.stderr)
        return 2
    for w in response.workers:
        state = common_pb2.WorkerState.Name(w.state).removeprefix("WORKER_STATE_")
        print(f"instance {w.instance} ({w.pool}, worker {w.worker_id or '-'}): {state}")
    print(f"scheduler {'serving' if response.serving else 'NOT serving: no path through the cluster is ready'}")
    return 0
