"""EncodeInterval(): interval output in the four IntervalStyles of PostgreSQL 15."""

from __future__ import annotations

from pgcloak.crypto.codecs.base import c_div
from pgcloak.crypto.codecs.datetimes import seconds_text

USECS_PER_SEC = 1_000_000
USECS_PER_MINUTE = 60_000_000
USECS_PER_HOUR = 3_600_000_000


def encode_interval(time: int, day: int, month: int, style: str) -> str:
    """EncodeInterval() for postgres, postgres_verbose, sql_standard and iso_8601."""
    year, mon = c_div(month, 12), month - c_div(month, 12) * 12
    hour = c_div(time, USECS_PER_HOUR)
    time -= hour * USECS_PER_HOUR
    minute = c_div(time, USECS_PER_MINUTE)
    time -= minute * USECS_PER_MINUTE
    sec = c_div(time, USECS_PER_SEC)
    fsec = time - sec * USECS_PER_SEC
    mday = day
    if style == "sql_standard":
        return _encode_sql((year, mon, mday, hour, minute, sec, fsec))
    if style == "iso_8601":
        if not (year or mon or mday or hour or minute or sec or fsec):
            return "PT0S"
        out = "P" + "".join(f"{v}{u}" for v, u in ((year, "Y"), (mon, "M"), (mday, "D")) if v)
        if hour or minute or sec or fsec:
            out += "T"
        out += "".join(f"{v}{u}" for v, u in ((hour, "H"), (minute, "M")) if v)
        if sec or fsec:
            out += ("-" if sec < 0 or fsec < 0 else "") + seconds_text(abs(sec), abs(fsec), False)
            out += "S"
        return out
    if style == "postgres_verbose":
        return _encode_verbose((year, mon, mday, hour, minute, sec, fsec))
    parts: list[str] = []
    is_before = False
    for value, unit in ((year, "year"), (mon, "mon"), (mday, "day")):
        if value:
            plus = "+" if is_before and value > 0 else ""
            parts.append(f"{plus}{value} {unit}{'s' if value != 1 else ''}")
            is_before = value < 0
    if not parts or hour or minute or sec or fsec:
        minus = hour < 0 or minute < 0 or sec < 0 or fsec < 0
        sign = "-" if minus else ("+" if is_before else "")
        clock = f"{sign}{abs(hour):02d}:{abs(minute):02d}:{seconds_text(abs(sec), abs(fsec))}"
        parts.append(clock)
    return " ".join(parts)


def _encode_sql(values: tuple[int, int, int, int, int, int, int]) -> str:
    year, mon, mday, hour, minute, sec, fsec = values
    has_negative = any(v < 0 for v in values)
    has_positive = any(v > 0 for v in values)
    has_year_month = bool(year or mon)
    has_day_time = bool(mday or hour or minute or sec or fsec)
    standard = not (has_negative and has_positive) and not (has_year_month and has_day_time)
    prefix = ""
    if has_negative and standard:
        prefix = "-"
        year, mon, mday, hour, minute, sec, fsec = (-v for v in values)
    if not has_negative and not has_positive:
        return "0"
    if not standard:
        ysign = "-" if year < 0 or mon < 0 else "+"
        dsign = "-" if mday < 0 else "+"
        tsign = "-" if hour < 0 or minute < 0 or sec < 0 or fsec < 0 else "+"
        return (
            f"{ysign}{abs(year)}-{abs(mon)} {dsign}{abs(mday)} {tsign}{abs(hour)}:"
            f"{abs(minute):02d}:{seconds_text(abs(sec), abs(fsec))}"
        )
    if has_year_month:
        return f"{prefix}{year}-{mon}"
    clock = f"{hour}:{minute:02d}:{seconds_text(abs(sec), abs(fsec))}"
    if mday:
        return f"{prefix}{mday} {clock}"
    return prefix + clock


def _encode_verbose(values: tuple[int, int, int, int, int, int, int]) -> str:
    year, mon, mday, hour, minute, sec, fsec = values
    out = "@"
    is_zero, is_before = True, False
    for raw, unit in (
        (year, "year"),
        (mon, "mon"),
        (mday, "day"),
        (hour, "hour"),
        (minute, "min"),
    ):
        if not raw:
            continue
        value = raw
        if is_zero:
            is_before = raw < 0
            value = abs(raw)
        elif is_before:
            value = -raw
        out += f" {value} {unit}{'' if value == 1 else 's'}"
        is_zero = False
    if sec or fsec:
        out += " "
        if sec < 0 or (sec == 0 and fsec < 0):
            if is_zero:
                is_before = True
            elif not is_before:
                out += "-"
        elif is_before:
            out += "-"
        out += seconds_text(abs(sec), abs(fsec), False)
        out += " sec" + ("s" if abs(sec) != 1 or fsec != 0 else "")
        is_zero = False
    if is_zero:
        out += " 0"
    if is_before:
        out += " ago"
    return out
