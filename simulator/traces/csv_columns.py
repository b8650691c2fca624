"""Column-wise parsing of CSV blocks straight from their bytes.

Week-long production traces hold tens of millions of rows; a Python string
per field costs ~1 us a row before any parsing. These functions find every
field's byte offsets with a few numpy scans and turn whole columns into
numbers with index arithmetic, so a block costs a few dozen numpy calls
whatever its length. Each returns None when it cannot vouch for every row
(quotes, blank lines, signs, spaces, more digits than a count may have,
exponents): the caller then reads the block row by row, the path that
defines what is valid and names the bad field.
"""
from __future__ import annotations

import numpy as np

# A count has at most 8 digits (rows.MAX_TOKENS is 10,000,000).
_COUNT_DIGITS = 8
# Decimal seconds with at most this many digits convert exactly: the digits
# form an integer below 2**53 and m / 10**k is then correctly rounded, i.e.
# equal to float(text).
_DECIMAL_DIGITS = 15


class Block:
    """A block's bytes as uint8 (`a`) and as an overlapping uint64 view.

    `words[i + 8]` holds bytes i..i+7: one gather fetches 8 bytes of a field,
    where a uint8 gather would need 8 indices. 8 zero bytes pad each end so
    windows that start before the first byte or run past the last stay inside.
    """

    def __init__(self, data: bytes) -> None:
        padded = bytes(8) + data + bytes(40)
        self.a = np.frombuffer(padded, dtype=np.uint8)[8:8 + len(data)]
        self.words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))

    def fields(self, fs: np.ndarray, width: int) -> np.ndarray:
        """(rows, width) uint8: `width` bytes from each offset in fs."""
        k = -(-width // 8)
        cells = self.words[(fs + 8)[:, None] + 8 * np.arange(k)]
        return cells.astype("<u8", copy=False).view(np.uint8)[:, :width]


def field_bounds(a: np.ndarray, ncols: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(starts, ends), each (rows, ncols): byte offsets of every field.

    None unless every line has exactly ncols comma-separated fields and no
    line is blank. Quotes must have been ruled out by the caller.
    """
    ends = np.flatnonzero(a == 10)
    if len(ends) == 0 or ends[-1] != len(a) - 1:
        ends = np.append(ends, len(a))
    n = len(ends)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    if (ends == starts).any():
        return None
    commas = np.flatnonzero(a == 44)
    if len(commas) != n * (ncols - 1):
        return None
    # The k-th line end must have exactly (k + 1) * (ncols - 1) commas before it.
    if not (np.searchsorted(commas, ends) == np.arange(1, n + 1) * (ncols - 1)).all():
        return None
    per_row = commas.reshape(n, ncols - 1)
    fs = np.empty((n, ncols), dtype=np.int64)
    fe = np.empty((n, ncols), dtype=np.int64)
    fs[:, 0] = starts
    fs[:, 1:] = per_row + 1
    fe[:, :-1] = per_row
    fe[:, -1] = ends
    return fs, fe


def _right_aligned(a: np.ndarray, fs: np.ndarray, fe: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, width) bytes of each field, right-aligned, and which cells hold a byte of the field."""
    cols = np.arange(width)
    idx = fe[:, None] - width + cols
    present = idx >= fs[:, None]
    return a[np.maximum(idx, 0)], present


_ZEROS = np.uint64(0x3030303030303030)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)


def count_column(block: Block, fs: np.ndarray, fe: np.ndarray) -> np.ndarray | None:
    """Plain unsigned decimal integers of 1 to 8 digits, as int64.

    SWAR: the 8 bytes ending at each field's end are one uint64; bytes left
    of the field become '0', a nibble test checks all 8 are digits, and three
    multiply-shift steps fold them into the number (uint64 arithmetic wraps,
    as the method needs).
    """
    w = fe - fs
    if len(w) == 0 or w.min() < 1 or w.max() > _COUNT_DIGITS:
        return None
    v = block.words[fe].astype(np.uint64)
    # Little-endian: the field's bytes are the high 8*w bits of the word.
    keep = ~np.uint64(0) << (np.uint64(8) * (np.uint64(8) - w.astype(np.uint64)))
    v = (v & keep) | (_ZEROS & ~keep)
    digits = ((v & _HIGH_NIBBLES) | (((v + np.uint64(0x0606060606060606)) & _HIGH_NIBBLES) >> np.uint64(4)))
    if not (digits == np.uint64(0x3333333333333333)).all():
        return None
    v = v - _ZEROS
    v = (v * np.uint64(10) + (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v * np.uint64(10000) + (v >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
    return v.astype(np.int64)


def decimal_column(block: Block, fs: np.ndarray, fe: np.ndarray) -> np.ndarray | None:
    """Decimals `digits[.digits]` with at most 15 digits, as float64 equal to float(text)."""
    a = block.a
    w = fe - fs
    if len(w) == 0 or w.min() < 1 or w.max() > _DECIMAL_DIGITS + 1:
        return None
    width = int(w.max())
    cells, present = _right_aligned(a, fs, fe, width)
    dot = (cells == 46) & present
    dots = dot.sum(axis=1)
    if dots.max() > 1:
        return None
    d = cells - np.uint8(48)
    digit = (d <= 9) & present
    if not (digit | dot | ~present).all():
        return None
    # Each row needs a digit before its dot, and one after it.
    first_digit = np.argmax(present, axis=1)
    dot_at = np.where(dots == 1, np.argmax(dot, axis=1), width)
    if not ((dot_at > first_digit) & (dot_at < width - 1) | (dots == 0)).all():
        return None
    if (digit.sum(axis=1) > _DECIMAL_DIGITS).any():
        return None
    # Drop the dot by weighting each digit with its rank among the digits to its right.
    ranks = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - 1
    mantissa = (np.where(digit, d, 0).astype(np.int64) * (10 ** np.where(digit, ranks, 0))).sum(axis=1)
    decimals = np.where(dots == 1, width - 1 - dot_at, 0)
    return mantissa.astype(np.float64) / 10.0 ** decimals


def fixed_width(block: Block, fs: np.ndarray, fe: np.ndarray) -> np.ndarray | None:
    """The fields as a (rows, width) uint8 matrix when all have one width."""
    w = fe - fs
    if len(w) == 0 or w.min() != w.max():
        return None
    return block.fields(fs, int(w[0]))
