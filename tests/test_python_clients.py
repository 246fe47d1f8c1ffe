"""Real Python drivers (psycopg 3, asyncpg) through a pgcloak proxy against real PostgreSQL.

Most tests run the same scenario once directly against PostgreSQL and once
through the proxy and require identical results: the proxy must be invisible
to clients, whatever protocol features they use (extended protocol, named
prepared statements, binary formats, COPY in every direction, pipelines,
cancel requests, notifications, protocol negotiation).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import ipaddress
import socket
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import PgServer, ProxyProcess
from prometheus_client.parser import text_string_to_metric_families
from psycopg import errors as pgerrors
from psycopg.types.json import Json, Jsonb

from pgcloak.proxy.codec import (
    PROTOCOL_3_0,
    Authentication,
    BackendKeyData,
    Bind,
    BindComplete,
    CommandComplete,
    DataRow,
    ErrorResponse,
    Execute,
    Framer,
    Message,
    NegotiateProtocolVersion,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
)

Conn = psycopg.Connection[tuple[Any, ...]]
Target = PgServer | ProxyProcess


@contextmanager
def both(pg: PgServer, proxy: ProxyProcess, dbname: str, **kw: Any) -> Iterator[tuple[Conn, Conn]]:
    """(direct, proxied) psycopg connections to the same database."""
    with pg.connect(dbname, **kw) as direct, proxy.connect(dbname, **kw) as proxied:
        yield direct, proxied


def same(
    pg: PgServer, proxy: ProxyProcess, dbname: str, scenario: Callable[[Conn], Any], **kw: Any
) -> Any:
    """Run `scenario` directly and through the proxy; both results must be equal."""
    with both(pg, proxy, dbname, **kw) as (direct, proxied):
        expected = scenario(direct)
        got = scenario(proxied)
    assert got == expected
    return got


def upstream_pids(pg: PgServer, app: str) -> list[int]:
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", [app]
    )
    return [r[0] for r in rows]


def proxy_counter(proxy: ProxyProcess, family: str) -> float:
    with urllib.request.urlopen(proxy.admin_url("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return sum(s.value for s in fam.samples if s.name == family + "_total")
    raise AssertionError(f"metric {family} not exposed")


def app_name() -> str:
    return f"pgcloak-py-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- psycopg: values

PARAMS: list[Any] = [
    42,
    -(2**40),
    2**62,
    Decimal("12345678901234567890.123456789"),
    Decimal("-0.000001"),
    3.25,
    float("inf"),
    "héllo wörld ✓ 日本語 🐘 'quoted' \"dq\" \\ back",
    "",
    b"\x00\x01\x02\xfe\xff binary \x00",
    True,
    False,
    Jsonb({"a": [1, 2, {"b": None}], "ü": "✓", "n": 1.5}),
    Json([1, "x", None]),
    [1, 2, 3],
    ["a", None, "c,d", "é"],  # str dumps as unknown: cast below
    [[1, 2], [3, 4]],
    dt.date(2024, 2, 29),
    dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
    dt.datetime(2023, 12, 31, 23, 59, 59, 1, tzinfo=dt.UTC),
    dt.time(13, 14, 15, 160000),
    dt.timedelta(days=3, hours=2, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ipaddress.ip_network("10.1.0.0/16"),
    None,
]


def _expected(value: Any) -> Any:
    return value.obj if isinstance(value, Json | Jsonb) else value


CASTS = {15: "::text[]"}


def _select_params(conn: Conn, placeholder: str, binary: bool) -> tuple[Any, ...]:
    sql = "SELECT " + ", ".join(placeholder + CASTS.get(i, "") for i in range(len(PARAMS)))
    cur = conn.cursor(binary=binary)
    cur.execute(sql, PARAMS)  # type: ignore[arg-type]
    row = cur.fetchone()
    assert row is not None
    assert cur.fetchone() is None
    return row


@pytest.mark.parametrize(
    ("placeholder", "binary"),
    [("%s", False), ("%t", False), ("%b", False), ("%t", True), ("%b", True)],
    ids=["auto-text", "text-params", "binary-params", "binary-results", "binary-both"],
)
def test_param_types_roundtrip(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str, placeholder: str, binary: bool
) -> None:
    row = same(pg, proxy, fresh_db, lambda c: _select_params(c, placeholder, binary))
    assert list(row) == [_expected(v) for v in PARAMS]


def test_basic_queries_and_metadata(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute(
            "CREATE TEMP TABLE t (id serial PRIMARY KEY, name text NOT NULL, n numeric(10,2))"
        )
        cur = conn.execute(
            "INSERT INTO t (name, n) VALUES ('a', 1.5), ('b', NULL), ('ç', -2) RETURNING id"
        )
        inserted = (cur.rowcount, cur.fetchall(), cur.statusmessage)
        cur = conn.execute("SELECT id, name, n FROM t WHERE id > %s ORDER BY id", [1])
        desc = [(d.name, d.type_code, d.precision, d.scale) for d in cur.description or []]
        rows = cur.fetchall()
        upd = conn.execute("UPDATE t SET n = n * 2 WHERE n IS NOT NULL")
        empty = conn.execute("SELECT * FROM t WHERE false").fetchall()
        multi = conn.execute("SELECT 1; SELECT 2, 3")  # simple protocol, two result sets
        results = [multi.fetchall()]
        while multi.nextset():
            results.append(multi.fetchall())
        return inserted, desc, rows, upd.rowcount, upd.statusmessage, empty, results

    got = same(pg, proxy, fresh_db, scenario)
    assert got[0] == (3, [(1,), (2,), (3,)], "INSERT 0 3")
    assert got[2] == [(2, "b", None), (3, "ç", Decimal("-2.00"))]
    assert got[-1] == [[(1,)], [(2, 3)]]


def test_server_errors_pass_through(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        out = []
        for sql in ("SELECT 1/0", "SELECT * FROM no_such_table", "SELEC 1", "SELECT 'x'::int"):
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                diag = exc.diag
                out.append((type(exc).__name__, diag.sqlstate, diag.message_primary, diag.severity))
        out.append(conn.execute("SELECT 'still fine'").fetchone())
        return out

    got = same(pg, proxy, fresh_db, scenario)
    assert [g[1] for g in got[:4]] == ["22012", "42P01", "42601", "22P02"]
    assert got[-1] == ("still fine",)


# ---------------------------------------------------------------- psycopg: prepared


def test_named_prepared_statements_reexecuted(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    queries = [
        "SELECT %s::int * 2, %s::text || '!'",
        "SELECT count(*) FROM generate_series(1, %s)",
        "SELECT %s::jsonb -> 'k'",
    ]

    def scenario(conn: Conn) -> Any:
        conn.prepare_threshold = 0  # every query becomes a named server-side statement
        out = []
        for i in range(60):
            out.append(conn.execute(queries[0], (i, f"n{i}")).fetchone())
            out.append(conn.execute(queries[1], (i,)).fetchone())
            out.append(conn.execute(queries[2], (Jsonb({"k": [i, "ü"]}),)).fetchone())
        names = conn.execute(
            "SELECT name, statement FROM pg_prepared_statements ORDER BY statement"
        ).fetchall()
        return out, names

    rows, names = same(pg, proxy, fresh_db, scenario)
    assert rows[3 * 59 : 3 * 60] == [(118, "n59!"), (59,), ([59, "ü"],)]
    assert len(names) >= 3
    assert all(name.startswith("_pg3_") for name, _ in names)


def test_prepare_true_per_query(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    with proxy.connect(fresh_db) as conn:
        conn.prepare_threshold = 1000  # only explicit prepare=True prepares
        for i in range(200):
            got = conn.execute(
                "SELECT %s::bigint + 1, %s::bytea", (i, bytes([i % 256])), prepare=True
            )
            assert got.fetchone() == (i + 1, bytes([i % 256]))
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '_pg3_%%'"
        ).fetchone()
        assert prepared == (1,)
        cur = conn.cursor(binary=True)
        for i in range(50):
            cur.execute("SELECT %b::int4[], %b::text", ([i, None], f"ß{i}"), prepare=True)
            assert cur.fetchone() == ([i, None], f"ß{i}")


# ---------------------------------------------------------------- psycopg: cursors


def test_server_side_cursor_itersize(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        with conn.transaction():
            cur = conn.cursor(name="big_cursor")
            cur.itersize = 97
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 2500) g ORDER BY g")
            rows = list(cur)
            cur.close()
            scroll = conn.cursor(name="scroll_cursor", scrollable=True)
            scroll.execute("SELECT g FROM generate_series(1, 100) g")
            part = scroll.fetchmany(10)
            scroll.scroll(50, mode="absolute")
            after = scroll.fetchone()
            scroll.close()
        return len(rows), rows[0], rows[-1], sum(r[0] for r in rows), part, after

    got = same(pg, proxy, fresh_db, scenario, autocommit=False)
    assert got[0] == 2500
    assert got[3] == 2500 * 2501 // 2
    assert got[5] == (51,)


def test_executemany(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE em (id int PRIMARY KEY, v text, j jsonb)")
        cur = conn.cursor()
        data = [(i, f"v-{i}-✓", Jsonb({"i": i})) for i in range(300)]
        cur.executemany("INSERT INTO em VALUES (%s, %s, %s)", data)
        count = cur.rowcount
        cur.executemany(
            "UPDATE em SET v = v || %s WHERE id = %s RETURNING id, v",
            [("+", i) for i in range(0, 300, 7)],
            returning=True,
        )
        returned = []
        while True:
            returned.extend(cur.fetchall())
            if not cur.nextset():
                break
        try:
            cur.executemany("INSERT INTO em VALUES (%s, 'x', null)", [(1000,), (5,), (1001,)])
        except pgerrors.UniqueViolation as exc:
            err = exc.sqlstate
        total = conn.execute("SELECT count(*), sum(id), max(j->>'i') FROM em").fetchone()
        return count, returned, err, total

    got = same(pg, proxy, fresh_db, scenario)
    assert got[0] == 300
    assert len(got[1]) == len(range(0, 300, 7))
    assert got[2] == "23505"


# ---------------------------------------------------------------- psycopg: COPY

COPY_ROWS: list[tuple[Any, ...]] = [
    (1, "plain", Decimal("1.50"), b"\x00\x01", dt.date(2020, 1, 1)),
    (2, "tab\there, newline\nand \\ backslash", None, b"", dt.date(1999, 12, 31)),
    (3, "ünïcødé 🐘, \"quotes\", 'single'", Decimal("-7.25"), bytes(range(256)), None),
    *[(i, f"row {i}", Decimal(i) / 4, str(i).encode(), dt.date(2000, 1, 1)) for i in range(4, 400)],
]
COPY_TABLE = "CREATE TEMP TABLE cp (id int, t text, n numeric(12,2), b bytea, d date)"


def _csv(rows: list[tuple[Any, ...]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow(
            [
                None if v is None else "\\x" + v.hex() if isinstance(v, bytes) else str(v)
                for v in row
            ]
        )
    return out.getvalue().encode()


def _copy_scenario(conn: Conn) -> Any:
    conn.execute(COPY_TABLE)
    cur = conn.cursor()
    out: dict[str, Any] = {}
    for fmt in ("text", "csv", "binary"):
        cur.execute("TRUNCATE cp")
        opts = {"text": "", "csv": " (FORMAT csv)", "binary": " (FORMAT binary)"}[fmt]
        with cur.copy(f"COPY cp FROM STDIN{opts}") as copy:
            if fmt == "csv":  # write_row speaks text and binary only: send CSV blocks
                copy.write(_csv(COPY_ROWS[:200]))
                copy.write(_csv(COPY_ROWS[200:]))
            else:
                if fmt == "binary":
                    copy.set_types(["int4", "text", "numeric", "bytea", "date"])
                for row in COPY_ROWS:
                    copy.write_row(row)
        out[f"in-{fmt}-rowcount"] = cur.rowcount
        out[f"in-{fmt}"] = conn.execute("SELECT * FROM cp ORDER BY id").fetchall()
    for fmt in ("text", "csv", "binary"):
        opts = {"text": "", "csv": " (FORMAT csv, HEADER)", "binary": " (FORMAT binary)"}[fmt]
        buf = bytearray()
        with cur.copy(f"COPY (SELECT * FROM cp ORDER BY id) TO STDOUT{opts}") as copy:
            for chunk in copy:
                buf += chunk
        out[f"out-{fmt}"] = bytes(buf)
    # Raw block writes (no per-row encoding) and reading rows back typed.
    cur.execute("TRUNCATE cp")
    with cur.copy("COPY cp (id, t) FROM STDIN") as copy:
        copy.write(b"".join(f"{i}\tblock {i}\n".encode() for i in range(1000)))
    with cur.copy("COPY (SELECT id, t FROM cp ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
        copy.set_types(["int4", "text"])
        out["rows"] = list(copy.rows())
    # A failing COPY (bad data) leaves the connection usable.
    try:
        with cur.copy("COPY cp (id) FROM STDIN") as copy:
            copy.write(b"1\nnot-a-number\n3\n")
    except pgerrors.InvalidTextRepresentation as exc:
        out["bad"] = exc.sqlstate
    out["after"] = conn.execute("SELECT count(*) FROM cp").fetchone()
    return out


def test_copy_in_and_out(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    got = same(pg, proxy, fresh_db, _copy_scenario)
    expected = [
        (r[0], r[1], None if r[2] is None else Decimal(r[2]).quantize(Decimal("0.01")), *r[3:])
        for r in COPY_ROWS
    ]
    for fmt in ("text", "csv", "binary"):
        assert got[f"in-{fmt}-rowcount"] == len(COPY_ROWS)
        assert got[f"in-{fmt}"] == expected
    assert got["out-binary"].startswith(b"PGCOPY\n\xff\r\n\x00")
    assert got["out-csv"].startswith(b"id,t,n,b,d\n1,plain,1.50,\\x0001,2020-01-01\n")
    assert got["rows"] == [(i, f"block {i}") for i in range(1000)]
    assert got["bad"] == "22P02"
    assert got["after"] == (1000,)


# ---------------------------------------------------------------- psycopg: transactions


def test_transactions_savepoints_and_errors(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    def scenario(conn: Conn) -> Any:
        out: list[Any] = []
        conn.execute("CREATE TABLE tx (id int PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO tx VALUES (1)")
        out.append(conn.info.transaction_status.name)
        conn.commit()
        conn.execute("INSERT INTO tx VALUES (2)")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO tx VALUES (3)")
            with conn.transaction():  # savepoint, released
                conn.execute("INSERT INTO tx VALUES (4)")
            try:
                with conn.transaction():  # savepoint, rolled back by the error
                    conn.execute("INSERT INTO tx VALUES (5)")
                    conn.execute("INSERT INTO tx VALUES (1)")
            except pgerrors.UniqueViolation:
                out.append("savepoint rolled back")
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO tx VALUES (6)")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("INSERT INTO tx VALUES (7)")
        conn.commit()
        # An error mid-transaction: everything else fails until rollback.
        conn.execute("INSERT INTO tx VALUES (8)")
        try:
            conn.execute("SELECT 1/0")
        except pgerrors.DivisionByZero:
            out.append(conn.info.transaction_status.name)
        try:
            conn.execute("SELECT 1")
        except pgerrors.InFailedSqlTransaction as exc:
            out.append(exc.sqlstate)
        conn.rollback()
        out.append(conn.info.transaction_status.name)
        out.append(conn.execute("SELECT array_agg(id ORDER BY id) FROM tx").fetchone())
        conn.rollback()
        conn.execute("DROP TABLE tx")
        conn.commit()
        return out

    with pg.connect(fresh_db, autocommit=False) as direct:
        expected = scenario(direct)
    with proxy.connect(fresh_db, autocommit=False) as proxied:
        got = scenario(proxied)
    assert got == expected
    assert got == [
        "INTRANS",
        "savepoint rolled back",
        "INERROR",
        "25P02",
        "IDLE",
        ([1, 3, 4, 7],),
    ]


# ---------------------------------------------------------------- psycopg: session plumbing


def test_backend_pid_matches_upstream(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    app = app_name()
    with proxy.connect(fresh_db, application_name=app) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        assert upstream_pids(pg, app) == [pid[0]]
        # BackendKeyData passed through unchanged: libpq reports the same pid.
        assert conn.info.backend_pid == pid[0]
        row = pg.execute(
            "SELECT datname, usename, client_addr IS NOT NULL FROM pg_stat_activity WHERE pid = %s",
            [pid[0]],
        )
        assert row == [(fresh_db, "postgres", True)]
    deadline = time.monotonic() + 5
    while upstream_pids(pg, app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_pids(pg, app) == []  # closing the client ends the backend


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_from_other_thread(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str, method: str
) -> None:
    app = app_name()
    cancels_before = proxy_counter(proxy, "pgcloak_cancel_requests")
    with proxy.connect(fresh_db, application_name=app) as conn:
        cancel = getattr(conn, method)
        timer = threading.Timer(0.3, cancel)
        timer.start()
        start = time.monotonic()
        try:
            with pytest.raises(pgerrors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(10)")
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert elapsed < 5, f"cancel took {elapsed:.1f}s"
        assert info.value.sqlstate == "57014"
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)
        state = pg.execute(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", [app]
        )
        assert len(state) == 1
        assert "pg_sleep" not in state[0][1]
    # The CancelRequest went to the proxy (libpq sends it to the address it connected to).
    assert proxy_counter(proxy, "pgcloak_cancel_requests") == cancels_before + 1


def test_cancel_inside_transaction_then_rollback(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    with proxy.connect(fresh_db, autocommit=False) as conn:
        conn.execute("SELECT 1")
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(pgerrors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
        finally:
            timer.join()
        assert conn.info.transaction_status.name == "INERROR"
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_parameter_status_changes(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        info = conn.info
        out = [
            info.parameter_status(k)
            for k in ("server_encoding", "client_encoding", "integer_datetimes", "server_version")
        ]
        conn.execute("SET TimeZone TO 'Asia/Kathmandu'")
        out.append(info.parameter_status("TimeZone"))
        out.append(conn.execute("SELECT '2024-01-01 00:00:00+00'::timestamptz").fetchone())
        conn.execute("SET application_name TO 'renamed app'")
        out.append(info.parameter_status("application_name"))
        conn.execute("SET DateStyle TO 'SQL, DMY'")
        out.append(info.parameter_status("DateStyle"))
        conn.execute("RESET ALL")
        out.append(info.parameter_status("TimeZone") != "Asia/Kathmandu")
        return out

    got = same(pg, proxy, fresh_db, scenario)
    assert got[0:3] == ["UTF8", "UTF8", "on"]
    assert got[4] == "Asia/Kathmandu"
    assert got[6] == "renamed app"
    assert got[7] == "SQL, DMY"
    assert got[8] is True


# ---------------------------------------------------------------- psycopg: pipeline


def _pipeline_scenario(conn: Conn) -> tuple[list[str], list[Any]]:
    """Errors surface at whichever call fetches the failed result (timing-dependent), so
    compare the first error raised and the final state of every cursor, not call sites."""
    conn.execute("CREATE TEMP TABLE pl (id int PRIMARY KEY, v text)")
    raised: list[str] = []
    cursors: list[psycopg.Cursor[Any]] = []

    def run(query: str, params: Any = None, binary: bool = False) -> None:
        cur = conn.cursor(binary=binary)
        cursors.append(cur)
        try:
            cur.execute(query, params)
        except psycopg.Error as exc:
            raised.append(type(exc).__name__)

    try:
        with conn.pipeline() as p:
            for i in range(20):
                run("INSERT INTO pl VALUES (%s, %s) RETURNING id, v", (i, f"v{i}é"))
            run("SELECT count(*), %s::text FROM pl", ["x"])
            run("SELECT %s::int8[]", [[1, 2]], binary=True)
            p.sync()
            run("INSERT INTO pl VALUES (100, 'rolled back')")
            run("INSERT INTO pl VALUES (1, 'duplicate')")
            run("SELECT 'aborted'")
            run("INSERT INTO pl VALUES (101, 'aborted')")
            try:
                p.sync()
            except psycopg.Error as exc:
                raised.append(type(exc).__name__)
            for i in range(200, 230):
                run("SELECT %s::int * 2", (i,))
            run("SELECT array_agg(id ORDER BY id) FROM pl")
    except psycopg.Error as exc:
        raised.append(type(exc).__name__)
    outcomes: list[Any] = []
    for cur in cursors:
        try:
            outcomes.append(cur.fetchall())
        except psycopg.Error as exc:
            outcomes.append(type(exc).__name__)
    return raised[:1], outcomes


def test_pipeline_with_error(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    raised, got = same(pg, proxy, fresh_db, _pipeline_scenario)
    assert raised == ["UniqueViolation"]
    assert got[0] == [(0, "v0é")]
    assert got[20] == [(20, "x")]
    assert got[21] == [([1, 2],)]
    assert got[22:26] == ["ProgrammingError"] * 4  # failed or aborted: no result
    assert got[-2] == [(229 * 2,)]
    assert got[-1] == [(list(range(20)),)]  # the failed sync's first insert was rolled back


def test_pipeline_in_transaction(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    def scenario(conn: Conn) -> Any:
        conn.execute("CREATE TEMP TABLE plt (id int)")
        conn.commit()
        with conn.pipeline():
            for i in range(50):
                conn.execute("INSERT INTO plt VALUES (%s)", (i,))
            with conn.transaction():
                conn.execute("INSERT INTO plt VALUES (1000)")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO plt VALUES (2000)")
                    conn.execute("SELECT 1/0")
            except pgerrors.DivisionByZero:
                pass
        conn.commit()
        return conn.execute("SELECT count(*), max(id) FROM plt").fetchone()

    assert same(pg, proxy, fresh_db, scenario, autocommit=False) == (51, 1000)


# ---------------------------------------------------------------- psycopg: async


async def test_async_concurrent_connections(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    app = app_name()
    conns = await asyncio.gather(
        *[
            psycopg.AsyncConnection.connect(
                proxy.dsn(fresh_db, application_name=app), autocommit=True
            )
            for _ in range(6)
        ]
    )
    try:

        async def work(conn: psycopg.AsyncConnection[Any], i: int) -> tuple[int, int, str]:
            cur = await conn.execute("SELECT pg_sleep(0.4), pg_backend_pid(), %s::text", [f"c{i}"])
            row = await cur.fetchone()
            assert row is not None
            total = 0
            for j in range(20):
                cur = await conn.execute("SELECT %s::int + %s::int", (i, j))
                r = await cur.fetchone()
                assert r is not None
                total += r[0]
            return row[1], total, row[2]

        start = time.monotonic()
        results = await asyncio.gather(*[work(c, i) for i, c in enumerate(conns)])
        elapsed = time.monotonic() - start
        assert elapsed < 6 * 0.4, f"queries did not run concurrently ({elapsed:.2f}s)"
        pids = [r[0] for r in results]
        assert len(set(pids)) == 6
        assert sorted(pids) == upstream_pids(pg, app)
        assert [r[1] for r in results] == [20 * i + 190 for i in range(6)]
        assert [r[2] for r in results] == [f"c{i}" for i in range(6)]
    finally:
        await asyncio.gather(*[c.close() for c in conns])


async def _async_copy_and_pipeline(dsn: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TEMP TABLE acp (id int, t text, b bytea)")
        cur = conn.cursor()
        async with cur.copy("COPY acp FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            for i in range(500):
                await copy.write_row((i, f"async ✓ {i}", bytes([i % 256]) * 3))
        copied = cur.rowcount
        out = bytearray()
        async with cur.copy("COPY (SELECT * FROM acp ORDER BY id) TO STDOUT") as copy:
            async for chunk in copy:
                out += chunk
        # As in _pipeline_scenario: the error may surface at any later call.
        cursors: list[psycopg.AsyncCursor[Any]] = []
        raised: list[str] = []

        async def run(query: str, params: Any = None) -> None:
            cur = conn.cursor()
            cursors.append(cur)
            try:
                await cur.execute(query, params)
            except psycopg.Error as exc:
                raised.append(type(exc).__name__)

        try:
            async with conn.pipeline() as p:
                for i in range(30):
                    await run("SELECT t FROM acp WHERE id = %s", (i,))
                await run("SELECT * FROM nope")
                await run("SELECT 'aborted'")
                try:
                    await p.sync()
                except psycopg.Error as exc:
                    raised.append(type(exc).__name__)
                await run("SELECT count(*) FROM acp")
        except psycopg.Error as exc:
            raised.append(type(exc).__name__)
        fetched: list[Any] = []
        for cur in cursors:
            try:
                fetched.append(await cur.fetchall())
            except psycopg.Error as exc:
                fetched.append(type(exc).__name__)
        return copied, bytes(out), fetched, raised[:1]


async def test_async_copy_and_pipeline(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    expected = await _async_copy_and_pipeline(pg.dsn(fresh_db))
    got = await _async_copy_and_pipeline(proxy.dsn(fresh_db))
    assert got == expected
    assert got[0] == 500
    assert got[1].count(b"\n") == 500
    assert got[2][7] == [("async ✓ 7",)]
    assert got[2][30:] == ["ProgrammingError", "ProgrammingError", [(500,)]]
    assert got[3] == ["UndefinedTable"]


# ---------------------------------------------------------------- asyncpg


async def apg_connect(target: Target, dbname: str, **kw: Any) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=target.host, port=target.port, user="postgres", database=dbname, timeout=10, **kw
    )


@asynccontextmanager
async def apg_both(
    pg: PgServer, proxy: ProxyProcess, dbname: str, **kw: Any
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    direct = await apg_connect(pg, dbname, **kw)
    try:
        proxied = await apg_connect(proxy, dbname, **kw)
        try:
            yield direct, proxied
        finally:
            await proxied.close()
    finally:
        await direct.close()


APG_VALUES: list[tuple[str, Any]] = [
    ("int2", 7),
    ("int4", -123456),
    ("int8", 2**62 + 5),
    ("float4", 1.5),
    ("float8", 3.141592653589793),
    ("numeric", Decimal("98765432109876543210.0123456789")),
    ("numeric", Decimal("-0.5")),
    ("text", "héllo ✓ 🐘 日本"),
    ("varchar", ""),
    ("bytea", b"\x00\xff\x10 bin"),
    ("bool", False),
    ("date", dt.date(2024, 2, 29)),
    ("timestamp", dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
    ("timestamptz", dt.datetime(2001, 9, 9, 1, 46, 40, tzinfo=dt.UTC)),
    ("time", dt.time(23, 59, 59, 999999)),
    ("interval", dt.timedelta(days=40, seconds=3661, microseconds=1)),
    ("uuid", uuid.UUID("0f0e0d0c-0b0a-0908-0706-050403020100")),
    ("json", '{"a": [1, 2, null], "b": "ü"}'),
    ("jsonb", '{"x": {"y": true}}'),
    ("int4[]", [1, None, 3]),
    ("text[]", ["a", "b,c", None, "é"]),
    ("float8[]", [[1.0, 2.0], [3.0, 4.5]]),
    ("inet", ipaddress.ip_address("192.168.1.20")),
    ("text", None),
]


async def test_asyncpg_binary_codecs(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    pg.execute("CREATE TYPE pair AS (x int, label text, tags text[])", dbname=fresh_db)
    sql = "SELECT " + ", ".join(f"${i + 1}::{t}" for i, (t, _) in enumerate(APG_VALUES))
    args = [v for _, v in APG_VALUES]
    results = []
    async with apg_both(pg, proxy, fresh_db) as conns:
        for conn in conns:
            row = await conn.fetchrow(sql, *args)
            assert row is not None
            record = await conn.fetchval("SELECT ROW(1, 'two', NULL, ARRAY[3.5]::float8[])")
            composite = await conn.fetchval("SELECT $1::pair", (5, "five", ["v", None]))
            composites = await conn.fetch(
                "SELECT (g, 'n' || g, ARRAY['t' || g])::pair AS p FROM generate_series(1, 3) g"
            )
            first = await conn.fetchval("SELECT $1::text || $2::text", "a", "ü")
            results.append(
                (
                    list(row.values()),
                    tuple(record),
                    tuple(composite),
                    [tuple(r["p"]) for r in composites],
                    first,
                )
            )
    assert results[1] == results[0]
    values, record, composite, composites, first = results[1]
    assert values[:17] == [v for _, v in APG_VALUES[:17]]
    assert values[17:] == [
        '{"a": [1, 2, null], "b": "ü"}',
        '{"x": {"y": true}}',
        [1, None, 3],
        ["a", "b,c", None, "é"],
        [[1.0, 2.0], [3.0, 4.5]],
        ipaddress.ip_address("192.168.1.20"),
        None,
    ]
    assert record == (1, "two", None, [3.5])
    assert composite == (5, "five", ["v", None])
    assert composites == [(1, "n1", ["t1"]), (2, "n2", ["t2"]), (3, "n3", ["t3"])]
    assert first == "aü"


async def test_asyncpg_prepared_and_executemany(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute("CREATE TEMP TABLE ae (id int PRIMARY KEY, v text, n numeric)")
        await conn.executemany(
            "INSERT INTO ae VALUES ($1, $2, $3)",
            [(i, f"v{i}", Decimal(i) / 8) for i in range(400)],
        )
        stmt = await conn.prepare("SELECT v, n FROM ae WHERE id = $1")
        params = [a.name for a in stmt.get_parameters()]
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        rows = [tuple(await stmt.fetchrow(i)) for i in range(0, 400, 3)]
        vals = [await stmt.fetchval(i, column=1) for i in range(10)]
        many = await stmt.fetch(5)
        agg = await conn.prepare("SELECT count(*), sum(n) FROM ae WHERE id < $1")
        sums = [tuple(await agg.fetchrow(k)) for k in range(0, 400, 50)]
        status = await conn.execute("DELETE FROM ae WHERE id >= 200")
        try:
            await conn.executemany("INSERT INTO ae VALUES ($1, 'x', 0)", [(1000,), (3,)])
        except asyncpg.UniqueViolationError as exc:
            err = exc.sqlstate
        left = await conn.fetchval("SELECT count(*) FROM ae")
        return params, attrs, rows, vals, [tuple(r) for r in many], sums, status, err, left

    async with apg_both(pg, proxy, fresh_db) as (direct, proxied):
        expected = await scenario(direct)
        got = await scenario(proxied)
    assert got == expected
    assert got[1] == [("v", "text"), ("n", "numeric")]
    assert got[2][1] == ("v3", Decimal("0.375"))
    assert got[6] == "DELETE 200"
    assert got[7] == "23505"
    assert got[8] == 200  # executemany is atomic


async def test_asyncpg_copy(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    records = [
        (i, f"rec {i} ✓\t\\", None if i % 5 == 0 else dt.date(2020, 1, 1) + dt.timedelta(days=i))
        for i in range(700)
    ]

    async def scenario(conn: asyncpg.Connection, suffix: str) -> Any:
        src, dst = f"src_{suffix}", f"dst_{suffix}"
        await conn.execute(f"CREATE TABLE {src} (id int, t text, d date)")
        await conn.execute(f"CREATE TABLE {dst} (id int, t text, d date)")
        status_in = await conn.copy_records_to_table(src, records=records)
        out = io.BytesIO()
        status_out = await conn.copy_from_query(
            f"SELECT * FROM {src} WHERE id % $1 = 0 ORDER BY id", 2, output=out, format="csv"
        )
        table_out = io.BytesIO()
        await conn.copy_from_table(src, output=table_out, format="binary")
        out.seek(0)
        status_back = await conn.copy_to_table(dst, source=out, format="csv")
        rows = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {dst} ORDER BY id")]
        await conn.execute(f"DROP TABLE {src}, {dst}")
        return status_in, status_out, status_back, out.getvalue(), table_out.getvalue(), rows

    async with apg_both(pg, proxy, fresh_db) as (direct, proxied):
        expected = await scenario(direct, "d")
        got = await scenario(proxied, "p")
    assert got == expected
    assert got[:3] == ("COPY 700", "COPY 350", "COPY 350")
    assert got[5] == records[::2]


async def test_asyncpg_cursor_portal_suspended(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    # asyncpg cursors Execute the portal with a row limit: PortalSuspended each batch.
    async def scenario(conn: asyncpg.Connection) -> Any:
        async with conn.transaction():
            streamed = [
                r["g"]
                async for r in conn.cursor(
                    "SELECT g FROM generate_series(1, $1) g", 1234, prefetch=100
                )
            ]
            cur = await conn.cursor("SELECT g, repeat('x', g % 7) FROM generate_series(1, 500) g")
            first = [tuple(r) for r in await cur.fetch(10)]
            skipped = await cur.forward(100)
            one = tuple(await cur.fetchrow())
            rest = await cur.fetch(1000)
        return streamed, first, skipped, one, len(rest)

    async with apg_both(pg, proxy, fresh_db) as (direct, proxied):
        expected = await scenario(direct)
        got = await scenario(proxied)
    assert got == expected
    assert got[0] == list(range(1, 1235))
    assert got[2:] == (100, (111, "x" * (111 % 7)), 389)


async def test_asyncpg_timeout_cancels_upstream_query(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    app = app_name()
    conn = await apg_connect(proxy, fresh_db, server_settings={"application_name": app})
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert upstream_pids(pg, app) == [pid]
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetch("SELECT pg_sleep(10)"), timeout=0.5)
        assert await conn.fetchval("SELECT 'usable'") == "usable"
        assert time.monotonic() - start < 5
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        rows = pg.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
            [pid],
        )
        assert not any("pg_sleep" in (q or "") for _, q in rows)
        # A plain wait_for timeout inside a transaction, then the transaction still works.
        async with conn.transaction():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), timeout=0.3)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


# ---------------------------------------------------------------- LISTEN / NOTIFY


def test_listen_notify_psycopg(proxy: ProxyProcess) -> None:
    channel = f"chan_{uuid.uuid4().hex[:8]}"
    payload = "payload ✓ 🐘 with 'quotes' and, commas"
    with (
        proxy.connect("postgres") as listener,
        proxy.connect("postgres", autocommit=False) as sender,
    ):
        listener.execute(f'LISTEN "{channel}"')
        sender_pid = sender.info.backend_pid
        sender.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        # Inside an open transaction: nothing is delivered yet.
        assert list(listener.notifies(timeout=0.5)) == []
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "second"))
        sender.commit()
        got = list(listener.notifies(timeout=5, stop_after=2))
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            (channel, payload, sender_pid),
            (channel, "second", sender_pid),
        ]
        sender.execute(f"NOTIFY \"{channel}\", 'rolled back'")
        sender.rollback()
        sender.execute(f"NOTIFY \"{channel}\", 'big {'x' * 7000}'")
        sender.commit()
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in got] == ["big " + "x" * 7000]
        listener.execute(f'UNLISTEN "{channel}"')
        sender.execute(f"NOTIFY \"{channel}\", 'after unlisten'")
        sender.commit()
        assert list(listener.notifies(timeout=0.3)) == []


async def test_listen_notify_asyncpg(proxy: ProxyProcess) -> None:
    channel = f"achan_{uuid.uuid4().hex[:8]}"
    received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
    listener = await apg_connect(proxy, "postgres")
    sender = await apg_connect(proxy, "postgres")
    try:
        await listener.add_listener(
            channel, lambda _c, pid, ch, p: received.put_nowait((pid, ch, p))
        )
        sender_pid = await sender.fetchval("SELECT pg_backend_pid()")
        async with sender.transaction():
            await sender.execute("SELECT pg_notify($1, $2)", channel, "in txn ü")
            await asyncio.sleep(0.3)
            assert received.empty()
        got = await asyncio.wait_for(received.get(), timeout=5)
        assert got == (sender_pid, channel, "in txn ü")
        for i in range(20):
            await sender.execute("SELECT pg_notify($1, $2)", channel, f"n{i}")
        got_many = [await asyncio.wait_for(received.get(), timeout=5) for _ in range(20)]
        assert [p for _, _, p in got_many] == [f"n{i}" for i in range(20)]
        # The listening connection still serves queries in between notifications.
        assert await listener.fetchval("SELECT 40 + 2") == 42
    finally:
        await listener.close()
        await sender.close()


# ---------------------------------------------------------------- raw protocol


class RawConn:
    """A bare protocol-3 socket client built on pgcloak's codec."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.framer = Framer()
        self.queue: deque[tuple[bytes, bytes]] = deque()

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(m.encode() for m in messages))

    def recv(self) -> Message:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.queue.extend(self.framer.feed(data))
        typ, body = self.queue.popleft()
        return decode_backend(typ, body)

    def until_ready(self) -> list[Message]:
        out: list[Message] = []
        while True:
            msg = self.recv()
            out.append(msg)
            if isinstance(msg, ReadyForQuery):
                return out
            if isinstance(msg, ErrorResponse) and msg.fields.get("S") == "FATAL":
                return out

    def closed(self) -> bool:
        """True once the peer closed the connection (after any queued messages)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@contextmanager
def raw(target: Target) -> Iterator[RawConn]:
    conn = RawConn(target.host, target.port)
    try:
        yield conn
    finally:
        conn.close()


def _startup(target: Target, version: int, dbname: str) -> list[Message]:
    with raw(target) as conn:
        conn.send(
            StartupMessage(
                version,
                {"user": "postgres", "database": dbname, "_pq_.foo": "bar", "_pq_.baz": "1"},
            )
        )
        messages = conn.until_ready()
        if isinstance(messages[-1], ReadyForQuery):
            conn.send(Query("SELECT 40 + 2 AS answer, current_database()"))
            messages += conn.until_ready()
            conn.send(Terminate())
        else:
            assert conn.closed()
        return messages


def test_protocol_version_negotiation(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    version = (3 << 16) | 5
    direct = _startup(pg, version, fresh_db)
    got = _startup(proxy, version, fresh_db)
    # PostgreSQL sends PG_PROTOCOL_LATEST, the full version number (3 << 16 | 0),
    # in the field the docs call "newest minor"; libpq 17+ relies on that.
    assert direct[0] == NegotiateProtocolVersion(PROTOCOL_3_0, ("_pq_.foo", "_pq_.baz"))
    assert got[0] == direct[0]
    assert got[1] == Authentication(Authentication.OK)
    kinds = [type(m).__name__ for m in got]
    assert kinds == [type(m).__name__ for m in direct]
    params = {m.name: m.value for m in got if isinstance(m, ParameterStatus)}
    assert params == {m.name: m.value for m in direct if isinstance(m, ParameterStatus)}
    keys = [m for m in got if isinstance(m, BackendKeyData)]
    assert len(keys) == 1
    ready = got.index(ReadyForQuery(b"I"))
    assert isinstance(got[ready + 1], RowDescription)
    assert got[ready + 2] == DataRow((b"42", fresh_db.encode()))
    assert got[ready + 3 :] == [CommandComplete("SELECT 1"), ReadyForQuery(b"I")]


@pytest.mark.parametrize("version", [4 << 16, (5 << 16) | 1, 1000 << 16])
def test_unsupported_protocol_version(pg: PgServer, proxy: ProxyProcess, version: int) -> None:
    direct = _startup(pg, version, "postgres")
    got = _startup(proxy, version, "postgres")
    assert len(got) == 1
    assert isinstance(got[0], ErrorResponse)
    assert got[0].fields["S"] == "FATAL"
    assert got[0].sqlstate == "0A000"
    assert isinstance(direct[0], ErrorResponse)
    assert got[0].sqlstate == direct[0].sqlstate


def test_execute_row_limit_portal_suspended(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    def scenario(target: Target) -> list[Message]:
        with raw(target) as conn:
            conn.send(StartupMessage(PROTOCOL_3_0, {"user": "postgres", "database": fresh_db}))
            assert isinstance(conn.until_ready()[-1], ReadyForQuery)
            conn.send(
                Parse("s1", "SELECT g, $1::text FROM generate_series(1, 10) g"),
                Bind("", "s1", (), (b"p",), (0,)),
                Execute("", 3),
                Execute("", 3),
                Execute("", 0),
                Execute("", 1),  # exhausted portal: just CommandComplete again
                Sync(),
            )
            out = conn.until_ready()
            conn.send(Bind("", "s1", (), (b"q",), (1, 0)), Execute("", 2), Sync())
            out += conn.until_ready()
            conn.send(Query("SELECT 'synced'"))
            out += conn.until_ready()
            conn.send(Terminate())
            return out

    expected = scenario(pg)
    got = scenario(proxy)
    assert got == expected

    def rows(first: int, stop: int, param: bytes) -> list[DataRow]:
        return [DataRow((str(i).encode(), param)) for i in range(first, stop)]

    assert got[:10] == [
        ParseComplete(),
        BindComplete(),
        *rows(1, 4, b"p"),
        PortalSuspended(),
        *rows(4, 7, b"p"),
        PortalSuspended(),
    ]
    assert got[10:16] == [
        *rows(7, 11, b"p"),
        CommandComplete("SELECT 4"),
        CommandComplete("SELECT 0"),
    ]
    assert got[16] == ReadyForQuery(b"I")
    assert got[17:21] == [
        BindComplete(),
        DataRow(((1).to_bytes(4, "big"), b"q")),
        DataRow(((2).to_bytes(4, "big"), b"q")),
        PortalSuspended(),
    ]
    assert got[-2:] == [CommandComplete("SELECT 1"), ReadyForQuery(b"I")]


def test_libpq_max_protocol_version_downgrade(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    """libpq 18 asks for protocol 3.2; the proxy must downgrade it to 3.0 like PG 15 does."""
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot request protocol 3.2")

    def scenario(conn: Conn) -> Any:
        return conn.info.pgconn.protocol_version, conn.execute("SELECT 'v3.0'").fetchone()

    got = same(pg, proxy, fresh_db, scenario, max_protocol_version="3.2")
    assert got == (3, ("v3.0",))
