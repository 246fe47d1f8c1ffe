"""Per-type statements of the encryption differential (tests/test_encrypt_differential.py).

Two tables hold one column of every encryptable type (tests/encrypt_support.py
`TYPES`) next to plain ones: `tm_det` with every column deterministic, `tm_rnd`
with every column randomized. For each type the corpus stores values in every
form a client writes them (multi-row VALUES of literals with RETURNING, `CAST`
and `::`, NULL, parameters typed in text and binary and untyped text, bad input),
reads them back, and runs what the mode allows on them: equality, IN, GROUP BY,
count(DISTINCT), UPDATE/DELETE by value (deterministic), or by the plain id
(randomized). Ids are `100 * (type number) + n`, so every read is ORDER BY id.
"""

from __future__ import annotations

from typing import Any

from cloak_corpus import Known, Stmt
from encrypt_support import DET, MODES, SHORT, TYPES, TypeCase

TABLES = {mode: f"tm_{SHORT[mode]}" for mode in MODES}


def type_rules() -> dict[str, str | tuple[str, str]]:
    """The `[encrypt]` entries of the two type tables."""
    return {f"{TABLES[m]}.{t.col}": m for m in MODES for t in TYPES}


def _untyped(case: TypeCase) -> str | None:
    """A literal's text as an untyped (unknown-OID) text parameter: its first plain
    quoted literal, unquoted."""
    for lit in case.literals:
        if lit.startswith("'") and lit.endswith("'") and "\\" not in lit:
            return lit[1:-1].replace("''", "'")
    return None


def _values(table: str, rows: list[tuple[int, str, str]], col: str, returning: bool) -> Stmt:
    body = ", ".join(f"({i}, '{tag}', {value})" for i, tag, value in rows)
    ret = f" RETURNING id, tag, {col}" if returning else ""
    return Stmt(f"INSERT INTO {table} (id, tag, {col}) VALUES {body}{ret}")


def _param(table: str, col: str, ident: int, *, tag: str, value: Any, fmt: str) -> Stmt:
    return Stmt(
        f"INSERT INTO {table} (id, tag, {col}) VALUES (%t, '{tag}', %{fmt}) RETURNING {col}",
        (ident, value),
    )


def _copies(table: str, col: str, base: int, text: str) -> list[Stmt]:
    """The value as COPY FROM data, text and csv format (and a NULL row in each)."""
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    quoted = '"' + text.replace('"', '""') + '"'
    return [
        Stmt(f"COPY {table} (id, tag, {col}) FROM STDIN",
             copy_in=f"{base + 71}\tcopy\t{escaped}\n{base + 72}\tcopy\t\\N\n"),
        Stmt(f"COPY {table} (id, tag, {col}) FROM STDIN WITH (FORMAT csv)",
             copy_in=f"{base + 73},csv,{quoted}\n{base + 74},csv,\n"),
    ]  # fmt: skip


def _writes(table: str, number: int, case: TypeCase) -> list[Stmt]:
    base, col = 100 * number, case.col
    lits = [(base + i, f"lit{i}", lit) for i, lit in enumerate(case.literals)]
    out = [_values(table, lits, col, returning=True)]
    first = case.literals[0]
    out.append(
        _values(
            table,
            [(base + 40, "cast", f"CAST({first} AS {case.sql})"),
             (base + 41, "colon", f"{first}::{case.sql}"), (base + 42, "null", "NULL"),
             (base + 43, "nullcast", f"NULL::{case.sql}")],
            col, returning=False,
        )
    )  # fmt: skip
    for j, value in enumerate(case.params):
        out.append(_param(table, col, base + 50 + j, tag=f"pt{j}", value=value, fmt="t"))
        if case.binary_params:
            out.append(_param(table, col, base + 60 + j, tag=f"pb{j}", value=value, fmt="b"))
    untyped = _untyped(case)
    if untyped is not None:
        out.append(_param(table, col, base + 70, tag="pu", value=untyped, fmt="t"))
        out += _copies(table, col, base, untyped)
    # E20: psql shows the CONTEXT line ("JSON data, line 1: ...") PostgreSQL adds to bad json.
    e20 = (Known("E20", frozenset({"psql"})),) if case.col in ("c_json", "c_jsonb") else ()
    for k, (bad, _state) in enumerate(case.bad[:2]):
        sql = f"INSERT INTO {table} (id, tag, {col}) VALUES ({base + 80 + k}, 'bad', {bad})"
        out.append(Stmt(sql, known=e20))
    return out


def _reads(table: str, mode: str, number: int, case: TypeCase) -> list[Stmt]:
    base, col = 100 * number, case.col
    span = f"id BETWEEN {base} AND {base + 99}"
    out = [
        Stmt(f"SELECT id, tag, {col} FROM {table} WHERE {span} ORDER BY id"),
        Stmt(f"SELECT count(*), count({col}) FROM {table} WHERE {span} AND {col} IS NULL"),
        Stmt(f"SELECT id FROM {table} WHERE {span} AND {col} IS NOT NULL ORDER BY id"),
    ]
    lits = case.literals
    if mode != DET or not case.equality:
        # Randomized (or no equality): change values by the plain key only.
        out.append(
            Stmt(f"UPDATE {table} SET {col} = {lits[-1]} WHERE id = {base} RETURNING id, {col}")
        )
        out.append(Stmt(f"UPDATE {table} SET {col} = NULL WHERE id = {base + 1}"))
        out.append(Stmt(f"DELETE FROM {table} WHERE id = {base + 2} RETURNING id, {col}"))
        return out
    second = lits[1] if len(lits) > 1 else lits[0]
    # E6: a deterministic double column groups -0 and 0 apart (psql's inlined -0.0 is 0).
    e6 = (Known("E6", frozenset({"psql"})),) if case.col == "c_double" else ()
    out += [
        Stmt(f"SELECT id, tag FROM {table} WHERE {col} = {lits[0]} ORDER BY id"),
        Stmt(f"SELECT id FROM {table} WHERE {col} IN ({lits[0]}, {second}) ORDER BY id"),
        Stmt(f"SELECT id FROM {table} WHERE {span} AND {col} <> {lits[0]} ORDER BY id"),
        Stmt(f"SELECT id FROM {table} WHERE {col} = %t ORDER BY id", (case.params[0],)),
        Stmt(
            f"SELECT {col}, count(*), min(id) FROM {table} WHERE {span} GROUP BY {col} ORDER BY 3",
            known=e6,
        ),
        Stmt(f"SELECT count(DISTINCT {col}) FROM {table} WHERE {span}", known=e6),
        Stmt(f"UPDATE {table} SET tag = 'hit' WHERE {col} = {second} RETURNING id, {col}"),
        Stmt(f"UPDATE {table} SET {col} = {lits[0]} WHERE {col} = %t", (case.params[-1],)),
        Stmt(f"DELETE FROM {table} WHERE {col} IN ({second}) AND {span} RETURNING id"),
    ]
    if case.binary_params:
        out.append(Stmt(f"SELECT id FROM {table} WHERE {col} = %b ORDER BY id", (case.params[0],)))
    return out


def type_corpus() -> list[Stmt]:
    """CREATE both type tables, then per type: writes, reads, and the full table."""
    out: list[Stmt] = []
    cols = ", ".join(f"{t.col} {t.sql}" for t in TYPES)
    for mode in MODES:
        out.append(Stmt(f"CREATE TABLE {TABLES[mode]} (id int PRIMARY KEY, tag text, {cols})"))
    for mode in MODES:
        table = TABLES[mode]
        for number, case in enumerate(TYPES, start=1):
            out += _writes(table, number, case)
            out += _reads(table, mode, number, case)
        out.append(Stmt(f"SELECT * FROM {table} ORDER BY id"))
        out.append(Stmt(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"))
    return out
