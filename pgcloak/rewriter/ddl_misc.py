"""COMMENT ON and GRANT/REVOKE on cloaked objects, plus lookups shared with ddl_view.

COMMENT is registry-only: the text is stored encrypted in the registry and never
reaches the server (so pg_description stays empty for cloaked objects). Because
nothing is sent, the errors PostgreSQL would raise (missing or wrong kind of
object) are raised here. GRANT/REVOKE are sent with object and column names
rewritten; roles are not cloaked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter.catalog import CatalogChange, Relation, SetComment, _skip
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = [
    "Found",
    "check_unmentioned",
    "comment",
    "drop_objects",
    "grant",
    "lookup",
    "relation_tokens",
]

_LPAR, _COMMA = "ASCII_40", "ASCII_44"
_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_REL_KINDS = {"table": "t", "view": "v", "matview": "m"}
# COMMENT ON <objtype> of a relation: the registry kind it must be, and its label.
_COMMENT_KINDS = {
    "OBJECT_TABLE": ("t", "a table"),
    "OBJECT_VIEW": ("v", "a view"),
    "OBJECT_MATVIEW": ("m", "a materialized view"),
    "OBJECT_INDEX": ("i", "an index"),
    "OBJECT_SEQUENCE": ("s", "a sequence"),
}


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


@dataclass(frozen=True)
class Found:
    """A cloaked object of pg_class's namespace.

    `kind`: registry kind letter (t, v, m, i, s), or "x" for the index behind a
    PRIMARY KEY/UNIQUE/EXCLUDE constraint (registered only as the constraint).
    `relation` is set for tables and views, `owner` (the table's physical name)
    for indexes and owned sequences.
    """

    kind: str
    physical: str
    schema: str
    relation: Relation | None = None
    owner: str | None = None


def lookup(a: Analyzer, schema: str | None, name: str) -> Found | None:
    """The cloaked relation, view, index or sequence a (qualified) name resolves to."""
    catalog = a.catalog
    schemas = [schema] if schema is not None else [s for s in a.search_path if not _skip(s)]
    for s in schemas:
        phys = catalog.relation_physical(s, name)
        if phys is None:
            continue
        rel = catalog.relation_by_physical(phys)
        if rel is not None:
            return Found(_REL_KINDS.get(rel.kind, "t"), phys, s, rel)
        for owner_name in catalog.relation_names(s):
            owner = catalog.relation(s, owner_name)
            if owner is None:
                continue
            if any(i.physical == phys for i in catalog.indexes(owner.physical)):
                return Found("i", phys, s, owner=owner.physical)
            if any(q.physical == phys for q in catalog.sequences(owner.physical)):
                return Found("s", phys, s, owner=owner.physical)
            if any(c.physical == phys for c in catalog.constraints(owner.physical)):
                return Found("x", phys, s, owner=owner.physical)
        return Found("s", phys, s)  # only sequences are registered without an owner
    return None


def relation_tokens(a: Analyzer, rv: Node) -> tuple[str | None, str, list[int]]:
    """(schema, name, name tokens) of a RangeVar; catalog and schema tokens are kept."""
    schema, name = rv.get("schemaname"), rv["relname"]
    parts = [p for p in (rv.get("catalogname"), schema, name) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    return schema, name, toks


def drop_objects(a: Analyzer, body: Node, tok: int) -> Iterator[tuple[str | None, str, int]]:
    """(schema, name, name token) of each object a DropStmt lists, in order.

    `tok` is the token after DROP <kind> [CONCURRENTLY]; IF EXISTS is skipped and
    the qualifying tokens are kept as written. Shared by every DROP handler so
    they all walk the comma-separated list the same way.
    """
    ts = a.ts
    if ts.name(tok) == "IF_P":
        tok += 2
    for k, obj in enumerate(body.get("objects", ())):
        parts = [_sval(p) for p in obj["List"]["items"]]
        if k:
            if ts.name(tok) != _COMMA:
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
            tok += 1
        toks = [ts.expect(tok + 2 * j, p) for j, p in enumerate(parts)]
        a.kept.update(toks[:-1])
        tok = toks[-1] + 1
        yield (parts[-2] if len(parts) > 1 else None), parts[-1], toks[-1]


def check_unmentioned(a: Analyzer, node: Any, what: str) -> None:
    """A statement left as the client wrote it: refuse if it spells any cloaked name.

    The rewriter's generic rule for statements it does not rewrite, and the DDL
    handlers' for the forms they pass through: identifiers and the words of string
    literals are compared with the cloaked relation/constraint names (the text is
    sent unchanged, so edits the analyzer planned do not count).
    """
    sens = a.catalog.sensitive_names()
    ts = a.ts
    hit = a.mentions_cloaked(node)
    for i in range(a.lo, a.hi):
        if hit:
            break
        if ts.toks[i].name == "SCONST":
            words = _WORD.findall(ts.raw(i))
            hit = any(w in sens or w.lower() in sens for w in words)
        else:
            value = ts.value(i)
            hit = value is not None and value in sens
    if hit:
        a.touched = True
        raise CloakError("0A000", f"pgcloak does not support {what} on cloaked objects")


def _registry_only(a: Analyzer, change: CatalogChange, tag: str) -> None:
    a.touched = True
    a.registry_only = tag
    a.changes.append(change)


# -- COMMENT ON ---------------------------------------------------------------------------


def _comment_target(a: Analyzer, parts: Sequence[str]) -> Found | None:
    """Resolve [catalog.][schema.]name of a COMMENT target among cloaked objects."""
    found = lookup(a, parts[-2] if len(parts) > 1 else None, parts[-1])
    if found is not None and len(parts) > 2:
        # Nothing is sent, so the server can't check the database name: refuse.
        raise CloakError("0A000", "pgcloak does not support database-qualified names in COMMENT ON")
    return found


def comment(a: Analyzer, body: Node) -> None:
    objtype = body["objtype"]
    text = body.get("comment") or None  # PostgreSQL treats '' as NULL: drop the comment
    items = (body.get("object") or {}).get("List", {}).get("items", ())
    parts = [_sval(p) for p in items] if all("String" in p for p in items) else None
    change: SetComment
    if objtype in _COMMENT_KINDS and parts:
        found = _comment_target(a, parts)
        if found is None:
            check_unmentioned(a, body, "COMMENT")
            return
        want, label = _COMMENT_KINDS[objtype]
        if found.kind == "x" and want == "i":
            a.touched = True
            raise CloakError(
                "0A000",
                "pgcloak does not support COMMENT ON INDEX for the index of a constraint; "
                "comment on the constraint instead",
            )
        if found.kind != want:
            a.touched = True
            raise CloakError("42809", f'"{parts[-1]}" is not {label}')
        change = SetComment(want, found.physical, None, text)
    elif objtype == "OBJECT_COLUMN" and parts and len(parts) >= 2:
        found = _comment_target(a, parts[:-1])
        if found is None:
            check_unmentioned(a, body, "COMMENT")
            return
        a.touched = True
        rel = found.relation
        if rel is None:
            raise CloakError("42809", f'cannot set comment on relation "{parts[-2]}"')
        col = rel.column(parts[-1])
        if col is None:
            raise CloakError(
                "42703", f'column "{parts[-1]}" of relation "{parts[-2]}" does not exist'
            )
        change = SetComment("c", col.physical, rel.physical, text)
    elif objtype == "OBJECT_TABCONSTRAINT" and parts and len(parts) >= 2:
        found = _comment_target(a, parts[:-1])
        if found is None:
            check_unmentioned(a, body, "COMMENT")
            return
        a.touched = True
        cons = a.catalog.constraints(found.physical) if found.relation is not None else ()
        con = next((c for c in cons if c.name == parts[-1]), None)
        if con is None:
            raise CloakError(
                "42704", f'constraint "{parts[-1]}" for table "{parts[-2]}" does not exist'
            )
        change = SetComment("k", con.physical, found.physical, text)
    else:
        check_unmentioned(a, body, "COMMENT ON this object type")
        return
    a.sensitive.update(parts)
    _registry_only(a, change, "COMMENT")


# -- GRANT / REVOKE -----------------------------------------------------------------------


def _privilege_segments(a: Analyzer) -> list[tuple[int, int]]:
    """Token ranges of the comma-separated privileges, up to ON."""
    ts = a.ts
    i = a.lo + 1
    if ts.name(a.lo) == "REVOKE" and ts.name(i) == "GRANT" and ts.name(i + 1) == "OPTION":
        i += 3  # GRANT OPTION FOR
    segments = []
    first = i
    while i < a.hi and ts.name(i) != "ON":
        if ts.match[i] > i:
            i = ts.match[i] + 1
            continue
        if ts.name(i) == _COMMA:
            segments.append((first, i))
            first = i + 1
        i += 1
    if i >= a.hi:
        raise CloakError("0A000", "pgcloak could not locate a name in the statement")
    segments.append((first, i))
    return segments


def grant(a: Analyzer, body: Node) -> None:
    what = "GRANT" if body.get("is_grant") else "REVOKE"
    privs = [p["AccessPriv"] for p in body.get("privileges") or ()]
    with_cols = any(p.get("cols") for p in privs)
    if body.get("targtype") == "ACL_TARGET_ALL_IN_SCHEMA":
        schemas = [_sval(s) for s in body.get("objects", ())]
        if with_cols and any(a.catalog.relation_names(s) for s in schemas):
            a.touched = True
            raise CloakError(
                "0A000",
                f"pgcloak does not support column privileges in {what} ... ON ALL TABLES IN "
                "SCHEMA of a schema with cloaked tables",
            )
        check_unmentioned(a, body, what)
        return
    if body.get("targtype") != "ACL_TARGET_OBJECT" or body.get("objtype") not in (
        "OBJECT_TABLE",
        "OBJECT_SEQUENCE",
    ):
        check_unmentioned(a, body, f"{what} on this object type")
        return
    targets: list[tuple[str, Found | None]] = []
    for node in body.get("objects", ()):
        schema, name, toks = relation_tokens(a, node["RangeVar"])
        found = lookup(a, schema, name)
        if found is None:
            a.uncloaked(schema, name, toks[-1])
        else:
            a.touched = True
            a.sensitive.add(name)
            if found.relation is not None:
                a.touch(found.relation)
            a.edits.set(toks[-1], found.physical)
        targets.append((name, found))
    for role in (*body.get("grantees", ()), body.get("grantor")):
        if role and role.get("RoleSpec", role).get("location", -1) >= 0:
            tok = a.ts.by_start.get(a.ts.char(role.get("RoleSpec", role)["location"]))
            if tok is not None:
                a.kept.add(tok)
    if with_cols:
        _column_privileges(a, privs, targets, what)


def _column_privileges(
    a: Analyzer, privs: list[Node], targets: list[tuple[str, Found | None]], what: str
) -> None:
    cloaked = [f for _, f in targets if f is not None]
    if not cloaked:
        return  # only uncloaked relations: their column names are not ours
    if len(cloaked) != len(targets):
        raise CloakError(
            "0A000",
            f"pgcloak does not support column privileges in {what} on cloaked and uncloaked "
            "relations together",
        )
    segments = _privilege_segments(a)
    if len(segments) != len(privs):
        raise CloakError("0A000", "pgcloak could not locate a name in the statement")
    ts = a.ts
    for priv, (start, end) in zip(privs, segments, strict=True):
        cols = [_sval(c) for c in priv.get("cols") or ()]
        if not cols:
            continue
        open_tok = next((i for i in range(start, end) if ts.name(i) == _LPAR), -1)
        for col, tok in zip(cols, a.ident_list(open_tok, cols), strict=True):
            physicals = set()
            for name, found in targets:
                rel = None if found is None else found.relation
                column = None if rel is None else rel.column(col)
                if column is None:
                    raise CloakError("42703", f'column "{col}" of relation "{name}" does not exist')
                physicals.add(column.physical)
            if len(physicals) > 1:
                raise CloakError(
                    "0A000",
                    f"pgcloak does not support one column privilege list for relations whose "
                    f'columns "{col}" have different physical names; use one {what} per relation',
                    ts.pos(tok),
                )
            a.sensitive.add(col)
            a.edits.set(tok, physicals.pop())
