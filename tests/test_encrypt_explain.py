"""EXPLAIN through the encrypting proxy, differentially (E16, D5).

The server plans ciphertext: its EXPLAIN shows `'\\x01…'::bytea` constants where a
plain PostgreSQL shows `'x'::text`, and the rewriter's opaque aliases where it shows
the client's. Each statement runs on a plain database and through the proxy; the
EXPLAIN rows must be identical (COSTS OFF; no Query Identifier, which only the
proxy's upstream computes). One divergence is by design and pinned separately: a
varchar column is compared as bytea, so a plain server's `(code)::text` cast is
missing; its constant is still PostgreSQL's `'x'::text`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from encrypt_support import Pair

if TYPE_CHECKING:
    from encrypt_env import Env

pytest_plugins = ("encrypt_env",)

_SETUP = (
    "CREATE TABLE exp_people (id int PRIMARY KEY, email text UNIQUE, name text, born date, "
    "score numeric(6,2), n integer, big bigint, ok boolean, at timestamptz, ref uuid, "
    "code varchar(10), amt numeric, raw bytea)",
    "CREATE TABLE exp_visits (id int PRIMARY KEY, email text REFERENCES exp_people (email), "
    "at timestamptz, qty int)",
    "INSERT INTO exp_people VALUES (1, 'ann@x', 'Ann', '1990-05-05', 1.5, 7, 3000000000, true, "
    "'2024-01-01 10:00+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'c1', 2.5, '\\x00'), "
    "(2, 'bob@x', NULL, NULL, NULL, -7, 42, false, NULL, NULL, 'c2', NULL, NULL)",
    "INSERT INTO exp_visits VALUES (10, 'ann@x', '2024-02-02 00:00+00', 1), (11, 'bob@x', NULL, 2)",
)
_ID = re.compile(r"Query Identifier|Query-Identifier")
_CIPHERTEXT = re.compile(r"\\x01[0-9a-f]{40,}")  # an envelope, as bytea prints it


@pytest.fixture(scope="module")
def people(env: Env) -> None:
    pair = env.pair()
    try:
        pair.setup(*_SETUP)
    finally:
        pair.close()


@pytest.fixture
def ex(pair: Pair, people: None) -> Iterator[Pair]:
    for conn in (pair.a, pair.b):
        conn.execute("SET compute_query_id = off")  # only the proxy's upstream has it on
        # Ciphertext is wider than plaintext: keep the planner's choices width-blind.
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SET enable_indexscan = off")
    yield pair


def _same(pair: Pair, sql: str, *params: object, **kw: object) -> list[str]:
    """Run on both sides, assert identical EXPLAIN output, return the proxy's lines."""
    seen = pair.same(sql, list(params) if params else None, **kw)
    lines = [v for (v, *_) in seen.values() if v is not None]
    text = "\n".join(lines)
    assert not _CIPHERTEXT.search(text), text
    assert not _ID.search(text), text
    if "FORMAT JSON" in sql:
        json.loads(text)
    return lines


# -- constants compared with encrypted columns: PostgreSQL's spelling per type --------

COMPARED = [
    ("email = 'ann@x'", "(email = 'ann@x'::text)"),
    ("email = 'it''s'", "(email = 'it''s'::text)"),
    ("n = 7", "(n = 7)"),
    ("n = -7", "(n = '-7'::integer)"),
    ("n = '7'", "(n = 7)"),
    ("big = 42", "(big = 42)"),  # bigint = integer: the constant stays an integer
    ("big = 3000000000", "(big = '3000000000'::bigint)"),
    ("big = '42'", "(big = '42'::bigint)"),
    ("amt = 2.5", "(amt = 2.5)"),
    ("amt = 25", "(amt = '25'::numeric)"),
    ("born = '1990-05-05'", "(born = '1990-05-05'::date)"),
    ("born = 'May 5, 1990'", "(born = '1990-05-05'::date)"),
    ("at = '2024-01-01 10:00+02'", "(at = '2024-01-01 08:00:00+00'::timestamp with time zone)"),
    ("ref = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
     "(ref = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid)"),
    ("ok IN (true, false)", "(ok = ANY ('{t,f}'::boolean[]))"),
    ("email IN ('ann@x', 'a b', '', 'NULL')",
     "(email = ANY ('{ann@x,\"a b\",\"\",\"NULL\"}'::text[]))"),
    ("n IN (1, 2)", "(n = ANY ('{1,2}'::integer[]))"),
    ("big IN (1, 2)", "(big = ANY ('{1,2}'::bigint[]))"),
    ("n IN (1, 3000000000)", None),  # no integer equals 3000000000: not decryptable, as is
    ("born IN ('2024-01-01', '1990-05-05')", "(born = ANY ('{2024-01-01,1990-05-05}'::date[]))"),
]  # fmt: skip


@pytest.mark.parametrize(("cond", "shown"), COMPARED, ids=[c for c, _ in COMPARED])
def test_compared_constant_as_postgres_prints_it(ex: Pair, cond: str, shown: str | None) -> None:
    sql = f"EXPLAIN (COSTS OFF) SELECT id FROM exp_people WHERE {cond}"
    if shown is None:  # stays ciphertext: an impossible match is sent as '\x00'::bytea
        (_, line) = [v for (v, *_) in ex.b.execute(sql).fetchall()]
        assert '"\\\\x00"' in line, line
        return
    lines = _same(ex, sql)
    assert lines[-1].split(": ", 1)[1] == shown  # Filter, Index Cond, Recheck Cond


def test_varchar_constant_is_text(ex: Pair) -> None:
    """By design the column is compared as bytea (no `(code)::text`); the constant is PG's."""
    sql = "EXPLAIN (COSTS OFF) SELECT id FROM exp_people WHERE code IN ('c1', 'c 2')"
    (plain,) = ex.a.execute(sql.replace("IN ('c1', 'c 2')", "= 'c1'")).fetchall()[1:]
    assert plain[0] == "  Filter: ((code)::text = 'c1'::text)"
    lines = [v for (v,) in ex.b.execute(sql).fetchall()]
    assert lines[1] == "  Filter: (code = ANY ('{c1,\"c 2\"}'::text[]))"


# -- stored values (INSERT/UPDATE, both modes), typmods applied -----------------------


@pytest.mark.parametrize(
    ("assign", "output"),
    [
        ("email = 'new@x'", "'new@x'::text"),  # deterministic
        ("name = 'Zoë'", "'Zoë'::text"),  # randomized
        ("score = 2", "2.00::numeric(6,2)"),  # randomized, the typmod applied
        ("amt = 2", "'2'::numeric"),
        ("n = 5", "5"),
        ("big = 5", "'5'::bigint"),
        ("ok = 'yes'", "true"),
        ("born = '2000-02-29'", "'2000-02-29'::date"),
        ("code = 'abc'", "'abc'::character varying(10)"),
    ],
)
def test_stored_constant_as_postgres_prints_it(ex: Pair, assign: str, output: str) -> None:
    lines = _same(ex, f"EXPLAIN (COSTS OFF, VERBOSE) UPDATE exp_people SET {assign} WHERE id = 1")
    assert f"Output: {output}, ctid" in "\n".join(lines)


def test_insert_values_verbose(ex: Pair) -> None:
    lines = _same(
        ex,
        "EXPLAIN (COSTS OFF, VERBOSE) INSERT INTO exp_visits (id, email, at, qty) "
        "VALUES (99, 'ann@x', '2024-03-03 12:00+00', -3)",
    )
    assert "'2024-03-03 12:00:00+00'::timestamp with time zone" in "\n".join(lines)


# -- aliases, joins, CTEs, formats ----------------------------------------------------

_JOIN = (
    "SELECT p.name, v.qty FROM exp_people p JOIN exp_visits v ON v.email = p.email "
    "WHERE p.email IN ('ann@x', 'bob@x') AND v.qty = 1 AND p.born = '1990-05-05' "
    "ORDER BY p.id"
)
_CTE = (
    "WITH fans AS MATERIALIZED (SELECT email AS mail, n FROM exp_people WHERE n = 7) "
    "SELECT f.mail, f2.n FROM fans f JOIN fans f2 ON f2.mail = f.mail WHERE f.mail = 'ann@x'"
)
_SUB = (
    "SELECT x.e FROM (SELECT email AS e, big FROM exp_people OFFSET 0) x "
    "WHERE x.big = 42 AND x.e <> 'x.e'"
)


@pytest.mark.parametrize("query", [_JOIN, _CTE, _SUB], ids=["join", "cte", "subquery"])
@pytest.mark.parametrize(
    "options", ["", "VERBOSE", "VERBOSE, FORMAT JSON", "FORMAT YAML", "VERBOSE, FORMAT XML"]
)
def test_aliases_and_constants(ex: Pair, options: str, query: str) -> None:
    opts = f"COSTS OFF, {options}" if options else "COSTS OFF"
    lines = _same(ex, f"EXPLAIN ({opts}) {query}")
    assert not re.search(r"(?<![\w.])a[0-9]+(?![\w(])", "\n".join(lines))


def test_analyze_and_protocols(ex: Pair) -> None:
    sql = f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {_JOIN}"
    _same(ex, sql)
    _same(ex, f"EXPLAIN (COSTS OFF) {_CTE}", prepare=True)
    _same(ex, f"EXPLAIN (COSTS OFF, FORMAT JSON) {_JOIN}", binary=True)
    lines = _same(ex, "EXPLAIN (COSTS OFF) SELECT p.id FROM exp_people p WHERE p.email = %s", "x")
    assert lines[-1] == "  Filter: (email = 'x'::text)"


def test_what_does_not_decrypt_stays(ex: Pair) -> None:
    """A bytea constant that is no ciphertext of the statement's columns is left alone."""
    lines = _same(
        ex,
        "EXPLAIN (COSTS OFF) SELECT id FROM exp_people "
        "WHERE raw = '\\x0144000000deadbeef' AND email = 'ann@x'",
    )
    assert "raw = '\\x0144000000deadbeef'::bytea" in lines[-1]


def test_explain_execute_of_a_prepared_statement(ex: Pair) -> None:
    """EXPLAIN EXECUTE: aliases and ciphertext constants of the PREPARE's plan (D10)."""
    for conn in (ex.a, ex.b):
        conn.execute("DEALLOCATE ALL")
    ex.same(f"PREPARE visits_of AS {_JOIN}")
    lines = _same(ex, "EXPLAIN (COSTS OFF, VERBOSE) EXECUTE visits_of")
    assert any("ann@x" in line for line in lines), lines
    _same(ex, "EXPLAIN (COSTS OFF, FORMAT JSON) EXECUTE visits_of", prepare=True)
    ex.same("DEALLOCATE visits_of")
    ex.same(
        "PREPARE by_id (int) AS SELECT p.email FROM exp_people p "
        "WHERE p.id > $1 AND p.email = 'ann@x'"
    )
    lines = _same(ex, "EXPLAIN (COSTS OFF) EXECUTE by_id (0)")
    assert "(email = 'ann@x'::text)" in lines[-1], lines
    ex.same("DEALLOCATE by_id")
