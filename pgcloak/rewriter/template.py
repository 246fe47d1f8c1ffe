"""Plan sharing between statements that differ only in their literals.

`SELECT abalance FROM pgbench_accounts WHERE aid = 12345` and `... aid = 678` make
the same edits: the rewriter never changes a literal in a query, so the plan of one
is the plan of the other with the literals swapped. The shape key is the query text
with every literal token replaced by a marker of its kind; the template is the
rewritten text cut at the same literals. Instantiating costs one scan of the
client's text (C code in libpg_query) instead of a parse and an analysis.

Statements whose meaning can hang on a literal's value (regclass casts, functions
taking relation names, system-catalog queries, whose literals may be rewritten) are
never templated, and a template is only kept if every literal reappears unchanged
and in order in the rewritten text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import parser

from pgcloak.rewriter.catalog import EncColumn
from pgcloak.rewriter.plan import Plan, PositionMap

__all__ = ["LiteralShift", "Shape", "Template", "numbers_shape_bytes", "shape_of"]

_LITERALS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST"})
# Words after which a literal may name an object (or whose literals are rewritten).
_DENY = frozenset(
    {"regclass", "regproc", "regprocedure", "regtype", "regnamespace", "regoper", "regrole",
     "pg_catalog", "information_schema", "nextval", "currval", "setval", "to_regclass",
     "pg_get_serial_sequence", "pg_relation_size", "pg_total_relation_size", "pg_table_size",
     "pg_indexes_size", "pg_relation_filepath", "pg_relation_filenode", "has_table_privilege",
     "has_column_privilege", "has_sequence_privilege", "has_any_column_privilege"}
)  # fmt: skip
_MARK = {"SCONST": "\x00SCONST\x00", "ICONST": "\x00NUM\x00", "FCONST": "\x00NUM\x00"}
_MAX_SHAPE = 8192  # longer texts are rare enough not to be worth a second key


@dataclass(frozen=True)
class Shape:
    key: str
    literals: tuple[tuple[int, int], ...]  # [start, end) of each literal in the text


# A lexer for the plain cases (no escapes, comments, dollar quotes or prefixed strings):
# identifiers, quoted identifiers, plain strings, unsigned numbers, anything else. Texts
# it cannot be sure about go to libpg_query's scanner; templates are verified with it.
_FAST = re.compile(
    r"""(?P<i>[A-Za-z_][A-Za-z0-9_]*)|(?P<q>"(?:[^"]|"")*")|(?P<s>'(?:[^']|'')*')"""
    r"|(?P<n>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_.\d]))|(?P<o>[^A-Za-z_\"'\d.]+|\.)"
)
_SLOW_MARKS = ("$", "\\", "/*", "--", "&")


_NUMBER = re.compile(r"(?<![A-Za-z0-9_$.])(?:\d+(?:\.\d*)?|\.\d+)(?![A-Za-z0-9_$.])")
_DENY_RE = re.compile(
    r"(?<![A-Za-z0-9_$])(?:" + "|".join(sorted(_DENY)) + r")(?![A-Za-z0-9_$])", re.IGNORECASE
)


_NUMBER_B = re.compile(_NUMBER.pattern.encode())
_DENY_B = re.compile(_DENY_RE.pattern.encode(), re.IGNORECASE)
_SLOW_B = (b"$", b"\\", b"/*", b"--", b"&", b"'", b'"')
_NUM_MARK_B = b"\x00NUM\x00"


def numbers_shape_bytes(raw: bytes) -> tuple[bytes, list[tuple[int, int]]] | None:
    """The numbers-only shape of a query's raw bytes (the proxy's fast path).

    The key equals `shape_of(raw.decode()).key` encoded, for the texts it accepts
    (ASCII, no quotes, comments, dollar signs or backslashes); None otherwise.
    """
    if not raw.isascii() or any(m in raw for m in _SLOW_B) or _DENY_B.search(raw):
        return None
    spans = [m.span() for m in _NUMBER_B.finditer(raw)]
    if not spans:
        return None
    parts: list[bytes] = []
    prev = 0
    for s, e in spans:
        parts.append(raw[prev:s])
        parts.append(_NUM_MARK_B)
        prev = e
    parts.append(raw[prev:])
    return b"".join(parts), spans


def _numbers_shape(sql: str) -> Shape | None:
    """Shape of a text whose only literals can be plain numbers (no quotes of any kind).

    A number glued to a letter, dot or `$` is left in the key as text: the shape then
    has fewer literals than the scanner sees, and Template.build declines it.
    """
    if _DENY_RE.search(sql) is not None:
        return None
    lits = [m.span() for m in _NUMBER.finditer(sql)]
    if not lits:
        return None
    parts: list[str] = []
    prev = 0
    for s, e in lits:
        parts.append(sql[prev:s])
        parts.append("\x00NUM\x00")
        prev = e
    parts.append(sql[prev:])
    return Shape("".join(parts), tuple(lits))


def _fast_shape(sql: str) -> Shape | bool | None:
    """Shape by the fast lexer; False when the text needs the real scanner."""
    if any(m in sql for m in _SLOW_MARKS):
        return False
    if "'" not in sql and '"' not in sql:
        return _numbers_shape(sql)
    parts: list[str] = []
    lits: list[tuple[int, int]] = []
    prev = 0
    pos = 0
    n = len(sql)
    for m in _FAST.finditer(sql):
        if m.start() != pos:
            return False
        pos = m.end()
        kind = m.lastgroup
        if kind == "i":
            word = m.group().lower()
            if word in _DENY:
                return None
            if word in ("e", "b", "x", "u", "n") and sql.startswith("'", pos):
                return False  # E'...', B'...', X'...', N'...': prefixed strings
        elif kind in {"s", "n"}:
            start = m.start()
            parts.append(sql[prev:start])
            parts.append("\x00SCONST\x00" if kind == "s" else "\x00NUM\x00")
            lits.append((start, pos))
            prev = pos
    if pos != n:
        return False
    if not lits:
        return None
    parts.append(sql[prev:])
    return Shape("".join(parts), tuple(lits))


def shape_of(sql: str) -> Shape | None:
    """The literal-free shape of `sql`, or None when it has no literal or must not share."""
    if len(sql) > _MAX_SHAPE or not sql.isascii():
        return None
    fast = _fast_shape(sql)
    if fast is not False:
        assert not isinstance(fast, bool)
        return fast
    try:
        toks = parser.scan(sql)
    except parser.ParseError:
        return None
    parts: list[str] = []
    lits: list[tuple[int, int]] = []
    prev = 0
    for t in toks:
        if t.name in _LITERALS:
            parts.append(sql[prev : t.start])
            parts.append(_MARK.get(t.name, "\x00" + t.name + "\x00"))
            lits.append((t.start, t.end + 1))
            prev = t.end + 1
        elif t.name == "IDENT" and sql[t.start : t.end + 1].lower() in _DENY:
            return None
    if not lits:
        return None
    parts.append(sql[prev:])
    return Shape("".join(parts), tuple(lits))


class LiteralShift(PositionMap):
    """A template's position map adjusted for literals of other lengths.

    Per literal: its start in the template's rewritten text and in the template's
    client text, its length there and its length now. Literals are identical on
    both sides, so everything after literal k moves by the same delta in both
    texts. Built for every templated statement but consulted only on an error, so
    construction stays a few attribute stores (no dataclass machinery).
    """

    def __init__(
        self,
        base: PositionMap,
        new_starts: tuple[int, ...],
        orig_starts: tuple[int, ...],
        old_lens: tuple[int, ...],
        new_lens: tuple[int, ...],
    ) -> None:
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "lits", (new_starts, orig_starts, old_lens, new_lens))

    def to_original(self, position: int) -> int:
        base: PositionMap = self.__dict__["base"]
        new_starts, orig_starts, old_lens, new_lens = self.__dict__["lits"]
        x = max(position - 1, 0)
        delta = 0
        for new_start, orig_start, old_len, new_len in zip(
            new_starts, orig_starts, old_lens, new_lens, strict=True
        ):
            start = new_start + delta
            if x < start:
                break
            if x < start + new_len:
                return int(orig_start + delta + (x - start) + 1)
            delta += new_len - old_len
        return base.to_original(x - delta + 1) + delta


@dataclass(frozen=True)
class Template:
    plan: Plan
    pieces: tuple[str, ...]  # rewritten text around the literals (len(literals) + 1)
    rewritten_starts: tuple[int, ...]
    original_starts: tuple[int, ...]
    lengths: tuple[int, ...]
    # Value slots (encrypted columns) by literal: (literal index, offset of the slot's
    # start from the literal's (-1 for a '-' sign), column); a slot ends with its literal.
    slots: tuple[tuple[int, int, EncColumn], ...] = ()

    @classmethod
    def build(cls, sql: str, shape: Shape, plan: Plan) -> Template | None:
        """A template from a fresh plan, or None unless every literal survived as written."""
        text = plan.sql
        if text is None or plan.changes or not text.isascii():
            return None
        try:
            toks = [t for t in parser.scan(text) if t.name in _LITERALS]
        except parser.ParseError:
            return None
        if len(toks) != len(shape.literals):
            return None
        pieces: list[str] = []
        prev = 0
        for tok, (s, e) in zip(toks, shape.literals, strict=True):
            if text[tok.start : tok.end + 1] != sql[s:e]:
                return None
            pieces.append(text[prev : tok.start])
            prev = tok.end + 1
        pieces.append(text[prev:])
        ends = {t.end + 1: k for k, t in enumerate(toks)}
        slots = []
        for slot_start, slot_end, enc in plan.value_slots:
            k = ends.get(slot_end)
            if k is None or slot_start > toks[k].start:
                return None  # not a literal token (TRUE/FALSE): no template
            slots.append((k, slot_start - toks[k].start, enc))
        return cls(
            plan,
            tuple(pieces),
            tuple(t.start for t in toks),
            tuple(s for s, _ in shape.literals),
            tuple(e - s for s, e in shape.literals),
            tuple(slots),
        )

    def instantiate(self, sql: str, shape: Shape) -> Plan:
        spans = shape.literals
        lits = [sql[s:e] for s, e in spans]
        pieces = self.pieces
        out = [pieces[0]]
        for k, lit in enumerate(lits):
            out.append(lit)
            out.append(pieces[k + 1])
        plan = self.plan
        new_lens = tuple(e - s for s, e in spans)
        total = sum(new_lens) - sum(self.lengths)
        start, end = plan.span
        # A shallow clone with five fields replaced: dataclasses.replace() re-runs
        # __init__ and costs several times more on this per-statement path.
        clone = object.__new__(Plan)
        fields = clone.__dict__
        fields.update(plan.__dict__)
        fields["source"] = sql[start : end + total]
        fields["span"] = (start, end + total)
        fields["sql"] = "".join(out)
        fields["positions"] = LiteralShift(
            plan.positions, self.rewritten_starts, self.original_starts, self.lengths, new_lens
        )
        if self.slots:  # literal k now starts after the pieces and literals before it
            starts = [0] * len(lits)
            pos = 0
            for k, lit in enumerate(lits):
                pos += len(pieces[k])
                starts[k] = pos
                pos += len(lit)
            fields["value_slots"] = tuple(
                (starts[k] + offset, starts[k] + len(lits[k]), enc) for k, offset, enc in self.slots
            )
        return clone
