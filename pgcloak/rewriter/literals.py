"""String literals that name cloaked relations and columns ('customers'::regclass).

In a regclass position, or as the relation argument of functions such as
nextval and pg_relation_size, a literal is a name: it gets the physical name.
What the server prints of such a value (a regclass, pg_get_serial_sequence) is
then physical too, so the plan asks the proxy to map values back
(`Analyzer.names_in_values` -> `Plan.maps_values`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.scope import Node, node_kind
from pgcloak.rewriter.tokens import fold_identifier, quote_ident

if TYPE_CHECKING:
    from pgcloak.rewriter.analyze import Analyzer

__all__ = ["relname_args", "relname_string", "split_qualified", "string_const"]

# Functions whose text arguments name relations (regclass-style references).
_RELNAME_FUNCS = frozenset(
    {"nextval", "currval", "setval", "to_regclass", "pg_get_serial_sequence",
     "pg_relation_size", "pg_total_relation_size", "pg_table_size", "pg_indexes_size",
     "pg_relation_filepath", "pg_relation_filenode", "has_table_privilege",
     "has_column_privilege", "has_sequence_privilege", "has_any_column_privilege"}
)  # fmt: skip
# ... and those whose argument after the relation names one of its columns (literally).
_COLNAME_FUNCS = frozenset({"pg_get_serial_sequence", "has_column_privilege"})
_QUALNAME_PART = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^".\s]+))\s*')


def split_qualified(value: str) -> list[str] | None:
    """'schema.name' / '"Name"' as PostgreSQL's regclass input reads it; None if not a name."""
    parts: list[str] = []
    pos = 0
    while pos <= len(value):
        m = _QUALNAME_PART.match(value, pos)
        if m is None:
            return None
        parts.append(m.group(1).replace('""', '"') if m.group(1) is not None
                     else fold_identifier(m.group(2)))  # fmt: skip
        pos = m.end()
        if pos >= len(value):
            break
        if value[pos] != ".":
            return None
        pos += 1
    return parts if 1 <= len(parts) <= 3 else None


def string_const(node: Node) -> tuple[str, int] | None:
    """(value, location) of a string constant, possibly under casts."""
    kind, body = node_kind(node)
    if kind == "TypeCast":
        return string_const(body["arg"])
    if kind == "A_Const" and "sval" in body:
        return str(body["sval"].get("sval", "")), body.get("location", 0)
    return None


def relname_string(a: Analyzer, value: str, tok: int | None) -> str | None:
    """Rewrite a string literal naming a cloaked relation; its physical name, if cloaked.

    A literal that cannot be located is refused rather than sent as written.
    """
    parts = split_qualified(value)
    if parts is None:
        return None
    schemas: Iterable[str] = a.search_path if len(parts) == 1 else parts[-2:-1]
    for schema in schemas:
        physical = a.catalog.relation_physical(schema, parts[-1])
        if physical is None:
            continue
        a.touched = True
        if tok is None or a.ts.name(tok) != "SCONST":
            raise CloakError(
                "0A000",
                "pgcloak does not support naming cloaked objects in this kind of string "
                "literal (regclass and similar)",
            )
        prefix = f"{quote_ident(parts[-2])}." if len(parts) > 1 else ""
        literal = (prefix + quote_ident(physical)).replace("'", "''")
        a.edits.replace[tok] = f"'{literal}'"
        a.names_in_values = True
        return physical
    return None


def _colname_string(a: Analyzer, table: str, value: str, tok: int | None) -> None:
    """A literal naming a column of cloaked table `table` gets its physical name."""
    rel = a.catalog.relation_by_physical(table)
    col = rel.column(value) if rel is not None else None
    if col is None:
        return  # no such column: the server says so (about the physical table)
    if tok is None or a.ts.name(tok) != "SCONST":
        raise CloakError(
            "0A000", "pgcloak does not support naming cloaked columns in this kind of literal"
        )
    a.edits.replace[tok] = f"'{col.physical}'"


def relname_args(a: Analyzer, func: str, args: Sequence[Node]) -> None:
    """The literal arguments of `func` that name cloaked relations (and their columns)."""
    if func not in _RELNAME_FUNCS:
        return
    table = None  # the cloaked table the previous argument named
    for arg in args:
        found = string_const(arg)
        if found is None:
            table = None
            continue
        tok = a.ts.by_start.get(a.ts.char(found[1]))
        if table is not None and func in _COLNAME_FUNCS:
            _colname_string(a, table, found[0], tok)
            table = None
        else:
            table = relname_string(a, found[0], tok)
