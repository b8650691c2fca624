"""Clients of a running `infersched serve`: the trace replay client and the stats view.

They sit on the top layer, beside the command line, because they use all
three packages: the live plane's gRPC contract, the trace readers and the
simulator's summary (so a live replay's JSON compares field by field with
`infersched simulate --json`).
"""

# A run of this many UNAVAILABLE answers in a row stops a replay (the scheduler is gone).
MAX_UNAVAILABLE = 20
