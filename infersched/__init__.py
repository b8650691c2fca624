"""infersched's top layer, above workers, scheduler and simulator.

- `infersched.cli`: the `infersched` command line, one module per command group.
- `infersched.client`: clients of a running `infersched serve` (trace replay, stats).
- `infersched.v1`: the gRPC contract's Python modules, generated from proto/ by
  `python -m scripts.gen_proto` (never edited by hand).
"""
