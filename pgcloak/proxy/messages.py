"""Protocol 3.0 messages as dataclasses; `encode()` gives the wire bytes.

Used where the proxy must understand or synthesize a message (startup, auth,
errors) and by tests; the hot path never builds these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from pgcloak.proxy.wire import (
    _I16,
    _I32,
    _U32,
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    _cstr,
    _i16_list,
    _Reader,
    _value,
    frame,
)

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
