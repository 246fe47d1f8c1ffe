"""Differential test of the rewriter against a real PostgreSQL.

Database A gets the semantic statements as written; database B gets what the
rewriter makes of them (catalog changes applied to a MemoryCatalog as the
statements succeed). Every statement must produce the same rows, the same
output column names (B's mapped through the plan's semantic names), the same
command tag and the same SQLSTATE on both sides; refusals by the rewriter count
as errors with their SQLSTATE. Finally, no semantic name may appear in any text
sent to B or anywhere in B's catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from helpers import PgServer

from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter

SEMANTIC_NAMES = [
    "customers", "cust_id", "email", "full_name", "loyalty_points", "signup_day",
    "orders", "order_no", "order_total", "order_status", "placed_on",
    "order_lines", "line_no", "product_code", "quantity",
    "products", "product_title", "unit_price", "discontinued",
    "vip_level", "archived_orders", "shipping_notes", "customer_accounts", "account_email",
    "customers_pkey", "customers_email_key", "customers_cust_id_seq", "orders_pkey",
    "orders_cust_id_fkey", "orders_order_total_check", "order_lines_pkey",
    "products_pkey", "positive_quantity", "orders_placed_on_idx", "email_lower_idx",
    "big_spenders", "recent", "tree", "lvl", "ranked", "addr", "old_orders", "display_name",
    "vip_range", "notes_short", "archive_pk", "recent_orders", "new_id", "mail", "doubled",
    "spent", "counted", "chain", "moved", "prev", "last_order", "line_total", "n_orders", "pts",
    "shipments", "shipment_id", "carrier", "tracking_code", "shipment_order_fk", "product_seq",
]  # fmt: skip

SCHEMA = [
    """CREATE TABLE customers (
        cust_id serial PRIMARY KEY,
        email text NOT NULL UNIQUE,
        full_name text,
        loyalty_points integer NOT NULL DEFAULT 0 CHECK (loyalty_points >= 0),
        signup_day date
    )""",
    """CREATE TABLE products (
        product_code text PRIMARY KEY,
        product_title text NOT NULL,
        unit_price numeric(10, 2) NOT NULL,
        discontinued boolean NOT NULL DEFAULT false
    )""",
    """CREATE TABLE orders (
        order_no serial PRIMARY KEY,
        cust_id integer NOT NULL REFERENCES customers (cust_id) ON DELETE CASCADE,
        order_total numeric(10, 2) CHECK (order_total >= 0),
        order_status text NOT NULL DEFAULT 'new',
        placed_on date
    )""",
    """CREATE TABLE order_lines (
        order_no integer REFERENCES orders ON DELETE CASCADE,
        line_no integer,
        product_code text REFERENCES products (product_code),
        quantity integer NOT NULL,
        CONSTRAINT positive_quantity CHECK (quantity > 0),
        PRIMARY KEY (order_no, line_no)
    )""",
    "CREATE INDEX ON orders (placed_on)",
    "CREATE UNIQUE INDEX email_lower_idx ON customers (lower(email))",
]

CORPUS = [
    # -- seed data ---------------------------------------------------------------------
    "INSERT INTO customers (email, full_name, loyalty_points, signup_day) VALUES "
    "('ann@example.com', 'Ann', 10, '2024-01-05'), ('bob@example.com', 'Bob', 0, '2024-02-11'), "
    "('cy@example.com', 'Cy', 250, '2024-02-20'), ('dee@example.com', NULL, 5, NULL)",
    "INSERT INTO products VALUES ('P1', 'Pen', 1.50, false), ('P2', 'Pad', 3.25, false), "
    "('P3', 'Ink', 7.00, true)",
    "INSERT INTO products (product_code, product_title, unit_price) VALUES ('P4', 'Clip', 0.10)",
    "INSERT INTO orders (cust_id, order_total, order_status, placed_on) VALUES "
    "(1, 10.50, 'paid', '2024-03-01'), (1, 3.25, 'new', '2024-03-02'), "
    "(2, 7.00, 'paid', '2024-03-02'), (3, 100.00, 'shipped', '2024-03-05'), "
    "(3, 0, 'cancelled', NULL)",
    "INSERT INTO order_lines VALUES (1, 1, 'P1', 3), (1, 2, 'P2', 2), (2, 1, 'P2', 1), "
    "(3, 1, 'P3', 1), (4, 1, 'P1', 10), (4, 2, 'P3', 12)",
    "INSERT INTO order_lines (order_no, line_no, product_code, quantity) "
    "SELECT 5, 1, product_code, 1 FROM products WHERE product_code = 'P4'",
    # -- simple selects ----------------------------------------------------------------
    "SELECT * FROM customers ORDER BY cust_id",
    "SELECT email, full_name FROM customers WHERE loyalty_points > 5",
    "SELECT c.email AS mail, c.full_name nm FROM customers c ORDER BY mail",
    "SELECT customers.email FROM customers WHERE customers.cust_id = 2",
    "SELECT public.customers.email FROM public.customers",
    'select EMAIL, "full_name" from CUSTOMERS where Cust_Id < 3',
    "SELECT c.* FROM customers AS c WHERE c.signup_day IS NULL",
    "SELECT cust_id, email || ' <' || coalesce(full_name, '?') || '>' FROM customers",
    "SELECT upper(email), length(full_name) AS len, loyalty_points::text FROM customers",
    "SELECT CASE WHEN loyalty_points > 100 THEN 'gold' ELSE 'plain' END FROM customers",
    "SELECT CASE WHEN loyalty_points > 100 THEN email END, "
    "CASE loyalty_points WHEN 0 THEN 'zero' ELSE full_name END FROM customers",
    "SELECT email::varchar(5), signup_day + 1, -loyalty_points FROM customers",
    "SELECT DISTINCT order_status FROM orders",
    "SELECT DISTINCT ON (cust_id) cust_id, order_no, order_total FROM orders "
    "ORDER BY cust_id, order_total DESC",
    "SELECT email FROM customers ORDER BY loyalty_points DESC NULLS LAST LIMIT 2 OFFSET 1",
    "SELECT email FROM customers WHERE email LIKE '%@example.com' AND full_name IS NOT NULL",
    "SELECT email FROM customers WHERE cust_id IN (1, 3) OR loyalty_points BETWEEN 1 AND 9",
    "SELECT email FROM customers WHERE cust_id = ANY (ARRAY[2, 4])",
    "SELECT count(*), sum(loyalty_points), avg(loyalty_points)::numeric(10,2) FROM customers",
    "SELECT greatest(loyalty_points, 1), least(cust_id, 2), nullif(full_name, 'Ann') "
    "FROM customers",
    "SELECT row(cust_id, email), ARRAY[cust_id, loyalty_points] FROM customers",
    'SELECT email COLLATE "C" FROM customers ORDER BY 1',
    "SELECT product_code, unit_price * 2 AS doubled FROM products WHERE NOT discontinued",
    "SELECT $$a dollar-quoted literal$$ AS txt, 42 AS answer",
    "SELECT 1 + 1, now() IS NOT NULL",
    "SELECT email /* a comment naming nothing */ FROM customers -- trailing\nWHERE cust_id = 1",
    # -- joins -----------------------------------------------------------------------------
    "SELECT c.email, o.order_total FROM customers c JOIN orders o ON o.cust_id = c.cust_id",
    "SELECT c.email, o.order_no FROM customers c LEFT JOIN orders o ON o.cust_id = c.cust_id "
    "AND o.order_status = 'paid'",
    "SELECT c.email, o.order_no FROM orders o RIGHT JOIN customers c ON o.cust_id = c.cust_id",
    "SELECT c.full_name, o.order_no FROM customers c FULL JOIN orders o "
    "ON o.cust_id = c.cust_id AND o.order_total > 50",
    "SELECT * FROM customers JOIN orders USING (cust_id) ORDER BY order_no",
    "SELECT cust_id, email, order_no FROM customers LEFT JOIN orders USING (cust_id)",
    "SELECT cust_id, order_no FROM customers FULL JOIN orders USING (cust_id)",
    "SELECT * FROM orders NATURAL JOIN order_lines",
    "SELECT order_no, line_no, product_title FROM order_lines NATURAL JOIN products",
    "SELECT o.order_no, p.product_title, l.quantity * p.unit_price AS line_total "
    "FROM orders o JOIN order_lines l ON l.order_no = o.order_no "
    "JOIN products p ON p.product_code = l.product_code ORDER BY 1, 2",
    "SELECT count(*) FROM customers CROSS JOIN products",
    "SELECT c.email, p.product_code FROM customers c, products p "
    "WHERE c.cust_id = 1 AND p.unit_price < 2",
    "SELECT * FROM orders JOIN order_lines USING (order_no) JOIN products USING (product_code) "
    "WHERE quantity > 1",
    "SELECT o1.order_no, o2.order_no FROM orders o1 JOIN orders o2 "
    "ON o1.cust_id = o2.cust_id AND o1.order_no < o2.order_no",
    "SELECT c.email FROM customers c JOIN (orders o JOIN order_lines l USING (order_no)) "
    "ON o.cust_id = c.cust_id WHERE l.quantity > 2",
    # -- subqueries ----------------------------------------------------------------------
    "SELECT email FROM customers WHERE cust_id IN (SELECT cust_id FROM orders "
    "WHERE order_total > 5)",
    "SELECT email FROM customers c WHERE EXISTS (SELECT 1 FROM orders o "
    "WHERE o.cust_id = c.cust_id AND o.order_status = 'paid')",
    "SELECT email FROM customers c WHERE NOT EXISTS (SELECT FROM orders WHERE cust_id = c.cust_id)",
    "SELECT email, (SELECT count(*) FROM orders o WHERE o.cust_id = c.cust_id) AS n_orders "
    "FROM customers c",
    "SELECT email, (SELECT max(order_total) FROM orders WHERE orders.cust_id = customers.cust_id) "
    "FROM customers",
    "SELECT (SELECT email FROM customers WHERE cust_id = 1)",
    "SELECT t.mail, t.pts FROM (SELECT email AS mail, loyalty_points AS pts FROM customers) t "
    "WHERE t.pts > 0",
    "SELECT * FROM (SELECT email, full_name FROM customers) AS sub",
    "SELECT x.a, x.b FROM (SELECT cust_id, email FROM customers) AS x(a, b) ORDER BY x.a",
    "SELECT s.email FROM (SELECT * FROM customers WHERE loyalty_points > 0) s",
    "SELECT order_no FROM orders WHERE order_total > (SELECT avg(order_total) FROM orders)",
    "SELECT email FROM customers WHERE loyalty_points > ALL (SELECT loyalty_points "
    "FROM customers WHERE cust_id IN (2, 4))",
    "SELECT ARRAY(SELECT order_no FROM orders WHERE cust_id = 1 ORDER BY order_no)",
    "SELECT c.email, last_order.order_no FROM customers c, LATERAL (SELECT order_no FROM orders o "
    "WHERE o.cust_id = c.cust_id ORDER BY order_no DESC LIMIT 1) last_order",
    "SELECT c.email, l.n FROM customers c LEFT JOIN LATERAL (SELECT count(*) AS n FROM orders "
    "WHERE orders.cust_id = c.cust_id) l ON true",
    "SELECT v.code, p.product_title FROM (VALUES ('P1'), ('P3')) AS v(code) "
    "JOIN products p ON p.product_code = v.code",
    "SELECT g.n, c.email FROM generate_series(1, 3) AS g(n) JOIN customers c ON c.cust_id = g.n",
    "SELECT email FROM customers WHERE cust_id IN (SELECT g FROM generate_series(1, 2) g)",
    # -- CTEs ----------------------------------------------------------------------------
    "WITH big_spenders AS (SELECT cust_id, sum(order_total) AS spent FROM orders GROUP BY cust_id "
    "HAVING sum(order_total) > 10) SELECT c.email, b.spent FROM big_spenders b "
    "JOIN customers c USING (cust_id)",
    "WITH recent AS (SELECT * FROM orders WHERE placed_on >= '2024-03-02'), "
    "counted AS (SELECT cust_id, count(*) AS n FROM recent GROUP BY 1) "
    "SELECT * FROM counted ORDER BY cust_id",
    "WITH recent(o, c) AS (SELECT order_no, cust_id FROM orders) "
    "SELECT recent.o, recent.c FROM recent WHERE c = 1",
    "WITH RECURSIVE tree(lvl, code) AS (SELECT 1, 'P1'::text UNION ALL "
    "SELECT lvl + 1, code FROM tree WHERE lvl < 3) "
    "SELECT t.*, p.product_title FROM tree t JOIN products p ON p.product_code = t.code",
    "WITH RECURSIVE chain AS (SELECT order_no, cust_id FROM orders WHERE order_no = 1 "
    "UNION SELECT o.order_no, o.cust_id FROM orders o JOIN chain ON o.cust_id = chain.cust_id) "
    "SELECT * FROM chain",
    "WITH moved AS (UPDATE orders SET order_status = 'paid' WHERE order_status = 'new' "
    "RETURNING order_no, cust_id) SELECT m.order_no, c.email FROM moved m "
    "JOIN customers c ON c.cust_id = m.cust_id",
    "WITH x AS MATERIALIZED (SELECT email FROM customers) SELECT count(*) FROM x",
    # -- aggregates and windows ----------------------------------------------------------
    "SELECT cust_id, count(*) AS n, sum(order_total) FROM orders GROUP BY cust_id "
    "ORDER BY n DESC, cust_id",
    "SELECT order_status, count(*) FROM orders GROUP BY 1 HAVING count(*) > 1",
    "SELECT order_status AS st, count(*) FROM orders GROUP BY st",
    "SELECT count(*) FILTER (WHERE order_status = 'paid') AS paid, "
    "string_agg(order_status, ',' ORDER BY order_no) FROM orders",
    "SELECT cust_id, order_no, sum(order_total) OVER (PARTITION BY cust_id ORDER BY order_no) "
    "FROM orders",
    "SELECT order_no, rank() OVER w, lag(order_total) OVER w AS prev FROM orders "
    "WINDOW w AS (PARTITION BY cust_id ORDER BY order_total)",
    "SELECT order_no, row_number() OVER (ORDER BY placed_on NULLS FIRST, order_no) FROM orders",
    "SELECT cust_id, avg(order_total) OVER (PARTITION BY cust_id ROWS BETWEEN UNBOUNDED "
    "PRECEDING AND CURRENT ROW) FROM orders",
    "SELECT order_status, cust_id, count(*) FROM orders GROUP BY ROLLUP (order_status, cust_id)",
    "SELECT order_status, grouping(order_status), count(*) FROM orders "
    "GROUP BY GROUPING SETS ((order_status), ())",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY order_total) FROM orders",
    "SELECT ranked.* FROM (SELECT email, rank() OVER (ORDER BY loyalty_points DESC) AS r "
    "FROM customers) ranked WHERE r <= 2",
    "SELECT max(o.order_total), c.email FROM orders o JOIN customers c ON c.cust_id = o.cust_id "
    "GROUP BY c.email",
    # -- set operations ------------------------------------------------------------------
    "SELECT email FROM customers UNION SELECT product_title FROM products",
    "SELECT cust_id FROM customers EXCEPT SELECT cust_id FROM orders",
    "SELECT cust_id AS k FROM customers INTERSECT SELECT cust_id FROM orders ORDER BY k",
    "SELECT email, loyalty_points FROM customers WHERE cust_id = 1 UNION ALL "
    "SELECT email, loyalty_points FROM customers WHERE cust_id = 2 ORDER BY loyalty_points",
    "(SELECT order_no FROM orders ORDER BY order_no LIMIT 2) UNION ALL "
    "(SELECT order_no FROM orders ORDER BY order_no DESC LIMIT 1)",
    "VALUES (1, 'a'), (2, 'b') ORDER BY 1",
    # -- INSERT --------------------------------------------------------------------------
    "INSERT INTO customers (email, full_name) VALUES ('eve@example.com', 'Eve') "
    "RETURNING cust_id, email, loyalty_points",
    "INSERT INTO customers (email) VALUES ('fay@example.com') RETURNING *",
    "INSERT INTO customers AS c (email, full_name) VALUES ('gus@example.com', DEFAULT) "
    "RETURNING c.cust_id AS new_id",
    "INSERT INTO customers (email, full_name) VALUES ('ann@example.com', 'Dup')",
    "INSERT INTO customers (email, full_name) VALUES ('ann@example.com', 'Ann2') "
    "ON CONFLICT (email) DO NOTHING",
    "INSERT INTO customers (email, full_name) VALUES ('ann@example.com', 'Ann3') "
    "ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name, "
    "loyalty_points = customers.loyalty_points + 1 RETURNING full_name, loyalty_points",
    "INSERT INTO customers AS c (email) VALUES ('bob@example.com') ON CONFLICT (email) "
    "DO UPDATE SET loyalty_points = c.loyalty_points + 5 WHERE c.loyalty_points < 100 "
    "RETURNING c.email, c.loyalty_points",
    "INSERT INTO customers (email) VALUES ('cy@example.com') "
    "ON CONFLICT ON CONSTRAINT customers_email_key DO NOTHING",
    "INSERT INTO customers (email) VALUES ('cy@example.com') "
    "ON CONFLICT ON CONSTRAINT no_such_constraint DO NOTHING",
    "INSERT INTO products SELECT 'P' || g, 'Gen ' || g, g, g % 2 = 0 FROM generate_series(5, 7) g",
    "INSERT INTO orders (cust_id, order_total) SELECT cust_id, 1 FROM customers "
    "WHERE email = 'eve@example.com' RETURNING order_no, order_status",
    "INSERT INTO orders (cust_id, order_total) VALUES (999, 1)",
    "INSERT INTO orders (cust_id, order_total) VALUES (1, -5)",
    "INSERT INTO customers (full_name) VALUES ('Nobody')",
    "INSERT INTO order_lines VALUES (1, 3, 'P2', 0)",
    "INSERT INTO order_lines VALUES (1, 1, 'P2', 1)",
    "INSERT INTO customers (email, nickname) VALUES ('x@example.com', 'x')",
    "INSERT INTO order_lines (order_no, line_no, product_code, quantity) VALUES "
    "(6, 1, 'P1', 1) ON CONFLICT (order_no, line_no) DO UPDATE SET quantity = "
    "order_lines.quantity + EXCLUDED.quantity RETURNING quantity",
    # -- UPDATE / DELETE -----------------------------------------------------------------
    "UPDATE customers SET loyalty_points = loyalty_points + 1 WHERE full_name IS NOT NULL",
    "UPDATE customers c SET full_name = upper(c.full_name) WHERE c.cust_id = 1 "
    "RETURNING c.cust_id, c.full_name",
    "UPDATE orders SET order_total = order_total * 1.1 FROM customers "
    "WHERE customers.cust_id = orders.cust_id AND customers.email = 'ann@example.com' "
    "RETURNING orders.order_no, orders.order_total",
    "UPDATE orders o SET (order_status, placed_on) = ('archived', '2024-01-01') "
    "WHERE o.order_total = 0 RETURNING *",
    "UPDATE orders SET order_total = (SELECT sum(l.quantity * p.unit_price) FROM order_lines l "
    "JOIN products p USING (product_code) WHERE l.order_no = orders.order_no) WHERE order_no = 1 "
    "RETURNING order_total",
    "UPDATE customers SET email = 'bob@example.com' WHERE cust_id = 1",
    "UPDATE customers SET loyalty_points = -1 WHERE cust_id = 1",
    "UPDATE customers SET no_such_column = 1",
    "DELETE FROM order_lines WHERE quantity > 10 RETURNING order_no, line_no",
    "DELETE FROM order_lines l USING products p WHERE p.product_code = l.product_code "
    "AND p.discontinued RETURNING l.*, p.product_title",
    "DELETE FROM customers WHERE cust_id = 2",
    "DELETE FROM products WHERE product_code = 'P1'",
    "DELETE FROM orders WHERE cust_id NOT IN (SELECT cust_id FROM customers)",
    "SELECT order_no, cust_id FROM orders ORDER BY order_no",
    # -- trickier scoping -------------------------------------------------------------
    "SELECT orders.email FROM customers AS orders WHERE orders.cust_id < 3",
    "SELECT c.email, x.total FROM customers c JOIN LATERAL (SELECT sum(order_total) total "
    "FROM orders o WHERE o.cust_id = c.cust_id) x ON true ORDER BY c.email",
    "SELECT email FROM customers ORDER BY (SELECT count(*) FROM orders o "
    "WHERE o.cust_id = customers.cust_id) DESC, email",
    "SELECT (SELECT o.order_total FROM orders o WHERE o.cust_id = c.cust_id ORDER BY 1 DESC "
    "LIMIT 1) AS top, c.email FROM customers c ORDER BY top NULLS FIRST, c.email",
    "SELECT count(DISTINCT cust_id), array_agg(order_no ORDER BY order_no) FROM orders",
    "SELECT * FROM customers WHERE (cust_id, loyalty_points) IN (SELECT cust_id, 11 FROM orders)",
    "SELECT email FROM customers c WHERE c IS NOT NULL AND c.cust_id = 1",
    "SELECT e.* FROM (SELECT * FROM customers) e JOIN orders USING (cust_id) ORDER BY 1, 2",
    "SELECT email FROM customers ORDER BY cust_id FETCH FIRST 2 ROWS WITH TIES",
    "SELECT email FROM customers UNION ALL (SELECT email FROM customers ORDER BY 1 LIMIT 1)",
    "WITH a AS (SELECT cust_id FROM orders) SELECT * FROM customers c "
    "WHERE c.cust_id IN (WITH b AS (SELECT cust_id FROM a) SELECT cust_id FROM b)",
    "WITH ins AS (INSERT INTO products VALUES ('P9', 'Nine', 9, false) RETURNING product_code) "
    "SELECT count(*) AS inserted FROM ins",
    "WITH src AS (SELECT cust_id FROM customers WHERE email = 'cy@example.com') "
    "INSERT INTO orders (cust_id, order_total) SELECT cust_id, 5 FROM src RETURNING order_no",
    "INSERT INTO orders (cust_id, order_total) VALUES ((SELECT cust_id FROM customers "
    "WHERE email = 'bob@example.com'), 6) RETURNING (SELECT email FROM customers "
    "WHERE customers.cust_id = orders.cust_id)",
    "UPDATE customers SET loyalty_points = o.n FROM (SELECT cust_id, count(*) AS n "
    "FROM orders GROUP BY cust_id) o WHERE o.cust_id = customers.cust_id "
    "RETURNING customers.email, o.n",
    "DELETE FROM order_lines l WHERE EXISTS (SELECT 1 FROM orders o WHERE o.order_no = l.order_no "
    "AND o.order_status = 'nothing') RETURNING *",
    "SELECT 1 FROM customers HAVING count(*) > 0",
    "SELECT order_status, count(*) FROM orders GROUP BY order_status "
    "ORDER BY count(*) DESC, order_status",
    "SELECT c.cust_id, o.order_no FROM customers c, orders o "
    "WHERE o.cust_id = c.cust_id AND o.order_total = (SELECT max(o2.order_total) FROM orders o2 "
    "WHERE o2.cust_id = c.cust_id)",
    "SELECT email, loyalty_points, dense_rank() OVER (ORDER BY loyalty_points DESC) "
    "FROM customers ORDER BY 3, 1",
    "SELECT * FROM customers c CROSS JOIN LATERAL unnest(ARRAY[c.cust_id, c.loyalty_points]) "
    "WITH ORDINALITY AS u(v, pos) ORDER BY 1, pos",
    "SELECT cust_id, email FROM customers WHERE email ILIKE ANY (ARRAY['%ann%', '%cy%'])",
    "SELECT DISTINCT c.cust_id FROM customers c JOIN orders o ON o.cust_id = c.cust_id "
    "JOIN order_lines l ON l.order_no = o.order_no",
    "SELECT s.k, s.v FROM (SELECT cust_id AS k, email AS v FROM customers "
    "UNION SELECT order_no, order_status FROM orders) s ORDER BY 1, 2",
    # -- errors the rewriter must refuse the way PostgreSQL would ------------------------
    "SELECT no_such_column FROM customers",
    "SELECT c.nope FROM customers c",
    "SELECT cust_id FROM customers JOIN orders ON true",
    "SELECT * FROM no_such_table",
    "SELECT x.email FROM customers",
    "SELECT 1/0 FROM customers",
    "SELECT email FROM customers WHERE cust_id = 'abc'",
    "SELECT email FROM customers ORDER BY 9",
    # -- DDL after data ----------------------------------------------------------------
    "ALTER TABLE customers ADD COLUMN vip_level integer DEFAULT 1 NOT NULL",
    "SELECT email, vip_level FROM customers ORDER BY cust_id",
    "ALTER TABLE customers ADD COLUMN vip_level text",
    "ALTER TABLE customers ADD CONSTRAINT vip_range CHECK (vip_level BETWEEN 0 AND 9)",
    "UPDATE customers SET vip_level = 10 WHERE cust_id = 1",
    "ALTER TABLE customers DROP CONSTRAINT vip_range",
    "UPDATE customers SET vip_level = 10 WHERE cust_id = 1 RETURNING vip_level",
    "ALTER TABLE customers DROP CONSTRAINT vip_range",
    "ALTER TABLE customers DROP CONSTRAINT IF EXISTS vip_range",
    "ALTER TABLE customers ALTER COLUMN vip_level SET DEFAULT 2, ALTER vip_level DROP NOT NULL",
    "INSERT INTO customers (email) VALUES ('hal@example.com') RETURNING vip_level",
    "ALTER TABLE customers ALTER COLUMN vip_level TYPE bigint USING vip_level * 10",
    "SELECT vip_level FROM customers WHERE email = 'hal@example.com'",
    "ALTER TABLE customers RENAME COLUMN full_name TO display_name",
    "SELECT display_name FROM customers ORDER BY cust_id",
    "SELECT full_name FROM customers",
    "ALTER TABLE customers RENAME COLUMN display_name TO email",
    "ALTER TABLE customers RENAME COLUMN display_name TO full_name",
    "ALTER TABLE orders ADD COLUMN shipping_notes text",
    "ALTER TABLE orders ADD CONSTRAINT notes_short CHECK (length(shipping_notes) < 20)",
    "UPDATE orders SET shipping_notes = repeat('x', 30)",
    "ALTER TABLE orders DROP COLUMN shipping_notes",
    "SELECT * FROM orders ORDER BY order_no",
    "ALTER TABLE orders DROP COLUMN IF EXISTS shipping_notes",
    "ALTER TABLE orders DROP COLUMN shipping_notes",
    "CREATE INDEX orders_placed_on_idx ON orders (cust_id)",
    "CREATE INDEX IF NOT EXISTS recent_orders ON orders (placed_on DESC) WHERE order_total > 1",
    "CREATE TABLE customers (x int)",
    "CREATE TABLE IF NOT EXISTS customers (x int)",
    "CREATE TABLE archived_orders (order_no integer PRIMARY KEY, cust_id integer, "
    "order_total numeric(10, 2), UNIQUE (cust_id, order_no), "
    "FOREIGN KEY (cust_id) REFERENCES customers ON DELETE SET NULL)",
    "INSERT INTO archived_orders SELECT order_no, cust_id, order_total FROM orders "
    "WHERE order_status = 'archived' RETURNING order_no",
    "SELECT * FROM archived_orders NATURAL JOIN orders",
    "ALTER TABLE archived_orders RENAME TO old_orders",
    "SELECT count(*) FROM old_orders",
    "SELECT count(*) FROM archived_orders",
    "ALTER TABLE old_orders RENAME CONSTRAINT old_orders_pkey TO archive_pk",
    "ALTER TABLE old_orders RENAME CONSTRAINT archived_orders_pkey TO archive_pk",
    "TRUNCATE old_orders",
    "SELECT count(*) FROM old_orders",
    "DROP TABLE old_orders",
    "DROP TABLE IF EXISTS old_orders, no_such_table",
    "SELECT count(*) FROM old_orders",
    "CREATE TABLE customer_accounts (account_email text REFERENCES customers (email), "
    "cust_id integer REFERENCES customers, PRIMARY KEY (cust_id))",
    "INSERT INTO customer_accounts SELECT email, cust_id FROM customers WHERE cust_id < 4",
    "SELECT a.account_email, c.loyalty_points FROM customer_accounts a "
    "JOIN customers c USING (cust_id) ORDER BY 1",
    "ALTER TABLE products ADD COLUMN product_seq serial",
    "SELECT product_code, product_seq FROM products ORDER BY product_seq",
    "CREATE TABLE shipments (shipment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "order_no integer, cust_id integer, carrier text, tracking_code text, "
    "UNIQUE NULLS NOT DISTINCT (carrier, tracking_code) INCLUDE (order_no), "
    "CHECK (order_no IS NOT NULL OR cust_id IS NOT NULL), "
    "CONSTRAINT shipment_order_fk FOREIGN KEY (order_no, cust_id) REFERENCES orders "
    "(order_no, cust_id) ON DELETE SET NULL (order_no))",
    "ALTER TABLE orders ADD UNIQUE (order_no, cust_id)",
    "CREATE TABLE shipments (shipment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "order_no integer, cust_id integer, carrier text, tracking_code text, "
    "UNIQUE NULLS NOT DISTINCT (carrier, tracking_code) INCLUDE (order_no), "
    "CHECK (order_no IS NOT NULL OR cust_id IS NOT NULL), "
    "CONSTRAINT shipment_order_fk FOREIGN KEY (order_no, cust_id) REFERENCES orders "
    "(order_no, cust_id) ON DELETE SET NULL (order_no))",
    "INSERT INTO shipments (order_no, cust_id, carrier, tracking_code) "
    "SELECT order_no, cust_id, 'ups', NULL FROM orders WHERE order_no = 3 RETURNING shipment_id",
    "INSERT INTO shipments (order_no, cust_id, carrier) VALUES (4, 3, 'ups')",
    "INSERT INTO shipments (shipment_id, order_no, cust_id) VALUES (7, 4, 3)",
    "DELETE FROM orders WHERE order_no = 4",
    "CREATE TABLE shipments (shipment_id int)",
    "SELECT s.shipment_id, s.order_no, s.cust_id FROM shipments s ORDER BY 1",
    "DROP TABLE customers",
    "DROP TABLE customer_accounts",
    # -- statements that touch nothing cloaked -----------------------------------------
    "SHOW search_path",
    "SET statement_timeout = 0",
    "BEGIN",
    "SELECT count(*) FROM orders",
    "COMMIT",
    "SELECT relname FROM pg_catalog.pg_class WHERE relname = 'pg_class'",
]


@dataclass
class Outcome:
    rows: list[str] | None = None
    names: list[str] | None = None
    tag: str | None = None
    sqlstate: str | None = None
    # The error text: from A always, from B only when the rewriter refused (B's server
    # messages carry physical names, which the proxy unmasks; not the rewriter's job).
    message: str | None = field(default=None, compare=False)


def _rows(cur: psycopg.Cursor[Any]) -> list[str]:
    return sorted(repr(r) for r in cur.fetchall())


def _run(conn: psycopg.Connection[Any], sql: str) -> Outcome:
    try:
        with conn.cursor() as cur:
            cur.execute(sql.encode(), prepare=False)
            if cur.description is None:
                return Outcome(tag=cur.statusmessage)
            return Outcome(_rows(cur), [d.name for d in cur.description], cur.statusmessage)
    except psycopg.Error as exc:
        return Outcome(sqlstate=exc.sqlstate, message=exc.diag.message_primary)


_PHYSICAL = re.compile(r"\b[tciksvm][0-9a-f]{20}\b")


def _unmask(text: str, plan: Plan, cat: MemoryCatalog) -> str:
    """A NOTICE from B with physical names shown as the client's (what the proxy does)."""
    dummies = dict(plan.notice_names)

    def name(m: re.Match[str]) -> str:
        phys = m.group(0)
        if phys in dummies:
            return dummies[phys]
        rel = cat.relation_by_physical(phys)
        if rel is not None:
            return rel.name
        seq = cat.standalone_sequence(phys)
        return seq.name if seq is not None else phys

    return _PHYSICAL.sub(name, text)


def _run_cloaked(
    conn: psycopg.Connection[Any],
    sql: str,
    rw: Rewriter,
    cat: MemoryCatalog,
    sent: list[str],
    *,
    notices: list[str] | None = None,
) -> Outcome:
    """`sql` planned and run on B; `notices` (B's, when collected) it adds are unmasked."""
    try:
        (plan,) = rw.plan(sql, cat)
    except CloakError as exc:
        return Outcome(sqlstate=exc.sqlstate, message=exc.message)
    if plan.sql is None:
        cat.apply_all(plan.changes)
        return Outcome(tag=plan.command_tag)
    sent.append(plan.sql)
    first = 0 if notices is None else len(notices)
    out = _run(conn, plan.sql)
    if notices is not None:
        notices[first:] = [_unmask(n, plan, cat) for n in notices[first:]]
    out.message = None
    if out.sqlstate is None:
        cat.apply_all(plan.changes)
        if out.names is not None and plan.output_names is not None:
            assert len(out.names) == len(plan.output_names), (sql, out.names, plan)
            out.names = list(plan.output_names)
    return out


def _differs(a: Outcome, b: Outcome) -> bool:
    """B's outcome is not A's; B's message counts only where B has one (the rewriter's)."""
    return a != b or (b.message is not None and b.message != a.message)


def _b_catalog(pg: PgServer, db: str, uncloaked: Sequence[str] = ()) -> MemoryCatalog:
    """B's catalog knowing the database's own (system) relations and the `uncloaked`
    public ones, so unknown names are refused with 42P01 instead of being sent."""
    system = pg.execute(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace",
        dbname=db,
    )
    return MemoryCatalog(
        uncloaked=[(r[0], r[1]) for r in system] + [("public", t) for t in uncloaked]
    )


def _word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Any of `words` as a whole word, any case: what the leak scans look for."""
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def _catalog_texts(pg: PgServer, db: str) -> list[str]:
    """Every name and definition text in B's catalog for objects outside pg_catalog."""
    queries = [
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
        "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace",
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace",
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef",
    ]
    texts: list[str] = []
    for q in queries:
        texts += [r[0] for r in pg.execute(q, dbname=db)]
    return texts


def _compare_names_with_postgres(pg: PgServer, db: str, cat: MemoryCatalog) -> None:
    """The semantic names the plans recorded are exactly what PostgreSQL chose in A."""
    tables = pg.execute(
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind = 'r' ORDER BY 1",
        dbname=db,
    )
    assert tables
    for (table,) in tables:
        rel = cat.relation("public", table)
        assert rel is not None, table
        cols = pg.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
            dbname=db,
        )
        assert [c.name for c in rel.columns] == [r[0] for r in cols]
        cons = pg.execute(
            "SELECT conname::text, contype::text FROM pg_constraint WHERE conrelid = %s::regclass",
            (table,),
            dbname=db,
        )
        assert sorted((c.name, c.contype) for c in cat.constraints(rel.physical)) == sorted(cons)
        idx = pg.execute(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND NOT EXISTS (SELECT FROM pg_constraint k "
            "WHERE k.conindid = i.indexrelid)",
            (table,),
            dbname=db,
        )
        assert sorted(i.name for i in cat.indexes(rel.physical)) == sorted(r[0] for r in idx)
        seqs = pg.execute(
            "SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
            "WHERE d.refobjid = %s::regclass AND s.relkind = 'S'",
            (table,),
            dbname=db,
        )
        assert sorted(s.name for s in cat.sequences(rel.physical)) == sorted(r[0] for r in seqs)


def test_error_positions_map_back(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db = db_factory()
    cat = MemoryCatalog()
    rw = Rewriter()
    with pg.connect(db) as conn:
        for sql in SCHEMA[:1]:
            (plan,) = rw.plan(sql, cat)
            assert plan.sql is not None
            conn.execute(plan.sql.encode())
            cat.apply_all(plan.changes)
        cases = [
            ("SELECT c.email /* é */, c.full_name + 1 FROM customers c", "+"),
            (
                "SELECT email FROM customers WHERE cust_id = nosuchfunc(loyalty_points)",
                "nosuchfunc",
            ),
            (
                "SELECT 'ü', loyalty_points FROM customers\nWHERE signup_day = 'not a date'",
                "'not a date'",
            ),
        ]
        for sql, at in cases:
            (plan,) = rw.plan(sql, cat)
            assert plan.sql is not None
            with pytest.raises(psycopg.Error) as info:
                conn.execute(plan.sql.encode())
            position = info.value.diag.statement_position
            assert position is not None
            mapped = plan.original_position(int(position))
            assert sql[mapped - 1 :].startswith(at), (sql, plan.sql, position, mapped)


def test_differential(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db_a, db_b = db_factory(), db_factory()
    cat = _b_catalog(pg, db_b)
    rw = Rewriter()
    sent: list[str] = []
    mismatches: list[str] = []
    outcomes: list[tuple[str, Outcome, Outcome]] = []
    with pg.connect(db_a) as conn_a, pg.connect(db_b) as conn_b:
        for sql in SCHEMA + CORPUS:
            a = _run(conn_a, sql)
            b = _run_cloaked(conn_b, sql, rw, cat, sent)
            outcomes.append((sql, a, b))
            if _differs(a, b):
                mismatches.append(f"{sql}\n  A: {a}\n  B: {b}")
    assert not mismatches, "\n".join(mismatches)
    assert len(CORPUS) >= 120
    # The corpus must exercise errors and refusals, not only happy paths.
    states = {a.sqlstate for _, a, _ in outcomes if a.sqlstate}
    assert {"23505", "23503", "23514", "23502", "42703", "42P01", "42702", "22012"} <= states
    word = _word_pattern(SEMANTIC_NAMES)
    leaks = [text for text in sent if word.search(text)]
    assert not leaks, leaks
    _compare_names_with_postgres(pg, db_a, cat)
    catalog_texts = _catalog_texts(pg, db_b)
    assert catalog_texts
    leaked = [t for t in catalog_texts if word.search(t)]
    assert not leaked, leaked


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT email FROM customers WHERE cust_id = $1"])
def test_cached_plans_are_reused(sql: str) -> None:
    from pgcloak.rewriter.catalog import Column, Relation

    cat = MemoryCatalog()
    cols = (Column("cust_id", "c00000000000000000001"), Column("email", "c00000000000000000002"))
    cat.add_relation(Relation("public", "customers", "t00000000000000000001", cols))
    rw = Rewriter()
    first = rw.plan(sql, cat)
    assert rw.plan(sql, cat) is first
    assert (rw.hits, rw.misses) == (1, 1)
    assert all(p.sql is not None for p in first)
