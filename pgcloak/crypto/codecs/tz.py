"""Time zones as PostgreSQL resolves them: IANA names, POSIX offsets, abbreviations.

Offsets use PostgreSQL's internal sign (`tzp`: seconds *west* of UTC) at the
decode boundary and ISO's sign (seconds east) inside `Zone`. Times are Unix
seconds. zoneinfo covers years 1..9999; outside that a zone repeats its
400-year rule cycle (future) or its earliest offset (past), as tzcode does.
"""

from __future__ import annotations

import functools
import os
import struct
import zoneinfo
from abc import ABC, abstractmethod
from datetime import datetime, timedelta

from pgcloak.crypto.codecs.base import CodecError

_CYCLE = 146097 * 86400  # seconds in 400 Gregorian years
_MIN_SAFE = -62135596800 + 2 * 86400  # 0001-01-03
_MAX_SAFE = 253402300799 - 2 * 86400  # 9999-12-29
_EPOCH = datetime(1970, 1, 1)


class Zone(ABC):
    """A time zone: offset (seconds east) and abbreviation for instants and local times."""

    name = ""

    @abstractmethod
    def at_utc(self, t: int) -> tuple[int, str]:
        """pg_localtime(): offset and abbreviation in effect at Unix time `t`."""

    @abstractmethod
    def local_offset(self, local: int) -> int:
        """DetermineTimeZoneOffset(): offset for a local wall time (seconds east)."""

    def fixed_offset(self) -> int | None:
        """pg_get_timezone_offset(): the offset if the zone never changes it."""
        return None

    def local_offset_fields(self, fields: tuple[int, int, int, int, int, int]) -> int:
        """local_offset() for a broken-down wall time (year 1..9999)."""
        dt = datetime(*fields)
        return self.local_offset(int((dt - _EPOCH).total_seconds()))

    def abbrev_offset(self, abbrev: str, t: int) -> int | None:
        """pg_interpret_timezone_abbrev(): what `abbrev` meant in this zone around `t`."""
        return None


class FixedZone(Zone):
    def __init__(self, offset: int, abbrev: str, name: str) -> None:
        self.offset = offset
        self.abbrev = abbrev
        self.name = name

    def at_utc(self, t: int) -> tuple[int, str]:
        return self.offset, self.abbrev

    def local_offset(self, local: int) -> int:
        return self.offset

    def fixed_offset(self) -> int | None:
        return self.offset

    def abbrev_offset(self, abbrev: str, t: int) -> int | None:
        return self.offset if abbrev == self.abbrev.upper() else None


def _clamp(t: int) -> int:
    """Bring a time into zoneinfo's range without changing its offset."""
    if t > _MAX_SAFE:
        return t - ((t - _MAX_SAFE) // _CYCLE + 1) * _CYCLE
    if t < _MIN_SAFE:
        return _MIN_SAFE
    return t


class IanaZone(Zone):
    def __init__(self, key: str) -> None:
        self.name = key
        self._zi = zoneinfo.ZoneInfo(key)
        self._tzif: _TzifData | bool | None = False

    def at_utc(self, t: int) -> tuple[int, str]:
        dt = datetime.fromtimestamp(_clamp(t), self._zi)
        off = dt.utcoffset()
        assert off is not None
        return int(off.total_seconds()), dt.tzname() or ""

    def local_offset(self, local: int) -> int:
        naive = _EPOCH + timedelta(seconds=_clamp(local))
        o0 = naive.replace(tzinfo=self._zi).utcoffset()
        o1 = naive.replace(tzinfo=self._zi, fold=1).utcoffset()
        assert o0 is not None and o1 is not None
        # Spring-forward gaps take the earlier offset, fall-back overlaps the later
        # one: in both cases the smaller of the two.
        return int(min(o0, o1).total_seconds())

    def local_offset_fields(self, fields: tuple[int, int, int, int, int, int]) -> int:
        zi = self._zi
        o0 = datetime(*fields, tzinfo=zi).utcoffset()
        o1 = datetime(*fields, tzinfo=zi, fold=1).utcoffset()
        assert o0 is not None and o1 is not None
        return int(min(o0, o1).total_seconds())

    def _data(self) -> _TzifData | None:
        if self._tzif is False:
            self._tzif = _read_tzif(self.name)
        return self._tzif if isinstance(self._tzif, _TzifData) else None

    def fixed_offset(self) -> int | None:
        data = self._data()
        if data is None:
            return None
        offsets = {utoff for utoff, _, _ in data.types}
        return offsets.pop() if len(offsets) == 1 else None

    def abbrev_offset(self, abbrev: str, t: int) -> int | None:
        data = self._data()
        if data is None:
            return None
        indexes = [i for i, (_, _, name) in enumerate(data.types) if name == abbrev]
        if not indexes:
            return None
        wanted = set(indexes)
        cutoff = 0
        lo, hi = 0, len(data.times)
        while lo < hi:
            mid = (lo + hi) >> 1
            if t < data.times[mid]:
                hi = mid
            else:
                lo = mid + 1
        cutoff = lo
        for i in range(cutoff - 1, -1, -1):
            if data.idx[i] in wanted:
                return data.types[data.idx[i]][0]
        for i in range(cutoff, len(data.times)):
            if data.idx[i] in wanted:
                return data.types[data.idx[i]][0]
        return None


class _TzifData:
    """Transition times, their type indexes, and (utoff, isdst, abbreviation) types."""

    def __init__(
        self, times: list[int], idx: list[int], types: list[tuple[int, bool, str]]
    ) -> None:
        self.times = times
        self.idx = idx
        self.types = types


def _read_tzif(key: str) -> _TzifData | None:
    """Parse the TZif file zoneinfo would use (64-bit block when present)."""
    for base in zoneinfo.TZPATH:
        path = os.path.join(base, key)
        if os.path.isfile(path):
            break
    else:
        return None
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] != b"TZif":
        return None

    def block(offset: int, long: bool) -> tuple[_TzifData, int]:
        counts = struct.unpack_from(">6l", raw, offset + 20)
        isut, isstd, leap, timecnt, typecnt, charcnt = counts
        size = 8 if long else 4
        pos = offset + 44
        times = list(struct.unpack_from(f">{timecnt}{'q' if long else 'l'}", raw, pos))
        pos += timecnt * size
        idx = list(raw[pos : pos + timecnt])
        pos += timecnt
        ttinfos = [struct.unpack_from(">lBB", raw, pos + 6 * i) for i in range(typecnt)]
        pos += 6 * typecnt
        chars = raw[pos : pos + charcnt]
        pos += charcnt + leap * (size + 4) + isstd + isut
        types = []
        for utoff, isdst, desig in ttinfos:
            end = chars.index(b"\x00", desig)
            types.append((utoff, bool(isdst), chars[desig:end].decode("ascii", "replace")))
        return _TzifData(times, idx, types), pos

    data, end = block(0, False)
    if raw[4:5] >= b"2" and raw[end : end + 4] == b"TZif":
        data, _ = block(end, True)
    return data


class PosixRulesUnsupported(Exception):
    """A POSIX TZ string with daylight-saving rules: valid for PostgreSQL, not modelled here."""


def _posix_number(spec: str, pos: int, lo: int, hi: int) -> tuple[int, int] | None:
    """tzcode getnum(): digits in lo..hi -> (value, end)."""
    end = pos
    while end < len(spec) and spec[end].isdigit():
        end += 1
    if end == pos:
        return None
    value = int(spec[pos:end])
    return (value, end) if lo <= value <= hi else None


def _posix_offset(spec: str, pos: int) -> tuple[int, int] | None:
    """tzcode getoffset(): [+-]hh[:mm[:ss]] -> (seconds, POSIX sign: west positive)."""
    sign = 1
    if pos < len(spec) and spec[pos] in "+-":
        sign = -1 if spec[pos] == "-" else 1
        pos += 1
    total = 0
    for i, (top, unit) in enumerate(((167, 3600), (59, 60), (60, 1))):
        got = _posix_number(spec, pos, 0, top)
        if got is None:
            return None
        total += got[0] * unit
        pos = got[1]
        if i < 2 and pos < len(spec) and spec[pos] == ":":
            pos += 1
        else:
            break
    return sign * total, pos


def _posix_name(spec: str, pos: int) -> tuple[str, int] | None:
    """getzname()/getqzname(): '<...>' or a run without digits, ',', '-', '+'."""
    if spec[pos : pos + 1] == "<":
        close = spec.find(">", pos)
        return None if close < 0 else (spec[pos + 1 : close], close + 1)
    end = pos
    while end < len(spec) and not spec[end].isdigit() and spec[end] not in ",-+":
        end += 1
    return spec[pos:end], end


def _posix_rule(spec: str, pos: int) -> int | None:
    """getrule(): Jn, n or Mm.w.d, optionally /time."""
    if spec[pos : pos + 1] == "J":
        got = _posix_number(spec, pos + 1, 1, 365)
    elif spec[pos : pos + 1] == "M":
        got = _posix_number(spec, pos + 1, 1, 12)
        for lo, hi in ((1, 5), (0, 6)):
            if got is None or spec[got[1] : got[1] + 1] != ".":
                return None
            got = _posix_number(spec, got[1] + 1, lo, hi)
    else:
        got = _posix_number(spec, pos, 0, 365)
    if got is None:
        return None
    pos = got[1]
    if spec[pos : pos + 1] == "/":
        off = _posix_offset(spec, pos + 1)
        return None if off is None else off[1]
    return pos


def _posix_fixed(spec: str) -> Zone | None:
    """tzparse() of PostgreSQL's tzcode: 'STDoffset[DST[offset][,rule,rule]]'."""
    named = _posix_name(spec, 0)
    if named is None or named[1] >= len(spec):
        return None
    name, pos = named
    off = _posix_offset(spec, pos)
    if off is None:
        return None
    west, pos = off
    if pos == len(spec):
        return FixedZone(-west, name, spec)
    dst = _posix_name(spec, pos)
    if dst is None or not dst[0]:
        return None
    pos = dst[1]
    if pos < len(spec) and spec[pos] not in ",;":
        off = _posix_offset(spec, pos)
        if off is None:
            return None
        pos = off[1]
    if pos < len(spec):
        if spec[pos] not in ",;":
            return None
        end = _posix_rule(spec, pos + 1)
        if end is None or spec[end : end + 1] != ",":
            return None
        end = _posix_rule(spec, end + 1)
        if end != len(spec):
            return None
    return PosixDstZone(spec)


class PosixDstZone(Zone):
    """A POSIX TZ string with DST rules: PostgreSQL accepts it; offsets are not modelled."""

    def __init__(self, spec: str) -> None:
        self.name = spec

    def at_utc(self, t: int) -> tuple[int, str]:
        raise PosixRulesUnsupported(self.name)

    def local_offset(self, local: int) -> int:
        raise PosixRulesUnsupported(self.name)


@functools.lru_cache(maxsize=1)
def _zone_keys() -> dict[str, str]:
    """Case-insensitive zone name lookup, as pg_tzset() does."""
    return {key.lower(): key for key in zoneinfo.available_timezones()}


@functools.lru_cache(maxsize=512)
def find_zone(name: str) -> Zone | None:
    """pg_tzset(): a tz database zone (any case) or a POSIX fixed-offset spec; else None."""
    upper = name.upper()
    if upper == "GMT":
        return FixedZone(0, "GMT", "GMT")
    if upper in ("UTC", "ETC/UTC", "UCT", "ZULU", "ETC/UCT", "ETC/ZULU", "UNIVERSAL"):
        return FixedZone(0, "UTC", name)
    key = _zone_keys().get(name.lower())
    if key is not None:
        try:
            return IanaZone(key)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            return None
    if name[:1] == ":":
        return None
    return _posix_fixed(upper)


@functools.lru_cache(maxsize=64)
def session_zone(name: str) -> Zone:
    """The zone named by the TimeZone GUC; refuse what this module cannot model."""
    zone = find_zone(name)
    if zone is None or isinstance(zone, PosixDstZone):
        raise CodecError("0A000", f'pgcloak does not support the time zone setting "{name}"')
    return zone
