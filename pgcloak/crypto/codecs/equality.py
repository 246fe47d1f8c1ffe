"""Which stored column value does `col = value` select, as PostgreSQL resolves the `=`?

PostgreSQL compares without the column's typmod, and across types with the
operator its resolution picks (cross-type integer and datetime operators
compare exactly; int8/numeric columns against floats compare as float8;
varchar compares as text; char(n) against text ignores the column's padding).
For deterministic encryption the proxy needs the one canonical value of the
column that compares equal: `equal_in_column()` returns it, None when no value
of the column can compare equal, and refuses (0A000) when several stored forms
would (e.g. a numeric column against a double precision value).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from pgcloak.crypto.codecs import numeric as num
from pgcloak.crypto.codecs.arrays import decode as array_decode
from pgcloak.crypto.codecs.arrays import encode as array_encode
from pgcloak.crypto.codecs.base import CodecError, SessionFormat
from pgcloak.crypto.codecs.casts import (
    BPCHAR,
    DATE,
    ELEMENT_OF,
    FLOAT4,
    FLOAT8,
    INTERVAL,
    INTS,
    JSON,
    NUMBERS,
    NUMERIC,
    STRINGS,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    USECS_PER_DAY,
    VARCHAR,
    date_to_timestamp,
    date_to_timestamptz,
    int_of,
    interval_span,
    numeric_from_int,
    numeric_integral,
    numeric_to_float,
    timestamp_to_timestamptz,
    timestamptz_to_timestamp,
    type_name,
    zone_east,
)
from pgcloak.crypto.codecs.datetimes import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN

_I32, _I64 = struct.Struct(">i"), struct.Struct(">q")
_F4, _F8 = struct.Struct(">f"), struct.Struct(">d")
_U64 = struct.Struct(">Q")
_INTERVAL = struct.Struct(">qii")
_INT_LIMITS = {21: 1 << 15, 23: 1 << 31, 20: 1 << 63}
_DATETIMES = frozenset((DATE, TIMESTAMP, TIMESTAMPTZ))
_SPANS = frozenset((TIME, INTERVAL))


def comparable(col: int, src: int) -> bool:
    """Does `col = src` resolve to an operator (with implicit casts)?"""
    if col in ELEMENT_OF or src in ELEMENT_OF:
        return col == src and ELEMENT_OF[col] != JSON
    if col == JSON:
        return False
    if col == src:
        return True
    return any(col in group and src in group for group in (NUMBERS, STRINGS, _DATETIMES, _SPANS))


def ambiguous(column: str, col: int, src: int) -> CodecError:
    return CodecError(
        "0A000",
        f'pgcloak cannot compare column "{column}" of type {type_name(col)} with a value of'
        f" type {type_name(src)}: several stored values would compare equal",
        hint=f"Send the value as {type_name(col)}.",
    )


def equal_in_column(
    canon: bytes, src: int, col: int, typmod: int, *, fmt: SessionFormat, column: str
) -> bytes | None:
    """The canonical column value (typmod applied) equal to `canon` (of type src), or None.

    `comparable(col, src)` must hold. Raises CodecError 0A000 when more than one
    stored form would compare equal, or the conversion's own PostgreSQL error.
    """
    if col in ELEMENT_OF:
        if ELEMENT_OF[col] == JSON:
            raise CodecError("42883", "could not identify an equality operator for type json")
        return _same_array(canon, col, typmod)
    if src == col:
        return same_type(canon, col, typmod)
    if col in NUMBERS:
        return _number(canon, src, col, typmod, column)
    if col in STRINGS:
        return _string(canon.decode("utf-8"), src, col, typmod, column)
    return _datetime(canon, src, col, typmod, fmt=fmt, column=column)


def same_type(canon: bytes, col: int, typmod: int) -> bytes | None:
    """`col = value` of the column's own type: the value unless the typmod would change it."""
    from pgcloak.crypto.codecs import codec_for

    if typmod < 0:
        return canon
    if col == VARCHAR:
        return None if len(canon.decode("utf-8")) > typmod - 4 else canon
    if col == BPCHAR:
        text = canon.decode("utf-8").rstrip(" ")
        n = typmod - 4
        return None if len(text) > n else text.ljust(n).encode("utf-8")
    if col == NUMERIC:
        return _numeric_typmod(canon, typmod)
    codec = codec_for(col)
    assert codec is not None
    try:
        adjusted = codec.from_binary(canon, typmod)
    except CodecError:
        return None
    if col == INTERVAL:
        return adjusted if interval_span(adjusted) == interval_span(canon) else None
    return adjusted if adjusted == canon else None


def _same_array(canon: bytes, col: int, typmod: int) -> bytes | None:
    elem = ELEMENT_OF[col]
    _, dims, lbs, items = array_decode(canon)
    out: list[bytes | None] = []
    for item in items:
        if item is None:
            out.append(None)
            continue
        got = same_type(item, elem, typmod)
        if got is None:
            return None
        out.append(got)
    return array_encode(elem, dims, lbs, out)


# -- numbers ---------------------------------------------------------------------------


def _norm(canon: bytes) -> tuple[int, str, int]:
    """A numeric's value as (sign, coefficient without trailing zeros, exponent)."""
    sign, coeff, exp10, _ = num.decode(canon)
    stripped = coeff.rstrip("0")
    return sign, stripped, exp10 + len(coeff) - len(stripped) if stripped else 0


def _numeric_typmod(canon: bytes, typmod: int) -> bytes | None:
    sign = num.decode(canon)[0]
    if sign == num.NAN:
        return canon
    try:
        adjusted = num.receive(canon, typmod)
    except CodecError:
        return None  # infinity or too many digits: never stored in this column
    return adjusted if _norm(adjusted) == _norm(canon) else None


def _float8_value(canon: bytes, src: int) -> float:
    """What `src::float8` gives (numeric goes through its text, as PostgreSQL 15 does)."""
    if src in INTS:
        return float(int_of(canon, src))
    if src == FLOAT4:
        f4: float = _F4.unpack(canon)[0]
        return f4
    if src == FLOAT8:
        f8: float = _F8.unpack(canon)[0]
        return f8
    value: float = _F8.unpack(numeric_to_float(canon, single=False))[0]
    return value


def _rounding_interval(t: float) -> tuple[Fraction, Fraction, bool]:
    """The reals that round to the double t: [lo, hi], closed iff t's mantissa is even."""
    exact = Fraction(t)
    up, down = math.nextafter(t, math.inf), math.nextafter(t, -math.inf)
    # Next to DBL_MAX the missing neighbour mirrors the other one.
    gap_up = Fraction(up) - exact if not math.isinf(up) else exact - Fraction(down)
    gap_down = exact - Fraction(down) if not math.isinf(down) else Fraction(up) - exact
    hi, lo = exact + gap_up / 2, exact - gap_down / 2
    return lo, hi, _U64.unpack(_F8.pack(t))[0] & 1 == 0


def _grid(t: float, step: Fraction, kmin: int, kmax: int) -> list[int]:
    """Integers k in [kmin, kmax] with float8(k * step) == t (at most two reported)."""
    lo, hi, closed = _rounding_interval(t)
    a, b = lo / step, hi / step
    first = math.ceil(a) if closed else math.floor(a) + 1
    last = math.floor(b) if closed else math.ceil(b) - 1
    first, last = max(first, kmin), min(last, kmax)
    if first > last:
        return []
    return [first] if first == last else [first, last]


def _number(canon: bytes, src: int, col: int, typmod: int, column: str) -> bytes | None:
    if col in INTS:
        if src in INTS:
            value: int | None = int_of(canon, src)
        elif src == NUMERIC:
            value = numeric_integral(canon, round_half_away=False)
        else:
            return _int_from_float(_float8_value(canon, src), src, col, column)
        limit = _INT_LIMITS[col]
        if value is None or not -limit <= value < limit:
            return None
        return struct.pack({21: ">h", 23: ">i", 20: ">q"}[col], value)
    if col == NUMERIC:
        if src in INTS:
            return _numeric_typmod(numeric_from_int(int_of(canon, src)), typmod)
        return _numeric_from_float(_float8_value(canon, src), src, typmod, column)
    t = _float8_value(canon, src)  # float columns compare as float8 (float48eq & co.)
    if col == FLOAT8:
        return _F8.pack(t)
    if math.isnan(t):
        return b"\x7f\xc0\x00\x00"
    try:
        packed = _F4.pack(t)
    except OverflowError:
        return None
    return packed if _F4.unpack(packed)[0] == t else None


def _int_from_float(t: float, src: int, col: int, column: str) -> bytes | None:
    if math.isnan(t) or math.isinf(t):
        return None
    limit = _INT_LIMITS[col]
    found = _grid(t, Fraction(1), -limit, limit - 1)
    if len(found) > 1:
        raise ambiguous(column, col, src)
    if not found:
        return None
    return struct.pack({21: ">h", 23: ">i", 20: ">q"}[col], found[0])


def _numeric_from_float(t: float, src: int, typmod: int, column: str) -> bytes | None:
    constrained = num.typmod_precision_scale(typmod)
    if math.isnan(t):
        return num.special(num.NAN)
    if math.isinf(t):
        return None if constrained else num.special(num.PINF if t > 0 else num.NINF)
    if constrained is None:
        raise ambiguous(column, NUMERIC, src)
    precision, scale = constrained
    kmax = 10**precision - 1
    found = _grid(t, Fraction(10) ** -scale, -kmax, kmax)
    if len(found) > 1:
        raise ambiguous(column, NUMERIC, src)
    if not found:
        return None
    return num.parse(f"{found[0]}e{-scale}", typmod)


# -- strings ---------------------------------------------------------------------------


def _string(text: str, src: int, col: int, typmod: int, column: str) -> bytes | None:
    n = typmod - 4 if typmod >= 4 else None
    if col == TEXT:  # text = text; a char(n) value loses its trailing spaces first
        return (text.rstrip(" ") if src == BPCHAR else text).encode("utf-8")
    if col == VARCHAR:
        if src != BPCHAR:  # compared as text
            return None if n is not None and len(text) > n else text.encode("utf-8")
        # varchar = bpchar compares as bpchar: trailing spaces do not count.
        trimmed = text.rstrip(" ")
        if n is not None and len(trimmed) > n:
            return None
        if n is not None and len(trimmed) == n:
            return trimmed.encode("utf-8")
        raise ambiguous(column, col, src)
    # char(n) column
    if src == TEXT:  # rtrim(col)::text = value
        if text.endswith(" ") or (n is not None and len(text) > n):
            return None
    else:  # varchar -> bpchar: padding does not count
        text = text.rstrip(" ")
        if n is not None and len(text) > n:
            return None
    return (text.ljust(n) if n is not None else text).encode("utf-8")


# -- dates and times -------------------------------------------------------------------


def _datetime(
    canon: bytes, src: int, col: int, typmod: int, *, fmt: SessionFormat, column: str
) -> bytes | None:
    if col == TIME:  # time::interval = interval
        span = interval_span(canon)
        if not 0 <= span <= USECS_PER_DAY:
            return None
        return same_type(_I64.pack(span), TIME, typmod)
    if col == INTERVAL:  # interval = time::interval
        return same_type(_INTERVAL.pack(_I64.unpack(canon)[0], 0, 0), INTERVAL, typmod)
    if col == DATE:
        return _date_equal(_I64.unpack(canon)[0], src == TIMESTAMPTZ, fmt)
    if src == DATE:
        day = _I32.unpack(canon)[0]
        value = date_to_timestamp(day) if col == TIMESTAMP else date_to_timestamptz(day, fmt)
    elif col == TIMESTAMPTZ:  # timestamptz = timestamp: the timestamp in the session zone
        value = timestamp_to_timestamptz(_I64.unpack(canon)[0], fmt)
    else:  # timestamp = timestamptz: local times whose instant is the value
        value = _local_for(_I64.unpack(canon)[0], fmt, column)
    if value is None:
        return None
    return same_type(_I64.pack(value), col, typmod)


def _date_equal(value: int, with_tz: bool, fmt: SessionFormat) -> bytes | None:
    if value == INT64_MIN:
        return _I32.pack(INT32_MIN)
    if value == INT64_MAX:
        return _I32.pack(INT32_MAX)
    local = timestamptz_to_timestamp(value, fmt) if with_tz else value
    if local is None or local % USECS_PER_DAY:
        return None
    day = local // USECS_PER_DAY
    back = date_to_timestamptz(day, fmt) if with_tz else date_to_timestamp(day)
    return _I32.pack(day) if back == value else None


def _local_for(utc: int, fmt: SessionFormat, column: str) -> int | None:
    if utc in (INT64_MIN, INT64_MAX):
        return utc
    hour = 3_600_000_000
    offsets = {zone_east(utc + k * 12 * hour, fmt) for k in range(-2, 3)}
    found = set()
    for east in offsets:
        local = utc + east * 1_000_000
        if timestamp_to_timestamptz(local, fmt) == utc:
            found.add(local)
    if len(found) > 1:
        raise ambiguous(column, TIMESTAMP, TIMESTAMPTZ)
    return found.pop() if found else None
