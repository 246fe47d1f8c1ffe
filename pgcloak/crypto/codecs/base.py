"""Shared pieces of the type codecs: session settings, errors, the codec protocol.

A codec mirrors one PostgreSQL type's input/output and send/receive functions
so the proxy can encrypt a column without the client noticing. Every value is
reduced to one *canonical* byte string, PostgreSQL's binary send format of the
value after input coercion and typmod application; that is what gets
encrypted, and what a binary-format client receives unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

WHITESPACE = " \t\n\r\v\f"
"""C isspace() in the C locale, which the PostgreSQL input functions use."""


@dataclass(frozen=True)
class SessionFormat:
    """The GUCs that change how values are read or printed (tracked from ParameterStatus)."""

    datestyle: str = "ISO, MDY"
    intervalstyle: str = "postgres"
    timezone: str = "UTC"
    standard_conforming_strings: bool = True
    bytea_output: str = "hex"
    extra_float_digits: int = 1


DEFAULT_FORMAT = SessionFormat()


class CodecError(Exception):
    """A value PostgreSQL would reject, with PostgreSQL's SQLSTATE and wording.

    `message`/`detail`/`hint` are meant for the client's ErrorResponse. They
    can quote the value, so str()/repr() show only the SQLSTATE: the
    exception must not carry plaintext into logs or tracebacks.
    """

    def __init__(
        self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        return f"CodecError({self.sqlstate})"

    def __repr__(self) -> str:
        return f"CodecError({self.sqlstate!r})"


class BinaryFormatError(CodecError):
    """Bytes left over after a receive function: PostgreSQL names the parameter or element.

    Bind reports `incorrect binary data format in bind parameter N`; arrays
    report `improper binary format in array element N`; COPY reports
    `incorrect binary data format`. The codec cannot know which, so the
    caller rewrites `message` (see `bind_parameter_message`).
    """

    def __init__(self) -> None:
        super().__init__("22P03", "incorrect binary data format")

    @staticmethod
    def bind_parameter_message(index: int) -> str:
        """The Bind wording for 1-based parameter `index`."""
        return f"incorrect binary data format in bind parameter {index}"


class TypeCodec(Protocol):
    """PostgreSQL's I/O behaviour for one type (see module docstring for `canonical`)."""

    oid: int
    name: str
    array_oid: int

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes: ...

    def from_binary(self, data: bytes, typmod: int) -> bytes: ...

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str: ...

    def to_binary(self, canonical: bytes) -> bytes: ...


def invalid_syntax(typname: str, text: str, sqlstate: str = "22P02") -> CodecError:
    """PostgreSQL's `invalid input syntax for type X: "..."`."""
    return CodecError(sqlstate, f'invalid input syntax for type {typname}: "{text}"')


def insufficient_data() -> CodecError:
    """pq_getmsg*() running past the end of the value."""
    return CodecError("08P01", "insufficient data left in message")


def check_length(data: bytes, size: int) -> None:
    """Fixed-size receive functions: too short is 08P01, leftovers are 22P03.

    Callers that validate the value must call `need()` first and this only
    afterwards: PostgreSQL reports a bad value before unread bytes.
    """
    need(data, size)
    if len(data) != size:
        raise BinaryFormatError()


def need(data: bytes, size: int) -> None:
    """pq_getmsg*(): the first `size` bytes must be there."""
    n = len(data)
    if n < size:
        if n == 0 and size == 1:
            raise CodecError("08P01", "no data left in message")  # pq_getmsgbyte()
        raise insufficient_data()


class Reader:
    """Sequential pq_getmsgint() reads, failing exactly where PostgreSQL would."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read_int(self, fmt: struct.Struct) -> int:
        end = self.pos + fmt.size
        if end > len(self.data):
            raise insufficient_data()
        value: int = fmt.unpack_from(self.data, self.pos)[0]
        self.pos = end
        return value

    def read_bytes(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise insufficient_data()
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise BinaryFormatError()


def reject_nul(text: str) -> None:
    """PostgreSQL text never contains NUL; the server's encoding check rejects it."""
    if "\x00" in text:
        raise CodecError("22021", 'invalid byte sequence for encoding "UTF8": 0x00')


def _utf8_len(first: int) -> int:
    """pg_utf_mblen(): sequence length announced by a lead byte."""
    if first < 0x80:
        return 1
    if first & 0xE0 == 0xC0:
        return 2
    if first & 0xF0 == 0xE0:
        return 3
    if first & 0xF8 == 0xF0:
        return 4
    return 1


def decode_utf8(data: bytes) -> str:
    """Validate server-encoding text like pg_verify_mbstr() and decode it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The server checks left to right and NUL is invalid too: report the first.
        nul = data.find(0, 0, exc.start)
        start = nul if nul >= 0 else exc.start
        bad = data[start : start + min(_utf8_len(data[start]), 8)]
        shown = " ".join(f"0x{b:02x}" for b in bad)
        raise CodecError("22021", f'invalid byte sequence for encoding "UTF8": {shown}') from None
    reject_nul(text)
    return text


def encode_utf8(text: str) -> bytes:
    """Text to server bytes; lone surrogates cannot be represented in UTF-8."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(
            "22021", 'invalid byte sequence for encoding "UTF8"', "lone surrogate in input"
        ) from None


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero), which PostgreSQL's arithmetic uses."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def c_mod(a: int, b: int) -> int:
    """C remainder (sign follows the dividend)."""
    return a - c_div(a, b) * b


INT16 = struct.Struct(">h")
UINT16 = struct.Struct(">H")
UINT32 = struct.Struct(">I")
