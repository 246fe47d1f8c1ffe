"""What the rewriter hands the proxy: per-statement plans, refusals and position maps.

A `Plan` is immutable so one instance can be shared from the plan cache by every
session. It carries the SQL to send (or None for registry-only statements such as
RENAME), the semantic output column names by position (for RowDescription), the
catalog changes a DDL implies (applied by the caller only once the server
accepted the statement), and a map from positions in the rewritten text back to
the client's text (for ErrorResponse 'P').
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgcloak.rewriter.catalog import CatalogChange, EncColumn

__all__ = ["CloakError", "Plan", "PositionMap", "combine"]


class CloakError(Exception):
    """A statement pgcloak refuses; `sqlstate` and `message` go to the client as-is.

    Messages follow PostgreSQL's wording and only ever contain names the client
    itself wrote. `position` is 1-based in characters of the client's query text;
    `hint` and `detail` are PostgreSQL's HINT and DETAIL for the same error, if it
    gives them.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        position: int | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        # str()/repr() show only the SQLSTATE: the message may quote client names.
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.message = message
        self.position = position
        self.hint = hint
        self.detail = detail

    def at(self, position: int | None) -> CloakError:
        """This error with `position` filled in when it has none yet."""
        if self.position is None and position is not None:
            self.position = position
        return self


@dataclass(frozen=True)
class PositionMap:
    """Piecewise map from the rewritten text to the original query text.

    Breakpoint k says: rewritten offset `new[k]` corresponds to original offset
    `orig[k]`; inside an unchanged run (`linear[k]`) offsets advance together,
    inside an edit every rewritten offset maps to the start of the edited token.
    Offsets are 0-based characters; `shift` accounts for stripped leading blanks.
    """

    orig: tuple[int, ...] = ()
    new: tuple[int, ...] = ()
    linear: tuple[bool, ...] = ()
    shift: int = 0

    @classmethod
    def build(
        cls, orig: Sequence[int], new: Sequence[int], linear: Sequence[bool], shift: int = 0
    ) -> PositionMap:
        return cls(tuple(orig), tuple(new), tuple(linear), shift)

    @property
    def breakpoints(self) -> list[tuple[int, int]]:
        """(orig_offset, new_offset) pairs, offsets in the stripped rewritten text."""
        return [(o, n - self.shift) for o, n in zip(self.orig, self.new, strict=True)]

    def to_original(self, position: int) -> int:
        """1-based character position in the rewritten text -> 1-based in the original."""
        if not self.new:
            return position
        p = max(position - 1, 0) + self.shift
        k = max(bisect.bisect_right(self.new, p) - 1, 0)
        if self.linear[k]:
            return self.orig[k] + (p - self.new[k]) + 1
        return self.orig[k] + 1

    def shifted(self, offset: int) -> PositionMap:
        """The same map for a text that starts `offset` characters later (for `combine`)."""
        return PositionMap(self.orig, tuple(n + offset for n in self.new), self.linear, self.shift)


@dataclass(frozen=True)
class Plan:
    """How to run one client statement.

    * `sql`: text to send upstream, or None when the statement is registry-only
      (then `command_tag` is the CommandComplete tag to report).
    * `output_names`: semantic column names by position for the statement's
      RowDescription; None means "leave names as the server sends them".
    * `changes`: catalog changes implied by a DDL, to apply after it succeeds.
    * `cloaked`: the statement touched cloaked objects (and was rewritten).
    * `maps_values`: the statement reads pg_catalog/information_schema, or has a
      literal naming a cloaked relation (``'t'::regclass``, ``nextval('s')``); values
      in its rows that are physical names are to be shown as semantic names.
    * `prepare` / `execute` / `deallocate`: the SQL-level prepared statement that
      PREPARE defines (`output_names` are then its query's output names, to
      remember per session), EXECUTE runs (`output_names` None: use the names
      remembered at PREPARE) or DEALLOCATE drops ("*" for ALL). They depend on
      the statement text only, so such plans are as cacheable as any other.
      `explain_execute`: EXPLAIN EXECUTE's prepared statement, whose plan (its aliases
      and encrypted columns) maps the EXPLAIN output back.
    * `notice_names`: (dummy physical name, client's name) pairs. A missing object
      under IF EXISTS is sent as a fresh dummy physical name (the client's word must
      not reach the server), so the server's NOTICE ("table \"t8aa…\" does not exist,
      skipping") names the dummy; show the client's name there instead. The pairs
      hold semantic names: never log them.
    * `aliases`: (opaque alias, client's name) pairs: the rewriter's names for the
      client's table and column aliases, CTE and window names, which the server's
      EXPLAIN shows. Semantic names too: never log them.
    * Column encryption (docs/encryption-design.md; pgcloak.rewriter.encrypted):
      `value_slots` are (start, end, column) of literals in `sql` to encrypt,
      sorted; `param_slots` ($n, column) parameters to encrypt; `output_columns`
      per output position the column whose ciphertext it carries (None: plain),
      itself None when no position does; `copy_columns` the same for COPY's data
      (the table's columns, or the query's for COPY (query) TO).
    * `copy_header`: for COPY ... TO ... (HEADER) on cloaked objects, the column
      names (semantic: never log them) the proxy writes in place of the server's
      header line.
    """

    statement: str
    source: str = field(repr=False)  # the client's text: never in reprs (logs)
    span: tuple[int, int]
    sql: str | None
    positions: PositionMap = field(default_factory=PositionMap)
    output_names: tuple[str, ...] | None = field(default=None, repr=False)
    changes: tuple[CatalogChange, ...] = ()
    command_tag: str | None = None
    cloaked: bool = False
    prepare: str | None = field(default=None, repr=False)
    execute: str | None = field(default=None, repr=False)
    deallocate: str | None = field(default=None, repr=False)
    explain_execute: str | None = field(default=None, repr=False)
    maps_values: bool = False  # map physical names in its rows (catalog reads, regclass)
    notice_names: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    aliases: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    value_slots: tuple[tuple[int, int, EncColumn], ...] = ()
    param_slots: tuple[tuple[int, EncColumn], ...] = ()
    output_columns: tuple[EncColumn | None, ...] | None = None
    copy_columns: tuple[EncColumn | None, ...] | None = None
    copy_header: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def registry_only(self) -> bool:
        return self.sql is None

    def original_position(self, position: int) -> int:
        """Map an ErrorResponse position (1-based, in `sql`) to the client's query text."""
        return self.positions.to_original(position)


def combine(plans: Sequence[Plan], separator: str = ";\n") -> tuple[str, PositionMap]:
    """Join the SQL of several plans into one query string, with a joint position map.

    Plans without SQL (registry-only) are skipped; the caller runs their changes.
    """
    texts: list[str] = []
    orig: list[int] = []
    new: list[int] = []
    linear: list[bool] = []
    offset = 0
    for plan in plans:
        if plan.sql is None:
            continue
        if texts:
            orig.append(plan.span[0])
            new.append(offset)
            linear.append(False)
            texts.append(separator)
            offset += len(separator)
        pm = plan.positions
        for o, n, lin in zip(pm.orig, pm.new, pm.linear, strict=True):
            skip = pm.shift - n  # > 0: starts inside the stripped leading blanks
            if skip > 0 and not lin:
                continue
            orig.append(o + max(skip, 0))
            new.append(max(n, pm.shift) - pm.shift + offset)
            linear.append(lin)
        texts.append(plan.sql)
        offset += len(plan.sql)
    return "".join(texts), PositionMap.build(orig, new, linear)
