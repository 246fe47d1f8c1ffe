"""CREATE / ALTER / DROP SEQUENCE and sequence renames.

A sequence created through pgcloak gets a fresh physical name and is registered
without a parent (`StandaloneSequence`), or, with ``OWNED BY t.c`` of a cloaked
column, as that column's sequence (`OwnedSequence`, like a serial's: dropping the
column or table drops it). ``ALTER SEQUENCE ... OWNED BY`` moves it between the
two; RENAME is registry-only, as for tables. Its name inside string literals
(``nextval('s')``, ``'s'::regclass``) is rewritten by the analyzer like any
relation's (analyze.check_relname_string). Temporary sequences and the ones the
cloak filter declines are sent as written, provided they name nothing cloaked; a
cloaked sequence cannot be owned by a relation pgcloak does not cloak (the
registry would outlive it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pgcloak.registry.names import new_physical_name
from pgcloak.rewriter.catalog import (
    AnySequence,
    CreateSequence,
    DropSequence,
    DropView,
    OwnedSequence,
    RenameSequence,
    SetSequenceOwner,
    StandaloneSequence,
    creation_schema,
    uncloaked_exists,
)
from pgcloak.rewriter.ddl import uncloaked_create
from pgcloak.rewriter.ddl_misc import (
    Found,
    check_unmentioned,
    drop_objects,
    lookup,
    relation_tokens,
)
from pgcloak.rewriter.ddl_view import cascade, refuse_uncloaked_dependents
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["handler"]

Handler = Callable[["Analyzer", Node], None]
# ALTER SEQUENCE forms that parse as AlterTableStmt and name nothing but the sequence.
_ALTER_CMDS = frozenset({"AT_ChangeOwner", "AT_SetLogged", "AT_SetUnLogged"})
Owner = tuple[str, str]  # (table physical, column physical)


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def handler(kind: str, body: Node) -> Handler | None:
    if kind == "CreateSeqStmt":
        return create
    if kind == "AlterSeqStmt":
        return alter
    if kind == "DropStmt" and body.get("removeType") == "OBJECT_SEQUENCE":
        return drop
    if kind == "RenameStmt" and body.get("renameType") == "OBJECT_SEQUENCE":
        return rename
    if kind == "AlterTableStmt" and body.get("objtype") == "OBJECT_SEQUENCE":
        return alter_table
    return None


def _not_a_sequence(name: str) -> CloakError:
    return CloakError("42809", f'"{name}" is not a sequence')


def _sequence(a: Analyzer, found: Found, name: str) -> AnySequence:
    """The catalog's record of a cloaked sequence `lookup` found."""
    if found.owner is not None:
        for seq in a.catalog.sequences(found.owner):
            if seq.physical == found.physical:
                return seq
    free = a.catalog.standalone_sequence(found.physical)
    return free if free is not None else StandaloneSequence(found.schema, name, found.physical)


def _owned_by(a: Analyzer, options: list[Node] | None, schema: str) -> Owner | bool | None:
    """Resolve the OWNED BY option (of sequence in `schema`): the new owner, None for
    OWNED BY NONE, False when absent."""
    ts = a.ts
    result: Owner | bool | None = False
    for opt in options or ():
        elem = opt.get("DefElem", {})
        if elem.get("defname") == "as":
            a.keep_type(elem["arg"]["TypeName"])
        if elem.get("defname") != "owned_by":
            continue
        parts = [_sval(p) for p in elem["arg"]["List"]["items"]]
        loc = ts.at(elem.get("location", 0))
        if ts.name(loc) != "OWNED" or ts.name(loc + 1) != "BY":
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        toks = [ts.expect(loc + 2 + 2 * k, part) for k, part in enumerate(parts)]
        if len(parts) == 1:
            if parts[0] != "none":
                raise CloakError("42601", "invalid OWNED BY option", ts.pos(toks[0]))
            a.kept.add(toks[0])
            result = None
            continue
        if len(parts) > 3:
            raise CloakError("0A000", "cross-database references are not implemented")
        a.kept.update(toks[:-2])
        table_schema = parts[-3] if len(parts) == 3 else None
        table, column = parts[-2], parts[-1]
        rel = a.find(table_schema, table)
        if rel is None:
            a.touched = True
            if uncloaked_exists(a.catalog, table_schema, table, a.search_path) is False:
                raise CloakError("42P01", f'relation "{table}" does not exist')
            raise CloakError(
                "0A000",
                "pgcloak does not support a cloaked sequence OWNED BY a relation it does not cloak",
                ts.pos(toks[-2]),
            )
        a.touch(rel)
        a.edits.set(toks[-2], rel.physical)
        if rel.kind != "table":
            raise CloakError("0A000", "pgcloak does not support sequences owned by views")
        if rel.schema != schema:
            raise CloakError("55000", "sequence must be in same schema as table it is linked to")
        col = rel.column(column)
        if col is None:
            raise CloakError("42703", f'column "{column}" of relation "{table}" does not exist')
        a.edits.set(toks[-1], col.physical)
        result = (rel.physical, col.physical)
    return result


def create(a: Analyzer, body: Node) -> None:
    rv = body["sequence"]
    if uncloaked_create(a, rv):
        check_unmentioned(a, body, "temporary or uncloaked CREATE SEQUENCE")
        return
    a.touched = True
    ts, catalog = a.ts, a.catalog
    _, name, toks = relation_tokens(a, rv)
    name_tok = toks[-1]
    schema = rv.get("schemaname") or creation_schema(a.search_path)
    if schema is None:
        raise CloakError("3F000", "no schema has been selected to create in")
    a.sensitive.add(name)
    owner = _owned_by(a, body.get("options"), schema)
    existing = catalog.relation_physical(schema, name)
    if existing is not None or catalog.has_uncloaked(schema, name):
        if not body.get("if_not_exists"):
            raise CloakError("42P07", f'relation "{name}" already exists', ts.pos(name_tok))
        a.rename(name_tok, existing or name)  # the server skips it with a NOTICE
        return
    physical = new_physical_name("s")
    a.edits.set(name_tok, physical)
    seq: AnySequence
    if isinstance(owner, tuple):
        seq = OwnedSequence(schema, name, physical, owner[0], owner[1], implicit=False)
    else:
        seq = StandaloneSequence(schema, name, physical)
    a.changes.append(CreateSequence(seq))


def _target(a: Analyzer, rv: Node, missing_ok: bool) -> tuple[Found | None, str, int]:
    """Resolve the sequence an ALTER/RENAME names; (cloaked object or None, name, token)."""
    schema, name, toks = relation_tokens(a, rv)
    found = lookup(a, schema, name)
    if found is None:
        a.uncloaked(schema, name, toks[-1], missing_ok, kind="s")
        return None, name, toks[-1]
    a.touched = True
    a.sensitive.add(name)
    if found.relation is not None:
        a.touch(found.relation)
    a.edits.set(toks[-1], found.physical)
    if found.kind != "s":
        raise _not_a_sequence(name)
    return found, name, toks[-1]


def alter(a: Analyzer, body: Node) -> None:
    """ALTER SEQUENCE ... options; OWNED BY changes where the registry files it."""
    found, name, _ = _target(a, body["sequence"], bool(body.get("missing_ok")))
    if found is None:
        if not a.touched:  # an existing sequence pgcloak does not cloak
            check_unmentioned(a, body, "ALTER SEQUENCE of an uncloaked sequence")
        return  # else missing (IF EXISTS): the leak check refuses cloaked names left in it
    owner = _owned_by(a, body.get("options"), found.schema)
    if owner is not False:
        table, column = owner if isinstance(owner, tuple) else (None, None)
        a.changes.append(SetSequenceOwner(_sequence(a, found, name), table, column))


def alter_table(a: Analyzer, body: Node) -> None:
    """ALTER SEQUENCE ... OWNER TO / SET [UN]LOGGED (parsed as ALTER TABLE commands)."""
    found, _, _ = _target(a, body["relation"], bool(body.get("missing_ok")))
    if found is None and not a.touched:
        check_unmentioned(a, body, "ALTER SEQUENCE of an uncloaked sequence")
        return
    for cmd in body.get("cmds", ()):
        sub = cmd["AlterTableCmd"].get("subtype", "")
        if sub not in _ALTER_CMDS:
            a.touched = True
            raise CloakError(
                "0A000", f"pgcloak does not support ALTER SEQUENCE {sub[3:]} on cloaked sequences"
            )
        owner = cmd["AlterTableCmd"].get("newowner") or {}
        if owner.get("location", -1) >= 0:
            tok = a.ts.by_start.get(a.ts.char(owner["location"]))
            if tok is not None:
                a.kept.add(tok)


def rename(a: Analyzer, body: Node) -> None:
    """ALTER SEQUENCE ... RENAME TO: registry-only for cloaked sequences."""
    found, name, _ = _target(a, body["relation"], bool(body.get("missing_ok")))
    new = body["newname"]
    if found is None:
        if not a.touched:
            check_unmentioned(a, body, "ALTER SEQUENCE of an uncloaked sequence")
            return
        ts = a.ts  # a missing sequence with IF EXISTS: the server skips; hide the new name
        last = a.hi - 1
        while last > a.lo and ts.name(last) == "ASCII_59":
            last -= 1
        a.edits.set(ts.expect(last, new), a.dummy(new, "s"))
        return
    a.sensitive.add(new)
    catalog = a.catalog
    if catalog.relation_physical(found.schema, new) is not None or catalog.has_uncloaked(
        found.schema, new
    ):
        raise CloakError("42P07", f'relation "{new}" already exists')
    a.registry_only = "ALTER SEQUENCE"
    a.changes.append(RenameSequence(_sequence(a, found, name), new))


def drop(a: Analyzer, body: Node) -> None:
    """DROP SEQUENCE; with CASCADE also the cloaked views using the sequences."""
    missing_ok = bool(body.get("missing_ok"))
    dropped: list[AnySequence] = []
    uncloaked: list[str] = []
    for schema, name, tok in drop_objects(a, body, a.lo + 2):  # DROP SEQUENCE
        found = lookup(a, schema, name)
        if found is None:
            if not missing_ok and uncloaked_exists(a.catalog, schema, name, a.search_path) is False:
                a.touched = True
                raise CloakError("42P01", f'sequence "{name}" does not exist')
            a.uncloaked(schema, name, tok, missing_ok, kind="s")
            uncloaked.append(name)
            continue
        a.touched = True
        a.sensitive.add(name)
        a.edits.set(tok, found.physical)
        if found.kind != "s":
            raise _not_a_sequence(name)
        dropped.append(_sequence(a, found, name))
    views: list[str] = []
    if body.get("behavior") == "DROP_CASCADE":
        refuse_uncloaked_dependents(a, uncloaked, "DROP SEQUENCE")
        views = cascade(a, [s.physical for s in dropped], "DROP SEQUENCE")
    a.changes.extend(DropSequence(s) for s in dropped)
    a.changes.extend(DropView(v) for v in views)
