"""A catalog seen through pending changes, for planning multi-statement query strings.

In ``CREATE TABLE t (...); INSERT INTO t ...`` the INSERT must be planned as if
the CREATE had succeeded: a query string runs as one implicit transaction, so if
the CREATE fails, the INSERT never runs. The overlay copies each table it changes
from the base catalog on first touch and answers for it from then on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    AttachIndex,
    AttachPartition,
    Catalog,
    CatalogChange,
    Constraint,
    CreateIndex,
    CreateSequence,
    CreateTable,
    CreateView,
    DetachPartition,
    DropColumn,
    DropConstraint,
    DropIndex,
    DropSequence,
    DropTable,
    DropView,
    Index,
    MemoryCatalog,
    OwnedSequence,
    Relation,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameSequence,
    RenameTable,
    ReplaceView,
    SetSequenceOwner,
    StandaloneSequence,
)

__all__ = ["OverlayCatalog"]


def _tables(change: CatalogChange) -> set[str]:
    """Physical names of every table a change modifies."""
    match change:
        case CreateTable(table):
            return {table.physical}
        case DropTable(table, cons):
            return {table} | {c.table for c in cons}
        case DropColumn(table, _, cons):
            return {table} | {c.table for c in cons}
        case DropConstraint(table, _, cascaded) | DropIndex(table, _, cascaded):
            return {table} | {c.table for c in cascaded}
        case AddConstraint(con):
            return {con.table}
        case CreateIndex(index):
            return {index.table}
        case RenameIndex(table):
            return {table}
        case AddColumn(table) | RenameTable(table) | RenameColumn(table) | RenameConstraint(table):
            return {table}
        case CreateView(view):
            return {view.physical}
        case AttachPartition(_, table) | DetachPartition(_, table) | AttachIndex(table):
            return {table}
        case ReplaceView(view) | DropView(view):
            return {view}
        case SetSequenceOwner(seq, table):
            owners = {table} if table is not None else set()
            return owners | ({seq.table} if isinstance(seq, OwnedSequence) else set())
        case CreateSequence(seq) | DropSequence(seq) | RenameSequence(seq):
            return {seq.table} if isinstance(seq, OwnedSequence) else set()
    return set()  # SetComment: comments play no part in planning


def _free_sequence(change: CatalogChange) -> StandaloneSequence | None:
    """The standalone sequence an existing-sequence change modifies, if any."""
    match change:
        case DropSequence(seq) | RenameSequence(seq) | SetSequenceOwner(seq):
            return seq if isinstance(seq, StandaloneSequence) else None
    return None


class OverlayCatalog(MemoryCatalog):
    """`base` plus changes applied on top (only the touched tables live here)."""

    def __init__(self, base: Catalog) -> None:
        super().__init__()
        self._base = base
        self._touched: set[str] = set()
        self._stale: set[str] = set()  # base physical names of touched tables' objects
        self._stale_rel: set[tuple[str, str]] = set()  # their (schema, semantic) names
        self._stale_con: set[tuple[str, str]] = set()

    def apply(self, change: CatalogChange) -> None:
        for table in _tables(change):
            self._materialize(table)
        free = _free_sequence(change)
        if free is not None and free.physical not in self._touched:
            self._touched.add(free.physical)
            base = self._base.standalone_sequence(free.physical)
            if base is not None:
                self._stale.add(base.physical)
                self._stale_rel.add((base.schema, base.name))
                self._free[base.physical] = base
        super().apply(change)

    def _materialize(self, table: str) -> None:
        if table in self._touched:
            return
        self._touched.add(table)
        rel = self._base.relation_by_physical(table)
        if rel is None:
            return
        cons = list(self._base.constraints(table))
        idxs = list(self._base.indexes(table))
        seqs = list(self._base.sequences(table))
        self._stale.add(table)
        self._stale_rel.add((rel.schema, rel.name))
        for c in cons:
            self._stale_con.add((c.schema, c.name))
            if c.contype in ("p", "u", "x"):
                self._stale.add(c.physical)
                self._stale_rel.add((c.schema, c.name))
        named: list[Index | OwnedSequence] = [*idxs, *seqs]
        for obj in named:
            self._stale.add(obj.physical)
            self._stale_rel.add((obj.schema, obj.name))
        super().apply(CreateTable(rel, tuple(cons), tuple(idxs), tuple(seqs)))

    # -- Catalog, merged ------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._base.version

    def relation(self, schema: str, name: str) -> Relation | None:
        mine = super().relation(schema, name)
        if mine is not None:
            return mine
        rel = self._base.relation(schema, name)
        return None if rel is None or rel.physical in self._touched else rel

    def relation_by_physical(self, physical: str) -> Relation | None:
        if physical in self._touched:
            return super().relation_by_physical(physical)
        return self._base.relation_by_physical(physical)

    def constraints(self, table: str) -> Sequence[Constraint]:
        return (
            super().constraints(table) if table in self._touched else self._base.constraints(table)
        )

    def indexes(self, table: str) -> Sequence[Index]:
        return super().indexes(table) if table in self._touched else self._base.indexes(table)

    def sequences(self, table: str) -> Sequence[OwnedSequence]:
        return super().sequences(table) if table in self._touched else self._base.sequences(table)

    def standalone_sequence(self, physical: str) -> StandaloneSequence | None:
        mine = super().standalone_sequence(physical)
        if mine is not None or physical in self._touched or physical in self._stale:
            return mine
        return self._base.standalone_sequence(physical)

    def foreign_keys_to(self, table: str) -> Sequence[Constraint]:
        base = [fk for fk in self._base.foreign_keys_to(table) if fk.table not in self._touched]
        return base + list(super().foreign_keys_to(table))

    def relation_physical(self, schema: str, name: str) -> str | None:
        mine = super().relation_physical(schema, name)
        if mine is not None:
            return mine
        phys = self._base.relation_physical(schema, name)
        return None if phys is None or phys in self._stale else phys

    def relation_names(self, schema: str) -> Collection[str]:
        base = {n for n in self._base.relation_names(schema) if (schema, n) not in self._stale_rel}
        return base | set(super().relation_names(schema))

    def constraint_names(self, schema: str) -> Collection[str]:
        base = {
            n for n in self._base.constraint_names(schema) if (schema, n) not in self._stale_con
        }
        return base | set(super().constraint_names(schema))

    def column_physical_hint(self, schema: str, name: str) -> str | None:
        mine = super().column_physical_hint(schema, name)
        return mine if mine is not None else self._base.column_physical_hint(schema, name)

    def sensitive_names(self) -> Collection[str]:
        return set(self._base.sensitive_names()) | set(super().sensitive_names())

    def inheritors(self, table: str) -> Sequence[Relation]:
        base = [r for r in self._base.inheritors(table) if r.physical not in self._touched]
        return base + list(super().inheritors(table))

    def has_uncloaked(self, schema: str, name: str) -> bool | None:
        return self._base.has_uncloaked(schema, name)

    def dependent_views(self, relation: str) -> Sequence[Relation] | None:
        base = self._base.dependent_views(relation)
        mine = super().dependent_views(relation)
        if base is None or mine is None:
            return None
        return [v for v in base if v.physical not in self._touched] + list(mine)
