"""SELECT, FROM items and output lists: the query half of the analyzer.

`QueryAnalyzer` adds to the expression/column-reference core of `Analyzer` what
builds scopes: FROM items (tables, CTEs, subqueries, functions, joins), select
lists with PostgreSQL's output-name rules, ORDER BY / GROUP BY / DISTINCT ON
matching of output names, and set operations.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgcloak.rewriter import copy_merge, dml, encrypted, prepare
from pgcloak.rewriter.analyze import Analyzer, _sval
from pgcloak.rewriter.ddl_misc import lookup
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import (
    Col,
    Cte,
    Item,
    Node,
    Scope,
    Target,
    figure_colname,
    node_kind,
    relation_cols,
)

__all__ = ["QueryAnalyzer"]

_COMMA, _LPAR, _RPAR, _STAR = "ASCII_44", "ASCII_40", "ASCII_41", "ASCII_42"
# Keywords that end a SELECT/RETURNING list item (unless part of the expression).
_LIST_END = frozenset(
    {"FROM", "INTO", "WHERE", "GROUP_P", "HAVING", "WINDOW", "UNION", "INTERSECT", "EXCEPT",
     "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR", "RETURNING", "ON", "ASCII_59"}
)  # fmt: skip
_SEQUENCE_COLUMNS = ("last_value", "log_cnt", "is_called")
_SUBSELECT_START = frozenset({"SELECT", "VALUES", "WITH", "TABLE", _LPAR})
_FROM_CONTEXT = frozenset({"FROM", _COMMA, "JOIN", "LATERAL_P", _LPAR, "USING"})


class QueryAnalyzer(Analyzer):
    """The full analyzer (what the rewriter instantiates)."""

    # -- statements -----------------------------------------------------------------

    def statement(self, node: Node, parent: Scope | None) -> list[Col] | None:
        """Analyze a (sub)statement; return its output columns (None: unknown)."""
        kind, body = node_kind(node)
        if kind == "SelectStmt":
            return self.select(body, parent)
        if kind == "InsertStmt":
            return dml.insert(self, body, parent)
        if kind == "UpdateStmt":
            return dml.update(self, body, parent)
        if kind == "DeleteStmt":
            return dml.delete(self, body, parent)
        if kind == "MergeStmt":
            return copy_merge.merge(self, body, parent)
        if kind == "ExecuteStmt":  # EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE
            prepare.execute(self, body)
            return None
        self.unsupported(kind, node)
        return None

    def select(self, sel: Node, parent: Scope | None) -> list[Col] | None:
        scope = Scope(parent)
        if sel.get("withClause"):
            dml.with_clause(self, sel["withClause"], scope)
        if sel.get("intoClause"):  # top-level SELECT INTO is ddl_create's; PREPARE refuses it
            self.touched = True  # never sent: it would create a relation pgcloak did not plan
            raise CloakError("42601", "SELECT ... INTO is not allowed here")
        out: list[Col] | None
        if sel.get("op", "SETOP_NONE") != "SETOP_NONE":
            out = self.select(sel["larg"], scope)
            self.select(sel["rarg"], scope)
            self.order_limit(sel, self.output_scope(scope, out), out)
        elif "valuesLists" in sel:
            width = 0
            for row in sel["valuesLists"]:
                items = row["List"]["items"]
                width = len(items)
                self.expr(items, scope)
            out = [Col(f"column{k + 1}", f"column{k + 1}") for k in range(width)]
            self.order_limit(sel, self.output_scope(scope, out), out)
        else:
            out = self.simple_select(sel, scope)
        if sel.get("lockingClause"):
            dml.locking(self, sel["lockingClause"], scope)
        self.outputs[id(sel)] = out
        return out

    @staticmethod
    def output_scope(scope: Scope, out: list[Col] | None) -> Scope:
        """What ORDER BY of a set operation or VALUES sees: just the output columns."""
        return Scope(scope, [Item(None, None, out, rel_visible=False)])

    def order_limit(
        self, sel: Node, scope: Scope, out: list[Col] | None, targets: list[Target] | None = None
    ) -> None:
        if targets is None:
            targets = [Target(c, None) for c in out or ()]
        for sb in sel.get("sortClause", ()):
            self.sort_item(sb["SortBy"]["node"], scope, targets, order_by=True)
        self.expr(sel.get("limitOffset"), scope)
        self.expr(sel.get("limitCount"), scope)

    def simple_select(self, sel: Node, scope: Scope) -> list[Col] | None:
        for f in sel.get("fromClause", ()):
            items, _ = self.from_item(f, scope, list(scope.items))
            scope.items.extend(items)
        windows = [w["WindowDef"] for w in sel.get("windowClause", ())]
        for wd in windows:
            tok = self.ts.at(wd.get("location", 0)) - 2
            if self.ts.name(tok + 1) != "AS":
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
            self.ts.expect(tok, wd["name"])
            scope.windows[wd["name"]] = self.new_alias(wd["name"], tok)
        if sel is self.output_select:  # SELECT t FROM t: the client sees '(1,x)', no names
            for rt in sel.get("targetList", ()):
                kind, body = node_kind(rt["ResTarget"]["val"])
                if kind == "ColumnRef":
                    self.bare_rows.add(id(body))
        targets, complete = self.targets(sel.get("targetList", ()), scope)
        self.expr(sel.get("whereClause"), scope)
        for g in sel.get("groupClause", ()):
            self.group_item(g, scope, targets)
        self.expr(sel.get("havingClause"), scope)
        for wd in windows:
            self.window_def(wd, scope, defining=True)
        for d in sel.get("distinctClause", ()):
            if d:
                self.sort_item(d, scope, targets, order_by=True)
        self.order_limit(sel, scope, None, targets)
        return [t.col for t in targets] if complete else None

    def sort_item(self, node: Node, scope: Scope, targets: list[Target], order_by: bool) -> None:
        """ORDER BY / DISTINCT ON / GROUP BY item: a bare name may mean an output column."""
        kind, body = node_kind(node)
        if kind == "ColumnRef" and len(body["fields"]) == 1 and "String" in body["fields"][0]:
            name = _sval(body["fields"][0])
            if order_by or not self.input_column(scope, name):
                matches = [t for t in targets if t.col.name == name]
                if matches:
                    self.visited.add(body.get("location", 0))
                    tok = self.ts.expect(self.ts.at(body.get("location", 0)), name)
                    if len({t.col.phys for t in matches}) > 1:
                        clause = "ORDER BY" if order_by else "GROUP BY"
                        self.fail(CloakError("42702", f'{clause} "{name}" is ambiguous'), tok)
                    self.rename(tok, matches[0].col.phys)
                    self.colrefs[id(body)] = matches[0].col
                    return
        self.expr(node, scope)

    def group_item(self, node: Node, scope: Scope, targets: list[Target]) -> None:
        kind, body = node_kind(node)
        if kind == "GroupingSet":
            for child in body.get("content", ()):
                self.group_item(child, scope, targets)
            return
        self.sort_item(node, scope, targets, order_by=False)

    def input_column(self, scope: Scope, name: str) -> bool:
        for it in scope.items:
            if it.cols_visible and (
                it.cols is None or it.partial or any(c.name == name for c in it.cols)
            ):
                return True
        return False

    def targets(self, rts: Iterable[Node], scope: Scope) -> tuple[list[Target], bool]:
        """Resolve a SELECT/RETURNING list; (output columns, all of them known)."""
        out: list[Target] = []
        complete = True
        for rt in rts:
            res = rt["ResTarget"]
            val = res["val"]
            kind, body = node_kind(val)
            if kind == "ColumnRef" and "A_Star" in body["fields"][-1]:
                self.bare_rows.add(id(body))  # expanded into columns: no row value
                self.colref(body, scope)
                cols = self.star_cols(body, scope)
                if cols is None:
                    complete = False
                else:
                    out.extend(Target(c, None) for c in cols)
                continue
            self.expr(val, scope)
            enc = encrypted.value_enc(self, val)  # ciphertext passed on as it is
            name = res.get("name")
            if name is not None:
                tok = self.target_alias(self.ts.at(res.get("location", 0)), name)
                out.append(Target(Col(name, self.new_alias(name, tok), enc), res))
                continue
            col, _ = figure_colname(val, self._colref_name, self._sublink_name)
            col = col or Col("?column?", "?column?")
            out.append(Target(col if col.enc == enc else Col(col.name, col.phys, enc), res))
        return out, complete

    def _colref_name(self, body: Node) -> Col | None:
        col = self.colrefs.get(id(body))
        if col is None:
            last = _sval(body["fields"][-1])
            col = Col(last, last)
        return col

    def _sublink_name(self, body: Node) -> Col | None:
        out = self.outputs.get(id(node_kind(body["subselect"])[1]))
        return out[0] if out else None

    def star_cols(self, body: Node, scope: Scope) -> list[Col] | None:
        fields = body["fields"]
        if len(fields) == 1:
            cols: list[Col] = []
            for it in scope.items:
                if it.cols_visible:
                    if it.cols is None or it.partial:
                        return None
                    cols.extend(it.cols)
            return cols
        schema = _sval(fields[0]) if len(fields) == 3 else None
        item = self.find_item(scope, _sval(fields[-2]), schema)
        if item is None or item.cols is None or item.partial:
            return None
        return list(item.cols)

    def target_alias(self, tok: int, name: str) -> int:
        """Token of the output alias of the list item starting at `tok`."""
        ts = self.ts
        last = tok
        i = tok
        while i < self.hi:
            kind = ts.name(i)
            if kind in (_LPAR, "ASCII_91"):
                if ts.match[i] < 0:
                    break
                last = ts.match[i]
                i = last + 1
                continue
            if kind in (_COMMA, _RPAR, "ASCII_93"):
                break
            if kind == "AS":
                return ts.expect(i + 1, name)
            if kind in _LIST_END and i > tok:
                prev = ts.name(i - 1)
                if not (kind == "FROM" and prev == "DISTINCT") and not (
                    kind == "GROUP_P" and prev == "WITHIN"
                ):
                    break
            last = i
            i += 1
        return ts.expect(last, name)

    # -- FROM -----------------------------------------------------------------------

    def from_item(self, node: Node, scope: Scope, prior: list[Item]) -> tuple[list[Item], Item]:
        """Items a FROM entry adds to the namespace, and the one giving its columns."""
        kind, body = node_kind(node)
        if kind == "RangeVar":
            item = self.range_var(body, scope)
            return [item], item
        if kind == "RangeSubselect":
            sub = Scope(scope.parent, list(prior) if body.get("lateral") else [], scope.ctes)
            sel = body["subquery"]
            cols = self.statement(sel, sub)
            item = Item(None, None, cols, rel_visible=False)
            close = self.paren_close(sel)
            if body.get("alias") is not None:
                self.apply_alias(body["alias"], close + 1, item)
            return [item], item
        if kind == "RangeFunction":
            item = dml.range_function(self, body, scope, prior)
            return [item], item
        if kind == "JoinExpr":
            return dml.join(self, body, scope, prior)
        self.unsupported(kind, node)
        item = Item(None, None, None, rel_visible=False)
        return [item], item

    def range_var(self, body: Node, scope: Scope) -> Item:
        schema = body.get("schemaname")
        name = body["relname"]
        parts = [p for p in (body.get("catalogname"), schema, name) if p is not None]
        toks = self.name_tokens(body.get("location", 0), parts)
        self.kept.update(toks[:-1])
        cte = scope.cte(name) if schema is None else None
        rel = None if cte is not None else self.find(schema, name)
        if cte is not None:
            self.edits.set(toks[-1], cte.alias)
            item = Item(name, cte.alias, None if cte.cols is None else list(cte.cols))
        elif rel is not None:
            self.touch(rel)
            self.edits.set(toks[-1], rel.physical)
            cols = relation_cols(rel)
            item = Item(name, rel.physical, cols, rel.schema, cloaked=True, relation=rel)
        elif (seq := self.sequence(schema, name, toks[-1])) is not None:
            item = seq
        else:
            self.uncloaked(schema, name, toks[-1], positioned=True)
            item = Item(name, None, None, schema)
        after = toks[-1] + 1
        if self.ts.name(after) == _STAR:
            after += 1
        if body.get("alias") is not None:
            self.apply_alias(body["alias"], after, item)
        return item

    def sequence(self, schema: str | None, name: str, tok: int) -> Item | None:
        """A cloaked sequence read in FROM (SELECT last_value FROM s), or None."""
        if name not in self.catalog.sensitive_names():  # cheap: a cached set
            return None
        found = lookup(self, schema, name)
        if found is None or found.kind != "s":
            return None
        self.touched = True
        self.sensitive.add(name)
        if self.deferred is not None:
            raise self.deferred
        self.edits.set(tok, found.physical)
        cols = [Col(c, c) for c in _SEQUENCE_COLUMNS]
        return Item(name, found.physical, cols, found.schema, cloaked=True)

    def apply_alias(self, alias: Node, tok: int, item: Item) -> None:
        """Replace `[AS] alias [(col, ...)]` at `tok` and rename the item accordingly."""
        ts = self.ts
        if ts.name(tok) == "AS":
            tok += 1
        name = alias["aliasname"]
        item.qual = self.new_alias(name, ts.expect(tok, name))
        item.refname, item.schema, item.rel_visible = name, None, True
        colnames = [_sval(c) for c in alias.get("colnames", ())]
        if not colnames:
            return
        renamed = [
            Col(cn, self.new_alias(cn, t))
            for cn, t in zip(colnames, self.ident_list(tok + 1, colnames), strict=True)
        ]
        if item.cols is None:
            item.cols, item.partial = renamed, True
        elif len(renamed) > len(item.cols):
            self.fail(
                CloakError(
                    "42P10",
                    f'table "{name}" has {len(item.cols)} columns available but '
                    f"{len(renamed)} columns specified",
                ),
                tok,
            )
        else:
            item.cols = renamed + item.cols[len(renamed) :]

    def paren_close(self, sel: Node) -> int:
        """Closing parenthesis of a subquery in FROM (refuses if it cannot be found)."""
        ts = self.ts
        bounds = self.loc_range(sel)
        if bounds is None:
            raise CloakError("0A000", "pgcloak could not locate a subquery in the statement")
        lo = ts.index_at_or_after(bounds[0])
        hi = ts.index_at_or_after(bounds[1])
        j = lo - 1
        while j >= self.lo:
            kind = ts.name(j)
            if kind == _RPAR and ts.match[j] >= 0:
                j = ts.match[j] - 1
                continue
            if (
                kind == _LPAR
                and ts.match[j] > hi
                and ts.name(j + 1) in _SUBSELECT_START
                and ts.name(j - 1) in _FROM_CONTEXT
            ):
                break
            j -= 1
        else:
            raise CloakError("0A000", "pgcloak could not locate a subquery in the statement")
        while ts.name(j - 1) == _LPAR and ts.match[j - 1] == ts.match[j] + 1:
            j -= 1
        return ts.match[j]

    def new_cte(self, name: str, tok: int) -> Cte:
        return Cte(name, self.new_alias(name, tok), None)
