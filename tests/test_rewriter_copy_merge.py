"""COPY, MERGE and SQL-level prepared statements on cloaked tables.

Differential like tests/test_rewriter_differential.py (whose helpers this reuses):
database A runs the statements as written, database B what the rewriter makes of
them. COPY runs through psycopg's `cursor.copy()` on both sides (text, csv,
binary) and the data must be identical. EXECUTE's output names come from a
per-session map of the PREPARE plans, as the proxy keeps it. Refusals are
checked against the rewriter alone: PostgreSQL would run them, pgcloak must not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pytest
from helpers import PgServer
from test_rewriter_differential import (
    SCHEMA,
    SEMANTIC_NAMES,
    Outcome,
    _b_catalog,
    _catalog_texts,
    _differs,
    _run,
    _word_pattern,
)

from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter, plan_query

EXTRA_NAMES = ["customer_archive", "archived_on", "price_updates", "new_price", "retire"]

EXTRA_SCHEMA = [
    "CREATE TABLE customer_archive (cust_id integer PRIMARY KEY, email text, "
    "archived_on date DEFAULT '2024-01-01')",
    "CREATE TABLE price_updates (product_code text, new_price numeric(10, 2), "
    "retire boolean NOT NULL DEFAULT false)",
]

SEED = [
    "INSERT INTO customers (email, full_name, loyalty_points, signup_day) VALUES "
    "('ann@example.com', 'Ann', 10, '2024-01-05'), ('bob@example.com', 'Bob', 0, '2024-02-11'), "
    "('cy@example.com', 'Cy', 250, '2024-02-20'), ('dee@example.com', NULL, 5, NULL)",
    "INSERT INTO products VALUES ('P1', 'Pen', 1.50, false), ('P2', 'Pad', 3.25, false), "
    "('P3', 'Ink', 7.00, true), ('P4', 'Clip', 0.10, false)",
    "INSERT INTO orders (cust_id, order_total, order_status, placed_on) VALUES "
    "(1, 10.50, 'paid', '2024-03-01'), (1, 3.25, 'new', '2024-03-02'), "
    "(2, 7.00, 'paid', '2024-03-02'), (3, 100.00, 'shipped', '2024-03-05')",
    "INSERT INTO order_lines VALUES (1, 1, 'P1', 3), (1, 2, 'P2', 2), (2, 1, 'P2', 1), "
    "(3, 1, 'P3', 1), (4, 1, 'P1', 10)",
    "INSERT INTO price_updates VALUES ('P1', 1.75, false), ('P4', 0.10, true), ('P9', 9.99, false)",
]


@dataclass(frozen=True)
class Copy:
    """A COPY through the copy protocol: TO STDOUT (`data` None) or FROM STDIN.

    `label` keeps the output for a later step's `use`; `exact` compares the bytes
    instead of the sorted lines (binary format, or an ORDER BY query).
    """

    sql: str
    data: str | bytes | None = None
    use: str | None = None
    label: str | None = None
    exact: bool = False


CHECK_PREPARED = "-- check pg_prepared_statements"

Step = str | Copy

CORPUS: list[Step] = [
    # -- COPY ... TO STDOUT ----------------------------------------------------------------
    Copy("COPY customers TO STDOUT"),
    Copy("COPY customers (email, full_name) TO STDOUT WITH (FORMAT csv)"),
    Copy("COPY public.products TO STDOUT (FORMAT csv, FORCE_QUOTE (product_title, unit_price))"),
    Copy("COPY products (product_code, unit_price) TO STDOUT CSV FORCE QUOTE product_code"),
    Copy("COPY products TO STDOUT (FORMAT csv, HEADER false, FORCE_QUOTE *)"),
    Copy(
        "COPY (SELECT c.email, o.order_total AS total FROM customers c JOIN orders o "
        "USING (cust_id) ORDER BY 1, 2) TO STDOUT (FORMAT csv, FORCE_QUOTE (email, total))",
        exact=True,
    ),
    Copy("COPY (SELECT * FROM orders ORDER BY order_no) TO STDOUT (FORMAT binary)", exact=True),
    Copy(
        "COPY (UPDATE orders SET order_status = 'seen' WHERE order_status = 'new' "
        "RETURNING order_no, order_status) TO STDOUT"
    ),
    Copy("COPY (SELECT 1 AS one, 'x' AS two) TO STDOUT"),
    # -- COPY ... FROM STDIN ---------------------------------------------------------------
    Copy("COPY customer_archive (cust_id, email) FROM STDIN", "10\tx@example.com\n11\t\\N\n"),
    Copy(
        "COPY customer_archive FROM STDIN (FORMAT csv, FORCE_NULL (email), HEADER)",
        'h1,h2,h3\n12,"",2024-05-01\n13,y@example.com,\n',
    ),
    Copy("COPY customer_archive (email, cust_id) FROM STDIN CSV FORCE NOT NULL email", ",14\n"),
    Copy(
        "COPY customer_archive FROM STDIN WHERE cust_id > 20 AND customer_archive.email "
        "IS NOT NULL",
        "21\ta@b\t2024-01-02\n5\tz\t2024-01-02\n22\t\\N\t\\N\n",
    ),
    Copy(
        "COPY (SELECT cust_id, email, signup_day FROM customers ORDER BY cust_id) "
        "TO STDOUT (FORMAT binary)",
        label="bin",
        exact=True,
    ),
    Copy(
        "COPY customer_archive (cust_id, email, archived_on) FROM STDIN (FORMAT binary)", use="bin"
    ),
    "SELECT * FROM customer_archive ORDER BY cust_id",
    Copy("COPY customer_archive TO STDOUT (FORMAT binary)", exact=True),
    # -- COPY errors (server or rewriter, same SQLSTATE and message) ----------------------
    Copy("COPY customers (nope) FROM STDIN", ""),
    Copy("COPY customers TO STDOUT (FORMAT csv, FORCE_QUOTE (nope))"),
    Copy("COPY customers (email) TO STDOUT (FORMAT csv, FORCE_QUOTE (full_name))"),
    Copy("COPY (SELECT email AS m FROM customers) TO STDOUT (FORMAT csv, FORCE_QUOTE (email))"),
    Copy("COPY (SELECT nope FROM customers) TO STDOUT"),
    Copy("COPY no_such_table FROM STDIN", ""),
    Copy("COPY customer_archive FROM STDIN", "abc\tx\t2024-01-01\n"),
    Copy("COPY customer_archive FROM STDIN", "10\tdup\t\\N\n"),
    Copy("COPY customers TO STDOUT (HEADER match)"),
    # -- server files and programs (allowed; names rewritten) -----------------------------
    "COPY customers TO '/dev/null'",
    "COPY customer_archive FROM '/dev/null' WITH (FORMAT csv)",
    "COPY (SELECT email FROM customers WHERE cust_id < 3) TO PROGRAM 'cat > /dev/null'",
    # -- MERGE -----------------------------------------------------------------------------
    "MERGE INTO products p USING price_updates u ON u.product_code = p.product_code "
    "WHEN MATCHED AND u.retire THEN DELETE "
    "WHEN MATCHED THEN UPDATE SET unit_price = u.new_price "
    "WHEN NOT MATCHED THEN INSERT (product_code, product_title, unit_price) "
    "VALUES (u.product_code, 'new ' || u.product_code, u.new_price)",
    "SELECT * FROM products ORDER BY product_code",
    "MERGE INTO customers c USING (SELECT cust_id, sum(order_total) AS total FROM orders "
    "GROUP BY cust_id) s ON s.cust_id = c.cust_id "
    "WHEN MATCHED AND s.total > 50 THEN UPDATE SET loyalty_points = c.loyalty_points + 1 "
    "WHEN MATCHED THEN DO NOTHING",
    "WITH big AS (SELECT cust_id FROM orders WHERE order_total > 5) MERGE INTO customers "
    "USING big ON big.cust_id = customers.cust_id "
    "WHEN MATCHED THEN UPDATE SET full_name = coalesce(full_name, 'anon')",
    "MERGE INTO order_lines l USING (VALUES (1, 1, 5), (9, 1, 1), (2, 2, 4)) AS v(o, n, q) "
    "ON l.order_no = v.o AND l.line_no = v.n WHEN MATCHED THEN UPDATE SET quantity = q "
    "WHEN NOT MATCHED AND o < 5 THEN INSERT VALUES (o, n, 'P2', q)",
    "SELECT * FROM order_lines ORDER BY order_no, line_no",
    "MERGE INTO customers AS c USING (VALUES (2, 'Robert')) v(id, nm) ON c.cust_id = v.id "
    "WHEN MATCHED THEN UPDATE SET (full_name, loyalty_points) = (v.nm, c.loyalty_points + 3)",
    "MERGE INTO customers c USING generate_series(1, 2) g ON g = c.cust_id "
    "WHEN MATCHED THEN UPDATE SET loyalty_points = c.loyalty_points + g",
    "MERGE INTO ONLY customer_archive a USING customers c ON c.cust_id = a.cust_id "
    "WHEN NOT MATCHED THEN INSERT (cust_id, email) OVERRIDING USER VALUE "
    "VALUES (c.cust_id, c.email)",
    "SELECT cust_id, email, full_name, loyalty_points FROM customers ORDER BY cust_id",
    "MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
    "WHEN MATCHED THEN UPDATE SET loyalty_points = -1",
    "MERGE INTO products p USING price_updates u ON u.product_code = p.product_code "
    "WHEN MATCHED THEN DELETE",
    "MERGE INTO order_lines USING (SELECT 1) s ON false WHEN NOT MATCHED THEN "
    "INSERT DEFAULT VALUES",
    "MERGE INTO orders USING customers ON orders.cust_id = customers.cust_id "
    "WHEN MATCHED AND cust_id = 1 THEN DO NOTHING",
    "MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
    "WHEN NOT MATCHED THEN INSERT (email) VALUES (c.email)",
    "MERGE INTO customers c USING (SELECT 99 AS k) s ON s.k = c.cust_id "
    "WHEN NOT MATCHED THEN INSERT (email) VALUES (full_name)",
    "MERGE INTO customers USING customers ON true WHEN MATCHED THEN DO NOTHING",
    "MERGE INTO customers c USING orders c ON true WHEN MATCHED THEN DO NOTHING",
    "MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
    "WHEN MATCHED THEN UPDATE SET nope = 1",
    "MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
    "WHEN NOT MATCHED BY SOURCE THEN DELETE",
    # -- PREPARE / EXECUTE / DEALLOCATE -----------------------------------------------------
    "PREPARE q_by_id (int) AS SELECT email, full_name AS nm, loyalty_points + 1 "
    "FROM customers WHERE cust_id = $1",
    "EXECUTE q_by_id(1)",
    "EXECUTE q_by_id (3)",
    "EXECUTE q_by_id((SELECT max(cust_id) FROM customers))",
    "EXECUTE q_by_id(cust_id)",
    "EXPLAIN EXECUTE q_by_id(o.order_no)",
    "EXPLAIN (ANALYZE) EXECUTE q_by_id((SELECT email FROM customers LIMIT 1))",
    "PREPARE q_ins (text) AS INSERT INTO customers (email) VALUES ($1) RETURNING cust_id, email",
    "EXECUTE q_ins('zed@example.com')",
    "EXECUTE q_ins('zed@example.com')",
    "PREPARE q_upd AS UPDATE orders SET order_status = 'done' WHERE order_total > 50",
    "EXECUTE q_upd",
    "PREPARE q_merge (int) AS MERGE INTO customers c USING (SELECT $1 AS k) s "
    "ON s.k = c.cust_id WHEN MATCHED THEN UPDATE SET loyalty_points = 0",
    "EXECUTE q_merge(3)",
    "PREPARE q_star AS SELECT * FROM products ORDER BY 1",
    "EXECUTE q_star",
    "PREPARE q_del AS DELETE FROM customer_archive WHERE cust_id > $1 RETURNING *",
    "EXECUTE q_del(20)",
    "PREPARE q_plain AS SELECT 1 AS one",
    "EXECUTE q_plain",
    "EXPLAIN (COSTS OFF) EXECUTE q_plain",
    "PREPARE q_by_id AS SELECT 1",
    "PREPARE q_bad AS SELECT nope FROM customers",
    "EXECUTE q_by_id",
    CHECK_PREPARED,
    "DEALLOCATE q_by_id",
    "EXECUTE q_by_id(1)",
    "DEALLOCATE PREPARE q_ins",
    "EXECUTE q_star",
    "DEALLOCATE ALL",
    "EXECUTE q_star",
    "DEALLOCATE q_star",
]

# Statements PostgreSQL would run (or fail differently) that pgcloak refuses: (sql, words).
REFUSALS = [
    ("COPY customers FROM STDIN (FORMAT csv, HEADER match)", "HEADER MATCH"),
    ("COPY customers TO '/srv/out.csv' (FORMAT csv, HEADER)", "server file with HEADER"),
    ("COPY customers TO '/tmp/customers.csv'", "file name"),
    ("COPY customer_archive FROM PROGRAM 'cat /srv/order_lines_2024.csv'", "PROGRAM"),
    ("COPY (SELECT 1) TO '/tmp/Products.txt'", "file name"),
    ("COPY (SELECT full_name FROM customers) TO '/tmp/x/Full_Name.txt'", "file name"),
    (
        "MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
        "WHEN MATCHED THEN DELETE RETURNING c.email",
        "RETURNING",
    ),
    ("PREPARE customers AS SELECT 1", "prepared statement"),
    ("PREPARE orders_pkey AS SELECT 1", "prepared statement"),
    ("PREPARE email AS SELECT email FROM customers", "cloaked names"),
    ("PREPARE q (customers) AS SELECT $1", "cloaked"),
    ("PREPARE q AS SELECT * FROM customers, pg_class", "output columns"),
    ("EXECUTE customers", "prepared statement"),
    ("DEALLOCATE customers", "prepared statement"),
    ("EXPLAIN EXECUTE customer_archive", "prepared statement"),
    ("CREATE TABLE t1 AS EXECUTE q", "AS EXECUTE"),
    ("EXPLAIN ANALYZE CREATE TABLE t1 AS EXECUTE q", "AS EXECUTE"),
]


def _copy(conn: psycopg.Connection[Any], step: Copy, blobs: dict[str, bytes]) -> Outcome:
    payload = blobs[step.use] if step.use is not None else step.data
    try:
        with conn.cursor() as cur:
            with cur.copy(step.sql.encode()) as cp:
                if payload is None:
                    data: bytes | None = b"".join(bytes(chunk) for chunk in cp)
                else:
                    cp.write(payload)
                    data = None
            tag = cur.statusmessage or f"COPY {cur.rowcount}"  # (None after COPY TO)
    except psycopg.Error as exc:
        return Outcome(sqlstate=exc.sqlstate, message=exc.diag.message_primary)
    if data is None:
        return Outcome(tag=tag)
    if step.label is not None:
        blobs[step.label] = data
    rows = [data.hex()] if step.exact else sorted(data.decode().splitlines())
    return Outcome(rows=rows, tag=tag)


@dataclass
class CloakedSide:
    """Database B: the rewriter, its catalog, and the proxy's per-session state."""

    conn: psycopg.Connection[Any]
    cat: MemoryCatalog
    rw: Rewriter = field(default_factory=Rewriter)
    sent: list[str] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    prepared: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    def output_names(self, plan: Plan) -> tuple[str, ...] | None:
        """What the proxy does with a successful plan's prepared-statement fields."""
        if plan.execute is not None:
            assert plan.output_names is None
            return self.prepared.get(plan.execute)
        if plan.prepare is not None:
            self.prepared[plan.prepare] = plan.output_names
            return None
        if plan.deallocate == "*":
            self.prepared.clear()
        elif plan.deallocate is not None:
            self.prepared.pop(plan.deallocate, None)
        return plan.output_names

    def run(self, step: Step) -> Outcome:
        sql = step.sql if isinstance(step, Copy) else step
        try:
            (plan,) = self.rw.plan(sql, self.cat)
        except CloakError as exc:
            return Outcome(sqlstate=exc.sqlstate, message=exc.message)
        assert plan.sql is not None
        self.sent.append(plan.sql)
        if isinstance(step, Copy):
            out = _copy(self.conn, replace(step, sql=plan.sql), self.blobs)
        else:
            out = _run(self.conn, plan.sql)
        out.message = None  # server messages carry physical names: the proxy's business
        if out.sqlstate is None:
            self.cat.apply_all(plan.changes)
            names = self.output_names(plan)
            if out.names is not None and names is not None:
                assert len(out.names) == len(names), (sql, out.names, names)
                out.names = list(names)
        return out


def _semantic_word() -> re.Pattern[str]:
    return _word_pattern(SEMANTIC_NAMES + EXTRA_NAMES)


def test_copy_merge_prepare_differential(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db_a, db_b = db_factory(), db_factory()
    word = _semantic_word()
    mismatches: list[str] = []
    states: set[str] = set()
    with pg.connect(db_a) as conn_a, pg.connect(db_b) as conn_b:
        b = CloakedSide(conn_b, _b_catalog(pg, db_b))
        blobs_a: dict[str, bytes] = {}
        for step in [*SCHEMA, *EXTRA_SCHEMA, *SEED, *CORPUS]:
            if step == CHECK_PREPARED:
                texts = [
                    r[0] for r in conn_b.execute("SELECT statement FROM pg_prepared_statements")
                ]
                assert len(texts) >= 6
                assert not [t for t in texts if word.search(t)], texts
                continue
            out_a = _copy(conn_a, step, blobs_a) if isinstance(step, Copy) else _run(conn_a, step)
            out_b = b.run(step)
            states.add(out_a.sqlstate or "")
            if _differs(out_a, out_b):
                mismatches.append(f"{step}\n  A: {out_a}\n  B: {out_b}")
    assert not mismatches, "\n".join(mismatches)
    assert sum(1 for s in CORPUS if s != CHECK_PREPARED) >= 70
    # Errors from the server and from the rewriter, not only happy paths.
    assert {"42703", "42P01", "42702", "42712", "23505", "23503", "23514", "23502", "22P02",
            "42601", "26000", "42P05", "42P10", "0A000"} <= states  # fmt: skip
    leaks = [text for text in b.sent if word.search(text)]
    assert not leaks, leaks
    leaked = [t for t in _catalog_texts(pg, db_b) if word.search(t)]
    assert not leaked, leaked


# -- without a server ----------------------------------------------------------------------


def _catalog() -> MemoryCatalog:
    """The corpus' schema as the rewriter registers it (no server needed)."""
    cat = MemoryCatalog(uncloaked=[("pg_catalog", "pg_class")])
    for sql in SCHEMA + EXTRA_SCHEMA:
        for plan in plan_query(sql, cat):
            cat.apply_all(plan.changes)
    return cat


@pytest.mark.parametrize(("sql", "words"), REFUSALS)
def test_refusals_are_clear(sql: str, words: str) -> None:
    cat = _catalog()
    with pytest.raises(CloakError) as info:
        plan_query(sql, cat)
    assert info.value.sqlstate == "0A000"
    assert words in info.value.message
    assert "pgcloak" in info.value.message
    assert sql not in repr(info.value) and sql not in str(info.value)


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        (
            "COPY customers TO STDOUT (FORMAT csv, HEADER)",
            ("cust_id", "email", "full_name", "loyalty_points", "signup_day"),
        ),
        ("COPY customers (email, cust_id) TO STDOUT WITH CSV HEADER", ("email", "cust_id")),
        ('COPY (SELECT email AS "Mail", 1 AS n FROM customers) TO STDOUT (HEADER 1)',
         ("Mail", "n")),
        ("COPY customers TO STDOUT (HEADER false)", None),
        ("COPY customers FROM STDIN (FORMAT csv, HEADER)", None),
        ("COPY customers TO STDOUT", None),
    ],
)  # fmt: skip
def test_copy_to_with_header_carries_the_client_column_names(
    sql: str, names: tuple[str, ...] | None
) -> None:
    """The proxy writes these in place of the server's header line (physical names)."""
    (plan,) = plan_query(sql, _catalog())
    assert plan.cloaked and plan.copy_header == names
    assert plan.sql is not None and "email" not in plan.sql and "customers" not in plan.sql
    assert "Mail" not in repr(plan) and "email" not in repr(plan)


def test_plans_carry_prepared_statement_fields_and_are_cached() -> None:
    cat = _catalog()
    rw = Rewriter()
    sql = "PREPARE q (int) AS SELECT email AS mail, cust_id FROM customers WHERE cust_id = $1"
    (plan,) = rw.plan(sql, cat)
    assert (plan.prepare, plan.execute, plan.deallocate) == ("q", None, None)
    assert plan.output_names == ("mail", "cust_id")
    assert rw.plan(sql, cat)[0] is plan
    assert "mail" not in repr(plan) and "customers" not in repr(plan)
    (ex,) = rw.plan("EXECUTE q(1)", cat)
    assert (ex.prepare, ex.execute, ex.output_names) == (None, "q", None)
    assert rw.plan("EXECUTE q(1)", cat)[0] is ex
    assert rw.plan("DEALLOCATE q", cat)[0].deallocate == "q"
    assert rw.plan("DEALLOCATE PREPARE ALL", cat)[0].deallocate == "*"
    (untouched,) = rw.plan("PREPARE r AS SELECT 1 AS x", cat)
    assert untouched.prepare == "r" and untouched.output_names is None
    (explain,) = rw.plan("EXPLAIN EXECUTE q(1)", cat)
    assert explain.execute is None and explain.sql == "EXPLAIN EXECUTE q(1)"
    assert rw.misses == 6 and rw.hits == 2


def test_several_statements_in_one_string() -> None:
    cat = _catalog()
    plans = plan_query(
        "PREPARE q AS SELECT email FROM customers; EXECUTE q; DEALLOCATE q; "
        "COPY customers (email) TO STDOUT",
        cat,
    )
    assert [p.statement for p in plans] == [
        "PrepareStmt", "ExecuteStmt", "DeallocateStmt", "CopyStmt",
    ]  # fmt: skip
    assert [(p.prepare, p.execute, p.deallocate) for p in plans[:3]] == [
        ("q", None, None), (None, "q", None), (None, None, "q"),
    ]  # fmt: skip
    word = _semantic_word()
    assert not [p.sql for p in plans if p.sql is None or word.search(p.sql)]


def test_explain_merge_and_copy_rewrite_every_name() -> None:
    cat = _catalog()
    rel = cat.relation("public", "customers")
    assert rel is not None
    (plan,) = plan_query(
        "EXPLAIN MERGE INTO customers c USING orders o ON o.cust_id = c.cust_id "
        "WHEN MATCHED THEN UPDATE SET email = o.order_status",
        cat,
    )
    assert plan.sql is not None and rel.physical in plan.sql
    assert not _semantic_word().search(plan.sql)
    (plan,) = plan_query("COPY customers FROM STDIN WHERE customers.cust_id > 1 -- note", cat)
    cust_id = rel.column("cust_id")
    assert cust_id is not None
    assert plan.sql == f"COPY {rel.physical} FROM STDIN WHERE {rel.physical}.{cust_id.physical} > 1"


def test_error_positions_point_at_the_client_text() -> None:
    cat = _catalog()
    sql = "COPY customers (email, nope) FROM STDIN"
    with pytest.raises(CloakError) as info:
        plan_query(sql, cat)
    assert info.value.position == sql.index("nope") + 1
    sql = "MERGE INTO customers c USING orders o ON true WHEN NOT MATCHED THEN INSERT VALUES (c.x)"
    with pytest.raises(CloakError) as info:
        plan_query(sql, cat)
    assert info.value.sqlstate == "42P01"
    assert info.value.position == sql.index("c.x") + 1


def test_untouched_statements_pass_unchanged() -> None:
    cat = _catalog()
    for sql in [
        "COPY pg_class TO STDOUT",
        "COPY (SELECT 1 AS x) TO '/tmp/x.txt' (HEADER)",
        "COPY (SELECT c.relname FROM pg_class c) TO '/tmp/c.txt'",
        "PREPARE r AS SELECT relname FROM pg_class",
        "MERGE INTO pg_class USING (SELECT 1) s ON false WHEN MATCHED THEN DO NOTHING",
    ]:
        (plan,) = plan_query(sql, cat)
        assert plan.sql == sql and not plan.cloaked
