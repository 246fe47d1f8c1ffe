"""Views, materialized views, COMMENT ON and GRANT/REVOKE through the rewriter.

Differential like test_rewriter_differential.py (whose helpers this reuses):
database A runs the semantic statements, database B what the rewriter makes of
them; outcomes must match. On top of that: B's view definitions, comments and
ACLs hold no semantic name (COMMENT never reaches B at all), the view columns
and dependencies the plans recorded are what PostgreSQL has in A, and the
constructs pgcloak does not support are refused with 0A000.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

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
from test_rewriter_differential import _run_cloaked as _run_b

from pgcloak.rewriter import CloakError, MemoryCatalog, Rewriter, plan_query
from pgcloak.rewriter.catalog import Column, CreateView, DropView, Relation, SetComment

VIEW_NAMES = [
    "paid_orders", "customer_totals", "buyer", "total_spent", "order_summary", "units",
    "recent_paid", "mv_totals", "top_total", "mv_lines", "qty", "mv_lines_by_qty",
    "spend_by_customer", "customer_email", "line_volume", "volume", "qty_total", "dup_cols",
    "too_many", "no_such_view", "confidential", "secretive", "whatever", "sizes", "Big Spenders",
    "plain_view",
]  # fmt: skip

SEED = [
    "INSERT INTO customers (email, full_name, loyalty_points, signup_day) VALUES "
    "('ann@example.com', 'Ann', 10, '2024-01-05'), ('bob@example.com', 'Bob', 0, '2024-02-11'), "
    "('cy@example.com', 'Cy', 250, '2024-02-20'), ('dee@example.com', NULL, 5, NULL)",
    "INSERT INTO products VALUES ('P1', 'Pen', 1.50, false), ('P2', 'Pad', 3.25, false), "
    "('P3', 'Ink', 7.00, true)",
    "INSERT INTO orders (cust_id, order_total, order_status, placed_on) VALUES "
    "(1, 10.50, 'paid', '2024-03-01'), (1, 3.25, 'new', '2024-03-02'), "
    "(2, 7.00, 'paid', '2024-03-02'), (3, 100.00, 'shipped', '2024-03-05'), "
    "(3, 0, 'cancelled', NULL)",
    "INSERT INTO order_lines VALUES (1, 1, 'P1', 3), (1, 2, 'P2', 2), (2, 1, 'P2', 1), "
    "(3, 1, 'P3', 1), (4, 1, 'P1', 10), (4, 2, 'P3', 12)",
]

# {role} is a throwaway role created by the test.
CORPUS = [
    # -- CREATE VIEW -------------------------------------------------------------------
    "CREATE VIEW paid_orders AS SELECT o.order_no, o.cust_id, o.order_total FROM orders o "
    "WHERE o.order_status = 'paid'",
    "SELECT * FROM paid_orders ORDER BY order_no",
    "CREATE VIEW customer_totals (buyer, total_spent) AS SELECT c.email, sum(o.order_total) "
    "FROM customers c JOIN orders o USING (cust_id) GROUP BY c.email",
    "SELECT buyer, total_spent FROM customer_totals ORDER BY buyer",
    "CREATE VIEW order_summary (order_no) AS SELECT order_no, count(*), sum(quantity) AS units, "
    "1 + 1 FROM order_lines GROUP BY order_no",
    "SELECT * FROM order_summary ORDER BY 1",
    "SELECT s.units, s.count FROM order_summary s WHERE s.order_no = 4",
    "CREATE VIEW dup_cols AS SELECT email, email FROM customers",
    "CREATE VIEW dup_cols AS SELECT cust_id, 1, 2 FROM customers",
    "CREATE VIEW too_many (a, b, c) AS SELECT email, full_name FROM customers",
    "CREATE VIEW paid_orders AS SELECT 1",
    "CREATE VIEW customers AS SELECT email FROM customers",
    "CREATE OR REPLACE VIEW paid_orders AS SELECT o.order_no, o.cust_id, o.order_total, "
    "o.placed_on FROM orders o WHERE o.order_status IN ('paid', 'shipped')",
    "SELECT order_no, placed_on FROM paid_orders ORDER BY 1",
    "CREATE OR REPLACE VIEW paid_orders AS SELECT o.order_no, o.cust_id FROM orders o",
    "CREATE OR REPLACE VIEW paid_orders AS SELECT o.order_no AS num, o.cust_id, o.order_total, "
    "o.placed_on FROM orders o",
    "CREATE OR REPLACE VIEW paid_orders AS SELECT o.order_no, o.cust_id, o.order_status, "
    "o.placed_on FROM orders o",
    "CREATE OR REPLACE VIEW customers AS SELECT 1 AS x",
    "CREATE VIEW recent_paid AS SELECT p.order_no, c.full_name FROM paid_orders p "
    "JOIN customers c ON c.cust_id = p.cust_id WHERE p.placed_on > '2024-03-01'",
    "SELECT * FROM recent_paid ORDER BY order_no",
    "SELECT r.order_no, c.email FROM recent_paid r JOIN customers c USING (full_name) ORDER BY 1",
    "UPDATE paid_orders SET order_total = order_total + 1 WHERE order_no = 1 "
    "RETURNING order_no, order_total",
    "INSERT INTO paid_orders (cust_id, order_total) VALUES (2, 5) RETURNING order_no, placed_on",
    'CREATE VIEW "Big Spenders" WITH (security_barrier) AS SELECT cust_id, email, '
    "loyalty_points FROM customers WHERE loyalty_points > 5 WITH CHECK OPTION",
    "INSERT INTO \"Big Spenders\" (email, loyalty_points) VALUES ('low@example.com', 1)",
    'SELECT * FROM "Big Spenders" b JOIN orders USING (cust_id) ORDER BY order_no',
    "CREATE VIEW shipping_notes AS SELECT * FROM customers JOIN orders USING (cust_id) "
    "UNION ALL SELECT * FROM customers JOIN orders USING (cust_id) WHERE false",
    "SELECT cust_id, email, order_no FROM shipping_notes ORDER BY order_no",
    "CREATE VIEW carrier AS SELECT nosuch FROM customers",
    "CREATE VIEW carrier AS SELECT c.* FROM customers c, LATERAL (SELECT count(*) AS n "
    "FROM orders o WHERE o.cust_id = c.cust_id) x WHERE x.n > 1",
    "SELECT * FROM carrier ORDER BY 1",
    'DROP VIEW carrier, shipping_notes, "Big Spenders"',
    # -- materialized views ------------------------------------------------------------
    "CREATE MATERIALIZED VIEW mv_totals AS SELECT cust_id, count(*) AS n_orders, "
    "max(order_total) AS top_total FROM orders GROUP BY cust_id WITH NO DATA",
    "SELECT * FROM mv_totals",
    "REFRESH MATERIALIZED VIEW mv_totals",
    "SELECT * FROM mv_totals ORDER BY cust_id",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY mv_totals",
    "CREATE UNIQUE INDEX ON mv_totals (cust_id)",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY mv_totals WITH DATA",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS mv_totals AS SELECT email FROM customers",
    "CREATE MATERIALIZED VIEW mv_lines (code, qty) AS SELECT product_code, sum(quantity) "
    "FROM order_lines GROUP BY 1",
    "CREATE INDEX mv_lines_by_qty ON mv_lines (qty DESC)",
    "SELECT code, qty FROM mv_lines WHERE qty > 2 ORDER BY code",
    "CREATE MATERIALIZED VIEW too_many (a, b, c) AS SELECT email, full_name FROM customers",
    "CREATE VIEW sizes AS SELECT pg_relation_size('order_lines') >= 0 AS ok",
    "SELECT * FROM sizes",
    "REFRESH MATERIALIZED VIEW customers",
    # -- renames (registry-only) -------------------------------------------------------
    "ALTER VIEW customer_totals RENAME TO spend_by_customer",
    "SELECT buyer FROM spend_by_customer ORDER BY 1",
    "SELECT buyer FROM customer_totals",
    "ALTER VIEW spend_by_customer RENAME COLUMN buyer TO customer_email",
    "SELECT customer_email, total_spent FROM spend_by_customer ORDER BY 1",
    "ALTER VIEW spend_by_customer RENAME COLUMN nope TO x",
    "ALTER VIEW spend_by_customer RENAME COLUMN customer_email TO total_spent",
    "ALTER VIEW customers RENAME TO whatever",
    "ALTER VIEW spend_by_customer RENAME TO orders",
    "ALTER MATERIALIZED VIEW mv_lines RENAME TO line_volume",
    "ALTER MATERIALIZED VIEW line_volume RENAME COLUMN qty TO volume",
    "SELECT code, volume FROM line_volume ORDER BY 1",
    "ALTER MATERIALIZED VIEW spend_by_customer RENAME TO whatever",
    "ALTER VIEW IF EXISTS no_such_view RENAME TO whatever",
    "ALTER TABLE line_volume RENAME COLUMN volume TO qty_total",
    "SELECT qty_total FROM line_volume WHERE code = 'P1'",
    # -- COMMENT ON (registry-only) ----------------------------------------------------
    "COMMENT ON TABLE customers IS 'confidential customer master'",
    "COMMENT ON COLUMN customers.email IS 'confidential contact'",
    "COMMENT ON COLUMN public.customers.full_name IS 'secretive legal name'",
    "COMMENT ON COLUMN customers.full_name IS NULL",
    "COMMENT ON VIEW spend_by_customer IS 'confidential totals'",
    "COMMENT ON COLUMN spend_by_customer.total_spent IS 'confidential sum'",
    "COMMENT ON MATERIALIZED VIEW mv_totals IS 'confidential'",
    "COMMENT ON COLUMN line_volume.qty_total IS 'confidential volume'",
    "COMMENT ON INDEX email_lower_idx IS 'confidential index'",
    "COMMENT ON INDEX mv_lines_by_qty IS 'confidential matview index'",
    "COMMENT ON SEQUENCE customers_cust_id_seq IS 'confidential sequence'",
    "COMMENT ON CONSTRAINT positive_quantity ON order_lines IS 'confidential check'",
    "COMMENT ON CONSTRAINT customers_pkey ON customers IS 'confidential key'",
    "COMMENT ON CONSTRAINT customers_pkey ON customers IS ''",
    "COMMENT ON TABLE spend_by_customer IS 'x'",
    "COMMENT ON VIEW customers IS 'x'",
    "COMMENT ON MATERIALIZED VIEW spend_by_customer IS 'x'",
    "COMMENT ON INDEX customers IS 'x'",
    "COMMENT ON SEQUENCE customers IS 'x'",
    "COMMENT ON TABLE email_lower_idx IS 'x'",
    "COMMENT ON COLUMN customers.nope IS 'x'",
    "COMMENT ON COLUMN customers_pkey.cust_id IS 'x'",
    "COMMENT ON CONSTRAINT nope ON customers IS 'x'",
    "COMMENT ON CONSTRAINT positive_quantity ON spend_by_customer IS 'x'",
    "COMMENT ON TABLE no_such_table IS 'x'",
    # -- GRANT / REVOKE ----------------------------------------------------------------
    "SET ROLE {role}",
    "SELECT email FROM customers",
    "RESET ROLE",
    "GRANT SELECT (cust_id, email) ON customers TO {role}",
    "GRANT SELECT ON TABLE spend_by_customer, paid_orders TO {role}",
    "GRANT INSERT (email, full_name) ON customers TO {role}",
    "GRANT SELECT (order_no, cust_id) ON orders, paid_orders TO {role}",
    "SET ROLE {role}",
    "SELECT cust_id, email FROM customers ORDER BY 1",
    "SELECT full_name FROM customers",
    "SELECT * FROM spend_by_customer ORDER BY 1",
    "SELECT order_no, cust_id FROM orders ORDER BY 1",
    "INSERT INTO customers (email, full_name) VALUES ('role@example.com', 'R')",
    "RESET ROLE",
    "GRANT USAGE ON SEQUENCE customers_cust_id_seq TO {role}",
    "SET ROLE {role}",
    "INSERT INTO customers (email, full_name) VALUES ('role@example.com', 'R')",
    "RESET ROLE",
    "REVOKE SELECT (email) ON customers FROM {role}",
    "REVOKE GRANT OPTION FOR SELECT ON paid_orders FROM {role}",
    "SET ROLE {role}",
    "SELECT email FROM customers",
    "SELECT cust_id FROM customers ORDER BY 1",
    "RESET ROLE",
    "SELECT privilege_type, count(*) FROM information_schema.column_privileges "
    "WHERE grantee = '{role}' GROUP BY 1 ORDER BY 1",
    "GRANT SELECT (nope) ON customers TO {role}",
    "GRANT SELECT ON no_such_table TO {role}",
    "GRANT SELECT ON SEQUENCE customers TO {role}",
    "GRANT USAGE ON customers TO {role}",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    "SET ROLE {role}",
    "SELECT count(*) FROM order_lines",
    "RESET ROLE",
    "SELECT privilege_type, count(*) FROM information_schema.role_table_grants "
    "WHERE grantee = '{role}' GROUP BY 1 ORDER BY 1",
    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
    "REVOKE ALL ON customers, spend_by_customer FROM {role} CASCADE",
    "SELECT count(*) FROM information_schema.role_column_grants WHERE grantee = '{role}'",
    # -- DROP --------------------------------------------------------------------------
    "DROP VIEW customers",
    "DROP MATERIALIZED VIEW paid_orders",
    "DROP VIEW no_such_view",
    "DROP MATERIALIZED VIEW no_such_view",
    "DROP VIEW IF EXISTS no_such_view, order_summary",
    "SELECT * FROM order_summary",
    "DROP VIEW paid_orders",
    "DROP TABLE orders",
    "DROP VIEW paid_orders CASCADE",
    "SELECT * FROM recent_paid",
    "CREATE VIEW recent_paid AS SELECT email FROM customers",
    "DROP TABLE order_lines CASCADE",
    "SELECT * FROM line_volume",
    "SELECT * FROM sizes",
    "CREATE VIEW sizes AS SELECT email AS ok FROM customers",
    "CREATE VIEW line_volume AS SELECT product_code FROM products",
    "DROP MATERIALIZED VIEW mv_totals",
    "CREATE VIEW order_summary AS SELECT order_no FROM orders",
    "DROP TABLE customers CASCADE",
    "SELECT * FROM spend_by_customer",
    "SELECT * FROM order_summary",
    "SELECT * FROM recent_paid",
    "DROP VIEW order_summary",
    # -- views over uncloaked relations are cloaked too (only temporary ones are not) -----
    "CREATE VIEW plain_view AS SELECT relname FROM pg_catalog.pg_class WHERE relname = 'pg_class'",
    "SELECT * FROM plain_view",
    "DROP VIEW plain_view",
]


def _definitions(pg: PgServer, db: str) -> list[str]:
    """View definitions, comments and ACLs of B: none may hold a semantic name."""
    queries = [
        "SELECT definition FROM pg_views WHERE schemaname = 'public'",
        "SELECT definition FROM pg_matviews WHERE schemaname = 'public'",
        "SELECT pg_get_viewdef(c.oid, true) FROM pg_class c "
        "WHERE c.relkind IN ('v', 'm') AND c.relnamespace = 'public'::regnamespace",
        "SELECT coalesce(relacl::text, '') FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace",
    ]
    texts: list[str] = []
    for q in queries:
        texts += [r[0] for r in pg.execute(q, dbname=db)]
    return texts


def _user_comments(pg: PgServer, db: str) -> list[str]:
    """pg_description of user objects (the registry's own schema comment aside)."""
    query = (
        "SELECT description FROM pg_description WHERE objoid >= 16384 AND description !~ '^pgcloak'"
    )
    return [r[0] for r in pg.execute(query, dbname=db)]


def _compare_views(pg: PgServer, db: str, cat: MemoryCatalog) -> int:
    """Views in A have the names, columns and dependencies the plans recorded for B."""
    views = pg.execute(
        "SELECT relname::text, relkind::text FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('v', 'm') ORDER BY 1",
        dbname=db,
    )
    for name, relkind in views:
        rel = cat.relation("public", name)
        assert rel is not None, name
        assert rel.kind == {"v": "view", "m": "matview"}[relkind]
        cols = pg.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (name,),
            dbname=db,
        )
        assert [c.name for c in rel.columns] == [r[0] for r in cols], name
        deps = pg.execute(
            "SELECT DISTINCT t.relname::text FROM pg_rewrite r "
            "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
            "JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND t.oid = d.refobjid "
            "WHERE r.ev_class = %s::regclass AND t.oid <> r.ev_class",
            (name,),
            dbname=db,
        )
        reads = set()
        for phys in rel.reads or ():
            dep = cat.relation_by_physical(phys)
            reads.add(dep.name if dep is not None else phys)
        assert reads == {r[0] for r in deps}, name
    return len(views)


def test_views_comments_grants_differential(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db_a, db_b = db_factory(), db_factory()
    role = f"pgcloak_v_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE ROLE {role}")
    cat = _b_catalog(pg, db_b)
    rw = Rewriter()
    sent: list[str] = []
    mismatches: list[str] = []
    outcomes: list[tuple[str, Outcome, Outcome]] = []
    views_checked = 0
    try:
        with pg.connect(db_a) as conn_a, pg.connect(db_b) as conn_b:
            for raw in SCHEMA + SEED + CORPUS:
                sql = raw.replace("{role}", role)
                if sql == "DROP VIEW customers":  # first of the DROPs: all views still exist
                    views_checked = _compare_views(pg, db_a, cat)
                    assert len(_definitions(pg, db_b)) > views_checked
                    assert sum("confidential" in c for c in _user_comments(pg, db_a)) >= 10
                    assert _user_comments(pg, db_b) == []
                a = _run(conn_a, sql)
                b = _run_b(conn_b, sql, rw, cat, sent)
                outcomes.append((sql, a, b))
                if _differs(a, b):
                    mismatches.append(f"{sql}\n  A: {a}\n  B: {b}")
            assert not mismatches, "\n".join(mismatches)
            assert views_checked >= 4
    finally:
        for db in (db_a, db_b):
            pg.execute(f"DROP OWNED BY {role}", dbname=db)
        pg.execute(f"DROP ROLE {role}")
    assert len(CORPUS) >= 50
    states = {a.sqlstate for _, a, _ in outcomes if a.sqlstate}
    assert {"42701", "42601", "42P07", "42P16", "42809", "42703", "42704", "42P01"} <= states
    assert {"2BP01", "55000", "42501", "44000"} <= states
    word = _word_pattern(SEMANTIC_NAMES + VIEW_NAMES)
    leaks = [text for text in sent if word.search(text)]
    assert not leaks, leaks
    catalog_texts = _catalog_texts(pg, db_b) + _definitions(pg, db_b)
    leaked = [t for t in catalog_texts if word.search(t)]
    assert not leaked, leaked


def test_view_definitions_hold_only_physical_names(
    pg: PgServer, db_factory: Callable[..., str]
) -> None:
    """pg_views.definition / pg_get_viewdef of a rewritten view: physical names only."""
    db = db_factory()
    cat = MemoryCatalog()
    rw = Rewriter()
    statements = [
        *SCHEMA[:3],
        "CREATE VIEW customer_totals (buyer) AS WITH big AS (SELECT cust_id, "
        "sum(order_total) AS total_spent FROM orders GROUP BY cust_id) SELECT c.email, "
        "b.total_spent, (SELECT count(*) FROM orders o WHERE o.cust_id = c.cust_id) AS units "
        "FROM customers c JOIN big b USING (cust_id) WHERE c.full_name <> 'nobody' "
        "ORDER BY b.total_spent DESC",
        "CREATE MATERIALIZED VIEW mv_totals AS SELECT ct.buyer, ct.units FROM customer_totals ct",
        "COMMENT ON VIEW customer_totals IS 'confidential'",
        "COMMENT ON COLUMN mv_totals.units IS 'confidential'",
    ]
    with pg.connect(db) as conn:
        for sql in statements:
            (plan,) = rw.plan(sql, cat)
            if plan.sql is not None:
                conn.execute(plan.sql.encode())
            cat.apply_all(plan.changes)
    texts = _definitions(pg, db)
    assert len(texts) >= 5
    assert all(re.search(r"\b[tv][0-9a-f]{20}\b", t) for t in texts[:4])
    word = _word_pattern([*SEMANTIC_NAMES, *VIEW_NAMES, "big"])
    assert not [t for t in texts if word.search(t)]
    assert _user_comments(pg, db) == []
    view = cat.relation("public", "customer_totals")
    assert view is not None and [c.name for c in view.columns] == ["buyer", "total_spent", "units"]
    assert cat.comment("v", view.physical) == "confidential"
    mv = cat.relation("public", "mv_totals")
    assert mv is not None and mv.kind == "matview" and mv.reads == (view.physical,)
    units = mv.column("units")
    assert units is not None and cat.comment("c", units.physical, mv.physical) == "confidential"


# -- refusals and plan-level behaviour ---------------------------------------------------------


def _catalog() -> MemoryCatalog:
    cat = MemoryCatalog(uncloaked=[("pg_catalog", "pg_class"), ("public", "plain_table")])
    rw = Rewriter()
    for sql in [
        *SCHEMA,
        "CREATE VIEW paid_orders AS SELECT order_no, cust_id FROM orders",
        "CREATE VIEW mixed AS SELECT o.order_no, p.relname FROM orders o "
        "JOIN plain_table p ON p.relname = o.order_status",
        "CREATE MATERIALIZED VIEW mv_totals AS SELECT cust_id, count(*) FROM orders GROUP BY 1",
    ]:
        for plan in rw.plan(sql, cat):
            cat.apply_all(plan.changes)
    return cat


REFUSED = [
    ("CREATE RECURSIVE VIEW tree (n) AS SELECT cust_id FROM customers", "RECURSIVE VIEW"),
    ("CREATE TEMP VIEW tv AS SELECT email FROM customers", "temporary view"),
    ("CREATE VIEW pg_temp.tv AS SELECT email FROM customers", "temporary view"),
    ("CREATE VIEW v AS SELECT * FROM customers, pg_class", "output columns of *"),
    ("CREATE TEMP VIEW v AS SELECT 1 AS customers", "CREATE VIEW"),
    ("CREATE OR REPLACE VIEW plain_table AS SELECT email FROM customers", "does not cloak"),
    ("ALTER VIEW paid_orders ALTER COLUMN cust_id SET DEFAULT 1", "ALTER VIEW"),
    ("ALTER MATERIALIZED VIEW mv_totals SET (fillfactor = 50)", "ALTER MATERIALIZED VIEW"),
    ("ALTER TABLE orders DROP COLUMN placed_on CASCADE", "DROP ... CASCADE"),
    ("ALTER TABLE orders DROP CONSTRAINT orders_pkey CASCADE", "DROP ... CASCADE"),
    ("DROP TABLE plain_table CASCADE", "CASCADE of a relation it does not cloak"),
    ("COMMENT ON INDEX customers_pkey IS 'x'", "index of a constraint"),
    ("COMMENT ON TRIGGER trg ON customers IS 'x'", "COMMENT ON this object type"),
    ("COMMENT ON COLUMN somedb.public.customers.email IS 'x'", "database-qualified"),
    ("COMMENT ON TABLE plain_table IS 'mentions customers'", "COMMENT"),
    ("GRANT SELECT (order_no) ON orders, plain_table TO someone", "cloaked and uncloaked"),
    ("GRANT SELECT (email) ON ALL TABLES IN SCHEMA public TO someone", "ALL TABLES IN SCHEMA"),
    ("GRANT SELECT ON customers TO customers_pkey", "cannot rewrite every reference"),
    ("GRANT EXECUTE ON FUNCTION customers() TO someone", "GRANT on this object type"),
]


@pytest.mark.parametrize(("sql", "fragment"), REFUSED)
def test_refused(sql: str, fragment: str) -> None:
    cat = _catalog()
    with pytest.raises(CloakError) as info:
        Rewriter().plan(sql, cat)
    assert info.value.sqlstate == "0A000", info.value.message
    assert fragment in info.value.message


def test_cascade_needs_known_dependencies() -> None:
    """A view loaded without its dependencies (reads None) makes CASCADE refuse."""
    cat = _catalog()
    orders = cat.relation("public", "orders")
    assert orders is not None
    cols = (Column("order_no", orders.columns[0].physical),)
    cat.apply(CreateView(Relation("public", "legacy", "v0123456789abcdef0123", cols, "view")))
    for sql in ("DROP TABLE orders CASCADE", "DROP VIEW paid_orders CASCADE"):
        with pytest.raises(CloakError) as info:
            Rewriter().plan(sql, cat)
        assert info.value.sqlstate == "0A000" and "cannot tell" in info.value.message
    (plan,) = Rewriter().plan("DROP TABLE orders", cat)  # RESTRICT: the server decides
    assert plan.sql is not None
    assert not [c for c in plan.changes if isinstance(c, DropView)]


def test_drop_table_cascade_drops_dependent_views_transitively() -> None:
    cat = _catalog()
    rw = Rewriter()
    for plan in rw.plan("CREATE VIEW top_paid AS SELECT order_no FROM paid_orders", cat):
        cat.apply_all(plan.changes)
    paid = cat.relation("public", "paid_orders")
    top = cat.relation("public", "top_paid")
    mv = cat.relation("public", "mv_totals")
    mixed = cat.relation("public", "mixed")
    assert paid and top and mv and mixed
    (plan,) = rw.plan("DROP TABLE orders CASCADE", cat)
    dropped = {c.view for c in plan.changes if isinstance(c, DropView)}
    assert dropped == {paid.physical, top.physical, mv.physical, mixed.physical}
    # FKs of other tables referencing orders go too (existing behaviour).
    assert plan.sql is not None and "CASCADE" in plan.sql
    cat.apply_all(plan.changes)
    assert cat.relation("public", "top_paid") is None


def test_regclass_constants_are_dependencies() -> None:
    """'x'::regclass and nextval('s') in a view make it depend on x / s and s's table."""
    cat = _catalog()
    rw = Rewriter()
    (plan,) = rw.plan(
        "CREATE VIEW next_ids AS SELECT nextval('customers_cust_id_seq') AS n, "
        "'products'::regclass AS r, 'plain_table'::regclass AS p",
        cat,
    )
    assert plan.sql is not None and "customers" not in plan.sql and "products" not in plan.sql
    cat.apply_all(plan.changes)
    view = cat.relation("public", "next_ids")
    customers = cat.relation("public", "customers")
    products = cat.relation("public", "products")
    assert view is not None and customers is not None and products is not None
    (seq,) = cat.sequences(customers.physical)
    assert view.reads == tuple(
        sorted((seq.physical, customers.physical, products.physical, "plain_table"))
    )
    (plan,) = rw.plan("DROP TABLE customers CASCADE", cat)
    assert view.physical in {c.view for c in plan.changes if isinstance(c, DropView)}
    with pytest.raises(CloakError):
        rw.plan("DROP TABLE plain_table CASCADE", cat)


def test_multi_statement_string_sees_views() -> None:
    """Within one query string, later statements see earlier views (overlay)."""
    cat = _catalog()
    plans = plan_query(
        "CREATE VIEW big_spenders AS SELECT cust_id, order_total FROM orders "
        "WHERE order_total > 50; SELECT cust_id FROM big_spenders; "
        "COMMENT ON VIEW big_spenders IS 'confidential'; "
        "ALTER VIEW big_spenders RENAME COLUMN order_total TO spent; "
        "SELECT spent FROM big_spenders; DROP VIEW big_spenders",
        cat,
    )
    assert [p.sql is None for p in plans] == [False, False, True, True, False, False]
    assert plans[1].output_names == ("cust_id",)
    assert plans[4].output_names == ("spent",)
    assert isinstance(plans[2].changes[0], SetComment)
    assert plans[2].command_tag == "COMMENT" and plans[3].command_tag == "ALTER VIEW"
    assert all("big_spenders" not in (p.sql or "") for p in plans)
    assert cat.relation("public", "big_spenders") is None  # the base catalog is untouched


def test_views_over_uncloaked_relations() -> None:
    """Cloaked like any view (bug B5: they used to reach pg_class as written); only
    temporary ones (and ones the cloak filter declines) pass through."""
    cat = _catalog()
    sql = "CREATE VIEW plain_view AS SELECT relname AS rn FROM plain_table WHERE relname > 'a'"
    (plan,) = Rewriter().plan(sql, cat)
    (change,) = plan.changes
    assert isinstance(change, CreateView) and change.view.reads == ("plain_table",)
    assert plan.cloaked and plan.sql is not None
    assert "plain_view" not in plan.sql and " rn " not in plan.sql
    sql = "CREATE TEMP VIEW plain_view AS SELECT relname AS rn FROM plain_table"
    (plan,) = Rewriter().plan(sql, cat)
    assert plan.sql == sql and not plan.cloaked and not plan.changes
    for sql in ("COMMENT ON TABLE plain_table IS 'fine'", "GRANT SELECT ON plain_table TO r",
                "REFRESH MATERIALIZED VIEW plain_table", "DROP VIEW plain_table"):  # fmt: skip
        (plan,) = Rewriter().plan(sql, cat)
        assert plan.sql == sql and not plan.changes


def test_comment_text_never_in_plan() -> None:
    cat = _catalog()
    (plan,) = Rewriter().plan("COMMENT ON TABLE orders IS 'confidential: orders'", cat)
    assert plan.sql is None and plan.command_tag == "COMMENT"
    (change,) = plan.changes
    assert isinstance(change, SetComment) and change.kind == "t"
    assert "confidential" not in repr(plan) and "confidential" not in repr(change)
    cat.apply(change)
    orders = cat.relation("public", "orders")
    assert orders is not None and cat.comment("t", orders.physical) == "confidential: orders"
    (plan,) = Rewriter().plan("COMMENT ON TABLE orders IS NULL", cat)
    cat.apply_all(plan.changes)
    assert cat.comment("t", orders.physical) is None


# -- the registry side: writes_for of the new changes, and what a reload gives back ----------


def test_registry_round_trip(pg: PgServer, db_factory: Callable[..., str]) -> None:
    """View/comment changes become registry writes that load back into the same catalog."""
    from test_registry_catalog import MASTER, _execute, _load, _reload_matches

    from pgcloak.registry.install import install
    from pgcloak.registry.model import Kind

    statements = [
        *SCHEMA[:3],
        "CREATE VIEW paid_orders AS SELECT order_no, cust_id FROM orders",
        "CREATE OR REPLACE VIEW paid_orders AS SELECT order_no, cust_id, order_total FROM orders",
        "CREATE MATERIALIZED VIEW mv_totals AS SELECT cust_id, count(*) FROM orders GROUP BY 1",
        "CREATE UNIQUE INDEX ON mv_totals (cust_id)",
        "ALTER VIEW paid_orders RENAME TO spend_by_customer",
        "ALTER VIEW spend_by_customer RENAME COLUMN order_total TO total_spent",
        "ALTER MATERIALIZED VIEW mv_totals RENAME COLUMN count TO n_orders",
        "COMMENT ON VIEW spend_by_customer IS 'confidential totals'",
        "COMMENT ON COLUMN spend_by_customer.total_spent IS 'confidential sum'",
        "COMMENT ON TABLE customers IS 'confidential'",
        "COMMENT ON TABLE customers IS NULL",
        "COMMENT ON CONSTRAINT orders_pkey ON orders IS 'confidential key'",
        "COMMENT ON INDEX mv_totals_cust_id_idx IS 'confidential index'",
        "COMMENT ON SEQUENCE customers_cust_id_seq IS 'confidential sequence'",
        "COMMENT ON COLUMN mv_totals.n_orders IS 'confidential count'",
        "CREATE VIEW recent_paid AS SELECT s.order_no FROM spend_by_customer s",
        "DROP VIEW spend_by_customer CASCADE",
    ]
    with pg.connect(db_factory()) as conn:
        install(conn, MASTER)
        loaded = _load(conn)
        reg, cat = loaded.registry, loaded.catalog
        rw = Rewriter()
        for sql in statements:
            (plan,) = rw.plan(sql, cat)
            _execute(conn, plan, reg, cat)
        fresh = _reload_matches(conn, reg, cat, statements[-1])
        comments = {o.name: o.comment for o in fresh.registry if o.comment is not None}
        assert comments == {
            "orders_pkey": "confidential key",
            "mv_totals_cust_id_idx": "confidential index",
            "customers_cust_id_seq": "confidential sequence",
            "n_orders": "confidential count",
        }
        mv = fresh.catalog.relation("public", "mv_totals")
        assert mv is not None and mv.kind == "matview"
        assert [c.name for c in mv.columns] == ["cust_id", "n_orders"]
        assert [i.name for i in fresh.catalog.indexes(mv.physical)] == ["mv_totals_cust_id_idx"]
        assert fresh.catalog.relation("public", "recent_paid") is None
        kinds = {o.kind for o in fresh.registry}
        assert Kind.MATVIEW in kinds and Kind.VIEW not in kinds
        assert _user_comments(pg, conn.info.dbname) == []
        # A reloaded catalog knows what views read (pg_depend): CASCADE follows them.
        orders = fresh.catalog.relation("public", "orders")
        assert orders is not None and mv.reads == (orders.physical,)
        (plan,) = rw.plan("DROP TABLE orders CASCADE", fresh.catalog)
        assert DropView(mv.physical) in plan.changes
        (plan,) = rw.plan("DROP MATERIALIZED VIEW mv_totals", fresh.catalog)
        _execute(conn, plan, fresh.registry, fresh.catalog)
        assert not [o for o in _load(conn).registry if o.kind == Kind.MATVIEW]
