"""Differential tests of pgcloak.crypto.codecs.convert against PostgreSQL 15.

Assignment: `INSERT INTO <temp table> (c) VALUES (<literal> | $1) RETURNING c` with
SQL literals of every kind and with typed parameters (psycopg's own dumpers, text
and binary): what PostgreSQL stored (read back in binary = canonical) or its
error must equal `to_column(compare=False)`.

Comparison: a temp table holds a few values plus the probe as PostgreSQL assigns
it; `SELECT c FROM t WHERE c = <probe>` must select exactly the rows whose
canonical bytes are `to_column(compare=True)` (none when it says None), or fail
like it. Values PostgreSQL calls equal but stores differently (numeric scale,
interval spans, float zero signs: the documented deterministic-equality limit)
are tolerated as extra matches for those column types only.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
from helpers import PgServer
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import DiagnosticField, ExecStatus
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Float4, Float8, Int2, Int4, Int8

from pgcloak.crypto.codecs import CodecError, SessionFormat, parse_type
from pgcloak.crypto.codecs.convert import UNKNOWN, Mismatch, in_list, literal_value, to_column

TIMEZONE = "America/New_York"


@dataclass(frozen=True)
class Outcome:
    rows: tuple[bytes | None, ...] | None = None
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None


Param = tuple[bytes | None, int, int]  # data, type OID, format


class Oracle:
    def __init__(
        self, conn: psycopg.Connection[tuple[object, ...]], settings: dict[str, str]
    ) -> None:
        self.conn = conn
        self.tables: dict[str, str] = {}
        for name, value in settings.items():
            conn.execute(f"SET {name} = '{value}'")
        self.fmt = SessionFormat(
            timezone=str(self.show("TimeZone")), datestyle=str(self.show("DateStyle")),
            intervalstyle=str(self.show("IntervalStyle")),
            extra_float_digits=int(str(self.show("extra_float_digits"))),
            bytea_output=str(self.show("bytea_output")),
        )  # fmt: skip

    def show(self, name: str) -> object:
        row = self.conn.execute(f"SHOW {name}").fetchone()
        assert row is not None
        return row[0]

    def table(self, typ: str) -> str:
        if typ not in self.tables:
            name = f"conv_t{len(self.tables)}"
            self.conn.execute(f"CREATE TEMP TABLE {name} (c {typ})")
            self.tables[typ] = name
        return self.tables[typ]

    def run(self, sql: str, params: Sequence[Param] = ()) -> Outcome:
        res = self.conn.pgconn.exec_params(
            sql.encode(),
            [p[0] for p in params],
            [p[1] for p in params],
            [p[2] for p in params],
            1,
        )
        if res.status == ExecStatus.FATAL_ERROR:

            def field(f: DiagnosticField) -> str | None:
                value = res.error_field(f)
                return value.decode() if value is not None else None

            return Outcome(
                sqlstate=field(DiagnosticField.SQLSTATE),
                message=field(DiagnosticField.MESSAGE_PRIMARY),
                detail=field(DiagnosticField.MESSAGE_DETAIL),
                hint=field(DiagnosticField.MESSAGE_HINT),
            )
        assert res.status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK), res.status
        return Outcome(rows=tuple(res.get_value(i, 0) for i in range(res.ntuples)))

    def dump(self, obj: object, binary: bool) -> Param:
        tx = Transformer(self.conn)
        data = tx.dump_sequence([obj], [PyFormat.BINARY if binary else PyFormat.TEXT])[0]
        return (None if data is None else bytes(data), tx.types[0], 1 if binary else 0)


@pytest.fixture(scope="module")
def oracle(pg: PgServer) -> Iterator[Oracle]:
    with psycopg.connect(pg.dsn("test"), autocommit=True) as conn:
        yield Oracle(conn, {"TimeZone": TIMEZONE})


ODD_SETTINGS = {
    "TimeZone": "Asia/Kolkata", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
    "extra_float_digits": "0", "bytea_output": "escape",
}  # fmt: skip


@pytest.fixture(scope="module")
def odd_oracle(pg: PgServer) -> Iterator[Oracle]:
    """A session whose output formats and time zone differ from the defaults."""
    with psycopg.connect(pg.dsn("test"), autocommit=True) as conn:
        yield Oracle(conn, ODD_SETTINGS)


def ours(call: object) -> Outcome:
    """Run a to_column/in_list thunk and express its answer as an Outcome."""
    assert callable(call)
    try:
        result = call()
    except CodecError as exc:
        return Outcome(sqlstate=exc.sqlstate, message=exc.message, detail=exc.detail, hint=exc.hint)
    if isinstance(result, list):
        return Outcome(rows=tuple(result))
    return Outcome(rows=(result,))


def param_value(p: Param) -> tuple[str | None, bytes | None]:
    data, _, fmt = p
    if data is None:
        return None, None
    return (None, data) if fmt else (data.decode(), None)


# -- the cases -------------------------------------------------------------------------

# fmt: off
COLUMNS = [
    "smallint", "integer", "bigint", "numeric(12,3)", "numeric", "numeric(4,-2)", "real",
    "double precision", "text", "varchar(12)", "varchar(3)", "char(5)", "boolean", "date",
    "timestamp", "timestamp(0)", "timestamptz", "time", "interval", "interval day", "uuid",
    "jsonb", "json", "bytea", "integer[]", "varchar(4)[]", "numeric(5,1)[]",
]
LITERALS = [
    "7", "-7", "- 7", "-/* c */7", "0", "100000", "40000", "-32768", "32768", "2147483647",
    "2147483648", "-2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "99999999999999999999", "1.5", "2.5", "-2.5", "0.5", "-0.5",
    "1e2", "1E-2", ".5", "5.", "1.0004", "1.0005", "1e39", "1e-50", "-0.0", "123456789.5",
    "99999999999999999999.5", "1e400", "3.4e38", "0.1", "B'101'", "X'1F'", "B''", "b'0'",
    "TRUE", "FALSE", "true", "NULL", "'7'", "'abc'", "'2020-01-02'", "'2020-01-02 03:04:05.5+02'",
    "'1.5'", "'abcdefghijklm'", "'abc   '", "'ab  x'", "E'a\\tb'", "E'\\303\\251t\\xc3\\xa9'",
    "E'\\u00e9\\U0001F600'", "E'\\xe9'", "E'it\\'s'", "'it''s'", "$$dollar$$", "$q$it's$q$",
    "U&'d\\0061t\\+000061'", "'{1,2}'", "'{ab,abcde}'", "'{\"a\": 1}'", "'1 day'", "'1'",
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'t'", "'12:34:56'", "'\\x6162'", "'NaN'",
    "'Infinity'", "'infinity'",
]
PARAMS: list[object] = [
    None, Int2(7), Int2(-3), Int4(100000), Int4(40000), Int8(2**40), Int8(-3), Int8(2**53 + 1),
    2**70, Float8(7.5), Float8(7.6), Float8(2.5), Float8(-2.5), Float8(0.5), Float8(0.1),
    Float8(1e300), Float8(1e-300), Float8(math.nan), Float8(math.inf), Float8(-0.0),
    Float8(2.0**63), Float8(1e20), Float8(123.456), Float8(1 / 3), Float4(0.1), Float4(3.4e38),
    Float4(7.5),
    Float4(16777217.0), Decimal("1.0004"), Decimal("-2.5"), Decimal("2.5"), Decimal("NaN"),
    Decimal("Infinity"), Decimal("1E+30"), Decimal("123.45"), Decimal("0.1"), Decimal("1e-400"),
    dt.date(2020, 1, 2), dt.date(1999, 12, 31), dt.date.max,
    dt.datetime(2020, 1, 2, 3, 4, 5, 678901), dt.datetime(2020, 1, 2),
    dt.datetime(2020, 3, 8, 2, 30), dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    dt.datetime(2020, 1, 2, 5, tzinfo=dt.UTC), dt.datetime(2020, 3, 8, 7, 30, tzinfo=dt.UTC),
    dt.time(1, 2, 3, 456789), dt.timedelta(days=1, hours=2), dt.timedelta(hours=26),
    dt.timedelta(seconds=1), "abc", "abcdefghijklmn", "ab   ", "7", "2020-01-02", True, False,
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), Jsonb({"a": 1}), Json({"b": [1, 2]}),
    b"\x00ab", [1, 2], ["ab", "abcde"], ["ab", "cd"], [Decimal("1.25")], [1.5],
]
# Stored rows of the comparison tables (text, as PostgreSQL reads them for the column).
STORED: dict[str, list[str]] = {
    "smallint": ["0", "1", "2", "7", "-3", "32767", "-32768", "100"],
    "integer": ["0", "1", "2", "7", "-3", "100000", "2147483647", "16777217"],
    "bigint": ["0", "1", "7", "-3", "1099511627776", "9007199254740992", "9007199254740993",
               "9223372036854775807", "100000"],
    "numeric(12,3)": ["0", "1", "1.5", "7.5", "7.6", "-2.5", "0.1", "123.45", "1.0004"],
    "numeric": ["0", "1", "1.5", "7.5", "0.1", "1.0004", "NaN", "Infinity", "1e30"],
    "numeric(4,-2)": ["0", "100", "123", "-250"],
    "real": ["0", "0.1", "7.5", "7.6", "1.5", "100000", "NaN", "Infinity", "3.4e38", "16777217"],
    "double precision": ["0", "0.1", "7.5", "7.6", "1.5", "NaN", "Infinity", "1e300",
                         "1099511627776", "9007199254740993", "100000"],
    "text": ["", "abc", "abc   ", "ab", "7", "ab   ", "abcdefghijklmn"],
    "varchar(12)": ["abc", "abc   ", "ab", "7", "abcdefghijkl", "t"],
    "varchar(3)": ["abc", "ab", "7"],
    "char(5)": ["abc", "ab", "7", "abcde", ""],
    "boolean": ["t", "f"],
    "date": ["2020-01-02", "1999-12-31", "infinity", "-infinity"],
    "timestamp": ["2020-01-02 03:04:05.678901", "2020-01-02 00:00", "2020-03-08 02:30",
                  "2020-03-08 03:30", "2020-01-01 22:04:05.678901", "infinity"],
    "timestamp(0)": ["2020-01-02 03:04:06", "2020-01-02 00:00"],
    "timestamptz": ["2020-01-02 03:04:05.678901+00", "2020-01-02 00:00-05",
                    "2020-01-02 03:04:05.678901-05", "2020-03-08 07:30+00"],
    "time": ["01:02:03.456789", "00:00", "24:00", "02:00", "12:34:56"],
    "interval": ["1 day 02:00", "00:00:01", "1 mon", "02:00"],
    "interval day": ["1 day", "2 days"],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    "jsonb": ['{"a": 1}', "[1, 2]"],
    "json": ['{"a": 1}'],
    "bytea": ["\\x006162", "\\x6162"],
    "integer[]": ["{1,2}", "{}"],
    "varchar(4)[]": ["{ab,cd}", "{ab,abcd}"],
    "numeric(5,1)[]": ["{1.3}", "{1.2}"],
}
# Equal in PostgreSQL, different canonical bytes (docs: deterministic equality limits).
LOOSE_EQUALITY = {"numeric", "interval", "interval day", "real", "double precision", "jsonb"}
# fmt: on


def _column(typ: str) -> tuple[int, int]:
    return parse_type(typ)


def _literal_call(lit: str, typ: str, oracle: Oracle, compare: bool) -> Outcome:
    oid, typmod = _column(typ)

    def call() -> bytes | None:
        src, text = literal_value(lit)
        return to_column(text, None, src, oid, typmod, compare=compare, column="c", fmt=oracle.fmt)

    return ours(call)


def _param_call(p: Param, typ: str, oracle: Oracle, compare: bool) -> Outcome:
    oid, typmod = _column(typ)
    text, binary = param_value(p)
    return ours(
        lambda: to_column(
            text, binary, p[1], oid, typmod, compare=compare, column="c", fmt=oracle.fmt
        )
    )


def _same(expected: Outcome, got: Outcome) -> bool:
    if expected.rows is not None:
        return got.rows == expected.rows
    return (expected.sqlstate, expected.message, expected.detail) == (
        got.sqlstate,
        got.message,
        got.detail,
    ) and (expected.sqlstate not in ("42804", "42883") or expected.hint == got.hint)


def _params(oracle: Oracle) -> list[tuple[str, Param]]:
    out = []
    for obj in PARAMS:
        for binary in (False, True):
            p = oracle.dump(obj, binary)
            out.append((f"{obj!r}/{'b' if binary else 't'}/{p[1]}", p))
    return out


# -- assignment ------------------------------------------------------------------------


@pytest.mark.parametrize("typ", COLUMNS)
def test_assignment_of_literals(oracle: Oracle, typ: str) -> None:
    table = oracle.table(typ)
    bad = []
    for lit in LITERALS:
        expected = oracle.run(f"INSERT INTO {table} (c) VALUES ({lit}) RETURNING c")
        got = _literal_call(lit, typ, oracle, compare=False)
        if not _same(expected, got):
            bad.append(f"{lit}: postgres {expected} pgcloak {got}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("typ", COLUMNS)
def test_assignment_of_typed_parameters(oracle: Oracle, typ: str) -> None:
    table = oracle.table(typ)
    bad = []
    for label, p in _params(oracle):
        expected = oracle.run(f"INSERT INTO {table} (c) VALUES ($1) RETURNING c", [p])
        got = _param_call(p, typ, oracle, compare=False)
        if not _same(expected, got):
            bad.append(f"{label}: postgres {expected} pgcloak {got}")
    assert not bad, "\n".join(bad)


# -- comparison ------------------------------------------------------------------------


def _check_compare(
    oracle: Oracle, typ: str, label: str, value_sql: str, *, params: Sequence[Param], got: Outcome
) -> str | None:
    """Fill the table (stored values + the probe assigned by PostgreSQL) and compare."""
    table = oracle.table(typ)
    oracle.run(f"TRUNCATE {table}")
    for text in STORED[typ]:
        lit = "'" + text.replace("'", "''") + "'"
        assert oracle.run(f"INSERT INTO {table} (c) VALUES ({lit})").sqlstate is None, text
    oracle.run(f"INSERT INTO {table} (c) VALUES ({value_sql})", params)  # may fail: fine
    stored = oracle.run(f"SELECT c FROM {table}").rows
    assert stored is not None
    expected = oracle.run(f"SELECT c FROM {table} WHERE c {value_sql}", params)
    where = f"{label}: postgres {expected} pgcloak {got}"
    if expected.rows is None or got.rows is None:
        if got.sqlstate == "0A000" and got.message and "several stored values" in got.message:
            return None if expected.rows is not None else where  # refused as ambiguous
        return None if _same(expected, got) else where
    wanted = set(got.rows) - {None}
    selected = {s for s in stored if s in wanted}
    matched = set(expected.rows)
    if matched == selected or (typ in LOOSE_EQUALITY and selected <= matched):
        return None
    return where


COMPARE_LITERALS = [
    "7", "-3", "100000", "40000", "2147483648", "9223372036854775807", "9223372036854775808",
    "1.5", "1.0001", "1.0004", "7.6", "0.1", "1e30", "1.500", "100", "123", "150", "-250",
    "3.4e38", "16777217", "9007199254740993", "B'101'", "TRUE", "NULL", "'7'", "'abc'",
    "'abc   '", "'abcdefghijkl   '", "'abcdefg'", "'ab'", "'2020-01-02'", "'1.5'", "'1 day'",
    "'26:00'", "'24:00'", "'1 day 02:00'", "'2020-01-02 03:04:05.678901'",
    "'2020-01-02 03:04:05.5'",
    "'2020-03-08 07:30+00'", "'infinity'", "'{1,2}'", "'{ab,cd}'", "'{ab,abcde}'", "'{1.25}'",
    "'{\"a\": 1}'", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'NaN'", "'Infinity'", "'t'",
    "'\\x6162'", "$$abc$$", "E'ab\\x20\\x20\\x20'",
]  # fmt: skip


@pytest.mark.parametrize("typ", COLUMNS)
def test_equality_with_literals(oracle: Oracle, typ: str) -> None:
    bad = []
    for lit in COMPARE_LITERALS:
        got = _literal_call(lit, typ, oracle, compare=True)
        problem = _check_compare(oracle, typ, lit, f"= {lit}", params=(), got=got)
        if problem:
            bad.append(problem)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("typ", COLUMNS)
def test_equality_with_typed_parameters(oracle: Oracle, typ: str) -> None:
    bad = []
    for label, p in _params(oracle):
        got = _param_call(p, typ, oracle, compare=True)
        problem = _check_compare(oracle, typ, label, "= $1", params=[p], got=got)
        if problem:
            bad.append(problem)
    assert not bad, "\n".join(bad)


IN_LISTS: list[tuple[str, list[str]]] = [
    ("real", ["0.1", "7.6"]),
    ("real", ["0.1", "'7.6'"]),
    ("real", ["0.1"]),
    ("real", ["1", "16777217"]),
    ("smallint", ["1", "100000", "7"]),
    ("smallint", ["'7'", "2"]),
    ("integer", ["1.5", "7"]),
    ("integer", ["7", "TRUE"]),
    ("numeric(12,3)", ["1.0001", "1.5", "7"]),
    ("char(5)", ["'abc'", "'ab   '"]),
    ("varchar(12)", ["'abc'", "'abc   '", "NULL"]),
    ("text", ["'abc'", "'7'"]),
    ("text", ["'abc'", "7"]),
    ("date", ["'2020-01-02'", "'1999-12-31'"]),
    ("timestamp", ["'2020-01-02 00:00'", "'2020-01-02 03:04:05.678901'"]),
    ("boolean", ["TRUE", "'f'"]),
    ("bigint", ["9007199254740993", "1"]),
]


@pytest.mark.parametrize(
    ("typ", "items"), IN_LISTS, ids=[f"{t}:{','.join(i)}" for t, i in IN_LISTS]
)
def test_in_lists(oracle: Oracle, typ: str, items: list[str]) -> None:
    oid, typmod = _column(typ)
    values = [(text, None, src) for src, text in map(literal_value, items)]
    got = ours(lambda: in_list(values, oid, typmod, column="c", fmt=oracle.fmt))
    sql = f"IN ({', '.join(items)})"
    problem = _check_compare(oracle, typ, sql, sql, params=(), got=got)
    assert problem is None, problem


def _in_list_params(oracle: Oracle, typ: str, objs: list[object]) -> None:
    oid, typmod = _column(typ)
    params = [oracle.dump(o, binary=True) for o in objs]
    values = [(*param_value(p), p[1]) for p in params]
    got = ours(lambda: in_list(values, oid, typmod, column="c", fmt=oracle.fmt))
    marks = ", ".join(f"${i + 1}" for i in range(len(params)))
    problem = _check_compare(oracle, typ, f"IN ({marks})", f"IN ({marks})", params=params, got=got)
    assert problem is None, problem


@pytest.mark.parametrize(
    ("typ", "objs"),
    [
        ("char(5)", ["abc", "ab   "]),
        ("real", [Decimal("0.1"), Decimal("7.5")]),
        ("real", [Int4(16777217), Int4(1)]),
        ("integer", [Float4(16777217.0), Float4(7.0)]),
        ("numeric(12,3)", [7.5, Decimal("1.0001")]),
        ("timestamptz", [dt.datetime(2020, 1, 2), dt.date(2020, 1, 2)]),
    ],
)
def test_in_lists_with_parameters(oracle: Oracle, typ: str, objs: list[object]) -> None:
    _in_list_params(oracle, typ, objs)


# -- unit checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", (23, "7")),
        ("-7", (23, "-7")),
        ("- 7", (23, "-7")),
        ("-2147483648", (23, "-2147483648")),
        ("2147483648", (20, "2147483648")),
        ("-9223372036854775808", (20, "-9223372036854775808")),
        ("9223372036854775808", (1700, "9223372036854775808")),
        ("00012", (23, "12")),
        ("1.5", (1700, "1.5")),
        ("-1e3", (1700, "-1e3")),
        ("TRUE", (16, "true")),
        ("null", (0, None)),
        ("'it''s'", (UNKNOWN, "it's")),
        ("E'a\\'b\\\\c\\n'", (UNKNOWN, "a'b\\c\n")),
        ("E'\\303\\251'", (UNKNOWN, "\u00e9")),
        ("E'\\uD83D\\uDE00'", (UNKNOWN, "\U0001f600")),
        ("$tag$a$$b$tag$", (UNKNOWN, "a$$b")),
        ("B'0101'", (1560, "0101")),
        ("X'a1'", (1560, "10100001")),
        ("U&'!0041' UESCAPE '!'", (UNKNOWN, "A")),
    ],
)
def test_literal_value(raw: str, expected: tuple[int, str | None]) -> None:
    assert literal_value(raw) == expected


def test_literal_value_without_standard_conforming_strings() -> None:
    assert literal_value("'a\\tb'", standard_conforming_strings=False) == (UNKNOWN, "a\tb")
    assert literal_value("'a\\tb'") == (UNKNOWN, "a\\tb")


def test_mismatch_does_not_show_the_column_name() -> None:
    oid, typmod = parse_type("boolean")
    with pytest.raises(Mismatch) as info:
        to_column("1", None, 23, oid, typmod, compare=False, column="secret", fmt=SessionFormat())
    assert "secret" in info.value.message
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)


def test_operator_message_order() -> None:
    oid, typmod = parse_type("text")
    with pytest.raises(Mismatch) as info:
        to_column("1", None, 23, oid, typmod, compare=True, column="c", fmt=SessionFormat())
    assert info.value.message == "operator does not exist: text = integer"
    with pytest.raises(Mismatch) as info:
        to_column(
            "1", None, 23, oid, typmod, compare=True, column="c", fmt=SessionFormat(),
            value_first=True,
        )  # fmt: skip
    assert info.value.message == "operator does not exist: integer = text"


def test_ambiguous_comparisons_are_refused() -> None:
    fmt = SessionFormat()
    for typ, src, value in [
        ("numeric", 701, "1.5"),
        ("bigint", 701, "1152921504606846976"),
        ("varchar(5)", 1042, "ab"),
    ]:
        oid, typmod = parse_type(typ)
        with pytest.raises(CodecError) as info:
            to_column(value, None, src, oid, typmod, compare=True, column="c", fmt=fmt)
        assert info.value.sqlstate == "0A000"


# -- randomized comparisons against floats ---------------------------------------------


def _float_probes(rng: random.Random, scale: int) -> list[float]:
    out = [0.0, -0.0, 0.5, 2.0**53, 2.0**60 + 2048, -(2.0**63), 2.0**63, 1e15 + 0.5, 9.995]
    for _ in range(80):
        kind = rng.randrange(5)
        if kind == 0:  # a decimal of the column's scale, as a double
            out.append(float(Decimal(rng.randrange(-(10**12), 10**12)).scaleb(-max(scale, 0))))
        elif kind == 1:
            out.append(rng.uniform(-1e6, 1e6))
        elif kind == 2:
            out.append(float(rng.randrange(-(2**62), 2**62)))
        elif kind == 3:  # where doubles get sparser than the column's decimals
            out.append(rng.choice([1.0, -1.0]) * 10 ** rng.uniform(12, 16))
        else:
            out.append(rng.choice([1.0, -1.0]) * 10 ** rng.uniform(-8, 19))
    return out


@pytest.mark.parametrize(
    "typ",
    ["numeric(5,2)", "numeric(12,3)", "numeric(15,0)", "numeric(17,2)", "numeric(20,4)",
     "numeric(4,-2)", "bigint", "integer", "real"],
)  # fmt: skip
def test_float_parameters_against_numbers(oracle: Oracle, typ: str) -> None:
    """Stored neighbours of the probe: PostgreSQL's matches must be exactly ours."""
    scale = int(typ.split(",")[1].rstrip(")")) if "," in typ else 0
    table = oracle.table(typ + " ")  # a table of its own
    rng = random.Random(f"convert-{typ}")
    bad = []
    for x in _float_probes(rng, scale):
        p = oracle.dump(Float8(x), binary=True)
        got = _param_call(p, typ, oracle, compare=True)
        if typ == "real":
            try:
                near = struct.unpack(">f", struct.pack(">f", x))[0]
            except OverflowError:
                continue
            window = [repr(near), repr(math.nextafter(near, math.inf))]
        else:
            step = Decimal(1).scaleb(-scale)
            base = Decimal(x).quantize(step) if scale >= 0 else Decimal(round(x, scale))
            window = [str(base + k * step) for k in range(-3, 4)]
        oracle.run(f"TRUNCATE {table}")
        for text in window:
            oracle.run(f"INSERT INTO {table} (c) VALUES ('{text}')")  # out of range: skipped
        expected = oracle.run(f"SELECT c FROM {table} WHERE c = $1", [p])
        assert expected.rows is not None, expected
        matched = set(expected.rows)
        if got.rows is None:
            assert got.sqlstate == "0A000", got
            if len(matched) < 2:
                bad.append(f"{x!r}: refused as ambiguous, postgres matched {matched}")
        elif matched - {got.rows[0]} or (
            got.rows[0] is not None and matched and got.rows[0] not in matched
        ):
            bad.append(f"{x!r}: postgres {matched} pgcloak {got.rows[0]!r}")
    assert not bad, "\n".join(bad)


ODD_COLUMNS = ["text", "varchar(40)", "char(30)", "date", "timestamp", "timestamptz", "time",
               "interval"]  # fmt: skip


@pytest.mark.parametrize("typ", ODD_COLUMNS)
def test_session_formats_and_time_zone(odd_oracle: Oracle, typ: str) -> None:
    """Casts to text follow DateStyle & co.; timestamptz casts follow TimeZone."""
    table = odd_oracle.table(typ)
    bad = []
    for label, p in _params(odd_oracle):
        expected = odd_oracle.run(f"INSERT INTO {table} (c) VALUES ($1) RETURNING c", [p])
        got = _param_call(p, typ, odd_oracle, compare=False)
        if not _same(expected, got):
            bad.append(f"{label}: postgres {expected} pgcloak {got}")
    for lit in LITERALS:
        expected = odd_oracle.run(f"INSERT INTO {table} (c) VALUES ({lit}) RETURNING c")
        got = _literal_call(lit, typ, odd_oracle, compare=False)
        if not _same(expected, got):
            bad.append(f"{lit}: postgres {expected} pgcloak {got}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("typ", ["date", "timestamp", "timestamptz"])
def test_session_time_zone_in_comparisons(odd_oracle: Oracle, typ: str) -> None:
    bad = []
    for label, p in _params(odd_oracle):
        got = _param_call(p, typ, odd_oracle, compare=True)
        problem = _check_compare(odd_oracle, typ, label, "= $1", params=[p], got=got)
        if problem:
            bad.append(problem)
    assert not bad, "\n".join(bad)
