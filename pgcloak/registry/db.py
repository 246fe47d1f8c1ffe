"""Registry access over an ordinary psycopg connection (CLI tools, tests, installers).

The proxy itself reads and writes the registry in-band on client connections; these
helpers serve everything that runs outside a client session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.names import NameCipher
from pgcloak.registry.model import RawRow, Write
from pgcloak.registry.store import (
    KEY_CHECK_SQL,
    SELECT_OBJECTS_SQL,
    STATUS_SQL,
    VERSION_SQL,
    Registry,
    RegistryStatus,
    key_check_write,
    load,
)

__all__ = [
    "KeyMismatch",
    "apply_writes",
    "check_master_key",
    "fetch_raw_rows",
    "fetch_registry",
    "registry_status",
]

Conn = psycopg.Connection[tuple[Any, ...]]


class KeyMismatch(RuntimeError):
    """The registry was written under a different master key."""


def registry_status(conn: Conn) -> RegistryStatus:
    """'missing' / 'ok' / 'unknown' (with the version found) for the connected database."""
    row = conn.execute(STATUS_SQL).fetchone()
    assert row is not None
    has_table, ext_version = bool(row[0]), row[1]
    version: str | None = None
    if has_table:
        rows = conn.execute(VERSION_SQL).fetchall()
        version = rows[0][0] if len(rows) == 1 else None
    return RegistryStatus.from_catalog(has_table, version, ext_version)


def check_master_key(conn: Conn, master: MasterKey, *, record: bool = False) -> str:
    """Compare `master` with the registry's key check; 'match', 'recorded' or 'absent'.

    Raises KeyMismatch when the registry belongs to another key. With `record`, an
    absent check value is stored (in the caller's transaction).
    """
    rows = conn.execute(KEY_CHECK_SQL).fetchall()
    mine = master.key_check()
    if rows:
        if bytes(rows[0][0]) != mine:
            raise KeyMismatch(
                "the pgcloak registry in this database was created with a different master key"
            )
        return "match"
    if not record:
        return "absent"
    apply_writes(conn, [key_check_write(mine)])
    return "recorded"


def fetch_raw_rows(conn: Conn) -> list[RawRow]:
    return [RawRow.from_tuple(r) for r in conn.execute(SELECT_OBJECTS_SQL).fetchall()]


def fetch_registry(conn: Conn, cipher: NameCipher) -> Registry:
    """Load and decrypt the whole registry (DecryptionError on a wrong key or tampering)."""
    return load(fetch_raw_rows(conn), cipher)


def apply_writes(conn: Conn, writes: Iterable[Write]) -> None:
    """Run registry writes on `conn` in its current transaction."""
    for write in writes:
        sql, params = write.for_psycopg()
        conn.execute(sql, params)
