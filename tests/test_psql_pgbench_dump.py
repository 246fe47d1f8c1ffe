"""Real command-line clients through pgcloak: psql, pgbench, pg_dump / pg_restore.

Every client runs as a subprocess against the proxy; where the output is
deterministic the same run against PostgreSQL directly is the oracle, and the
two must match byte for byte (stdout, stderr and exit code).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import LOCALHOST, PgServer, ProxyProcess

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLIENT_TIMEOUT = 60.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidate = PG_BIN / name
    if candidate.is_file():
        return str(candidate)
    pytest.skip(f"{name} not installed")


def _client_env() -> dict[str, str]:
    """Hermetic client environment: no inherited PG* settings, UTF-8 everywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGUSER="postgres",
        PGCONNECT_TIMEOUT="10",
        PGCLIENTENCODING="UTF8",
        PGSSLMODE="prefer",  # libpq default: the proxy (no client TLS) answers N
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        PSQLRC=os.devnull,
    )
    return env


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    full_env = _client_env()
    if env:
        full_env.update(env)
    return subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )


def conn_args(port: int, dbname: str) -> list[str]:
    return ["-h", LOCALHOST, "-p", str(port), "-U", "postgres", "-d", dbname]


def psql(
    port: int,
    dbname: str,
    *args: str,
    input: bytes | None = None,
    on_error_stop: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    stop = "1" if on_error_stop else "0"
    argv = [_tool("psql"), "-X", "-v", f"ON_ERROR_STOP={stop}", *conn_args(port, dbname), *args]
    return run(argv, input=input, env=env)


def ok(res: subprocess.CompletedProcess[bytes]) -> str:
    """Assert a zero exit and return stdout as text."""
    assert res.returncode == 0, (
        f"{res.args!r} exited {res.returncode}\nstdout:\n{res.stdout.decode(errors='replace')}"
        f"\nstderr:\n{res.stderr.decode(errors='replace')}"
    )
    return res.stdout.decode()


def assert_same_run(
    direct: subprocess.CompletedProcess[bytes], proxied: subprocess.CompletedProcess[bytes]
) -> None:
    """Proxied run identical to the direct one: exit code, stdout and stderr bytes."""
    assert proxied.returncode == direct.returncode, (
        proxied.returncode,
        direct.returncode,
        proxied.stderr.decode(errors="replace"),
    )
    if proxied.stdout != direct.stdout:
        d, p = direct.stdout.splitlines(), proxied.stdout.splitlines()
        first = next(
            (i for i, (a, b) in enumerate(zip(d, p, strict=False)) if a != b), min(len(d), len(p))
        )
        pytest.fail(
            f"stdout differs (direct {len(direct.stdout)} B, proxied {len(proxied.stdout)} B) "
            f"at line {first + 1}:\n direct:  {d[first : first + 3]!r}\n"
            f" proxied: {p[first : first + 3]!r}"
        )
    assert proxied.stderr == direct.stderr


# -- psql ------------------------------------------------------------------------

DETERMINISTIC_SCRIPT = r"""
\set VERBOSITY verbose
\pset null '(null)'
CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    price numeric(10, 2) CHECK (price >= 0),
    tags text[],
    payload bytea,
    created date
);
CREATE INDEX items_name_idx ON items (name);
CREATE SEQUENCE item_seq START 100;
INSERT INTO items VALUES
    (1, 'alpha', 1.50, '{a,b}', '\x00ff', '2024-01-01'),
    (2, 'beta', NULL, NULL, NULL, NULL),
    (3, E'multi\nline ünïcødé ✓', 3.25, '{}', '\xdeadbeef', '2024-02-29');
INSERT INTO items
    SELECT g, 'n' || g, g * 0.5, ARRAY[g::text, 'x'], decode(md5(g::text), 'hex'),
           date '2024-01-01' + g
    FROM generate_series(4, 20) g;
UPDATE items SET price = price * 2 WHERE id % 3 = 0;
DELETE FROM items WHERE id = 20;
SELECT nextval('item_seq'), nextval('item_seq');
SELECT * FROM items ORDER BY id;
SELECT count(*), sum(price) FROM items;
ALTER TABLE items ADD COLUMN note text DEFAULT 'none';
SELECT id, note FROM items WHERE id < 3 ORDER BY id;
\d items
-- several statements in one simple Query message
SELECT 1 AS one \; SELECT 2 AS two \; SELECT 'three' AS three;
-- \gset and \gexec
SELECT 42 AS answer, 'hello' AS greeting \gset
\echo answer=:answer greeting=:greeting
SELECT format('CREATE TABLE gx_%s (i int)', g) FROM generate_series(1, 3) g \gexec
SELECT relname FROM pg_class WHERE relname LIKE 'gx\_%' ORDER BY 1;
-- \copy out: text, csv, query
\copy items (id, name) to stdout
\copy items (id, name, price, tags) to stdout with (format csv, header)
\copy (SELECT id, encode(payload, 'hex') FROM items WHERE id <= 5 ORDER BY id) to stdout csv
-- \copy in: text and csv, data inline in this script
CREATE TABLE copied (id int, t text, b bytea);
\copy copied from stdin
1	plain	\\x00
2	tab\there	\\xff
3	\N	\N
\.
\copy copied from stdin with csv
4,"quoted, comma",\x01
5,"multi
line ✓",
\.
SELECT id, t, encode(b, 'hex') FROM copied ORDER BY id;
-- an error inside a transaction, then ROLLBACK
BEGIN;
INSERT INTO copied VALUES (10, 'in-txn', NULL);
INSERT INTO copied VALUES ('not a number');
SELECT 1;
ROLLBACK;
SELECT count(*) FROM copied;
-- savepoints
BEGIN;
INSERT INTO copied VALUES (11, 'kept', NULL);
SAVEPOINT s1;
SELECT 1 / 0;
ROLLBACK TO SAVEPOINT s1;
INSERT INTO copied VALUES (12, 'also kept', NULL);
COMMIT;
SELECT id, t FROM copied WHERE id > 9 ORDER BY id;
-- errors with SQLSTATE (VERBOSITY verbose)
SELECT * FROM no_such_table;
INSERT INTO items (id, name) VALUES (1, 'dup');
INSERT INTO items (id, name, price) VALUES (99, 'neg', -1);
SELECT 'after errors' AS still_here;
-- notices and warnings
DO $$ BEGIN RAISE NOTICE 'x'; END $$;
DO $$ BEGIN RAISE WARNING 'careful: %', 42; END $$;
-- session parameters
SET application_name = 'pgcloak-cli-test';
SHOW application_name;
SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid();
SET search_path = public, pg_catalog;
SHOW search_path;
-- SQL-level prepared statements
PREPARE q(int) AS SELECT name FROM items WHERE id = $1;
EXECUTE q(2);
DEALLOCATE q;
SELECT g, repeat('x', g % 50) FROM generate_series(1, 2000) g;
"""


def test_deterministic_script_identical_direct_and_proxied(
    pg: PgServer, proxy: ProxyProcess, db_factory: Callable[..., str], tmp_path: Path
) -> None:
    script = tmp_path / "script.sql"
    script.write_text(DETERMINISTIC_SCRIPT)
    direct_db, proxied_db = db_factory(), db_factory()
    # The databases have different names; nothing in the script prints them.
    direct = psql(pg.port, direct_db, "-f", str(script), on_error_stop=False)
    proxied = psql(proxy.port, proxied_db, "-f", str(script), on_error_stop=False)
    assert_same_run(direct, proxied)

    out, err = proxied.stdout.decode(), proxied.stderr.decode()
    assert proxied.returncode == 0
    # Sanity: the oracle really exercised what we meant to exercise.
    assert "answer=42 greeting=hello" in out
    assert "gx_1\n gx_2\n gx_3" in out
    assert 'id,name,price,tags\n1,alpha,1.50,"{a,b}"' in out
    assert " pgcloak-cli-test\n" in out
    assert "after errors" in out
    assert "ERROR:  22P02: invalid input syntax for type integer" in err
    assert "ERROR:  25P02: current transaction is aborted" in err
    assert "ERROR:  22012: division by zero" in err
    assert 'ERROR:  42P01: relation "no_such_table" does not exist' in err
    assert "ERROR:  23505: duplicate key value violates unique constraint" in err
    assert 'ERROR:  23514: new row for relation "items" violates check constraint' in err
    assert "NOTICE:  00000: x" in err
    assert "WARNING:  01000: careful: 42" in err
    # The data the session left behind, checked directly.
    rows = pg.execute("SELECT id, t, b FROM copied ORDER BY id", dbname=proxied_db)
    assert rows == [
        (1, "plain", b"\x00"),
        (2, "tab\there", b"\xff"),
        (3, None, None),
        (4, "quoted, comma", b"\x01"),
        (5, "multi\nline ✓", None),
        (11, "kept", None),
        (12, "also kept", None),
    ]
    assert pg.execute("SELECT name FROM items WHERE id = 3", dbname=proxied_db) == [
        ("multi\nline ünïcødé ✓",)
    ]


def test_multi_statement_dash_c(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    variants: list[tuple[str, ...]] = [
        ("-c", "select 1; select 2"),
        ("-c", "select 1 as a; select 'b' as b; select"),
        ("-c", "select 1", "-c", "select 2; select 3"),
        ("-c", "create temp table x (i int); insert into x values (1), (2); select sum(i) from x"),
    ]
    for args in variants:
        direct = psql(pg.port, fresh_db, *args)
        proxied = psql(proxy.port, fresh_db, *args)
        assert_same_run(direct, proxied)
        assert proxied.returncode == 0
    # A backslash in -c is sent to the server verbatim: same syntax error both ways.
    direct = psql(pg.port, fresh_db, "-c", "select 1 \\; select 2")
    proxied = psql(proxy.port, fresh_db, "-c", "select 1 \\; select 2")
    assert_same_run(direct, proxied)
    assert proxied.returncode == 1
    out = ok(psql(proxy.port, fresh_db, "-A", "-t", "-c", "select 1; select 2"))
    assert out == "1\n2\n"  # psql 15 shows the results of every statement


def test_on_error_stop_mid_transaction(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    # One database, one schema per run (selected with PGOPTIONS search_path, which
    # also travels as a startup option through the proxy); messages name no schema.
    setup = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');"
    script = (
        b"BEGIN;\n"
        b"INSERT INTO t VALUES (2, 'two');\n"
        b"INSERT INTO t VALUES (1, 'duplicate');\n"
        b"INSERT INTO t VALUES (3, 'never');\n"
        b"COMMIT;\n"
    )

    def in_schema(schema: str) -> dict[str, str]:
        pg.execute(f"CREATE SCHEMA {schema}", dbname=fresh_db)
        return {"PGOPTIONS": f"-c search_path={schema}"}

    results = []
    for port, schema in ((pg.port, "direct_run"), (proxy.port, "proxied_run")):
        env = in_schema(schema)
        ok(psql(port, fresh_db, "-c", setup, env=env))
        results.append(psql(port, fresh_db, "-f", "-", input=script, env=env))
        rows = pg.execute(f"SELECT id, v FROM {schema}.t ORDER BY id", dbname=fresh_db)
        assert rows == [(1, "one")]
    direct, proxied = results
    assert_same_run(direct, proxied)
    assert proxied.returncode == 3  # psql: script error with ON_ERROR_STOP
    assert b"duplicate key value" in proxied.stderr

    # Without ON_ERROR_STOP the same session carries on after the ROLLBACK.
    env = in_schema("carry_on")
    ok(psql(proxy.port, fresh_db, "-c", setup, env=env))
    res = psql(
        proxy.port,
        fresh_db,
        "-qAt",
        "-f",
        "-",
        on_error_stop=False,
        env=env,
        input=(
            b"BEGIN;\nINSERT INTO t VALUES (2, 'two');\nINSERT INTO t VALUES (1, 'dup');\n"
            b"SELECT 'aborted?';\nROLLBACK;\nINSERT INTO t VALUES (4, 'four');\n"
            b"SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t;\n"
        ),
    )
    assert res.returncode == 0
    assert res.stdout.decode().splitlines() == ["1=one,4=four"]
    assert b"current transaction is aborted" in res.stderr


def _copy_rows(n: int) -> list[tuple[int, str, str]]:
    rows = []
    for i in range(1, n + 1):
        text = f"row {i} ünï ✓ " + "x" * (i % 97)
        if i % 10 == 0:
            text += "\ttab\nnewline\\backslash"
        rows.append((i, text, hashlib.md5(str(i).encode()).hexdigest()))
    return rows


def _copy_text_escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def test_copy_from_stdin_thousands_of_rows(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str
) -> None:
    n = 5000
    rows = _copy_rows(n)
    ok(psql(proxy.port, fresh_db, "-c", "CREATE TABLE big (id int PRIMARY KEY, t text, h text)"))

    # Server-side COPY FROM STDIN, data inline in the script fed on stdin.
    lines = [f"{i}\t{_copy_text_escape(t)}\t{h}" for i, t, h in rows[: n // 2]]
    script = "COPY big FROM STDIN;\n" + "\n".join(lines) + "\n\\.\nSELECT count(*) FROM big;\n"
    res = psql(proxy.port, fresh_db, "-q", "-A", "-t", "-f", "-", input=script.encode())
    assert ok(res).splitlines() == [f"{n // 2}"]

    # psql \copy from pstdin in CSV, data on psql's own stdin.
    csv_lines = []
    for i, t, h in rows[n // 2 :]:
        csv_lines.append(f'{i},"{t.replace(chr(34), chr(34) * 2)}",{h}')
    res = psql(
        proxy.port,
        fresh_db,
        "-c",
        "\\copy big from pstdin with (format csv)",
        input=("\n".join(csv_lines) + "\n").encode(),
    )
    assert ok(res).strip() == f"COPY {n - n // 2}"

    got = pg.execute("SELECT id, t, h FROM big ORDER BY id", dbname=fresh_db)
    assert got == rows

    # COPY out, text and CSV, table and query: identical to a direct run.
    for cmd in (
        "\\copy big to stdout",
        "\\copy big to stdout with (format csv, header)",
        "\\copy (SELECT id, upper(t), length(h) FROM big WHERE id % 7 = 0 ORDER BY id) "
        "to stdout with csv",
        "COPY (SELECT * FROM big ORDER BY id DESC) TO STDOUT",
    ):
        direct = psql(pg.port, fresh_db, "-c", cmd)
        proxied = psql(proxy.port, fresh_db, "-c", cmd)
        assert_same_run(direct, proxied)
        assert proxied.returncode == 0
        assert proxied.stdout.count(b"\n") >= n // 7


def test_copy_and_select_huge_rows(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    """Single messages far above the relay's streaming threshold, in both directions."""
    ok(psql(proxy.port, fresh_db, "-c", "CREATE TABLE huge (id int, t text)"))
    big = "".join(chr(ord("a") + i % 26) for i in range(3_000_000))
    data = f"1\t{big}\n2\tsmall\n3\t{big[::-1]}\n".encode()
    res = psql(proxy.port, fresh_db, "-c", "\\copy huge from pstdin", input=data)
    assert ok(res).strip() == "COPY 3"
    assert pg.execute("SELECT id, md5(t), length(t) FROM huge ORDER BY id", dbname=fresh_db) == [
        (1, hashlib.md5(big.encode()).hexdigest(), len(big)),
        (2, hashlib.md5(b"small").hexdigest(), 5),
        (3, hashlib.md5(big[::-1].encode()).hexdigest(), len(big)),
    ]
    for cmd in ("\\copy huge to stdout", "SELECT t FROM huge ORDER BY id"):
        direct = psql(pg.port, fresh_db, "-A", "-t", "-c", cmd)
        proxied = psql(proxy.port, fresh_db, "-A", "-t", "-c", cmd)
        assert_same_run(direct, proxied)
        assert proxied.returncode == 0
        assert len(proxied.stdout) > 2 * len(big)


def test_large_result_identical(pg: PgServer, proxy: ProxyProcess) -> None:
    query = (
        "SELECT g, md5(g::text) AS h, repeat('y', g % 17) AS pad, (g % 3 = 0) AS flag "
        "FROM generate_series(1, 100000) g"
    )
    for args in ((), ("-A", "-F", "|")):
        direct = psql(pg.port, "postgres", *args, "-c", query)
        proxied = psql(proxy.port, "postgres", *args, "-c", query)
        assert_same_run(direct, proxied)
        assert proxied.returncode == 0
        assert proxied.stdout.rstrip().endswith(b"(100000 rows)")
        assert proxied.stdout.count(b"\n") >= 100_000


def test_notice_sqlstate_and_session_settings(proxy: ProxyProcess, fresh_db: str) -> None:
    script = (
        "\\set VERBOSITY verbose\n"
        "DO $$ BEGIN RAISE NOTICE 'x'; END $$;\n"
        "SELECT 1 / 0;\n"
        "SET application_name = 'cli-app';\n"
        "SHOW application_name;\n"
        "SELECT current_setting('application_name'), "
        "(SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid());\n"
        "SET TIME ZONE 'Asia/Kolkata';\n"
        "SELECT timestamptz '2024-01-01 00:00:00+00';\n"
    )
    res = psql(proxy.port, fresh_db, "-qAt", "-f", "-", input=script.encode(), on_error_stop=False)
    assert res.returncode == 0
    assert res.stdout.decode().splitlines() == [
        "cli-app",
        "cli-app|cli-app",
        "2024-01-01 05:30:00+05:30",
    ]
    err = res.stderr.decode()
    assert re.search(r"^psql:<stdin>:2: NOTICE:  00000: x$", err, re.M), err
    assert re.search(r"^psql:<stdin>:3: ERROR:  22012: division by zero$", err, re.M), err

    # A startup parameter from the client (PGAPPNAME / PGOPTIONS) passes through.
    res = psql(
        proxy.port,
        fresh_db,
        "-A",
        "-t",
        "-c",
        "SELECT current_setting('application_name'), current_setting('work_mem')",
        env={"PGAPPNAME": "from-env", "PGOPTIONS": "-c work_mem=12345kB"},
    )
    assert ok(res).strip() == "from-env|12345kB"


def _psql_major() -> int:
    out = subprocess.run([_tool("psql"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    assert m, out
    return int(m.group(1))


def test_bind_extended_protocol(pg: PgServer, proxy: ProxyProcess) -> None:
    """psql's \\bind (16+) sends Parse/Bind/Execute instead of a simple Query."""
    if _psql_major() < 16:
        pytest.skip("psql < 16 has no \\bind")
    script = (
        b"SELECT $1::int + 1 AS n, $2::text AS t \\bind 41 'hi' \\g\n"
        b"SELECT $1::int / 0 \\bind 1 \\g\n"
        b"SELECT 'still fine' \\bind \\g\n"
    )
    direct = psql(pg.port, "postgres", "-f", "-", input=script, on_error_stop=False)
    proxied = psql(proxy.port, "postgres", "-f", "-", input=script, on_error_stop=False)
    assert_same_run(direct, proxied)
    assert b" 42 | hi" in proxied.stdout  # psql dequotes \\bind arguments
    assert b"still fine" in proxied.stdout


# -- pgbench ---------------------------------------------------------------------


def pgbench(port: int, dbname: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    # synchronous_commit=off via PGOPTIONS keeps commits cheap on a small machine
    # (and is itself a startup option relayed by the proxy).
    return run(
        [_tool("pgbench"), *conn_args(port, dbname), *args],
        env={"PGOPTIONS": "-c synchronous_commit=off"},
    )


def _check_pgbench(res: subprocess.CompletedProcess[bytes], expected: int) -> str:
    out = ok(res)
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert m, out
    assert int(m.group(1)) == int(m.group(2)) == expected, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed:
        assert failed.group(1) == "0", out
    return out


def _bank_consistent(pg: PgServer, dbname: str) -> tuple[int, int]:
    (acc, tel, br, hist, n) = pg.execute(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
        " (SELECT sum(tbalance) FROM pgbench_tellers),"
        " (SELECT sum(bbalance) FROM pgbench_branches),"
        " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
        " (SELECT count(*) FROM pgbench_history)",
        dbname=dbname,
    )[0]
    assert acc == tel == br == hist
    return int(n), int(acc)


def test_pgbench_builtin_modes(pg: PgServer, proxy: ProxyProcess, fresh_db: str) -> None:
    init = run([_tool("pgbench"), *conn_args(proxy.port, fresh_db), "-i", "-s", "1", "-q"])
    ok(init)
    assert b"done in" in init.stderr
    assert pg.execute("SELECT count(*) FROM pgbench_accounts", dbname=fresh_db) == [(100_000,)]
    assert _bank_consistent(pg, fresh_db) == (0, 0)

    history = 0
    for mode in ("simple", "extended", "prepared"):
        res = pgbench(proxy.port, fresh_db, "-n", "-t", "200", "-c", "4", "-j", "2", "-M", mode)
        out = _check_pgbench(res, 800)
        assert f"query mode: {mode}" in out
        history += 800
        assert _bank_consistent(pg, fresh_db)[0] == history


CUSTOM_SCRIPT = r"""
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
\set tag :client_id * 1000 + random(0, 999)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance AS bal FROM pgbench_accounts WHERE aid = :aid \gset
INSERT INTO custom_log (aid, delta, tag, seen) VALUES (:aid, :delta, :tag, :bal);
END;
"""

# A compound (multi-statement) command only works in simple query mode.
COMPOUND_SCRIPT = r"""
\set n random(1, 1000)
BEGIN \; INSERT INTO custom_log (aid, delta, tag, seen) VALUES (0, :n, -1, 0) \; COMMIT;
"""


def test_pgbench_custom_scripts(
    pg: PgServer, proxy: ProxyProcess, fresh_db: str, tmp_path: Path
) -> None:
    # Initialization steps without the vacuum (the builtin test covers the default set).
    init = [_tool("pgbench"), *conn_args(proxy.port, fresh_db), "-i", "-s", "1", "-I", "dtgp"]
    ok(run([*init, "-q"]))
    ok(
        psql(
            proxy.port,
            fresh_db,
            "-c",
            "CREATE TABLE custom_log (id bigserial PRIMARY KEY, aid int, delta int,"
            " tag int, seen int)",
        )
    )
    custom = tmp_path / "custom.sql"
    custom.write_text(CUSTOM_SCRIPT)
    compound = tmp_path / "compound.sql"
    compound.write_text(COMPOUND_SCRIPT)

    total = 0
    for mode in ("extended", "prepared", "simple"):
        res = pgbench(
            proxy.port, fresh_db, "-n", "-t", "60", "-c", "2", "-M", mode, "-f", str(custom)
        )
        _check_pgbench(res, 120)
        total += 120
    res = pgbench(
        proxy.port, fresh_db, "-n", "-t", "50", "-c", "2", "-M", "simple", "-f", str(compound)
    )
    _check_pgbench(res, 100)

    (count, delta_sum, mismatched, compound_rows) = pg.execute(
        "SELECT count(*) FILTER (WHERE aid > 0),"
        " (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),"
        " count(*) FILTER (WHERE aid > 0 AND (tag / 1000) NOT IN (0, 1)),"
        " count(*) FILTER (WHERE aid = 0)"
        " FROM custom_log",
        dbname=fresh_db,
    )[0]
    assert count == total
    assert mismatched == 0  # :client_id is 0 or 1 with -c 2
    assert compound_rows == 100
    (logged,) = pg.execute(
        "SELECT coalesce(sum(delta), 0) FROM custom_log WHERE aid > 0", dbname=fresh_db
    )[0]
    assert logged == delta_sum
    # \gset captured the balance right after this transaction's own update; the
    # last logged row of each account saw that account's final balance.
    assert pg.execute(
        "SELECT count(*) FROM (SELECT DISTINCT ON (aid) aid, seen FROM custom_log"
        " WHERE aid > 0 ORDER BY aid, id DESC) l JOIN pgbench_accounts a USING (aid)"
        " WHERE l.seen <> a.abalance",
        dbname=fresh_db,
    ) == [(0,)]


# -- pg_dump / pg_restore ----------------------------------------------------------

DUMP_SCHEMA = r"""
CREATE SCHEMA shop;
CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
CREATE SEQUENCE shop.order_no START 1000 INCREMENT 7;
CREATE TABLE shop.customers (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    bio text,
    avatar bytea,
    CONSTRAINT email_has_at CHECK (position('@' in email) > 1)
);
CREATE TABLE shop.orders (
    id bigserial PRIMARY KEY,
    order_no int NOT NULL DEFAULT nextval('shop.order_no'),
    customer_id int NOT NULL REFERENCES shop.customers (id) ON DELETE CASCADE,
    status shop.status NOT NULL DEFAULT 'new',
    total numeric(12, 2) NOT NULL CHECK (total >= 0),
    placed timestamptz NOT NULL,
    meta jsonb
);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, placed DESC);
CREATE UNIQUE INDEX orders_no_idx ON shop.orders (order_no);
CREATE INDEX customers_lower_email ON shop.customers (lower(email));
CREATE VIEW shop.customer_totals AS
    SELECT c.id, c.name, count(o.id) AS n_orders, coalesce(sum(o.total), 0) AS spent
    FROM shop.customers c LEFT JOIN shop.orders o ON o.customer_id = c.id
    GROUP BY c.id, c.name;
CREATE FUNCTION shop.order_value(c int) RETURNS numeric
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(total), 0) FROM shop.orders WHERE customer_id = c);
END $$;
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.meta := coalesce(NEW.meta, '{}'::jsonb) || '{"touched": true}'; RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON shop.orders
    FOR EACH ROW EXECUTE FUNCTION shop.touch();
COMMENT ON TABLE shop.orders IS 'Orders, one row per checkout — ünïcødé comment';
CREATE TABLE public.blobs (k text PRIMARY KEY, v bytea, note text);

INSERT INTO shop.customers (email, name, bio, avatar) VALUES
    ('ann@example.com', 'Ann Ünïcødé', E'line one\nline two\ttabbed\\back', '\x89504e470d0a1a0a00'),
    ('bob@example.com', 'Bob 🐘', NULL, NULL),
    ('cho@example.com', '趙', E'quote '' and "double"', '\x');
INSERT INTO shop.customers (email, name, avatar)
    SELECT 'user' || g || '@example.com', 'User ' || g, decode(md5(g::text), 'hex')
    FROM generate_series(1, 500) g;
INSERT INTO shop.orders (customer_id, status, total, placed, meta)
    SELECT 1 + g % 503, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::shop.status,
           (g * 13 % 1000) / 4.0, timestamptz '2024-01-01 00:00+00' + g * interval '1 hour',
           CASE WHEN g % 5 = 0 THEN jsonb_build_object('gift', g % 2 = 0, 'note', E'n\nl') END
    FROM generate_series(1, 3000) g;
INSERT INTO public.blobs VALUES
    ('zeros', '\x0000000000', E'\\N is not null'),
    ('all-bytes',
     (SELECT string_agg(set_byte('\x00'::bytea, 0, b), '') FROM generate_series(0, 255) b),
     'ßüñ'),
    ('big',
     (SELECT string_agg(decode(md5(g::text), 'hex'), '') FROM generate_series(1, 20000) g),
     repeat(E'\r\n', 100)),
    ('empty', '', '');
SELECT setval('shop.order_no', 99999, false);
"""

COMPARE_QUERIES = {
    "customers": "SELECT id, email, name, bio, avatar FROM shop.customers ORDER BY id",
    "orders": "SELECT id, order_no, customer_id, status::text, total, placed, meta::text"
    " FROM shop.orders ORDER BY id",
    "blobs": "SELECT k, v, note FROM public.blobs ORDER BY k",
    "view": "SELECT * FROM shop.customer_totals ORDER BY id",
    "function": "SELECT shop.order_value(1), shop.order_value(2)",
    "sequences": "SELECT last_value, is_called FROM shop.order_no",
    "serial": "SELECT last_value FROM shop.orders_id_seq",
    "comment": "SELECT obj_description('shop.orders'::regclass)",
}


def _normalize_dump(text: str) -> str:
    lines = []
    for line in text.splitlines():
        # pg_dump >= 15.14 brackets scripts with \restrict <random key> / \unrestrict.
        if line.startswith(("\\restrict ", "\\unrestrict ")):
            continue
        lines.append(line)
    return "\n".join(lines)


def _direct_dump(pg: PgServer, dbname: str, *args: str) -> str:
    return _normalize_dump(ok(run([_tool("pg_dump"), *conn_args(pg.port, dbname), *args])))


def _snapshot(pg: PgServer, dbname: str) -> dict[str, Any]:
    """Row contents plus schema-only and full dumps (taken directly, normalized)."""
    snap: dict[str, Any] = {
        name: pg.execute(q, dbname=dbname) for name, q in COMPARE_QUERIES.items()
    }
    snap["schema-only dump"] = _direct_dump(pg, dbname, "--schema-only")
    snap["full dump"] = _direct_dump(pg, dbname)
    return snap


def _assert_same_database(pg: PgServer, source: dict[str, Any], copy: str) -> None:
    got = _snapshot(pg, copy)
    for key, expected in source.items():
        assert got[key] == expected, key


@pytest.fixture
def dump_source(pg: PgServer, fresh_db: str) -> str:
    with pg.connect(fresh_db) as conn:
        conn.execute(DUMP_SCHEMA)  # type: ignore[arg-type]
    (n,) = pg.execute("SELECT count(*) FROM shop.orders", dbname=fresh_db)[0]
    assert n == 3000
    return fresh_db


def test_pg_dump_plain_roundtrip_through_proxy(
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    db_factory: Callable[..., str],
    dump_source: str,
) -> None:
    px = proxy_factory(pg.upstream_url())
    target = db_factory()
    dump = run([_tool("pg_dump"), *conn_args(px.port, dump_source)])
    script = ok(dump)
    assert "CREATE FUNCTION shop.order_value" in script
    assert "COPY shop.orders" in script
    restore = psql(px.port, target, "-q", "--single-transaction", input=dump.stdout)
    ok(restore)
    assert restore.stderr == b""
    source = _snapshot(pg, dump_source)
    _assert_same_database(pg, source, target)
    # The dump taken through the proxy equals one taken directly.
    assert _normalize_dump(script) == source["full dump"]
    assert " WARNING " not in px.log_text() and " ERROR " not in px.log_text()


def test_pg_dump_custom_format_and_pg_restore(
    pg: PgServer,
    proxy: ProxyProcess,
    db_factory: Callable[..., str],
    dump_source: str,
    tmp_path: Path,
) -> None:
    archive = tmp_path / "dump.custom"
    ok(run([_tool("pg_dump"), *conn_args(proxy.port, dump_source), "-Fc", "-f", str(archive)]))
    assert archive.read_bytes()[:5] == b"PGDMP"
    listing = ok(run([_tool("pg_restore"), "-l", str(archive)]))
    assert "TABLE DATA shop orders" in listing

    source = _snapshot(pg, dump_source)
    target = db_factory()
    ok(
        run(
            [
                _tool("pg_restore"),
                *conn_args(proxy.port, target),
                "--exit-on-error",
                "-j",
                "2",
                str(archive),
            ]
        )
    )
    _assert_same_database(pg, source, target)

    # Parallel directory-format dump through the proxy (synchronized snapshots
    # across connections), restored through the proxy in a single transaction.
    directory = tmp_path / "dump.dir"
    ok(
        run(
            [
                _tool("pg_dump"),
                *conn_args(proxy.port, dump_source),
                "-Fd",
                "-j",
                "2",
                "-f",
                str(directory),
            ]
        )
    )
    target2 = db_factory()
    ok(
        run(
            [
                _tool("pg_restore"),
                *conn_args(proxy.port, target2),
                "--exit-on-error",
                "--single-transaction",
                str(directory),
            ]
        )
    )
    _assert_same_database(pg, source, target2)
