"""`run()`: one statement's outcome (COPY included) as data, for the adversarial tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass
class Outcome:
    sqlstate: str | None
    message: str = ""
    rows: list[tuple[Any, ...]] | None = None


def run(conn: psycopg.Connection[Any], sql: str, copy_data: str | None = None) -> Outcome:
    try:
        with conn.cursor() as cur:
            if sql.startswith("COPY"):
                with cur.copy(sql) as cp:
                    if copy_data is not None:
                        cp.write(copy_data.encode())
                    else:
                        return Outcome(None, rows=[(bytes(b),) for b in cp])
                return Outcome(None, rows=[(cur.rowcount,)])
            cur.execute(sql)
            rows = cur.fetchall() if cur.description is not None else None
            return Outcome(None, rows=rows)
    except psycopg.Error as exc:
        return Outcome(exc.sqlstate, str(exc.diag.message_primary or ""))
