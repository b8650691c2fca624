from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="slo-aware",
    description=("Lowest predicted TTFT (queue wait + prefill from the performance model, + KV hand-over) "
                 "and TPOT against the SLO, with a small load term to spread ties."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("predicted-latency", 1.0), ("least-loaded", 0.05)),
    picker="argmax",
)
