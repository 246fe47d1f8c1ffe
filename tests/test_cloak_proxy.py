"""The cloaking proxy end to end: registry loading, result mapping, DDL and freshness.

Each test gets a fresh cloaked database behind the session's cloaking proxy and
checks both what the client sees (semantic names, PostgreSQL's own errors) and
what the upstream holds (physical names only).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from helpers import PgServer, ProxyLauncher, ProxyProcess

from pgcloak.crypto.keys import new_master_key

PHYSICAL = re.compile(r"^[tciksvm][0-9a-f]{20}")


def connect(proxy: ProxyProcess, db: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(db), autocommit=kw.pop("autocommit", True), **kw)


def user_relnames(pg: PgServer, db: str) -> list[str]:
    with psycopg.connect(pg.dsn(db)) as conn:
        rows = conn.execute(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcloak', 'pg_toast')"
        ).fetchall()
    return [r[0] for r in rows]


def test_database_without_registry_is_refused(cloak_proxy: ProxyProcess, fresh_db: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="no pgcloak registry"):
        connect(cloak_proxy, fresh_db)


def test_wrong_master_key_is_refused(
    pg: PgServer, proxy_factory: Callable[..., ProxyProcess], cloaked_db: str
) -> None:
    other = proxy_factory(pg.upstream_url(), env={"PGCLOAK_MASTER_KEY": new_master_key()})
    with pytest.raises(psycopg.OperationalError, match="master key"):
        connect(other, cloaked_db)


def test_cloak_on_without_key_does_not_start(tmp_path: Any, pg: PgServer) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        proc = launcher.start(pg.upstream_url(), "--cloak", "on", wait=False)
        assert proc.wait(15) == 2
        assert "no master key" in proc.log_text()
    finally:
        launcher.close()


def test_simple_and_extended_round_trip(
    pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute(
            "CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, "
            "full_name text)"
        )
        conn.execute(
            "INSERT INTO customers (email, full_name) VALUES (%s, %s), (%s, %s)",
            ["a@x", "Ann", "b@x", "Bob"],
        )
        cur = conn.execute("SELECT * FROM customers ORDER BY id")
        assert [d.name for d in cur.description or ()] == ["id", "email", "full_name"]
        assert cur.fetchall() == [(1, "a@x", "Ann"), (2, "b@x", "Bob")]
        cur = conn.execute("SELECT c.email AS mail, full_name FROM customers c WHERE id = %s", [2])
        assert [d.name for d in cur.description or ()] == ["mail", "full_name"]
        assert cur.fetchall() == [("b@x", "Bob")]
        for _ in range(3):  # server-side prepared after the second run
            cur = conn.execute("SELECT email FROM customers WHERE id = %s", [1], prepare=True)
            assert [d.name for d in cur.description or ()] == ["email"]
            assert cur.fetchall() == [("a@x",)]
        conn.pgconn.send_query(b"SELECT full_name FROM customers WHERE id = 1; SELECT 2 AS two")
        results = []
        while (res := conn.pgconn.get_result()) is not None:
            results.append((res.fname(0), res.get_value(0, 0)))
        assert results == [(b"full_name", b"Ann"), (b"two", b"2")]
    names = user_relnames(pg, cloaked_db)
    assert names and all(PHYSICAL.match(n) for n in names), names


def test_errors_read_as_on_a_plain_database(cloak_proxy: ProxyProcess, cloaked_db: str) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, cid int REFERENCES customers)")
        conn.execute("INSERT INTO customers VALUES (1, 'a@x')")
        with pytest.raises(psycopg.errors.UniqueViolation) as exc:
            conn.execute("INSERT INTO customers VALUES (2, 'a@x')")
        diag = exc.value.diag
        assert diag.message_primary == (
            'duplicate key value violates unique constraint "customers_email_key"'
        )
        assert diag.message_detail == "Key (email)=(a@x) already exists."
        assert (diag.table_name, diag.constraint_name) == ("customers", "customers_email_key")
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as fk:
            conn.execute("INSERT INTO orders VALUES (1, 7)")
        assert fk.value.diag.message_primary == (
            'insert or update on table "orders" violates foreign key constraint "orders_cid_fkey"'
        )
        assert fk.value.diag.message_detail == 'Key (cid)=(7) is not present in table "customers".'
        with pytest.raises(psycopg.errors.NotNullViolation) as nn:
            conn.execute("INSERT INTO customers (email) VALUES ('z')")
        assert nn.value.diag.column_name == "id"
        assert 'column "id" of relation "customers"' in (nn.value.diag.message_primary or "")
        # A position points into the client's own text, also after a rewritten statement.
        sql = "SELECT email FROM customers;\nSELECT nosuch FROM customers"
        conn.pgconn.send_query(sql.encode())
        errors = []
        while (res := conn.pgconn.get_result()) is not None:
            if res.error_message:
                errors.append(res.error_message.decode())
        assert len(errors) == 1
        assert 'column "nosuch" does not exist' in errors[0]
        line = errors[0].splitlines()[1]
        assert line.startswith("LINE 2: SELECT nosuch FROM customers")


def test_refusal_inside_a_transaction_aborts_it(cloak_proxy: ProxyProcess, cloaked_db: str) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE TABLE t (a int)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT a FROM t'")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT a FROM t")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_rename_is_registry_only_and_seen_by_other_sessions(
    pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with connect(cloak_proxy, cloaked_db) as a, connect(cloak_proxy, cloaked_db) as b:
        a.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        a.execute("INSERT INTO items VALUES (1, 'one')")
        before = user_relnames(pg, cloaked_db)
        assert b.execute("SELECT label FROM items").fetchall() == [("one",)]
        cur = a.execute("ALTER TABLE items RENAME COLUMN label TO title")
        assert cur.statusmessage == "ALTER TABLE"
        a.execute("ALTER TABLE items RENAME TO goods")
        assert user_relnames(pg, cloaked_db) == before  # nothing changed upstream
        cur = b.execute("SELECT * FROM goods")
        assert [d.name for d in cur.description or ()] == ["id", "title"]
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT * FROM items")


def test_rolled_back_ddl_leaves_no_trace(
    pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE kept (a int)")
        try:
            with conn.transaction():
                conn.execute("CREATE TABLE dropped (a int)")
                conn.execute("INSERT INTO dropped VALUES (1)")
                assert conn.execute("SELECT a FROM dropped").fetchall() == [(1,)]
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT a FROM dropped")
        conn.execute("SELECT a FROM kept")
    with psycopg.connect(pg.dsn(cloaked_db)) as direct:
        n = direct.execute("SELECT count(*) FROM pgcloak.objects WHERE kind = 't'").fetchone()
    assert n == (1,)


def test_prepared_rollback_to_reloads_every_time(
    cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    """A prepared ROLLBACK TO run again (Bind/Execute, no Parse) also undoes the registry
    rows of the DDL it rolls back, like the first time (a rename is registry-only)."""
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE TABLE steady (a int)")
    with connect(cloak_proxy, cloaked_db, autocommit=False) as conn:
        conn.execute("SAVEPOINT s")
        for _ in range(3):
            conn.execute("ALTER TABLE steady RENAME TO moved")
            conn.execute("SELECT a FROM moved")
            conn.execute("ROLLBACK TO SAVEPOINT s", prepare=True)
            conn.execute("SELECT a FROM steady")
        conn.rollback()


def test_pipeline_with_ddl_and_dml(cloak_proxy: ProxyProcess, cloaked_db: str) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        with conn.pipeline():
            conn.execute("CREATE TABLE p (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO p VALUES (%s, %s)", [1, "x"])
            conn.execute("INSERT INTO p VALUES (%s, %s)", [2, "y"])
            cur = conn.execute("SELECT v FROM p ORDER BY id")
        assert cur.fetchall() == [("x",), ("y",)]
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline():
            conn.execute("INSERT INTO p VALUES (%s, %s)", [3, "z"])
            conn.execute("INSERT INTO p VALUES (%s, %s)", [1, "dup"])
            conn.execute("INSERT INTO p VALUES (%s, %s)", [4, "w"])
        assert conn.execute("SELECT count(*) FROM p").fetchone() == (2,)  # as on PostgreSQL


def test_search_path_is_followed(cloak_proxy: ProxyProcess, cloaked_db: str) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE public.things (a int)")
        conn.execute("CREATE TABLE app.things (b int)")
        conn.execute("INSERT INTO public.things VALUES (1)")
        conn.execute("INSERT INTO app.things VALUES (2)")
        assert conn.execute("SELECT * FROM things").fetchall() == [(1,)]
        conn.execute("SET search_path = app, public")
        cur = conn.execute("SELECT * FROM things")
        assert [d.name for d in cur.description or ()] == ["b"]
        assert cur.fetchall() == [(2,)]
        conn.execute("RESET search_path")
        assert conn.execute("SELECT * FROM things").fetchall() == [(1,)]


def test_uncloaked_tables_keep_working(
    pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with psycopg.connect(pg.dsn(cloaked_db), autocommit=True) as direct:
        direct.execute("CREATE TABLE legacy (id int, note text)")
        direct.execute("INSERT INTO legacy VALUES (1, 'plain')")
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE TABLE fresh (id int, extra text)")
        conn.execute("INSERT INTO fresh VALUES (1, 'cloaked')")
        cur = conn.execute("SELECT l.note, f.extra FROM legacy l JOIN fresh f ON f.id = l.id")
        assert [d.name for d in cur.description or ()] == ["note", "extra"]
        assert cur.fetchall() == [("plain", "cloaked")]


def test_other_instances_see_changes_within_a_second(
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloak_proxy: ProxyProcess,
    cloaked_db: str,
    master_key: str,
) -> None:
    second = proxy_factory(pg.upstream_url(), env={"PGCLOAK_MASTER_KEY": master_key})
    with connect(cloak_proxy, cloaked_db) as a, connect(second, cloaked_db) as b:
        a.execute("CREATE TABLE shared (a int)")
        assert b.execute("SELECT a FROM shared").fetchall() == []  # b loads at its start
        a.execute("ALTER TABLE shared RENAME COLUMN a TO renamed")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                cur = b.execute("SELECT renamed FROM shared")
                break
            except psycopg.errors.UndefinedColumn:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert [d.name for d in cur.description or ()] == ["renamed"]


def test_notifications_of_the_registry_stay_hidden(
    cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with connect(cloak_proxy, cloaked_db) as a, connect(cloak_proxy, cloaked_db) as b:
        seen: list[str] = []
        b.add_notify_handler(lambda n: seen.append(n.channel))
        b.execute("LISTEN app_events")
        a.execute("CREATE TABLE n (a int)")
        a.execute("NOTIFY app_events, 'hello'")
        time.sleep(0.2)
        b.execute("SELECT 1")
        assert seen == ["app_events"]


def test_temporary_tables_are_created_as_written(
    cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    with connect(cloak_proxy, cloaked_db) as conn:
        conn.execute("CREATE TABLE people (id int, name text)")
        conn.execute("INSERT INTO people VALUES (1, 'Ann')")
        conn.execute("CREATE TEMP TABLE scratch (id int, note text)")
        conn.execute("INSERT INTO scratch VALUES (1, 'temp row')")
        cur = conn.execute("SELECT p.name, s.note FROM people p JOIN scratch s ON s.id = p.id")
        assert cur.fetchall() == [("Ann", "temp row")]
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("CREATE TEMP TABLE leaky AS SELECT name FROM people")


def test_only_configured_tables_are_cloaked(
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloaked_db: str,
    master_key: str,
) -> None:
    proxy = proxy_factory(
        pg.upstream_url(),
        "--cloak-tables",
        "secret.*, public.vault",
        env={"PGCLOAK_MASTER_KEY": master_key},
    )
    with connect(proxy, cloaked_db) as conn:
        conn.execute("CREATE SCHEMA secret")
        conn.execute("CREATE TABLE secret.keys (k text)")
        conn.execute("CREATE TABLE public.vault (v text)")
        conn.execute("CREATE TABLE public.open_data (o text)")
        conn.execute("INSERT INTO open_data VALUES ('visible')")
        assert conn.execute("SELECT o FROM open_data").fetchall() == [("visible",)]
        conn.execute("INSERT INTO secret.keys SELECT o FROM open_data")
        assert conn.execute("SELECT k FROM secret.keys").fetchall() == [("visible",)]
    names = user_relnames(pg, cloaked_db)
    assert "open_data" in names
    assert "keys" not in names and "vault" not in names


def test_dev_mode_logs_rewrites_prod_never(
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloaked_db_factory: Callable[..., str],
    master_key: str,
) -> None:
    env = {"PGCLOAK_MASTER_KEY": master_key}
    for mode in ("dev", "prod"):
        db = cloaked_db_factory()
        proxy = proxy_factory(pg.upstream_url(), "--mode", mode, "--log-level", "DEBUG", env=env)
        with connect(proxy, db) as conn:
            conn.execute("CREATE TABLE marker_table_xyz (marker_column_xyz int)")
            conn.execute("SELECT marker_column_xyz FROM marker_table_xyz WHERE 1 = 1")
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT marker_missing_xyz FROM marker_table_xyz")
        proxy.stop()
        text = proxy.log_text()
        if mode == "dev":
            assert "marker_column_xyz" in text
        else:
            assert "marker_" not in text, text


def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
def test_redis_carries_changes_to_sessions_inside_transactions(
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloaked_db: str,
    master_key: str,
) -> None:
    env = {"PGCLOAK_MASTER_KEY": master_key}
    redis = ("--redis", "redis://127.0.0.1:6379/0")
    first = proxy_factory(pg.upstream_url(), *redis, env=env)
    second = proxy_factory(pg.upstream_url(), *redis, env=env)
    with connect(first, cloaked_db) as a, connect(second, cloaked_db) as b:
        a.execute("CREATE TABLE r (a int)")
        b.execute("BEGIN")  # inside a transaction, b's backend gets no NOTIFY
        assert b.execute("SELECT a FROM r").fetchall() == []
        a.execute("ALTER TABLE r RENAME COLUMN a TO renamed")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                b.execute("SAVEPOINT s")
                cur = b.execute("SELECT renamed FROM r")
                break
            except psycopg.errors.UndefinedColumn:
                b.execute("ROLLBACK TO SAVEPOINT s")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert [d.name for d in cur.description or ()] == ["renamed"]
        b.execute("COMMIT")
