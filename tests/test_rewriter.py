"""Unit tests of the name-cloaking rewriter (pure library; MemoryCatalog, no server)."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter, combine, plan_query
from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    Column,
    Constraint,
    CreateIndex,
    CreateTable,
    DropColumn,
    DropConstraint,
    DropTable,
    OwnedSequence,
    Relation,
    RenameColumn,
    RenameConstraint,
    RenameTable,
)
from pgcloak.rewriter.plan import PositionMap


def _col(name: str, n: int) -> Column:
    return Column(name, f"c{n:020d}")


CUSTOMERS = Relation(
    "public",
    "customers",
    "t00000000000000000001",
    (_col("cust_id", 1), _col("email", 2), _col("full_name", 3), _col("tags", 4)),
)
ORDERS = Relation(
    "public",
    "orders",
    "t00000000000000000002",
    (_col("order_no", 5), _col("cust_id", 1), _col("order_total", 6)),
)
LINES = Relation(
    "public",
    "order_lines",
    "t00000000000000000003",
    (_col("order_no", 5), _col("quantity", 7), Column("cust_id", "c00000000000000000099")),
)
T1, T2, T3 = CUSTOMERS.physical, ORDERS.physical, LINES.physical
C = {c.name: c.physical for c in (*CUSTOMERS.columns, *ORDERS.columns, *LINES.columns[:2])}


@pytest.fixture
def cat() -> MemoryCatalog:
    catalog = MemoryCatalog(uncloaked=[("pg_catalog", "pg_class"), ("public", "legacy")])
    pkey = Constraint("public", T1, "customers_pkey", "k00000000000000000001", "p", (C["cust_id"],))
    ekey = Constraint("public", T1, "customers_email_key", "k00000000000000000002", "u",
                      (C["email"],), implicit=True)  # fmt: skip
    seq = OwnedSequence(
        "public", "customers_cust_id_seq", f"{T1}_{C['cust_id']}_seq", T1, C["cust_id"]
    )
    catalog.apply(CreateTable(CUSTOMERS, (pkey, ekey), (), (seq,)))
    fk = Constraint("public", T2, "orders_cust_id_fkey", "k00000000000000000003", "f",
                    (C["cust_id"],), T1, (C["cust_id"],), implicit=True)  # fmt: skip
    catalog.apply(CreateTable(ORDERS, (fk,)))
    catalog.apply(CreateTable(LINES))
    return catalog


def one(sql: str, cat: MemoryCatalog, search_path: tuple[str, ...] = ("public",)) -> Plan:
    (plan,) = plan_query(sql, cat, search_path)
    return plan


def refused(sql: str, cat: MemoryCatalog) -> CloakError:
    with pytest.raises(CloakError) as info:
        plan_query(sql, cat)
    return info.value


# -- SELECT ---------------------------------------------------------------------------------


def test_select_names_become_physical_and_aliases_opaque(cat: MemoryCatalog) -> None:
    plan = one(
        "SELECT c.email AS mail, o.order_total FROM customers c "
        "JOIN orders AS o ON o.cust_id = c.cust_id WHERE c.full_name = 'x' ORDER BY mail",
        cat,
    )
    e, n, t, ci = C["email"], C["full_name"], C["order_total"], C["cust_id"]
    assert plan.sql == (
        f"SELECT a1.{e} AS a3, a2.{t} FROM {T1} a1 "
        f"JOIN {T2} AS a2 ON a2.{ci} = a1.{ci} WHERE a1.{n} = 'x' ORDER BY a3"
    )
    assert plan.output_names == ("mail", "order_total")
    assert plan.cloaked and plan.changes == ()


def test_unaliased_qualified_and_schema_qualified_references(cat: MemoryCatalog) -> None:
    plan = one("SELECT public.customers.email, customers.cust_id FROM public.customers", cat)
    assert plan.sql == f"SELECT public.{T1}.{C['email']}, {T1}.{C['cust_id']} FROM public.{T1}"


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT * FROM customers", ("cust_id", "email", "full_name", "tags")),
        ("SELECT o.*, c.email FROM orders o JOIN customers c USING (cust_id)",
         ("order_no", "cust_id", "order_total", "email")),
        ("SELECT * FROM orders JOIN customers USING (cust_id)",
         ("cust_id", "order_no", "order_total", "email", "full_name", "tags")),
        ("SELECT * FROM (SELECT order_no FROM orders) o NATURAL JOIN order_lines",
         ("order_no", "quantity", "cust_id")),
        ("SELECT email::text, full_name::varchar(3), cust_id + 1, -cust_id FROM customers",
         ("email", "full_name", "?column?", "?column?")),
        ("SELECT 1::int, '2020-01-01'::date, date '2020-01-01', 'x'::text FROM customers",
         ("int4", "date", "date", "text")),
        ("SELECT CASE WHEN true THEN 1 END, CASE WHEN true THEN 1 ELSE email END FROM customers",
         ("case", "email")),
        ("SELECT count(*), lower(email), coalesce(email, ''), nullif(email, ''), greatest(1, 2), "
         "least(1, 2) FROM customers",
         ("count", "lower", "coalesce", "nullif", "greatest", "least")),
        ("SELECT ARRAY[1], ROW(1, 2), EXISTS (SELECT 1), ARRAY(SELECT 1), "
         "(SELECT email FROM customers LIMIT 1), current_date, current_user FROM customers",
         ("array", "row", "exists", "array", "email", "current_date", "current_user")),
        ("SELECT tags[1], email COLLATE \"C\", customers FROM customers",
         ("tags", "email", "customers")),
        ("SELECT x.m FROM (SELECT email AS m FROM customers) x", ("m",)),
        ("SELECT q.* FROM (SELECT cust_id, email FROM customers) AS q(a)", ("a", "email")),
        ("WITH r(v) AS (SELECT email FROM customers) SELECT * FROM r", ("v",)),
        ("SELECT email FROM customers UNION SELECT full_name FROM customers", ("email",)),
        ("INSERT INTO customers (email) VALUES ('a') RETURNING *, cust_id AS id",
         ("cust_id", "email", "full_name", "tags", "id")),
        ("TABLE customers", ("cust_id", "email", "full_name", "tags")),
        ("SELECT g, email FROM customers, generate_series(1, 2) g", ("g", "email")),
    ],
)  # fmt: skip
def test_output_names_follow_figure_colname(
    cat: MemoryCatalog, sql: str, names: tuple[str, ...]
) -> None:
    assert one(sql, cat).output_names == names


def test_case_rules(cat: MemoryCatalog) -> None:
    mixed = Relation("public", "Mixed Case", "t00000000000000000009", (_col("Col", 9),))
    cat.add_relation(mixed)
    assert (
        one('SELECT "Col" FROM "Mixed Case"', cat).sql
        == f"SELECT {_col('', 9).physical} FROM {mixed.physical}"
    )
    assert one("SELECT EMAIL FROM Customers", cat).sql == f"SELECT {C['email']} FROM {T1}"
    assert refused('SELECT "EMAIL" FROM customers', cat).sqlstate == "42703"
    assert refused('SELECT col FROM "Mixed Case"', cat).sqlstate == "42703"
    assert one('SELECT email AS "Nice Name" FROM customers', cat).output_names == ("Nice Name",)


def test_search_path(cat: MemoryCatalog) -> None:
    other = Relation("app", "customers", "t00000000000000000008", (_col("email", 8),))
    cat.add_relation(other)
    assert one("SELECT email FROM customers", cat, ("app", "public")).sql == (
        f"SELECT {_col('', 8).physical} FROM {other.physical}"
    )
    assert one("SELECT email FROM customers", cat, ("public", "app")).sql == (
        f"SELECT {C['email']} FROM {T1}"
    )
    assert one("SELECT email FROM app.customers", cat).sql.endswith(f"FROM app.{other.physical}")
    plan = one("CREATE TABLE invoices (amount int)", cat, ('"$user"', "app"))
    (change,) = plan.changes
    assert isinstance(change, CreateTable) and change.table.schema == "app"


def test_subqueries_ctes_lateral_windows(cat: MemoryCatalog) -> None:
    e, ci, on = C["email"], C["cust_id"], C["order_no"]
    plan = one(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3), "
        "big AS (SELECT cust_id, count(*) AS k FROM orders GROUP BY cust_id) "
        "SELECT c.email, b.k, r.n, l.order_no, rank() OVER w FROM customers c "
        "JOIN big b USING (cust_id) CROSS JOIN r, "
        "LATERAL (SELECT order_no FROM orders o WHERE o.cust_id = c.cust_id LIMIT 1) l "
        "WHERE EXISTS (SELECT 1 FROM orders WHERE orders.cust_id = c.cust_id) "
        "WINDOW w AS (ORDER BY c.email)",
        cat,
    )
    assert plan.sql == (
        "WITH RECURSIVE a1(a2) AS (SELECT 1 UNION ALL SELECT a2 + 1 FROM a1 WHERE a2 < 3), "
        f"a3 AS (SELECT {ci}, count(*) AS a4 FROM {T2} GROUP BY {ci}) "
        f"SELECT a5.{e}, a6.a4, a1.a2, a8.{on}, rank() OVER a9 FROM {T1} a5 "
        f"JOIN a3 a6 USING ({ci}) CROSS JOIN a1, "
        f"LATERAL (SELECT {on} FROM {T2} a7 WHERE a7.{ci} = a5.{ci} LIMIT 1) a8 "
        f"WHERE EXISTS (SELECT 1 FROM {T2} WHERE {T2}.{ci} = a5.{ci}) "
        f"WINDOW a9 AS (ORDER BY a5.{e})"
    )
    assert plan.output_names == ("email", "k", "n", "order_no", "rank")


def test_order_by_and_group_by_output_names(cat: MemoryCatalog) -> None:
    e = C["email"]
    assert one("SELECT upper(email) AS email FROM customers ORDER BY email", cat).sql == (
        f"SELECT upper({e}) AS a1 FROM {T1} ORDER BY a1"
    )
    # GROUP BY prefers the input column, ORDER BY the output column.
    assert one("SELECT upper(email) AS email FROM customers GROUP BY email", cat).sql == (
        f"SELECT upper({e}) AS a1 FROM {T1} GROUP BY {e}"
    )
    assert one("SELECT lower(email) AS lo FROM customers GROUP BY lo", cat).sql == (
        f"SELECT lower({e}) AS a1 FROM {T1} GROUP BY a1"
    )
    assert one("SELECT DISTINCT ON (em) email em FROM customers", cat).sql == (
        f"SELECT DISTINCT ON (a1) {e} a1 FROM {T1}"
    )


def test_dml(cat: MemoryCatalog) -> None:
    e, n, ci, t = C["email"], C["full_name"], C["cust_id"], C["order_total"]
    plan = one(
        "INSERT INTO customers AS c (email, full_name) VALUES ('a', DEFAULT) "
        "ON CONFLICT (email) WHERE email <> '' DO UPDATE SET full_name = EXCLUDED.full_name "
        "WHERE c.cust_id > 0 RETURNING c.cust_id",
        cat,
    )
    assert plan.sql == (
        f"INSERT INTO {T1} AS a1 ({e}, {n}) VALUES ('a', DEFAULT) "
        f"ON CONFLICT ({e}) WHERE {e} <> '' DO UPDATE SET {n} = EXCLUDED.{n} "
        f"WHERE a1.{ci} > 0 RETURNING a1.{ci}"
    )
    assert plan.output_names == ("cust_id",)
    plan = one("INSERT INTO customers (email) VALUES ('a') ON CONFLICT ON CONSTRAINT "
               "customers_email_key DO NOTHING", cat)  # fmt: skip
    assert plan.sql.endswith("ON CONSTRAINT k00000000000000000002 DO NOTHING")
    assert plan.output_names is None
    plan = one(
        "UPDATE orders o SET (order_total, cust_id) = (SELECT 1, 2) FROM customers c "
        "WHERE c.cust_id = o.cust_id AND c.email = 'x'",
        cat,
    )
    assert plan.sql == (
        f"UPDATE {T2} a1 SET ({t}, {ci}) = (SELECT 1, 2) FROM {T1} a2 "
        f"WHERE a2.{ci} = a1.{ci} AND a2.{e} = 'x'"
    )
    plan = one("DELETE FROM orders USING customers WHERE customers.cust_id = orders.cust_id "
               "RETURNING orders.order_total total", cat)  # fmt: skip
    assert plan.sql == (
        f"DELETE FROM {T2} USING {T1} WHERE {T1}.{ci} = {T2}.{ci} RETURNING {T2}.{t} a1"
    )
    assert plan.output_names == ("total",)


def test_untouched_statements_pass_unchanged_minus_comments(cat: MemoryCatalog) -> None:
    for sql in ["SELECT 1 AS x", "SET search_path = app", "SHOW work_mem", "BEGIN", "COMMIT",
                "SELECT relname FROM pg_class", "EXECUTE p(1)", "DISCARD ALL",
                "WITH customers AS (SELECT 1 AS email) SELECT email FROM customers"]:  # fmt: skip
        plan = one(sql, cat)
        assert plan.sql == sql and not plan.cloaked and plan.output_names is None
    plan = one("SELECT /* hi /* nested */ there */ 1 -- bye", cat)
    assert plan.sql == "SELECT   1"


def test_comments_removed_and_positions_map_back(cat: MemoryCatalog) -> None:
    sql = "  SELECT /* c */ email, full_name\n  -- note\n  FROM customers WHERE cust_id = 'é'"
    plan = one(sql, cat)
    assert "/*" not in plan.sql and "--" not in plan.sql and "note" not in plan.sql
    new = plan.sql
    for token, orig_token in [
        ("WHERE", "WHERE"),
        (C["full_name"], "full_name"),
        (T1, "customers"),
        ("'é'", "'é'"),
    ]:
        pos = new.index(token) + 1
        mapped = plan.original_position(pos)
        assert sql[mapped - 1 :].startswith(orig_token), (token, mapped)
    # inside a replaced name, every position maps to the start of the client's name
    inside = new.index(C["email"]) + 5
    assert sql[plan.original_position(inside) - 1 :].startswith("email")
    assert PositionMap().to_original(7) == 7


def test_multibyte_text_uses_character_positions(cat: MemoryCatalog) -> None:
    sql = "SELECT 'ééé' AS \"ñame\", email FROM customers WHERE full_name = 'Zoë'"
    plan = one(sql, cat)
    assert plan.sql == f"SELECT 'ééé' AS a1, {C['email']} FROM {T1} WHERE {C['full_name']} = 'Zoë'"
    assert plan.output_names == ("ñame", "email")
    pos = plan.sql.index("WHERE") + 1
    assert sql[plan.original_position(pos) - 1 :].startswith("WHERE")


def test_multi_statement_strings(cat: MemoryCatalog) -> None:
    sql = "SELECT email FROM customers; SELECT 1;\nUPDATE orders SET order_total = 0"
    plans = plan_query(sql, cat)
    assert [p.statement for p in plans] == ["SelectStmt", "SelectStmt", "UpdateStmt"]
    assert [p.sql for p in plans] == [
        f"SELECT {C['email']} FROM {T1}",
        "SELECT 1",
        f"UPDATE {T2} SET {C['order_total']} = 0",
    ]
    text, pmap = combine(plans)
    assert text == ";\n".join(p.sql or "" for p in plans)
    pos = text.index("UPDATE") + 1
    assert sql[pmap.to_original(pos) - 1 :].startswith("UPDATE")
    pos = text.index(C["order_total"]) + 1
    assert sql[pmap.to_original(pos) - 1 :].startswith("order_total")


def test_ddl_then_use_in_one_query_string(cat: MemoryCatalog) -> None:
    plans = plan_query(
        "CREATE TABLE invoices (invoice_no serial PRIMARY KEY, amount int); "
        "INSERT INTO invoices (amount) VALUES (1) RETURNING invoice_no; "
        "ALTER TABLE invoices RENAME COLUMN amount TO total; "
        "SELECT total FROM invoices; DROP TABLE invoices",
        cat,
    )
    (create,) = plans[0].changes
    assert isinstance(create, CreateTable)
    phys = {c.name: c.physical for c in create.table.columns}
    assert plans[1].sql == (
        f"INSERT INTO {create.table.physical} ({phys['amount']}) VALUES (1) "
        f"RETURNING {phys['invoice_no']}"
    )
    assert plans[2].sql is None and plans[2].command_tag == "ALTER TABLE"
    assert plans[3].sql == f"SELECT {phys['amount']} FROM {create.table.physical}"
    assert plans[3].output_names == ("total",)
    assert isinstance(plans[4].changes[0], DropTable)
    assert cat.relation("public", "invoices") is None  # the real catalog is untouched


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("SELECT nope FROM customers", "42703", 'column "nope" does not exist'),
        ("SELECT c.nope FROM customers c", "42703", "column c.nope does not exist"),
        ("SELECT x.email FROM customers", "42P01", 'missing FROM-clause entry for table "x"'),
        ("SELECT * FROM nonexistent", "42P01", 'relation "nonexistent" does not exist'),
        ("SELECT cust_id FROM customers, orders", "42702",
         'column reference "cust_id" is ambiguous'),
        ("INSERT INTO customers (nope) VALUES (1)", "42703",
         'column "nope" of relation "customers" does not exist'),
        ("UPDATE customers SET nope = 1", "42703",
         'column "nope" of relation "customers" does not exist'),
        ("SELECT email FROM legacy l, customers c", "0A000", 'column "email" belongs to'),
        ("SELECT * FROM customers c JOIN pg_class p ON true", "0A000", "output columns"),
        ("SELECT * FROM customers JOIN order_lines USING (cust_id)", "0A000",
         "different physical names"),
        ("SELECT * FROM (customers JOIN orders USING (cust_id)) AS j", "0A000", "JOIN"),
        ("SELECT xmlelement(name x, email) FROM customers", "0A000", "XmlExpr"),
        ("SELECT email INTO TEMP tmp FROM customers", "0A000", "SELECT INTO"),
        ("SELECT * FROM ROWS FROM (generate_series(1, 2)) g, customers", "0A000", "ROWS FROM"),
        ("SELECT a.b.c.d FROM customers", "0A000", "four-part"),
        ("SELECT (c).* FROM customers c", "0A000", ".* expansion"),
        ("COPY customers FROM STDIN (FORMAT csv, HEADER MATCH)", "0A000", "HEADER MATCH"),
        ("DO $$BEGIN DELETE FROM customers; END$$", "0A000", "DoStmt"),
        ("PREPARE customers AS SELECT email FROM customers", "0A000", "prepared statement"),
        ("DROP INDEX customers_email_key", "2BP01", "cannot drop index customers_email_key "
         "because constraint customers_email_key on table customers requires it"),
        ("ALTER TABLE customers SET SCHEMA app", "0A000", ""),
        ("ALTER TABLE customers ALTER COLUMN email SET STATISTICS 5", "0A000", "ALTER TABLE"),
        ("CREATE TABLE t2 (LIKE customers INCLUDING INDEXES)", "0A000", "INCLUDING"),
        ("CREATE TABLE t2 (a int, a text)", "42701", 'column "a" specified more than once'),
        ("CREATE TABLE customers (a int)", "42P07", 'relation "customers" already exists'),
        ("CREATE TABLE t2 (a int UNIQUE UNIQUE)", "0A000", "redundant"),
        ("CREATE TABLE t2 (a int, CONSTRAINT customers_pkey EXCLUDE (a WITH =))", "42P07",
         'relation "customers_pkey" already exists'),
        ("CREATE TABLE t2 (a int CONSTRAINT x CHECK (a > 0), CONSTRAINT x CHECK (a < 9))",
         "42710", 'constraint "x" for relation "t2" already exists'),
        ("CREATE TABLE t2 (a int CONSTRAINT customers_pkey PRIMARY KEY)", "42P07",
         'relation "customers_pkey" already exists'),
        ("CREATE TABLE t2 (a int REFERENCES customers (nope))", "42703", "nope"),
        ("CREATE TABLE t2 (a int GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME s))", "0A000",
         "SEQUENCE NAME"),
        ("ALTER TABLE customers ADD COLUMN email text", "42701",
         'column "email" of relation "customers" already exists'),
        ("ALTER TABLE customers DROP COLUMN nope", "42703", 'column "nope" of relation'),
        ("ALTER TABLE customers DROP CONSTRAINT nope", "42704",
         'constraint "nope" of relation "customers" does not exist'),
        ("ALTER TABLE customers RENAME TO orders", "42P07", 'relation "orders" already exists'),
        ("ALTER TABLE customers RENAME COLUMN email TO full_name", "42701", "already exists"),
        ("ALTER TABLE customers RENAME COLUMN nope TO x", "42703", 'column "nope"'),
        ("ALTER TABLE customers RENAME CONSTRAINT nope TO x", "42704", 'constraint "nope"'),
        ("CREATE INDEX customers_pkey ON customers (email)", "42P07", "already exists"),
        ("SELECT FROM customers WHERE", "42601", "syntax error"),
        ("SELECT U&\"d\\0061t\" FROM customers", "0A000", "U&"),
    ],
)  # fmt: skip
def test_refusals(cat: MemoryCatalog, sql: str, sqlstate: str, message: str) -> None:
    err = refused(sql, cat)
    assert err.sqlstate == sqlstate, err.message
    assert message in err.message


def test_refusal_positions_point_into_the_client_text(cat: MemoryCatalog) -> None:
    sql = "SELECT email,\n  nope FROM customers"
    assert refused(sql, cat).position == sql.index("nope") + 1
    assert refused("SELEC 1", cat).position == 1


def test_errors_before_the_first_cloaked_object_are_deferred(cat: MemoryCatalog) -> None:
    # Nothing cloaked: unknown constructs and names are the server's business.
    assert one("SELECT xmlelement(name x, relname) FROM pg_class", cat).sql.startswith("SELECT")
    # ...but a later cloaked object makes the earlier problem fatal.
    err = refused("SELECT xmlelement(name x, 1), (SELECT email FROM customers)", cat)
    assert err.sqlstate == "0A000"


# -- DDL --------------------------------------------------------------------------------------


def _create(sql: str, cat: MemoryCatalog) -> tuple[Plan, CreateTable]:
    plan = one(sql, cat)
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    return plan, change


def test_create_table_names_every_constraint(cat: MemoryCatalog) -> None:
    plan, change = _create(
        "CREATE TABLE invoices (invoice_no serial PRIMARY KEY, cust_id int NOT NULL "
        "REFERENCES customers ON DELETE CASCADE, amount numeric CHECK (amount > 0), "
        "code text CONSTRAINT code_ok CHECK (code <> ''), note text, "
        "ident bigint GENERATED BY DEFAULT AS IDENTITY, "
        "UNIQUE (code, note) INCLUDE (amount), CHECK (amount < 10 OR note IS NULL), "
        "FOREIGN KEY (cust_id, invoice_no) REFERENCES invoices (cust_id, invoice_no))",
        cat,
    )
    rel = change.table
    cols = {c.name: c.physical for c in rel.columns}
    assert cols["cust_id"] == C["cust_id"]  # same semantic name -> same physical name
    assert len(set(cols.values())) == len(cols)
    cons = {c.name: c for c in change.constraints}
    assert set(cons) == {
        "invoices_pkey", "invoices_cust_id_fkey", "invoices_amount_check", "code_ok",
        "invoices_code_note_amount_key", "invoices_check", "invoices_cust_id_invoice_no_fkey",
    }  # fmt: skip
    assert not cons["code_ok"].implicit and cons["invoices_pkey"].implicit
    assert cons["invoices_cust_id_fkey"].ref_table == T1
    assert cons["invoices_cust_id_fkey"].ref_columns == (C["cust_id"],)
    assert cons["invoices_cust_id_invoice_no_fkey"].ref_table == rel.physical
    assert cons["invoices_code_note_amount_key"].columns == (
        cols["code"], cols["note"], cols["amount"])  # fmt: skip
    assert cons["invoices_check"].columns == (cols["amount"], cols["note"])
    assert {s.name for s in change.sequences} == {"invoices_invoice_no_seq", "invoices_ident_seq"}
    seq = next(s for s in change.sequences if s.column == cols["invoice_no"])
    assert seq.physical == f"{rel.physical}_{cols['invoice_no']}_seq"
    assert plan.sql is not None
    for con in change.constraints:
        assert f"CONSTRAINT {con.physical} " in plan.sql
    assert re.search(r"\b(invoices|amount|code_ok|note|cust_id)\b", plan.sql) is None


def test_implicit_names_avoid_taken_names(cat: MemoryCatalog) -> None:
    _, change = _create(
        "CREATE TABLE customers_email_key2 (CHECK (a > 0), a int CHECK (a > 1), "
        "b int UNIQUE, UNIQUE (b, a))",
        cat,
    )
    names = [c.name for c in change.constraints]
    assert names == [
        "customers_email_key2_a_check", "customers_email_key2_a_check1",
        "customers_email_key2_b_key", "customers_email_key2_b_a_key",
    ]  # fmt: skip


def test_alter_table_commands(cat: MemoryCatalog) -> None:
    plan = one(
        "ALTER TABLE customers ADD COLUMN vip int DEFAULT 1 CHECK (vip > 0), "
        "ADD CONSTRAINT email_len CHECK (length(email) < 99), "
        "ALTER COLUMN full_name TYPE varchar(80) USING left(full_name, 80), "
        "ALTER tags SET DEFAULT '{}', ALTER COLUMN email SET NOT NULL, "
        "DROP CONSTRAINT customers_email_key",
        cat,
    )
    add, con, drop = plan.changes
    assert isinstance(add, AddColumn) and add.column.name == "vip"
    assert [c.name for c in add.constraints] == ["customers_vip_check"]
    assert isinstance(con, AddConstraint) and con.constraint.name == "email_len"
    assert isinstance(drop, DropConstraint) and drop.constraint == "k00000000000000000002"
    assert plan.sql is not None
    assert "email" not in plan.sql and "full_name" not in plan.sql and "vip" not in plan.sql
    assert f"ALTER COLUMN {C['full_name']} TYPE varchar(80) USING left({C['full_name']}, 80)" in (
        plan.sql
    )
    plan = one("ALTER TABLE customers DROP COLUMN cust_id CASCADE", cat)
    (change,) = plan.changes
    assert isinstance(change, DropColumn)
    assert {c.name for c in change.constraints} == {"customers_pkey", "orders_cust_id_fkey"}
    assert [s.name for s in change.sequences] == ["customers_cust_id_seq"]
    plan = one("ALTER TABLE customers DROP COLUMN IF EXISTS nope", cat)
    assert plan.sql is not None and "nope" not in plan.sql and plan.changes == ()


def test_renames_are_registry_only(cat: MemoryCatalog) -> None:
    cases = [
        ("ALTER TABLE customers RENAME TO clients", RenameTable(T1, "clients")),
        ("ALTER TABLE customers RENAME COLUMN email TO mail",
         RenameColumn(T1, C["email"], "mail")),
        ("ALTER TABLE customers RENAME CONSTRAINT customers_email_key TO uniq_mail",
         RenameConstraint(T1, "k00000000000000000002", "uniq_mail")),
    ]  # fmt: skip
    for sql, change in cases:
        plan = one(sql, cat)
        assert plan.sql is None and plan.command_tag == "ALTER TABLE" and plan.registry_only
        assert plan.changes == (change,)
    cat.apply(cases[1][1])
    assert one("SELECT mail FROM customers", cat).sql == f"SELECT {C['email']} FROM {T1}"


def test_create_index_and_drop_and_truncate(cat: MemoryCatalog) -> None:
    plan = one("CREATE UNIQUE INDEX ON customers (lower(email), (cust_id + 1), full_name) "
               "INCLUDE (tags) WHERE full_name IS NOT NULL", cat)  # fmt: skip
    (change,) = plan.changes
    assert isinstance(change, CreateIndex)
    index = change.index
    assert index.name == "customers_lower_expr_full_name_tags_idx" and index.implicit
    assert index.unique and set(index.columns) == {C["email"], C["cust_id"], C["full_name"],
                                                   C["tags"]}  # fmt: skip
    assert plan.sql == (
        f"CREATE UNIQUE INDEX {index.physical} ON {T1} (lower({C['email']}), "
        f"({C['cust_id']} + 1), {C['full_name']}) INCLUDE ({C['tags']}) "
        f"WHERE {C['full_name']} IS NOT NULL"
    )
    plan = one("CREATE INDEX CONCURRENTLY by_total ON orders USING btree (order_total DESC)", cat)
    (change,) = plan.changes
    assert isinstance(change, CreateIndex) and change.index.name == "by_total"
    assert plan.sql == (
        f"CREATE INDEX CONCURRENTLY {change.index.physical} ON {T2} USING btree "
        f"({C['order_total']} DESC)"
    )
    plan = one("DROP TABLE IF EXISTS customers, legacy, ghost CASCADE", cat)
    assert plan.sql is not None and "ghost" not in plan.sql and "legacy" in plan.sql
    (drop,) = plan.changes
    assert drop == DropTable(T1, tuple(cat.foreign_keys_to(T1)))
    assert one("TRUNCATE customers, legacy", cat).sql == f"TRUNCATE {T1}, legacy"


def test_memory_catalog_applies_changes(cat: MemoryCatalog) -> None:
    version = cat.version
    for sql in [
        "CREATE TABLE invoices (invoice_no serial PRIMARY KEY, cust_id int REFERENCES customers)",
        "ALTER TABLE invoices RENAME TO bills",
        "CREATE INDEX ON bills (cust_id)",
        "ALTER TABLE bills DROP COLUMN cust_id",
    ]:
        cat.apply_all(one(sql, cat).changes)
    assert cat.version > version
    bills = cat.relation("public", "bills")
    assert bills is not None and [c.name for c in bills.columns] == ["invoice_no"]
    assert [c.name for c in cat.constraints(bills.physical)] == ["invoices_pkey"]
    assert cat.indexes(bills.physical) == ()
    assert "invoices_invoice_no_seq" in cat.relation_names("public")
    cat.apply_all(one("DROP TABLE bills", cat).changes)
    assert cat.relation("public", "bills") is None


# -- plan cache -------------------------------------------------------------------------------


def test_plan_cache(cat: MemoryCatalog) -> None:
    rw = Rewriter(cache_size=2)
    sql = "SELECT email FROM customers"
    first = rw.plan(sql, cat)
    assert rw.plan(sql, cat) is first
    assert rw.plan(sql, cat, ("app", "public")) is not first  # search_path is part of the key
    cat.apply(RenameColumn(T1, C["email"], "mail"))  # a new catalog version
    with pytest.raises(CloakError):
        rw.plan(sql, cat)
    ddl = "CREATE TABLE x (a int)"
    assert rw.plan(ddl, cat)[0].changes != rw.plan(ddl, cat)[0].changes  # DDL is never cached
    rw.plan("SELECT 1", cat)
    rw.plan("SELECT 2", cat)
    rw.plan("SELECT 3", cat)
    assert len(rw._cache) == 2  # LRU bound


# -- properties -------------------------------------------------------------------------------

_WORDS = [
    "SELECT", "FROM", "WHERE", "JOIN", "ON", "USING", "(", ")", ",", ".", "*", "=", "AS",
    "customers", "orders", "c", "o", "email", "cust_id", "order_total", "1", "'x'", "AND",
    "GROUP BY", "ORDER BY", "WITH", "x", "UNION", "INSERT INTO", "VALUES", "UPDATE", "SET",
    "RETURNING", "DELETE", "LATERAL", "--", "/*", "*/", ";", "pg_class", "relname", "count",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=16))
def test_never_crashes_and_never_leaks(words: list[str]) -> None:
    catalog = MemoryCatalog(uncloaked=[("pg_catalog", "pg_class")])
    catalog.add_relation(CUSTOMERS)
    catalog.add_relation(ORDERS)
    sql = " ".join(words)
    try:
        plans = plan_query(sql, catalog)
    except CloakError:
        return
    for plan in plans:
        if plan.cloaked and plan.sql is not None:
            assert re.search(r"\b(customers|orders|email|order_total|cust_id)\b", plan.sql) is None


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_only_ever_refused(text: str) -> None:
    catalog = MemoryCatalog()
    catalog.add_relation(CUSTOMERS)
    with contextlib.suppress(CloakError):
        plan_query(text, catalog)


def test_names_the_walker_skips_are_refused(
    cat: MemoryCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safety net: a column reference in a field the analyzer does not walk is refused."""
    from pgcloak.rewriter import analyze

    assert one("SELECT email IS NULL FROM customers", cat).sql is not None
    monkeypatch.setitem(analyze._CHILDREN, "NullTest", ())
    err = refused("SELECT email IS NULL FROM customers", cat)
    assert err.sqlstate == "0A000" and err.position == 8


def test_kept_names_that_spell_cloaked_relations_are_refused(cat: MemoryCatalog) -> None:
    # A type (or function) named like a cloaked table would carry its name to the server.
    err = refused("SELECT email::customers FROM customers", cat)
    assert err.sqlstate == "0A000" and "customers" in err.message


def test_names_of_uncloaked_relations_are_taken(cat: MemoryCatalog) -> None:
    assert refused("CREATE TABLE legacy (a int)", cat).sqlstate == "42P07"
    plan = one("CREATE TABLE IF NOT EXISTS legacy (secret_col int)", cat)
    assert (plan.sql or "").startswith("CREATE TABLE IF NOT EXISTS legacy (")
    assert plan.sql is not None and "secret_col" not in plan.sql and plan.changes == ()
    assert refused("ALTER TABLE customers RENAME TO legacy", cat).sqlstate == "42P07"
    assert refused("CREATE INDEX legacy ON customers (email)", cat).sqlstate == "42P07"


def test_locking_clause_and_explain(cat: MemoryCatalog) -> None:
    plan = one("SELECT c.email FROM customers c, orders FOR UPDATE OF c, orders SKIP LOCKED", cat)
    assert plan.sql == (
        f"SELECT a1.{C['email']} FROM {T1} a1, {T2} FOR UPDATE OF a1, {T2} SKIP LOCKED"
    )
    assert refused("SELECT email FROM customers FOR UPDATE OF x", cat).sqlstate == "42P01"
    plan = one("EXPLAIN (COSTS OFF) SELECT email FROM customers WHERE cust_id = 1", cat)
    assert plan.sql == f"EXPLAIN (COSTS OFF) SELECT {C['email']} FROM {T1} WHERE {C['cust_id']} = 1"
    assert plan.output_names is None and plan.cloaked


def test_literals_naming_cloaked_relations_get_physical_names(cat: MemoryCatalog) -> None:
    plan = one("SELECT 'customers'::regclass, nextval('customers_cust_id_seq')", cat)
    assert plan.sql is not None and "customers" not in plan.sql
    assert f"'{T1}'::regclass" in plan.sql
    plan = one("SELECT pg_relation_size('public.customers')", cat)
    assert plan.sql == f"SELECT pg_relation_size('public.{T1}')"
    plan = one("SELECT relname FROM pg_catalog.pg_class WHERE relname = 'customers'", cat)
    assert plan.sql is not None and f"'{T1}'" in plan.sql and plan.maps_values
    assert one("SELECT 'customers' AS just_text", cat).sql == "SELECT 'customers' AS just_text"


# -- literal templates ---------------------------------------------------------------------


def test_statements_differing_in_literals_share_one_analysis(cat: MemoryCatalog) -> None:
    rw = Rewriter()
    first = rw.plan("SELECT email FROM customers WHERE cust_id = 1 AND full_name = 'a'", cat)
    again = rw.plan(
        "SELECT email FROM customers WHERE cust_id = 12345 AND full_name = 'it''s'", cat
    )
    assert rw.template_hits == 1
    fresh = plan_query(
        "SELECT email FROM customers WHERE cust_id = 12345 AND full_name = 'it''s'", cat
    )
    assert again[0].sql == fresh[0].sql
    assert again[0].output_names == first[0].output_names == ("email",)
    assert again[0].source.endswith("'it''s'")
    # Positions after a longer literal still point into the client's text.
    sql = "SELECT email FROM customers WHERE cust_id = 1234567 AND nope = 1"
    with pytest.raises(CloakError):
        rw.plan(sql, cat)
    tmpl_sql = "SELECT email FROM customers WHERE cust_id = 1 AND full_name = 'a'"
    long_sql = "SELECT email FROM customers WHERE cust_id = 1234567 AND full_name = 'abcdef'"
    plan = rw.plan(long_sql, cat)[0]
    assert plan.sql is not None
    target = plan.sql.index("= 'abcdef'") + 3  # 1-based position of the literal
    assert long_sql[plan.original_position(target) - 1 :].startswith("'abcdef'")
    after = plan.sql.rindex(" = ") + 2  # the '=' after the second column
    assert long_sql[plan.original_position(after) - 1 :].startswith("= 'abcdef'")
    assert rw.plan(tmpl_sql, cat)[0].sql == plan_query(tmpl_sql, cat)[0].sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'customers'::regclass, email FROM customers WHERE cust_id = 1",
        "SELECT relname FROM pg_catalog.pg_class WHERE relname = 'customers'",
        "SELECT E'x', email FROM customers",
        "SELECT email FROM customers -- c 1\nWHERE cust_id = 1",
    ],
)
def test_literal_dependent_statements_are_not_templated(cat: MemoryCatalog, sql: str) -> None:
    rw = Rewriter()
    rw.plan(sql, cat)
    variant = sql.replace("1", "2")
    assert rw.plan(variant, cat)[0].sql == plan_query(variant, cat)[0].sql


def test_temporary_and_filtered_tables_are_created_as_written(cat: MemoryCatalog) -> None:
    assert one("CREATE TEMP TABLE tmp (a int)", cat).sql == "CREATE TEMP TABLE tmp (a int)"
    assert refused("CREATE TEMP TABLE tmp (a int REFERENCES customers)", cat).sqlstate == "0A000"
    only_app = Rewriter(cloak_filter=lambda schema, table: schema == "app")
    plan = only_app.plan("CREATE TABLE plain (a int)", cat)[0]
    assert plan.sql == "CREATE TABLE plain (a int)" and not plan.changes
    plan = only_app.plan("CREATE TABLE app.hidden (a int)", cat)[0]
    assert plan.sql is not None and "hidden" not in plan.sql and plan.changes


def test_vacuum_analyze_and_lock(cat: MemoryCatalog) -> None:
    plan = one("VACUUM (ANALYZE) customers (email, full_name), legacy", cat)
    assert plan.sql is not None and "customers" not in plan.sql and "email" not in plan.sql
    assert plan.sql.startswith(f"VACUUM (ANALYZE) {T1} (") and plan.sql.endswith(", legacy")
    assert one("ANALYZE customers", cat).sql == f"ANALYZE {T1}"
    assert refused("ANALYZE customers (nope)", cat).sqlstate == "42703"
    assert one("LOCK TABLE customers IN SHARE MODE", cat).sql == f"LOCK TABLE {T1} IN SHARE MODE"
