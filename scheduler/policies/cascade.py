from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="cascade",
    description=("Lowest model tier first; an answer the verifier flags as wrong (params detect_accuracy, "
                 "verifier_seed) is re-served one tier up, paying for both passes (max_attempts)."),
    filters=("fits-memory", "model-tier", "lowest-tier", "same-model"),
    scorers=(("predicted-latency", 1.0),),
    picker="argmax",
    staging="escalate",
)
