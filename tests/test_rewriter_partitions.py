"""Partitioned tables, partitions, inheritance children and EXCLUDE constraints.

Differential like test_rewriter_differential.py (whose helpers this reuses):
database A runs the semantic statements, database B what the rewriter makes of
them; rows, column names, command tags and SQLSTATEs must match, and B's server
errors, unmasked with the names the plans registered, must read like A's (which
checks the names computed for what PostgreSQL copies onto partitions). B's
catalog (pg_class, pg_attribute, pg_constraint, partition keys and bounds) must
hold no semantic name, and the names the catalog recorded must be what A has.
A registry round trip checks that a reload rebuilds the same catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from helpers import PgServer
from test_registry_catalog import MASTER, _describe, _execute, _load, _reload_matches
from test_rewriter_differential import Outcome, _b_catalog, _catalog_texts, _run, _word_pattern

from pgcloak.registry.install import install
from pgcloak.rewriter import CloakError, MemoryCatalog, Plan, Rewriter
from pgcloak.rewriter.overlay import OverlayCatalog

_PHYSICAL = re.compile(r"[tciksvm][0-9a-f]{20}")

SEMANTIC_NAMES = [
    "measurements", "sensor_id", "taken_at", "reading", "station_code", "station", "quality",
    "measurements_2024", "measurements_2025", "measurements_old", "measurements_default",
    "measurements_2026", "early_reading", "reading_positive", "station_len", "reading_expr_idx",
    "events", "event_id", "region", "payload", "events_eu", "events_us", "events_us_0",
    "events_us_1", "events_apac", "bookings", "room_id", "during", "guest", "no_overlap",
    "one_guest", "single_guest", "notes", "vehicles", "vin", "make", "built_year", "model_year",
    "trucks", "payload_tons", "color", "vehicle_vin_len", "readings", "readings_1", "readings_2",
    "readings_3", "readings_3_1", "alpha", "beta", "gamma", "delta", "epsilon", "r2_key",
    "tagged", "stamped", "tagged_stamped", "stamp_ts", "extra", "tag_short", "stations",
    "station_key", "visits", "visit_day", "visits_2024", "visits_2025", "own_fk", "visitor",
    "visitors", "visitor_fk", "vans", "vans2", "measurements_2099",
]  # fmt: skip

CORPUS = [
    # -- declarative partitioning ---------------------------------------------------------
    """CREATE TABLE measurements (
        sensor_id integer NOT NULL,
        taken_at date NOT NULL,
        reading numeric CHECK (reading >= 0),
        station_code text,
        PRIMARY KEY (sensor_id, taken_at),
        UNIQUE (station_code, taken_at)
    ) PARTITION BY RANGE (taken_at)""",
    "CREATE INDEX ON measurements (sensor_id)",
    "CREATE INDEX reading_expr_idx ON measurements ((reading * 2))",
    "CREATE INDEX ON measurements (lower(station_code)) INCLUDE (reading)",
    "CREATE TABLE measurements_2024 PARTITION OF measurements "
    "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE measurements_2025 PARTITION OF measurements (reading DEFAULT 1, "
    "CONSTRAINT early_reading CHECK (reading < 1000), UNIQUE (sensor_id, taken_at, reading)) "
    "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "CREATE TABLE measurements_old PARTITION OF measurements "
    "FOR VALUES FROM (MINVALUE) TO ('2024-01-01')",
    "CREATE TABLE measurements_bad PARTITION OF measurements FOR VALUES FROM (sensor_id) TO (1)",
    "CREATE TABLE measurements_bad PARTITION OF measurements (nosuch NOT NULL) DEFAULT",
    "CREATE TABLE measurements_bad (LIKE measurements) PARTITION BY RANGE (nosuch)",
    "INSERT INTO measurements VALUES (1, '2024-03-01', 5, 'A'), (2, '2025-02-01', 7, 'B'), "
    "(3, '2023-01-01', 1, 'C')",
    "INSERT INTO measurements VALUES (9, '2030-01-01', 1, 'Z')",
    "CREATE TABLE measurements_default PARTITION OF measurements DEFAULT",
    "INSERT INTO measurements VALUES (9, '2030-01-01', 1, 'Z')",
    "SELECT * FROM measurements ORDER BY sensor_id",
    "SELECT sensor_id, reading FROM measurements_2024",
    "SELECT count(*) FROM ONLY measurements",
    "INSERT INTO measurements VALUES (1, '2024-03-01', 9, 'Y')",
    "INSERT INTO measurements VALUES (4, '2024-04-01', -1, 'Q')",
    "INSERT INTO measurements VALUES (5, '2025-04-01', 1000, 'Q')",
    "INSERT INTO measurements VALUES (6, '2025-04-01', 7, 'B'), (7, '2025-04-01', 7, 'B')",
    "INSERT INTO measurements_2024 VALUES (5, '2025-05-01', 1, 'x')",
    "UPDATE measurements SET taken_at = '2025-06-01' WHERE sensor_id = 1 "
    "RETURNING sensor_id, taken_at",
    "SELECT sensor_id FROM measurements_2025 ORDER BY 1",
    "DELETE FROM measurements_2025 WHERE sensor_id = 2 RETURNING *",
    # ATTACH a table that already has matching constraints and indexes
    "CREATE TABLE measurements_2026 (sensor_id integer NOT NULL, taken_at date NOT NULL, "
    "reading numeric, station_code text, "
    "CONSTRAINT measurements_reading_check CHECK (reading >= 0))",
    "ALTER TABLE measurements_2026 ADD PRIMARY KEY (sensor_id, taken_at)",
    "CREATE INDEX ON measurements_2026 (sensor_id)",
    "ALTER TABLE measurements ATTACH PARTITION measurements_2026 "
    "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "INSERT INTO measurements VALUES (8, '2026-05-01', 3, 'D')",
    "INSERT INTO measurements VALUES (8, '2026-05-01', 4, 'E')",
    # changes on the partitioned table reach every partition
    "ALTER TABLE measurements ADD COLUMN quality smallint DEFAULT 0 "
    "CHECK (quality BETWEEN 0 AND 5)",
    "SELECT sensor_id, quality FROM measurements_2024",
    "INSERT INTO measurements_2026 VALUES (10, '2026-02-01', 1, 'F', 9)",
    "ALTER TABLE measurements RENAME COLUMN station_code TO station",
    "SELECT station FROM measurements_2025 ORDER BY 1",
    "ALTER TABLE measurements_2024 RENAME COLUMN station TO st",
    "ALTER TABLE ONLY measurements RENAME COLUMN station TO st",
    "ALTER TABLE measurements_2024 RENAME CONSTRAINT measurements_reading_check TO x",
    "ALTER TABLE ONLY measurements RENAME CONSTRAINT measurements_reading_check TO x",
    "ALTER TABLE measurements RENAME CONSTRAINT measurements_reading_check TO reading_positive",
    "INSERT INTO measurements VALUES (11, '2024-02-02', -5, 'G')",
    "ALTER TABLE measurements_2024 RENAME CONSTRAINT measurements_2024_pkey TO m24_pk",
    "INSERT INTO measurements VALUES (3, '2023-01-01', 1, 'C')",
    "ALTER TABLE measurements ADD CONSTRAINT station_len CHECK (length(station) < 10)",
    "INSERT INTO measurements VALUES (12, '2025-03-03', 1, 'a name far too long')",
    "ALTER TABLE measurements ADD UNIQUE (sensor_id, taken_at, quality)",
    "ALTER TABLE measurements DROP CONSTRAINT measurements_station_code_taken_at_key",
    "INSERT INTO measurements VALUES (13, '2024-05-05', 1, 'A'), (14, '2024-05-05', 1, 'A')",
    "ALTER TABLE measurements_2024 DROP COLUMN reading",
    "ALTER TABLE measurements_2024 DROP CONSTRAINT station_len",
    "ALTER TABLE measurements DROP COLUMN quality",
    "CREATE UNIQUE INDEX ON measurements (sensor_id, taken_at, reading)",
    "DROP INDEX measurements_sensor_id_idx",
    "DROP INDEX measurements_2024_sensor_id_idx",
    "SELECT count(*) FROM measurements",
    "ALTER TABLE measurements DETACH PARTITION measurements_old",
    "SELECT count(*) FROM measurements",
    "INSERT INTO measurements_old VALUES (3, '2030-01-01', 1, 'C')",
    "ALTER TABLE measurements ATTACH PARTITION measurements_old "
    "FOR VALUES FROM (MINVALUE) TO ('2024-01-01')",
    "DROP TABLE measurements_old",
    "DROP TABLE measurements_2025",
    "SELECT count(*) FROM measurements",
    # list and hash partitioning, sub-partitions
    "CREATE TABLE events (event_id int, region text NOT NULL, payload text) "
    "PARTITION BY LIST (region)",
    "CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu', 'uk')",
    "CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us') PARTITION BY HASH (event_id)",
    "CREATE TABLE events_us_0 PARTITION OF events_us FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
    "CREATE TABLE events_us_1 PARTITION OF events_us FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
    "INSERT INTO events VALUES (1, 'eu', 'x'), (2, 'us', 'y'), (3, 'us', 'z'), (5, 'uk', 'v')",
    "INSERT INTO events VALUES (4, 'apac', 'w')",
    "SELECT region, count(*) FROM events GROUP BY region ORDER BY region",
    "SELECT count(*) FROM events_us_0 JOIN events_us_1 USING (region)",
    "CREATE TABLE events_apac (event_id int, region text NOT NULL, payload text)",
    "ALTER TABLE events ATTACH PARTITION events_apac FOR VALUES IN ('apac')",
    "INSERT INTO events VALUES (4, 'apac', 'w')",
    "ALTER TABLE events DETACH PARTITION events_eu",
    "SELECT count(*) FROM events",
    "ALTER TABLE events ATTACH PARTITION events_eu FOR VALUES IN ('eu')",
    "ALTER TABLE events ADD PRIMARY KEY (event_id, region)",
    "INSERT INTO events VALUES (2, 'us', 'again')",
    "DROP TABLE events",
    "SELECT count(*) FROM events_eu",
    # long derived names (truncated, then numbered) and reuse of existing indexes
    "CREATE TABLE readings (alpha int, beta int, gamma int, delta int, "
    "UNIQUE (alpha, beta, gamma), UNIQUE (alpha, beta, delta)) PARTITION BY LIST (alpha)",
    "CREATE TABLE readings_1 PARTITION OF readings FOR VALUES IN (1)",
    "INSERT INTO readings VALUES (1, 1, 1, 1), (1, 1, 2, 1)",
    "INSERT INTO readings VALUES (1, 2, 1, 1), (1, 2, 1, 2)",
    "CREATE TABLE readings_2 (alpha int, beta int, gamma int, delta int)",
    "CREATE INDEX ON readings_2 (beta)",
    "ALTER TABLE readings_2 ADD CONSTRAINT r2_key UNIQUE (alpha, beta, gamma)",
    "ALTER TABLE readings ATTACH PARTITION readings_2 FOR VALUES IN (2)",
    "CREATE INDEX ON readings (beta)",
    "INSERT INTO readings VALUES (2, 1, 1, 1), (2, 1, 1, 2)",
    "INSERT INTO readings VALUES (2, 1, 1, 1), (2, 1, 2, 1)",
    "CREATE TABLE readings_3 PARTITION OF readings FOR VALUES IN (3) PARTITION BY LIST (beta)",
    "CREATE TABLE readings_3_1 PARTITION OF readings_3 FOR VALUES IN (1)",
    "ALTER TABLE readings ADD PRIMARY KEY (alpha, beta)",
    "INSERT INTO readings VALUES (3, 1, 1, 1), (3, 1, 2, 2)",
    "DROP INDEX readings_beta_idx",
    "DROP INDEX readings_2_beta_idx",
    "ALTER TABLE readings DROP CONSTRAINT readings_pkey",
    "INSERT INTO readings VALUES (3, 1, 3, 3)",
    "ALTER TABLE readings RENAME COLUMN delta TO epsilon",
    "SELECT epsilon FROM readings_3_1 ORDER BY 1",
    "DROP TABLE readings_3",
    "SELECT count(*) FROM readings",
    # foreign keys of partitioned tables are cloned onto the partitions
    "CREATE TABLE stations (station_key text PRIMARY KEY)",
    "INSERT INTO stations VALUES ('S1'), ('S2')",
    "CREATE TABLE visits (station_key text REFERENCES stations, visit_day date) "
    "PARTITION BY RANGE (visit_day)",
    "CREATE TABLE visits_2024 PARTITION OF visits FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "INSERT INTO visits VALUES ('S1', '2024-02-02')",
    "INSERT INTO visits VALUES ('S9', '2024-02-02')",
    "CREATE TABLE visits_2025 (station_key text, visit_day date, "
    "CONSTRAINT own_fk FOREIGN KEY (station_key) REFERENCES stations)",
    "ALTER TABLE visits ATTACH PARTITION visits_2025 "
    "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "INSERT INTO visits VALUES ('S9', '2025-02-02')",
    "ALTER TABLE visits ADD COLUMN visitor text",
    "CREATE TABLE visitors (visitor text PRIMARY KEY)",
    "ALTER TABLE visits ADD CONSTRAINT visitor_fk FOREIGN KEY (visitor) REFERENCES visitors",
    "INSERT INTO visits VALUES ('S1', '2025-03-03', 'nobody')",
    "DELETE FROM stations WHERE station_key = 'S1'",
    "ALTER TABLE visits DETACH PARTITION visits_2024",
    "INSERT INTO visits_2024 VALUES ('S7', '2024-02-02')",
    "ALTER TABLE visits DROP CONSTRAINT visitor_fk",
    "INSERT INTO visits VALUES ('S2', '2025-03-03', 'nobody')",
    "DROP TABLE visitors",
    "DROP TABLE stations CASCADE",
    "INSERT INTO visits_2024 VALUES ('S7', '2024-02-02')",
    # -- EXCLUDE constraints ---------------------------------------------------------------
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    "CREATE TABLE bookings (room_id int, during tsrange, guest text, "
    "EXCLUDE USING gist (room_id WITH =, during WITH &&))",
    "INSERT INTO bookings VALUES (1, '[2024-01-01 10:00, 2024-01-01 12:00)', 'ann')",
    "INSERT INTO bookings VALUES (1, '[2024-01-01 11:00, 2024-01-01 13:00)', 'bob')",
    "INSERT INTO bookings VALUES (2, '[2024-01-01 11:00, 2024-01-01 13:00)', 'bob')",
    "CREATE TABLE notes (room_id int, during tsrange, guest text, "
    "CONSTRAINT no_overlap EXCLUDE USING gist (room_id WITH =, during WITH &&) "
    "WHERE (guest IS NOT NULL), EXCLUDE (lower(guest) WITH =), "
    "EXCLUDE USING gist ((room_id + 1) WITH =) INCLUDE (guest))",
    "INSERT INTO notes VALUES (1, '[2024-01-01, 2024-01-03)', 'Ann'), "
    "(1, '[2024-01-02, 2024-01-04)', NULL)",
    "INSERT INTO notes VALUES (2, '[2024-01-01, 2024-01-03)', 'ANN')",
    "ALTER TABLE bookings ADD EXCLUDE USING gist (guest WITH =)",
    "ALTER TABLE bookings ADD CONSTRAINT one_guest EXCLUDE (guest WITH =)",
    "ALTER TABLE bookings ADD EXCLUDE (nosuch WITH =)",
    "ALTER TABLE bookings DROP CONSTRAINT bookings_room_id_during_excl",
    "ALTER TABLE bookings RENAME CONSTRAINT one_guest TO single_guest",
    "INSERT INTO bookings VALUES (3, '[2024-02-01, 2024-02-02)', 'ann')",
    "CREATE TABLE bookings_p (room_id int, EXCLUDE (room_id WITH =)) PARTITION BY LIST (room_id)",
    # -- inheritance -----------------------------------------------------------------------
    "CREATE TABLE vehicles (vin text PRIMARY KEY, make text CHECK (make <> ''), built_year int)",
    "CREATE TABLE trucks (payload_tons numeric, make text NOT NULL) INHERITS (vehicles)",
    "INSERT INTO trucks VALUES ('V1', 'Volvo', 2020, 12)",
    "INSERT INTO vehicles VALUES ('V0', 'Fiat', 1999)",
    "SELECT * FROM vehicles ORDER BY vin",
    "SELECT * FROM ONLY vehicles",
    "SELECT vin, payload_tons FROM trucks",
    "INSERT INTO trucks VALUES ('V2', '', 2021, 3)",
    "CREATE TABLE vans (CONSTRAINT vehicles_make_check CHECK (make <> '')) INHERITS (vehicles)",
    "CREATE TABLE vans2 (CONSTRAINT vehicles_make_check CHECK (make <> 'x')) INHERITS (vehicles)",
    "INSERT INTO vans VALUES ('V3', '', 2021)",
    "CREATE TABLE measurements_2099 PARTITION OF measurements "
    "(CONSTRAINT reading_positive CHECK (reading >= 0)) "
    "FOR VALUES FROM ('2099-01-01') TO (MAXVALUE)",
    "ALTER TABLE vehicles ADD COLUMN color text",
    "SELECT vin, color FROM trucks",
    "ALTER TABLE vehicles RENAME COLUMN built_year TO model_year",
    "SELECT model_year FROM trucks",
    "ALTER TABLE trucks RENAME COLUMN model_year TO y",
    "ALTER TABLE vehicles ADD CONSTRAINT vehicle_vin_len CHECK (length(vin) < 5)",
    "INSERT INTO trucks VALUES ('V12345', 'Man', 2022, 1)",
    "DROP TABLE vehicles",
    "ALTER TABLE trucks NO INHERIT vehicles",
    "SELECT count(*) FROM vehicles",
    "ALTER TABLE trucks INHERIT vehicles",
    "SELECT count(*) FROM vehicles",
    "DROP TABLE vehicles CASCADE",
    "SELECT count(*) FROM trucks",
    "CREATE TABLE tagged (tag text CHECK (tag <> ''))",
    "CREATE TABLE stamped (stamp_ts timestamp, tag text)",
    "CREATE TABLE tagged_stamped (extra int) INHERITS (tagged, stamped)",
    "INSERT INTO tagged_stamped VALUES ('x', '2024-01-01', 1)",
    "INSERT INTO tagged_stamped VALUES ('', '2024-01-01', 1)",
    "SELECT tag, stamp_ts FROM stamped",
    "ALTER TABLE tagged RENAME COLUMN tag TO label",
    "ALTER TABLE tagged ADD CONSTRAINT tag_short CHECK (length(tag) < 9)",
    "ALTER TABLE ONLY tagged DROP CONSTRAINT tag_short",
    "INSERT INTO tagged_stamped VALUES ('123456789', '2024-01-01', 1)",
    "ALTER TABLE tagged_stamped DROP CONSTRAINT tag_short",
    "ALTER TABLE ONLY tagged DROP COLUMN tag",
    "SELECT * FROM tagged_stamped",
    "DROP TABLE tagged",
    "DROP TABLE stamped CASCADE",
    "SELECT count(*) FROM tagged",
]


def _relations(cat: MemoryCatalog) -> list[Any]:
    return list(cat._by_phys.values())


def _unmasker(cat: MemoryCatalog, plan: Plan) -> Callable[[str], str]:
    """Physical names in B's error text shown as the client's: those registered so far
    and the statement's own (the proxy registers them before the server answers)."""
    mine = OverlayCatalog(cat)
    mine.apply_all(plan.changes)
    names = dict(plan.notice_names)
    for source in (cat, mine):
        for rel in _relations(source):
            names[rel.physical] = rel.name
            for col in rel.columns:
                names.setdefault(col.physical, col.name)
            for con in source.constraints(rel.physical):
                names.setdefault(con.physical, con.name)
            for idx in source.indexes(rel.physical):
                names[idx.physical] = idx.name

    def unmask(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            word = m.group(0)
            if word in names:
                return names[word]
            return _PHYSICAL.sub(lambda n: names.get(n.group(0), n.group(0)), word)

        return re.sub(r"\b[tciksvm][0-9a-f]{20}\w*", one, text)

    return unmask


def _run_b(
    conn: psycopg.Connection[Any], sql: str, rw: Rewriter, cat: MemoryCatalog, sent: list[str]
) -> Outcome:
    """Like test_rewriter_differential._run_cloaked, but server errors keep their text,
    unmasked with the names registered so far."""
    try:
        (plan,) = rw.plan(sql, cat)
    except CloakError as exc:
        return Outcome(sqlstate=exc.sqlstate, message=exc.message)
    if plan.sql is None:
        cat.apply_all(plan.changes)
        return Outcome(tag=plan.command_tag)
    sent.append(plan.sql)
    out = _run(conn, plan.sql)
    if out.message is not None:
        out.message = _unmasker(cat, plan)(out.message)
    if out.sqlstate is None:
        cat.apply_all(plan.changes)
        if out.names is not None and plan.output_names is not None:
            out.names = list(plan.output_names)
    return out


def _names_in_a(pg: PgServer, db: str, cat: MemoryCatalog) -> None:
    """Every table of A (partitioned or not) has the columns, constraints and indexes
    under the names B's catalog recorded."""
    tables = pg.execute(
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') ORDER BY 1",
        dbname=db,
    )
    assert tables
    for (table,) in tables:
        rel = cat.relation("public", table)
        assert rel is not None, table
        oid = f"'public.{table}'::regclass"
        cols = pg.execute(
            f"SELECT attname::text FROM pg_attribute WHERE attrelid = {oid} "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            dbname=db,
        )
        assert [c.name for c in rel.columns] == [r[0] for r in cols], table
        cons = pg.execute(
            f"SELECT conname::text, contype::text FROM pg_constraint WHERE conrelid = {oid}",
            dbname=db,
        )
        mine = sorted((c.name, c.contype) for c in cat.constraints(rel.physical))
        assert mine == sorted(cons), table
        idx = pg.execute(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            f"WHERE i.indrelid = {oid} AND NOT EXISTS (SELECT FROM pg_constraint k "
            "WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)",
            dbname=db,
        )
        assert sorted(i.name for i in cat.indexes(rel.physical)) == sorted(r[0] for r in idx), table
        parents = pg.execute(
            "SELECT p.relname::text FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent "
            f"WHERE h.inhrelid = {oid} ORDER BY h.inhseqno",
            dbname=db,
        )
        by_phys = {r.physical: r.name for r in _relations(cat)}
        assert [by_phys[p] for p in rel.parents] == [r[0] for r in parents], table


def test_partitions_differential(pg: PgServer, db_factory: Callable[..., str]) -> None:
    db_a, db_b = db_factory(), db_factory()
    cat = _b_catalog(pg, db_b)
    rw = Rewriter()
    sent: list[str] = []
    mismatches: list[str] = []
    states: set[str] = set()
    with pg.connect(db_a) as conn_a, pg.connect(db_b) as conn_b:
        for sql in CORPUS:
            a = _run(conn_a, sql)
            b = _run_b(conn_b, sql, rw, cat, sent)
            states.add(a.sqlstate or "")
            if a != b or a.message != b.message:
                mismatches.append(f"{sql}\n  A: {a} {a.message}\n  B: {b} {b.message}")
    assert not mismatches, "\n".join(mismatches)
    assert {"23505", "23514", "23P01", "42P16", "42703", "2BP01", "0A000"} <= states
    word = _word_pattern(SEMANTIC_NAMES)
    leaks = [text for text in sent if word.search(text)]
    assert not leaks, leaks
    _names_in_a(pg, db_a, cat)
    texts = _catalog_texts(pg, db_b)
    texts += [
        r[0]
        for q in (
            "SELECT pg_get_partkeydef(oid) FROM pg_class WHERE relkind = 'p'",
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relispartition",
            "SELECT relname::text FROM pg_class c JOIN pg_inherits h ON h.inhrelid = c.oid",
        )
        for r in pg.execute(q, dbname=db_b)
    ]
    leaked = [t for t in texts if t and word.search(t)]
    assert not leaked, leaked


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "state"),
    [
        # FKs to a partitioned table make PostgreSQL add constraints pgcloak cannot name
        ("CREATE TABLE r (a int, b date, FOREIGN KEY (a, b) REFERENCES m)", "0A000"),
        # a partition of a table pgcloak does not cloak
        ("CREATE TABLE p2 PARTITION OF plain FOR VALUES IN (1)", "0A000"),
        ("ALTER TABLE m ATTACH PARTITION plain FOR VALUES FROM (1) TO (2)", "0A000"),
        ("ALTER INDEX m_a_idx ATTACH PARTITION p_a_idx", "0A000"),
        ("ALTER TABLE m DETACH PARTITION m1 CONCURRENTLY", "0A000"),
        ("ALTER TABLE m DETACH PARTITION m1 FINALIZE", "0A000"),
        ("CREATE TABLE m2 PARTITION OF m FOR VALUES FROM ((SELECT 1)) TO (2)", "0A000"),
        # PostgreSQL would keep the column where a child also defines it: not tracked
        ("ALTER TABLE kids_parent DROP COLUMN a", "0A000"),
        ("ALTER TABLE kids_parent DROP CONSTRAINT kids_check", "0A000"),
        # inherited CHECK names are matched by name: they share their physical name
        ("CREATE TABLE m3 PARTITION OF m (CONSTRAINT m_check UNIQUE (a, b)) DEFAULT", "42710"),
    ],
)
def test_refusals(sql: str, state: str) -> None:
    cat = MemoryCatalog(uncloaked=[("public", "plain")])
    rw = Rewriter()
    for ddl in (
        "CREATE TABLE m (a int, b date, PRIMARY KEY (a, b), CONSTRAINT m_check CHECK (a > 0)) "
        "PARTITION BY RANGE (b)",
        "CREATE INDEX m_a_idx ON m (a)",
        "CREATE TABLE m1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "CREATE TABLE kids_parent (a int CONSTRAINT kids_check CHECK (a > 0))",
        "CREATE TABLE kid () INHERITS (kids_parent)",
    ):
        (plan,) = rw.plan(ddl, cat)
        cat.apply_all(plan.changes)
    with pytest.raises(CloakError) as info:
        rw.plan(sql, cat)
    assert info.value.sqlstate == state


# -- registry round trip -------------------------------------------------------------------------

STEPS = [
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    """CREATE TABLE measurements (
        sensor_id integer NOT NULL,
        taken_at date NOT NULL,
        reading numeric CHECK (reading >= 0),
        station_code text,
        PRIMARY KEY (sensor_id, taken_at),
        UNIQUE (station_code, taken_at)
    ) PARTITION BY RANGE (taken_at)""",
    "CREATE INDEX ON measurements (sensor_id)",
    "CREATE INDEX ON measurements (lower(station_code), (reading + 1)) INCLUDE (reading)",
    "CREATE TABLE measurements_2024 PARTITION OF measurements "
    "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE measurements_2025 PARTITION OF measurements "
    "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY RANGE (taken_at)",
    "CREATE TABLE measurements_2025_1 PARTITION OF measurements_2025 "
    "FOR VALUES FROM ('2025-01-01') TO ('2025-07-01')",
    "CREATE TABLE measurements_2026 (sensor_id integer NOT NULL, taken_at date NOT NULL, "
    "reading numeric, station_code text, "
    "CONSTRAINT measurements_reading_check CHECK (reading >= 0), "
    "PRIMARY KEY (sensor_id, taken_at))",
    "ALTER TABLE measurements ATTACH PARTITION measurements_2026 "
    "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "ALTER TABLE measurements ADD COLUMN quality int CHECK (quality > 0)",
    "ALTER TABLE measurements ADD UNIQUE (sensor_id, taken_at, quality)",
    "ALTER TABLE measurements RENAME COLUMN station_code TO station",
    "ALTER TABLE measurements DETACH PARTITION measurements_2024",
    "CREATE TABLE bookings (room_id int, during tsrange, "
    "EXCLUDE USING gist (room_id WITH =, during WITH &&) WHERE (room_id > 0))",
    "CREATE TABLE vehicles (vin text PRIMARY KEY, make text CHECK (make <> ''))",
    "CREATE TABLE trucks (payload numeric) INHERITS (vehicles)",
    "ALTER TABLE trucks NO INHERIT vehicles",
    "ALTER TABLE trucks INHERIT vehicles",
    "CREATE TABLE stations (station_key text PRIMARY KEY)",
    "ALTER TABLE measurements ADD COLUMN station_key text REFERENCES stations",
    "CREATE TABLE measurements_2027 (sensor_id integer NOT NULL, taken_at date NOT NULL, "
    "reading numeric, station text, quality int, station_key text REFERENCES stations, "
    "CONSTRAINT measurements_reading_check CHECK (reading >= 0), "
    "CONSTRAINT measurements_quality_check CHECK (quality > 0))",
    "CREATE INDEX ON measurements_2027 (reading)",
    "ALTER TABLE measurements ATTACH PARTITION measurements_2027 "
    "FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    "CREATE INDEX ON measurements (reading)",
    "ALTER TABLE measurements DROP COLUMN quality",
    "DROP INDEX measurements_sensor_id_idx",
    "DROP TABLE measurements",
    "DROP TABLE vehicles CASCADE",
]


@pytest.fixture
def conn(pg: PgServer, db_factory: Callable[..., str]) -> Iterator[psycopg.Connection[Any]]:
    with pg.connect(db_factory()) as c:
        install(c, MASTER)
        yield c


def test_registry_round_trip(conn: psycopg.Connection[Any]) -> None:
    loaded = _load(conn)
    reg, cat = loaded.registry, loaded.catalog
    rw = Rewriter()
    seen_partition = False
    for sql in STEPS:
        (plan,) = rw.plan(sql, cat)
        _execute(conn, plan, reg, cat)
        fresh = _reload_matches(conn, reg, cat, sql)
        seen_partition = seen_partition or any(r.partition for r in fresh.catalog.relations())
        reg, cat = fresh.registry, fresh.catalog
        names = reg.physical_names()
        for rel in cat.relations():
            for con in cat.constraints(rel.physical):
                assert names.get(con.physical) == con.name, sql
    assert seen_partition
    # Left: the detached partition (with what it got as one) and the EXCLUDE table.
    assert sorted(r.name for r in _describe(cat)["relations"]) == [
        "bookings",
        "measurements_2024",
        "stations",
    ]
    (kept,) = (r for r in cat.relations() if r.name == "measurements_2024")
    assert not kept.parents and not kept.partition
    assert sorted(c.name for c in cat.constraints(kept.physical)) == [
        "measurements_2024_pkey",
        "measurements_2024_sensor_id_taken_at_quality_key",
        "measurements_2024_station_code_taken_at_key",
        "measurements_quality_check",
        "measurements_reading_check",
    ]
    assert all(c.parent is None for c in cat.constraints(kept.physical))


# -- through the proxy -----------------------------------------------------------------------


def test_through_proxy(cloak_proxy: Any, cloaked_db: str) -> None:
    """Errors, catalog queries and a fresh session's reload see the semantic names."""
    setup = [
        "CREATE TABLE measurements (sensor_id int NOT NULL, taken_at date NOT NULL, "
        "reading numeric CHECK (reading >= 0), PRIMARY KEY (sensor_id, taken_at)) "
        "PARTITION BY RANGE (taken_at)",
        "CREATE INDEX ON measurements (reading)",
        "CREATE TABLE measurements_2024 PARTITION OF measurements "
        "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "INSERT INTO measurements VALUES (1, '2024-03-01', 5)",
    ]
    with cloak_proxy.connect(cloaked_db) as conn:
        for sql in setup:
            conn.execute(sql.encode())
    errors = {
        "INSERT INTO measurements VALUES (1, '2024-03-01', 6)": (
            'duplicate key value violates unique constraint "measurements_2024_pkey"'
        ),
        "INSERT INTO measurements VALUES (2, '2030-01-01', 1)": (
            'no partition of relation "measurements" found for row'
        ),
        "INSERT INTO measurements VALUES (3, '2024-01-01', -1)": (
            'new row for relation "measurements_2024" violates check constraint '
            '"measurements_reading_check"'
        ),
    }
    with cloak_proxy.connect(cloaked_db) as conn:  # a new session: the registry reloaded
        for sql, message in errors.items():
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql.encode())
            assert info.value.diag.message_primary == message
        conn.rollback()
        rows = conn.execute(
            "SELECT c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid), "
            "pg_catalog.pg_get_partkeydef(h.inhparent) FROM pg_catalog.pg_inherits h "
            "JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid "
            "WHERE h.inhparent = 'measurements'::regclass"
        ).fetchall()
        assert rows == [
            (
                "measurements_2024",
                "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
                "RANGE (taken_at)",
            )
        ]
        idx = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c "
            "ON c.oid = i.indexrelid WHERE i.indrelid = 'measurements_2024'::regclass"
        ).fetchall()
        assert sorted(idx) == [("measurements_2024_pkey",), ("measurements_2024_reading_idx",)]
        conn.execute(b"DROP TABLE measurements")
        assert conn.execute("SELECT to_regclass('measurements_2024')").fetchone() == (None,)


def test_multi_statement_string() -> None:
    """Later statements of one query string see the partitions earlier ones made."""
    from pgcloak.rewriter import plan_query
    from pgcloak.rewriter.catalog import CreateIndex, CreateTable, DropTable

    cat = MemoryCatalog()
    plans = plan_query(
        "CREATE TABLE x (k int, v text) PARTITION BY LIST (k); "
        "CREATE TABLE x1 PARTITION OF x FOR VALUES IN (1); "
        "CREATE INDEX ON x (v); DROP TABLE x",
        cat,
    )
    (create,) = plans[1].changes
    assert isinstance(create, CreateTable) and create.table.partition
    parent = plans[0].changes[0]
    assert isinstance(parent, CreateTable) and create.table.parents == (parent.table.physical,)
    index, copy = plans[2].changes
    assert isinstance(index, CreateIndex) and isinstance(copy, CreateIndex)
    assert (index.index.name, copy.index.name) == ("x_v_idx", "x1_v_idx")
    assert copy.index.parent == index.index.physical and copy.index.table == create.table.physical
    assert copy.index.physical == f"{create.table.physical}_{create.table.columns[1].physical}_idx"
    dropped = {c.table for c in plans[3].changes if isinstance(c, DropTable)}
    assert dropped == {parent.table.physical, create.table.physical}


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE s (secret text, k int) PARTITION BY LIST (k)",
        "CREATE TABLE s_2 (extra int) INHERITS (enc_table)",
        "ALTER TABLE plain_parent ADD COLUMN secret text",
        "ALTER TABLE plain_1 ADD COLUMN secret text",
        "ALTER TABLE plain_parent ATTACH PARTITION enc_table FOR VALUES IN (1)",
        "CREATE TABLE s (k int, secret text, EXCLUDE (secret WITH =))",
        "ALTER TABLE enc_table ADD EXCLUDE (secret WITH =)",
    ],
)
def test_encrypted_columns_refused(sql: str) -> None:
    """Ciphertext can be neither a partition key nor shared with partitions/children."""

    def rules(schema: str, table: str, column: str) -> tuple[str, None] | None:
        return ("deterministic", None) if column == "secret" else None

    cat = MemoryCatalog()
    rw = Rewriter(encrypt_rules=rules)
    for ddl in (
        "CREATE TABLE plain_parent (k int) PARTITION BY LIST (k)",
        "CREATE TABLE plain_1 PARTITION OF plain_parent FOR VALUES IN (0)",
        "CREATE TABLE enc_table (k int, secret text)",
    ):
        (plan,) = rw.plan(ddl, cat)
        cat.apply_all(plan.changes)
    with pytest.raises(CloakError) as info:
        rw.plan(sql, cat)
    assert info.value.sqlstate == "0A000"
    assert "encrypted" in info.value.message
