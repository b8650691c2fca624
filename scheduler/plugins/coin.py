"""The seeded per-request coin that router and verifier plugins flip."""
from __future__ import annotations

_M64 = (1 << 64) - 1


def unit_hash(key: int, salt: int) -> float:
    """A uniform number in [0, 1) fixed by (key, salt): splitmix64 of the pair.

    Router misjudgements and verifier misses must be seeded and replayable, but
    a draw from the policy's RNG costs about 3 us here and would make one
    request's outcome depend on how many draws came before it. A hash of the
    request id and a seed costs about 0.5 us and depends on nothing else.
    """
    z = (key * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return (z >> 11) * (1.0 / 9007199254740992.0)
