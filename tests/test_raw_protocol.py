"""Protocol paths that no driver exercises, spoken byte by byte through the proxy.

Each test runs the same exchange directly against PostgreSQL and through
pgcloak and requires the same messages back (modulo backend-specific values).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from helpers import PgServer, ProxyProcess

from pgcloak.proxy.codec import (
    Bind,
    Close,
    Describe,
    Execute,
    Flush,
    FunctionCall,
    Message,
    Parse,
    Query,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    split_frames,
)


class Wire:
    """A minimal blocking protocol client: enough to script exchanges."""

    def __init__(self, host: str, port: int, dbname: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.send(StartupMessage(params={"user": "postgres", "database": dbname}))
        self.until(b"Z")

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(m.encode() for m in msgs))

    def read(self) -> tuple[bytes, Message]:
        while True:
            for typ, s, e in split_frames(self.buf, 0, 1 << 30):
                body = self.buf[s + 5 : e]
                self.buf = self.buf[e:]
                return bytes((typ,)), decode_backend(bytes((typ,)), body)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def until(self, stop: bytes) -> list[tuple[bytes, Message]]:
        out = []
        while True:
            typ, msg = self.read()
            out.append((typ, msg))
            if typ == stop:
                return out

    def close(self) -> None:
        self.send(Terminate())
        self.sock.close()


def _shape(msgs: list[tuple[bytes, Message]]) -> list[tuple[bytes, object]]:
    """Comparable view: drop ParameterStatus/notices, keep types and payloads."""
    out: list[tuple[bytes, object]] = []
    for typ, msg in msgs:
        if typ in (b"S", b"N"):
            continue
        if typ == b"E":
            out.append((typ, msg.fields.get("C")))  # type: ignore[attr-defined]
        else:
            out.append((typ, msg))
    return out


@pytest.fixture
def both(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> Iterator[tuple[Wire, Wire]]:
    pg.execute("CREATE TABLE t (id int primary key, v text)", dbname=fresh_db)
    pg.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g", dbname=fresh_db)
    direct = Wire(pg.host, pg.port, fresh_db)
    proxied = Wire(proxy.host, proxy.port, fresh_db)
    yield direct, proxied
    direct.close()
    proxied.close()


def _same(
    both: tuple[Wire, Wire], *msgs: Message, stop: bytes = b"Z"
) -> list[tuple[bytes, object]]:
    results = []
    for w in both:
        w.send(*msgs)
        results.append(_shape(w.until(stop)))
    assert results[0] == results[1]
    return results[0]


def test_function_call(both: tuple[Wire, Wire]) -> None:
    # int4pl(int4, int4) is OID 177 in every PostgreSQL release.
    res = _same(both, FunctionCall(177, (0,), (b"40", b"2"), 0))
    assert res[0][0] == b"V"
    assert res[0][1].value == b"42"  # type: ignore[attr-defined]


def test_execute_row_limit_and_portal_suspended(both: tuple[Wire, Wire]) -> None:
    res = _same(
        both,
        Query("BEGIN"),
    )
    assert res[-1] == (b"Z", res[-1][1])
    res = _same(
        both,
        Parse("s1", "SELECT id, v FROM t ORDER BY id"),
        Bind("p1", "s1"),
        Execute("p1", 3),
        Execute("p1", 3),
        Execute("p1", 0),
        Close(b"P", "p1"),
        Sync(),
    )
    types = [t for t, _ in res]
    assert types.count(b"s") == 2  # two PortalSuspended, then CommandComplete
    assert types.count(b"D") == 10
    _same(both, Query("COMMIT"))


def test_pipeline_with_error_skips_to_sync(both: tuple[Wire, Wire]) -> None:
    res = _same(
        both,
        Parse("", "SELECT 1"),
        Bind("", ""),
        Execute("", 0),
        Parse("", "SELECT * FROM missing_table"),
        Bind("", ""),
        Execute("", 0),
        Sync(),
        Parse("", "SELECT 2"),
        Bind("", ""),
        Execute("", 0),
        Sync(),
    )
    assert (b"E", "42P01") in res
    # After the first Sync the session works again; wait for the second ReadyForQuery.
    for w in both:
        tail = _shape(w.until(b"Z"))
        assert [t for t, _ in tail] == [b"1", b"2", b"D", b"C", b"Z"]


def test_flush_without_sync_and_describe(both: tuple[Wire, Wire]) -> None:
    res = _same(
        both,
        Parse("named", "SELECT $1::int + 1 AS x", (23,)),
        Describe(b"S", "named"),
        Flush(),
        stop=b"T",
    )
    assert [t for t, _ in res] == [b"1", b"t", b"T"]
    res = _same(both, Bind("", "named", (0,), (b"41",)), Execute("", 0), Sync())
    rows = [m for t, m in res if t == b"D"]
    assert rows[0].values == (b"42",)  # type: ignore[attr-defined]
    _same(both, Close(b"S", "named"), Sync())


def test_many_messages_pipelined_before_sync(both: tuple[Wire, Wire]) -> None:
    msgs: list[Message] = []
    for i in range(200):
        msgs += [Parse("", f"SELECT {i}"), Bind("", ""), Execute("", 0)]
    msgs.append(Sync())
    res = _same(both, *msgs)
    assert [t for t, _ in res].count(b"C") == 200


def test_query_pipelined_with_startup(pg: PgServer, proxy: ProxyProcess) -> None:
    """A client may send its first query in the same packet as the startup message."""
    results = []
    for host, port in ((pg.host, pg.port), (proxy.host, proxy.port)):
        sock = socket.create_connection((host, port), timeout=10)
        startup = StartupMessage(params={"user": "postgres", "database": "postgres"})
        sock.sendall(startup.encode() + Query("SELECT 6 * 7 AS answer").encode())
        w = Wire.__new__(Wire)
        w.sock, w.buf = sock, b""
        w.until(b"Z")  # end of authentication
        results.append(_shape(w.until(b"Z")))
        w.close()
    assert results[0] == results[1]
    assert [t for t, _ in results[1]] == [b"T", b"D", b"C", b"Z"]
