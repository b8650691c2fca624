from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="round-robin",
    description="Cycle over every instance that can hold the request, ignoring load.",
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(),
    picker="round-robin",
)
