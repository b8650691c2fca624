from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="cost-aware",
    description=("Lowest predicted dollars for the request (occupied seconds x instance price) among "
                 "placements predicted to meet the TTFT and TPOT SLOs; the fastest when none does."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("predicted-cost", 1.0),),
    picker="argmax",
)
