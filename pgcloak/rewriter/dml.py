"""INSERT / UPDATE / DELETE, CTEs, joins and functions in FROM (helpers of `Analyzer`).

Split from analyze.py only to keep files small; these functions take the
analyzer as their first argument and follow the same rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgcloak.rewriter import encrypted
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, node_kind, relation_cols

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = ["delete", "insert", "join", "locking", "range_function", "update", "with_clause"]

_LPAR, _RPAR, _COMMA = "ASCII_40", "ASCII_41", "ASCII_44"
# Set-returning functions of a base type: one output column named after the function.
_SCALAR_SRFS = frozenset(
    {"generate_series", "generate_subscripts", "unnest", "regexp_split_to_table",
     "string_to_table", "json_array_elements_text", "jsonb_array_elements_text"}
)  # fmt: skip


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


# -- WITH -------------------------------------------------------------------------------


def with_clause(a: Analyzer, wc: Node, scope: Scope) -> None:
    recursive = bool(wc.get("recursive"))
    for node in wc["ctes"]:
        cte = node["CommonTableExpr"]
        if cte.get("search_clause") or cte.get("cycle_clause"):
            a.unsupported("SEARCH/CYCLE clauses", cte)
        name = cte["ctename"]
        tok = a.ts.expect(a.ts.at(cte.get("location", 0)), name)
        entry = a.new_cte(name, tok)
        colnames = [_sval(c) for c in cte.get("aliascolnames", ())]
        renamed = [
            Col(cn, a.new_alias(cn, t))
            for cn, t in zip(colnames, a.ident_list(tok + 1, colnames) if colnames else (),
                             strict=True)
        ]  # fmt: skip
        query = cte["ctequery"]
        kind, body = node_kind(query)
        if recursive and kind == "SelectStmt" and body.get("op") == "SETOP_UNION":
            if body.get("withClause") or body.get("sortClause") or body.get("limitCount"):
                a.unsupported("this form of recursive query", query)
            inner = Scope(scope)
            left = a.select(body["larg"], inner)
            entry.cols = _renamed(left, renamed)
            scope.ctes[name] = entry
            a.select(body["rarg"], inner)
            a.outputs[id(body)] = left
        else:
            entry.cols = _renamed(a.statement(query, scope), renamed)
            scope.ctes[name] = entry


def _renamed(cols: list[Col] | None, renamed: list[Col]) -> list[Col] | None:
    if cols is None:
        return None
    return renamed + cols[len(renamed) :]


def locking(a: Analyzer, clauses: list[Node], scope: Scope) -> None:
    """FOR UPDATE OF name: the names refer to FROM items (aliases or table names)."""
    bodies = [rv["RangeVar"] for c in clauses for rv in c["LockingClause"].get("lockedRels", ())]
    for body in bodies:
        (tok,) = a.name_tokens(body.get("location", 0), [body["relname"]])
        if body.get("schemaname"):
            a.unsupported("schema-qualified FOR UPDATE OF", body, tok)
            continue
        item = a.find_item(scope, body["relname"], None)
        if item is None:
            a.fail(
                CloakError(
                    "42P01",
                    f'relation "{body["relname"]}" in FOR UPDATE clause not found in FROM clause',
                ),
                tok,
            )
        elif item.qual is not None:
            a.edits.set(tok, item.qual)
        else:
            a.kept.add(tok)


# -- FROM items ---------------------------------------------------------------------------


def range_function(a: Analyzer, body: Node, scope: Scope, prior: list[Item]) -> Item:
    """A function in FROM (always LATERAL): only a single plain function call."""
    funcs = body.get("functions", ())
    if body.get("is_rowsfrom") or len(funcs) != 1 or body.get("coldeflist"):
        a.unsupported("ROWS FROM or column definition lists", body)
        return Item(None, None, None)
    pair = funcs[0]["List"]["items"]
    call = pair[0]
    if len(pair) > 1 and pair[1]:
        a.unsupported("column definition lists", body)
    fscope = Scope(scope.parent, list(prior), scope.ctes)
    a.expr(call, fscope)
    kind, fbody = node_kind(call)
    if kind != "FuncCall":
        a.unsupported(f"{kind} in FROM", body)
        return Item(None, None, None)
    names = [_sval(n) for n in fbody["funcname"]]
    ts = a.ts
    open_tok = ts.at(fbody.get("location", 0)) + 2 * len(names) - 1
    if ts.name(open_tok) != _LPAR or ts.match[open_tok] < 0:
        raise CloakError("0A000", "pgcloak could not locate a name in the statement")
    after = ts.match[open_tok] + 1
    if body.get("ordinality"):
        if ts.name(after) != "WITH" or ts.name(after + 1) != "ORDINALITY":
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        after += 2
    fname = names[-1]
    scalar = fname in _SCALAR_SRFS and (fname != "unnest" or len(fbody.get("args", ())) == 1)
    item = Item(fname, None, None)
    if scalar:  # one column, named after the function (or the alias, below)
        item.cols = [Col(fname, fname)]
        if body.get("ordinality"):
            item.cols.append(Col("ordinality", "ordinality"))
    alias = body.get("alias")
    if alias is not None:
        a.apply_alias(alias, after, item)
        if scalar and not alias.get("colnames") and item.cols and item.qual is not None:
            item.cols[0] = Col(alias["aliasname"], item.qual)
    return item


def _using_tokens(a: Analyzer, start: int, names: list[str]) -> list[int]:
    ts = a.ts
    for i in range(start, a.hi):
        if ts.name(i) != "USING" or i in a.claimed or ts.name(i + 1) != _LPAR:
            continue
        toks = [i + 2 + 2 * k for k in range(len(names))]
        if (
            all(ts.value(t) == n for t, n in zip(toks, names, strict=True))
            and ts.name(toks[-1] + 1) == _RPAR
        ):
            a.claimed.add(i)
            return toks
    raise CloakError("0A000", "pgcloak could not locate a name in the statement")


def join(a: Analyzer, body: Node, scope: Scope, prior: list[Item]) -> tuple[list[Item], Item]:
    if body.get("alias") or body.get("join_using_alias"):
        a.unsupported("aliases on JOIN", body)
    l_items, l_out = a.from_item(body["larg"], scope, prior)
    r_items, r_out = a.from_item(body["rarg"], scope, prior + l_items)
    lcols = None if l_out.partial else l_out.cols
    rcols = None if r_out.partial else r_out.cols
    partial = lcols is None or rcols is None
    using = [_sval(s) for s in body.get("usingClause", ())]
    natural = bool(body.get("isNatural"))
    known = lcols is not None and rcols is not None
    if natural and known:
        assert lcols is not None and rcols is not None
        rnames = {c.name for c in rcols}
        using = [c.name for c in lcols if c.name in rnames]
    elif natural and (lcols is not None or rcols is not None):
        a.unsupported("NATURAL JOIN with a relation pgcloak does not know", body)
    merged: list[Col] = []
    if using and not natural:
        bounds = a.loc_range(body["rarg"])
        start = a.ts.index_at_or_after(bounds[0]) if bounds else a.lo
        toks = _using_tokens(a, start, using)
    else:
        toks = []
    for k, name in enumerate(using):
        tok = toks[k] if toks else None
        if not known:
            if lcols is not None or rcols is not None:
                a.unsupported("USING with a relation pgcloak does not know", body, tok)
            if tok is not None:
                a.unresolved.add(tok)
            continue
        assert lcols is not None and rcols is not None
        left = [c for c in lcols if c.name == name]
        right = [c for c in rcols if c.name == name]
        for side, found in (("left", left), ("right", right)):
            if len(found) != 1:
                what = "does not exist in" if not found else "appears more than once in"
                a.fail(
                    CloakError(
                        "42703" if not found else "42702",
                        f'column "{name}" specified in USING clause {what} {side} table',
                    ),
                    None,  # PostgreSQL gives no position here
                )
        if not left or not right:
            continue
        if left[0].phys != right[0].phys:
            a.unsupported("USING/NATURAL joins of columns with different physical names", body, tok)
        if left[0].enc is not None or right[0].enc is not None:
            encrypted.check_join(a, left[0], right[0], tok)
        merged.append(Col(name, left[0].phys, left[0].enc))
        if tok is not None:
            a.rename(tok, left[0].phys)
    quals = body.get("quals")
    if quals is not None:
        a.expr(quals, Scope(scope.parent, l_items + r_items, scope.ctes))
    # Columns of the join; with an unknown side, the known ones still resolve, but
    # the item is partial, so a name it has cannot be proven unambiguous.
    names = set(using)
    cols = merged + [c for c in l_out.cols or () if c.name not in names]
    cols += [c for c in r_out.cols or () if c.name not in names]
    for it in l_items + r_items:
        it.cols_visible = False
    joined = Item(None, None, cols, rel_visible=False, partial=partial)
    return [*l_items, *r_items, joined], joined


# -- INSERT / UPDATE / DELETE ------------------------------------------------------------


def _target(a: Analyzer, rv: Node, scope: Scope) -> Item:
    """The target table of a DML statement (never a CTE)."""
    schema = rv.get("schemaname")
    name = rv["relname"]
    parts = [p for p in (rv.get("catalogname"), schema, name) if p is not None]
    toks = a.name_tokens(rv.get("location", 0), parts)
    a.kept.update(toks[:-1])
    rel = a.find(schema, name)
    if rel is not None:
        a.touch(rel)
        a.edits.set(toks[-1], rel.physical)
        cols = relation_cols(rel)
        item = Item(name, rel.physical, cols, rel.schema, cloaked=True, relation=rel)
    else:
        a.uncloaked(schema, name, toks[-1], positioned=True)
        item = Item(name, None, None, schema)
    after = toks[-1] + 1
    if a.ts.name(after) == "ASCII_42":
        after += 1
    if rv.get("alias") is not None:
        a.apply_alias(rv["alias"], after, item)
    return item


def _set_column(a: Analyzer, target: Item, res: Node) -> None:
    """A column named in an INSERT column list or on the left of SET."""
    name = res["name"]
    tok = a.ts.expect(a.ts.at(res.get("location", 0)), name)
    for ind in res.get("indirection", ()):
        if "A_Indices" not in ind:
            a.unsupported("assignment to a field of a composite column", res, tok)
    if target.cols is None:
        a.unresolved.add(tok)
        return
    col = next((c for c in target.cols if c.name == name), None)
    if col is None:
        relname = target.relation.name if target.relation is not None else name
        a.fail(CloakError("42703", f'column "{name}" of relation "{relname}" does not exist'), tok)
        return
    a.rename(tok, col.phys)


def _assignments(a: Analyzer, target: Item, rts: list[Node], scope: Scope) -> None:
    for rt in rts:
        res = rt["ResTarget"]
        _set_column(a, target, res)
        a.expr(res.get("indirection"), scope)
        kind, val = node_kind(res["val"])
        if kind == "MultiAssignRef":
            if val.get("colno") == 1:
                a.expr(val["source"], scope)
        else:
            a.expr(res["val"], scope)


def _returning(a: Analyzer, body: Node, scope: Scope) -> list[Col] | None:
    clause = body.get("returningClause")
    if clause is not None and clause.get("options"):
        a.unsupported("RETURNING WITH (OLD/NEW)", body)
    exprs = clause.get("exprs", ()) if clause is not None else body.get("returningList", ())
    if not exprs:
        return []
    targets, complete = a.targets(exprs, scope)
    return [t.col for t in targets] if complete else None


def insert(a: Analyzer, body: Node, parent: Scope | None) -> list[Col] | None:
    scope = Scope(parent)
    if body.get("withClause"):
        with_clause(a, body["withClause"], scope)
    target = _target(a, body["relation"], scope)
    for rt in body.get("cols", ()):
        _set_column(a, target, rt["ResTarget"])
    if body.get("selectStmt") is not None:
        a.statement(body["selectStmt"], scope)
    scope.items.append(target)
    conflict = body.get("onConflictClause")
    if conflict is not None:
        _on_conflict(a, conflict, target, scope)
    return _returning(a, body, scope)


def _on_conflict(a: Analyzer, occ: Node, target: Item, scope: Scope) -> None:
    ts = a.ts
    infer = occ.get("infer")
    if infer is not None:
        loc = ts.at(infer.get("location", 0))
        if infer.get("conname") is not None:
            name = infer["conname"]
            if ts.name(loc) != "ON" or ts.name(loc + 1) != "CONSTRAINT":
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
            tok = ts.expect(loc + 2, name)
            _constraint_ref(a, target, name, tok)
        elems = [e["IndexElem"] for e in infer.get("indexElems", ())]
        if elems:
            segments = item_starts(a, loc)
            if len(segments) != len(elems):
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
            for elem, seg in zip(elems, segments, strict=True):
                if elem.get("name") is not None:
                    tok = ts.expect(seg, elem["name"])
                    a.column_in_item(target, elem["name"], tok, None, f'"{elem["name"]}"',
                                     hint=(Scope(None, [target]), None), start=loc)  # fmt: skip
                else:
                    a.expr(elem.get("expr"), scope)
        a.expr(infer.get("whereClause"), scope)
    if occ.get("action") == "ONCONFLICT_UPDATE":
        excluded = Item("excluded", None, target.cols, cloaked=target.cloaked)
        excluded.relation = target.relation
        cscope = Scope(scope.parent, [target, excluded], scope.ctes)
        _assignments(a, target, occ.get("targetList", []), cscope)
        a.expr(occ.get("whereClause"), cscope)


def _constraint_ref(a: Analyzer, target: Item, name: str, tok: int) -> None:
    rel = target.relation
    if rel is None:
        a.unresolved.add(tok)
        return
    found = next((c for c in a.catalog.constraints(rel.physical) if c.name == name), None)
    if found is None:
        a.fail(CloakError("42704", f'constraint "{name}" for table "{rel.name}" does not exist'))
        return
    a.sensitive.add(name)
    a.edits.set(tok, found.physical)


def item_starts(a: Analyzer, open_tok: int) -> list[int]:
    """First tokens of the comma-separated items inside the parenthesis at `open_tok`."""
    ts = a.ts
    if ts.name(open_tok) != _LPAR or ts.match[open_tok] < 0:
        raise CloakError("0A000", "pgcloak could not locate a name in the statement")
    close = ts.match[open_tok]
    starts = [open_tok + 1]
    i = open_tok + 1
    while i < close:
        if ts.match[i] > i:
            i = ts.match[i] + 1
            continue
        if ts.name(i) == _COMMA:
            starts.append(i + 1)
        i += 1
    return starts


def update(a: Analyzer, body: Node, parent: Scope | None) -> list[Col] | None:
    scope = Scope(parent)
    if body.get("withClause"):
        with_clause(a, body["withClause"], scope)
    target = _target(a, body["relation"], scope)
    for f in body.get("fromClause", ()):
        items, _ = a.from_item(f, scope, list(scope.items))
        scope.items.extend(items)
    scope.items.insert(0, target)
    _assignments(a, target, body.get("targetList", []), scope)
    a.expr(body.get("whereClause"), scope)
    return _returning(a, body, scope)


def delete(a: Analyzer, body: Node, parent: Scope | None) -> list[Col] | None:
    scope = Scope(parent)
    if body.get("withClause"):
        with_clause(a, body["withClause"], scope)
    target = _target(a, body["relation"], scope)
    for f in body.get("usingClause", ()):
        items, _ = a.from_item(f, scope, list(scope.items))
        scope.items.extend(items)
    scope.items.insert(0, target)
    a.expr(body.get("whereClause"), scope)
    return _returning(a, body, scope)
