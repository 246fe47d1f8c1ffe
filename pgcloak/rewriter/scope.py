"""Name scopes of one statement, and PostgreSQL's rules for output column names.

A `Scope` is one query level: the FROM items whose names and columns are visible
there (`Item`), the CTEs defined there, named windows, and the enclosing level
for correlated references. Columns carry both the client's name and the name
the server will see after rewriting, so derived tables, CTEs and joins propagate
physical names exactly the way PostgreSQL propagates column names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pgcloak.rewriter.catalog import EncColumn, Relation

__all__ = [
    "Col",
    "Cte",
    "Item",
    "Node",
    "Scope",
    "Target",
    "figure_colname",
    "node_kind",
    "relation_cols",
]

Node = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Col:
    """A column: the client's (semantic) name, the name the server sees, and, when its
    values are ciphertext of an encrypted column, which (kept through subqueries,
    CTEs, views and aliases as long as the column is passed on as it is)."""

    name: str = field(repr=False)
    phys: str
    enc: EncColumn | None = None


def relation_cols(rel: Relation) -> list[Col]:
    """The columns of a cloaked relation as FROM/DML items see them."""
    return [
        Col(c.name, c.physical)
        if c.policy is None
        else Col(c.name, c.physical, EncColumn.of(c.policy, rel.physical, c.physical))
        for c in rel.columns
    ]


@dataclass(eq=False)
class Item:
    """A FROM item (range table entry) as visible for name resolution.

    `cols` None means the columns are unknown (a relation pgcloak does not cloak);
    `partial` means `cols` are known names but there may be more. `qual` is the
    text that replaces a qualifier naming this item (None: keep the client's).
    """

    refname: str | None
    qual: str | None
    cols: list[Col] | None
    schema: str | None = None
    rel_visible: bool = True
    cols_visible: bool = True
    cloaked: bool = False
    partial: bool = False
    relation: Relation | None = None


@dataclass(eq=False)
class Cte:
    name: str
    alias: str
    cols: list[Col] | None


@dataclass(eq=False)
class Scope:
    parent: Scope | None
    items: list[Item] = field(default_factory=list)
    ctes: dict[str, Cte] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)

    def levels(self) -> Iterator[Scope]:
        level: Scope | None = self
        while level is not None:
            yield level
            level = level.parent

    def cte(self, name: str) -> Cte | None:
        for level in self.levels():
            found = level.ctes.get(name)
            if found is not None:
                return found
        return None

    def window(self, name: str) -> str | None:
        """Window names are local to their SELECT (not visible in subqueries)."""
        return self.windows.get(name)


@dataclass(frozen=True, slots=True)
class Target:
    """One output column of a SELECT list (after `*` expansion); `node` is its ResTarget."""

    col: Col
    node: Node | None


def node_kind(node: Node) -> tuple[str, Node]:
    """('ColumnRef', body) for {'ColumnRef': body}."""
    ((kind, body),) = node.items()
    return kind, body


_SVF_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}

_FIXED_NAMES = {
    "GroupingFunc": "grouping",
    "A_ArrayExpr": "array",
    "RowExpr": "row",
    "CoalesceExpr": "coalesce",
}

Lookup = Callable[[Node], "Col | None"]


def figure_colname(node: Node | None, colref: Lookup, sublink: Lookup) -> tuple[Col | None, int]:
    """FigureColnameInternal (parse_target.c) for a raw expression: (name, strength).

    Computes the client's name and the server's name side by side: `colref` gives
    the recorded names of a resolved ColumnRef, `sublink` the first output column
    of an EXPR sublink's subquery. Strength 0 means "?column?" (no name).
    """
    if node is None:
        return None, 0
    kind, body = node_kind(node)
    if kind == "ColumnRef":
        if "String" in body["fields"][-1]:
            return colref(body), 2
        return None, 0
    if kind == "A_Indirection":
        name = None
        for ind in body.get("indirection", ()):
            if "String" in ind:
                name = ind["String"]["sval"]
        if name is not None:
            return Col(name, name), 2
        return figure_colname(body["arg"], colref, sublink)
    if kind == "FuncCall":
        name = body["funcname"][-1]["String"]["sval"]
        return Col(name, name), 2
    if kind == "A_Expr":
        if body.get("kind") == "AEXPR_NULLIF":
            return Col("nullif", "nullif"), 2
        return None, 0
    if kind == "TypeCast":
        col, strength = figure_colname(body.get("arg"), colref, sublink)
        if strength <= 1:
            names = body["typeName"].get("names", ())
            if names:
                name = names[-1]["String"]["sval"]
                return Col(name, name), 1
        return col, strength
    if kind == "CollateClause":
        return figure_colname(body.get("arg"), colref, sublink)
    if kind == "SubLink":
        link = body.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            return Col("exists", "exists"), 2
        if link == "ARRAY_SUBLINK":
            return Col("array", "array"), 2
        if link == "EXPR_SUBLINK":
            col = sublink(body)
            return (col, 2) if col is not None else (None, 0)
        return None, 0
    if kind == "CaseExpr":
        col, strength = figure_colname(body.get("defresult"), colref, sublink)
        if strength <= 1:
            return Col("case", "case"), 1
        return col, strength
    if kind in _FIXED_NAMES:
        name = _FIXED_NAMES[kind]
        return Col(name, name), 2
    if kind == "MinMaxExpr":
        name = "greatest" if body.get("op") == "IS_GREATEST" else "least"
        return Col(name, name), 2
    if kind == "SQLValueFunction":
        svf = _SVF_NAMES.get(body.get("op", ""))
        return (Col(svf, svf), 2) if svf else (None, 0)
    return None, 0
