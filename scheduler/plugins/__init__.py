"""One-method plugins at fixed extension points (filter, score, pick).

Every plugin receives the request, the snapshot, the stage being placed, the
candidate instance ids still in play, the current time and, for the decode
stage, the instance chosen for prefill. Filters return a boolean mask over the
candidates, scorers an array in [0, 1] (higher is better), pickers one id.
Plugins hold no per-request state: the same inputs give the same output.
"""
