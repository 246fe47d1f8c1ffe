"""CHECK constraints on encrypted columns through pgcloak (real PostgreSQL on both sides).

The same DDL and writes run on a plain database and through an encrypting proxy:
success or failure, SQLSTATE, message and final rows must agree (PostgreSQL's DETAIL
"Failing row contains (...)" is not reproduced: docs/known-issues.md E11). Also:
refusals leave the database unchanged, the constants never reach the upstream,
transactions and a second session see what PostgreSQL would show.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from encrypt_support import SESSION_SETUP, Seen, config_toml, observe
from helpers import PgServer, ProxyProcess

COLS = ("i", "n", "t", "v", "d", "ts", "b", "f", "iv", "u")
TABLES = ("ck_det", "ck_rnd")
RULES = {
    **{f"ck_det.{c}": "deterministic" for c in COLS},
    **{f"ck_rnd.{c}": "randomized" for c in COLS},
    "ref.e": "deterministic",
    "leak.e": "randomized",
    "tx.e": "deterministic",
    "bad.e": "deterministic",
    "alt.e": "randomized",
}
MARK_INT = "7777123"
MARK_TEXT = "zq-marker"


def ddl(table: str) -> str:
    return (
        f"CREATE TABLE {table} (id int PRIMARY KEY, "
        "i int CHECK (i > 0 AND i <> 13), "
        "n numeric(8,2) CONSTRAINT n_range CHECK (n BETWEEN -10.5 AND 1000), "
        "t text CHECK (t <> '' AND char_length(t) <= 8), "
        "v varchar(10) CHECK (v IN ('red', 'green', 'blue')), "
        "d date CHECK (d >= '2000-01-01' OR d IS NULL), "
        "ts timestamptz CHECK (ts < '2030-01-01 00:00:00+00'), "
        "b boolean CHECK (b), "
        "f float8 CHECK (f <> 'NaN' AND f > -1e300), "
        "iv interval CHECK (iv <= '1 day'), "
        "u int CHECK (NOT (u NOT BETWEEN 1 AND 10) OR u = 100), "
        "CHECK (octet_length(t) < 12), "
        "CONSTRAINT a_first CHECK (i < 1000000))"
    )


# (column, literal as SQL, Python parameter) — good and bad values for each check.
VALUES: tuple[tuple[str, str, Any], ...] = (
    ("i", "1", 1), ("i", "13", 13), ("i", "0", 0), ("i", "-5", -5), ("i", "999999", 999999),
    ("i", "1000000", 1000000), ("i", "'42'", 42),
    ("n", "-10.5", Decimal("-10.5")), ("n", "-10.51", Decimal("-10.51")),
    ("n", "-10.504", Decimal("-10.504")), ("n", "1000", Decimal(1000)),
    ("n", "1000.001", Decimal("1000.001")), ("n", "1000.01", Decimal("1000.01")),
    ("t", "'abc'", "abc"), ("t", "''", ""), ("t", "'12345678'", "12345678"),
    ("t", "'123456789'", "123456789"), ("t", "'ééééé'", "ééééé"), ("t", "'éééééé'", "éééééé"),
    ("v", "'red'", "red"), ("v", "'Red'", "Red"), ("v", "'blue   '", "blue   "),
    ("v", "'toolongvalue'", "toolongvalue"),
    ("d", "'2000-01-01'", None), ("d", "'1999-12-31'", None), ("d", "'-infinity'", None),
    ("ts", "'2029-12-31 23:59:59.999999+00'", None), ("ts", "'2030-01-01 01:00:00+01'", None),
    ("ts", "'2030-01-01 00:00:00+00'", None), ("ts", "'infinity'", None),
    ("b", "true", True), ("b", "false", False), ("b", "'yes'", True),
    ("f", "1.5", 1.5), ("f", "'NaN'", float("nan")), ("f", "'-Infinity'", float("-inf")),
    ("f", "'Infinity'", float("inf")),
    ("iv", "'24 hours'", None), ("iv", "'1 day 1 second'", None), ("iv", "'-1 month'", None),
    ("iv", "'1 mon'", None), ("iv", "'23:59:59'", None),
    ("u", "5", 5), ("u", "11", 11), ("u", "100", 100), ("u", "0", 0),
)  # fmt: skip


@dataclass
class Sides:
    plain: psycopg.Connection[Any]
    enc: psycopg.Connection[Any]
    proxy: ProxyProcess
    plain_db: str
    enc_db: str
    pg: PgServer

    def same(self, sql: str, params: Any = None, **kw: Any) -> Seen:
        """Run on both sides; the client must see the same (DETAIL aside)."""
        a, b = observe(self.plain, sql, params, **kw), observe(self.enc, sql, params, **kw)
        for s in (a, b):
            if s.error is not None:
                s.error = (s.error[0], None, s.error[2], s.error[3])
        assert a == b, f"{sql} {params!r} {kw}\n  plain:     {a}\n  encrypted: {b}"
        return b

    def both(self, *statements: str) -> None:
        for sql in statements:
            seen = self.same(sql)
            assert seen.sqlstate is None, (sql, seen)


@pytest.fixture
def sides(  # noqa: PLR0917 - pytest fixtures
    pg: PgServer,
    proxy_factory: Callable[..., ProxyProcess],
    cloaked_db: str,
    db_factory: Callable[..., str],
    master_key: str,
    tmp_path: Path,
) -> Iterator[Sides]:
    config = tmp_path / "pgcloak.toml"
    config.write_text(config_toml(RULES))
    proxy = proxy_factory(
        pg.upstream_url(), "--config", str(config), env={"PGCLOAK_MASTER_KEY": master_key}
    )
    plain_db = db_factory()
    plain = psycopg.connect(pg.dsn(plain_db), autocommit=True)
    enc = psycopg.connect(proxy.dsn(cloaked_db), autocommit=True)
    for stmt in SESSION_SETUP:
        plain.execute(stmt)
        enc.execute(stmt)
    yield Sides(plain, enc, proxy, plain_db, cloaked_db, pg)
    plain.close()
    enc.close()


def _rows(s: Sides, table: str) -> None:
    s.same(f"SELECT * FROM {table} ORDER BY id")


@pytest.mark.parametrize("table", TABLES)
def test_writes_match_a_plain_database(sides: Sides, table: str) -> None:
    s = sides
    s.both(ddl(table), f"INSERT INTO {table} (id) VALUES (1)")
    k = 10
    for col, lit, param in VALUES:
        k += 1
        s.same(f"INSERT INTO {table} (id, {col}) VALUES ({k}, {lit})")
        s.same(f"UPDATE {table} SET {col} = {lit} WHERE id = 1")
        s.same(f"INSERT INTO {table} (id, {col}) VALUES ({k + 500}, {lit}) "
               f"ON CONFLICT (id) DO UPDATE SET {col} = {lit}")  # fmt: skip
        if param is not None:
            for binary in (False, True):
                k += 1
                s.same(f"INSERT INTO {table} (id, {col}) VALUES (%s, %s)", (k, param),
                       binary=binary)  # fmt: skip
            k += 1
            s.same(f"INSERT INTO {table} (id, {col}) VALUES (%s, %s)", (k, str(param)))
        k += 1
        s.same(f"INSERT INTO {table} (id, {col}) VALUES ({k}, NULL), ({k + 1000}, {lit})")
    s.same(
        f"MERGE INTO {table} t USING (VALUES (1)) AS v(x) ON t.id = v.x "
        "WHEN MATCHED THEN UPDATE SET i = 13"
    )
    s.same(f"MERGE INTO {table} t USING (VALUES (2)) AS v(x) ON t.id = v.x "
           "WHEN NOT MATCHED THEN INSERT (id, i) VALUES (2, 0)")  # fmt: skip
    _rows(s, table)


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_stdin(sides: Sides, fmt: str) -> None:
    s = sides
    s.both(ddl("ck_det"))
    good = "1\t5\t10.50\tabc\tred\t2001-02-03\t2020-01-01 00:00:00+00\tt\t1.5\t1 hour\t3\n"
    bad = "2\t13\t10.50\tabc\tred\t2001-02-03\t2020-01-01 00:00:00+00\tt\t1.5\t1 hour\t3\n"
    s.plain.execute("CREATE TEMP TABLE stage (LIKE ck_det)")
    for data in (good, good.replace("1\t5", "3\t6") + bad,
                 bad.replace("\t13\t", "\t6\t").replace("abc", "")):  # fmt: skip
        payload = data.encode()
        if fmt != "text":  # the plain server renders the rows in the format under test
            s.plain.execute("TRUNCATE stage")
            with s.plain.cursor().copy("COPY stage FROM STDIN") as cp:
                cp.write(payload)
            out = bytearray()
            with s.plain.cursor().copy(f"COPY stage TO STDOUT (FORMAT {fmt})") as cp:
                for chunk in cp:
                    out += chunk
            payload = bytes(out)
        outcomes: list[tuple[str | None, str | None] | None] = []
        for conn in (s.plain, s.enc):
            conn.execute("TRUNCATE ck_det")
            try:
                with conn.cursor().copy(f"COPY ck_det FROM STDIN (FORMAT {fmt})") as cp:
                    cp.write(payload)
                outcomes.append(None)
            except psycopg.Error as exc:
                outcomes.append((exc.sqlstate, exc.diag.message_primary))
        assert outcomes[0] == outcomes[1], (data, outcomes)
        _rows(s, "ck_det")


def test_unnamed_checks_get_postgresql_names(sides: Sides) -> None:
    s = sides
    s.both(ddl("ck_det"))
    s.same("INSERT INTO ck_det (id, t) VALUES (1, '')")  # ck_det_t_check
    s.same("INSERT INTO ck_det (id, t) VALUES (1, 'éééééé')")  # ck_det_t_check1
    s.same("INSERT INTO ck_det (id, i) VALUES (1, 1000000)")  # a_first
    s.same("INSERT INTO ck_det (id, i) VALUES (1, 13)")  # ck_det_i_check
    # Both fail: PostgreSQL reports the first by name, of the first row that fails.
    s.same("INSERT INTO ck_det (id, i, t) VALUES (1, 13, '')")
    s.same("INSERT INTO ck_det (id, t, i) VALUES (1, '', 13)")
    s.same("INSERT INTO ck_det (id, t, i) VALUES (1, '', 13)", binary=True)
    s.same("INSERT INTO ck_det (id, t, i) VALUES (1, 'ok', 5), (2, '', 13)")
    s.same("INSERT INTO ck_det (id, t, i) VALUES (1, '', 5), (2, 'ok', 13)")
    s.same("INSERT INTO ck_det (id, t, i) VALUES (%s, %s, %s), (%s, %s, %s)",
           (1, "", 5, 2, "ok", 13))  # fmt: skip
    s.same("INSERT INTO ck_det (id, t, i) VALUES (%s, %s, %s), (%s, %s, %s)",
           (1, "ok", 5, 2, "", 13))  # fmt: skip
    s.same("ALTER TABLE ck_det RENAME CONSTRAINT ck_det_i_check TO i_positive")
    s.same("INSERT INTO ck_det (id, i) VALUES (1, 13)")
    s.same("ALTER TABLE ck_det DROP CONSTRAINT i_positive")
    s.same("ALTER TABLE ck_det DROP CONSTRAINT IF EXISTS i_positive")
    s.same("ALTER TABLE ck_det DROP CONSTRAINT i_positive")
    s.same("INSERT INTO ck_det (id, i) VALUES (1, 13)")
    s.same("ALTER TABLE ck_det ADD CONSTRAINT again CHECK (i <> 7) NOT VALID")
    s.same("ALTER TABLE ck_det ADD CONSTRAINT again CHECK (i <> 7) NOT VALID")
    s.same("ALTER TABLE ck_det ADD CHECK (i <> 8) NOT VALID")  # ck_det_i_check
    s.same("INSERT INTO ck_det (id, i) VALUES (2, 7)")
    s.same("INSERT INTO ck_det (id, i) VALUES (2, 8)")
    # Documented gap: catalogs read through the proxy do not list the checks pgcloak keeps.
    shown = s.enc.execute(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ck_det'::regclass AND contype = 'c'"
    ).fetchone()
    assert shown == (0,)
    s.same("ALTER TABLE ck_det DROP COLUMN i")
    s.same("ALTER TABLE ck_det ADD COLUMN i int CHECK (i > 5)")
    s.same("INSERT INTO ck_det (id, i) VALUES (3, 4)")
    _rows(s, "ck_det")


@pytest.mark.parametrize(
    ("definition", "words"),
    [
        ("e text CHECK (e > 'a')", "ordering comparison on text"),
        ("e text CHECK (e LIKE 'a%')", "pattern matching"),
        ("e int, p int, CHECK (e > p)", 'another column ("p")'),
        ("e int CHECK (e + 1 > 2)", "the operator +"),
        ("e int CHECK (abs(e) > 2)", "the function abs()"),
        ("e int CHECK (e IS NOT NULL)", "fails for NULL"),
        ("e int CHECK (e > 0) NO INHERIT", "NO INHERIT"),
        ("e text CHECK (e = 5)", "a comparison with a number"),
        ("e date CHECK (e > '2020-01-01'::timestamp)", "a cast to timestamp"),
        ("e int CHECK (e BETWEEN SYMMETRIC 1 AND 2)", "BETWEEN SYMMETRIC"),
        ("e int CHECK (e IS TRUE)", "IS TRUE"),
        ("e int CHECK (CASE WHEN e > 0 THEN true END)", "CASE"),
    ],
)
def test_refused_checks_change_nothing(sides: Sides, definition: str, words: str) -> None:
    before = _catalog_snapshot(sides)
    with pytest.raises(psycopg.Error) as info:
        sides.enc.execute(f"CREATE TABLE bad (id int, {definition})")
    assert info.value.sqlstate == "0A000"
    message = info.value.diag.message_primary or ""
    assert 'column "e" encrypted in deterministic mode' in message, message
    assert words in message, message
    assert _catalog_snapshot(sides) == before


def test_bad_constants_are_postgresql_errors(sides: Sides) -> None:
    for definition in ("e date CHECK (e > 'not a date')", "e int CHECK (e > '1.5')"):
        with pytest.raises(psycopg.Error) as a:
            sides.plain.execute(f"CREATE TABLE bad (id int, {definition})")
        with pytest.raises(psycopg.Error) as b:
            sides.enc.execute(f"CREATE TABLE bad (id int, {definition})")
        assert (a.value.sqlstate, a.value.diag.message_primary) == (
            b.value.sqlstate, b.value.diag.message_primary,
        )  # fmt: skip


def test_alter_add_needs_not_valid(sides: Sides) -> None:
    s = sides
    s.both("CREATE TABLE alt (id int, e int)", "INSERT INTO alt VALUES (1, -1)")
    with pytest.raises(psycopg.Error) as info:
        s.enc.execute("ALTER TABLE alt ADD CONSTRAINT pos CHECK (e > 0)")
    assert info.value.sqlstate == "0A000"
    assert "NOT VALID" in (info.value.diag.message_hint or "")
    s.same("ALTER TABLE alt ADD CONSTRAINT pos CHECK (e > 0) NOT VALID")
    s.same("INSERT INTO alt VALUES (2, -2)")
    s.same("UPDATE alt SET e = 5 WHERE id = 1")
    s.same("SELECT * FROM alt ORDER BY id")


def test_transactions_and_other_sessions(sides: Sides) -> None:
    s = sides
    s.both("CREATE TABLE tx (id int, e int)")
    other = psycopg.connect(s.proxy.dsn(s.enc_db), autocommit=True)
    try:
        s.same("BEGIN")
        s.same("ALTER TABLE tx ADD CONSTRAINT small CHECK (e < 10) NOT VALID")
        s.same("INSERT INTO tx VALUES (1, 50)")
        s.same("SELECT 1")  # 25P02 after the failure
        s.same("ROLLBACK")
        s.same("INSERT INTO tx VALUES (1, 50)")  # the constraint went with the rollback
        other.execute("INSERT INTO tx VALUES (2, 60)")
        s.same("ALTER TABLE tx ADD CONSTRAINT small CHECK (e < 100) NOT VALID")
        with pytest.raises(psycopg.errors.CheckViolation):
            other.execute("INSERT INTO tx VALUES (3, 500)")
        with pytest.raises(psycopg.errors.CheckViolation):
            other.execute("INSERT INTO tx VALUES (%s, %s)", (3, 500))
        s.same("ALTER TABLE tx DROP CONSTRAINT small")
        other.execute("INSERT INTO tx VALUES (3, 500)")
        # One simple Query: the check created by its first statement applies to the next.
        s.same("CREATE TABLE bad (id int, e int CHECK (e > 0)); INSERT INTO bad VALUES (1, -1)")
        s.same("SELECT count(*) FROM pg_tables WHERE tablename = 'bad'")
        s.same("CREATE TABLE bad (id int, e int CHECK (e > 0)); INSERT INTO bad VALUES (1, 1)")
        s.same("INSERT INTO bad VALUES (2, -1)")
        s.same("SELECT * FROM bad")
    finally:
        other.close()


def test_writes_that_bypass_the_proxy_are_refused(sides: Sides) -> None:
    s = sides
    s.both(
        "CREATE TABLE ref (id int, e int CONSTRAINT pos CHECK (e > 0))",
        "CREATE VIEW ref_v AS SELECT * FROM ref",
        "INSERT INTO ref VALUES (1, 5)",
    )
    for sql in (
        "INSERT INTO ref_v VALUES (2, -1)",
        "UPDATE ref SET e = e * 2",
        "UPDATE ref SET e = id",
    ):
        with pytest.raises(psycopg.Error) as info:
            s.enc.execute(sql)
        assert info.value.sqlstate == "0A000", sql
    s.same("UPDATE ref SET e = e")
    # One parameter sealed once for a written value and a compared one: refused.
    with pytest.raises(psycopg.Error) as info:
        s.enc.execute("UPDATE ref SET e = %(v)s WHERE e = %(v)s", {"v": -1})
    assert info.value.sqlstate == "0A000"


def test_values_are_checked_even_when_no_row_is_written(sides: Sides) -> None:
    """Documented difference (docs/known-issues.md): pgcloak tests a value when the
    statement is sent, PostgreSQL when a row is written."""
    s = sides
    s.both("CREATE TABLE ref (id int, e int CONSTRAINT pos CHECK (e > 0))")
    assert observe(s.plain, "UPDATE ref SET e = -1 WHERE id = 1").tag == "UPDATE 0"
    assert observe(s.enc, "UPDATE ref SET e = -1 WHERE id = 1").sqlstate == "23514"
    # A plain EXPLAIN writes nothing: not tested; EXPLAIN ANALYZE writes: tested.
    s.same("EXPLAIN (COSTS OFF) INSERT INTO ref VALUES (1, -1)")
    s.same("EXPLAIN (COSTS OFF) INSERT INTO ref VALUES (%s, %s)", (1, -1))
    s.same("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) INSERT INTO ref VALUES (1, -1)")
    s.same("SELECT count(*) FROM ref")


def test_constants_do_not_reach_the_upstream(sides: Sides, pg: PgServer, tmp_path: Path) -> None:
    s = sides
    s.enc.execute(
        f"CREATE TABLE leak (id int, e text CONSTRAINT leak_mark CHECK (e <> '{MARK_TEXT}'), "
        f"CHECK (char_length(e) <> {MARK_INT}))"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        s.enc.execute(f"INSERT INTO leak VALUES (1, '{MARK_TEXT}')")
    with psycopg.connect(pg.dsn(s.enc_db), autocommit=True) as direct:
        cons = direct.execute(
            "SELECT coalesce(string_agg(pg_get_constraintdef(oid), ' '), '') FROM pg_constraint"
        ).fetchone()
        registry = direct.execute("SELECT string_agg(policy::text, ' ') FROM pgcloak.objects")
        reg = registry.fetchone()
    assert cons is not None and reg is not None
    dump = subprocess.run(
        ["pg_dump", "--no-owner", pg.dsn(s.enc_db)], capture_output=True, check=True, text=True
    ).stdout
    for text in (cons[0], reg[0] or "", dump):
        assert MARK_TEXT not in text
        assert MARK_INT not in text
        assert "leak_mark" not in text


def _catalog_snapshot(s: Sides) -> tuple[Any, ...]:
    with psycopg.connect(s.pg.dsn(s.enc_db), autocommit=True) as direct:
        rels = direct.execute("SELECT count(*) FROM pg_class").fetchone()
        objs = direct.execute("SELECT count(*) FROM pgcloak.objects").fetchone()
        cons = direct.execute("SELECT count(*) FROM pg_constraint").fetchone()
    return rels, objs, cons


PSQL_SCRIPT = """\\set VERBOSITY default
SET TimeZone = 'UTC';
CREATE TABLE ck_rnd (id int, i int CHECK (i > 0), d date CHECK (d >= '2000-01-01'),
    v varchar(10) CONSTRAINT colour CHECK (v IN ('red', 'blue')));
INSERT INTO ck_rnd VALUES (1, 1, '2000-01-01', 'red'), (2, 0, NULL, NULL);
INSERT INTO ck_rnd VALUES (1, 1, '2000-01-01', 'red'), (2, 2, NULL, NULL);
INSERT INTO ck_rnd VALUES (3, 3, '1999-12-31', 'blue');
INSERT INTO ck_rnd (id, v) VALUES (4, 'green');
UPDATE ck_rnd SET i = -1 WHERE id = 1;
ALTER TABLE ck_rnd ADD COLUMN n numeric(5,1), ADD CONSTRAINT n_pos CHECK (n > 0) NOT VALID;
INSERT INTO ck_rnd (id, n) VALUES (5, 0.04);
INSERT INTO ck_rnd (id, n) VALUES (6, 0.05);
BEGIN;
INSERT INTO ck_rnd (id, i) VALUES (7, -7);
SELECT 1;
ROLLBACK;
\\copy ck_rnd (id, i) from stdin
8\t8
9\t-9
\\.
SELECT * FROM ck_rnd ORDER BY id;
"""


def test_psql_simple_protocol(sides: Sides, tmp_path: Path) -> None:
    script = tmp_path / "checks.sql"
    script.write_text(PSQL_SCRIPT)
    outputs = []
    for dsn in (sides.pg.dsn(sides.plain_db), sides.proxy.dsn(sides.enc_db)):
        run = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", str(script), dsn],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # PostgreSQL's DETAIL "Failing row contains (...)" is not reproduced (E11).
        # Nor is COPY's CONTEXT line (pgcloak raises COPY errors itself, as for bad input).
        err = "\n".join(
            x for x in run.stderr.splitlines() if not x.startswith(("DETAIL:", "CONTEXT:"))
        )
        outputs.append((run.stdout, err))
    assert outputs[0] == outputs[1]


def test_rewrap_keeps_checks(sides: Sides, master_key: str) -> None:
    from pgcloak.crypto.keys import MasterKey, new_master_key
    from pgcloak.crypto.names import NameCipher
    from pgcloak.crypto.values import LocalKeyWrapper
    from pgcloak.registry.db import fetch_registry
    from pgcloak.registry.rotation import rewrap
    from pgcloak.registry.tools import check_schema

    sides.enc.execute("CREATE TABLE alt (id int, e int CONSTRAINT pos CHECK (e > 0))")
    old, new = MasterKey.from_base64(master_key), MasterKey.from_base64(new_master_key())
    with psycopg.connect(sides.pg.dsn(sides.enc_db)) as conn:
        registry = fetch_registry(conn, NameCipher.from_master(old))
        assert check_schema(conn, registry) == []  # kept checks are no drift
        before = {o.id: o.check for o in registry}
        rewrap(conn, old, new, LocalKeyWrapper(new))
        conn.commit()
        after = {o.id: o.check for o in fetch_registry(conn, NameCipher.from_master(new))}
    assert after == before
    assert sum(1 for c in after.values() if c is not None) == 1


@pytest.mark.xfail(strict=True, reason="E24: a cast to another type is refused (0A000), not 42804")
def test_text_typed_value_into_an_encrypted_integer_is_a_type_error(sides: Sides) -> None:
    s = sides
    s.both("CREATE TABLE alt (id int, e int)")
    s.same("INSERT INTO alt VALUES (1, %s::text)", ("5",))
