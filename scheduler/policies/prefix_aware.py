from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="prefix-aware",
    description=("Where the prompt's prefix is already cached (share of the prompt held), load-bounded so no "
                 "instance exceeds the mean load by more than prefix_load_slack (default 25%), plus least-loaded."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("prefix-affinity", 1.0), ("least-loaded", 1.0)),
    picker="argmax",
)
