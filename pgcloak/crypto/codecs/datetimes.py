"""date, time, timestamp and timestamptz (date.c / timestamp.c of PostgreSQL 15).

Canonical forms are the send formats: date = int32 days since 2000-01-01,
time = int64 microseconds since midnight, timestamp[tz] = int64 microseconds
since 2000-01-01 00:00 (UTC for timestamptz); +-infinity are the int extremes.
"""

from __future__ import annotations

import functools
import re
import struct

from pgcloak.crypto.codecs.base import (
    CodecError,
    SessionFormat,
    check_length,
    need,
    reject_nul,
)
from pgcloak.crypto.codecs.dtdecode import decode_datetime, decode_time_only
from pgcloak.crypto.codecs.dtparse import (
    BAD_FORMAT,
    DAY_TAB,
    DTK_DATE,
    DTK_EARLY,
    DTK_EPOCH,
    DTK_LATE,
    FIELD_OVERFLOW,
    INTERVAL_OVERFLOW,
    MD_FIELD_OVERFLOW,
    POSTGRES_EPOCH_JDATE,
    TZDISP_OVERFLOW,
    USECS_PER_DAY,
    DtError,
    Tm,
    Unsupported,
    date2j,
    is_leap,
    is_valid_julian,
    j2date,
    parse_datetime,
)
from pgcloak.crypto.codecs.tz import FixedZone, PosixRulesUnsupported, Zone, session_zone

UTC_ZONE = FixedZone(0, "UTC", "UTC")

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MIN_TIMESTAMP = -211813488000000000
END_TIMESTAMP = 9223371331200000000
DATE_MIN = -POSTGRES_EPOCH_JDATE
DATE_END = 2147483494 - POSTGRES_EPOCH_JDATE
UNIX_EPOCH_USECS = -946684800000000
USECS_PER_HOUR = 3_600_000_000
USECS_PER_MINUTE = 60_000_000
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def datetime_parse_error(err: DtError, text: str, typname: str) -> CodecError:
    """DateTimeParseError() of PostgreSQL 15."""
    if err.code == FIELD_OVERFLOW:
        return CodecError("22008", f'date/time field value out of range: "{text}"')
    if err.code == MD_FIELD_OVERFLOW:
        return CodecError(
            "22008",
            f'date/time field value out of range: "{text}"',
            hint='Perhaps you need a different "datestyle" setting.',
        )
    if err.code == INTERVAL_OVERFLOW:
        return CodecError("22015", f'interval field value out of range: "{text}"')
    if err.code == TZDISP_OVERFLOW:
        return CodecError("22009", f'time zone displacement out of range: "{text}"')
    return CodecError("22007", f'invalid input syntax for type {typname}: "{text}"')


def clock_dependent(text: str, typname: str) -> CodecError:
    return CodecError(
        "0A000",
        f'pgcloak cannot encrypt "{text}" as {typname}: the value depends on the server clock',
        hint="Send an explicit date/time value instead.",
    )


@functools.lru_cache(maxsize=32)
def parse_datestyle(datestyle: str) -> tuple[str, str]:
    """DateStyle -> (output style ISO/SQL/POSTGRES/GERMAN, field order MDY/DMY/YMD)."""
    style, order = "ISO", ""
    for tok in re.split(r"[\s,]+", datestyle.strip().upper()):
        if tok in ("ISO", "SQL", "POSTGRES", "GERMAN"):
            style = tok
        elif tok == "YMD":
            order = "YMD"
        elif tok in ("DMY", "EURO", "EUROPEAN"):
            order = "DMY"
        elif tok in ("MDY", "US", "NONEURO", "NONEUROPEAN"):
            order = "MDY"
        elif tok and tok != "DEFAULT":
            raise CodecError("0A000", f'pgcloak does not understand DateStyle "{datestyle}"')
    return style, order or ("DMY" if style == "GERMAN" else "MDY")


def _decode(text: str, typname: str, fmt: SessionFormat, want_tz: bool) -> tuple[int, Tm]:
    reject_nul(text)
    order = parse_datestyle(fmt.datestyle)[1]
    try:
        fields, ftypes = parse_datetime(text)
        zone = session_zone(fmt.timezone) if want_tz else UTC_ZONE
        return decode_datetime(fields, ftypes, order, zone, want_tz)
    except DtError as err:
        raise datetime_parse_error(err, text, typname) from None
    except Unsupported:
        raise clock_dependent(text, typname) from None
    except PosixRulesUnsupported:
        raise CodecError(
            "0A000",
            f'pgcloak cannot resolve the time zone in "{text}": POSIX daylight-saving rules'
            " are not supported",
        ) from None


# The overwhelmingly common ISO form, decoded without the general parser. Anything
# unusual (year 0, second 60, more than 6 fraction digits, ...) takes the full path.
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[ T]([0-9]{2}):([0-9]{2})(?::([0-9]{2})"
    r"(?:\.([0-9]{1,6}))?)?(?:(Z)|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?"
)


def _fast_iso(text: str, session: Zone | None) -> tuple[int, int] | None:
    """(timestamp, tzp) for a plain ISO literal, or None to use the general parser.

    `session` None means the offset is not wanted (timestamp, date).
    """
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if year == 0 or not 1 <= month <= 12 or not 1 <= day <= DAY_TAB[is_leap(year)][month - 1]:
        return None
    hour = int(m.group(4) or 0)
    minute = int(m.group(5) or 0)
    sec = int(m.group(6) or 0)
    if hour > 23 or minute > 59 or sec > 59:
        return None
    usec = int((m.group(7) or "").ljust(6, "0"))
    date = date2j(year, month, day) - POSTGRES_EPOCH_JDATE
    local = date * USECS_PER_DAY + ((hour * 60 + minute) * 60 + sec) * 1_000_000 + usec
    tzp = 0
    if m.group(9) is not None:
        tz_hour, tz_min = int(m.group(10)), int(m.group(11) or 0)
        if tz_hour > 15 or tz_min > 59:
            return None
        tzp = -(tz_hour * 3600 + tz_min * 60) if m.group(9) == "+" else tz_hour * 3600 + tz_min * 60
    elif m.group(8) is None and session is not None:
        fixed = session.fixed_offset()
        if fixed is None:
            fixed = session.local_offset_fields((year, month, day, hour, minute, sec))
        tzp = -fixed
    return local, tzp


def tm2timestamp(tm: Tm, tz: int | None) -> int | None:
    """tm2timestamp(): microseconds since 2000-01-01, or None when out of range."""
    if not is_valid_julian(tm.year, tm.mon, tm.mday):
        return None
    date = date2j(tm.year, tm.mon, tm.mday) - POSTGRES_EPOCH_JDATE
    time = ((tm.hour * 60 + tm.min) * 60 + tm.sec) * 1_000_000 + tm.fsec
    result = date * USECS_PER_DAY + time
    if not INT64_MIN <= result <= INT64_MAX:
        return None
    if (result < 0 < date) or (result > 0 and date < -1):
        return None
    if tz is not None:
        result += tz * 1_000_000
    if not MIN_TIMESTAMP <= result < END_TIMESTAMP:
        return None
    return result


_SCALES = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)


def round_usecs(value: int, precision: int) -> int:
    """AdjustTimestampForTypmod()/AdjustTimeForTypmod(): round half away from zero."""
    scale = _SCALES[precision]
    half = scale // 2
    if value >= 0:
        return (value + half) // scale * scale
    return -((-value + half) // scale * scale)


def _timestamp_typmod(value: int, typmod: int) -> int:
    if value in (INT64_MIN, INT64_MAX) or typmod in (-1, 6):
        return value
    if not 0 <= typmod <= 6:
        raise CodecError("22023", f"timestamp({typmod}) precision must be between 0 and 6")
    # PostgreSQL 15 does not re-check the range after rounding.
    return round_usecs(value, typmod)


def split_timestamp(value: int) -> tuple[int, int, int, int, int, int, int]:
    """timestamp2tm() without zone: (year, month, day, hour, minute, second, usec)."""
    date, time = divmod(value, USECS_PER_DAY)
    year, month, day = j2date(date + POSTGRES_EPOCH_JDATE)
    hour, time = divmod(time, USECS_PER_HOUR)
    minute, time = divmod(time, USECS_PER_MINUTE)
    sec, usec = divmod(time, 1_000_000)
    return year, month, day, hour, minute, sec, usec


def seconds_text(sec: int, usec: int, fillzeros: bool = True) -> str:
    """AppendSeconds(): two-digit seconds, fraction without trailing zeros."""
    head = f"{sec:02d}" if fillzeros else str(sec)
    if usec:
        return head + "." + f"{usec:06d}".rstrip("0")
    return head


def _year_text(year: int) -> str:
    return f"{year if year > 0 else -(year - 1):04d}"


def timezone_text(east: int, force_minutes: bool = False) -> str:
    """EncodeTimezone(): +hh, +hh:mm or +hh:mm:ss."""
    sign = "+" if east >= 0 else "-"
    total = abs(east)
    hour, rest = divmod(total, 3600)
    minute, sec = divmod(rest, 60)
    if sec:
        return f"{sign}{hour:02d}:{minute:02d}:{sec:02d}"
    if minute or force_minutes:
        return f"{sign}{hour:02d}:{minute:02d}"
    return f"{sign}{hour:02d}"


def encode_date(year: int, month: int, day: int, style: str, order: str) -> str:
    """EncodeDateOnly()."""
    y = _year_text(year)
    if style == "ISO":
        out = f"{y}-{month:02d}-{day:02d}"
    elif style == "SQL":
        out = f"{day:02d}/{month:02d}/{y}" if order == "DMY" else f"{month:02d}/{day:02d}/{y}"
    elif style == "GERMAN":
        out = f"{day:02d}.{month:02d}.{y}"
    else:
        out = f"{day:02d}-{month:02d}-{y}" if order == "DMY" else f"{month:02d}-{day:02d}-{y}"
    return out + " BC" if year <= 0 else out


def encode_datetime(value: int, style: str, order: str, zone: tuple[int, str] | None) -> str:
    """EncodeDateTime(); `zone` is (offset east, abbreviation) for timestamptz."""
    year, month, day, hour, minute, sec, usec = split_timestamp(value)
    y = _year_text(year)
    secs = seconds_text(sec, usec)
    clock = f"{hour:02d}:{minute:02d}:{secs}"
    if style == "ISO":
        out = f"{y}-{month:02d}-{day:02d} {clock}"
        if zone is not None:
            out += timezone_text(zone[0])
    else:
        if style == "SQL":
            md = f"{day:02d}/{month:02d}" if order == "DMY" else f"{month:02d}/{day:02d}"
            out = f"{md}/{y} {clock}"
        elif style == "GERMAN":
            out = f"{day:02d}.{month:02d}.{y} {clock}"
        else:
            wday = DAYS[(date2j(year, month, day) + 1) % 7]
            md = (
                f"{day:02d} {MONTHS[month - 1]}"
                if order == "DMY"
                else f"{MONTHS[month - 1]} {day:02d}"
            )
            out = f"{wday} {md} {clock} {y}"
        if zone is not None:
            out += " " + zone[1][:10] if zone[1] else " " + timezone_text(zone[0])
    return out + " BC" if year <= 0 else out


def _special(value: int, low: int, high: int) -> str | None:
    if value == high:
        return "infinity"
    if value == low:
        return "-infinity"
    return None


class DateCodec:
    oid = 1082
    name = "date"
    array_oid = 1182

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        if len(text) == 10:
            fast = _fast_iso(text, None)
            if fast is not None:
                return _I32.pack(fast[0] // USECS_PER_DAY)
        dtype, tm = _decode(text, "date", fmt, False)
        if dtype == DTK_LATE:
            return _I32.pack(INT32_MAX)
        if dtype == DTK_EARLY:
            return _I32.pack(INT32_MIN)
        if dtype == DTK_EPOCH:
            tm.year, tm.mon, tm.mday = 1970, 1, 1
        elif dtype != DTK_DATE:
            raise datetime_parse_error(DtError(BAD_FORMAT), text, "date")
        if not is_valid_julian(tm.year, tm.mon, tm.mday):
            raise CodecError("22008", f'date out of range: "{text}"')
        date = date2j(tm.year, tm.mon, tm.mday) - POSTGRES_EPOCH_JDATE
        if not DATE_MIN <= date < DATE_END:
            raise CodecError("22008", f'date out of range: "{text}"')
        return _I32.pack(date)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        need(data, 4)
        value = _I32.unpack_from(data)[0]
        if value not in (INT32_MIN, INT32_MAX) and not DATE_MIN <= value < DATE_END:
            raise CodecError("22008", "date out of range")
        check_length(data, 4)
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        value = _I32.unpack(canonical)[0]
        special = _special(value, INT32_MIN, INT32_MAX)
        if special is not None:
            return special
        style, order = parse_datestyle(fmt.datestyle)
        return encode_date(*j2date(value + POSTGRES_EPOCH_JDATE), style, order)

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


class TimeCodec:
    oid = 1083
    name = "time"
    array_oid = 1183

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        order = parse_datestyle(fmt.datestyle)[1]
        try:
            fields, ftypes = parse_datetime(text)
            tm = decode_time_only(fields, ftypes, order, UTC_ZONE)
        except DtError as err:
            raise datetime_parse_error(err, text, "time") from None
        except Unsupported:
            raise clock_dependent(text, "time") from None
        value = ((tm.hour * 60 + tm.min) * 60 + tm.sec) * 1_000_000 + tm.fsec
        return _I64.pack(self._typmod(value, typmod))

    @staticmethod
    def _typmod(value: int, typmod: int) -> int:
        if 0 <= typmod <= 6:
            return round_usecs(value, typmod)
        return value

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        need(data, 8)
        value = _I64.unpack_from(data)[0]
        if not 0 <= value <= USECS_PER_DAY:
            raise CodecError("22008", "time out of range")
        check_length(data, 8)
        return _I64.pack(self._typmod(value, typmod))

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        value = _I64.unpack(canonical)[0]
        hour, value = divmod(value, USECS_PER_HOUR)
        minute, value = divmod(value, USECS_PER_MINUTE)
        sec, usec = divmod(value, 1_000_000)
        return f"{hour:02d}:{minute:02d}:{seconds_text(sec, usec)}"

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


class TimestampCodec:
    """timestamp and timestamptz; `with_tz` selects the session-zone conversions."""

    def __init__(self, with_tz: bool) -> None:
        self.with_tz = with_tz
        self.oid = 1184 if with_tz else 1114
        self.name = "timestamptz" if with_tz else "timestamp"
        self.array_oid = 1185 if with_tz else 1115
        self.sql_name = "timestamp with time zone" if with_tz else "timestamp"

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        fast = _fast_iso(text, session_zone(fmt.timezone) if self.with_tz else None)
        if fast is not None:
            value = fast[0] + fast[1] * 1_000_000 if self.with_tz else fast[0]
            if MIN_TIMESTAMP <= value < END_TIMESTAMP:
                return _I64.pack(_timestamp_typmod(value, typmod))
        dtype, tm = _decode(text, self.sql_name, fmt, self.with_tz)
        if dtype == DTK_DATE:
            converted = tm2timestamp(tm, tm.tz if self.with_tz else None)
            if converted is None:
                raise CodecError("22008", f'timestamp out of range: "{text}"')
            value = converted
        elif dtype == DTK_EPOCH:
            value = UNIX_EPOCH_USECS
        elif dtype == DTK_LATE:
            value = INT64_MAX
        elif dtype == DTK_EARLY:
            value = INT64_MIN
        else:
            raise datetime_parse_error(DtError(BAD_FORMAT), text, self.sql_name)
        return _I64.pack(_timestamp_typmod(value, typmod))

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        need(data, 8)
        value = _I64.unpack_from(data)[0]
        if value not in (INT64_MIN, INT64_MAX) and not MIN_TIMESTAMP <= value < END_TIMESTAMP:
            raise CodecError("22008", "timestamp out of range")
        check_length(data, 8)
        return _I64.pack(_timestamp_typmod(value, typmod))

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        value = _I64.unpack(canonical)[0]
        special = _special(value, INT64_MIN, INT64_MAX)
        if special is not None:
            return special
        style, order = parse_datestyle(fmt.datestyle)
        if not self.with_tz:
            return encode_datetime(value, style, order, None)
        zone = session_zone(fmt.timezone)
        east, abbrev = _zone_at(zone, value)
        return encode_datetime(value + east * 1_000_000, style, order, (east, abbrev))

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


def _zone_at(zone: Zone, value: int) -> tuple[int, str]:
    """pg_localtime(): offset and abbreviation at a timestamptz value."""
    unix = (value - (value % 1_000_000)) // 1_000_000 + 946684800
    return zone.at_utc(unix)


DATE = DateCodec()
TIME = TimeCodec()
TIMESTAMP = TimestampCodec(False)
TIMESTAMPTZ = TimestampCodec(True)
