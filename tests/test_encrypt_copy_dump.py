"""COPY and pg_dump through pgcloak with encrypted columns.

COPY output through the proxy must be byte-identical to the same COPY on a plain
database (text, csv, binary), COPY input must land encrypted, and a pg_dump taken
through the proxy must restore into a plain PostgreSQL with the plaintext data
and the declared column types.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from encrypt_support import copy_out
from helpers import PgServer, ProxyProcess

DDL = (
    "CREATE TABLE people (id int PRIMARY KEY, email varchar(40) UNIQUE, ssn text, "
    "born date, score numeric(6,2), seen timestamptz, tags text[], doc jsonb, flag boolean)"
)
RULES = """
[encrypt]
"people.email" = "deterministic"
"people.ssn" = "randomized"
"people.born" = "randomized"
"people.score" = "deterministic"
"people.seen" = "randomized"
"people.tags" = "randomized"
"people.doc" = "randomized"
"gen.email" = "deterministic"
"gen.code" = "randomized"
"gen_like.email" = "deterministic"
"""
ROWS = (
    '1\tann@x.com\t123-45-6789\t1990-05-01\t12.50\t2024-01-02 03:04:05+00\t{a,"b c"}\t'
    '{"k": [1, 2]}\tt\n'
    "2\tbob\\\\x@y.com\t\\N\t\\N\t-3.00\t\\N\t{}\t\\N\tf\n"
    "3\ttab\\there@z.com\tline\\nbreak\t2000-02-29\t0.00\t1999-12-31 23:59:59.5+00\t"
    '{NULL}\t"str"\t\\N\n'
)
MARKER = "123-45-6789"


@pytest.fixture
def setup(  # noqa: PLR0917 - pytest fixtures
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloaked_db: str,
    db_factory: Callable[..., str],
    master_key: str,
    tmp_path: Path,
) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str]]:
    config = tmp_path / "pgcloak.toml"
    config.write_text(RULES)
    proxy = proxy_factory(
        pg.upstream_url(), "--config", str(config), env={"PGCLOAK_MASTER_KEY": master_key}
    )
    plain_db = db_factory()
    plain = psycopg.connect(pg.dsn(plain_db), autocommit=True)
    enc = psycopg.connect(proxy.dsn(cloaked_db), autocommit=True)
    for conn in (plain, enc):
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(DDL)
        with conn.cursor().copy("COPY people FROM STDIN") as cp:
            cp.write(ROWS.encode())
    yield plain, enc, proxy, cloaked_db
    plain.close()
    enc.close()


@pytest.mark.parametrize(
    "options",
    [
        "",
        "(FORMAT csv)",
        "(FORMAT binary)",
        "(FORMAT csv, DELIMITER '|', NULL 'nil', QUOTE '''')",
        "(FORMAT csv, HEADER)",
        "(HEADER true, DELIMITER ';')",
    ],
)
def test_copy_out_matches_a_plain_database(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    options: str,
) -> None:
    plain, enc, _, _ = setup
    for sql in (
        f"COPY people TO STDOUT {options}",
        f"COPY people (email, id, score) TO STDOUT {options}",
        f"COPY (SELECT id, email, doc FROM people WHERE email = 'ann@x.com') TO STDOUT {options}",
    ):
        assert copy_out(enc, sql) == copy_out(plain, sql), sql


def test_copy_in_round_trips_every_format(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
) -> None:
    plain, enc, _, _ = setup
    for fmt in ("text", "csv", "binary"):
        data = copy_out(plain, f"COPY people TO STDOUT (FORMAT {fmt})")
        for conn in (plain, enc):
            conn.execute("TRUNCATE people")
            with conn.cursor().copy(f"COPY people FROM STDIN (FORMAT {fmt})") as cp:
                cp.write(data)
        assert copy_out(enc, "COPY people TO STDOUT") == copy_out(plain, "COPY people TO STDOUT")
    # What the database stores is ciphertext.
    assert enc.execute("SELECT id FROM people WHERE email = 'bob\\x@y.com'").fetchall() == [(2,)]


GEN_DDL = (
    "CREATE TABLE gen (id int, twice int GENERATED ALWAYS AS (id * 2) STORED, email text, "
    "code text)",
    "ALTER TABLE gen ADD COLUMN plus int GENERATED ALWAYS AS (id + 1) STORED",
    "CREATE TABLE gen_like (LIKE gen)",  # without INCLUDING GENERATED: twice/plus plain
)


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_skips_generated_columns_as_postgresql_does(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    fmt: str,
) -> None:
    """COPY without a column list leaves generated columns out of the data: the encrypted
    fields must still be found (once placed one column too early, a plaintext field
    reached the server and ciphertext the client)."""
    plain, enc, proxy, db = setup
    for conn in (plain, enc):
        for ddl in GEN_DDL:
            conn.execute(ddl)
        conn.execute("INSERT INTO gen (id, email, code) VALUES (1, 'g@x', 'c1'), (2, NULL, 'c2')")
        conn.execute("INSERT INTO gen_like SELECT 7, 14, 'l@x', 'c7', 8")
    for table in ("gen", "gen_like"):
        out = f"COPY {table} TO STDOUT (FORMAT {fmt})"
        data = copy_out(plain, out)
        assert copy_out(enc, out) == data, table
        for conn in (plain, enc):
            with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT {fmt})") as cp:
                cp.write(data)
        assert copy_out(enc, out) == copy_out(plain, out), table
    # A new session knows the generated columns from the server's catalog.
    with psycopg.connect(proxy.dsn(db), autocommit=True) as fresh:
        assert copy_out(fresh, "COPY gen TO STDOUT") == copy_out(plain, "COPY gen TO STDOUT")
    rows = "SELECT id, twice, email, code, plus FROM gen"
    assert sorted(enc.execute(rows).fetchall(), key=repr) == sorted(
        plain.execute(rows).fetchall(), key=repr
    )


def test_copy_refuses_data_it_cannot_place(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    pg: PgServer,
) -> None:
    """When the server's column count differs from pgcloak's, no data passes (fail closed).

    A column added directly on the database, behind pgcloak's back, is such a case.
    """
    _, enc, proxy, db = setup
    enc.execute("CREATE TABLE gen (id int, email text, code text)")
    with psycopg.connect(pg.dsn(db), autocommit=True) as direct:
        table = direct.execute(
            "SELECT c.relname FROM pg_class c JOIN pgcloak.objects o ON o.physical_name = c.relname"
            " WHERE c.relkind = 'r' AND o.kind = 't' ORDER BY o.created_at DESC LIMIT 1"
        ).fetchone()
        assert table is not None
        direct.execute(f'ALTER TABLE public."{table[0]}" ADD COLUMN x int')
    with psycopg.connect(proxy.dsn(db), autocommit=True) as fresh:
        with (
            pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot place"),
            fresh.cursor().copy("COPY gen FROM STDIN") as cp,
        ):
            cp.write(b"1\tleak@x\tc\n")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot place"):
            copy_out(fresh, "COPY gen TO STDOUT")
    with psycopg.connect(pg.dsn(db), autocommit=True) as direct:
        assert direct.execute(f'SELECT count(*) FROM public."{table[0]}"').fetchone() == (0,)


def test_copy_in_with_header_skips_the_header_line(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
) -> None:
    plain, enc, _, _ = setup
    data = copy_out(plain, "COPY people TO STDOUT (FORMAT csv, HEADER)")
    assert data.startswith(b"id,email,ssn,")
    for conn in (plain, enc):
        conn.execute("TRUNCATE people")
        with conn.cursor().copy("COPY people FROM STDIN (FORMAT csv, HEADER)") as cp:
            cp.write(data)
    out = "COPY people TO STDOUT (FORMAT csv, HEADER)"
    assert copy_out(enc, out) == copy_out(plain, out) == data


def test_copy_in_errors_are_postgresql_errors(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
) -> None:
    plain, enc, _, _ = setup
    bad = b"9\tx@y\t\\N\tnot a date\t1\t\\N\t{}\t\\N\tt\n"
    errors = []
    for conn in (plain, enc):
        with (
            pytest.raises(psycopg.Error) as info,
            conn.cursor().copy("COPY people FROM STDIN") as cp,
        ):
            cp.write(bad)
        errors.append(info.value.sqlstate)
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (3,)
    assert errors == ["22007", "22007"]


def test_psql_copy_both_ways(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    tmp_path: Path,
) -> None:
    _, _, proxy, db = setup
    out = tmp_path / "out.csv"
    script = (
        f"\\copy people to '{out}' with (format csv)\n"
        "truncate people;\n"
        f"\\copy people from '{out}' with (format csv)\n"
        "select count(*), count(ssn) from people;\n"
    )
    done = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", proxy.dsn(db)],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3|2"
    assert MARKER in out.read_text()


def test_pg_dump_through_pgcloak_restores_into_plain_postgres(
    pg: PgServer,
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    db_factory: Callable[..., str],
) -> None:
    plain, _, proxy, db = setup
    dump = subprocess.run(
        ["pg_dump", "-N", "pgcloak", "--no-owner", proxy.dsn(db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert "bytea" not in dump.stdout and "\\\\x01" not in dump.stdout
    assert "email character varying(40)" in dump.stdout
    target = db_factory()
    restore = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", pg.dsn(target)],
        input=dump.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    with psycopg.connect(pg.dsn(target), autocommit=True) as restored:
        got = copy_out(restored, "COPY people TO STDOUT")
        types = restored.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'people'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
    assert got == copy_out(plain, "COPY people TO STDOUT")
    plain_types = plain.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'people'::regclass AND attnum > 0 ORDER BY attnum"
    ).fetchall()
    assert types == plain_types


def test_the_upstream_holds_no_plaintext(
    pg: PgServer,
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
) -> None:
    _, _, _, db = setup
    dump = subprocess.run(
        ["pg_dump", "--data-only", pg.dsn(db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dump.returncode == 0, dump.stderr
    for marker in (MARKER, "ann@x.com", "1990-05-01", '"k"'):
        assert marker not in dump.stdout


def test_results_refused_when_the_table_changed_behind_pgcloak(
    setup: tuple[psycopg.Connection[Any], psycopg.Connection[Any], ProxyProcess, str],
    pg: PgServer,
) -> None:
    """A column dropped directly on the database shifts the encrypted columns of `*`:
    pgcloak refuses the result instead of showing ciphertext or decrypting the wrong
    field."""
    _, enc, proxy, db = setup
    enc.execute("CREATE TABLE gen (id int, note text, email text, code text)")
    enc.execute("INSERT INTO gen VALUES (1, 'n', 'e@x', 'c')")
    with psycopg.connect(pg.dsn(db), autocommit=True) as direct:
        table = direct.execute(
            "SELECT c.relname, a.attname FROM pg_class c"
            " JOIN pgcloak.objects o ON o.physical_name = c.relname AND o.kind = 't'"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 2"
            " ORDER BY o.created_at DESC LIMIT 1"
        ).fetchone()
        assert table is not None
        direct.execute(f'ALTER TABLE public."{table[0]}" DROP COLUMN "{table[1]}"')
    with psycopg.connect(proxy.dsn(db), autocommit=True) as fresh:
        for binary in (False, True):
            with pytest.raises(psycopg.errors.InternalError_, match="cannot match"):
                fresh.execute("SELECT * FROM gen", binary=binary).fetchall()
        with pytest.raises(psycopg.errors.InternalError_, match="cannot match"):
            fresh.execute("SELECT * FROM gen WHERE email = %s", ("e@x",)).fetchall()
        assert fresh.execute("SELECT 1").fetchone() == (1,)  # the session goes on
