"""The slice of the registry the rewriter needs: a Protocol and an in-memory implementation.

The rewriter only reads a `Catalog`; DDL plans describe their effect as
`CatalogChange` values (pgcloak.rewriter.objects, re-exported here) that the
caller applies once the server has accepted the statement (for the proxy:
registry writes; for tests: `MemoryCatalog.apply`).
All names here are exact PostgreSQL names (already case-folded by the parser);
"physical" is what the database sees, "name" the client's semantic name. Tables
are identified by their physical name, which never changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from pgcloak.rewriter.objects import (
    AddColumn,
    AddConstraint,
    AnySequence,
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
    Relation,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameSequence,
    RenameTable,
    ReplaceView,
    SetComment,
    SetSequenceOwner,
    StandaloneSequence,
)
from pgcloak.rewriter.policy import ColumnPolicy, EncColumn, EncryptRules

__all__ = [
    "AddColumn",
    "AddConstraint",
    "AnySequence",
    "AttachIndex",
    "AttachPartition",
    "Catalog",
    "CatalogChange",
    "CloakFilter",
    "Column",
    "ColumnPolicy",
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
    "EncColumn",
    "EncryptRules",
    "Index",
    "MemoryCatalog",
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
    "creation_schema",
    "find_relation",
    "uncloaked_exists",
]

DEFAULT_SEARCH_PATH = ("public",)

# (schema, name) -> whether a new relation (table, view, sequence...) is to be cloaked.
CloakFilter = Callable[[str, str], bool]


class Catalog(Protocol):
    """Read access to cloaked objects. `version` changes whenever the content does."""

    @property
    def version(self) -> int: ...

    def relation(self, schema: str, name: str) -> Relation | None: ...

    def relation_by_physical(self, physical: str) -> Relation | None: ...

    def constraints(self, table: str) -> Sequence[Constraint]: ...

    def indexes(self, table: str) -> Sequence[Index]: ...

    def sequences(self, table: str) -> Sequence[OwnedSequence]: ...

    def standalone_sequence(self, physical: str) -> StandaloneSequence | None:
        """The cloaked sequence of that physical name if no column owns it."""
        ...

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

    def inheritors(self, table: str) -> Sequence[Relation]:
        """Cloaked tables that are partitions or inheritance children of `table` (direct)."""
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
        self._free: dict[str, StandaloneSequence] = {}  # sequences no column owns
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

    def standalone_sequence(self, physical: str) -> StandaloneSequence | None:
        return self._free.get(physical)

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
        for free in self._free.values():
            if free.schema == schema:
                yield free.name, free.physical

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
            names.update(s.name for s in self._free.values())
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

    def inheritors(self, table: str) -> Sequence[Relation]:
        return tuple(r for r in self._by_phys.values() if table in r.parents)

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

    def _add_sequence(self, seq: AnySequence) -> None:
        if isinstance(seq, OwnedSequence):
            self._rel(seq.table)
            self._seqs.setdefault(seq.table, []).append(seq)
        else:
            self._free[seq.physical] = seq

    def _pop_sequence(self, physical: str) -> AnySequence:
        """Remove a sequence (owned or not) by physical name; returns what was stored."""
        free = self._free.pop(physical, None)
        if free is not None:
            return free
        for seqs in self._seqs.values():
            for k, seq in enumerate(seqs):
                if seq.physical == physical:
                    return seqs.pop(k)
        raise KeyError(f"no cloaked sequence {physical}")

    def _apply_sequence(self, change: CatalogChange) -> None:
        match change:
            case CreateSequence(seq):
                self._add_sequence(seq)
            case DropSequence(seq):
                self._pop_sequence(seq.physical)
                self._comments.pop(("s", None, seq.physical), None)
            case RenameSequence(seq, new_name):
                old = self._pop_sequence(seq.physical)
                self._add_sequence(replace(old, name=new_name, implicit=False))
            case SetSequenceOwner(seq, table, column):
                old = self._pop_sequence(seq.physical)
                if table is None or column is None:
                    new: AnySequence = StandaloneSequence(
                        old.schema, old.name, old.physical, old.implicit
                    )
                else:
                    new = OwnedSequence(old.schema, old.name, old.physical, table, column,
                                        old.implicit)  # fmt: skip
                self._add_sequence(new)

    def _apply_partition(self, change: AttachPartition | AttachIndex | DetachPartition) -> None:
        rel = self._rel(change.table)
        match change:
            case AttachPartition(parent, _, partition):
                self._put(replace(rel, parents=(*rel.parents, parent), partition=partition))
            case AttachIndex(table, physical, parent):
                self._cons[table] = [
                    replace(c, parent=parent) if c.physical == physical else c
                    for c in self._cons.get(table, [])
                ]
                self._idx[table] = [
                    replace(i, parent=parent) if i.physical == physical else i
                    for i in self._idx.get(table, [])
                ]
            case DetachPartition(parent, table):
                parents = tuple(p for p in rel.parents if p != parent)
                self._put(replace(rel, parents=parents, partition=rel.partition and bool(parents)))
                # Detached, the partition's constraints and indexes stand on their own.
                self._cons[table] = [replace(c, parent=None) for c in self._cons.get(table, [])]
                self._idx[table] = [replace(i, parent=None) for i in self._idx.get(table, [])]

    def _apply(self, change: CatalogChange) -> None:
        if isinstance(change, CreateSequence | DropSequence | RenameSequence | SetSequenceOwner):
            self._apply_sequence(change)
            return
        if isinstance(change, AttachPartition | AttachIndex | DetachPartition):
            self._apply_partition(change)
            return
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
            case DropIndex(table, physical, cascaded):
                self._comments.pop(("i", None, physical), None)
                self._idx[table] = [i for i in self._idx.get(table, []) if i.physical != physical]
                self._drop_constraints(cascaded)
            case RenameIndex(table, physical, new_name):
                self._idx[table] = [
                    replace(i, name=new_name, implicit=False) if i.physical == physical else i
                    for i in self._idx.get(table, [])
                ]
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
