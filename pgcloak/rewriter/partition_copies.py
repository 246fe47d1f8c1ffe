"""What PostgreSQL copies onto partitions, and the names it gives the copies.

A partition gets the partitioned table's indexes (those behind PRIMARY KEY/UNIQUE
and plain ones; PostgreSQL names them from the partition's name and the index's
column names, which here are physical) and its FOREIGN KEYs (same name). Where
the partition already has an equivalent one, PostgreSQL attaches that instead
(ATTACH PARTITION, CREATE INDEX or ADD CONSTRAINT on the partitioned table); the
matching here uses what the catalog knows and refuses when it cannot tell. Every
copy gets the semantic name a plain PostgreSQL would have chosen, from the
semantic names. Used by ddl_partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pgcloak.registry.names import implicit_constraint_name
from pgcloak.rewriter.catalog import (
    AddConstraint,
    AttachIndex,
    Catalog,
    CatalogChange,
    Constraint,
    CreateIndex,
    Index,
    Relation,
)
from pgcloak.rewriter.plan import CloakError

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["Copier", "Copies", "Spec", "copies", "specs"]


@dataclass(frozen=True)
class Spec:
    """A parent's index-backed object to be present on each partition: a PRIMARY
    KEY/UNIQUE constraint ("p"/"u") or a plain index ("i")."""

    kind: str
    physical: str
    columns: tuple[str, ...]
    labels: tuple[str, ...] | None
    unique: bool


def specs(catalog: Catalog, table: str) -> list[Spec]:
    out = [
        Spec(c.contype, c.physical, c.columns, c.columns, True)
        for c in sorted(catalog.constraints(table), key=lambda c: c.contype != "p")
        if c.contype in ("p", "u")
    ]
    out += [Spec("i", i.physical, i.columns, i.labels, i.unique) for i in catalog.indexes(table)]
    return out


class Namer:
    """Chooses implicit names on one table: semantic (among the schema's semantic names)
    and physical (what PostgreSQL will choose among the physical ones)."""

    def __init__(self, catalog: Catalog, rel: Relation) -> None:
        self.rel = rel
        self.sem_rel = set(catalog.relation_names(rel.schema)) | {rel.name}
        self.sem_con = set(catalog.constraint_names(rel.schema))
        self.phys = {rel.physical}
        self.phys.update(c.physical for c in catalog.constraints(rel.physical))
        self.phys.update(i.physical for i in catalog.indexes(rel.physical))
        self.phys.update(s.physical for s in catalog.sequences(rel.physical))

    def choose(self, labels: Sequence[str], label: str) -> tuple[str, str]:
        names = {c.physical: c.name for c in self.rel.columns}
        semantic = [names.get(x, x) for x in labels]
        constraint = label != "idx"
        taken = self.sem_rel | self.sem_con if constraint else self.sem_rel
        sem = implicit_constraint_name(self.rel.name, semantic, label, taken)
        phys = implicit_constraint_name(self.rel.physical, list(labels), label, self.phys)
        self.sem_rel.add(sem)
        if constraint:
            self.sem_con.add(sem)
        self.phys.add(phys)
        return sem, phys


@dataclass
class Copies:
    """What PostgreSQL puts on a new partition/child from its parents: `constraints` and
    `indexes` of the table itself, `changes` for deeper levels and reused objects."""

    constraints: list[Constraint] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)
    changes: list[CatalogChange] = field(default_factory=list)

    def names(self) -> set[str]:
        """Semantic names taken in the schema's relation namespace."""
        out = {c.name for c in self.constraints if c.contype in ("p", "u", "x")}
        return out | {i.name for i in self.indexes}


class Copier:
    """Puts a parent's specs and FKs on a partition (recursively into its partitions),
    reusing matching objects the way PostgreSQL does (AttachPartitionEnsureIndexes,
    DefineIndex on a partitioned table, tryAttachPartitionForeignKey).

    New objects of table `top` (a table being created) go to `out.constraints` and
    `out.indexes`; everything else becomes `out.changes`.
    """

    def __init__(self, a: Analyzer, out: Copies, top: str | None = None) -> None:
        self.a = a
        self.out = out
        self.top = top
        self.namers: dict[str, Namer] = {}
        self.used: set[tuple[str, str]] = set()  # (table, physical) already attached

    def _namer(self, rel: Relation) -> Namer:
        if rel.physical not in self.namers:
            self.namers[rel.physical] = Namer(self.a.catalog, rel)
        return self.namers[rel.physical]

    def _add(self, rel: Relation, obj: Constraint | Index) -> None:
        if rel.physical != self.top:
            change = AddConstraint(obj) if isinstance(obj, Constraint) else CreateIndex(obj)
            self.out.changes.append(change)
        elif isinstance(obj, Constraint):
            self.out.constraints.append(obj)
        else:
            self.out.indexes.append(obj)

    def _link(self, rel: Relation, physical: str, parent: str) -> None:
        self.used.add((rel.physical, physical))
        self.out.changes.append(AttachIndex(rel.physical, physical, parent))

    def spec(self, rel: Relation, spec: Spec) -> None:
        """Make `rel` (a partition) have `spec`; recurse into its own partitions."""
        match = self._match(rel, spec)
        if match is not None:
            self._link(rel, match, spec.physical)
            return
        if spec.kind == "i" and spec.labels is None:
            raise CloakError(
                "0A000",
                "pgcloak cannot name the partitions' copies of an index whose definition it "
                "does not know",
            )
        labels = spec.labels or ()
        label = {"p": "pkey", "u": "key"}.get(spec.kind, "idx")
        sem, phys = self._namer(rel).choose(labels, label)
        obj: Constraint | Index
        if spec.kind == "i":
            obj = Index(rel.schema, rel.physical, sem, phys, spec.columns, spec.unique, True,
                        spec.labels, spec.physical)  # fmt: skip
        else:
            obj = Constraint(rel.schema, rel.physical, sem, phys, spec.kind, spec.columns,
                             implicit=True, parent=spec.physical)  # fmt: skip
        self._add(rel, obj)
        for child in self.a.catalog.inheritors(rel.physical):
            self.spec(child, replace(spec, physical=phys))

    def _match(self, rel: Relation, spec: Spec) -> str | None:
        """The existing index of `rel` PostgreSQL would attach to `spec` instead of
        making one: equal definition (as far as the catalog knows), not attached yet;
        for a constraint, only a constraint's index."""
        catalog = self.a.catalog
        free = [
            c for c in catalog.constraints(rel.physical)
            if c.parent is None and (rel.physical, c.physical) not in self.used
        ]  # fmt: skip
        found = [
            c.physical for c in free
            if c.contype in ("p", "u") and c.columns == spec.columns
            and (spec.kind != "i" or (spec.unique and spec.labels == c.columns))
        ]  # fmt: skip
        if spec.kind != "i":
            return found[0] if found else None
        for i in catalog.indexes(rel.physical):
            if i.parent is not None or (rel.physical, i.physical) in self.used:
                continue
            if i.unique == spec.unique and i.columns == spec.columns:
                if i.labels is None or spec.labels is None:
                    raise CloakError(
                        "0A000",
                        "pgcloak cannot tell whether PostgreSQL would reuse an index of the "
                        "partition here; drop that index first",
                    )
                if i.labels == spec.labels:
                    found.append(i.physical)
        return found[0] if found else None

    def foreign_key(self, rel: Relation, fk: Constraint) -> None:
        for c in self.a.catalog.constraints(rel.physical):
            free = c.parent is None and (rel.physical, c.physical) not in self.used
            if (
                free and c.contype == "f" and c.columns == fk.columns
                and c.ref_table == fk.ref_table and c.ref_columns == fk.ref_columns
            ):  # fmt: skip
                self._link(rel, c.physical, fk.physical)
                return
        self._add(rel, replace(fk, schema=rel.schema, table=rel.physical, parent=fk.physical))
        for child in self.a.catalog.inheritors(rel.physical):
            self.foreign_key(child, fk)

    def parent(self, rel: Relation, parent: str) -> None:
        """Everything of the partitioned table `parent` that `rel` gets as its partition."""
        catalog = self.a.catalog
        for spec in specs(catalog, parent):
            self.spec(rel, spec)
        for fk in catalog.constraints(parent):
            if fk.contype == "f":
                self.foreign_key(rel, fk)


def copies(a: Analyzer, parents: Sequence[Relation], rel: Relation) -> Copies:
    """What PostgreSQL copies onto a new table `rel` from its `parents`: CHECKs (same
    physical names); for a partition also FKs and the parent's indexes."""
    out = Copies()
    for parent in parents:
        for c in a.catalog.constraints(parent.physical):
            if c.contype == "c" and all(x.physical != c.physical for x in out.constraints):
                out.constraints.append(replace(c, schema=rel.schema, table=rel.physical))
    if rel.partition:
        Copier(a, out, rel.physical).parent(rel, parents[0].physical)
    return out
