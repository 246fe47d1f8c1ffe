"""Statements pgcloak refuses on encrypted columns, for the encryption differential.

Each is valid SQL that plain PostgreSQL runs; through pgcloak it must fail with
the documented refusal (SQLSTATE 0A000, `pgcloak cannot <verb> column "<name>"
encrypted in <mode> mode...`, docs/encryption-design.md) and leave the session
and the data exactly as a failed statement would. The plain side therefore runs
a statement that fails with the same SQLSTATE (`plain_sql`), and the statements
after each refusal (reads of the tables, a transaction block the refusal aborts)
compare the states. Tables: tests/encrypt_corpus.py and tests/cloak_corpus_types.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloak_corpus import Stmt
from encrypt_corpus import ANN, MARK, MARK_NUMBER
from encrypt_support import DET, RND
from psycopg.types.numeric import Int4

# What the plain side runs for a refused statement: PostgreSQL's own 0A000 ("FOR UPDATE
# is not allowed with aggregate functions"), raised at parse analysis; nothing done.
PLAIN_FAILURE = "SELECT count(*) FROM pg_catalog.pg_class FOR UPDATE"
PLAIN_FAILURE_PARAM = "SELECT count(*) FROM pg_catalog.pg_class WHERE %t IS NOT NULL FOR UPDATE"


@dataclass(frozen=True)
class Refusal:
    """The refusal a statement must get: words of the message, the column and its mode."""

    verb: str
    column: str | None  # None: the message names no column (e.g. SQL-level PREPARE)
    mode: str | None

    def matches(self, message: str) -> bool:
        named = self.column is None or f'column "{self.column}" encrypted in {self.mode} mode' in (
            message
        )
        return message.startswith("pgcloak ") and self.verb in message and named


# (statement, verb, column, mode)
_ACCT: list[tuple[str, str, str | None, str | None]] = [
    ("SELECT email FROM acct ORDER BY email", "order by", "email", DET),
    ("SELECT id, name FROM acct ORDER BY 2", "order by", "name", RND),
    ("SELECT id FROM acct ORDER BY born DESC NULLS LAST", "order by", "born", DET),
    ("SELECT rank() OVER (ORDER BY pin) FROM acct", "order by", "pin", DET),
    ("SELECT id FROM acct WHERE pin > 7", "compare ranges of", "pin", DET),
    ("SELECT id FROM acct WHERE born BETWEEN '1900-01-01' AND '2000-01-01'",
     "compare ranges of", "born", DET),
    ("SELECT id FROM acct WHERE balance < 100", "compare ranges of", "balance", RND),
    (f"SELECT id FROM acct WHERE email LIKE '{MARK}%'", "pattern-match", "email", DET),
    ("SELECT id FROM acct WHERE name ILIKE 'c%'", "pattern-match", "name", RND),
    ("SELECT id FROM acct WHERE email ~ '^z'", "pattern-match", "email", DET),
    ("SELECT pin + 1 FROM acct", "do arithmetic on", "pin", DET),
    ("SELECT balance * 2 FROM acct", "do arithmetic on", "balance", RND),
    ("SELECT lower(email) FROM acct", "apply functions to", "email", DET),
    ("SELECT length(name) FROM acct", "apply functions to", "name", RND),
    ("SELECT array_length(tags, 1) FROM acct", "apply functions to", "tags", RND),
    ("SELECT sum(balance) FROM acct", "aggregate", "balance", RND),
    ("SELECT max(born) FROM acct", "aggregate", "born", DET),
    ("SELECT avg(pin) FROM acct", "aggregate", "pin", DET),
    ("SELECT string_agg(email, ',') FROM acct", "aggregate", "email", DET),
    ("SELECT pin::text FROM acct", "cast", "pin", DET),
    (f"SELECT id FROM acct WHERE name = '{MARK} Ann'", "test equality of", "name", RND),
    ("SELECT id FROM acct WHERE balance IN (1, 2)", "test equality of", "balance", RND),
    ("SELECT name, count(*) FROM acct GROUP BY name", "group by", "name", RND),
    ("SELECT DISTINCT balance FROM acct", "select DISTINCT", "balance", RND),
    ("SELECT count(DISTINCT name) FROM acct", "count DISTINCT values of", "name", RND),
    ("SELECT a.id FROM acct a JOIN outsider o ON o.email = a.email", "under another key",
     "email", DET),
    ("SELECT email FROM acct UNION SELECT email FROM outsider", "under another key",
     "email", DET),
    ("SELECT id FROM acct WHERE email = note", "not encrypted", "email", DET),
    ("SELECT id FROM acct WHERE pin = id", "not encrypted", "pin", DET),
    ("SELECT a.id FROM acct a JOIN stage s ON s.pin = a.email", "under another key", "pin",
     DET),
    ("SELECT name FROM acct UNION SELECT phone FROM contact", "under another key", "name",
     RND),
    (f"UPDATE acct SET pin = pin + 1 WHERE email = '{ANN}'", "store an expression in", "pin",
     DET),
    ("UPDATE acct SET note = email WHERE id = 1", "not encrypted", "email", DET),
    ("UPDATE acct SET name = upper(name)", "store an expression in", "name", RND),
    ("UPDATE acct SET balance = 0 WHERE balance > 10", "compare ranges of", "balance", RND),
    ("DELETE FROM acct WHERE born < '1950-01-01'", "compare ranges of", "born", DET),
    (f"DELETE FROM acct WHERE name = '{MARK} Ann'", "test equality of", "name", RND),
    ("INSERT INTO acct (id, email) VALUES (90, lower('X@EXAMPLE.COM'))",
     "store an expression in", "email", DET),
    ("INSERT INTO outsider (id, email) SELECT id + 500, email FROM acct",
     "under another key", "email", DET),
    ("INSERT INTO contact (id, phone) SELECT id + 500, name FROM acct", "under another key",
     "name", RND),
    ("INSERT INTO stage (id, pin) SELECT id + 500, id FROM acct", "store an expression in",
     "pin", DET),
    ("SELECT t.id FROM txn t WHERE t.at > now()", "compare ranges of", "at", DET),
    ("SELECT id FROM txn ORDER BY amount", "order by", "amount", DET),
    ("SELECT sum(amount) FROM txn", "aggregate", "amount", DET),
    ("SELECT memo, count(*) FROM txn GROUP BY memo", "group by", "memo", RND),
    ("SELECT coalesce(phone, 'none') FROM contact", "apply functions to", "phone", RND),
    ("SELECT a FROM acct a", "whole-row reference", None, None),
    ("PREPARE by_pin (int) AS SELECT id FROM acct WHERE pin = $1", "PREPARE", None, None),
]  # fmt: skip

_REFUSED_STATEMENTS: list[tuple[str, str, str | None, str | None]] = [
    *_ACCT,
    # json operators (json has no equality at all: PostgreSQL's own 42883, compared as is)
    ("SELECT id FROM tm_det WHERE c_jsonb @> '[]'", "apply operators to", "c_jsonb", DET),
    ("SELECT id FROM tm_det WHERE c_jsonb ->> 'k' = 'x'", "apply operators to", "c_jsonb", DET),
    ("SELECT id FROM tm_det WHERE c_int_arr[1] = 1", "subscript", "c_int_arr", DET),
    ("SELECT id FROM tm_det WHERE c_text_arr && '{a}'", "apply operators to", "c_text_arr", DET),
    ("SELECT id FROM tm_det WHERE c_ts < now()", "compare ranges of", "c_ts", DET),
    ("SELECT id FROM tm_det WHERE c_text = c_varchar", "under another key", "c_text", DET),
    ("SELECT max(c_uuid) FROM tm_det", "aggregate", "c_uuid", DET),
    ("SELECT id FROM tm_rnd WHERE c_bool", "as a condition", "c_bool", RND),
    ("SELECT id FROM tm_rnd WHERE c_int4 = 1", "test equality of", "c_int4", RND),
    ("SELECT DISTINCT c_date FROM tm_rnd", "select DISTINCT", "c_date", RND),
    ("SELECT c_bytea || '\\x00' FROM tm_rnd", "apply operators to", "c_bytea", RND),
    ("SELECT c_interval + '1 day' FROM tm_det", "do arithmetic on", "c_interval", DET),
    ("SELECT id FROM tm_det ORDER BY c_numeric", "order by", "c_numeric", DET),
    ("SELECT id FROM tm_rnd ORDER BY c_double", "order by", "c_double", RND),
]

# Refused inside transaction blocks (refusal_corpus)
_IN_BLOCKS: list[tuple[str, str, str | None, str | None]] = [
    ("SELECT id FROM acct ORDER BY pin", "order by", "pin", DET),
    ("UPDATE acct SET pin = pin + 1", "store an expression in", "pin", DET),
]

REFUSALS: dict[str, Refusal] = {
    s: Refusal(v, c, m) for s, v, c, m in [*_REFUSED_STATEMENTS, *_IN_BLOCKS]
}


# Refused statements with one parameter (the plain side binds it too).
_WITH_PARAMETER: list[tuple[str, object, str, str | None, str | None]] = [
    ("SELECT id FROM acct WHERE pin >= %t", Int4(7), "compare ranges of", "pin", DET),
    ("SELECT id FROM acct WHERE name = %t", f"{MARK} Ann", "test equality of", "name", RND),
    ("SELECT id FROM acct WHERE email = ANY(%t)", [ANN], "array", "email", DET),
    ("UPDATE acct SET balance = balance + %t", Int4(1), "store an expression in", "balance",
     RND),
]  # fmt: skip

REFUSALS.update({s: Refusal(v, c, m) for s, _p, v, c, m in _WITH_PARAMETER})


def _refused(sql: str, params: tuple[object, ...] | None = None) -> Stmt:
    plain = PLAIN_FAILURE if params is None else PLAIN_FAILURE_PARAM
    return Stmt(sql, params, plain_sql=plain)


def refusal_corpus() -> list[Stmt]:
    """Each refusal on its own (then the tables are read again), a block of them inside a
    transaction (the first aborts it), and refused statements with parameters."""
    out: list[Stmt] = []
    reads = [Stmt("SELECT * FROM acct ORDER BY id"), Stmt("SELECT * FROM txn ORDER BY id")]
    for i, (sql, *_rest) in enumerate(_REFUSED_STATEMENTS):
        out.append(_refused(sql))
        if i % 10 == 9:
            out += reads
    out += [_refused(sql, (value,)) for sql, value, *_rest in _WITH_PARAMETER]
    out.append(Stmt("SELECT id FROM tm_det WHERE c_json = '[1, 2]'"))
    out += reads
    out += [
        Stmt("BEGIN"),
        Stmt(f"UPDATE acct SET note = 'in block' WHERE pin = {MARK_NUMBER}"),
        _refused(_IN_BLOCKS[0][0]),
        Stmt("SELECT 1"),
        Stmt("ROLLBACK"),
        Stmt("BEGIN"),
        Stmt("SAVEPOINT before"),
        _refused(_IN_BLOCKS[1][0]),
        Stmt("ROLLBACK TO SAVEPOINT before"),
        Stmt("UPDATE acct SET note = 'after refusal' WHERE id = 1 RETURNING id, email, note"),
        Stmt("COMMIT"),
        *reads,
    ]
    return out
