"""DecodeDateTime() and DecodeTimeOnly() of PostgreSQL 15 over ParseDateTime() fields."""

from __future__ import annotations

from pgcloak.crypto.codecs import tzabbrev
from pgcloak.crypto.codecs.base import CodecError
from pgcloak.crypto.codecs.dtparse import (
    ADBC,
    AM,
    AMPM,
    BAD_FORMAT,
    BC,
    DATETKTBL,
    DAY,
    DOW,
    DTK_DATE,
    DTK_DATE_M,
    DTK_DAY,
    DTK_EARLY,
    DTK_EPOCH,
    DTK_HOUR,
    DTK_JULIAN,
    DTK_LATE,
    DTK_MINUTE,
    DTK_MONTH,
    DTK_NUMBER,
    DTK_SECOND,
    DTK_SPECIAL,
    DTK_STRING,
    DTK_TIME,
    DTK_TIME_M,
    DTK_TZ,
    DTK_YEAR,
    DTK_ZULU,
    DTZ,
    DTZMOD,
    DYNTZ,
    FIELD_OVERFLOW,
    HOUR,
    HR24,
    IGNORE_DTF,
    ISOTIME,
    MINUTE,
    MONTH,
    PM,
    RESERV,
    SECOND,
    TOKMAXLEN,
    TZ,
    UNITS,
    UNIX_EPOCH_JDATE,
    UNKNOWN_FIELD,
    USECS_PER_DAY,
    YEAR,
    DtError,
    M,
    State,
    Tm,
    Unsupported,
    _strtol,
    date2j,
    decode_date,
    decode_number,
    decode_number_field,
    decode_time,
    decode_timezone,
    is_valid_julian,
    j2date,
    lookup,
    parse_fractional_second,
    time_overflows,
    validate_date,
)
from pgcloak.crypto.codecs.tz import Zone, find_zone

_FULL_RANGE = 0x7FFF


def _zone(name: str) -> Zone | None:
    return find_zone(name)


def _bad_zone(name: str) -> CodecError:
    return CodecError("22023", f'time zone "{name}" not recognized')


def zone_offset(tm: Tm, zone: Zone) -> int:
    """DetermineTimeZoneOffset(): tzp (seconds west) of a local time in `zone`."""
    fixed = zone.fixed_offset()
    if fixed is not None:
        return -fixed
    if not is_valid_julian(tm.year, tm.mon, tm.mday):
        return 0
    day = date2j(tm.year, tm.mon, tm.mday) - UNIX_EPOCH_JDATE
    local = day * 86400 + tm.sec + (tm.min + tm.hour * 60) * 60
    return -zone.local_offset(local)


def abbrev_zone_offset(tm: Tm, abbrev: str, zone: Zone) -> int:
    """DetermineTimeZoneAbbrevOffset(): a dynamic abbreviation's meaning at that time."""
    tzp = zone_offset(tm, zone)
    if is_valid_julian(tm.year, tm.mon, tm.mday):
        day = date2j(tm.year, tm.mon, tm.mday) - UNIX_EPOCH_JDATE
        t = day * 86400 + tm.sec + (tm.min + tm.hour * 60) * 60 + tzp
    else:
        t = 0
    east = zone.abbrev_offset(abbrev.upper(), t)
    return tzp if east is None else -east


def decode_abbrev(field: str) -> tuple[int, int, Zone | None]:
    """DecodeTimezoneAbbrev(): (type, value, zone) from the Default abbreviation set."""
    key = field if len(field) <= TOKMAXLEN else field[:TOKMAXLEN]
    fixed = tzabbrev.FIXED.get(key)
    if fixed is not None:
        return (DTZ if fixed[1] else TZ), fixed[0], None
    dyn = tzabbrev.DYNAMIC.get(key)
    if dyn is not None:
        zone = find_zone(dyn)
        if zone is None:
            raise CodecError(
                "F0000",
                f'time zone "{dyn}" not recognized',
                "This time zone name appears in the configuration file for time zone"
                f' abbreviation "{field}".',
            )
        return DYNTZ, 0, zone
    return UNKNOWN_FIELD, 0, None


class _Decoder:
    """The state DecodeDateTime()/DecodeTimeOnly() keep across fields."""

    def __init__(self, date_order: str, session: Zone, time_only: bool) -> None:
        self.tm = Tm()
        self.tm.tz = 0
        self.st = State(date_order)
        self.session = session
        self.time_only = time_only
        self.fmask = 0
        self.ptype = 0
        self.mer = HR24
        self.have_text_month = False
        self.isjulian = False
        self.bc = False
        self.named: Zone | None = None
        self.abbrev_zone: Zone | None = None
        self.abbrev = ""
        self.dtype = DTK_TIME if time_only else DTK_DATE
        self.clock: str | None = None  # 'now', 'today'...: decoded with a stand-in clock

    def labelled_number(self, field: str) -> int:
        """A number after a unit label ('j', 't', 'y', ...): PostgreSQL 15's ptype switch."""
        tm, ptype = self.tm, self.ptype
        val, cp, overflow = _strtol(field)
        if overflow:
            raise DtError(FIELD_OVERFLOW)
        rest = field[cp:]
        if rest[:1] == ".":
            if ptype not in (DTK_JULIAN, DTK_TIME, DTK_SECOND):
                raise DtError(BAD_FORMAT)
        elif rest:
            raise DtError(BAD_FORMAT)
        if ptype == DTK_YEAR:
            tm.year, tmask = val, M(YEAR)
        elif ptype == DTK_MONTH:
            if self.fmask & M(MONTH) and self.fmask & M(HOUR):
                tm.min, tmask = val, M(MINUTE)
            else:
                tm.mon, tmask = val, M(MONTH)
        elif ptype == DTK_DAY:
            tm.mday, tmask = val, M(DAY)
        elif ptype == DTK_HOUR:
            tm.hour, tmask = val, M(HOUR)
        elif ptype == DTK_MINUTE:
            tm.min, tmask = val, M(MINUTE)
        elif ptype == DTK_SECOND:
            tm.sec, tmask = val, M(SECOND)
            if rest:
                tm.fsec = parse_fractional_second(rest)
                tmask = M(SECOND) | M(13) | M(14)
        elif ptype == DTK_JULIAN:
            if val < 0:
                raise DtError(FIELD_OVERFLOW)
            tmask = DTK_DATE_M
            tm.year, tm.mon, tm.mday = j2date(val)
            self.isjulian = True
            if rest:
                # Fractional Julian day: dt2time() of the truncated microseconds.
                if not rest[1:].isdigit():
                    raise DtError(BAD_FORMAT)
                t = int(float("0" + rest) * USECS_PER_DAY)
                tm.hour, t = divmod(t, 3_600_000_000)
                tm.min, t = divmod(t, 60_000_000)
                tm.sec, tm.fsec = divmod(t, 1_000_000)
                tmask |= DTK_TIME_M
        elif ptype == DTK_TIME:
            _, tmask = decode_number_field(field, self.fmask | DTK_DATE_M, tm, self.st)
            if tmask != DTK_TIME_M:
                raise DtError(BAD_FORMAT)
        else:
            raise DtError(BAD_FORMAT)
        self.ptype = 0
        self.dtype = DTK_DATE
        return tmask

    def field(self, i: int, fields: list[str], ftypes: list[int]) -> int | None:
        """One field; returns its tmask, or None for an ignorable field."""
        f, ftype, tm = fields[i], ftypes[i], self.tm
        if ftype == DTK_DATE:
            return self.date_field(i, fields, ftypes)
        if ftype == DTK_TIME:
            if self.ptype != 0 and not self.time_only:
                if self.ptype != DTK_TIME:
                    raise DtError(BAD_FORMAT)
                self.ptype = 0
            hour, mn, sec, fsec = decode_time(f, _FULL_RANGE)
            if hour > 2147483647:
                raise DtError(FIELD_OVERFLOW)
            tm.hour, tm.min, tm.sec, tm.fsec = hour, mn, sec, fsec
            if not self.time_only and time_overflows(hour, mn, sec, fsec):
                raise DtError(FIELD_OVERFLOW)
            return DTK_TIME_M
        if ftype == DTK_TZ:
            tm.tz = decode_timezone(f)
            return M(TZ)
        if ftype == DTK_NUMBER:
            if self.ptype != 0:
                return self.labelled_number(f)
            return self.plain_number(i, fields, ftypes)
        if ftype in (DTK_STRING, DTK_SPECIAL):
            return self.word(i, fields, ftypes)
        raise DtError(BAD_FORMAT)

    def date_field(self, i: int, fields: list[str], ftypes: list[int]) -> int:
        f, tm = fields[i], self.tm
        if self.time_only:
            nf = len(fields)
            if i == 0 and nf >= 2 and (ftypes[nf - 1] == DTK_DATE or ftypes[1] == DTK_TIME):
                return decode_date(f, self.fmask, tm, self.st)
            if f[:1].isdigit():
                if (self.fmask & DTK_TIME_M) == DTK_TIME_M:
                    raise DtError(BAD_FORMAT)
                return self._time_with_zone(f, self.fmask | DTK_DATE_M)
            return self._named_zone(f)
        if self.ptype == DTK_JULIAN:
            jday, cp, overflow = _strtol(f)
            if overflow or jday < 0:
                raise DtError(FIELD_OVERFLOW)
            tm.year, tm.mon, tm.mday = j2date(jday)
            self.isjulian = True
            tm.tz = decode_timezone(f[cp:])
            self.ptype = 0
            return DTK_DATE_M | DTK_TIME_M | M(TZ)
        if self.ptype != 0 or (self.fmask & (M(MONTH) | M(DAY))) == (M(MONTH) | M(DAY)):
            if f[:1].isdigit() or self.ptype != 0:
                if self.ptype != 0:
                    if self.ptype != DTK_TIME:
                        raise DtError(BAD_FORMAT)
                    self.ptype = 0
                if (self.fmask & DTK_TIME_M) == DTK_TIME_M:
                    raise DtError(BAD_FORMAT)
                return self._time_with_zone(f, self.fmask)
            return self._named_zone(f)
        return decode_date(f, self.fmask, tm, self.st)

    def _time_with_zone(self, f: str, fmask: int) -> int:
        """hhmmss-zz: a run-together time with a trailing numeric zone."""
        cut = f.find("-")
        if cut < 0:
            raise DtError(BAD_FORMAT)
        self.tm.tz = decode_timezone(f[cut:])
        _, tmask = decode_number_field(f[:cut], fmask, self.tm, self.st)
        return tmask | M(TZ)

    def _named_zone(self, f: str) -> int:
        zone = _zone(f)
        if zone is None:
            raise _bad_zone(f)
        self.named = zone
        return M(TZ)

    def plain_number(self, i: int, fields: list[str], ftypes: list[int]) -> int:
        f, tm, fmask = fields[i], self.tm, self.fmask
        flen = len(f)
        dot = f.find(".")
        if self.time_only:
            if dot >= 0:
                nf = len(fields)
                if i == 0 and nf >= 2 and ftypes[nf - 1] == DTK_DATE:
                    return decode_date(f, fmask, tm, self.st)
                if dot > 2:
                    return decode_number_field(f, fmask | DTK_DATE_M, tm, self.st)[1]
                raise DtError(BAD_FORMAT)
            if flen > 4:
                return decode_number_field(f, fmask | DTK_DATE_M, tm, self.st)[1]
            return decode_number(f, False, fmask | DTK_DATE_M, tm, self.st)
        if dot >= 0 and not fmask & DTK_DATE_M:
            return decode_date(f, fmask, tm, self.st)
        if dot > 2:
            return decode_number_field(f, fmask, tm, self.st)[1]
        if flen >= 6 and (not fmask & DTK_DATE_M or not fmask & DTK_TIME_M):
            return decode_number_field(f, fmask, tm, self.st)[1]
        return decode_number(f, self.have_text_month, fmask, tm, self.st)

    def word(self, i: int, fields: list[str], ftypes: list[int]) -> int | None:
        f, tm = fields[i], self.tm
        kind, val, zone = decode_abbrev(f)
        if kind == UNKNOWN_FIELD:
            tok = lookup(DATETKTBL, f)
            kind, val = tok if tok is not None else (UNKNOWN_FIELD, 0)
        if kind == IGNORE_DTF:
            return None
        tmask = M(kind)
        if kind == RESERV:
            if val == DTK_ZULU:
                tm.hour = tm.min = tm.sec = 0
                tm.tz = 0
                self.dtype = DTK_TIME if self.time_only else DTK_DATE
                return DTK_TIME_M | M(TZ)
            if not self.time_only and val in (DTK_EPOCH, DTK_LATE, DTK_EARLY):
                # PostgreSQL 15 keeps tmask = DTK_M(RESERV) here: 'epoch jan' is accepted.
                self.dtype = val
                return tmask
            if val in (12, 13, 14, 15):  # now, yesterday, today, tomorrow
                if self.time_only and val != 12:
                    raise DtError(BAD_FORMAT)
                # The value needs the server's clock (refused once the whole text
                # decoded): go on with a stand-in date so that a text PostgreSQL
                # rejects ('today tomorrow') gets PostgreSQL's error, not the refusal.
                self.clock = f
                self.dtype = DTK_TIME if self.time_only else DTK_DATE
                tm.year, tm.mon, tm.mday = 2000, 1, 1
                if val != 12:
                    return DTK_DATE_M
                tm.hour = tm.min = tm.sec = tm.fsec = 0
                if self.time_only:
                    return DTK_TIME_M
                tm.tz = 0
                return DTK_DATE_M | DTK_TIME_M | M(TZ)
            raise DtError(BAD_FORMAT)
        if kind == MONTH:
            if self.time_only:
                raise DtError(BAD_FORMAT)
            if (
                self.fmask & M(MONTH)
                and not self.have_text_month
                and not self.fmask & M(DAY)
                and 1 <= tm.mon <= 31
            ):
                tm.mday = tm.mon
                tmask = M(DAY)
            self.have_text_month = True
            tm.mon = val
            return tmask
        if kind == DTZMOD:
            assert tm.tz is not None
            tm.tz -= val
            tm.isdst = 1
            return tmask | M(DTZ)
        if kind == DTZ:
            tm.tz = -val
            tm.isdst = 1
            return tmask | M(TZ)
        if kind == TZ:
            tm.tz = -val
            tm.isdst = 0
            return tmask
        if kind == DYNTZ:
            self.abbrev_zone = zone
            self.abbrev = f
            return tmask | M(TZ)
        if kind == AMPM:
            self.mer = val
            return tmask
        if kind == ADBC:
            self.bc = val == BC
            return tmask
        if kind == DOW and not self.time_only:
            tm.wday = val
            return tmask
        if kind == UNITS:
            self.ptype = val
            return 0
        if kind == ISOTIME:
            if not self.time_only and (self.fmask & DTK_DATE_M) != DTK_DATE_M:
                raise DtError(BAD_FORMAT)
            if i >= len(fields) - 1 or ftypes[i + 1] not in (DTK_NUMBER, DTK_TIME, DTK_DATE):
                raise DtError(BAD_FORMAT)
            self.ptype = val
            return 0
        if kind == UNKNOWN_FIELD:
            zone = _zone(f)
            if zone is None:
                raise DtError(BAD_FORMAT)
            self.named = zone
            return M(TZ)
        raise DtError(BAD_FORMAT)


def _run(d: _Decoder, fields: list[str], ftypes: list[int]) -> None:
    for i in range(len(fields)):
        tmask = d.field(i, fields, ftypes)
        if tmask is None:
            continue
        if tmask & d.fmask:
            raise DtError(BAD_FORMAT)
        d.fmask |= tmask


def _apply_meridian(d: _Decoder) -> None:
    tm = d.tm
    if d.mer != HR24 and tm.hour > 12:
        raise DtError(FIELD_OVERFLOW)
    if d.mer == AM and tm.hour == 12:
        tm.hour = 0
    elif d.mer == PM and tm.hour != 12:
        tm.hour += 12


def decode_datetime(
    fields: list[str], ftypes: list[int], date_order: str, session: Zone, want_tz: bool
) -> tuple[int, Tm]:
    """DecodeDateTime() with a zone allowed: (dtype, tm with tm.tz = tzp seconds west).

    The zone offset is only resolved when `want_tz` (timestamptz); date and
    timestamp parse zones but discard the offset.
    """
    d = _Decoder(date_order, session, time_only=False)
    _run(d, fields, ftypes)
    tm = d.tm
    validate_date(d.fmask, d.isjulian, d.st.is2digits, d.bc, tm)
    _apply_meridian(d)
    if d.dtype == DTK_DATE:
        if (d.fmask & DTK_DATE_M) != DTK_DATE_M:
            raise DtError(BAD_FORMAT)
        if d.named is not None:
            if d.fmask & M(DTZMOD):
                raise DtError(BAD_FORMAT)
            if want_tz:
                tm.tz = zone_offset(tm, d.named)
        if d.abbrev_zone is not None:
            if d.fmask & M(DTZMOD):
                raise DtError(BAD_FORMAT)
            if want_tz:
                tm.tz = abbrev_zone_offset(tm, d.abbrev, d.abbrev_zone)
        if not d.fmask & M(TZ):
            if d.fmask & M(DTZMOD):
                raise DtError(BAD_FORMAT)
            if want_tz:
                tm.tz = zone_offset(tm, session)
    if d.clock is not None:
        raise Unsupported(d.clock)
    return d.dtype, tm


def decode_time_only(fields: list[str], ftypes: list[int], date_order: str, session: Zone) -> Tm:
    """DecodeTimeOnly() as time_in uses it (zone parsed, then ignored)."""
    d = _Decoder(date_order, session, time_only=True)
    _run(d, fields, ftypes)
    tm = d.tm
    validate_date(d.fmask, d.isjulian, d.st.is2digits, d.bc, tm)
    _apply_meridian(d)
    if time_overflows(tm.hour, tm.min, tm.sec, tm.fsec):
        raise DtError(FIELD_OVERFLOW)
    if (d.fmask & DTK_TIME_M) != DTK_TIME_M:
        raise DtError(BAD_FORMAT)
    date_part = d.fmask & DTK_DATE_M
    if d.named is not None:
        if d.fmask & M(DTZMOD):
            raise DtError(BAD_FORMAT)
        if d.named.fixed_offset() is None and date_part != DTK_DATE_M:
            raise DtError(BAD_FORMAT)
    if d.abbrev_zone is not None or not d.fmask & M(TZ):
        if d.fmask & M(DTZMOD):
            raise DtError(BAD_FORMAT)
        if date_part and date_part != DTK_DATE_M:
            raise DtError(BAD_FORMAT)
    if d.clock is not None:
        raise Unsupported(d.clock)
    return tm
