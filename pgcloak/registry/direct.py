"""Run semantic SQL against a cloaked database over a plain connection, without the proxy.

Loads the registry the way the proxy does (the same statements, text results),
plans each statement with the rewriter and runs the physical SQL together with
its registry writes in one transaction per statement. Used by `pgcloak demo` to
seed its sample schema, and handy for applying a schema file to a cloaked
database from a migration job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from pgcloak.crypto.keys import MasterKey
from pgcloak.registry.catalog import LOAD_STATEMENTS, Loaded, parse_load, writes_for
from pgcloak.rewriter import CloakError, Rewriter
from pgcloak.rewriter.overlay import OverlayCatalog

__all__ = ["load_registry", "run_cloaked"]

Conn = psycopg.Connection[Any]


def _text_results(conn: Conn, statements: Iterable[str]) -> list[list[list[str | None]]]:
    out: list[list[list[str | None]]] = []
    with conn.cursor() as cur:
        for stmt in statements:
            cur.execute(stmt)
            res = cur.pgresult
            rows: list[list[str | None]] = []
            if res is not None:
                for r in range(res.ntuples):
                    row: list[str | None] = []
                    for c in range(res.nfields):
                        v = res.get_value(r, c)
                        row.append(None if v is None else v.decode())
                    rows.append(row)
            out.append(rows)
    return out


def load_registry(conn: Conn, master: MasterKey) -> Loaded:
    """The registry and catalog of the connected database (in its current transaction)."""
    return parse_load(_text_results(conn, LOAD_STATEMENTS), master)


def run_cloaked(conn: Conn, sql: str, master: MasterKey) -> int:
    """Run every statement of `sql` as the proxy would; returns how many ran.

    Each statement commits on its own with its registry rows. Raises CloakError
    for statements pgcloak refuses (nothing of that statement is sent).
    """
    rewriter = Rewriter(cache_size=0)
    count = 0
    with conn.transaction():
        loaded = load_registry(conn, master)
    catalog = OverlayCatalog(loaded.catalog)
    registry = loaded.registry
    path = tuple(
        conn.execute("SELECT pg_catalog.current_schemas(false)").fetchone()[0]  # type: ignore[index]
    )
    for plan in rewriter.plan(sql, catalog, path):
        with conn.transaction():
            if plan.sql is not None:
                conn.execute(plan.sql.encode())  # text as-is: no client-side placeholders
            for change in plan.changes:
                for write in writes_for(registry, change):
                    stmt, params = write.for_psycopg()
                    conn.execute(stmt, params)
        catalog.apply_all(plan.changes)
        count += 1
    return count


__all__ += ["CloakError"]
