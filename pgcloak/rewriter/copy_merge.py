"""COPY and MERGE on cloaked tables (helpers of the analyzer, like dml.py).

COPY: the table and its column list (or the query), the column lists of
FORCE_QUOTE / FORCE_NOT_NULL / FORCE_NULL and the WHERE of COPY FROM are
rewritten. HEADER on COPY TO gets the data's semantic column names
(`Plan.copy_header`): the proxy writes them in place of the header line the
server sends, which names physical columns. HEADER MATCH on COPY FROM is
refused (the server would compare the client's header with physical names).
Server files and PROGRAM are allowed as
PostgreSQL allows them (superuser or pg_read/write_server_files, pg_execute_
server_program): they move data, not names. Their file name or command goes to
the server as written, though, so one that spells a cloaked name is refused.

MERGE follows PostgreSQL's scoping (parse_merge.c): the source cannot see the
target; the join condition and WHEN MATCHED see both; WHEN NOT MATCHED [BY
TARGET] sees only the source, WHEN NOT MATCHED BY SOURCE (17+) only the target.
MERGE ... RETURNING (17+; the upstream is 15) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter import dml
from pgcloak.rewriter.analyze import iter_relnames
from pgcloak.rewriter.objects import Relation
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, node_kind, relation_cols

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["copy", "merge", "spells_cloaked"]

_LPAR, _RPAR, _COMMA = "ASCII_40", "ASCII_41", "ASCII_44"
_COLUMN_OPTIONS = frozenset({"force_quote", "force_not_null", "force_null"})
_HEADER_OFF = frozenset({"false", "off", "0"})
_WORD = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]+")


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _locate_error() -> CloakError:
    return CloakError("0A000", "pgcloak could not locate a name in the statement")


def spells_cloaked(text: str, names: Collection[str]) -> bool:
    """Whether `text` (a file name, a command) contains one of `names` as a word.

    Words are split at anything but letters, digits, `_` and `$`; runs of
    `_`-separated parts are tried too, so `/tmp/order_lines_2024.csv` spells
    `order_lines`. Case-insensitive, as a reader of the server log would be.
    """
    folded = {n.lower() for n in names}
    for word in _WORD.findall(text):
        parts = word.lower().split("_")
        for i in range(len(parts)):
            for j in range(i + 1, len(parts) + 1):
                if "_".join(parts[i:j]) in folded:
                    return True
    return False


# -- COPY -------------------------------------------------------------------------------


def _relation(a: Analyzer, rv: Node) -> tuple[Item, int]:
    """The table of `COPY table`: its item (columns known if cloaked) and last name token."""
    schema = rv.get("schemaname")
    name = rv["relname"]
    parts = [p for p in (rv.get("catalogname"), schema, name) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    rel = a.find(schema, name)
    if rel is None:
        a.uncloaked(schema, name, toks[-1])
        return Item(name, None, None, schema), toks[-1]
    a.touch(rel)
    a.edits.set(toks[-1], rel.physical)
    cols = relation_cols(rel)
    return Item(name, rel.physical, cols, rel.schema, cloaked=True, relation=rel), toks[-1]


def _column(a: Analyzer, cols: list[Col] | None, name: str, tok: int, relname: str | None) -> None:
    """A column named in a COPY column list or FORCE_* option."""
    if cols is None:
        a.unresolved.add(tok)
        return
    col = next((c for c in cols if c.name == name), None)  # the first, like CopyGetAttnums
    if col is None:
        of = f' of relation "{relname}"' if relname is not None else ""
        a.fail(CloakError("42703", f'column "{name}"{of} does not exist'), tok)
        return
    a.rename(tok, col.phys)


def _option_columns(a: Analyzer, opt: Node, names: list[str]) -> list[int]:
    """Tokens of the columns of `FORCE_QUOTE (a, b)` or the old `FORCE QUOTE a, b`."""
    ts = a.ts
    tok = ts.at(opt.get("location", 0))
    if ts.name(tok) == "FORCE":
        tok += 1
        while ts.name(tok) in ("QUOTE", "NOT", "NULL_P"):
            tok += 1
    else:
        tok += 1  # force_quote etc. are one identifier in the WITH (...) form
    if ts.name(tok) == _LPAR:
        return a.ident_list(tok, names)
    toks = []
    for k, name in enumerate(names):
        toks.append(ts.expect(tok + 2 * k, name))
        if k < len(names) - 1 and ts.name(tok + 2 * k + 1) != _COMMA:
            raise _locate_error()
    return toks


def _header_on(opt: Node) -> str | None:
    """'on', 'match' or None (off) for a HEADER option, as defGetCopyHeaderChoice reads it."""
    arg = opt.get("arg")
    if arg is None:
        return "on"
    kind, body = node_kind(arg)
    if kind == "Integer":
        value = str(body.get("ival", 0))
    elif kind == "Boolean":
        value = "true" if body.get("boolval") else "false"
    elif kind == "String":
        value = str(body.get("sval", "")).lower()
    else:
        return "on"  # not a value the server accepts: assume the worst
    if value in _HEADER_OFF:
        return None
    return "match" if value == "match" else "on"


def _names_of(a: Analyzer, body: Node) -> set[str]:
    """Cloaked relation names, plus the column names of the cloaked tables `body` reads."""
    names = set(a.catalog.sensitive_names())
    for rv in iter_relnames(body):
        rel = a.find(rv.get("schemaname"), rv["relname"])
        if rel is not None:
            names.update(c.name for c in rel.columns)
    return names


def copy(a: Analyzer, body: Node) -> None:
    """COPY table [(cols)] FROM/TO ..., COPY (query) TO ... (see the module docstring)."""
    is_from = bool(body.get("is_from"))
    relname: str | None = None
    item_rel: Relation | None = None
    if body.get("relation") is not None:
        item, tok = _relation(a, body["relation"])
        item_rel = item.relation
        names = [_sval(s) for s in body.get("attlist", ())]
        if item.relation is not None:
            relname = item.relation.name
        if names:
            for name, t in zip(names, a.ident_list(tok + 1, names), strict=True):
                _column(a, item.cols, name, t, relname)
        cols = item.cols
        a.expr(body.get("whereClause"), Scope(None, [item]))
    else:
        cols = a.statement(body["query"], None)
    for node in body.get("options", ()):
        opt = node["DefElem"]
        defname = opt.get("defname")
        arg = opt.get("arg")
        if defname in _COLUMN_OPTIONS and arg is not None and "List" in arg:
            names = [_sval(s) for s in arg["List"]["items"]]
            for name, t in zip(names, _option_columns(a, opt, names), strict=True):
                _column(a, cols, name, t, relname)
        elif defname == "header":
            header = _header_on(opt)
            if header == "match" and is_from:
                err = CloakError(
                    "0A000",
                    "pgcloak does not support COPY FROM with HEADER MATCH on cloaked objects: "
                    "the server would compare the header line with physical column names",
                )
                a.fail(err, a.ts.at(opt.get("location", 0)))
            elif header == "on" and not is_from:  # (MATCH is an error for COPY TO)
                if body.get("filename") is not None:
                    err = CloakError(
                        "0A000",
                        "pgcloak does not support COPY TO a server file with HEADER on cloaked "
                        "objects: the header line would carry physical column names",
                    )
                    a.fail(err, a.ts.at(opt.get("location", 0)))
                a.copy_header = _data_names(body, item_rel, cols)
    filename = body.get("filename")
    if filename is not None and spells_cloaked(str(filename), _names_of(a, body)):
        a.touched = True
        what = "PROGRAM command" if body.get("is_program") else "file name"
        raise CloakError(
            "0A000", f"pgcloak does not support a COPY {what} that spells a cloaked name"
        )


def _data_names(body: Node, rel: Relation | None, cols: list[Col] | None) -> tuple[str, ...]:
    """The names COPY TO writes in its header line: the column list, else the table's
    columns without generated ones (what COPY copies), else the query's output names."""
    attlist = [_sval(s) for s in body.get("attlist", ())]
    if attlist:
        return tuple(attlist)
    if rel is not None:
        return tuple(c.name for c in rel.copied())
    return tuple(c.name for c in cols or ())


# -- MERGE ------------------------------------------------------------------------------


def _colrefs(node: Any) -> Iterator[Node]:
    """ColumnRef bodies of an expression, not descending into subqueries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ColumnRef":
                yield value
            elif key != "SubLink" and isinstance(value, dict | list):
                yield from _colrefs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _colrefs(value)


def _hidden_target(a: Analyzer, clause: Node, target: Item, source: list[Item]) -> None:
    """WHEN NOT MATCHED cannot see the target: refuse `target.col` as PostgreSQL does."""
    name = target.refname
    if name is None or any(it.rel_visible and it.refname == name for it in source):
        return
    for ref in _colrefs([clause.get("condition"), clause.get("values")]):
        fields = ref["fields"]
        qual = fields[-2] if len(fields) >= 2 else None
        if qual is not None and "String" in qual and _sval(qual) == name:
            a.fail(
                CloakError("42P01", f'invalid reference to FROM-clause entry for table "{name}"'),
                a.ts.at(ref.get("location", 0)),
            )


def merge(a: Analyzer, body: Node, parent: Scope | None) -> list[Col] | None:
    """MERGE INTO target USING source ON cond WHEN ... (PostgreSQL 15 forms)."""
    scope = Scope(parent)
    if body.get("withClause"):
        dml.with_clause(a, body["withClause"], scope)
    target = dml._target(a, body["relation"], scope)
    source_node = body["sourceRelation"]
    source, out = a.from_item(source_node, scope, [])
    joined = node_kind(source_node)[0] == "JoinExpr"
    if not joined and target.refname is not None and out.refname == target.refname:
        a.fail(CloakError("42712", f'name "{target.refname}" specified more than once'))
    both = Scope(scope.parent, [target, *source], scope.ctes)
    a.expr(body.get("joinCondition"), both)
    for node in body.get("mergeWhenClauses", ()):
        clause = node["MergeWhenClause"]
        match = clause.get("matchKind")
        if match == "MERGE_WHEN_MATCHED":
            visible = both
        elif match == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
            visible = Scope(scope.parent, [target], scope.ctes)
        else:
            _hidden_target(a, clause, target, source)
            visible = Scope(scope.parent, list(source), scope.ctes)
        a.expr(clause.get("condition"), visible)
        command = clause.get("commandType")
        if command == "CMD_UPDATE":
            dml._assignments(a, target, clause.get("targetList", []), visible)
        elif command == "CMD_INSERT":
            for rt in clause.get("targetList", ()):
                dml._set_column(a, target, rt["ResTarget"])
            a.expr(clause.get("values"), visible)
    if body.get("returningClause") or body.get("returningList"):
        a.fail(
            CloakError(
                "0A000",
                "pgcloak does not support MERGE ... RETURNING (PostgreSQL 17) on cloaked objects",
            )
        )
        return None
    return []
