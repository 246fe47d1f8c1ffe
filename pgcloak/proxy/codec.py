"""Sans-IO PostgreSQL protocol 3.0 codec.

Everything here works on bytes only, so the framing and every message can be
tested byte for byte without sockets. The proxy's hot path uses `split_frames`
and the `*_TYPE` constants directly; the dataclasses are for the messages the
proxy must understand or synthesize (startup, auth, errors, statement tracking).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

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


# --------------------------------------------------------------------------- messages


class Message:
    """Base for every decoded message; `encode()` gives the wire bytes."""

    TYPE: ClassVar[bytes] = b""

    def body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return frame(self.TYPE, self.body())


# ---- untyped startup-phase packets (frontend)


@dataclass(frozen=True)
class StartupMessage(Message):
    version: int = PROTOCOL_3_0
    params: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = _I32.pack(self.version)
        for k, v in self.params.items():
            if not k:
                raise ValueError("empty startup parameter name")
            body += _cstr(k) + _cstr(v)
        body += b"\0"
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True)
class SSLRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True)
class GSSENCRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True)
class CancelRequest(Message):
    pid: int
    secret: int

    def encode(self) -> bytes:
        return (
            _I32.pack(16)
            + _I32.pack(CANCEL_REQUEST_CODE)
            + _I32.pack(self.pid)
            + _I32.pack(self.secret)
        )


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode a whole untyped packet (length prefix included)."""
    r = _Reader(packet)
    ln = r.i32()
    if ln != len(packet):
        raise ProtocolError("startup packet length mismatch")
    code = r.i32()
    if code == SSL_REQUEST_CODE:
        r.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, secret = r.i32(), r.i32()
        r.done()
        return CancelRequest(pid, secret)
    params: dict[str, str] = {}
    while True:
        key = r.cstr()
        if key == "":
            break
        params[key] = r.cstr()
    r.done()
    return StartupMessage(code, params)


# ---- frontend typed messages


@dataclass(frozen=True)
class Query(Message):
    TYPE = b"Q"
    sql: str

    def body(self) -> bytes:
        return _cstr(self.sql)


@dataclass(frozen=True)
class Parse(Message):
    TYPE = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def body(self) -> bytes:
        return (
            _cstr(self.name)
            + _cstr(self.sql)
            + _I16.pack(len(self.param_types))
            + b"".join(_U32.pack(t) for t in self.param_types)
        )


@dataclass(frozen=True)
class Bind(Message):
    TYPE = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def body(self) -> bytes:
        return (
            _cstr(self.portal)
            + _cstr(self.statement)
            + _i16_list(self.param_formats)
            + _I16.pack(len(self.params))
            + b"".join(_value(p) for p in self.params)
            + _i16_list(self.result_formats)
        )


@dataclass(frozen=True)
class Describe(Message):
    TYPE = b"D"
    kind: bytes  # b"S" statement or b"P" portal
    name: str

    def body(self) -> bytes:
        return self.kind + _cstr(self.name)


@dataclass(frozen=True)
class Execute(Message):
    TYPE = b"E"
    portal: str
    max_rows: int = 0

    def body(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)


@dataclass(frozen=True)
class Close(Message):
    TYPE = b"C"
    kind: bytes
    name: str

    def body(self) -> bytes:
        return self.kind + _cstr(self.name)


@dataclass(frozen=True)
class Sync(Message):
    TYPE = b"S"


@dataclass(frozen=True)
class Flush(Message):
    TYPE = b"H"


@dataclass(frozen=True)
class Terminate(Message):
    TYPE = b"X"


@dataclass(frozen=True)
class CopyData(Message):
    TYPE = b"d"
    data: bytes

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class CopyDone(Message):
    TYPE = b"c"


@dataclass(frozen=True)
class CopyFail(Message):
    TYPE = b"f"
    message: str

    def body(self) -> bytes:
        return _cstr(self.message)


@dataclass(frozen=True)
class FunctionCall(Message):
    TYPE = b"F"
    oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def body(self) -> bytes:
        return (
            _U32.pack(self.oid)
            + _i16_list(self.arg_formats)
            + _I16.pack(len(self.args))
            + b"".join(_value(a) for a in self.args)
            + _I16.pack(self.result_format)
        )


@dataclass(frozen=True)
class PasswordMessage(Message):
    """'p': password, SASLInitialResponse, SASLResponse or GSSResponse.

    Which one it is depends on the authentication request that preceded it, so
    the body stays raw and the helpers below interpret it in context.
    """

    TYPE = b"p"
    data: bytes

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        return frame(b"p", _cstr(self.mechanism) + _value(self.data))

    @classmethod
    def parse(cls, body: bytes) -> SASLInitialResponse:
        r = _Reader(body)
        mech = r.cstr()
        data = r.value()
        r.done()
        return cls(mech, data)


# ---- backend typed messages


@dataclass(frozen=True)
class Authentication(Message):
    """'R': every authentication request/result; `code` picks the variant."""

    TYPE = b"R"
    code: int
    data: bytes = b""

    OK: ClassVar[int] = 0
    KERBEROS_V5: ClassVar[int] = 2
    CLEARTEXT: ClassVar[int] = 3
    MD5: ClassVar[int] = 5
    GSS: ClassVar[int] = 7
    GSS_CONTINUE: ClassVar[int] = 8
    SSPI: ClassVar[int] = 9
    SASL: ClassVar[int] = 10
    SASL_CONTINUE: ClassVar[int] = 11
    SASL_FINAL: ClassVar[int] = 12

    def body(self) -> bytes:
        return _I32.pack(self.code) + self.data

    def sasl_mechanisms(self) -> list[str]:
        if self.code != self.SASL:
            raise ValueError("not an AuthenticationSASL message")
        r = _Reader(self.data)
        mechs: list[str] = []
        while True:
            m = r.cstr()
            if not m:
                break
            mechs.append(m)
        r.done()
        return mechs

    @classmethod
    def sasl(cls, mechanisms: list[str]) -> Authentication:
        return cls(cls.SASL, b"".join(_cstr(m) for m in mechanisms) + b"\0")


@dataclass(frozen=True)
class BackendKeyData(Message):
    TYPE = b"K"
    pid: int
    secret: int

    def body(self) -> bytes:
        return _I32.pack(self.pid) + _I32.pack(self.secret)


@dataclass(frozen=True)
class ParseComplete(Message):
    TYPE = b"1"


@dataclass(frozen=True)
class BindComplete(Message):
    TYPE = b"2"


@dataclass(frozen=True)
class CloseComplete(Message):
    TYPE = b"3"


@dataclass(frozen=True)
class NoData(Message):
    TYPE = b"n"


@dataclass(frozen=True)
class PortalSuspended(Message):
    TYPE = b"s"


@dataclass(frozen=True)
class EmptyQueryResponse(Message):
    TYPE = b"I"


@dataclass(frozen=True)
class CopyInResponse(Message):
    TYPE = b"G"
    format: int = 0
    column_formats: tuple[int, ...] = ()

    def body(self) -> bytes:
        return bytes((self.format,)) + _i16_list(self.column_formats)


@dataclass(frozen=True)
class CopyOutResponse(CopyInResponse):
    TYPE = b"H"


@dataclass(frozen=True)
class CopyBothResponse(CopyInResponse):
    TYPE = b"W"


@dataclass(frozen=True)
class CommandComplete(Message):
    TYPE = b"C"
    tag: str

    def body(self) -> bytes:
        return _cstr(self.tag)


@dataclass(frozen=True)
class DataRow(Message):
    TYPE = b"D"
    values: tuple[bytes | None, ...]

    def body(self) -> bytes:
        return _I16.pack(len(self.values)) + b"".join(_value(v) for v in self.values)


@dataclass(frozen=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_mod: int = -1
    format: int = 0

    def encode(self) -> bytes:
        return _cstr(self.name) + struct.pack(
            "!IhIhih",
            self.table_oid,
            self.column,
            self.type_oid,
            self.type_size,
            self.type_mod,
            self.format,
        )


@dataclass(frozen=True)
class RowDescription(Message):
    TYPE = b"T"
    fields: tuple[FieldDescription, ...]

    def body(self) -> bytes:
        return _I16.pack(len(self.fields)) + b"".join(f.encode() for f in self.fields)


@dataclass(frozen=True)
class ParameterDescription(Message):
    TYPE = b"t"
    type_oids: tuple[int, ...]

    def body(self) -> bytes:
        return _I16.pack(len(self.type_oids)) + b"".join(_U32.pack(t) for t in self.type_oids)


@dataclass(frozen=True)
class ParameterStatus(Message):
    TYPE = b"S"
    name: str
    value: str

    def body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)


@dataclass(frozen=True)
class ReadyForQuery(Message):
    TYPE = b"Z"
    status: bytes = b"I"  # I idle, T in transaction, E failed transaction

    def body(self) -> bytes:
        return self.status


@dataclass(frozen=True)
class NotificationResponse(Message):
    TYPE = b"A"
    pid: int
    channel: str
    payload: str

    def body(self) -> bytes:
        return _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload)


@dataclass(frozen=True)
class FunctionCallResponse(Message):
    TYPE = b"V"
    value: bytes | None

    def body(self) -> bytes:
        return _value(self.value)


@dataclass(frozen=True)
class NegotiateProtocolVersion(Message):
    TYPE = b"v"
    # PostgreSQL sends the full version number (3 << 16 | minor), not the bare minor,
    # and libpq compares it as such.
    version: int
    unrecognized: tuple[str, ...] = ()

    def body(self) -> bytes:
        return (
            _I32.pack(self.version)
            + _I32.pack(len(self.unrecognized))
            + b"".join(_cstr(o) for o in self.unrecognized)
        )


@dataclass(frozen=True)
class ErrorResponse(Message):
    """'E' (and, via NoticeResponse, 'N'): fields keyed by their one-letter code."""

    TYPE = b"E"
    fields: dict[str, str]

    def body(self) -> bytes:
        out = b""
        for k, v in self.fields.items():
            if len(k) != 1 or not 0 < ord(k) < 256:
                raise ValueError(f"invalid error field code {k!r}")
            # latin-1/surrogateescape mirror _decode_fields, so re-encoding is lossless.
            out += k.encode("latin-1") + _cstr(v.encode("utf-8", "surrogateescape"))
        return out + b"\0"

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @classmethod
    def make(cls, severity: str, sqlstate: str, message: str, **extra: str) -> ErrorResponse:
        f = {"S": severity, "V": severity, "C": sqlstate, "M": message}
        for key, value in extra.items():
            f[_FIELD_CODES[key]] = value
        return cls(f)


@dataclass(frozen=True)
class NoticeResponse(ErrorResponse):
    TYPE = b"N"


_FIELD_CODES = {
    "detail": "D",
    "hint": "H",
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "where": "W",
    "schema": "s",
    "table": "t",
    "column": "c",
    "datatype": "d",
    "constraint": "n",
    "file": "F",
    "line": "L",
    "routine": "R",
}


# --------------------------------------------------------------------------- decoders


def _decode_fields(body: bytes) -> dict[str, str]:
    r = _Reader(body)
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == b"\0":
            break
        fields[code.decode("latin-1")] = r.cstr_bytes().decode("utf-8", "surrogateescape")
    r.done()
    return fields


def _formats(r: _Reader) -> tuple[int, ...]:
    n = r.i16()
    if n < 0:
        raise ProtocolError("negative format count")
    return tuple(r.i16() for _ in range(n))


def _values(r: _Reader) -> tuple[bytes | None, ...]:
    n = r.i16()
    if n < 0:
        raise ProtocolError("negative value count")
    return tuple(r.value() for _ in range(n))


def decode_frontend(type_: bytes, body: bytes) -> Message:
    """Decode one typed frontend message body."""
    r = _Reader(body)
    msg: Message
    if type_ == b"Q":
        msg = Query(r.cstr())
    elif type_ == b"P":
        name, sql = r.cstr(), r.cstr()
        n = r.i16()
        if n < 0:
            raise ProtocolError("negative parameter type count")
        msg = Parse(name, sql, tuple(r.u32() for _ in range(n)))
    elif type_ == b"B":
        msg = Bind(r.cstr(), r.cstr(), _formats(r), _values(r), _formats(r))
    elif type_ == b"D":
        kind = r.byte()
        if kind not in (b"S", b"P"):
            raise ProtocolError(f"invalid DESCRIBE message subtype {kind[0]}")
        msg = Describe(kind, r.cstr())
    elif type_ == b"E":
        msg = Execute(r.cstr(), r.i32())
    elif type_ == b"C":
        kind = r.byte()
        if kind not in (b"S", b"P"):
            raise ProtocolError(f"invalid CLOSE message subtype {kind[0]}")
        msg = Close(kind, r.cstr())
    elif type_ == b"S":
        msg = Sync()
    elif type_ == b"H":
        msg = Flush()
    elif type_ == b"X":
        msg = Terminate()
    elif type_ == b"d":
        return CopyData(r.rest())
    elif type_ == b"c":
        msg = CopyDone()
    elif type_ == b"f":
        msg = CopyFail(r.cstr())
    elif type_ == b"F":
        oid = r.u32()
        msg = FunctionCall(oid, _formats(r), _values(r), r.i16())
    elif type_ == b"p":
        return PasswordMessage(r.rest())
    else:
        raise ProtocolError(f"invalid frontend message type {type_[0]}")
    r.done()
    return msg


def decode_backend(type_: bytes, body: bytes) -> Message:
    """Decode one typed backend message body."""
    r = _Reader(body)
    msg: Message
    if type_ == b"R":
        return Authentication(r.i32(), r.rest())
    if type_ == b"K":
        msg = BackendKeyData(r.i32(), r.i32())
    elif type_ == b"1":
        msg = ParseComplete()
    elif type_ == b"2":
        msg = BindComplete()
    elif type_ == b"3":
        msg = CloseComplete()
    elif type_ == b"n":
        msg = NoData()
    elif type_ == b"s":
        msg = PortalSuspended()
    elif type_ == b"I":
        msg = EmptyQueryResponse()
    elif type_ in (b"G", b"H", b"W"):
        fmt = r.take(1)[0]
        cls = {b"G": CopyInResponse, b"H": CopyOutResponse, b"W": CopyBothResponse}[type_]
        msg = cls(fmt, _formats(r))
    elif type_ == b"C":
        msg = CommandComplete(r.cstr())
    elif type_ == b"D":
        msg = DataRow(_values(r))
    elif type_ == b"T":
        n = r.i16()
        if n < 0:
            raise ProtocolError("negative field count")
        fields = []
        for _ in range(n):
            name = r.cstr()
            fields.append(
                FieldDescription(name, r.u32(), r.i16(), r.u32(), r.i16(), r.i32(), r.i16())
            )
        msg = RowDescription(tuple(fields))
    elif type_ == b"t":
        n = r.i16()
        if n < 0:
            raise ProtocolError("negative parameter count")
        msg = ParameterDescription(tuple(r.u32() for _ in range(n)))
    elif type_ == b"S":
        msg = ParameterStatus(r.cstr(), r.cstr())
    elif type_ == b"Z":
        status = r.byte()
        if status not in (b"I", b"T", b"E"):
            raise ProtocolError("invalid transaction status")
        msg = ReadyForQuery(status)
    elif type_ == b"A":
        msg = NotificationResponse(r.i32(), r.cstr(), r.cstr())
    elif type_ == b"V":
        msg = FunctionCallResponse(r.value())
    elif type_ == b"v":
        minor, n = r.i32(), r.i32()
        if n < 0:
            raise ProtocolError("negative option count")
        msg = NegotiateProtocolVersion(minor, tuple(r.cstr() for _ in range(n)))
    elif type_ == b"E":
        return ErrorResponse(_decode_fields(body))
    elif type_ == b"N":
        return NoticeResponse(_decode_fields(body))
    elif type_ == b"d":
        return CopyData(r.rest())
    elif type_ == b"c":
        msg = CopyDone()
    else:
        raise ProtocolError(f"invalid backend message type {type_[0]}")
    r.done()
    return msg


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
