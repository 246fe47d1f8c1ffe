"""The slice of the registry the rewriter needs, as a Protocol plus plain data.

The rewriter only reads a `Catalog`; DDL plans describe their effect as
`CatalogChange` values that the caller applies once the server has accepted the
statement (for the proxy: registry writes; for tests: `MemoryCatalog.apply`).
All names here are exact PostgreSQL names (already case-folded by the parser);
"physical" is what the database sees, "name" the client's semantic name. Tables
are identified by their physical name, which never changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

__all__ = [
    "AddColumn",
    "AddConstraint",
    "Catalog",
    "CatalogChange",
    "CloakFilter",
    "Column",
    "Constraint",
    "CreateIndex",
    "CreateTable",
    "CreateView",
    "DropColumn",
    "DropConstraint",
    "DropTable",
    "DropView",
    "Index",
    "MemoryCatalog",
    "OwnedSequence",
    "Relation",
    "RenameColumn",
    "RenameConstraint",
    "RenameTable",
    "ReplaceView",
    "SetComment",
    "creation_schema",
    "find_relation",
    "uncloaked_exists",
]

DEFAULT_SEARCH_PATH = ("public",)

# (schema, table) -> whether a new table is to be cloaked.
CloakFilter = Callable[[str, str], bool]


@dataclass(frozen=True)
class Column:
    # Semantic names stay out of reprs everywhere here: reprs end up in logs/tracebacks.
    name: str = field(repr=False)
    physical: str


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
    own an index with the same physical name.
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


@dataclass(frozen=True)
class Index:
    """A plain index (CREATE INDEX); constraint-backed indexes live in `Constraint`."""

    schema: str
    table: str
    name: str = field(repr=False)
    physical: str
    columns: tuple[str, ...] = ()
    unique: bool = False
    implicit: bool = False


@dataclass(frozen=True)
class OwnedSequence:
    """The sequence behind a serial or identity column (physical: PostgreSQL's derived name)."""

    schema: str
    name: str = field(repr=False)
    physical: str
    table: str
    column: str
    implicit: bool = True


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
    | CreateView
    | ReplaceView
    | DropView
    | SetComment
)


class Catalog(Protocol):
    """Read access to cloaked objects. `version` changes whenever the content does."""

    @property
    def version(self) -> int: ...

    def relation(self, schema: str, name: str) -> Relation | None: ...

    def relation_by_physical(self, physical: str) -> Relation | None: ...

    def constraints(self, table: str) -> Sequence[Constraint]: ...

    def indexes(self, table: str) -> Sequence[Index]: ...

    def sequences(self, table: str) -> Sequence[OwnedSequence]: ...

    def foreign_keys_to(self, table: str) -> Sequence[Constraint]:
        """FK constraints of any table that reference `table` (physical)."""
        ...

    def relation_physical(self, schema: str, name: str) -> str | None:
        """Physical name of whatever holds `name` in the schema's relation namespace."""
        ...

    def relation_names(self, schema: str) -> Collection[str]:
        """Semantic names in pg_class's namespace: tables, views, indexes, sequences."""
        ...

    def constraint_names(self, schema: str) -> Collection[str]: ...

    def column_physical_hint(self, schema: str, name: str) -> str | None:
        """Physical name already used by columns called `name` in the schema, if any."""
        ...

    def sensitive_names(self) -> Collection[str]:
        """Semantic names of every cloaked relation, index, sequence and constraint."""
        ...

    def dependent_views(self, relation: str) -> Sequence[Relation] | None:
        """Cloaked views whose query reads `relation` directly; None if it can't tell.

        `relation` is a cloaked relation's physical name or an uncloaked one's name.
        """
        ...

    def has_uncloaked(self, schema: str, name: str) -> bool | None:
        """Whether an uncloaked relation schema.name exists; None if the catalog can't tell.

        A catalog that knows the database's other relations lets the rewriter refuse
        unknown names (42P01) instead of sending them to the server verbatim.
        """
        ...


def _skip(entry: str) -> bool:
    """search_path entries that never hold cloaked tables ($user, pg_temp, pg_catalog)."""
    return entry.strip('"').startswith("$") or entry in ("pg_temp", "pg_catalog")


def find_relation(
    catalog: Catalog, schema: str | None, name: str, search_path: Sequence[str]
) -> Relation | None:
    """Resolve a (possibly qualified) table name the way the server would, among cloaked ones."""
    if schema is not None:
        return catalog.relation(schema, name)
    for entry in search_path:
        if _skip(entry):
            continue
        rel = catalog.relation(entry, name)
        if rel is not None:
            return rel
    return None


def uncloaked_exists(
    catalog: Catalog, schema: str | None, name: str, search_path: Sequence[str]
) -> bool | None:
    """Does an uncloaked relation by this name resolve? None when the catalog can't tell."""
    if schema is not None:
        return catalog.has_uncloaked(schema, name)
    answers = [
        catalog.has_uncloaked(s, name)
        for s in ("pg_catalog", *search_path)
        if s == "pg_catalog" or not _skip(s)
    ]
    if any(answers):
        return True
    return None if None in answers else False


def creation_schema(search_path: Sequence[str]) -> str | None:
    """Schema a CREATE without schema goes to: the first usable search_path entry."""
    for entry in search_path:
        if not _skip(entry):
            return entry
    return None


class MemoryCatalog:
    """A plain in-memory Catalog (tests; filled from the registry by the proxy)."""

    _ids = itertools.count(1)

    def __init__(self, uncloaked: Iterable[tuple[str, str]] | None = None) -> None:
        """`uncloaked`: (schema, name) of the database's other relations, if known."""
        self._uncloaked = None if uncloaked is None else set(uncloaked)
        self._version = next(self._ids) << 32
        self._rels: dict[tuple[str, str], Relation] = {}
        self._by_phys: dict[str, Relation] = {}
        self._cons: dict[str, list[Constraint]] = {}
        self._idx: dict[str, list[Index]] = {}
        self._seqs: dict[str, list[OwnedSequence]] = {}
        self._comments: dict[tuple[str, str | None, str], str] = {}
        self._sensitive: frozenset[str] | None = None

    # -- Catalog --------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    def relation(self, schema: str, name: str) -> Relation | None:
        return self._rels.get((schema, name))

    def relation_by_physical(self, physical: str) -> Relation | None:
        return self._by_phys.get(physical)

    def constraints(self, table: str) -> Sequence[Constraint]:
        return tuple(self._cons.get(table, ()))

    def indexes(self, table: str) -> Sequence[Index]:
        return tuple(self._idx.get(table, ()))

    def sequences(self, table: str) -> Sequence[OwnedSequence]:
        return tuple(self._seqs.get(table, ()))

    def foreign_keys_to(self, table: str) -> Sequence[Constraint]:
        return tuple(
            c
            for cons in self._cons.values()
            for c in cons
            if c.contype == "f" and c.ref_table == table
        )

    def _relation_objects(self, schema: str) -> Iterable[tuple[str, str]]:
        for rel in self._by_phys.values():
            if rel.schema != schema:
                continue
            yield rel.name, rel.physical
            for c in self._cons.get(rel.physical, ()):
                if c.contype in ("p", "u", "x"):
                    yield c.name, c.physical
            for i in self._idx.get(rel.physical, ()):
                yield i.name, i.physical
            for s in self._seqs.get(rel.physical, ()):
                yield s.name, s.physical

    def relation_physical(self, schema: str, name: str) -> str | None:
        for sem, phys in self._relation_objects(schema):
            if sem == name:
                return phys
        return None

    def relation_names(self, schema: str) -> Collection[str]:
        return {sem for sem, _ in self._relation_objects(schema)}

    def constraint_names(self, schema: str) -> Collection[str]:
        return {c.name for cons in self._cons.values() for c in cons if c.schema == schema}

    def column_physical_hint(self, schema: str, name: str) -> str | None:
        for rel in self._by_phys.values():
            if rel.schema == schema:
                col = rel.column(name)
                if col is not None:
                    return col.physical
        return None

    def sensitive_names(self) -> Collection[str]:
        if self._sensitive is None:
            names: set[str] = set()
            for rel in self._by_phys.values():
                names.update(sem for sem, _ in self._relation_objects(rel.schema))
            names.update(c.name for cons in self._cons.values() for c in cons)
            self._sensitive = frozenset(names)
        return self._sensitive

    def has_uncloaked(self, schema: str, name: str) -> bool | None:
        if self._uncloaked is None:
            return None
        return (schema, name) in self._uncloaked

    def dependent_views(self, relation: str) -> Sequence[Relation] | None:
        found = []
        for rel in self._by_phys.values():
            if rel.kind in ("view", "matview"):
                if rel.reads is None:
                    return None
                if relation in rel.reads:
                    found.append(rel)
        return tuple(found)

    def comment(self, kind: str, physical: str, parent_physical: str | None = None) -> str | None:
        """The comment SetComment recorded (tests; the proxy keeps them in the registry)."""
        return self._comments.get((kind, parent_physical, physical))

    # -- changes --------------------------------------------------------------------

    def add_relation(self, rel: Relation) -> None:
        """Register a table directly (tests and loading from the registry)."""
        self.apply(CreateTable(rel))

    def apply(self, change: CatalogChange) -> None:
        """Apply one change from a plan (after the server accepted the statement)."""
        self._apply(change)
        self._version += 1
        self._sensitive = None

    def apply_all(self, changes: Iterable[CatalogChange]) -> None:
        for change in changes:
            self.apply(change)

    def _put(self, rel: Relation) -> None:
        old = self._by_phys.get(rel.physical)
        if old is not None:
            del self._rels[(old.schema, old.name)]
        self._rels[(rel.schema, rel.name)] = rel
        self._by_phys[rel.physical] = rel

    def _rel(self, physical: str) -> Relation:
        rel = self._by_phys.get(physical)
        if rel is None:
            raise KeyError(f"no cloaked table {physical}")
        return rel

    def _drop_constraints(self, dropped: Iterable[Constraint]) -> None:
        for con in dropped:
            cons = self._cons.get(con.table, [])
            cons[:] = [c for c in cons if c.physical != con.physical]

    def _drop_relation(self, physical: str) -> None:
        rel = self._rel(physical)
        del self._rels[(rel.schema, rel.name)]
        del self._by_phys[physical]
        for store in (self._cons, self._idx, self._seqs):
            store.pop(physical, None)
        if self._comments:
            self._comments = {
                k: v for k, v in self._comments.items() if physical not in (k[1], k[2])
            }

    def _apply(self, change: CatalogChange) -> None:
        match change:
            case CreateTable(table, cons, idxs, seqs):
                self._put(table)
                self._cons.setdefault(table.physical, []).extend(cons)
                self._idx.setdefault(table.physical, []).extend(idxs)
                self._seqs.setdefault(table.physical, []).extend(seqs)
            case DropTable(table, cons):
                self._drop_relation(table)
                self._drop_constraints(cons)
            case RenameTable(table, new_name):
                self._put(replace(self._rel(table), name=new_name))
            case AddColumn(table, column, cons, idxs, seqs):
                rel = self._rel(table)
                self._put(replace(rel, columns=(*rel.columns, column)))
                self._cons.setdefault(table, []).extend(cons)
                self._idx.setdefault(table, []).extend(idxs)
                self._seqs.setdefault(table, []).extend(seqs)
            case DropColumn(table, column, cons, idxs, seqs):
                rel = self._rel(table)
                cols = tuple(c for c in rel.columns if c.physical != column)
                self._put(replace(rel, columns=cols))
                self._comments.pop(("c", table, column), None)
                self._drop_constraints(cons)
                gone_i = {i.physical for i in idxs}
                self._idx[table] = [i for i in self._idx.get(table, []) if i.physical not in gone_i]
                gone_s = {s.physical for s in seqs}
                self._seqs[table] = [
                    s for s in self._seqs.get(table, []) if s.physical not in gone_s
                ]
            case RenameColumn(table, column, new_name):
                rel = self._rel(table)
                cols = tuple(
                    replace(c, name=new_name) if c.physical == column else c for c in rel.columns
                )
                self._put(replace(rel, columns=cols))
            case AddConstraint(con):
                self._rel(con.table)
                self._cons.setdefault(con.table, []).append(con)
            case DropConstraint(table, physical, cascaded):
                self._comments.pop(("k", table, physical), None)
                kept = self._cons.get(table, [])
                kept[:] = [c for c in kept if c.physical != physical]
                self._drop_constraints(cascaded)
            case RenameConstraint(table, physical, new_name):
                kept = self._cons.get(table, [])
                kept[:] = [
                    replace(c, name=new_name, implicit=False) if c.physical == physical else c
                    for c in kept
                ]
            case CreateIndex(index):
                self._rel(index.table)
                self._idx.setdefault(index.table, []).append(index)
            case CreateView(view):
                self._put(view)
            case ReplaceView(view, columns, reads):
                rel = self._rel(view)
                self._put(replace(rel, columns=(*rel.columns, *columns), reads=reads))
            case DropView(view):
                self._drop_relation(view)
            case SetComment(kind, physical, parent, text):
                key = (kind, parent, physical)
                if text is None:
                    self._comments.pop(key, None)
                else:
                    self._comments[key] = text
