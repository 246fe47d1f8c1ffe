"""Column encryption in the rewriter: DDL policies, what queries may do with ciphertext,
and the plan fields the proxy encrypts/decrypts by (docs/encryption-design.md).

Plan-level tests use a MemoryCatalog filled through the rewriter itself (so the
policies come from CREATE TABLE with encryption rules); the last tests run the
DDL against PostgreSQL with the registry writes and reload the registry.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator

import pytest
from helpers import PgServer
from psycopg import pq
from test_registry_catalog import MASTER, Conn, _execute, _load

from pgcloak.registry.install import install
from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter, plan_query
from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    ColumnPolicy,
    CreateTable,
    CreateView,
    EncColumn,
    Relation,
)

RULES: dict[tuple[str, str, str], tuple[str, str | None]] = {
    ("public", "customers", "email"): ("deterministic", None),
    ("public", "customers", "notes"): ("randomized", None),
    ("public", "customers", "balance"): ("randomized", None),
    ("public", "orders", "cust_email"): ("deterministic", None),
    ("public", "orders", "memo"): ("randomized", None),
    ("public", "tags", "label"): ("deterministic", "labels"),
    ("public", "tag_links", "label"): ("deterministic", "labels"),
    ("public", "accounts", "abalance"): ("randomized", None),
    ("public", "customers", "ssn"): ("deterministic", None),
    ("public", "shipments", "cust_email"): ("deterministic", None),
    ("public", "shipments", "memo"): ("randomized", None),
    ("public", "s2", "memo"): ("randomized", None),
    ("public", "links2", "label"): ("deterministic", "labels"),
}
SCHEMA = [
    "CREATE TABLE customers (id serial PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE, "
    "notes text, balance numeric(10, 2), plain_name text)",
    "CREATE TABLE orders (id int PRIMARY KEY, "
    "cust_email varchar(100) REFERENCES customers (email), memo text, total int)",
    "CREATE TABLE tags (id int, label text UNIQUE)",
    "CREATE TABLE tag_links (tag int, label text)",
    "CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
    "CREATE VIEW customer_mails AS SELECT id, email AS mail, notes FROM customers",
]


def rules(schema: str, table: str, column: str) -> tuple[str, str | None] | None:
    return RULES.get((schema, table, column))


@pytest.fixture
def cat() -> MemoryCatalog:
    catalog = MemoryCatalog()
    for sql in SCHEMA:
        for plan in plan_query(sql, catalog, encrypt_rules=rules):
            catalog.apply_all(plan.changes)
    return catalog


def one(sql: str, cat: MemoryCatalog) -> Plan:
    (plan,) = plan_query(sql, cat, encrypt_rules=rules)
    return plan


def refused(sql: str, cat: MemoryCatalog) -> CloakError:
    with pytest.raises(CloakError) as info:
        plan_query(sql, cat, encrypt_rules=rules)
    return info.value


def rel(cat: MemoryCatalog, name: str) -> Relation:
    found = cat.relation("public", name)
    assert found is not None
    return found


def enc(cat: MemoryCatalog, table: str, column: str) -> EncColumn:
    r = rel(cat, table)
    col = r.column(column)
    assert col is not None and col.policy is not None
    return EncColumn.of(col.policy, r.physical, col.physical)


def phys(cat: MemoryCatalog, table: str, column: str | None = None) -> str:
    r = rel(cat, table)
    if column is None:
        return r.physical
    col = r.column(column)
    assert col is not None
    return col.physical


def slots(plan: Plan) -> list[tuple[str, str]]:
    """(literal text as sent, scope) per value slot."""
    assert plan.sql is not None
    return [(plan.sql[s:e], c.scope) for s, e, c in plan.value_slots]


# -- DDL --------------------------------------------------------------------------------


def test_create_table_makes_encrypted_columns_bytea(cat: MemoryCatalog) -> None:
    fresh = MemoryCatalog()
    plan = one(SCHEMA[0], fresh)
    t = re.search(r"CREATE TABLE (t[0-9a-f]{20})", plan.sql or "")
    assert t is not None
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    cols = {c.name: c for c in change.table.columns}
    email, notes, balance = cols["email"], cols["notes"], cols["balance"]
    assert email.policy == ColumnPolicy(
        "deterministic", "varchar(100)", f"{t.group(1)}.{email.physical}"
    )
    assert notes.policy == ColumnPolicy("randomized", "text", f"{t.group(1)}.{notes.physical}")
    assert balance.policy is not None and balance.policy.type_sql == "numeric(10,2)"
    assert cols["id"].policy is None and cols["plain_name"].policy is None
    assert f"{email.physical} bytea NOT NULL" in (plan.sql or "")
    assert f"{balance.physical} bytea" in (plan.sql or "")
    assert "numeric" not in (plan.sql or "") and "VARCHAR" not in (plan.sql or "")
    assert f"{cols['plain_name'].physical} text" in (plan.sql or "")


@pytest.mark.parametrize(
    ("declared", "type_sql"),
    [
        ("character varying(5)", "character varying(5)"),
        ("INT4[]", "int4[]"),
        ("integer ARRAY[3]", "integer array[3]"),
        ("timestamp(3) with time zone", "timestamp(3) with time zone"),
        ("double precision", "double precision"),
        ("pg_catalog.int8", "pg_catalog.int8"),
        ('"char"', '"char"'),
        ("interval day to second", "interval day to second"),
        ("bit varying(8)", "bit varying(8)"),
    ],
)
def test_declared_type_as_written(declared: str, type_sql: str) -> None:
    cat = MemoryCatalog()
    plan = one(f"CREATE TABLE tags (id int, label {declared} NOT NULL)", cat)
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    label = change.table.columns[1]
    assert label.policy is not None and label.policy.type_sql == type_sql
    assert label.policy.scope == "group:labels"
    assert re.search(rf"{label.physical} bytea +NOT NULL\)$", plan.sql or "")


def test_foreign_keys_join_the_referenced_scope(cat: MemoryCatalog) -> None:
    assert enc(cat, "orders", "cust_email").scope == enc(cat, "customers", "email").scope
    assert (
        enc(cat, "orders", "memo").scope == f"{phys(cat, 'orders')}.{phys(cat, 'orders', 'memo')}"
    )
    assert enc(cat, "tags", "label").scope == enc(cat, "tag_links", "label").scope == "group:labels"
    # table-level FOREIGN KEY
    RULES[("public", "orders2", "cust_email")] = ("deterministic", None)
    try:
        plan = one(
            "CREATE TABLE orders2 (id int, cust_email text, "
            "FOREIGN KEY (cust_email) REFERENCES customers (email))",
            cat,
        )
    finally:
        del RULES[("public", "orders2", "cust_email")]
    change = plan.changes[0]
    assert isinstance(change, CreateTable)
    policy = change.table.columns[1].policy
    assert policy is not None and policy.scope == enc(cat, "customers", "email").scope


def test_foreign_key_to_encrypted_column_needs_encryption(cat: MemoryCatalog) -> None:
    err = refused(
        "CREATE TABLE orders2 (id int, cust_email text, "
        "FOREIGN KEY (cust_email) REFERENCES customers (email))",
        cat,
    )
    assert err.sqlstate == "0A000"
    assert err.message == (
        'pgcloak cannot reference column "email" encrypted in deterministic mode from column '
        '"cust_email", which is not encrypted (encrypt it in deterministic mode)'
    )


def test_add_column(cat: MemoryCatalog) -> None:
    plan = one("ALTER TABLE customers ADD COLUMN ssn char(11) NOT NULL", cat)
    (change,) = plan.changes
    assert isinstance(change, AddColumn)
    assert change.column.policy is not None
    assert change.column.policy.type_sql == "char(11)"
    assert plan.sql == (
        f"ALTER TABLE {phys(cat, 'customers')} ADD COLUMN {change.column.physical} bytea NOT NULL"
    )
    cat.apply(change)
    assert enc(cat, "customers", "ssn").mode == "deterministic"


def test_view_columns_keep_policies(cat: MemoryCatalog) -> None:
    view = rel(cat, "customer_mails")
    mail, notes = view.column("mail"), view.column("notes")
    assert mail is not None and notes is not None
    assert mail.policy == enc(cat, "customers", "email").policy
    assert notes.policy == enc(cat, "customers", "notes").policy
    assert view.column("id").policy is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE shipments (id int, memo text DEFAULT 'x')",
         'cannot give a default value to column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo text CHECK (memo LIKE 'a%'))",
         'cannot evaluate a CHECK constraint on column "memo" encrypted in randomized mode: '
         "it uses pattern matching"),
        ("CREATE TABLE shipments (id int, memo text, CHECK (length(memo) > id))",
         'cannot evaluate a CHECK constraint on column "memo" encrypted in randomized mode: '
         'it uses another column ("id")'),
        ("CREATE TABLE shipments (id int, memo text GENERATED ALWAYS AS ('x') STORED)",
         'cannot generate column "memo" encrypted in randomized mode'),
        ('CREATE TABLE shipments (id int, memo text COLLATE "C")',
         'cannot apply COLLATE to column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo serial)",
         'cannot make a serial or identity column of column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo int GENERATED ALWAYS AS IDENTITY)",
         'cannot make a serial or identity column of column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo text UNIQUE)",
         'cannot enforce uniqueness of column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo text, PRIMARY KEY (id, memo))",
         'cannot enforce uniqueness of column "memo" encrypted in randomized mode'),
        ("CREATE TABLE shipments (id int, memo text REFERENCES customers (email))",
         'cannot use column "memo" encrypted in randomized mode in a foreign key'),
        ("CREATE TABLE shipments (id int, cust_email text REFERENCES customers (notes))",
         'cannot reference column "notes" encrypted in randomized mode (foreign keys need '
         "deterministic mode)"),
        ("CREATE TABLE shipments (id int, cust_email text REFERENCES customers (id))",
         'cannot make column "cust_email" encrypted in deterministic mode reference a column '
         "that is not encrypted"),
        ("CREATE TABLE shipments (id int REFERENCES customers (email))",
         'cannot reference column "email" encrypted in deterministic mode from column "id", '
         "which is not encrypted (encrypt it in deterministic mode)"),
        ("CREATE TABLE shipments (id int, cust_email int REFERENCES customers (email))",
         'cannot reference column "email" encrypted in deterministic mode from column '
         '"cust_email" of another type'),
        ("CREATE TABLE links2 (tag int, label text REFERENCES customers (email))",
         'cannot reference column "email" encrypted in deterministic mode from column "label" '
         "under another key"),
        ("CREATE TABLE shipments (id int, memo text%TYPE)", None),
        ("ALTER TABLE customers ADD CONSTRAINT c CHECK (notes <> '')",
         'cannot validate existing rows for a CHECK constraint on column "notes" encrypted in '
         "randomized mode"),
        ("ALTER TABLE customers ADD UNIQUE (notes)",
         'cannot enforce uniqueness of column "notes" encrypted in randomized mode'),
        ("ALTER TABLE tag_links ADD FOREIGN KEY (label) REFERENCES customers (email)",
         'cannot reference column "email" encrypted in deterministic mode from column "label" '
         "under another key"),
        ("ALTER TABLE customers ALTER COLUMN notes TYPE varchar(5)",
         'cannot change the type of column "notes" encrypted in randomized mode'),
        ("ALTER TABLE customers ALTER COLUMN plain_name TYPE text USING email::text",
         'cannot convert column "email" encrypted in deterministic mode into another '
         "column's type"),
        ("ALTER TABLE customers ALTER COLUMN email SET DEFAULT 'x'",
         'cannot give a default value to column "email" encrypted in deterministic mode'),
        ("ALTER TABLE customers ADD COLUMN ssn text DEFAULT 'x'",
         'cannot give a default value to column "ssn" encrypted in deterministic mode'),
        ("ALTER TABLE customers ADD COLUMN g text GENERATED ALWAYS AS (email) STORED",
         'cannot use column "email" encrypted in deterministic mode in a generated column'),
        ("ALTER TABLE customers ADD COLUMN g int GENERATED ALWAYS AS (length(notes)) STORED",
         'cannot use column "notes" encrypted in randomized mode in a generated column'),
        ("CREATE INDEX ON customers (notes)",
         'cannot index column "notes" encrypted in randomized mode'),
        ("CREATE INDEX ON customers (lower(email))",
         'cannot index an expression over column "email" encrypted in deterministic mode'),
        ("CREATE INDEX ON customers (id) WHERE email IS NOT NULL",
         'cannot use column "email" encrypted in deterministic mode in an index predicate'),
        ("CREATE TABLE orders2 AS SELECT lower(email) AS e FROM customers",
         'cannot apply functions to column "email" encrypted in deterministic mode'),
    ],
)  # fmt: skip
def test_ddl_refusals(cat: MemoryCatalog, sql: str, message: str | None) -> None:
    err = refused(sql, cat)
    assert err.sqlstate in ("0A000", "42601"), err.message
    if message is not None:
        assert err.message == f"pgcloak {message}"


def test_checks_on_encrypted_columns_stay_out_of_the_sql(cat: MemoryCatalog) -> None:
    plan = one(
        "CREATE TABLE shipments (id int CHECK (id > 0), memo text CHECK (memo <> 'zq-mark'), "
        "CONSTRAINT short CHECK (char_length(memo) < 7777123), cust_email text)",
        cat,
    )
    assert plan.sql is not None
    assert "zq-mark" not in plan.sql and "7777123" not in plan.sql and "short" not in plan.sql
    assert plan.sql.count("CHECK") == 1  # the plain column's goes to the server
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    kept = {c.name: json.loads(c.check) for c in change.constraints if c.check is not None}
    assert kept == {
        "shipments_memo_check": ["cmp", "<>", ["col"], ["k", "str", "zq-mark"]],
        "short": ["cmp", "<", ["len", "char"], ["k", "num", "7777123"]],
    }
    cat.apply_all(plan.changes)
    alter = one("ALTER TABLE shipments ADD CHECK (memo IN ('a', NULL)) NOT VALID", cat)
    memo = phys(cat, "shipments", "memo")
    assert alter.sql == f"ALTER TABLE {phys(cat, 'shipments')} ALTER COLUMN {memo} SET DEFAULT NULL"
    (added,) = alter.changes
    assert isinstance(added, AddConstraint)
    assert added.constraint.name == "shipments_memo_check1"
    first = one("CREATE TABLE s2 (CHECK (memo <> ''), memo text)", cat)
    assert first.sql is not None and "CHECK" not in first.sql and ",)" not in first.sql
    dropped = one("ALTER TABLE shipments DROP CONSTRAINT short, DROP COLUMN id", cat)
    assert dropped.sql is not None and "SET DEFAULT NULL" in dropped.sql


def test_ddl_allowed_on_encrypted_columns(cat: MemoryCatalog) -> None:
    for sql in [
        "CREATE INDEX ON customers (email)",
        "CREATE UNIQUE INDEX ON customers (email) INCLUDE (notes)",
        "ALTER TABLE customers ALTER COLUMN notes DROP DEFAULT",
        "ALTER TABLE customers ALTER COLUMN notes SET NOT NULL",
        "ALTER TABLE customers ALTER COLUMN notes SET DEFAULT NULL",
        "ALTER TABLE customers DROP COLUMN notes",
        "CREATE TABLE orders2 (id int, memo text)",  # no rule: plain
        "CREATE TABLE shipments (id int, cust_email text DEFAULT NULL)",
    ]:
        one(sql, cat)


def test_uncloaked_tables_get_no_encrypted_columns(cat: MemoryCatalog) -> None:
    (plan,) = plan_query(
        "CREATE TABLE accounts (aid int, abalance int)",
        MemoryCatalog(),
        cloak_filter=lambda s, t: False,
    )
    assert plan.sql == "CREATE TABLE accounts (aid int, abalance int)"
    with pytest.raises(CloakError) as info:
        plan_query(
            "CREATE TABLE accounts (aid int, abalance int)",
            MemoryCatalog(),
            cloak_filter=lambda s, t: False,
            encrypt_rules=rules,
        )
    assert info.value.message == (
        'pgcloak cannot encrypt column "abalance" of a table it does not cloak'
    )


def test_create_table_as_keeps_ciphertext_policies(cat: MemoryCatalog) -> None:
    plan = one("CREATE TABLE backup AS SELECT id, email FROM customers", cat)
    (change,) = plan.changes
    assert isinstance(change, CreateTable)
    assert change.table.columns[0].policy is None
    assert change.table.columns[1].policy == enc(cat, "customers", "email").policy


# -- queries: what the proxy encrypts ----------------------------------------------------


def test_equality_with_literals_becomes_value_slots(cat: MemoryCatalog) -> None:
    t, e, i = phys(cat, "customers"), phys(cat, "customers", "email"), phys(cat, "customers", "id")
    scope = enc(cat, "customers", "email").scope
    plan = one("SELECT id FROM customers WHERE email = 'ann@example.com' AND id = 7", cat)
    assert plan.sql == f"SELECT {i} FROM {t} WHERE {e} = 'ann@example.com' AND {i} = 7"
    assert slots(plan) == [("'ann@example.com'", scope)]
    assert plan.value_slots[0][2] == enc(cat, "customers", "email")
    assert plan.output_columns is None and plan.param_slots == ()

    plan = one(
        "SELECT id FROM customers WHERE email IN ('a', E'b\\n', $$c$$) OR email <> 'd' "
        "OR 'e' = email OR email IS DISTINCT FROM 'f' OR (id, email) = (1, 'g')",
        cat,
    )
    assert [s for s, _ in slots(plan)] == ["'a'", "E'b\\n'", "$$c$$", "'d'", "'e'", "'f'", "'g'"]


def test_casts_on_encrypted_values_are_taken_off(cat: MemoryCatalog) -> None:
    t, e = phys(cat, "customers"), phys(cat, "customers", "email")
    plan = one(
        "SELECT 1 FROM customers WHERE email = $1::VARCHAR OR email = CAST($2 AS varchar) "
        "OR email = 'x'::text::varchar OR email = varchar 'y' OR email = NULL::text",
        cat,
    )
    assert plan.sql == (
        f"SELECT 1 FROM {t} WHERE {e} = $1 OR {e} = CAST($2 AS bytea) "
        f"OR {e} = 'x' OR {e} =  'y' OR {e} = NULL"
    )
    assert [s for s, _ in slots(plan)] == ["'x'", "'y'"]
    email = enc(cat, "customers", "email")
    assert plan.param_slots == ((1, email), (2, email))


def test_number_casts_do_not_depend_on_the_number(cat: MemoryCatalog) -> None:
    """E30: `2::int` and `1.9::int` share a template (template.py), so whether a cast on
    a number may be taken off cannot depend on the number. Stored, the number goes
    through the assignment cast to the column's type, which is that same cast: both are
    fine. Compared, `i = 1.9::int` differs from `i = 1.9`: refused for both."""
    rw = Rewriter(encrypt_rules=rules)
    for n in ("2", "1.9"):
        (plan,) = rw.plan(f"UPDATE accounts SET abalance = {n}::int", cat)
        assert plan.sql is not None and plan.sql.endswith(f"= {n}")
        with pytest.raises(CloakError) as info:  # (and abalance is randomized here;
            rw.plan(f"SELECT aid FROM accounts WHERE abalance = {n}::int", cat)
        assert info.value.sqlstate == "0A000"  # test_encrypt_adversarial: deterministic)
    for n in ("2", "2.5", "1e3"):
        (plan,) = rw.plan(f"UPDATE customers SET balance = {n}::numeric", cat)
        assert plan.sql is not None and plan.sql.endswith(f"= {n}")


def test_insert_values(cat: MemoryCatalog) -> None:
    plan = one(
        "INSERT INTO customers (email, notes, balance, plain_name) "
        "VALUES ('a', $1, -12.5, 'plain'), ($2::text, NULL, DEFAULT, $3) RETURNING id, email",
        cat,
    )
    email, notes, balance = (enc(cat, "customers", c) for c in ("email", "notes", "balance"))
    assert [(s, c) for s, c in slots(plan)] == [("'a'", email.scope), ("-12.5", balance.scope)]
    assert plan.param_slots == ((1, notes), (2, email))
    assert plan.output_columns == (None, email)
    assert "$2," in (plan.sql or "") and "::text" not in (plan.sql or "")


def test_insert_without_column_list_and_insert_select(cat: MemoryCatalog) -> None:
    plan = one("INSERT INTO tags VALUES (1, 'red')", cat)
    assert slots(plan) == [("'red'", "group:labels")]
    plan = one("INSERT INTO tag_links (tag, label) SELECT id, label FROM tags", cat)
    assert plan.value_slots == () and plan.output_columns is None
    plan = one("INSERT INTO tag_links (tag, label) SELECT 1, 'blue'", cat)
    assert slots(plan) == [("'blue'", "group:labels")]
    plan = one("INSERT INTO orders (id, cust_email) SELECT id, email FROM customers", cat)
    assert plan.value_slots == ()


def test_sqlalchemy_insertmanyvalues(cat: MemoryCatalog) -> None:
    """INSERT ... SELECT p0::T FROM (VALUES ($1::T, .., 0), ...) AS imp_sen(...) ORDER BY
    sen_counter: the VALUES items feeding encrypted columns are encrypted values."""
    email, notes = enc(cat, "customers", "email"), enc(cat, "customers", "notes")
    t, ci = phys(cat, "customers"), phys(cat, "customers", "id")
    plan = one(
        "INSERT INTO customers (email, notes, plain_name) SELECT p0::VARCHAR, p1::TEXT, "
        "p2::VARCHAR FROM (VALUES ($1::VARCHAR, $2::TEXT, $3::VARCHAR, 0), "
        "($4::VARCHAR, 'n', $5::VARCHAR, 1)) AS imp_sen(p0, p1, p2, sen_counter) "
        "ORDER BY sen_counter RETURNING customers.id, customers.id AS id__1",
        cat,
    )
    cols = ", ".join(phys(cat, "customers", c) for c in ("email", "notes", "plain_name"))
    assert plan.sql == (
        f"INSERT INTO {t} ({cols}) SELECT a2, a3, a4::VARCHAR FROM (VALUES ($1, $2, "
        "$3::VARCHAR, 0), ($4, 'n', $5::VARCHAR, 1)) AS a1(a2, a3, a4, a5) ORDER BY a5 "
        f"RETURNING {t}.{ci}, {t}.{ci} AS a6"
    )
    assert plan.param_slots == ((1, email), (2, notes), (4, email))
    assert slots(plan) == [("'n'", notes.scope)]
    # a VALUES column used elsewhere too is no stored value: refused
    err = refused(
        "INSERT INTO customers (email) SELECT p0 FROM (VALUES ($1)) v(p0) WHERE p0 <> 'x'", cat
    )
    assert err.message.startswith('pgcloak cannot store an expression in column "email"')


def test_update_delete_merge_on_conflict(cat: MemoryCatalog) -> None:
    email, notes = enc(cat, "customers", "email"), enc(cat, "customers", "notes")
    plan = one(
        "UPDATE customers SET notes = 'n', (email, plain_name) = ('e', 'p') "
        "WHERE email = $1 RETURNING notes",
        cat,
    )
    assert slots(plan) == [("'n'", notes.scope), ("'e'", email.scope)]
    assert plan.param_slots == ((1, email),)
    assert plan.output_columns == (notes,)
    plan = one("UPDATE orders SET cust_email = c.email FROM customers c WHERE c.id = 1", cat)
    assert plan.value_slots == ()
    plan = one("DELETE FROM customers WHERE email = 'gone' RETURNING id", cat)
    assert slots(plan) == [("'gone'", email.scope)]
    plan = one(
        "INSERT INTO customers (email, notes) VALUES ('a', 'b') ON CONFLICT (email) "
        "DO UPDATE SET notes = EXCLUDED.notes, email = 'c' WHERE customers.email = 'd'",
        cat,
    )
    assert [s for s, _ in slots(plan)] == ["'a'", "'b'", "'c'", "'d'"]
    plan = one(
        "MERGE INTO orders o USING customers c ON o.cust_email = c.email "
        "WHEN MATCHED THEN UPDATE SET memo = 'm' "
        "WHEN NOT MATCHED THEN INSERT (id, cust_email, memo) VALUES (c.id, c.email, $1)",
        cat,
    )
    assert slots(plan) == [("'m'", enc(cat, "orders", "memo").scope)]
    assert plan.param_slots == ((1, enc(cat, "orders", "memo")),)


def test_output_columns_follow_ciphertext(cat: MemoryCatalog) -> None:
    email, notes = enc(cat, "customers", "email"), enc(cat, "customers", "notes")
    balance = enc(cat, "customers", "balance")
    plan = one("SELECT * FROM customers", cat)
    assert plan.output_columns == (None, email, notes, balance, None)
    plan = one(
        "WITH c AS (SELECT email AS m, notes FROM customers) "
        "SELECT s.m, s.notes, (SELECT email FROM customers LIMIT 1), count(s.notes) OVER (), "
        "s.m IS NULL, s.m = 'x' FROM (SELECT * FROM c) s",
        cat,
    )
    assert plan.output_columns == (email, notes, email, None, None, None)
    plan = one("SELECT mail, notes FROM customer_mails WHERE mail = 'x'", cat)
    view = rel(cat, "customer_mails")
    assert plan.output_columns is not None
    assert [c.scope if c else None for c in plan.output_columns] == [email.scope, notes.scope]
    assert plan.output_columns[0] is not None and plan.output_columns[0].table == view.physical
    assert slots(plan) == [("'x'", email.scope)]
    plan = one("SELECT email FROM customers UNION ALL SELECT cust_email FROM orders", cat)
    assert plan.output_columns == (email,)
    plan = one("SELECT notes FROM customers UNION ALL SELECT notes FROM customers", cat)
    assert plan.output_columns == (notes,)


def test_allowed_operations(cat: MemoryCatalog) -> None:
    for sql in [
        "SELECT count(notes), count(DISTINCT email), count(*) FROM customers",
        "SELECT email, count(*) FROM customers GROUP BY email HAVING email <> 'x'",
        "SELECT email, count(*) FROM customers GROUP BY 1",
        "SELECT DISTINCT email FROM customers",
        "SELECT DISTINCT ON (email) email, id FROM customers",
        "SELECT id FROM customers WHERE notes IS NULL AND balance IS NOT NULL",
        "SELECT c.id FROM customers c JOIN orders o ON o.cust_email = c.email",
        "SELECT * FROM tags JOIN tag_links USING (label)",
        "SELECT id FROM customers WHERE email IN (SELECT cust_email FROM orders)",
        "SELECT id FROM customers WHERE 'x' IN (SELECT cust_email FROM orders)",
        "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE cust_email = email)",
        "SELECT count(email) OVER (PARTITION BY email) FROM customers",
        "SELECT email FROM customers UNION SELECT cust_email FROM orders",
        "EXPLAIN SELECT id FROM customers WHERE email = 'x'",
        "COPY customers (email, id) TO STDOUT",
        "SELECT c.* FROM customers c",
    ]:
        one(sql, cat)


def test_explain_and_copy(cat: MemoryCatalog) -> None:
    email, notes = enc(cat, "customers", "email"), enc(cat, "customers", "notes")
    plan = one("EXPLAIN ANALYZE SELECT id FROM customers WHERE email = 'x'", cat)
    assert slots(plan) == [("'x'", email.scope)] and plan.output_columns is None
    plan = one("COPY customers (notes, id, email) FROM STDIN", cat)
    assert plan.copy_columns == (notes, None, email)
    plan = one("COPY customers TO STDOUT", cat)
    assert plan.copy_columns == (None, email, notes, enc(cat, "customers", "balance"), None)
    plan = one("COPY (SELECT id, email FROM customers WHERE email = 'y') TO STDOUT", cat)
    assert plan.copy_columns == (None, email) and slots(plan) == [("'y'", email.scope)]
    plan = one("COPY orders (id, total) FROM STDIN", cat)
    assert plan.copy_columns is None


def test_prepare(cat: MemoryCatalog) -> None:
    email = enc(cat, "customers", "email")
    plan = one("PREPARE q AS SELECT email FROM customers WHERE email = 'x'", cat)
    assert plan.output_columns == (email,) and slots(plan) == [("'x'", email.scope)]
    err = refused("PREPARE q (text) AS SELECT id FROM customers WHERE email = $1", cat)
    assert "PREPARE with parameters" in err.message


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM customers ORDER BY email",
         'cannot order by column "email" encrypted in deterministic mode'),
        ("SELECT email FROM customers ORDER BY 1",
         'cannot order by column "email" encrypted in deterministic mode'),
        ("SELECT email AS e FROM customers ORDER BY e",
         'cannot order by column "e" encrypted in deterministic mode'),
        ("SELECT id FROM customers WHERE email > 'a'",
         'cannot compare ranges of column "email" encrypted in deterministic mode'),
        ("SELECT id FROM customers WHERE balance BETWEEN 1 AND 2",
         'cannot compare ranges of column "balance" encrypted in randomized mode'),
        ("SELECT id FROM customers WHERE email LIKE 'a%'",
         'cannot pattern-match column "email" encrypted in deterministic mode'),
        ("SELECT id FROM customers WHERE email ~ 'a'",
         'cannot pattern-match column "email" encrypted in deterministic mode'),
        ("SELECT balance + 1 FROM customers",
         'cannot do arithmetic on column "balance" encrypted in randomized mode'),
        ("SELECT lower(email) FROM customers",
         'cannot apply functions to column "email" encrypted in deterministic mode'),
        ("SELECT sum(balance) FROM customers",
         'cannot aggregate column "balance" encrypted in randomized mode'),
        ("SELECT max(email) FROM customers",
         'cannot aggregate column "email" encrypted in deterministic mode'),
        ("SELECT email::text FROM customers",
         'cannot cast column "email" encrypted in deterministic mode'),
        ("SELECT id FROM customers WHERE notes = 'x'",
         'cannot test equality of column "notes" encrypted in randomized mode'),
        ("SELECT id FROM customers WHERE notes IN ('x')",
         'cannot test equality of column "notes" encrypted in randomized mode'),
        ("SELECT id FROM customers WHERE email = ANY('{a,b}')",
         'cannot compare column "email" encrypted in deterministic mode with an array '
         "(= ANY/ALL)"),
        ("SELECT id FROM customers WHERE email = plain_name",
         'cannot compare column "email" encrypted in deterministic mode with a column that is '
         "not encrypted"),
        ("SELECT id FROM customers WHERE email = lower('X')",
         'cannot compare column "email" encrypted in deterministic mode with an expression '
         "(only literals, parameters and columns under the same key)"),
        ("SELECT 1 FROM customers c JOIN tags t ON t.label = c.email",
         'cannot compare column "label" encrypted in deterministic mode with a column under '
         "another key"),
        ("SELECT 1 FROM customers c JOIN orders o ON o.memo = c.notes",
         'cannot test equality of column "memo" encrypted in randomized mode'),
        ("SELECT notes, count(*) FROM customers GROUP BY notes",
         'cannot group by column "notes" encrypted in randomized mode'),
        ("SELECT DISTINCT notes FROM customers",
         'cannot select DISTINCT column "notes" encrypted in randomized mode'),
        ("SELECT count(DISTINCT notes) FROM customers",
         'cannot count DISTINCT values of column "notes" encrypted in randomized mode'),
        ("SELECT count(*) OVER (PARTITION BY notes) FROM customers",
         'cannot partition by column "notes" encrypted in randomized mode'),
        ("SELECT rank() OVER (ORDER BY email) FROM customers",
         'cannot order by column "email" encrypted in deterministic mode'),
        ("SELECT notes FROM customers UNION SELECT memo FROM orders",
         'cannot combine column "notes" encrypted in randomized mode with a column under '
         "another key in UNION"),
        ("SELECT email FROM customers UNION SELECT plain_name FROM customers",
         'cannot combine column "email" encrypted in deterministic mode with a column that is '
         "not encrypted in UNION"),
        ("SELECT notes FROM customers INTERSECT ALL SELECT notes FROM customers",
         'cannot apply INTERSECT to column "notes" encrypted in randomized mode'),
        ("SELECT id FROM customers WHERE CASE WHEN id = 1 THEN email END = 'x'",
         'cannot use column "email" encrypted in deterministic mode in a CASE expression'),
        ("SELECT coalesce(email, 'x') FROM customers",
         'cannot apply functions to column "email" encrypted in deterministic mode'),
        ("SELECT ROW(email) FROM customers",
         'cannot use column "email" encrypted in deterministic mode in a row or array '
         "constructor"),
        ("SELECT email COLLATE \"C\" FROM customers",
         'cannot apply COLLATE to column "email" encrypted in deterministic mode'),
        ("SELECT c FROM customers c", "cannot use a whole-row reference to a relation with "
         "encrypted columns"),
        ("SELECT row_to_json(c.*) FROM customers c", "cannot use a whole-row reference to a "
         "relation with encrypted columns"),
        ("SELECT 1 FROM customers WHERE notes", None),
        ("INSERT INTO customers (email) VALUES (lower('X'))",
         'cannot store an expression in column "email" encrypted in deterministic mode (only '
         "literals, parameters, NULL, DEFAULT and columns under the same key)"),
        ("INSERT INTO customers (email) VALUES ('a' || 'b')", None),
        ("INSERT INTO customers (email) SELECT plain_name FROM customers",
         'cannot store an expression in column "email" encrypted in deterministic mode (only '
         "literals, parameters, NULL, DEFAULT and columns under the same key)"),
        ("INSERT INTO orders (memo) SELECT notes FROM customers",
         'cannot store column "notes" encrypted in randomized mode in a column under another key'),
        ("INSERT INTO orders (total) SELECT balance FROM customers",
         'cannot store column "balance" encrypted in randomized mode in a column that is not '
         "encrypted"),
        ("INSERT INTO orders SELECT * FROM customers", None),
        ("UPDATE customers SET plain_name = email",
         'cannot store column "email" encrypted in deterministic mode in a column that is not '
         "encrypted"),
        ("UPDATE customers SET balance = balance + 1",
         'cannot store an expression in column "balance" encrypted in randomized mode (only '
         "literals, parameters, NULL, DEFAULT and columns under the same key)"),
        ("UPDATE accounts SET abalance = abalance + -1234 WHERE aid = 5", None),
        ("SELECT id FROM customers WHERE email = $1 AND plain_name = $1",
         "cannot use parameter $1 both for an encrypted column and elsewhere"),
        ("SELECT c.id FROM customers c JOIN tags t ON c.email = $1 AND t.label = $1",
         "cannot use parameter $1 for columns under different keys"),
        ("SELECT c.id FROM customers c, tags t WHERE c.email = 'x' AND t.label = c.email",
         'cannot compare column "label" encrypted in deterministic mode with a column under '
         "another key"),
        ("COPY (INSERT INTO customers (email) VALUES ('x') RETURNING email) TO STDOUT", None),
        # E30: a cast that could change the value is not taken off silently
        ("SELECT id FROM customers WHERE email = 'x'::char(3)",
         'cannot cast a value for column "email" encrypted in deterministic mode to another '
         "type, length or precision (a cast to the column's own type is fine, with no length "
         "or precision in comparisons)"),
        ("SELECT id FROM customers WHERE email = CAST($1 AS varchar(100))", None),
        ("INSERT INTO customers (email) VALUES ('x'::varchar(5))", None),
        ("INSERT INTO customers (email) VALUES (5::int)", None),
        ("SELECT aid FROM accounts WHERE abalance = 2::int", None),
        ("SELECT 1 FROM customers WHERE email = 'a'\n'b'",
         "does not support continued string literals for encrypted columns"),
    ],
)  # fmt: skip
def test_query_refusals(cat: MemoryCatalog, sql: str, message: str | None) -> None:
    err = refused(sql, cat)
    assert err.sqlstate == "0A000", err.message
    if message is not None:
        assert err.message == f"pgcloak {message}"


def test_refusal_positions(cat: MemoryCatalog) -> None:
    sql = "SELECT id FROM customers WHERE notes = 'x'"
    assert refused(sql, cat).position == sql.index("notes") + 1
    sql = "SELECT id FROM customers ORDER BY email"
    assert refused(sql, cat).position == sql.index("email") + 1


# -- templates and multi-statement strings ----------------------------------------------


def test_pgbench_statement_stays_templated(cat: MemoryCatalog) -> None:
    rw = Rewriter(encrypt_rules=rules)
    balance = enc(cat, "accounts", "abalance")
    for n, aid in enumerate((123, 99999, 7)):
        (plan,) = rw.plan(f"SELECT abalance FROM accounts WHERE aid = {aid}", cat)
        assert plan.output_columns == (balance,)
        assert rw.template_hits == n
        assert (plan.sql or "").endswith(f"= {aid}")


def test_value_slots_move_with_templated_literals(cat: MemoryCatalog) -> None:
    rw = Rewriter(encrypt_rules=rules)
    queries = [
        "SELECT id FROM customers WHERE email = 'a' AND id > 1 AND balance IS NULL LIMIT 5",
        "SELECT id FROM customers WHERE email = 'longer@example.com' AND id > 12345 "
        "AND balance IS NULL LIMIT 1",
        "UPDATE customers SET notes = 'x', plain_name = 'yy' WHERE email = 'z' AND id = 3",
        "UPDATE customers SET notes = 'xxxx', plain_name = 'y' WHERE email = 'zzzzzzz' "
        "AND id = 34567",
        "UPDATE customers SET balance = -5 WHERE id = 1",
        "UPDATE customers SET balance = -12345.5 WHERE id = 100",
    ]
    for sql in queries:
        (plan,) = rw.plan(sql, cat)
        fresh = one(sql, cat)
        assert plan.sql == fresh.sql
        assert plan.value_slots == fresh.value_slots, sql
    assert rw.template_hits == 3


def test_multi_statement_string_sees_new_policies() -> None:
    cat = MemoryCatalog()
    plans = plan_query(
        "CREATE TABLE tags (id int, label text); INSERT INTO tags VALUES (1, 'x'); "
        "SELECT label FROM tags WHERE label = $1",
        cat,
        encrypt_rules=rules,
    )
    assert slots(plans[1]) == [("'x'", "group:labels")]
    assert plans[2].param_slots[0][1].scope == "group:labels"
    assert plans[2].output_columns is not None and plans[2].output_columns[0] is not None


def test_no_rules_no_encryption() -> None:
    cat = MemoryCatalog()
    (plan,) = plan_query("CREATE TABLE tags (id int, label text)", cat)
    (change,) = plan.changes
    assert isinstance(change, CreateTable) and change.table.columns[1].policy is None
    assert "label" not in (plan.sql or "") and "text" in (plan.sql or "")


# -- against PostgreSQL: bytea columns and the registry round trip ------------------------


@pytest.fixture
def conn(pg: PgServer, db_factory: Callable[..., str]) -> Iterator[Conn]:
    with pg.connect(db_factory()) as c:
        install(c, MASTER)
        yield c


def test_registry_round_trip_keeps_policies(conn: Conn) -> None:
    loaded = _load(conn)
    reg, cat = loaded.registry, loaded.catalog
    rw = Rewriter(encrypt_rules=rules)
    steps = [
        *SCHEMA,
        "ALTER TABLE customers ADD COLUMN ssn char(11)",
        "INSERT INTO customers (email, notes) VALUES ('\\x01'::varchar, NULL)",
    ]
    for sql in steps:
        (plan,) = rw.plan(sql, cat)
        _execute(conn, plan, reg, cat)
    fresh = _load(conn)
    assert fresh.drift == []
    for name in ("customers", "orders", "tags", "tag_links", "customer_mails"):
        mine, theirs = cat.relation("public", name), fresh.catalog.relation("public", name)
        assert mine is not None and mine == theirs, name
    customers = fresh.catalog.relation("public", "customers")
    assert customers is not None
    types = dict(
        conn.execute(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
            "FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0",
            (customers.physical,),
        ).fetchall()
    )
    by_name = {c.name: c for c in customers.columns}
    expected_types = [("email", "bytea"), ("notes", "bytea"), ("balance", "bytea"),
                      ("ssn", "bytea"), ("id", "integer"), ("plain_name", "text")]  # fmt: skip
    for name, expected in expected_types:
        assert types[by_name[name].physical] == expected, name
    ssn = by_name["ssn"].policy
    assert ssn is not None and ssn.type_sql == "char(11)" and ssn.mode == "deterministic"
    raw = conn.execute(
        "SELECT policy FROM pgcloak.objects WHERE kind = 'c' AND physical_name = %s",
        (by_name["email"].physical,),
    ).fetchone()
    assert raw is not None and raw[0] == {
        "mode": "deterministic",
        "type": "varchar(100)",
        "scope": f"{customers.physical}.{by_name['email'].physical}",
    }
    view = fresh.catalog.relation("public", "customer_mails")
    assert view is not None and isinstance(view.columns[1].policy, ColumnPolicy)
    assert any(isinstance(c, CreateView) for c in plan_query(SCHEMA[-1].replace(
        "customer_mails", "more_mails"), fresh.catalog)[0].changes)  # fmt: skip


def test_malformed_policy_is_refused(conn: Conn) -> None:
    loaded = _load(conn)
    reg, cat = loaded.registry, loaded.catalog
    (plan,) = Rewriter(encrypt_rules=rules).plan(SCHEMA[2], cat)
    _execute(conn, plan, reg, cat)
    conn.execute("UPDATE pgcloak.objects SET policy = '{\"mode\": \"rot13\"}' WHERE kind = 'c' "
                 "AND policy IS NOT NULL")  # fmt: skip
    from pgcloak.registry.catalog import RegistryUnavailable

    with pytest.raises(RegistryUnavailable) as info:
        _load(conn)
    assert info.value.sqlstate == "XX001"


_FAKE = itertools.count(1)


def _fake_encrypt(plan: Plan) -> str:
    """The text the proxy sends: each value slot spliced as a (distinct) bytea literal."""
    sql = plan.sql or ""
    for start, end, _ in reversed(plan.value_slots):
        sql = sql[:start] + f"'\\x{next(_FAKE):08x}'::bytea" + sql[end:]
    return sql


BYTEA_OID = 17


def test_rewritten_statements_run_on_bytea(conn: Conn) -> None:
    """The server accepts the rewritten text once slots and parameters are bytea."""
    cat = _load(conn).catalog
    reg = _load(conn).registry
    rw = Rewriter(encrypt_rules=rules)
    for sql in SCHEMA:
        (plan,) = rw.plan(sql, cat)
        _execute(conn, plan, reg, cat)
    statements = [
        "INSERT INTO customers (email, notes, balance) VALUES ('a', $1::text, -1.5), "
        "($2::VARCHAR, NULL::text, DEFAULT)",
        "INSERT INTO customers (email, notes, plain_name) SELECT p0::VARCHAR, p1::TEXT, "
        "p2::VARCHAR FROM (VALUES ($1::VARCHAR, $2::TEXT, 'x'::VARCHAR, 0)) "
        "AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter RETURNING customers.id",
        "SELECT id, email FROM customers WHERE email = $1::VARCHAR OR email = CAST('b' AS "
        "varchar) OR email = varchar 'c' OR email IN ('d', $2) OR email = NULL::text",
        "UPDATE customers SET notes = $1, (email, plain_name) = ('e', 'p') WHERE email = 'x'",
        "INSERT INTO orders (id, cust_email) SELECT 1, email FROM customers LIMIT 1",
        "SELECT c.email, count(*) FROM customers c JOIN orders o ON o.cust_email = c.email "
        "GROUP BY c.email",
        "INSERT INTO customers (email) VALUES ('z') ON CONFLICT (email) "
        "DO UPDATE SET notes = EXCLUDED.notes, balance = NULL",
        "SELECT mail FROM customer_mails WHERE mail = 'a'",
        "DELETE FROM orders WHERE cust_email = $1",
    ]
    for sql in statements:
        (plan,) = rw.plan(sql, cat)
        text = _fake_encrypt(plan)
        n = max((k for k, _ in plan.param_slots), default=0)
        values: list[bytes | None] = [next(_FAKE).to_bytes(4, "big") for _ in range(n)]
        res = conn.pgconn.exec_params(text.encode(), values, [BYTEA_OID] * n, [1] * n)
        assert res.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK), (
            sql,
            res.error_message,
        )
