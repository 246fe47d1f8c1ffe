"""Property-based tests for the protocol codec: round trips, framing, fuzzing.

Example counts are kept small so the whole module runs in a few seconds on a
2-core machine; the hand-written byte tests are in test_codec.py.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    split_frames,
)

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings(FAST, max_examples=300)
# For strategies that draw whole lists of messages (the expensive ones to generate).
STREAMS = settings(FAST, max_examples=50)

# --------------------------------------------------------------------------- strategies

# Text that survives UTF-8 encoding (no surrogates) and fits a C string (no NUL).
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=24,
)
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=16,
)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
values = st.one_of(st.none(), st.binary(max_size=24))
small = {"max_size": 6}


def _tuple(elem: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elem, **small).map(tuple)


field_descriptions = st.builds(FieldDescription, texts, u32, i16, u32, i16, i32, i16)
error_fields = st.dictionaries(st.sampled_from("SVCMDHPpqWstcdnFLR"), texts, max_size=8)

frontend_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Query, texts),
    st.builds(Parse, texts, texts, _tuple(u32)),
    st.builds(Bind, texts, texts, _tuple(i16), _tuple(values), _tuple(i16)),
    st.builds(Describe, st.sampled_from([b"S", b"P"]), texts),
    st.builds(Execute, texts, i32),
    st.builds(Close, st.sampled_from([b"S", b"P"]), texts),
    st.just(Sync()),
    st.just(Flush()),
    st.just(Terminate()),
    st.builds(CopyData, st.binary(max_size=64)),
    st.just(CopyDone()),
    st.builds(CopyFail, texts),
    st.builds(FunctionCall, u32, _tuple(i16), _tuple(values), i16),
    st.builds(PasswordMessage, st.binary(max_size=64)),
)

backend_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Authentication, i32, st.binary(max_size=32)),
    st.builds(Authentication.sasl, st.lists(names, max_size=4)),
    st.builds(BackendKeyData, i32, i32),
    st.sampled_from(
        [
            ParseComplete(),
            BindComplete(),
            CloseComplete(),
            NoData(),
            PortalSuspended(),
            EmptyQueryResponse(),
            CopyDone(),
        ]
    ),
    st.builds(CopyInResponse, st.integers(0, 255), _tuple(i16)),
    st.builds(CopyOutResponse, st.integers(0, 255), _tuple(i16)),
    st.builds(CopyBothResponse, st.integers(0, 255), _tuple(i16)),
    st.builds(CommandComplete, texts),
    st.builds(DataRow, _tuple(values)),
    st.builds(RowDescription, _tuple(field_descriptions)),
    st.builds(ParameterDescription, _tuple(u32)),
    st.builds(ParameterStatus, texts, texts),
    st.builds(ReadyForQuery, st.sampled_from([b"I", b"T", b"E"])),
    st.builds(NotificationResponse, i32, texts, texts),
    st.builds(FunctionCallResponse, values),
    st.builds(NegotiateProtocolVersion, i32, _tuple(names)),
    st.builds(ErrorResponse, error_fields),
    st.builds(NoticeResponse, error_fields),
    st.builds(CopyData, st.binary(max_size=64)),
)

_SPECIAL_CODES = {
    codec.SSL_REQUEST_CODE,
    codec.GSSENC_REQUEST_CODE,
    codec.CANCEL_REQUEST_CODE,
}
startup_packets: st.SearchStrategy[codec.StartupPacket] = st.one_of(
    st.builds(
        StartupMessage,
        st.one_of(st.just(codec.PROTOCOL_3_0), i32.filter(lambda v: v not in _SPECIAL_CODES)),
        st.dictionaries(names, texts, max_size=6),
    ),
    st.just(SSLRequest()),
    st.just(GSSENCRequest()),
    st.builds(CancelRequest, i32, i32),
)

# --------------------------------------------------------------------------- round trips


def _check_round_trip(msg: Message, decoder: Callable[[bytes, bytes], Message]) -> None:
    wire = msg.encode()
    assert wire[:1] == msg.TYPE
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    decoded = decoder(wire[:1], wire[5:])
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


@FAST
@given(frontend_messages)
def test_frontend_round_trip(msg: Message) -> None:
    _check_round_trip(msg, decode_frontend)


@FAST
@given(backend_messages)
def test_backend_round_trip(msg: Message) -> None:
    _check_round_trip(msg, decode_backend)
    if isinstance(msg, ErrorResponse):
        decoded = decode_backend(msg.TYPE, msg.body())
        assert isinstance(decoded, ErrorResponse)
        assert list(decoded.fields.items()) == list(msg.fields.items())


@FAST
@given(st.lists(names, max_size=5))
def test_sasl_mechanism_list_round_trip(mechs: list[str]) -> None:
    msg = Authentication.sasl(mechs)
    decoded = decode_backend(b"R", msg.body())
    assert isinstance(decoded, Authentication)
    assert decoded.sasl_mechanisms() == mechs


@FAST
@given(names, values)
def test_sasl_initial_response_round_trip(mech: str, data: bytes | None) -> None:
    msg = SASLInitialResponse(mech, data)
    wire = msg.encode()
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    pw = decode_frontend(wire[:1], wire[5:])
    assert isinstance(pw, PasswordMessage)
    assert SASLInitialResponse.parse(pw.data) == msg


@FAST
@given(startup_packets)
def test_startup_round_trip(msg: codec.StartupPacket) -> None:
    wire = msg.encode()
    assert int.from_bytes(wire[:4], "big") == len(wire)
    decoded = decode_startup(wire)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire
    if isinstance(msg, StartupMessage):
        assert isinstance(decoded, StartupMessage)
        assert list(decoded.params.items()) == list(msg.params.items())
        if len(wire) <= codec.MAX_STARTUP_PACKET:
            assert codec.read_startup_length(wire) == len(wire)


# --------------------------------------------------------------------------- framing


@STREAMS
@given(
    st.lists(st.one_of(frontend_messages, backend_messages), min_size=1, max_size=6),
    st.data(),
)
def test_framer_random_chunking(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(m.encode() for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    f = Framer()
    out: list[tuple[bytes, bytes]] = []
    for c in chunks:
        out.extend(f.feed(c))
    assert out == [(m.TYPE, m.body()) for m in msgs]
    assert f.pending == 0


@STREAMS
@given(
    st.lists(st.one_of(frontend_messages, backend_messages), min_size=1, max_size=5),
    st.data(),
)
def test_split_frames_holds_any_tail(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(m.encode() for m in msgs)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    frames = list(split_frames(stream[:cut], 0, codec.DEFAULT_MAX_MESSAGE))
    complete = 0
    total = 0
    for m in msgs:
        total += len(m.encode())
        if total > cut:
            break
        complete += 1
    assert len(frames) == complete
    for (typ, s, e), m in zip(frames, msgs, strict=False):
        assert bytes((typ,)) == m.TYPE
        assert stream[s:e] == m.encode()


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(4, 1 << 16))
def test_split_frames_length_validation(length: int, max_size: int) -> None:
    data = b"d" + length.to_bytes(4, "big")
    try:
        frames = list(split_frames(data, 0, max_size))
    except ProtocolError:
        assert length < 4 or length > max_size
    else:
        assert 4 <= length <= max_size
        assert frames == ([(ord("d"), 0, 5)] if length == 4 else [])


@FAST
@given(st.binary(min_size=4, max_size=4))
def test_read_startup_length_bounds(header: bytes) -> None:
    length = int.from_bytes(header, "big", signed=True)
    try:
        got = codec.read_startup_length(header)
    except ProtocolError:
        assert not 8 <= length <= codec.MAX_STARTUP_PACKET
    else:
        assert got == length
        assert 8 <= length <= codec.MAX_STARTUP_PACKET


# --------------------------------------------------------------------------- fuzzing

FRONTEND_TYPES = sorted(set(b"QPBDECSHXdcfFp"))
BACKEND_TYPES = sorted(set(b"RK123nsIGHWCDTtSZAVvENdc"))
type_bytes = st.one_of(
    st.sampled_from(sorted(set(FRONTEND_TYPES) | set(BACKEND_TYPES))),
    st.integers(0, 255),
).map(lambda b: bytes((b,)))


def _decode_or_reject(decoder: Callable[[bytes, bytes], Message], typ: bytes, body: bytes) -> None:
    """Malformed input may only raise ProtocolError; accepted input must re-encode."""
    try:
        msg = decoder(typ, body)
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert typ == msg.TYPE
    # Whatever the decoder accepts is a faithful view of the bytes: the proxy can
    # forward a re-encoded message without changing it.
    assert msg.body() == body


@FUZZ
@given(type_bytes, st.binary(max_size=48))
def test_fuzz_decode_frontend(typ: bytes, body: bytes) -> None:
    _decode_or_reject(decode_frontend, typ, body)


@FUZZ
@given(type_bytes, st.binary(max_size=48))
def test_fuzz_decode_backend(typ: bytes, body: bytes) -> None:
    _decode_or_reject(decode_backend, typ, body)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Message]) -> tuple[bytes, bytes]:
    """A valid message body with a few bytes flipped, inserted or removed."""
    msg = draw(messages)
    body = bytearray(msg.body())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = draw(st.integers(0, len(body)))
        if op == "flip" and pos < len(body):
            body[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            body[pos:pos] = bytes([draw(st.integers(0, 255))])
        elif pos < len(body):
            del body[pos]
    return msg.TYPE, bytes(body)


@FAST
@given(mutated(frontend_messages))
def test_fuzz_mutated_frontend(case: tuple[bytes, bytes]) -> None:
    _decode_or_reject(decode_frontend, *case)


@FAST
@given(mutated(backend_messages))
def test_fuzz_mutated_backend(case: tuple[bytes, bytes]) -> None:
    _decode_or_reject(decode_backend, *case)


def _startup_or_reject(packet: bytes) -> None:
    try:
        msg = decode_startup(packet)
    except ProtocolError:
        return
    # Not necessarily byte-identical: a repeated parameter name keeps its last value,
    # which is also what the server does with it.
    again = decode_startup(msg.encode())
    assert again == msg
    if not isinstance(msg, StartupMessage) or len(msg.params) == packet.count(b"\x00") // 2:
        assert msg.encode() == packet


@FUZZ
@given(st.binary(max_size=48))
def test_fuzz_decode_startup(tail: bytes) -> None:
    _startup_or_reject((len(tail) + 4).to_bytes(4, "big") + tail)


@FUZZ
@given(st.binary(max_size=40), st.sampled_from(sorted(_SPECIAL_CODES | {codec.PROTOCOL_3_0})))
def test_fuzz_decode_startup_known_codes(tail: bytes, code: int) -> None:
    _startup_or_reject((len(tail) + 8).to_bytes(4, "big") + code.to_bytes(4, "big") + tail)


@FUZZ
@given(st.binary(max_size=64), st.integers(4, 64))
def test_fuzz_framer_never_raises_other_errors(data: bytes, max_size: int) -> None:
    f = Framer(max_size)
    try:
        out = f.feed(data)
    except ProtocolError:
        return
    assert b"".join(frame_bytes(t, b) for t, b in out) == data[: len(data) - f.pending]


def frame_bytes(typ: bytes, body: bytes) -> bytes:
    return codec.frame(typ, body)
