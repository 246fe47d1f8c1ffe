"""Byte-level tests for the relay hot path: framing, forwarding, streaming.

No sockets: the relay writes into a `Sink`, a plain byte recorder with the one
method (`write`) a relay uses on its transport. Handlers here are recorders,
so every test can check both what reached the peer and what the handlers saw.
`feed` reports violations through `on_error` and counts messages in the
metrics, so the harness reads both from there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast

import pytest
from helpers import Sink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcloak.proxy.codec import (
    DEFAULT_MAX_MESSAGE,
    Bind,
    Close,
    CommandComplete,
    CopyData,
    DataRow,
    Describe,
    Execute,
    Message,
    Parse,
    ProtocolError,
    Query,
    ReadyForQuery,
    Sync,
    frame,
)
from pgcloak.proxy.relay import STREAM_MIN, Relay
from pgcloak.proxy.session import Session
from pgcloak.proxy.stats import Metrics

Handler = Callable[[bytes, int, int], bytes | None]

# Frontend message types a session relay accepts.
CLIENT_TYPES = b"QPBDECSFHdcfX"


class Recorder:
    """A pass-through handler that remembers each message it was shown."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, buf: bytes, start: int, end: int) -> bytes | None:
        self.seen.append(bytes(buf[start:end]))
        return None


class Harness:
    """A relay writing into a Sink, with its metrics and reported errors."""

    def __init__(
        self,
        handlers: dict[int, Handler | None],
        max_size: int = DEFAULT_MAX_MESSAGE,
        sender: str = "frontend",
    ) -> None:
        self.sink = Sink()
        self.metrics = Metrics()
        self.errors: list[ProtocolError] = []
        self.relay = Relay(
            cast(asyncio.BaseTransport, self.sink),
            handlers,
            max_size,
            sender,
            metrics=self.metrics,
            on_error=self.errors.append,
        )
        self.frontend = sender == "frontend"

    @property
    def messages(self) -> int:
        m = self.metrics
        return m.messages_from_client if self.frontend else m.messages_from_server

    def feed(self, data: bytes) -> int:
        """Feed one read; return how many messages the relay counted for it."""
        before = self.messages
        self.relay.feed(data)
        assert self.errors == []
        return self.messages - before

    @property
    def tail(self) -> bytes:
        return self.relay.tail

    @property
    def mid_message(self) -> bool:
        return self.relay.mid_message

    def feed_error(self, data: bytes) -> ProtocolError:
        self.relay.feed(data)
        assert len(self.errors) == 1
        return self.errors[0]


def recording_relay(
    types: bytes = CLIENT_TYPES, passthrough: bytes = b"", max_size: int = DEFAULT_MAX_MESSAGE
) -> tuple[Harness, Sink, Recorder]:
    """Every type in `types` is valid; those in `passthrough` get no handler."""
    rec = Recorder()
    handlers: dict[int, Handler | None] = {t: (None if t in passthrough else rec) for t in types}
    h = Harness(handlers, max_size)
    return h, h.sink, rec


def encode_all(msgs: list[Message]) -> bytes:
    return b"".join(m.encode() for m in msgs)


BATCH: list[Message] = [
    Query("select 1"),
    Parse("s1", "select $1::int", (23,)),
    Bind("p1", "s1", (0,), (b"42",), (1,)),
    Describe(b"P", "p1"),
    Execute("p1", 0),
    Close(b"S", "s1"),
    Sync(),
]


# --------------------------------------------------------------------------- one feed


def test_complete_batch_is_written_once_as_the_same_object() -> None:
    relay, sink, rec = recording_relay()
    data = encode_all(BATCH)
    assert relay.feed(data) == len(BATCH)
    assert len(sink.writes) == 1
    assert sink.writes[0] is data
    assert rec.seen == [m.encode() for m in BATCH]
    assert not relay.mid_message


def test_complete_batch_through_real_session_handlers_is_not_copied() -> None:
    session = Session(Metrics())
    relay = Harness(session.client_handlers)
    sink = relay.sink
    data = encode_all(BATCH)
    assert relay.feed(data) == len(BATCH)
    assert len(sink.writes) == 1
    assert sink.writes[0] is data
    assert len(session.inflight) == 7  # Query + 6 extended requests incl. Sync


def test_passthrough_types_skip_the_handler_but_are_forwarded() -> None:
    relay, sink, rec = recording_relay(passthrough=b"d")
    msgs: list[Message] = [CopyData(b"a\n"), CopyData(b"b\n"), Query("x")]
    data = encode_all(msgs)
    assert relay.feed(data) == 3
    assert sink.writes == [data]
    assert rec.seen == [Query("x").encode()]


def test_trailing_partial_message_is_held_back() -> None:
    relay, sink, rec = recording_relay()
    complete = encode_all(BATCH[:3])
    partial = Execute("p1").encode()
    assert relay.feed(complete + partial[:7]) == 3
    assert sink.data == complete
    assert len(sink.writes) == 1
    assert relay.feed(partial[7:]) == 1
    assert sink.data == complete + partial
    assert rec.seen[-1] == partial


def test_header_only_fragment_writes_nothing() -> None:
    relay, sink, rec = recording_relay()
    msg = Query("select 1").encode()
    for i in range(4):
        assert relay.feed(msg[i : i + 1]) == 0
    assert sink.data == b""
    assert relay.feed(msg[4:]) == 1
    assert sink.data == msg
    assert rec.seen == [msg]


def test_empty_feed_is_harmless() -> None:
    relay, sink, rec = recording_relay()
    assert relay.feed(b"") == 0
    assert sink.data == b""
    assert rec.seen == []


def test_zero_length_body_messages() -> None:
    relay, sink, rec = recording_relay()
    data = Sync().encode() * 3
    assert relay.feed(data) == 3
    assert sink.writes == [data]
    assert rec.seen == [b"S\x00\x00\x00\x04"] * 3


# --------------------------------------------------------------------------- split feeds


@pytest.mark.parametrize(
    "msgs",
    [
        [Query("select 1")],
        [Sync()],
        [Parse("", "select 1"), Bind("", ""), Execute(""), Sync()],
    ],
    ids=["query", "sync", "pipeline"],
)
def test_split_at_every_byte_position(msgs: list[Message]) -> None:
    data = encode_all(msgs)
    bounds = []
    pos = 0
    for m in msgs:
        pos += len(m.encode())
        bounds.append(pos)
    for k in range(len(data) + 1):
        relay, sink, rec = recording_relay()
        n1 = relay.feed(data[:k])
        complete = max([b for b in bounds if b <= k], default=0)
        # Only whole messages leave the relay, and each as soon as it is whole.
        assert sink.data == data[:complete], k
        n2 = relay.feed(data[k:])
        assert n1 + n2 == len(msgs), k
        assert sink.data == data, k
        assert rec.seen == [m.encode() for m in msgs], k
        assert relay.tail == b""


_MSG = st.one_of(
    st.builds(Query, st.text(max_size=40).filter(lambda s: "\0" not in s)),
    st.builds(Execute, st.sampled_from(["", "p1", "portal"]), st.integers(0, 10)),
    st.builds(Describe, st.sampled_from([b"S", b"P"]), st.sampled_from(["", "s1"])),
    st.builds(CopyData, st.binary(max_size=300)),
    st.just(Sync()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(_MSG, min_size=1, max_size=30), data=st.data())
def test_random_chunking_reassembles_exactly(msgs: list[Message], data: st.DataObject) -> None:
    raw = [m.encode() for m in msgs]
    stream = b"".join(raw)
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=12, unique=True), label="cuts")
    )
    relay, sink, rec = recording_relay(passthrough=b"d")
    bounds = []
    pos = 0
    for r in raw:
        pos += len(r)
        bounds.append(pos)
    total = 0
    prev = 0
    for cut in [*cuts, len(stream)]:
        total += relay.feed(stream[prev:cut])
        prev = cut
        # Forwarded bytes are always exactly the complete messages so far.
        assert sink.data == stream[: max([b for b in bounds if b <= cut], default=0)]
    assert sink.data == stream
    assert total == len(msgs)
    assert rec.seen == [r for r in raw if r[:1] != b"d"]
    assert relay.tail == b""
    assert not relay.mid_message


# --------------------------------------------------------------------------- streaming


def _big_copy_data(size: int) -> bytes:
    body = bytes(range(256)) * (size // 256 + 1)
    return CopyData(body[:size]).encode()


def test_large_passthrough_message_is_streamed_and_framing_resumes() -> None:
    relay, sink, rec = recording_relay(passthrough=b"d")
    before = Query("copy t from stdin").encode()
    big = _big_copy_data(STREAM_MIN + 5000)
    after = [Sync().encode(), Query("select 2").encode()]
    stream = before + big + b"".join(after)
    big_end = len(before) + len(big)

    chunk = 64 * 1024
    total = 0
    streamed_early = False
    for off in range(0, len(stream), chunk):
        total += relay.feed(stream[off : off + chunk])
        if off + chunk < big_end:
            # Bytes of the big message reach the peer before it is complete ...
            assert len(sink.data) == off + chunk
            assert relay.mid_message
            streamed_early = True
    assert streamed_early
    # ... and everything after it is framed again: handlers see each message once.
    assert sink.data == stream
    assert total == 4
    assert rec.seen == [before, *after]
    assert not relay.mid_message
    assert relay.tail == b""


def test_streamed_message_end_and_next_header_split_across_feeds() -> None:
    relay, sink, rec = recording_relay(passthrough=b"d")
    big = _big_copy_data(STREAM_MIN + 10)
    nxt = Query("select 3").encode()
    stream = big + nxt
    cut1 = 100  # inside the big message: streaming starts
    cut2 = len(big) + 2  # the rest of it plus 2 bytes of the next header
    counts = [relay.feed(stream[:cut1]), relay.feed(stream[cut1:cut2]), relay.feed(stream[cut2:])]
    assert counts == [1, 0, 1]  # the streamed message is counted once, when it starts
    assert sink.data == stream
    assert rec.seen == [nxt]


def test_streamed_message_fed_byte_by_byte_at_its_end() -> None:
    relay, sink, _rec = recording_relay(passthrough=b"d")
    big = _big_copy_data(STREAM_MIN)
    assert relay.feed(big[:-3]) == 1
    for i in range(3, 0, -1):
        assert relay.mid_message
        assert relay.feed(big[-i : len(big) - i + 1]) == 0
    assert not relay.mid_message
    assert sink.data == big


def test_large_message_with_a_handler_is_buffered_not_streamed() -> None:
    relay, sink, rec = recording_relay()
    big = Query("select '" + "x" * (STREAM_MIN + 100) + "'").encode()
    chunk = 64 * 1024
    for off in range(0, len(big) - chunk, chunk):
        assert relay.feed(big[off : off + chunk]) == 0
        assert sink.data == b""
        assert not relay.mid_message
    assert relay.feed(big[(len(big) - 1) // chunk * chunk :]) == 1
    assert sink.data == big
    assert rec.seen == [big]


def test_small_passthrough_message_is_not_streamed() -> None:
    relay, sink, _rec = recording_relay(passthrough=b"d")
    msg = _big_copy_data(STREAM_MIN // 4)
    assert relay.feed(msg[:-1]) == 0
    assert sink.data == b""
    assert relay.feed(msg[-1:]) == 1
    assert sink.data == msg


# --------------------------------------------------------------------------- rewriting


def _rewriter(target: bytes, replacement: bytes, rec: Recorder) -> Handler:
    def handler(buf: bytes, start: int, end: int) -> bytes | None:
        rec(buf, start, end)
        return replacement if buf[start:end] == target else None

    return handler


@pytest.mark.parametrize("index", [0, 2, 4])
def test_handler_replacement_substitutes_exactly_that_message(index: int) -> None:
    msgs: list[Message] = [
        Parse("", "select 1"),
        Query("select 1"),
        Query("select 2"),
        Bind("", ""),
        Query("select 3"),
    ]
    raw = [m.encode() for m in msgs]
    target = raw[index]
    replacement = Query("SELECT 'rewritten', 42").encode()
    rec = Recorder()
    h = _rewriter(target, replacement, rec)
    relay = Harness({ord("Q"): h, ord("P"): h, ord("B"): h})
    sink = relay.sink
    assert relay.feed(b"".join(raw)) == 5
    expected = raw.copy()
    expected[index] = replacement
    assert sink.data == b"".join(expected)
    assert len(sink.writes) == 1
    assert rec.seen == raw


def test_handler_replacement_with_partial_tail_and_empty_replacement() -> None:
    q1, q2, q3 = (Query(f"select {i}").encode() for i in (1, 2, 3))
    rec = Recorder()
    relay = Harness({ord("Q"): _rewriter(q2, b"", rec)})  # drop q2
    sink = relay.sink
    assert relay.feed(q1 + q2 + q3[:6]) == 2
    assert sink.data == q1
    assert relay.feed(q3[6:]) == 1
    assert sink.data == q1 + q3
    assert rec.seen == [q1, q2, q3]


def test_handler_replacement_then_streamed_message_in_same_feed() -> None:
    q = Query("select 1").encode()
    replacement = Query("select 100").encode()
    big = _big_copy_data(STREAM_MIN + 1)
    rec = Recorder()
    relay = Harness({ord("Q"): _rewriter(q, replacement, rec), ord("d"): None})
    sink = relay.sink
    assert relay.feed(q + big[:1000]) == 2
    assert sink.data == replacement + big[:1000]
    assert relay.mid_message
    assert relay.feed(big[1000:] + q) == 1
    assert sink.data == replacement + big + replacement


def test_backend_direction_rewrite() -> None:
    rows = [DataRow((b"1",)).encode(), DataRow((b"2",)).encode()]
    tail = [CommandComplete("SELECT 2").encode(), ReadyForQuery(b"I").encode()]
    fixed = DataRow((b"one",)).encode()
    rec = Recorder()
    relay = Harness(
        {ord("D"): _rewriter(rows[0], fixed, rec), ord("C"): None, ord("Z"): None},
        sender="backend",
    )
    sink = relay.sink
    assert relay.feed(b"".join(rows + tail)) == 4
    assert sink.data == fixed + rows[1] + b"".join(tail)


# --------------------------------------------------------------------------- violations
# A violation is reported through on_error (feed is the protocol's data_received).


@pytest.mark.parametrize("sender", ["frontend", "backend"])
def test_unknown_type_reported_naming_the_type(sender: str) -> None:
    h = Harness({ord("Q"): None}, sender=sender)
    exc = h.feed_error(frame(b"x", b"abc\0"))
    assert isinstance(exc, ProtocolError)
    assert str(exc) == f"invalid {sender} message type 120"
    assert exc.sqlstate == "08P01"
    assert h.sink.data == b""


def test_unknown_type_detected_from_the_header_alone() -> None:
    h, sink, _rec = recording_relay()
    exc = h.feed_error(b"z\x00\x01\x00\x00")  # claims 64 KiB, none of it here yet
    assert re.search(r"type 122\b", str(exc))
    assert sink.data == b""


def test_unknown_type_after_valid_messages_in_one_feed() -> None:
    h, _sink, rec = recording_relay()
    exc = h.feed_error(Query("select 1").encode() + frame(b"\0", b""))
    assert str(exc) == "invalid frontend message type 0"
    assert rec.seen == [Query("select 1").encode()]


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_length_below_four_is_reported(length: int) -> None:
    h, _sink, _rec = recording_relay()
    exc = h.feed_error(b"Q" + length.to_bytes(4, "big") + b"\0" * 8)
    assert str(exc) == f"invalid frontend message length {length}"
    assert exc.sqlstate == "08P01"


def test_length_limits_against_max_size() -> None:
    max_size = 100
    ok = frame(b"Q", b"x" * (max_size - 5) + b"\0")  # length field == max_size
    assert int.from_bytes(ok[1:5], "big") == max_size
    h, sink, rec = recording_relay(max_size=max_size)
    assert h.feed(ok) == 1
    assert sink.data == ok
    assert rec.seen == [ok]

    too_big = frame(b"Q", b"x" * (max_size - 4) + b"\0")
    h, _sink, _rec = recording_relay(max_size=max_size)
    # Detected from the header, before the body arrives.
    assert str(h.feed_error(too_big[:5])) == f"invalid frontend message length {max_size + 1}"

    h, _sink, _rec = recording_relay(max_size=max_size)
    # A negative int32 is never a valid length.
    assert str(h.feed_error(b"Q\xff\xff\xff\xff")).endswith("length 4294967295")


def test_length_limit_applies_to_passthrough_types_too() -> None:
    h, sink, _rec = recording_relay(passthrough=b"d", max_size=STREAM_MIN)
    big = _big_copy_data(STREAM_MIN * 2)
    assert "invalid frontend message length" in str(h.feed_error(big[:4096]))
    assert sink.data == b""
    assert not h.mid_message


# --------------------------------------------------------------------------- counts


def test_message_counts_per_feed() -> None:
    relay, _sink, _rec = recording_relay()
    q = Query("select 1").encode()
    s = Sync().encode()
    assert relay.feed(q * 5) == 5
    assert relay.feed(q[:3]) == 0
    assert relay.feed(q[3:] + s + q[:-1]) == 2
    assert relay.feed(q[-1:]) == 1
    assert relay.feed(s * 100) == 100
    assert relay.metrics.messages_from_client == 108
    assert relay.metrics.messages_from_server == 0


def test_metrics_per_direction_and_reads() -> None:
    q = Query("select 1").encode()
    front = Harness({ord("Q"): None})
    front.feed(q + q[:4])
    front.feed(q[4:])
    assert front.metrics.bytes_from_client == 2 * len(q)
    assert front.metrics.messages_from_client == 2
    assert front.metrics.bytes_to_client == front.metrics.messages_from_server == 0
    assert front.relay.reads == 2  # the idle timer compares snapshots of this

    z = ReadyForQuery(b"I").encode()
    back = Harness({ord("Z"): None}, sender="backend")
    back.feed(z * 3)
    assert back.metrics.bytes_to_client == 3 * len(z)
    assert back.metrics.messages_from_server == 3
    assert back.metrics.bytes_from_client == back.metrics.messages_from_client == 0
    assert back.relay.reads == 1
