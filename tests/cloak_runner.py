"""Clients for the proxy's differential test: run a corpus, record what a client sees.

`PsycopgClient` runs one `Stmt` at a time (extended protocol; COPY through
`cursor.copy()`) and returns an `Outcome`; `run_psql` feeds a whole corpus to
psql (simple protocol) and splits its output per statement. Both sides of the
differential (plain database, cloaked database through the proxy) use the same
code, so any difference is the proxy's.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from cloak_corpus import Stmt
from psycopg import pq
from psycopg.types.string import TextBinaryLoader, TextLoader

# A physical name pgcloak chose (docs/cloaking-design.md §6), also inside derived names.
PHYSICAL = re.compile(r"(?<![0-9a-z])[tciksvm][0-9a-f]{20}(?![0-9a-f])")

# Errors whose text (not only SQLSTATE) must be identical: pgcloak maps names back.
MESSAGE_STATES = frozenset({"23505", "23503", "23514", "23502", "42703", "42P01"})

LOST = "connection-lost"
_STATUS = {
    pq.TransactionStatus.IDLE: "idle",
    pq.TransactionStatus.INTRANS: "in-transaction",
    pq.TransactionStatus.INERROR: "in-error",
}


@dataclass
class Outcome:
    """What a client saw for one statement (compared field by field)."""

    names: tuple[str, ...] | None = None
    rows: tuple[str, ...] | None = None  # sorted: statements without ORDER BY
    tag: str | None = None
    sqlstate: str | None = None
    message: tuple[str | None, ...] | None = None  # only for MESSAGE_STATES
    notices: tuple[str, ...] = ()
    status: str = ""
    # The error's primary text whatever its SQLSTATE (not compared: for refusal checks).
    primary: str | None = field(default=None, compare=False)
    # Everything the client saw, for the physical-name check (not compared).
    seen: str = field(default="", compare=False, repr=False)

    def reduced(self) -> Outcome:
        """Only whether it ran: for EXPLAIN, whose plans may legitimately differ."""
        return replace(self, names=None, rows=None, message=None, notices=())


@dataclass
class Run:
    """One client's pass over a corpus: the databases used and what each side saw."""

    client: str
    db_a: str
    db_b: str
    steps: list[tuple[Stmt, Outcome, Outcome]] = field(default_factory=list)
    statements: int = 0  # corpus statements run (without the wrapper's)

    def _bug(self, stmt: Stmt) -> str | None:
        return next((k.bug for k in stmt.known if k.applies(self.client)), None)

    def difference(self, stmt: Stmt, a: Outcome, b: Outcome) -> str | None:
        """Why B's outcome is not acceptable next to A's (None: it is). EXPLAIN output
        is compared reduced (plans and costs may differ)."""
        ca, cb = (a.reduced(), b.reduced()) if stmt.explain else (a, b)
        return None if ca == cb else f"A: {a}\n    B: {b}"

    def mismatches(self, bug: str | None = None) -> list[str]:
        """Steps that differ (or show a physical name), among those of `bug` (None: no bug)."""
        out: list[str] = []
        for i, (stmt, a, b) in enumerate(self.steps):
            if self._bug(stmt) != bug:
                continue
            problem = self.difference(stmt, a, b)
            if problem is not None:
                out.append(f"[{i}] {stmt.sql} {stmt.params or ''}\n    {problem}")
            if PHYSICAL.search(b.seen):
                out.append(f"[{i}] {stmt.sql}\n    physical name seen by B: {b.seen}")
        return out


def _error_outcome(exc: psycopg.Error) -> Outcome:
    d = exc.diag
    state = exc.sqlstate
    fields = (d.message_primary, d.message_detail, d.message_hint, d.schema_name,
              d.table_name, d.column_name, d.constraint_name, d.statement_position)  # fmt: skip
    message: tuple[str | None, ...] | None = None
    if state in MESSAGE_STATES:
        # The primary text always; for constraint violations also the detail and the
        # table/column/constraint fields (they name objects: pgcloak maps them back).
        message = (d.message_primary,)
        if state is not None and state.startswith("23"):
            message += (d.message_detail, d.table_name, d.column_name, d.constraint_name)
    return Outcome(
        sqlstate=state or LOST, message=message, primary=d.message_primary, seen=repr(fields)
    )


class PsycopgClient:
    """One autocommit psycopg connection running corpus statements.

    `mode` "autocommit": statements without parameters go as an unnamed extended-
    protocol statement (binary results force Parse/Bind/Execute), with parameters
    as psycopg binds them (`prepare` per statement). "prepared": everything as a
    named prepared statement (psycopg's prepare=True; repeated texts reuse it).
    "simple": statements without parameters as a simple Query.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], mode: str) -> None:
        self.connect = connect
        self.mode = mode
        self.notices: list[str] = []
        self.conn = self._open()

    def _open(self) -> psycopg.Connection[Any]:
        conn = self.connect()
        conn.add_notice_handler(self._notice)
        # json as the text the server sent: EXPLAIN (FORMAT JSON) must match as text.
        conn.adapters.register_loader("json", TextLoader)
        conn.adapters.register_loader("json", TextBinaryLoader)
        return conn

    def reconnect(self) -> None:
        """A new session (after the proxy dropped one: both sides restart together)."""
        self.conn.close()
        self.conn = self._open()

    def close(self) -> None:
        self.conn.close()

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        self.notices.append(f"{diag.severity} {diag.sqlstate} {diag.message_primary}")

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    def run(self, stmt: Stmt) -> Outcome:
        self.notices.clear()
        try:
            with self.conn.cursor() as cur:
                if stmt.sql.lstrip().upper().startswith("COPY"):
                    out = self._copy(cur, stmt)
                else:
                    self._execute(cur, stmt)
                    out = Outcome(tag=cur.statusmessage)
                    if cur.description is not None:
                        out.names = tuple(d.name for d in cur.description)
                        out.rows = tuple(sorted(repr(r) for r in cur.fetchall()))
        except psycopg.Error as exc:
            out = _error_outcome(exc)
        out.notices = tuple(self.notices)
        out.status = _STATUS.get(self.conn.info.transaction_status, "unknown")
        out.seen = repr((out.names, out.rows, out.tag, out.notices)) + out.seen
        return out

    def _execute(self, cur: psycopg.Cursor[Any], stmt: Stmt) -> None:
        if self.mode == "simple" and stmt.params is None:
            cur.execute(stmt.sql.encode(), prepare=False)  # simple Query protocol
        elif self.mode == "prepared":
            cur.execute(stmt.sql if stmt.params else stmt.sql.encode(), stmt.params, prepare=True)
        elif stmt.params is not None:
            cur.execute(stmt.sql, stmt.params, prepare=stmt.prepare)
        else:
            cur.execute(stmt.sql.encode(), prepare=False, binary=True)

    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], stmt: Stmt) -> Outcome:
        data = b""
        with cur.copy(stmt.sql.encode()) as copy:
            if stmt.copy_in is not None:
                copy.write(stmt.copy_in)
            else:
                data = b"".join(bytes(chunk) for chunk in copy)
        lines = data.decode().splitlines()
        return Outcome(rows=tuple(sorted(lines)) if lines else None, tag=cur.statusmessage)


def drive(
    a: PsycopgClient,
    b: PsycopgClient,
    corpus: Sequence[Stmt],
    wrap: int = 0,
    after_a: Callable[[Stmt, Outcome], None] | None = None,
) -> list[tuple[Stmt, Outcome, Outcome]]:
    """Run `corpus` on both sides; returns (statement, A outcome, B outcome) per step.

    When a side loses its connection (a proxy bug), both reconnect so that the rest of
    the corpus still runs on equal session state.

    `wrap` > 0 runs the statements in transactions of up to `wrap` statements, each
    inside its own savepoint that is rolled back on both sides when the statement fails
    on either (so an error aborts nothing else, and a difference does not spread); the
    corpus's own transaction-control statements close the wrapper first and run as
    written. The wrapper's steps are returned too.
    """
    steps: list[tuple[Stmt, Outcome, Outcome]] = []

    def step(stmt: Stmt) -> Outcome:
        out_a = a.run(stmt.on_plain())
        out_b = b.run(stmt)
        steps.append((stmt, out_a, out_b))
        if after_a is not None:
            after_a(stmt, out_a)
        if LOST in (out_a.sqlstate, out_b.sqlstate):
            a.reconnect()
            b.reconnect()
        return out_a

    open_wrapper = False
    count = 0
    for stmt in corpus:
        if not wrap:
            step(stmt)
            continue
        if stmt.transaction_control:
            if open_wrapper:
                step(Stmt("COMMIT"))
                open_wrapper = False
            step(stmt)
            continue
        if not open_wrapper and a.in_transaction:  # inside the corpus's own block
            step(stmt)
            continue
        if not open_wrapper:
            step(Stmt("BEGIN"))
            open_wrapper, count = True, 0
        step(Stmt("SAVEPOINT pgcloak_wrap"))
        step(stmt)
        # Undo the statement on both sides when either failed: a difference stays local.
        failed = any(o.sqlstate is not None for o in steps[-1][1:])
        step(Stmt(("ROLLBACK TO" if failed else "RELEASE") + " SAVEPOINT pgcloak_wrap"))
        count += 1
        if count >= wrap:
            step(Stmt("COMMIT"))
            open_wrapper = False
    if open_wrapper:
        step(Stmt("COMMIT"))
    return steps


# -- psql ------------------------------------------------------------------------------

_MARK = "@@pgcloak-stmt "


def psql_script(corpus: Sequence[Stmt], inline: Callable[[Stmt], str]) -> str:
    """One script: a marker line, the statement (COPY data after it), its SQLSTATE."""
    lines: list[str] = []
    for i, stmt in enumerate(corpus):
        lines.append(f"\\echo '{_MARK}{i}'")
        lines.append(inline(stmt) + ";")
        if stmt.copy_in is not None:
            lines.extend(stmt.copy_in.splitlines())
            lines.append("\\.")
        lines.append("\\echo 'sqlstate' :SQLSTATE")
    return "\n".join(lines) + "\n"


def run_psql(host: str, port: int, dbname: str, script: str, n: int) -> list[str]:
    """psql's output (stdout and stderr interleaved, as a user sees it) per statement."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCLIENTENCODING="UTF8", PAGER="", PSQL_PAGER="", LC_ALL="C.UTF-8")
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=0", "--echo-errors", "-h", host, "-p", str(port),
            "-U", "postgres", "-d", dbname, "-f", "-"]  # fmt: skip
    # Not -q: the command tags psql prints are compared too. psql flushes stdout before
    # it writes an error to stderr, so one pipe keeps the order a user sees.
    proc = subprocess.run(
        argv, input=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, timeout=60, check=False,
    )  # fmt: skip
    segments: list[str] = [""] * n
    current: int | None = None
    for line in proc.stdout.splitlines(keepends=True):
        if line.startswith(_MARK):
            current = int(line[len(_MARK) :])
            continue
        if current is not None:
            segments[current] += line
    return segments
