from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="prefix-aware",
    description=("Share of the prompt already in the instance's prefix cache (load-bounded: no affinity for an "
                 "instance above the mean load by more than prefix_load_slack, default 25%) plus predicted "
                 "TTFT/TPOT against the SLO, as slo-aware."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("prefix-affinity", 1.0), ("predicted-latency", 1.0)),
    picker="argmax",
)
