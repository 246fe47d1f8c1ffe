"""Registry: SQL install/upgrade, status, round trips, tamper detection, NOTIFY, tools,
implicit names versus a real PostgreSQL, and a pg_dump leakage check."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import PgServer
from psycopg import sql

from pgcloak.cli import main
from pgcloak.crypto.keys import MasterKey, new_master_key
from pgcloak.crypto.names import DecryptionError, NameCipher
from pgcloak.registry.db import (
    KeyMismatch,
    apply_writes,
    check_master_key,
    fetch_raw_rows,
    fetch_registry,
    registry_status,
)
from pgcloak.registry.install import InstallError, ScriptSet, install, load_script
from pgcloak.registry.model import OBJECT_COLUMNS, ConType, Kind, RawRow, Write, sql_literal
from pgcloak.registry.names import (
    PHYSICAL_NAME_RE,
    implicit_constraint_name,
    implicit_sequence_name,
    index_column_names,
    is_physical_name,
    looks_physical,
    make_object_name,
    new_physical_name,
    truncate_identifier,
)
from pgcloak.registry.store import (
    CURRENT_VERSION,
    SELECT_OBJECTS_SQL,
    NameConflict,
    Registry,
    RegistryIntegrityError,
    RegistryStatus,
    load,
)
from pgcloak.registry.tools import check_schema, export_schema
from pgcloak.registry.unmask import quote_ident, unmask_message, unmask_sql

ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = ROOT / "sql"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def master() -> MasterKey:
    return MasterKey.from_base64(new_master_key())


@pytest.fixture(scope="module")
def cipher(master: MasterKey) -> NameCipher:
    return NameCipher.from_master(master)


@pytest.fixture
def conn(pg: PgServer, fresh_db: str) -> Iterator[Conn]:
    with pg.connect(fresh_db) as c:
        yield c


@pytest.fixture
def installed(conn: Conn) -> Conn:
    install(conn)
    return conn


# -- physical names --------------------------------------------------------------------


def test_physical_names_are_opaque_unique_and_short() -> None:
    names = {new_physical_name(k) for k in "tciksvm" for _ in range(2000)}
    assert len(names) == 7 * 2000
    for name in names:
        assert PHYSICAL_NAME_RE.fullmatch(name)
        assert is_physical_name(name)
        assert len(name) == 21
    # Derived names stay well inside NAMEDATALEN, so PostgreSQL never truncates them.
    t, c = new_physical_name("t"), new_physical_name("c")
    assert len(f"{t}_{c}_seq") < 63
    assert make_object_name(t, c, "key") == f"{t}_{c}_key"
    with pytest.raises(ValueError):
        new_physical_name("x")
    assert not is_physical_name("customers")
    assert looks_physical(f"{t}_{c}_seq") and looks_physical(f"{t}_pkey1")
    assert looks_physical(make_object_name(t, "_".join([c] * 3), "key"))  # truncated
    assert not is_physical_name(f"{t}_pkey") and not looks_physical("customers_pkey")
    assert not is_physical_name("T" + "0" * 20)


# -- implicit names: pure --------------------------------------------------------------


def test_make_object_name_basics() -> None:
    assert make_object_name("customers", "email", "key") == "customers_email_key"
    assert make_object_name("customers", None, "pkey") == "customers_pkey"
    assert make_object_name("customers", None, None) == "customers"
    long1, long2 = "a" * 63, "b" * 63
    name = make_object_name(long1, long2, "key")
    assert len(name.encode()) == 63
    assert name == "a" * 29 + "_" + "b" * 29 + "_key"  # ties shorten name2 first
    assert make_object_name("a" * 63, "b", "key") == "a" * 57 + "_b_key"
    assert truncate_identifier("é" * 40) == "é" * 31  # 62 bytes: never half a character


def test_index_column_names_dedup() -> None:
    assert index_column_names(["a", "a", "a"]) == ["a", "a1", "a2"]
    assert index_column_names(["expr", "expr"]) == ["expr", "expr1"]
    long = "x" * 63
    assert index_column_names([long, long]) == [long, "x" * 62 + "1"]


def test_implicit_name_argument_checks() -> None:
    with pytest.raises(ValueError):
        implicit_constraint_name("t", ["a"], "bogus")
    with pytest.raises(ValueError):
        implicit_constraint_name("t", [], "key")
    with pytest.raises(ValueError):
        implicit_constraint_name("t", ["a", "b"], "check")
    assert implicit_constraint_name("t", ["a"], "_fkey") == "t_a_fkey"
    assert implicit_sequence_name("t", "id", {"t_id_seq"}) == "t_id_seq1"
    assert implicit_constraint_name("t", [], "pkey", lambda n: n in {"t_pkey", "t_pkey1"}) == (
        "t_pkey2"
    )


# -- implicit names: versus PostgreSQL 15 ------------------------------------------------

L63 = "l" * 63
T50 = "tbl_" + "t" * 46
C40 = "col_" + "c" * 36
EACUTE_T = "tbl_" + "é" * 29  # 62 bytes
EACUTE_C = "col_" + "ü" * 25  # 54 bytes

# (setup statements, statement creating exactly one implicitly named object,
#  table, columns, label)
IMPLICIT_CASES: list[tuple[str, list[str], str, str, list[str], str]] = [
    ("pkey", [], "CREATE TABLE customers (id int PRIMARY KEY)", "customers", [], "pkey"),
    (
        "unique",
        ["CREATE TABLE customers (id int, email text)"],
        "ALTER TABLE customers ADD UNIQUE (email)",
        "customers",
        ["email"],
        "key",
    ),
    (
        "unique-multi",
        ["CREATE TABLE t (x int, y int)"],
        "ALTER TABLE t ADD UNIQUE (x, y)",
        "t",
        ["x", "y"],
        "key",
    ),
    (
        "unique-include",
        ["CREATE TABLE t (x int, y int)"],
        "ALTER TABLE t ADD UNIQUE (x) INCLUDE (y)",
        "t",
        ["x", "y"],
        "key",
    ),
    (
        "fkey",
        ["CREATE TABLE customers (id int PRIMARY KEY)", "CREATE TABLE orders (customer_id int)"],
        "ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers",
        "orders",
        ["customer_id"],
        "fkey",
    ),
    (
        "fkey-multi",
        [
            "CREATE TABLE p (a int, b int, PRIMARY KEY (a, b))",
            "CREATE TABLE c (x int, y int)",
        ],
        "ALTER TABLE c ADD FOREIGN KEY (x, y) REFERENCES p",
        "c",
        ["x", "y"],
        "fkey",
    ),
    (
        "check-one-column",
        ["CREATE TABLE t (a int, b int)"],
        "ALTER TABLE t ADD CHECK (a > 0)",
        "t",
        ["a"],
        "check",
    ),
    (
        "check-two-columns",
        ["CREATE TABLE t (a int, b int)"],
        "ALTER TABLE t ADD CHECK (a > b)",
        "t",
        [],
        "check",
    ),
    (
        "check-no-column",
        ["CREATE TABLE t (a int)"],
        "ALTER TABLE t ADD CHECK (1 > 0)",
        "t",
        [],
        "check",
    ),
    (
        "exclusion",
        ["CREATE TABLE t (a int)"],
        "ALTER TABLE t ADD EXCLUDE USING btree (a WITH =)",
        "t",
        ["a"],
        "excl",
    ),
    ("index", ["CREATE TABLE t (a int)"], "CREATE INDEX ON t (a)", "t", ["a"], "idx"),
    (
        "index-function",
        ["CREATE TABLE t (email text)"],
        "CREATE INDEX ON t (lower(email))",
        "t",
        ["lower"],
        "idx",
    ),
    ("index-expr", ["CREATE TABLE t (a int)"], "CREATE INDEX ON t ((a + 1))", "t", ["expr"], "idx"),
    (
        "index-repeated-column",
        ["CREATE TABLE t (a int)"],
        "CREATE INDEX ON t (a, a)",
        "t",
        ["a", "a"],
        "idx",
    ),
    ("serial", [], "CREATE TABLE customers (id serial)", "customers", ["id"], "seq"),
    (
        "identity",
        [],
        "CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY)",
        "orders",
        ["id"],
        "seq",
    ),
    # truncation
    ("long-pkey", [], f"CREATE TABLE {L63} (id int PRIMARY KEY)", L63, [], "pkey"),
    (
        "long-unique",
        [f"CREATE TABLE {T50} ({C40} int)"],
        f"ALTER TABLE {T50} ADD UNIQUE ({C40})",
        T50,
        [C40],
        "key",
    ),
    (
        "long-unique-short-table",
        [f"CREATE TABLE t ({L63} int)"],
        f"ALTER TABLE t ADD UNIQUE ({L63})",
        "t",
        [L63],
        "key",
    ),
    (
        "long-unique-many-columns",
        [f"CREATE TABLE t ({C40} int, {C40}2 int, {C40}3 int)"],
        f"ALTER TABLE t ADD UNIQUE ({C40}, {C40}2, {C40}3)",
        "t",
        [C40, C40 + "2", C40 + "3"],
        "key",
    ),
    (
        "long-fkey",
        ["CREATE TABLE p (id int PRIMARY KEY)", f"CREATE TABLE {T50} ({C40} int)"],
        f"ALTER TABLE {T50} ADD FOREIGN KEY ({C40}) REFERENCES p",
        T50,
        [C40],
        "fkey",
    ),
    (
        "long-check",
        [f"CREATE TABLE {L63} ({L63[:-1]} int)"],
        f"ALTER TABLE {L63} ADD CHECK ({L63[:-1]} > 0)",
        L63,
        [L63[:-1]],
        "check",
    ),
    ("long-serial", [], f"CREATE TABLE {T50} ({C40} serial)", T50, [C40], "seq"),
    (
        "long-index-repeated",
        [f"CREATE TABLE t ({L63} int)"],
        f"CREATE INDEX ON t ({L63}, {L63})",
        "t",
        [L63, L63],
        "idx",
    ),
    (
        "multibyte-unique",
        [f'CREATE TABLE "{EACUTE_T}" ("{EACUTE_C}" int)'],
        f'ALTER TABLE "{EACUTE_T}" ADD UNIQUE ("{EACUTE_C}")',
        EACUTE_T,
        [EACUTE_C],
        "key",
    ),
    (
        "multibyte-serial",
        [],
        f'CREATE TABLE "{EACUTE_T}" ("{EACUTE_C}" serial)',
        EACUTE_T,
        [EACUTE_C],
        "seq",
    ),
    # dedup: the plain name is taken
    (
        "dedup-unique-vs-table",
        ["CREATE TABLE t (a int)", "CREATE TABLE t_a_key ()"],
        "ALTER TABLE t ADD UNIQUE (a)",
        "t",
        ["a"],
        "key",
    ),
    (
        "dedup-unique-vs-constraint",
        ["CREATE TABLE t (a int)", "CREATE TABLE u (b int CONSTRAINT t_a_key CHECK (b > 0))"],
        "ALTER TABLE t ADD UNIQUE (a)",
        "t",
        ["a"],
        "key",
    ),
    (
        "dedup-check-other-table",
        ["CREATE TABLE a (x int CONSTRAINT b_x_check CHECK (x > 0))", "CREATE TABLE b (x int)"],
        "ALTER TABLE b ADD CHECK (x > 1)",
        "b",
        ["x"],
        "check",
    ),
    (
        "dedup-check-twice",
        ["CREATE TABLE t (a int CHECK (a > 0), b int)", "ALTER TABLE t ADD CHECK (a < 100)"],
        "ALTER TABLE t ADD CHECK (a <> 50)",
        "t",
        ["a"],
        "check",
    ),
    (
        "dedup-index-thrice",
        ["CREATE TABLE t (a int)", "CREATE INDEX ON t (a)", "CREATE INDEX ON t (a)"],
        "CREATE INDEX ON t (a)",
        "t",
        ["a"],
        "idx",
    ),
    (
        "dedup-pkey",
        ["CREATE TABLE t_pkey ()"],
        "CREATE TABLE t (id int PRIMARY KEY)",
        "t",
        [],
        "pkey",
    ),
    (
        "dedup-serial",
        ["CREATE SEQUENCE customers_id_seq"],
        "CREATE TABLE customers (id serial)",
        "customers",
        ["id"],
        "seq",
    ),
    (
        "dedup-long-unique",
        [f"CREATE TABLE {T50} ({C40} int)", f"ALTER TABLE {T50} ADD UNIQUE ({C40})"],
        f"ALTER TABLE {T50} ADD UNIQUE ({C40})",
        T50,
        [C40],
        "key",
    ),
    (
        "dedup-fkey-vs-index-only",  # ChooseConstraintName ignores pg_class
        [
            "CREATE TABLE p (id int PRIMARY KEY)",
            "CREATE TABLE c (pid int)",
            "CREATE TABLE c_pid_fkey ()",
        ],
        "ALTER TABLE c ADD FOREIGN KEY (pid) REFERENCES p",
        "c",
        ["pid"],
        "fkey",
    ),
]


@pytest.fixture(scope="module")
def naming_db(pg: PgServer) -> Iterator[str]:
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


def _names(conn: Conn, schema: str) -> tuple[set[str], set[str]]:
    rels = {
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace", (schema,)
        )
    }
    cons = {
        r[0]
        for r in conn.execute(
            "SELECT conname FROM pg_constraint WHERE connamespace = %s::regnamespace", (schema,)
        )
    }
    return rels, cons


@pytest.mark.parametrize(
    ("case", "setup", "statement", "table", "columns", "label"),
    IMPLICIT_CASES,
    ids=[c[0] for c in IMPLICIT_CASES],
)
def test_implicit_names_match_postgres(  # noqa: PLR0917
    pg: PgServer,
    naming_db: str,
    case: str,
    setup: list[str],
    statement: str,
    table: str,
    columns: list[str],
    label: str,
) -> None:
    schema = "s_" + case.replace("-", "_")
    with pg.connect(naming_db) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        c.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        for stmt in setup:
            c.execute(stmt)  # type: ignore[call-overload]
        rels, cons = _names(c, schema)
        c.execute(statement)  # type: ignore[call-overload]
        rels_after, cons_after = _names(c, schema)
    if label in ("idx", "seq"):
        created, taken = rels_after - rels, rels
    elif label in ("check", "fkey"):
        created, taken = cons_after - cons, cons
    else:  # index-backed constraint: constraint and index share the name
        created, taken = (cons_after - cons) & (rels_after - rels), rels | cons
    new_tables = {truncate_identifier(table)}
    created -= new_tables
    assert len(created) == 1, created
    expected = created.pop()
    assert implicit_constraint_name(table, columns, label, taken) == expected


# -- install / status ------------------------------------------------------------------


def test_control_file_matches_code() -> None:
    scripts = ScriptSet.scan(SQL_DIR)
    assert scripts.default_version == CURRENT_VERSION
    assert CURRENT_VERSION in scripts.base
    control = (SQL_DIR / "pgcloak.control").read_text()
    assert re.search(r"^schema = pgcloak$", control, re.M)
    assert re.search(r"^relocatable = false$", control, re.M)
    assert re.search(r"^superuser = false$", control, re.M)
    assert "\\" not in load_script(scripts.base[CURRENT_VERSION])


def test_init_twice_is_idempotent(conn: Conn) -> None:
    assert registry_status(conn) == RegistryStatus("missing")
    first = install(conn)
    assert first.before.state == "missing"
    assert first.after == RegistryStatus("ok", CURRENT_VERSION)
    assert "installed registry version 1.0" in first.actions
    assert first.changed
    second = install(conn)
    assert not second.changed
    assert second.after == first.after
    tables = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pgcloak'::regnamespace "
        "AND relkind = 'r' ORDER BY 1"
    ).fetchall()
    assert [t[0] for t in tables] == ["data_keys", "key_check", "objects", "version"]
    assert conn.execute("SELECT count(*) FROM pgcloak.version").fetchone() == (1,)


def test_status_missing_ok_unknown(conn: Conn) -> None:
    missing = registry_status(conn)
    assert missing.state == "missing" and not missing.ok
    assert "pgcloak init" in missing.describe()
    install(conn)
    assert registry_status(conn).ok
    conn.execute("UPDATE pgcloak.version SET version = '9.9'")
    unknown = registry_status(conn)
    assert unknown == RegistryStatus("unknown", "9.9")
    assert "9.9" in unknown.describe() and "1.0" in unknown.describe()
    with pytest.raises(InstallError, match=r"9\.9"):
        install(conn)


def test_init_refuses_foreign_schema(conn: Conn) -> None:
    conn.execute("CREATE SCHEMA pgcloak")
    conn.execute("CREATE TABLE pgcloak.mine (x int)")
    with pytest.raises(InstallError, match="contains objects"):
        install(conn)
    conn.execute("DROP TABLE pgcloak.mine")
    assert install(conn).after.ok  # an empty schema is fine


def test_upgrade_chain(conn: Conn, tmp_path: Path) -> None:
    for f in SQL_DIR.glob("pgcloak*"):
        shutil.copy(f, tmp_path)
    guard = '\\echo Use "pgcloak init" to load this file. \\quit\n'
    (tmp_path / "pgcloak--1.0--1.1.sql").write_text(
        guard + "ALTER TABLE pgcloak.objects ADD COLUMN note text;\n"
        "UPDATE pgcloak.version SET version = '1.1', upgraded_at = now();\n"
    )
    (tmp_path / "pgcloak--1.1--1.2.sql").write_text(
        guard + "UPDATE pgcloak.version SET version = '1.2', upgraded_at = now();\n"
    )
    (tmp_path / "pgcloak--1.0--1.2.sql").write_text(  # a shortcut must win over the chain
        guard + "UPDATE pgcloak.version SET version = '1.2', upgraded_at = now();\n"
    )
    scripts = ScriptSet.scan(tmp_path)
    assert scripts.upgrade_path("1.0", "1.2") == [("1.0", "1.2")]
    assert scripts.upgrade_path("1.0", "1.1") == [("1.0", "1.1")]
    assert scripts.upgrade_path("1.1", "1.0") is None
    install(conn)
    result = install(conn, scripts=scripts, target="1.1")
    assert result.actions == ["upgraded registry 1.0 -> 1.1"]
    assert result.after == RegistryStatus("unknown", "1.1")  # this pgcloak only knows 1.0
    assert conn.execute("SELECT count(*) FROM pgcloak.objects WHERE note IS NULL").fetchone()
    (tmp_path / "pgcloak--1.0--1.2.sql").unlink()
    result = install(conn, scripts=ScriptSet.scan(tmp_path), target="1.2")
    assert result.actions == ["upgraded registry 1.1 -> 1.2"]


def test_failed_upgrade_rolls_back(conn: Conn, tmp_path: Path) -> None:
    for f in SQL_DIR.glob("pgcloak*"):
        shutil.copy(f, tmp_path)
    (tmp_path / "pgcloak--1.0--1.1.sql").write_text(
        "UPDATE pgcloak.version SET version = '1.1';\nSELECT 1/0;\n"
    )
    install(conn)
    with pytest.raises(InstallError, match="division by zero"):
        install(conn, scripts=ScriptSet.scan(tmp_path), target="1.1")
    assert registry_status(conn).version == "1.0"


def test_master_key_check(installed: Conn, master: MasterKey) -> None:
    assert check_master_key(installed, master) == "absent"
    result = install(installed, master)
    assert "recorded the master key check value" in result.actions
    assert check_master_key(installed, master) == "match"
    other = MasterKey.from_base64(new_master_key())
    with pytest.raises(KeyMismatch):
        check_master_key(installed, other)
    with pytest.raises(InstallError, match="different master key"):
        install(installed, other)


# -- registry round trip ---------------------------------------------------------------


def _populate(reg: Registry) -> tuple[list[Write], dict[str, Any]]:
    writes: list[Write] = []
    objs: dict[str, Any] = {}

    def add(key: str, *args: Any, **kw: Any) -> Any:
        obj, w = reg.add(*args, **kw)
        writes.extend(w)
        objs[key] = obj
        return obj

    t = add("customers", Kind.TABLE, "Customers Ünïcødé", schema="public", comment="who buys")
    add("id", Kind.COLUMN, "id", parent=t, position=1)
    email = add("email", Kind.COLUMN, "email", parent=t, position=2, comment="it's \\ 'quoted'")
    add("pkey", Kind.CONSTRAINT, "Customers Ünïcødé_pkey", parent=t, contype="p", implicit=True)
    add("email_key", Kind.CONSTRAINT, "customers_email_key", parent=t, contype=ConType.UNIQUE)
    add("seq", Kind.SEQUENCE, "customers_id_seq", schema="public", parent=objs["id"])
    add("idx", Kind.INDEX, "customers_lower_idx", schema="public", parent=t)
    add("policy_col", Kind.COLUMN, "ssn", parent=t, position=3, policy={"mode": "det", "v": 1})
    v = add("view", Kind.VIEW, "customer_emails", schema="public")
    add("vcol", Kind.COLUMN, "email", parent=v, position=1)
    assert email.name == "email"
    return writes, objs


def test_round_trip_insert_load(installed: Conn, cipher: NameCipher) -> None:
    reg = Registry(cipher)
    writes, _ = _populate(reg)
    with installed.transaction():
        apply_writes(installed, writes)
    loaded = fetch_registry(installed, cipher)
    assert len(loaded) == len(reg) == 10
    for obj in reg:
        assert loaded.get(obj.id) == obj
    t = loaded.table("public", "Customers Ünïcødé")
    assert t is not None and t.comment == "who buys"
    email = loaded.column(t, "email")
    assert email is not None and email.comment == "it's \\ 'quoted'"
    assert loaded.by_physical(t.physical_name) == t
    assert loaded.by_physical(email.physical_name, t) == email
    assert loaded.semantic_name(email.physical_name) == "email"
    assert [c.name for c in loaded.columns(t)] == ["id", "email", "ssn"]
    assert loaded.column(t, "ssn").policy == {"mode": "det", "v": 1}  # type: ignore[union-attr]
    assert loaded.relation_name_taken("public", "customers_email_key")  # index-backed
    assert loaded.relation_name_taken("public", "customers_id_seq")
    assert not loaded.relation_name_taken("other", "customers_id_seq")
    assert loaded.constraint_names("public") == {"Customers Ünïcødé_pkey", "customers_email_key"}
    # Stored rows hold no plaintext.
    for row in fetch_raw_rows(installed):
        assert b"Customers" not in row.name_enc and b"email" not in row.name_enc


def test_in_memory_conflicts(cipher: NameCipher) -> None:
    reg = Registry(cipher)
    t, _ = reg.add(Kind.TABLE, "customers", schema="public")
    with pytest.raises(NameConflict) as info:
        reg.add(Kind.VIEW, "customers", schema="public")
    assert info.value.name == "customers" and "customers" not in str(info.value)
    reg.add(Kind.TABLE, "customers", schema="other")  # other schema: fine
    reg.add(Kind.COLUMN, "email", parent=t)
    with pytest.raises(NameConflict):
        reg.add(Kind.COLUMN, "email", parent=t)
    reg.add(Kind.CONSTRAINT, "customers_email_key", parent=t, contype="u")
    with pytest.raises(NameConflict):  # the unique index occupies the relation namespace
        reg.add(Kind.TABLE, "customers_email_key", schema="public")
    with pytest.raises(ValueError):
        reg.add(Kind.COLUMN, "x", schema="public", parent=t)
    with pytest.raises(ValueError):
        reg.add(Kind.CONSTRAINT, "c", parent=t)  # no contype
    with pytest.raises(ValueError):
        reg.add(Kind.TABLE, "x" * 64, schema="public")
    with pytest.raises(NameConflict):
        reg.add(Kind.TABLE, "again", schema="public", physical_name=t.physical_name)


def test_unique_lookup_enforced_in_database(installed: Conn, cipher: NameCipher) -> None:
    """Two proxies racing to create the same semantic name: the database says no."""
    a, b = Registry(cipher), Registry(cipher)
    _, wa = a.add(Kind.TABLE, "customers", schema="public")
    _, wb = b.add(Kind.TABLE, "customers", schema="public")
    apply_writes(installed, wa)
    with pytest.raises(psycopg.errors.UniqueViolation):
        apply_writes(installed, wb)


def test_rename_move_comment_drop(installed: Conn, cipher: NameCipher) -> None:
    reg = Registry(cipher)
    writes, objs = _populate(reg)
    apply_writes(installed, writes)
    installed.execute("CREATE SCHEMA sales")
    t = objs["customers"]
    w = reg.rename(t.id, "clients")
    w += reg.rename(objs["email"].id, "mail")
    w += reg.set_comment(t.id, None)
    w += reg.move(t.id, "sales")
    w += reg.set_policy(objs["email"].id, {"mode": "rnd"})
    w += reg.drop(objs["idx"].id)
    assert reg.table("public", "Customers Ünïcødé") is None
    moved = reg.table("sales", "clients")
    assert moved is not None and moved.physical_name == t.physical_name
    assert reg.relation("sales", "customers_id_seq") is not None  # owned sequence follows
    with pytest.raises(ValueError):
        reg.move(objs["seq"].id, "public")  # as in PostgreSQL: not without its table
    assert reg.relation_name_taken("sales", "customers_email_key")
    assert not reg.relation_name_taken("public", "customers_email_key")
    apply_writes(installed, w)
    loaded = fetch_registry(installed, cipher)
    assert {o.id: o for o in loaded} == {o.id: o for o in reg}
    assert loaded.column(moved, "mail") is not None
    # Dropping the table cascades in memory and in the database.
    apply_writes(installed, reg.drop(t.id))
    assert [o.name for o in fetch_registry(installed, cipher)] == ["customer_emails", "email"]
    assert len(reg) == 2


def test_copy_is_independent(cipher: NameCipher) -> None:
    reg = Registry(cipher)
    t, _ = reg.add(Kind.TABLE, "customers", schema="public")
    tx = reg.copy()
    tx.add(Kind.COLUMN, "email", parent=t)
    tx.rename(t.id, "clients")
    assert reg.table("public", "customers") is not None and not reg.columns(t)
    assert tx.table("public", "clients") is not None and len(tx.columns(t)) == 1


def test_sequence_owner_change(installed: Conn, cipher: NameCipher) -> None:
    reg = Registry(cipher)
    writes, objs = _populate(reg)
    w = reg.set_parent(objs["seq"].id, objs["email"].id)
    w += reg.set_parent(objs["seq"].id, None)
    apply_writes(installed, writes + w)
    assert fetch_registry(installed, cipher).get(objs["seq"].id) == reg.get(objs["seq"].id)


def test_inline_writes_any_string_setting(installed: Conn, cipher: NameCipher) -> None:
    """The literal form survives standard_conforming_strings=off (old clients)."""
    reg = Registry(cipher)
    writes, _ = _populate(reg)
    installed.execute("SET standard_conforming_strings = off")
    installed.execute(";\n".join(w.inline() for w in writes).encode())
    installed.execute("SET standard_conforming_strings = on")
    loaded = fetch_registry(installed, cipher)
    assert {o.id: o for o in loaded} == {o.id: o for o in reg}
    assert sql_literal("a'b\\c") == "E'a''b\\\\c'"
    assert sql_literal(b"\x01\xff") == "E'\\\\x01ff'"


def test_raw_row_from_text_protocol(installed: Conn, cipher: NameCipher) -> None:
    reg = Registry(cipher)
    writes, _ = _populate(reg)
    apply_writes(installed, writes)
    cur = installed.execute(SELECT_OBJECTS_SQL)
    result = cur.pgresult
    assert result is not None
    rows = [
        RawRow.from_text([result.get_value(r, c) for c in range(len(OBJECT_COLUMNS))])
        for r in range(result.ntuples)
    ]
    assert rows == fetch_raw_rows(installed)
    assert {o.id: o for o in load(rows, cipher)} == {o.id: o for o in reg}


# -- tampering ---------------------------------------------------------------------------


def _two_tables(installed: Conn, cipher: NameCipher) -> tuple[Any, Any]:
    reg = Registry(cipher)
    a, wa = reg.add(Kind.TABLE, "alpha", schema="public")
    b, wb = reg.add(Kind.TABLE, "bravo", schema="public")
    apply_writes(installed, wa + wb)
    return a, b


def test_swapped_name_enc_is_detected(installed: Conn, cipher: NameCipher) -> None:
    a, b = _two_tables(installed, cipher)
    installed.execute(
        "UPDATE pgcloak.objects o SET name_enc = x.name_enc FROM pgcloak.objects x "
        "WHERE (o.id, x.id) IN ((%s, %s), (%s, %s))",
        (a.id, b.id, b.id, a.id),
    )
    with pytest.raises(DecryptionError, match="failed authentication") as info:
        fetch_registry(installed, cipher)
    assert "alpha" not in str(info.value) and "bravo" not in str(info.value)


def test_swapped_physical_names_are_detected(installed: Conn, cipher: NameCipher) -> None:
    a, b = _two_tables(installed, cipher)
    update = "UPDATE pgcloak.objects SET physical_name = %s WHERE id = %s"
    with installed.transaction():
        installed.execute(update, ("tmp", a.id))
        installed.execute(update, (a.physical_name, b.id))
        installed.execute(update, (b.physical_name, a.id))
    with pytest.raises(DecryptionError):
        fetch_registry(installed, cipher)


def test_other_tampering_is_detected(installed: Conn, cipher: NameCipher) -> None:
    a, _ = _two_tables(installed, cipher)
    installed.execute("UPDATE pgcloak.objects SET kind = 'v' WHERE id = %s", (a.id,))
    with pytest.raises(DecryptionError):
        fetch_registry(installed, cipher)
    installed.execute("UPDATE pgcloak.objects SET kind = 't' WHERE id = %s", (a.id,))
    installed.execute("UPDATE pgcloak.objects SET schema_name = 'elsewhere' WHERE id = %s", (a.id,))
    with pytest.raises(RegistryIntegrityError, match="lookup"):
        fetch_registry(installed, cipher)
    installed.execute("UPDATE pgcloak.objects SET schema_name = 'public' WHERE id = %s", (a.id,))
    assert len(fetch_registry(installed, cipher)) == 2
    other = NameCipher.from_master(MasterKey.from_base64(new_master_key()))
    with pytest.raises(DecryptionError, match="wrong master key"):
        fetch_registry(installed, other)


# -- NOTIFY ------------------------------------------------------------------------------


def test_notify_on_change(pg: PgServer, fresh_db: str, cipher: NameCipher) -> None:
    with pg.connect(fresh_db) as writer, pg.connect(fresh_db) as listener:
        install(writer)
        listener.execute("LISTEN pgcloak_registry")
        reg = Registry(cipher)
        t, writes = reg.add(Kind.TABLE, "customers", schema="public")
        col = reg.add(Kind.COLUMN, "email", parent=t)
        with writer.transaction():
            apply_writes(writer, writes + col.writes)
            txid = writer.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [("pgcloak_registry", str(txid))]
        # A rolled-back change notifies nobody; a rename does.
        with pytest.raises(psycopg.errors.DivisionByZero), writer.transaction():
            apply_writes(writer, reg.copy().rename(t.id, "x"))
            writer.execute("SELECT 1/0")
        apply_writes(writer, reg.rename(t.id, "clients"))
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert len(got) == 1 and got[0].payload != str(txid)


# -- tools ---------------------------------------------------------------------------------


def _cloaked_schema(conn: Conn, cipher: NameCipher) -> Registry:
    """Create real physical tables and register them like the proxy would."""
    reg = Registry(cipher)
    w: list[Write] = []
    t, ws = reg.add(Kind.TABLE, "customers", schema="public", comment="buyers")
    w += ws
    cid, ws = reg.add(Kind.COLUMN, "id", parent=t, position=1)
    w += ws
    cemail, ws = reg.add(Kind.COLUMN, "e-mail", parent=t, position=2)
    w += ws
    _, ws = reg.add(
        Kind.SEQUENCE,
        "customers_id_seq",
        schema="public",
        parent=cid,
        physical_name=f"{t.physical_name}_{cid.physical_name}_seq",
        implicit=True,
    )
    w += ws
    pk, ws = reg.add(Kind.CONSTRAINT, "customers_pkey", parent=t, contype="p", implicit=True)
    w += ws
    uq, ws = reg.add(Kind.CONSTRAINT, "customers_e-mail_key", parent=t, contype="u", implicit=True)
    w += ws
    o, ws = reg.add(Kind.TABLE, "orders", schema="public")
    w += ws
    ocust, ws = reg.add(Kind.COLUMN, "customer_id", parent=o, position=1)
    w += ws
    fk, ws = reg.add(Kind.CONSTRAINT, "orders_customer_id_fkey", parent=o, contype="f")
    w += ws
    idx, ws = reg.add(Kind.INDEX, "orders_customer_id_idx", schema="public", parent=o)
    w += ws
    v, ws = reg.add(Kind.VIEW, "customer_emails", schema="public")
    w += ws
    vcol, ws = reg.add(Kind.COLUMN, "e-mail", parent=v, position=1)
    w += ws
    tp, op = t.physical_name, o.physical_name
    conn.execute(
        f"""
        CREATE TABLE {tp} ({cid.physical_name} serial CONSTRAINT {pk.physical_name} PRIMARY KEY,
            {cemail.physical_name} text NOT NULL CONSTRAINT {uq.physical_name} UNIQUE);
        CREATE TABLE {op} ({ocust.physical_name} int CONSTRAINT {fk.physical_name}
            REFERENCES {tp});
        CREATE INDEX {idx.physical_name} ON {op} ({ocust.physical_name});
        CREATE VIEW {v.physical_name} ({vcol.physical_name}) AS
            SELECT {cemail.physical_name} FROM {tp};
        """
    )
    apply_writes(conn, w)
    return reg


def test_schema_check_clean_then_drift(installed: Conn, cipher: NameCipher) -> None:
    reg = _cloaked_schema(installed, cipher)
    assert check_schema(installed, reg) == []
    t = reg.table("public", "customers")
    o = reg.table("public", "orders")
    assert t is not None and o is not None
    installed.execute(f"DROP TABLE {o.physical_name}")
    installed.execute("CREATE TABLE plain_table (secret_name int)")
    installed.execute(f"ALTER TABLE {t.physical_name} ADD COLUMN {new_physical_name('c')} int")
    findings = [str(f) for f in check_schema(installed, reg)]
    assert any(f.startswith("missing: table public.orders") for f in findings), findings
    assert any(f.startswith("missing: index public.orders_customer_id_idx") for f in findings)
    assert "uncloaked: table public.plain_table is not in the registry" in findings
    assert any(f.startswith("orphan: column c") for f in findings), findings
    assert len(findings) == 4, findings


def test_schema_export_uses_semantic_names(installed: Conn, cipher: NameCipher) -> None:
    reg = _cloaked_schema(installed, cipher)
    ddl = export_schema(installed, reg)
    for obj in reg:
        assert obj.physical_name not in ddl
    assert "CREATE TABLE public.customers (\n    id integer DEFAULT nextval(" in ddl
    assert "'public.customers_id_seq'::regclass) NOT NULL" in ddl
    assert '"e-mail" text NOT NULL' in ddl
    assert 'CONSTRAINT "customers_e-mail_key" UNIQUE ("e-mail")' in ddl
    assert "FOREIGN KEY (customer_id) REFERENCES public.customers(id)" in ddl
    assert "CREATE INDEX orders_customer_id_idx ON public.orders USING btree (customer_id);" in ddl
    assert "COMMENT ON TABLE public.customers IS 'buyers';" in ddl
    assert "ALTER SEQUENCE public.customers_id_seq OWNED BY public.customers.id;" in ddl
    assert 'CREATE VIEW public.customer_emails ("e-mail") AS' in ddl
    # The export replays on an empty database.
    with psycopg.connect(installed.info.dsn, autocommit=True) as c2:
        name = f"pgcloak_t_{uuid.uuid4().hex[:8]}"
        c2.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        params = installed.info.get_parameters()
        params["dbname"] = name
        with psycopg.connect(**params, autocommit=True) as c3:  # type: ignore[arg-type]
            c3.execute(ddl.encode())
            assert c3.execute("SELECT count(*) FROM public.customer_emails").fetchone() == (0,)
    finally:
        with psycopg.connect(installed.info.dsn, autocommit=True) as c2:
            c2.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_unmask() -> None:
    names = {"t0000000000000000000a": "Customers", "c0000000000000000000b": "e'mail"}
    text = (
        'SELECT "c0000000000000000000b" FROM t0000000000000000000a '
        "WHERE x = 't0000000000000000000a'"
    )
    assert unmask_sql(text, names) == (
        'SELECT "e\'mail" FROM "Customers" WHERE x = \'"Customers"\''
    )
    assert unmask_sql("nextval('c0000000000000000000b'::regclass)", names) == (
        "nextval('\"e''mail\"'::regclass)"
    )
    assert unmask_message('relation "t0000000000000000000a" does not exist', names) == (
        'relation "Customers" does not exist'
    )
    assert quote_ident("select") == '"select"' and quote_ident("name") == "name"


# -- CLI ----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_init_map_check(  # noqa: PLR0917
    pg: PgServer,
    fresh_db: str,
    cipher: NameCipher,
    master: MasterKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCLOAK_MASTER_KEY", raising=False)
    monkeypatch.delenv("PGCLOAK_MASTER_KEY_FILE", raising=False)
    url = pg.url(fresh_db)
    code, out, _ = _cli(capsys, "init", "--upstream", url)
    assert code == 0 and "installed registry version 1.0" in out
    code, out, _ = _cli(capsys, "init", "--upstream", url)
    assert code == 0 and "up to date" in out

    key_file = tmp_path / "master.key"
    code, _, _ = _cli(capsys, "keys", "new", "--out", str(key_file))
    assert code == 0 and key_file.stat().st_mode & 0o777 == 0o600
    code, _, err = _cli(
        capsys, "map", "list", "--upstream", url, "--master-key-file", str(key_file)
    )
    assert code == 0  # empty registry, key check recorded by nobody yet

    # Populate with the module key, recorded by init.
    code, out, _ = _cli(capsys, "init", "--upstream", url)
    with pg.connect(fresh_db) as conn:
        check_master_key(conn, master, record=True)
        reg = _cloaked_schema(conn, cipher)
    monkeypatch.setenv("PGCLOAK_MASTER_KEY", new_master_key())
    code, _, err = _cli(capsys, "map", "list", "--upstream", url)
    assert code == 1 and "different master key" in err

    monkeypatch.setenv("PGCLOAK_MASTER_KEY", _b64(master))
    code, out, _ = _cli(capsys, "map", "list", "--upstream", url)
    assert code == 0
    t = reg.table("public", "customers")
    assert t is not None
    assert re.search(rf"table\s+public\.customers\s+public\.{t.physical_name}", out)
    assert 'public.customers."e-mail"' in out
    code, out, _ = _cli(capsys, "map", "show", "public.customers", "--upstream", url)
    assert code == 0 and "table public.customers" in out and "customers_pkey" in out
    assert "comment: 'buyers'" in out
    code, _, err = _cli(capsys, "map", "show", "nope", "--upstream", url)
    assert code == 1 and "no cloaked table" in err
    code, out, _ = _cli(capsys, "schema", "check", "--upstream", url)
    assert code == 0 and "agree" in out
    code, out, _ = _cli(capsys, "schema", "export", "--upstream", url)
    assert code == 0 and "CREATE TABLE public.customers" in out
    with pg.connect(fresh_db) as conn:
        conn.execute(f"DROP TABLE {t.physical_name} CASCADE")
    code, out, _ = _cli(capsys, "schema", "check", "--upstream", url)
    assert code == 1 and "missing: table public.customers" in out


def _b64(master: MasterKey) -> str:
    import base64

    return base64.b64encode(master._raw).decode()


def test_cli_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCLOAK_UPSTREAM", raising=False)
    monkeypatch.delenv("PGCLOAK_MASTER_KEY", raising=False)
    monkeypatch.delenv("PGCLOAK_MASTER_KEY_FILE", raising=False)
    code, _, err = _cli(capsys, "map", "list")
    assert code == 1 and "--upstream" in err
    monkeypatch.setenv("PGCLOAK_MASTER_KEY", "not base64!")
    code, _, err = _cli(capsys, "init", "--upstream", "host=127.0.0.1 port=1")
    assert code == 2 and "not valid base64" in err
    monkeypatch.delenv("PGCLOAK_MASTER_KEY")
    code, _, err = _cli(capsys, "init", "--upstream", "host=127.0.0.1 port=1 connect_timeout=2")
    assert code == 1 and "cannot connect" in err


def test_cli_needs_registry(
    pg: PgServer, fresh_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCLOAK_MASTER_KEY", new_master_key())
    code, _, err = _cli(capsys, "map", "list", "--upstream", pg.url(fresh_db))
    assert code == 1 and "no pgcloak registry" in err and "pgcloak init" in err


# -- leakage ------------------------------------------------------------------------------


def _pg_dump() -> str | None:
    for candidate in (PG_BIN / "pg_dump", shutil.which("pg_dump")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def test_pg_dump_contains_no_semantic_names(
    pg: PgServer, fresh_db: str, cipher: NameCipher
) -> None:
    pg_dump = _pg_dump()
    if pg_dump is None:
        pytest.skip("pg_dump not found")
    secrets_ = ["zanzibar_customers", "quetzal_email", "xylophone_remark", "wombat_view"]
    with pg.connect(fresh_db) as conn:
        install(conn)
        reg = Registry(cipher)
        t, w = reg.add(Kind.TABLE, secrets_[0], schema="public", comment=secrets_[2])
        c = reg.add(Kind.COLUMN, secrets_[1], parent=t, position=1)
        v = reg.add(Kind.VIEW, secrets_[3], schema="public")
        conn.execute(f"CREATE TABLE {t.physical_name} ({c.object.physical_name} text)")
        conn.execute(f"CREATE VIEW {v.object.physical_name} AS SELECT * FROM {t.physical_name}")
        apply_writes(conn, w + c.writes + v.writes)
    dump = subprocess.run(
        [pg_dump, "--no-password", "-d", pg.dsn(fresh_db)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    assert t.physical_name in dump and "pgcloak.objects" in dump  # the dump is real
    lowered = dump.lower()
    for secret in secrets_:
        assert secret not in lowered
        assert secret.split("_")[0] not in lowered  # the distinctive word, in any form
