from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="advisor",
    description=("The lowest tier executes; on requests the router judges too hard for it, the top tier "
                 "first reads the context and writes a short plan (advisor_plan_tokens) that lifts the "
                 "executor's answer (advisor_lift)."),
    filters=("fits-memory", "model-tier", "lowest-tier", "same-model"),
    scorers=(("predicted-latency", 1.0),),
    picker="argmax",
    staging="advisor",
)
