"""Views and materialized views over cloaked tables, and dependent-view cascades.

CREATE [OR REPLACE] VIEW / CREATE MATERIALIZED VIEW rewrite the defining query
like a SELECT and give the view a fresh physical name and every output column an
explicit physical name (through the column list, inserted when the client wrote
none), so PostgreSQL stores only physical names (pg_views.definition included).
The plan records what the query reads, because PostgreSQL drops dependent views
with `DROP ... CASCADE` and the registry must follow. RENAME is registry-only, as
for tables. `handler` is the rewriter's single entry point into this module and
ddl_misc (COMMENT, GRANT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgcloak.registry.names import new_physical_name
from pgcloak.rewriter import ddl_alter, ddl_encrypt, ddl_misc
from pgcloak.rewriter.analyze import iter_relnames, split_qualified
from pgcloak.rewriter.catalog import (
    CreateTable,
    CreateView,
    DropTable,
    DropView,
    Relation,
    RenameColumn,
    RenameTable,
    ReplaceView,
    creation_schema,
    uncloaked_exists,
)
from pgcloak.rewriter.ddl import new_column, uncloaked_create
from pgcloak.rewriter.ddl_misc import (
    Found,
    check_unmentioned,
    drop_objects,
    lookup,
    relation_tokens,
)
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["cascade", "create_relation", "handler", "refuse_uncloaked_dependents"]

Handler = Callable[["Analyzer", Node], None]
_VIEW_TYPES = ("OBJECT_VIEW", "OBJECT_MATVIEW")
_CASCADING = ("AT_DropColumn", "AT_DropConstraint")
# Functions taking a regclass: a string constant argument becomes a regclass constant,
# on which PostgreSQL records a dependency (unlike to_regclass or has_*_privilege).
_REGCLASS_FUNCS = frozenset(
    {"nextval", "currval", "setval", "pg_relation_size", "pg_total_relation_size",
     "pg_table_size", "pg_indexes_size", "pg_relation_filepath", "pg_relation_filenode"}
)  # fmt: skip


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def handler(kind: str, body: Node) -> Handler | None:
    """The function planning this statement, if it is one this module handles."""
    if kind == "ViewStmt":
        return create_view
    if kind == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_MATVIEW":
        return create_matview
    if kind == "RefreshMatViewStmt":
        return refresh
    if kind == "DropStmt":
        if body.get("removeType") in _VIEW_TYPES:
            return drop_view
        if body.get("removeType") == "OBJECT_TABLE" and body.get("behavior") == "DROP_CASCADE":
            return drop_table_cascade
    if kind == "RenameStmt" and (
        body.get("renameType") in _VIEW_TYPES
        or (body.get("renameType") == "OBJECT_COLUMN" and body.get("relationType") in _VIEW_TYPES)
    ):
        return rename_view
    if kind == "AlterTableStmt" and (body.get("objtype") in _VIEW_TYPES or _cascading_alter(body)):
        return alter_table
    if kind == "CommentStmt":
        return ddl_misc.comment
    if kind == "GrantStmt":
        return ddl_misc.grant
    return None


# -- CREATE VIEW / CREATE MATERIALIZED VIEW -------------------------------------------------


def create_view(a: Analyzer, body: Node) -> None:
    create_relation(
        a, body, body["view"], body.get("aliases"), "view", replace=bool(body.get("replace"))
    )


def create_matview(a: Analyzer, body: Node) -> None:
    into = body["into"]
    if_not_exists = bool(body.get("if_not_exists"))
    create_relation(
        a, body, into["rel"], into.get("colNames"), "matview", if_not_exists=if_not_exists
    )


_WHAT = {"view": "CREATE VIEW", "matview": "CREATE MATERIALIZED VIEW", "table": "CREATE TABLE AS"}
_LABEL = {"view": "view", "matview": "materialized view", "table": "table"}
Place = Callable[[str, list[str]], None]


def create_relation(
    a: Analyzer,
    body: Node,
    rv: Node,
    aliases: list[Node] | None,
    kind: str,
    *,
    replace: bool = False,
    if_not_exists: bool = False,
    place: Place | None = None,
) -> None:
    """A relation defined by `body["query"]`: view, matview or (CREATE TABLE AS) table.

    Cloaked whatever the query reads, unless temporary or declined by the cloak
    filter (then sent as written, provided it names nothing cloaked). `place(physical,
    column physicals)` puts the names into the text when they do not go where the
    client wrote the relation name (SELECT INTO); by default they replace that name
    and fill in the column list.
    """
    ts, catalog = a.ts, a.catalog
    what, label = _WHAT[kind], _LABEL[kind]
    query = body["query"]
    name = rv["relname"]
    schema = rv.get("schemaname") or creation_schema(a.search_path)
    _, _, toks = relation_tokens(a, rv)
    name_tok = toks[-1]
    existing = catalog.relation_physical(schema, name) if schema is not None else None
    uncloaked = uncloaked_create(a, rv)
    if kind == "view" and any(ts.name(i) == "RECURSIVE" for i in range(a.lo, name_tok)):
        if not uncloaked or existing is not None or a.mentions_cloaked(query):
            a.touched = True
            raise CloakError("0A000", "pgcloak does not support CREATE RECURSIVE VIEW")
        check_unmentioned(a, body, what)
        return
    out = a.statement(query, None)
    if uncloaked:
        if a.touched:
            temp = rv.get("relpersistence") == "t" or (schema or "").startswith("pg_temp")
            adjective = "temporary" if temp else "uncloaked (cloak filter)"
            raise CloakError(
                "0A000", f"pgcloak does not support {adjective} {label}s of cloaked tables"
            )
        check_unmentioned(a, body, what)
        return
    if (
        not a.touched
        and existing is None
        and (replace or if_not_exists)
        and schema is not None
        and catalog.has_uncloaked(schema, name)
    ):  # replaces or skips a relation pgcloak does not cloak: no new relation
        check_unmentioned(a, body, what)
        return
    a.touched = True
    if a.deferred is not None:
        raise a.deferred
    if schema is None:
        raise CloakError("3F000", "no schema has been selected to create in")
    if out is None:
        raise CloakError(
            "0A000",
            f"pgcloak cannot name the output columns of * over a relation it does not cloak "
            f"in a {label} it cloaks; list the columns",
        )
    given = [_sval(n) for n in aliases or ()]
    if len(given) > len(out):
        message = (
            "CREATE VIEW specifies more column names than columns"
            if kind == "view"
            else "too many column names were specified"
        )
        raise CloakError("42601", message)
    names = given + [c.name for c in out[len(given) :]]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise CloakError("42701", f'column "{n}" specified more than once')
        seen.add(n)
    # Output names the query spells as they are (columns of uncloaked relations, function
    # names) are no secret; the others (aliases, cloaked columns) must not stay in the text.
    a.sensitive.update(given)
    a.sensitive.update(c.name for c in out[len(given) :] if c.phys != c.name)
    a.sensitive.add(name)
    old: Relation | None = None
    if existing is not None or catalog.has_uncloaked(schema, name):
        if if_not_exists:  # the server skips the statement (NOTICE): register nothing
            a.rename(name_tok, existing or name)
            _column_list(a, name_tok, given, [new_physical_name("c") for _ in given])
            return
        if not replace:
            raise CloakError("42P07", f'relation "{name}" already exists', ts.pos(name_tok))
        old = None if existing is None else catalog.relation_by_physical(existing)
        if existing is None:
            raise CloakError(
                "0A000",
                "pgcloak does not support replacing a view it does not cloak with a view of "
                "cloaked objects",
            )
        if old is None or old.kind != "view":
            raise CloakError("42809", f'"{name}" is not a view')
        if len(names) < len(old.columns):
            raise CloakError("42P16", "cannot drop columns from view")
        for col, new in zip(old.columns, names, strict=False):
            if col.name != new:
                raise CloakError(
                    "42P16", f'cannot change name of view column "{col.name}" to "{new}"'
                )
    physical = old.physical if old is not None else new_physical_name(kind[0])
    kept = list(old.columns) if old is not None else []
    taken = {c.physical for c in kept}
    columns = kept + [new_column(a, schema, n, taken) for n in names[len(kept) :]]
    columns = ddl_encrypt.derived_columns(a, kind, (schema, name), columns, out, kept=len(kept))
    if place is None:
        a.edits.set(name_tok, physical)
        _column_list(a, name_tok, given, [c.physical for c in columns])
    else:
        place(physical, [c.physical for c in columns])
    if kind == "table":
        a.changes.append(CreateTable(Relation(schema, name, physical, tuple(columns))))
        return
    reads = _reads(a, query)
    if old is not None:
        a.changes.append(ReplaceView(old.physical, tuple(columns[len(kept) :]), reads))
    else:
        rel = Relation(schema, name, physical, tuple(columns), kind, reads)
        a.changes.append(CreateView(rel))


def _column_list(a: Analyzer, name_tok: int, given: list[str], physicals: list[str]) -> None:
    """Rewrite the client's column list, completing it (or adding one) to name every column."""
    ts = a.ts
    if not given:
        if physicals:
            a.edits.add_before(name_tok + 1, f"({', '.join(physicals)}) ")
        return
    toks = a.ident_list(name_tok + 1, given)
    for tok, phys in zip(toks, physicals, strict=False):
        a.edits.set(tok, phys)
    extra = physicals[len(given) :]
    if extra:
        close = ts.match[name_tok + 1]
        a.edits.add_before(close, "".join(f", {p}" for p in extra))


def _reads(a: Analyzer, query: Node) -> tuple[str, ...]:
    """What the view depends on: cloaked relations (physical) and uncloaked ones (name).

    Like PostgreSQL's dependency recording: every relation in FROM, plus the ones
    named by regclass constants ('t'::regclass, nextval('s')), indexes and owned
    sequences with their owners (dropping the owner drops them). Sorted, as the
    registry load (pgcloak.registry.catalog) rebuilds it.
    """
    ts = a.ts
    reads = _regclass_reads(a, query)
    for rv in iter_relnames(query):
        loc = rv.get("location", -1)
        if loc < 0:
            continue
        nparts = sum(1 for p in (rv.get("catalogname"), rv.get("schemaname")) if p) + 1
        tok = ts.at(loc) + 2 * (nparts - 1)
        new = a.edits.replace.get(tok)
        if new is not None:
            found = lookup(a, rv.get("schemaname"), rv["relname"])
            if found is not None and found.physical == new:  # not a CTE of the same name
                reads += [p for p in (found.physical, found.owner) if p is not None]
        elif tok in a.kept:
            reads.append(rv["relname"])
    return tuple(sorted(set(reads)))


def _regclass_reads(a: Analyzer, node: Any) -> list[str]:
    """Relations named by string constants that become regclass constants in the view."""
    found: list[str] = []
    if isinstance(node, list):
        for item in node:
            found += _regclass_reads(a, item)
        return found
    if not isinstance(node, dict):
        return found
    literals: list[Any] = []
    cast = node.get("TypeCast")
    call = node.get("FuncCall")
    if cast is not None:
        names = cast["typeName"].get("names", ())
        if names and _sval(names[-1]) == "regclass":
            literals.append(cast.get("arg"))
    elif call is not None and _sval(call["funcname"][-1]) in _REGCLASS_FUNCS:
        literals += call.get("args", ())
    for lit in literals:
        value = ((lit or {}).get("A_Const") or {}).get("sval", {}).get("sval")
        parts = split_qualified(value) if isinstance(value, str) else None
        if parts is None:
            continue
        target = lookup(a, parts[-2] if len(parts) > 1 else None, parts[-1])
        if target is None:
            found.append(parts[-1])
        else:
            found += [p for p in (target.physical, target.owner) if p is not None]
    for value in node.values():
        if isinstance(value, dict | list):
            found += _regclass_reads(a, value)
    return found


# -- DROP, cascades ---------------------------------------------------------------------


def cascade(a: Analyzer, roots: list[str], what: str) -> list[str]:
    """Physical names of the cloaked views PostgreSQL's CASCADE drops with `roots`."""
    out: list[str] = []
    seen = set(roots)
    queue = list(roots)
    while queue:
        deps = a.catalog.dependent_views(queue.pop(0))
        if deps is None:
            a.touched = True
            raise CloakError(
                "0A000",
                f"pgcloak cannot tell which cloaked views {what} ... CASCADE would drop; "
                "drop the dependent views first",
            )
        for view in deps:
            if view.physical not in seen:
                seen.add(view.physical)
                out.append(view.physical)
                queue.append(view.physical)
    return out


def refuse_uncloaked_dependents(a: Analyzer, names: list[str], what: str) -> None:
    """CASCADE on uncloaked relations must not silently drop cloaked views."""
    for name in names:
        deps = a.catalog.dependent_views(name)
        if deps is None or deps:
            a.touched = True
            raise CloakError(
                "0A000",
                f"pgcloak does not support {what} ... CASCADE of a relation it does not cloak "
                "that cloaked views may depend on; drop those views first",
            )


def drop_view(a: Analyzer, body: Node) -> None:
    matview = body["removeType"] == "OBJECT_MATVIEW"
    label = "materialized view" if matview else "view"
    want = "m" if matview else "v"
    missing_ok = bool(body.get("missing_ok"))
    dropped: list[str] = []
    uncloaked: list[str] = []
    first = a.lo + (3 if matview else 2)  # DROP [MATERIALIZED] VIEW
    for schema, name, tok in drop_objects(a, body, first):
        found = lookup(a, schema, name)
        if found is None:
            if not missing_ok and uncloaked_exists(a.catalog, schema, name, a.search_path) is False:
                a.touched = True
                raise CloakError("42P01", f'{label} "{name}" does not exist')
            a.uncloaked(schema, name, tok, missing_ok)
            uncloaked.append(name)
            continue
        a.touched = True
        a.sensitive.add(name)
        a.edits.set(tok, found.physical)
        if found.kind != want:
            raise CloakError("42809", f'"{name}" is not a {label}', a.ts.pos(tok))
        dropped.append(found.physical)
    what = "DROP MATERIALIZED VIEW" if matview else "DROP VIEW"
    if body.get("behavior") == "DROP_CASCADE":
        refuse_uncloaked_dependents(a, uncloaked, what)
        dropped += [v for v in cascade(a, dropped, what) if v not in dropped]
    a.changes.extend(DropView(v) for v in dropped)


def drop_table_cascade(a: Analyzer, body: Node) -> None:
    """DROP TABLE ... CASCADE: also drops the cloaked views reading the tables."""
    ddl_alter.drop(a, body)
    roots = [c.table for c in a.changes if isinstance(c, DropTable)]
    uncloaked = []
    for obj in body.get("objects", ()):
        parts = [_sval(p) for p in obj["List"]["items"]]
        if a.find(parts[-2] if len(parts) > 1 else None, parts[-1]) is None:
            uncloaked.append(parts[-1])
    refuse_uncloaked_dependents(a, uncloaked, "DROP TABLE")
    a.changes.extend(DropView(v) for v in cascade(a, roots, "DROP TABLE"))


def _cascading_alter(body: Node) -> bool:
    return body.get("objtype") == "OBJECT_TABLE" and any(
        c["AlterTableCmd"].get("subtype") in _CASCADING
        and c["AlterTableCmd"].get("behavior") == "DROP_CASCADE"
        for c in body.get("cmds", ())
    )


def alter_table(a: Analyzer, body: Node) -> None:
    """ALTER VIEW (other than RENAME) is refused on cloaked views; DROP ... CASCADE on
    tables that views read is refused (PostgreSQL would drop views that use the column)."""
    rv = body["relation"]
    rel = a.find(rv.get("schemaname"), rv["relname"])
    if body.get("objtype") in _VIEW_TYPES:
        if rel is not None or a.mentions_cloaked(body):
            a.touched = True
            word = "ALTER VIEW" if body["objtype"] == "OBJECT_VIEW" else "ALTER MATERIALIZED VIEW"
            raise CloakError(
                "0A000", f"pgcloak does not support {word} (except RENAME) on cloaked views"
            )
        ddl_alter.alter_table(a, body)
        return
    deps = a.catalog.dependent_views(rel.physical if rel is not None else rv["relname"])
    if deps is None or deps:
        a.touched = True
        raise CloakError(
            "0A000",
            "pgcloak does not support ALTER TABLE ... DROP ... CASCADE on a table that "
            "cloaked views may depend on; drop those views first",
        )
    ddl_alter.alter_table(a, body)


# -- REFRESH, RENAME ----------------------------------------------------------------------


def refresh(a: Analyzer, body: Node) -> None:
    schema, name, toks = relation_tokens(a, body["relation"])
    found = lookup(a, schema, name)
    if found is None:
        a.uncloaked(schema, name, toks[-1])
        return
    _use(a, found, name, toks[-1])


def _use(a: Analyzer, found: Found, name: str, tok: int) -> None:
    a.touched = True
    a.sensitive.add(name)
    if found.relation is not None:
        a.touch(found.relation)
    a.edits.set(tok, found.physical)


def rename_view(a: Analyzer, body: Node) -> None:
    """ALTER [MATERIALIZED] VIEW ... RENAME [COLUMN]: registry-only, like table renames."""
    column = body["renameType"] == "OBJECT_COLUMN"
    objtype = body["relationType"] if column else body["renameType"]
    matview = objtype == "OBJECT_MATVIEW"
    tag = "ALTER MATERIALIZED VIEW" if matview else "ALTER VIEW"
    schema, name, toks = relation_tokens(a, body["relation"])
    found = lookup(a, schema, name)
    new = body["newname"]
    if found is None:
        a.uncloaked(schema, name, toks[-1], bool(body.get("missing_ok")))
        if a.touched:  # a missing view with IF EXISTS: the server just skips it
            _hide_names(a, body, column)
        else:
            check_unmentioned(a, body, tag)
        return
    _use(a, found, name, toks[-1])
    a.sensitive.add(new)
    catalog = a.catalog
    if column:
        rel = found.relation
        if rel is None:
            raise CloakError(
                "0A000", f"pgcloak does not support {tag} RENAME COLUMN on this relation"
            )
        old = body["subname"]
        a.sensitive.add(old)
        col = rel.column(old)
        if col is None:
            raise CloakError("42703", f'column "{old}" does not exist')
        if rel.column(new) is not None:
            raise CloakError("42701", f'column "{new}" of relation "{name}" already exists')
        a.registry_only = tag
        a.changes.append(RenameColumn(rel.physical, col.physical, new))
        return
    if found.kind != ("m" if matview else "v"):
        label = "a materialized view" if matview else "a view"
        raise CloakError("42809", f'"{name}" is not {label}')
    if catalog.relation_physical(found.schema, new) is not None or catalog.has_uncloaked(
        found.schema, new
    ):
        raise CloakError("42P07", f'relation "{new}" already exists')
    a.registry_only = tag
    a.changes.append(RenameTable(found.physical, new))


def _hide_names(a: Analyzer, body: Node, column: bool) -> None:
    """Replace the new (and old column) name of a skipped RENAME: they are the client's."""
    ts = a.ts
    last = a.hi - 1
    while last > a.lo and ts.name(last) == "ASCII_59":
        last -= 1
    a.edits.set(ts.expect(last, body["newname"]), a.dummy(body["newname"], "c" if column else "v"))
    if column:
        a.edits.set(ts.expect(last - 2, body["subname"]), a.dummy(body["subname"], "c"))
