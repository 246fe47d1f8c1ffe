"""Sans-IO PostgreSQL protocol 3.0 codec: decoding of every message.

`wire` holds framing and primitives, `messages` the message classes; this
module decodes bodies into those classes and re-exports both, so callers have
one import for the whole codec.
"""

from __future__ import annotations

from pgcloak.proxy.messages import (
    Authentication,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    Sync,
    Terminate,
)
from pgcloak.proxy.wire import (
    CANCEL_REQUEST_CODE,
    DEFAULT_MAX_MESSAGE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    Framer,
    ProtocolError,
    _Reader,
    frame,
    one_cstr,
    read_startup_length,
    split_frames,
    two_cstrs,
    unpack_u32,
)

__all__ = [
    "CANCEL_REQUEST_CODE",
    "DEFAULT_MAX_MESSAGE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_PACKET",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
    "Authentication",
    "BackendKeyData",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "Framer",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "ProtocolError",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
    "Sync",
    "Terminate",
    "decode_backend",
    "decode_frontend",
    "decode_startup",
    "frame",
    "one_cstr",
    "read_startup_length",
    "split_frames",
    "two_cstrs",
    "unpack_u32",
]


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
