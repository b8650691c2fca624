"""The live control plane: the simulator's policy core serving requests on workers.

    types.py          values, errors and options (no protos)
    core.py           SchedulerCore: a sans-I/O state machine on a Clock and a WorkerClient
    mirror.py         the core's mirrors of workers' engines; the snapshot rows they write
    stats.py          latency windows, usage, counters, per-pool views
    worker_client.py  the WorkerClient seam and its gRPC implementation (the only worker_pb2 user here)
    inprocess.py      WorkerClient over emulated workers in this process (deterministic on a VirtualClock)
    openai_client.py  WorkerClient over real engines speaking the OpenAI HTTP API (backend: openai pools)
    mixed_client.py   one WorkerClient over several: emulated and real pools under one core
    engine_launch.py  the core's client for a cluster; `launch:` engines as Ray actors; endpoint registration
    servicer.py       the Scheduler gRPC service (proto <-> core, in one place)
    metrics.py        Prometheus
    actor.py          the Ray actor: core, server, metrics, worker supervisor
    relay/            client gRPC in front-end processes (`serve --frontends N`)
"""
