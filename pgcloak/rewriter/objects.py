"""Plain data the rewriter and its callers exchange: cloaked objects and catalog changes.

Objects (`Relation`, `Constraint`, `Index`, sequences) describe what the catalog
holds; changes (`CreateTable`, `DropSequence`, ...) describe what a DDL plan did,
to be applied by the caller once the server accepted the statement (for the
proxy: registry writes through pgcloak.registry.changes; for tests:
`MemoryCatalog.apply`). Semantic names stay out of every repr (reprs reach logs).
Re-exported by pgcloak.rewriter.catalog, where callers usually import them from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcloak.rewriter.policy import ColumnPolicy

__all__ = [
    "AddColumn",
    "AddConstraint",
    "AnySequence",
    "AttachIndex",
    "AttachPartition",
    "CatalogChange",
    "Column",
    "Constraint",
    "CreateIndex",
    "CreateSequence",
    "CreateTable",
    "CreateView",
    "DetachPartition",
    "DropColumn",
    "DropConstraint",
    "DropIndex",
    "DropSequence",
    "DropTable",
    "DropView",
    "Index",
    "OwnedSequence",
    "Relation",
    "RenameColumn",
    "RenameConstraint",
    "RenameIndex",
    "RenameSequence",
    "RenameTable",
    "ReplaceView",
    "SetComment",
    "SetSequenceOwner",
    "StandaloneSequence",
]


@dataclass(frozen=True)
class Column:
    # Semantic names stay out of reprs everywhere here: reprs end up in logs/tracebacks.
    name: str = field(repr=False)
    physical: str
    policy: ColumnPolicy | None = None  # encrypted column (pgcloak.rewriter.policy)
    # GENERATED ALWAYS AS (...) STORED: not in the data of COPY without a column list.
    generated: bool = False


@dataclass(frozen=True)
class Relation:
    """A cloaked table or view; `columns` in attribute order (what `*` expands to).

    `kind` is "table", "view" or "matview". For views, `reads` lists what the
    defining query reads: physical names of cloaked relations and the bare names of
    uncloaked ones; PostgreSQL drops the view with any of them (CASCADE). None means
    unknown (e.g. loaded without dependency data): then CASCADE drops are refused.
    """

    schema: str
    name: str = field(repr=False)
    physical: str
    columns: tuple[Column, ...]
    kind: str = "table"
    reads: tuple[str, ...] | None = None
    # Tables only: the tables it inherits from (INHERITS) or is a partition of (physical
    # names; a partition has exactly one), whether it is a partition, and whether it is
    # partitioned itself (PARTITION BY). Children share their parents' physical column
    # names, as PostgreSQL matches inherited columns by name.
    parents: tuple[str, ...] = ()
    partition: bool = False
    partitioned: bool = False

    def copied(self) -> tuple[Column, ...]:
        """The columns a COPY without a column list copies: all but generated ones."""
        return tuple(c for c in self.columns if not c.generated)

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    def column_by_physical(self, physical: str) -> Column | None:
        for col in self.columns:
            if col.physical == physical:
                return col
        return None


@dataclass(frozen=True)
class Constraint:
    """A table constraint. `contype` as pg_constraint: p, u, f, c, x.

    `columns` are the physical columns it involves (key columns, or the columns a
    CHECK references); FKs also record the referenced table and columns (physical;
    `ref_table` None when the referenced table is not cloaked). p/u/x constraints
    own an index with the same physical name. `parent`: on a partition, the physical
    name of the parent table's constraint this one is attached to (PRIMARY KEY/UNIQUE
    and FOREIGN KEY clones; inherited CHECKs simply share the parent's physical name).
    """

    schema: str
    table: str
    name: str = field(repr=False)
    physical: str
    contype: str
    columns: tuple[str, ...] = ()
    ref_table: str | None = None
    ref_columns: tuple[str, ...] = ()
    implicit: bool = False
    parent: str | None = None
    # A CHECK on an encrypted column that pgcloak keeps and evaluates (the server has no
    # such constraint): its tree as JSON (pgcloak.crypto.checks); never in reprs.
    check: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Index:
    """A plain index (CREATE INDEX); constraint-backed indexes live in `Constraint`.

    `labels`: the index's own column names in PostgreSQL (the physical column, or
    what it calls an expression: ``lower``, ``expr``), from which it names the copies
    it makes on partitions; None when unknown. `parent`: the partitioned table's index
    this one is attached to (physical), if any.
    """

    schema: str
    table: str
    name: str = field(repr=False)
    physical: str
    columns: tuple[str, ...] = ()
    unique: bool = False
    implicit: bool = False
    labels: tuple[str, ...] | None = None
    parent: str | None = None


@dataclass(frozen=True)
class OwnedSequence:
    """The sequence behind a serial or identity column (physical: PostgreSQL's derived name)."""

    schema: str
    name: str = field(repr=False)
    physical: str
    table: str
    column: str
    implicit: bool = True


@dataclass(frozen=True)
class StandaloneSequence:
    """A sequence no column owns: CREATE SEQUENCE without OWNED BY, or after OWNED BY NONE.

    Registered as a parentless sequence; `implicit` survives from an owned sequence
    (a serial's) that was disowned.
    """

    schema: str
    name: str = field(repr=False)
    physical: str
    implicit: bool = False


AnySequence = StandaloneSequence | OwnedSequence


# -- catalog changes (data only; see MemoryCatalog.apply for their meaning) -------------


@dataclass(frozen=True)
class CreateTable:
    table: Relation
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    sequences: tuple[OwnedSequence, ...] = ()


@dataclass(frozen=True)
class DropTable:
    """Drop a table with everything it owns; `constraints`: other tables' FKs dropped too."""

    table: str
    constraints: tuple[Constraint, ...] = ()


@dataclass(frozen=True)
class RenameTable:
    table: str
    new_name: str = field(repr=False)


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: Column
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    sequences: tuple[OwnedSequence, ...] = ()


@dataclass(frozen=True)
class DropColumn:
    """Drop a column and the constraints, indexes and sequences that go with it."""

    table: str
    column: str
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    sequences: tuple[OwnedSequence, ...] = ()


@dataclass(frozen=True)
class RenameColumn:
    table: str
    column: str
    new_name: str = field(repr=False)


@dataclass(frozen=True)
class AddConstraint:
    constraint: Constraint


@dataclass(frozen=True)
class DropConstraint:
    """Drop a constraint; `cascaded`: FKs of other tables dropped with it (CASCADE)."""

    table: str
    constraint: str
    cascaded: tuple[Constraint, ...] = ()


@dataclass(frozen=True)
class RenameConstraint:
    table: str
    constraint: str
    new_name: str = field(repr=False)


@dataclass(frozen=True)
class CreateIndex:
    index: Index


@dataclass(frozen=True)
class DropIndex:
    """DROP INDEX of a plain index of `table`; `cascaded`: FKs that depended on it (CASCADE)."""

    table: str
    index: str
    cascaded: tuple[Constraint, ...] = ()


@dataclass(frozen=True)
class RenameIndex:
    """ALTER INDEX ... RENAME TO of a plain index: registry-only, like table renames.

    (Renaming the index of a PRIMARY KEY/UNIQUE/EXCLUDE constraint renames the
    constraint: that is a RenameConstraint.)
    """

    table: str
    index: str
    new_name: str = field(repr=False)


@dataclass(frozen=True)
class CreateView:
    """A new view or materialized view (`view.kind`) with its columns and `reads`."""

    view: Relation


@dataclass(frozen=True)
class ReplaceView:
    """CREATE OR REPLACE VIEW of a cloaked view: `columns` appended, `reads` replaced."""

    view: str
    columns: tuple[Column, ...] = ()
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class DropView:
    """Drop a view or materialized view with its columns (and a matview's indexes).

    Views dropped by CASCADE come as further DropView changes of the same plan.
    """

    view: str


@dataclass(frozen=True)
class SetComment:
    """COMMENT ON a cloaked object: kept in the registry only, never in pg_description.

    `kind` is the registry kind letter (t table, v view, m matview, c column,
    k constraint, i index, s sequence); `parent_physical` is the relation of a
    column or constraint (None for relations). `comment` None removes it.
    """

    kind: str
    physical: str
    parent_physical: str | None = None
    comment: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AttachPartition:
    """ALTER TABLE parent ATTACH PARTITION table (`partition` False: ALTER TABLE table
    INHERIT parent). What PostgreSQL copies onto the table comes as AddConstraint and
    CreateIndex changes, what it reuses as AttachIndex changes."""

    parent: str
    table: str
    partition: bool = True


@dataclass(frozen=True)
class AttachIndex:
    """An existing constraint or index of `table` PostgreSQL attached to the parent table's
    `parent` (ATTACH PARTITION, CREATE INDEX or ADD CONSTRAINT on a partitioned table)."""

    table: str
    physical: str
    parent: str


@dataclass(frozen=True)
class DetachPartition:
    """ALTER TABLE parent DETACH PARTITION table (or NO INHERIT): the table keeps its
    columns, constraints and indexes, no longer attached to the parent's."""

    parent: str
    table: str


@dataclass(frozen=True)
class CreateSequence:
    """CREATE SEQUENCE: standalone, or owned by a cloaked column (OWNED BY)."""

    sequence: AnySequence


@dataclass(frozen=True)
class DropSequence:
    """DROP SEQUENCE (views depending on it come as DropView changes of the same plan)."""

    sequence: AnySequence


@dataclass(frozen=True)
class RenameSequence:
    """ALTER SEQUENCE ... RENAME TO: registry-only, like table renames."""

    sequence: AnySequence
    new_name: str = field(repr=False)


@dataclass(frozen=True)
class SetSequenceOwner:
    """ALTER SEQUENCE ... OWNED BY table.column (physical names), or OWNED BY NONE (None)."""

    sequence: AnySequence
    table: str | None = None
    column: str | None = None


CatalogChange = (
    CreateTable
    | DropTable
    | RenameTable
    | AddColumn
    | DropColumn
    | RenameColumn
    | AddConstraint
    | DropConstraint
    | RenameConstraint
    | CreateIndex
    | DropIndex
    | RenameIndex
    | CreateView
    | ReplaceView
    | DropView
    | SetComment
    | CreateSequence
    | DropSequence
    | RenameSequence
    | SetSequenceOwner
    | AttachPartition
    | AttachIndex
    | DetachPartition
)
