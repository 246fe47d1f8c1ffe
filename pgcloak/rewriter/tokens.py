"""Token view of a query string, identifier folding, text edits and the position map.

The rewriter never deparses: it edits the client's text at token boundaries, so
everything it does not understand about formatting, literals and casts is kept
byte-for-byte. pglast's scanner reports *character* offsets (end inclusive) while
parse-tree `location` fields are *byte* offsets into the UTF-8 text; `TokenStream`
converts between the two.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

from pglast import parser

from pgcloak.registry.names import truncate_identifier
from pgcloak.rewriter.plan import CloakError, PositionMap

__all__ = [
    "COMMENT_TOKENS",
    "EditSet",
    "Tok",
    "TokenStream",
    "fold_identifier",
    "quote_ident",
]

COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
KEYWORD_KINDS = frozenset(
    {"UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD", "RESERVED_KEYWORD"}
)


class Tok(Protocol):
    """One significant token as pglast scans it: [start, end] (inclusive) in characters."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


@lru_cache(maxsize=8192)
def fold_identifier(text: str) -> str:
    """The name PostgreSQL makes of an identifier token (case folding, unquoting, 63 bytes).

    Only ASCII letters are folded, as the server does for UTF-8 databases.
    """
    if text.startswith('"'):
        value = text[1:-1].replace('""', '"')
    elif text[:2] in ("U&", "u&"):
        raise CloakError("0A000", 'pgcloak does not support U&"..." identifiers')
    else:
        value = text.translate(_LOWER)
    return truncate_identifier(value)


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@lru_cache(maxsize=4096)
def quote_ident(name: str) -> str:
    """`name` as an identifier token: bare when the scanner reads it back unchanged."""
    if name and name.isascii() and name == name.lower() and '"' not in name:
        try:
            toks = parser.scan(name)
        except parser.ParseError:  # pragma: no cover - defensive
            toks = []
        if len(toks) == 1 and toks[0].name == "IDENT" and toks[0].end == len(name) - 1:
            return name
    return '"' + name.replace('"', '""') + '"'


class TokenStream:
    """Significant tokens of a query, with paren matching and byte/char conversion."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[Tok] = []
        self.comments: list[tuple[int, int]] = []
        toks, comments = self.toks, self.comments
        for raw in parser.scan(text):
            if raw.name in COMMENT_TOKENS:
                comments.append((raw.start, raw.end + 1))
            else:
                toks.append(raw)
        self.by_start = {t.start: i for i, t in enumerate(toks)}
        self.match = [-1] * len(toks)
        self._values: dict[int, str | None] = {}
        stack: list[int] = []
        for i, t in enumerate(toks):
            name = t.name
            if name in ("ASCII_40", "ASCII_91"):
                stack.append(i)
            elif name in ("ASCII_41", "ASCII_93") and stack:
                j = stack.pop()
                self.match[i], self.match[j] = j, i
        self._byte_to_char: list[int] | None = None
        if not text.isascii():
            table: list[int] = []
            for ci, ch in enumerate(text):
                table.extend([ci] * len(ch.encode("utf-8")))
            table.append(len(text))
            self._byte_to_char = table

    def __len__(self) -> int:
        return len(self.toks)

    def char(self, byte_offset: int) -> int:
        if self._byte_to_char is None:
            return byte_offset
        if byte_offset >= len(self._byte_to_char):
            return len(self.text)
        return self._byte_to_char[byte_offset]

    def at(self, byte_location: int) -> int:
        """Index of the token starting at an AST byte location (refuses when there is none)."""
        i = self.by_start.get(self.char(byte_location))
        if i is None:
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        return i

    def index_at_or_after(self, char_pos: int) -> int:
        return bisect.bisect_left(self.toks, char_pos, key=lambda t: t.start)

    def name(self, i: int) -> str:
        return self.toks[i].name if 0 <= i < len(self.toks) else ""

    def is_ident(self, i: int) -> bool:
        """True for tokens that can spell a name (identifiers and keywords)."""
        if not 0 <= i < len(self.toks):
            return False
        t = self.toks[i]
        return t.name in ("IDENT", "UIDENT") or t.kind in KEYWORD_KINDS

    def raw(self, i: int) -> str:
        t = self.toks[i]
        return self.text[t.start : t.end + 1]

    def value(self, i: int) -> str | None:
        """Folded identifier value of token i, None if it is not a name."""
        try:
            return self._values[i]
        except KeyError:
            value = fold_identifier(self.raw(i)) if self.is_ident(i) else None
            self._values[i] = value
            return value

    def expect(self, i: int, name: str) -> int:
        """Check that token i is the identifier `name`; return i (refuse otherwise)."""
        if self.value(i) != name:
            raise CloakError("0A000", "pgcloak could not locate a name in the statement")
        return i

    def pos(self, i: int) -> int:
        """1-based character position of token i (for error reports)."""
        return self.toks[i].start + 1


class EditSet:
    """Replacements of whole tokens plus insertions before tokens, applied in one pass."""

    def __init__(self) -> None:
        self.replace: dict[int, str] = {}  # token index -> new text
        self.insert: dict[int, list[str]] = {}  # token index -> texts inserted before it
        # (first, last) token ranges replaced as a whole, edits inside them dropped
        self.cuts: list[tuple[int, int, str]] = []

    def set(self, i: int, name: str) -> None:
        """Replace token i by the identifier `name` (quoted only if it needs to be)."""
        text = quote_ident(name)
        old = self.replace.get(i)
        if old is not None and old != text:
            raise CloakError("0A000", "pgcloak found conflicting meanings for one name")
        self.replace[i] = text

    def add_before(self, i: int, text: str) -> None:
        self.insert.setdefault(i, []).append(text)

    def cut(self, first: int, last: int, text: str = " ") -> None:
        """Replace tokens first..last (inclusive) by `text`, whatever else was edited there."""
        self.cuts.append((first, last, text))

    def _cut_at(self, i: int) -> tuple[int, int, str] | None:
        for cut in self.cuts:
            if cut[0] <= i <= cut[1]:
                return cut
        return None

    def apply(self, ts: TokenStream, start: int, end: int) -> tuple[str, PositionMap]:
        """Rewrite text[start:end]: edits applied, comments replaced by a space, stripped.

        Returns the new text and a map from its positions to the original text.
        """
        pieces: list[tuple[int, int, str | None]] = []  # (orig_start, orig_end, new or None)
        for cs, ce in ts.comments:
            if start <= cs and ce <= end:
                pieces.append((cs, ce, " "))
        first = ts.index_at_or_after(start)
        for i in range(first, len(ts.toks)):
            t = ts.toks[i]
            if t.start >= end:
                break
            if self.cuts and (cut := self._cut_at(i)) is not None:
                if i == cut[0]:
                    pieces.append((t.start, ts.toks[cut[1]].end + 1, cut[2]))
                continue
            for text in self.insert.get(i, ()):
                pieces.append((t.start, t.start, text))
            new = self.replace.get(i)
            if new is not None:
                pieces.append((t.start, t.end + 1, new))
        pieces.sort(key=lambda p: (p[0], p[1]))
        return _render(ts.text, start, end, pieces)


def _render(
    text: str, start: int, end: int, pieces: Iterable[tuple[int, int, str | None]]
) -> tuple[str, PositionMap]:
    out: list[str] = []
    orig_points: list[int] = []
    new_points: list[int] = []
    exact: list[bool] = []
    pos = start
    length = 0

    def emit(chunk: str, orig: int, linear: bool) -> None:
        nonlocal length
        if not chunk:
            return
        orig_points.append(orig)
        new_points.append(length)
        exact.append(linear)
        out.append(chunk)
        length += len(chunk)

    for ps, pe, new in pieces:
        if ps > pos:
            emit(text[pos:ps], pos, True)
        emit(new or "", ps, False)
        pos = max(pos, pe)
    if pos < end:
        emit(text[pos:end], pos, True)
    rendered = "".join(out)
    lead = len(rendered) - len(rendered.lstrip())
    stripped = rendered.strip()
    pmap = PositionMap.build(orig_points, new_points, exact, shift=lead)
    return stripped, pmap
