from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="least-loaded",
    description="Fewest queued plus running sequences per batch slot; ties spread by request id.",
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("least-loaded", 1.0),),
    picker="argmax",
)
