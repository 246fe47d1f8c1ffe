"""bool, int2, int4 and int8: boolin/int4in & co. and their send formats."""

from __future__ import annotations

import re
import struct

from pgcloak.crypto.codecs.base import (
    WHITESPACE,
    CodecError,
    SessionFormat,
    check_length,
    invalid_syntax,
    reject_nul,
)

# pg_strtoint*: leading isspace, optional sign, at least one ASCII digit.
_INT_HEAD = re.compile(r"[ \t\n\r\v\f]*([+-]?)([0-9]+)")


class IntCodec:
    """int2/int4/int8 (pg_strtoint16/32/64 in PostgreSQL 15)."""

    def __init__(self, oid: int, name: str, array_oid: int, sql_name: str, size: int) -> None:
        self.oid = oid
        self.name = name
        self.array_oid = array_oid
        self.sql_name = sql_name
        self._struct = struct.Struct({2: ">h", 4: ">i", 8: ">q"}[size])
        self._size = size
        self._lo = -(1 << (size * 8 - 1))
        self._hi = (1 << (size * 8 - 1)) - 1
        # Longest digit string (without leading zeros) that can be in range.
        self._max_digits = len(str(self._hi))

    def parse(self, text: str) -> int:
        """The integer PostgreSQL reads from `text`, or its error."""
        m = _INT_HEAD.match(text)
        if m is None:
            reject_nul(text)
            raise invalid_syntax(self.sql_name, text)
        digits = m.group(2)
        # Overflow is detected while scanning digits, before trailing junk.
        significant = digits.lstrip("0")
        if len(significant) > self._max_digits:
            raise self._out_of_range(text)
        value = int(digits)
        if m.group(1) == "-":
            value = -value
        if not self._lo <= value <= self._hi:
            raise self._out_of_range(text)
        end = m.end()
        if end != len(text) and text[end:].strip(WHITESPACE):
            reject_nul(text)
            raise invalid_syntax(self.sql_name, text)
        return value

    def _out_of_range(self, text: str) -> CodecError:
        reject_nul(text)
        return CodecError("22003", f'value "{text}" is out of range for type {self.sql_name}')

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        return self._struct.pack(self.parse(text))

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        check_length(data, self._size)
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return str(self._struct.unpack(canonical)[0])

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


def parse_bool(text: str) -> bool | None:
    """parse_bool_with_len(): unique prefixes of true/false/yes/no/on/off, and 1/0."""
    value = text.strip(WHITESPACE).lower()
    n = len(value)
    if n == 0:
        return None
    first = value[0]
    if first == "t":
        return True if "true".startswith(value) else None
    if first == "f":
        return False if "false".startswith(value) else None
    if first == "y":
        return True if "yes".startswith(value) else None
    if first == "n":
        return False if "no".startswith(value) else None
    if first == "o":
        # "o" alone is ambiguous: PostgreSQL compares at least two characters.
        if n >= 2 and "on".startswith(value):
            return True
        if n >= 2 and "off".startswith(value):
            return False
        return None
    if value == "1":
        return True
    if value == "0":
        return False
    return None


class BoolCodec:
    """bool: boolin accepts surrounding whitespace; output is t/f; send is one byte."""

    oid = 16
    name = "bool"
    array_oid = 1000

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        value = parse_bool(text)
        if value is None:
            reject_nul(text)
            raise invalid_syntax("boolean", text)
        return b"\x01" if value else b"\x00"

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        check_length(data, 1)
        return b"\x01" if data[0] else b"\x00"

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return "t" if canonical[0] else "f"

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


INT2 = IntCodec(21, "int2", 1005, "smallint", 2)
INT4 = IntCodec(23, "int4", 1007, "integer", 4)
INT8 = IntCodec(20, "int8", 1016, "bigint", 8)
BOOL = BoolCodec()
