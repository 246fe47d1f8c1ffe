"""interval: DecodeInterval()/DecodeISO8601Interval()/EncodeInterval() of PostgreSQL 15.

Canonical = send format: int64 microseconds, int32 days, int32 months.
All four IntervalStyles are printed; input follows IntervalStyle only for
the SQL-standard sign rule, as PostgreSQL does.
"""

from __future__ import annotations

import math
import struct

from pgcloak.crypto.codecs.base import (
    CodecError,
    SessionFormat,
    c_div,
    c_mod,
    check_length,
    reject_nul,
)
from pgcloak.crypto.codecs.datetimes import datetime_parse_error
from pgcloak.crypto.codecs.dtparse import (
    AGO,
    BAD_FORMAT,
    DTK_ALL_SECS_M,
    DTK_CENTURY,
    DTK_DATE,
    DTK_DAY,
    DTK_DECADE,
    DTK_HOUR,
    DTK_MICROSEC,
    DTK_MILLENNIUM,
    DTK_MILLISEC,
    DTK_MINUTE,
    DTK_MONTH,
    DTK_NUMBER,
    DTK_QUARTER,
    DTK_SECOND,
    DTK_SPECIAL,
    DTK_STRING,
    DTK_TIME,
    DTK_TIME_M,
    DTK_TZ,
    DTK_TZ_HOUR,
    DTK_TZ_MINUTE,
    DTK_WEEK,
    DTK_YEAR,
    FIELD_OVERFLOW,
    IGNORE_DTF,
    INTERVAL_OVERFLOW,
    UNITS,
    DtError,
    M,
    _fraction,
    _strtol,
    decode_time,
    lookup,
    parse_datetime,
)
from pgcloak.crypto.codecs.floats import _strtod
from pgcloak.crypto.codecs.interval_out import encode_interval

_INTERVAL = struct.Struct(">qii")
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
USECS_PER_SEC = 1_000_000
USECS_PER_MINUTE = 60_000_000
USECS_PER_HOUR = 3_600_000_000
USECS_PER_DAY = 86_400_000_000

# INTERVAL_MASK bits and typmod layout
R_MONTH, R_YEAR, R_DAY, R_HOUR, R_MINUTE, R_SECOND = (
    1 << 1,
    1 << 2,
    1 << 3,
    1 << 10,
    1 << 11,
    1 << 12,
)
FULL_RANGE = 0x7FFF
FULL_PRECISION = 0xFFFF

DELTATKTBL: dict[str, tuple[int, int]] = {
    "@": (IGNORE_DTF, 0), "ago": (AGO, 0), "c": (UNITS, DTK_CENTURY),
    "cent": (UNITS, DTK_CENTURY), "centuries": (UNITS, DTK_CENTURY),
    "century": (UNITS, DTK_CENTURY), "d": (UNITS, DTK_DAY), "day": (UNITS, DTK_DAY),
    "days": (UNITS, DTK_DAY), "dec": (UNITS, DTK_DECADE), "decade": (UNITS, DTK_DECADE),
    "decades": (UNITS, DTK_DECADE), "decs": (UNITS, DTK_DECADE), "h": (UNITS, DTK_HOUR),
    "hour": (UNITS, DTK_HOUR), "hours": (UNITS, DTK_HOUR), "hr": (UNITS, DTK_HOUR),
    "hrs": (UNITS, DTK_HOUR), "m": (UNITS, DTK_MINUTE), "microsecon": (UNITS, DTK_MICROSEC),
    "mil": (UNITS, DTK_MILLENNIUM), "millennia": (UNITS, DTK_MILLENNIUM),
    "millennium": (UNITS, DTK_MILLENNIUM), "millisecon": (UNITS, DTK_MILLISEC),
    "mils": (UNITS, DTK_MILLENNIUM), "min": (UNITS, DTK_MINUTE), "mins": (UNITS, DTK_MINUTE),
    "minute": (UNITS, DTK_MINUTE), "minutes": (UNITS, DTK_MINUTE), "mon": (UNITS, DTK_MONTH),
    "mons": (UNITS, DTK_MONTH), "month": (UNITS, DTK_MONTH), "months": (UNITS, DTK_MONTH),
    "ms": (UNITS, DTK_MILLISEC), "msec": (UNITS, DTK_MILLISEC),
    "millisecond": (UNITS, DTK_MILLISEC), "mseconds": (UNITS, DTK_MILLISEC),
    "msecs": (UNITS, DTK_MILLISEC), "qtr": (UNITS, DTK_QUARTER), "quarter": (UNITS, DTK_QUARTER),
    "s": (UNITS, DTK_SECOND), "sec": (UNITS, DTK_SECOND), "second": (UNITS, DTK_SECOND),
    "seconds": (UNITS, DTK_SECOND), "secs": (UNITS, DTK_SECOND), "timezone": (UNITS, DTK_TZ),
    "timezone_h": (UNITS, DTK_TZ_HOUR), "timezone_m": (UNITS, DTK_TZ_MINUTE),
    "us": (UNITS, DTK_MICROSEC), "usec": (UNITS, DTK_MICROSEC),
    "microsecond": (UNITS, DTK_MICROSEC), "useconds": (UNITS, DTK_MICROSEC),
    "usecs": (UNITS, DTK_MICROSEC), "w": (UNITS, DTK_WEEK), "week": (UNITS, DTK_WEEK),
    "weeks": (UNITS, DTK_WEEK), "y": (UNITS, DTK_YEAR), "year": (UNITS, DTK_YEAR),
    "years": (UNITS, DTK_YEAR), "yr": (UNITS, DTK_YEAR), "yrs": (UNITS, DTK_YEAR),
}  # fmt: skip
# "millisecond"/"microsecond" are longer than TOKMAXLEN in PostgreSQL's table;
# lookup() truncates keys, so store them truncated as well.
DELTATKTBL = {k[:10]: v for k, v in DELTATKTBL.items()}


class _Itm:
    """struct pg_itm_in: microseconds, days, months, years with C overflow rules."""

    __slots__ = ("mday", "mon", "usec", "year")

    def __init__(self) -> None:
        self.usec = 0
        self.mday = 0
        self.mon = 0
        self.year = 0

    def mul_add(self, val: int, scale: int) -> None:
        """int64_multiply_add(): val * scale into the microseconds, overflow-checked."""
        product = val * scale
        if not I64_MIN <= product <= I64_MAX:
            raise DtError(FIELD_OVERFLOW)
        self.add_usec(product)

    def add_usec(self, value: int) -> None:
        self.usec += value
        if not I64_MIN <= self.usec <= I64_MAX:
            raise DtError(FIELD_OVERFLOW)

    def add_fract_usec(self, frac: float, scale: int) -> None:
        """AdjustFractMicroseconds(): double arithmetic, round half away from zero."""
        if frac == 0:
            return
        frac *= scale
        usec = int(frac)
        frac -= usec
        if frac > 0.5:
            usec += 1
        elif frac < -0.5:
            usec -= 1
        self.add_usec(usec)

    def add_days(self, val: int, scale: int) -> None:
        if not I32_MIN <= val <= I32_MAX or not I32_MIN <= val * scale <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)
        self.mday += val * scale
        if not I32_MIN <= self.mday <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)

    def add_fract_days(self, frac: float, scale: int) -> None:
        if frac == 0:
            return
        frac *= scale
        extra = int(frac)
        self.mday += extra
        if not I32_MIN <= self.mday <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)
        self.add_fract_usec(frac - extra, USECS_PER_DAY)

    def add_months(self, val: int) -> None:
        if not I32_MIN <= val <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)
        self.mon += val
        if not I32_MIN <= self.mon <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)

    def add_years(self, val: int, scale: int) -> None:
        if not I32_MIN <= val <= I32_MAX or not I32_MIN <= val * scale <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)
        self.year += val * scale
        if not I32_MIN <= self.year <= I32_MAX:
            raise DtError(FIELD_OVERFLOW)

    def add_fract_years(self, frac: float, scale: int) -> None:
        extra = int(_rint(frac * scale * 12))
        self.add_months(extra)


def _rint(x: float) -> float:
    return float(round(x))


def _time_usec(s: str, range_mask: int) -> int:
    hour, mn, sec, fsec = decode_time(s, range_mask)
    total = fsec + hour * USECS_PER_HOUR + mn * USECS_PER_MINUTE + sec * USECS_PER_SEC
    if not I64_MIN <= total <= I64_MAX:
        raise DtError(FIELD_OVERFLOW)
    return total


def _default_unit(range_mask: int) -> int:
    """What a bare number means, from the typmod's field range."""
    if range_mask == R_YEAR:
        return DTK_YEAR
    if range_mask in (R_MONTH, R_YEAR | R_MONTH):
        return DTK_MONTH
    if range_mask == R_DAY:
        return DTK_DAY
    if range_mask in (R_HOUR, R_DAY | R_HOUR):
        return DTK_HOUR
    if range_mask in (R_MINUTE, R_HOUR | R_MINUTE, R_DAY | R_HOUR | R_MINUTE):
        return DTK_MINUTE
    return DTK_SECOND


def decode_interval(fields: list[str], ftypes: list[int], range_mask: int, sql_std: bool) -> _Itm:
    """DecodeInterval(): fields are read right to left so units precede their values."""
    itm = _Itm()
    nf = len(fields)
    force_negative = False
    if sql_std and nf > 0 and fields[0][:1] == "-":
        force_negative = all(f[:1] not in "+-" for f in fields[1:])
    is_before = False
    fmask = 0
    unit = IGNORE_DTF
    for i in range(nf - 1, -1, -1):
        f, ftype = fields[i], ftypes[i]
        tmask = 0
        if ftype == DTK_TIME:
            itm.usec = _time_usec(f, range_mask)
            tmask = DTK_TIME_M
            if force_negative and itm.usec > 0:
                itm.usec = -itm.usec
            unit = DTK_DAY
        elif ftype == DTK_TZ and ":" in f[1:] and _signed_time(f, range_mask, itm):
            tmask = DTK_TIME_M
            if f[0] == "-":
                itm.usec = -itm.usec
            if force_negative and itm.usec > 0:
                itm.usec = -itm.usec
            unit = DTK_DAY
        elif ftype in (DTK_TZ, DTK_DATE, DTK_NUMBER):
            if unit == IGNORE_DTF:
                unit = _default_unit(range_mask)
            val, cp, overflow = _strtol(f, 0, 64)
            if overflow:
                raise DtError(FIELD_OVERFLOW)
            rest = f[cp:]
            if rest[:1] == "-":
                val2, cp2, overflow = _strtol(rest, 1)
                if overflow or val2 < 0 or val2 >= 12:
                    raise DtError(FIELD_OVERFLOW)
                if cp2 != len(rest):
                    raise DtError(BAD_FORMAT)
                unit = DTK_MONTH
                if f[0] == "-":
                    val2 = -val2
                val = val * 12 + val2
                if not I64_MIN <= val <= I64_MAX:
                    raise DtError(FIELD_OVERFLOW)
                fval = 0.0
            elif rest[:1] == ".":
                fval = _fraction(rest)
                if f[0] == "-":
                    fval = -fval
            elif not rest:
                fval = 0.0
            else:
                raise DtError(BAD_FORMAT)
            if force_negative:
                val = -val if val > 0 else val
                fval = -fval if fval > 0 else fval
            tmask, unit = _apply_unit(itm, unit, val, fval)
        elif ftype in (DTK_STRING, DTK_SPECIAL):
            tok = lookup(DELTATKTBL, f)
            if tok is not None and tok[0] == IGNORE_DTF:
                continue
            if tok is None or tok[0] not in (UNITS, AGO):
                raise DtError(BAD_FORMAT)
            if tok[0] == AGO:
                is_before = True
            unit = tok[1]
        else:
            raise DtError(BAD_FORMAT)
        if tmask & fmask:
            raise DtError(BAD_FORMAT)
        fmask |= tmask
    if fmask == 0:
        raise DtError(BAD_FORMAT)
    if is_before:
        for value in (itm.mday, itm.mon, itm.year):
            if value == I32_MIN:
                raise DtError(FIELD_OVERFLOW)
        if itm.usec == I64_MIN:
            raise DtError(FIELD_OVERFLOW)
        itm.usec, itm.mday, itm.mon, itm.year = -itm.usec, -itm.mday, -itm.mon, -itm.year
    return itm


def _signed_time(f: str, range_mask: int, itm: _Itm) -> bool:
    try:
        itm.usec = _time_usec(f[1:], range_mask)
    except DtError:
        return False
    return True


def _apply_unit(itm: _Itm, unit: int, val: int, fval: float) -> tuple[int, int]:
    """The per-unit branch of DecodeInterval(): (tmask, unit for the next field)."""
    if unit == DTK_MICROSEC:
        itm.add_usec(val)
        itm.add_fract_usec(fval, 1)
        return M(14), unit
    if unit == DTK_MILLISEC:
        itm.mul_add(val, 1000)
        itm.add_fract_usec(fval, 1000)
        return M(13), unit
    if unit == DTK_SECOND:
        itm.mul_add(val, USECS_PER_SEC)
        itm.add_fract_usec(fval, USECS_PER_SEC)
        return (M(12) if fval == 0 else DTK_ALL_SECS_M), unit
    if unit == DTK_MINUTE:
        itm.mul_add(val, USECS_PER_MINUTE)
        itm.add_fract_usec(fval, USECS_PER_MINUTE)
        return M(11), unit
    if unit == DTK_HOUR:
        itm.mul_add(val, USECS_PER_HOUR)
        itm.add_fract_usec(fval, USECS_PER_HOUR)
        return M(10), DTK_DAY
    if unit == DTK_DAY:
        itm.add_days(val, 1)
        itm.add_fract_usec(fval, USECS_PER_DAY)
        return M(3), unit
    if unit == DTK_WEEK:
        itm.add_days(val, 7)
        itm.add_fract_days(fval, 7)
        return M(24), unit
    if unit == DTK_MONTH:
        itm.add_months(val)
        itm.add_fract_days(fval, 30)
        return M(1), unit
    if unit == DTK_YEAR:
        itm.add_years(val, 1)
        itm.add_fract_years(fval, 1)
        return M(2), unit
    if unit == DTK_DECADE:
        itm.add_years(val, 10)
        itm.add_fract_years(fval, 10)
        return M(25), unit
    if unit == DTK_CENTURY:
        itm.add_years(val, 100)
        itm.add_fract_years(fval, 100)
        return M(26), unit
    if unit == DTK_MILLENNIUM:
        itm.add_years(val, 1000)
        itm.add_fract_years(fval, 1000)
        return M(27), unit
    raise DtError(BAD_FORMAT)


def _iso_number(s: str, pos: int) -> tuple[int, float, int]:
    """ParseISO8601Number(): strtod(), integral part truncated toward zero."""
    if pos >= len(s) or not (s[pos].isdigit() or s[pos] in "-."):
        raise DtError(BAD_FORMAT)
    parsed = _strtod(s[pos:])
    if parsed is None or parsed.erange:
        raise DtError(BAD_FORMAT)
    val = parsed.value
    if math.isnan(val) or val < -1.0e15 or val > 1.0e15:
        raise DtError(FIELD_OVERFLOW)
    ipart = math.floor(val) if val >= 0 else -math.floor(-val)
    return ipart, val - ipart, pos + parsed.end


def _int_width(s: str, pos: int) -> int:
    if pos < len(s) and s[pos] == "-":
        pos += 1
    width = 0
    while pos + width < len(s) and s[pos + width] in "0123456789":
        width += 1
    return width


def decode_iso8601(s: str) -> _Itm:
    """DecodeISO8601Interval(): P[nY][nM][nW][nD][T[nH][nM][nS]] and the alternative form."""
    itm = _Itm()
    if len(s) < 2 or s[0] != "P":
        raise DtError(BAD_FORMAT)
    pos, n = 1, len(s)
    datepart, havefield = True, False
    while pos < n:
        if s[pos] == "T":
            datepart, havefield = False, False
            pos += 1
            continue
        start = pos
        val, fval, pos = _iso_number(s, pos)
        unit = s[pos] if pos < n else ""
        pos += 1
        if datepart:
            if unit == "Y":
                itm.add_years(val, 1)
                itm.add_fract_years(fval, 1)
            elif unit == "M":
                itm.add_months(val)
                itm.add_fract_days(fval, 30)
            elif unit == "W":
                itm.add_days(val, 7)
                itm.add_fract_days(fval, 7)
            elif unit == "D":
                itm.add_days(val, 1)
                itm.add_fract_usec(fval, USECS_PER_DAY)
            elif unit in ("T", "", "-"):
                if unit != "-" and _int_width(s, start) == 8 and not havefield:
                    itm.add_years(c_div(val, 10000), 1)
                    itm.add_months(c_mod(c_div(val, 100), 100))
                    itm.add_days(c_mod(val, 100), 1)
                    itm.add_fract_usec(fval, USECS_PER_DAY)
                    if unit == "":
                        return itm
                    datepart, havefield = False, False
                    continue
                if havefield:
                    raise DtError(BAD_FORMAT)
                itm.add_years(val, 1)
                itm.add_fract_years(fval, 1)
                if unit == "":
                    return itm
                if unit == "T":
                    datepart, havefield = False, False
                    continue
                val, fval, pos = _iso_number(s, pos)
                itm.add_months(val)
                itm.add_fract_days(fval, 30)
                if pos >= n:
                    return itm
                if s[pos] == "T":
                    datepart, havefield = False, False
                    pos += 1
                    continue
                if s[pos] != "-":
                    raise DtError(BAD_FORMAT)
                val, fval, pos = _iso_number(s, pos + 1)
                itm.add_days(val, 1)
                itm.add_fract_usec(fval, USECS_PER_DAY)
                if pos >= n:
                    return itm
                if s[pos] == "T":
                    datepart, havefield = False, False
                    pos += 1
                    continue
                raise DtError(BAD_FORMAT)
            else:
                raise DtError(BAD_FORMAT)
        elif unit in ("H", "M", "S"):
            scale = {"H": USECS_PER_HOUR, "M": USECS_PER_MINUTE, "S": USECS_PER_SEC}[unit]
            itm.mul_add(val, scale)
            itm.add_fract_usec(fval, scale)
        elif unit in ("", ":"):
            if unit == "" and _int_width(s, start) == 6 and not havefield:
                itm.mul_add(c_div(val, 10000), USECS_PER_HOUR)
                itm.mul_add(c_mod(c_div(val, 100), 100), USECS_PER_MINUTE)
                itm.mul_add(c_mod(val, 100), USECS_PER_SEC)
                itm.add_fract_usec(fval, 1)
                return itm
            if havefield:
                raise DtError(BAD_FORMAT)
            itm.mul_add(val, USECS_PER_HOUR)
            itm.add_fract_usec(fval, USECS_PER_HOUR)
            if unit == "":
                return itm
            val, fval, pos = _iso_number(s, pos)
            itm.mul_add(val, USECS_PER_MINUTE)
            itm.add_fract_usec(fval, USECS_PER_MINUTE)
            if pos >= n:
                return itm
            if s[pos] != ":":
                raise DtError(BAD_FORMAT)
            val, fval, pos = _iso_number(s, pos + 1)
            itm.mul_add(val, USECS_PER_SEC)
            itm.add_fract_usec(fval, USECS_PER_SEC)
            if pos >= n:
                return itm
            raise DtError(BAD_FORMAT)
        else:
            raise DtError(BAD_FORMAT)
        havefield = True
    return itm


def _wrap64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def adjust_for_typmod(time: int, day: int, month: int, typmod: int) -> tuple[int, int, int]:
    """AdjustIntervalForTypmod(): zero fields right of the range, round seconds."""
    if typmod < 0:
        return time, day, month
    rng = (typmod >> 16) & 0x7FFF
    precision = typmod & 0xFFFF
    if rng == R_YEAR:
        month, day, time = c_div(month, 12) * 12, 0, 0
    elif rng in (R_MONTH, R_YEAR | R_MONTH):
        day, time = 0, 0
    elif rng == R_DAY:
        time = 0
    elif rng in (R_HOUR, R_DAY | R_HOUR):
        time = c_div(time, USECS_PER_HOUR) * USECS_PER_HOUR
    elif rng in (R_MINUTE, R_DAY | R_HOUR | R_MINUTE, R_HOUR | R_MINUTE):
        time = c_div(time, USECS_PER_MINUTE) * USECS_PER_MINUTE
    if precision != FULL_PRECISION:
        if not 0 <= precision <= 6:
            raise CodecError("22023", f"interval({precision}) precision must be between 0 and 6")
        scale = 10 ** (6 - precision)
        half = scale // 2 if precision < 6 else 0
        # PostgreSQL 15 lets the int64 addition wrap around.
        if time >= 0:
            time = c_div(_wrap64(time + half), scale) * scale
        else:
            time = -(c_div(_wrap64(-time + half), scale) * scale)
        time = _wrap64(time)
    return time, day, month


class IntervalCodec:
    oid = 1186
    name = "interval"
    array_oid = 1187

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        range_mask = (typmod >> 16) & 0x7FFF if typmod >= 0 else FULL_RANGE
        sql_std = fmt.intervalstyle == "sql_standard"
        try:
            try:
                fields, ftypes = parse_datetime(text, 256)
                itm = decode_interval(fields, ftypes, range_mask, sql_std)
            except DtError as err:
                if err.code != BAD_FORMAT:
                    raise
                itm = decode_iso8601(text)
        except DtError as err:
            if err.code == FIELD_OVERFLOW:
                err = DtError(INTERVAL_OVERFLOW)
            raise datetime_parse_error(err, text, "interval") from None
        months = itm.year * 12 + itm.mon
        if not I32_MIN <= months <= I32_MAX:
            raise CodecError("22008", "interval out of range")
        time, day, month = adjust_for_typmod(itm.usec, itm.mday, months, typmod)
        return _INTERVAL.pack(time, day, month)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        check_length(data, 16)
        time, day, month = _INTERVAL.unpack(data)
        return _INTERVAL.pack(*adjust_for_typmod(time, day, month, typmod))

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        time, day, month = _INTERVAL.unpack(canonical)
        return encode_interval(time, day, month, fmt.intervalstyle)

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


INTERVAL = IntervalCodec()
