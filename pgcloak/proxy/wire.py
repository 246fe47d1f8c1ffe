"""Wire primitives: constants, framing and a bounds-checked body reader.

Kept free of I/O so that framing can be tested byte for byte; the hot path uses
`split_frames`-style scanning from here and nothing heavier.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
DEFAULT_MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit for most messages (1 GiB)
MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_HDR = struct.Struct("!cI")

unpack_u32 = _U32.unpack_from


class ProtocolError(Exception):
    """A peer sent bytes that do not form a valid protocol message."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# --------------------------------------------------------------------------- framing


def frame(type_: bytes, body: bytes) -> bytes:
    """Build one typed message: type byte, int32 length (self-inclusive), body."""
    return _HDR.pack(type_, len(body) + 4) + body


def split_frames(
    data: bytes | bytearray | memoryview, start: int, max_size: int
) -> Iterator[tuple[int, int, int]]:
    """Yield (type, start, end) for every complete typed message in data[start:].

    `end` is exclusive and covers the header, so data[start:end] is the raw
    message. Stops at the first incomplete message; the caller keeps the tail.
    Raises ProtocolError for a length that is negative, too small or too large.
    """
    n = len(data)
    pos = start
    while n - pos >= 5:
        ln = unpack_u32(data, pos + 1)[0]
        if ln < 4 or ln > max_size:
            raise ProtocolError(f"invalid message length {ln}")
        end = pos + 1 + ln
        if end > n:
            return
        yield data[pos], pos, end
        pos = end


class BindParts:
    """A Bind message cut at its parts, for the paths that rewrite parameter values.

    `names` is the portal and statement names with their terminators, `formats` the
    parameter format codes as sent, `values` each parameter (None for NULL);
    `params_at` and `tail` are the offsets of the parameter values and of the
    result-format section, which rewrites copy unchanged.
    """

    __slots__ = ("formats", "names", "params_at", "tail", "values")

    def __init__(
        self,
        names: bytes,
        formats: list[int],
        values: list[bytes | None],
        params_at: int,
        tail: int,
    ) -> None:
        self.names = names
        self.formats = formats
        self.values = values
        self.params_at = params_at
        self.tail = tail

    def format_of(self, k: int) -> int:
        """Parameter k's format: one code applies to all, none means text."""
        n = len(self.formats)
        return self.formats[0] if n == 1 else (self.formats[k] if k < n else 0)


def bind_parts(buf: bytes, pos: int, end: int) -> BindParts:
    """Split the Bind message at buf[pos:end] (header included)."""
    i = buf.index(b"\0", pos + 5, end)
    j = buf.index(b"\0", i + 1, end)
    p = j + 1
    nfmt = _U16.unpack_from(buf, p)[0]
    formats = [_U16.unpack_from(buf, p + 2 + 2 * k)[0] for k in range(nfmt)]
    p += 2 + 2 * nfmt
    nparams = _U16.unpack_from(buf, p)[0]
    p += 2
    params_at = p
    values: list[bytes | None] = []
    for _ in range(nparams):
        ln = _I32.unpack_from(buf, p)[0]
        p += 4
        if ln < 0:
            values.append(None)
        else:
            values.append(buf[p : p + ln])
            p += ln
    if p > end:
        raise ProtocolError("Bind message parameters run past its end")
    return BindParts(buf[pos + 5 : j + 1], formats, values, params_at, p)


class Framer:
    """Buffering framer for the rare paths (startup, auth, tests)."""

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Return every complete (type, body) pair now available."""
        self._buf += data
        out: list[tuple[bytes, bytes]] = []
        last = 0
        for typ, s, e in split_frames(self._buf, 0, self.max_size):
            out.append((bytes((typ,)), bytes(self._buf[s + 5 : e])))
            last = e
        if last:
            del self._buf[:last]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    def take_pending(self) -> bytes:
        """Hand over unframed bytes, e.g. when switching to the hot path."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def read_startup_length(data: bytes | bytearray) -> int | None:
    """Length of an untyped startup-phase packet, or None if not yet known."""
    if len(data) < 4:
        return None
    ln: int = _I32.unpack_from(data, 0)[0]
    if ln < 8 or ln > MAX_STARTUP_PACKET:
        raise ProtocolError(f"invalid length of startup packet: {ln}")
    return ln


# --------------------------------------------------------------------------- reader


class _Reader:
    """Cursor over a message body with strict bounds checks."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolError("message is truncated")

    def i32(self) -> int:
        self._need(4)
        v: int = _I32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u32(self) -> int:
        self._need(4)
        v: int = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def i16(self) -> int:
        self._need(2)
        v: int = _I16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def u16(self) -> int:
        self._need(2)
        v: int = _U16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def byte(self) -> bytes:
        self._need(1)
        v = self.buf[self.pos : self.pos + 1]
        self.pos += 1
        return v

    def cstr_bytes(self) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        v = self.buf[self.pos : end]
        self.pos = end + 1
        return v

    def cstr(self) -> str:
        try:
            return self.cstr_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid UTF-8 in message string") from exc

    def take(self, n: int) -> bytes:
        self._need(n)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def rest(self) -> bytes:
        v = self.buf[self.pos :]
        self.pos = len(self.buf)
        return v

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < 0:
            raise ProtocolError(f"invalid value length {n}")
        return self.take(n)

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError("unexpected trailing bytes in message")


def _cstr(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    if b"\0" in b:
        raise ValueError("string contains NUL")
    return b + b"\0"


def _value(v: bytes | None) -> bytes:
    if v is None:
        return _I32.pack(-1)
    return _I32.pack(len(v)) + v


def _i16_list(vals: tuple[int, ...] | list[int]) -> bytes:
    return _I16.pack(len(vals)) + b"".join(_I16.pack(v) for v in vals)


def two_cstrs(buf: bytes | bytearray, start: int, end: int) -> tuple[bytes, bytes]:
    """First two NUL-terminated strings of buf[start:end] (Bind, Parse)."""
    i = buf.find(b"\0", start, end)
    if i < 0:
        raise ProtocolError("unterminated string in message")
    j = buf.find(b"\0", i + 1, end)
    if j < 0:
        raise ProtocolError("unterminated string in message")
    return bytes(buf[start:i]), bytes(buf[i + 1 : j])


def one_cstr(buf: bytes | bytearray, start: int, end: int) -> bytes:
    """First NUL-terminated string of buf[start:end] (Execute, Describe, Close)."""
    i = buf.find(b"\0", start, end)
    if i < 0:
        raise ProtocolError("unterminated string in message")
    return bytes(buf[start:i])
