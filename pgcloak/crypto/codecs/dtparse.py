"""PostgreSQL 15's date/time string parser (datetime.c), ported line by line.

ParseDateTime() splits the input into typed fields; DecodeDateTime() and
DecodeTimeOnly() interpret them under the session's DateOrder and TimeZone.
Errors are `DtError` with PostgreSQL's DTERR code; the type's input function
turns them into DateTimeParseError() messages. Inputs that depend on the
transaction's clock ('now', 'today', ...) raise `Unsupported`.
"""

from __future__ import annotations

import string

from pgcloak.crypto.codecs.base import c_div

# Token types (datetime.h)
RESERV, MONTH, YEAR, DAY, JULIAN, TZ, DTZ, DYNTZ, IGNORE_DTF, AMPM = range(10)
HOUR, MINUTE, SECOND, MILLISECOND, MICROSECOND, DOY, DOW, UNITS, ADBC, AGO = range(10, 20)
ISOTIME, WEEK, DECADE, CENTURY, MILLENNIUM, DTZMOD, UNKNOWN_FIELD = 23, 24, 25, 26, 27, 28, 31


def M(t: int) -> int:
    return 1 << t


DTK_ALL_SECS_M = M(SECOND) | M(MILLISECOND) | M(MICROSECOND)
DTK_DATE_M = M(YEAR) | M(MONTH) | M(DAY)
DTK_TIME_M = M(HOUR) | M(MINUTE) | DTK_ALL_SECS_M

# Field types and token values
DTK_NUMBER, DTK_STRING, DTK_DATE, DTK_TIME, DTK_TZ, DTK_AGO, DTK_SPECIAL = range(7)
DTK_EARLY, DTK_LATE, DTK_EPOCH, DTK_NOW, DTK_YESTERDAY, DTK_TODAY = range(9, 15)
DTK_TOMORROW, DTK_ZULU, DTK_DELTA, DTK_SECOND, DTK_MINUTE, DTK_HOUR = range(15, 21)
DTK_DAY, DTK_WEEK, DTK_MONTH, DTK_QUARTER, DTK_YEAR, DTK_DECADE = range(21, 27)
DTK_CENTURY, DTK_MILLENNIUM, DTK_MILLISEC, DTK_MICROSEC, DTK_JULIAN = range(27, 32)
DTK_DOW, DTK_DOY, DTK_TZ_HOUR, DTK_TZ_MINUTE, DTK_ISOYEAR, DTK_ISODOW = range(32, 38)
AM, PM, HR24 = 0, 1, 2
AD, BC = 0, 1

# DTERR codes
BAD_FORMAT, FIELD_OVERFLOW, MD_FIELD_OVERFLOW, INTERVAL_OVERFLOW, TZDISP_OVERFLOW = (
    -1,
    -2,
    -3,
    -4,
    -5,
)

MAXDATELEN = 128
MAXDATEFIELDS = 25
TOKMAXLEN = 10
USECS_PER_SEC = 1_000_000
USECS_PER_DAY = 86_400_000_000
POSTGRES_EPOCH_JDATE = 2451545
UNIX_EPOCH_JDATE = 2440588
DAY_TAB = (
    (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),
    (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),
)

DATETKTBL: dict[str, tuple[int, int]] = {
    "-infinity": (RESERV, DTK_EARLY), "ad": (ADBC, AD), "allballs": (RESERV, DTK_ZULU),
    "am": (AMPM, AM), "apr": (MONTH, 4), "april": (MONTH, 4), "at": (IGNORE_DTF, 0),
    "aug": (MONTH, 8), "august": (MONTH, 8), "bc": (ADBC, BC), "d": (UNITS, DTK_DAY),
    "dec": (MONTH, 12), "december": (MONTH, 12), "dow": (UNITS, DTK_DOW),
    "doy": (UNITS, DTK_DOY), "dst": (DTZMOD, 3600), "epoch": (RESERV, DTK_EPOCH),
    "feb": (MONTH, 2), "february": (MONTH, 2), "fri": (DOW, 5), "friday": (DOW, 5),
    "h": (UNITS, DTK_HOUR), "infinity": (RESERV, DTK_LATE), "isodow": (UNITS, DTK_ISODOW),
    "isoyear": (UNITS, DTK_ISOYEAR), "j": (UNITS, DTK_JULIAN), "jan": (MONTH, 1),
    "january": (MONTH, 1), "jd": (UNITS, DTK_JULIAN), "jul": (MONTH, 7),
    "julian": (UNITS, DTK_JULIAN), "july": (MONTH, 7), "jun": (MONTH, 6),
    "june": (MONTH, 6), "m": (UNITS, DTK_MONTH), "mar": (MONTH, 3), "march": (MONTH, 3),
    "may": (MONTH, 5), "mm": (UNITS, DTK_MINUTE), "mon": (DOW, 1), "monday": (DOW, 1),
    "nov": (MONTH, 11), "november": (MONTH, 11), "now": (RESERV, DTK_NOW),
    "oct": (MONTH, 10), "october": (MONTH, 10), "on": (IGNORE_DTF, 0), "pm": (AMPM, PM),
    "s": (UNITS, DTK_SECOND), "sat": (DOW, 6), "saturday": (DOW, 6), "sep": (MONTH, 9),
    "sept": (MONTH, 9), "september": (MONTH, 9), "sun": (DOW, 0), "sunday": (DOW, 0),
    "t": (ISOTIME, DTK_TIME), "thu": (DOW, 4), "thur": (DOW, 4), "thurs": (DOW, 4),
    "thursday": (DOW, 4), "today": (RESERV, DTK_TODAY), "tomorrow": (RESERV, DTK_TOMORROW),
    "tue": (DOW, 2), "tues": (DOW, 2), "tuesday": (DOW, 2), "wed": (DOW, 3),
    "wednesday": (DOW, 3), "weds": (DOW, 3), "y": (UNITS, DTK_YEAR),
    "yesterday": (RESERV, DTK_YESTERDAY),
}  # fmt: skip

_DIGITS = frozenset(string.digits)
_ALPHA = frozenset(string.ascii_letters)
_ALNUM = _DIGITS | _ALPHA
_SPACE = frozenset(" \t\n\r\v\f")
_PUNCT = frozenset(string.punctuation)


class DtError(Exception):
    """A DTERR code, or a zone name PostgreSQL reports as not recognized."""

    def __init__(self, code: int, zone: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.zone = zone


class Unsupported(Exception):
    """Input PostgreSQL accepts but whose value depends on the server's clock."""


def lookup(table: dict[str, tuple[int, int]], key: str) -> tuple[int, int] | None:
    """datebsearch(): tokens compare on their first TOKMAXLEN characters."""
    return table.get(key if len(key) <= TOKMAXLEN else key[:TOKMAXLEN])


def parse_datetime(text: str, buflen: int = MAXDATELEN + 1) -> tuple[list[str], list[int]]:
    """ParseDateTime(): split into fields typed DTK_NUMBER/STRING/DATE/TIME/TZ/SPECIAL."""
    fields: list[str] = []
    ftypes: list[int] = []
    n = len(text)
    cp = 0
    used = 0

    while cp < n:
        c = text[cp]
        if c in _SPACE:
            cp += 1
            continue
        if len(fields) >= MAXDATEFIELDS:
            raise DtError(BAD_FORMAT)
        start = cp
        lower = False
        if c in _DIGITS:
            while cp < n and text[cp] in _DIGITS:
                cp += 1
            if cp < n and text[cp] == ":":
                ftype = DTK_TIME
                cp += 1
                while cp < n and (text[cp] in _DIGITS or text[cp] in ":."):
                    cp += 1
            elif cp < n and text[cp] in "-/.":
                delim = text[cp]
                cp += 1
                if cp < n and text[cp] in _DIGITS:
                    ftype = DTK_NUMBER if delim == "." else DTK_DATE
                    while cp < n and text[cp] in _DIGITS:
                        cp += 1
                    if cp < n and text[cp] == delim:
                        ftype = DTK_DATE
                        cp += 1
                        while cp < n and (text[cp] in _DIGITS or text[cp] == delim):
                            cp += 1
                else:
                    ftype = DTK_DATE
                    lower = True
                    while cp < n and (text[cp] in _ALNUM or text[cp] == delim):
                        cp += 1
            else:
                ftype = DTK_NUMBER
        elif c == ".":
            cp += 1
            while cp < n and text[cp] in _DIGITS:
                cp += 1
            ftype = DTK_NUMBER
        elif c in _ALPHA:
            ftype = DTK_STRING
            lower = True
            cp += 1
            while cp < n and text[cp] in _ALPHA:
                cp += 1
            is_date = False
            if cp < n and text[cp] in "-/.":
                is_date = True
            elif cp < n and (text[cp] == "+" or text[cp] in _DIGITS):
                # Only a word that is not a date keyword can start a zone name.
                is_date = lookup(DATETKTBL, text[start:cp].lower()) is None
            if is_date:
                ftype = DTK_DATE
                cp += 1
                while cp < n and (text[cp] in "+-/_.:" or text[cp] in _ALNUM):
                    cp += 1
        elif c in "+-":
            cp += 1
            sign = c
            while cp < n and text[cp] in _SPACE:
                cp += 1
            body_start = cp
            if cp < n and text[cp] in _DIGITS:
                ftype = DTK_TZ
                cp += 1
                while cp < n and (text[cp] in _DIGITS or text[cp] in ":.-"):
                    cp += 1
            elif cp < n and text[cp] in _ALPHA:
                ftype = DTK_SPECIAL
                lower = True
                cp += 1
                while cp < n and text[cp] in _ALPHA:
                    cp += 1
            else:
                raise DtError(BAD_FORMAT)
            field = sign + text[body_start:cp]
            used = _account(used, len(field), buflen)
            fields.append(field.lower() if lower else field)
            ftypes.append(ftype)
            continue
        elif c in _PUNCT:
            cp += 1
            continue
        else:
            raise DtError(BAD_FORMAT)
        field = text[start:cp]
        used = _account(used, len(field), buflen)
        fields.append(field.lower() if lower else field)
        ftypes.append(ftype)
    return fields, ftypes


def _account(used: int, length: int, buflen: int) -> int:
    """APPEND_CHAR's bound check on the shared work buffer (field bytes + NULs)."""
    if used + length >= buflen:
        raise DtError(BAD_FORMAT)
    return used + length + 1


# -- calendar ----------------------------------------------------------------------


def date2j(year: int, month: int, day: int) -> int:
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = c_div(year, 100)
    julian = year * 365 - 32167
    julian += c_div(year, 4) - century + c_div(century, 4)
    julian += c_div(7834 * month, 256) + day
    return julian


def j2date(jd: int) -> tuple[int, int, int]:
    julian = (jd + 32044) & 0xFFFFFFFF
    quad = julian // 146097
    extra = ((julian - quad * 146097) * 4 + 3) & 0xFFFFFFFF
    julian = (julian + 60 + quad * 3 + extra // 146097) & 0xFFFFFFFF
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    year = y - 4800
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return year, month, day


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def is_valid_julian(y: int, m: int, d: int) -> bool:
    """IS_VALID_JULIAN(): from 4714-11-24 BC up to (but excluding) 5874898-06."""
    return (y > -4713 or (y == -4713 and m >= 11)) and (y < 5874898 or (y == 5874898 and m < 6))


# -- field decoders ----------------------------------------------------------------


def _strtol(s: str, pos: int = 0, bits: int = 32) -> tuple[int, int, bool]:
    """strtol(): (value, end, overflow); end == pos when no digits were found."""
    i = pos
    n = len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    neg = False
    if i < n and s[i] in "+-":
        neg = s[i] == "-"
        i += 1
    j = i
    while j < n and s[j] in _DIGITS:
        j += 1
    if j == i:
        return 0, pos, False
    digits = s[i:j].lstrip("0")
    if len(digits) > 20:
        return 0, j, True
    value = int(digits or "0")
    if neg:
        value = -value
    limit = 1 << (bits - 1)
    return value, j, not -limit <= value < limit


def _atoi(s: str) -> int:
    """atoi(): (int) strtol() with clamping, then wrapped to 32 bits."""
    value, _, overflow = _strtol(s, 0, 64)
    if overflow:
        value = (1 << 63) - 1 if not s.lstrip().startswith("-") else -(1 << 63)
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _fraction(s: str) -> float:
    """ParseFraction(): strtod() of a '.digits' field tail."""
    if s == ".":
        return 0.0  # ParseFraction() special-cases a bare point
    if not s[1:].isdigit() or not s[1:].isascii():
        raise DtError(BAD_FORMAT)
    return float("0" + s)


def parse_fractional_second(s: str) -> int:
    """ParseFractionalSecond(): microseconds, rounded half to even like rint()."""
    return round(_fraction(s) * 1_000_000)


class Tm:
    """struct pg_tm plus fsec (microseconds) and the decoded zone offset (tzp, west)."""

    __slots__ = (
        "fsec", "hour", "isdst", "mday", "min", "mon", "sec", "tz", "wday", "yday", "year",
    )  # fmt: skip

    def __init__(self) -> None:
        self.year = self.mon = self.mday = 0
        self.hour = self.min = self.sec = self.fsec = 0
        self.yday = self.wday = 0
        self.isdst = -1
        self.tz: int | None = None


def decode_timezone(s: str) -> int:
    """DecodeTimezone(): '+hh', '+hhmm', '+hh:mm[:ss]' -> tzp (seconds west)."""
    if not s or s[0] not in "+-":
        raise DtError(BAD_FORMAT)
    hr, cp, overflow = _strtol(s, 1)
    if overflow:
        raise DtError(TZDISP_OVERFLOW)
    sec = 0
    if cp < len(s) and s[cp] == ":":
        mn, cp, overflow = _strtol(s, cp + 1)
        if overflow:
            raise DtError(TZDISP_OVERFLOW)
        if cp < len(s) and s[cp] == ":":
            sec, cp, overflow = _strtol(s, cp + 1)
            if overflow:
                raise DtError(TZDISP_OVERFLOW)
    elif cp == len(s) and len(s) > 3:
        mn = hr % 100
        hr //= 100
    else:
        mn = 0
    if not 0 <= hr <= 15 or not 0 <= mn < 60 or not 0 <= sec < 60:
        raise DtError(TZDISP_OVERFLOW)
    tz = (hr * 60 + mn) * 60 + sec
    if s[0] == "-":
        tz = -tz
    if cp != len(s):
        raise DtError(BAD_FORMAT)
    return -tz


def decode_time(s: str, range_mask: int) -> tuple[int, int, int, int]:
    """DecodeTimeCommon()/DecodeTime(): 'hh:mm[:ss[.frac]]' or 'mm:ss.frac'."""
    hour, cp, overflow = _strtol(s, 0, 64)
    if overflow:
        raise DtError(FIELD_OVERFLOW)
    if cp >= len(s) or s[cp] != ":":
        raise DtError(BAD_FORMAT)
    mn, cp, overflow = _strtol(s, cp + 1)
    if overflow:
        raise DtError(FIELD_OVERFLOW)
    fsec = 0
    sec = 0
    if cp == len(s):
        if range_mask == (M(MINUTE) | M(SECOND)):
            if not -(1 << 31) <= hour < 1 << 31:
                raise DtError(FIELD_OVERFLOW)
            hour, mn, sec = 0, hour, mn
    elif s[cp] == ".":
        fsec = parse_fractional_second(s[cp:])
        if not -(1 << 31) <= hour < 1 << 31:
            raise DtError(FIELD_OVERFLOW)
        hour, mn, sec = 0, hour, mn
    elif s[cp] == ":":
        sec, cp, overflow = _strtol(s, cp + 1)
        if overflow:
            raise DtError(FIELD_OVERFLOW)
        if cp < len(s):
            if s[cp] != ".":
                raise DtError(BAD_FORMAT)
            fsec = parse_fractional_second(s[cp:])
    else:
        raise DtError(BAD_FORMAT)
    if hour < 0 or not 0 <= mn <= 59 or not 0 <= sec <= 60 or not 0 <= fsec <= USECS_PER_SEC:
        raise DtError(FIELD_OVERFLOW)
    return hour, mn, sec, fsec


def time_overflows(hour: int, mn: int, sec: int, fsec: int) -> bool:
    if hour < 0 or hour > 24 or not 0 <= mn < 60 or not 0 <= sec <= 60:
        return True
    if not 0 <= fsec <= USECS_PER_SEC:
        return True
    return (((hour * 60 + mn) * 60) + sec) * USECS_PER_SEC + fsec > USECS_PER_DAY


class State:
    """Decoder scratch shared by DecodeDate/DecodeNumber/DecodeNumberField."""

    __slots__ = ("date_order", "is2digits")

    def __init__(self, date_order: str) -> None:
        self.date_order = date_order
        self.is2digits = False


def decode_number_field(s: str, fmask: int, tm: Tm, st: State) -> tuple[int, int]:
    """DecodeNumberField(): run-together yyyymmdd / hhmmss[.frac] -> (DTK type, tmask)."""
    cp = s.find(".")
    if cp >= 0:
        tail = s[cp:]
        if len(tail) == 1:
            tm.fsec = 0
        else:
            if not tail[1:].isdigit():
                raise DtError(BAD_FORMAT)
            tm.fsec = round(float("0" + tail) * 1_000_000)
        s = s[:cp]
    elif (fmask & DTK_DATE_M) != DTK_DATE_M and len(s) >= 6:
        n = len(s)
        tm.mday = _atoi(s[n - 2 :])
        tm.mon = _atoi(s[n - 4 : n - 2])
        tm.year = _atoi(s[: n - 4])
        if n - 4 == 2:
            st.is2digits = True
        return DTK_DATE, DTK_DATE_M
    n = len(s)
    if (fmask & DTK_TIME_M) != DTK_TIME_M:
        if n == 6:
            tm.sec = _atoi(s[4:])
            tm.min = _atoi(s[2:4])
            tm.hour = _atoi(s[:2])
            return DTK_TIME, DTK_TIME_M
        if n == 4:
            tm.sec = 0
            tm.min = _atoi(s[2:])
            tm.hour = _atoi(s[:2])
            return DTK_TIME, DTK_TIME_M
    raise DtError(BAD_FORMAT)


def decode_number(s: str, have_text_month: bool, fmask: int, tm: Tm, st: State) -> int:
    """DecodeNumber(): one numeric date field, placed by what is already known."""
    val, cp, overflow = _strtol(s)
    if overflow:
        raise DtError(FIELD_OVERFLOW)
    if cp == 0:
        raise DtError(BAD_FORMAT)
    flen = len(s)
    if cp < flen and s[cp] == ".":
        if cp > 2:
            _, tmask = decode_number_field(s, fmask | DTK_DATE_M, tm, st)
            return tmask
        tm.fsec = parse_fractional_second(s[cp:])
    elif cp < flen:
        raise DtError(BAD_FORMAT)
    if flen == 3 and (fmask & DTK_DATE_M) == M(YEAR) and 1 <= val <= 366:
        tm.yday = val
        return M(DOY) | M(MONTH) | M(DAY)
    known = fmask & DTK_DATE_M
    if known == 0:
        if flen >= 3 or st.date_order == "YMD":
            tmask, tm.year = M(YEAR), val
        elif st.date_order == "DMY":
            tmask, tm.mday = M(DAY), val
        else:
            tmask, tm.mon = M(MONTH), val
    elif known == M(YEAR):
        tmask, tm.mon = M(MONTH), val
    elif known == M(MONTH):
        if have_text_month and (flen >= 3 or st.date_order == "YMD"):
            tmask, tm.year = M(YEAR), val
        else:
            tmask, tm.mday = M(DAY), val
    elif known == M(YEAR) | M(MONTH):
        if have_text_month and flen >= 3 and st.is2digits:
            tm.mday, tm.year = tm.year, val
            st.is2digits = False
        else:
            tm.mday = val
        tmask = M(DAY)
    elif known == M(DAY):
        tmask, tm.mon = M(MONTH), val
    elif known == M(MONTH) | M(DAY):
        tmask, tm.year = M(YEAR), val
    elif known == DTK_DATE_M:
        _, tmask = decode_number_field(s, fmask, tm, st)
        return tmask
    else:
        raise DtError(BAD_FORMAT)
    if tmask == M(YEAR):
        st.is2digits = flen <= 2
    return tmask


def decode_date(s: str, fmask: int, tm: Tm, st: State) -> int:
    """DecodeDate(): a delimited date such as 2001-02-03, 02/03/2001, 2001-Feb-03."""
    parts: list[str] = []
    i, n = 0, len(s)
    while i < n and len(parts) < MAXDATEFIELDS:
        while i < n and s[i] not in _ALNUM:
            i += 1
        if i >= n:
            raise DtError(BAD_FORMAT)
        j = i
        kind = _DIGITS if s[i] in _DIGITS else _ALPHA
        while j < n and s[j] in kind:
            j += 1
        parts.append(s[i:j])
        i = j + 1 if j < n else j
    tmask = 0
    have_text_month = False
    pending: list[str] = []
    for part in parts:
        if part[0] in _ALPHA:
            tok = lookup(DATETKTBL, part)
            if tok is not None and tok[0] == IGNORE_DTF:
                pending.append(part)  # left for DecodeNumber, which rejects it
                continue
            if tok is None or tok[0] != MONTH:
                raise DtError(BAD_FORMAT)
            tm.mon = tok[1]
            have_text_month = True
            if fmask & M(MONTH):
                raise DtError(BAD_FORMAT)
            fmask |= M(MONTH)
            tmask |= M(MONTH)
        else:
            pending.append(part)
    for part in pending:
        if not part:
            raise DtError(BAD_FORMAT)
        dmask = decode_number(part, have_text_month, fmask, tm, st)
        if fmask & dmask:
            raise DtError(BAD_FORMAT)
        fmask |= dmask
        tmask |= dmask
    if (fmask & ~(M(DOY) | M(TZ))) != DTK_DATE_M:
        raise DtError(BAD_FORMAT)
    return tmask


def validate_date(fmask: int, isjulian: bool, is2digits: bool, bc: bool, tm: Tm) -> None:
    """ValidateDate(): year conventions (BC, 2-digit), day of year, month/day ranges."""
    if fmask & M(YEAR):
        if isjulian:
            pass
        elif bc:
            if tm.year <= 0:
                raise DtError(FIELD_OVERFLOW)
            tm.year = -(tm.year - 1)
        elif is2digits:
            if tm.year < 0:
                raise DtError(FIELD_OVERFLOW)
            if tm.year < 70:
                tm.year += 2000
            elif tm.year < 100:
                tm.year += 1900
        elif tm.year <= 0:
            raise DtError(FIELD_OVERFLOW)
    if fmask & M(DOY):
        tm.year, tm.mon, tm.mday = j2date(date2j(tm.year, 1, 1) + tm.yday - 1)
    if fmask & M(MONTH) and not 1 <= tm.mon <= 12:
        raise DtError(MD_FIELD_OVERFLOW)
    if fmask & M(DAY) and not 1 <= tm.mday <= 31:
        raise DtError(MD_FIELD_OVERFLOW)
    full_date = (fmask & DTK_DATE_M) == DTK_DATE_M
    if full_date and tm.mday > DAY_TAB[is_leap(tm.year)][tm.mon - 1]:
        raise DtError(FIELD_OVERFLOW)
