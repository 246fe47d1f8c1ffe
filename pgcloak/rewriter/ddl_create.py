"""Relations created from a query (CREATE TABLE AS, SELECT INTO) and the sequence DDL.

Every relation created through pgcloak is cloaked, whatever it reads: otherwise a
statement that names nothing cloaked (``CREATE TABLE t AS SELECT 1 AS x``) would
put its semantic names into pg_class as written. The exceptions are temporary
relations and the ones the configured cloak filter declines (`uncloaked_create`);
those are sent as written, provided they name nothing cloaked.

CREATE TABLE AS is planned like a materialized view (ddl_view.create_relation): a
fresh physical name and an explicit physical column list. SELECT INTO has no
column list syntax, so it is sent as the equivalent CREATE TABLE AS (PostgreSQL
reports ``SELECT n`` for both). `handler` is the rewriter's entry point here; the
sequence statements live in ddl_sequence.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pgcloak.rewriter import ddl_sequence
from pgcloak.rewriter.ddl import uncloaked_create
from pgcloak.rewriter.ddl_misc import check_unmentioned, relation_tokens
from pgcloak.rewriter.ddl_view import create_relation
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node, node_kind
from pgcloak.rewriter.tokens import quote_ident

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["handler", "into_clause"]

Handler = Callable[["Analyzer", Node], None]
# Keywords between INTO and the table name of SELECT INTO.
_INTO_WORDS = frozenset({"TEMP", "TEMPORARY", "LOCAL", "GLOBAL", "UNLOGGED", "TABLE"})


def handler(kind: str, body: Node) -> Handler | None:
    """The function planning this statement, if it is one this module handles."""
    if kind == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_TABLE":
        return create_table_as
    if kind == "SelectStmt" and into_clause(body) is not None:
        return select_into
    if kind == "ExplainStmt":
        qkind, qbody = node_kind(body["query"])
        if qkind == "CreateTableAsStmt" or (qkind == "SelectStmt" and into_clause(qbody)):
            return explain_create
        return None
    return ddl_sequence.handler(kind, body)


def into_clause(sel: Node) -> Node | None:
    """The INTO clause of SELECT INTO (PostgreSQL keeps it on the leftmost SELECT)."""
    while True:
        into = sel.get("intoClause")
        if into is not None or sel.get("op", "SETOP_NONE") == "SETOP_NONE":
            return into
        sel = sel["larg"]


def _without_into(sel: Node) -> Node:
    """A copy of the SELECT body without its INTO clause (children are shared)."""
    copy = dict(sel)
    if copy.pop("intoClause", None) is None and sel.get("op", "SETOP_NONE") != "SETOP_NONE":
        copy["larg"] = _without_into(sel["larg"])
    return copy


def create_table_as(a: Analyzer, body: Node) -> None:
    into = body["into"]
    rv = into["rel"]
    if node_kind(body["query"])[0] == "ExecuteStmt":
        if uncloaked_create(a, rv):  # prepare.finish refuses it while anything is cloaked
            check_unmentioned(a, body, "CREATE TABLE AS")
            return
        a.touched = True
        raise CloakError(
            "0A000",
            "pgcloak does not support CREATE TABLE ... AS EXECUTE (it cannot name the new "
            "table's columns)",
        )
    create_relation(
        a,
        body,
        rv,
        into.get("colNames"),
        "table",
        if_not_exists=bool(body.get("if_not_exists")),
    )


def select_into(a: Analyzer, body: Node) -> None:
    """SELECT ... INTO t: sent as CREATE TABLE t (columns) AS SELECT ... (same command tag)."""
    into = into_clause(body)
    assert into is not None
    rv = into["rel"]
    query = {"query": {"SelectStmt": _without_into(body)}}

    def place(physical: str, columns: list[str]) -> None:
        ts = a.ts
        _, _, toks = relation_tokens(a, rv)
        first = toks[0] - 1
        while ts.name(first) in _INTO_WORDS:
            first -= 1
        if ts.name(first) != "INTO":
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        for i in range(first, toks[-1] + 1):
            a.edits.replace[i] = ""  # the INTO clause goes; the prefix below says it all
        prefix = [p for p in (rv.get("catalogname"), rv.get("schemaname")) if p is not None]
        target = ".".join([*(quote_ident(p) for p in prefix), physical])
        unlogged = "UNLOGGED " if rv.get("relpersistence") == "u" else ""
        cols = f" ({', '.join(columns)})" if columns else ""
        a.edits.add_before(a.lo, f"CREATE {unlogged}TABLE {target}{cols} AS ")

    if uncloaked_create(a, rv):
        check_unmentioned(a, body, "SELECT INTO")  # sent as written
        return
    create_relation(a, query, rv, None, "table", place=place)


def explain_create(a: Analyzer, body: Node) -> None:
    """EXPLAIN [ANALYZE] CREATE TABLE AS / SELECT INTO / CREATE MATERIALIZED VIEW."""
    qkind, qbody = node_kind(body["query"])
    into = qbody["into"] if qkind == "CreateTableAsStmt" else into_clause(qbody)
    assert into is not None
    if uncloaked_create(a, into["rel"]):
        check_unmentioned(a, body, "EXPLAIN")
        return
    a.touched = True
    what = "CREATE TABLE AS, SELECT INTO, CREATE MATERIALIZED VIEW"
    if qkind == "CreateTableAsStmt" and node_kind(qbody["query"])[0] == "ExecuteStmt":
        what = "CREATE TABLE ... AS EXECUTE"
    raise CloakError(
        "0A000", f"pgcloak does not support EXPLAIN of a statement creating a relation ({what})"
    )
