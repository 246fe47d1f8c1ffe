"""Expressions over encrypted columns: which operations the server may apply to ciphertext.

`ExprWalker` is the expression half of the encryption pass (encrypted.py has the
statements): it walks expressions with the resolver's column references and, for
each place a column's ciphertext can reach, either allows it (equality with a
literal, parameter or same-scope column in deterministic mode, NULL tests,
`count`, grouping of deterministic columns), records what the proxy must encrypt
(`Found.slots`, `Found.params`), or refuses with the operation's wording (`Ctx`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter.catalog import EncColumn
from pgcloak.rewriter.ddl_check import has_checks
from pgcloak.rewriter.enc_tokens import (
    Ctx,
    array_range,
    cast_keeps_value,
    literal_range,
    refusal,
    strip_casts,
)
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Node, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.analyze import Analyzer

__all__ = ["ExprWalker", "Found", "Operand", "same_key"]

FUNC: Ctx = ("apply functions to", "")
AGG: Ctx = ("aggregate", "")
ARITH: Ctx = ("do arithmetic on", "")
RANGE: Ctx = ("compare ranges of", "")
PATTERN: Ctx = ("pattern-match", "")
OPER: Ctx = ("apply operators to", "")
ORDER: Ctx = ("order by", "")
GROUP: Ctx = ("group by", "")
CAST: Ctx = ("cast", "")
COND: Ctx = ("use", " as a condition")
CASE: Ctx = ("use", " in a CASE expression")
ROW: Ctx = ("use", " in a row or array constructor")
LIMIT: Ctx = ("use", " in LIMIT or OFFSET")
VALUES: Ctx = ("use", " in a VALUES list outside INSERT")
EQUALITY: Ctx = ("test equality of", "")
ANY_ARRAY: Ctx = ("compare", " with an array (= ANY/ALL)")
OTHER_KEY: Ctx = ("compare", " with a column under another key")
PLAIN_COL: Ctx = ("compare", " with a column that is not encrypted")
EXPRESSION: Ctx = (
    "compare",
    " with an expression (only literals, parameters and columns under the same key)",
)
VALUE_CAST: Ctx = (
    "cast a value for",
    " to another type, length or precision (a cast to the column's own type is fine,"
    " with no length or precision in comparisons)",
)
STORE_PLAIN: Ctx = ("store", " in a column that is not encrypted")
STORE_OTHER_KEY: Ctx = ("store", " in a column under another key")
STORE_EXPR: Ctx = (
    "store an expression in",
    " (only literals, parameters, NULL, DEFAULT and columns under the same key)",
)

_EQUALITY_OPS = frozenset({"=", "<>", "!="})
_RANGE_OPS = frozenset({"<", ">", "<=", ">="})
_ARITH_OPS = frozenset({"+", "-", "*", "/", "%", "^", "|/", "||/", "@", "&", "|", "#", "<<", ">>"})
_PATTERN_OPS = frozenset({"~~", "!~~", "~~*", "!~~*", "~", "~*", "!~", "!~*"})
_AGGREGATES = frozenset(
    {"avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "every", "max", "min", "sum",
     "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
     "xmlagg", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
     "mode", "percentile_cont", "percentile_disc", "range_agg", "range_intersect_agg",
     "any_value", "corr", "covar_pop", "covar_samp"}
)  # fmt: skip
_LEAVES = frozenset({"A_Const", "SQLValueFunction", "SetToDefault", "CurrentOfExpr"})


@dataclass
class Found:
    """What a statement does with ciphertext (positions in the client's text)."""

    text: str
    slots: dict[tuple[int, int], EncColumn] = field(default_factory=dict)
    params: dict[int, EncColumn] = field(default_factory=dict)
    plain_params: set[int] = field(default_factory=set)
    output: tuple[EncColumn | None, ...] | None = None
    copy: tuple[EncColumn | None, ...] | None = None


@dataclass
class Operand:
    """One side of a comparison or assignment: enc (ciphertext), col (plain column),
    lit, param, null, default, sub (plain subquery value, already walked) or other."""

    kind: str
    node: Node
    inner: Node | None = None
    casts: list[Node] = field(default_factory=list)
    col: Col | None = None
    array: bool = False  # a lit that is an ARRAY[...] of literals (inner: the A_ArrayExpr)

    @property
    def enc(self) -> EncColumn | None:
        return self.col.enc if self.col is not None else None


def _constant_array(body: Node) -> bool:
    """An ARRAY[...] whose elements are all literals (or all such sub-arrays), uncast:
    the proxy builds its value as PostgreSQL would (pgcloak/proxy/array_ctor.py)."""
    kinds = [node_kind(e) for e in body.get("elements") or ()]
    if not kinds:
        return False
    if all(k == "A_Const" for k, _ in kinds):
        return True
    return all(k == "A_ArrayExpr" and _constant_array(b) for k, b in kinds)


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _no_equality(enc: EncColumn) -> bool:
    """json (unlike jsonb) has no equality operator in PostgreSQL: nothing to emulate."""
    return enc.type_sql.split("[")[0] == "json"


def same_key(x: EncColumn, y: EncColumn) -> bool:
    return x.scope == y.scope and x.mode == y.mode and x.type_sql == y.type_sql


class ExprWalker(ABC):
    """Walks expressions of one statement; subclasses walk its (sub)statements."""

    def __init__(self, a: Analyzer) -> None:
        self.a = a
        self.found = Found(a.ts.text)

    def pos(self, node: Node) -> int | None:
        loc = node.get("location", -1)
        return self.a.ts.char(loc) + 1 if isinstance(loc, int) and loc >= 0 else None

    def refuse(self, ctx: Ctx, col: Col, node: Node | None = None) -> CloakError:
        assert col.enc is not None
        return refusal(ctx, col.name, col.enc.mode, self.pos(node) if node is not None else None)

    @abstractmethod
    def statement(self, node: Node) -> None:
        """Walk a (sub)statement."""

    def outputs(self, sel: Node) -> list[Col] | None:
        return self.a.outputs.get(id(sel))

    def cond(self, node: Any) -> None:
        self.expr(node, COND)

    def colref(self, body: Node, ctx: Ctx | None) -> None:
        if id(body) in self.a.whole_rows:
            raise CloakError(
                "0A000",
                "pgcloak cannot use a whole-row reference to a relation with encrypted columns",
                self.pos(body),
            )
        col = self.a.colrefs.get(id(body))
        if ctx is not None and col is not None and col.enc is not None:
            raise self.refuse(ctx, col, body)

    def expr(self, node: Any, ctx: Ctx) -> None:
        if node is None:
            return
        if isinstance(node, list):
            for child in node:
                self.expr(child, ctx)
            return
        if not node:
            return
        kind, body = node_kind(node)
        if kind in _LEAVES:
            return
        handler = getattr(self, f"_x_{kind}", None)
        if handler is not None:
            handler(body, ctx)
        else:
            self.generic(body)

    def generic(self, node: Any) -> None:
        """A construct not modelled here: no ciphertext may occur anywhere inside."""
        if isinstance(node, list):
            for child in node:
                self.generic(child)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "ColumnRef":
                    self.colref(value, ("use", " in this construct"))
                elif key == "ParamRef":
                    self.found.plain_params.add(int(value.get("number", 0)))
                elif isinstance(value, dict | list):
                    self.generic(value)

    def _x_ColumnRef(self, body: Node, ctx: Ctx) -> None:
        self.colref(body, ctx)

    def _x_ParamRef(self, body: Node, ctx: Ctx) -> None:
        self.found.plain_params.add(int(body.get("number", 0)))

    def _x_TypeCast(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), CAST)

    def _x_CollateClause(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), ("apply COLLATE to", ""))

    def _x_List(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("items"), ctx)

    def _x_NamedArgExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), ctx)

    def _x_BoolExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("args"), COND)

    def _x_NullTest(self, body: Node, ctx: Ctx) -> None:
        kind, arg = node_kind(body["arg"])
        if kind == "ColumnRef":
            self.colref(arg, None)  # IS [NOT] NULL works on ciphertext
        else:
            self.plain(self.operand(body["arg"]), FUNC)

    def _x_BooleanTest(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), ("test the truth of", ""))

    def _x_CaseExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), CASE)
        for when in body.get("args", ()):
            w = when["CaseWhen"]
            self.expr(w.get("expr"), COND if body.get("arg") is None else CASE)
            self.expr(w.get("result"), CASE)
        self.expr(body.get("defresult"), CASE)

    def _x_CoalesceExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("args"), FUNC)

    def _x_MinMaxExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("args"), RANGE)

    def _x_RowExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("args"), ROW)

    def _x_A_ArrayExpr(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("elements"), ROW)

    def _x_A_Indirection(self, body: Node, ctx: Ctx) -> None:
        self.expr(body.get("arg"), ("subscript", ""))
        for ind in body.get("indirection", ()):
            if "A_Indices" in ind:
                self.expr([ind["A_Indices"].get("lidx"), ind["A_Indices"].get("uidx")], FUNC)

    def _x_GroupingFunc(self, body: Node, ctx: Ctx) -> None:
        for arg in body.get("args", ()):  # GROUPING(col) only says whether col is grouped
            kind, abody = node_kind(arg)
            if kind == "ColumnRef":
                self.colref(abody, None)
            else:
                self.expr(arg, FUNC)

    def _x_SubLink(self, body: Node, ctx: Ctx) -> None:
        link = body.get("subLinkType")
        sub = node_kind(body["subselect"])[1]
        if link in ("ANY_SUBLINK", "ALL_SUBLINK"):
            names = [_sval(n) for n in body.get("operName", ())] or ["="]
            equality = names[-1] in _EQUALITY_OPS and (link == "ANY_SUBLINK") == (names[-1] == "=")
            self.statement(body["subselect"])
            outs = self.outputs(sub)
            test = body["testexpr"]
            tkind, tbody = node_kind(test)
            lefts = tbody["args"] if tkind == "RowExpr" else [test]
            for k, left in enumerate(lefts):
                out = outs[k] if outs is not None and k < len(outs) else None
                right = Operand("enc" if out and out.enc else "sub", body, col=out)
                lop = self.operand(left)
                if equality:
                    self.pair(lop, right, body)
                    continue
                for side in (lop, right):
                    if side.col is not None and side.col.enc is not None:
                        raise self.refuse(RANGE, side.col, body)
                self.plain(lop, RANGE)
            return
        self.statement(body["subselect"])
        outs = self.outputs(sub)
        if link == "EXPR_SUBLINK" and outs and outs[0].enc is not None and ctx is not None:
            raise self.refuse(ctx, outs[0], body)
        if link in ("ARRAY_SUBLINK", "ROWCOMPARE_SUBLINK", "MULTIEXPR_SUBLINK"):
            for col in outs or ():
                if col.enc is not None:
                    raise self.refuse(ROW, col, body)
        self.expr(body.get("testexpr"), FUNC)

    def _x_FuncCall(self, body: Node, ctx: Ctx) -> None:
        name = _sval(body["funcname"][-1]).lower()
        args = body.get("args", ())
        aggregate = (
            name in _AGGREGATES
            or body.get("agg_distinct")
            or body.get("agg_order")
            or body.get("over") is not None
            or body.get("agg_filter") is not None
        )
        kind, arg = node_kind(args[0]) if len(args) == 1 else ("", {})
        if name == "count" and kind == "ColumnRef":
            self.colref(arg, None)  # count(col) counts non-NULL values: fine on ciphertext
            col = self.a.colrefs.get(id(arg))
            distinct = body.get("agg_distinct")
            if distinct and col is not None and col.enc is not None and not col.enc.deterministic:
                raise self.refuse(("count DISTINCT values of", ""), col, arg)
        else:
            self.expr(args, AGG if aggregate else FUNC)
        self.order(body.get("agg_order"), None)
        self.cond(body.get("agg_filter"))
        if body.get("over") is not None:
            self.window(body["over"])

    def _x_A_Expr(self, body: Node, ctx: Ctx) -> None:
        kind = body.get("kind")
        name = _sval(body["name"][-1]) if body.get("name") else ""
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        equality = kind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") or (
            kind == "AEXPR_OP" and name in _EQUALITY_OPS
        )
        if equality and lexpr is not None and rexpr is not None:
            lk, lb = node_kind(lexpr)
            rk, rb = node_kind(rexpr)
            if lk == rk == "RowExpr" and len(lb.get("args", ())) == len(rb.get("args", ())):
                for x, y in zip(lb["args"], rb["args"], strict=True):  # (a, b) = (1, 2)
                    self.pair(self.operand(x), self.operand(y), body)
                return
            self.pair(self.operand(lexpr), self.operand(rexpr), body)
            return
        if kind == "AEXPR_IN" and lexpr is not None:
            left = self.operand(lexpr)
            items = rexpr.get("List", {}).get("items", ()) if isinstance(rexpr, dict) else rexpr
            for item in items or ():
                self.pair(left, self.operand(item), body)
            return
        if kind == "AEXPR_OP":
            op_ctx = (
                RANGE if name in _RANGE_OPS else ARITH if name in _ARITH_OPS
                else PATTERN if name in _PATTERN_OPS else OPER
            )  # fmt: skip
        elif kind in ("AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR"):
            op_ctx = PATTERN
        elif kind in ("AEXPR_OP_ANY", "AEXPR_OP_ALL"):
            op_ctx = ANY_ARRAY
        elif "BETWEEN" in (kind or ""):
            op_ctx = RANGE
        elif kind == "AEXPR_NULLIF":
            op_ctx = FUNC
        else:
            op_ctx = OPER
        self.expr(lexpr, op_ctx)
        self.expr(rexpr, op_ctx)

    # -- comparisons and values --------------------------------------------------------

    def operand(self, node: Node) -> Operand:
        casts: list[Node] = []
        cur = node
        kind, body = node_kind(cur)
        while kind == "TypeCast":
            casts.append(body)
            cur = body["arg"]
            kind, body = node_kind(cur)
        if kind == "A_Const":
            return Operand("null" if body.get("isnull") else "lit", node, body, casts)
        if kind == "ParamRef":
            return Operand("param", node, body, casts)
        if kind == "A_ArrayExpr" and not casts and _constant_array(body):
            return Operand("lit", node, body, casts, array=True)
        if kind == "SetToDefault" and not casts:
            return Operand("default", node)
        if casts:
            return Operand("other", node)
        if kind == "ColumnRef":
            self.colref(body, None)
            col = self.a.colrefs.get(id(body))
            return Operand("enc" if col is not None and col.enc else "col", node, body, col=col)
        if kind == "SubLink" and body.get("subLinkType") == "EXPR_SUBLINK":
            self.statement(body["subselect"])
            outs = self.outputs(node_kind(body["subselect"])[1])
            col = outs[0] if outs else None
            return Operand("enc" if col is not None and col.enc else "sub", node, body, col=col)
        return Operand("other", node)

    def plain(self, op: Operand, ctx: Ctx) -> None:
        """Walk an operand that meets no ciphertext."""
        if op.kind == "other":
            self.expr(op.node, ctx)
        elif op.kind == "param":
            assert op.inner is not None
            self.found.plain_params.add(int(op.inner.get("number", 0)))

    def pair(self, left: Operand, right: Operand, node: Node) -> None:
        """An equality comparison (=, <>, IS [NOT] DISTINCT FROM, IN, = ANY (subquery))."""
        if left.enc is None and right.enc is None:
            self.plain(left, FUNC)
            self.plain(right, FUNC)
            return
        enc, other = (left, right) if left.enc is not None else (right, left)
        assert enc.col is not None and enc.enc is not None
        operator = node  # PostgreSQL's operator errors point at the operator
        node = enc.inner or node  # refusals point at the encrypted column
        if not enc.enc.deterministic:
            raise self.refuse(EQUALITY, enc.col, node)
        if _no_equality(enc.enc):
            raise CloakError(
                "42883",
                "operator does not exist: json = unknown",
                self.pos(operator),
                hint="No operator matches the given name and argument types. You might need "
                "to add explicit type casts.",
            )
        if other.kind == "enc":
            assert other.col is not None and other.enc is not None
            if not other.enc.deterministic:
                raise self.refuse(EQUALITY, other.col, other.inner or node)
            if other.enc.scope != enc.enc.scope:
                raise self.refuse(OTHER_KEY, enc.col, node)
        elif other.kind == "lit":
            self.slot(other, replace(enc.enc, compare=True), enc.col.name)
        elif other.kind == "param":
            self.param(other, replace(enc.enc, compare=True), enc.col.name)
        elif other.kind == "null":
            assert other.inner is not None
            strip_casts(self.a, other.casts, other.inner)
        elif other.kind == "col":
            raise self.refuse(PLAIN_COL, enc.col, node)
        else:
            raise self.refuse(EXPRESSION, enc.col, node)

    def check_casts(self, op: Operand, enc: EncColumn, name: str) -> None:
        """Refuses casts whose removal would change the value (see cast_keeps_value)."""
        if not cast_keeps_value(op.casts, op.inner, enc.type_sql, enc.compare):
            raise refusal(VALUE_CAST, name, enc.mode, self.pos(op.casts[0]))

    def slot(self, op: Operand, enc: EncColumn, name: str) -> None:
        assert op.inner is not None
        self.check_casts(op, enc, name)
        span = array_range(self.a, op.inner) if op.array else literal_range(self.a, op.inner)
        prev = self.found.slots.get(span)
        if prev is not None and not same_key(prev, enc):
            raise CloakError(
                "0A000", "pgcloak cannot use one literal for columns under different keys",
                span[0] + 1,
            )  # fmt: skip
        if prev is not None:
            self._one_use(prev, enc, "a literal")
        self.found.slots.setdefault(span, enc)
        strip_casts(self.a, op.casts, op.inner)

    def param(self, op: Operand, enc: EncColumn, name: str) -> None:
        assert op.inner is not None
        self.check_casts(op, enc, name)
        number = int(op.inner.get("number", 0))
        prev = self.found.params.get(number)
        if prev is not None and not same_key(prev, enc):
            raise CloakError(
                "0A000", f"pgcloak cannot use parameter ${number} for columns under different keys"
            )
        if prev is not None:
            self._one_use(prev, enc, f"parameter ${number}")
        self.found.params.setdefault(number, enc)
        strip_casts(self.a, op.casts, op.inner)

    def _one_use(self, prev: EncColumn, enc: EncColumn, what: str) -> None:
        """A value sealed once for two uses: refused when one of them writes into a column
        with CHECKs pgcloak evaluates (the value is tested for the use it is sealed for)."""
        if (prev.table, prev.column, prev.compare, prev.row) == (
            enc.table, enc.column, enc.compare, enc.row,
        ):  # fmt: skip
            return
        for use in (prev, enc):
            if not use.compare and has_checks(self.a.catalog, use.table, use.column):
                raise CloakError(
                    "0A000",
                    f"pgcloak cannot use {what} for more than one value where one is written "
                    "into a column with CHECK constraints pgcloak evaluates",
                )

    # -- grouping, ordering, windows ---------------------------------------------------

    def group_item(self, node: Node, outs: list[Col] | None, ctx: Ctx) -> None:
        kind, body = node_kind(node)
        if kind == "GroupingSet":
            for child in body.get("content", ()):
                self.group_item(child, outs, ctx)
            return
        col: Col | None = None
        if kind == "ColumnRef":
            self.colref(body, None)
            col = self.a.colrefs.get(id(body))
        elif kind == "A_Const" and "ival" in body and outs is not None:
            n = int(body["ival"].get("ival", 0))
            col = outs[n - 1] if 1 <= n <= len(outs) else None
        else:
            self.expr(node, FUNC)
            return
        if col is not None and col.enc is not None and not col.enc.deterministic:
            raise self.refuse(ctx, col, body)
        if col is not None and col.enc is not None and _no_equality(col.enc):
            raise CloakError("42883", "could not identify an equality operator for type json")

    def order(self, items: Any, outs: list[Col] | None) -> None:
        for sb in items or ():
            node = sb["SortBy"]["node"]
            kind, body = node_kind(node)
            if kind == "A_Const" and "ival" in body and outs is not None:
                n = int(body["ival"].get("ival", 0))
                if 1 <= n <= len(outs) and outs[n - 1].enc is not None:
                    raise self.refuse(ORDER, outs[n - 1], body)
                continue
            self.expr(node, ORDER)

    def window(self, wd: Node) -> None:
        for p in wd.get("partitionClause", ()):
            self.group_item(p, None, ("partition by", ""))
        self.order(wd.get("orderClause"), None)
        self.expr([wd.get("startOffset"), wd.get("endOffset")], FUNC)
