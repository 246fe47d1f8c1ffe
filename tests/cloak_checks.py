"""Checks on what a cloaked database looks like from a DIRECT connection (no proxy).

Also `cloaked_database`, for module-scoped or re-created databases that the
function-scoped `cloaked_db` fixture cannot provide.

Client tests run a real client through the cloaking proxy, then call
`assert_catalog_opaque` with the semantic names they used: every relation,
column and constraint name the server holds must be opaque, and no semantic
name may appear in the server's own definitions (index/constraint DDL, column
defaults), which is what a DBA, pg_dump or a log would see.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from helpers import PgServer

# A physical name, or one PostgreSQL derives from physical names: a serial column's
# `<t…>_<c…>_seq`, `_pkey`/`_key`/`_fkey`/`_idx` suffixes, numbered variants.
OPAQUE_RE = re.compile(r"[tciksvm][0-9a-f]{20}(?:_[tciksvm][0-9a-f]{20})*(?:_[a-z]+[0-9]*)?")

_RELATIONS = """
SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s
"""
_COLUMNS = """
SELECT a.attname FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0
  AND NOT a.attisdropped
"""
_CONSTRAINTS = """
SELECT k.conname, pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = %s
"""
_DEFINITIONS = """
SELECT pg_catalog.pg_get_indexdef(x.indexrelid) FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s
UNION ALL
SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s
"""


@dataclass
class CatalogView:
    """Names and definitions of one schema, as the server stores them."""

    relations: dict[str, str] = field(default_factory=dict)  # relname -> relkind
    columns: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    definitions: list[str] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.relations.values():
            out[kind] = out.get(kind, 0) + 1
        return out


def catalog_view(conn: psycopg.Connection[Any], schema: str = "public") -> CatalogView:
    view = CatalogView()
    view.relations = {r[0]: r[1] for r in conn.execute(_RELATIONS, (schema,))}
    view.columns = [r[0] for r in conn.execute(_COLUMNS, (schema,))]
    for name, definition in conn.execute(_CONSTRAINTS, (schema,)):
        view.constraints.append(name)
        view.definitions.append(definition)
    view.definitions += [r[0] for r in conn.execute(_DEFINITIONS, (schema, schema)) if r[0]]
    return view


def assert_catalog_opaque(
    conn: psycopg.Connection[Any], semantic: Iterable[str], schema: str = "public"
) -> CatalogView:
    """No semantic name in `schema` of the database `conn` is connected to (directly)."""
    view = catalog_view(conn, schema)
    names = [*view.relations, *view.columns, *view.constraints]
    plain = sorted(n for n in names if not OPAQUE_RE.fullmatch(n))
    assert not plain, f"names in the upstream catalog that are not opaque: {plain}"
    text = "\n".join(view.definitions)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    leaked = sorted(w for w in set(semantic) if w in words or w.lower() in words)
    assert not leaked, f"semantic names in upstream definitions: {leaked}\n{text}"
    found = [n for n in names if n in set(semantic)]
    assert not found, found
    return view


def cloaked_database(pg: PgServer, master_key: str, name: str | None = None) -> str:
    """Create a database on `pg` and install the pgcloak registry in it; the caller drops it."""
    from pgcloak.crypto.keys import MasterKey
    from pgcloak.registry.install import install

    name = pg.create_database(name)
    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        install(conn, MasterKey.from_base64(master_key))
    return name
