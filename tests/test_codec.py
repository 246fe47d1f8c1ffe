"""Byte-level tests for the sans-IO protocol codec.

Expected bytes are written out by hand from the protocol 3.0 "Message Formats"
chapter, not computed with `struct`, so an encoder bug cannot hide behind the
same mistake in the test. Property-based tests live in test_codec_props.py.
"""

from __future__ import annotations

import pytest

from pgcloak.proxy import codec
from pgcloak.proxy.codec import (
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
    Framer,
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
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    decode_startup,
    frame,
    one_cstr,
    read_startup_length,
    split_frames,
    two_cstrs,
)

# --------------------------------------------------------------------------- constants


def test_protocol_constants_match_the_spec() -> None:
    assert codec.PROTOCOL_3_0 == 196608 == (3 << 16)
    assert codec.SSL_REQUEST_CODE == 80877103 == (1234 << 16) | 5679
    assert codec.GSSENC_REQUEST_CODE == 80877104 == (1234 << 16) | 5680
    assert codec.CANCEL_REQUEST_CODE == 80877102 == (1234 << 16) | 5678
    assert codec.MAX_STARTUP_PACKET == 10000


def test_protocol_error_defaults_to_protocol_violation_sqlstate() -> None:
    err = ProtocolError("bad")
    assert err.sqlstate == "08P01"
    assert str(err) == "bad"
    assert ProtocolError("x", "53000").sqlstate == "53000"


# --------------------------------------------------------------------------- startup packets

STARTUP_WIRE = (
    b"\x00\x00\x00\x25"  # length 37, self-inclusive
    b"\x00\x03\x00\x00"  # protocol 3.0
    b"user\x00postgres\x00database\x00test\x00"
    b"\x00"  # terminator
)
SSL_WIRE = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
GSSENC_WIRE = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
CANCEL_WIRE = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\xde\xad\xbe\xef"

STARTUP_CASES: list[tuple[codec.StartupPacket, bytes]] = [
    (StartupMessage(params={"user": "postgres", "database": "test"}), STARTUP_WIRE),
    (StartupMessage(), b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"),
    (SSLRequest(), SSL_WIRE),
    (GSSENCRequest(), GSSENC_WIRE),
    (CancelRequest(4242, -559038737), CANCEL_WIRE),
]


@pytest.mark.parametrize(("msg", "wire"), STARTUP_CASES, ids=lambda v: type(v).__name__)
def test_startup_packet_exact_bytes(msg: codec.StartupPacket, wire: bytes) -> None:
    assert msg.encode() == wire
    assert int.from_bytes(wire[:4], "big") == len(wire)


@pytest.mark.parametrize(("msg", "wire"), STARTUP_CASES, ids=lambda v: type(v).__name__)
def test_startup_packet_round_trip(msg: codec.StartupPacket, wire: bytes) -> None:
    decoded = decode_startup(wire)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


def test_startup_message_preserves_param_order_and_utf8() -> None:
    msg = StartupMessage(
        params={"database": "d", "user": "u", "application_name": "naïve ✓", "options": ""}
    )
    decoded = decode_startup(msg.encode())
    assert isinstance(decoded, StartupMessage)
    assert list(decoded.params.items()) == list(msg.params.items())
    assert decoded.version == codec.PROTOCOL_3_0


def test_startup_message_other_protocol_version_is_kept() -> None:
    # 3.2 (what newer libpq may request); the proxy answers with NegotiateProtocolVersion.
    wire = b"\x00\x00\x00\x09\x00\x03\x00\x02\x00"
    decoded = decode_startup(wire)
    assert decoded == StartupMessage(version=(3 << 16) | 2)


def test_startup_message_rejects_nul_in_params() -> None:
    with pytest.raises(ValueError):
        StartupMessage(params={"user": "a\0b"}).encode()
    with pytest.raises(ValueError):
        StartupMessage(params={"us\0er": "a"}).encode()


def test_startup_message_rejects_empty_param_name() -> None:
    # An empty name would encode as the list terminator and silently cut the list short.
    with pytest.raises(ValueError):
        StartupMessage(params={"": "x", "user": "u"}).encode()


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x08\x04\xd2",  # shorter than its own length
        b"\x00\x00\x00\x09" + SSL_WIRE[4:],  # length says 9, packet is 8
        SSL_WIRE[:3] + b"\x09" + SSL_WIRE[4:] + b"\x00",  # SSLRequest with a trailing byte
        GSSENC_WIRE[:3] + b"\x09" + GSSENC_WIRE[4:] + b"\x00",
        b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x10\x92",  # CancelRequest without secret
        b"\x00\x00\x00\x11" + CANCEL_WIRE[4:] + b"\x00",  # CancelRequest with trailing byte
        b"\x00\x00\x00\x08\x00\x03\x00\x00",  # no terminator at all
        STARTUP_WIRE[:-1].replace(b"\x00\x00\x00\x25", b"\x00\x00\x00\x24", 1),  # no final NUL
        b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00",  # name without value
        b"\x00\x00\x00\x0f\x00\x03\x00\x00user\x00x\x00",  # value but no terminator
        b"\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00",  # garbage after terminator
        b"\x00\x00\x00\x0d\x00\x03\x00\x00\xff\x00x\x00\x00",  # invalid UTF-8 name
        b"\xff\xff\xff\xff\x00\x03\x00\x00",  # negative length
    ],
)
def test_decode_startup_rejects_malformed(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_startup(packet)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x00", None),
        (b"\x00\x00\x00", None),
        (b"\x00\x00\x00\x08", 8),
        (SSL_WIRE, 8),
        (STARTUP_WIRE, 37),
        (b"\x00\x00\x27\x10", 10000),
    ],
)
def test_read_startup_length(data: bytes, expected: int | None) -> None:
    assert read_startup_length(data) == expected
    assert read_startup_length(bytearray(data)) == expected


@pytest.mark.parametrize(
    "header",
    [
        b"\x00\x00\x00\x00",
        b"\x00\x00\x00\x04",
        b"\x00\x00\x00\x07",
        b"\x00\x00\x27\x11",  # 10001
        b"\x7f\xff\xff\xff",
        b"\xff\xff\xff\xff",  # -1
        b"\x80\x00\x00\x00",  # INT32_MIN
        b"GET ",  # somebody speaking HTTP to the port
        b"\x16\x03\x01\x02",  # a TLS ClientHello sent without SSLRequest
    ],
)
def test_read_startup_length_rejects_out_of_bounds(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_startup_length(header)


# --------------------------------------------------------------------------- typed messages

FRONTEND_CASES: list[tuple[Message, bytes]] = [
    (Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (Query(""), b"Q\x00\x00\x00\x05\x00"),
    (
        Parse("s1", "SELECT $1, $2", (23, 25)),
        b"P\x00\x00\x00\x1fs1\x00SELECT $1, $2\x00\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (Parse("", "SELECT 1"), b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"),
    (
        Parse("", "SELECT $1", (0xFFFFFFFF,)),  # OIDs are unsigned
        b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\xff\xff\xff\xff",
    ),
    (
        Bind("p1", "s1", (0, 1), (b"42", None), (1,)),
        b"B\x00\x00\x00\x20p1\x00s1\x00"
        b"\x00\x02\x00\x00\x00\x01"  # two parameter format codes: text, binary
        b"\x00\x02"  # two parameters
        b"\x00\x00\x00\x0242"  # "42"
        b"\xff\xff\xff\xff"  # NULL
        b"\x00\x01\x00\x01",  # one result format code: binary
    ),
    (Bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    (
        Bind("", "", params=(b"",)),
        b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    ),
    (Describe(b"S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
    (Describe(b"P", ""), b"D\x00\x00\x00\x06P\x00"),
    (Execute("p1", 100), b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x64"),
    (Execute(""), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (Close(b"S", "s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (Close(b"P", "p1"), b"C\x00\x00\x00\x08Pp1\x00"),
    (Sync(), b"S\x00\x00\x00\x04"),
    (Flush(), b"H\x00\x00\x00\x04"),
    (Terminate(), b"X\x00\x00\x00\x04"),
    (CopyData(b"1\t2\n"), b"d\x00\x00\x00\x081\t2\n"),
    (CopyData(b""), b"d\x00\x00\x00\x04"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (CopyFail("boom"), b"f\x00\x00\x00\x09boom\x00"),
    (
        FunctionCall(1598, (1,), (b"\x00\x00\x00\x07", None), 1),
        b"F\x00\x00\x00\x1c\x00\x00\x06\x3e"
        b"\x00\x01\x00\x01"  # one argument format code: binary
        b"\x00\x02"  # two arguments
        b"\x00\x00\x00\x04\x00\x00\x00\x07"
        b"\xff\xff\xff\xff"
        b"\x00\x01",  # result format binary
    ),
    (PasswordMessage(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00"),
]

BACKEND_CASES: list[tuple[Message, bytes]] = [
    (Authentication(Authentication.OK), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (Authentication(Authentication.CLEARTEXT), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        Authentication(Authentication.MD5, b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (
        Authentication.sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    (
        Authentication(Authentication.SASL_CONTINUE, b"r=abc,s=xyz,i=4096"),
        b"R\x00\x00\x00\x1a\x00\x00\x00\x0br=abc,s=xyz,i=4096",
    ),
    (
        Authentication(Authentication.SASL_FINAL, b"v=sig"),
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=sig",
    ),
    (BackendKeyData(4242, -2), b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xff\xff\xff\xfe"),
    (ParseComplete(), b"1\x00\x00\x00\x04"),
    (BindComplete(), b"2\x00\x00\x00\x04"),
    (CloseComplete(), b"3\x00\x00\x00\x04"),
    (NoData(), b"n\x00\x00\x00\x04"),
    (PortalSuspended(), b"s\x00\x00\x00\x04"),
    (EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (CopyInResponse(0, (0, 0)), b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    (CopyBothResponse(0, ()), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (CommandComplete("INSERT 0 1"), b"C\x00\x00\x00\x0fINSERT 0 1\x00"),
    (
        DataRow((b"1", None, b"")),
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (DataRow(()), b"D\x00\x00\x00\x06\x00\x00"),
    (
        RowDescription((FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
        b"T\x00\x00\x00\x1b\x00\x01id\x00"
        b"\x00\x00\x40\x00"  # table OID 16384
        b"\x00\x01"  # attnum 1
        b"\x00\x00\x00\x17"  # int4
        b"\x00\x04"  # typlen 4
        b"\xff\xff\xff\xff"  # typmod -1
        b"\x00\x00",  # text format
    ),
    (
        RowDescription((FieldDescription("?column?"),)),  # defaults: text, no table
        b"T\x00\x00\x00\x21\x00\x01?column?\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00",
    ),
    (
        ParameterDescription((23, 0xFFFFFFFF)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\xff\xff\xff\xff",
    ),
    (
        ParameterStatus("client_encoding", "UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    (ReadyForQuery(), b"Z\x00\x00\x00\x05I"),
    (ReadyForQuery(b"T"), b"Z\x00\x00\x00\x05T"),
    (ReadyForQuery(b"E"), b"Z\x00\x00\x00\x05E"),
    (
        NotificationResponse(77, "chan", "hi"),
        b"A\x00\x00\x00\x10\x00\x00\x00\x4dchan\x00hi\x00",
    ),
    (FunctionCallResponse(b"ok"), b"V\x00\x00\x00\x0a\x00\x00\x00\x02ok"),
    (FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (
        NegotiateProtocolVersion(0, ("_pq_.foo",)),
        b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
    ),
    (NegotiateProtocolVersion(2), b"v\x00\x00\x00\x0c\x00\x00\x00\x02\x00\x00\x00\x00"),
    (
        ErrorResponse({"S": "ERROR", "C": "42601", "M": "syntax error"}),
        b"E\x00\x00\x00\x21SERROR\x00C42601\x00Msyntax error\x00\x00",
    ),
    (
        NoticeResponse({"S": "NOTICE", "M": "hi"}),
        b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00",
    ),
    (CopyData(b"row\n"), b"d\x00\x00\x00\x08row\n"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
]


def _ids(cases: list[tuple[Message, bytes]]) -> list[str]:
    return [f"{i}-{type(m).__name__}" for i, (m, _) in enumerate(cases)]


def _check_header(wire: bytes) -> None:
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1


@pytest.mark.parametrize(("msg", "wire"), FRONTEND_CASES, ids=_ids(FRONTEND_CASES))
def test_frontend_exact_bytes(msg: Message, wire: bytes) -> None:
    _check_header(wire)
    assert msg.encode() == wire
    assert frame(msg.TYPE, msg.body()) == wire


@pytest.mark.parametrize(("msg", "wire"), FRONTEND_CASES, ids=_ids(FRONTEND_CASES))
def test_frontend_round_trip(msg: Message, wire: bytes) -> None:
    decoded = decode_frontend(wire[:1], wire[5:])
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


@pytest.mark.parametrize(("msg", "wire"), BACKEND_CASES, ids=_ids(BACKEND_CASES))
def test_backend_exact_bytes(msg: Message, wire: bytes) -> None:
    _check_header(wire)
    assert msg.encode() == wire
    assert frame(msg.TYPE, msg.body()) == wire


@pytest.mark.parametrize(("msg", "wire"), BACKEND_CASES, ids=_ids(BACKEND_CASES))
def test_backend_round_trip(msg: Message, wire: bytes) -> None:
    decoded = decode_backend(wire[:1], wire[5:])
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


def test_decoders_accept_bytearray_bodies() -> None:
    # The framer hands out bytes, but callers slicing a bytearray buffer must work too.
    wire = Bind("p1", "s1", (0, 1), (b"42", None), (1,)).encode()
    assert decode_frontend(b"B", bytearray(wire[5:])) == Bind(
        "p1", "s1", (0, 1), (b"42", None), (1,)
    )
    err = ErrorResponse({"S": "ERROR", "M": "x"})
    assert decode_backend(b"E", bytearray(err.body())) == err


# ---- authentication helpers


def test_sasl_mechanisms() -> None:
    msg = decode_backend(b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    assert isinstance(msg, Authentication)
    assert msg.code == Authentication.SASL
    assert msg.sasl_mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert Authentication.sasl([]).sasl_mechanisms() == []


def test_sasl_mechanisms_rejects_other_codes_and_bad_lists() -> None:
    with pytest.raises(ValueError):
        Authentication(Authentication.MD5, b"salt").sasl_mechanisms()
    with pytest.raises(ProtocolError):
        Authentication(Authentication.SASL, b"SCRAM-SHA-256\x00").sasl_mechanisms()  # no end
    with pytest.raises(ProtocolError):
        Authentication(Authentication.SASL, b"SCRAM-SHA-256").sasl_mechanisms()
    with pytest.raises(ProtocolError):
        Authentication(Authentication.SASL, b"\x00junk").sasl_mechanisms()


def test_sasl_initial_response_exact_bytes() -> None:
    msg = SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    wire = b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    assert msg.encode() == wire
    _check_header(wire)
    pw = decode_frontend(b"p", wire[5:])
    assert pw == PasswordMessage(wire[5:])
    assert SASLInitialResponse.parse(wire[5:]) == msg


def test_sasl_initial_response_without_data_has_length_minus_one() -> None:
    msg = SASLInitialResponse("SCRAM-SHA-256", None)
    wire = b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"
    assert msg.encode() == wire
    assert SASLInitialResponse.parse(wire[5:]) == msg
    # Empty data is not the same as absent data.
    empty = SASLInitialResponse("SCRAM-SHA-256", b"")
    assert empty.encode() == b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\x00\x00\x00\x00"
    assert SASLInitialResponse.parse(empty.encode()[5:]) == empty


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"SCRAM-SHA-256",  # unterminated mechanism
        b"SCRAM-SHA-256\x00",  # no length
        b"SCRAM-SHA-256\x00\x00\x00",  # short length
        b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc",  # data shorter than its length
        b"SCRAM-SHA-256\x00\x00\x00\x00\x01ab",  # trailing bytes
        b"SCRAM-SHA-256\x00\xff\xff\xff\xfe",  # -2
        b"\xff\x00\xff\xff\xff\xff",  # invalid UTF-8 mechanism
    ],
)
def test_sasl_initial_response_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        SASLInitialResponse.parse(body)


# ---- errors and notices


def test_error_response_make_field_order_and_extras() -> None:
    err = ErrorResponse.make(
        "FATAL", "28P01", "password authentication failed", detail="d", hint="h", routine="r"
    )
    assert list(err.fields) == ["S", "V", "C", "M", "D", "H", "R"]
    assert err.sqlstate == "28P01"
    assert err.message == "password authentication failed"
    assert err.encode() == (
        b"E\x00\x00\x00\x43"
        b"SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed\x00"
        b"Dd\x00Hh\x00Rr\x00\x00"
    )


def test_error_response_field_order_preserved_through_decode() -> None:
    body = b"Mfirst\x00SERROR\x00C0A000\x00VERROR\x00Wctx\x00\x00"
    err = decode_backend(b"E", body)
    assert isinstance(err, ErrorResponse)
    assert type(err) is ErrorResponse
    assert list(err.fields.items()) == [
        ("M", "first"),
        ("S", "ERROR"),
        ("C", "0A000"),
        ("V", "ERROR"),
        ("W", "ctx"),
    ]
    assert err.body() == body


def test_error_response_unknown_fields_are_kept() -> None:
    # Clients must ignore unrecognised field types; a proxy must pass them through.
    body = b"SERROR\x00Zfuture\x00\x00"
    err = decode_backend(b"E", body)
    assert isinstance(err, ErrorResponse)
    assert err.fields["Z"] == "future"
    assert err.body() == body


def test_error_response_defaults_when_fields_missing() -> None:
    err = decode_backend(b"E", b"\x00")
    assert isinstance(err, ErrorResponse)
    assert err.fields == {}
    assert err.sqlstate == ""
    assert err.message == ""


def test_notice_response_make_and_types() -> None:
    notice = NoticeResponse.make("WARNING", "01000", "careful")
    assert type(notice) is NoticeResponse
    assert notice.encode()[:1] == b"N"
    assert notice.encode()[5:] == ErrorResponse.make("WARNING", "01000", "careful").body()
    # A notice never compares equal to an error carrying the same fields.
    assert notice != ErrorResponse(dict(notice.fields))
    assert type(decode_backend(b"N", notice.body())) is NoticeResponse


def test_error_response_round_trips_non_utf8_bytes() -> None:
    # The server writes messages in client_encoding (e.g. LATIN1); a decode/encode
    # round trip through the proxy must not change them.
    body = b"SERROR\x00Mcaf\xe9\x00\x00"
    err = decode_backend(b"E", body)
    assert err.body() == body


def test_error_response_field_codes_are_single_bytes() -> None:
    # A decoded field code outside ASCII must either be rejected by the decoder or
    # re-encode to the same byte; it must not crash encode() later.
    body = b"\xc9x\x00\x00"
    try:
        err = decode_backend(b"E", body)
    except ProtocolError:
        return
    assert err.body() == body


@pytest.mark.parametrize("code", ["", "SV", "\0", "\u20ac"])
def test_error_response_rejects_bad_field_code_on_encode(code: str) -> None:
    # "" would make the value look like a field code, "SV" would add a bogus field,
    # NUL would end the list and U+20AC does not fit the one-byte code.
    with pytest.raises(ValueError):
        ErrorResponse({code: "x"}).encode()


def test_error_response_rejects_nul_in_value() -> None:
    with pytest.raises(ValueError):
        ErrorResponse.make("ERROR", "XX000", "a\0b").encode()


# --------------------------------------------------------------------------- framing

STREAM_MSGS: list[Message] = [
    Query("SELECT 1"),
    Parse("s", "SELECT $1", (23,)),
    Bind("", "s", (), (b"\x00\x00\x00\x01", None), ()),
    Execute("", 0),
    Sync(),
    CopyData(b""),
    DataRow((b"x" * 40, None)),
    ErrorResponse.make("ERROR", "42P01", "nope"),
    ReadyForQuery(b"I"),
]
STREAM = b"".join(m.encode() for m in STREAM_MSGS)
STREAM_PAIRS = [(m.TYPE, m.body()) for m in STREAM_MSGS]


def test_split_frames_positions() -> None:
    frames = list(split_frames(STREAM, 0, 1 << 20))
    assert [bytes((t,)) for t, _, _ in frames] == [m.TYPE for m in STREAM_MSGS]
    pos = 0
    for (_, s, e), m in zip(frames, STREAM_MSGS, strict=True):
        assert s == pos
        assert STREAM[s:e] == m.encode()
        pos = e
    assert pos == len(STREAM)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_split_frames_accepts_buffer_types(kind: type) -> None:
    data = kind(b"junk" + STREAM)
    frames = list(split_frames(data, 4, 1 << 20))
    assert [(t, s, e) for t, s, e in frames] == [
        (t, s + 4, e + 4) for t, s, e in split_frames(STREAM, 0, 1 << 20)
    ]


def test_split_frames_stops_at_incomplete_tail() -> None:
    for cut in range(len(STREAM) + 1):
        frames = list(split_frames(STREAM[:cut], 0, 1 << 20))
        end = frames[-1][2] if frames else 0
        assert STREAM[:end] == b"".join(m.encode() for m in STREAM_MSGS[: len(frames)])
        # The tail must not hold another complete message.
        assert end == cut or not list(split_frames(STREAM[end:cut], 0, 1 << 20))


def test_split_frames_start_beyond_data_yields_nothing() -> None:
    assert list(split_frames(STREAM, len(STREAM), 1 << 20)) == []
    assert list(split_frames(STREAM, len(STREAM) + 10, 1 << 20)) == []


def _feed_all(
    chunks: list[bytes], max_size: int = 1 << 20
) -> tuple[list[tuple[bytes, bytes]], int]:
    f = Framer(max_size)
    out: list[tuple[bytes, bytes]] = []
    for c in chunks:
        out.extend(f.feed(c))
    return out, f.pending


def test_framer_every_split_point() -> None:
    for i in range(len(STREAM) + 1):
        out, pending = _feed_all([STREAM[:i], STREAM[i:]])
        assert out == STREAM_PAIRS, i
        assert pending == 0


def test_framer_every_pair_of_split_points() -> None:
    stream = b"".join(m.encode() for m in STREAM_MSGS[:5])
    pairs = [(m.TYPE, m.body()) for m in STREAM_MSGS[:5]]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            out, pending = _feed_all([stream[:i], stream[i:j], stream[j:]])
            assert out == pairs, (i, j)
            assert pending == 0


def test_framer_one_byte_chunks() -> None:
    f = Framer()
    out: list[tuple[bytes, bytes]] = []
    boundaries = {len(STREAM[:0])}
    pos = 0
    for m in STREAM_MSGS:
        pos += len(m.encode())
        boundaries.add(pos)
    for i in range(len(STREAM)):
        got = f.feed(STREAM[i : i + 1])
        out.extend(got)
        # A message is released exactly when its last byte arrives.
        assert bool(got) == (i + 1 in boundaries)
        assert f.pending == i + 1 - max(b for b in boundaries if b <= i + 1)
    assert out == STREAM_PAIRS
    assert f.pending == 0


def test_framer_holds_incomplete_tail() -> None:
    f = Framer()
    wire = Query("SELECT 1").encode()
    assert f.feed(wire + wire[:3]) == [(b"Q", b"SELECT 1\x00")]
    assert f.pending == 3
    assert f.feed(wire[3:7]) == []
    assert f.pending == 7
    assert f.feed(wire[7:]) == [(b"Q", b"SELECT 1\x00")]
    assert f.pending == 0
    assert f.feed(b"") == []


def test_framer_take_pending_hands_over_the_tail() -> None:
    f = Framer()
    wire = Query("SELECT 1").encode()
    assert f.feed(Sync().encode() + wire[:6]) == [(b"S", b"")]
    assert f.take_pending() == wire[:6]
    assert f.pending == 0
    assert f.take_pending() == b""
    # The framer is reusable afterwards and starts from a clean buffer.
    assert f.feed(wire) == [(b"Q", b"SELECT 1\x00")]


def test_framer_max_size_is_inclusive() -> None:
    body = b"x" * 60
    wire = frame(b"d", body)  # length field 64
    assert Framer(64).feed(wire) == [(b"d", body)]
    with pytest.raises(ProtocolError):
        Framer(63).feed(wire)


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_split_frames_rejects_length_below_four(length: int) -> None:
    data = b"Q" + length.to_bytes(4, "big") + b"\x00" * 8
    with pytest.raises(ProtocolError):
        list(split_frames(data, 0, 1 << 20))
    with pytest.raises(ProtocolError):
        Framer().feed(data)


def test_length_four_is_an_empty_body() -> None:
    assert list(split_frames(b"S\x00\x00\x00\x04", 0, 4)) == [(ord("S"), 0, 5)]


@pytest.mark.parametrize(
    ("header", "max_size"),
    [
        (b"\x00\x00\x04\x01", 1024),  # one above the limit
        (b"\x7f\xff\xff\xff", 1024),
        (b"\x7f\xff\xff\xff", codec.DEFAULT_MAX_MESSAGE),
        (b"\xff\xff\xff\xff", codec.DEFAULT_MAX_MESSAGE),  # -1 as int32
        (b"\x80\x00\x00\x00", codec.DEFAULT_MAX_MESSAGE),  # INT32_MIN
    ],
)
def test_oversized_length_rejected_from_header_alone(header: bytes, max_size: int) -> None:
    # Rejected as soon as the header arrives: no waiting for (or buffering) a huge body.
    data = b"d" + header
    with pytest.raises(ProtocolError):
        list(split_frames(data, 0, max_size))
    f = Framer(max_size)
    with pytest.raises(ProtocolError):
        f.feed(data)


def test_bad_length_after_good_messages_still_raises() -> None:
    data = Sync().encode() + b"Q\x00\x00\x00\x02"
    it = split_frames(data, 0, 1 << 20)
    assert next(it) == (ord("S"), 0, 5)
    with pytest.raises(ProtocolError):
        next(it)


def test_partial_header_is_not_validated_yet() -> None:
    # Fewer than five bytes cannot be judged; they are simply held.
    for n in range(1, 5):
        f = Framer(16)
        assert f.feed(b"d\xff\xff\xff\xff"[:n]) == []
        assert f.pending == n


# --------------------------------------------------------------------------- malformed bodies

FRONTEND_MALFORMED: list[tuple[bytes, bytes]] = [
    (b"Q", b""),
    (b"Q", b"SELECT 1"),  # no NUL
    (b"Q", b"SELECT 1\x00x"),  # trailing garbage
    (b"Q", b"SELECT 1\x00\x00"),
    (b"Q", b"\xff\xfe\x00"),  # invalid UTF-8
    (b"P", b""),
    (b"P", b"s\x00SELECT 1"),
    (b"P", b"s\x00SELECT 1\x00"),  # no parameter count
    (b"P", b"s\x00SELECT 1\x00\x00"),  # half a count
    (b"P", b"s\x00SELECT $1\x00\x00\x01\x00\x00\x00"),  # truncated OID
    (b"P", b"s\x00SELECT $1\x00\x00\x02\x00\x00\x00\x17"),  # fewer OIDs than announced
    (b"P", b"s\x00SELECT 1\x00\xff\xff"),  # negative count
    (b"P", b"s\x00SELECT 1\x00\x00\x00x"),  # trailing garbage
    (b"B", b""),
    (b"B", b"p\x00"),
    (b"B", b"p\x00s\x00"),
    (b"B", b"\x00\x00\xff\xff"),  # negative format count
    (b"B", b"\x00\x00\x00\x01"),  # format count 1, no code
    (b"B", b"\x00\x00\x00\x00\xff\xff"),  # negative parameter count
    (b"B", b"\x00\x00\x00\x00\x00\x01"),  # one parameter, nothing follows
    (b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05abc\x00\x00"),  # value longer than body
    (b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # value length -2
    (b"B", b"\x00\x00\x00\x00\x00\x01\x80\x00\x00\x00\x00\x00"),  # value length INT32_MIN
    (b"B", b"\x00\x00\x00\x00\x00\x00"),  # no result format count
    (b"B", b"\x00\x00\x00\x00\x00\x00\xff\xff"),  # negative result format count
    (b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00x"),  # trailing garbage
    (b"D", b""),
    (b"D", b"X\x00"),  # invalid subtype
    (b"D", b"s\x00"),  # subtype is case-sensitive
    (b"D", b"S"),  # no name
    (b"D", b"Ss1"),  # unterminated name
    (b"D", b"Ss1\x00x"),
    (b"E", b""),
    (b"E", b"p\x00"),  # no max_rows
    (b"E", b"p\x00\x00\x00\x00"),  # short max_rows
    (b"E", b"p\x00\x00\x00\x00\x00x"),  # trailing garbage
    (b"C", b""),
    (b"C", b"Z\x00"),
    (b"C", b"P"),
    (b"C", b"Pp1\x00\x00"),
    (b"S", b"x"),
    (b"H", b"x"),
    (b"X", b"x"),
    (b"c", b"x"),
    (b"f", b""),
    (b"f", b"boom"),
    (b"f", b"boom\x00x"),
    (b"F", b""),
    (b"F", b"\x00\x00\x06"),
    (b"F", b"\x00\x00\x06\x3e"),  # no format count
    (b"F", b"\x00\x00\x06\x3e\xff\xff"),  # negative format count
    (b"F", b"\x00\x00\x06\x3e\x00\x00\xff\xff"),  # negative argument count
    (b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x00"),  # no result format
    (b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x01\x00\x00\x00\x09x\x00\x00"),  # short argument
    (b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x00\x00\x00x"),  # trailing garbage
    # Not frontend message types (some are backend-only).
    (b"Z", b"I"),
    (b"R", b"\x00\x00\x00\x00"),
    (b"T", b"\x00\x00"),
    (b"K", b"\x00" * 8),
    (b"\x00", b""),
    (b"\xff", b""),
]

BACKEND_MALFORMED: list[tuple[bytes, bytes]] = [
    (b"R", b""),
    (b"R", b"\x00\x00\x00"),
    (b"K", b""),
    (b"K", b"\x00\x00\x10\x92\xff\xff\xff"),  # 7 bytes
    (b"K", b"\x00\x00\x10\x92\xff\xff\xff\xfe\x00"),  # 9 bytes
    (b"1", b"x"),
    (b"2", b"x"),
    (b"3", b"x"),
    (b"n", b"x"),
    (b"s", b"x"),
    (b"I", b"x"),
    (b"c", b"x"),
    (b"G", b""),
    (b"G", b"\x00"),  # no column count
    (b"G", b"\x00\x00"),  # half a column count
    (b"G", b"\x00\xff\xff"),  # negative column count
    (b"G", b"\x00\x00\x02\x00\x00"),  # fewer codes than announced
    (b"H", b"\x00\x00\x00x"),  # trailing garbage
    (b"W", b"\x00\x00\x01"),
    (b"C", b""),
    (b"C", b"SELECT 1"),
    (b"C", b"SELECT 1\x00x"),
    (b"C", b"\xc3\x28\x00"),  # invalid UTF-8
    (b"D", b""),
    (b"D", b"\x00"),
    (b"D", b"\xff\xff"),  # negative column count
    (b"D", b"\x00\x01"),  # one column, nothing follows
    (b"D", b"\x00\x01\x00\x00\x00\x04ab"),  # value shorter than its length
    (b"D", b"\x00\x01\xff\xff\xff\xfd"),  # length -3
    (b"D", b"\x00\x01\x7f\xff\xff\xff"),  # absurd length
    (b"D", b"\x00\x01\xff\xff\xff\xff\x00"),  # trailing garbage
    (b"T", b""),
    (b"T", b"\xff\xff"),  # negative field count
    (b"T", b"\x00\x01"),  # one field, nothing follows
    (b"T", b"\x00\x01id"),  # unterminated name
    (b"T", b"\x00\x01id\x00\x00\x00\x40\x00\x00\x01"),  # truncated field
    (b"T", b"\x00\x00x"),  # trailing garbage
    (b"t", b""),
    (b"t", b"\xff\xff"),
    (b"t", b"\x00\x02\x00\x00\x00\x17"),  # fewer OIDs than announced
    (b"t", b"\x00\x00\x00"),
    (b"S", b""),
    (b"S", b"client_encoding\x00"),  # no value
    (b"S", b"client_encoding\x00UTF8"),  # unterminated value
    (b"S", b"a\x00b\x00c"),
    (b"Z", b""),
    (b"Z", b"X"),  # invalid transaction status
    (b"Z", b"i"),
    (b"Z", b"\x00"),
    (b"Z", b"II"),
    (b"A", b""),
    (b"A", b"\x00\x00\x00\x4d"),
    (b"A", b"\x00\x00\x00\x4dchan\x00"),
    (b"A", b"\x00\x00\x00\x4dchan\x00hi\x00x"),
    (b"V", b""),
    (b"V", b"\xff\xff\xff\xfe"),  # length -2
    (b"V", b"\x00\x00\x00\x03ok"),
    (b"V", b"\x00\x00\x00\x01ok"),
    (b"v", b""),
    (b"v", b"\x00\x00\x00\x00"),
    (b"v", b"\x00\x00\x00\x00\xff\xff\xff\xff"),  # negative count
    (b"v", b"\x00\x00\x00\x00\x00\x00\x00\x01"),  # one option, nothing follows
    (b"v", b"\x00\x00\x00\x00\x7f\xff\xff\xff_pq_.a\x00"),  # absurd count
    (b"v", b"\x00\x00\x00\x00\x00\x00\x00\x00x"),
    (b"E", b""),  # no terminator
    (b"E", b"S"),  # unterminated field
    (b"E", b"SERROR\x00"),  # no final terminator
    (b"E", b"SERROR\x00\x00x"),  # trailing garbage
    (b"N", b""),
    (b"N", b"SNOTICE\x00"),
    # Not backend message types (some are frontend-only).
    (b"Q", b"SELECT 1\x00"),
    (b"P", b"\x00\x00\x00\x00"),
    (b"B", b""),
    (b"X", b""),
    (b"p", b"pw\x00"),
    (b"\x00", b""),
    (b"\xff", b""),
]


@pytest.mark.parametrize(("typ", "body"), FRONTEND_MALFORMED)
def test_decode_frontend_rejects_malformed(typ: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frontend(typ, body)


@pytest.mark.parametrize(("typ", "body"), BACKEND_MALFORMED)
def test_decode_backend_rejects_malformed(typ: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_backend(typ, body)


def _outcome(decoder: object, typ: bytes, body: bytes) -> None:
    assert callable(decoder)
    try:
        msg = decoder(typ, body)
    except ProtocolError:
        return
    assert isinstance(msg, Message)


@pytest.mark.parametrize(("msg", "wire"), FRONTEND_CASES, ids=_ids(FRONTEND_CASES))
def test_frontend_every_truncation_and_extension(msg: Message, wire: bytes) -> None:
    body = wire[5:]
    for cut in range(len(body)):
        _outcome(decode_frontend, wire[:1], body[:cut])
    if msg.TYPE not in (b"d", b"p"):  # raw-body messages accept anything
        for cut in range(len(body)):
            with pytest.raises(ProtocolError):
                decode_frontend(wire[:1], body[:cut])
        with pytest.raises(ProtocolError):
            decode_frontend(wire[:1], body + b"\x00")


@pytest.mark.parametrize(("msg", "wire"), BACKEND_CASES, ids=_ids(BACKEND_CASES))
def test_backend_every_truncation_and_extension(msg: Message, wire: bytes) -> None:
    body = wire[5:]
    raw_tail = msg.TYPE in (b"d", b"R")  # CopyData and Authentication data are opaque
    for cut in range(len(body)):
        if raw_tail and cut >= (4 if msg.TYPE == b"R" else 0):
            _outcome(decode_backend, wire[:1], body[:cut])
            continue
        with pytest.raises(ProtocolError):
            decode_backend(wire[:1], body[:cut])
    if not raw_tail:
        with pytest.raises(ProtocolError):
            decode_backend(wire[:1], body + b"\x00")


# --------------------------------------------------------------------------- cstr helpers


def test_one_cstr() -> None:
    wire = Execute("portal_1", 0).encode()
    assert one_cstr(wire, 5, len(wire)) == b"portal_1"
    assert one_cstr(bytearray(wire), 5, len(wire)) == b"portal_1"
    assert isinstance(one_cstr(bytearray(wire), 5, len(wire)), bytes)
    assert one_cstr(Describe(b"P", "").encode(), 6, 7) == b""
    assert one_cstr(b"abc\x00def\x00", 4, 8) == b"def"


def test_one_cstr_respects_end() -> None:
    buf = b"abc\x00"
    with pytest.raises(ProtocolError):
        one_cstr(buf, 0, 3)  # the NUL lies just outside the window
    with pytest.raises(ProtocolError):
        one_cstr(b"abc", 0, 3)
    with pytest.raises(ProtocolError):
        one_cstr(b"", 0, 0)


def test_two_cstrs() -> None:
    wire = Bind("portal", "stmt", (1,), (None,), ()).encode()
    assert two_cstrs(wire, 5, len(wire)) == (b"portal", b"stmt")
    assert two_cstrs(bytearray(wire), 5, len(wire)) == (b"portal", b"stmt")
    parse = Parse("", "SELECT 1").encode()
    assert two_cstrs(parse, 5, len(parse)) == (b"", b"SELECT 1")
    assert two_cstrs(b"\x00\x00", 0, 2) == (b"", b"")
    a, b = two_cstrs(bytearray(b"xa\x00b\x00"), 1, 5)
    assert (a, b) == (b"a", b"b")
    assert type(a) is bytes and type(b) is bytes


def test_two_cstrs_respects_end() -> None:
    with pytest.raises(ProtocolError):
        two_cstrs(b"a\x00b", 0, 3)  # second string unterminated
    with pytest.raises(ProtocolError):
        two_cstrs(b"a\x00b\x00", 0, 3)  # second NUL outside the window
    with pytest.raises(ProtocolError):
        two_cstrs(b"ab", 0, 2)
    with pytest.raises(ProtocolError):
        two_cstrs(b"a\x00", 0, 1)


@pytest.mark.parametrize(
    "msg",
    [
        Bind("p1", "s1", (0, 1), (b"42", None), (1,)),
        Bind("", "", (1,), (b"\x00\x01", b"", None), ()),
        Bind("", "stmt", (), (), (0, 1)),
    ],
)
def test_bind_parts_cut_a_bind_where_rewrites_need(msg: Bind) -> None:
    """The in-place Bind rewrites (encryption, catalog names) see what the codec sees."""
    from pgcloak.proxy.wire import bind_parts

    wire = b"xx" + msg.encode() + b"yy"
    end = len(wire) - 2
    parts = bind_parts(wire, 2, end)
    assert parts.names == msg.portal.encode() + b"\0" + msg.statement.encode() + b"\0"
    assert tuple(parts.formats) == msg.param_formats
    assert tuple(parts.values) == msg.params
    assert [parts.format_of(k) for k in range(len(msg.params))] == [
        msg.param_formats[0]
        if len(msg.param_formats) == 1
        else (msg.param_formats[k] if k < len(msg.param_formats) else 0)
        for k in range(len(msg.params))
    ]
    result_formats = len(msg.result_formats).to_bytes(2, "big") + b"".join(
        f.to_bytes(2, "big") for f in msg.result_formats
    )
    assert wire[parts.tail : end] == result_formats
    nparams = len(msg.params).to_bytes(2, "big")
    assert wire[parts.params_at - 2 : parts.params_at] == nparams


def test_bind_parts_refuses_values_past_the_end() -> None:
    from pgcloak.proxy.wire import ProtocolError, bind_parts

    wire = Bind("", "", (), (b"abcdef",), ()).encode()
    cut = wire[:-6]  # the last value's bytes and the result formats are missing
    with pytest.raises(ProtocolError):
        bind_parts(cut, 0, len(cut))
