"""Adversarial probes of column encryption through the real proxy (review: E30, E31).

pgcloak's promise for encrypted columns: no plaintext value reaches the upstream (its
statement log, table data, catalogs, `pg_dump`), and what the database cannot do
correctly on ciphertext is refused with 0A000, never answered wrongly. Each probe is
one statement in less common syntax: its value is a unique marker, and after the
statement the upstream's statement log must not contain it (`test_leak_probes`);
at the end a `pg_dump` and every table's rows are scanned for all markers
(`test_no_marker_reached_the_upstream`). Wrong answers are caught differentially: an
encrypted table and a plain twin with the same rows, both through the proxy, must
answer the same or the encrypted one must refuse with 0A000.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from adversarial_support import run

if TYPE_CHECKING:
    from adversarial_env import Adv

pytest_plugins = ("adversarial_env",)  # fixtures: adv, conn

_MARKS = itertools.count(1)
MARKERS: list[str] = []  # every marker a probe sent (scanned for at the end)


def _marker() -> str:
    m = f"QZV{next(_MARKS):04d}X"
    MARKERS.append(m)
    return m


# -- 1. values hidden in less common syntax: encrypted or refused, never sent -------------

OK, NO = "ok", "0A000"
LEAK_PROBES = [
    ("insert-select-literal", "INSERT INTO t (id, e) SELECT 10, '{m}'", OK),
    ("insert-select-randomized", "INSERT INTO t (id, r) SELECT 11, '{m}'", OK),
    ("insert-select-values-alias",
     "INSERT INTO t (id, e) SELECT x, y FROM (VALUES (16, '{m}')) v(x, y)", OK),
    ("insert-select-union", "INSERT INTO t (id, e) SELECT 13, '{m}' UNION ALL SELECT 14, 'x'",
     NO),
    ("insert-select-star-values", "INSERT INTO t (id, e) SELECT * FROM (VALUES (15, '{m}')) v",
     NO),
    ("insert-from-cte", "WITH w AS (SELECT 17 AS i, '{m}' AS s) INSERT INTO t (id, e) "
     "SELECT i, s FROM w", NO),
    ("update-from-values", "UPDATE t SET e = v.a FROM (VALUES ('{m}')) v(a) WHERE t.id = 10",
     NO),
    ("update-scalar-subquery", "UPDATE t SET r = (SELECT '{m}') WHERE id = 10", NO),
    ("any-array-literal", "SELECT id FROM t WHERE e = ANY('{{m},b}')", NO),
    ("any-array-constructor", "SELECT id FROM t WHERE e = ANY(ARRAY['{m}'])", NO),
    ("row-equality", "SELECT id FROM t WHERE (e, id) = ('{m}', 1)", OK),
    ("row-in-list", "SELECT id FROM t WHERE ROW(e, id) IN (('{m}', 1))", NO),
    ("in-select-literal", "SELECT id FROM t WHERE e IN (SELECT '{m}')", NO),
    ("case-when", "SELECT CASE WHEN e = '{m}' THEN 1 END FROM t", OK),
    ("coalesce", "SELECT COALESCE(e, '{m}') FROM t", NO),
    ("is-distinct-from", "SELECT id FROM t WHERE e IS DISTINCT FROM '{m}'", OK),
    ("nullif", "SELECT NULLIF(e, '{m}') FROM t", NO),
    ("reversed", "SELECT id FROM t WHERE '{m}' = e", OK),
    ("cast-column", "SELECT id FROM t WHERE e::text = '{m}'", NO),
    ("concat", "SELECT concat(e, '{m}') FROM t", NO),
    ("concat-literal", "SELECT id FROM t WHERE e = '{m}' || ''", NO),
    ("parenthesized", "SELECT id FROM t WHERE e = ('{m}')", OK),
    ("typed-literal", "SELECT id FROM t WHERE e = text '{m}'", OK),
    ("cast-literal", "SELECT id FROM t WHERE e = '{m}'::text", OK),
    ("dollar-quoted", "SELECT id FROM t WHERE e = $${m}$$", OK),
    ("unicode-escape", "SELECT id FROM t WHERE e = U&'{m}'", NO),
    ("qualified-operator", "SELECT id FROM t WHERE e OPERATOR(pg_catalog.=) '{m}'", OK),
    ("collate", "SELECT id FROM t WHERE e = '{m}' COLLATE \"C\"", NO),
    ("values-subquery", "SELECT id FROM t WHERE e = (VALUES ('{m}'))", NO),
    ("join-values", "SELECT t.id FROM t JOIN (VALUES ('{m}')) v(x) ON t.e = v.x", NO),
    ("cte-values", "WITH c(x) AS (VALUES ('{m}')) SELECT t.id FROM t, c WHERE t.e = c.x", NO),
    ("randomized-equality", "SELECT id FROM t WHERE r = '{m}'", NO),
    ("row-randomized", "SELECT id FROM t WHERE (e, r) = ('a', '{m}')", NO),
    ("other-key-or-literal", "SELECT id FROM t WHERE e = e2 OR e = '{m}'", NO),
    ("boolean-output", "SELECT e = '{m}' AS m FROM t", OK),
    ("is-true", "SELECT id FROM t WHERE (e = '{m}') IS TRUE", OK),
    ("exists-correlated", "SELECT t.id FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id "
     "AND t.e = '{m}')", OK),
    ("cte-filter", "WITH c AS (SELECT id, e FROM t) SELECT id FROM c WHERE e = '{m}'", OK),
    ("derived-filter", "SELECT id FROM (SELECT id, e FROM t) s WHERE s.e = '{m}'", OK),
    ("two-statements", "SELECT id FROM t WHERE e = 'a'; SELECT id FROM t WHERE e = '{m}'", OK),
    ("on-conflict-set", "INSERT INTO t (id, e) VALUES (20, 'a') ON CONFLICT (e) DO UPDATE "
     "SET r = '{m}' RETURNING id, r", OK),
    ("on-conflict-where", "INSERT INTO t (id, e) VALUES (21, 'a') ON CONFLICT (e) DO UPDATE "
     "SET e = EXCLUDED.e WHERE t.e = '{m}'", OK),
    ("on-conflict-concat", "INSERT INTO t (id, e) VALUES (20, 'a') ON CONFLICT (e) DO UPDATE "
     "SET e = EXCLUDED.e || '{m}'", NO),
    ("merge-insert", "MERGE INTO t USING (SELECT 30 AS i) s ON t.id = s.i WHEN NOT MATCHED "
     "THEN INSERT (id, e, r) VALUES (s.i, '{m}', '{m}r')", OK),
    ("merge-matched", "MERGE INTO t USING (SELECT 30 AS i) s ON t.id = s.i WHEN MATCHED AND "
     "t.e = '{m}' THEN UPDATE SET r = '{m}'", OK),
    ("merge-values-source", "MERGE INTO t USING (VALUES (31, '{m}')) s(i, v) ON t.id = s.i "
     "WHEN NOT MATCHED THEN INSERT (id, e) VALUES (s.i, s.v)", NO),
    ("returning-update", "UPDATE t SET r = '{m}' WHERE id = 2 RETURNING e, r, n", OK),
    ("returning-insert", "INSERT INTO t (id, e, n) VALUES (60, '{m}', 5) RETURNING t.*, e AS e2",
     OK),
    ("returning-delete", "DELETE FROM t WHERE e = '{m}' RETURNING *", OK),
    ("added-columns", "UPDATE t SET x1 = '{m}', x2 = 5 WHERE id = 1 RETURNING x1, x2", OK),
    ("create-default", "CREATE TABLE d1 (id int, e text DEFAULT '{m}')", NO),
    ("set-default", "ALTER TABLE t ALTER COLUMN e SET DEFAULT '{m}'", NO),
    ("add-column-default", "ALTER TABLE t ADD COLUMN x3 text DEFAULT '{m}'", NO),
    ("comment-on-column", "COMMENT ON COLUMN t.e IS '{m}'", OK),
    ("prepare-literal", "PREPARE adv_p1 AS SELECT id FROM t WHERE e = '{m}'", OK),
    ("prepare-insert", "PREPARE adv_p2(int) AS INSERT INTO t (id, e) VALUES ($1, '{m}')", OK),
    ("do-block", "DO $$BEGIN INSERT INTO t (id, e) VALUES (41, '{m}'); END$$", NO),
    ("function-body", "CREATE FUNCTION adv_f() RETURNS int LANGUAGE sql AS "
     "$$ SELECT id FROM t WHERE e = '{m}' $$", NO),
    ("view-filter", "CREATE VIEW adv_v1 AS SELECT id, e FROM t WHERE e = '{m}'", OK),
    ("view-in-list", "CREATE VIEW adv_v2 AS SELECT id, e FROM t WHERE e IN ('{m}', 'b')", OK),
    ("view-randomized", "CREATE VIEW adv_v3 AS SELECT id, r FROM t WHERE r = '{m}'", NO),
    ("matview-filter", "CREATE MATERIALIZED VIEW adv_mv AS SELECT id, e FROM t WHERE e = '{m}'",
     OK),
    ("select-into", "SELECT e, r INTO adv_si FROM t WHERE e = '{m}'", OK),
    ("ctas-filter", "CREATE TABLE adv_ctas AS SELECT id, e, r FROM t WHERE e = '{m}'", OK),
    ("partial-index", "CREATE INDEX adv_i1 ON t (e) WHERE e = '{m}'", NO),
    ("rule", "CREATE RULE adv_r AS ON INSERT TO t WHERE NEW.e = '{m}' DO INSTEAD NOTHING", NO),
    ("policy", "CREATE POLICY adv_pol ON t USING (e = '{m}')", NO),
    ("trigger-when", "CREATE TRIGGER adv_trg BEFORE INSERT ON t FOR EACH ROW WHEN "
     "(NEW.e = '{m}') EXECUTE FUNCTION suppress_redundant_updates_trigger()", NO),
    ("cursor", "DECLARE adv_c CURSOR WITH HOLD FOR SELECT id FROM t WHERE e = '{m}'", NO),
    ("explain", "EXPLAIN SELECT id FROM t WHERE e = '{m}'", OK),
    ("explain-analyze", "EXPLAIN (ANALYZE, COSTS OFF) SELECT id FROM t WHERE e = '{m}'", OK),
    ("pg-notify-filter", "SELECT pg_notify('adv', 'x') FROM t WHERE e = '{m}'", OK),
    ("generated-literal", "CREATE TABLE adv_g2 (id int, e text, p bool GENERATED ALWAYS AS "
     "(e = '{m}') STORED)", NO),
    ("conflict-arbiter-predicate", "INSERT INTO t (id, e) VALUES (9102, 'a') ON CONFLICT (e) "
     "WHERE e = '{m}' DO NOTHING", OK),
    ("having", "SELECT e FROM t GROUP BY e HAVING e = '{m}'", OK),
    ("aggregate-filter", "SELECT count(*) FILTER (WHERE e = '{m}') FROM t", OK),
    ("swapped-columns", "INSERT INTO t (e, id) VALUES ('{m}', 9104)", OK),
    ("row-set", "UPDATE t SET (e) = ROW('{m}') WHERE id = 9104", OK),
    ("multi-set", "UPDATE t SET (e, n) = ('{m}', 7) WHERE id = 9104 RETURNING e, n", OK),
    ("in-values-subquery", "SELECT id FROM t WHERE e IN (VALUES ('{m}'))", NO),
    ("for-update", "SELECT id FROM t WHERE e = '{m}' FOR UPDATE", OK),
    ("only", "SELECT e FROM ONLY t WHERE e = '{m}'", OK),
    ("comparison-cast-output", "SELECT (e = '{m}')::int FROM t", OK),
    ("copy-query-out", "COPY (SELECT id, e FROM t WHERE e = '{m}') TO STDOUT", OK),
    ("copy-in-where", "COPY t (id, e) FROM STDIN WHERE e = '{m}'", OK),
    ("copy-in-where-randomized", "COPY t (id, e) FROM STDIN WHERE r = '{m}'", NO),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "expect"), [pytest.param(s, e, id=i) for i, s, e in LEAK_PROBES])
def test_leak_probes(adv: Adv, conn: psycopg.Connection[Any], sql: str, expect: str) -> None:
    """The statement is run (values encrypted) or refused with 0A000; the marker never
    appears in the upstream's statement log (nor, checked at the end, anywhere else)."""
    m = _marker()
    offset = adv.upstream.log_size()
    data = f"900{len(MARKERS)}\t{m}\n" if "STDIN" in sql else None
    got = run(conn, sql.replace("{m}", m), data)
    if expect == OK:
        assert got.sqlstate is None, got
    else:
        assert got.sqlstate == "0A000", got
    log = adv.upstream.log_since(offset)
    assert m not in log, [line for line in log.splitlines() if m in line]


def test_values_read_back_and_compare(conn: psycopg.Connection[Any]) -> None:
    """What the probes stored decrypts to what was sent, and compares equal to it."""
    m = _marker()
    run(conn, f"INSERT INTO t (id, e, r) SELECT x, y, z FROM (VALUES (70, '{m}', '{m}r')) "
        "v(x, y, z)")  # fmt: skip
    assert run(conn, f"SELECT id, e FROM t WHERE e = '{m}'").rows == [(70, m)]
    assert run(conn, "SELECT r FROM t WHERE id = 70").rows == [(f"{m}r",)]
    out = run(conn, f"COPY (SELECT id, e, r FROM t WHERE e = '{m}') TO STDOUT")
    assert out.rows == [(f"70\t{m}\t{m}r\n".encode(),)]


# -- 2. wrong answers: refused, or the same as on the plain twin --------------------------

REFUSED = [
    "SELECT count(DISTINCT r) FROM t",
    "SELECT DISTINCT ON (r) id FROM t",
    "SELECT DISTINCT r FROM adv_all",
    "SELECT DISTINCT * FROM t",
    "SELECT count(*) FROM (SELECT DISTINCT r FROM t) s",
    "SELECT r, count(*) FROM adv_all GROUP BY r",
    "SELECT r FROM t GROUP BY 1",
    "SELECT count(*) FROM t GROUP BY GROUPING SETS ((r), (id))",
    "SELECT count(*) FROM t GROUP BY ROLLUP (r)",
    "SELECT count(*) FROM t GROUP BY CUBE (r)",
    "SELECT r FROM t UNION SELECT r FROM t",
    "SELECT * FROM t UNION SELECT * FROM t",
    "SELECT r FROM t INTERSECT SELECT r FROM t",
    "SELECT r FROM t EXCEPT SELECT r FROM t",
    "SELECT e FROM t UNION ALL SELECT e2 FROM t",
    "SELECT e FROM t UNION SELECT 'a'",
    "WITH RECURSIVE q(x) AS (SELECT r FROM t UNION SELECT x FROM q) SELECT count(*) FROM q",
    "SELECT e, id FROM t ORDER BY 1",
    "SELECT * FROM t ORDER BY 2",
    "SELECT id, row_number() OVER (PARTITION BY r) FROM t",
    "SELECT id, count(*) OVER w FROM t WINDOW w AS (PARTITION BY r)",
    "SELECT min(r) FROM t",
    "SELECT max(e) FROM t",
    "SELECT string_agg(e, ',') FROM t",
    "SELECT array_agg(e) FROM t",
    "SELECT GREATEST(e, 'a') FROM t",
    "SELECT id FROM t WHERE e IN (e2)",
    "SELECT id FROM t WHERE e IN (r)",
    "SELECT id FROM t WHERE e = e2",
    "SELECT id FROM t WHERE e IS NOT DISTINCT FROM e2",
    "SELECT id FROM t WHERE e = p",
    "SELECT id FROM t WHERE e IN (SELECT e2 FROM t)",
    "SELECT id FROM t WHERE e = ALL(SELECT e FROM t)",
    "SELECT t.id FROM t JOIN u USING (e)",
    "SELECT a.id FROM t a JOIN t b USING (r)",
    "SELECT a.id FROM t a JOIN t b ON a.r = b.r",
    "SELECT * FROM t NATURAL JOIN u",
    "SELECT a.id FROM t a NATURAL JOIN t b",
    "SELECT r = r FROM t",
    "SELECT id FROM adv_all WHERE e > 'a'",
    "SELECT * FROM (SELECT id, e FROM t) s WHERE s.e > 'a'",
    "WITH c AS (SELECT e FROM t) SELECT * FROM c WHERE e < 'b'",
    "SELECT * FROM t, LATERAL (SELECT t.e > 'a' AS g) l",
    "SELECT * FROM t, LATERAL (SELECT t.e AS x) l WHERE l.x > 'a'",
    "SELECT id FROM t WHERE e OPERATOR(pg_catalog.<) 'b'",
    "SELECT id FROM t WHERE e ^@ 'a'",
    "SELECT id FROM t WHERE e ~>=~ 'a'",
    "SELECT id FROM t WHERE e SIMILAR TO 'a'",
    "SELECT id FROM t WHERE e BETWEEN SYMMETRIC 'a' AND 'b'",
    "SELECT t FROM t",
    "SELECT row_to_json(t) FROM t",
    "SELECT to_jsonb(t.*) FROM t",
    "SELECT json_agg(t) FROM t",
    "SELECT count(t) FROM t",
    "SELECT x FROM t AS x",
    "SELECT ROW(e) FROM t",
    "SELECT ARRAY[e] FROM t",
    "SELECT format('%s', e) FROM t",
    "SELECT pg_notify('adv', e) FROM t",
    "SELECT id FROM t WHERE n = 1 + 1",
    "UPDATE t SET e = e2 WHERE id = 1",
    "UPDATE t SET r = e WHERE id = 1",
    "INSERT INTO u (id, e) SELECT id + 100, e FROM t",
    "CREATE INDEX adv_i2 ON t (id) WHERE e IS NOT NULL",
    # E31 (fixed): generated columns computed from encrypted ones
    "CREATE TABLE adv_g (id int, e text, gg text GENERATED ALWAYS AS (e || 'x') STORED)",
    "CREATE TABLE adv_g (id int, e text, gg bool GENERATED ALWAYS AS (e = 'a') STORED)",
    "ALTER TABLE t ADD COLUMN gx text GENERATED ALWAYS AS (e) STORED",
    "ALTER TABLE t ADD COLUMN gy int GENERATED ALWAYS AS (length(r)) STORED",
    "COPY t (id, e) FROM STDIN WHERE e > 'a'",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(conn: psycopg.Connection[Any], sql: str) -> None:
    """Operations wrong on ciphertext: 0A000 (naming the column and mode where one is)."""
    got = run(conn, sql, "1\ta\n" if "STDIN" in sql else None)
    assert got.sqlstate == "0A000", got
    if got.sqlstate == "0A000" and 'column "' in got.message:
        assert re.search(r'column "\w+" encrypted in (deterministic|randomized) mode', got.message)


SAME = [
    "SELECT count(DISTINCT e), count(e), count(r), count(*) FROM {t}",
    "SELECT DISTINCT ON (e) e FROM {t}",
    "SELECT id, row_number() OVER (PARTITION BY e ORDER BY id) FROM {t}",
    "SELECT a.id, b.id FROM {t} a JOIN {t} b USING (e)",
    "SELECT a.id FROM {t} a NATURAL JOIN (SELECT id, e FROM {t}) b",
    "SELECT e, count(*) FROM {t} GROUP BY 1",
    "SELECT e FROM {t} UNION SELECT e FROM {t}",
    "SELECT e FROM {t} INTERSECT SELECT e FROM {t} WHERE id > 2",
    "SELECT e FROM {t} EXCEPT SELECT e FROM {t} WHERE id > 2",
    "SELECT id FROM {t} WHERE e = SOME(SELECT e FROM {t} WHERE id < 3)",
    "SELECT id FROM {t} WHERE e <> ALL(SELECT e FROM {t} WHERE id = 2)",
    "SELECT id, CASE WHEN e = 'a' THEN 1 END FROM {t}",
    "SELECT id FROM {t} WHERE (e, n) = ('a', 1)",
    "SELECT id, e = 'a', e <> 'b', e IS DISTINCT FROM 'a' FROM {t}",
    "SELECT id FROM {t} WHERE e IS NOT NULL AND e NOT IN ('a', NULL)",
    "SELECT id FROM {t} WHERE e = $q$a$q$ OR e = E'it\\'s' OR e = 'it''s'",
    "SELECT id FROM {t} WHERE n = -1 OR n = 1e0 OR n = 2.0",
    "SELECT id FROM {t} WHERE n = 1.5 OR n IN (2.5, -1)",
    "SELECT id FROM {t} x WHERE EXISTS (SELECT 1 FROM {t} y WHERE y.e = x.e AND y.id <> x.id)",
    "SELECT x.id FROM {t} x LEFT JOIN LATERAL (SELECT y.e FROM {t} y WHERE y.e = x.e "
    "AND y.id > x.id) l ON true WHERE l.e IS NOT NULL",
    "SELECT (SELECT e FROM {t} WHERE id = 1) = 'a'",
    "SELECT id FROM {t} WHERE e IN (SELECT e FROM {t} WHERE r IS NULL)",
    "TABLE {t}",
]


@pytest.mark.parametrize("sql", SAME)
def test_same_as_plain(conn: psycopg.Connection[Any], sql: str) -> None:
    enc, plain = run(conn, sql.replace("{t}", "c")), run(conn, sql.replace("{t}", "pc"))
    assert plain.sqlstate is None, plain
    assert enc.sqlstate is None, enc
    assert sorted(map(repr, enc.rows or [])) == sorted(map(repr, plain.rows or []))


# -- 3. casts on compared and stored values (E30, fixed) -----------------------------------

CAST_COMPARISONS = [
    "vc = 'abcde'::varchar(3)", "vc = 'abcdefg'::varchar(5)", "vc = 'abcde'::char(7)",
    "vc = 'abcde'::varchar", "vc = 'abcde'::text", "vc = CAST('abcde' AS varchar)",
    "nm = 1.0004::numeric(6,2)", "nm = 1.0::numeric", "nm = 1::numeric",
    "r4 = 0.1::real", "r4 = '0.1'::real", "f8 = 0.1::real", "f8 = '0.1'::float8",
    "i4 = 1.9::int", "i4 = 2::int", "i4 = '2'::int4", "i4 = 2::bigint",
    "d = timestamp '2020-01-01 10:00'", "d = '2020-01-01 10:00'::timestamp",
    "d = '2020-01-01 00:00+05'::timestamptz", "d = date '2020-01-01'",
    "ch = 'abc   '::text", "ch = 'abc'::char(5)", "ch = 'abc'::bpchar",
    "tx = 'abc  '::char(5)", "tx = 'abc'::varchar", "tx = 'abc'::name",
    "tm = '10:00:00.4'::time(0)", "tm = '10:00:00+02'::timetz", "tm = '10:00'::time",
    "ia = '{1,2}'::int[]", "ia = '{1,2}'::bigint[]",
]  # fmt: skip
CAST_STORES = [
    ("tx", "'abc  '::char(5)"), ("nm", "1.239::numeric(6,1)"), ("nm", "1.239::numeric(6,2)"),
    ("vc", "'abcdefg'::varchar(3)"), ("f8", "0.1::real"), ("i4", "1.9::int"),
    ("i4", "'7'::text"), ("tx", "'x'::varchar"), ("d", "'2020-01-02'::date"),
    ("tm", "'10:00:00.6'::time(0)"), ("ia", "'{3}'::int4[]"), ("vc", "NULL::int"),
]  # fmt: skip


@pytest.mark.parametrize("cond", CAST_COMPARISONS)
def test_cast_comparisons(conn: psycopg.Connection[Any], cond: str) -> None:
    """Taking a cast off a compared literal must not change the answer: a cast that
    could is refused (E30: `'abc  '::char(5)`, `1.9::int`, `0.1::real` ... answered wrong)."""
    enc = run(conn, f"SELECT id FROM w WHERE {cond}")
    plain = run(conn, f"SELECT id FROM pw WHERE {cond}")
    if enc.sqlstate == "0A000":
        col = cond.split(maxsplit=1)[0]
        assert f'column "{col}" encrypted in deterministic mode' in enc.message, enc
        return
    assert (enc.sqlstate, enc.rows) == (plain.sqlstate, plain.rows)


@pytest.mark.parametrize(("col", "value"), CAST_STORES)
def test_cast_stores(conn: psycopg.Connection[Any], col: str, value: str) -> None:
    """A stored value is what PostgreSQL would have stored, or the cast is refused."""
    rid = 100 + CAST_STORES.index((col, value))
    enc = run(conn, f"INSERT INTO w (id, {col}) VALUES ({rid}, {value})")
    plain = run(conn, f"INSERT INTO pw (id, {col}) VALUES ({rid}, {value})")
    if enc.sqlstate == "0A000":
        assert f'column "{col}" encrypted in deterministic mode' in enc.message, enc
        return
    assert enc.sqlstate == plain.sqlstate, (enc, plain)
    read = f"SELECT {col} FROM {{}} WHERE id = {rid}"
    assert run(conn, read.format("w")).rows == run(conn, read.format("pw")).rows


def test_cast_of_insertmanyvalues_column(conn: psycopg.Connection[Any]) -> None:
    """SQLAlchemy's `SELECT p0::T FROM (VALUES ...)`: the outer cast is checked too."""
    sql = "INSERT INTO w (id, {c}) SELECT p0, p1::{t} FROM (VALUES (%s, %s, 0)) AS v(p0, p1, n)"
    with conn.cursor() as cur:
        cur.execute(sql.format(c="tx", t="TEXT"), [200, "abc  "])
        assert run(conn, "SELECT tx FROM w WHERE id = 200").rows == [("abc  ",)]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "nm"'):
            cur.execute(sql.format(c="nm", t="NUMERIC(6,1)"), [201, "1.239"])


# -- 4. parameters: binary with wrong lengths, arrays, batches -----------------------------


@pytest.mark.parametrize(
    ("value", "oid", "sqlstate"),
    [(b"\x00\x01", 23, "08P01"), (b"\x00\x00\x00\x00\x01", 23, "22P03"),
     (b"\x00\x01", 0, "08P01"), (b"\x00\x00\x00", 20, "08P01")],
    ids=["int4-short", "int4-long", "unspecified-short", "int8-short"],
)  # fmt: skip
def test_binary_parameter_of_wrong_length(
    conn: psycopg.Connection[Any], value: bytes, oid: int, sqlstate: str
) -> None:
    """PostgreSQL's error, nothing stored (never the bytes encrypted as they came)."""
    res = conn.pgconn.exec_params(
        b"INSERT INTO t (id, n) VALUES ($1, $2)", [b"500", value], [23, oid], [0, 1]
    )
    assert res.error_field(ord("C")) == sqlstate.encode(), res.error_message
    assert run(conn, "SELECT count(*) FROM t WHERE id = 500").rows == [(0,)]


def test_parameters_in_unusual_places(conn: psycopg.Connection[Any]) -> None:
    pc = conn.pgconn
    array = pc.exec_params(b"SELECT id FROM t WHERE e = ANY($1)", [b"{a,b}"], [1009], [0])
    assert array.error_field(ord("C")) == b"0A000"
    m = _marker()
    ok = pc.exec_params(b"INSERT INTO t (id, e) SELECT $1, $2", [b"501", m.encode()], [23, 25],
                        [0, 0])  # fmt: skip
    assert ok.error_message == b""
    assert run(conn, f"SELECT id FROM t WHERE e = '{m}'").rows == [(501,)]
    for sql in ("SELECT id FROM t WHERE e = $1 AND e2 = $1", "SELECT id FROM t WHERE e = $1 "
                "AND p = $1", "SELECT id FROM t WHERE e = $1 LIMIT $1"):  # fmt: skip
        res = pc.exec_params(sql.encode(), [b"1"], [0], [0])
        assert res.error_field(ord("C")) == b"0A000", (sql, res.error_message)
    res = pc.exec_params(b"SELECT id FROM t WHERE $1 = e", [b"a"], [0], [0])
    assert res.ntuples == 1 and res.get_value(0, 0) == b"1"


def test_batches(adv: Adv, conn: psycopg.Connection[Any]) -> None:
    """A 1000-row VALUES list and executemany (text and binary) store every value."""
    m = _marker()
    rows = ", ".join(f"({1000 + i}, '{m}{i}', '{m}r{i}', {i})" for i in range(1000))
    assert run(conn, f"INSERT INTO t (id, e, r, n) VALUES {rows}").sqlstate is None
    with conn.cursor() as cur:
        for k, fmt in enumerate(("%s", "%b")):
            base = 3000 + 1000 * k
            cur.executemany(
                f"INSERT INTO t (id, e, r, n) VALUES (%s, {fmt}, {fmt}, {fmt})",
                [(base + i, f"{m}m{k}-{i}", f"{m}mr{i}", i) for i in range(150)],
            )
    got = run(conn, "SELECT id, e, r, n FROM t WHERE id BETWEEN 1000 AND 4999").rows or []
    assert len(got) == 1300
    for rid, e, r, n in got:
        if rid < 3000:
            assert (e, r, n) == (f"{m}{rid - 1000}", f"{m}r{rid - 1000}", rid - 1000)
        else:
            k, i = divmod(rid - 3000, 1000)
            assert (e, r, n) == (f"{m}m{k}-{i}", f"{m}mr{i}", i)
    assert run(conn, f"SELECT count(*) FROM t WHERE e IN ('{m}5', '{m}m1-7')").rows == [(2,)]


# -- 5. the upstream as a whole --------------------------------------------------------------


def test_no_marker_reached_the_upstream(adv: Adv) -> None:
    """Every marker sent by the probes above: not in the statement log, a pg_dump
    (catalogs: views, comments, defaults, functions) or any table's rows."""
    if len(MARKERS) < 50:
        pytest.skip("scans what the probes of this module sent: run it with them")
    pattern = re.compile("|".join(MARKERS))
    found = [f"log: {line[:160]}" for line in adv.upstream.log_since(adv.log_offset).splitlines()
             if pattern.search(line)]  # fmt: skip
    dump = subprocess.run(
        ["pg_dump", "-h", adv.upstream.host, "-p", str(adv.upstream.port), "-U", "postgres",
         adv.db], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "CREATE TABLE" in dump and "::bytea" in adv.upstream.log_since(adv.log_offset)
    found += [f"dump: {line[:160]}" for line in dump.splitlines() if pattern.search(line)]
    found += [f"proxy log: {line[:160]}" for line in adv.proxy.log_text().splitlines()
              if pattern.search(line)]  # fmt: skip
    assert not found, "\n".join(found[:20])
