"""float4 and float8: float4in/float8in over glibc strto[fd], Ryu-style shortest output."""

from __future__ import annotations

import math
import re
import struct
from fractions import Fraction

from pgcloak.crypto.codecs.base import (
    WHITESPACE,
    CodecError,
    SessionFormat,
    check_length,
    invalid_syntax,
    reject_nul,
)

_D = struct.Struct(">d")
_F = struct.Struct(">f")
_I32 = struct.Struct(">I")
_I64 = struct.Struct(">Q")

# What glibc strtod() consumes (after leading whitespace, which PostgreSQL skips first).
_DECIMAL = re.compile(r"([+-]?)((?:[0-9]+\.?[0-9]*|\.[0-9]+))((?:[eE][+-]?[0-9]+)?)")
_HEX = re.compile(
    r"([+-]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+))((?:[pP][+-]?[0-9]+)?)"
)
_SPECIAL = re.compile(r"([+-]?)(?:(infinity|inf)|(nan)(\([0-9A-Za-z_]*\))?)", re.IGNORECASE)


class _Parsed:
    """What strtod() reported: value, characters used, and whether it set ERANGE."""

    __slots__ = ("end", "erange", "exact", "special", "value")

    def __init__(
        self, value: float, end: int, erange: bool, exact: Fraction | str | None, special: bool
    ) -> None:
        self.value = value
        self.end = end
        self.erange = erange
        self.exact = exact
        self.special = special


def _strtod(s: str) -> _Parsed | None:
    """glibc strtod() on `s` (leading whitespace already skipped); None if nothing parses."""
    m = _SPECIAL.match(s)
    if m is not None:
        neg = m.group(1) == "-"
        value = math.inf if m.group(2) is not None else math.nan
        return _Parsed(-value if neg else value, m.end(), False, None, True)
    m = _HEX.match(s)
    if m is not None:
        intpart, _, frac = m.group(2).partition(".")
        exp = int(m.group(3)[1:]) if m.group(3) else 0
        num = int((intpart + frac) or "0", 16)
        exact = Fraction(num) * Fraction(2) ** (exp - 4 * len(frac))
        if m.group(1) == "-":
            exact = -exact
        try:
            value = float(exact)
        except OverflowError:
            return _Parsed(math.copysign(math.inf, exact), m.end(), True, exact, False)
        return _Parsed(value, m.end(), value == 0.0 and num != 0, exact, False)
    m = _DECIMAL.match(s)
    if m is None:
        return None
    number = m.group(0)
    value = float(number)
    nonzero = m.group(2).strip("0.") != ""
    erange = math.isinf(value) or (value == 0.0 and nonzero)
    return _Parsed(value, m.end(), erange, number, False)


def _f32_bits(value: float, exact: Fraction | str) -> int | None:
    """Round a double (itself rounded from `exact`) to float32 like strtof(); None on overflow."""
    try:
        bits: int = _I32.unpack(_F.pack(value))[0]
    except OverflowError:
        return None
    magnitude = bits & 0x7FFFFFFF
    if magnitude >= 0x7F800000:
        return None
    as_float: float = _F.unpack(_I32.pack(bits))[0]
    if as_float == value:
        return bits
    # Double rounding can only go wrong when the double sits exactly between two floats.
    other_mag = magnitude + 1 if abs(value) > abs(as_float) else magnitude - 1
    if other_mag < 0 or other_mag > 0x7F800000:
        return bits
    other_bits = (bits & 0x80000000) | other_mag
    if other_mag == 0x7F800000:
        # Between FLT_MAX and "2^128": the overflow threshold itself.
        other = math.copysign(2.0**128, value)
    else:
        other = _F.unpack(_I32.pack(other_bits))[0]
    if (as_float + other) / 2 != value:
        return bits
    true = Fraction(exact) if isinstance(exact, str) else exact
    if true == Fraction(value):
        return bits  # a genuine tie: the C cast already rounded half to even
    if abs(true - Fraction(as_float)) > abs(true - Fraction(other)):
        return None if other_mag == 0x7F800000 else other_bits
    return bits


def _parse(text: str, single: bool) -> bytes:
    typname = "real" if single else "double precision"
    num = text.lstrip(WHITESPACE)
    parsed = _strtod(num) if num else None
    if parsed is None:
        reject_nul(text)
        raise invalid_syntax(typname, text)
    value = parsed.value
    bits = None
    if single and not parsed.special and not parsed.erange:
        # strtof() reports ERANGE before PostgreSQL looks for trailing junk.
        assert parsed.exact is not None
        bits = _f32_bits(value, parsed.exact)
        if bits is None or (bits & 0x7FFFFFFF == 0 and value != 0.0):
            reject_nul(text)
            raise CodecError("22003", f'"{text}" is out of range for type real')
    if parsed.erange:
        reject_nul(text)
        shown = text if single else num[: parsed.end]
        raise CodecError("22003", f'"{shown}" is out of range for type {typname}')
    if num[parsed.end :].strip(WHITESPACE):
        reject_nul(text)
        raise invalid_syntax(typname, text)
    if bits is not None:
        return _I32.pack(bits)
    if math.isnan(value):
        negative = math.copysign(1.0, value) < 0
        if single:
            return b"\xff\xc0\x00\x00" if negative else b"\x7f\xc0\x00\x00"
        return (b"\xff\xf8" if negative else b"\x7f\xf8") + bytes(6)
    return _F.pack(value) if single else _D.pack(value)


# -- output ------------------------------------------------------------------------


def _special(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return None


def _digits_of_repr(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of a double (Python's repr) as (digits, exponent10)."""
    r = repr(abs(value))
    mant, _, exp = r.partition("e")
    intpart, _, frac = mant.partition(".")
    e10 = (int(exp) if exp else 0) - len(frac)
    digits = (intpart + frac).lstrip("0")
    stripped = digits.rstrip("0")
    e10 += len(digits) - len(stripped)
    return stripped or "0", e10


def _format_shortest(neg: bool, digits: str, e10: int, fixed_limit: int) -> str:
    """PostgreSQL's Ryu to_chars(): fixed notation for -4 <= X < limit, else d.ddde+XX."""
    if digits == "0":
        return "-0" if neg else "0"
    sign = "-" if neg else ""
    n = len(digits)
    x = n - 1 + e10  # scientific exponent
    if -4 <= x < fixed_limit:
        if e10 >= 0:
            return sign + digits + "0" * e10
        point = n + e10
        if point > 0:
            return sign + digits[:point] + "." + digits[point:]
        return sign + "0." + "0" * (-point) + digits
    mant = digits[0] + ("." + digits[1:] if n > 1 else "")
    exp_sign = "-" if x < 0 else "+"
    return f"{sign}{mant}e{exp_sign}{abs(x):02d}"


class _Interval:
    """The decimals that round back to a float: PostgreSQL's Ryu excludes both bounds.

    Values are integers N standing for N * 2**(e - 2), so all comparisons are exact.
    """

    __slots__ = ("e", "lower", "upper", "x")

    def __init__(self, m: int, e: int, lower_gap_halved: bool) -> None:
        self.e = e
        self.x = 4 * m
        self.upper = 4 * m + 2
        self.lower = 4 * m - 1 if lower_gap_halved else 4 * m - 2

    def _scaled(self, c: int, k: int, n: int) -> tuple[int, int]:
        """(c * 10**k, n * 2**(e-2)) multiplied to a common integer scale."""
        lhs, rhs = c, n
        if k >= 0:
            lhs *= 10**k
        else:
            rhs *= 10**-k
        if self.e >= 2:
            rhs <<= self.e - 2
        else:
            lhs <<= 2 - self.e
        return lhs, rhs

    def inside(self, c: int, k: int) -> bool:
        lo_l, lo_r = self._scaled(c, k, self.lower)
        if lo_l <= lo_r:
            return False
        up_l, up_r = self._scaled(c, k, self.upper)
        return up_l < up_r

    def on_bound(self, c: int, k: int) -> bool:
        lo_l, lo_r = self._scaled(c, k, self.lower)
        up_l, up_r = self._scaled(c, k, self.upper)
        return lo_l == lo_r or up_l == up_r

    def divide(self, k: int) -> tuple[int, int, int]:
        """floor(x / 10**k) with remainder and divisor, for rounding."""
        num, den = self.x, 1
        if k >= 0:
            den *= 10**k
        else:
            num *= 10**-k
        if self.e >= 2:
            num <<= self.e - 2
        else:
            den <<= 2 - self.e
        q, r = divmod(num, den)
        return q, r, den

    def shortest(self, max_digits: int, approx: float) -> tuple[str, int]:
        """Ryu's result: fewest digits strictly inside, nearest to x (ties to even)."""
        top = math.floor(math.log10(approx))
        while self.divide(top)[0] == 0:
            top -= 1
        while self.divide(top + 1)[0] != 0:
            top += 1
        for n in range(1, max_digits + 2):
            k = top - n + 1
            f, r, den = self.divide(k)
            up = 2 * r > den or (2 * r == den and f % 2 == 1)
            first, second = (f + 1, f) if up else (f, f + 1)
            for c in (first, second):
                if c > 0 and self.inside(c, k):
                    digits = str(c)
                    stripped = digits.rstrip("0")
                    return stripped, k + len(digits) - len(stripped)
        raise AssertionError("no shortest representation")  # unreachable for finite values


def _interval(bits: int, single: bool) -> _Interval:
    mbits, bias = (23, 150) if single else (52, 1075)
    mant = bits & ((1 << mbits) - 1)
    exp = (bits >> mbits) & (0xFF if single else 0x7FF)
    if exp == 0:
        m, e = mant, 1 - bias
    else:
        m, e = mant | (1 << mbits), exp - bias
    return _Interval(m, e, not (mant != 0 or exp <= 1))


def _shortest64(bits: int, value: float) -> tuple[str, int]:
    """Python's repr is shortest with bounds included; redo the rare boundary cases."""
    digits, e10 = _digits_of_repr(value)
    interval = _interval(bits, False)
    if interval.on_bound(int(digits), e10):
        return interval.shortest(17, value)
    return digits, e10


class FloatCodec:
    """float4 (real) and float8 (double precision); canonical = IEEE big-endian bytes."""

    def __init__(self, single: bool) -> None:
        self.single = single
        self.oid = 700 if single else 701
        self.name = "float4" if single else "float8"
        self.array_oid = 1021 if single else 1022
        self._size = 4 if single else 8

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        return _parse(text, self.single)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        check_length(data, self._size)
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        if self.single:
            value: float = _F.unpack(canonical)[0]
        else:
            value = _D.unpack(canonical)[0]
        special = _special(value)
        if special is not None:
            return special
        efd = fmt.extra_float_digits
        if efd > 0:
            neg = math.copysign(1.0, value) < 0
            if self.single:
                if value == 0.0:
                    return "-0" if neg else "0"
                bits = _I32.unpack(canonical)[0] & 0x7FFFFFFF
                digits, e10 = _interval(bits, True).shortest(9, abs(value))
                return _format_shortest(neg, digits, e10, 6)
            if value == 0.0:
                return "-0" if neg else "0"
            bits = _I64.unpack(canonical)[0] & 0x7FFFFFFFFFFFFFFF
            digits, e10 = _shortest64(bits, abs(value))
            return _format_shortest(neg, digits, e10, 15)
        ndig = max((6 if self.single else 15) + efd, 1)
        return format(value, f".{ndig}g")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


FLOAT4 = FloatCodec(True)
FLOAT8 = FloatCodec(False)
