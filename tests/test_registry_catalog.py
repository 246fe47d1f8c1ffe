"""The registry as the rewriter's Catalog, against a real PostgreSQL and a real registry.

Every DDL statement is planned with the current catalog, sent together with the
registry writes `writes_for` produced (one simple Query, as the proxy will), and
applied to the catalog optimistically. After each statement LOAD_SQL is run the
way the proxy runs it (text-format values of every result set), and the rebuilt
catalog must equal the optimistic one and plan the next statement identically.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from helpers import PgServer

from pgcloak.crypto.keys import MasterKey, new_master_key
from pgcloak.registry.catalog import (
    LOAD_SQL,
    Loaded,
    RegistryCatalog,
    RegistryUnavailable,
    parse_load,
    snapshot_covers,
    writes_for_all,
)
from pgcloak.registry.direct import load_registry, text_result_sets
from pgcloak.registry.install import install
from pgcloak.registry.store import Registry, key_check_write
from pgcloak.rewriter import CloakError, Plan, Rewriter

Conn = psycopg.Connection[tuple[Any, ...]]

MASTER = MasterKey.from_base64(new_master_key())

STEPS = [
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
        unit_price numeric(10, 2) NOT NULL
    )""",
    """CREATE TABLE orders (
        order_no serial PRIMARY KEY,
        cust_id integer NOT NULL REFERENCES customers (cust_id) ON DELETE CASCADE,
        order_total numeric(10, 2) CHECK (order_total >= 0),
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
    "CREATE INDEX ON orders (cust_id, (order_total * 2)) WHERE placed_on IS NOT NULL",
    "CREATE TABLE shipments (shipment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "order_no integer, carrier text, tracking_code text, "
    "UNIQUE (carrier, tracking_code) INCLUDE (order_no), "
    "CHECK (order_no IS NOT NULL OR carrier IS NOT NULL))",
    "INSERT INTO customers (email, full_name) VALUES ('ann@example.com', 'Ann')",
    "INSERT INTO orders (cust_id, order_total) SELECT cust_id, 5 FROM customers RETURNING *",
    "ALTER TABLE customers ADD COLUMN vip_level integer CHECK (vip_level BETWEEN 0 AND 5)",
    "ALTER TABLE customers ADD COLUMN account_no serial UNIQUE",
    "SELECT * FROM customers c JOIN orders o USING (cust_id)",
    "ALTER TABLE orders ADD CONSTRAINT order_total_positive CHECK (order_total > 0)",
    "ALTER TABLE orders RENAME COLUMN placed_on TO ordered_on",
    "ALTER TABLE orders RENAME CONSTRAINT order_total_positive TO total_positive",
    "ALTER TABLE orders RENAME TO purchases",
    "SELECT order_no, ordered_on FROM purchases WHERE order_total > 1",
    "ALTER TABLE purchases DROP CONSTRAINT total_positive",
    "ALTER TABLE customers DROP COLUMN vip_level",
    "ALTER TABLE customers DROP COLUMN account_no",
    "ALTER TABLE products ADD UNIQUE (product_title)",
    "ALTER TABLE shipments ADD CONSTRAINT shipment_order_fk FOREIGN KEY (order_no) "
    "REFERENCES purchases",
    "ALTER TABLE purchases ADD COLUMN note text, "
    "ADD CONSTRAINT note_short CHECK (length(note) < 9)",
    "ALTER TABLE purchases DROP COLUMN ordered_on",
    "ALTER TABLE customers DROP CONSTRAINT customers_pkey CASCADE",
    "DROP TABLE products CASCADE",
    "SELECT * FROM order_lines",
    "DROP TABLE purchases CASCADE",
    "CREATE TABLE orders (order_no serial PRIMARY KEY, cust_id integer)",
    "DROP TABLE customers, order_lines, shipments",
]


@pytest.fixture
def conn(pg: PgServer, db_factory: Callable[..., str]) -> Iterator[Conn]:
    with pg.connect(db_factory()) as c:
        install(c, MASTER)
        yield c


def _load(conn: Conn, master: MasterKey = MASTER) -> Loaded:
    return load_registry(conn, master)


def _execute(conn: Conn, plan: Plan, registry: Registry, catalog: RegistryCatalog) -> None:
    """Send the DDL and its registry writes in one simple Query, then apply the changes."""
    writes = writes_for_all(registry, plan.changes)
    parts = ([plan.sql] if plan.sql is not None else []) + [w.inline() for w in writes]
    conn.execute(";\n".join(parts).encode())
    catalog.apply_all(plan.changes)


def _describe(cat: RegistryCatalog) -> dict[str, Any]:
    def key(obj: Any) -> str:
        return str(obj.physical)

    rels = cat.relations()
    schemas = {r.schema for r in rels} | {"public"}
    return {
        "relations": rels,
        "constraints": {r.physical: sorted(cat.constraints(r.physical), key=key) for r in rels},
        "indexes": {r.physical: sorted(cat.indexes(r.physical), key=key) for r in rels},
        "sequences": {r.physical: sorted(cat.sequences(r.physical), key=key) for r in rels},
        "fks_to": {r.physical: sorted(cat.foreign_keys_to(r.physical), key=key) for r in rels},
        "relation_names": {s: set(cat.relation_names(s)) for s in schemas},
        "constraint_names": {s: set(cat.constraint_names(s)) for s in schemas},
        "sensitive": set(cat.sensitive_names()),
    }


def _reload_matches(conn: Conn, registry: Registry, catalog: RegistryCatalog, sql: str) -> Loaded:
    """Load the registry afresh after `sql`: it must equal the optimistically updated one."""
    fresh = _load(conn)
    assert fresh.drift == [], (sql, fresh.drift)
    assert {o.id: o for o in fresh.registry} == {o.id: o for o in registry}, sql
    assert _describe(fresh.catalog) == _describe(catalog), sql
    return fresh


_PHYSICAL = re.compile(r"[tciksvm][0-9a-f]{20}")


def _shape(plans: Sequence[Plan], known: set[str]) -> list[Any]:
    """Plans with the fresh physical names they invent replaced by #1, #2, ..."""
    fresh: dict[str, str] = {}

    def norm(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(0)
            return name if name in known else fresh.setdefault(name, f"#{len(fresh) + 1}")

        return _PHYSICAL.sub(sub, text)

    return [
        (
            norm(p.sql or ""),
            p.command_tag,
            p.output_names,
            [norm(repr(dataclasses.astuple(c))) for c in p.changes],
        )
        for p in plans
    ]


def _plan(rw: Rewriter, sql: str, cat: RegistryCatalog) -> list[Plan] | str:
    try:
        return list(rw.plan(sql, cat))
    except CloakError as exc:
        return exc.sqlstate


def test_catalog_round_trip(conn: Conn) -> None:
    loaded = _load(conn)
    assert not loaded.key_check_missing and loaded.version == "1.0" and len(loaded.registry) == 0
    reg, cat = loaded.registry, loaded.catalog
    rw = Rewriter()
    for n, sql in enumerate(STEPS):
        (plan,) = rw.plan(sql, cat)
        _execute(conn, plan, reg, cat)
        fresh = _reload_matches(conn, reg, cat, sql)
        assert fresh.catalog.version != cat.version
        if n + 1 < len(STEPS):
            following = STEPS[n + 1]
            known = set(fresh.registry.physical_names())
            a, b = _plan(rw, following, cat), _plan(rw, following, fresh.catalog)
            if isinstance(a, str) or isinstance(b, str):
                assert a == b, following
            else:
                assert _shape(a, known) == _shape(b, known), following
        # Go on with what a reloading proxy would have: the loaded registry and catalog.
        reg, cat = fresh.registry, fresh.catalog
    # The interesting metadata made it through the load.
    assert [r.name for r in cat.relations()] == ["orders"]
    (orders,) = cat.relations()
    (seq,) = cat.sequences(orders.physical)
    assert seq.name == "orders_order_no_seq" and seq.column == orders.columns[0].physical


def test_metadata_details(conn: Conn) -> None:
    """Constraint/index columns and FK targets come from pg_catalog, in PostgreSQL's order."""
    loaded = _load(conn)
    reg, cat = loaded.registry, loaded.catalog
    rw = Rewriter()
    for sql in STEPS[:8]:
        (plan,) = rw.plan(sql, cat)
        _execute(conn, plan, reg, cat)
    cat = _load(conn).catalog
    rel = {r.name: r for r in cat.relations()}
    phys = {r.name: {c.name: c.physical for c in r.columns} for r in rel.values()}
    cons = {c.name: c for r in rel.values() for c in cat.constraints(r.physical)}
    lines = phys["order_lines"]
    assert cons["order_lines_pkey"].columns == (lines["order_no"], lines["line_no"])
    fk = cons["order_lines_order_no_fkey"]
    assert fk.ref_table == rel["orders"].physical
    assert fk.ref_columns == (phys["orders"]["order_no"],)
    assert cons["positive_quantity"].columns == (lines["quantity"],)
    assert not cons["positive_quantity"].implicit and cons["orders_pkey"].implicit
    ship = phys["shipments"]
    key = cons["shipments_carrier_tracking_code_order_no_key"]
    assert key.columns == (ship["carrier"], ship["tracking_code"], ship["order_no"])
    assert cons["shipments_check"].columns == (ship["order_no"], ship["carrier"])
    idx = {i.name: i for r in rel.values() for i in cat.indexes(r.physical)}
    o = phys["orders"]
    assert idx["orders_cust_id_expr_idx"].columns == (
        o["cust_id"],
        o["order_total"],
        o["placed_on"],
    )
    assert idx["email_lower_idx"].unique and idx["email_lower_idx"].columns == (
        phys["customers"]["email"],
    )
    assert [s.name for s in cat.sequences(rel["shipments"].physical)] == [
        "shipments_shipment_id_seq"
    ]
    assert [r.name for r in cat.relations()] == sorted(
        rel, key=lambda n: rel[n].physical
    )  # by physical name


def test_key_check(pg: PgServer, db_factory: Callable[..., str]) -> None:
    with pg.connect(db_factory()) as conn:
        install(conn)  # no key recorded yet
        loaded = _load(conn)
        assert loaded.key_check_missing
        conn.execute(*key_check_write(MASTER.key_check()).for_psycopg())
        assert not _load(conn).key_check_missing
        other = MasterKey.from_base64(new_master_key())
        with pytest.raises(RegistryUnavailable) as info:
            _load(conn, other)
        assert info.value.sqlstate == RegistryUnavailable.KEY_MISMATCH
        assert "different master key" in info.value.message


def test_tampered_rows_refused(conn: Conn) -> None:
    loaded = _load(conn)
    rw = Rewriter()
    for sql in STEPS[:2]:
        (plan,) = rw.plan(sql, loaded.catalog)
        _execute(conn, plan, loaded.registry, loaded.catalog)
    a = loaded.registry.relation("public", "customers")
    b = loaded.registry.relation("public", "products")
    assert a is not None and b is not None
    conn.execute(
        "UPDATE pgcloak.objects o SET name_enc = x.name_enc FROM pgcloak.objects x "
        "WHERE (o.id, x.id) IN ((%s, %s), (%s, %s))",
        (a.id, b.id, b.id, a.id),
    )
    with pytest.raises(RegistryUnavailable) as info:
        _load(conn)
    assert info.value.sqlstate == RegistryUnavailable.CORRUPT
    assert "customers" not in str(info.value) and "products" not in str(info.value)
    # Malformed answers are refused too, never half-loaded.
    conn.execute(
        "UPDATE pgcloak.objects o SET name_enc = x.name_enc FROM pgcloak.objects x "
        "WHERE (o.id, x.id) IN ((%s, %s), (%s, %s))",
        (a.id, b.id, b.id, a.id),
    )
    sets = text_result_sets(conn, LOAD_SQL)
    assert parse_load(sets, MASTER).registry.relation("public", "customers") is not None
    bad_version = [*sets[:1], [["9.9"]], *sets[2:]]
    with pytest.raises(RegistryUnavailable) as info:
        parse_load(bad_version, MASTER)
    assert info.value.sqlstate == RegistryUnavailable.VERSION and "9.9" in info.value.message
    for broken in (sets[:-1], [*sets[:3], [row[:-1] for row in sets[3]], *sets[4:]]):
        with pytest.raises(RegistryUnavailable) as info:
            parse_load(broken, MASTER)
        assert info.value.sqlstate == RegistryUnavailable.CORRUPT
    garbled = [*sets[:3], [[*row[:8], "\\xzz", *row[9:]] for row in sets[3]], *sets[4:]]
    with pytest.raises(RegistryUnavailable, match="malformed"):
        parse_load(garbled, MASTER)


def test_snapshot_covers(pg: PgServer, conn: Conn) -> None:
    assert snapshot_covers("100:105:101,103", 99)
    assert snapshot_covers("100:105:101,103", 102)
    assert not snapshot_covers("100:105:101,103", 101)
    assert not snapshot_covers("100:105:101,103", 105)
    assert not snapshot_covers("100:100:", 100)
    with pg.connect(conn.info.dbname) as other:
        other.execute("BEGIN")
        running = other.execute("SELECT txid_current()").fetchone()
        assert running is not None
        txid = int(running[0])
        during = _load(conn).snapshot
        assert not snapshot_covers(during, txid)
        other.execute("COMMIT")
        assert not snapshot_covers(during, txid)  # loaded before the commit: reload
        assert snapshot_covers(_load(conn).snapshot, txid)


def test_has_uncloaked(conn: Conn) -> None:
    conn.execute("CREATE TABLE plain_things (x int)")
    conn.execute("SET standard_conforming_strings = off")  # LOAD_SQL has no backslashes
    loaded = _load(conn)
    rw = Rewriter()
    (plan,) = rw.plan(STEPS[0], loaded.catalog)
    _execute(conn, plan, loaded.registry, loaded.catalog)
    cat = _load(conn).catalog
    assert cat.has_uncloaked("public", "plain_things") is True
    assert cat.has_uncloaked("pg_catalog", "pg_class") is True
    assert cat.has_uncloaked("information_schema", "tables") is True
    assert cat.uncloaked_misses == 0
    (customers,) = cat.relations()
    (pkey,) = (c for c in cat.constraints(customers.physical) if c.contype == "p")
    (seq,) = cat.sequences(customers.physical)
    for name in ("nothing_here", "customers", customers.physical, pkey.physical, seq.physical):
        assert cat.has_uncloaked("public", name) is False
    assert cat.uncloaked_misses == 5
    (passed,) = rw.plan("SELECT x FROM plain_things", cat)
    assert passed.sql == "SELECT x FROM plain_things"
    with pytest.raises(CloakError) as info:
        rw.plan("SELECT * FROM nothing_here", cat)
    assert info.value.sqlstate == "42P01"


def test_drift_is_reported(conn: Conn) -> None:
    loaded = _load(conn)
    rw = Rewriter()
    (plan,) = rw.plan(STEPS[0], loaded.catalog)
    _execute(conn, plan, loaded.registry, loaded.catalog)
    (customers,) = loaded.catalog.relations()
    email = customers.column("email")
    assert email is not None
    conn.execute(f"ALTER TABLE {customers.physical} DROP COLUMN {email.physical}")
    conn.execute(f"ALTER TABLE {customers.physical} ADD COLUMN zz_direct int")
    fresh = _load(conn)
    assert fresh.drift == [
        f"column public.{customers.physical}.{email.physical} is missing",
        f"column public.{customers.physical} #6 is not registered",
        *(
            f"constraint public.{customers.physical}.{c.physical} is missing"
            for c in loaded.catalog.constraints(customers.physical)
            if c.columns == (email.physical,)
        ),
    ]
    # The catalog still mirrors the registry: the missing column sorts last.
    (rel,) = fresh.catalog.relations()
    assert rel.columns[-1] == email
    cat = fresh.catalog.copy()
    cat.apply_all(rw.plan("ALTER TABLE customers RENAME TO clients", cat)[0].changes)
    assert cat.relation("public", "clients") is not None
    assert (
        fresh.catalog.relation("public", "clients") is None and cat.version != fresh.catalog.version
    )
