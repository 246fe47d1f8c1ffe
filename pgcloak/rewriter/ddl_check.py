"""CHECK constraints on encrypted columns: kept by pgcloak, never sent to the server.

The server holds only ciphertext in an encrypted column, so it cannot evaluate a
CHECK on it, and the expression (its constants) must not reach its catalogs
either. A CHECK that uses exactly one encrypted column and constants is turned
into a tree (pgcloak.crypto.checks) carried on the `Constraint` (`check`), cut out
of the statement sent upstream and stored, encrypted, in the registry; the proxy
evaluates it on the plaintext of every value written into the column. Anything
else on an encrypted column is refused (0A000 naming the column and its mode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter.catalog import Catalog, Column, ColumnPolicy, Constraint, Relation
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.analyze import Analyzer

__all__ = [
    "CheckSpan",
    "check_refusal",
    "check_span",
    "has_checks",
    "registry_check",
    "written_check",
]

_LPAR, _COMMA = "ASCII_40", "ASCII_44"
_OPS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "<>": "<>"}
_LENGTHS = {"char_length": "char", "character_length": "char", "length": "char",
            "octet_length": "octet"}  # fmt: skip
# A CHECK's Constraint node, its first and last token (None: not located) and whether it
# is a table constraint (a comma next to it goes too).
CheckSpan = tuple[Node, tuple[int, int] | None, bool]
Tree = list[Any]


def check_refusal(name: str, mode: str, what: str) -> CloakError:
    """0A000 for a CHECK pgcloak cannot evaluate on an encrypted column."""
    return CloakError(
        "0A000",
        f'pgcloak cannot evaluate a CHECK constraint on column "{name}" encrypted in {mode} '
        f"mode: it uses {what}",
    )


def has_checks(catalog: Catalog, table: str, column: str) -> bool:
    """Whether pgcloak holds CHECK constraints on that column (physical names)."""
    return any(c.check is not None and c.columns == (column,) for c in catalog.constraints(table))


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


class _Builder:
    """One CHECK expression -> tree; `column` is the encrypted column it must use only."""

    def __init__(self, rel: Relation, column: Column, mode: str) -> None:
        self.rel = rel
        self.column = column
        self.mode = mode

    def refuse(self, what: str) -> CloakError:
        return check_refusal(self.column.name, self.mode, what)

    def operand(self, node: Node) -> Tree | None:
        """The column, a length of it, or None for something else."""
        kind, body = node_kind(node)
        if kind == "ColumnRef":
            fields = body.get("fields", ())
            last = fields[-1] if fields else {}
            if "String" not in last:
                raise self.refuse("a whole-row reference")
            col = self.rel.column(_sval(last))
            if col is None or col.physical != self.column.physical:
                raise self.refuse("another column")
            return ["col"]
        if kind == "TypeCast" and node_kind(body["arg"])[0] == "ColumnRef":
            names = [_sval(n) for n in body["typeName"].get("names", ())]
            if names[-1:] == ["text"] and not body["typeName"].get("typmods"):
                return self.operand(body["arg"])  # pg_dump's `(v)::text`: equality as text
            raise self.refuse("a cast of the column")
        if kind == "FuncCall":
            names = [_sval(n) for n in body.get("funcname", ())]
            if names[:1] == ["pg_catalog"]:
                names = names[1:]
            args = body.get("args", ())
            plain = not (body.get("agg_star") or body.get("agg_distinct") or body.get("over")
                         or body.get("agg_filter") or body.get("agg_order"))  # fmt: skip
            known = len(names) == 1 and names[0] in _LENGTHS and len(args) == 1 and plain
            if known and self.operand(args[0]) == ["col"]:
                return ["len", _LENGTHS[names[0]]]
            raise self.refuse(f"the function {'.'.join(names)}()")
        if kind == "A_Const" or (kind == "TypeCast" and node_kind(body["arg"])[0] == "A_Const"):
            return None
        if kind == "A_Expr" and body.get("kind") == "AEXPR_OP":
            op = _sval(body["name"][-1]) if body.get("name") else "?"
            raise self.refuse(f"the operator {op}")
        raise self.refuse(_construct(kind, body))

    def constant(self, node: Node) -> Tree:
        kind, body = node_kind(node)
        if kind == "A_Const":
            if body.get("isnull"):
                return ["k", "null", ""]
            if "ival" in body:
                return ["k", "num", str(body["ival"].get("ival", 0))]
            if "fval" in body:
                return ["k", "num", str(body["fval"]["fval"])]
            if "boolval" in body:
                return ["k", "bool", "t" if body["boolval"].get("boolval") else "f"]
            if "sval" in body:
                return ["k", "str", str(body["sval"].get("sval", ""))]
            raise self.refuse("a bit-string constant")
        if kind == "TypeCast" and node_kind(body["arg"])[0] == "A_Const":
            const = self.constant(body["arg"])
            tn = body["typeName"]
            names = [_sval(n) for n in tn.get("names", ())]
            if names[:1] == ["pg_catalog"]:
                names = names[1:]
            if const[1] != "str" or len(names) != 1 or tn.get("typmods") or tn.get("arrayBounds"):
                raise self.refuse("a cast")
            return ["cast", names[0], const[2]]
        raise self.refuse(f"an expression ({kind}) where pgcloak expects a constant")

    def compare(self, op: str, left: Node, right: Node) -> Tree:
        op = "<>" if op == "!=" else op
        x = self.operand(left)
        if x is not None:
            return ["cmp", op, x, self.constant(right)]
        y = self.operand(right)
        if y is None:
            raise self.refuse("a comparison of constants")
        return ["cmp", _FLIP[op], y, self.constant(left)]

    def tree(self, node: Node) -> Tree:
        kind, body = node_kind(node)
        if kind == "BoolExpr":
            args = [self.tree(a) for a in body.get("args", ())]
            op = {"AND_EXPR": "and", "OR_EXPR": "or", "NOT_EXPR": "not"}[body["boolop"]]
            return [op, *args]
        if kind == "NullTest":
            x = self.operand(body["arg"])
            if x is None or body.get("argisrow"):
                raise self.refuse("IS NULL on an expression")
            return ["isnull", body.get("nulltesttype") == "IS_NOT_NULL", x]
        if kind == "A_Expr":
            return self.a_expr(body)
        if kind == "ColumnRef":
            self.operand(node)
            return ["cmp", "=", ["col"], ["k", "bool", "t"]]  # CHECK (flag)
        raise self.refuse(_construct(kind, body))

    def a_expr(self, body: Node) -> Tree:
        kind = body.get("kind")
        names = [_sval(n) for n in body.get("name", ())]
        op = names[-1] if names and names[:-1] in ([], ["pg_catalog"]) else ""
        if kind == "AEXPR_OP" and op in _OPS and body.get("lexpr") is not None:
            return self.compare(op, body["lexpr"], body["rexpr"])
        if kind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN"):
            x = self.operand(body["lexpr"])
            if x is None:
                raise self.refuse("BETWEEN on an expression")
            lo, hi = body["rexpr"]["List"]["items"]
            negated = kind == "AEXPR_NOT_BETWEEN"
            return ["between", negated, x, self.constant(lo), self.constant(hi)]
        if kind == "AEXPR_IN" and op in ("=", "<>"):
            x = self.operand(body["lexpr"])
            if x is None:
                raise self.refuse("IN on an expression")
            items = body["rexpr"]["List"]["items"]
            return ["in", op == "<>", x, [self.constant(i) for i in items]]
        if kind in ("AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR"):
            raise self.refuse("pattern matching")
        if kind in ("AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM"):
            raise self.refuse("BETWEEN SYMMETRIC")
        if kind == "AEXPR_OP":
            raise self.refuse(f"the operator {op or '?'}")
        raise self.refuse(str(kind).removeprefix("AEXPR_").replace("_", " "))


def _construct(kind: str, body: Node) -> str:
    if kind == "BooleanTest":
        return "IS TRUE/FALSE/UNKNOWN"
    if kind == "SubLink":
        return "a subquery"
    if kind in ("CaseExpr", "CoalesceExpr", "MinMaxExpr", "NullIfExpr"):
        return kind.removesuffix("Expr").upper()
    return f"an expression it does not know ({kind})"


def written_check(rel: Relation, column: Column, mode: str, expr: Node) -> str:
    """The tree of a CHECK expression (JSON text) over one encrypted column."""
    return json.dumps(_Builder(rel, column, mode).tree(expr), separators=(",", ":"))


def registry_check(
    a: Analyzer,
    rel: Relation,
    con: Constraint,
    policy: Callable[[str], ColumnPolicy | None],
    *,
    segment: tuple[int, int] | None = None,
) -> Constraint:
    """A CHECK on an encrypted column as pgcloak keeps it (cut out of the statement).

    `policy` gives a column's policy by physical name (new columns' included);
    `segment`: the tokens of an ALTER TABLE ADD CONSTRAINT command, which must say NOT
    VALID (pgcloak cannot read existing rows server-side) and becomes a harmless
    command the server still checks ownership and locks for.
    """
    alter = segment is not None
    enc = [p for p in con.columns if policy(p) is not None]
    first = rel.column_by_physical(enc[0])
    assert first is not None
    pol = policy(enc[0])
    assert pol is not None
    if len(con.columns) != 1:
        other = next(p for p in con.columns if p != enc[0])
        col = rel.column_by_physical(other)
        what = f'another column ("{col.name if col else other}")'
        raise check_refusal(first.name, pol.mode, what)
    found = a.check_nodes.get(con.physical)
    if found is None:
        raise check_refusal(first.name, pol.mode, "a form pgcloak could not locate")
    node, span, table_level = found
    if span is None:
        raise check_refusal(first.name, pol.mode, "a form pgcloak could not locate")
    lo, hi = segment if segment is not None else span
    if node.get("is_no_inherit"):
        raise check_refusal(first.name, pol.mode, "NO INHERIT")
    if alter and not node.get("skip_validation"):
        raise CloakError(
            "0A000",
            f"pgcloak cannot validate existing rows for a CHECK constraint on column "
            f'"{first.name}" encrypted in {pol.mode} mode',
            hint="Add it with NOT VALID: pgcloak then checks every value written from now on.",
        )
    tree = written_check(rel, first, pol.mode, node["raw_expr"])
    if alter:
        a.edits.cut(lo, hi, f"ALTER COLUMN {first.physical} SET DEFAULT NULL")
    else:
        if table_level:
            ts = a.ts
            if ts.name(lo - 1) == _COMMA:
                lo -= 1
            elif ts.name(hi + 1) == _COMMA:
                hi += 1
        a.edits.cut(lo, hi, " ")
    return replace(con, check=tree)


def check_span(a: Analyzer, start: int, kw: int) -> tuple[int, int] | None:
    """First and last token of a CHECK constraint starting at `start` (CONSTRAINT or
    CHECK), through its parenthesis and any NOT VALID / NO INHERIT after it."""
    ts = a.ts
    i = kw + 1
    if ts.name(kw) != "CHECK" or ts.name(i) != _LPAR or ts.match[i] < 0:
        return None
    last = ts.match[i]
    while ts.name(last + 1) in ("NOT", "NO") and ts.name(last + 2) in ("VALID", "INHERIT"):
        last += 2
    return start, last
