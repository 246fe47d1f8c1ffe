"""SQL literal tokens as PostgreSQL's lexer and make_const() type them.

An unquoted constant is not text for the column's input function: `1.5` is a
numeric, `7` an integer, `B'101'` a bit string, `TRUE` a boolean, and only then
does the assignment cast or the comparison operator apply. Quoted strings are
of type unknown and carry their unescaped value (standard_conforming_strings,
E'' escapes as bytes, dollar quoting, U&'' escapes).
"""

from __future__ import annotations

import re
import struct

from pgcloak.crypto.codecs.base import CodecError, decode_utf8, encode_utf8

UNKNOWN = 705
BOOL = 16
INT4 = 23
INT8 = 20
NUMERIC = 1700
BIT = 1560
VARBIT = 1562
VARBITMAXLEN = 0x7FFFFFFF - 4 - 4 - 7  # INT_MAX - VARHDRSZ - VARBITHDRSZ - 7 bits of padding

_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GAP = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)*")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_UESCAPE = re.compile(r"'((?:[^']|'')*)'\s*(?:UESCAPE\s*'(.)')?\s*$", re.IGNORECASE | re.DOTALL)
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = "0123456789abcdefABCDEF"


def _syntax(message: str, hint: str | None = None) -> CodecError:
    return CodecError("42601", message, hint=hint)


def literal_value(raw: str, standard_conforming_strings: bool = True) -> tuple[int, str | None]:
    """An SQL literal token as PostgreSQL types it: (type OID, text value).

    Strings (`'..'`, `E'..'`, `$tag$..$tag$`, `U&'..'`) are (705 unknown,
    unescaped text); `B'..'`/`X'..'` are (1560 bit, binary digits); integer
    tokens are 23 when they fit int4, 20 when they fit int8, else 1700;
    decimal/exponent tokens are 1700; TRUE/FALSE are (16, 'true'/'false');
    NULL is (0, None). A leading '-' (spaces or comments may follow) is part of
    the constant, as the grammar folds it into number constants.
    Raises CodecError for a malformed token (PostgreSQL's lexer would have).
    """
    s = raw.strip()
    word = s.upper()
    if word == "NULL":
        return 0, None
    if word in ("TRUE", "FALSE"):
        return BOOL, word.lower()
    if s[:1] == "-":
        rest = s[1:]
        gap = _GAP.match(rest)
        body = rest[gap.end() if gap else 0 :]
        return _number(body, negative=True)
    if s[:1].isdigit() or s[:1] == ".":
        return _number(s, negative=False)
    first = s[:1].upper()
    if first == "'":
        body = _quoted(s)
        if standard_conforming_strings:
            return UNKNOWN, body.replace("''", "'")
        return UNKNOWN, _unescape(body)
    if first == "E" and s[1:2] == "'":
        return UNKNOWN, _unescape(_quoted(s[1:]))
    if first == "$":
        return UNKNOWN, _dollar(s)
    if first == "B" and s[1:2] == "'":
        bits = _quoted(s[1:]).replace("''", "'")
        for ch in bits:
            if ch not in "01":
                raise CodecError("22P02", f'"{ch}" is not a valid binary digit')
        return BIT, bits
    if first == "X" and s[1:2] == "'":
        digits = _quoted(s[1:]).replace("''", "'")
        out = []
        for ch in digits:
            if ch not in _HEX:
                raise CodecError("22P02", f'"{ch}" is not a valid hexadecimal digit')
            out.append(f"{int(ch, 16):04b}")
        return BIT, "".join(out)
    if first == "U" and s[1:3] == "&'":
        return UNKNOWN, _unicode_string(s[2:])
    raise CodecError("0A000", "pgcloak does not support this form of literal")


def _number(token: str, negative: bool) -> tuple[int, str]:
    sign = "-" if negative else ""
    if _INTEGER.fullmatch(token):
        digits = token.lstrip("0") or "0"
        if len(digits) <= 19:
            value = int(digits)
            if negative:
                value = -value
            if -(1 << 31) <= value < 1 << 31:
                return INT4, str(value)
            if -(1 << 63) <= value < 1 << 63:
                return INT8, str(value)
        return NUMERIC, sign + token
    if _DECIMAL.fullmatch(token):
        return NUMERIC, sign + token
    raise CodecError("0A000", "pgcloak does not support this form of literal")


def _quoted(s: str) -> str:
    """The body of a single-quoted token, doubled quotes still doubled."""
    if len(s) < 2 or s[0] != "'" or s[-1] != "'":
        raise CodecError("0A000", "pgcloak does not support this form of literal")
    return s[1:-1]


def _dollar(s: str) -> str:
    m = _DOLLAR.match(s)
    if m is None:
        raise CodecError("0A000", "pgcloak does not support this form of literal")
    tag = m.group(0)
    if len(s) < 2 * len(tag) or not s.endswith(tag):
        raise _syntax("unterminated dollar-quoted string")
    return s[len(tag) : len(s) - len(tag)]


def _unescape(body: str) -> str:
    """E'' escapes (scan.l's xe state): octal and hex escapes are bytes, \\u/\\U code points."""
    out = bytearray()
    i, n = 0, len(body)
    pending_high = 0
    while i < n:
        ch = body[i]
        if ch != "\\":
            if pending_high:
                raise _syntax("invalid Unicode surrogate pair")
            j = body.find("\\", i)
            j = n if j < 0 else j
            out += encode_utf8(body[i:j].replace("''", "'"))
            i = j
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in ("u", "U"):
            width = 4 if nxt == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or any(c not in _HEX for c in digits):
                raise CodecError(
                    "22025",
                    "invalid Unicode escape",
                    hint="Unicode escapes must be \\uXXXX or \\UXXXXXXXX.",
                )
            code = int(digits, 16)
            i += 2 + width
            if pending_high:
                if not 0xDC00 <= code <= 0xDFFF:
                    raise _syntax("invalid Unicode surrogate pair")
                code = 0x10000 + ((pending_high - 0xD800) << 10) + (code - 0xDC00)
                pending_high = 0
            elif 0xD800 <= code <= 0xDBFF:
                pending_high = code
                continue
            elif 0xDC00 <= code <= 0xDFFF:
                raise _syntax("invalid Unicode surrogate pair")
            if code == 0 or code > 0x10FFFF:
                raise _syntax("invalid Unicode escape value")
            out += chr(code).encode("utf-8")
            continue
        if pending_high:
            raise _syntax("invalid Unicode surrogate pair")
        m = re.match(r"[0-7]{1,3}", body[i + 1 : i + 4])
        if m is not None:
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + m.end()
            continue
        if nxt == "x":
            m = re.match(r"[0-9A-Fa-f]{1,2}", body[i + 2 : i + 4])
            if m is not None:
                out.append(int(m.group(0), 16))
                i += 2 + m.end()
                continue
        if not nxt:
            out += b"\\"
            i += 1
            continue
        out += encode_utf8(_SIMPLE_ESCAPES.get(nxt, nxt))
        i += 2
    if pending_high:
        raise _syntax("invalid Unicode surrogate pair")
    return decode_utf8(bytes(out))


def _unicode_string(s: str) -> str:
    """U&'..' [UESCAPE 'c'] (str_udeescape())."""
    m = _UESCAPE.match(s)
    if m is None:
        raise CodecError("0A000", "pgcloak does not support this form of literal")
    body = m.group(1).replace("''", "'")
    esc = m.group(2) or "\\"
    if esc in _HEX or esc in "+'\" \t\n\r\f":
        raise _syntax("invalid Unicode escape character")
    hint = f"Unicode escapes must be {esc}XXXX or {esc}+XXXXXX."
    out: list[str] = []
    pending_high = 0
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch != esc:
            if pending_high:
                raise _syntax("invalid Unicode surrogate pair")
            out.append(ch)
            i += 1
            continue
        if body[i + 1 : i + 2] == esc:
            if pending_high:
                raise _syntax("invalid Unicode surrogate pair")
            out.append(esc)
            i += 2
            continue
        if body[i + 1 : i + 2] == "+":
            digits, step = body[i + 2 : i + 8], 8
            width = 6
        else:
            digits, step = body[i + 1 : i + 5], 5
            width = 4
        if len(digits) != width or any(c not in _HEX for c in digits):
            raise _syntax("invalid Unicode escape", hint)
        code = int(digits, 16)
        i += step
        if pending_high:
            if not 0xDC00 <= code <= 0xDFFF:
                raise _syntax("invalid Unicode surrogate pair")
            code = 0x10000 + ((pending_high - 0xD800) << 10) + (code - 0xDC00)
            pending_high = 0
        elif 0xD800 <= code <= 0xDBFF:
            pending_high = code
            continue
        elif 0xDC00 <= code <= 0xDFFF:
            raise _syntax("invalid Unicode surrogate pair")
        if code == 0 or code > 0x10FFFF:
            raise _syntax("invalid Unicode escape value")
        out.append(chr(code))
    if pending_high:
        raise _syntax("invalid Unicode surrogate pair")
    return "".join(out)


# -- bit strings (bit_in / bit_recv / bit_out) ----------------------------------------

_I32 = struct.Struct(">i")


def bits_from_text(text: str) -> str:
    """bit_in() with typmod -1: a 'B'/'X' prefix or plain binary digits -> '0101..'."""
    hexa = text[:1] in ("x", "X")
    body = text[1:] if text[:1] in ("b", "B", "x", "X") else text
    if not hexa:
        for ch in body:
            if ch not in "01":
                raise CodecError("22P02", f'"{ch}" is not a valid binary digit')
        return body
    if len(body) > VARBITMAXLEN // 4:
        raise CodecError("54000", f"bit string length exceeds the maximum allowed ({VARBITMAXLEN})")
    out = []
    for ch in body:
        if ch not in _HEX:
            raise CodecError("22P02", f'"{ch}" is not a valid hexadecimal digit')
        out.append(f"{int(ch, 16):04b}")
    return "".join(out)


def bits_from_binary(data: bytes) -> str:
    """bit_recv()/varbit_recv() with typmod -1 -> '0101..' (padding bits dropped)."""
    if len(data) < 4:
        raise CodecError("08P01", "insufficient data left in message")
    bitlen = _I32.unpack_from(data)[0]
    if bitlen < 0 or bitlen > VARBITMAXLEN:
        raise CodecError("22P03", "invalid length in external bit string")
    nbytes = (bitlen + 7) // 8
    if len(data) < 4 + nbytes:
        raise CodecError("08P01", "insufficient data left in message")
    if len(data) > 4 + nbytes:
        raise CodecError("22P03", "incorrect binary data format")
    body = data[4:]
    return "".join(f"{b:08b}" for b in body)[:bitlen]
