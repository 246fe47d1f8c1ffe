"""Relational statements of the encryption differential (tests/test_encrypt_differential.py).

A small schema whose encrypted columns cover both modes and the ways values meet:
`acct` (deterministic email in key group "people", code UNIQUE, pin in group
"pins"; randomized name, balance, tags), `txn` (its email REFERENCES acct's, so it
shares that key), `contact` and `stage` (email in group "people": joinable with
acct's; stage.pin in "pins": MERGE can copy it), `outsider` (email under its own
key: comparisons with acct's are refused). Plain columns (`id`, `note`, `qty`,
`kind`) carry no marker. Marker values (`zqmark`, 918273645...) are what the leak
scans look for; they only ever go into encrypted columns.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from cloak_corpus import Known, Stmt
from encrypt_support import DET, MARKERS, RND
from psycopg.types.numeric import Int4

# Markers of this corpus (the type corpus adds encrypt_support.MARKERS).
MARK = "zqmark"
MARK_NUMBER = 918273645
MARK_DAY = "1917-03-08"
MARK_AMOUNT = "73645.91"
TEXT_MARKERS = (MARK, MARK.upper(), str(MARK_NUMBER), MARK_DAY, MARK_AMOUNT, *MARKERS)
NUMBER_MARKERS = (MARK_NUMBER, MARK_NUMBER + 1, 987654321)

RULES: dict[str, str | tuple[str, str]] = {
    "acct.email": (DET, "people"),
    "acct.name": RND,
    "acct.code": DET,
    "acct.pin": (DET, "pins"),
    "acct.balance": RND,
    "acct.born": DET,
    "acct.active": DET,
    "acct.tags": RND,
    "txn.acct_email": DET,  # REFERENCES acct (email): takes its key
    "txn.amount": DET,
    "txn.memo": RND,
    "txn.at": DET,
    "contact.email": (DET, "people"),
    "contact.phone": RND,
    "stage.email": (DET, "people"),
    "stage.pin": (DET, "pins"),
    "outsider.email": DET,
}

ANN = f"{MARK}-ann@example.com"
BOB = f"{MARK}-bob@example.com"
CY = f"{MARK}-cy@example.com"
P = Stmt

SCHEMA: list[str | Stmt] = [
    "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text, "
    "code varchar(20) UNIQUE, pin integer, balance numeric(10,2), born date, active boolean, "
    "note text, tags text[])",
    "CREATE TABLE txn (id int PRIMARY KEY, acct_email text REFERENCES acct (email), "
    "amount numeric(10,2), memo text, at timestamptz, qty int)",
    "CREATE TABLE contact (id int PRIMARY KEY, email text, phone text, kind text)",
    "CREATE TABLE stage (id int PRIMARY KEY, email text, pin integer)",
    "CREATE TABLE outsider (id int PRIMARY KEY, email text)",
    "CREATE INDEX acct_pin_idx ON acct (pin)",
    "CREATE VIEW acct_active AS SELECT id, email, name, pin, balance FROM acct WHERE active = true",
]

WRITES: list[str | Stmt] = [
    # -- literal forms -----------------------------------------------------------------
    f"INSERT INTO acct VALUES (1, '{ANN}', '{MARK} Ann', 'ZQM-001', {MARK_NUMBER}, "
    f"{MARK_AMOUNT}, '{MARK_DAY}', true, 'first', '{{{MARK}-a,b}}')",
    f"INSERT INTO acct (id, email, name, code, pin, balance, born, active, note, tags) VALUES "
    f"(2, E'{MARK}-bob\\x40example.com', NULL, 'ZQM-002'::varchar(20), -{MARK_NUMBER}, "
    f"'-0.5'::numeric(10,2), DATE '1999-12-31', 'f', 'second', '{{x,{MARK}-y}}'), "
    f"(3, '{CY}', 'Cy', NULL, 7, 0, NULL, NULL, NULL, NULL) RETURNING id, email, pin, tags",
    f"INSERT INTO acct (id, email, name, pin, balance, born, active) VALUES "
    f"(4, CAST('{MARK}-dan@example.com' AS text), E'{MARK}\\tDan', CAST('7' AS integer), "
    f"1e2, CAST('{MARK_DAY}' AS date), CAST('yes' AS boolean)) RETURNING *",
    f"INSERT INTO acct (id, email, pin, balance, tags) VALUES (5, $q${MARK}-eve@example.com$q$, "
    "'  42 ', -.25, '{}') RETURNING id, email, pin, balance, tags",
    # ARRAY[...] of literals (E19, fixed)
    f"INSERT INTO acct (id, email, tags) VALUES (10, '{MARK}-arr@example.com', "
    f"ARRAY['{MARK}-z', NULL]) RETURNING tags",
    "UPDATE acct SET tags = ARRAY[[1, 2], [3, 4]] WHERE id = 10 RETURNING tags",
    "UPDATE acct SET tags = ARRAY[1, 'x'] WHERE id = 10",
    "INSERT INTO tm_det (id, c_int_arr, c_num_arr) VALUES (9000, ARRAY[1.5, -2], "
    "ARRAY[[1.555], [NULL]]) RETURNING c_int_arr, c_num_arr",
    "SELECT id FROM tm_det WHERE c_int_arr = ARRAY[2, -2]",
    "DELETE FROM tm_det WHERE id = 9000",
    # -- parameters: typed text, typed binary, untyped text ------------------------------
    P("INSERT INTO acct (id, email, name, pin, born, active) VALUES (%t, %t, %t, %t, %t, %t) "
      "RETURNING id, email, name, pin, born, active",
      (6, f"{MARK}-fay@example.com", f"{MARK} Fay", Int4(MARK_NUMBER + 1), dt.date(1917, 3, 9),
       True)),
    P("INSERT INTO acct (id, email, name, pin, balance, born, tags) VALUES "
      "(%b, %b, %b, %b, %b, %b, %b) RETURNING id, email, pin, balance, born, tags",
      (7, f"{MARK}-gus@example.com", f"{MARK} Gus", Int4(7), Decimal("12.34"),
       dt.date(1917, 3, 8), [f"{MARK}-g", "h"])),
    P("INSERT INTO acct (id, email, pin, born) VALUES (%t, %t, %t, %t) RETURNING pin, born",
      (8, f"{MARK}-hal@example.com", str(MARK_NUMBER), MARK_DAY)),
    P("INSERT INTO acct (id, email, pin) VALUES (%t, %t::text, %t::integer)",
      (9, f"{MARK}-ivy@example.com", "11")),
    # -- errors PostgreSQL reports (compared with their texts) ---------------------------
    f"INSERT INTO acct (id, email) VALUES (30, '{ANN}')",
    "INSERT INTO acct (id, email, code) VALUES (31, 'x@example.com', 'ZQM-001')",
    "INSERT INTO acct (id, name) VALUES (32, 'no email')",
    "INSERT INTO acct (id, email, pin) VALUES (33, 'y@example.com', 'many')",
    "INSERT INTO acct (id, email, code) VALUES (34, 'z@example.com', 'much too long for twenty')",
    # -- other tables ----------------------------------------------------------------------
    f"INSERT INTO txn VALUES (100, '{ANN}', 10.5, '{MARK} memo', '{MARK_DAY} 10:00+00', 1), "
    f"(101, '{ANN}', {MARK_AMOUNT}, NULL, '2020-01-01 00:00+02', 2), "
    f"(102, '{BOB}', 10.5, 'b', NULL, 3), (103, NULL, NULL, NULL, NULL, 4)",
    f"INSERT INTO txn VALUES (104, 'nobody-{MARK}@example.com', 1, 'm', NULL, 5)",
    P("INSERT INTO txn (id, acct_email, amount, at, qty) VALUES (%t, %t, %t, %t, %t)",
      (105, CY, Decimal("-1.00"), dt.datetime(2021, 5, 6, 7, 8, 9, tzinfo=dt.UTC), 6),
      prepare=True),
    P("INSERT INTO txn (id, acct_email, amount, at, qty) VALUES (%t, %t, %t, %t, %t)",
      (106, BOB, Decimal("2"), None, 7), prepare=True),
    f"INSERT INTO contact VALUES (200, '{ANN}', '{MARK}-555-1', 'home'), "
    f"(201, 'zed@example.com', NULL, 'work'), (202, NULL, '555-3', 'home'), "
    f"(203, '{BOB}', '555-1', 'work')",
    f"INSERT INTO stage VALUES (300, '{ANN}', 1), (301, '{MARK}-new@example.com', "
    f"{MARK_NUMBER}), (302, '{CY}', NULL)",
    f"INSERT INTO outsider VALUES (400, '{ANN}')",
    "INSERT INTO contact (id, email, kind) SELECT id + 1000, email, 'copied' FROM acct "
    "WHERE pin = 7 RETURNING id, email",
    # -- COPY FROM STDIN (text, csv) -------------------------------------------------------
    P("COPY contact (id, email, phone, kind) FROM STDIN",
      copy_in=f"210\t{MARK}-copy@example.com\t{MARK}-555-9\tcopy\n211\t\\N\t\\N\tcopy\n"),
    P("COPY contact FROM STDIN WITH (FORMAT csv)",
      copy_in=f'212,{ANN},"{MARK}, 555",csv\n213,,,csv\n'),
    P("COPY stage (id, email, pin) FROM STDIN WITH (FORMAT csv)",
      copy_in=f"303,{MARK}-csv@example.com,{MARK_NUMBER}\n"),
    P("COPY stage (id, pin) FROM STDIN", copy_in="304\tnot-a-number\n",
      known=(Known("E20", frozenset({"psql"})),)),
]  # fmt: skip

READS: list[str | Stmt] = [
    "SELECT * FROM acct ORDER BY id",
    f"SELECT id, email FROM acct WHERE email = '{ANN}'",
    f"SELECT id FROM acct WHERE pin = {MARK_NUMBER}",
    f"SELECT id, pin FROM acct WHERE pin IN (7, {MARK_NUMBER}, -{MARK_NUMBER}) ORDER BY id",
    "SELECT id FROM acct WHERE born IS NULL ORDER BY id",
    f"SELECT id FROM acct WHERE email <> '{ANN}' ORDER BY id",
    f"SELECT id FROM acct WHERE born IS NOT DISTINCT FROM '{MARK_DAY}' ORDER BY id",
    f"SELECT id FROM acct WHERE (email, pin) = ('{ANN}', {MARK_NUMBER})",
    "SELECT id FROM acct WHERE active = true ORDER BY id",
    "SELECT id FROM acct WHERE code IS NOT NULL AND name IS NULL ORDER BY id",
    P("SELECT id, name FROM acct WHERE pin = %t ORDER BY id", (Int4(7),)),
    P("SELECT id FROM acct WHERE email = %t", (BOB,)),
    P("SELECT id, code FROM acct WHERE code = %b", ("ZQM-002",)),
    P("SELECT id FROM acct WHERE born = %t ORDER BY id", (dt.date(1917, 3, 8),), prepare=True),
    P("SELECT id FROM acct WHERE born = %t ORDER BY id", (dt.date(1917, 3, 9),), prepare=True),
    "SELECT count(*), count(name), count(balance), count(DISTINCT pin), count(tags) FROM acct",
    "SELECT pin, count(*) FROM acct GROUP BY pin ORDER BY min(id)",
    "SELECT active, born, count(*) FROM acct GROUP BY active, born ORDER BY min(id)",
    "SELECT count(*) FROM (SELECT DISTINCT pin FROM acct) s",
    "SELECT DISTINCT born FROM acct WHERE id IN (1, 7)",
    "SELECT pin, count(*) FROM acct GROUP BY pin HAVING count(*) > 1",
    # joins on deterministic columns sharing a key (FK scope, key group)
    "SELECT a.id, t.id, t.amount, t.memo FROM acct a JOIN txn t ON t.acct_email = a.email "
    "ORDER BY t.id",
    "SELECT a.id, c.id, c.phone FROM acct a JOIN contact c ON c.email = a.email "
    "ORDER BY a.id, c.id",
    "SELECT c.id, a.name FROM contact c LEFT JOIN acct a USING (email) ORDER BY c.id",
    "SELECT a.id, s.pin FROM acct a JOIN stage s ON s.pin = a.pin ORDER BY a.id, s.id",
    "SELECT t.acct_email, count(*), sum(t.qty) FROM txn t GROUP BY t.acct_email "
    "ORDER BY min(t.id)",
    "SELECT t.id, t.amount FROM txn t WHERE t.amount = 10.5 ORDER BY 1",
    # subqueries, CTEs, set operations, views
    "SELECT id FROM acct WHERE email IN (SELECT acct_email FROM txn) ORDER BY id",
    "SELECT id FROM acct a WHERE EXISTS (SELECT 1 FROM txn t WHERE t.acct_email = a.email) "
    "ORDER BY id",
    "SELECT a.id, (SELECT c.phone FROM contact c WHERE c.id = 200) AS phone FROM acct a "
    "WHERE a.id < 3 ORDER BY a.id",
    "SELECT * FROM (SELECT id, email, pin FROM acct WHERE pin = 7) s ORDER BY id",
    "WITH act AS (SELECT id, email, balance FROM acct WHERE active = true) "
    "SELECT * FROM act ORDER BY id",
    "WITH hit AS (SELECT email FROM contact WHERE kind = 'home') SELECT a.id, a.name "
    "FROM acct a JOIN hit USING (email) ORDER BY a.id",
    "SELECT email FROM acct WHERE id = 1 UNION SELECT email FROM contact WHERE id = 200",
    "SELECT id, email FROM acct UNION ALL SELECT id, email FROM contact ORDER BY 1",
    "SELECT email FROM acct INTERSECT SELECT email FROM contact",
    "SELECT * FROM acct_active ORDER BY id",
    f"SELECT id, name FROM acct_active WHERE email = '{ANN}'",
    "CREATE VIEW acct_txn AS SELECT a.id, a.email, a.name, t.id AS txn_id, t.amount "
    "FROM acct a JOIN txn t ON t.acct_email = a.email",
    f"SELECT txn_id, name, amount FROM acct_txn WHERE email = '{ANN}' ORDER BY txn_id",
    P("SELECT id FROM acct WHERE pin IN (%t, %t) ORDER BY id", (Int4(7), Int4(MARK_NUMBER))),
    P("SELECT id FROM acct WHERE email IN (SELECT email FROM contact WHERE phone IS NOT NULL) "
      "AND pin = %b ORDER BY id", (Int4(MARK_NUMBER),)),
    "SELECT a.id, count(t.id) FROM acct a LEFT JOIN txn t ON t.acct_email = a.email "
    "GROUP BY a.id ORDER BY a.id",
    "SELECT c.kind, count(DISTINCT c.email) FROM contact c GROUP BY c.kind ORDER BY 1",
    "SELECT * FROM acct a JOIN LATERAL (SELECT t.amount FROM txn t "
    "WHERE t.acct_email = a.email ORDER BY t.id LIMIT 1) x ON true ORDER BY a.id",
    # prepared at the SQL level (no encrypted parameter), and at the protocol level
    "PREPARE by_id (int) AS SELECT id, email, pin, tags FROM acct WHERE id = $1",
    "EXECUTE by_id(1)",
    "EXECUTE by_id(2)",
    "DEALLOCATE by_id",
    P("SELECT id, email, balance FROM acct WHERE pin = %t ORDER BY id", (Int4(MARK_NUMBER),),
      prepare=True),
    P("SELECT id, email, balance FROM acct WHERE pin = %t ORDER BY id", (Int4(7),), prepare=True),
    # COPY TO STDOUT
    "COPY acct (id, email, pin, born, tags) TO STDOUT",
    "COPY acct TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT id, email, name, balance FROM acct WHERE pin = 7 ORDER BY id) TO STDOUT",
    "COPY (SELECT t.id, a.name FROM txn t JOIN acct a ON a.email = t.acct_email ORDER BY 1) "
    "TO STDOUT WITH (FORMAT csv)",
]  # fmt: skip

CHANGES: list[str | Stmt] = [
    # UPDATE / DELETE by value
    f"UPDATE acct SET name = '{MARK} renamed', balance = 99.99 WHERE email = '{CY}' "
    "RETURNING id, name, balance",
    f"UPDATE acct SET (pin, born) = ({MARK_NUMBER + 2}, '2001-01-01') WHERE id = 3",
    P("UPDATE acct SET name = %t WHERE pin = %t RETURNING id, name", (f"{MARK} P", Int4(11))),
    "UPDATE acct SET tags = NULL WHERE code IS NULL AND id > 4",
    f"UPDATE txn SET memo = '{MARK} paid', amount = 11 WHERE acct_email = '{ANN}' "
    "AND amount = 10.5 RETURNING id, memo, amount",
    "UPDATE acct SET pin = 12345 WHERE id = 999",
    "DELETE FROM contact WHERE email = 'zed@example.com' RETURNING id, phone",
    "DELETE FROM contact WHERE email IN ('nobody@example.com', 'x') RETURNING id",
    "DELETE FROM contact WHERE email IS NULL AND id > 210 RETURNING id, kind",
    f"DELETE FROM acct WHERE email = '{BOB}'",  # referenced by txn: 23503
    P("UPDATE acct SET balance = %b, tags = %b, active = %b WHERE code = %b "
      "RETURNING id, balance, tags, active",
      (Decimal("-73645.91"), [f"{MARK}-bin", None], False, "ZQM-002")),
    "WITH moved AS (UPDATE acct SET note = 'touched' WHERE pin = 7 RETURNING id, email, name) "
    "SELECT * FROM moved ORDER BY id",
    "UPDATE txn t SET qty = 70 FROM acct a WHERE a.email = t.acct_email AND a.pin = 7 "
    "RETURNING t.id, t.acct_email, t.qty",
    "DELETE FROM contact c USING acct a WHERE c.email = a.email AND a.pin = 7 "
    "AND c.kind = 'copied' RETURNING c.id, c.email",
    # ON CONFLICT on UNIQUE deterministic columns
    f"INSERT INTO acct (id, email, code, pin) VALUES (20, '{MARK}-ned@example.com', 'ZQM-001', 1) "
    "ON CONFLICT (code) DO NOTHING",
    f"INSERT INTO acct (id, email, code, pin) VALUES (21, '{MARK}-ole@example.com', 'ZQM-001', 2) "
    "ON CONFLICT (code) DO UPDATE SET pin = EXCLUDED.pin, name = 'upserted' "
    "RETURNING id, email, code, pin, name",
    f"INSERT INTO acct (id, email, note) VALUES (22, '{ANN}', 'dup') ON CONFLICT (email) "
    "DO UPDATE SET note = EXCLUDED.note RETURNING id, note",
    P("INSERT INTO acct (id, email, code) VALUES (%t, %t, %t) ON CONFLICT (code) DO NOTHING "
      "RETURNING id", (23, f"{MARK}-pat@example.com", "ZQM-023")),
    # MERGE from a table sharing the keys
    "MERGE INTO acct a USING stage s ON a.email = s.email WHEN MATCHED AND s.pin IS NOT NULL "
    "THEN UPDATE SET pin = s.pin WHEN NOT MATCHED THEN INSERT (id, email, pin) "
    "VALUES (s.id, s.email, s.pin)",
    # E22: a VALUES list's columns count as plain columns (refused), rolled back on both sides
    "BEGIN",
    P(f"MERGE INTO acct a USING (VALUES (50, '{MARK}-val@example.com', 50)) v(id, email, pin) "
      "ON a.email = v.email WHEN NOT MATCHED THEN INSERT (id, email, pin) "
      "VALUES (v.id, v.email, v.pin)", known=(Known("E22"),)),
    P("SELECT a.id FROM acct a JOIN (VALUES ('zqmark-ann@example.com')) v(e) ON a.email = v.e",
      known=(Known("E22"),)),
    "ROLLBACK",
    f"MERGE INTO contact c USING acct a ON c.email = a.email WHEN MATCHED AND a.pin = 7 "
    f"THEN UPDATE SET phone = '{MARK}-merged' WHEN MATCHED THEN DO NOTHING",
    "SELECT * FROM acct ORDER BY id",
    "SELECT * FROM contact ORDER BY id",
    "SELECT * FROM txn ORDER BY id",
    # transactions with savepoints
    "BEGIN",
    f"INSERT INTO acct (id, email, pin) VALUES (40, '{MARK}-tx@example.com', 40)",
    "SAVEPOINT s1",
    f"UPDATE acct SET name = '{MARK} in tx' WHERE pin = 40",
    f"INSERT INTO acct (id, email) VALUES (41, '{ANN}')",
    "SELECT 1",
    "ROLLBACK TO SAVEPOINT s1",
    "SELECT id, email, name, pin FROM acct WHERE pin = 40",
    "SAVEPOINT s2",
    "DELETE FROM acct WHERE pin = 40 RETURNING id",
    "RELEASE SAVEPOINT s2",
    "COMMIT",
    "SELECT id FROM acct WHERE id = 40",
    "BEGIN",
    f"UPDATE acct SET balance = 1 WHERE email = '{ANN}'",
    "ROLLBACK",
    f"SELECT balance FROM acct WHERE email = '{ANN}'",
]  # fmt: skip


def relational_corpus() -> list[Stmt]:
    return [s if isinstance(s, Stmt) else Stmt(s) for s in [*SCHEMA, *WRITES, *READS, *CHANGES]]
