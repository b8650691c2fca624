from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="slo-aware",
    description=("Lowest predicted TTFT (queue wait + prefill from the performance model) for prefill, "
                 "lowest predicted TPOT (batch, context, slot queue) for decode, scored against the SLO."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("predicted-latency", 1.0),),
    picker="argmax",
)
