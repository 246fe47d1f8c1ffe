"""CHECK constraints pgcloak keeps on encrypted columns: stored at DDL, enforced on writes.

At DDL (`resolve_changes`), the trees the rewriter wrote get their constants read
with the column type's input function in the session's settings, as PostgreSQL
folds them when the constraint is created; a check that would reject NULL is
refused (pgcloak does not see every NULL written: omitted columns, DEFAULT).
On writes (`violation`), every value stored into an encrypted column (INSERT,
UPDATE, ON CONFLICT, MERGE, COPY FROM) is tested on its canonical plaintext
before it is encrypted; a failing one is PostgreSQL's 23514 error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace

from pgcloak.crypto.checks import Check, CheckError, resolve
from pgcloak.crypto.codecs import SessionFormat, parse_type
from pgcloak.rewriter.catalog import (
    AddColumn,
    AddConstraint,
    Catalog,
    CatalogChange,
    Column,
    Constraint,
    CreateTable,
    Relation,
)
from pgcloak.rewriter.ddl_check import check_refusal
from pgcloak.rewriter.plan import CloakError

__all__ = ["Violation", "first", "resolve_changes", "violation"]

_COMPILED: dict[tuple[str, int], Check] = {}
_MAX_COMPILED = 1024
# (row, check name, SQLSTATE, message) of a failing check: the least one is reported, as
# PostgreSQL reports the first row's first failing check by name. PostgreSQL's DETAIL
# (the failing row) is left out.
Violation = tuple[int, str, str, str]


def _compiled(tree: str, oid: int) -> Check:
    found = _COMPILED.get((tree, oid))
    if found is None:
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.clear()
        found = _COMPILED[(tree, oid)] = Check.of(json.loads(tree), oid)
    return found


def _type_oid(col: Column) -> int:
    assert col.policy is not None
    return parse_type(col.policy.type_sql)[0]


def violation(
    catalog: Catalog, table: str, column: str, canonical: bytes, oid: int, *, row: int = 0
) -> Violation | None:
    """The error for a value written into table.column (physical) that fails one of the
    checks pgcloak keeps there (by name order, as PostgreSQL tests them), else None."""
    failed: list[str] = []
    for con in catalog.constraints(table):
        if con.check is None or con.columns != (column,):
            continue
        try:
            ok = _compiled(con.check, oid).passes(canonical)
        except ValueError:
            return (row, "", "XX000", "pgcloak could not evaluate a CHECK constraint")
        if not ok:
            failed.append(con.name)
    if not failed:
        return None
    rel = catalog.relation_by_physical(table)
    name = rel.name if rel is not None else table
    first = min(failed)
    return (
        row,
        first,
        "23514",
        f'new row for relation "{name}" violates check constraint "{first}"',
    )


def first(a: Violation | None, b: Violation | None) -> Violation | None:
    """The violation PostgreSQL would report of two."""
    if a is None or b is None:
        return a or b
    return min(a, b)


def _resolve(
    con: Constraint, column: Callable[[str], Column | None], fmt: SessionFormat
) -> Constraint:
    if con.check is None:
        return con
    col = column(con.columns[0])
    if col is None or col.policy is None:
        raise CloakError("XX000", "pgcloak could not find the column of a CHECK constraint")
    mode = col.policy.mode
    try:
        oid = _type_oid(col)
        tree = resolve(json.loads(con.check), oid, fmt)
    except CheckError as exc:
        if exc.sqlstate == "0A000":
            raise check_refusal(col.name, mode, exc.message) from None
        raise CloakError(exc.sqlstate, exc.message, detail=exc.detail) from None
    except ValueError:
        raise check_refusal(col.name, mode, "a type pgcloak cannot compare") from None
    text = json.dumps(tree, separators=(",", ":"))
    if _compiled(text, oid).test(None) is False:
        raise check_refusal(
            col.name, mode, "a test that fails for NULL, which pgcloak does not see written "
            "(declare the column NOT NULL for that)",
        )  # fmt: skip
    return replace(con, check=text)


def _of(
    rel: Relation | None, added: dict[tuple[str, str], Column] | None = None
) -> Callable[[str], Column | None]:
    def look(phys: str) -> Column | None:
        if rel is None:
            return None
        return rel.column_by_physical(phys) or (added or {}).get((rel.physical, phys))

    return look


def resolve_changes(
    changes: Sequence[CatalogChange], catalog: Catalog, fmt: SessionFormat
) -> tuple[CatalogChange, ...]:
    """`changes` with the CHECK trees they add in stored form (CloakError if refused)."""
    out: list[CatalogChange] = []
    added: dict[tuple[str, str], Column] = {}  # columns added earlier in the same statement
    for given in changes:
        change = given
        if isinstance(change, AddColumn):
            added[(change.table, change.column.physical)] = change.column
        if isinstance(change, CreateTable) and any(c.check for c in change.constraints):
            look = _of(change.table)
            cons = tuple(_resolve(c, look, fmt) for c in change.constraints)
            change = replace(change, constraints=cons)
        elif isinstance(change, AddColumn) and any(c.check for c in change.constraints):
            look = _of(catalog.relation_by_physical(change.table), added)
            cons = tuple(_resolve(c, look, fmt) for c in change.constraints)
            change = replace(change, constraints=cons)
        elif isinstance(change, AddConstraint) and change.constraint.check is not None:
            look = _of(catalog.relation_by_physical(change.constraint.table), added)
            change = AddConstraint(_resolve(change.constraint, look, fmt))
        out.append(change)
    return tuple(out)
