"""Acceptance tests of transparent column encryption through the real proxy (issue 4).

Differential: every statement runs on a plain database (directly on `pg`, plain
types) and on a cloaked one whose columns the proxy encrypts per its `[encrypt]`
config (tests/encrypt_env.py); column names, type OIDs/typmods, raw field bytes in
text and binary format, command tags, SQLSTATEs and error texts must be identical.
Covered: every supported type in both modes (literals, text/binary parameters,
prepared statements, UPDATE, RETURNING, NULL, equality/IN/GROUP BY/DISTINCT on
deterministic columns), bad input (typmod, range, syntax), joins on shared keys
and foreign keys, views/CTEs/set operations, ON CONFLICT, constraint errors,
session settings, and every documented refusal (0A000 naming the column and mode,
database unchanged). tests/test_encrypt_proxy_edges.py pins the known divergences,
tests/test_encrypt_proxy_clients.py covers real clients, leakage and tampering.

Known bugs are xfail(strict=True) tests with the bug id (docs/known-issues.md).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from encrypt_support import (
    BUGS,
    DET,
    FIXED,
    MODES,
    RND,
    SHORT,
    TYPES,
    Pair,
    TypeCase,
    config_toml,
    observe,
)

if TYPE_CHECKING:
    from pathlib import Path

    from encrypt_env import Env
    from helpers import ProxyLauncher

pytest_plugins = ("encrypt_env",)  # fixtures: env, pair, shop

# -- 1. every type, both modes: storing, reading, comparing -------------------------------

NONCANONICAL = {  # literals that compare differently from how they are stored (see E3)
    "c_varchar": ("'abcdefghijkl   '", "5", "1.50"),
    "c_numeric": ("123456789.1234", "0.0005"),
    "c_real": ("3.4e38", "0.1"),
    "c_num_arr": ("'{1.5,NULL,-2.345}'",),
}


def _type_cases() -> list[Any]:
    return [pytest.param(mode, t, id=f"{SHORT[mode]}-{t.col}") for mode in MODES for t in TYPES]


@pytest.mark.parametrize(("mode", "case"), _type_cases())
def test_type_round_trip(pair: Pair, mode: str, case: TypeCase) -> None:
    """INSERT literals and parameters (text/binary), UPDATE, RETURNING, NULL, read back."""
    table = f"m_{SHORT[mode]}"
    col = case.col
    base = 1000 * (TYPES.index(case) + 1)
    rng = f"id BETWEEN {base} AND {base + 999}"
    stmts: list[tuple[str, Any, dict[str, Any]]] = []
    for k, lit in enumerate(case.literals):
        stmts.append((f"INSERT INTO {table} (id, {col}) VALUES ({base + k}, {lit})", None, {}))
    for k, value in enumerate(case.params):
        for j, (fmt, prepare) in enumerate((("%t", False), ("%b", False), ("%s", True))):
            if fmt != "%t" and not case.binary_params:
                continue
            sql = f"INSERT INTO {table} (id, {col}) VALUES (%s, {fmt})"
            stmts.append((sql, [base + 100 + 10 * k + j, value], {"prepare": prepare}))
    stmts += [
        (f"INSERT INTO {table} (id, {col}) VALUES ({base + 300}, NULL)", None, {}),
        (f"INSERT INTO {table} (id, {col}) VALUES (%s, %s)", [base + 301, None], {}),
        (
            f"INSERT INTO {table} (id, {col}) VALUES ({base + 400}, {case.literals[0]}), "
            f"({base + 401}, NULL) RETURNING {col}, id",
            None,
            {"binary": True},
        ),
        (
            f"INSERT INTO {table} (id, {col}) VALUES (%s, %s) RETURNING {col}",
            [base + 402, case.params[0]],
            {},
        ),
        (
            f"UPDATE {table} SET {col} = {case.literals[-1]} WHERE id = {base} RETURNING id, {col}",
            None,
            {},
        ),
        (f"UPDATE {table} SET {col} = %s WHERE id = {base + 1}", [case.params[-1]], {}),
        (
            f"UPDATE {table} SET {col} = NULL WHERE id = {base + 401} RETURNING {col}",
            None,
            {"binary": True},
        ),
        (f"SELECT * FROM {table} WHERE id = {base}", None, {}),
        (f"SELECT * FROM {table} WHERE id = {base}", None, {"binary": True}),
        (f"SELECT count({col}), count(*) FROM {table} WHERE {rng}", None, {}),
        (f"SELECT id FROM {table} WHERE {col} IS NULL AND {rng} ORDER BY id", None, {}),
        (f"SELECT id FROM {table} WHERE {col} IS NOT NULL AND {rng} ORDER BY id", None, {}),
    ]
    if mode == DET and case.equality:
        canonical = [lit for lit in case.literals if lit not in NONCANONICAL.get(col, ())]
        for lit in canonical:
            stmts.append(
                (f"SELECT id FROM {table} WHERE {col} = {lit} AND {rng} ORDER BY id", None, {})
            )
        for value in case.params:
            for fmt in ("%t", "%b") if case.binary_params else ("%t",):
                stmts.append(
                    (
                        f"SELECT id, {col} FROM {table} WHERE {col} = {fmt} AND {rng} ORDER BY id",
                        [value],
                        {"binary": fmt == "%b"},
                    )
                )
        stmts += [
            (
                f"SELECT id FROM {table} WHERE {col} IN ({', '.join(canonical[:3])}) AND {rng} "
                "ORDER BY id",
                None,
                {},
            ),
            (
                f"SELECT id FROM {table} WHERE {col} <> {canonical[0]} AND {rng} ORDER BY id",
                None,
                {},
            ),
            (
                f"SELECT id FROM {table} WHERE {col} IS NOT DISTINCT FROM %s AND {rng} ORDER BY id",
                [case.params[0]],
                {},
            ),
            (
                f"SELECT {col}, count(*) FROM {table} WHERE {rng} GROUP BY {col}",
                None,
                {"sort": True},
            ),
            (
                f"SELECT DISTINCT {col} FROM {table} WHERE {rng}",
                None,
                {"sort": True, "binary": True},
            ),
            (f"SELECT count(DISTINCT {col}) FROM {table} WHERE {rng}", None, {}),
            (f"DELETE FROM {table} WHERE {col} = %s AND {rng}", [case.params[0]], {}),
            (
                f"DELETE FROM {table} WHERE {col} = {canonical[-1]} AND {rng} RETURNING id, {col}",
                None,
                {},
            ),
        ]
    else:
        stmts.append((f"DELETE FROM {table} WHERE id = {base + 100} RETURNING {col}", None, {}))
    stmts += [
        (f"SELECT id, {col} FROM {table} WHERE {rng} ORDER BY id", None, {}),
        (f"SELECT id, {col} FROM {table} WHERE {rng} ORDER BY id", None, {"binary": True}),
    ]
    assert pair.sweep(stmts) >= 15


# Bad inputs the proxy gets wrong today: (column, literal) -> bug id in BUGS.
KNOWN_BAD = {
    ("c_text", "E'\\xe9'"): "E7",  # 42601 instead of 22021
    ("c_int2", "true"): "E5",  # 22P02 instead of 42804
    ("c_numeric", "true"): "E5",
    ("c_bool", "1"): "E5",  # stored as true instead of 42804
    ("c_date", "20200101"): "E5",  # stored instead of 42804
}


def _bad_cases(*, marks: bool = True) -> list[Any]:
    out = []
    for mode in MODES:
        for t in TYPES:
            for k, (lit, state) in enumerate(t.bad):
                bug = KNOWN_BAD.get((t.col, lit))
                mark = (
                    [pytest.mark.xfail(strict=True, reason=f"{bug}: {BUGS}")]
                    if bug and bug not in FIXED
                    else []
                )
                out.append(
                    pytest.param(
                        mode,
                        t,
                        lit,
                        state,
                        id=f"{SHORT[mode]}-{t.col}-{k}",
                        marks=mark if marks else (),
                    )
                )
    return out


def _bad_statements(
    mode: str, case: TypeCase, literal: str
) -> list[tuple[str, Any, dict[str, Any]]]:
    table = f"m_{SHORT[mode]}"
    row = -(TYPES.index(case) * 100 + case.bad.index(next(b for b in case.bad if b[0] == literal)))
    stmts: list[tuple[str, Any, dict[str, Any]]] = [
        (f"INSERT INTO {table} (id, {case.col}) VALUES ({row - 1}, {literal})", None, {}),
        (f"UPDATE {table} SET {case.col} = {literal} WHERE id = 1000", None, {}),
    ]
    if literal.startswith("'"):  # the same text as a text-format parameter
        text = literal[1:-1].replace("''", "'")
        stmts.append((f"INSERT INTO {table} (id, {case.col}) VALUES ({row - 2}, %t)", [text], {}))
    return stmts


@pytest.mark.parametrize(("mode", "case", "literal", "sqlstate"), _bad_cases())
def test_bad_input_is_rejected_like_postgresql(
    pair: Pair, mode: str, case: TypeCase, literal: str, sqlstate: str
) -> None:
    """Typmod, range and syntax errors: PostgreSQL's SQLSTATE, nothing stored."""
    stmts = _bad_statements(mode, case, literal)
    assert pair.same(stmts[0][0], texts=False).sqlstate == sqlstate
    pair.sweep((sql, params, {**kw, "texts": False}) for sql, params, kw in stmts[1:])
    row = int(stmts[0][0].split("VALUES (")[1].split(",")[0]) + 1
    pair.same(f"SELECT count(*) FROM m_{SHORT[mode]} WHERE id IN ({row - 1}, {row - 2})")


QUERIES = [
    # equality / IN / NULL on deterministic columns, text and binary
    "SELECT id, name FROM customers WHERE email = 'ann@example.com'",
    "SELECT id FROM customers WHERE email IN ('ann@example.com', 'cy@example.com', 'nobody') "
    "ORDER BY id",
    "SELECT id FROM customers WHERE email NOT IN ('ann@example.com') ORDER BY id",
    "SELECT id FROM customers WHERE born IS NULL",
    "SELECT id FROM customers WHERE born IS NOT NULL AND tier = 'vip' ORDER BY id",
    "SELECT id FROM customers WHERE tier IS DISTINCT FROM 'vip' ORDER BY id",
    "SELECT id FROM customers WHERE (email, tier) = ('ann@example.com', 'vip')",
    "SELECT id FROM customers WHERE name IS NULL OR score IS NULL ORDER BY id",
    # joins on one key: FK-joined scope, key group, USING
    "SELECT o.id, c.name, o.amount FROM orders o JOIN customers c ON c.email = o.email "
    "ORDER BY o.id",
    "SELECT c.id, o.id FROM customers c LEFT JOIN orders o ON o.email = c.email ORDER BY 1, 2",
    "SELECT c.id, k.phone FROM customers c JOIN contacts k USING (email) ORDER BY c.id",
    "SELECT email, c.id, k.id FROM customers c FULL JOIN contacts k USING (email) ORDER BY 2, 3",
    "SELECT k.id FROM contacts k WHERE k.email IN (SELECT email FROM customers) ORDER BY 1",
    "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.email = c.email) "
    "ORDER BY 1",
    "SELECT o.id FROM orders o, contacts k WHERE o.email = k.email ORDER BY 1",
    # GROUP BY / DISTINCT / count
    "SELECT tier, count(*), count(name), count(DISTINCT born) FROM customers GROUP BY tier",
    "SELECT DISTINCT born FROM customers",
    "SELECT email, count(*) FROM orders GROUP BY email HAVING count(*) > 1",
    "SELECT count(DISTINCT email), count(email), count(amount) FROM orders",
    "SELECT phone, count(*) FROM contacts GROUP BY 1",
    "SELECT DISTINCT ON (tier) tier FROM customers",
    # subqueries, CTEs, UNION, scalar subqueries
    "SELECT * FROM (SELECT email AS e, score FROM customers) s WHERE s.e = 'bob@example.com'",
    "WITH v AS (SELECT id, email, name FROM customers WHERE born = '1990-05-05') SELECT * FROM v "
    "ORDER BY id",
    "WITH o AS (SELECT email, amount FROM orders WHERE id <> 11) SELECT c.id, o.amount "
    "FROM customers c JOIN o ON o.email = c.email ORDER BY 1, o.amount IS NULL",
    "SELECT email FROM customers UNION SELECT email FROM contacts",
    "SELECT email FROM customers INTERSECT SELECT email FROM orders",
    "SELECT email FROM contacts EXCEPT SELECT email FROM customers",
    "SELECT name FROM customers UNION ALL SELECT name FROM customers",
    "SELECT (SELECT email FROM customers WHERE id = 2) AS e, (SELECT count(*) FROM orders)",
    "SELECT id, (SELECT name FROM customers c WHERE c.email = o.email) FROM orders o ORDER BY 1",
    "SELECT * FROM customers ORDER BY id",
    "SELECT * FROM orders ORDER BY id LIMIT 2 OFFSET 1",
]


@pytest.mark.usefixtures("shop")
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_queries(pair: Pair, binary: bool) -> None:
    """Equality, IN, NULL tests, joins on a shared key, GROUP BY/DISTINCT, subqueries,
    CTEs and set operations over encrypted columns read as on a plain database."""

    def unordered(sql: str) -> bool:
        return "ORDER BY" not in sql

    n = pair.sweep((q, None, {"binary": binary, "sort": unordered(q)}) for q in QUERIES)
    assert n == len(QUERIES)
    pair.sweep([
        ("SELECT id FROM customers WHERE email = %s", ["cy@example.com"], {"binary": binary}),
        ("SELECT id FROM customers WHERE born = %s OR tier = %s ORDER BY id",
         [dt.date(1990, 5, 5), "std"], {"binary": binary}),
        ("SELECT o.id FROM orders o JOIN customers c ON c.email = o.email WHERE c.email = %s "
         "ORDER BY 1", ["ann@example.com"], {"binary": binary, "prepare": True}),
    ])  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_queries_without_the_decrypt_memo(
    env: Env, launcher: ProxyLauncher, tmp_path: Path
) -> None:
    """`decrypt_cache = 0` (no plaintext kept between rows) reads the same as the memo does,
    also the second time round, when the memoizing proxy answers repeats from memory."""
    from encrypt_env import RULES

    config = tmp_path / "nomemo.toml"
    config.write_text("decrypt_cache = 0\n" + config_toml(RULES))  # before [encrypt]
    nomemo = launcher.start(
        env.upstream.upstream_url(), "--config", str(config),
        env={"PGCLOAK_MASTER_KEY": env.master_key},
    )  # fmt: skip
    memo = psycopg.connect(env.proxy.dsn(env.enc), autocommit=True)
    p = Pair(memo, psycopg.connect(nomemo.dsn(env.enc), autocommit=True))
    try:
        for binary in (False, True, False):
            p.sweep((q, None, {"binary": binary, "sort": True}) for q in QUERIES)
    finally:
        p.close()


@pytest.mark.usefixtures("shop")
def test_views_and_derived_tables(pair: Pair) -> None:
    """Views (with a filter on an encrypted column), CREATE TABLE AS, materialized views."""
    pair.setup(
        "CREATE VIEW vip AS SELECT id, email, name, born FROM customers WHERE tier = 'vip'",
        "CREATE VIEW spend AS SELECT c.email, o.amount FROM customers c JOIN orders o "
        "ON o.email = c.email",
        "CREATE TABLE cust_copy AS SELECT id, email, name, score FROM customers WHERE id < 4",
        "CREATE MATERIALIZED VIEW mv AS SELECT email, born FROM customers",
    )
    pair.sweep([
        ("SELECT * FROM vip ORDER BY id", None, {}),
        ("SELECT * FROM vip ORDER BY id", None, {"binary": True}),
        ("SELECT name FROM vip WHERE email = %s", ["cy@example.com"], {}),
        ("SELECT email, count(amount) FROM spend GROUP BY email", None, {"sort": True}),
        ("SELECT * FROM cust_copy ORDER BY id", None, {}),
        ("SELECT c.id FROM cust_copy c JOIN customers USING (email) ORDER BY 1", None, {}),
        ("INSERT INTO cust_copy (id, email, name) VALUES (9, 'new@x', 'New') RETURNING *", None,
         {}),
        ("SELECT born FROM mv WHERE email = 'ann@example.com'", None, {}),
        ("REFRESH MATERIALIZED VIEW mv", None, {}),
        ("SELECT count(*) FROM mv WHERE born = '1990-05-05'", None, {}),
    ])  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_dml_tags_returning_and_on_conflict(pair: Pair) -> None:
    """UPDATE/DELETE by deterministic equality, RETURNING, ON CONFLICT on a unique
    deterministic column, transactions: same tags, same rows."""
    pair.setup(
        "CREATE TABLE members (id int PRIMARY KEY, email varchar(40) UNIQUE, name text, "
        "visits int)",
        "INSERT INTO members VALUES (1, 'm1@x', 'One', 0), (2, 'm2@x', NULL, 0)",
    )
    stmts = [
        "INSERT INTO members VALUES (3, 'm1@x', 'Dup', 0) ON CONFLICT DO NOTHING",
        "INSERT INTO members VALUES (3, 'm1@x', 'Dup', 0) ON CONFLICT (email) DO NOTHING "
        "RETURNING id",
        "INSERT INTO members VALUES (4, 'm1@x', 'Again', 0) ON CONFLICT (email) DO UPDATE SET "
        "name = EXCLUDED.name, visits = members.visits + 1 RETURNING id, email, name, visits",
        "INSERT INTO members VALUES (5, 'm5@x', 'Five', 0) ON CONFLICT (email) DO UPDATE SET "
        "name = 'never' RETURNING *",
        "INSERT INTO members AS m VALUES (6, 'm2@x', 'Two', 0) ON CONFLICT ON CONSTRAINT "
        "members_email_key DO UPDATE SET name = EXCLUDED.name WHERE m.email = 'm2@x' RETURNING m.*",
        "UPDATE members SET name = 'Uno', email = 'one@x' WHERE email = 'm1@x' RETURNING *",
        "UPDATE members SET (name, email) = ('Dos', 'two@x') WHERE email = 'm2@x'",
        "UPDATE members SET name = NULL WHERE id = 5 RETURNING id",
        "UPDATE members SET visits = visits + 1 WHERE email IN ('one@x', 'two@x')",
        "DELETE FROM members WHERE email = 'm5@x' RETURNING email, name",
        "DELETE FROM members WHERE email = 'absent'",
        "SELECT * FROM members ORDER BY id",
    ]
    pair.sweep((s, None, {}) for s in stmts)
    pair.sweep([
        ("INSERT INTO members VALUES (%s, %s, %s, 0) ON CONFLICT (email) DO UPDATE SET "
         "name = EXCLUDED.name RETURNING id, name", [7, "one@x", "Param"], {"binary": True}),
        ("UPDATE members SET name = %s WHERE email = %s", ["P2", "two@x"], {}),
        ("DELETE FROM members WHERE email = %s RETURNING id", ["two@x"], {"binary": True}),
        ("BEGIN", None, {}),
        ("INSERT INTO members VALUES (8, 'tx@x', 'Tx', 0)", None, {}),
        ("SELECT name FROM members WHERE email = 'tx@x'", None, {}),
        ("ROLLBACK", None, {}),
        ("SELECT * FROM members ORDER BY id", None, {"binary": True}),
    ])  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_constraint_violations(pair: Pair) -> None:
    """NOT NULL, FK and typmod errors read like PostgreSQL's; nothing is stored."""
    pair.sweep([
        ("INSERT INTO orders (id, email) VALUES (51, 'nobody@example.com')", None, {}),
        ("INSERT INTO orders (id, email) VALUES (51, %s)", ["nobody@example.com"], {}),
        ("INSERT INTO customers (id, email) VALUES (52, %s)", ["x" * 41], {}),
        ("INSERT INTO customers (id, email, born) VALUES (54, 'bad@x', %s)", ["nodate"], {}),
        ("DELETE FROM customers WHERE email = 'ann@example.com'", None, {}),
        ("SELECT count(*) FROM customers", None, {}),
    ])  # fmt: skip
    # The SQLSTATE and primary text; their DETAILs differ (E9, E11).
    for sql in (
        "INSERT INTO customers (id, name) VALUES (50, 'no email')",
        "UPDATE customers SET email = NULL WHERE id = 1",
        "INSERT INTO customers (id, email, score) VALUES (53, 'big@x', 1000)",
    ):
        a, b = pair.run(sql)
        assert a.sqlstate == b.sqlstate and a.sqlstate is not None, (a, b)
        assert a.error is not None and b.error is not None
        assert (a.error[0], a.error[2]) == (b.error[0], b.error[2])
    pair.same("SELECT count(*) FROM customers")


@pytest.mark.usefixtures("shop")
@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("INSERT INTO customers (id, email) VALUES (60, 'bob@example.com')", None),
        ("INSERT INTO customers (id, email) VALUES (60, %s)", ["bob@example.com"]),
        pytest.param(
            "INSERT INTO customers (id, email) VALUES (60, 'e@x')", None, id="short-value"
        ),
        ("UPDATE customers SET email = 'bob@example.com' WHERE id = 1", None),
        ("INSERT INTO contacts (id) VALUES (20)", None),
    ],
)
def test_unique_violation_detail_shows_the_plaintext_key(pair: Pair, sql: str, params: Any) -> None:
    pair.run("INSERT INTO customers (id, email) VALUES (59, 'e@x')")
    seen = pair.same(sql, params)
    assert seen.sqlstate == "23505"


@pytest.mark.usefixtures("shop")
def test_unique_violation_never_shows_ciphertext(pair: Pair) -> None:
    """Whatever the DETAIL says, it is not the stored ciphertext."""
    a, b = pair.run("INSERT INTO customers (id, email) VALUES (61, 'bob@example.com')")
    assert a.sqlstate == b.sqlstate == "23505"
    assert b.error is not None and a.error is not None
    assert b.error[0] == a.error[0]
    assert "\\x" not in (b.error[1] or ""), b.error


# -- 1c. refusals ---------------------------------------------------------------------------

# (statement, verb in the message, column, mode); all valid SQL on the plain database.
REFUSALS = [
    ("SELECT email FROM customers ORDER BY email", "order by", "email", DET),
    ("SELECT id FROM customers ORDER BY born DESC", "order by", "born", DET),
    ("SELECT id, name FROM customers ORDER BY 2", "order by", "name", RND),
    ("SELECT rank() OVER (ORDER BY born) FROM customers", "order by", "born", DET),
    ("SELECT id FROM customers WHERE born < '2000-01-01'", "compare ranges of", "born", DET),
    ("SELECT id FROM customers WHERE born >= %s", "compare ranges of", "born", DET),
    ("SELECT id FROM customers WHERE score BETWEEN 1 AND 20", "compare ranges of", "score", RND),
    ("SELECT id FROM customers WHERE email > 'b'", "compare ranges of", "email", DET),
    ("SELECT id FROM customers WHERE email LIKE 'ann%%'", "pattern-match", "email", DET),
    ("SELECT id FROM customers WHERE name ILIKE 'a%%'", "pattern-match", "name", RND),
    ("SELECT id FROM customers WHERE email ~ '^a'", "pattern-match", "email", DET),
    ("SELECT score + 1 FROM customers", "do arithmetic on", "score", RND),
    ("SELECT born - 1 FROM customers", "do arithmetic on", "born", DET),
    ("SELECT lower(email) FROM customers", "apply functions to", "email", DET),
    ("SELECT length(name) FROM customers", "apply functions to", "name", RND),
    ("SELECT coalesce(name, 'x') FROM customers", "apply functions to", "name", RND),
    ("SELECT sum(score) FROM customers", "aggregate", "score", RND),
    ("SELECT max(born) FROM customers", "aggregate", "born", DET),
    ("SELECT min(email) FROM customers", "aggregate", "email", DET),
    ("SELECT string_agg(name, ',') FROM customers", "aggregate", "name", RND),
    ("SELECT email::text FROM customers", "cast", "email", DET),
    ("SELECT id FROM customers WHERE name = 'Ann'", "test equality of", "name", RND),
    ("SELECT id FROM customers WHERE score = %s", "test equality of", "score", RND),
    ("SELECT id FROM customers WHERE name IN ('Ann', 'Bob')", "test equality of", "name", RND),
    ("SELECT name, count(*) FROM customers GROUP BY name", "group by", "name", RND),
    ("SELECT DISTINCT score FROM customers", "select DISTINCT", "score", RND),
    ("SELECT count(DISTINCT name) FROM customers", "count DISTINCT values of", "name", RND),
    ("SELECT 1 FROM customers c JOIN strangers s ON s.email = c.email", "under another key",
     "email", DET),
    ("SELECT email FROM customers UNION SELECT email FROM strangers", "under another key",
     "email", DET),
    ("SELECT 1 FROM customers WHERE email = note", "not encrypted", "email", DET),
    ("SELECT 1 FROM contacts k JOIN customers c ON c.email = k.phone", "under another key",
     "email|phone", DET),
    ("SELECT id FROM customers WHERE email = ANY(%s)", "array", "email", DET),
    ("UPDATE customers SET score = score + 1", "", "score", RND),
    ("UPDATE customers SET note = email", "not encrypted", "email", DET),
    ("UPDATE orders SET amount = amount * 2 WHERE id = 10", "", "amount", RND),
    ("DELETE FROM customers WHERE born < '1950-01-01'", "compare ranges of", "born", DET),
    ("DELETE FROM customers WHERE name = 'Nobody'", "test equality of", "name", RND),
    ("INSERT INTO customers (id, email) VALUES (99, lower('X'))", "store an expression in",
     "email", DET),
    ("INSERT INTO strangers (id, email) SELECT id + 100, email FROM customers",
     "under another key", "email", DET),
    ("INSERT INTO contacts (id, email, phone) SELECT id + 100, email, name FROM customers",
     "under another key", "name", RND),
    ("UPDATE customers SET tier = 'vip' WHERE tier LIKE 's%%'", "pattern-match", "tier", DET),
    ("PREPARE p(text) AS SELECT id FROM customers WHERE email = $1", "PREPARE", "", ""),
]  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_refusals_name_the_column_and_mode(env: Env, pair: Pair) -> None:
    """Every documented refusal is 0A000 naming the column and its mode; plain PostgreSQL
    runs the same statement; nothing changes in the encrypted database."""
    tables = ("customers", "orders", "strangers", "contacts")
    before = env.upstream_rows(*tables)
    problems = []
    params: dict[str, list[Any]] = {
        "born >= %s": [dt.date(2000, 1, 1)], "score = %s": [Decimal(3)], "ANY(%s)": [["x"]],
    }  # fmt: skip
    for sql, verb, col, mode in REFUSALS:
        args = next((v for k, v in params.items() if k in sql), None)
        pair.a.execute("BEGIN")
        a = observe(pair.a, sql, args)
        pair.a.execute("ROLLBACK")
        b = observe(pair.b, sql, args)
        message = (b.error or ("",))[0] or ""
        named = not col or any(
            f'column "{c}" encrypted in {mode} mode' in message for c in col.split("|")
        )
        if a.sqlstate is not None or b.sqlstate != "0A000" or not named or verb not in message:
            problems.append(f"{sql}\n    plain: {a.sqlstate} {a.error}\n    encrypted: {b}")
    assert not problems, "\n".join(problems)
    assert env.upstream_rows(*tables) == before
    with pair.b.cursor() as cur:  # the session is still usable
        cur.execute("SELECT count(*) FROM customers WHERE email = 'ann@example.com'")
        assert cur.fetchone() == (1,)
    assert len(REFUSALS) >= 40


@pytest.mark.usefixtures("shop")
def test_simple_query_protocol_with_several_statements(pair: Pair) -> None:
    """One simple Query with several statements (value slots shifted per statement), an
    error in the middle (the rest is skipped), and a transaction block."""

    def run(conn: Any, sql: str) -> list[Any]:
        out = []
        conn.pgconn.send_query(sql.encode())
        while (res := conn.pgconn.get_result()) is not None:
            rows = [
                tuple(res.get_value(i, j) for j in range(res.nfields)) for i in range(res.ntuples)
            ]
            out.append((res.status, res.error_field(ord("C")), res.command_status, rows))
        return out

    script = (
        "INSERT INTO contacts VALUES (90, 'q@x', 'p90'), (91, 'r@x', NULL);"
        "SELECT id, phone FROM contacts WHERE email = 'q@x';"
        "UPDATE contacts SET phone = 'p91' WHERE email = 'r@x' RETURNING email, phone;"
        "SELECT email FROM contacts WHERE id IN (90, 91) AND phone = 'p91'",
        "INSERT INTO contacts VALUES (92, 's@x', 'p92'); SELECT 1 / 0; "
        "INSERT INTO contacts VALUES (93, 't@x', 'p93')",
        "BEGIN; DELETE FROM contacts WHERE email = 's@x'; SELECT count(*) FROM contacts "
        "WHERE email = 's@x'; ROLLBACK",
        "SELECT id, email, phone FROM contacts WHERE id >= 90 ORDER BY id",
    )
    for sql in script:
        assert run(pair.a, sql) == run(pair.b, sql), sql


@pytest.mark.usefixtures("shop")
def test_sql_prepare_execute_reads_plaintext(pair: Pair) -> None:
    pair.sweep([
        ("PREPARE q15 AS SELECT email, name FROM customers WHERE id = 1", None, {}),
        ("EXECUTE q15", None, {}),
        ("DEALLOCATE q15", None, {}),
    ])  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_explain_shows_no_ciphertext(pair: Pair) -> None:
    """E16 (fixed; more in tests/test_encrypt_explain.py): PostgreSQL's `'x'::text`."""
    seen = pair.b.execute("EXPLAIN SELECT id FROM customers WHERE email = 'x'").fetchall()
    assert not any("\\x01" in line for (line,) in seen), seen
    assert any("'x'::text" in line for (line,) in seen), seen


# -- 1d. session settings -------------------------------------------------------------------

SETTINGS = [
    "SET TimeZone = 'America/New_York'",
    "SET TimeZone = 'Asia/Kolkata'",
    "SET TIME ZONE INTERVAL '+05:45' HOUR TO MINUTE",
    "SET TimeZone = 'UTC+3'",
    "SET DateStyle = 'SQL, DMY'",
    "SET DateStyle = 'German'",
    "SET DateStyle = 'Postgres, MDY'",
    "SET DateStyle = 'ISO, DMY'",
    "SET IntervalStyle = 'sql_standard'",
    "SET IntervalStyle = 'iso_8601'",
    "SET IntervalStyle = 'postgres_verbose'",
    "SET extra_float_digits = 0",
    "SET extra_float_digits = -4",
    "RESET ALL",
]


def test_session_settings_shape_output_and_input(pair: Pair) -> None:
    """SET TimeZone/DateStyle/IntervalStyle/extra_float_digits/bytea_output change how
    encrypted values read (and how literals are read) exactly as on a plain database."""
    pair.setup(
        "CREATE TABLE sess (id int PRIMARY KEY, tz timestamptz, d date, ts timestamp, "
        "iv interval, f8 float8, r4 real, by bytea)",
        "INSERT INTO sess VALUES (1, '2024-07-01 12:34:56.789+02', '1911-11-11', "
        "'2024-01-02 03:04:05.5', '1 year 2 mons 3 days -04:05:06.7', 0.1, 1.1, '\\x00ff41'), "
        "(2, '1890-01-01 00:00 UTC', '0044-03-15 BC', '-infinity', '-1 mon', 1e-10, '-0', "
        "'\\x27'), (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    stmts: list[tuple[str, Any, dict[str, Any]]] = []
    for k, setting in enumerate(SETTINGS):
        # Each text once: a repeated text with literals meets E12 (test below).
        stmts += [
            (setting, None, {}),
            ("SELECT * FROM sess ORDER BY id", None, {}),
            (
                f"INSERT INTO sess (id, tz, d, ts) VALUES ({10 + k}, '2020-03-04 05:06', "
                "'03/04/2020', '05/06/2021 07:08')",
                None,
                {},
            ),
            (
                "INSERT INTO sess (id, tz, d) VALUES (%s, %s, %s)",
                [50 + k, "2020-03-04 05:06", "07/08/2020"],
                {},
            ),
            (
                f"SELECT id FROM sess WHERE tz = '2020-03-04 05:06' AND id > {k} ORDER BY id",
                None,
                {},
            ),
            ("SELECT * FROM sess WHERE id >= 10 ORDER BY id", None, {}),
        ]
    stmts.append(("SELECT * FROM sess ORDER BY id", None, {"binary": True}))
    assert pair.sweep(stmts) > 80
