"""Byte-level tests for per-session protocol state (`pgcloak.proxy.session`).

No sockets: a `Wire` puts one `Session` between two `Relay`s (client->server and
server->client) exactly as server.py wires them, with byte sinks as transports.
Client and server messages are encoded with `pgcloak.proxy.codec` and fed
through the relays; each feed also checks the bytes were forwarded unchanged.

The server responses follow what PostgreSQL 15 actually sends; the less obvious
ones (Sync swallowed during COPY FROM STDIN, portal "" dropped by a simple
Query, a failed Parse("") dropping the unnamed statement) were checked against
a real server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import pytest
from helpers import Sink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcloak.proxy.codec import (
    DEFAULT_MAX_MESSAGE,
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
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
    Message,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    Terminate,
    frame,
)
from pgcloak.proxy.relay import Relay
from pgcloak.proxy.session import KIND_NAMES, Session
from pgcloak.proxy.stats import Metrics

# --------------------------------------------------------------------------- harness


class Wire:
    """One Session between a frontend relay and a backend relay."""

    def __init__(self, txn_status: bytes = b"I") -> None:
        self.metrics = Metrics()
        self.session = Session(self.metrics)
        self.session.txn_status = txn_status
        self.to_server = Sink()
        self.to_client = Sink()
        self.errors: list[ProtocolError] = []
        s = self.session
        self.client = Relay(
            cast(asyncio.BaseTransport, self.to_server),
            s.client_handlers,
            DEFAULT_MAX_MESSAGE,
            "frontend",
            metrics=self.metrics,
            on_error=self.errors.append,
        )
        self.server = Relay(
            cast(asyncio.BaseTransport, self.to_client),
            s.server_handlers,
            DEFAULT_MAX_MESSAGE,
            "backend",
            metrics=self.metrics,
            on_error=self.errors.append,
        )

    def _feed(self, relay: Relay, sink: Sink, msgs: tuple[Message | bytes, ...]) -> None:
        data = b"".join(m if isinstance(m, bytes) else m.encode() for m in msgs)
        mark = len(sink.data)
        m = self.metrics
        before = m.messages_from_client + m.messages_from_server
        relay.feed(data)
        assert self.errors == []
        assert m.messages_from_client + m.messages_from_server - before == len(msgs)
        assert sink.data[mark:] == data  # forwarded unchanged

    def send(self, *msgs: Message | bytes) -> None:
        """Client -> server."""
        self._feed(self.client, self.to_server, msgs)

    def recv(self, *msgs: Message | bytes) -> None:
        """Server -> client."""
        self._feed(self.server, self.to_client, msgs)

    def send_bad(self, raw: bytes) -> ProtocolError:
        """Client -> server bytes the session must reject; return the error."""
        self.client.feed(raw)
        assert len(self.errors) == 1
        return self.errors.pop()

    def recv_bad(self, raw: bytes) -> ProtocolError:
        self.server.feed(raw)
        assert len(self.errors) == 1
        return self.errors.pop()

    @property
    def pending(self) -> list[str]:
        return [KIND_NAMES[p[0]] for p in self.session.inflight]

    @property
    def latency_count(self) -> float:
        buckets, _total = self.metrics.latency_histogram()
        return buckets[-1][1]

    def assert_settled(self) -> None:
        s = self.session
        assert list(s.inflight) == []
        assert s.desyncs == 0
        assert not s.discard_until_sync
        assert s.copy_mode is None


INT_ROW = RowDescription((FieldDescription("a", type_oid=23, type_size=4),))
TEXT_ROW = RowDescription((FieldDescription("t"), FieldDescription("u")))


def err(message: str = "boom", sqlstate: str = "XX000", severity: str = "ERROR") -> ErrorResponse:
    return ErrorResponse.make(severity, sqlstate, message)


def row(*values: bytes | None) -> DataRow:
    return DataRow(values)


# --------------------------------------------------------------------------- basics


def test_new_session_is_idle_and_empty() -> None:
    w = Wire()
    s = w.session
    assert s.idle
    assert s.txn_status == b"I"
    assert s.statements == {} and s.portals == {} and s.server_params == {}
    assert not s.server_sent_fatal and not s.client_terminated
    w.assert_settled()


def test_simple_query_with_multiple_statements() -> None:
    w = Wire()
    w.send(Query("select 1; select 't', 'u'; insert into t values (1); select 2"))
    assert w.pending == ["Query"]
    assert not w.session.idle
    w.recv(INT_ROW, row(b"1"), CommandComplete("SELECT 1"))
    w.recv(TEXT_ROW, row(b"t", b"u"), row(b"v", None), CommandComplete("SELECT 2"))
    w.recv(CommandComplete("INSERT 0 1"))
    assert w.pending == ["Query"]  # result sets do not consume the Query
    w.recv(INT_ROW, row(b"2"), CommandComplete("SELECT 1"))
    assert w.pending == ["Query"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.idle
    assert w.metrics.queries == 1
    assert w.latency_count == 1


def test_simple_query_responses_in_one_feed() -> None:
    w = Wire()
    w.send(Query("select 1; select 2"), Query("select 3"))
    assert w.pending == ["Query", "Query"]
    w.recv(
        INT_ROW,
        row(b"1"),
        CommandComplete("SELECT 1"),
        INT_ROW,
        row(b"2"),
        CommandComplete("SELECT 1"),
        ReadyForQuery(b"I"),
        INT_ROW,
        row(b"3"),
        CommandComplete("SELECT 1"),
        ReadyForQuery(b"I"),
    )
    w.assert_settled()
    assert w.metrics.queries == 2
    assert w.latency_count == 2


def test_empty_query() -> None:
    w = Wire()
    w.send(Query(""))
    w.recv(EmptyQueryResponse(), ReadyForQuery(b"I"))
    w.assert_settled()


# --------------------------------------------------------------------------- extended


@pytest.mark.parametrize("n", [1, 3, 12])
def test_extended_pipeline_tracks_statements_and_portals(n: int) -> None:
    w = Wire()
    batch: list[Message] = []
    for i in range(n):
        batch += [
            Parse(f"s{i}", f"select {i} + $1", (23,)),
            Bind(f"p{i}", f"s{i}", (0,), (str(i).encode(),), (0,)),
            Describe(b"P", f"p{i}"),
            Execute(f"p{i}"),
        ]
    w.send(*batch, Sync())
    assert w.pending == ["Parse", "Bind", "Describe portal", "Execute"] * n + ["Sync"]
    for i in range(n):
        w.recv(ParseComplete())
        assert w.session.statements[f"s{i}".encode()] == f"select {i} + $1".encode()
        w.recv(BindComplete())
        assert w.session.portals[f"p{i}".encode()] == f"s{i}".encode()
        w.recv(INT_ROW)
        w.recv(row(str(i).encode()), CommandComplete("SELECT 1"))
    assert w.pending == ["Sync"]
    assert len(w.session.portals) == n
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {f"s{i}".encode(): f"select {i} + $1".encode() for i in range(n)}
    assert w.session.portals == {}  # the implicit transaction ended with the Sync
    assert w.metrics.queries == n
    assert w.latency_count == 1


def test_pipeline_responses_interleaved_with_flush() -> None:
    w = Wire()
    w.send(Parse("", "select 1"), Bind("", ""), Execute(""), Flush())
    assert w.pending == ["Parse", "Bind", "Execute"]  # Flush expects no answer
    w.recv(ParseComplete(), BindComplete(), row(b"1"), CommandComplete("SELECT 1"))
    assert w.pending == []
    w.send(Bind("", ""), Execute(""), Sync())
    w.recv(BindComplete(), row(b"1"), CommandComplete("SELECT 1"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {b"": b"select 1"}


def test_portals_kept_inside_transaction_block_and_cleared_when_idle() -> None:
    w = Wire()
    w.send(Query("begin"))
    w.recv(CommandComplete("BEGIN"), ReadyForQuery(b"T"))
    w.send(Parse("s", "select 1"), Bind("c1", "s"), Sync())
    w.recv(ParseComplete(), BindComplete(), ReadyForQuery(b"T"))
    assert w.session.portals == {b"c1": b"s"}
    assert not w.session.idle  # a transaction is open
    w.send(Query("commit"))
    w.recv(CommandComplete("COMMIT"), ReadyForQuery(b"I"))
    assert w.session.portals == {}
    assert w.session.statements == {b"s": b"select 1"}
    assert w.session.idle
    w.assert_settled()


def test_close_named_statement_and_portal() -> None:
    w = Wire(txn_status=b"T")
    w.send(Parse("keep", "select 0"), Parse("s1", "select 1"), Bind("p1", "s1"), Sync())
    w.recv(ParseComplete(), ParseComplete(), BindComplete(), ReadyForQuery(b"T"))
    assert set(w.session.statements) == {b"keep", b"s1"}
    assert w.session.portals == {b"p1": b"s1"}
    w.send(Close(b"P", "p1"), Close(b"S", "s1"), Sync())
    assert w.pending == ["Close portal", "Close statement", "Sync"]
    w.recv(CloseComplete())
    assert w.session.portals == {}
    w.recv(CloseComplete())
    assert w.session.statements == {b"keep": b"select 0"}
    w.recv(ReadyForQuery(b"T"))
    w.assert_settled()


def test_close_of_unknown_names_is_harmless() -> None:
    w = Wire()
    w.send(Parse("s", "select 1"), Sync())
    w.recv(ParseComplete(), ReadyForQuery(b"I"))
    w.send(Close(b"S", "nope"), Close(b"P", "nada"), Sync())
    w.recv(CloseComplete(), CloseComplete(), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {b"s": b"select 1"}


def test_portal_suspended_then_execute_again() -> None:
    w = Wire()
    w.send(Parse("", "select generate_series(1, 5)"), Bind("cur", ""), Execute("cur", 2), Flush())
    w.recv(ParseComplete(), BindComplete(), row(b"1"), row(b"2"))
    assert w.pending == ["Execute"]
    w.recv(PortalSuspended())
    assert w.pending == []
    assert w.session.portals == {b"cur": b""}
    w.send(Execute("cur", 2), Flush())
    w.recv(row(b"3"), row(b"4"), PortalSuspended())
    assert w.pending == []
    w.send(Execute("cur", 2), Sync())
    w.recv(row(b"5"), CommandComplete("SELECT 1"))
    assert w.pending == ["Sync"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.metrics.queries == 3


def test_describe_statement_with_rows_and_without() -> None:
    w = Wire()
    w.send(
        Parse("q", "select $1::int", (0,)),
        Describe(b"S", "q"),
        Parse("u", "set timezone = 'UTC'"),
        Describe(b"S", "u"),
        Sync(),
    )
    assert w.pending == ["Parse", "Describe statement", "Parse", "Describe statement", "Sync"]
    w.recv(ParseComplete(), ParameterDescription((23,)))
    assert w.pending[0] == "Describe statement"  # ParameterDescription is not the end
    w.recv(INT_ROW)
    assert w.pending == ["Parse", "Describe statement", "Sync"]
    w.recv(ParseComplete(), ParameterDescription(()), NoData())
    assert w.pending == ["Sync"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert set(w.session.statements) == {b"q", b"u"}


def test_describe_portal_then_execute() -> None:
    w = Wire()
    w.send(Parse("", "insert into t values (1)"), Bind("", ""), Describe(b"P", ""), Execute(""))
    w.send(Sync())
    w.recv(ParseComplete(), BindComplete(), NoData())
    assert w.pending == ["Execute", "Sync"]
    w.recv(CommandComplete("INSERT 0 1"), ReadyForQuery(b"I"))
    w.assert_settled()


def test_execute_of_empty_statement() -> None:
    w = Wire()
    w.send(Parse("", ""), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), EmptyQueryResponse(), ReadyForQuery(b"I"))
    w.assert_settled()


def test_async_messages_do_not_disturb_the_queue() -> None:
    w = Wire()
    w.send(Parse("", "select 1"), Bind("", ""), Describe(b"P", ""), Execute(""), Sync())
    w.recv(NoticeResponse.make("NOTICE", "00000", "hello"), ParseComplete())
    w.recv(NotificationResponse(123, "chan", "payload"), BindComplete())
    w.recv(INT_ROW, ParameterStatus("TimeZone", "UTC"), row(b"1"))
    w.recv(NoticeResponse.make("WARNING", "01000", "careful"), CommandComplete("SELECT 1"))
    w.recv(ReadyForQuery(b"I"), NotificationResponse(123, "chan", "late"))
    w.assert_settled()
    assert w.session.server_params == {"TimeZone": "UTC"}


# --------------------------------------------------------------------------- errors


def test_error_in_pipeline_before_sync_discards_until_sync() -> None:
    w = Wire()
    w.send(
        Parse("ok", "select $1::int"),
        Bind("p", "ok", (0,), (b"not a number",)),
        Describe(b"P", "p"),
        Execute("p"),
        Flush(),
    )
    assert w.pending == ["Parse", "Bind", "Describe portal", "Execute"]
    w.recv(ParseComplete())
    w.recv(err("invalid input syntax for type integer", "22P02"))
    # Bind failed: the backend skips everything up to Sync, and so does the queue.
    assert w.pending == []
    assert w.session.discard_until_sync
    assert w.session.statements == {b"ok": b"select $1::int"}
    assert w.session.portals == {}
    # Sent after the error, before Sync: the backend ignores these, so they are not queued.
    w.send(
        Parse("x", "select 2"),
        Bind("px", "x"),
        Describe(b"S", "x"),
        Execute("px"),
        Close(b"S", "ok"),
        Query("select 3"),
        FunctionCall(1598),
    )
    assert w.pending == []
    assert w.session.discard_until_sync
    w.send(Sync())
    assert not w.session.discard_until_sync
    assert w.pending == ["Sync"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {b"ok": b"select $1::int"}  # Close(ok) was skipped
    assert w.metrics.server_errors == 1
    assert w.latency_count == 1


def test_error_in_pipeline_with_sync_and_next_batch_already_queued() -> None:
    w = Wire()
    w.send(Parse("ok", "select 1"), Bind("p", "missing"), Execute("p"), Sync())
    w.send(Parse("", "select 2"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), err('prepared statement "missing" does not exist', "26000"))
    assert w.pending == ["Sync", "Parse", "Bind", "Execute", "Sync"]
    assert not w.session.discard_until_sync
    w.recv(ReadyForQuery(b"I"))
    assert w.pending == ["Parse", "Bind", "Execute", "Sync"]
    w.recv(ParseComplete(), BindComplete(), row(b"2"), CommandComplete("SELECT 1"))
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {b"ok": b"select 1", b"": b"select 2"}
    assert w.latency_count == 2


def test_error_during_execute_in_the_middle_of_a_batch() -> None:
    w = Wire()
    w.send(Parse("", "select 1/0"), Bind("", ""), Execute(""))
    w.send(Parse("", "select 1"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), err("division by zero", "22012"))
    assert w.pending == ["Sync"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


def test_error_at_sync_time() -> None:
    # A deferred constraint fails when the Sync commits the implicit transaction.
    w = Wire()
    w.send(Parse("", "insert into d values (1)"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), CommandComplete("INSERT 0 1"))
    assert w.pending == ["Sync"]
    w.recv(err("violates foreign key constraint", "23503"))
    assert w.pending == ["Sync"]
    assert not w.session.discard_until_sync
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


def test_error_during_simple_query() -> None:
    w = Wire()
    w.send(Query("select 1; select 1/0; select 2"))
    w.recv(INT_ROW, row(b"1"), CommandComplete("SELECT 1"), err("division by zero", "22012"))
    assert w.pending == ["Query"]  # the ReadyForQuery still answers the Query
    assert not w.session.discard_until_sync
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.metrics.server_errors == 1
    assert w.latency_count == 1


def test_failed_unnamed_parse_drops_unnamed_statement() -> None:
    # PostgreSQL drops the previous unnamed statement before parsing the new one.
    w = Wire()
    w.send(Parse("", "select 1"), Sync())
    w.recv(ParseComplete(), ReadyForQuery(b"I"))
    assert w.session.statements == {b"": b"select 1"}
    w.send(Parse("", "selec oops"), Sync())
    w.recv(err('syntax error at or near "selec"', "42601"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert b"" not in w.session.statements


def test_failed_named_parse_keeps_other_statements() -> None:
    w = Wire()
    w.send(Parse("a", "select 1"), Sync())
    w.recv(ParseComplete(), ReadyForQuery(b"I"))
    w.send(Parse("b", "selec oops"), Sync())
    w.recv(err("syntax error", "42601"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.statements == {b"a": b"select 1"}


def test_simple_query_drops_unnamed_statement_and_portal() -> None:
    w = Wire()
    w.send(Query("begin"))
    w.recv(CommandComplete("BEGIN"), ReadyForQuery(b"T"))
    w.send(Parse("", "select 1"), Bind("", ""), Sync())
    w.recv(ParseComplete(), BindComplete(), ReadyForQuery(b"T"))
    assert w.session.statements == {b"": b"select 1"}
    assert w.session.portals == {b"": b""}
    w.send(Query("select 2"))
    w.recv(INT_ROW, row(b"2"), CommandComplete("SELECT 1"), ReadyForQuery(b"T"))
    w.assert_settled()
    assert w.session.txn_status == b"T"
    assert b"" not in w.session.statements
    assert b"" not in w.session.portals  # PostgreSQL: portal "" does not exist


# --------------------------------------------------------------------------- COPY


def test_copy_in_simple() -> None:
    w = Wire()
    w.send(Query("copy t from stdin"))
    w.recv(CopyInResponse(0, (0,)))
    assert w.session.copy_mode == b"G"
    assert not w.session.idle
    w.send(CopyData(b"1\n"), CopyData(b"2\n"))
    assert w.session.copy_mode == b"G"
    w.send(CopyDone())
    assert w.session.copy_mode is None
    w.recv(CommandComplete("COPY 2"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.idle


def test_copy_fail_simple() -> None:
    w = Wire()
    w.send(Query("copy t from stdin"))
    w.recv(CopyInResponse(0, (0,)))
    w.send(CopyData(b"1\n"), CopyFail("client gave up"))
    w.recv(err("COPY from stdin failed: client gave up", "57014"))
    assert w.pending == ["Query"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.metrics.server_errors == 1


def test_copy_in_simple_server_error_before_copy_done() -> None:
    w = Wire()
    w.send(Query("copy t from stdin"))
    w.recv(CopyInResponse(0, (0,)))
    w.send(CopyData(b"x\n"))
    w.recv(err("invalid input syntax for type integer", "22P02"), ReadyForQuery(b"I"))
    assert w.session.copy_mode is None
    w.send(CopyData(b"2\n"), CopyDone())  # already in flight; the backend drops them
    w.assert_settled()
    assert w.session.idle


@pytest.mark.parametrize("first_sync", ["before CopyInResponse", "after CopyInResponse"])
def test_copy_in_extended(first_sync: str) -> None:
    # libpq: P B D E S, then after CopyInResponse d... c S. The backend ignores
    # a Sync received in copy-in mode, so only the second one is answered.
    w = Wire()
    w.send(Parse("", "copy t from stdin"), Bind("", ""), Describe(b"P", ""), Execute(""))
    if first_sync == "before CopyInResponse":
        w.send(Sync())
    w.recv(ParseComplete(), BindComplete(), NoData(), CopyInResponse(0, (0,)))
    if first_sync == "after CopyInResponse":
        w.send(Sync())
    assert w.session.copy_mode == b"G"
    w.send(CopyData(b"1\n"), CopyDone(), Sync())
    w.recv(CommandComplete("COPY 1"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.idle
    # Later traffic still pairs up.
    w.send(Query("select 1"))
    w.recv(INT_ROW, row(b"1"), CommandComplete("SELECT 1"), ReadyForQuery(b"I"))
    w.assert_settled()


def test_copy_fail_extended() -> None:
    w = Wire()
    w.send(Parse("", "copy t from stdin"), Bind("", ""), Describe(b"P", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), NoData(), CopyInResponse(0, (0,)))
    w.send(CopyData(b"1\n"), CopyFail("nope"), Sync())
    w.recv(err("COPY from stdin failed: nope", "57014"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.session.idle


def test_copy_in_extended_server_error() -> None:
    w = Wire()
    w.send(Parse("", "copy t from stdin"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), CopyInResponse(0, (0,)))
    w.send(CopyData(b"x\n"))
    w.recv(err("invalid input syntax for type integer", "22P02"))
    w.send(CopyData(b"2\n"), CopyDone(), Sync())
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


def test_copy_in_extended_with_statements_pipelined_behind_it() -> None:
    # The backend reads the second Parse while in copy-in mode, fails the COPY
    # and skips to the second Sync (the first was swallowed by copy-in mode).
    w = Wire()
    w.send(Parse("", "copy t from stdin"), Bind("", ""), Execute(""), Sync())
    w.send(Parse("", "select 1"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), CopyInResponse(0, (0,)))
    w.recv(err("unexpected message type 0x50 during COPY from stdin", "08P01"))
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


def test_copy_out_simple() -> None:
    w = Wire()
    w.send(Query("copy t to stdout"))
    w.recv(CopyOutResponse(0, (0, 0)))
    assert w.session.copy_mode == b"H"
    w.recv(CopyData(b"1\ta\n"), CopyData(b"2\tb\n"), CopyDone())
    w.recv(CommandComplete("COPY 2"))
    assert w.session.copy_mode is None
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


def test_copy_out_extended() -> None:
    w = Wire()
    w.send(Parse("", "copy t to stdout"), Bind("", ""), Execute(""), Sync())
    w.recv(ParseComplete(), BindComplete(), CopyOutResponse(0, (0,)))
    assert w.session.copy_mode == b"H"
    w.recv(CopyData(b"1\n"), CopyDone(), CommandComplete("COPY 1"))
    assert w.pending == ["Sync"]
    w.recv(ReadyForQuery(b"I"))
    w.assert_settled()


# --------------------------------------------------------------------------- misc


def test_function_call() -> None:
    w = Wire()
    w.send(FunctionCall(1598, (), (), 0))
    assert w.pending == ["FunctionCall"]
    w.recv(FunctionCallResponse(b"\x00\x00\x00\x07"), ReadyForQuery(b"I"))
    w.assert_settled()
    w.send(FunctionCall(1, (1,), (b"\x00",), 1))
    w.recv(err("function 1 does not exist", "42883"), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.metrics.queries == 0  # only Query and Execute count as queries
    assert w.latency_count == 2


def test_transaction_status_transitions() -> None:
    w = Wire()
    assert w.session.txn_status == b"I"
    w.send(Query("begin"))
    w.recv(CommandComplete("BEGIN"), ReadyForQuery(b"T"))
    assert w.session.txn_status == b"T"
    assert not w.session.idle
    w.send(Parse("s", "select 1"), Bind("c", "s"), Sync())
    w.recv(ParseComplete(), BindComplete(), ReadyForQuery(b"T"))
    assert w.session.portals == {b"c": b"s"}
    w.send(Query("select 1/0"))
    w.recv(err("division by zero", "22012"), ReadyForQuery(b"E"))
    assert w.session.txn_status == b"E"
    assert not w.session.idle
    w.send(Query("select 1"))
    w.recv(err("current transaction is aborted", "25P02"), ReadyForQuery(b"E"))
    assert w.session.txn_status == b"E"
    w.send(Query("rollback"))
    w.recv(CommandComplete("ROLLBACK"), ReadyForQuery(b"I"))
    assert w.session.txn_status == b"I"
    assert w.session.portals == {}
    assert w.session.idle
    w.assert_settled()


def test_parameter_status_recorded() -> None:
    w = Wire()
    w.recv(ParameterStatus("client_encoding", "UTF8"), ParameterStatus("TimeZone", "UTC"))
    assert w.session.server_params == {"client_encoding": "UTF8", "TimeZone": "UTC"}
    w.send(Query("set timezone = 'Europe/Paris'"))
    w.recv(CommandComplete("SET"), ParameterStatus("TimeZone", "Europe/Paris"))
    w.recv(ReadyForQuery(b"I"))
    assert w.session.server_params == {"client_encoding": "UTF8", "TimeZone": "Europe/Paris"}
    w.recv(ParameterStatus("application_name", "héllo"))
    assert w.session.server_params["application_name"] == "héllo"
    w.assert_settled()


@pytest.mark.parametrize("severity", ["FATAL", "PANIC"])
def test_fatal_error_sets_server_sent_fatal(severity: str) -> None:
    w = Wire()
    w.recv(err("terminating connection due to administrator command", "57P01", severity))
    assert w.session.server_sent_fatal
    assert w.session.desyncs == 0


def test_fatal_error_while_a_query_runs() -> None:
    w = Wire()
    w.send(Query("select pg_sleep(10)"))
    w.recv(err("terminating connection due to administrator command", "57P01", "FATAL"))
    assert w.session.server_sent_fatal


def test_plain_error_is_not_fatal() -> None:
    w = Wire()
    w.send(Query("select 1/0"))
    w.recv(err("division by zero", "22012"), ReadyForQuery(b"I"))
    assert not w.session.server_sent_fatal


def test_error_text_mentioning_fatal_is_not_fatal() -> None:
    # A real ERROR from `raise exception 'boom SFATAL'`: the M field ends in "SFATAL".
    w = Wire()
    w.send(Query("do $$ begin raise exception 'boom SFATAL'; end $$"))
    w.recv(err("boom SFATAL", "P0001"), ReadyForQuery(b"I"))
    assert not w.session.server_sent_fatal
    w.send(Query("select 1"))
    w.recv(ErrorResponse.make("ERROR", "P0001", "x", hint="SPANIC"), ReadyForQuery(b"I"))
    assert not w.session.server_sent_fatal


def test_terminate_sets_client_terminated() -> None:
    w = Wire()
    assert not w.session.client_terminated
    w.send(Terminate())
    assert w.session.client_terminated
    assert w.to_server.data == b"X\x00\x00\x00\x04"


# --------------------------------------------------------------------------- violations


@pytest.mark.parametrize(
    "raw",
    [
        frame(b"D", b"X\0"),
        frame(b"D", b"s1\0"),
        frame(b"D", b""),
    ],
    ids=["subtype-X", "no-subtype", "empty"],
)
def test_invalid_describe_subtype(raw: bytes) -> None:
    w = Wire()
    exc = w.send_bad(raw)
    assert "invalid DESCRIBE message subtype" in str(exc)
    assert exc.sqlstate == "08P01"
    assert w.to_server.data == b""


def test_invalid_close_subtype() -> None:
    w = Wire()
    assert "invalid CLOSE message subtype" in str(w.send_bad(frame(b"C", b"Q\0")))


# The message under test is followed by another one that contains NULs, so a
# string search that runs past the message end would wrongly succeed.
_NEXT = Query("select 1").encode()


@pytest.mark.parametrize(
    "raw",
    [
        frame(b"P", b"name\0select 1"),
        frame(b"P", b"name"),
        frame(b"B", b"portal\0stmt"),
        frame(b"B", b"portal"),
        frame(b"D", b"Sname"),
        frame(b"D", b"P"),
        frame(b"E", b"portal"),
        frame(b"C", b"Sname"),
    ],
    ids=["parse-sql", "parse-name", "bind-stmt", "bind-portal", "describe", "describe-empty",
         "execute", "close"],
)  # fmt: skip
def test_unterminated_client_strings(raw: bytes) -> None:
    w = Wire()
    assert "unterminated string" in str(w.send_bad(raw + _NEXT))
    assert list(w.session.inflight) == []


def test_unterminated_parameter_status() -> None:
    w = Wire()
    exc = w.recv_bad(frame(b"S", b"TimeZone\0UTC") + ReadyForQuery(b"I").encode())
    assert "unterminated string" in str(exc)
    assert w.session.server_params == {}


@pytest.mark.parametrize("body", [b"X", b"i", b""])
def test_invalid_ready_for_query_status(body: bytes) -> None:
    w = Wire()
    w.send(Query("select 1"))
    assert "transaction status" in str(w.recv_bad(frame(b"Z", body)))


@pytest.mark.parametrize("raw", [b"p\x00\x00\x00\x05x", b"x\x00\x00\x00\x04"])
def test_message_types_invalid_in_a_session(raw: bytes) -> None:
    # PasswordMessage is only valid during authentication.
    w = Wire()
    assert str(w.send_bad(raw)) == f"invalid frontend message type {raw[0]}"


def test_unsolicited_responses_are_counted_as_desyncs() -> None:
    # The consistency checks elsewhere rely on desyncs actually detecting trouble.
    w = Wire()
    w.recv(ParseComplete())
    assert w.session.desyncs > 0
    w = Wire()
    w.recv(ReadyForQuery(b"I"))
    assert w.session.desyncs > 0
    w = Wire()
    w.send(Parse("", "select 1"), Sync())
    w.recv(BindComplete())
    assert w.session.desyncs > 0
    w = Wire()
    w.send(Query("select 1"))
    w.recv(NoData())
    assert w.session.desyncs > 0


# --------------------------------------------------------------------------- metrics


def test_latency_histogram_counts_each_ready_for_query() -> None:
    w = Wire()
    for i in range(1, 4):
        w.send(Query(f"select {i}"))
        w.recv(CommandComplete("SELECT 1"), ReadyForQuery(b"I"))
        assert w.latency_count == i
    w.send(Parse("", "select 1"), Bind("", ""), Execute(""), Sync(), Sync())
    w.recv(ParseComplete(), BindComplete(), CommandComplete("SELECT 1"), ReadyForQuery(b"I"))
    assert w.latency_count == 4
    w.recv(ReadyForQuery(b"I"))
    assert w.latency_count == 5
    _buckets, total = w.metrics.latency_histogram()
    assert total >= 0.0
    w.assert_settled()


def test_queries_counter_counts_query_and_execute() -> None:
    w = Wire()
    w.send(Query("select 1"))
    w.recv(CommandComplete("SELECT 1"), ReadyForQuery(b"I"))
    assert w.metrics.queries == 1
    w.send(Parse("", "select 1"), Bind("a", ""), Bind("b", ""), Execute("a"), Execute("b"))
    w.send(Describe(b"S", ""), Close(b"P", "a"), Sync())
    assert w.metrics.queries == 3  # Parse/Bind/Describe/Close/Sync are not queries
    w.recv(ParseComplete(), BindComplete(), BindComplete())
    w.recv(CommandComplete("SELECT 1"), CommandComplete("SELECT 1"))
    w.recv(ParameterDescription(()), INT_ROW, CloseComplete(), ReadyForQuery(b"I"))
    w.assert_settled()
    assert w.metrics.queries == 3


# --------------------------------------------------------------------------- property


@dataclass
class Step:
    raw: bytes
    dep: int  # how many messages of the other side must have been relayed first


@dataclass
class Script:
    """A causally ordered exchange plus the session state it should leave."""

    client: list[Step] = field(default_factory=list)
    server: list[Step] = field(default_factory=list)
    txn: bytes = b"I"
    statements: dict[bytes, bytes] = field(default_factory=dict)
    portals: dict[bytes, bytes] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    queries: int = 0
    errors: int = 0
    readies: int = 0
    floor: int = 0  # server messages the next client message waits for

    def c(self, msg: Message, after_server: int = 0) -> int:
        """Append a client message (sent once `after_server` server messages arrived).

        Returns how many client messages exist now, i.e. this one's number.
        """
        dep = max(self.client[-1].dep if self.client else 0, after_server, self.floor)
        self.client.append(Step(msg.encode(), dep))
        if isinstance(msg, Query | Execute):
            self.queries += 1
        return len(self.client)

    def wait(self) -> None:
        """The client reads every answer so far before it sends anything else."""
        self.floor = len(self.server)

    def s(self, msg: Message, after: int | None = None) -> None:
        """Append a server message that answers client message number `after`."""
        dep = len(self.client) if after is None else after
        if self.server:
            dep = max(dep, self.server[-1].dep)
        self.server.append(Step(msg.encode(), dep))
        if isinstance(msg, ErrorResponse) and not isinstance(msg, NoticeResponse):
            self.errors += 1

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def ready(self, after: int | None = None, simple: bool = False) -> None:
        self.s(ReadyForQuery(self.txn), after)
        self.readies += 1
        if simple:
            self.statements.pop(b"", None)
            self.portals.pop(b"", None)
        if self.txn == b"I":
            self.portals.clear()

    def fail(self, msg: str = "boom", after: int | None = None) -> None:
        self.s(err(msg), after)
        if self.txn == b"T":
            self.txn = b"E"


def _rows(sc: Script, n: int, after: int | None = None) -> None:
    for i in range(n):
        sc.s(row(str(i).encode()), after)


def gen_simple_query(draw: st.DrawFn, sc: Script) -> None:
    kinds = draw(
        st.lists(
            st.sampled_from(["select", "command", "begin", "commit", "rollback", "error", "set"]),
            min_size=1,
            max_size=4,
        )
    )
    if draw(st.integers(0, 9)) == 0:
        sc.c(Query(""))
        sc.s(EmptyQueryResponse())
        sc.ready(simple=True)
        return
    sc.c(Query("; ".join(kinds)))
    for kind in kinds:
        if sc.txn == b"E" and kind not in ("commit", "rollback"):
            sc.fail("current transaction is aborted")
            break
        if kind == "select":
            n = draw(st.integers(0, 3))
            sc.s(INT_ROW)
            _rows(sc, n)
            sc.s(CommandComplete(f"SELECT {n}"))
        elif kind == "command":
            sc.s(CommandComplete("INSERT 0 1"))
        elif kind == "begin":
            if sc.txn == b"T":
                sc.s(NoticeResponse.make("WARNING", "25001", "already in a transaction"))
            sc.s(CommandComplete("BEGIN"))
            sc.txn = b"T"
        elif kind in ("commit", "rollback"):
            sc.s(CommandComplete("ROLLBACK" if sc.txn == b"E" else kind.upper()))
            sc.txn = b"I"
        elif kind == "set":
            value = draw(st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo"]))
            sc.s(CommandComplete("SET"))
            sc.s(ParameterStatus("TimeZone", value))
            sc.params["TimeZone"] = value
        else:
            sc.fail()
            break
    sc.ready(simple=True)


def _plan_extended(draw: st.DrawFn, sc: Script) -> list[tuple[str, str, str, int]]:
    """Ops of one batch as (op, name, target, max_rows), mostly the usual chains."""
    stmts = [k.decode() for k in sorted(sc.statements)]
    ports = [k.decode() for k in sorted(sc.portals)]
    ops: list[tuple[str, str, str, int]] = []
    for _ in range(draw(st.integers(0, 4))):
        unit = draw(st.sampled_from(["stmt", "stmt", "stmt", "parse", "bind", "close", "flush"]))
        if unit in ("stmt", "parse"):
            name = draw(st.sampled_from(["", sc.name("s")]))
            ops.append(("parse", name, f"select {sc.counter}", 0))
            stmts.append(name)
            if unit == "parse":
                if draw(st.booleans()):
                    ops.append(("describe_s", name, "", 0))
                continue
        if unit in ("stmt", "bind") and stmts:
            stmt = stmts[-1] if unit == "stmt" else draw(st.sampled_from(stmts))
            portal = draw(st.sampled_from(["", sc.name("p")]))
            ops.append(("bind", portal, stmt, 0))
            ports.append(portal)
            if draw(st.booleans()):
                ops.append(("describe_p", portal, "", 0))
            max_rows = draw(st.sampled_from([0, 0, 1, 2]))
            ops.append(("execute", portal, "", max_rows))
            if max_rows and draw(st.booleans()):
                ops.append(("execute", portal, "", 0))  # fetch the rest
        elif unit == "close" and (stmts or ports):
            kind = draw(st.sampled_from([k for k, pool in (("S", stmts), ("P", ports)) if pool]))
            ops.append(("close", draw(st.sampled_from(stmts if kind == "S" else ports)), kind, 0))
        elif unit == "flush":
            ops.append(("flush", "", "", 0))
    return ops


def gen_extended(draw: st.DrawFn, sc: Script) -> None:
    """One pipelined batch ending in Sync, maybe failing at one message (or at Sync)."""
    ops = _plan_extended(draw, sc)
    real = [i for i, op in enumerate(ops) if op[0] != "flush"]
    fail_at: int | None = None
    if sc.txn == b"E":
        fail_at = real[0] if real else None  # a bare Sync just reports the state
    else:
        # Only the implicit transaction commits (and may fail) at Sync.
        points = real + ([len(ops)] if sc.txn == b"I" else [])
        if points and draw(st.integers(0, 2)) == 0:
            fail_at = draw(st.sampled_from(points))
    # Sometimes the client flushes and waits for the answers so far before it
    # sends the rest: after an error, those later messages are skipped.
    pause = draw(st.one_of(st.none(), st.integers(0, len(ops))))
    statements = sc.statements
    portals = sc.portals
    failed = False
    for i, (op, name, target, max_rows) in enumerate([*ops, ("sync", "", "", 0)]):
        if i == pause:
            sc.c(Flush())
            sc.wait()
        if op == "sync":
            break
        fails = fail_at == i
        live = not failed and not fails
        if op == "parse":
            idx = sc.c(Parse(name, target))
            if live:
                sc.s(ParseComplete(), idx)
                statements[name.encode()] = target.encode()
            elif fails and not name:
                statements.pop(b"", None)  # dropped before parsing the new one
        elif op == "bind":
            idx = sc.c(Bind(name, target))
            if live:
                sc.s(BindComplete(), idx)
                portals[name.encode()] = target.encode()
        elif op in ("describe_s", "describe_p"):
            idx = sc.c(Describe(b"S" if op == "describe_s" else b"P", name))
            if live:
                if op == "describe_s":
                    sc.s(ParameterDescription((23,) * draw(st.integers(0, 2))), idx)
                sc.s(draw(st.sampled_from([INT_ROW, NoData()])), idx)
        elif op == "execute":
            idx = sc.c(Execute(name, max_rows))
            ends = ["complete", "empty"] + (["suspended", "suspended"] if max_rows else [])
            ending = draw(st.sampled_from(ends))
            if ending == "suspended":
                n = max_rows
            elif ending == "complete":
                n = draw(st.integers(0, max_rows - 1 if max_rows else 3))
            else:
                n = 0
            if not failed:
                _rows(sc, n, idx)  # an Execute may fail after sending some rows
                if not fails:
                    end_msg: Message = {
                        "complete": CommandComplete(f"SELECT {n}"),
                        "empty": EmptyQueryResponse(),
                        "suspended": PortalSuspended(),
                    }[ending]
                    sc.s(end_msg, idx)
        elif op == "close":
            idx = sc.c(Close(target.encode(), name))
            if live:
                sc.s(CloseComplete(), idx)
                (statements if target == "S" else portals).pop(name.encode(), None)
        else:
            sc.c(Flush())
        if fails and not failed:
            sc.fail(after=len(sc.client))
            failed = True
        if draw(st.integers(0, 5)) == 0:  # an asynchronous message from the server
            sc.s(NotificationResponse(1, "chan", str(i)), len(sc.client))
    sync = sc.c(Sync())
    if fail_at == len(ops):
        sc.fail("deferred constraint violated", after=sync)
    sc.ready(after=sync)


def gen_function_call(draw: st.DrawFn, sc: Script) -> None:
    idx = sc.c(FunctionCall(1598))
    if sc.txn == b"E" or draw(st.booleans()):
        sc.fail(after=idx)
    else:
        sc.s(FunctionCallResponse(draw(st.sampled_from([None, b"\x00\x00\x00\x01"]))), idx)
    sc.ready(after=idx)


def _aborted(sc: Script, extended: bool, sql: str) -> None:
    """In a failed transaction the first message of the command is rejected."""
    if extended:
        idx = sc.c(Parse("", sql))
        sc.c(Bind("", ""))
        sc.c(Execute(""))
        sc.fail("current transaction is aborted", after=idx)
        sc.statements.pop(b"", None)  # a failed Parse("") still drops the old one
        sc.ready(after=sc.c(Sync()))
    else:
        idx = sc.c(Query(sql))
        sc.fail("current transaction is aborted", after=idx)
        sc.ready(after=idx, simple=True)


def gen_copy_in(draw: st.DrawFn, sc: Script) -> None:
    extended = draw(st.booleans())
    sql = "copy t from stdin"
    if sc.txn == b"E":
        _aborted(sc, extended, sql)
        return
    n = draw(st.integers(0, 3))
    outcome = draw(st.sampled_from(["done", "fail", "server error"]))
    late_sync = False
    if extended:
        sc.s(ParseComplete(), sc.c(Parse("", sql)))
        sc.s(BindComplete(), sc.c(Bind("", "")))
        idx = sc.c(Execute(""))
        # The backend swallows a Sync sent in copy-in mode: libpq sends one with
        # the Execute, a slower client might send it after the CopyInResponse.
        late_sync = draw(st.booleans())
        if not late_sync:
            sc.c(Sync())
        sc.statements[b""] = sql.encode()
        sc.portals[b""] = b""
    else:
        idx = sc.c(Query(sql))
    sc.s(CopyInResponse(0, (0,)), idx)
    g = len(sc.server)  # copy data can only follow the CopyInResponse
    if late_sync:
        sc.c(Sync(), after_server=g)
    for i in range(n):
        sc.c(CopyData(f"{i}\n".encode()), after_server=g)
    if outcome == "server error":
        bad = sc.c(CopyData(b"bad\n"), after_server=g)
        sc.fail("invalid input syntax", after=bad)
        if not extended:
            sc.ready(after=bad, simple=True)  # no wait for CopyDone
        # Already on its way when the error arrives; the backend drops it.
        sc.c(CopyData(b"late\n"), after_server=g)
        end = sc.c(CopyDone(), after_server=g)
    else:
        end = sc.c(CopyDone() if outcome == "done" else CopyFail("nope"), after_server=g)
        if outcome == "done":
            sc.s(CommandComplete(f"COPY {n}"), end)
        else:
            sc.fail("COPY from stdin failed", after=end)
        if not extended:
            sc.ready(after=end, simple=True)
    if extended:
        sc.ready(after=sc.c(Sync()))


def gen_copy_out(draw: st.DrawFn, sc: Script) -> None:
    extended = draw(st.booleans())
    sql = "copy t to stdout"
    if sc.txn == b"E":
        _aborted(sc, extended, sql)
        return
    if extended:
        sc.s(ParseComplete(), sc.c(Parse("", sql)))
        sc.s(BindComplete(), sc.c(Bind("", "")))
        idx = sc.c(Execute(""))
        sync = sc.c(Sync())
        sc.statements[b""] = sql.encode()
        sc.portals[b""] = b""
    else:
        idx = sync = sc.c(Query(sql))
    sc.s(CopyOutResponse(0, (0,)), idx)
    for i in range(draw(st.integers(0, 3))):
        sc.s(CopyData(f"{i}\n".encode()), idx)
    sc.s(CopyDone(), idx)
    sc.s(CommandComplete("COPY"), idx)
    sc.ready(after=sync, simple=not extended)


GROUPS = [gen_simple_query, gen_extended, gen_function_call, gen_copy_in, gen_copy_out]


@st.composite
def exchanges(draw: st.DrawFn) -> Script:
    sc = Script()
    if draw(st.booleans()):
        sc.s(ParameterStatus("client_encoding", "UTF8"), 0)
        sc.params["client_encoding"] = "UTF8"
    for gen in draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=8)):
        gen(draw, sc)
    return sc


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=exchanges(), data=st.data())
def test_random_exchanges_stay_in_sync(sc: Script, data: st.DataObject) -> None:
    w = Wire()
    ci = si = 0
    nc, ns = len(sc.client), len(sc.server)
    while ci < nc or si < ns:
        # Relay a random run of whatever each side may send by now (causality:
        # a response never overtakes its request, copy data never its CopyInResponse).
        c_end = ci
        while c_end < nc and sc.client[c_end].dep <= si:
            c_end += 1
        s_end = si
        while s_end < ns and sc.server[s_end].dep <= ci:
            s_end += 1
        sides = [side for side, ok in (("c", c_end > ci), ("s", s_end > si)) if ok]
        assert sides, "generated script is not causally consistent"
        side = data.draw(st.sampled_from(sides))
        steps, pos, end = (sc.client, ci, c_end) if side == "c" else (sc.server, si, s_end)
        k = data.draw(st.integers(1, min(end - pos, 6)))
        chunk = b"".join(step.raw for step in steps[pos : pos + k])
        cut = data.draw(st.integers(0, len(chunk)))
        relay, sink = (w.client, w.to_server) if side == "c" else (w.server, w.to_client)
        mark = len(sink.data)
        relay.feed(chunk[:cut])
        relay.feed(chunk[cut:])
        assert w.errors == []
        assert sink.data[mark:] == chunk
        if side == "c":
            ci += k
        else:
            si += k
        assert w.session.desyncs == 0
    w.assert_settled()
    s = w.session
    assert s.txn_status == sc.txn
    assert s.statements == sc.statements
    assert s.portals == sc.portals
    assert s.server_params == sc.params
    assert w.metrics.queries == sc.queries
    assert w.metrics.server_errors == sc.errors
    assert w.latency_count == sc.readies
    assert s.idle == (sc.txn == b"I")
