"""numeric: numeric_in/numeric_out/numeric_recv/numeric_send of PostgreSQL 15.

Values are handled as decimal digit strings (never Python ints, which refuse
more than 4300 digits by default): `coeff` without leading zeros ("" is
zero), the value is coeff * 10**exp10, and `dscale` is the display scale.
Canonical bytes are PostgreSQL's send format: ndigits, weight, sign, dscale
and base-10000 digits, normalised as make_result() stores them.
"""

from __future__ import annotations

import re
import struct

from pgcloak.crypto.codecs.base import (
    INT16,
    UINT16,
    WHITESPACE,
    CodecError,
    Reader,
    SessionFormat,
    invalid_syntax,
    reject_nul,
)

POS = 0x0000
NEG = 0x4000
NAN = 0xC000
PINF = 0xD000
NINF = 0xF000
DSCALE_MAX = 0x3FFF
_HEADER = struct.Struct(">HhHH")
_INT_MAX_HALF = 2147483647 // 2

_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_EXPONENT = re.compile(r"[eE][ \t\n\r\v\f]*([+-]?)([0-9]+)")
_SPECIALS = (
    ("nan", NAN),
    ("infinity", PINF),
    ("+infinity", PINF),
    ("-infinity", NINF),
    ("inf", PINF),
    ("+inf", PINF),
    ("-inf", NINF),
)
_SPECIAL_TEXT = {NAN: "NaN", PINF: "Infinity", NINF: "-Infinity"}


def special(sign: int) -> bytes:
    """NaN/Infinity as numeric_send() emits them: the packed header reads as dscale 32."""
    return _HEADER.pack(0, 0, sign, 0 if sign == NAN else 32)


def _overflow() -> CodecError:
    return CodecError("22003", "value overflows numeric format")


def typmod_precision_scale(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric typmod, or None for an unconstrained numeric."""
    if typmod < 4:
        return None
    raw = typmod - 4
    scale = ((raw & 0x7FF) ^ 1024) - 1024
    return (raw >> 16) & 0xFFFF, scale


def _increment(digits: str) -> str:
    """Add one to a decimal digit string (no int conversion, any length)."""
    stripped = digits.rstrip("9")
    if not stripped:
        return "1" + "0" * len(digits)
    return stripped[:-1] + chr(ord(stripped[-1]) + 1) + "0" * (len(digits) - len(stripped))


def round_to_scale(coeff: str, exp10: int, scale: int) -> tuple[str, int]:
    """round_var(): round half away from zero to `scale` fractional digits."""
    drop = -scale - exp10
    if drop <= 0 or not coeff:
        return coeff, exp10
    n = len(coeff)
    if drop > n:
        return "", -scale
    keep = coeff[: n - drop]
    if coeff[n - drop] >= "5":
        keep = _increment(keep or "0")
    return keep.lstrip("0"), -scale


def _trunc_to_scale(coeff: str, exp10: int, scale: int) -> tuple[str, int]:
    drop = -scale - exp10
    if drop <= 0 or not coeff:
        return coeff, exp10
    return coeff[: max(len(coeff) - drop, 0)].lstrip("0"), -scale


def apply_typmod(coeff: str, exp10: int, dscale: int, typmod: int) -> tuple[str, int, int]:
    """apply_typmod(): round to the scale, then refuse too many integral digits."""
    ps = typmod_precision_scale(typmod)
    if ps is None:
        return coeff, exp10, dscale
    precision, scale = ps
    coeff, exp10 = round_to_scale(coeff, exp10, scale)
    dscale = max(scale, 0)
    maxdigits = precision - scale
    if coeff and len(coeff) + exp10 > maxdigits:
        bound = f"10^{maxdigits}" if maxdigits else "1"
        raise CodecError(
            "22003",
            "numeric field overflow",
            f"A field with precision {precision}, scale {scale} must round to an absolute"
            f" value less than {bound}.",
        )
    return coeff, exp10, dscale


def _check_special_typmod(sign: int, typmod: int) -> None:
    """apply_typmod_special(): a constrained numeric holds NaN but not infinity."""
    ps = typmod_precision_scale(typmod)
    if ps is not None and sign in (PINF, NINF):
        raise CodecError(
            "22003",
            "numeric field overflow",
            f"A field with precision {ps[0]}, scale {ps[1]} cannot hold an infinite value.",
        )


def encode(neg: bool, coeff: str, exp10: int, dscale: int) -> bytes:
    """make_result() + numeric_send(): normalised base-10000 digits."""
    if dscale > DSCALE_MAX:
        raise _overflow()
    if not coeff:
        return _HEADER.pack(0, 0, POS, dscale)
    shift = exp10 % 4
    if shift:
        coeff += "0" * shift
        exp10 -= shift
    pad = -len(coeff) % 4
    if pad:
        coeff = "0" * pad + coeff
    digits = [int(coeff[i : i + 4]) for i in range(0, len(coeff), 4)]
    weight = exp10 // 4 + len(digits) - 1
    while digits[-1] == 0:
        digits.pop()
    if weight > 32767 or weight < -32768:
        raise _overflow()
    return _HEADER.pack(len(digits), weight, NEG if neg else POS, dscale) + struct.pack(
        f">{len(digits)}h", *digits
    )


def decode(canonical: bytes) -> tuple[int, str, int, int]:
    """Canonical bytes -> (sign, coeff, exp10, dscale)."""
    ndigits, weight, sign, dscale = _HEADER.unpack_from(canonical)
    if not ndigits:
        return sign, "", 0, dscale
    digits = struct.unpack_from(f">{ndigits}h", canonical, 8)
    coeff = str(digits[0]) + "".join([f"{d:04d}" for d in digits[1:]])
    return sign, coeff, 4 * (weight - ndigits + 1), dscale


def parse(text: str, typmod: int = -1) -> bytes:
    """numeric_in(text, typmod) -> canonical bytes."""
    cp = len(text) - len(text.lstrip(WHITESPACE))
    lowered = text[cp : cp + 9].lower()
    for word, sign in _SPECIALS:
        if lowered.startswith(word):
            if text[cp + len(word) :].strip(WHITESPACE):
                reject_nul(text)
                raise invalid_syntax("numeric", text)
            _check_special_typmod(sign, typmod)
            return special(sign)
    m = _NUMBER.match(text, cp)
    assert m is not None  # every group is optional
    intpart = m.group(2)
    frac = m.group(3)
    # set_var_from_str(): a digit must follow the sign or the leading point.
    if not intpart and not frac:
        reject_nul(text)
        raise invalid_syntax("numeric", text)
    frac = frac or ""
    end = m.end()
    exponent = 0
    if end < len(text) and text[end] in "eE":
        e = _EXPONENT.match(text, end)
        if e is None:
            reject_nul(text)
            raise invalid_syntax("numeric", text)
        exp_digits = e.group(2).lstrip("0")
        if len(exp_digits) > 12:
            raise _overflow()
        exponent = int(exp_digits or "0")
        if e.group(1) == "-":
            exponent = -exponent
        if exponent >= _INT_MAX_HALF or exponent <= -_INT_MAX_HALF:
            raise _overflow()
        end = e.end()
    if text[end:].strip(WHITESPACE):
        reject_nul(text)
        raise invalid_syntax("numeric", text)
    coeff = (intpart + frac).lstrip("0")
    exp10 = exponent - len(frac)
    dscale = max(len(frac) - exponent, 0)
    coeff, exp10, dscale = apply_typmod(coeff, exp10, dscale, typmod)
    return encode(m.group(1) == "-" and bool(coeff), coeff, exp10, dscale)


def receive(data: bytes, typmod: int) -> bytes:
    """numeric_recv(): validate, truncate hidden digits, apply the typmod."""
    rd = Reader(data)
    ndigits = rd.read_int(UINT16)
    weight = rd.read_int(INT16)
    sign = rd.read_int(UINT16)
    if sign not in (POS, NEG, NAN, PINF, NINF):
        raise CodecError("22P03", 'invalid sign in external "numeric" value')
    dscale = rd.read_int(UINT16)
    if dscale & DSCALE_MAX != dscale:
        raise CodecError("22P03", 'invalid scale in external "numeric" value')
    digits = []
    for _ in range(ndigits):
        d = rd.read_int(INT16)
        if d < 0 or d >= 10000:
            raise CodecError("22P03", 'invalid digit in external "numeric" value')
        digits.append(d)
    if sign not in (POS, NEG):
        _check_special_typmod(sign, typmod)
        rd.finish()
        return special(sign)
    coeff = "".join([f"{d:04d}" for d in digits]).lstrip("0")
    exp10 = 4 * (weight - ndigits + 1)
    coeff, exp10 = _trunc_to_scale(coeff, exp10, dscale)
    coeff, exp10, dscale = apply_typmod(coeff, exp10, dscale, typmod)
    if coeff:
        # Strip trailing zeros so huge zero runs do not survive into encode().
        stripped = coeff.rstrip("0")
        exp10 += len(coeff) - len(stripped)
        coeff = stripped
    result = encode(sign == NEG and bool(coeff), coeff, exp10, dscale)
    rd.finish()
    return result


def to_text(canonical: bytes) -> str:
    """numeric_out(): plain notation with exactly dscale fractional digits."""
    sign, coeff, exp10, dscale = decode(canonical)
    if sign in _SPECIAL_TEXT:
        return _SPECIAL_TEXT[sign]
    if not coeff:
        return "0." + "0" * dscale if dscale else "0"
    if exp10 < -dscale:
        coeff, exp10 = _trunc_to_scale(coeff, exp10, dscale)
    if exp10 >= 0:
        intpart, frac = coeff + "0" * exp10, ""
    else:
        point = len(coeff) + exp10
        if point > 0:
            intpart, frac = coeff[:point], coeff[point:]
        else:
            intpart, frac = "0", "0" * (-point) + coeff
    frac = frac.ljust(dscale, "0")
    out = intpart + "." + frac if dscale else intpart
    return "-" + out if sign == NEG else out


class NumericCodec:
    """numeric / decimal."""

    oid = 1700
    name = "numeric"
    array_oid = 1231

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        return parse(text, typmod)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        return receive(data, typmod)

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return to_text(canonical)

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


NUMERIC = NumericCodec()
