"""Encrypted columns in queries: what the server may do with ciphertext, and what the proxy
must encrypt and decrypt (docs/encryption-design.md, "What the database can do").

After the name resolver has run, a second pass walks the statement with the column
references it resolved (`Analyzer.colrefs`; a `Col.enc` marks ciphertext). It
allows only what works on ciphertext: equality with literals, parameters and
columns of the same scope (deterministic), NULL tests, `count`, grouping/DISTINCT
(deterministic), storing literals/parameters/NULL/same-scope columns, and passing
columns through to the output. Everything else is refused (0A000, naming the column
and its mode). What it allows becomes the plan's `value_slots` (literals to
encrypt), `param_slots` ($n to encrypt), `output_columns` and `copy_columns`
(ciphertext to decrypt); casts on those values are taken off (enc_tokens.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter.catalog import EncColumn, Relation
from pgcloak.rewriter.ddl_check import has_checks
from pgcloak.rewriter.enc_exprs import (
    FUNC,
    GROUP,
    LIMIT,
    STORE_EXPR,
    STORE_OTHER_KEY,
    STORE_PLAIN,
    VALUE_CAST,
    VALUES,
    ExprWalker,
    Found,
    same_key,
)
from pgcloak.rewriter.enc_tokens import (
    cast_keeps_value,
    refusal,
    rewritten_offset,
    strip_casts,
)
from pgcloak.rewriter.plan import CloakError, Plan
from pgcloak.rewriter.scope import Col, Node, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.analyze import Analyzer

__all__ = ["Found", "analyze", "check_join", "finish", "value_enc"]

Target = tuple[EncColumn | None, str]  # a column values are stored in: (enc, client's name)


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def _positional(sel: Node) -> bool:
    """A plain SELECT whose list items map one to one to the output columns (no `*`)."""
    if sel.get("op", "SETOP_NONE") != "SETOP_NONE" or "valuesLists" in sel:
        return False
    for rt in sel.get("targetList", ()):
        ref = rt["ResTarget"]["val"].get("ColumnRef")
        if ref is not None and "A_Star" in ref["fields"][-1]:
            return False
    return True


def _casts(node: Node) -> list[Node]:
    """TypeCast bodies around a value, outermost first."""
    casts = []
    while "TypeCast" in node:
        casts.append(node["TypeCast"])
        node = node["TypeCast"]["arg"]
    return casts


def _uncast(node: Node) -> Node:
    while "TypeCast" in node:
        node = node["TypeCast"]["arg"]
    return node


def _values_source(sel: Node) -> tuple[int, list[str]] | None:
    """(width, column names) when a SELECT reads exactly one VALUES list in FROM."""
    items = sel.get("fromClause") or []
    if len(items) != 1:
        return None
    kind, body = node_kind(items[0])
    if kind != "RangeSubselect" or body.get("lateral"):
        return None
    sub = node_kind(body["subquery"])[1]
    if "valuesLists" not in sub or any(
        sub.get(k) for k in ("sortClause", "limitCount", "limitOffset", "withClause")
    ):
        return None
    width = len(sub["valuesLists"][0]["List"]["items"])
    names = [_sval(c) for c in (body.get("alias") or {}).get("colnames", ())]
    return width, names + [f"column{j + 1}" for j in range(len(names), width)]


def value_enc(a: Analyzer, node: Node) -> EncColumn | None:
    """The ciphertext an output expression passes on as it is (bare column, scalar subquery)."""
    kind, body = node_kind(node)
    if kind == "ColumnRef":
        col = a.colrefs.get(id(body))
        return col.enc if col is not None else None
    if kind == "SubLink" and body.get("subLinkType") == "EXPR_SUBLINK":
        outs = a.outputs.get(id(node_kind(body["subselect"])[1]))
        return outs[0].enc if outs else None
    return None


def check_join(a: Analyzer, left: Col, right: Col, tok: int | None) -> None:
    """JOIN ... USING / NATURAL on a column pair where one side is encrypted."""
    pos = a.ts.pos(tok) if tok is not None else None
    enc = left if left.enc is not None else right
    assert enc.enc is not None
    if left.enc is None or right.enc is None:
        raise refusal(("join", " with a column that is not encrypted"), enc.name, enc.enc.mode, pos)
    if left.enc.scope != right.enc.scope:
        raise refusal(("join", " with a column under another key"), enc.name, enc.enc.mode, pos)
    if not left.enc.deterministic:
        raise refusal(("join on", ""), enc.name, enc.enc.mode, pos)


def _in_row(target: Target | None, row: int) -> Target | None:
    """A VALUES target for row `row` (so the proxy reports the first row's failure)."""
    if target is None or target[0] is None or row == 0:
        return target
    return (replace(target[0], row=row), target[1])


class _Pass(ExprWalker):
    """The statement half of the encryption pass."""

    # -- statements -------------------------------------------------------------------

    def statement(self, node: Node) -> None:
        kind, body = node_kind(node)
        if kind == "SelectStmt":
            self.select(body)
        elif kind == "InsertStmt":
            self.insert(body)
        elif kind == "UpdateStmt":
            self.update(body)
        elif kind == "DeleteStmt":
            self.with_clause(body)
            self.from_items(body.get("usingClause"))
            self.cond(body.get("whereClause"))
            self.returning(body)
        elif kind == "MergeStmt":
            self.merge(body)
        elif kind in ("CreateTableAsStmt", "ExplainStmt", "ViewStmt", "PrepareStmt"):
            self.statement(body["query"])

    def with_clause(self, body: Node) -> None:
        for cte in (body.get("withClause") or {}).get("ctes", ()):
            self.statement(cte["CommonTableExpr"]["ctequery"])

    def select(self, sel: Node, assign: list[Target] | None = None) -> None:
        self.with_clause(sel)
        outs = self.outputs(sel)
        if sel.get("op", "SETOP_NONE") != "SETOP_NONE":
            self.select(sel["larg"])
            self.select(sel["rarg"])
            self.setop(sel)
        elif "valuesLists" in sel:
            for row in sel["valuesLists"]:
                self.expr(row["List"]["items"], VALUES)
        else:
            self.simple(sel, outs, assign)
        self.order(sel.get("sortClause"), outs)
        self.expr(sel.get("limitOffset"), LIMIT)
        self.expr(sel.get("limitCount"), LIMIT)

    def simple(self, sel: Node, outs: list[Col] | None, assign: list[Target] | None) -> None:
        feeds = self.values_feeds(sel, assign) if assign is not None else {}
        if feeds:
            assert assign is not None
            self.values_rows(sel, feeds, assign)
        else:
            self.from_items(sel.get("fromClause"))
        for k, rt in enumerate(sel.get("targetList", ())):
            val = rt["ResTarget"]["val"]
            if k in feeds.values():
                continue
            if assign is not None and k < len(assign):
                self.assign(assign[k], val)
            else:
                self.output(val)
        self.cond(sel.get("whereClause"))
        for g in sel.get("groupClause", ()):
            self.group_item(g, outs, GROUP)
        self.cond(sel.get("havingClause"))
        for w in sel.get("windowClause", ()):
            self.window(w["WindowDef"])
        distinct = sel.get("distinctClause")
        if distinct == [{}]:
            for col in outs or ():
                if col.enc is not None and not col.enc.deterministic:
                    raise self.refuse(("select DISTINCT", ""), col)
        elif distinct:
            for d in distinct:
                self.group_item(d, outs, ("select DISTINCT ON", ""))

    def values_feeds(self, sel: Node, assign: list[Target]) -> dict[int, int]:
        """INSERT ... SELECT p0::t FROM (VALUES ($1::t, 0), ...) AS v(p0, n) ORDER BY n
        (SQLAlchemy's insertmanyvalues): VALUES column -> list item it feeds unchanged
        into an encrypted column. Each such column must be used by that item only."""
        source = _values_source(sel)
        if source is None:
            return {}
        width, colnames = source
        feeds: dict[int, int] = {}
        for k, rt in enumerate(sel.get("targetList", ())):
            target = assign[k] if k < len(assign) else None
            inner = _uncast(rt["ResTarget"]["val"])
            ref = inner.get("ColumnRef")
            if target is None or target[0] is None or ref is None:
                continue
            col = self.a.colrefs.get(id(ref))
            if col is None or col.enc is not None or col.name not in colnames[:width]:
                continue
            if sum(1 for c in self.a.colrefs.values() if c is col) != 1:
                continue
            feeds[colnames.index(col.name)] = k
        return feeds

    def values_rows(self, sel: Node, feeds: dict[int, int], assign: list[Target]) -> None:
        """The VALUES rows of `values_feeds`: fed columns' items are stored values."""
        sub = node_kind(node_kind(sel["fromClause"][0])[1]["subquery"])[1]
        assign_to: dict[int, Target] = {}
        for j, k in feeds.items():
            val = sel["targetList"][k]["ResTarget"]["val"]
            enc, name = assign[k]
            if enc is not None and not cast_keeps_value(_casts(val), {}, enc.type_sql, False):
                raise refusal(VALUE_CAST, name, enc.mode, self.pos(val))
            strip_casts(self.a, _casts(val), _uncast(val)["ColumnRef"])
            assign_to[j] = assign[k]
        for row in sub["valuesLists"]:
            for j, item in enumerate(row["List"]["items"]):
                if j in assign_to:
                    self.assign(assign_to[j], item)
                else:
                    self.expr(item, VALUES)

    def setop(self, sel: Node) -> None:
        op = sel["op"].removeprefix("SETOP_")
        left, right = self.outputs(sel["larg"]), self.outputs(sel["rarg"])
        if left is None or right is None:
            known = left if left is not None else right or []
            for col in known:
                if col.enc is not None:
                    unseen = f" with a column pgcloak cannot see in {op}"
                    raise self.refuse(("combine", unseen), col)
            return
        for lcol, rcol in zip(left, right, strict=False):
            if lcol.enc is None and rcol.enc is None:
                continue
            enc = lcol if lcol.enc is not None else rcol
            if lcol.enc is None or rcol.enc is None:
                raise self.refuse(("combine", f" with a column that is not encrypted in {op}"), enc)
            if not same_key(lcol.enc, rcol.enc):
                raise self.refuse(("combine", f" with a column under another key in {op}"), enc)
            if (op != "UNION" or not sel.get("all")) and not lcol.enc.deterministic:
                raise self.refuse((f"apply {op} to", ""), enc)

    def output(self, val: Node) -> None:
        """A SELECT/RETURNING list item: bare columns and scalar subqueries pass through."""
        kind, body = node_kind(val)
        if kind == "ColumnRef":
            if "A_Star" not in body["fields"][-1]:
                self.colref(body, None)
        elif kind == "SubLink" and body.get("subLinkType") == "EXPR_SUBLINK":
            self.statement(body["subselect"])
        else:
            self.expr(val, FUNC)

    def returning(self, body: Node) -> None:
        clause = body.get("returningClause")
        exprs = clause.get("exprs", ()) if clause is not None else body.get("returningList", ())
        for rt in exprs:
            self.output(rt["ResTarget"]["val"])

    def from_items(self, items: Any) -> None:
        for node in items or ():
            kind, body = node_kind(node)
            if kind == "RangeSubselect":
                self.statement(body["subquery"])
            elif kind == "RangeFunction":
                for f in body.get("functions", ()):
                    self.expr(f["List"]["items"][0], FUNC)
            elif kind == "JoinExpr":
                self.from_items([body["larg"], body["rarg"]])
                self.cond(body.get("quals"))

    # -- INSERT / UPDATE / MERGE --------------------------------------------------------

    def target(self, rel: Relation | None, name: str) -> Target | None:
        if rel is None:
            return None
        col = rel.column(name)
        if col is None or col.policy is None:
            return (None, name)
        if rel.kind != "table" and self._checked_below(rel, 0):
            raise refusal(
                ("write", " through a view of a table with CHECK constraints pgcloak evaluates"),
                name, col.policy.mode,
            )  # fmt: skip
        return (EncColumn.of(col.policy, rel.physical, col.physical), name)

    def _checked_below(self, rel: Relation, depth: int) -> bool:
        """Whether a view may write into a table column with pgcloak-held CHECKs (the
        proxy checks values by the column they are written to: the view's)."""
        if rel.reads is None or depth > 16:
            return True
        for physical in rel.reads:
            below = self.a.catalog.relation_by_physical(physical)
            if below is None:
                continue
            if below.kind == "table":
                if any(c.check is not None for c in self.a.catalog.constraints(physical)):
                    return True
            elif self._checked_below(below, depth + 1):
                return True
        return False

    def relation(self, rv: Node) -> Relation | None:
        return self.a.find(rv.get("schemaname"), rv["relname"])

    def targets(self, rel: Relation | None, rts: Any) -> list[Target] | None:
        names = [rt["ResTarget"]["name"] for rt in rts or ()]
        if rel is None:
            return None
        if not names:
            names = [c.name for c in rel.columns]
        return [t for n in names if (t := self.target(rel, n)) is not None]

    def insert(self, body: Node) -> None:
        self.with_clause(body)
        rel = self.relation(body["relation"])
        targets = self.targets(rel, body.get("cols"))
        sel = body.get("selectStmt")
        if sel is not None:
            sbody = node_kind(sel)[1]
            if "valuesLists" in sbody and not sbody.get("sortClause"):
                self.with_clause(sbody)
                for r, row in enumerate(sbody["valuesLists"]):
                    for k, item in enumerate(row["List"]["items"]):
                        self.assign(_in_row(self.nth(targets, k), r), item)
            elif targets is not None and _positional(sbody):
                # Each list item goes into one column: literals/parameters can be encrypted.
                count = len(sbody.get("targetList", ()))
                self.select(sbody, [self.nth(targets, k) or (None, "") for k in range(count)])
            else:
                self.select(sbody)
                self.stored(targets, self.outputs(sbody))
        conflict = body.get("onConflictClause")
        if conflict is not None:
            self.cond((conflict.get("infer") or {}).get("whereClause"))
            self.assignments(rel, conflict.get("targetList"))
            self.cond(conflict.get("whereClause"))
        self.returning(body)

    @staticmethod
    def nth(targets: list[Target] | None, k: int) -> Target | None:
        if targets is None:
            return None
        return targets[k] if k < len(targets) else (None, "")

    def stored(self, targets: list[Target] | None, outs: list[Col] | None) -> None:
        """Query outputs going into `targets` (None: a relation pgcloak does not know)."""
        if outs is None:
            for t in targets or ():
                if t[0] is not None:
                    raise refusal(STORE_EXPR, t[1], t[0].mode)
            return
        for k, col in enumerate(outs):
            target = self.nth(targets, k)
            self.store_col(target, col, None)

    def store_col(self, target: Target | None, col: Col | None, node: Node | None) -> None:
        enc = target[0] if target is not None else None
        if col is not None and col.enc is not None:
            if enc is None:
                raise self.refuse(STORE_PLAIN, col, node)
            if col.enc.scope != enc.scope:
                raise self.refuse(STORE_OTHER_KEY, col, node)
            same = (col.enc.table, col.enc.column) == (enc.table, enc.column)
            if not same and has_checks(self.a.catalog, enc.table, enc.column):
                assert target is not None
                raise refusal(
                    ("copy stored values into", ": it has CHECK constraints pgcloak evaluates "
                     "on the values the client sends"),
                    target[1], enc.mode,
                )  # fmt: skip
        elif enc is not None:
            assert target is not None
            raise refusal(STORE_EXPR, target[1], enc.mode)

    def assign(self, target: Target | None, node: Node) -> None:
        """A value stored in a column (INSERT VALUES/SELECT list, UPDATE SET, MERGE)."""
        op = self.operand(node)
        enc = target[0] if target is not None else None
        if enc is None or op.kind in ("enc", "col", "sub"):
            if op.kind in ("enc", "col", "sub"):
                self.store_col(target, op.col, node_kind(node)[1])
            else:
                self.plain(op, FUNC)
            return
        assert target is not None
        if op.kind == "lit":
            self.slot(op, enc, target[1])
        elif op.kind == "param":
            self.param(op, enc, target[1])
        elif op.kind in ("null", "default"):
            if op.inner is not None:
                strip_casts(self.a, op.casts, op.inner)
        else:
            assert target is not None
            raise refusal(STORE_EXPR, target[1], enc.mode, self.pos(node_kind(node)[1]))

    def assignments(self, rel: Relation | None, rts: Any) -> None:
        for rt in rts or ():
            res = rt["ResTarget"]
            target = self.target(rel, res["name"])
            if res.get("indirection"):
                if target is not None and target[0] is not None:
                    raise refusal(("assign to a part of", ""), target[1], target[0].mode)
                self.expr(res["indirection"], FUNC)
            kind, val = node_kind(res["val"])
            if kind != "MultiAssignRef":
                self.assign(target, res["val"])
                continue
            source_kind, source = node_kind(val["source"])
            colno = val["colno"]
            if source_kind == "RowExpr":
                self.assign(target, source["args"][colno - 1])
            elif source_kind == "SubLink":
                if colno == 1:
                    self.statement(source["subselect"])
                outs = self.outputs(node_kind(source["subselect"])[1])
                self.store_col(target, outs[colno - 1] if outs and colno <= len(outs) else None,
                               None)  # fmt: skip
            else:
                if target is not None and target[0] is not None:
                    raise refusal(STORE_EXPR, target[1], target[0].mode)
                if colno == 1:
                    self.expr(val["source"], FUNC)

    def update(self, body: Node) -> None:
        self.with_clause(body)
        rel = self.relation(body["relation"])
        self.from_items(body.get("fromClause"))
        self.assignments(rel, body.get("targetList"))
        self.cond(body.get("whereClause"))
        self.returning(body)

    def merge(self, body: Node) -> None:
        self.with_clause(body)
        rel = self.relation(body["relation"])
        self.from_items([body["sourceRelation"]])
        self.cond(body.get("joinCondition"))
        for node in body.get("mergeWhenClauses", ()):
            clause = node["MergeWhenClause"]
            self.cond(clause.get("condition"))
            if clause.get("commandType") == "CMD_UPDATE":
                self.assignments(rel, clause.get("targetList"))
            elif clause.get("commandType") == "CMD_INSERT":
                targets = self.targets(rel, clause.get("targetList"))
                for k, item in enumerate(clause.get("values", ())):
                    self.assign(self.nth(targets, k), item)

    # -- expressions ---------------------------------------------------------------------

    # -- COPY ---------------------------------------------------------------------------

    def copy(self, body: Node) -> None:
        rv = body.get("relation")
        if rv is not None:
            rel = self.relation(rv)
            self.cond(body.get("whereClause"))
            if rel is None:
                return
            names = [_sval(s) for s in body.get("attlist", ())] or [c.name for c in rel.copied()]
            encs = [t[0] for n in names if (t := self.target(rel, n)) is not None]
        else:
            query = body["query"]
            self.statement(query)
            kind, qbody = node_kind(query)
            if kind != "SelectStmt":
                raise CloakError(
                    "0A000",
                    "pgcloak does not support COPY (INSERT/UPDATE/DELETE ... RETURNING) on "
                    "tables with encrypted columns",
                )
            encs = [c.enc for c in self.outputs(qbody) or ()]
        if any(e is not None for e in encs):
            self.found.copy = tuple(encs)


def analyze(a: Analyzer, kind: str, body: Node, stmt: Node, out: list[Col] | None) -> Found | None:
    """Check a planned statement's use of encrypted columns; None when it has none.

    `out` is the statement's output (rows it returns, or a PREPAREd query's rows).
    """
    if not a.encrypted:
        return None
    p = _Pass(a)
    if kind == "CopyStmt":
        p.copy(body)
    else:
        p.statement(stmt)
    found = p.found
    both = set(found.params) & found.plain_params
    if both:
        n = min(both)
        raise CloakError(
            "0A000",
            f"pgcloak cannot use parameter ${n} both for an encrypted column and elsewhere",
        )
    if kind == "PrepareStmt" and found.params:
        raise CloakError(
            "0A000",
            "pgcloak does not support PREPARE with parameters compared with or stored in "
            "encrypted columns; use the extended query protocol",
        )
    if out is not None and any(c.enc is not None for c in out):
        found.output = tuple(c.enc for c in out)
    if not (found.slots or found.params or found.output or found.copy):
        return None
    return found


def finish(plan: Plan, found: Found) -> Plan:
    """`plan` with the encryption fields, slot positions moved into `plan.sql`."""
    slots = []
    sql = plan.sql or ""
    for (start, end), enc in sorted(found.slots.items()):
        new = rewritten_offset(plan.positions, start)
        literal = found.text[start:end]
        if new is None or sql[new : new + len(literal)] != literal:
            raise CloakError("0A000", "pgcloak could not locate a literal in the rewritten text")
        slots.append((new, new + len(literal), enc))
    return replace(
        plan,
        value_slots=tuple(slots),
        param_slots=tuple(sorted(found.params.items())),
        output_columns=found.output,
        copy_columns=found.copy,
    )
