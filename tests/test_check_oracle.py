"""pgcloak's CHECK evaluator against PostgreSQL as the oracle.

Every (type, expression, value) is evaluated twice: by pgcloak (the rewriter's tree
for the expression, constants resolved with the column type's input function, the
value's canonical bytes) and by PostgreSQL (`SELECT <expression>` with the column
replaced by the value as a literal of the type). Results (true, false, NULL) must
agree: NULL handling, numeric scale, float NaN/Infinity/-0, interval comparisons,
timestamptz in another time zone.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import psycopg
import pytest
from helpers import PgServer
from pglast import parser

from pgcloak.crypto.checks import Check, CheckError, resolve
from pgcloak.crypto.codecs import SessionFormat, codec_for, parse_type
from pgcloak.rewriter.catalog import Column, ColumnPolicy, Relation
from pgcloak.rewriter.ddl_check import written_check
from pgcloak.rewriter.plan import CloakError

FMT = SessionFormat(datestyle="ISO, DMY", timezone="America/New_York")
_rng = random.Random(4242)
_INTS = ["-2147483648", "-1", "0", "1", "2", "3", "5", "6", "7", "13", "2147483647",
         *(str(_rng.randint(-100, 100)) for _ in range(6))]  # fmt: skip
_NUMS = ["0", "1.005", "1.004", "1.5", "1.50", "-0.001", "-1", "999.995", "1000",
         *(f"{_rng.uniform(-2, 2):.4f}" for _ in range(6))]  # fmt: skip
_FLOATS = ["0.1", "-0", "0", "NaN", "Infinity", "-Infinity", "1e308", "5e-324", "16777217",
           "0.30000000000000004", *(repr(_rng.uniform(-1, 1)) for _ in range(4))]  # fmt: skip

_RANDOM_TZ = [
    f"20{_rng.randint(10, 39)}-{_rng.randint(1, 12):02d}-{_rng.randint(1, 28):02d} "
    f"{_rng.randint(0, 23):02d}:{_rng.randint(0, 59):02d}:{_rng.randint(0, 59):02d}"
    f".{_rng.randint(0, 999999):06d}{_rng.choice(['+00', '-05', '+05:30', '', ' Europe/Paris'])}"
    for _ in range(20)
]
_RANDOM_IV = [
    f"{_rng.randint(-3, 3)} mons {_rng.randint(-40, 40)} days {_rng.randint(-30, 30)}:00:00"
    for _ in range(20)
]
_RANDOM_NUM = [str(_rng.randint(-(10**6), 10**6) / 10 ** _rng.randint(0, 6)) for _ in range(20)]
_RANDOM_F = [repr(_rng.choice([-1, 1]) * _rng.random() * 10 ** _rng.randint(-5, 5))
             for _ in range(20)]  # fmt: skip
CASES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("int4", ("x > 5", "x >= 5.5", "x BETWEEN -3 AND 7", "x NOT BETWEEN 1 AND 2",
              "x IN (1, 2, NULL)", "x NOT IN (1, 2)", "x NOT IN (1, NULL)",
              "NOT (x < 0) AND x <> 3", "x > 2147483646.5", "x = '7'", "x < 99999999999",
              "x > 0 OR x IS NULL", "x = NULL", "x > 0 AND x = 13 OR x < -1", "5 < x",
              "NOT x IN (1, 3)"),
     tuple(_INTS)),
    ("int2", ("x > 5", "x <> -1", "x BETWEEN 2 AND 2.5"), ("-32768", "0", "2", "3", "32767")),
    ("int8", ("x > 5", "x < 9223372036854775807", "x > 9223372036854775806.5",
              "x >= -9223372036854775808"),
     ("9223372036854775807", "-9223372036854775808", "0", "6")),
    ("numeric(8,2)", ("x > 1.005", "x = 1.5", "x BETWEEN -1 AND 1.004", "x <> 0",
                      "x >= 1.00", "x = '1.005'", "x IN (1.5, 2)"),
     tuple(_NUMS)),
    ("numeric", ("x >= 'NaN'", "x < 'Infinity'", "x = 'NaN'", "x > '-Infinity'", "x > 1.5",
                 "x = 1.5", "x <> 1.50"),
     ("NaN", "Infinity", "-Infinity", "1.5", "1.50", "1.500001", "0")),
    ("float8", ("x > 0.1", "x = 'NaN'", "x <> 'NaN'", "x < 'Infinity'", "x = 0",
                "x > -1e308", "x BETWEEN -1 AND 1", "x = 0.30000000000000004", "x > 16777216",
                "x IN (0, 'NaN')"),
     tuple(_FLOATS)),
    ("float4", ("x > 0.1", "x = 0.1", "x = '0.1'", "x > 16777217", "x = 'NaN'", "x < 1e38",
                "x >= 1"),
     ("0.1", "16777217", "16777216", "NaN", "-0", "3.4e38", "1")),
    ("date", ("x >= '2000-01-01'", "x < 'infinity'", "x = '02/01/2000'",
              "x BETWEEN '1999-12-31' AND '2000-01-02'", "x > '-infinity'",
              "x = date '2000-01-01'"),
     ("2000-01-01", "1999-12-31", "2000-01-02", "infinity", "-infinity", "2000-02-01")),
    ("timestamptz", ("x < '2030-01-01 00:00:00+00'", "x = '2020-06-01 12:00'",
                     "x BETWEEN '2020-01-01' AND '2020-12-31 23:59:59.999999'",
                     "x <> 'infinity'", "x > '2020-06-01 16:00:00+00'"),
     ("2030-01-01 00:00:00+00", "2029-12-31 19:00:00-05", "2020-06-01 12:00",
      "2020-06-01 16:00:00+00", "2020-06-01 16:00:00.000001+00", "infinity",
      "2021-01-01 04:59:59+00", "2020-12-31 23:59:59.999999")),
    ("timestamp", ("x < '2030-01-01'", "x = '2020-06-01 12:00'", "x > '-infinity'"),
     ("2030-01-01", "2029-12-31 23:59:59.999999", "2020-06-01 12:00:00", "-infinity")),
    ("time", ("x < '12:00'", "x BETWEEN '08:00' AND '17:00:00.5'", "x <> '24:00'"),
     ("11:59:59.999999", "12:00", "08:00", "17:00:00.5", "17:00:00.500001", "24:00")),
    ("interval", ("x <= '1 day'", "x = '24 hours'", "x > '1 mon'", "x < '30 days'",
                  "x = '1 mon'", "x BETWEEN '-1 day' AND '1 day'", "x IN ('30 days', '1 year')"),
     ("30 days", "1 mon", "24:00:00", "1 day", "-1 day 25 hours", "1 year -365 days",
      "1 year", "360 days", "12 mons", "-1 day", "1 day 00:00:00.000001")),
    ("bool", ("x", "NOT x", "x = 'yes'", "x IS NOT NULL AND x", "x <> false", "x > false",
              "x IN (true)"),
     ("t", "f")),
    ("uuid", ("x < 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
              "x = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
              "x >= '00000000-0000-0000-0000-000000000000'"),
     ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
      "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")),
    ("text", ("x <> ''", "char_length(x) <= 3", "octet_length(x) BETWEEN 2 AND 4",
              "x IN ('a', 'é')", "length(x) = 2", "character_length(x) > 1.5", "x = 'ab'",
              "x NOT IN ('', 'a')", "pg_catalog.length(x) < 4"),
     ("", "a", "é", "ab", "éé", "abcd", "a ", "ééé")),
    ("varchar(5)", ("x <> ''", "char_length(x) < 3", "x = 'abc'", "x::text <> ''::text",
                    "octet_length(x) = 3"),
     ("", "abc", "abc  ", "ééé", "ab")),
    ("timestamptz", ("x < '2030-01-01 00:00:00+00'", "x >= '2025-06-15 12:00'",
                     "x BETWEEN '2015-01-01' AND '2035-01-01 00:00:00+05'"),
     tuple(_RANDOM_TZ)),
    ("interval", ("x <= '1 day'", "x > '1 mon'", "x BETWEEN '-30 days' AND '2 mons'",
                  "x = '30 days'", "x <> '0'"),
     tuple(_RANDOM_IV)),
    ("numeric", ("x > 0.5", "x BETWEEN -1.000001 AND 1000", "x = 0.1", "x IN (0.1, 1)"),
     tuple(_RANDOM_NUM)),
    ("numeric(10,3)", ("x > 0.5", "x <= 0.0005", "x = 0.1005"), tuple(_RANDOM_NUM)),
    ("float8", ("x > 0.5", "x < -0.001", "x BETWEEN 1e-5 AND 1e4"), tuple(_RANDOM_F)),
    ("float4", ("x > 0.5", "x < -0.001", "x = 0.1", "x BETWEEN 1e-5 AND 1e4"),
     tuple(_RANDOM_F)),
)  # fmt: skip


def _ours(type_sql: str, expr: str, value: str | None) -> bool | None:
    oid, typmod = parse_type(type_sql)
    col = Column("x", "x", ColumnPolicy("deterministic", type_sql, "s"))
    rel = Relation("public", "t", "t", (col,))
    tree = json.loads(parser.parse_sql_json(f"SELECT {expr}"))
    node = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    written = json.loads(written_check(rel, col, "deterministic", node))
    check = Check.of(resolve(written, oid, FMT), oid)
    if value is None:
        return check.test(None)
    codec = codec_for(oid)
    assert codec is not None
    canonical = codec.from_binary(codec.from_text(value, -1, FMT), typmod)
    return check.test(canonical)


def _theirs(conn: psycopg.Connection[Any], type_sql: str, expr: str, value: str | None) -> Any:
    lit = "NULL" if value is None else "'" + value.replace("'", "''") + "'"
    sql = "SELECT " + re.sub(r"\bx\b", f"({lit}::{type_sql})", expr)
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(
    ("type_sql", "exprs", "values"), CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)]
)
def test_evaluator_agrees_with_postgresql(
    pg: PgServer, type_sql: str, exprs: tuple[str, ...], values: tuple[str, ...]
) -> None:
    problems = []
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("SET DateStyle = 'ISO, DMY'")
        conn.execute("SET TimeZone = 'America/New_York'")
        for expr in exprs:
            for value in (*values, None):
                expected = _theirs(conn, type_sql, expr, value)
                try:
                    got = _ours(type_sql, expr, value)
                except (CheckError, CloakError) as exc:
                    got = f"error {exc}"
                if got is not expected:
                    problems.append(f"{type_sql}: {expr} with {value!r}: pg {expected}, ours {got}")
    assert not problems, "\n".join(problems)
