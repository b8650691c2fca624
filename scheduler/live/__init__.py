"""The live control plane: the simulator's policy core serving requests on workers.

    types.py          values, errors and options (no protos)
    core.py           SchedulerCore: a sans-I/O state machine on a Clock and a WorkerClient
    mirror.py         the core's mirrors of workers' engines; the snapshot rows they write
    stats.py          latency windows, usage, counters, per-pool views
    worker_client.py  the WorkerClient seam and its gRPC implementation (the only worker_pb2 user here)
    inprocess.py      WorkerClient over emulated workers in this process (deterministic on a VirtualClock)
    servicer.py       the Scheduler gRPC service (proto <-> core, in one place)
    metrics.py        Prometheus
    actor.py          the Ray actor: core, server, metrics, worker supervisor
    relay/            client gRPC in front-end processes (`serve --frontends N`)
"""
