"""Run semantic SQL against a cloaked database over a plain connection, without the proxy.

Loads the registry the way the proxy does (the same statements, text results),
plans each statement with the rewriter and runs the physical SQL together with
its registry writes in one transaction per statement. Used by `pgcloak demo` to
seed its sample schema, and handy for applying a schema file to a cloaked
database from a migration job.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgcloak.crypto.keys import MasterKey
from pgcloak.registry.catalog import LOAD_SQL, Loaded, parse_load, writes_for
from pgcloak.rewriter import CloakError, Rewriter
from pgcloak.rewriter.overlay import OverlayCatalog

__all__ = ["TextRows", "load_registry", "run_cloaked", "text_result_sets"]

Conn = psycopg.Connection[Any]


TextRows = list[list[str | None]]


def text_result_sets(conn: Conn, query: str | bytes) -> list[TextRows]:
    """Every result set of one simple Query, values in text format as the proxy sees them.

    Tests and benchmarks read LOAD_SQL's answer through this too, so what they
    parse is exactly what `parse_load` gets in the proxy.
    """
    out: list[TextRows] = []
    with conn.cursor() as cur:
        cur.execute(query)
        while True:
            res = cur.pgresult
            rows: TextRows = []
            if res is not None:
                for r in range(res.ntuples):
                    row: list[str | None] = []
                    for c in range(res.nfields):
                        v = res.get_value(r, c)
                        row.append(None if v is None else v.decode())
                    rows.append(row)
            out.append(rows)
            if not cur.nextset():
                break
    return out


def load_registry(conn: Conn, master: MasterKey) -> Loaded:
    """The registry and catalog of the connected database (LOAD_SQL in one Query, as the proxy)."""
    return parse_load(text_result_sets(conn, LOAD_SQL), master)


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
