"""Statements for the proxy's differential test (tests/test_cloak_differential.py).

`full_corpus()` = the rewriter differential's SCHEMA + CORPUS (imported, not
copied) followed by `EXTRA`: what only a whole session can show (search_path
changes, transactions and savepoints around DDL, SQL-level PREPARE, COPY, views,
MERGE, COMMENT, GRANT, EXPLAIN) and statements with parameters (psycopg binds
them; psql gets them inlined). The statements run in order on one connection,
so each one sees what the previous ones did, errors included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from test_rewriter_differential import CORPUS, SCHEMA, SEMANTIC_NAMES


@dataclass(frozen=True)
class Known:
    """A known bug makes this statement differ (for these clients; None: all)."""

    bug: str
    clients: frozenset[str] | None = None

    def applies(self, client: str) -> bool:
        return self.clients is None or client in self.clients


@dataclass(frozen=True)
class Stmt:
    """One corpus entry.

    `params` are bound by psycopg (extended protocol) and inlined for psql;
    `prepare` asks psycopg for a named prepared statement; `copy_in` is the data
    of a COPY ... FROM STDIN; `explain` marks output that is only checked for
    running and for physical names (plans and costs may differ). `plain_sql`, when
    set, is what the plain side runs instead (a statement pgcloak refuses on purpose:
    the plain side runs one that fails the same way, so the states afterwards compare).
    """

    sql: str
    params: tuple[Any, ...] | None = None
    prepare: bool = False
    copy_in: str | None = None
    known: tuple[Known, ...] = ()
    plain_sql: str | None = None

    def on_plain(self) -> Stmt:
        """The statement as the plain side runs it."""
        return self if self.plain_sql is None else replace(self, sql=self.plain_sql)

    @property
    def explain(self) -> bool:
        return self.sql.lstrip().upper().startswith("EXPLAIN")

    @property
    def transaction_control(self) -> bool:
        return self.sql.split(None, 1)[0].upper() in _TXN_WORDS


_TXN_WORDS = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT",
                        "RELEASE"})  # fmt: skip

P = Stmt  # short alias for the parameterised entries below

EXTRA: list[str | Stmt] = [
    # -- statements with parameters (psycopg: extended protocol; psql: inlined) -------
    P("SELECT email, full_name FROM customers WHERE cust_id = %s", (1,)),
    P("SELECT email FROM customers WHERE cust_id = %s", (3,), prepare=True),
    P("SELECT email FROM customers WHERE cust_id = %s", (4,), prepare=True),
    P(
        "SELECT cust_id, email FROM customers WHERE email = ANY(%s) ORDER BY 1",
        (["ann@example.com", "cy@example.com"],),
    ),
    P(
        "INSERT INTO customers (email, full_name) VALUES (%s, %s) RETURNING cust_id, email",
        ("pia@example.com", "Pia"),
        prepare=True,
    ),
    P(
        "INSERT INTO customers (email, full_name) VALUES (%s, %s) RETURNING cust_id, email",
        ("pia@example.com", "Pia again"),
        prepare=True,
    ),
    P(
        "UPDATE orders SET order_status = %s WHERE order_no = %s RETURNING order_no, order_status",
        ("shipped", 2),
    ),
    P(
        "SELECT o.order_no, c.email FROM orders o JOIN customers c USING (cust_id) "
        "WHERE o.order_total > %s AND c.email LIKE %s ORDER BY 1",
        (1, "%example.com"),
    ),
    P("INSERT INTO orders (cust_id, order_total) VALUES (%s, %s)", (12345, 1)),
    P("INSERT INTO orders (cust_id, order_total) VALUES (%s, %s)", (1, -1), prepare=True),
    P("SELECT no_such_column FROM customers WHERE cust_id = %s", (1,)),
    P("DELETE FROM order_lines WHERE order_no = %s AND line_no = %s RETURNING quantity", (6, 1)),
    # -- more select shapes ------------------------------------------------------------
    "SELECT o.*, c.email FROM orders o JOIN customers c ON c.cust_id = o.cust_id ORDER BY 1",
    "SELECT c.*, o.* FROM customers c JOIN orders o USING (cust_id) ORDER BY o.order_no",
    "SELECT * FROM orders o NATURAL LEFT JOIN order_lines l ORDER BY 1, 6",
    "SELECT * FROM order_lines JOIN orders USING (order_no, cust_id)",
    "SELECT order_no, cust_id, product_code FROM order_lines JOIN orders USING (order_no) "
    "JOIN products USING (product_code) ORDER BY 1, 3",
    "SELECT c.email, x.order_no, x.rn FROM customers c CROSS JOIN LATERAL (SELECT order_no, "
    "row_number() OVER (ORDER BY order_no) AS rn FROM orders o WHERE o.cust_id = c.cust_id) x "
    "ORDER BY 1, 2",
    "SELECT p.product_code, s.qty FROM products p LEFT JOIN LATERAL (SELECT sum(quantity) AS qty "
    "FROM order_lines l WHERE l.product_code = p.product_code) s ON true ORDER BY 1",
    "SELECT cust_id, order_status, count(*) FROM orders GROUP BY 1, 2 HAVING count(*) >= 1 "
    "ORDER BY 1, 2",
    "SELECT order_status, sum(order_total) FROM orders GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1",
    "SELECT DISTINCT ON (order_status) order_status, order_no FROM orders "
    "ORDER BY order_status, order_no DESC",
    "SELECT DISTINCT cust_id, order_status FROM orders ORDER BY 1, 2",
    "SELECT cust_id, order_no, first_value(order_no) OVER (PARTITION BY cust_id ORDER BY "
    "order_no), count(*) OVER () FROM orders ORDER BY 2",
    "SELECT order_no, ntile(2) OVER w, sum(order_total) OVER (w ROWS BETWEEN 1 PRECEDING AND "
    "CURRENT ROW) FROM orders WINDOW w AS (ORDER BY order_no) ORDER BY 1",
    "SELECT cust_id FROM orders INTERSECT ALL SELECT cust_id FROM customers ORDER BY 1",
    "SELECT cust_id FROM customers EXCEPT ALL SELECT cust_id FROM orders UNION SELECT 0 ORDER BY 1",
    "SELECT email FROM customers WHERE cust_id = 1 UNION SELECT email FROM customers "
    "WHERE cust_id = 3 INTERSECT SELECT email FROM customers ORDER BY 1",
    "SELECT product_code FROM products p WHERE unit_price > (SELECT avg(unit_price) FROM products "
    "WHERE discontinued = p.discontinued) ORDER BY 1",
    "SELECT c.cust_id, (SELECT string_agg(l.product_code, ',' ORDER BY l.product_code) FROM "
    "order_lines l JOIN orders o USING (order_no) WHERE o.cust_id = c.cust_id) FROM customers c "
    "ORDER BY 1",
    "SELECT email FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE orders.cust_id = "
    "customers.cust_id AND order_total > (SELECT min(order_total) FROM orders)) ORDER BY 1",
    "WITH RECURSIVE walk(n, code) AS (SELECT 1, min(product_code) FROM products UNION ALL "
    "SELECT n + 1, (SELECT min(product_code) FROM products WHERE product_code > walk.code) "
    "FROM walk WHERE code IS NOT NULL) SELECT n, code FROM walk ORDER BY n",
    "WITH per_cust AS (SELECT cust_id, count(*) AS n FROM orders GROUP BY cust_id), "
    "top_cust AS (SELECT cust_id FROM per_cust WHERE n = (SELECT max(n) FROM per_cust)) "
    "SELECT c.email FROM customers c JOIN top_cust USING (cust_id) ORDER BY 1",
    "WITH bumped AS (UPDATE customers SET loyalty_points = loyalty_points + 1 "
    "WHERE cust_id IN (SELECT cust_id FROM orders) RETURNING cust_id, loyalty_points), "
    "gone AS (DELETE FROM order_lines WHERE quantity = 7 RETURNING order_no) "
    "SELECT (SELECT count(*) FROM bumped) AS bumped_rows, (SELECT count(*) FROM gone)",
    "WITH fresh AS (INSERT INTO products (product_code, product_title, unit_price) "
    "VALUES ('P20', 'Tape', 2.20) RETURNING *) SELECT product_code, product_title FROM fresh",
    'SELECT "email", "customers"."cust_id", "c2".loyalty_points FROM "customers" '
    'JOIN customers AS "c2" USING (cust_id) ORDER BY 2',
    'SELECT "Email" FROM customers',
    "SELECT c.cust_id, o.order_no FROM public.customers c JOIN public.orders o "
    "ON o.cust_id = c.cust_id WHERE c.cust_id = 1 ORDER BY 2",
    "SELECT order_no FROM orders WHERE placed_on IS NULL OR placed_on > '2024-03-01' "
    "ORDER BY 1 FOR UPDATE",
    "SELECT order_no FROM orders o ORDER BY 1 LIMIT 1 FOR SHARE OF o",
    # -- INSERT / UPDATE / DELETE variants --------------------------------------------
    "INSERT INTO customers (email) VALUES ('Ann@Example.com') ON CONFLICT DO NOTHING",
    "INSERT INTO customers (email, full_name) VALUES ('zoe@example.com', 'Zoe'), "
    "('zoe@example.com', 'Zoe2') ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name",
    "INSERT INTO customers (cust_id, email) VALUES (1, 'new@example.com') ON CONFLICT "
    "ON CONSTRAINT customers_pkey DO UPDATE SET full_name = 'via pkey' RETURNING cust_id, "
    "full_name",
    "INSERT INTO customers (email) SELECT 'copy.' || email FROM customers WHERE cust_id < 3 "
    "RETURNING email",
    "INSERT INTO order_lines (order_no, line_no, product_code, quantity) VALUES "
    "(2, 9, 'P9', 2), (2, 10, 'P4', 4) RETURNING order_no, line_no, quantity",
    "UPDATE order_lines l SET quantity = l.quantity + 1 FROM orders o, customers c "
    "WHERE o.order_no = l.order_no AND c.cust_id = o.cust_id AND c.email LIKE 'cy%' "
    "RETURNING l.order_no, l.line_no, l.quantity, c.email",
    "UPDATE products SET unit_price = unit_price * 2, discontinued = NOT discontinued "
    "WHERE product_code IN ('P2', 'P4') RETURNING *",
    "UPDATE customers SET (full_name, loyalty_points) = (SELECT 'Mr ' || coalesce(full_name, "
    "'X'), 1 FROM customers c2 WHERE c2.cust_id = customers.cust_id) WHERE cust_id = 4",
    "UPDATE customers SET email = NULL WHERE cust_id = 3",
    "UPDATE orders SET cust_id = 424242 WHERE order_no = 1",
    "DELETE FROM order_lines USING orders, customers WHERE orders.order_no = order_lines.order_no "
    "AND customers.cust_id = orders.cust_id AND customers.email = 'nobody' RETURNING *",
    "DELETE FROM products p WHERE NOT EXISTS (SELECT 1 FROM order_lines l "
    "WHERE l.product_code = p.product_code) AND p.product_code LIKE 'P_' RETURNING p.product_code",
    "DELETE FROM customers WHERE cust_id = 1",
    # -- schemas and search_path --------------------------------------------------------
    "CREATE SCHEMA sales",
    "CREATE TABLE sales.invoices (invoice_id serial PRIMARY KEY, cust_id integer "
    "REFERENCES public.customers, amount numeric(8, 2) NOT NULL CHECK (amount > 0), memo text)",
    "INSERT INTO sales.invoices (cust_id, amount, memo) VALUES (3, 12.50, 'first'), "
    "(4, 99, NULL) RETURNING invoice_id, amount",
    "SELECT i.invoice_id, c.email FROM sales.invoices i JOIN public.customers c "
    "ON c.cust_id = i.cust_id ORDER BY 1",
    "SELECT * FROM invoices",
    "SET search_path = sales, public",
    "SHOW search_path",
    "SELECT invoice_id, amount, memo FROM invoices ORDER BY invoice_id",
    "SELECT count(*), sum(amount) FROM invoices i JOIN customers c ON c.cust_id = i.cust_id",
    "CREATE TABLE refunds (refund_id integer PRIMARY KEY, invoice_id integer REFERENCES invoices, "
    "reason text DEFAULT 'unknown')",
    "INSERT INTO refunds (refund_id, invoice_id) VALUES (1, 1), (2, 2) RETURNING *",
    "INSERT INTO refunds VALUES (3, 99)",
    "SELECT r.refund_id, i.amount, r.reason FROM refunds r JOIN invoices i USING (invoice_id) "
    "ORDER BY 1",
    "SELECT count(*) FROM public.refunds",
    "ALTER TABLE refunds RENAME COLUMN reason TO refund_reason",
    "SELECT refund_reason FROM sales.refunds ORDER BY 1",
    "SET search_path TO public",
    "SELECT count(*) FROM refunds",
    "SELECT refund_id, refund_reason FROM sales.refunds ORDER BY 1",
    "UPDATE sales.invoices SET memo = 'second' WHERE invoice_id = 2 RETURNING memo",
    "BEGIN",
    "SET LOCAL search_path = sales",
    "SELECT count(*) FROM invoices",
    "COMMIT",
    "SELECT count(*) FROM invoices",
    "RESET search_path",
    # -- quoted identifiers --------------------------------------------------------------
    'CREATE TABLE "Mixed Case" ("Item Id" integer PRIMARY KEY, "Full Label" text, '
    "plain_col integer)",
    "INSERT INTO \"Mixed Case\" VALUES (1, 'one', 10), (2, 'two', 20)",
    'SELECT "Item Id", "Full Label", plain_col FROM "Mixed Case" ORDER BY 1',
    'SELECT m."Full Label" AS "Shown As", m.plain_col FROM "Mixed Case" m ORDER BY 1',
    'SELECT item_id FROM "Mixed Case"',
    'SELECT * FROM "mixed case"',
    'UPDATE "Mixed Case" SET "Full Label" = upper("Full Label") WHERE "Item Id" = 2 '
    'RETURNING "Item Id", "Full Label"',
    'ALTER TABLE "Mixed Case" RENAME COLUMN plain_col TO "Plain Col"',
    'SELECT "Plain Col" FROM "Mixed Case" ORDER BY 1',
    # -- DDL ---------------------------------------------------------------------------
    "CREATE TABLE warehouses (wh_code text PRIMARY KEY, wh_city text NOT NULL, "
    "capacity integer CHECK (capacity > 0), opened_on date DEFAULT '2020-01-01')",
    "CREATE TABLE stock_levels (wh_code text NOT NULL REFERENCES warehouses ON UPDATE CASCADE, "
    "product_code text NOT NULL REFERENCES products, on_hand integer NOT NULL DEFAULT 0, "
    "CONSTRAINT stock_levels_pk PRIMARY KEY (wh_code, product_code), "
    "CONSTRAINT on_hand_nonneg CHECK (on_hand >= 0))",
    "INSERT INTO warehouses VALUES ('W1', 'Oslo', 100), ('W2', 'Rome', 50, '2021-06-01')",
    "INSERT INTO stock_levels VALUES ('W1', 'P2', 5), ('W2', 'P2', 0), ('W1', 'P4', 3)",
    "INSERT INTO stock_levels VALUES ('W1', 'P2', 1)",
    "INSERT INTO stock_levels VALUES ('W3', 'P2', 1)",
    "INSERT INTO stock_levels VALUES ('W2', 'P4', -1)",
    "INSERT INTO warehouses (wh_code) VALUES ('W9')",
    "INSERT INTO warehouses VALUES ('W9', 'Nowhere', 0)",
    "UPDATE warehouses SET wh_code = 'W10' WHERE wh_code = 'W1'",
    "SELECT wh_code, product_code, on_hand FROM stock_levels ORDER BY 1, 2",
    "SELECT w.wh_city, sum(s.on_hand) FROM warehouses w JOIN stock_levels s USING (wh_code) "
    "GROUP BY w.wh_city ORDER BY 1",
    "ALTER TABLE warehouses ADD COLUMN manager text, ADD COLUMN phone text",
    "ALTER TABLE warehouses ALTER COLUMN manager SET DEFAULT 'tbd'",
    "ALTER TABLE warehouses ALTER COLUMN manager SET NOT NULL",
    "UPDATE warehouses SET manager = 'Ola' RETURNING wh_code, manager",
    "ALTER TABLE warehouses ALTER COLUMN manager SET NOT NULL",
    "ALTER TABLE warehouses ADD CONSTRAINT phone_format CHECK (phone ~ '^[0-9+ ]+$')",
    "UPDATE warehouses SET phone = 'call me' WHERE wh_code = 'W2'",
    "ALTER TABLE warehouses ADD CONSTRAINT city_unique UNIQUE (wh_city)",
    "INSERT INTO warehouses (wh_code, wh_city, manager) VALUES ('W3', 'Rome', 'X')",
    "ALTER TABLE warehouses RENAME CONSTRAINT city_unique TO warehouses_city_uq",
    "INSERT INTO warehouses (wh_code, wh_city, manager) VALUES ('W3', 'Rome', 'X')",
    "ALTER TABLE warehouses DROP CONSTRAINT warehouses_city_uq",
    "ALTER TABLE stock_levels ADD COLUMN counted_on date",
    "ALTER TABLE stock_levels DROP COLUMN counted_on",
    "ALTER TABLE stock_levels ALTER COLUMN on_hand TYPE bigint",
    "ALTER TABLE stock_levels ADD CONSTRAINT stock_wh_fk2 FOREIGN KEY (wh_code) "
    "REFERENCES warehouses (wh_code)",
    "ALTER TABLE stock_levels DROP CONSTRAINT stock_wh_fk2",
    "CREATE INDEX stock_by_product ON stock_levels (product_code) INCLUDE (on_hand)",
    "CREATE INDEX ON stock_levels (lower(wh_code))",
    "CREATE INDEX ON warehouses (wh_city, capacity DESC NULLS LAST) WHERE capacity IS NOT NULL",
    "CREATE UNIQUE INDEX wh_city_manager_uq ON warehouses (wh_city, manager)",
    "INSERT INTO warehouses (wh_code, wh_city, manager) VALUES ('W4', 'Oslo', 'Ola')",
    "ALTER TABLE warehouses RENAME TO depots",
    "SELECT wh_code, wh_city FROM depots ORDER BY 1",
    "SELECT * FROM warehouses",
    "ALTER TABLE depots RENAME COLUMN wh_city TO depot_city",
    "SELECT d.depot_city, s.product_code FROM depots d JOIN stock_levels s USING (wh_code) "
    "ORDER BY 1, 2",
    "CREATE TABLE depots (x integer)",
    "CREATE TABLE IF NOT EXISTS depots (x integer)",
    "ALTER TABLE IF EXISTS no_such_table ADD COLUMN x integer",
    "ALTER TABLE depots ADD COLUMN IF NOT EXISTS manager text",
    "ALTER TABLE depots DROP COLUMN no_such_column",
    "TRUNCATE stock_levels",
    "SELECT count(*) FROM stock_levels",
    "TRUNCATE depots",
    "TRUNCATE depots CASCADE",
    "SELECT count(*) FROM depots",
    "TRUNCATE sales.refunds, sales.invoices RESTART IDENTITY",
    "INSERT INTO sales.invoices (cust_id, amount) VALUES (3, 1) RETURNING invoice_id",
    "DROP TABLE depots",
    "DROP TABLE depots CASCADE",
    "INSERT INTO stock_levels VALUES ('W7', 'P2', 1)",
    'DROP TABLE stock_levels, "Mixed Case"',
    "DROP TABLE IF EXISTS stock_levels",
    # -- transactions, savepoints, errors inside transactions ---------------------------
    "BEGIN",
    "INSERT INTO customers (email) VALUES ('tx1@example.com') RETURNING email",
    "SAVEPOINT before_dup",
    "INSERT INTO customers (email) VALUES ('tx1@example.com')",
    "SELECT count(*) FROM customers",
    "ROLLBACK TO SAVEPOINT before_dup",
    "SELECT email FROM customers WHERE email LIKE 'tx%'",
    "RELEASE SAVEPOINT before_dup",
    "COMMIT",
    "BEGIN",
    "CREATE TABLE scratch (scratch_id integer PRIMARY KEY, scratch_note text UNIQUE)",
    "INSERT INTO scratch VALUES (1, 'a') RETURNING scratch_id, scratch_note",
    "SELECT s.scratch_note FROM scratch s",
    "ROLLBACK",
    "SELECT * FROM scratch",
    "BEGIN",
    "ALTER TABLE customers RENAME COLUMN signup_day TO joined_on",
    "SELECT joined_on FROM customers ORDER BY 1 NULLS FIRST LIMIT 1",
    "ROLLBACK",
    "SELECT signup_day FROM customers ORDER BY 1 NULLS FIRST LIMIT 1",
    "SELECT joined_on FROM customers",
    "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "CREATE TABLE audit_log (entry_id serial PRIMARY KEY, entry_text text NOT NULL)",
    "INSERT INTO audit_log (entry_text) VALUES ('created') RETURNING entry_id",
    "SELECT * FROM no_such_table",
    "SELECT entry_text FROM audit_log",
    "COMMIT",
    "SELECT * FROM audit_log",
    "BEGIN",
    "CREATE TABLE audit_log (entry_id serial PRIMARY KEY, entry_text text NOT NULL)",
    "ALTER TABLE audit_log ADD COLUMN logged_at date",
    "INSERT INTO audit_log (entry_text, logged_at) VALUES ('two', '2024-05-05') RETURNING *",
    "COMMIT",
    "SELECT entry_id, entry_text, logged_at FROM audit_log ORDER BY 1",
    "BEGIN",
    "SAVEPOINT s1",
    "ALTER TABLE audit_log RENAME COLUMN entry_text TO entry_body",
    "SELECT entry_body FROM audit_log ORDER BY 1",
    "ROLLBACK TO SAVEPOINT s1",
    "SELECT entry_text AS restored FROM audit_log ORDER BY 1",
    "SAVEPOINT s2",
    "ALTER TABLE audit_log ADD COLUMN severity integer DEFAULT -1 CHECK (severity >= 0)",
    "ROLLBACK TO s2",
    "SELECT severity FROM audit_log",
    "ROLLBACK",
    "BEGIN",
    "ALTER TABLE audit_log ADD COLUMN severity integer DEFAULT 1",
    "SELECT entry_id, severity FROM audit_log ORDER BY 1",
    "COMMIT",
    "SELECT entry_id, severity FROM audit_log ORDER BY 1",
    "BEGIN",
    "DROP TABLE audit_log",
    "SELECT count(*) FROM audit_log",
    "ROLLBACK",
    "SELECT count(*) FROM audit_log",
    "BEGIN",
    "INSERT INTO audit_log (entry_text) VALUES (NULL)",
    "SELECT 1",
    "COMMIT",
    "ABORT",
    "COMMIT",
    # -- SQL-level PREPARE / EXECUTE -------------------------------------------------
    "PREPARE cust_by_id(integer) AS SELECT email, full_name FROM customers WHERE cust_id = $1",
    "EXECUTE cust_by_id(3)",
    "EXECUTE cust_by_id(4)",
    "PREPARE add_entry(text) AS INSERT INTO audit_log (entry_text) VALUES ($1) "
    "RETURNING entry_id, entry_text",
    "EXECUTE add_entry('prepared')",
    "EXECUTE add_entry(NULL)",
    "PREPARE bad_plan AS SELECT nope FROM customers",
    "DEALLOCATE cust_by_id",
    "EXECUTE cust_by_id(3)",
    "DEALLOCATE ALL",
    # -- COPY --------------------------------------------------------------------------
    "COPY products (product_code, product_title, unit_price) TO STDOUT",
    "COPY (SELECT email, loyalty_points FROM customers ORDER BY cust_id) TO STDOUT "
    "WITH (FORMAT csv)",
    Stmt(
        "COPY audit_log (entry_text, logged_at) FROM STDIN",
        copy_in="copied one\t2024-06-01\ncopied two\t\\N\n",
    ),
    Stmt("COPY audit_log (entry_text) FROM STDIN WITH (FORMAT csv)", copy_in='"a,b"\n\n'),
    "SELECT entry_text, logged_at FROM audit_log ORDER BY entry_id",
    # HEADER: the header line names the client's columns (pgcloak writes it)
    "COPY audit_log TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY products (unit_price, product_code) TO STDOUT (HEADER)",
    'COPY (SELECT email AS "E-mail, primary", loyalty_points FROM customers ORDER BY cust_id) '
    "TO STDOUT WITH CSV HEADER",
    "COPY (SELECT entry_text FROM audit_log ORDER BY entry_id) TO STDOUT (FORMAT csv, HEADER 1)",
    Stmt(
        "COPY audit_log (entry_text) FROM STDIN WITH (FORMAT csv, HEADER)",
        copy_in="entry_text\nwith header\n",
    ),
    "COPY no_such_table TO STDOUT",
    # -- views -------------------------------------------------------------------------
    "CREATE VIEW paid_orders AS SELECT order_no, cust_id, order_total FROM orders "
    "WHERE order_status = 'paid'",
    "SELECT * FROM paid_orders ORDER BY order_no",
    "SELECT p.order_no, c.email FROM paid_orders p JOIN customers c USING (cust_id) ORDER BY 1",
    "CREATE VIEW customer_totals (cust_email, total_spent) AS SELECT c.email, "
    "sum(o.order_total) FROM customers c JOIN orders o USING (cust_id) GROUP BY c.email",
    "SELECT cust_email, total_spent FROM customer_totals ORDER BY 1",
    "CREATE OR REPLACE VIEW paid_orders AS SELECT order_no, cust_id, order_total, placed_on "
    "FROM orders WHERE order_status IN ('paid', 'shipped')",
    "SELECT order_no, placed_on FROM paid_orders ORDER BY 1",
    "ALTER VIEW paid_orders RENAME TO settled_orders",
    "SELECT count(*) FROM settled_orders",
    "DROP VIEW settled_orders",
    "DROP VIEW customer_totals",
    # -- MERGE -------------------------------------------------------------------------
    "MERGE INTO customers c USING (VALUES ('cy@example.com', 7), ('mo@example.com', 1)) "
    "AS v(mail, pts) ON c.email = v.mail WHEN MATCHED THEN UPDATE SET loyalty_points = "
    "c.loyalty_points + v.pts WHEN NOT MATCHED THEN INSERT (email, loyalty_points) "
    "VALUES (v.mail, v.pts)",
    "MERGE INTO order_lines l USING orders o ON l.order_no = o.order_no AND "
    "o.order_status = 'cancelled' WHEN MATCHED THEN DELETE",
    "SELECT email, loyalty_points FROM customers ORDER BY 1",
    # -- COMMENT, GRANT --------------------------------------------------------------
    "COMMENT ON TABLE customers IS 'people who buy things'",
    "COMMENT ON COLUMN customers.email IS 'login and contact address'",
    "COMMENT ON CONSTRAINT customers_email_key ON customers IS 'one account per address'",
    "COMMENT ON INDEX email_lower_idx IS 'case-insensitive uniqueness'",
    "COMMENT ON TABLE no_such_table IS 'x'",
    "COMMENT ON COLUMN customers.email IS NULL",
    "GRANT SELECT ON customers TO PUBLIC",
    "GRANT SELECT (email, full_name), UPDATE (full_name) ON customers TO PUBLIC",
    "REVOKE ALL ON orders FROM PUBLIC",
    "GRANT SELECT ON no_such_table TO PUBLIC",
    # -- EXPLAIN (compared: runs or not, and no physical name in its output) ------------
    "EXPLAIN SELECT * FROM customers WHERE cust_id = 1",
    "EXPLAIN (COSTS OFF) SELECT o.order_no, c.email FROM orders o JOIN customers c "
    "USING (cust_id) WHERE o.placed_on > '2024-01-01'",
    "EXPLAIN (VERBOSE, COSTS OFF) SELECT email, lower(email) FROM customers "
    "WHERE lower(email) = 'ann@example.com'",
    "EXPLAIN (FORMAT JSON, COSTS OFF) SELECT count(*) FROM order_lines GROUP BY product_code",
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) UPDATE products SET unit_price = "
    "unit_price WHERE product_code = 'P2'",
    "EXPLAIN SELECT no_such_column FROM customers",
    # -- partitioning, inheritance, EXCLUDE -------------------------------------------
    "CREATE TABLE shipments_by_month (ship_id int, shipped_on date NOT NULL, "
    "carrier_code text, PRIMARY KEY (ship_id, shipped_on)) PARTITION BY RANGE (shipped_on)",
    "CREATE TABLE shipments_2024_01 PARTITION OF shipments_by_month "
    "FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')",
    "CREATE TABLE shipments_rest PARTITION OF shipments_by_month DEFAULT",
    "INSERT INTO shipments_by_month VALUES (1, '2024-01-05', 'UPS'), (2, '2024-03-01', 'DHL')",
    "INSERT INTO shipments_2024_01 VALUES (3, '2024-05-05', 'UPS')",
    "SELECT ship_id, carrier_code FROM shipments_2024_01 ORDER BY ship_id",
    "SELECT count(*) FROM shipments_by_month WHERE carrier_code = 'UPS'",
    "ALTER TABLE shipments_by_month DETACH PARTITION shipments_rest",
    "SELECT count(*) FROM shipments_by_month",
    "CREATE TABLE archived_customers (archived_on date) INHERITS (customers)",
    "SELECT count(*) FROM customers",
    "CREATE TABLE room_bookings (room_no int, booked_from int, booked_to int, "
    "EXCLUDE USING btree (room_no WITH =))",
    "INSERT INTO room_bookings VALUES (1, 1, 2)",
    "INSERT INTO room_bookings VALUES (1, 3, 4)",
    # -- the final state -------------------------------------------------------------
    "SELECT * FROM customers ORDER BY cust_id",
    "SELECT * FROM orders ORDER BY order_no",
    "SELECT * FROM order_lines ORDER BY order_no, line_no",
    "SELECT * FROM products ORDER BY product_code",
    "SELECT * FROM sales.invoices ORDER BY 1",
    "SELECT * FROM audit_log ORDER BY 1",
]

# Semantic names the static lists below add to those the test collects from the
# plain database's catalog while the corpus runs (aliases, CTE and output names in
# statements on cloaked objects, which never become catalog objects).
EXTRA_SEMANTIC_NAMES = [
    "walk", "per_cust", "top_cust", "bumped", "bumped_rows", "gone", "fresh", "rn", "qty",
    "Shown As", "cust_email", "total_spent", "mail", "pts", "restored",
]  # fmt: skip

ALL_SEMANTIC_NAMES = [*SEMANTIC_NAMES, *EXTRA_SEMANTIC_NAMES]


def _known(bug: str, texts: list[str], clients: tuple[str, ...] | None = None) -> None:
    known = Known(bug, frozenset(clients) if clients is not None else None)
    for text in texts:
        KNOWN[text] = (*KNOWN.get(text, ()), known)


# Statements that differ because of a bug in docs/known-issues.md, by text.
# The differential skips them; test_known_bug (xfail, strict) expects them to differ,
# so a fix shows up as XPASS: then delete its entry here.
KNOWN: dict[str, tuple[Known, ...]] = {}


def full_corpus() -> list[Stmt]:
    """SCHEMA + CORPUS of the rewriter differential, then EXTRA, as `Stmt`s."""
    out: list[Stmt] = []
    for s in [*SCHEMA, *CORPUS, *EXTRA]:
        stmt = s if isinstance(s, Stmt) else Stmt(s)
        out.append(replace(stmt, known=KNOWN.get(stmt.sql, ())))
    return out
