"""Entry point: SQL text + catalog state in, one Plan per statement out; plus the plan cache.

Flow per statement: parse (pglast, the real PostgreSQL grammar), analyze names
(analyze.py / dml.py / ddl*.py), then either return the text unchanged apart from
comment stripping (the statement touched nothing cloaked) or apply the edits and
run a last leak check: no identifier the edits did not account for may spell a
cloaked or client-declared name. Anything doubtful raises CloakError; nothing is
ever half-rewritten.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from pglast import parser

from pgcloak.rewriter import (
    copy_merge,
    ddl,
    ddl_alter,
    ddl_create,
    ddl_index,
    ddl_misc,
    ddl_view,
    encrypted,
    prepare,
)
from pgcloak.rewriter.catalog import DEFAULT_SEARCH_PATH, Catalog, CloakFilter, EncryptRules
from pgcloak.rewriter.overlay import OverlayCatalog
from pgcloak.rewriter.plan import CloakError, Plan
from pgcloak.rewriter.query import QueryAnalyzer
from pgcloak.rewriter.scope import node_kind
from pgcloak.rewriter.template import Template, shape_of
from pgcloak.rewriter.tokens import EditSet, TokenStream

__all__ = ["Rewriter", "plan_query"]

# Statements that cannot name a table or column: sent as they are (minus comments).
_PASSTHROUGH = frozenset(
    {"TransactionStmt", "VariableSetStmt", "VariableShowStmt", "DiscardStmt", "ListenStmt",
     "UnlistenStmt", "NotifyStmt", "CheckPointStmt", "DeallocateStmt"}
)  # fmt: skip
_QUERIES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_ANCHORED = re.compile(r"\^\((.*)\)\$")


def _parse(sql: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Statements of `sql`, plus the byte locations of every ColumnRef and RangeVar.

    The locations are collected while decoding (cheaper than walking the tree again);
    they back the check that the resolver handled every name.
    """
    names: list[int] = []

    def hook(node: dict[str, Any]) -> dict[str, Any]:
        if "relname" in node or "fields" in node:
            names.append(node.get("location", 0))
        return node

    try:
        tree = json.loads(parser.parse_sql_json(sql), object_hook=hook)
    except parser.ParseError as exc:
        message = str(exc.args[0]) if exc.args else "syntax error"
        pos = exc.args[1] + 1 if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        # The scanner's own errors keep PostgreSQL's SQLSTATEs (E'\\xe9' in UTF-8: 22021).
        sqlstate = "22021" if message.startswith("invalid byte sequence") else "42601"
        raise CloakError(sqlstate, message, pos) from None
    stmts: list[dict[str, Any]] = tree.get("stmts", [])
    return stmts, sorted(names)


def plan_query(
    sql: str,
    catalog: Catalog,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    cloak_filter: CloakFilter | None = None,
    encrypt_rules: EncryptRules | None = None,
) -> tuple[Plan, ...]:
    """Plan every statement of a query string (no caching; see Rewriter).

    `cloak_filter(schema, table)` says whether a new table is to be cloaked (default:
    every one); tables it declines are created as written, like temporary tables.
    `encrypt_rules(schema, table, column)` says whether a new column is to be
    encrypted: (mode, key group or None), or None (default: none is).
    """
    stmts, names = _parse(sql)
    ts = TokenStream(sql)
    plans: list[Plan] = []
    current = catalog
    overlay: OverlayCatalog | None = None
    for raw in stmts:
        loc = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        stop = loc + length if length else len(sql.encode())
        stmt_names = names[bisect.bisect_left(names, loc) : bisect.bisect_left(names, stop)]
        start = ts.char(loc)
        end = ts.char(loc + length) if length else len(sql)
        lo = ts.index_at_or_after(start)
        hi = ts.index_at_or_after(end)
        try:
            plan = _plan_statement(
                ts, raw["stmt"], current, search_path, start=start, end=end, lo=lo, hi=hi,
                names=stmt_names, cloak_filter=cloak_filter, encrypt_rules=encrypt_rules,
            )  # fmt: skip
        except (KeyError, IndexError, TypeError, ValueError, RecursionError):
            # A parse tree shape the analyzer does not expect: refuse, never guess.
            raise CloakError("0A000", "pgcloak could not analyze this statement") from None
        plan = prepare.finish(plan, raw["stmt"], current)
        plans.append(plan)
        if plan.changes:  # later statements see this one's effect (see overlay.py)
            if overlay is None:
                overlay = OverlayCatalog(catalog)
                current = overlay
            overlay.apply_all(plan.changes)
    return tuple(plans)


# Statement kinds with one analysis function each (the rest is dispatched above/below).
_STATEMENTS: dict[str, Callable[[QueryAnalyzer, dict[str, Any]], None]] = {
    "CreateStmt": ddl.create_table,
    "AlterTableStmt": ddl_alter.alter_table,
    "RenameStmt": ddl_alter.rename,
    "DropStmt": ddl_alter.drop,
    "IndexStmt": ddl_alter.create_index,
    "TruncateStmt": ddl_alter.truncate,
    "VacuumStmt": ddl_alter.vacuum,
    "LockStmt": ddl_alter.lock,
    "CopyStmt": copy_merge.copy,
}


def _plan_statement(
    ts: TokenStream,
    stmt: dict[str, Any],
    catalog: Catalog,
    search_path: Sequence[str],
    *,
    start: int,
    end: int,
    lo: int,
    hi: int,
    names: list[int],
    cloak_filter: CloakFilter | None = None,
    encrypt_rules: EncryptRules | None = None,
) -> Plan:
    kind, body = node_kind(stmt)
    a = QueryAnalyzer(ts, catalog, search_path, lo, hi)
    a.cloak_filter = cloak_filter
    a.encrypt_rules = encrypt_rules
    out = None
    returns_rows = False
    create = ddl_create.handler(kind, body)
    if create is not None:
        create(a, body)  # CREATE TABLE AS, SELECT INTO, sequences (ddl_create.py, ddl_sequence.py)
    elif kind in _QUERIES:
        a.output_select = body if kind == "SelectStmt" else None
        out = a.statement(stmt, None)
        returns_rows = kind == "SelectStmt" or bool(
            (body.get("returningClause") or {}).get("exprs") or body.get("returningList")
        )
    elif kind == "ExplainStmt":
        a.statement(body["query"], None)
    elif (handler := ddl_view.handler(kind, body)) is not None:
        handler(a, body)  # views, COMMENT, GRANT, DROP ... CASCADE (ddl_view.py, ddl_misc.py)
    elif (handler := ddl_index.handler(kind, body)) is not None:
        handler(a, body)  # ALTER INDEX ... RENAME, DROP INDEX
    elif (statement := _STATEMENTS.get(kind)) is not None:
        statement(a, body)
    elif kind in prepare.KINDS:
        out, returns_rows = prepare.analyze(a, kind, body)
    elif kind not in _PASSTHROUGH:
        ddl_misc.check_unmentioned(a, stmt, kind)  # the generic rule
    source = ts.text[start:end]
    if a.touched and a.deferred is not None:
        raise a.deferred
    if not a.touched:
        if kind in _QUERIES and _mentions_catalog(a):
            edits = _catalog_literals(a)
            text, pmap = edits.apply(ts, start, end)
            return Plan(kind, source, (start, end), text, pmap, maps_values=True)
        text, pmap = EditSet().apply(ts, start, end)
        return Plan(kind, source, (start, end), text, pmap)
    if a.registry_only is None:
        _leak_check(a)
        _all_names_resolved(a, names)
    output: tuple[str, ...] | None = None
    if returns_rows:
        if out is None:
            raise CloakError(
                "0A000",
                "pgcloak cannot name the output columns of * over a relation it does not cloak "
                "in a statement on cloaked objects; list the columns",
            )
        output = tuple(c.name for c in out)
    found = encrypted.analyze(
        a, kind, body, stmt, out if returns_rows or kind == "PrepareStmt" else None
    )
    text, pmap = a.edits.apply(ts, start, end)
    notices = tuple(a.notice_names)
    if a.registry_only is not None:
        return Plan(kind, source, (start, end), None, pmap, None, tuple(a.changes),
                    a.registry_only, cloaked=True, notice_names=notices)  # fmt: skip
    plan = Plan(kind, source, (start, end), text, pmap, output, tuple(a.changes), cloaked=True,
                maps_values=a.names_in_values, notice_names=notices,
                aliases=tuple(a.aliases.items()), copy_header=a.copy_header)  # fmt: skip
    return plan if found is None else encrypted.finish(plan, found)


def _mentions_catalog(a: QueryAnalyzer) -> bool:
    ts = a.ts
    return any(ts.value(i) in _CATALOG_SCHEMAS for i in range(a.lo, a.hi))


def _catalog_literals(a: QueryAnalyzer) -> EditSet:
    """In a query over the system catalogs, literals spelling a cloaked relation's name
    (``relname = 'customers'``, psql's ``'^(customers)$'``) are given the physical name,
    so catalog lookups by ORMs, psql and pgbench find the cloaked objects."""
    ts = a.ts
    edits = EditSet()
    for i in range(a.lo, a.hi):
        if ts.toks[i].name != "SCONST":
            continue
        raw = ts.raw(i)
        if len(raw) < 2 or raw[0] != "'" or raw[-1] != "'":
            continue
        value = raw[1:-1].replace("''", "'")
        anchored = _ANCHORED.fullmatch(value)
        name = anchored.group(1) if anchored else value
        if not name or len(name) > 63:
            continue
        for schema in a.search_path:
            physical = a.catalog.relation_physical(schema, name)
            if physical is not None:
                edits.replace[i] = "'" + (f"^({physical})$" if anchored else physical) + "'"
                break
    return edits


def _all_names_resolved(a: QueryAnalyzer, names: list[int]) -> None:
    """Every column reference and relation in the statement went through the resolver."""
    for loc in names:
        if loc >= 0 and loc not in a.visited:
            raise CloakError(
                "0A000",
                "pgcloak does not support a construct of this statement on cloaked objects",
                a.ts.char(loc) + 1,
            )


def _leak_check(a: QueryAnalyzer) -> None:
    ts = a.ts
    relation_names = a.catalog.sensitive_names()
    sens = a.sensitive | set(relation_names)
    for i in range(a.lo, a.hi):
        if ts.toks[i].name != "IDENT" or i in a.edits.replace:
            continue
        value = ts.value(i)
        if i in a.kept and i not in a.unresolved and value not in relation_names:
            continue
        if value in sens:
            raise CloakError(
                "0A000",
                f"pgcloak cannot rewrite every reference to cloaked names in this statement "
                f'(near "{ts.raw(i)}")',
                ts.pos(i),
            )


class Rewriter:
    """Plans with an LRU cache keyed by (SQL text, catalog identity+version, search_path).

    Plans that change the catalog (DDL with fresh physical names) and refusals
    are not cached: DDL must get fresh names each time, and refusals are cheap.
    On a miss, a second cache keyed by the statement's literal-free shape lets
    statements that differ only in their literals share one analysis (template.py).
    """

    def __init__(
        self,
        cache_size: int = 1024,
        cloak_filter: CloakFilter | None = None,
        encrypt_rules: EncryptRules | None = None,
    ) -> None:
        self.cache_size = cache_size
        self.cloak_filter = cloak_filter
        self.encrypt_rules = encrypt_rules
        self._cache: OrderedDict[tuple[object, ...], tuple[Plan, ...]] = OrderedDict()
        self._templates: OrderedDict[tuple[object, ...], Template] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.template_hits = 0

    def plan(
        self, sql: str, catalog: Catalog, search_path: Sequence[str] = DEFAULT_SEARCH_PATH
    ) -> tuple[Plan, ...]:
        context = (id(catalog), catalog.version, tuple(search_path))
        key = (sql, *context)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        shape = shape_of(sql)
        tkey: tuple[object, ...] = () if shape is None else (shape.key, *context)
        if shape is not None:
            template = self._templates.get(tkey)
            if template is not None:
                self._templates.move_to_end(tkey)
                self.template_hits += 1
                return (template.instantiate(sql, shape),)
        plans = plan_query(sql, catalog, search_path, self.cloak_filter, self.encrypt_rules)
        if all(not p.changes and p.sql is not None for p in plans):
            self._remember(key, plans)
            if shape is not None and len(plans) == 1 and plans[0].statement in _QUERIES:
                template = Template.build(sql, shape, plans[0])
                if template is not None:
                    self._templates[tkey] = template
                    if len(self._templates) > self.cache_size:
                        self._templates.popitem(last=False)
        return plans

    def _remember(self, key: tuple[object, ...], plans: tuple[Plan, ...]) -> tuple[Plan, ...]:
        self._cache[key] = plans
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return plans

    def template_for(
        self, shape_key: str, catalog: Catalog, search_path: Sequence[str]
    ) -> Template | None:
        """The literal template already built for a statement shape (after `plan`), if any."""
        return self._templates.get((shape_key, id(catalog), catalog.version, tuple(search_path)))

    def clear(self) -> None:
        self._cache.clear()
        self._templates.clear()
