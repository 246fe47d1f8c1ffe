"""Session settings the server does not report, but that change how values are printed.

PostgreSQL sends ParameterStatus only for GUC_REPORT settings (DateStyle, TimeZone,
IntervalStyle, standard_conforming_strings: followed in CloakSession). bytea_output
and extra_float_digits are not reported, yet pgcloak prints decrypted values itself,
so it reads them in-band, in the same round trip as search_path: at session start
(which covers startup options and ALTER ROLE/DATABASE ... SET) and at the next
statement boundary after any statement that may have changed them (`may_change`:
SET, RESET, DISCARD ALL, set_config(), or the end of a transaction or ROLLBACK TO
that undoes one). A SET or RESET also takes effect at its CommandComplete
(`after_set`), for the statements after it in the same simple Query.

Not seen: a function that changes them without naming them (a PL/pgSQL body running
`EXECUTE 'SET ...'` built from pieces, a procedure's own SET): docs/known-issues.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from pglast import parser

from pgcloak.crypto.codecs import SessionFormat

__all__ = ["SETTINGS_SQL", "Unreported", "may_change"]

# One row: search_path (current_schemas), bytea_output, extra_float_digits.
SETTINGS_SQL: Final = (
    "SELECT pg_catalog.current_schemas(false)::text, "
    "pg_catalog.current_setting('bytea_output'), "
    "pg_catalog.current_setting('extra_float_digits')"
)

_NAMES = re.compile(r"search_path|bytea_output|extra_float_digits|set_config", re.IGNORECASE)
_ALL = re.compile(r"\ball\b", re.IGNORECASE)
_SETS = frozenset({"VariableSetStmt", "DiscardStmt"})
_INT = re.compile(r"[+-]?\d{1,6}")
_BYTEA = ("hex", "escape")


def may_change(kind: str, source: str) -> bool:
    """Whether a statement may change search_path or a tracked setting (re-read them).

    Any statement naming one (a DO block, `SELECT set_config(...)`, pg_dump's
    `set_config('search_path', ...)`) counts; a needless re-read costs a round trip.
    """
    if _NAMES.search(source) is not None:
        return True
    return kind in _SETS and _ALL.search(source) is not None


class Unreported:
    """The session's bytea_output and extra_float_digits, and their reset values."""

    __slots__ = ("reset_bytea", "reset_digits")

    def __init__(self) -> None:
        self.reset_bytea: str | None = None  # the values at session start = RESET's
        self.reset_digits: int | None = None

    def read(self, row: Sequence[str | None], fmt: SessionFormat) -> SessionFormat:
        """`fmt` with the values of a SETTINGS_SQL row (the first read is the reset values)."""
        bytea = row[1] if len(row) > 1 else None
        digits_text = row[2] if len(row) > 2 else None
        digits = (
            int(digits_text)
            if digits_text is not None and _INT.fullmatch(digits_text)
            else fmt.extra_float_digits
        )
        if bytea not in _BYTEA:
            bytea = fmt.bytea_output
        if self.reset_bytea is None:
            self.reset_bytea, self.reset_digits = bytea, digits
        return _with(fmt, bytea, digits)

    def after_set(self, kind: str, source: str, fmt: SessionFormat) -> SessionFormat:
        """`fmt` once a SET/RESET/DISCARD succeeded (`kind` is the statement's node name).

        Only forms whose effect is certain: anything else waits for the re-read.
        """
        if kind not in _SETS or not may_change(kind, source):
            return fmt
        try:
            stmts = json.loads(parser.parse_sql_json(source)).get("stmts", ())
        except parser.ParseError:
            return fmt
        node = stmts[0].get("stmt", {}) if len(stmts) == 1 else {}
        if node.get("DiscardStmt", {}).get("target") == "DISCARD_ALL":
            return self._reset(fmt, True, True)
        body = node.get("VariableSetStmt")
        if body is None:
            return fmt
        how, name = body.get("kind"), str(body.get("name", "")).lower()
        if how == "VAR_RESET_ALL":
            return self._reset(fmt, True, True)
        if name not in ("bytea_output", "extra_float_digits"):
            return fmt
        if how in ("VAR_RESET", "VAR_SET_DEFAULT"):
            return self._reset(fmt, name == "bytea_output", name == "extra_float_digits")
        args = body.get("args", ())
        value = _const(args[0]) if how == "VAR_SET_VALUE" and len(args) == 1 else None
        if value is None:
            return fmt
        if name == "bytea_output":
            low = value.lower()
            return _with(fmt, low, fmt.extra_float_digits) if low in _BYTEA else fmt
        if _INT.fullmatch(value) is None:
            return fmt
        return _with(fmt, fmt.bytea_output, int(value))

    def _reset(self, fmt: SessionFormat, bytea: bool, digits: bool) -> SessionFormat:
        return _with(
            fmt,
            self.reset_bytea if bytea and self.reset_bytea is not None else fmt.bytea_output,
            self.reset_digits if digits and self.reset_digits is not None
            else fmt.extra_float_digits,
        )  # fmt: skip


def _const(node: dict[str, Any]) -> str | None:
    """The text of a SET argument (a name, string or integer constant)."""
    const = node.get("A_Const")
    if const is None or const.get("isnull"):
        return None
    if "sval" in const:
        return str(const["sval"].get("sval", ""))
    if "ival" in const:
        return str(const["ival"].get("ival", 0))
    return None


def _with(fmt: SessionFormat, bytea: str, digits: int) -> SessionFormat:
    if fmt.bytea_output == bytea and fmt.extra_float_digits == digits:
        return fmt
    return dataclasses.replace(fmt, bytea_output=bytea, extra_float_digits=digits)
