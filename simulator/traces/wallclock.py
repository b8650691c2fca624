"""Wall-clock timestamps (the Azure traces' `TIMESTAMP`) as integer ns since 1970 UTC.

`parse_iso_ns` parses one stamp and defines what is valid; `iso_matrix`
parses the bytes of a block of stamps that share one layout column-wise with
numpy (the date looked up once per distinct day) and returns None when it
cannot vouch for every row, so the row-by-row path names the bad one.
"""
from __future__ import annotations

import datetime as _dt
import functools

import numpy as np

from simulator.traces.rows import RowError, shown

NS_PER_S = 1_000_000_000
_NS_PER_DAY = 86_400 * NS_PER_S
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
# Years a stamp may name: int64 ns since 1970 reach 2262; no trace predates 1970.
MIN_YEAR, MAX_YEAR = 1970, 2261


@functools.lru_cache(maxsize=4096)
def _day_ns(year: int, month: int, day: int) -> int:
    return (_dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY


_ISO_FORM = "YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]"


def parse_iso_ns(text: str) -> int:
    """Wall-clock text to integer ns since 1970 UTC (no zone = UTC).

    Integer ns keep the 100 ns ticks of the 2023 trace exact; a float of
    seconds since 1970 would round them to about 240 ns.
    """
    s = text.strip()
    if len(s) < 19 or s[4] != "-" or s[7] != "-" or s[10] not in " T" or s[13] != ":" or s[16] != ":":
        raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {shown(text)}")
    digits = s[0:4] + s[5:7] + s[8:10] + s[11:13] + s[14:16] + s[17:19]
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {shown(text)}")
    year, month, day = int(s[0:4]), int(s[5:7]), int(s[8:10])
    hour, minute, second = int(s[11:13]), int(s[14:16]), int(s[17:19])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time of day out of range: {shown(text)}")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"year out of range [{MIN_YEAR}, {MAX_YEAR}]: {shown(text)}")
    try:
        day_ns = _day_ns(year, month, day)
    except ValueError:
        raise ValueError(f"no such date: {shown(text)}") from None
    rest = s[19:]
    zone = ""
    if rest.endswith("Z"):
        rest, zone = rest[:-1], "Z"
    elif len(rest) >= 6 and rest[-6] in "+-":
        rest, zone = rest[:-6], rest[-6:]
    frac_ns = 0
    if rest:
        frac = rest[1:]
        if rest[0] != "." or not (frac.isascii() and frac.isdigit()) or len(frac) > 9:
            raise ValueError(f"not a timestamp of the form {_ISO_FORM}: {shown(text)}")
        frac_ns = int(frac) * 10 ** (9 - len(frac))
    offset_ns = 0
    if zone and zone != "Z":
        hh, mm = zone[1:3], zone[4:6]
        if zone[3] != ":" or not (hh + mm).isascii() or not (hh + mm).isdigit() or int(hh) > 23 or int(mm) > 59:
            raise ValueError(f"bad UTC offset {shown(zone)} (want +HH:MM): {shown(text)}")
        offset_ns = (int(hh) * 60 + int(mm)) * 60 * NS_PER_S * (1 if zone[0] == "+" else -1)
    return day_ns + ((hour * 60 + minute) * 60 + second) * NS_PER_S + frac_ns - offset_ns


def show_ns(ns: int) -> str:
    return str(np.datetime64(ns, "ns")).replace("T", " ")


def iso_time_field(text: str, field: str) -> int:
    try:
        return parse_iso_ns(text)
    except ValueError as e:
        raise RowError(field, str(e)) from None


def iso_matrix(a: np.ndarray) -> np.ndarray | None:
    """Vectorised `parse_iso_ns` for stamps that share one layout, as bytes: one row each, one width.

    None when it cannot vouch for every row, so the row-by-row path names the bad one.
    """
    width = a.shape[1]
    if width < 19:
        return None
    template = a[0].tobytes()
    digit_pos = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
    pos = 19
    n_frac = 0
    if pos < width and template[pos:pos + 1] == b".":
        pos += 1
        while pos < width and 48 <= template[pos] <= 57:
            pos += 1
            n_frac += 1
        if not 1 <= n_frac <= 9:
            return None
        digit_pos += list(range(20, 20 + n_frac))
    tz = None
    if width - pos == 1 and template[pos:] == b"Z":
        pass
    elif width - pos == 6 and template[pos:pos + 1] in (b"+", b"-") and template[pos + 3:pos + 4] == b":":
        tz = pos
        digit_pos += [pos + 1, pos + 2, pos + 4, pos + 5]
    elif width != pos:
        return None
    if template[4:5] + template[7:8] + template[13:14] + template[16:17] != b"--::" or template[10:11] not in b" T":
        return None
    # Every byte of every stamp in one pass: the template's own byte where it
    # is a literal, '0'..'9' where a digit goes, '+'..'-' at the zone sign.
    lo = np.frombuffer(template, dtype=np.uint8).copy()
    hi = lo.copy()
    lo[digit_pos], hi[digit_pos] = 48, 57
    if tz is not None:
        lo[tz], hi[tz] = 43, 45
    if not ((a >= lo) & (a <= hi)).all() or (tz is not None and (a[:, tz] == 44).any()):
        return None
    # One contiguous vector per character position (rows of the transpose):
    # the arithmetic below then runs on whole columns at memory speed.
    d = np.ascontiguousarray(a.T) - np.uint8(48)

    def num(start: int, count: int) -> np.ndarray:
        out = d[start].astype(np.int64)
        for k in range(1, count):
            out = out * 10 + d[start + k]
        return out

    ymd = num(0, 4) * 10_000 + num(5, 2) * 100 + num(8, 2)
    hour, minute, second = num(11, 2), num(14, 2), num(17, 2)
    frac_ns = num(20, n_frac) * 10 ** (9 - n_frac) if n_frac else 0
    if (hour > 23).any() or (minute > 59).any() or (second > 59).any():
        return None
    year = ymd // 10000
    if (year < MIN_YEAR).any() or (year > MAX_YEAR).any():
        return None
    try:
        if (ymd == ymd[0]).all():  # a block of a sorted trace mostly lies within one day
            day_ns = _day_ns(int(ymd[0]) // 10000, int(ymd[0]) // 100 % 100, int(ymd[0]) % 100)
        else:
            unique, inverse = np.unique(ymd, return_inverse=True)
            days = [_day_ns(int(v) // 10000, int(v) // 100 % 100, int(v) % 100) for v in unique]
            day_ns = np.array(days, dtype=np.int64)[inverse.reshape(-1)]
    except ValueError:
        return None
    ns = day_ns + ((hour * 60 + minute) * 60 + second) * NS_PER_S + frac_ns
    if tz is not None:
        hh, mm = num(tz + 1, 2), num(tz + 4, 2)
        if (hh > 23).any() or (mm > 59).any():
            return None
        ns -= np.where(a[:, tz] == 43, 1, -1) * (hh * 60 + mm) * 60 * NS_PER_S
    return ns
