"""A session's view of the shared catalog: the shared one plus its temporary tables.

Temporary tables are never cloaked (they live and die with one session) and the
shared catalog cannot know them: it is loaded once for every session of a
database. Only a session that created temporary tables pays for this wrapper;
the others plan against the shared catalog and share its plan cache entries.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from pglast import parser

from pgcloak.rewriter import Catalog
from pgcloak.rewriter.ddl_create import into_clause

__all__ = ["TempCatalog", "created_relation"]

_versions = itertools.count(1)


def created_relation(sql: str) -> tuple[str | None, str, bool] | None:
    """(schema, name, temporary) of the relation an uncloaked CREATE statement makes."""
    try:
        stmts = parser.parse_sql_json(sql)
    except parser.ParseError:
        return None
    import json

    tree = json.loads(stmts).get("stmts", [])
    if len(tree) != 1:
        return None
    stmt = tree[0]["stmt"]
    kind, body = next(iter(stmt.items()))
    rv = None
    if kind == "CreateStmt":
        rv = body.get("relation")
    elif kind == "CreateTableAsStmt":
        rv = (body.get("into") or {}).get("rel")
    elif kind == "ViewStmt":
        rv = body.get("view")
    elif kind == "CreateSeqStmt":
        rv = body.get("sequence")
    elif kind == "SelectStmt":
        into = into_clause(body)
        rv = (into or {}).get("rel")
    if not rv or "relname" not in rv:
        return None
    return rv.get("schemaname"), rv["relname"], rv.get("relpersistence") == "t"


class TempCatalog:
    """Delegates to `base`; also knows the session's temporary relation names.

    Used where a `Catalog` is expected (`as_catalog`): attribute access falls
    through to the shared catalog, so it follows that protocol as it grows.
    """

    def __init__(self, base: Catalog, temp: frozenset[str]) -> None:
        self.base = base
        self.temp = temp
        self._version = next(_versions) << 40

    @property
    def version(self) -> int:
        return self._version + self.base.version

    def __getattr__(self, name: str) -> Any:
        # Everything but has_uncloaked/version is the shared catalog's answer.
        return getattr(self.base, name)

    def has_uncloaked(self, schema: str, name: str) -> bool | None:
        if name in self.temp:
            return True
        return self.base.has_uncloaked(schema, name)


def as_catalog(catalog: TempCatalog) -> Catalog:
    return cast(Catalog, catalog)
