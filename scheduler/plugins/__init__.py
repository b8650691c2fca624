"""Built-in plugins at the four extension points (scheduler/framework.py).

Every plugin receives the request, the snapshot, the stage being placed, the
candidate instance ids still in play, the current time and, for the decode
stage, the instance chosen for prefill. Filters return a boolean mask over the
candidates, or None when they can tell every candidate passes (the common
case, answered with a scalar check); scorers return an array, higher is
better (the framework clamps it to [0, 1] and weights it); pickers return one
instance id. Plugins hold no per-request state: the same inputs give the
same output.
"""
