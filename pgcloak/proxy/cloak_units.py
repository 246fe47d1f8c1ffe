"""What each request sent upstream means, and the wire parsing the session needs.

A `Unit` is one entry of the session's FIFO (cloak_state.py); `Prepared` is a statement
prepared through the extended protocol as pgcloak planned it. `map_bind_names` and
`result_formats` read Bind messages without decoding them into objects.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pgcloak.proxy.cloak_copy import CopyOptions
from pgcloak.proxy.cloak_rows import RowDecoder
from pgcloak.proxy.wire import bind_parts, frame
from pgcloak.rewriter import CloakError, EncColumn, Plan
from pgcloak.rewriter.template import Template

CHANNEL: Final = "pgcloak_registry"
# Fails parse analysis on any server (42883), in place of a statement pgcloak refuses.
REFUSED_SQL: Final = "SELECT pg_catalog.pgcloak_refused_statement()"

# Unit kinds.
U_STEP: Final = 0  # one statement of a simple Query
U_QEND: Final = 1  # the ReadyForQuery ending a simple Query or FunctionCall
U_PARSE: Final = 2
U_BIND: Final = 3
U_DESCRIBE: Final = 4
U_EXECUTE: Final = 5
U_CLOSE: Final = 6
U_SYNC: Final = 7
U_FUNC: Final = 8
U_INTERNAL: Final = 9  # a whole internal Query, through its ReadyForQuery

_ANCHORED = re.compile(r"\^\((.*)\)\$")

Results = list[list[list[str | None]]]
InternalDone = Callable[[Results, dict[str, str] | None], bytes | None]


class Retry(Exception):
    """Plan the current message again once the registry has been reloaded."""


class Unit:
    """What the responses to one request sent upstream mean."""

    __slots__ = (
        "copy",
        "decoder",
        "emit",
        "enc",
        "explain",
        "explain_plan",
        "formats",
        "hidden",
        "hold",
        "kind",
        "offset",
        "on_done",
        "output",
        "params",
        "plan",
        "refusal",
        "results",
        "simple",
        "source",
        "tag",
        "template",
        "values",
        "write",
    )

    def __init__(
        self,
        kind: int,
        *,
        plan: Plan | None = None,
        offset: int = 0,
        simple: bool = True,
        hidden: bool = False,
    ) -> None:
        self.kind = kind
        self.plan = plan
        self.offset = offset  # characters before this statement in the text sent
        self.simple = simple  # an error skips to the Query's end (else to Sync)
        self.hidden = hidden  # swallow every response
        self.output: tuple[str, ...] | None = None  # RowDescription names by position
        self.explain = False
        self.explain_plan: Plan | None = None  # EXPLAIN EXECUTE: the PREPARE's plan
        self.values = False  # a system-catalog query: map physical names in its rows
        self.enc: tuple[EncColumn | None, ...] | None = None  # encrypted output positions
        self.formats: tuple[int, ...] | None = None  # result formats of encrypted outputs
        self.decoder: RowDecoder | None = None  # built at the first encrypted DataRow
        self.params: dict[int, EncColumn] | None = None  # encrypted parameters ($n)
        self.template: Template | None = None  # fast path: plan = template for `source`
        self.copy: tuple[tuple[EncColumn | None, ...], CopyOptions] | None = None
        self.source: bytes = b""
        self.tag: str | None = None  # CommandComplete tag to report instead
        self.hold = False  # keep the CommandComplete until the registry write completes
        self.write = False  # a registry write
        self.emit: bytes | None = None  # sent to the client when this unit completes
        self.refusal: CloakError | None = None
        self.results: Results | None = None
        self.on_done: InternalDone | None = None


@dataclass
class Prepared:
    """A statement prepared through the extended protocol, as pgcloak planned it."""

    plan: Plan | None
    output: tuple[str, ...] | None = None
    tag: str | None = None  # registry-only: the tag to report
    writes: str | None = None  # DO block to run after the first Execute (DDL)
    explain: bool = False
    explain_plan: Plan | None = None  # EXPLAIN EXECUTE: the PREPARE's plan
    values: bool = False
    enc: tuple[EncColumn | None, ...] | None = None  # encrypted output positions
    params: dict[int, EncColumn] | None = None  # encrypted parameters ($n)
    copy: tuple[tuple[EncColumn | None, ...], CopyOptions] | None = None
    param_oids: list[int] = dataclasses.field(default_factory=list)  # client-declared types
    settings: bool = False  # may change search_path/bytea_output...: re-read after Execute


def map_bind_names(
    buf: bytes, pos: int, end: int, physical: Callable[[str], str | None]
) -> bytes | None:
    """A Bind for a system-catalog query with text parameters naming cloaked relations
    replaced by their physical names (``relname = $1``); None when nothing changed."""
    bind = bind_parts(buf, pos, end)
    params: list[bytes] = []
    changed = False
    for k, raw in enumerate(bind.values):
        value, new = raw, None
        if value is not None and bind.format_of(k) == 0 and 0 < len(value) <= 130:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                text = ""
            anchored = _ANCHORED.fullmatch(text)
            found = physical(anchored.group(1) if anchored else text) if text else None
            if found is not None:
                new = (f"^({found})$" if anchored else found).encode()
        if new is not None:
            changed = True
            value = new
        params.append(
            b"\xff\xff\xff\xff" if value is None else len(value).to_bytes(4, "big") + value
        )
    if not changed:
        return None
    head = buf[pos + 5 : bind.params_at]
    return frame(b"B", head + b"".join(params) + buf[bind.tail : end])


def result_formats(buf: bytes, pos: int, end: int, columns: int) -> tuple[int, ...]:
    """The result-column format codes a Bind asks for, one per column."""
    i = buf.index(b"\0", pos + 5, end)
    p = buf.index(b"\0", i + 1, end) + 1
    nfmt = int.from_bytes(buf[p : p + 2], "big")
    p += 2 + 2 * nfmt
    nparams = int.from_bytes(buf[p : p + 2], "big")
    p += 2
    for _ in range(nparams):
        ln = int.from_bytes(buf[p : p + 4], "big", signed=True)
        p += 4 + max(ln, 0)
    nres = int.from_bytes(buf[p : p + 2], "big")
    codes = [int.from_bytes(buf[p + 2 + 2 * k : p + 4 + 2 * k], "big") for k in range(nres)]
    if nres == 0:
        return (0,) * columns
    if nres == 1:
        return (codes[0],) * columns
    return tuple(codes)
