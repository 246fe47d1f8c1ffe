"""CREATE TABLE and the constraint/column machinery shared with ALTER TABLE.

Every object PostgreSQL would name implicitly gets an explicit physical name
(an inserted ``CONSTRAINT k…``), and the plan records the semantic name the
client would have seen: the explicit one, or PostgreSQL 15's implicit one
(pgcloak.registry.names). The server cannot detect semantic name clashes (all
physical names differ), so duplicates are refused here with PostgreSQL's errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pgcloak.registry.names import (
    implicit_constraint_name,
    implicit_sequence_name,
    new_physical_name,
)
from pgcloak.rewriter import ddl_check, ddl_encrypt, ddl_partition
from pgcloak.rewriter.catalog import (
    Column,
    Constraint,
    CreateTable,
    OwnedSequence,
    Relation,
    creation_schema,
)
from pgcloak.rewriter.ddl_check import CheckSpan
from pgcloak.rewriter.dml import item_starts
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["TableBuilder", "create_table", "new_column", "uncloaked_create"]

_LPAR = "ASCII_40"
_SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
_UNNAMED_KINDS = frozenset(
    {"CONSTR_NULL", "CONSTR_NOTNULL", "CONSTR_DEFAULT", "CONSTR_GENERATED", "CONSTR_IDENTITY",
     "CONSTR_ATTR_DEFERRABLE", "CONSTR_ATTR_NOT_DEFERRABLE", "CONSTR_ATTR_DEFERRED",
     "CONSTR_ATTR_IMMEDIATE", "CONSTR_ATTR_ENFORCED", "CONSTR_ATTR_NOT_ENFORCED"}
)  # fmt: skip
_CONTYPES = {
    "CONSTR_PRIMARY": "p",
    "CONSTR_UNIQUE": "u",
    "CONSTR_CHECK": "c",
    "CONSTR_FOREIGN": "f",
    "CONSTR_EXCLUSION": "x",
}


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _locate_error() -> CloakError:
    return CloakError("0A000", "pgcloak could not locate a name in the statement")


@dataclass(eq=False)
class _Pending:
    contype: str
    explicit: str | None
    name_tok: int | None
    kw_tok: int
    keys: list[Column]
    include: list[Column] = field(default_factory=list)
    ref_table: str | None = None
    ref_cols: tuple[str, ...] = ()
    labels: list[str] | None = None  # EXCLUDE: its index column names (semantic)
    check: CheckSpan | None = None  # CHECK: its node and tokens (ddl_check)


def new_column(a: Analyzer, schema: str, name: str, taken: set[str]) -> Column:
    """A column with the physical name other same-named columns of the schema use.

    Sharing physical names between columns of equal semantic name is what makes
    JOIN ... USING / NATURAL JOIN work on cloaked tables.
    """
    hint = a.catalog.column_physical_hint(schema, name)
    phys = hint if hint is not None and hint not in taken else new_physical_name("c")
    taken.add(phys)
    return Column(name, phys)


class TableBuilder:
    """Collects the columns' and table's constraints, then names them PostgreSQL's way."""

    def __init__(self, a: Analyzer, rel: Relation, existing: bool) -> None:
        self.a = a
        self.rel = rel
        self.existing = existing  # ALTER TABLE (the table is in the catalog already)
        self.pending: list[_Pending] = []
        self.serials: list[Column] = []
        # Names PostgreSQL gives other objects of this table first in the same command
        # (a new partition's copies of its parent's indexes).
        self.reserved: set[str] = set()

    @property
    def scope(self) -> Scope:
        cols = [Col(c.name, c.physical) for c in self.rel.columns]
        return Scope(None, [Item(self.rel.name, self.rel.physical, cols, self.rel.schema)])

    def column(self, coldef: Node, col: Column) -> None:
        type_name = coldef.get("typeName")
        if type_name is not None:
            self.a.keep_type(type_name)
            names = [_sval(n) for n in type_name.get("names", ())]
            if (
                len(names) == 1
                and names[0] in _SERIAL_TYPES
                and not type_name.get("arrayBounds")
                and not type_name.get("pct_type")
            ):
                self.serials.append(col)
        for con in coldef.get("constraints", ()):
            self.constraint(con["Constraint"], col, None)

    def _column(self, name: str, tok: int, what: str, at: int | None = None) -> Column:
        """The table's column `name` (token `tok`); the error points at token `at` if any
        (PostgreSQL: a CREATE TABLE key constraint; nothing for ALTER TABLE or FKs)."""
        col = self.rel.column(name)
        if col is None:
            pos = self.a.ts.pos(at) if at is not None else None
            raise CloakError("42703", f'column "{name}" {what} does not exist', pos)
        self.a.edits.set(tok, col.physical)
        return col

    def constraint(self, con: Node, column: Column | None, end: int | None) -> None:
        a, ts = self.a, self.a.ts
        loc = ts.at(con.get("location", 0))
        conname = con.get("conname")
        name_tok = None
        kw = loc
        if conname is not None:
            if ts.name(loc) != "CONSTRAINT":
                raise _locate_error()
            name_tok = ts.expect(loc + 1, conname)
            kw = loc + 2
            a.sensitive.add(conname)
        ctype = con["contype"]
        if ctype in _UNNAMED_KINDS:
            if name_tok is not None:  # PostgreSQL 15 ignores these names; don't leak them
                a.edits.set(name_tok, new_physical_name("k"))
            if column is None:
                raise CloakError("0A000", f"pgcloak does not support table-level {ctype}")
            if ctype == "CONSTR_DEFAULT":
                a.expr(con.get("raw_expr"), Scope(None))
            elif ctype == "CONSTR_GENERATED":
                a.expr(con.get("raw_expr"), self.scope)
            elif ctype == "CONSTR_IDENTITY":
                for opt in con.get("options", ()):
                    if opt.get("DefElem", {}).get("defname") == "sequence_name":
                        raise CloakError("0A000", "pgcloak does not support SEQUENCE NAME")
                self.serials.append(column)
            return
        contype = _CONTYPES.get(ctype)
        exclusion = (contype == "x") != bool(con.get("exclusions"))
        if contype is None or con.get("indexname") or exclusion:
            raise CloakError("0A000", f"pgcloak does not support {ctype} constraints")
        pending = _Pending(contype, conname, name_tok, kw, [])
        if contype == "c":
            pending.check = (con, ddl_check.check_span(a, loc, kw), column is None)
            a.collect = []
            a.expr(con.get("raw_expr"), self.scope)
            seen: dict[str, Column] = {}
            for col in a.collect:
                found = self.rel.column(col.name)
                if found is not None:
                    seen.setdefault(found.name, found)
            pending.keys = list(seen.values())
            a.collect = None
        elif contype in ("p", "u"):
            self._index_keys(con, pending, column, kw)
        elif contype == "x":
            self._exclusion(con, pending, kw)
        else:
            self._foreign_key(con, pending, column, kw, end)
        self.pending.append(pending)

    def _open_after(self, tok: int, limit: int = 6) -> int:
        for i in range(tok, tok + limit):
            if self.a.ts.name(i) == _LPAR:
                return i
        raise _locate_error()

    def _index_keys(self, con: Node, p: _Pending, column: Column | None, kw: int) -> None:
        ts = self.a.ts
        if column is not None:
            p.keys = [column]
            return
        keys = [_sval(k) for k in con.get("keys", ())]
        open_tok = self._open_after(kw)
        toks = self.a.ident_list(open_tok, keys)
        at = None if self.existing else ts.at(con.get("location", 0))
        p.keys = [self._column(k, t, "named in key", at) for k, t in zip(keys, toks, strict=True)]
        include = [_sval(k) for k in con.get("including", ())]
        if include:
            inc = ts.match[open_tok] + 1
            if ts.name(inc) != "INCLUDE":
                raise _locate_error()
            itoks = self.a.ident_list(inc + 1, include)
            p.include = [
                self._column(k, t, "named in key", at) for k, t in zip(include, itoks, strict=True)
            ]

    def _exclusion(self, con: Node, p: _Pending, kw: int) -> None:
        """EXCLUDE [USING method] (element WITH operator, ...) [INCLUDE (...)] [WHERE (...)].

        `keys` are the plain column elements, `include` the INCLUDE columns and then
        those the expressions and the predicate use (pg_index's order).
        """
        a, ts = self.a, self.a.ts
        open_tok = self._open_after(kw)
        a.kept.update(i for i in range(kw + 1, open_tok) if ts.is_ident(i))  # the method
        at = None if self.existing else ts.at(con.get("location", 0))
        elems = [e["List"]["items"][0]["IndexElem"] for e in con["exclusions"]]
        starts = item_starts(a, open_tok)
        if len(starts) != len(elems):
            raise _locate_error()
        p.labels = []
        used: list[Column] = []
        for elem, start in zip(elems, starts, strict=True):
            name = elem.get("name")
            if name is not None:
                col = self._column(name, ts.expect(start, name), "named in key", at)
                p.keys += [col] if col not in p.keys else []
                p.labels.append(col.name)
            else:
                used += self._columns_of(elem.get("expr"))
                p.labels.append(ddl_partition.expression_labels(elem["expr"], self.rel)[0])
        include = [_sval(k) for k in con.get("including", ())]
        if include:
            inc = ts.match[open_tok] + 1
            if ts.name(inc) != "INCLUDE":
                raise _locate_error()
            toks = a.ident_list(inc + 1, include)
            p.include = [
                self._column(k, t, "named in key", at) for k, t in zip(include, toks, strict=True)
            ]
            p.labels += [c.name for c in p.include]
        used += self._columns_of(con.get("where_clause"))
        p.include += [c for c in dict.fromkeys(used) if c not in p.keys and c not in p.include]
        if any(c.policy is not None for c in p.keys + p.include):
            raise CloakError(
                "0A000", "pgcloak does not support EXCLUDE constraints on encrypted columns"
            )

    def _columns_of(self, node: Node | None) -> list[Column]:
        """The table's columns an expression uses, in order of appearance."""
        a = self.a
        a.collect = []
        a.expr(node, self.scope)
        found = [c for col in a.collect if (c := self.rel.column_by_physical(col.phys)) is not None]
        a.collect = None
        return found

    def _foreign_key(
        self, con: Node, p: _Pending, column: Column | None, kw: int, end: int | None
    ) -> None:
        a, ts = self.a, self.a.ts
        what = "referenced in foreign key constraint"
        if column is not None:
            p.keys = [column]
        else:
            fk = [_sval(k) for k in con.get("fk_attrs", ())]
            open_tok = self._open_after(kw)
            toks = a.ident_list(open_tok, fk)
            p.keys = [self._column(k, t, what) for k, t in zip(fk, toks, strict=True)]
        rv = con["pktable"]
        schema, name = rv.get("schemaname"), rv["relname"]
        parts = [x for x in (rv.get("catalogname"), schema, name) if x is not None]
        rtoks = a.name_tokens(rv.get("location", 0), parts)
        a.kept.update(rtoks[:-1])
        own = name == self.rel.name and (schema is None or schema == self.rel.schema)
        ref = self.rel if own else a.find(schema, name)
        pk = [_sval(k) for k in con.get("pk_attrs", ())]
        after = rtoks[-1] + 1
        if ref is None:
            a.uncloaked(schema, name, rtoks[-1])
            if pk:
                a.unresolved.update(a.ident_list(after, pk))
        else:
            if ref.partitioned:
                raise CloakError(
                    "0A000", "pgcloak does not support foreign keys referencing a partitioned table"
                )
            if not own:
                a.touch(ref)
            a.edits.set(rtoks[-1], ref.physical)
            p.ref_table = ref.physical
            if pk:
                ptoks = a.ident_list(after, pk)
                refcols = []
                for k, t in zip(pk, ptoks, strict=True):
                    col = ref.column(k)
                    if col is None:
                        raise CloakError("42703", f'column "{k}" {what} does not exist')
                    a.edits.set(t, col.physical)
                    refcols.append(col.physical)
                p.ref_cols = tuple(refcols)
            else:
                p.ref_cols = self._primary_key(ref)
        set_cols = [_sval(k) for k in con.get("fk_del_set_cols", ())]
        if set_cols:
            i = after
            stop = end if end is not None else a.hi
            while i < stop and not (
                ts.name(i) == "SET" and ts.name(i + 1) in ("NULL_P", "DEFAULT")
                and ts.name(i + 2) == _LPAR
            ):  # fmt: skip
                i += 1
            if i >= stop:
                raise _locate_error()
            stoks = a.ident_list(i + 2, set_cols)
            for k, t in zip(set_cols, stoks, strict=True):
                self._column(k, t, what)

    def _primary_key(self, ref: Relation) -> tuple[str, ...]:
        if ref is self.rel:
            for p in self.pending:
                if p.contype == "p":
                    return tuple(c.physical for c in p.keys)
            return ()
        for c in self.a.catalog.constraints(ref.physical):
            if c.contype == "p":
                return c.columns
        return ()

    # -- naming -----------------------------------------------------------------------

    def finish(self) -> tuple[list[Constraint], list[OwnedSequence]]:
        a, rel = self.a, self.rel
        catalog = a.catalog
        taken_rel = set(catalog.relation_names(rel.schema)) | self.reserved
        taken_con = set(catalog.constraint_names(rel.schema)) | self.reserved
        table_cons = {c.name for c in catalog.constraints(rel.physical)} if self.existing else set()
        chosen_rel: set[str] = set()
        chosen_con: set[str] = set()
        sequences = []
        for col in self.serials:
            sem = implicit_sequence_name(rel.name, col.name, taken_rel | chosen_rel)
            chosen_rel.add(sem)
            phys = f"{rel.physical}_{col.physical}_seq"
            sequences.append(OwnedSequence(rel.schema, sem, phys, rel.physical, col.physical))
        chosen_rel.add(rel.name)
        names: dict[int, tuple[str, bool]] = {}

        def explicit(p: _Pending, relation_ns: bool) -> str:
            assert p.explicit is not None
            pos = a.ts.pos(p.name_tok) if p.name_tok is not None else None
            if relation_ns and p.explicit in taken_rel | chosen_rel:
                raise CloakError("42P07", f'relation "{p.explicit}" already exists', pos)
            if p.explicit in table_cons or p.explicit in {n for n, _ in names.values()}:
                raise CloakError(
                    "42710",
                    f'constraint "{p.explicit}" for relation "{rel.name}" already exists',
                    pos,
                )
            return p.explicit

        for p in self.pending:
            if p.contype == "c":
                if p.explicit is not None:
                    names[id(p)] = (explicit(p, False), False)
                else:
                    cols = [p.keys[0].name] if len(p.keys) == 1 else []
                    sem = implicit_constraint_name(rel.name, cols, "check", taken_con | chosen_con)
                    names[id(p)] = (sem, True)
                chosen_con.add(names[id(p)][0])
        index_cons = sorted(
            (p for p in self.pending if p.contype in ("p", "u", "x")),
            key=lambda p: p.contype != "p",
        )
        seen_keys: set[tuple[str, ...]] = set()
        for p in index_cons:
            key = (*(c.physical for c in p.keys), "|", *(c.physical for c in p.include))
            if key in seen_keys and p.contype != "x":
                raise CloakError("0A000", "pgcloak does not support redundant unique constraints")
            seen_keys.add(key)
            if p.explicit is not None:
                names[id(p)] = (explicit(p, True), False)
            else:
                label = {"p": "pkey", "u": "key"}.get(p.contype, "excl")
                cols = p.labels if p.labels is not None else [c.name for c in p.keys + p.include]
                taken = taken_rel | taken_con | chosen_rel | chosen_con
                names[id(p)] = (implicit_constraint_name(rel.name, cols, label, taken), True)
            chosen_rel.add(names[id(p)][0])
            chosen_con.add(names[id(p)][0])
        for p in self.pending:
            if p.contype == "f":
                if p.explicit is not None:
                    names[id(p)] = (explicit(p, False), False)
                else:
                    cols = [c.name for c in p.keys]
                    sem = implicit_constraint_name(rel.name, cols, "fkey", taken_con | chosen_con)
                    names[id(p)] = (sem, True)
                chosen_con.add(names[id(p)][0])
        constraints = []
        for p in self.pending:
            sem, implicit = names[id(p)]
            shared = None
            if p.contype == "c" and not implicit:  # a partition or child to be must match
                shared = ddl_partition.shared_check(catalog, rel, sem)
            phys = shared or new_physical_name("k")
            if p.name_tok is not None:
                a.edits.set(p.name_tok, phys)
            else:
                a.edits.add_before(p.kw_tok, f"CONSTRAINT {phys} ")
            a.sensitive.add(sem)
            if p.check is not None:
                a.check_nodes[phys] = p.check
            constraints.append(
                Constraint(
                    rel.schema,
                    rel.physical,
                    sem,
                    phys,
                    p.contype,
                    tuple(c.physical for c in p.keys + p.include),
                    p.ref_table,
                    p.ref_cols,
                    implicit,
                )
            )
        return constraints, sequences


# LIKE options that copy nothing named: COMPRESSION, DEFAULTS, GENERATED, STORAGE.
# (CONSTRAINTS, INDEXES, IDENTITY and STATISTICS would make PostgreSQL name new objects;
# COMMENTS live in the registry, where LIKE does not look.)
_LIKE_OPTIONS = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 8)
_LIKE_GENERATED = 1 << 4


def _like(a: Analyzer, clause: Node) -> tuple[Column, ...]:
    """LIKE a cloaked table: its columns, under the same physical names (what PostgreSQL
    copies); LIKE a relation pgcloak does not cloak is refused (its columns are unknown)."""
    rv = clause["relation"]
    schema = rv.get("schemaname")
    parts = [p for p in (rv.get("catalogname"), schema, rv["relname"]) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    src = a.find(schema, rv["relname"])
    if src is None or src.kind != "table":
        raise CloakError("0A000", "pgcloak does not support LIKE of a relation it does not cloak")
    a.touch(src)
    a.edits.set(toks[-1], src.physical)
    if clause.get("options", 0) & ~_LIKE_OPTIONS:
        raise CloakError(
            "0A000",
            "pgcloak supports LIKE ... INCLUDING DEFAULTS, GENERATED, STORAGE and COMPRESSION only",
        )
    if clause.get("options", 0) & _LIKE_GENERATED:
        return src.columns
    # Without INCLUDING GENERATED, PostgreSQL copies generated columns as plain ones.
    return tuple(replace(c, generated=False) if c.generated else c for c in src.columns)


def is_generated(coldef: Node) -> bool:
    """Whether a column definition says GENERATED ALWAYS AS (...) STORED."""
    return any(
        con["Constraint"].get("contype") == "CONSTR_GENERATED"
        for con in coldef.get("constraints", ())
    )


def uncloaked_create(a: Analyzer, rv: Node) -> bool:
    """Whether the relation a CREATE names stays uncloaked: it is temporary, or the
    configured cloak filter declines it. Every other relation created through
    pgcloak is cloaked (tables, views, materialized views, sequences)."""
    schema = rv.get("schemaname") or creation_schema(a.search_path) or ""
    if rv.get("relpersistence") == "t" or schema.startswith("pg_temp"):
        return True
    return a.cloak_filter is not None and not a.cloak_filter(schema, rv["relname"])


def create_table(a: Analyzer, body: Node) -> None:
    rv = body["relation"]
    if uncloaked_create(a, rv):
        # Temporary tables and tables the configuration leaves out are created as
        # written; they may not depend on cloaked ones (their definitions would leak).
        if a.mentions_cloaked(body):
            a.touched = True
            raise CloakError(
                "0A000", "pgcloak does not support uncloaked tables that refer to cloaked ones"
            )
        schema = rv.get("schemaname") or creation_schema(a.search_path) or ""
        ddl_encrypt.check_uncloaked(a, schema, rv["relname"], body.get("tableElts"))
        return
    for key, what in (("ofTypename", "typed tables"), ("accessMethod", "USING access methods")):
        if body.get(key):
            raise CloakError("0A000", f"pgcloak does not support {what}")
    a.touched = True
    name = rv["relname"]
    schema = rv.get("schemaname") or creation_schema(a.search_path)
    if schema is None:
        raise CloakError("3F000", "no schema has been selected to create in")
    parts = [p for p in (rv.get("catalogname"), rv.get("schemaname"), name) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    existing = a.catalog.relation_physical(schema, name)
    if existing is None and a.catalog.has_uncloaked(schema, name):
        existing = name  # an uncloaked relation: the server will skip (IF NOT EXISTS)
    if existing is not None and not body.get("if_not_exists"):
        raise CloakError("42P07", f'relation "{name}" already exists')
    physical = existing or new_physical_name("t")
    a.rename(toks[-1], physical)
    a.sensitive.add(name)
    inherit = ddl_partition.inheritance(a, body)  # PARTITION OF / INHERITS cloaked tables
    columns: list[Column] = list(inherit.columns) if inherit is not None else []
    taken: set[str] = {c.physical for c in columns}
    coldefs: list[tuple[Node, Column]] = []  # the new columns' definitions
    builder_defs: list[tuple[Node, Column]] = []  # every column definition, in order
    own: set[str] = set()
    for elt in body.get("tableElts", ()):
        kind, eb = node_kind(elt)
        if kind == "ColumnDef":
            cname = eb["colname"]
            tok = a.ts.expect(a.ts.at(eb.get("location", 0)), cname)
            if cname in own:
                raise CloakError(
                    "42701", f'column "{cname}" specified more than once', a.ts.pos(tok)
                )
            own.add(cname)
            a.sensitive.add(cname)
            merged = inherit.column(cname) if inherit is not None else None
            if merged is not None:  # an inherited column's options (or a merged definition)
                a.edits.set(tok, merged.physical)
                builder_defs.append((eb, merged))
                continue
            if inherit is not None and inherit.partition:
                raise CloakError("42703", f'column "{cname}" does not exist')
            col = new_column(a, schema, cname, taken)
            if is_generated(eb):
                col = replace(col, generated=True)
            a.edits.set(tok, col.physical)
            columns.append(col)
            coldefs.append((eb, col))
            builder_defs.append((eb, col))
        elif kind == "TableLikeClause":
            for col in _like(a, eb):
                if any(c.name == col.name for c in columns):
                    raise CloakError("42701", f'column "{col.name}" specified more than once')
                taken.add(col.physical)
                columns.append(col)
        elif kind != "Constraint":
            raise CloakError("0A000", f"pgcloak does not support {kind} in CREATE TABLE")
    rel = Relation(schema, name, physical, tuple(columns), partitioned=bool(body.get("partspec")))
    copies = ddl_partition.Copies()
    if inherit is not None:
        rel = inherit.child(rel)
        copies = ddl_partition.copies(a, inherit.parents, rel)
    builder = TableBuilder(a, rel, existing=False)
    builder.reserved = copies.names()
    defs = iter(builder_defs)
    for elt in body.get("tableElts", ()):  # textual order, as PostgreSQL collects them
        kind, eb = node_kind(elt)
        if kind == "Constraint":
            builder.constraint(eb, None, None)
        elif kind == "ColumnDef":
            builder.column(*next(defs))
    constraints, sequences = builder.finish()
    rel = ddl_encrypt.create_table(a, rel, coldefs, constraints)  # encrypted columns: bytea
    cons, indexes = ddl_partition.finish_create(a, body, rel, constraints, copies)
    if existing is None:
        a.changes.append(CreateTable(rel, cons, indexes, tuple(sequences)))
