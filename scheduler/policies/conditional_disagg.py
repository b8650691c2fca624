from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="conditional-disagg",
    description=("Disaggregated prefill only for long prompts (disagg_min_prompt_tokens) or when colocated "
                 "instances have a prefill backlog (disagg_min_wait_s); colocated otherwise; lowest "
                 "predicted latency within the chosen kind."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("conditional-disagg", 1.0), ("predicted-latency", 0.5)),
    picker="argmax",
)
