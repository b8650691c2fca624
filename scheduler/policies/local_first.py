from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="local-first",
    description=("Edge devices when the request fits their memory, their model tier (as the router judges "
                 "it: params router_accuracy, router_seed) and the SLO; otherwise the least-loaded cloud "
                 "instance. Answers the verifier flags as wrong are re-served a tier up (detect_accuracy)."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("local-first", 1.0), ("least-loaded", 0.1)),
    picker="argmax",
    staging="escalate",
)
