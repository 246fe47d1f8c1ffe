"""Plumbing for tests/test_encrypt_proxy.py: the type matrix and a differential runner.

`TYPES` lists every type pgcloak can encrypt with literals (as SQL text), bound
parameters (Python values whose psycopg type is the column's own), bad inputs and
PostgreSQL's SQLSTATE for them. `Pair` runs one statement on a plain database
(directly) and on a cloaked, encrypting one (through the proxy) and compares what
the client sees byte for byte: column names, type OIDs and typmods, raw field
values in the requested format, command tags, SQLSTATEs and error texts.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Float4, Int2, Int4, Int8

from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.names import NameCipher
from pgcloak.registry.db import fetch_registry

BUGS = "see docs/known-issues.md"

# Distinctive plaintexts: none of them may ever reach the upstream (table data, dumps,
# server log, pg_stat_statements). Their other spellings are listed for the scans.
MARK_TEXT = "ZQX-MARKER-7731"
MARK_INT = 987654321
MARK_DATE = "1911-11-11"
MARK_NUM = "4242.125"
MARK_JSON = "QJX-JSON-5521"
MARKERS = (MARK_TEXT, str(MARK_INT), MARK_DATE, MARK_NUM, MARK_JSON, "deadbeefcafe7731")

TZ3 = dt.timezone(dt.timedelta(hours=3))


@dataclass(frozen=True)
class TypeCase:
    """One encryptable type: how to write values of it, and what PostgreSQL rejects."""

    col: str  # column name in the matrix tables
    sql: str  # declared type
    literals: tuple[str, ...]  # SQL literals (each distinct once stored)
    params: tuple[Any, ...]  # Python values psycopg sends as this very type
    bad: tuple[tuple[str, str], ...] = ()  # (literal, SQLSTATE) on INSERT
    equality: bool = True  # PostgreSQL has an equality operator for the type
    binary_params: bool = True  # psycopg sends the params as this type in binary too


TYPES: tuple[TypeCase, ...] = (
    TypeCase("c_text", "text",
             (f"'{MARK_TEXT}'", "'héllo wörld ✓'", "''", "E'tab\\there'", "'it''s'",
              "E'\\u00e9t\\u00e9'"),
             (f"{MARK_TEXT}-p", "ünï ✓", ""),
             (("E'\\xe9'", "22021"),)),
    TypeCase("c_varchar", "varchar(12)",
             ("'abc'", "'twelve chars'", "'abcdefghijkl   '", "'x  '", "5", "1.50"),
             ("abc", "twelve chars"),
             (("'thirteen char'", "22001"),)),
    TypeCase("c_char", "char(5)",
             ("'ab'", "'abcde'", "'abcde   '", "''", "'é'"),
             ("ab", "abcde"),
             (("'abcdef'", "22001"),)),
    TypeCase("c_int2", "smallint",
             ("7", "-32768", "32767", "'  42  '", "'-0'", "-7"),
             (Int2(7), Int2(-32768)),
             (("40000", "22003"), ("'40000'", "22003"), ("'abc'", "22P02"), ("'1.5'", "22P02"),
              ("true", "42804"), ("''", "22P02"))),
    TypeCase("c_int4", "integer",
             (str(MARK_INT), "-2147483648", "0", "'+12'", "'  -13'"),
             (Int4(MARK_INT + 1), Int4(-5)),
             (("3000000000", "22003"), ("'x1'", "22P02"))),
    TypeCase("c_int8", "bigint",
             ("9007199254740993", "-9223372036854775808", "'9223372036854775807'", "-1"),
             (Int8(9007199254740993), Int8(-1)),
             (("99999999999999999999", "22003"), ("'1e3'", "22P02"))),
    TypeCase("c_numeric", "numeric(12,3)",
             (MARK_NUM, "1.5", "-0.001", "123456789.1234", "0.0005", "'NaN'", "1e3", "'  7 '"),
             (Decimal("1.5"), Decimal("-2.005"), Decimal("NaN")),
             (("1e10", "22003"), ("'abc'", "22P02"), ("'Infinity'", "22003"), ("true", "42804"))),
    TypeCase("c_real", "real",
             ("1.25", "'NaN'", "'-Infinity'", "3.4e38", "'-0'", "0.1", "'1e-45'", "7"),
             (Float4(1.25), Float4(float("inf"))),
             (("1e39", "22003"), ("'1e39'", "22003"), ("'abc'", "22P02"))),
    TypeCase("c_double", "double precision",
             ("3.141592653589793", "1e300", "'-0'", "'Infinity'", "'5e-324'", "0.1"),
             (3.141592653589793, -0.0, float("nan")),
             (("'1e309'", "22003"), ("'--1'", "22P02"))),
    TypeCase("c_bool", "boolean",
             ("true", "false", "'yes'", "'  of '", "'1'"),
             (True, False),
             (("'maybe'", "22P02"), ("1", "42804"))),
    TypeCase("c_date", "date",
             (f"'{MARK_DATE}'", "'2024-02-29'", "'infinity'", "'4713-01-01 BC'", "'5874897-12-31'",
              "'epoch'", "'January 8, 1999'", "'1999-01-08 13:00'"),
             (dt.date(1911, 11, 12), dt.date(1, 1, 1)),
             (("'notadate'", "22007"), ("'2023-02-30'", "22008"), ("20200101", "42804"))),
    TypeCase("c_time", "time",
             ("'13:14:15.123456'", "'24:00:00'", "'00:00'", "'allballs'", "'1:2:3.9999999'",
              "'04:05 PM'"),
             (dt.time(13, 14, 15, 123456), dt.time(0, 0)),
             (("'25:00'", "22008"), ("'x'", "22007"))),
    TypeCase("c_ts", "timestamp",
             (f"'{MARK_DATE} 11:11:11'", "'2000-01-01 00:00:00.5'", "'infinity'", "'-infinity'",
              "'294276-12-31 23:59:59.999999'", "'1999-01-08 04:05:06 BC'",
              "'2004-10-19 10:23:54+02'"),
             (dt.datetime(1911, 11, 11, 11, 11, 12), dt.datetime(2020, 2, 29, 23, 59, 59, 999999)),
             (("'x'", "22007"), ("'2000-13-01'", "22008"))),
    TypeCase("c_tstz", "timestamptz",
             (f"'{MARK_DATE} 11:11:11+03'", "'2000-01-01 00:00 UTC'", "'infinity'",
              "'2024-03-31 02:30:00 Europe/Berlin'", "'1901-12-13 20:45:52 America/New_York'",
              "'2001-02-16 20:38:40.123 PST'"),
             (dt.datetime(1911, 11, 11, 11, 11, 13, tzinfo=TZ3),
              dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
             (("'2020-01-01 00:00 Mars/Base'", "22023"), ("'x'", "22007"))),
    TypeCase("c_interval", "interval",
             ("'1 year 2 months 3 days 04:05:06'", "'-1 day +02:00'", "'1.5 weeks'",
              "'P1Y2M3DT4H5M6S'", "'@ 1 minute ago'", "'00:00:00.0000006'", "'1 day'"),
             (dt.timedelta(days=3, seconds=3600), dt.timedelta(microseconds=-1)),
             (("'x'", "22007"), ("'1 fortnight'", "22007"))),
    TypeCase("c_uuid", "uuid",
             ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A12}'",
              "'00000000-0000-0000-0000-000000000000'"),
             (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13"),),
             (("'not-a-uuid'", "22P02"),)),
    TypeCase("c_json", "json",
             (f'\'{{"b": 1, "a": ["{MARK_JSON}", 2]}}\'', "'  [1,  2]  '", "'null'",
              "'{\"a\":1,\"a\":2}'", "'1.50'"),
             (Json({"k": [1, None]}),),
             (("'{bad'", "22P02"), ("''", "22P02")),
             equality=False),
    TypeCase("c_jsonb", "jsonb",
             (f'\'{{"b": 1, "a": ["{MARK_JSON}-b", 2], "a": 3}}\'', "'1.50'",
              "'{\"k\": \"\\u00e9\"}'", "'[]'", "' \"s\" '"),
             (Jsonb({"k": [1, None]}), Jsonb([])),
             (("'{bad'", "22P02"), ("'\"\\u0000\"'", "22P05"))),
    TypeCase("c_bytea", "bytea",
             ("'\\xdeadbeefcafe7731'", "'\\x'", "'abc'", "'a\\\\b'", "'\\001\\377'"),
             (b"\xde\xad\xbe\xef\x00", b""),
             (("'\\xzz'", "22023"), ("'\\x1'", "22023"))),
    TypeCase("c_int_arr", "integer[]",
             ("'{1,2,NULL}'", "'{{1,2},{3,4}}'", "'{}'", "'[0:1]={5,6}'", "'{ 7 , 8 }'"),
             ([Int4(1), None, Int4(3)], []),
             (("'{1,x}'", "22P02"), ("'{1'", "22P02"), ("'{3000000000}'", "22003"))),
    TypeCase("c_text_arr", "text[]",
             (f"'{{a,\"b c\",NULL,\"NULL\",\"{MARK_TEXT}-a\"}}'", "'{\"\\\\\"}'", "'{{x},{y}}'"),
             (["a", None, "b c"],),
             (("'{a'", "22P02"),)),
    TypeCase("c_date_arr", "date[]",
             (f"'{{{MARK_DATE},infinity}}'", "'{NULL}'"),
             ([dt.date(2020, 1, 1), None],),
             (("'{2020-02-30}'", "22008"),)),
    TypeCase("c_num_arr", "numeric(6,2)[]",
             ("'{1.5,NULL,-2.345}'", "'{NaN}'"),
             ([Decimal("1.5"), Decimal("-2.35")],),
             (("'{123456}'", "22003"),)),
    TypeCase("c_bool_arr", "boolean[]",
             ("'{t,f,NULL}'",),
             ([True, False],)),
    TypeCase("c_tstz_arr", "timestamptz[]",
             ("'{\"2000-01-01 00:00+02\",infinity}'",),
             ([dt.datetime(2000, 1, 1, tzinfo=TZ3)],)),
    TypeCase("c_vc_arr", "varchar(4)[]",
             ("'{ab,abcd}'",),
             (["ab"],),
             (("'{abcde}'", "22001"),),
             binary_params=False),  # psycopg sends text[] (E1)
    TypeCase("c_uuid_arr", "uuid[]",
             ("'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",),
             ([uuid.UUID(int=5)],)),
)  # fmt: skip

TYPE_BY_COL = {t.col: t for t in TYPES}
MODES = ("deterministic", "randomized")
DET, RND = MODES
SHORT = {DET: "det", RND: "rnd"}


def matrix_ddl(table: str) -> str:
    cols = ", ".join(f"{t.col} {t.sql}" for t in TYPES)
    return f"CREATE TABLE {table} (id int PRIMARY KEY, {cols})"


def config_toml(rules: Mapping[str, str | tuple[str, str]]) -> str:
    """An [encrypt] table: column -> mode, or (mode, key group)."""
    lines = ["[encrypt]"]
    for column, spec in rules.items():
        if isinstance(spec, tuple):
            lines.append(f'"{column}" = {{ mode = "{spec[0]}", key = "{spec[1]}" }}')
        else:
            lines.append(f'"{column}" = "{spec}"')
    return "\n".join(lines) + "\n"


# -- what a client sees -------------------------------------------------------------------


@dataclass
class Seen:
    """One statement's outcome as a client sees it (raw bytes: the format is compared too)."""

    columns: tuple[tuple[str, int, int], ...] | None = None  # name, type oid, typmod
    rows: list[tuple[bytes | None, ...]] | None = None
    tag: str | None = None
    sqlstate: str | None = None
    # primary, detail, column, hint
    error: tuple[str | None, str | None, str | None, str | None] | None = None
    notices: list[str] = field(default_factory=list)

    def values(self) -> list[tuple[str | None, ...]]:
        """Rows as text (for assertions on text-format results)."""
        return [tuple(None if v is None else v.decode() for v in r) for r in self.rows or []]


def observe(
    conn: psycopg.Connection[Any],
    sql: str,
    params: Sequence[Any] | None = None,
    *,
    binary: bool = False,
    prepare: bool | None = None,
) -> Seen:
    """Run one statement and record what came back (errors included)."""
    notices: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(f"{diag.sqlstate} {diag.message_primary}")

    conn.add_notice_handler(on_notice)
    try:
        with conn.cursor(binary=binary) as cur:
            cur.execute(sql, params, prepare=prepare)  # type: ignore[call-overload]
            seen = Seen(tag=cur.statusmessage, notices=notices)
            res = cur.pgresult
            if cur.description is not None and res is not None:
                seen.columns = tuple(
                    (d.name, d.type_code, res.fmod(i)) for i, d in enumerate(cur.description)
                )
                seen.rows = [
                    tuple(res.get_value(r, c) for c in range(res.nfields))
                    for r in range(res.ntuples)
                ]
    except psycopg.Error as exc:
        d = exc.diag
        seen = Seen(
            sqlstate=exc.sqlstate or "connection-lost",
            error=(d.message_primary, d.message_detail, d.column_name, d.message_hint),
            notices=notices,
        )
    finally:
        conn.remove_notice_handler(on_notice)
    return seen


SESSION_SETUP = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
)


class Pair:
    """A plain database (A, direct) and an encrypted one (B, through the proxy).

    `same()` runs a statement on both and asserts that the client saw the same
    thing; `mismatch()` returns a description instead of asserting (for sweeps).
    """

    def __init__(self, a: psycopg.Connection[Any], b: psycopg.Connection[Any]) -> None:
        self.a = a
        self.b = b
        for stmt in SESSION_SETUP:
            a.execute(stmt)
            b.execute(stmt)

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def run(self, sql: str, params: Sequence[Any] | None = None, **kw: Any) -> tuple[Seen, Seen]:
        return observe(self.a, sql, params, **kw), observe(self.b, sql, params, **kw)

    def compare(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        sort: bool = False,
        texts: bool = True,
        **kw: Any,
    ) -> tuple[str | None, Seen]:
        """(description of the difference or None, what the encrypted side saw)."""
        sa, sb = self.run(sql, params, **kw)
        if sort:
            for s in (sa, sb):
                if s.rows is not None:
                    s.rows.sort(key=repr)
        if not texts:  # errors: the SQLSTATE only
            for s in (sa, sb):
                s.error = None
        if sa == sb:
            return None, sb
        return f"{sql} {params!r} {kw}\n    plain:     {sa}\n    encrypted: {sb}", sb

    def same(self, sql: str, params: Sequence[Any] | None = None, **kw: Any) -> Seen:
        """Run on both; assert equal; return what the encrypted side saw."""
        problem, seen = self.compare(sql, params, **kw)
        assert problem is None, problem
        return seen

    def sweep(self, statements: Iterable[tuple[str, Sequence[Any] | None, dict[str, Any]]]) -> int:
        """Run all, then assert with every mismatch listed; returns how many ran."""
        problems: list[str] = []
        n = 0
        for sql, params, kw in statements:
            n += 1
            problem = self.compare(sql, params, **kw)[0]
            if problem is not None:
                problems.append(problem)
        assert not problems, f"{len(problems)} mismatch(es):\n" + "\n".join(problems)
        return n

    def setup(self, *statements: str) -> None:
        """DDL/DML that must succeed on both sides."""
        for sql in statements:
            sa, sb = self.run(sql)
            assert sa.sqlstate is None, (sql, sa)
            assert sb.sqlstate is None, (sql, sb)


# -- the upstream's view ------------------------------------------------------------------


def physical_names(
    conn: psycopg.Connection[Any], master_key: str, table: str, *columns: str
) -> tuple[str, ...]:
    """Physical (table, column...) names of a cloaked table, read from the registry."""
    registry = fetch_registry(conn, NameCipher.from_master(MasterKey.from_base64(master_key)))
    rel = registry.table("public", table)
    assert rel is not None, table
    out = [rel.physical_name]
    for column in columns:
        col = registry.column(rel, column)
        assert col is not None, column
        out.append(col.physical_name)
    return tuple(out)


def crc(value: object) -> int:
    return zlib.crc32(repr(value).encode())


# Bugs fixed since these tests were written: their cases now run as ordinary tests
# (the bug ids stay next to the cases as a record of what each one once caught).
FIXED = frozenset({"E1", "E2", "E3", "E4", "E5", "E7", "E8", "E10", "E12", "E14", "E15", "E16"})


def xfail(bug: str, *values: Any, id: str) -> Any:
    if bug in FIXED:
        return pytest.param(*values, id=id)
    return pytest.param(
        *values, id=id, marks=pytest.mark.xfail(strict=True, reason=f"{bug}: {BUGS}")
    )


def copy_out(conn: psycopg.Connection[Any], sql: str) -> bytes:
    """Everything a COPY ... TO STDOUT sends, as bytes."""
    out = bytearray()
    with conn.cursor().copy(sql) as cp:
        for chunk in cp:
            out += chunk
    return bytes(out)
