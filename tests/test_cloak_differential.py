"""Acceptance test of cloaking: through pgcloak, a cloaked database behaves like a plain one.

The corpus (tests/cloak_corpus.py, 300+ statements) runs three times, each time
on a fresh pair of databases: A plain (semantic names, directly on `pg`) and B
cloaked (through a cloaking proxy in front of `pg_logged`, which logs every
statement). Clients: psycopg in autocommit (extended protocol, parameters,
some prepare=True), psycopg with every statement prepared and inside
transactions with savepoints, and psql (simple protocol, one script). Rows,
column names, command tags, SQLSTATEs, transaction status and the text of common
errors must be identical, and nothing a client sees may contain a physical name.

Afterwards the B databases are scanned for semantic names: pg_catalog, `pg_dump
--schema-only` and the server log must not contain any. Finally a few
unsupported constructs must be refused with a clear error, leaving the database
unchanged. Known proxy bugs are xfail(strict=True) tests pointing at
docs/known-issues.md.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from cloak_corpus import ALL_SEMANTIC_NAMES, Stmt, full_corpus
from cloak_runner import PHYSICAL, Outcome, PsycopgClient, Run, drive, psql_script, run_psql
from helpers import PgServer, ProxyLauncher, ProxyProcess
from pglast import keywords

from pgcloak.crypto.keys import MasterKey
from pgcloak.registry.install import install

CORPUS = full_corpus()
BUGS = "see docs/known-issues.md"


@dataclass
class Runs:
    """All runs, plus what the leak scans need."""

    upstream: PgServer  # where the B databases live (statement logging on)
    runs: dict[str, Run]
    log_offset: int
    baseline_words: set[str]
    object_names: set[str]


# -- running the corpus ----------------------------------------------------------------


def _new_cloaked_db(server: PgServer, master_key: str) -> str:
    name = server.create_database()
    with psycopg.connect(server.dsn(name), autocommit=True) as conn:
        install(conn, MasterKey.from_base64(master_key))
    return name


_USER = "c.oid >= 16384 AND c.relnamespace::regnamespace::text NOT IN ('pg_toast', 'pgcloak')"
# Names of the objects in a plain database: tables, views, indexes, sequences, their
# columns and constraints.
_OBJECT_NAMES_SQL = (
    f"SELECT c.relname::text FROM pg_class c WHERE {_USER} AND c.relkind <> 'c' "
    "UNION SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    f"WHERE {_USER} AND c.relkind IN ('r', 'v', 'm', 'p') AND a.attnum > 0 "
    "AND NOT a.attisdropped "
    "UNION SELECT conname::text FROM pg_constraint WHERE oid >= 16384"
)


def _psycopg_run(run: Run, pg: PgServer, proxy: ProxyProcess, names: set[str] | None) -> None:
    mode, wrap = ("prepared", 20) if run.client == "psycopg-transactions" else ("autocommit", 0)
    a = PsycopgClient(lambda: pg.connect(run.db_a), mode)
    b = PsycopgClient(lambda: proxy.connect(run.db_b), mode)

    def collect(stmt: Stmt, out: Outcome) -> None:
        # Every semantic name that ever exists in A, implicit and later dropped ones
        # too: after each successful DDL, read A's catalog.
        tag = (out.tag or "").split(" ")[0]
        if names is not None and out.sqlstate is None and tag in ("CREATE", "ALTER"):
            names.update(r[0] for r in a.conn.execute(_OBJECT_NAMES_SQL))

    try:
        run.steps = drive(a, b, CORPUS, wrap, collect)
    finally:
        a.close()
        b.close()
    run.statements = len(CORPUS)


def _psql_run(run: Run, pg: PgServer, proxy: ProxyProcess) -> None:
    with pg.connect() as conn:
        cur = psycopg.ClientCursor(conn)
        script = psql_script(
            CORPUS, lambda s: s.sql if s.params is None else cur.mogrify(s.sql, s.params)
        )
    out_a = run_psql(pg.host, pg.port, run.db_a, script, len(CORPUS))
    out_b = run_psql(proxy.host, proxy.port, run.db_b, script, len(CORPUS))
    for stmt, a, b in zip(CORPUS, out_a, out_b, strict=True):
        run.steps.append((stmt, _psql_outcome(a), _psql_outcome(b)))
    run.statements = len(CORPUS)


def _psql_outcome(segment: str) -> Outcome:
    """psql's output for one statement; its final line is `sqlstate <code>`."""
    state = re.search(r"^sqlstate (\S+)$", segment, re.MULTILINE)
    code = state.group(1) if state else "missing"
    return Outcome(rows=(segment,), sqlstate=None if code == "00000" else code, seen=segment)


CLIENTS = ("psycopg-autocommit", "psycopg-transactions", "psql")


@pytest.fixture(scope="module")
def runs(
    pg: PgServer, pg_logged: PgServer, master_key: str, launcher: ProxyLauncher
) -> Iterator[Runs]:
    """The three runs (A on `pg`, B through a cloaking proxy on `pg_logged`)."""
    proxy = launcher.start(pg_logged.upstream_url(), env={"PGCLOAK_MASTER_KEY": master_key})
    made: list[Run] = []
    try:
        for client in CLIENTS:
            made.append(Run(client, pg.create_database(), _new_cloaked_db(pg_logged, master_key)))
        baseline = _baseline_words(pg_logged, made[0].db_b)
        # The log from here on holds only what the proxy sent (`pgcloak init` is before).
        offset = pg_logged.log_size()
        names: set[str] = set()
        for run in made:
            if run.client == "psql":
                _psql_run(run, pg, proxy)
            else:
                _psycopg_run(run, pg, proxy, names if run is made[0] else None)
        yield Runs(pg_logged, {r.client: r for r in made}, offset, baseline, names)
    finally:
        for run in made:
            pg.drop_database(run.db_a)
            pg_logged.drop_database(run.db_b)


# -- where semantic names must not appear ------------------------------------------------

# Names the corpus uses for objects pgcloak does not cloak by design: they reach the
# server as written, so they may appear in its catalog and log.
EXCLUDED = {
    "sales",  # a schema: schemas are not cloaked (docs/cloaking-design.md §3)
}
_KEYWORDS = set().union(
    keywords.RESERVED_KEYWORDS, keywords.UNRESERVED_KEYWORDS, keywords.COL_NAME_KEYWORDS,
    keywords.TYPE_FUNC_NAME_KEYWORDS,
)  # fmt: skip


def _baseline_words(server: PgServer, db: str) -> set[str]:
    """Names a cloaked database holds before any client statement (pg_catalog, registry)."""
    rows = server.execute(
        "SELECT relname::text FROM pg_class UNION SELECT attname::text FROM pg_attribute "
        "UNION SELECT proname::text FROM pg_proc UNION SELECT typname::text FROM pg_type "
        "UNION SELECT nspname::text FROM pg_namespace UNION SELECT conname::text "
        "FROM pg_constraint",
        dbname=db,
    )
    return {r[0].lower() for r in rows}


@dataclass(frozen=True)
class Names:
    """The corpus's semantic names, to look for in what the server holds and logs."""

    words: frozenset[str]  # plain identifiers, matched as whole words in any case
    quoted: tuple[str, ...]  # identifiers that need quotes, matched exactly

    def hits(self, texts: list[str], where: str) -> list[str]:
        out = []
        for text in texts:
            found = [m for m in _WORD.finditer(text) if m.group(0).lower() in self.words]
            found += [m for q in self.quoted for m in re.finditer(re.escape(q), text)]
            for m in found:
                lo = max(0, m.start() - 60)
                out.append(f"{where}: {m.group(0)!r} in ...{text[lo : m.end() + 60]!r}")
        return out


_WORD = re.compile(r"[\w$]+")


def _semantic_names(runs: Runs) -> Names:
    """Every name the corpus gave an object or alias, minus EXCLUDED, keywords, short ones
    and names a fresh cloaked database already holds (pg_catalog, the registry)."""
    names = sorted(
        n for n in runs.object_names | set(ALL_SEMANTIC_NAMES)
        if n not in EXCLUDED and len(n) >= 3 and n.lower() not in _KEYWORDS
        and n.lower() not in runs.baseline_words
    )  # fmt: skip
    assert len(names) > 100, names
    plain = frozenset(n for n in names if re.fullmatch(r"[a-z_][a-z0-9_$]*", n))
    return Names(plain, tuple(n for n in names if n not in plain))


CATALOG_SQL = {
    "pg_class.relname": "SELECT relname::text FROM pg_class",
    "pg_attribute.attname": "SELECT attname::text FROM pg_attribute",
    "pg_type.typname": "SELECT typname::text FROM pg_type",
    "pg_namespace.nspname": "SELECT nspname::text FROM pg_namespace",
    "pg_constraint": "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint",
    "pg_index": "SELECT pg_get_indexdef(indexrelid) FROM pg_index",
    "pg_description": "SELECT description FROM pg_description WHERE objoid >= 16384",
    "pg_sequence": "SELECT seqrelid::regclass::text FROM pg_sequence",
    "pg_views": "SELECT viewname || ' ' || definition FROM pg_views "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    "pg_matviews": "SELECT matviewname || ' ' || definition FROM pg_matviews",
    "pg_get_viewdef": "SELECT pg_get_viewdef(oid) FROM pg_class WHERE relkind IN ('v', 'm') "
    "AND oid >= 16384",
    "pg_rewrite": "SELECT ev_action::text FROM pg_rewrite WHERE oid >= 16384",
    "pg_attrdef": "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef",
    "pg_trigger": "SELECT tgname::text FROM pg_trigger",
    "pg_proc": "SELECT proname || ' ' || prosrc FROM pg_proc WHERE oid >= 16384",
    "pg_statistic_ext": "SELECT stxname::text FROM pg_statistic_ext",
}


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_differential(runs: Runs, client: str) -> None:
    run = runs.runs[client]
    assert run.statements >= 300
    mismatches = run.mismatches()
    assert not mismatches, f"{len(mismatches)} of {len(run.steps)} steps differ:\n" + "\n".join(
        mismatches
    )


@pytest.mark.parametrize("bug", sorted({k.bug for s in CORPUS for k in s.known}))
@pytest.mark.xfail(strict=True, reason=BUGS)
def test_known_bug(runs: Runs, bug: str) -> None:
    """The statements KNOWN to differ because of `bug` (XPASS: fixed, drop it from KNOWN)."""
    mismatches = [m for run in runs.runs.values() for m in run.mismatches(bug)]
    assert not mismatches, "\n".join(mismatches)


def test_corpus_covers_errors_and_parameters(runs: Runs) -> None:
    steps = runs.runs["psycopg-autocommit"].steps
    states = {a.sqlstate for _, a, _ in steps if a.sqlstate}
    assert {"23505", "23503", "23514", "23502", "42703", "42P01", "42P07", "25P02",
            "26000", "2BP01"} <= states  # fmt: skip
    assert sum(1 for s in CORPUS if s.params is not None) >= 10
    assert sum(1 for s in CORPUS if s.prepare) >= 4
    assert sum(1 for s in CORPUS if s.explain) >= 5


def _catalog_texts(server: PgServer, db: str) -> list[str]:
    texts: list[str] = []
    for where, query in CATALOG_SQL.items():
        texts += [f"{where}: {r[0]}" for r in server.execute(query, dbname=db) if r[0] is not None]
    return texts


def _schema_dump(server: PgServer, db: str) -> list[str]:
    argv = ["pg_dump", "--schema-only", "-h", server.host, "-p", str(server.port), "-U",
            "postgres", db]  # fmt: skip
    dump = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "CREATE TABLE" in dump
    return dump.splitlines()


@pytest.mark.parametrize("client", CLIENTS)
def test_no_semantic_name_in_catalog(pg: PgServer, runs: Runs, client: str) -> None:
    names = _semantic_names(runs)
    run = runs.runs[client]
    # The same scan finds the names in the plain database: it would see a leak.
    assert len(names.hits(_catalog_texts(pg, run.db_a), "plain")) > 100
    found = names.hits(_catalog_texts(runs.upstream, run.db_b), "cloaked")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("client", CLIENTS)
def test_no_semantic_name_in_pg_dump(pg: PgServer, runs: Runs, client: str) -> None:
    names = _semantic_names(runs)
    run = runs.runs[client]
    assert len(names.hits(_schema_dump(pg, run.db_a), "plain")) > 100
    found = names.hits(_schema_dump(runs.upstream, run.db_b), "pg_dump")
    assert not found, "\n".join(found)


def test_no_semantic_name_in_server_log(runs: Runs) -> None:
    names = _semantic_names(runs)
    log = runs.upstream.log_since(runs.log_offset)
    assert runs.upstream.log_path is not None and "statement:" in log
    for run in runs.runs.values():  # the log did see the corpus
        assert f"@{run.db_b} " in log
    assert len(log.splitlines()) > 2000
    found = names.hits(log.splitlines(), "server log")
    assert not found, "\n".join(found[:50])


# -- refusals ------------------------------------------------------------------------------

REFUSAL_SETUP = [
    "CREATE TABLE customers (cust_id serial PRIMARY KEY, email text NOT NULL UNIQUE, "
    "full_name text)",
    "CREATE TABLE orders (order_no serial PRIMARY KEY, cust_id int REFERENCES customers)",
    "INSERT INTO customers (email, full_name) VALUES ('ann@example.com', 'Ann'), "
    "('bob@example.com', NULL)",
    "CREATE SCHEMA sales",
    "CREATE TABLE sales.invoices (invoice_id int PRIMARY KEY, cust_id int)",
    "CREATE TABLE cust_parts (cust_id int PRIMARY KEY) PARTITION BY HASH (cust_id)",
]

# Unsupported constructs on cloaked objects: (statement, what the error message must name).
REFUSED = [
    ("CREATE TABLE child_customers (LIKE customers INCLUDING INDEXES)", "LIKE"),
    ("CREATE TABLE part_refs (cust_id int REFERENCES cust_parts)", "partitioned"),
    ("ALTER INDEX customers_pkey ATTACH PARTITION orders_pkey", "ALTER on this object type"),
    ("CREATE FUNCTION count_customers() RETURNS bigint LANGUAGE sql "
     "AS 'SELECT count(*) FROM customers'", "CreateFunctionStmt"),
    ("DO $$BEGIN PERFORM 1 FROM customers; END$$", "DoStmt"),
    ("CREATE POLICY own_rows ON customers USING (true)", "CreatePolicyStmt"),
    ("CREATE TRIGGER no_dups BEFORE UPDATE ON customers FOR EACH ROW "
     "EXECUTE FUNCTION suppress_redundant_updates_trigger()", "CreateTrigStmt"),
    ("CREATE RULE no_ins AS ON INSERT TO customers DO INSTEAD NOTHING", "RuleStmt"),
    ("CLUSTER customers USING customers_pkey", "ClusterStmt"),
    ("ALTER TABLE customers SET SCHEMA sales", "AlterObjectSchemaStmt"),
    ("CREATE STATISTICS cust_stats ON email, full_name FROM customers", "CreateStatsStmt"),
    ("SELECT xmlelement(name customers, email) FROM customers", "XmlExpr"),
    ("SELECT * FROM customers JOIN orders USING (cust_id) AS j", "aliases on JOIN"),
    # Documented: the two cust_id columns live in different schemas, so their physical
    # names differ and USING cannot be rewritten.
    ("SELECT c.cust_id FROM customers c JOIN sales.invoices i USING (cust_id)", "USING/NATURAL"),
    ("SELECT email FROM customers, LATERAL ROWS FROM (generate_series(1, 2)) AS g(n)", "ROWS FROM"),
    ("COPY customers FROM STDIN WITH (FORMAT csv, HEADER match)", "HEADER MATCH"),
]  # fmt: skip

_FINGERPRINT_SQL = """
SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
  SELECT 'class ' || oid::regclass::text || ' ' || relkind::text || ' ' || relfilenode AS x
    FROM pg_class WHERE oid >= 16384
  UNION ALL SELECT 'attr ' || attrelid::regclass::text || '.' || attname || ' '
    || atttypid::regtype::text FROM pg_attribute WHERE attrelid >= 16384 AND attnum > 0
  UNION ALL SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE oid >= 16384
  UNION ALL SELECT 'proc ' || proname FROM pg_proc WHERE oid >= 16384
  UNION ALL SELECT 'rule ' || rulename FROM pg_rewrite WHERE oid >= 16384
  UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE oid >= 16384
  UNION ALL SELECT 'policy ' || polname FROM pg_policy
  UNION ALL SELECT 'statistics ' || stxname FROM pg_statistic_ext
  UNION ALL SELECT 'registry ' || id || ' ' || physical_name || ' ' || encode(name_enc, 'hex')
    FROM pgcloak.objects
) s
"""


@pytest.fixture(scope="module")
def refusal_db(pg: PgServer, master_key: str, cloak_proxy: ProxyProcess) -> Iterator[str]:
    db = _new_cloaked_db(pg, master_key)
    try:
        with cloak_proxy.connect(db) as conn:
            for sql in REFUSAL_SETUP:
                conn.execute(sql.encode())
        yield db
    finally:
        pg.drop_database(db)


def _refusal(conn: psycopg.Connection[Any], sql: str, extended: bool) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info, conn.cursor() as cur:
        if sql.startswith("COPY"):
            with cur.copy(sql.encode()) as copy:
                b"".join(bytes(chunk) for chunk in copy)
        else:
            cur.execute(sql.encode(), binary=extended)  # binary: Parse/Bind/Execute
    return info.value


@pytest.mark.parametrize(("sql", "construct"), REFUSED, ids=[r[1] for r in REFUSED])
def test_refused(
    pg: PgServer, cloak_proxy: ProxyProcess, refusal_db: str, sql: str, construct: str
) -> None:
    before = pg.execute(_FINGERPRINT_SQL, dbname=refusal_db)
    with cloak_proxy.connect(refusal_db) as conn:
        data = conn.execute("SELECT cust_id, email, full_name FROM customers ORDER BY 1").fetchall()
        for extended in (True, False):
            err = _refusal(conn, sql, extended)
            state = err.sqlstate or ""
            message = err.diag.message_primary or ""
            assert state == "0A000" or state.startswith("42"), (state, message)
            assert construct in message, message
            assert not PHYSICAL.search(str(err)), str(err)
        # Inside a transaction the refusal aborts it, exactly like a server error.
        conn.execute("BEGIN")
        _refusal(conn, sql, extended=False)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert (
            conn.execute("SELECT cust_id, email, full_name FROM customers ORDER BY 1").fetchall()
            == data
        )
    assert pg.execute(_FINGERPRINT_SQL, dbname=refusal_db) == before
