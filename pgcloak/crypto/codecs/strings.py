"""text, varchar(n), char(n)/bpchar, bytea and uuid."""

from __future__ import annotations

import re

from pgcloak.crypto.codecs.base import (
    CodecError,
    SessionFormat,
    check_length,
    decode_utf8,
    encode_utf8,
    invalid_syntax,
    reject_nul,
)


class TextCodec:
    """text (and json's storage): canonical = the UTF-8 bytes."""

    oid = 25
    name = "text"
    array_oid = 1009

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        return encode_utf8(text)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        decode_utf8(data)
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return canonical.decode("utf-8")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


def _clip(text: str, maxlen: int, sql_name: str) -> str:
    """Over-long input is accepted only when the excess is all spaces (then clipped)."""
    if text[maxlen:].strip(" "):
        raise CodecError("22001", f"value too long for type {sql_name}({maxlen})")
    return text[:maxlen]


class VarcharCodec:
    """varchar(n): typmod n + 4; the limit counts characters."""

    oid = 1043
    name = "varchar"
    array_oid = 1015

    def _apply(self, text: str, typmod: int) -> str:
        if typmod >= 4 and len(text) > typmod - 4:
            return _clip(text, typmod - 4, "character varying")
        return text

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        if typmod >= 4 and len(text) > typmod - 4:
            return encode_utf8(self._apply(text, typmod))
        return encode_utf8(text)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        text = decode_utf8(data)
        if typmod >= 4 and len(text) > typmod - 4:
            return encode_utf8(self._apply(text, typmod))
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return canonical.decode("utf-8")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


class BpcharCodec:
    """char(n)/bpchar: padded with spaces to n characters; bare bpchar is unpadded."""

    oid = 1042
    name = "bpchar"
    array_oid = 1014

    def _apply(self, text: str, typmod: int) -> str:
        if typmod < 4:
            return text
        maxlen = typmod - 4
        if len(text) > maxlen:
            return _clip(text, maxlen, "character")
        return text.ljust(maxlen)

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        return encode_utf8(self._apply(text, typmod))

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        text = decode_utf8(data)
        if typmod < 4:
            return data
        return encode_utf8(self._apply(text, typmod))

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return canonical.decode("utf-8")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


_HEX_WS = b" \n\t\r"
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


def _bad_hex_digit(raw: bytes, pos: int) -> CodecError:
    # The message shows one whole (possibly multibyte) character.
    char = raw[pos:].decode("utf-8", "replace")[:1]
    return CodecError("22023", f'invalid hexadecimal digit: "{char}"')


def _hex_decode(raw: bytes) -> bytes:
    """hex_decode(): pairs of hex digits; whitespace allowed between pairs only."""
    compact = raw.translate(None, _HEX_WS)
    if len(compact) % 2 == 0 and all(b in _HEXDIGITS for b in compact):
        # Fast path; pairs can only straddle whitespace if a digit is left over.
        try:
            out = bytes.fromhex(raw.decode("ascii"))
        except ValueError:
            pass
        else:
            return out
    out_arr = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c in _HEX_WS:
            i += 1
            continue
        if c not in _HEXDIGITS:
            raise _bad_hex_digit(raw, i)
        i += 1
        if i >= n:
            raise CodecError("22023", "invalid hexadecimal data: odd number of digits")
        if raw[i] not in _HEXDIGITS:
            raise _bad_hex_digit(raw, i)
        out_arr.append(int(raw[i - 1 : i + 1], 16))
        i += 1
    return bytes(out_arr)


_ESCAPE = re.compile(rb"\\(?:([0-3][0-7][0-7])|(\\)|)")


def _escape_decode(raw: bytes) -> bytes:
    """The traditional escape format: \\ooo octal and \\\\; any other backslash is an error."""
    if b"\\" not in raw:
        return raw

    def repl(m: re.Match[bytes]) -> bytes:
        if m.group(1) is not None:
            return bytes([int(m.group(1), 8)])
        if m.group(2) is not None:
            return b"\\"
        raise CodecError("22P02", "invalid input syntax for type bytea")

    return _ESCAPE.sub(repl, raw)


_PRINTABLE = {b: chr(b) for b in range(0x20, 0x7F) if b != 0x5C}


def bytea_escape_out(data: bytes) -> str:
    """byteaout with bytea_output = escape."""
    parts = []
    for b in data:
        ch = _PRINTABLE.get(b)
        if ch is not None:
            parts.append(ch)
        elif b == 0x5C:
            parts.append("\\\\")
        else:
            parts.append(f"\\{b:03o}")
    return "".join(parts)


class ByteaCodec:
    """bytea: canonical = the raw bytes."""

    oid = 17
    name = "bytea"
    array_oid = 1001

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        raw = encode_utf8(text)
        if raw[:2] == b"\\x":
            return _hex_decode(raw[2:])
        return _escape_decode(raw)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        if fmt.bytea_output == "escape":
            return bytea_escape_out(canonical)
        return "\\x" + canonical.hex()

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


_UUID_CANON = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_XDIGIT = frozenset("0123456789abcdefABCDEF")


def _uuid_parse(text: str) -> bytes:
    """string_to_uuid(): 32 hex digits, optional '{}', a '-' allowed after any 4 digits."""
    if len(text) == 36 and _UUID_CANON.fullmatch(text):
        return bytes.fromhex(text.replace("-", ""))
    src = 0
    braces = text[:1] == "{"
    if braces:
        src = 1
    out = bytearray()
    n = len(text)
    for i in range(16):
        if src + 1 >= n or text[src] not in _XDIGIT or text[src + 1] not in _XDIGIT:
            raise invalid_syntax("uuid", text)
        out.append(int(text[src : src + 2], 16))
        src += 2
        if src < n and text[src] == "-" and i % 2 == 1 and i < 15:
            src += 1
    if braces:
        if src >= n or text[src] != "}":
            raise invalid_syntax("uuid", text)
        src += 1
    if src != n:
        raise invalid_syntax("uuid", text)
    return bytes(out)


class UuidCodec:
    """uuid: canonical = the 16 bytes."""

    oid = 2950
    name = "uuid"
    array_oid = 2951

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        return _uuid_parse(text)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        check_length(data, 16)
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        h = canonical.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


TEXT = TextCodec()
VARCHAR = VarcharCodec()
BPCHAR = BpcharCodec()
BYTEA = ByteaCodec()
UUID = UuidCodec()
