"""Known divergences of encrypted columns from PostgreSQL, each pinned by a small case.

Same differential set-up as tests/test_encrypt_proxy.py (plain database vs encrypted
database through the proxy, tests/encrypt_env.py). Literal spellings, Bind
parameters typed differently from the column, comparison semantics, session-format
caching. Cases that PostgreSQL and the proxy treat alike are plain tests; the rest
are xfail(strict=True) with the bug id in docs/known-issues.md.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from encrypt_support import BUGS, MODES, SHORT, TYPE_BY_COL, TYPES, Pair, TypeCase, crc, xfail
from psycopg.types.numeric import Int2, Int4, Int8

from pgcloak.proxy.cloak_details import HIDDEN

pytest_plugins = ("encrypt_env",)  # fixtures: env, pair, shop


@pytest.mark.parametrize(
    ("col", "literal"),
    [
        xfail("E4", "c_text", "$$dollar$$", id="dollar-quoted"),
        xfail("E4", "c_text", "$q$dollar$q$", id="tagged-dollar-quoted"),
        xfail("E8", "c_text", "E'\\303\\251t\\xc3\\xa9'", id="escaped-utf8-bytes"),
        ("c_text", "E'\\u00e9\\U0001F600'"),
        ("c_bytea", "E'\\\\xdeadbeef'"),
        xfail("E5", "c_int2", "1.5", id="numeric-constant-to-smallint"),
        xfail("E5", "c_int4", "1e2", id="float-constant-to-integer"),
        xfail("E5", "c_int8", "-2.5", id="numeric-constant-to-bigint"),
        xfail("E5", "c_text", "B'101'", id="bit-constant-to-text"),
        ("c_bool", "TRUE"),
    ],
)
def test_literal_forms(pair: Pair, col: str, literal: str) -> None:
    """Literal spellings PostgreSQL accepts store what PostgreSQL would store."""
    row = 90000 + crc((col, literal)) % 9999
    pair.sweep(
        (sql, None, kw)
        for mode in ("det", "rnd")
        for sql, kw in (
            (f"INSERT INTO m_{mode} (id, {col}) VALUES ({row}, {literal})", {}),
            (f"SELECT {col} FROM m_{mode} WHERE id = {row}", {}),
            (f"SELECT {col} FROM m_{mode} WHERE id = {row}", {"binary": True}),
            (f"DELETE FROM m_{mode} WHERE id = {row}", {}),
        )
    )


@pytest.mark.parametrize(
    ("col", "literal"),
    [("c_text", "U&'\\00e9'"), ("c_int4", "-  5"), ("c_text", "'a'\n'b'")],
    ids=["unicode-escape", "spaced-sign", "continued-string"],
)
def test_undecoded_literal_forms_are_refused_cleanly(pair: Pair, col: str, literal: str) -> None:
    """Spellings the proxy does not decode are refused (0A000), never stored mangled."""
    a, b = pair.run(f"INSERT INTO m_rnd (id, {col}) VALUES (-5, {literal})")
    assert a.sqlstate is None and b.sqlstate == "0A000", b
    assert "literal" in (b.error or ("",))[0]
    pair.a.execute("DELETE FROM m_rnd WHERE id = -5")
    pair.same("SELECT count(*) FROM m_rnd WHERE id = -5")


@pytest.mark.parametrize(
    ("col", "param", "fmt"),
    [
        xfail("E1", "c_int8", Int2(7), "%b", id="int2-into-bigint"),
        xfail("E1", "c_int4", Int8(7), "%b", id="int8-into-integer"),
        xfail("E1", "c_numeric", 7.5, "%b", id="float8-into-numeric"),
        xfail("E1", "c_real", 7.5, "%b", id="float8-into-real"),
        xfail("E1", "c_numeric", Int4(7), "%b", id="int4-into-numeric"),
        xfail("E1", "c_tstz", dt.date(2020, 1, 2), "%b", id="date-into-timestamptz"),
        xfail("E1", "c_vc_arr", ["ab"], "%b", id="text-array-into-varchar-array"),
        xfail("E1", "c_int4", 7.6, "%t", id="float8-text-into-integer"),
        ("c_int8", Int2(7), "%t"),
        ("c_text", 5, "%t"),
    ],
)
def test_parameters_of_another_type_are_assignment_cast(
    pair: Pair, col: str, param: Any, fmt: str
) -> None:
    """A Bind parameter the client typed differently from the column (psycopg types Python
    ints by size, floats as float8): PostgreSQL applies the assignment cast."""
    row = 95000 + crc((col, fmt, repr(param))) % 4999
    pair.sweep(
        (sql, params, kw)
        for mode in ("det", "rnd")
        for sql, params, kw in (
            (f"INSERT INTO m_{mode} (id, {col}) VALUES ({row}, {fmt})", [param], {}),
            (f"SELECT {col} FROM m_{mode} WHERE id = {row}", None, {}),
            (f"DELETE FROM m_{mode} WHERE id = {row}", None, {}),
        )
    )


@pytest.mark.parametrize(
    ("col", "stored", "compared"),
    [
        xfail("E3", "c_numeric", "1.0004", "1.0001", id="numeric-scale"),
        xfail("E3", "c_numeric", "-2.0004", "%s", id="numeric-scale-param"),
        xfail("E3", "c_varchar", "'abcdefghijkl'", "'abcdefghijkl   '", id="varchar-length"),
        xfail("E3", "c_int2", "7", "100000", id="smallint-range"),
        xfail("E3", "c_int4", "2", "1.5", id="integer-vs-numeric"),
        xfail("E3", "c_real", "0.1", "0.1", id="real-vs-numeric"),
        xfail("E3", "c_char", "'ab'", "'abcdefg'", id="char-length"),
        xfail("E6", "c_interval", "'1 day'", "'24 hours'", id="interval-normalized"),
        xfail("E6", "c_double", "'-0'", "0", id="float-signed-zero"),
        xfail("E6", "c_jsonb", "'1.0'", "'1.00'", id="jsonb-numeric-scale"),
        ("c_char", "'ab'", "'ab  '"),
        ("c_tstz", "'2000-01-01 00:00+02'", "'1999-12-31 22:00 UTC'"),
        ("c_numeric", "1.5", "1.50"),
    ],
)
def test_equality_follows_postgresql_comparison(
    pair: Pair, col: str, stored: str, compared: str
) -> None:
    """`col = x` is PostgreSQL's comparison (no typmod, the operator's own equality),
    not equality of what `x` would be stored as."""
    row = 97000 + crc((col, stored, compared)) % 2999
    where = f"{col} = {compared}" if compared != "%s" else f"{col} = %s"
    params = [Decimal(stored)] if compared == "%s" else None
    pair.setup(f"INSERT INTO m_det (id, {col}) VALUES ({row}, {stored})")
    try:
        pair.same(f"SELECT id FROM m_det WHERE {where} AND id = {row}", params, texts=False)
        pair.same(f"SELECT count(*) FROM m_det WHERE {where} AND id = {row}", params, texts=False)
    finally:
        pair.setup(f"DELETE FROM m_det WHERE id = {row}")


def test_json_has_no_equality(pair: Pair) -> None:
    """PostgreSQL has no `json = json`; a deterministic json column must not invent one."""
    a, b = pair.run("SELECT id FROM m_det WHERE c_json = '{}'")
    assert a.sqlstate == "42883"
    assert b.sqlstate in ("42883", "0A000"), b
    a, b = pair.run("SELECT c_json, count(*) FROM m_det GROUP BY c_json")
    assert a.sqlstate == "42883"
    assert b.sqlstate in ("42883", "0A000"), b


def test_repeated_statement_after_set_timezone(pair: Pair) -> None:
    """The same statement text with a timestamptz literal, before and after SET TimeZone."""
    pair.setup("CREATE TABLE sess2 (id int, tz timestamptz, d date)")
    sql = "INSERT INTO sess2 VALUES (%s, '2020-03-04 05:06', '03/04/2020')"
    pair.sweep([
        (sql, [1], {}),
        ("SET TimeZone = 'Asia/Kolkata'", None, {}),
        (sql, [2], {}),
        ("SET DateStyle = 'SQL, DMY'", None, {}),
        ("SELECT id FROM sess2 WHERE tz = '2020-03-04 05:06' AND id > %s", [0], {}),
        ("RESET TimeZone", None, {}),
        ("SELECT id FROM sess2 WHERE tz = '2020-03-04 05:06' AND id > %s", [0], {}),
        ("SELECT * FROM sess2 ORDER BY id", None, {}),
    ])  # fmt: skip


# -- error texts --------------------------------------------------------------------------

# More bad inputs, for their texts (message, DETAIL, HINT): (column, literal).
BAD_TEXTS = [
    ("c_int2", "'99999999999999999999'"), ("c_int8", "''"), ("c_int4", "'1 2'"),
    ("c_varchar", "'thirteen chars'"), ("c_char", "'abcdef  x'"),
    ("c_numeric", "'1e1000000'"), ("c_numeric", "'-Infinity'"), ("c_real", "'1e-50'"),
    ("c_double", "'1e-400'"), ("c_bool", "'tru e'"), ("c_uuid", "'{a0eebc99}'"),
    ("c_date", "'13/13/2020'"), ("c_date", "'2020-02-30 BC'"), ("c_date", "'5874898-01-01'"),
    ("c_date", "'1999-01-08 04:05:06 XYZ'"), ("c_time", "'24:00:01'"), ("c_time", "'12:60'"),
    ("c_ts", "'294277-01-01'"), ("c_ts", "'2000-01-01 25:00'"), ("c_ts", "'today tomorrow'"),
    ("c_tstz", "'2020-01-01 00:00+25'"), ("c_tstz", "'2020-01-01 00:00 Nowhere/City'"),
    ("c_interval", "'1 year 1 year'"), ("c_interval", "'2147483648 days'"),
    ("c_interval", "'P1Q'"), ("c_json", "'[1,2'"), ("c_json", "'{\"a\":1,}'"),
    ("c_jsonb", "'{\"a\" 1}'"), ("c_jsonb", "'\"\\uD800\"'"), ("c_bytea", "'a\\'"),
    ("c_bytea", "'\\8'"), ("c_int_arr", "'{{1},{2,3}}'"), ("c_int_arr", "'{1}}'"),
    ("c_int_arr", "'[2:1]={1}'"), ("c_text_arr", "'{\"a}'"), ("c_date_arr", "'{x}'"),
    ("c_vc_arr", "'{abcdefg}'"), ("c_uuid_arr", "'{1}'"),
]  # fmt: skip


def _bad_text_cases() -> list[Any]:
    out = [
        pytest.param(mode, t, literal, id=f"{SHORT[mode]}-{t.col}-{k}")
        for mode in MODES
        for t in TYPES
        for k, (literal, _) in enumerate(t.bad)
    ]
    for mode in MODES:
        for k, (col, literal) in enumerate(BAD_TEXTS):
            out.append(pytest.param(mode, TYPE_BY_COL[col], literal, id=f"{SHORT[mode]}-x{k}"))
    return out


@pytest.mark.parametrize(("mode", "case", "literal"), _bad_text_cases())
def test_bad_input_error_texts_are_postgresqls(
    pair: Pair, mode: str, case: TypeCase, literal: str
) -> None:
    """The message, DETAIL and HINT are PostgreSQL's too (E9, fixed)."""
    table = f"m_{SHORT[mode]}"
    row = -(30000 + crc((case.col, literal)) % 9999)
    stmts: list[tuple[str, Any, dict[str, Any]]] = [
        (f"INSERT INTO {table} (id, {case.col}) VALUES ({row}, {literal})", None, {}),
        (f"UPDATE {table} SET {case.col} = {literal} WHERE id = 1000", None, {}),
    ]
    if literal.startswith("'"):  # the same text as a text-format parameter
        text = literal[1:-1].replace("''", "'")
        stmts.append((f"INSERT INTO {table} (id, {case.col}) VALUES ({row}, %t)", [text], {}))
    pair.sweep(stmts)
    pair.same(f"SELECT count(*) FROM {table} WHERE id = {row}")


@pytest.mark.usefixtures("shop")
@pytest.mark.xfail(strict=True, reason=f"E11: {BUGS}")
def test_not_null_detail_shows_the_plaintext_row(pair: Pair) -> None:
    pair.same("UPDATE customers SET email = NULL WHERE id = 1")


@pytest.mark.usefixtures("shop")
def test_not_null_detail_restores_what_it_can_and_hides_the_rest(pair: Pair) -> None:
    """E11, the part that is fixed: the values this statement sent, and short randomized
    values (restored from the part PostgreSQL shows), read as on a plain database; the
    stored values PostgreSQL cut short that cannot be restored read HIDDEN, never as a
    ciphertext prefix."""
    a, b = pair.run("UPDATE customers SET email = NULL WHERE id = 1")
    assert a.error is not None and b.error is not None
    assert a.error[1] == "Failing row contains (1, null, Ann, 1990-05-05, 12.50, vip, a)."
    assert b.error[1] == a.error[1].replace("12.50", HIDDEN)  # score: numeric, too long
    pair.sweep([
        ("INSERT INTO customers (id, email, name, born, score, tier, note) VALUES "
         "(70, NULL, 'a name much longer than sixty-four characters, all of it sent here', "
         "'2001-02-03', 7.25, 'x', 'n')", None, {}),
        ("INSERT INTO customers (id, email, name, score) VALUES (71, NULL, %s, %s)",
         ["Zed", Decimal("1.5")], {}),
        ("INSERT INTO customers (id, email, name) VALUES (72, NULL, %s)", ["xé" * 40], {}),
    ])  # fmt: skip


def test_ciphertext_literals_without_standard_strings(pair: Pair) -> None:
    """Ciphertext literals are E'' strings: standard_conforming_strings = off (E18) reads them
    as the same bytes."""
    pair.sweep([
        ("SET standard_conforming_strings = off", None, {}),
        ("INSERT INTO m_det (id, c_text) VALUES (-78, 'scs')", None, {}),
        ("SELECT c_text FROM m_det WHERE id = -78", None, {}),
        ("SELECT id FROM m_det WHERE c_text = 'scs'", None, {}),
        ("RESET standard_conforming_strings", None, {}),
        ("DELETE FROM m_det WHERE id = -78", None, {}),
    ])  # fmt: skip


def _position(conn: Any, sql: str) -> tuple[str | None, int | None]:
    """SQLSTATE and error position (1-based, None: none) of a failing statement."""
    try:
        conn.execute(sql.encode(), prepare=False)
    except psycopg.Error as exc:
        pos = exc.diag.statement_position
        return exc.sqlstate, None if pos is None else int(pos)
    raise AssertionError(f"did not fail: {sql}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO {t} (id, c_int2) VALUES (-41, '40000')",  # input error: at the literal
        "INSERT INTO {t} (id, c_date) VALUES (-42, 'notadate')",
        "UPDATE {t} SET c_bool = 'maybe' WHERE id = -43",
        "INSERT INTO {t} (id, c_bool) VALUES (-44, 1)",  # 42804: at the literal
        "INSERT INTO {t} (id, c_int2) VALUES (-45, 40000)",  # cast at execution: none
        "INSERT INTO {t} (id, c_varchar) VALUES (-46, 'thirteen char')",  # typmod: none
        "INSERT INTO {t} (id, c_numeric) VALUES (-47, 1e10)",
        "SELECT 1;\nSELECT id FROM {t} WHERE c_uuid = 'not-a-uuid'",  # second statement
        "SELECT id FROM {t} WHERE c_json = '[1]'",  # 42883: at the operator
        "INSERT INTO {t} (id, c_int_arr) VALUES (-48, ARRAY[1, 'x'])",  # at the element
        "INSERT INTO {t} (id, c_int_arr) VALUES (-49, ARRAY['1'])",  # 42804: at ARRAY
        "INSERT INTO {t} (id, c_int_arr) VALUES (-50, ARRAY[[1.5], [NULL]])",  # 42846: at [NULL]
        "INSERT INTO {t} (id, c_bool_arr) VALUES (-51, ARRAY[true, 1])",  # 42804: at 1
        "INSERT INTO {t} (id, c_int_arr) VALUES (-52, ARRAY[[1], [2, 3]])",  # 2202E: none
    ],
)
def test_bad_literal_errors_point_where_postgresql_does(pair: Pair, mode: str, sql: str) -> None:
    """psql shows `LINE 1: ... ^` from the error position: the same as PostgreSQL's."""
    if "WHERE c_" in sql and mode != MODES[0]:
        pytest.skip("equality on a randomized column is refused (0A000) before any value")
    text = sql.format(t=f"m_{SHORT[mode]}")
    assert _position(pair.b, text) == _position(pair.a, text)


ARRAY_VALUES = [
    ("c_int_arr", "ARRAY[1, 2, NULL]"),
    ("c_int_arr", "ARRAY[[1, 2], [3, -4]]"),
    ("c_int_arr", "ARRAY[ARRAY[5], ARRAY[6]]"),
    ("c_int_arr", "ARRAY[1.5, 2]"),  # numeric[] -> integer[]: rounds
    ("c_int_arr", "ARRAY['1']"),  # text[] -> integer[]: 42804
    ("c_int_arr", "ARRAY[NULL]"),
    ("c_int_arr", "ARRAY[[1], [2, 3]]"),  # 2202E
    ("c_int_arr", "ARRAY[3000000000]"),  # bigint[] -> integer[]: 22003
    ("c_int_arr", "ARRAY[1, '2']"),
    ("c_int_arr", "ARRAY[[1, '2'], [3.5, 4]]"),  # int4[] and numeric[]: numeric[]
    ("c_num_arr", "ARRAY[[1.555], [NULL]]"),  # numeric[] and text[]: 42846
    ("c_text_arr", "ARRAY['', NULL, '{}']"),
    ("c_text_arr", "ARRAY['a', NULL, 'b \"c\" \\ d', E'\\t', $$x$$]"),
    ("c_text_arr", "ARRAY[1, 2]"),  # integer[] -> text[]: assignment cast
    ("c_vc_arr", "ARRAY['ab', 'abcd']"),
    ("c_vc_arr", "ARRAY['abcde']"),  # 22001
    ("c_num_arr", "ARRAY[1.555, -2, NULL]"),
    ("c_bool_arr", "ARRAY[true, false, NULL]"),
    ("c_bool_arr", "ARRAY[true, 1]"),  # 42804: boolean and integer cannot be matched
    ("c_date_arr", "ARRAY['2020-01-01', 'infinity']"),  # text[] -> date[]: 42804
    ("c_uuid_arr", "ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']"),
]


@pytest.mark.parametrize("mode", MODES)
def test_array_constructors_of_literals(pair: Pair, mode: str) -> None:
    """`ARRAY[...]` of literals stored, read back and compared as PostgreSQL does (E19)."""
    table = f"m_{SHORT[mode]}"
    stmts: list[tuple[str, Any, dict[str, Any]]] = []
    for k, (col, value) in enumerate(ARRAY_VALUES):
        row = -(50000 + k)
        stmts.append((f"INSERT INTO {table} (id, {col}) VALUES ({row}, {value}) RETURNING {col}",
                      None, {}))  # fmt: skip
        stmts.append((f"UPDATE {table} SET {col} = {value} WHERE id = {row} RETURNING {col}",
                      None, {"binary": True}))  # fmt: skip
        if mode == MODES[0]:
            stmts.append((f"SELECT id FROM {table} WHERE {col} = {value} AND id = {row}", None, {}))
    pair.sweep(stmts)
