"""Relations created through pgcloak are cloaked: sequences, CREATE TABLE AS, SELECT INTO,
views and materialized views over uncloaked relations (bug B5), plus IF EXISTS notices.

Differential like test_rewriter_differential.py (whose helpers this reuses): database
A runs the semantic statements, database B what the rewriter makes of them; rows,
output names, command tags, SQLSTATEs and NOTICE texts (B's mapped back through the
plan's `notice_names` and the catalog) must match. Then B's pg_class, pg_attribute,
pg_sequence, view definitions and everything sent to B hold no semantic name. The
registry tests check that the new changes round-trip through registry writes and a
reload (LOAD_SQL), including what views read (CASCADE after a reload).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import PgServer
from test_rewriter_differential import (
    _PHYSICAL,
    SCHEMA,
    SEMANTIC_NAMES,
    Outcome,
    _b_catalog,
    _catalog_texts,
    _compare_names_with_postgres,
    _differs,
    _run,
    _run_cloaked,
    _word_pattern,
)

from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter, plan_query
from pgcloak.rewriter.catalog import (
    CreateSequence,
    CreateTable,
    DropSequence,
    DropView,
    OwnedSequence,
    RenameSequence,
    SetSequenceOwner,
    StandaloneSequence,
)

CREATED_NAMES = [
    "order_number_seq", "invoice_number_seq", "invoices", "invoice_no", "amount", "line_no_seq",
    "invoice_line_seq", "next_numbers", "next_no", "t_as", "top_customers", "mail", "pts",
    "customer_emails", "too_many_cols", "dup_cols", "empty_copy", "catalog_copy", "order_stats",
    "spent", "t_into", "vip_copy", "t_union", "t_with", "plain_view", "catalog_view", "mv_plain",
    "one", "two", "rel", "no_such_table", "no_such_view", "no_such_column", "no_such_constraint",
    "no_such_seq", "confidential", "customers_like", "extra_note", "like_dup",
]  # fmt: skip

SEED = [
    "INSERT INTO customers (email, full_name, loyalty_points, signup_day) VALUES "
    "('ann@example.com', 'Ann', 10, '2024-01-05'), ('bob@example.com', 'Bob', 0, '2024-02-11'), "
    "('cy@example.com', 'Cy', 250, '2024-02-20')",
    "INSERT INTO orders (cust_id, order_total, order_status, placed_on) VALUES "
    "(1, 10.50, 'paid', '2024-03-01'), (1, 3.25, 'new', '2024-03-02'), "
    "(3, 100.00, 'shipped', '2024-03-05')",
]

CORPUS = [
    # -- standalone sequences ---------------------------------------------------------------
    "CREATE SEQUENCE order_number_seq START 1000",
    "SELECT nextval('order_number_seq')",
    "SELECT nextval('order_number_seq'), currval('order_number_seq')",
    "SELECT setval('public.order_number_seq', 2000)",
    "SELECT nextval('order_number_seq'::regclass) AS next_no",
    "SELECT last_value, is_called FROM order_number_seq",
    "SELECT s.last_value FROM public.order_number_seq s",
    "ALTER SEQUENCE order_number_seq RESTART 5",
    "SELECT nextval('order_number_seq')",
    "ALTER SEQUENCE order_number_seq INCREMENT BY 10 MAXVALUE 100000 CACHE 1",
    "SELECT nextval('order_number_seq')",
    "CREATE SEQUENCE order_number_seq",
    "CREATE SEQUENCE IF NOT EXISTS order_number_seq",
    "CREATE SEQUENCE customers",
    # SQLAlchemy's Sequence("invoice_number_seq", start=1000) on a primary key
    "CREATE SEQUENCE invoice_number_seq START WITH 1000",
    "CREATE TABLE invoices (invoice_no integer NOT NULL, amount numeric, PRIMARY KEY (invoice_no))",
    "INSERT INTO invoices (invoice_no, amount) VALUES (nextval('invoice_number_seq'), 10) "
    "RETURNING invoices.invoice_no",
    "INSERT INTO invoices (invoice_no, amount) VALUES (nextval('invoice_number_seq'), 12) "
    "RETURNING invoice_no",
    "SELECT invoice_no, amount FROM invoices ORDER BY 1",
    # -- OWNED BY, RENAME ---------------------------------------------------------------------
    "CREATE SEQUENCE line_no_seq AS integer OWNED BY order_lines.line_no",
    "SELECT nextval('line_no_seq')",
    "ALTER SEQUENCE line_no_seq OWNED BY NONE",
    "ALTER SEQUENCE line_no_seq OWNED BY invoices.invoice_no",
    "ALTER SEQUENCE line_no_seq OWNED BY invoices.nope",
    "ALTER SEQUENCE line_no_seq RENAME TO invoice_line_seq",
    "SELECT nextval('invoice_line_seq')",
    "ALTER SEQUENCE invoice_line_seq RENAME TO invoices",
    "ALTER SEQUENCE customers RESTART 1",
    "ALTER SEQUENCE IF EXISTS no_such_seq RESTART 1",
    "ALTER SEQUENCE no_such_seq RESTART 1",
    "ALTER SEQUENCE IF EXISTS no_such_seq RENAME TO whatever",
    "ALTER SEQUENCE invoice_line_seq OWNER TO CURRENT_USER",
    "COMMENT ON SEQUENCE order_number_seq IS 'confidential numbering'",
    "GRANT USAGE ON SEQUENCE order_number_seq TO PUBLIC",
    # -- views on sequences, DROP SEQUENCE ------------------------------------------------------
    "CREATE VIEW next_numbers AS SELECT nextval('order_number_seq') AS n",
    "DROP SEQUENCE order_number_seq",
    "DROP SEQUENCE customers",
    "DROP SEQUENCE no_such_seq",
    "DROP SEQUENCE IF EXISTS no_such_seq, invoice_line_seq",
    "DROP SEQUENCE order_number_seq CASCADE",
    "SELECT * FROM next_numbers",
    # -- temporary sequences stay uncloaked ----------------------------------------------------
    "CREATE TEMP SEQUENCE scratch_seq",
    "SELECT nextval('scratch_seq')",
    # -- CREATE TABLE AS -------------------------------------------------------------------------
    "CREATE TABLE t_as AS SELECT 1 AS x",
    "SELECT x FROM t_as",
    "CREATE TABLE top_customers (mail, pts) AS SELECT email, loyalty_points FROM customers "
    "WHERE loyalty_points > 5",
    "SELECT * FROM top_customers ORDER BY mail",
    "SELECT t.mail, c.full_name FROM top_customers t JOIN customers c ON c.email = t.mail "
    "ORDER BY 1",
    "CREATE TABLE customer_emails AS SELECT cust_id, email FROM customers",
    "SELECT * FROM customer_emails JOIN customers USING (cust_id, email) ORDER BY cust_id",
    "CREATE UNLOGGED TABLE IF NOT EXISTS t_as AS SELECT 2 AS y",
    "CREATE TABLE t_as AS SELECT 1",
    "CREATE TABLE too_many_cols (a, b, c) AS SELECT 1, 2",
    "CREATE TABLE dup_cols AS SELECT 1 AS a, 2 AS a",
    "CREATE TABLE empty_copy AS SELECT email, full_name FROM customers WITH NO DATA",
    "SELECT count(*) FROM empty_copy",
    "CREATE TABLE catalog_copy AS SELECT relname FROM pg_catalog.pg_class "
    "WHERE relname = 'pg_class'",
    "SELECT relname FROM catalog_copy",
    "CREATE TABLE order_stats WITH (fillfactor = 70) AS SELECT cust_id, count(*), "
    "sum(order_total) AS spent FROM orders GROUP BY cust_id",
    "SELECT cust_id, count, spent FROM order_stats ORDER BY 1",
    "INSERT INTO t_as VALUES (5) RETURNING x",
    "ALTER TABLE t_as ADD COLUMN note text",
    "CREATE INDEX ON t_as (x)",
    # -- CREATE TABLE (LIKE cloaked) -----------------------------------------------------------
    "CREATE TABLE customers_like (LIKE customers INCLUDING DEFAULTS, extra_note text)",
    "INSERT INTO customers_like (email) VALUES ('zed@example.com') "
    "RETURNING cust_id, loyalty_points",
    "SELECT * FROM customers_like JOIN customers USING (cust_id) ORDER BY 1",
    "CREATE TABLE like_dup (email text, LIKE public.customers)",
    # -- SELECT INTO ------------------------------------------------------------------------------
    "SELECT 2 AS y INTO t_into",
    "SELECT y FROM t_into",
    "SELECT email, full_name INTO vip_copy FROM customers WHERE loyalty_points > 100",
    "SELECT * FROM vip_copy",
    "SELECT 1 AS a INTO TABLE t_union UNION SELECT 2 ORDER BY 1",
    "SELECT a FROM t_union ORDER BY a",
    "WITH w AS (SELECT cust_id FROM orders) SELECT count(*) AS n INTO UNLOGGED t_with FROM w",
    "SELECT n FROM t_with",
    "SELECT 3 AS y INTO t_into",
    "SELECT 1 AS q INTO TEMP scratch_into",
    "SELECT q FROM scratch_into",
    # -- views and materialized views over uncloaked relations only ---------------------------
    "CREATE VIEW plain_view AS SELECT 1 AS one",
    "SELECT one FROM plain_view",
    "CREATE VIEW catalog_view AS SELECT relname AS rel FROM pg_catalog.pg_class "
    "WHERE relname = 'pg_class'",
    "SELECT * FROM catalog_view",
    "CREATE MATERIALIZED VIEW mv_plain AS SELECT 1 AS z",
    "SELECT z FROM mv_plain",
    "CREATE OR REPLACE VIEW plain_view AS SELECT 1 AS one, 2 AS two",
    "SELECT two FROM plain_view",
    "CREATE TEMP VIEW scratch_view AS SELECT 1 AS w",
    "SELECT w FROM scratch_view",
    # -- IF EXISTS on missing objects: the NOTICE must name the client's object -----------------
    "DROP TABLE IF EXISTS no_such_table",
    "DROP VIEW IF EXISTS no_such_view",
    "ALTER TABLE t_as DROP COLUMN IF EXISTS no_such_column",
    "ALTER TABLE t_as DROP CONSTRAINT IF EXISTS no_such_constraint",
    "DROP TABLE t_as, t_into, vip_copy",
    "DROP VIEW plain_view",
    "DROP MATERIALIZED VIEW mv_plain",
]

# Temporary relations the session made: the proxy's TempCatalog tells the rewriter so.
TEMPORARY = ["scratch_seq", "scratch_into", "scratch_view"]


def _b_texts(pg: PgServer, db: str) -> list[str]:
    """Sequence names/owners and view definitions of B (on top of _catalog_texts)."""
    queries = [
        "SELECT c.relname::text FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid",
        "SELECT definition FROM pg_views WHERE schemaname = 'public'",
        "SELECT definition FROM pg_matviews WHERE schemaname = 'public'",
        "SELECT description FROM pg_description WHERE objoid >= 16384",
    ]
    return [r[0] for q in queries for r in pg.execute(q, dbname=db)]


def test_creates_differential(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db_a, db_b = db_factory(), db_factory()
    cat = _b_catalog(pg, db_b, TEMPORARY)
    rw = Rewriter()
    sent: list[str] = []
    mismatches: list[str] = []
    outcomes: list[tuple[str, Outcome, Outcome]] = []
    with pg.connect(db_a) as conn_a, pg.connect(db_b) as conn_b:
        notices_a: list[str] = []
        notices_b: list[str] = []
        conn_a.add_notice_handler(lambda d: notices_a.append(d.message_primary or ""))
        conn_b.add_notice_handler(lambda d: notices_b.append(d.message_primary or ""))
        for sql in SCHEMA + SEED + CORPUS:
            notices_a.clear()
            notices_b.clear()
            a = _run(conn_a, sql)
            b = _run_cloaked(conn_b, sql, rw, cat, sent, notices=notices_b)
            outcomes.append((sql, a, b))
            if _differs(a, b):
                mismatches.append(f"{sql}\n  A: {a}\n  B: {b}")
            if notices_a != notices_b:
                mismatches.append(f"{sql}\n  A notices: {notices_a}\n  B notices: {notices_b}")
        assert not mismatches, "\n".join(mismatches)
    states = {a.sqlstate for _, a, _ in outcomes if a.sqlstate}
    assert {"42P07", "42P01", "42809", "42601", "42701", "42703", "2BP01"} <= states
    tags = {a.tag for _, a, _ in outcomes}
    assert {"SELECT 1", "SELECT 2", "CREATE TABLE AS", "CREATE SEQUENCE", "DROP SEQUENCE"} <= tags
    word = _word_pattern(SEMANTIC_NAMES + CREATED_NAMES)
    leaks = [text for text in sent if word.search(text)]
    assert not leaks, leaks
    _compare_names_with_postgres(pg, db_a, cat)
    standalone_a = pg.execute(
        "SELECT c.relname::text FROM pg_class c WHERE c.relkind = 'S' "
        "AND c.relnamespace = 'public'::regnamespace AND NOT EXISTS (SELECT FROM pg_depend d "
        "WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))",
        dbname=db_a,
    )
    names = sorted(cat.relation_names("public"))
    assert [r[0] for r in standalone_a] == ["invoice_number_seq"]
    assert "invoice_number_seq" in names and "customers_cust_id_seq" in names
    texts = _catalog_texts(pg, db_b) + _b_texts(pg, db_b)
    assert any(_PHYSICAL.search(t) for t in texts)
    leaked = [t for t in texts if word.search(t)]
    assert not leaked, leaked


# -- plans -------------------------------------------------------------------------------------


def _catalog() -> MemoryCatalog:
    cat = MemoryCatalog(uncloaked=[("pg_catalog", "pg_class"), ("public", "plain_table")])
    for sql in SCHEMA:
        for plan in plan_query(sql, cat):
            cat.apply_all(plan.changes)
    return cat


def one(sql: str, cat: MemoryCatalog, rw: Rewriter | None = None) -> Plan:
    (plan,) = (rw or Rewriter()).plan(sql, cat)
    return plan


def test_sequence_plans_and_changes() -> None:
    cat = _catalog()
    plan = one("CREATE SEQUENCE IF NOT EXISTS order_number_seq AS bigint START 1000", cat)
    (change,) = plan.changes
    assert isinstance(change, CreateSequence) and isinstance(change.sequence, StandaloneSequence)
    seq = change.sequence
    assert seq.name == "order_number_seq" and seq.schema == "public" and not seq.implicit
    assert plan.sql == f"CREATE SEQUENCE IF NOT EXISTS {seq.physical} AS bigint START 1000"
    assert "order_number_seq" not in repr(plan)
    cat.apply(change)
    assert cat.relation_physical("public", "order_number_seq") == seq.physical
    assert cat.standalone_sequence(seq.physical) == seq
    assert "order_number_seq" in cat.sensitive_names()
    plan = one(
        "INSERT INTO orders (order_no, cust_id) VALUES (nextval('order_number_seq'), 1)", cat
    )
    assert plan.sql is not None and f"nextval('{seq.physical}')" in plan.sql
    plan = one("SELECT currval('public.order_number_seq'), 'order_number_seq'::regclass", cat)
    assert plan.sql is not None and "order_number_seq" not in plan.sql
    assert plan.output_names == ("currval", "regclass")
    # OWNED BY a cloaked column: the sequence becomes that column's, in the same schema.
    plan = one("ALTER SEQUENCE order_number_seq OWNED BY orders.order_no", cat)
    orders = cat.relation("public", "orders")
    assert orders is not None
    order_no = orders.column("order_no")
    assert order_no is not None
    assert plan.changes == (SetSequenceOwner(seq, orders.physical, order_no.physical),)
    assert (
        plan.sql == f"ALTER SEQUENCE {seq.physical} OWNED BY {orders.physical}.{order_no.physical}"
    )
    cat.apply_all(plan.changes)
    assert cat.standalone_sequence(seq.physical) is None
    owned = [s for s in cat.sequences(orders.physical) if s.physical == seq.physical]
    assert owned == [OwnedSequence("public", "order_number_seq", seq.physical, orders.physical,
                                   order_no.physical, implicit=False)]  # fmt: skip
    plan = one("ALTER SEQUENCE order_number_seq RENAME TO order_no_seq", cat)
    assert plan.sql is None and plan.command_tag == "ALTER SEQUENCE"
    assert plan.changes == (RenameSequence(owned[0], "order_no_seq"),)
    cat.apply_all(plan.changes)
    assert cat.relation_physical("public", "order_no_seq") == seq.physical
    plan = one("DROP SEQUENCE order_no_seq", cat)
    assert plan.sql == f"DROP SEQUENCE {seq.physical}"
    (drop,) = plan.changes
    assert isinstance(drop, DropSequence) and drop.sequence.physical == seq.physical
    cat.apply(drop)
    assert cat.relation_physical("public", "order_no_seq") is None


def test_select_into_becomes_create_table_as() -> None:
    cat = _catalog()
    plan = one("WITH w AS (SELECT email FROM customers) SELECT w.email, 1 AS one "
               "INTO UNLOGGED public.mail_copy FROM w", cat)  # fmt: skip
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    rel = change.table
    customers = cat.relation("public", "customers")
    assert customers is not None and customers.column("email") is not None
    assert [c.name for c in rel.columns] == ["email", "one"]
    assert rel.columns[0] == customers.column("email")  # same physical name: USING joins
    cols = ", ".join(c.physical for c in rel.columns)
    assert plan.sql is not None
    assert plan.sql.startswith(
        f"CREATE UNLOGGED TABLE public.{rel.physical} ({cols}) AS WITH a1 AS"
    )
    assert " INTO " not in plan.sql and "mail_copy" not in plan.sql and "one" not in plan.sql
    assert plan.output_names is None


def test_notice_names_map_dummies_back() -> None:
    cat = _catalog()
    cases = {
        "DROP TABLE IF EXISTS no_such_table, orders": ["no_such_table"],
        "DROP SEQUENCE IF EXISTS no_such_seq": ["no_such_seq"],
        "ALTER TABLE orders DROP COLUMN IF EXISTS no_such_column": ["no_such_column"],
        "ALTER TABLE orders DROP CONSTRAINT IF EXISTS no_such_con": ["no_such_con"],
        "ALTER SEQUENCE IF EXISTS no_such_seq RESTART 1": ["no_such_seq"],
        "DROP VIEW IF EXISTS no_such_view": ["no_such_view"],
    }
    for sql, names in cases.items():
        plan = one(sql, cat)
        assert plan.sql is not None
        assert [n for _, n in plan.notice_names] == names, sql
        for dummy, name in plan.notice_names:
            assert dummy in plan.sql and name not in plan.sql and name not in repr(plan)
    assert one("DROP TABLE orders", cat).notice_names == ()


def test_temporary_and_filtered_creates_pass_through() -> None:
    cat = _catalog()
    rw = Rewriter(cloak_filter=lambda schema, name: not name.startswith("plain_"))
    for sql in [
        "CREATE SEQUENCE plain_seq",
        "CREATE TEMP SEQUENCE scratch_seq OWNED BY plain_table.relname",
        "CREATE TABLE plain_as AS SELECT 1 AS x",
        "SELECT 1 AS x INTO plain_into",
        "SELECT 1 AS x INTO TEMP scratch",
        "CREATE VIEW plain_view AS SELECT relname FROM plain_table",
        "CREATE MATERIALIZED VIEW plain_mv AS SELECT 1 AS one",
        "CREATE TEMP VIEW scratch_view AS SELECT * FROM plain_table",
        "CREATE TEMP TABLE scratch_as AS SELECT * FROM plain_table",
        "EXPLAIN ANALYZE CREATE TABLE plain_x AS SELECT 1",
    ]:
        plan = one(sql, cat, rw)
        assert plan.sql == sql and not plan.cloaked and not plan.changes, sql
    # Without the filter, the same statements are cloaked.
    for sql in ["CREATE SEQUENCE plain_seq", "SELECT 1 AS x INTO plain_into"]:
        plan = one(sql, cat)
        assert plan.cloaked and plan.changes and "plain_" not in (plan.sql or ""), sql


REFUSED = [
    ("CREATE SEQUENCE s OWNED BY plain_table.relname", "0A000", "does not cloak"),
    ("CREATE SEQUENCE s OWNED BY paid.order_no", "0A000", "owned by views"),
    ("CREATE SEQUENCE other.s OWNED BY orders.order_no", "55000", "same schema"),
    ("CREATE SEQUENCE s OWNED BY orders.nope", "42703", 'column "nope"'),
    ("CREATE SEQUENCE s OWNED BY orders", "42601", "invalid OWNED BY option"),
    ("CREATE TEMP SEQUENCE s OWNED BY orders.order_no", "0A000", "temporary"),
    ("CREATE TEMP TABLE t AS SELECT email FROM customers", "0A000", "temporary tables"),
    ("SELECT email INTO TEMP t FROM customers", "0A000", "SELECT INTO"),
    ("CREATE VIEW v AS SELECT * FROM plain_table", "0A000", "output columns of *"),
    ("CREATE TABLE t AS SELECT * FROM plain_table", "0A000", "output columns of *"),
    ("CREATE TABLE t AS EXECUTE q", "0A000", "AS EXECUTE"),
    ("EXPLAIN ANALYZE SELECT 1 INTO t", "0A000", "EXPLAIN"),
    ("EXPLAIN CREATE MATERIALIZED VIEW mv AS SELECT 1", "0A000", "EXPLAIN"),
    ("PREPARE p AS SELECT 1 INTO t", "0A000", "PREPARE of SELECT INTO"),
    ("SELECT * FROM (SELECT 1 INTO t) s", "42601", "not allowed here"),
    ("CREATE RECURSIVE VIEW r (n) AS SELECT 1", "0A000", "RECURSIVE"),
    ("ALTER SEQUENCE customers_cust_id_seq SET SCHEMA other", "0A000", ""),
    (
        "ALTER SEQUENCE customers_cust_id_seq OWNED BY plain_table.relname",
        "0A000",
        "does not cloak",
    ),
    ("ALTER SEQUENCE plain_table OWNED BY orders.order_no", "0A000", "ALTER SEQUENCE"),
    ("DROP SEQUENCE orders", "42809", "is not a sequence"),
    ("CREATE TABLE t (LIKE customers INCLUDING ALL)", "0A000", "INCLUDING DEFAULTS"),
    ("CREATE TABLE t (LIKE customers INCLUDING INDEXES)", "0A000", "INCLUDING DEFAULTS"),
    ("CREATE TABLE t (LIKE plain_table)", "0A000", "LIKE of a relation it does not cloak"),
    ("CREATE TABLE t (LIKE paid)", "0A000", "LIKE of a relation it does not cloak"),
]


@pytest.mark.parametrize(("sql", "sqlstate", "fragment"), REFUSED)
def test_refused(sql: str, sqlstate: str, fragment: str) -> None:
    cat = _catalog()
    cat.apply_all(one("CREATE VIEW paid AS SELECT order_no FROM orders", cat).changes)
    with pytest.raises(CloakError) as info:
        Rewriter().plan(sql, cat)
    assert info.value.sqlstate == sqlstate, info.value.message
    assert fragment in info.value.message


def test_multi_statement_string_sees_sequences() -> None:
    cat = _catalog()
    plans = plan_query(
        "CREATE SEQUENCE ticket_seq; SELECT nextval('ticket_seq'); "
        "ALTER SEQUENCE ticket_seq OWNED BY orders.order_no; "
        "ALTER SEQUENCE ticket_seq RENAME TO ticket_no_seq; SELECT nextval('ticket_no_seq'); "
        "CREATE VIEW tickets AS SELECT nextval('ticket_no_seq') AS t; "
        "DROP SEQUENCE ticket_no_seq CASCADE; SELECT 1 AS done INTO done_table",
        cat,
    )
    assert [p.sql is None for p in plans] == [False, False, False, True, False, False, False, False]
    assert all("ticket" not in (p.sql or "") and "done" not in (p.sql or "") for p in plans)
    drop = plans[6].changes
    assert isinstance(drop[0], DropSequence) and isinstance(drop[1], DropView)
    assert cat.relation_physical("public", "ticket_seq") is None  # the base catalog is untouched


def test_standalone_sequence_in_a_view_is_a_dependency() -> None:
    cat = _catalog()
    rw = Rewriter()
    cat.apply_all(one("CREATE SEQUENCE free_seq", cat, rw).changes)
    plan = one("CREATE VIEW counters AS SELECT s.last_value, nextval('customers_cust_id_seq') "
               "FROM free_seq s", cat, rw)  # fmt: skip
    cat.apply_all(plan.changes)
    view = cat.relation("public", "counters")
    free = cat.relation_physical("public", "free_seq")
    customers = cat.relation("public", "customers")
    assert view is not None and free is not None and customers is not None
    (serial,) = cat.sequences(customers.physical)
    assert view.reads == tuple(sorted({free, serial.physical, customers.physical}))
    (plan,) = rw.plan("DROP SEQUENCE free_seq CASCADE", cat)
    assert DropView(view.physical) in plan.changes
    (plan,) = rw.plan("DROP TABLE customers CASCADE", cat)
    assert DropView(view.physical) in plan.changes


# -- the registry side ---------------------------------------------------------------------------


def test_registry_round_trip(pg: PgServer, db_factory: Callable[..., str]) -> None:
    """Sequence/CTAS/view changes become registry writes that reload into the same catalog,
    including what views read: CASCADE keeps working after a reload."""
    from test_registry_catalog import MASTER, _execute, _load, _reload_matches

    from pgcloak.registry.install import install
    from pgcloak.registry.model import Kind

    statements = [
        *SCHEMA[:5],
        "CREATE SEQUENCE order_number_seq START 1000",
        "CREATE SEQUENCE line_no_seq OWNED BY order_lines.line_no",
        "ALTER SEQUENCE line_no_seq OWNED BY NONE",
        "ALTER SEQUENCE line_no_seq OWNED BY orders.order_total",
        "ALTER SEQUENCE customers_cust_id_seq OWNED BY NONE",
        "ALTER SEQUENCE line_no_seq RENAME TO renamed_seq",
        "COMMENT ON SEQUENCE order_number_seq IS 'confidential'",
        "CREATE TABLE t_as AS SELECT 1 AS x",
        "CREATE TABLE top_customers (mail) AS SELECT email, loyalty_points FROM customers",
        "SELECT 2 AS y INTO t_into",
        "CREATE VIEW plain_view AS SELECT 1 AS one",
        "CREATE VIEW next_numbers AS SELECT nextval('order_number_seq') AS n, "
        "nextval('renamed_seq') AS r, pg_relation_size('customers_pkey') AS pk, "
        "pg_relation_size('orders_placed_on_idx') AS ix",
        "CREATE MATERIALIZED VIEW mv_orders AS SELECT o.order_no, c.email FROM orders o "
        "JOIN customers c USING (cust_id)",
        "CREATE VIEW recent AS SELECT m.order_no FROM mv_orders m, pg_catalog.pg_tables LIMIT 1",
        "DROP TABLE customers CASCADE",
        "DROP SEQUENCE renamed_seq",
        "DROP SEQUENCE order_number_seq",
    ]
    with pg.connect(db_factory()) as conn:
        install(conn, MASTER)
        loaded = _load(conn)
        reg, cat = loaded.registry, loaded.catalog
        rw = Rewriter()
        for sql in statements:
            (plan,) = rw.plan(sql, cat)
            _execute(conn, plan, reg, cat)
            fresh = _reload_matches(conn, reg, cat, sql)
            seqs = [o.physical_name for o in reg if o.kind == Kind.SEQUENCE]
            assert [fresh.catalog.standalone_sequence(p) for p in seqs] == [
                cat.standalone_sequence(p) for p in seqs
            ], sql
            if sql.startswith("CREATE VIEW next_numbers"):
                view = fresh.catalog.relation("public", "next_numbers")
                assert view is not None and view.reads is not None and len(view.reads) == 6
            reg, cat = fresh.registry, fresh.catalog
        names = {o.name for o in reg}
        assert {"customers_cust_id_seq", "t_as", "top_customers", "t_into", "plain_view"} <= names
        assert not {"next_numbers", "mv_orders", "recent", "order_number_seq"} & names
        disowned = cat.relation_physical("public", "customers_cust_id_seq")
        assert disowned is not None
        free = cat.standalone_sequence(disowned)
        assert free is not None and free.implicit


def test_overlay_changes_sequences_of_the_base_catalog() -> None:
    """In one query string, later statements see renames/owner changes/drops of sequences
    the base catalog holds; the base catalog itself stays as it was."""
    cat = _catalog()
    cat.apply_all(one("CREATE SEQUENCE ticket_seq", cat).changes)
    phys = cat.relation_physical("public", "ticket_seq")
    assert phys is not None
    plans = plan_query(
        "ALTER SEQUENCE ticket_seq RENAME TO ticket_no_seq; SELECT nextval('ticket_no_seq'); "
        "ALTER SEQUENCE ticket_no_seq OWNED BY orders.order_no; "
        "SELECT last_value FROM ticket_no_seq; ALTER SEQUENCE ticket_no_seq OWNED BY NONE; "
        "DROP SEQUENCE ticket_no_seq; CREATE SEQUENCE ticket_no_seq",
        cat,
    )
    assert plans[1].sql == f"SELECT nextval('{phys}')"
    assert plans[3].sql == f"SELECT last_value FROM {phys}"
    owner = plans[2].changes[0]
    assert isinstance(owner, SetSequenceOwner) and owner.sequence.name == "ticket_no_seq"
    assert isinstance(plans[4].changes[0], SetSequenceOwner)
    dropped = plans[5].changes[0]
    assert isinstance(dropped, DropSequence) and dropped.sequence.physical == phys
    (created,) = plans[6].changes  # the name is free again after the DROP
    assert isinstance(created, CreateSequence) and created.sequence.physical != phys
    free = cat.standalone_sequence(phys)
    assert free is not None and free.name == "ticket_seq"
