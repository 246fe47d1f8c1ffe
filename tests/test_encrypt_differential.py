"""Acceptance test of column encryption: the cloaking differential with encrypted columns.

The corpus (tests/cloak_corpus_types.py: every encryptable type in both modes;
tests/encrypt_corpus.py: a schema whose encrypted columns meet in joins, key groups,
foreign keys, views, ON CONFLICT, MERGE, COPY, prepared statements and
transactions; tests/encrypt_corpus_refusals.py: what pgcloak refuses) runs once per
client, each time on a fresh pair of databases on `pg_logged` (which logs every
statement): A plain, directly; B cloaked and encrypted, through a proxy whose
`[encrypt]` config selects the columns. Clients as in tests/test_cloak_differential.py:
psycopg autocommit (extended protocol, binary results, parameters in text and
binary), psycopg with every statement prepared inside transactions with savepoints,
and psql (simple protocol). What the clients see must be identical; a refused
statement must fail on B with the documented 0A000 naming the column and its mode,
where A runs a statement failing with the same SQLSTATE, and every later statement
compares the states.

Afterwards the leak scans: no marker value (tests/encrypt_corpus.py TEXT_MARKERS,
and the numbers also as their binary encodings) in B's table data, `pg_dump`,
catalogs and statistics (pg_statistic / pg_stats after ANALYZE), or the server log.
The same scans on A find them, so they would see a leak.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from cloak_corpus import Stmt
from cloak_corpus_types import type_corpus, type_rules
from cloak_runner import Outcome, PsycopgClient, drive, psql_script, run_psql
from cloak_runner import Run as BaseRun
from encrypt_corpus import NUMBER_MARKERS, TEXT_MARKERS, relational_corpus
from encrypt_corpus import RULES as SCHEMA_RULES
from encrypt_corpus_refusals import REFUSALS, refusal_corpus
from encrypt_support import config_toml
from helpers import PgServer, ProxyLauncher, ProxyProcess
from test_cloak_differential import CATALOG_SQL

from pgcloak.crypto.keys import MasterKey
from pgcloak.registry.install import install

CORPUS: list[Stmt] = [*type_corpus(), *relational_corpus(), *refusal_corpus()]
RULES = {**type_rules(), **SCHEMA_RULES}
CLIENTS = ("psycopg-autocommit", "psycopg-transactions", "psql")
BUGS = "see docs/known-issues.md"


class Run(BaseRun):
    """One client's pass over the corpus; refusals are checked against the documented ones."""

    def difference(self, stmt: Stmt, a: Outcome, b: Outcome) -> str | None:
        return _difference(stmt, a, b, self.client == "psql")


def _difference(stmt: Stmt, a: Outcome, b: Outcome, psql: bool) -> str | None:
    """Why B's outcome is not acceptable next to A's (None: it is)."""
    refusal = REFUSALS.get(stmt.sql) if stmt.plain_sql is not None else None
    if refusal is not None:
        message = b.primary or ""
        if psql:
            found = re.search(r"ERROR:  (.*)", b.rows[0] if b.rows else "")
            message = found.group(1) if found else ""
        if a.sqlstate != "0A000" or b.sqlstate != "0A000" or not refusal.matches(message):
            return f"not the documented refusal ({refusal}):\n    A: {a}\n    B: {b}"
        if not psql and a != b:  # transaction status, notices
            return f"refusal left another state:\n    A: {a}\n    B: {b}"
        return None
    if psql and "ORDER BY" not in stmt.sql.upper():  # the server may return any order
        a, b = _sorted_lines(a), _sorted_lines(b)
    return None if a == b else f"A: {a}\n    B: {b}"


def _sorted_lines(out: Outcome) -> Outcome:
    rows = None if out.rows is None else tuple(sorted(out.rows[0].splitlines()))
    return Outcome(rows=rows, sqlstate=out.sqlstate)


@dataclass
class Runs:
    upstream: PgServer
    proxy: ProxyProcess
    runs: dict[str, Run]
    log_offset: int


def _cloaked_db(server: PgServer, master_key: str) -> str:
    name = server.create_database()
    with psycopg.connect(server.dsn(name), autocommit=True) as conn:
        install(conn, MasterKey.from_base64(master_key))
    return name


def _psycopg_run(run: Run, server: PgServer, proxy: ProxyProcess) -> None:
    mode, wrap = ("prepared", 20) if run.client == "psycopg-transactions" else ("autocommit", 0)
    a = PsycopgClient(lambda: server.connect(run.db_a), mode)
    b = PsycopgClient(lambda: proxy.connect(run.db_b), mode)
    try:
        run.steps = drive(a, b, CORPUS, wrap)
    finally:
        a.close()
        b.close()


# psycopg writes special floats as 'NaN'::float8 whatever their type; a person typing
# the script writes the literal, and pgcloak refuses a float8 cast into a real column
# (E25, tested on its own in test_encrypt_proxy_clients.py).
_FLOAT8_SPECIAL = re.compile(r"('(?:-?Infinity|NaN)')::float8")


def _inline(cur: psycopg.ClientCursor[Any], stmt: Stmt) -> str:
    if stmt.params is None:
        return stmt.sql
    sql = cur.mogrify(stmt.sql.replace("%b", "%s").replace("%t", "%s"), stmt.params)
    return _FLOAT8_SPECIAL.sub(r"\1", sql)


def _psql_run(run: Run, server: PgServer, proxy: ProxyProcess) -> None:
    with server.connect() as conn:
        cur = psycopg.ClientCursor(conn)
        script_a = psql_script([s.on_plain() for s in CORPUS], lambda s: _inline(cur, s))
        script_b = psql_script(CORPUS, lambda s: _inline(cur, s))
    out_a = run_psql(server.host, server.port, run.db_a, script_a, len(CORPUS))
    out_b = run_psql(proxy.host, proxy.port, run.db_b, script_b, len(CORPUS))
    for stmt, a, b in zip(CORPUS, out_a, out_b, strict=True):
        run.steps.append((stmt, _psql_outcome(a), _psql_outcome(b)))


def _psql_outcome(segment: str) -> Outcome:
    state = re.search(r"^sqlstate (\S+)$", segment, re.MULTILINE)
    code = state.group(1) if state else "missing"
    return Outcome(rows=(segment,), sqlstate=None if code == "00000" else code, seen=segment)


@pytest.fixture(scope="module")
def runs(
    pg_logged: PgServer,
    master_key: str,
    launcher: ProxyLauncher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """A (plain) and B (encrypted, through the proxy) per client, both on `pg_logged`."""
    config = tmp_path_factory.mktemp("encdiff") / "pgcloak.toml"
    config.write_text(config_toml(RULES))
    proxy = launcher.start(
        pg_logged.upstream_url(), "--config", str(config), env={"PGCLOAK_MASTER_KEY": master_key}
    )
    made: list[Run] = []
    try:
        for client in CLIENTS:
            made.append(
                Run(client, pg_logged.create_database(), _cloaked_db(pg_logged, master_key))
            )
        offset = pg_logged.log_size()
        for run in made:
            if run.client == "psql":
                _psql_run(run, pg_logged, proxy)
            else:
                _psycopg_run(run, pg_logged, proxy)
        for run in made:  # statistics for the catalog scan
            for db in (run.db_a, run.db_b):
                pg_logged.execute("ANALYZE", dbname=db)
        yield Runs(pg_logged, proxy, {r.client: r for r in made}, offset)
    finally:
        for run in made:
            pg_logged.drop_database(run.db_a)
            pg_logged.drop_database(run.db_b)
        proxy.stop()


# -- the differential ---------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_differential(runs: Runs, client: str) -> None:
    run = runs.runs[client]
    mismatches = run.mismatches()
    assert not mismatches, f"{len(mismatches)} of {len(run.steps)} steps differ:\n" + "\n".join(
        mismatches
    )


@pytest.mark.parametrize("bug", sorted({k.bug for s in CORPUS for k in s.known}))
@pytest.mark.xfail(strict=True, reason=BUGS)
def test_known_bug(runs: Runs, bug: str) -> None:
    """Statements KNOWN to differ because of `bug` (XPASS: fixed, remove the mark)."""
    mismatches = [m for run in runs.runs.values() for m in run.mismatches(bug)]
    assert not mismatches, "\n".join(mismatches)


def test_corpus_covers_what_the_issue_asks(runs: Runs) -> None:
    steps = runs.runs["psycopg-autocommit"].steps
    ok = [s for s, a, _ in steps if a.sqlstate is None]
    assert len(CORPUS) >= 1000
    assert sum(1 for s in CORPUS if s.plain_sql is not None) >= 60
    assert sum(1 for s in CORPUS if s.params is not None) >= 100
    assert sum(1 for s in CORPUS if s.params and "%b" in s.sql) >= 40
    assert sum(1 for s in CORPUS if s.copy_in is not None) >= 3
    words = " ".join(s.sql for s in ok)
    for construct in ("ON CONFLICT (code) DO NOTHING", "DO UPDATE", "MERGE INTO", "JOIN",
                      "UNION", "WITH ", "GROUP BY", "DISTINCT", "RETURNING", "ARRAY[",
                      "CAST(", "E'", "PREPARE", "EXECUTE", "COPY", "acct_active",
                      "ROLLBACK TO SAVEPOINT"):  # fmt: skip
        assert construct in words, construct
    assert len(ok) >= 900  # mostly statements that work, not errors on both sides
    copied = [s for s, a, _ in steps if "FROM STDIN" in s.sql and (a.tag or "").startswith("COPY")]
    assert len(copied) >= 80
    states = {a.sqlstate for _, a, _ in steps if a.sqlstate}
    assert {"0A000", "23505", "23503", "23502", "22P02", "22001", "22003", "25P02"} <= states


# -- leak scans ---------------------------------------------------------------------------


def _needles() -> tuple[re.Pattern[str], tuple[bytes, ...]]:
    """Text markers (and the hex of the numbers' binary forms, as bytea prints them), and
    the raw bytes to look for in bytea values."""
    # The text markers, and the bytes of the bytea marker (tests/encrypt_support.py).
    raw: list[bytes] = [m.encode() for m in TEXT_MARKERS] + [bytes.fromhex("deadbeefcafe7731")]
    for n in NUMBER_MARKERS:
        raw += [struct.pack(f, n) for f in (">i", "<i", ">q", "<q")]
        raw += [struct.pack(f, float(n)) for f in (">d", "<d")]
    texts = [re.escape(m) for m in TEXT_MARKERS]
    texts += [b.hex() for b in raw if not b.isascii() or not b.decode().isprintable()]
    return re.compile("|".join(texts), re.IGNORECASE), tuple(raw)


NEEDLES, RAW_NEEDLES = _needles()


def _hits(lines: list[str], where: str) -> list[str]:
    return [f"{where}: ...{line[max(0, m.start() - 40) : m.end() + 40]}..."
            for line in lines for m in NEEDLES.finditer(line)]  # fmt: skip


_TABLES = (
    "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind IN ('r', 'm', 'p') "
    "AND c.relnamespace::regnamespace::text IN ('public', 'pgcloak')"
)
_BYTEA = (
    "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = %s::regclass "
    "AND attnum > 0 AND NOT attisdropped AND atttypid = 'bytea'::regtype"
)


def _table_data(server: PgServer, db: str) -> list[str]:
    """Every row of every table as text, and every bytea value checked for raw needles."""
    found: list[str] = []
    with server.connect(db) as conn:
        tables = [r[0] for r in conn.execute(_TABLES)]
        assert len(tables) >= 7, tables
        for table in tables:
            rows = [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t")]
            found += _hits(rows, f"table {table}")
            for (col,) in conn.execute(_BYTEA, [table]).fetchall():
                for (value,) in conn.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL"):
                    found += [f"{table}.{col} holds {n!r}" for n in RAW_NEEDLES if n in value]
    return found


_STATISTICS = {
    "pg_stats": "SELECT s::text FROM pg_stats s WHERE schemaname = 'public'",
    "pg_statistic": "SELECT s::text FROM pg_statistic s WHERE starelid >= 16384",
}


def _catalogs(server: PgServer, db: str) -> list[str]:
    found: list[str] = []
    stats = 0
    for where, query in {**CATALOG_SQL, **_STATISTICS}.items():
        rows = [str(r[0]) for r in server.execute(query, dbname=db) if r[0] is not None]
        stats += len(rows) if where in _STATISTICS else 0
        found += _hits(rows, where)
    assert stats > 100  # ANALYZE ran: there are statistics to leak through
    return found


def _pg_dump(server: PgServer, db: str) -> list[str]:
    argv = ["pg_dump", "-h", server.host, "-p", str(server.port), "-U", "postgres", db]
    dump = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "COPY " in dump and "CREATE TABLE" in dump
    return _hits(dump.splitlines(), "pg_dump")


def _log_lines(runs: Runs, db: str) -> list[str]:
    """The server log's lines for `db` (continuation lines belong to the line before)."""
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \S+ \S+ \[\d+\] (\S*@\S*) ")
    out: list[str] = []
    current = ""
    for line in runs.upstream.log_since(runs.log_offset).splitlines():
        m = prefix.match(line)
        if m is not None:
            current = m.group(1)
        if current == f"postgres@{db}":
            out.append(line)
    return out


SCANS = ("table-data", "catalogs", "pg_dump")


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scan", SCANS)
def test_no_plaintext_upstream(runs: Runs, client: str, scan: str) -> None:
    run = runs.runs[client]
    check = {"table-data": _table_data, "catalogs": _catalogs, "pg_dump": _pg_dump}[scan]
    # The same scan finds the markers in the plain database: it would see a leak (in
    # table data also by the raw bytes of bytea values).
    plain = check(runs.upstream, run.db_a)
    assert len(plain) > 10
    assert scan != "table-data" or any(" holds " in hit for hit in plain)
    found = check(runs.upstream, run.db_b)
    assert not found, "\n".join(found[:40])


@pytest.mark.parametrize("client", CLIENTS)
def test_no_plaintext_in_server_log(runs: Runs, client: str) -> None:
    run = runs.runs[client]
    plain = _log_lines(runs, run.db_a)
    assert len(_hits(plain, "plain log")) > 100
    lines = _log_lines(runs, run.db_b)
    assert len(lines) > 1000 and any("::bytea" in line for line in lines)
    found = _hits(lines, "server log")
    assert not found, "\n".join(found[:40])


def test_no_plaintext_in_proxy_log(runs: Runs) -> None:
    text = runs.proxy.log_text()
    found = _hits(text.splitlines(), "proxy log")
    assert not found, "\n".join(found[:40])
