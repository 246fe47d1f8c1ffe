"""Core of the name resolver: bookkeeping, expressions and column references.

`Analyzer` walks pglast's JSON parse tree of one statement with PostgreSQL's
scoping rules and records token edits: cloaked table and column names become
physical names, every alias, CTE name and window name the client wrote becomes an
opaque `aN`. It refuses (CloakError) instead of guessing: a construct it does not
model is only tolerated while the statement has touched no cloaked object, and
errors found before the first cloaked object are deferred until one shows up.
Scopes (FROM, SELECT lists) are built by query.py, DML by dml.py, DDL by ddl*.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pgcloak.registry.names import new_physical_name
from pgcloak.rewriter import literals
from pgcloak.rewriter.catalog import (
    Catalog,
    CatalogChange,
    CloakFilter,
    EncryptRules,
    Relation,
    find_relation,
    uncloaked_exists,
)
from pgcloak.rewriter.hints import missing_column_hint
from pgcloak.rewriter.literals import split_qualified
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Col, Item, Node, Scope, node_kind
from pgcloak.rewriter.tokens import EditSet, TokenStream

if TYPE_CHECKING:
    from pgcloak.rewriter.ddl_check import CheckSpan

__all__ = ["Analyzer", "split_qualified"]

_DOT, _COMMA, _LPAR, _RPAR, _STAR = "ASCII_46", "ASCII_44", "ASCII_40", "ASCII_41", "ASCII_42"
# Expression nodes that hold no names, and those whose children are all expressions.
_LEAVES = frozenset({"A_Const", "ParamRef", "SQLValueFunction", "SetToDefault", "CurrentOfExpr"})
_CHILDREN = {
    "A_Expr": ("lexpr", "rexpr"),
    "BoolExpr": ("args",),
    "CoalesceExpr": ("args",),
    "MinMaxExpr": ("args",),
    "RowExpr": ("args",),
    "GroupingFunc": ("args",),
    "BooleanTest": ("arg",),
    "CollateClause": ("arg",),
    "CaseExpr": ("arg", "args", "defresult"),
    "CaseWhen": ("expr", "result"),
    "A_ArrayExpr": ("elements",),
    "A_Indices": ("lidx", "uidx"),
    "MultiAssignRef": ("source",),
    "SortBy": ("node",),
}


def _sval(node: Node) -> str:
    return str(node["String"]["sval"])


def iter_locations(node: Any) -> Iterator[int]:
    """All non-negative `location` values in a JSON subtree (absent means 0)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "location" and isinstance(value, int) and value >= 0:
                yield value
            elif isinstance(value, dict | list):
                yield from iter_locations(value)
        if "location" not in node and ("relname" in node or "fields" in node):
            yield 0
    elif isinstance(node, list):
        for value in node:
            yield from iter_locations(value)


def iter_relnames(node: Any) -> Iterator[Node]:
    """Every RangeVar body in a JSON subtree."""
    if isinstance(node, dict):
        if "relname" in node:
            yield node
        for value in node.values():
            if isinstance(value, dict | list):
                yield from iter_relnames(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_relnames(value)


class Analyzer(ABC):
    """Resolves one statement (token range [lo, hi)) and collects its edits."""

    def __init__(
        self, ts: TokenStream, catalog: Catalog, search_path: Sequence[str], lo: int, hi: int
    ) -> None:
        self.ts = ts
        self.catalog = catalog
        self.search_path = tuple(search_path)
        self.lo, self.hi = lo, hi
        self.edits = EditSet()
        self.kept: set[int] = set()  # names that are not references (functions, types...)
        self.unresolved: set[int] = set()  # references left to relations pgcloak does not know
        self.visited: set[int] = set()  # locations of the names the resolver handled
        self.sensitive: set[str] = set()
        self.touched = False
        self.deferred: CloakError | None = None
        self.changes: list[CatalogChange] = []
        self.registry_only: str | None = None  # command tag when no SQL is to be sent
        self.colrefs: dict[int, Col] = {}
        self.outputs: dict[int, list[Col] | None] = {}
        self.collect: list[Col] | None = None  # columns referenced (for CHECK names)
        # CHECK constraints of this statement by physical name (pgcloak.rewriter.ddl_check)
        self.check_nodes: dict[str, CheckSpan] = {}
        self.claimed: set[int] = set()
        self.cloak_filter: CloakFilter | None = None  # which new tables get cloaked
        self.encrypt_rules: EncryptRules | None = None  # which new columns get encrypted
        self.encrypted = False  # a relation with encrypted columns is involved
        self.whole_rows: set[int] = set()  # ColumnRefs (id) of whole rows holding ciphertext
        # ColumnRefs (id) where a whole row shows no field names (`SELECT t FROM t`,
        # count(t), t IS NULL, t.* expanded in a target list); see whole_row().
        self.bare_rows: set[int] = set()
        self.output_select: Node | None = None  # the SELECT whose rows the client gets
        self.notice_names: list[tuple[str, str]] = []  # (dummy physical, client's name)
        # A literal naming a cloaked relation was rewritten ('t'::regclass, nextval('s')):
        # what the server prints of it (a regclass, pg_get_serial_sequence) is physical.
        self.names_in_values = False
        # COPY ... TO ... (HEADER): the data's column names as the client knows them.
        self.copy_header: tuple[str, ...] | None = None
        # Opaque alias -> the client's name (aliases, CTE and window names); see new_alias.
        self.aliases: dict[str, str] = {}
        self._alias_of: dict[str, str] = {}

    # -- bookkeeping ----------------------------------------------------------------

    def fail(self, err: CloakError, tok: int | None = None) -> None:
        """Report an error that matters only for statements touching cloaked objects."""
        if tok is not None:
            err.at(self.ts.pos(tok))
        if self.touched:
            raise err
        if self.deferred is None:
            self.deferred = err

    def unsupported(self, construct: str, node: Any = None, tok: int | None = None) -> None:
        if node is not None and self.mentions_cloaked(node):
            self.touched = True
        self.fail(
            CloakError("0A000", f"pgcloak does not support {construct} on cloaked objects"), tok
        )

    def touch(self, rel: Relation) -> None:
        self.touched = True
        self.sensitive.add(rel.name)
        self.sensitive.update(c.name for c in rel.columns)
        if not self.encrypted and any(c.policy is not None for c in rel.columns):
            self.encrypted = True
        if self.deferred is not None:
            raise self.deferred

    def mentions_cloaked(self, node: Any) -> bool:
        for rv in iter_relnames(node):
            rel = self.find(rv.get("schemaname"), rv["relname"])
            if rel is not None:
                return True
        return False

    def find(self, schema: str | None, name: str) -> Relation | None:
        return find_relation(self.catalog, schema, name, self.search_path)

    def uncloaked(
        self,
        schema: str | None,
        name: str,
        tok: int,
        missing_ok: bool = False,
        *,
        kind: str = "t",
        positioned: bool = False,
    ) -> None:
        """Token `tok` names a relation that is not cloaked: keep it, unless it can't exist.

        When the catalog knows it does not exist, refuse like the server would
        (42P01), or with IF EXISTS send a dummy name so the client's word stays here.
        Like PostgreSQL, the error points at the (qualified) name only where parse
        analysis finds it (`positioned`: FROM items, DML targets), not in DDL.
        """
        if uncloaked_exists(self.catalog, schema, name, self.search_path) is False:
            self.touched = True  # the name is not ours to send, even if it names nothing
            if missing_ok:
                self.edits.set(tok, self.dummy(name, kind))
                return
            qualified = f"{schema}.{name}" if schema else name
            pos = self.ts.pos(self.name_start(tok)) if positioned else None
            raise CloakError("42P01", f'relation "{qualified}" does not exist', pos)
        self.kept.add(tok)

    def name_start(self, tok: int) -> int:
        """The first token of the dotted name whose last token is `tok`."""
        while tok >= self.lo + 2 and self.ts.name(tok - 1) == _DOT:
            tok -= 2
        return tok

    def dummy(self, name: str, kind: str) -> str:
        """A fresh physical name standing for the client's `name` of a missing object.

        Sent under IF EXISTS so the client's word stays here; the server's NOTICE
        then names the dummy, which the plan maps back (`Plan.notice_names`).
        """
        physical = new_physical_name(kind)
        self.notice_names.append((physical, name))
        return physical

    def new_alias(self, name: str, tok: int) -> str:
        """Replace the client's alias token `tok` (naming `name`) with an opaque alias.

        One client name gets one opaque name for the whole statement: the renaming is
        a bijection, so SQL resolves the names as it would have resolved the client's,
        and the server's EXPLAIN de-duplicates repeated aliases (`a1`, `a1_1`) exactly
        where a plain server would (`g`, `g_1`); `aliases` maps them back for EXPLAIN.
        """
        alias = self._alias_of.get(name)
        if alias is None:
            alias = self._alias_of[name] = f"a{len(self._alias_of) + 1}"
            self.aliases[alias] = name
        self.sensitive.add(name)
        self.edits.set(tok, alias)
        return alias

    def rename(self, tok: int, new: str) -> None:
        if self.ts.value(tok) == new:
            self.kept.add(tok)
        else:
            self.edits.set(tok, new)

    def name_tokens(self, location: int, parts: Sequence[str]) -> list[int]:
        """Token indices of a dotted name starting at `location`, checked against `parts`."""
        self.visited.add(location)
        first = self.ts.at(location)
        toks = []
        for k, part in enumerate(parts):
            tok = first + 2 * k
            if k and self.ts.name(tok - 1) != _DOT:
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
            toks.append(self.ts.expect(tok, part))
        return toks

    def ident_list(self, open_tok: int, names: Sequence[str]) -> list[int]:
        """Tokens of `( name, name, ... )` starting at the parenthesis `open_tok`."""
        ts = self.ts
        if ts.name(open_tok) != _LPAR:
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        toks = []
        for k, name in enumerate(names):
            tok = open_tok + 1 + 2 * k
            toks.append(ts.expect(tok, name))
            if ts.name(tok + 1) != (_COMMA if k < len(names) - 1 else _RPAR):
                raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        return toks

    def loc_range(self, node: Any) -> tuple[int, int] | None:
        locs = [self.ts.char(loc) for loc in iter_locations(node)]
        return (min(locs), max(locs)) if locs else None

    def check_relname_string(self, value: str, tok: int | None) -> str | None:
        """See literals.relname_string (a string literal naming a cloaked relation)."""
        return literals.relname_string(self, value, tok)

    # -- expressions ----------------------------------------------------------------

    def expr(self, node: Any, scope: Scope) -> None:
        if node is None:
            return
        if isinstance(node, list):
            for child in node:
                self.expr(child, scope)
            return
        if not node:
            return
        kind, body = node_kind(node)
        if kind in _LEAVES:
            return
        fields = _CHILDREN.get(kind)
        if fields is not None:
            for f in fields:
                self.expr(body.get(f), scope)
            return
        handler = getattr(self, f"_x_{kind}", None)
        if handler is None:
            self.unsupported(kind, node)
            return
        handler(body, scope)

    def _x_List(self, body: Node, scope: Scope) -> None:
        self.expr(body.get("items"), scope)

    def _x_ColumnRef(self, body: Node, scope: Scope) -> None:
        self.colref(body, scope)

    def _x_NullTest(self, body: Node, scope: Scope) -> None:
        arg = body.get("arg")
        if isinstance(arg, dict) and "ColumnRef" in arg:
            self.bare_rows.add(id(arg["ColumnRef"]))  # t IS NULL: no field names shown
        self.expr(arg, scope)

    def _x_NamedArgExpr(self, body: Node, scope: Scope) -> None:
        self.kept.add(self.ts.at(body.get("location", 0)))
        self.expr(body.get("arg"), scope)

    def _x_TypeCast(self, body: Node, scope: Scope) -> None:
        self.expr(body.get("arg"), scope)
        self.keep_type(body["typeName"])
        names = body["typeName"].get("names", ())
        if names and _sval(names[-1]) == "regclass":
            found = literals.string_const(body["arg"])
            if found is not None:
                self.check_relname_string(found[0], self.ts.by_start.get(self.ts.char(found[1])))

    def keep_type(self, type_name: Node) -> None:
        tok = self.ts.by_start.get(self.ts.char(type_name.get("location", 0)))
        if tok is not None:
            self.kept.update((tok, tok + 2))

    def _x_TypeName(self, body: Node, scope: Scope) -> None:
        self.keep_type(body)

    def _x_A_Indirection(self, body: Node, scope: Scope) -> None:
        if any("A_Star" in ind for ind in body.get("indirection", ())):
            self.unsupported("(...).* expansion", body)
        self.expr(body.get("arg"), scope)
        for ind in body.get("indirection", ()):
            if "A_Indices" in ind:
                self.expr(ind, scope)

    def _x_SubLink(self, body: Node, scope: Scope) -> None:
        self.expr(body.get("testexpr"), scope)
        self.statement(body["subselect"], scope)

    def _x_FuncCall(self, body: Node, scope: Scope) -> None:
        names = [_sval(n) for n in body["funcname"]]
        tok = self.ts.by_start.get(self.ts.char(body.get("location", 0)))
        if tok is not None:
            self.kept.update(tok + 2 * k for k in range(len(names)))
        args = body.get("args", ())
        if names[-1] == "count" and len(args) == 1 and "ColumnRef" in args[0]:
            self.bare_rows.add(id(args[0]["ColumnRef"]))  # count(t): no field names shown
        literals.relname_args(self, names[-1], args)
        self.expr(args, scope)
        self.expr(body.get("agg_order"), scope)
        self.expr(body.get("agg_filter"), scope)
        over = body.get("over")
        if over is not None:
            self.window_def(over, scope, defining=False)

    # -- windows --------------------------------------------------------------------

    def window_def(self, wd: Node, scope: Scope, defining: bool) -> None:
        ts = self.ts
        loc = ts.at(wd.get("location", 0))
        name, refname = wd.get("name"), wd.get("refname")
        if name is not None and not defining:  # OVER w
            self.window_ref(ts.expect(loc, name), name, scope)
            return
        if refname is not None:  # ( w ORDER BY ... )
            self.window_ref(ts.expect(loc + 1, refname), refname, scope)
        self.expr(wd.get("partitionClause"), scope)
        self.expr(wd.get("orderClause"), scope)
        self.expr(wd.get("startOffset"), scope)
        self.expr(wd.get("endOffset"), scope)

    def window_ref(self, tok: int, name: str, scope: Scope) -> None:
        alias = scope.window(name)
        if alias is None:
            self.fail(CloakError("42704", f'window "{name}" does not exist'), tok)
            return
        self.edits.set(tok, alias)

    # -- column references ----------------------------------------------------------

    def colref(self, body: Node, scope: Scope) -> None:
        ts = self.ts
        fields = body["fields"]
        star = "A_Star" in fields[-1]
        if star and len(fields) == 1 and body.get("location", 0) < 0:
            return  # the * of TABLE name
        names = [_sval(f) for f in (fields[:-1] if star else fields)]
        toks = self.name_tokens(body.get("location", 0), names)
        if star and (ts.name((toks[-1] + 2) if toks else ts.at(body.get("location", 0))) != _STAR):
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        if not names:
            return
        if len(names) == 1 and not star:
            self.colref_bare(body, names[0], toks[0], scope)
            return
        if len(names) > 3 or (len(names) == 3 and star):
            self.unsupported("four-part names", body, toks[0])
            return
        qual = names[-1] if star else names[-2]
        schema = None
        if (len(names) == 3) or (star and len(names) == 2):
            schema = names[0]
        qual_tok = toks[-1] if star else toks[-2]
        item = self.find_item(scope, qual, schema)
        if item is None:
            self.colref_unknown_qualifier(body, names, toks, scope)
            return
        if schema is not None:
            self.kept.add(toks[0])
        if item.qual is not None:
            self.edits.set(qual_tok, item.qual)
        else:
            self.kept.add(qual_tok)
        if item.cloaked and item.relation is not None:
            self.touch(item.relation)
        if star:
            self.whole_row(body, item, f"{qual}.*", qual_tok)
            return
        if item.cols is None and not item.cloaked:
            # Qualified by a relation pgcloak does not cloak: the name is that relation's
            # own column, already visible in the database, so it goes out as written.
            self.kept.add(toks[-1])
            return
        self.column_in_item(item, names[-1], toks[-1], body, f"{qual}.{names[-1]}",
                            hint=(scope, qual), start=toks[0])  # fmt: skip

    def column_in_item(
        self,
        item: Item,
        name: str,
        tok: int,
        body: Node | None,
        label: str,
        *,
        hint: tuple[Scope, str | None] | None = None,
        start: int | None = None,
    ) -> Col | None:
        """Resolve column `name` (token `tok`) of `item`; `label` names it in errors.

        A reference in an expression (`hint`: its scope and qualifier) fails like
        PostgreSQL's parse analysis: at the reference's `start`, with its HINT;
        others (index columns) like its catalog lookups: without a position.
        """
        if item.cols is None:
            self.unresolved.add(tok)
            return None
        matches = [c for c in item.cols if c.name == name]
        if not matches:
            if item.partial:
                self.unresolved.add(tok)
                return None
            err = CloakError("42703", f"column {label} does not exist")
            if hint is not None:
                err.hint = missing_column_hint(hint[0], hint[1], name)
            self.fail(err, (tok if start is None else start) if hint is not None else None)
            return None
        if len(matches) > 1:
            self.fail(
                CloakError("42702", f'column reference "{label}" is ambiguous'),
                tok if start is None else start,
            )
        col = matches[0]
        self.rename(tok, col.phys)
        if body is not None:
            self.colrefs[id(body)] = col
        if self.collect is not None:
            self.collect.append(col)
        return col

    def colref_unknown_qualifier(
        self, body: Node, names: list[str], toks: list[int], scope: Scope
    ) -> None:
        """`a.b` where no FROM item is called `a`: composite field access or an error."""
        unknown = any(it.cols is None or it.partial for lv in scope.levels() for it in lv.items)
        known_col = any(
            it.cols is not None and any(c.name == names[0] for c in it.cols)
            for lv in scope.levels()
            for it in lv.items
            if it.cols_visible
        )
        if known_col:
            self.unsupported("field selection from a composite column", body, toks[0])
        elif unknown:
            self.unresolved.update(toks)
        else:
            qual = names[-2] if len(names) >= 2 else names[0]
            self.fail(CloakError("42P01", f'missing FROM-clause entry for table "{qual}"'), toks[0])

    def colref_bare(self, body: Node, name: str, tok: int, scope: Scope) -> None:
        unknown_seen = False
        for level in scope.levels():
            matches: list[tuple[Item, Col]] = []
            unknown_here = False
            for it in level.items:
                if not it.cols_visible:
                    continue
                if it.cols is None or it.partial:
                    unknown_here = True
                for c in it.cols or ():
                    if c.name == name:
                        matches.append((it, c))
            if matches:
                if len(matches) > 1:
                    self.fail(CloakError("42702", f'column reference "{name}" is ambiguous'), tok)
                if unknown_here or unknown_seen:
                    self.fail(
                        CloakError(
                            "0A000",
                            f'pgcloak cannot tell which relation column "{name}" belongs to; '
                            "qualify it with a table name",
                        ),
                        tok,
                    )
                item, col = matches[0]
                if item.cloaked and item.relation is not None:
                    self.touch(item.relation)
                self.rename(tok, col.phys)
                self.colrefs[id(body)] = col
                if self.collect is not None:
                    self.collect.append(col)
                return
            unknown_seen = unknown_seen or unknown_here
        whole = self.find_item(scope, name, None)
        if whole is not None:  # whole-row reference to a FROM item
            self.whole_row(body, whole, name, tok)
            if whole.qual is not None:
                self.edits.set(tok, whole.qual)
                self.colrefs[id(body)] = Col(name, whole.qual)
            else:
                self.kept.add(tok)
            return
        if unknown_seen:
            self.unresolved.add(tok)
            return
        err = CloakError("42703", f'column "{name}" does not exist')
        err.hint = missing_column_hint(scope, None, name)
        self.fail(err, tok)

    def whole_row(self, body: Node, item: Item, label: str, tok: int) -> None:
        """A whole-row reference (`t`, `t.*`) to a FROM item.

        Rows of relations with encrypted columns hold ciphertext: the encryption pass
        refuses them (`whole_rows`). Otherwise a row whose fields the server knows by
        other names than the client (cloaked columns, opaque aliases) is refused
        wherever those names could show (to_json(t), row_to_json, hstore...): only
        the spots in `bare_rows` print no field names.
        """
        if any(c.enc is not None for c in item.cols or ()):
            self.whole_rows.add(id(body))
            return
        if id(body) in self.bare_rows:
            return
        if item.cloaked or any(c.phys != c.name for c in item.cols or ()):
            self.fail(
                CloakError(
                    "0A000",
                    f'pgcloak does not support the whole-row reference "{label}" in an '
                    "expression: its fields have cloaked or rewritten names; list the columns "
                    "instead",
                ),
                tok,
            )

    def find_item(self, scope: Scope, refname: str, schema: str | None) -> Item | None:
        for level in scope.levels():
            found = [
                it
                for it in level.items
                if it.rel_visible
                and it.refname == refname
                and (schema is None or it.schema == schema)
            ]
            if len(found) > 1:
                self.fail(CloakError("42P09", f'table reference "{refname}" is ambiguous'))
            if found:
                return found[0]
        return None

    @abstractmethod
    def statement(self, node: Node, parent: Scope | None) -> list[Col] | None:
        """Analyze a (sub)statement; QueryAnalyzer implements it (it needs the DML rules)."""
