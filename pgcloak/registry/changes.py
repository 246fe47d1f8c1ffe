"""Rewriter catalog changes as registry changes: `writes_for(registry, change)`.

A DDL plan says what it did in `CatalogChange` values (physical names plus the
semantic names to register). Each one is applied to the in-memory `Registry` here,
which returns the `Write`s to send in the same transaction as the DDL. Objects are
found by physical name; a change that names something the registry lacks means
registry and catalog diverged, and raises `ChangeMismatch` (physical names only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pgcloak.registry.model import Kind, RegistryObject, Write
from pgcloak.registry.store import Registry, RegistryError
from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    AttachIndex,
    AttachPartition,
    CatalogChange,
    Column,
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
    OwnedSequence,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameSequence,
    RenameTable,
    ReplaceView,
    SetComment,
    SetSequenceOwner,
)

__all__ = ["ChangeMismatch", "writes_for", "writes_for_all"]


class ChangeMismatch(RegistryError):
    """A change refers to an object the registry does not have (or has twice)."""


def _registered(registry: Registry, physical: str, kind: Kind) -> RegistryObject:
    """The relation, index or sequence registered as `physical`; it must be a `kind`."""
    obj = registry.by_physical(physical)
    if obj is None or obj.kind != kind:
        raise ChangeMismatch(f"no registered {kind.label} {physical}")
    return obj


def _table(registry: Registry, physical: str) -> RegistryObject:
    return _registered(registry, physical, Kind.TABLE)


_VIEW_KINDS = {"view": Kind.VIEW, "matview": Kind.MATVIEW}
_COLUMN_HOLDERS = (Kind.TABLE, Kind.VIEW, Kind.MATVIEW)


def _relation(
    registry: Registry, physical: str, kinds: tuple[Kind, ...] = _COLUMN_HOLDERS
) -> RegistryObject:
    """A registered relation of one of `kinds` (renames work on tables and views alike)."""
    obj = registry.by_physical(physical)
    if obj is None or obj.kind not in kinds:
        raise ChangeMismatch(f"no registered relation {physical}")
    return obj


def _add_columns(
    registry: Registry, holder: RegistryObject, columns: Iterable[Column], first: int
) -> list[Write]:
    writes: list[Write] = []
    for pos, col in enumerate(columns, first):
        writes += registry.add(
            Kind.COLUMN, col.name, parent=holder, physical_name=col.physical, position=pos,
            policy=_policy(col),
        ).writes  # fmt: skip
    return writes


def _policy(col: Column) -> dict[str, str] | None:
    """An encrypted column's policy as stored in objects.policy (JSON)."""
    return None if col.policy is None else col.policy.to_json()


def _child(registry: Registry, table: RegistryObject, physical: str, kind: Kind) -> RegistryObject:
    obj = registry.by_physical(physical, table)
    if obj is None or obj.kind != kind:
        raise ChangeMismatch(f"no registered {kind.label} {table.physical_name}.{physical}")
    return obj


def _add_constraints(
    registry: Registry, table: RegistryObject, constraints: Iterable[Constraint]
) -> list[Write]:
    writes: list[Write] = []
    for con in constraints:
        writes += registry.add(
            Kind.CONSTRAINT,
            con.name,
            parent=table,
            physical_name=con.physical,
            contype=con.contype,
            implicit=con.implicit,
            check=_kept_check(con),
        ).writes
    return writes


def _kept_check(con: Constraint) -> str | None:
    """A CHECK pgcloak keeps (encrypted column): its column and tree, as the registry
    stores them (encrypted) in the constraint's row."""
    if con.check is None:
        return None
    return json.dumps({"column": con.columns[0], "tree": json.loads(con.check)},
                      separators=(",", ":"))  # fmt: skip


def _add_indexes(
    registry: Registry, table: RegistryObject, indexes: Iterable[Index]
) -> list[Write]:
    writes: list[Write] = []
    for idx in indexes:
        writes += registry.add(
            Kind.INDEX,
            idx.name,
            schema=idx.schema,
            parent=table,
            physical_name=idx.physical,
            implicit=idx.implicit,
        ).writes
    return writes


def _add_sequences(
    registry: Registry, table: RegistryObject, sequences: Iterable[OwnedSequence]
) -> list[Write]:
    writes: list[Write] = []
    for seq in sequences:
        column = _child(registry, table, seq.column, Kind.COLUMN)
        writes += registry.add(
            Kind.SEQUENCE,
            seq.name,
            schema=seq.schema,
            parent=column,
            physical_name=seq.physical,
            implicit=seq.implicit,
        ).writes
    return writes


def _add_dependents(
    registry: Registry,
    table: RegistryObject,
    constraints: Iterable[Constraint],
    indexes: Iterable[Index],
    sequences: Iterable[OwnedSequence],
) -> list[Write]:
    """What a new table or column brings along: constraints, indexes, owned sequences."""
    return (
        _add_constraints(registry, table, constraints)
        + _add_indexes(registry, table, indexes)
        + _add_sequences(registry, table, sequences)
    )


def _sequence_writes(registry: Registry, change: CatalogChange) -> list[Write]:
    """Standalone sequences are parentless registry sequences; owned ones a column's child."""
    match change:
        case CreateSequence(seq):
            if isinstance(seq, OwnedSequence):
                return _add_sequences(registry, _table(registry, seq.table), [seq])
            return registry.add(
                Kind.SEQUENCE,
                seq.name,
                schema=seq.schema,
                physical_name=seq.physical,
                implicit=seq.implicit,
            ).writes
        case DropSequence(seq):
            return registry.drop(_registered(registry, seq.physical, Kind.SEQUENCE).id)
        case RenameSequence(seq, new_name):
            return registry.rename(_registered(registry, seq.physical, Kind.SEQUENCE).id, new_name)
        case SetSequenceOwner(seq, table, column):
            owner = None
            if table is not None and column is not None:
                owner = _child(registry, _table(registry, table), column, Kind.COLUMN).id
            return registry.set_parent(_registered(registry, seq.physical, Kind.SEQUENCE).id, owner)
    raise TypeError(f"not a sequence change: {type(change).__name__}")


def _drop_constraints(registry: Registry, constraints: Iterable[Constraint]) -> list[Write]:
    """Drop constraints of any table; ones already gone (cascades) are skipped."""
    writes: list[Write] = []
    for con in constraints:
        table = registry.by_physical(con.table)
        found = None if table is None else registry.by_physical(con.physical, table)
        if found is not None and found.kind == Kind.CONSTRAINT:
            writes += registry.drop(found.id)
    return writes


def _next_position(registry: Registry, table: RegistryObject) -> int:
    return max((c.position or 0 for c in registry.columns(table)), default=0) + 1


def writes_for(registry: Registry, change: CatalogChange) -> list[Write]:
    """Apply one plan change to `registry` and return the registry writes for it.

    Raises NameConflict (from the registry) when a semantic name is taken, and
    ChangeMismatch when the change names an object the registry does not have.
    """
    match change:
        case CreateTable(rel, cons, idxs, seqs):
            kind = {"view": Kind.VIEW, "matview": Kind.MATVIEW}.get(rel.kind, Kind.TABLE)
            table, writes = registry.add(kind, rel.name, schema=rel.schema,
                                         physical_name=rel.physical)  # fmt: skip
            writes += _add_columns(registry, table, rel.columns, 1)
            return writes + _add_dependents(registry, table, cons, idxs, seqs)
        case DropTable(physical, cascaded):
            writes = registry.drop(_table(registry, physical).id)
            return writes + _drop_constraints(registry, cascaded)
        case RenameTable(physical, new_name):
            return registry.rename(_relation(registry, physical).id, new_name)
        case AddColumn(physical, col, cons, idxs, seqs):
            table = _table(registry, physical)
            writes = registry.add(
                Kind.COLUMN,
                col.name,
                parent=table,
                physical_name=col.physical,
                position=_next_position(registry, table),
                policy=_policy(col),
            ).writes
            return writes + _add_dependents(registry, table, cons, idxs, seqs)
        case DropColumn(physical, column, cons, idxs, _seqs):
            # Owned sequences are the column's children: they go with it.
            table = _table(registry, physical)
            writes = _drop_constraints(registry, cons)
            for idx in idxs:
                found = registry.by_physical(idx.physical)
                if found is not None and found.kind == Kind.INDEX:
                    writes += registry.drop(found.id)
            return writes + registry.drop(_child(registry, table, column, Kind.COLUMN).id)
        case RenameColumn(physical, column, new_name):
            table = _relation(registry, physical)
            return registry.rename(_child(registry, table, column, Kind.COLUMN).id, new_name)
        case AddConstraint(con):
            return _add_constraints(registry, _table(registry, con.table), [con])
        case DropConstraint(physical, constraint, cascaded):
            table = _table(registry, physical)
            writes = registry.drop(_child(registry, table, constraint, Kind.CONSTRAINT).id)
            return writes + _drop_constraints(registry, cascaded)
        case RenameConstraint(physical, constraint, new_name):
            table = _table(registry, physical)
            found = _child(registry, table, constraint, Kind.CONSTRAINT)
            return registry.rename(found.id, new_name)
        case CreateIndex(idx):
            holder = _relation(registry, idx.table, (Kind.TABLE, Kind.MATVIEW))
            return _add_indexes(registry, holder, [idx])
        case DropIndex(_physical, index, cascaded):
            writes = registry.drop(_registered(registry, index, Kind.INDEX).id)
            return writes + _drop_constraints(registry, cascaded)
        case RenameIndex(_physical, index, new_name):
            return registry.rename(_registered(registry, index, Kind.INDEX).id, new_name)
        case CreateView(rel):
            view, writes = registry.add(_VIEW_KINDS[rel.kind], rel.name, schema=rel.schema,
                                        physical_name=rel.physical)  # fmt: skip
            return writes + _add_columns(registry, view, rel.columns, 1)
        case ReplaceView(physical, columns, _reads):
            view = _relation(registry, physical, (Kind.VIEW,))
            return _add_columns(registry, view, columns, _next_position(registry, view))
        case DropView(physical):
            # Columns and a matview's indexes are its children: they go with it.
            return registry.drop(_relation(registry, physical, (Kind.VIEW, Kind.MATVIEW)).id)
        case SetComment(kind, physical, parent, text):
            owner = None if parent is None else _relation(registry, parent)
            found = registry.by_physical(physical, owner)
            if found is None or found.kind != Kind(kind):
                raise ChangeMismatch(f"no registered {Kind(kind).label} {physical}")
            return registry.set_comment(found.id, text)
        case AttachPartition(parent, table) | DetachPartition(parent, table):
            # Partitions/children are plain registered tables: pg_inherits says whose.
            _table(registry, parent)
            _table(registry, table)
            return []
        case AttachIndex(table, _physical, _parent):
            _table(registry, table)
            return []
        case CreateSequence() | DropSequence() | RenameSequence() | SetSequenceOwner():
            return _sequence_writes(registry, change)
    raise TypeError(f"not a catalog change: {type(change).__name__}")


def writes_for_all(registry: Registry, changes: Iterable[CatalogChange]) -> list[Write]:
    """`writes_for` over a plan's changes, in order."""
    writes: list[Write] = []
    for change in changes:
        writes += writes_for(registry, change)
    return writes
