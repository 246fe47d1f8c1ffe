"""PostgreSQL 15's casts between the encryptable types, on canonical bytes.

A client value of another type than the column reaches the column through a
cast (pg_cast with castcontext 'i'mplicit or 'a'ssignment, or the automatic
I/O conversion to string types), and a comparison goes through the operator's
implicit casts. This module knows which casts exist (`pathway`), runs them on
canonical bytes (`run_cast`, typmod not applied) and names types the way
format_type_be() does for PostgreSQL's error messages.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from pgcloak.crypto.codecs import numeric as num
from pgcloak.crypto.codecs.arrays import ArrayCodec
from pgcloak.crypto.codecs.arrays import decode as array_decode
from pgcloak.crypto.codecs.arrays import encode as array_encode
from pgcloak.crypto.codecs.base import CodecError, SessionFormat, encode_utf8
from pgcloak.crypto.codecs.datetimes import (
    END_TIMESTAMP,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    MIN_TIMESTAMP,
)
from pgcloak.crypto.codecs.literals import BIT, VARBIT, bits_from_binary, bits_from_text
from pgcloak.crypto.codecs.typenames import ARRAY_OIDS
from pgcloak.crypto.codecs.tz import session_zone

BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON = 16, 17, 20, 21, 23, 25, 114
FLOAT4, FLOAT8, BPCHAR, VARCHAR = 700, 701, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1082, 1083, 1114, 1184, 1186
NUMERIC, UUID, JSONB = 1700, 2950, 3802
INTS = (INT2, INT4, INT8)
NUMBERS = (INT2, INT4, INT8, FLOAT4, FLOAT8, NUMERIC)
STRINGS = (TEXT, VARCHAR, BPCHAR)
USECS_PER_DAY = 86_400_000_000
TIMESTAMP_END_DATE = 109203528 - 2451545  # TIMESTAMP_END_JULIAN - POSTGRES_EPOCH_JDATE
UNIX_OFFSET_SECS = 946684800  # 2000-01-01 in Unix seconds

_I16, _I32, _I64 = struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_F4, _F8 = struct.Struct(">f"), struct.Struct(">d")
_INTERVAL = struct.Struct(">qii")
_INT_STRUCT = {INT2: _I16, INT4: _I32, INT8: _I64}
_INT_BITS = {INT2: 16, INT4: 32, INT8: 64}
_INT_RANGE_MSG = {INT2: "smallint", INT4: "integer", INT8: "bigint"}

TYPE_NAMES = {
    16: "boolean", 17: "bytea", 18: '"char"', 19: "name", 20: "bigint", 21: "smallint",
    23: "integer", 25: "text", 26: "oid", 114: "json", 142: "xml", 600: "point", 650: "cidr",
    700: "real", 701: "double precision", 705: "unknown", 790: "money", 829: "macaddr",
    869: "inet", 1042: "character", 1043: "character varying", 1082: "date",
    1083: "time without time zone", 1114: "timestamp without time zone",
    1184: "timestamp with time zone", 1186: "interval", 1266: "time with time zone",
    1560: "bit", 1562: "bit varying", 1700: "numeric", 2950: "uuid", 3802: "jsonb",
}  # fmt: skip
_EXTRA_ARRAYS = {18: 1002, 19: 1003, 26: 1028, 1266: 1270, 1560: 1561, 1562: 1563}
ELEMENT_OF = {arr: elem for elem, arr in (ARRAY_OIDS | _EXTRA_ARRAYS).items()}

# pg_cast rows between the supported types (castcontext 'i' or 'a'; 'e' rows are absent).
_CASTS: dict[tuple[int, int], str] = {
    (INT2, INT4): "i", (INT2, INT8): "i", (INT4, INT8): "i",
    (INT4, INT2): "a", (INT8, INT2): "a", (INT8, INT4): "a",
    (FLOAT4, FLOAT8): "i", (FLOAT8, FLOAT4): "a",
    (TEXT, BPCHAR): "i", (TEXT, VARCHAR): "i", (VARCHAR, TEXT): "i", (VARCHAR, BPCHAR): "i",
    (BPCHAR, TEXT): "i", (BPCHAR, VARCHAR): "i",
    (BOOL, TEXT): "a", (BOOL, BPCHAR): "a", (BOOL, VARCHAR): "a",
    (DATE, TIMESTAMP): "i", (DATE, TIMESTAMPTZ): "i", (TIMESTAMP, TIMESTAMPTZ): "i",
    (TIMESTAMP, DATE): "a", (TIMESTAMP, TIME): "a", (TIMESTAMPTZ, DATE): "a",
    (TIMESTAMPTZ, TIME): "a", (TIMESTAMPTZ, TIMESTAMP): "a",
    (TIME, INTERVAL): "i", (INTERVAL, TIME): "a",
    (JSON, JSONB): "a", (JSONB, JSON): "a", (BIT, VARBIT): "i", (VARBIT, BIT): "i",
    # Sources without a codec: the cast exists, pgcloak refuses it (0A000) rather than 42804.
    (1266, TIME): "a", (19, TEXT): "i", (19, BPCHAR): "a", (19, VARCHAR): "a", (18, TEXT): "i",
    (18, BPCHAR): "a", (18, VARCHAR): "a", (26, INT8): "a", (26, INT4): "a", (790, NUMERIC): "a",
}  # fmt: skip
for _i in INTS:
    for _target in (FLOAT4, FLOAT8, NUMERIC):
        _CASTS[(_i, _target)] = "i"
    for _source in (FLOAT4, FLOAT8, NUMERIC):
        _CASTS[(_source, _i)] = "a"
_CASTS.update({(FLOAT4, NUMERIC): "a", (FLOAT8, NUMERIC): "a"})
_CASTS.update({(NUMERIC, FLOAT4): "i", (NUMERIC, FLOAT8): "i"})

# typcategory and typispreferred (select_common_type()); arrays are 'A'.
CATEGORY = {
    16: "B", 17: "U", 20: "N", 21: "N", 23: "N", 25: "S", 114: "U", 700: "N", 701: "N",
    1042: "S", 1043: "S", 1082: "D", 1083: "D", 1114: "D", 1184: "D", 1186: "T", 1560: "V",
    1562: "V", 1700: "N", 2950: "U", 3802: "U",
}  # fmt: skip
PREFERRED = frozenset((BOOL, TEXT, FLOAT8, TIMESTAMPTZ, INTERVAL, VARBIT))


class Mismatch(CodecError):
    """PostgreSQL's error for a value whose type cannot go where it was put.

    42804 for an assignment without an assignment cast, 42883 for a comparison
    without an `=` operator. The message names the column, so (like every
    CodecError) str()/repr() show only the SQLSTATE.
    """


def type_name(oid: int) -> str:
    """format_type_be() without typmod ('character varying', 'integer[]')."""
    elem = ELEMENT_OF.get(oid)
    if elem is not None:
        return type_name(elem) + "[]"
    return TYPE_NAMES.get(oid, f"type {oid}")


def assignment_mismatch(column: str, dst: int, src: int) -> Mismatch:
    return Mismatch(
        "42804",
        f'column "{column}" is of type {type_name(dst)} but expression is of type {type_name(src)}',
        hint="You will need to rewrite or cast the expression.",
    )


def operator_mismatch(left: int, right: int) -> Mismatch:
    return Mismatch(
        "42883",
        f"operator does not exist: {type_name(left)} = {type_name(right)}",
        hint="No operator matches the given name and argument types."
        " You might need to add explicit type casts.",
    )


def unsupported_source(src: int) -> CodecError:
    return CodecError(
        "0A000",
        f"pgcloak cannot convert a value of type {type_name(src)} for an encrypted column",
        hint="Send the value as text or as the column's type.",
    )


def pathway(src: int, dst: int, assignment: bool) -> bool:
    """find_coercion_pathway(): is there a cast from src to dst in this context?"""
    if src == dst:
        return True
    ctx = _CASTS.get((src, dst))
    if ctx is not None:
        return ctx == "i" or assignment
    src_elem, dst_elem = ELEMENT_OF.get(src), ELEMENT_OF.get(dst)
    if src_elem is not None and dst_elem is not None:
        return pathway(src_elem, dst_elem, assignment)
    # Automatic I/O conversion to a string type is an assignment cast.
    return assignment and dst in STRINGS


# -- running casts (canonical bytes in, canonical bytes out, no typmod) ----------------


def run_cast(canon: bytes, src: int, dst: int, fmt: SessionFormat) -> bytes | None:
    """The cast src -> dst on a canonical value; `pathway()` must have said yes.

    None is SQL NULL (timestamp 'infinity'::time is NULL in PostgreSQL 15).
    """
    from pgcloak.crypto.codecs import codec_for  # the registry imports this package

    if src == dst:
        return canon
    src_elem, dst_elem = ELEMENT_OF.get(src), ELEMENT_OF.get(dst)
    if src_elem is not None and dst_elem is not None:
        _, dims, lbs, items = array_decode(canon)
        out = [None if i is None else run_cast(i, src_elem, dst_elem, fmt) for i in items]
        return array_encode(dst_elem, dims, lbs, out)
    if src in NUMBERS and dst in NUMBERS:
        return _numeric_cast(canon, src, dst)
    if dst in STRINGS:
        if src == BPCHAR:
            return canon.decode("utf-8").rstrip(" ").encode("utf-8")
        return encode_utf8(output_text(canon, src, fmt))
    if (src, dst) in ((JSON, JSONB), (JSONB, JSON)):
        src_codec, dst_codec = codec_for(src), codec_for(dst)
        assert src_codec is not None and dst_codec is not None
        return dst_codec.from_text(src_codec.to_text(canon, fmt), -1, fmt)
    return _datetime_cast(canon, src, dst, fmt)


def output_text(canon: bytes, src: int, fmt: SessionFormat) -> str:
    """The text a cast to a string type produces (the output function, bool's text())."""
    from pgcloak.crypto.codecs import codec_for

    if src == BOOL:
        return "true" if canon[0] else "false"
    if src in (BIT, VARBIT):
        return canon.decode("ascii")
    codec = codec_for(src)
    if codec is None:
        raise unsupported_source(src)
    return codec.to_text(canon, fmt)


def decode_source(text: str | None, binary: bytes | None, src: int, fmt: SessionFormat) -> bytes:
    """A typed client value -> its canonical bytes (input/receive with typmod -1).

    bit and bit varying, which have no column codec, are kept as ASCII '0'/'1'.
    """
    from pgcloak.crypto.codecs import codec_for

    if src in (BIT, VARBIT):
        bits = bits_from_text(text) if text is not None else bits_from_binary(binary or b"")
        return bits.encode("ascii")
    codec = codec_for(src)
    if codec is None or (src in ELEMENT_OF and ELEMENT_OF[src] in (BIT, VARBIT)):
        raise unsupported_source(src)
    if text is not None:
        return codec.from_text(text, -1, fmt)
    return codec.from_binary(binary or b"", -1)


def array_codec_for(oid: int) -> ArrayCodec | None:
    from pgcloak.crypto.codecs import codec_for

    codec = codec_for(oid)
    return codec if isinstance(codec, ArrayCodec) else None


# -- numbers ---------------------------------------------------------------------------


def int_of(canon: bytes, src: int) -> int:
    value: int = _INT_STRUCT[src].unpack(canon)[0]
    return value


def pack_int(value: int, dst: int) -> bytes:
    bits = _INT_BITS[dst]
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise CodecError("22003", f"{_INT_RANGE_MSG[dst]} out of range")
    return _INT_STRUCT[dst].pack(value)


def float_of(canon: bytes, src: int) -> float:
    value: float = (_F4 if src == FLOAT4 else _F8).unpack(canon)[0]
    return value


def numeric_from_int(value: int) -> bytes:
    return num.parse(str(value))


def numeric_integral(canon: bytes, round_half_away: bool) -> int | None:
    """A numeric as an int: rounded (round_var) or only when integral; None if not/too big."""
    sign, coeff, exp10, _ = num.decode(canon)
    if sign not in (num.POS, num.NEG):
        return None
    if exp10 < 0:
        if round_half_away:
            coeff, exp10 = num.round_to_scale(coeff, exp10, 0)
        elif coeff[exp10:].strip("0"):
            return None
        else:
            coeff, exp10 = coeff[:exp10], 0
    if coeff and len(coeff) + exp10 > 20:
        return None  # beyond any integer type; callers report the range error
    value = int((coeff or "0") + "0" * exp10)
    return -value if sign == num.NEG else value


def float_to_numeric(value: float, single: bool) -> bytes:
    """float4_numeric()/float8_numeric(): %.*g with FLT_DIG/DBL_DIG, then numeric_in."""
    if math.isnan(value):
        return num.special(num.NAN)
    if math.isinf(value):
        return num.special(num.PINF if value > 0 else num.NINF)
    digits = 6 if single else 15
    return num.parse(f"{value:.{digits}g}")


def numeric_to_float(canon: bytes, single: bool) -> bytes:
    """numeric_float4()/numeric_float8(): numeric_out, then float4in/float8in."""
    from pgcloak.crypto.codecs.floats import FLOAT4 as F4CODEC
    from pgcloak.crypto.codecs.floats import FLOAT8 as F8CODEC

    sign = num.decode(canon)[0]
    if sign == num.NAN:
        return b"\x7f\xc0\x00\x00" if single else b"\x7f\xf8" + bytes(6)
    if sign in (num.PINF, num.NINF):
        inf = math.inf if sign == num.PINF else -math.inf
        return _F4.pack(inf) if single else _F8.pack(inf)
    codec = F4CODEC if single else F8CODEC
    return codec.from_text(num.to_text(canon), -1, SessionFormat())


def int_to_float4(value: int) -> bytes:
    """(float4) of an int64, rounded once to nearest-even (no double rounding)."""
    mag = abs(value)
    extra = mag.bit_length() - 24
    if extra > 0:
        q, r = divmod(mag, 1 << extra)
        half = 1 << (extra - 1)
        if r > half or (r == half and q & 1):
            q += 1
        mag = q << extra
    return _F4.pack(float(-mag if value < 0 else mag))


def float8_to_float4(value: float) -> bytes:
    """float8_float4(): overflow and underflow are errors."""
    try:
        packed = _F4.pack(value)
    except OverflowError:
        raise CodecError("22003", "value out of range: overflow") from None
    if _F4.unpack(packed)[0] == 0.0 and value != 0.0:
        raise CodecError("22003", "value out of range: underflow")
    return packed


def float_to_int(value: float, dst: int) -> bytes:
    """float8_int4() & co.: rint() (half to even), then the range check."""
    if math.isnan(value) or math.isinf(value):
        raise CodecError("22003", f"{_INT_RANGE_MSG[dst]} out of range")
    return pack_int(round(value), dst)


def _numeric_cast(canon: bytes, src: int, dst: int) -> bytes:
    if src in INTS:
        value = int_of(canon, src)
        if dst in INTS:
            return pack_int(value, dst)
        if dst == NUMERIC:
            return numeric_from_int(value)
        return int_to_float4(value) if dst == FLOAT4 else _F8.pack(float(value))
    if src in (FLOAT4, FLOAT8):
        fvalue = float_of(canon, src)
        if dst in INTS:
            return float_to_int(fvalue, dst)
        if dst == NUMERIC:
            return float_to_numeric(fvalue, src == FLOAT4)
        return float8_to_float4(fvalue) if dst == FLOAT4 else _F8.pack(fvalue)
    # numeric ->
    if dst in (FLOAT4, FLOAT8):
        return numeric_to_float(canon, dst == FLOAT4)
    sign = num.decode(canon)[0]
    if sign == num.NAN:
        raise CodecError("0A000", f"cannot convert NaN to {_INT_RANGE_MSG[dst]}")
    if sign in (num.PINF, num.NINF):
        raise CodecError("0A000", f"cannot convert infinity to {_INT_RANGE_MSG[dst]}")
    value_or_none = numeric_integral(canon, round_half_away=True)
    if value_or_none is None:
        raise CodecError("22003", f"{_INT_RANGE_MSG[dst]} out of range")
    return pack_int(value_or_none, dst)


def exact_value(canon: bytes, src: int) -> Fraction | float:
    """A number's exact value (Fraction), or a float NaN/infinity."""
    if src in INTS:
        return Fraction(int_of(canon, src))
    if src in (FLOAT4, FLOAT8):
        f = float_of(canon, src)
        return f if math.isnan(f) or math.isinf(f) else Fraction(f)
    sign, coeff, exp10, _ = num.decode(canon)
    if sign == num.NAN:
        return math.nan
    if sign in (num.PINF, num.NINF):
        return math.inf if sign == num.PINF else -math.inf
    value = Fraction(int(coeff or "0")) * Fraction(10) ** exp10
    return -value if sign == num.NEG else value


# -- dates and times -------------------------------------------------------------------


def _ts(canon: bytes) -> int:
    value: int = _I64.unpack(canon)[0]
    return value


def _out_of_range(what: str = "timestamp out of range") -> CodecError:
    return CodecError("22008", what)


def _valid_ts(value: int) -> bool:
    return MIN_TIMESTAMP <= value < END_TIMESTAMP


def zone_east(utc: int, fmt: SessionFormat) -> int:
    """Offset east (seconds) of the session zone at a timestamptz value."""
    return session_zone(fmt.timezone).at_utc(utc // 1_000_000 + UNIX_OFFSET_SECS)[0]


def local_to_utc(local: int, fmt: SessionFormat) -> int:
    """timestamp2timestamptz() without the range check (DetermineTimeZoneOffset())."""
    zone = session_zone(fmt.timezone)
    east = zone.local_offset(local // 1_000_000 + UNIX_OFFSET_SECS)
    return local - east * 1_000_000


def date_to_timestamp(day: int) -> int | None:
    """date2timestamp(); None when the date is beyond the timestamp range."""
    if day == INT32_MIN:
        return INT64_MIN
    if day == INT32_MAX:
        return INT64_MAX
    if day >= TIMESTAMP_END_DATE:
        return None
    return day * USECS_PER_DAY


def date_to_timestamptz(day: int, fmt: SessionFormat) -> int | None:
    local = date_to_timestamp(day)
    if local is None or local in (INT64_MIN, INT64_MAX):
        return local
    utc = local_to_utc(local, fmt)
    return utc if _valid_ts(utc) else None


def timestamp_to_timestamptz(local: int, fmt: SessionFormat) -> int | None:
    if local in (INT64_MIN, INT64_MAX):
        return local
    utc = local_to_utc(local, fmt)
    return utc if _valid_ts(utc) else None


def timestamptz_to_timestamp(utc: int, fmt: SessionFormat) -> int | None:
    if utc in (INT64_MIN, INT64_MAX):
        return utc
    local = utc + zone_east(utc, fmt) * 1_000_000
    return local if _valid_ts(local) else None


def _timestamp_to_date(local: int) -> int:
    if local == INT64_MIN:
        return INT32_MIN
    if local == INT64_MAX:
        return INT32_MAX
    return local // USECS_PER_DAY


def interval_span(canon: bytes) -> int:
    """interval_cmp_value(): months count 30 days."""
    time, day, month = _INTERVAL.unpack(canon)
    return int(time) + (int(day) + int(month) * 30) * USECS_PER_DAY


def _datetime_cast(canon: bytes, src: int, dst: int, fmt: SessionFormat) -> bytes | None:
    if src == DATE:
        day = _I32.unpack(canon)[0]
        value = date_to_timestamp(day) if dst == TIMESTAMP else date_to_timestamptz(day, fmt)
        if value is None:
            raise _out_of_range("date out of range for timestamp")
        return _I64.pack(value)
    if src == TIME:  # -> interval
        return _INTERVAL.pack(_ts(canon), 0, 0)
    if src == INTERVAL:  # -> time
        return _I64.pack(_INTERVAL.unpack(canon)[0] % USECS_PER_DAY)
    value = _ts(canon)
    if src == TIMESTAMPTZ and dst != TIMESTAMPTZ:
        local = timestamptz_to_timestamp(value, fmt)
        if local is None:
            raise _out_of_range()
        value = local
    if dst == TIMESTAMPTZ:
        utc = timestamp_to_timestamptz(value, fmt)
        if utc is None:
            raise _out_of_range()
        return _I64.pack(utc)
    if dst == TIMESTAMP:
        return _I64.pack(value)
    if dst == DATE:
        return _I32.pack(_timestamp_to_date(value))
    if dst == TIME:
        if value in (INT64_MIN, INT64_MAX):
            return None
        return _I64.pack(value % USECS_PER_DAY)
    raise AssertionError("no such cast")  # pathway() guards every call
