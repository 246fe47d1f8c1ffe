"""Partitioned tables, partitions and inheritance children of cloaked tables.

A partition or inheritance child shares its parents' physical column names
(PostgreSQL matches inherited columns by name) and is registered with its own
copies of them under the same semantic names. Inherited CHECKs keep the parent's
physical name too; what else PostgreSQL copies onto partitions (indexes, FKs) is
named in partition_copies.py. Children are registered as ordinary tables: which
table is whose partition or child comes from pg_inherits when the registry loads.

`inheritance`/`finish_create` serve CREATE TABLE (ddl.py); `alter_cmd`,
`propagate`, `dropped_with`, `index_copies`, `index_dropped` and the renames serve
ALTER TABLE, DROP TABLE, CREATE/DROP INDEX (ddl_alter.py, ddl_index.py), which
PostgreSQL applies to the partitions and children as well. Renames are
registry-only, so PostgreSQL's checks on inherited names are made here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    AttachPartition,
    Catalog,
    Column,
    Constraint,
    DetachPartition,
    DropColumn,
    DropConstraint,
    DropIndex,
    Index,
    Relation,
    RenameColumn,
    RenameConstraint,
)
from pgcloak.rewriter.ddl_misc import relation_tokens
from pgcloak.rewriter.partition_copies import Copier, Copies, Spec, copies
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, figure_colname

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = [
    "Copies",
    "Inheritance",
    "alter_cmd",
    "copies",
    "dropped_with",
    "expression_labels",
    "finish_create",
    "index_copies",
    "index_dropped",
    "inheritance",
    "is_only",
    "propagate",
    "rename_column",
    "rename_constraint",
    "shared_check",
]

_MINMAX = frozenset({"minvalue", "maxvalue"})
_ENCRYPTED = "pgcloak does not support partitioning or inheritance of tables with encrypted columns"


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _scope(rel: Relation) -> Scope:
    cols = [Col(c.name, c.physical) for c in rel.columns]
    return Scope(None, [Item(rel.name, rel.physical, cols, rel.schema)])


def descendants(catalog: Catalog, table: str) -> list[Relation]:
    """Every partition/child below `table`, parents before their children."""
    out: list[Relation] = []
    seen = {table}
    queue = [table]
    while queue:
        for child in catalog.inheritors(queue.pop(0)):
            if child.physical not in seen:
                seen.add(child.physical)
                out.append(child)
                queue.append(child.physical)
    return out


def expression_labels(expr: Node, rel: Relation) -> tuple[str, str]:
    """(semantic, physical) name PostgreSQL gives an index expression column
    (FigureIndexColname: a function's name, a cast column's name, else ``expr``)."""

    def colref(body: Node) -> Col:
        name = _sval(body["fields"][-1])
        col = rel.column(name)
        return Col(name, col.physical if col is not None else name)

    found, _ = figure_colname(expr, colref, lambda body: None)
    return (found.name, found.phys) if found is not None else ("expr", "expr")


# -- CREATE TABLE ... PARTITION OF / INHERITS -----------------------------------------


@dataclass
class Inheritance:
    """The cloaked parents of a new table and the columns it inherits (merged by name)."""

    parents: list[Relation]
    partition: bool
    columns: list[Column]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def child(self, rel: Relation) -> Relation:
        return replace(
            rel, parents=tuple(p.physical for p in self.parents), partition=self.partition
        )


def _parent(a: Analyzer, rv: Node) -> Relation:
    schema, name, toks = relation_tokens(a, rv)
    rel = a.find(schema, name)
    if rel is None:
        a.uncloaked(schema, name, toks[-1])
        a.touched = True
        raise CloakError(
            "0A000", "pgcloak does not support partitions or children of tables it does not cloak"
        )
    a.touch(rel)
    a.edits.set(toks[-1], rel.physical)
    if any(c.policy is not None for c in rel.columns):
        raise CloakError("0A000", _ENCRYPTED)
    return rel


def inheritance(a: Analyzer, body: Node) -> Inheritance | None:
    """Resolve the parents of CREATE TABLE ... PARTITION OF / INHERITS (None: neither)."""
    rvs = body.get("inhRelations") or ()
    if not rvs:
        return None
    parents = [_parent(a, node["RangeVar"]) for node in rvs]
    columns: list[Column] = []
    for parent in parents:
        for col in parent.columns:
            have = next((c for c in columns if c.name == col.name), None)
            if have is None:
                columns.append(col)
            elif have.physical != col.physical:
                raise CloakError(
                    "0A000",
                    "pgcloak does not support inheriting same-named columns that have "
                    "different physical names",
                )
    return Inheritance(parents, body.get("partbound") is not None, columns)


def _minmax(node: Node) -> bool:
    fields = node.get("ColumnRef", {}).get("fields", ())
    return len(fields) == 1 and "String" in fields[0] and _sval(fields[0]) in _MINMAX


def _walk(node: Any) -> Iterator[tuple[str, Node]]:
    if isinstance(node, list):
        for child in node:
            yield from _walk(child)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("ColumnRef", "SubLink"):
                yield key, value
            yield from _walk(value)


def partition_bound(a: Analyzer, bound: Node) -> None:
    """FOR VALUES IN / FROM ... TO / WITH (...), DEFAULT: constants only, as in PostgreSQL."""
    for key in ("listdatums", "lowerdatums", "upperdatums"):
        for datum in bound.get(key) or ():
            if key != "listdatums" and _minmax(datum):
                loc = datum["ColumnRef"].get("location", 0)
                a.visited.add(loc)
                a.kept.add(a.ts.at(loc))
                continue
            for kind, inner in _walk(datum):
                pos = a.ts.char(inner.get("location", 0)) + 1
                if kind == "ColumnRef":
                    msg = "cannot use column reference in partition bound expression"
                else:
                    msg = "cannot use subquery in partition bound"
                a.touched = True
                raise CloakError("0A000", msg, pos)
            a.expr(datum, Scope(None))


def partition_key(a: Analyzer, spec: Node, rel: Relation) -> None:
    """PARTITION BY RANGE|LIST|HASH (column | (expression) [COLLATE c] [opclass], ...)."""
    ts = a.ts
    scope = _scope(rel)
    for node in spec.get("partParams", ()):
        elem = node["PartitionElem"]
        name = elem.get("name")
        if name is not None:
            tok = ts.expect(ts.at(elem.get("location", 0)), name)
            col = rel.column(name)
            if col is None:
                raise CloakError(
                    "42703", f'column "{name}" named in partition key does not exist', ts.pos(tok)
                )
            a.edits.set(tok, col.physical)
        else:
            a.expr(elem.get("expr"), scope)


def finish_create(
    a: Analyzer, body: Node, rel: Relation, own: list[Constraint], copies: Copies
) -> tuple[tuple[Constraint, ...], tuple[Index, ...]]:
    """The partition key and bound of a new table, and its constraints: the ones copied
    from its parents, then its own (an own CHECK merged with an inherited one of the
    same name, which shares its physical name, counts once)."""
    if (body.get("partspec") or rel.parents) and any(c.policy is not None for c in rel.columns):
        raise CloakError("0A000", _ENCRYPTED)
    _refuse_encrypted_exclusions(rel, own)
    if body.get("partspec"):
        partition_key(a, body["partspec"], rel)
    if body.get("partbound"):
        partition_bound(a, body["partbound"])
    inherited = {c.name: c for c in copies.constraints}
    kept: list[Constraint] = []
    for con in own:
        twin = inherited.get(con.name)
        if twin is None:
            kept.append(con)
        elif twin.contype != "c" or con.contype != "c" or twin.physical != con.physical:
            raise CloakError(
                "42710", f'constraint "{con.name}" for relation "{rel.name}" already exists'
            )
    return (*copies.constraints, *kept), tuple(copies.indexes)


def _refuse_encrypted_exclusions(rel: Relation, constraints: Sequence[Constraint]) -> None:
    for con in constraints:
        if con.contype == "x" and any(
            (c := rel.column_by_physical(p)) is not None and c.policy is not None
            for p in con.columns
        ):
            raise CloakError(
                "0A000", "pgcloak does not support EXCLUDE constraints on encrypted columns"
            )


def shared_check(catalog: Catalog, rel: Relation, name: str) -> str | None:
    """The physical name an explicitly named CHECK of `rel` takes: that of a same-named
    CHECK of its parents or of a partitioned/parent table of its schema, if any.

    PostgreSQL matches inherited CHECKs by name (ATTACH PARTITION requires the table
    to have its parent's; an own one merges with an inherited one), so a CHECK that
    may have to match one must carry its physical name.
    """
    used = {c.physical for c in catalog.constraints(rel.physical)}
    rels = [r for n in sorted(catalog.relation_names(rel.schema))
            if (r := catalog.relation(rel.schema, n)) is not None]  # fmt: skip
    parents = {p for r in rels for p in r.parents} | set(rel.parents)
    candidates = [catalog.relation_by_physical(p) for p in rel.parents] + [
        r for r in rels if r.physical != rel.physical and (r.partitioned or r.physical in parents)
    ]
    for r in candidates:
        for c in catalog.constraints(r.physical) if r is not None else ():
            if c.contype == "c" and c.name == name and c.physical not in used:
                return c.physical
    return None


# -- ALTER TABLE on parents and children ---------------------------------------------------


def _check_columns(parent: Relation, child: Relation) -> None:
    for col in child.columns:
        mine = parent.column(col.name)
        if mine is not None and mine.physical != col.physical:
            raise CloakError(
                "0A000",
                "pgcloak cannot attach a table whose columns have other physical names than "
                "the parent's same-named columns; create it with PARTITION OF or INHERITS",
            )
    if any(c.policy is not None for c in (*parent.columns, *child.columns)):
        raise CloakError("0A000", _ENCRYPTED)


def _other(a: Analyzer, rv: Node) -> Relation:
    schema, name, toks = relation_tokens(a, rv)
    rel = a.find(schema, name)
    if rel is None:
        a.uncloaked(schema, name, toks[-1])
        a.touched = True
        raise CloakError(
            "0A000",
            "pgcloak does not support attaching tables it does not cloak to cloaked ones "
            "(or the reverse)",
        )
    a.touch(rel)
    a.edits.set(toks[-1], rel.physical)
    return rel


def alter_cmd(a: Analyzer, rel: Relation, cmd: Node) -> bool:
    """ATTACH/DETACH PARTITION, INHERIT/NO INHERIT; False for other subcommands."""
    sub = cmd["subtype"]
    if sub in ("AT_AttachPartition", "AT_DetachPartition", "AT_DetachPartitionFinalize"):
        pc = cmd["def"]["PartitionCmd"]
        child = _other(a, pc["name"])
        if pc.get("concurrent") or sub == "AT_DetachPartitionFinalize":
            # Not in a transaction block, where the registry writes go along.
            raise CloakError(
                "0A000", "pgcloak does not support DETACH PARTITION CONCURRENTLY or FINALIZE"
            )
        if sub == "AT_AttachPartition":
            if pc.get("bound"):
                partition_bound(a, pc["bound"])
            _check_columns(rel, child)
            a.changes.append(AttachPartition(rel.physical, child.physical, True))
            out = Copies()
            Copier(a, out).parent(child, rel.physical)
            a.changes += out.changes
        else:
            a.changes.append(DetachPartition(rel.physical, child.physical))
        return True
    if sub in ("AT_AddInherit", "AT_DropInherit"):
        parent = _other(a, cmd["def"]["RangeVar"])
        if sub == "AT_AddInherit":
            _check_columns(parent, rel)
            a.changes.append(AttachPartition(parent.physical, rel.physical, False))
        else:
            a.changes.append(DetachPartition(parent.physical, rel.physical))
        return True
    return False


def propagate(a: Analyzer, rel: Relation, only: bool, before: int) -> None:
    """Extend the changes an ALTER TABLE subcommand made to `rel` (a.changes[before:])
    to its partitions and children, as PostgreSQL recurses (not with ONLY)."""
    mine = a.changes[before:]
    catalog = a.catalog
    kids = descendants(catalog, rel.physical)
    shared = rel.partitioned or bool(rel.parents or kids)
    if shared and any(isinstance(c, AddColumn) and c.column.policy is not None for c in mine):
        raise CloakError("0A000", _ENCRYPTED)
    if only or not kids:
        return
    added: list[Constraint] = []
    for change in mine:
        if isinstance(change, AddColumn) and change.table == rel.physical:
            for kid in kids:
                have = kid.column(change.column.name)
                if have is not None and have.physical != change.column.physical:
                    raise CloakError(
                        "0A000",
                        "pgcloak does not support merging a new column with a child's "
                        "same-named column of another physical name",
                    )
                if have is None:
                    a.changes.append(AddColumn(kid.physical, change.column))
            added += change.constraints
        elif isinstance(change, AddConstraint) and change.constraint.table == rel.physical:
            added.append(change.constraint)
        elif isinstance(change, DropColumn) and change.table == rel.physical:
            _drop_column(a, kids, change.column)
        elif isinstance(change, DropConstraint) and change.table == rel.physical:
            _drop_constraint(a, rel, change.constraint)
    for con in added:
        _add_constraint(a, rel, con)


def _add_constraint(a: Analyzer, rel: Relation, con: Constraint) -> None:
    catalog = a.catalog
    if con.contype == "c":
        for kid in descendants(catalog, rel.physical):
            if all(c.physical != con.physical for c in catalog.constraints(kid.physical)):
                copy = replace(con, schema=kid.schema, table=kid.physical)
                a.changes.append(AddConstraint(copy))
        return
    if con.contype == "x":
        return  # PostgreSQL refuses EXCLUDE on partitioned tables; children don't inherit
    out = Copies()
    copier = Copier(a, out)
    for kid in catalog.inheritors(rel.physical):
        if not kid.partition:
            continue
        if con.contype == "f":
            copier.foreign_key(kid, con)
        else:
            copier.spec(kid, Spec(con.contype, con.physical, con.columns, con.columns, True))
    a.changes += out.changes


def index_copies(a: Analyzer, rel: Relation, index: Index, only: bool) -> None:
    """CREATE INDEX on a partitioned table: PostgreSQL puts it on every partition."""
    if only or not rel.partitioned:
        return
    out = Copies()
    copier = Copier(a, out)
    spec = Spec("i", index.physical, index.columns, index.labels, index.unique)
    for kid in a.catalog.inheritors(rel.physical):
        if kid.partition:
            copier.spec(kid, spec)
    a.changes += out.changes


def _drop_column(a: Analyzer, kids: list[Relation], column: str) -> None:
    catalog = a.catalog
    for kid in kids:
        if not kid.partition:
            raise CloakError(
                "0A000",
                "pgcloak does not support DROP COLUMN on tables with inheritance children "
                "(use ALTER TABLE ONLY, then drop it from the children)",
            )
        if kid.column_by_physical(column) is None:
            continue
        cons = tuple(c for c in catalog.constraints(kid.physical) if column in c.columns)
        idxs = tuple(i for i in catalog.indexes(kid.physical) if column in i.columns)
        seqs = tuple(s for s in catalog.sequences(kid.physical) if s.column == column)
        a.changes.append(DropColumn(kid.physical, column, cons, idxs, seqs))


def _drop_constraint(a: Analyzer, rel: Relation, physical: str) -> None:
    """The copies PostgreSQL drops with a parent's constraint: inherited CHECKs (same
    physical name) and the constraints attached to it, level by level."""
    catalog = a.catalog
    gone = {rel.physical: {physical}}
    for kid in descendants(catalog, rel.physical):
        above = set().union(*(gone.get(p, set()) for p in kid.parents))
        dropped = {
            c.physical for c in catalog.constraints(kid.physical)
            if (c.contype == "c" and c.physical in above) or c.parent in above
        }  # fmt: skip
        if dropped and not kid.partition:
            # A child's own same-named CHECK survives; pgcloak does not track which are.
            raise CloakError(
                "0A000",
                "pgcloak does not support DROP CONSTRAINT of a CHECK inheritance children "
                "have (use ALTER TABLE ONLY, then drop it from the children)",
            )
        gone[kid.physical] = dropped
        a.changes += [DropConstraint(kid.physical, p) for p in sorted(dropped)]


def index_dropped(a: Analyzer, index: Index) -> None:
    """DROP INDEX of a partitioned table's index drops the partitions' attached ones."""
    catalog = a.catalog
    gone = {index.table: {index.physical}}
    for kid in descendants(catalog, index.table):
        dropped = {
            i.physical for p in kid.parents for i in catalog.indexes(kid.physical)
            if i.parent is not None and i.parent in gone.get(p, ())
        }  # fmt: skip
        gone[kid.physical] = dropped
        a.changes += [DropIndex(kid.physical, p) for p in sorted(dropped)]


def dropped_with(a: Analyzer, dropped: list[Relation], cascade: bool) -> list[Relation]:
    """Tables DROP TABLE drops along with `dropped`: partitions always, inheritance
    children with CASCADE (without it PostgreSQL refuses, and nothing changes)."""
    out: list[Relation] = []
    seen = {r.physical for r in dropped}
    queue = list(dropped)
    while queue:
        rel = queue.pop(0)
        for kid in a.catalog.inheritors(rel.physical):
            if kid.physical in seen or not (kid.partition or cascade):
                continue
            seen.add(kid.physical)
            out.append(kid)
            queue.append(kid)
    return out


# -- RENAME (registry-only: PostgreSQL's checks are made here) ----------------------------


def rename_column(a: Analyzer, rel: Relation, col: Column, new: str, only: bool) -> None:
    """RenameColumn for `rel` and every partition/child with the column."""
    catalog = a.catalog
    for p in rel.parents:
        parent = catalog.relation_by_physical(p)
        if parent is not None and parent.column_by_physical(col.physical) is not None:
            raise CloakError("42P16", f'cannot rename inherited column "{col.name}"')
    kids = [k for k in descendants(catalog, rel.physical) if k.column_by_physical(col.physical)]
    if kids and only:
        raise CloakError(
            "42P16", f'inherited column "{col.name}" must be renamed in child tables too'
        )
    a.changes.append(RenameColumn(rel.physical, col.physical, new))
    for kid in kids:
        holders = [p for p in kid.parents if (r := catalog.relation_by_physical(p)) is not None
                   and r.column_by_physical(col.physical) is not None]  # fmt: skip
        if len(holders) > 1:  # inherited from another parent too
            raise CloakError("42P16", f'cannot rename inherited column "{col.name}"')
        if kid.column(new) is not None:
            raise CloakError("42701", f'column "{new}" of relation "{kid.name}" already exists')
        a.changes.append(RenameColumn(kid.physical, col.physical, new))


def rename_constraint(a: Analyzer, rel: Relation, con: Constraint, new: str, only: bool) -> None:
    """RenameConstraint for `rel`, and for a CHECK also in every partition/child."""
    catalog = a.catalog
    if con.contype != "c":
        a.changes.append(RenameConstraint(rel.physical, con.physical, new))
        return
    for p in rel.parents:
        if any(c.physical == con.physical for c in catalog.constraints(p)):
            raise CloakError("42P16", f'cannot rename inherited constraint "{con.name}"')
    kids = [
        k for k in descendants(catalog, rel.physical)
        if any(c.physical == con.physical for c in catalog.constraints(k.physical))
    ]  # fmt: skip
    if kids and only:
        raise CloakError(
            "42P16", f'inherited constraint "{con.name}" must be renamed in child tables too'
        )
    a.changes.append(RenameConstraint(rel.physical, con.physical, new))
    for kid in kids:
        a.changes.append(RenameConstraint(kid.physical, con.physical, new))


def is_only(rv: Node) -> bool:
    """ALTER TABLE ONLY / DROP ... (pglast leaves out inh when it is false)."""
    return not rv.get("inh", False)
