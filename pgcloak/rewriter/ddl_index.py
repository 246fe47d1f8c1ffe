"""ALTER INDEX ... RENAME TO and DROP INDEX of cloaked indexes.

RENAME is registry-only, as for tables: the physical name never changes, so
nothing is sent and the errors PostgreSQL would raise are raised here. PostgreSQL
lets ALTER INDEX ... RENAME rename any relation; renaming the index behind a
PRIMARY KEY/UNIQUE/EXCLUDE constraint renames the constraint (pgcloak registers
those indexes only as their constraint). DROP INDEX is sent with physical names;
its lookup errors (missing index, not an index, a constraint's index) are raised
here in PostgreSQL's order, since the server would report dummy names for them.
CREATE INDEX lives in ddl_alter.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgcloak.rewriter import ddl_partition
from pgcloak.rewriter.catalog import (
    AnySequence,
    CatalogChange,
    Constraint,
    DropIndex,
    Index,
    RenameConstraint,
    RenameIndex,
    RenameSequence,
    RenameTable,
    StandaloneSequence,
    uncloaked_exists,
)
from pgcloak.rewriter.ddl_misc import (
    Found,
    check_unmentioned,
    drop_objects,
    lookup,
    relation_tokens,
)
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["handler"]

Handler = Callable[["Analyzer", Node], None]
# DROP INDEX of another kind of relation: PostgreSQL's hint (DropErrorMsgWrongType).
_DROP_HINTS = {
    "t": "Use DROP TABLE to remove a table.",
    "v": "Use DROP VIEW to remove a view.",
    "m": "Use DROP MATERIALIZED VIEW to remove a materialized view.",
    "s": "Use DROP SEQUENCE to remove a sequence.",
}


def handler(kind: str, body: Node) -> Handler | None:
    """The function planning this statement, if it is one this module handles."""
    if kind == "DropStmt" and body.get("removeType") == "OBJECT_INDEX":
        return drop
    if kind == "RenameStmt" and body.get("renameType") == "OBJECT_INDEX":
        return rename
    return None


def _index(a: Analyzer, found: Found) -> Index | None:
    """The catalog's record of a plain cloaked index `lookup` found (kind "i")."""
    if found.owner is None:
        return None
    return next((i for i in a.catalog.indexes(found.owner) if i.physical == found.physical), None)


def _constraint(a: Analyzer, found: Found) -> Constraint | None:
    """The constraint owning the index `lookup` found (kind "x")."""
    if found.owner is None:
        return None
    cons = a.catalog.constraints(found.owner)
    return next((c for c in cons if c.physical == found.physical), None)


def _table_name(a: Analyzer, physical: str | None) -> str:
    rel = a.catalog.relation_by_physical(physical) if physical is not None else None
    if rel is None:
        raise CloakError("0A000", "pgcloak could not find the table of a cloaked index")
    return rel.name


# -- ALTER INDEX ... RENAME TO --------------------------------------------------------------


def rename(a: Analyzer, body: Node) -> None:
    rv = body["relation"]
    schema, name, toks = relation_tokens(a, rv)
    new = body["newname"]
    found = lookup(a, schema, name)
    if found is None:  # not cloaked (the catalog does not know temporary indexes): as written
        a.kept.add(toks[-1])
        check_unmentioned(a, body, "ALTER INDEX of an uncloaked index")
        return
    a.touched = True
    a.sensitive.update((name, new))
    if found.relation is not None:
        a.touch(found.relation)
    catalog = a.catalog
    if catalog.relation_physical(found.schema, new) is not None or catalog.has_uncloaked(
        found.schema, new
    ):
        raise CloakError("42P07", f'relation "{new}" already exists')
    change: CatalogChange
    if found.kind == "i":
        index = _index(a, found)
        if index is None or found.owner is None:
            raise CloakError("0A000", "pgcloak could not find a cloaked index in its catalog")
        change = RenameIndex(found.owner, found.physical, new)
    elif found.kind == "x":
        con = _constraint(a, found)
        if con is None or found.owner is None:
            raise CloakError("0A000", "pgcloak could not find a cloaked index in its catalog")
        if any(c.name == new for c in catalog.constraints(found.owner)):
            table = _table_name(a, found.owner)
            raise CloakError("42710", f'constraint "{new}" for relation "{table}" already exists')
        change = RenameConstraint(found.owner, found.physical, new)
    elif found.kind == "s":
        change = RenameSequence(_sequence(a, found, name), new)
    else:  # tables and views: PostgreSQL's ALTER INDEX ... RENAME renames any relation
        change = RenameTable(found.physical, new)
    a.registry_only = "ALTER INDEX"
    a.changes.append(change)


def _sequence(a: Analyzer, found: Found, name: str) -> AnySequence:
    if found.owner is not None:
        for seq in a.catalog.sequences(found.owner):
            if seq.physical == found.physical:
                return seq
    free = a.catalog.standalone_sequence(found.physical)
    return free if free is not None else StandaloneSequence(found.schema, name, found.physical)


# -- DROP INDEX -----------------------------------------------------------------------------


@dataclass
class _Target:
    """One name of a DROP INDEX list: what it resolved to (None: not cloaked)."""

    name: str
    found: Found | None
    missing: bool  # the catalog knows no relation of that name exists
    tok: int


def drop(a: Analyzer, body: Node) -> None:
    """DROP INDEX [CONCURRENTLY] [IF EXISTS] name, ... [CASCADE | RESTRICT]."""
    first = a.lo + 2  # DROP INDEX
    if a.ts.name(first) == "CONCURRENTLY":
        first += 1
    targets: list[_Target] = []
    for schema, name, tok in drop_objects(a, body, first):
        found = lookup(a, schema, name)
        missing = False
        if found is None:
            missing = uncloaked_exists(a.catalog, schema, name, a.search_path) is False
            a.kept.add(tok)
        else:
            a.touched = True
            a.sensitive.add(name)
            if found.relation is not None:
                a.touch(found.relation)
            a.edits.set(tok, found.physical)
        targets.append(_Target(name, found, missing, tok))
    if not a.touched:
        return  # nothing cloaked (temporary indexes included): the server's business
    _check_drop(a, body, targets)
    for t in targets:
        if t.missing:  # IF EXISTS (else _check_drop raised): the client's word stays here
            a.kept.discard(t.tok)
            a.edits.set(t.tok, a.dummy(t.name, "i"))
    cascade = body.get("behavior") == "DROP_CASCADE"
    dropping = [t.found for t in targets if t.found is not None]
    indexes = [i for f in dropping if (i := _index(a, f)) is not None]
    gone = {i.physical for i in indexes}
    for index in indexes:
        cascaded = _cascaded(a, index, gone) if cascade else ()
        a.changes.append(DropIndex(index.table, index.physical, cascaded))
        ddl_partition.index_dropped(a, index)  # the partitions' copies go with it


def _check_drop(a: Analyzer, body: Node, targets: list[_Target]) -> None:
    """PostgreSQL's errors, in its order: statement form, then each name, then dependencies."""
    if body.get("concurrent"):
        if len(targets) != 1:
            raise CloakError(
                "0A000", "DROP INDEX CONCURRENTLY does not support dropping multiple objects"
            )
        if body.get("behavior") == "DROP_CASCADE":
            raise CloakError("0A000", "DROP INDEX CONCURRENTLY does not support CASCADE")
    for t in targets:
        if t.found is None:
            if t.missing and not body.get("missing_ok"):
                raise CloakError("42704", f'index "{t.name}" does not exist')
            continue
        if t.found.kind not in ("i", "x"):
            raise CloakError(
                "42809", f'"{t.name}" is not an index', hint=_DROP_HINTS.get(t.found.kind)
            )
        if t.found.kind == "i" and _index(a, t.found) is None:
            raise CloakError("0A000", "pgcloak could not find a cloaked index in its catalog")
    for t in targets:
        if t.found is not None and t.found.kind == "x":
            con = _constraint(a, t.found)
            if con is None:
                raise CloakError("0A000", "pgcloak could not find a cloaked index in its catalog")
            owner = f"constraint {con.name} on table {_table_name(a, t.found.owner)}"
            raise CloakError(
                "2BP01",
                f"cannot drop index {t.name} because {owner} requires it",
                hint=f"You can drop {owner} instead.",
            )


def _cascaded(a: Analyzer, index: Index, gone: set[str]) -> tuple[Constraint, ...]:
    """The FKs DROP INDEX ... CASCADE drops with a unique index (those that use it).

    An FK depends on the unique index PostgreSQL picked for its referenced columns.
    When another unique index or constraint on the same columns could be that one,
    pgcloak cannot tell which FKs go, and refuses.
    """
    if not index.unique:
        return ()
    cols = set(index.columns)
    fks = [fk for fk in a.catalog.foreign_keys_to(index.table) if set(fk.ref_columns) <= cols]
    if not fks:
        return ()
    exact = all(set(fk.ref_columns) == cols for fk in fks)
    others = [
        c for c in a.catalog.constraints(index.table)
        if c.contype in ("p", "u") and set(c.columns) == cols
    ] + [
        i for i in a.catalog.indexes(index.table)
        if i.unique and i.physical not in gone and set(i.columns) == cols
    ]  # fmt: skip
    if not exact or others:
        raise CloakError(
            "0A000",
            "pgcloak cannot tell which foreign keys DROP INDEX ... CASCADE would drop with "
            "this index; drop those constraints first",
        )
    return tuple(fks)
