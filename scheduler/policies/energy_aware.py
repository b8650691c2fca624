from scheduler.policy import PolicySpec

POLICY = PolicySpec(
    name="energy-aware",
    description=("Lowest predicted joules for the request (occupied seconds x average busy power) among "
                 "placements predicted to meet the TTFT and TPOT SLOs; the fastest when none does."),
    filters=("fits-memory", "model-tier", "same-model"),
    scorers=(("predicted-energy", 1.0),),
    picker="argmax",
)
