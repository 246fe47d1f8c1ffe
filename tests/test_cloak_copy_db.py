"""COPY streams through pgcloak.proxy.cloak_copy compared with PostgreSQL 15 itself.

A stream is encrypted, COPYed into a table of bytea columns, COPYed back out and
decrypted: it must equal byte for byte what COPY of a plain table with the same
data gives (text, CSV with options, binary; other session formats; bytea escape
output). Seeded fuzzers check that rows and fields are cut where the server cuts
them and that errors carry the server's SQLSTATE. No proxy is involved.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import psycopg
import pytest
from helpers import PgServer
from test_cloak_copy import CSV, RING, enc, keyring, run

from pgcloak.crypto.codecs import SessionFormat
from pgcloak.proxy.cloak_copy import CopyOptions, CopyTransformer, CopyValueError, copy_options
from pgcloak.rewriter.policy import EncColumn

FMT = SessionFormat()

# -- against PostgreSQL ------------------------------------------------------------------

COLUMNS = [
    ("t", "text"), ("v", "varchar(10)"), ("c", "char(4)"), ("i", "int4"), ("n", "numeric(10,2)"),
    ("f", "float8"), ("b", "bool"), ("d", "date"), ("ts", "timestamptz"), ("iv", "interval"),
    ("j", "jsonb"), ("u", "uuid"), ("by", "bytea"), ("arr", "text[]"), ("big", "int8"),
]  # fmt: skip

ROWS = """
(1, 'plain', 'abc', 'ab', 1, 1.5, 0.1, true, '2024-02-29', '2024-01-01 12:34:56.789+02',
 '1 day 02:03:04', '{"a": [1, "x\\ty"]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff5c',
 '{a,"b c",NULL,"d\\"e"}', 9223372036854775807),
(2, E'tab\\there\\nnew\\\\back\\rcr', '', '', -2147483648, -0.005, -1e300, false,
 '0044-03-15 BC', 'infinity', '-3 mons -2 days +00:00:00.000001', '[]', NULL, '', '{}', 0),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(4, '', '\\N', '\\.', 0, 'NaN', 'Infinity', NULL, 'epoch', '1999-12-31 23:59:59.999999-11:30',
 '0', 'null', '00000000-0000-0000-0000-000000000000', '\\x', '{"",NULL}', -1),
(5, 'héllo wörld ✓ 𝄞', 'quote"d,', 'é"', 42, 12345678.99, 1.5e-7, true, '2000-01-01',
 '2000-01-01 00:00:00+00', '1 year 2 mons', '{"k": "v\\"q", "n": 1.50}', NULL, '\\x0a0d09',
 '{"x,y","\\\\"}', NULL),
(6, E'\\x01ctl\\x7f;|', 'a|b', 'x', 7, 0, -0, false, '2024-01-01', NULL, NULL, '"s"', NULL,
 NULL, '{NULL}', 1)
"""


@pytest.fixture(scope="module")
def conn(pg: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn("test"), autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1")
        c.execute("SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'")
        yield c


@pytest.fixture
def tables(conn: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    """A plain table and its cloaked twin (bytea columns), dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    plain, sealed = f"copy_plain_{suffix}", f"copy_sealed_{suffix}"
    defs = ", ".join(f"{name} {typ}" for name, typ in COLUMNS)
    conn.execute(f"CREATE TABLE {plain} (id int, {defs})")
    conn.execute(f"CREATE TABLE {sealed} (id int, {', '.join(f'{n} bytea' for n, _ in COLUMNS)})")
    try:
        yield plain, sealed
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {plain}, {sealed}")


def enc_columns() -> list[EncColumn | None]:
    out: list[EncColumn | None] = [None]
    for k, (name, typ) in enumerate(COLUMNS):
        mode = "randomized" if k % 3 == 0 else "deterministic"
        out.append(EncColumn(f"s.{name}", mode, typ, "sealed", name))
    return out


DB_RING = keyring(*(f"s.{name}" for name, _ in COLUMNS))


def copy_out(conn: psycopg.Connection[Any], stmt: str) -> list[bytes]:
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        return [bytes(chunk) for chunk in copy]


def copy_in(conn: psycopg.Connection[Any], stmt: str, chunks: Sequence[bytes]) -> None:
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for chunk in chunks:
            copy.write(chunk)


def transform(
    chunks: Sequence[bytes], options: CopyOptions, direction: Literal["in", "out"],
    fmt: SessionFormat = FMT,
) -> list[bytes]:  # fmt: skip
    t = CopyTransformer(enc_columns(), options, direction=direction, ring=DB_RING, fmt=fmt)
    out = [t.feed(c) for c in chunks]
    out.append(t.finish())
    return [c for c in out if c]


CSV_OPTS = "FORMAT csv, DELIMITER ';', NULL 'NIL', QUOTE '''', ESCAPE '\\'"
OPTION_SETS = [  # (COPY TO options, COPY FROM options)
    ("", ""),
    ("(FORMAT csv)", "(FORMAT csv)"),
    ("(FORMAT binary)", "(FORMAT binary)"),
    (f"({CSV_OPTS}, FORCE_QUOTE (t, j, i))", f"({CSV_OPTS})"),
    ("(FORMAT csv, FORCE_QUOTE *)", "(FORMAT csv)"),
    ("(DELIMITER '|', NULL '')", "(DELIMITER '|', NULL '')"),
    ("(FORMAT csv, DELIMITER 'x')", "(FORMAT csv, DELIMITER 'x')"),
]


@pytest.mark.parametrize(("out_options", "in_options"), OPTION_SETS)
def test_db_round_trip_matches_plain_table(
    conn: psycopg.Connection[Any], tables: tuple[str, str], out_options: str, in_options: str
) -> None:
    plain, sealed = tables
    conn.execute(f"INSERT INTO {plain} VALUES {ROWS}")
    names = ["id"] + [n for n, _ in COLUMNS]
    out_sql = f"COPY {{}} TO STDOUT {out_options}"
    in_sql = f"COPY {sealed} FROM STDIN {in_options}"
    expected = copy_out(conn, out_sql.format(plain))
    # The plain table's own output, encrypted, stored, read back and decrypted.
    sealed_in = transform(expected, copy_options(in_sql), "in")
    copy_in(conn, in_sql, sealed_in)
    stored = copy_out(conn, out_sql.format(sealed))
    for marker in (b"h\xc3\xa9llo", b"plain", b"2024-02-29", b"a0eebc99"):
        assert marker not in b"".join(sealed_in) and marker not in b"".join(stored)
    opts = copy_options(out_sql.format(sealed), columns=names)
    assert b"".join(transform(stored, opts, "out")) == b"".join(expected)
    # Chunk by chunk as the server sent them, and all at once.
    assert b"".join(transform([b"".join(stored)], opts, "out")) == b"".join(expected)
    # The plain table's output is a stream it reads back unchanged (so the original
    # stream is what the client gets back).
    conn.execute(f"TRUNCATE {plain}")
    copy_in(conn, f"COPY {plain} FROM STDIN {in_options}", expected)
    assert copy_out(conn, out_sql.format(plain)) == expected


def test_db_client_stream_and_session_format(
    conn: psycopg.Connection[Any], tables: tuple[str, str]
) -> None:
    """A hand-written (non-canonical) text stream, read with another DateStyle/TimeZone."""
    plain, sealed = tables
    fmt = SessionFormat(datestyle="SQL, DMY", intervalstyle="iso_8601", timezone="Asia/Kolkata")
    stream = (
        b"1\t\\x41\\102c\t\\N\tab\t007\t1.005\t1e-3\tyes\t31/12/2024\t"
        b'31/12/2024 10:00:00 PST\tP1DT2H\t{"b":1,   "a":[]}\t'
        b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11\t\\\\x0A\t{a , b}\t-5\r\n"
        b"2\t\t\t\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\r\n"
    )
    conn.execute("SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'")
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    try:
        opts = copy_options(f"COPY {plain} FROM STDIN")
        copy_in(conn, f"COPY {plain} FROM STDIN", [stream])
        chunks = [stream[k : k + 7] for k in range(0, len(stream), 7)]
        copy_in(conn, f"COPY {sealed} FROM STDIN", transform(chunks, opts, "in", fmt))
        expected = copy_out(conn, f"COPY {plain} TO STDOUT")
        got = transform(copy_out(conn, f"COPY {sealed} TO STDOUT"), opts, "out", fmt)
        assert b"".join(got) == b"".join(expected)
    finally:
        conn.execute("SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'")
        conn.execute("SET TimeZone = 'UTC'")


def test_db_bytea_escape_output(conn: psycopg.Connection[Any], tables: tuple[str, str]) -> None:
    """The server prints the stored ciphertext in bytea's escape format."""
    plain, sealed = tables
    conn.execute(f"INSERT INTO {plain} VALUES {ROWS}")
    conn.execute("SET bytea_output = 'escape'")
    fmt = SessionFormat(bytea_output="escape")
    try:
        for options in ("", "(FORMAT csv)"):
            opts = copy_options(f"COPY {plain} TO STDOUT {options}")
            expected = copy_out(conn, f"COPY {plain} TO STDOUT {options}")
            conn.execute(f"TRUNCATE {sealed}")
            sealed_in = transform(expected, opts, "in", fmt)
            copy_in(conn, f"COPY {sealed} FROM STDIN {options}", sealed_in)
            got = transform(copy_out(conn, f"COPY {sealed} TO STDOUT {options}"), opts, "out", fmt)
            assert b"".join(got) == b"".join(expected)
    finally:
        conn.execute("SET bytea_output = 'hex'")


# -- fuzz: rows and fields cut where the server cuts them ----------------------------------

_ALPHABET = [b"a", b"b", b"\t", b",", b"\n", b"\r", b"\r\n", b"\\", b"\\.", b".", b'"', b"'",
             b"N", b"\\N", b"\xc3\xa9", b"x", b"0", b" ", b"|"]  # fmt: skip
_FUZZ_OPTIONS = [
    "",
    "(FORMAT csv)",
    "(FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'N')",
    "(DELIMITER '|', NULL 'N')",
    "(FORMAT csv, HEADER)",
    "(FORMAT csv, FORCE_NOT_NULL (b), FORCE_NULL (c))",
    "(FORMAT csv, QUOTE '|', DELIMITER ';')",
]


_OUT_OPTIONS = [
    ("", ""),
    ("(FORMAT csv)", "(FORMAT csv)"),
    ("(FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'N', FORCE_QUOTE (b))",
     "(FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'N')"),
    ("(DELIMITER '|', NULL 'N')", "(DELIMITER '|', NULL 'N')"),
    ("(FORMAT csv, DELIMITER 'a', NULL 'x')", "(FORMAT csv, DELIMITER 'a', NULL 'x')"),
]  # fmt: skip
_CHARS = "ab\t\n\r\\.,|'\"Nx é\x01;"


def test_fuzz_output_matches_server(conn: psycopg.Connection[Any]) -> None:
    """Random values out of a plain table and out of a sealed one: the same bytes."""
    rng = random.Random(7)
    conn.execute("DROP TABLE IF EXISTS fuzz_plain, fuzz_sealed")
    conn.execute("CREATE TEMP TABLE fuzz_plain (a text, b text, c text)")
    conn.execute("CREATE TEMP TABLE fuzz_sealed (a bytea, b bytea, c bytea)")
    cols = [enc("text"), enc("text", "randomized", "t1.r"), enc("text", scope="t1.c2")]
    try:
        for _ in range(40):
            rows = [
                [None if rng.random() < 0.1 else "".join(rng.choices(_CHARS, k=rng.randint(0, 5)))
                 for _ in range(3)]
                for _ in range(rng.randint(1, 6))
            ]  # fmt: skip
            rows.append(["\\.", "", "N"])
            conn.execute("TRUNCATE fuzz_plain, fuzz_sealed")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO fuzz_plain VALUES (%s, %s, %s)", rows)
            for out_options, in_options in _OUT_OPTIONS:
                conn.execute("TRUNCATE fuzz_sealed")
                expected = copy_out(conn, f"COPY fuzz_plain TO STDOUT {out_options}")
                in_opts = copy_options(f"COPY t (a, b, c) FROM STDIN {in_options}")
                sealed = run(cols, expected, in_opts)
                copy_in(conn, f"COPY fuzz_sealed FROM STDIN {in_options}", [sealed])
                stored = copy_out(conn, f"COPY fuzz_sealed TO STDOUT {out_options}")
                out_opts = copy_options(f"COPY t (a, b, c) TO STDOUT {out_options}")
                assert run(cols, stored, out_opts, "out") == b"".join(expected), out_options
            # A single column: `\\.` alone on a line is quoted in CSV.
            expected = copy_out(conn, "COPY fuzz_plain (a) TO STDOUT CSV")
            conn.execute("TRUNCATE fuzz_sealed")
            copy_in(conn, "COPY fuzz_sealed (a) FROM STDIN CSV", [run(cols[:1], expected, CSV)])
            stored = copy_out(conn, "COPY fuzz_sealed (a) TO STDOUT CSV")
            assert run(cols[:1], stored, CSV, "out") == b"".join(expected)
    finally:
        conn.execute("DROP TABLE IF EXISTS fuzz_plain, fuzz_sealed")


def _fuzz_data(rng: random.Random, options: str) -> bytes:
    """Random bytes, or (more often) three-field lines of random tokens."""
    if rng.random() < 0.3:
        return b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 24)))
    delim = b"|" if "'|'" in options else b"," if "csv" in options else b"\t"
    eol = rng.choice([b"\n", b"\n", b"\r\n", b"\r"])
    lines = []
    for _ in range(rng.randint(1, 4)):
        fields = [_fuzz_field(rng, "csv" in options) for _ in "abc"]
        lines.append(delim.join(fields) + eol)
    return b"".join(lines)[: None if rng.random() < 0.8 else -1]


_TOKENS = [b"a", b"N", b"\\N", b"\\t", b"\\n", b"\\\\", b"\\101", b"\\x4a", b"\\q", b"'", b"\\",
           b" ", b"\xc3\xa9", b"|", b",", b"\\.", b'"', b"x"]  # fmt: skip
_QUOTED = [b"a", b'""', b"\n", b"\r\n", b",", b"'", b"\\", b"\\'", b"\\\\", b"N", b"\t"]


def _fuzz_field(rng: random.Random, csv: bool) -> bytes:
    tokens = [rng.choice(_ALPHABET if rng.random() < 0.05 else _TOKENS) for _ in range(3)]
    value = b"".join(tokens[: rng.randint(0, 3)])
    if csv and rng.random() < 0.4:
        quote = b"'" if rng.random() < 0.3 else b'"'
        inner = b"".join(rng.choice(_QUOTED) for _ in range(rng.randint(0, 3)))
        return value[:1] + quote + inner + quote + value[1:2]
    return value


def _server(
    conn: psycopg.Connection[Any], stmt: str, data: bytes
) -> tuple[str, list[tuple[Any, ...]]]:
    try:
        with conn.transaction():
            conn.execute("TRUNCATE fuzz_plain")
            copy_in(conn, stmt, [data])
            rows = conn.execute("SELECT a, b, c FROM fuzz_plain ORDER BY id").fetchall()
            return "ok", rows
    except psycopg.Error as exc:
        return str(exc.sqlstate), []


def test_fuzz_rows_and_fields_match_server(conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(20241122)
    conn.execute("DROP TABLE IF EXISTS fuzz_plain, fuzz_sealed")
    conn.execute("CREATE TEMP TABLE fuzz_plain (id serial, a text, b text, c text)")
    conn.execute("CREATE TEMP TABLE fuzz_sealed (id serial, a bytea, b bytea, c bytea)")
    cols = [enc("text"), enc("text", "randomized", "t1.r"), enc("text", scope="t1.c2")]
    checked = 0
    try:
        for _ in range(600):
            options = rng.choice(_FUZZ_OPTIONS)
            data = _fuzz_data(rng, options)
            opts = copy_options(f"COPY t (a, b, c) FROM STDIN {options}")
            plain = _server(conn, f"COPY fuzz_plain (a, b, c) FROM STDIN {options}", data)
            try:
                sealed_data = run(cols, [data[:5], data[5:]], opts)
            except CopyValueError as exc:
                assert plain[0] == exc.sqlstate, (options, data, exc.message)
                continue
            sealed = _server_sealed(conn, f"COPY fuzz_sealed (a, b, c) FROM STDIN {options}",
                                    sealed_data, cols)  # fmt: skip
            assert sealed == plain, (options, data)
            checked += plain[0] == "ok"
    finally:
        conn.execute("DROP TABLE IF EXISTS fuzz_plain, fuzz_sealed")
    assert checked > 100


def _server_sealed(
    conn: psycopg.Connection[Any], stmt: str, data: bytes, cols: Sequence[EncColumn]
) -> tuple[str, list[tuple[Any, ...]]]:
    try:
        with conn.transaction():
            conn.execute("TRUNCATE fuzz_sealed")
            copy_in(conn, stmt, [data])
            rows = conn.execute("SELECT a, b, c FROM fuzz_sealed ORDER BY id").fetchall()
    except psycopg.Error as exc:
        return str(exc.sqlstate), []
    out = []
    for row in rows:
        values = []
        for col, value in zip(cols, row, strict=True):
            if value is None:
                values.append(None)
                continue
            values.append(RING.cipher(col).decrypt(bytes(value))[:].decode())
        out.append(tuple(values))
    return "ok", out
