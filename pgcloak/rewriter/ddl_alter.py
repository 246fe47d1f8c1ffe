"""ALTER TABLE, RENAME, DROP TABLE, CREATE INDEX and TRUNCATE on cloaked tables.

RENAME is registry-only: physical names never change, so the statement is not
sent at all; the plan carries the registry change and the command tag to report.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pgcloak.registry.names import implicit_constraint_name, index_column_names, new_physical_name
from pgcloak.rewriter import ddl_encrypt, ddl_partition
from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    Constraint,
    CreateIndex,
    DropColumn,
    DropConstraint,
    DropTable,
    Index,
    Relation,
    RenameTable,
    creation_schema,
)
from pgcloak.rewriter.ddl import TableBuilder, is_generated, new_column
from pgcloak.rewriter.ddl_misc import drop_objects
from pgcloak.rewriter.dml import item_starts
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, figure_colname

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["alter_table", "create_index", "drop", "rename", "truncate"]

_COMMA, _STAR = "ASCII_44", "ASCII_42"


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _locate_error() -> CloakError:
    return CloakError("0A000", "pgcloak could not locate a name in the statement")


def _relation(a: Analyzer, rv: Node, missing_ok: bool = False) -> tuple[Relation | None, int]:
    """Resolve the RangeVar of a DDL statement; (relation or None, its last name token)."""
    schema = rv.get("schemaname")
    parts = [p for p in (rv.get("catalogname"), schema, rv["relname"]) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    rel = a.find(schema, rv["relname"])
    if rel is None:
        a.uncloaked(schema, rv["relname"], toks[-1], missing_ok)
    else:
        a.touch(rel)
        a.edits.set(toks[-1], rel.physical)
    return rel, toks[-1]


def _passthrough(a: Analyzer, node: Node, what: str) -> None:
    """A DDL on an object pgcloak does not cloak: fine unless it drags cloaked ones in."""
    if a.mentions_cloaked(node):
        a.touched = True
        raise CloakError(
            "0A000", f"pgcloak does not support {what} mixing cloaked and uncloaked objects"
        )


def _segments(a: Analyzer, start: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the comma-separated commands from `start` to the end."""
    ts = a.ts
    ranges = []
    i = first = start
    while i < a.hi:
        if ts.match[i] > i:
            i = ts.match[i] + 1
            continue
        if ts.name(i) == _COMMA:
            ranges.append((first, i))
            first = i + 1
        i += 1
    ranges.append((first, a.hi))
    return ranges


def _name_after(a: Analyzer, tok: int, optional: tuple[str, ...], name: str) -> int:
    """Skip the `optional` keywords (in order, each if present) and expect `name`."""
    ts = a.ts
    for kw in optional:
        if kw == "IF_P" and ts.name(tok) == "IF_P":
            tok += 2  # IF EXISTS
        elif ts.name(tok) == kw:
            tok += 1
    return ts.expect(tok, name)


def alter_table(a: Analyzer, body: Node) -> None:
    if body.get("objtype") != "OBJECT_TABLE":
        _check_names(a, body, "ALTER on this object type")  # ALTER INDEX of a cloaked one
        return
    rel, tok = _relation(a, body["relation"], bool(body.get("missing_ok")))
    if rel is None:
        _passthrough(a, body, "ALTER TABLE")
        rv = body["relation"]
        added = [c["AlterTableCmd"]["def"] for c in body.get("cmds", ())
                 if c["AlterTableCmd"].get("subtype") == "AT_AddColumn"]  # fmt: skip
        schema = rv.get("schemaname") or creation_schema(a.search_path) or ""
        ddl_encrypt.check_uncloaked(a, schema, rv["relname"], added)
        return
    after = tok + 2 if a.ts.name(tok + 1) == _STAR else tok + 1
    cmds = [c["AlterTableCmd"] for c in body.get("cmds", ())]
    segments = _segments(a, after)
    if len(segments) != len(cmds):
        raise _locate_error()
    only = ddl_partition.is_only(body["relation"])
    for cmd, (start, end) in zip(cmds, segments, strict=True):
        before = len(a.changes)
        if not ddl_partition.alter_cmd(a, rel, cmd):  # ATTACH/DETACH PARTITION, INHERIT
            rel = _alter_cmd(a, rel, cmd, start, end)
        ddl_partition.propagate(a, rel, only, before)  # to partitions and children


def _alter_cmd(a: Analyzer, rel: Relation, cmd: Node, start: int, end: int) -> Relation:
    sub = cmd["subtype"]
    catalog = a.catalog
    if sub == "AT_AddColumn":
        coldef = cmd["def"]["ColumnDef"]
        name = coldef["colname"]
        tok = a.ts.expect(a.ts.at(coldef.get("location", 0)), name)
        a.sensitive.add(name)
        old = rel.column(name)
        if old is not None and not cmd.get("missing_ok"):
            raise CloakError("42701", f'column "{name}" of relation "{rel.name}" already exists')
        col = (
            old
            if old is not None
            else new_column(a, rel.schema, name, {c.physical for c in rel.columns})
        )
        if old is None and is_generated(coldef):
            col = replace(col, generated=True)
        a.edits.set(tok, col.physical)
        working = rel if old is not None else replace(rel, columns=(*rel.columns, col))
        builder = TableBuilder(a, working, existing=True)
        builder.column(coldef, col)
        cons, seqs = builder.finish()
        if old is None:
            col = ddl_encrypt.add_column(a, working, coldef, col, cons)  # encrypted: bytea
            working = replace(rel, columns=(*rel.columns, col))
            a.changes.append(AddColumn(rel.physical, col, tuple(cons), (), tuple(seqs)))
        return working
    if sub == "AT_AddConstraint":
        builder = TableBuilder(a, rel, existing=True)
        builder.constraint(cmd["def"]["Constraint"], None, end)
        cons, _ = builder.finish()
        ddl_encrypt.check_constraints(a, rel, cons, (start, end - 1))
        a.changes.extend(AddConstraint(c) for c in cons)
        return rel
    if sub == "AT_DropConstraint":
        name = cmd["name"]
        tok = _name_after(a, start + 1, ("CONSTRAINT", "IF_P"), name)
        a.sensitive.add(name)
        found = next((c for c in catalog.constraints(rel.physical) if c.name == name), None)
        if found is None:
            if not cmd.get("missing_ok"):
                msg = f'constraint "{name}" of relation "{rel.name}" does not exist'
                raise CloakError("42704", msg)
            a.edits.set(tok, a.dummy(name, "k"))  # the server just skips it
            return rel
        a.edits.set(tok, found.physical)
        if found.check is not None:  # pgcloak's own: the server checks ownership, locks
            a.edits.cut(start, end - 1, f"ALTER COLUMN {found.columns[0]} SET DEFAULT NULL")
            a.changes.append(DropConstraint(rel.physical, found.physical))
            return rel
        cascaded: tuple[Constraint, ...] = ()
        if cmd.get("behavior") == "DROP_CASCADE" and found.contype in ("p", "u"):
            cascaded = tuple(
                fk for fk in catalog.foreign_keys_to(rel.physical)
                if set(fk.ref_columns) == set(found.columns)
            )  # fmt: skip
        a.changes.append(DropConstraint(rel.physical, found.physical, cascaded))
        return rel
    # The remaining commands all name one existing column.
    if sub == "AT_DropColumn":
        optional: tuple[str, ...] = ("COLUMN", "IF_P")
    elif sub in ("AT_AlterColumnType", "AT_ColumnDefault", "AT_SetNotNull", "AT_DropNotNull"):
        optional = ("COLUMN",)
    else:
        raise CloakError(
            "0A000", f"pgcloak does not support ALTER TABLE {sub[3:]} on cloaked objects"
        )
    name = cmd["name"]
    tok = _name_after(a, start + 1, optional, name)
    target = rel.column(name)
    if target is None:
        if sub == "AT_DropColumn" and cmd.get("missing_ok"):
            a.edits.set(tok, a.dummy(name, "c"))  # the server just skips it
            return rel
        msg = f'column "{name}" of relation "{rel.name}" does not exist'
        raise CloakError("42703", msg)
    a.edits.set(tok, target.physical)
    ddl_encrypt.check_alter_column(a, rel, target, sub, cmd)
    scope = Scope(
        None,
        [Item(rel.name, rel.physical, [Col(c.name, c.physical) for c in rel.columns], rel.schema)],
    )
    if sub == "AT_AlterColumnType":
        definition = cmd["def"]["ColumnDef"]
        a.keep_type(definition["typeName"])
        a.expr(definition.get("raw_default"), scope)
    elif sub == "AT_ColumnDefault":
        a.expr(cmd.get("def"), Scope(None))
    elif sub == "AT_DropColumn":
        phys = target.physical
        dropped = [c for c in catalog.constraints(rel.physical) if phys in c.columns]
        if cmd.get("behavior") == "DROP_CASCADE":
            dropped += [
                fk for fk in catalog.foreign_keys_to(rel.physical)
                if phys in fk.ref_columns and fk not in dropped
            ]  # fmt: skip
        idxs = tuple(i for i in catalog.indexes(rel.physical) if phys in i.columns)
        owned = tuple(s for s in catalog.sequences(rel.physical) if s.column == phys)
        a.changes.append(DropColumn(rel.physical, phys, tuple(dropped), idxs, owned))
        return replace(rel, columns=tuple(c for c in rel.columns if c.physical != phys))
    return rel


def rename(a: Analyzer, body: Node) -> None:
    kind = body.get("renameType")
    if kind not in ("OBJECT_TABLE", "OBJECT_COLUMN", "OBJECT_TABCONSTRAINT") or (
        kind == "OBJECT_COLUMN" and body.get("relationType") != "OBJECT_TABLE"
    ):
        _check_names(a, body, "RENAME of this object type")
        return
    rel, _ = _relation(a, body["relation"], bool(body.get("missing_ok")))
    if rel is None:
        _passthrough(a, body, "RENAME")
        return
    new = body["newname"]
    a.sensitive.add(new)
    a.registry_only = "ALTER TABLE"
    if kind == "OBJECT_TABLE":
        taken = a.catalog.relation_physical(rel.schema, new) is not None
        if taken or a.catalog.has_uncloaked(rel.schema, new):
            raise CloakError("42P07", f'relation "{new}" already exists')
        a.changes.append(RenameTable(rel.physical, new))
    elif kind == "OBJECT_COLUMN":
        old = body["subname"]
        col = rel.column(old)
        if col is None:
            raise CloakError("42703", f'column "{old}" does not exist')
        if rel.column(new) is not None:
            raise CloakError("42701", f'column "{new}" of relation "{rel.name}" already exists')
        ddl_partition.rename_column(a, rel, col, new, ddl_partition.is_only(body["relation"]))
    else:
        old = body["subname"]
        cons = a.catalog.constraints(rel.physical)
        con = next((c for c in cons if c.name == old), None)
        if con is None:
            raise CloakError("42704", f'constraint "{old}" for table "{rel.name}" does not exist')
        if con.contype in ("p", "u", "x") and a.catalog.relation_physical(rel.schema, new):
            raise CloakError("42P07", f'relation "{new}" already exists')
        if any(c.name == new for c in cons):
            msg = f'constraint "{new}" for relation "{rel.name}" already exists'
            raise CloakError("42710", msg)
        ddl_partition.rename_constraint(a, rel, con, new, ddl_partition.is_only(body["relation"]))


def drop(a: Analyzer, body: Node) -> None:
    if body.get("removeType") != "OBJECT_TABLE":
        _check_names(a, body, "DROP of this object type")
        return
    cascade = body.get("behavior") == "DROP_CASCADE"
    dropped: list[Relation] = []
    for schema, name, tok in drop_objects(a, body, a.lo + 2):  # DROP TABLE
        rel = a.find(schema, name)
        if rel is None:
            a.uncloaked(schema, name, tok, bool(body.get("missing_ok")))
            continue
        a.touch(rel)
        a.edits.set(tok, rel.physical)
        dropped.append(rel)
    dropped += ddl_partition.dropped_with(a, dropped, cascade)  # partitions, children
    gone = {r.physical for r in dropped}
    for rel in dropped:
        fks: tuple[Constraint, ...] = ()
        if cascade:
            fks = tuple(
                fk for fk in a.catalog.foreign_keys_to(rel.physical) if fk.table not in gone
            )
        a.changes.append(DropTable(rel.physical, fks))


def _check_names(a: Analyzer, body: Node, what: str) -> None:
    """Refuse statements on other object kinds that name cloaked objects."""
    sens = a.catalog.sensitive_names()
    for i in range(a.lo, a.hi):
        if a.ts.value(i) in sens:
            a.touched = True
            raise CloakError("0A000", f"pgcloak does not support {what} on cloaked objects")
    _passthrough(a, body, what)


def truncate(a: Analyzer, body: Node) -> None:
    for rv in body.get("relations", ()):
        _relation(a, rv["RangeVar"])


def create_index(a: Analyzer, body: Node) -> None:
    ts = a.ts
    rel, rel_tok = _relation(a, body["relation"])
    if rel is None:
        _passthrough(a, body, "CREATE INDEX")
        return
    if body.get("excludeOpNames") or body.get("primary") or body.get("isconstraint"):
        raise CloakError("0A000", "pgcloak does not support this form of CREATE INDEX")
    cols = [Col(c.name, c.physical) for c in rel.columns]
    scope = Scope(None, [Item(rel.name, rel.physical, cols, rel.schema)])
    item = scope.items[0]
    open_tok = rel_tok + 1
    if ts.name(open_tok) == "USING":
        a.kept.add(open_tok + 1)
        open_tok += 2
    elems = [e["IndexElem"] for e in body.get("indexParams", ())]
    segments = item_starts(a, open_tok)
    if len(segments) != len(elems):
        raise _locate_error()
    names: list[str] = []
    labels: list[str] = []  # the index's column names in the database (Index.labels)
    involved: list[str] = []
    a.collect = []
    for elem, seg in zip(elems, segments, strict=True):
        if elem.get("name") is not None:
            col = a.column_in_item(item, elem["name"], ts.expect(seg, elem["name"]), None,
                                   f'"{elem["name"]}"')  # fmt: skip
            names.append(elem["name"])
            if col is not None:
                involved.append(col.phys)
                labels.append(col.phys)
        else:
            a.expr(elem.get("expr"), scope)
            labels.append(ddl_partition.expression_labels(elem["expr"], rel)[1])
            figured, _ = figure_colname(elem["expr"], lambda b: Col(_sval(b["fields"][-1]), ""),
                                        lambda b: None)  # fmt: skip
            names.append(figured.name if figured is not None else "expr")
    include = [e["IndexElem"]["name"] for e in body.get("indexIncludingParams", ())]
    if include:
        inc = ts.match[open_tok] + 1
        if ts.name(inc) != "INCLUDE":
            raise _locate_error()
        for name, t in zip(include, a.ident_list(inc + 1, include), strict=True):
            col = a.column_in_item(item, name, t, None, f'"{name}"')
            if col is not None:
                involved.append(col.phys)
                labels.append(col.phys)
        names += include
    a.expr(body.get("whereClause"), scope)
    ddl_encrypt.check_index(a, rel, body)
    involved += [c.phys for c in a.collect]
    a.collect = None
    labels = index_column_names(labels)  # as PostgreSQL names the index's columns
    index = _index_name(a, body, rel, names, tuple(dict.fromkeys(involved)), labels=tuple(labels))
    if index is not None:  # on a partitioned table, PostgreSQL makes one on each partition
        ddl_partition.index_copies(a, rel, index, ddl_partition.is_only(body["relation"]))


def _index_name(
    a: Analyzer,
    body: Node,
    rel: Relation,
    names: list[str],
    involved: tuple[str, ...],
    *,
    labels: tuple[str, ...],
) -> Index | None:
    ts = a.ts
    tok = a.lo + 1
    while tok < a.hi and ts.name(tok) != "INDEX":
        tok += 1
    tok += 1
    if ts.name(tok) == "CONCURRENTLY":
        tok += 1
    if ts.name(tok) == "IF_P":
        tok += 3  # IF NOT EXISTS
    idxname = body.get("idxname")
    if idxname is not None:
        ts.expect(tok, idxname)
        a.sensitive.add(idxname)
        existing = a.catalog.relation_physical(rel.schema, idxname)
        if existing is None and a.catalog.has_uncloaked(rel.schema, idxname):
            existing = idxname
        if existing is not None:
            if not body.get("if_not_exists"):
                raise CloakError("42P07", f'relation "{idxname}" already exists')
            a.rename(tok, existing)
            return None
        sem, implicit = idxname, False
    else:
        if ts.name(tok) != "ON":
            raise _locate_error()
        taken = a.catalog.relation_names(rel.schema)
        sem, implicit = implicit_constraint_name(rel.name, names, "idx", taken), True
    phys = new_physical_name("i")
    if idxname is not None:
        a.edits.set(tok, phys)
    else:
        a.edits.add_before(tok, f"{phys} ")
    index = Index(rel.schema, rel.physical, sem, phys, involved, bool(body.get("unique")), implicit,
                  labels if len(labels) == len(names) else None)  # fmt: skip
    a.changes.append(CreateIndex(index))
    return index


def vacuum(a: Analyzer, body: Node) -> None:
    """VACUUM / ANALYZE [rel [(cols)], ...]: relation and column names become physical."""
    for vr in body.get("rels", ()):
        rel_node = vr["VacuumRelation"]
        rv = rel_node.get("relation")
        if rv is None:
            raise CloakError("0A000", "pgcloak does not support VACUUM by OID")
        rel, tok = _relation(a, rv)
        names = [c["String"]["sval"] for c in rel_node.get("va_cols", ())]
        if not names:
            continue
        toks = a.ident_list(tok + 1, names)
        for name, t in zip(names, toks, strict=True):
            col = rel.column(name) if rel is not None else None
            if rel is not None and col is None:
                raise CloakError(
                    "42703", f'column "{name}" of relation "{rel.name}" does not exist'
                )
            if col is not None:
                a.rename(t, col.physical)
            else:
                a.kept.add(t)


def lock(a: Analyzer, body: Node) -> None:
    """LOCK [TABLE] rel, ...: relation names become physical."""
    for rv in body.get("relations", ()):
        _relation(a, rv["RangeVar"])
