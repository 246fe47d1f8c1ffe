"""SQL-level prepared statements: PREPARE, EXECUTE, DEALLOCATE.

PREPARE's inner statement (SELECT/INSERT/UPDATE/DELETE/MERGE) is rewritten like
any query, and its plan carries the semantic output names; EXECUTE's result
columns come from the server under physical names, so the proxy remembers the
names per session from the PREPARE plan (`Plan.prepare` / `execute` /
`deallocate`, filled in by `finish`). The prepared statement's own name is the
client's and is sent as written; one that spells a cloaked name is refused.

EXPLAIN EXECUTE is sent as written; its output is mapped back with the plan the
session remembered for the PREPARE (`Plan.explain_execute`).
CREATE TABLE ... AS EXECUTE is refused while anything is cloaked: the rewriter
cannot tell whether the prepared statement reads cloaked tables, and if it does
the new table would get physical column names.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pgcloak.rewriter.catalog import Catalog
from pgcloak.rewriter.plan import CloakError, Plan
from pgcloak.rewriter.scope import Col, Node, Scope, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["KINDS", "analyze", "finish"]

KINDS = frozenset({"PrepareStmt", "ExecuteStmt", "DeallocateStmt"})


def _check_name(a: Analyzer, name: str, tok: int) -> None:
    """The prepared statement's name goes to the server as written: it must not be a cloaked one."""
    a.ts.expect(tok, name)
    if name in a.catalog.sensitive_names():
        a.touched = True
        raise CloakError(
            "0A000",
            f'pgcloak does not support a prepared statement named like a cloaked object ("{name}")',
            a.ts.pos(tok),
        )


def returns_rows(node: Node) -> bool:
    """Whether a query statement returns rows (SELECT, or DML with RETURNING)."""
    kind, body = node_kind(node)
    return kind == "SelectStmt" or bool(
        (body.get("returningClause") or {}).get("exprs") or body.get("returningList")
    )


def execute(a: Analyzer, body: Node) -> None:
    """EXECUTE name [(params)], alone or inside EXPLAIN / CREATE TABLE AS."""
    ts = a.ts
    name = body["name"]
    tok = next(
        (i for i in range(a.lo, a.hi) if ts.name(i) == "EXECUTE" and ts.value(i + 1) == name),
        None,
    )
    if tok is None:
        raise CloakError("0A000", "pgcloak could not locate a name in the statement")
    _check_name(a, name, tok + 1)
    a.expr(body.get("params"), Scope(None))  # no columns are visible here
    err = a.deferred
    if err is not None and err.sqlstate in ("42703", "42P01"):
        a.touched = True  # a column name can only fail here: refuse it, don't send it
        raise err


def analyze(a: Analyzer, kind: str, body: Node) -> tuple[list[Col] | None, bool]:
    """Resolve one of `KINDS`; (output columns, whether it returns rows) for the plan."""
    ts = a.ts
    if kind == "PrepareStmt":
        _check_name(a, body["name"], a.lo + 1)
        for node in body.get("argtypes", ()):  # sent as written: a table's row type is not
            names = node["TypeName"].get("names", ())
            if names and names[-1]["String"]["sval"] in a.catalog.sensitive_names():
                a.touched = True
                raise CloakError(
                    "0A000",
                    "pgcloak does not support the row type of a cloaked table as a parameter type",
                    a.ts.char(node["TypeName"].get("location", 0)) + 1,
                )
        query = body["query"]
        qkind, qbody = node_kind(query)
        if qkind == "SelectStmt" and _creates(qbody):
            a.touched = True  # each EXECUTE would create a relation: nothing to register it by
            raise CloakError("0A000", "pgcloak does not support PREPARE of SELECT INTO")
        return a.statement(query, None), returns_rows(query)
    if kind == "ExecuteStmt":
        execute(a, body)
        return None, False
    if body.get("name") is not None:  # DEALLOCATE [PREPARE] name
        _check_name(a, body["name"], ts.at(body.get("location", 0)))
    return None, False


def _creates(sel: Node) -> bool:
    """SELECT INTO (the INTO clause sits on the leftmost SELECT of a set operation)."""
    while sel.get("intoClause") is None and sel.get("op", "SETOP_NONE") != "SETOP_NONE":
        sel = sel["larg"]
    return sel.get("intoClause") is not None


def finish(plan: Plan, stmt: Node, catalog: Catalog) -> Plan:
    """`plan` with the prepared-statement fields set; refuses CREATE TABLE AS EXECUTE."""
    kind, body = node_kind(stmt)
    if kind == "PrepareStmt":
        return replace(plan, prepare=body["name"])
    if kind == "ExecuteStmt":
        return replace(plan, execute=body["name"])
    if kind == "DeallocateStmt":
        return replace(plan, deallocate="*" if body.get("isall") else body["name"])
    while kind == "ExplainStmt":
        kind, body = node_kind(body["query"])
        if kind == "ExecuteStmt":
            return replace(plan, explain_execute=body["name"])
    if kind == "CreateTableAsStmt":
        kind, body = node_kind(body["query"])
        if kind == "ExecuteStmt" and catalog.sensitive_names():
            raise CloakError(
                "0A000",
                "pgcloak does not support CREATE TABLE ... AS EXECUTE while tables are cloaked",
            )
    return plan
