"""Replace physical names by semantic ones in SQL text and server messages.

Used by `pgcloak schema export` (pg_get_*def output) and meant for the proxy's
ErrorResponse/NOTICE mapping. Physical names are 21 random characters, so a
whole-token match is unambiguous in practice; tokens that are not registered are
left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

__all__ = [
    "WORD",
    "closing_quote",
    "quote_ident",
    "unmask_in_literal",
    "unmask_message",
    "unmask_sql",
]

_SIMPLE = re.compile(r"[a-z_][a-z0-9_$]*")
_QUOTE_KEYWORDS = (
    frozenset(RESERVED_KEYWORDS) | set(TYPE_FUNC_NAME_KEYWORDS) | set(COL_NAME_KEYWORDS)
)
# An unquoted SQL word (identifier or keyword) as the lexer reads one.
WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")


def quote_ident(name: str) -> str:
    """Like PostgreSQL's quote_ident(): quote unless lower-case simple and not a keyword."""
    if _SIMPLE.fullmatch(name) and name not in _QUOTE_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def unmask_sql(text: str, names: Mapping[str, str]) -> str:
    """Rewrite registered physical identifiers in SQL `text` to quoted semantic names.

    Understands double-quoted identifiers and single-quoted literals (so
    ``nextval('t..._seq'::regclass)`` becomes ``nextval('customers_id_seq'::regclass)``);
    inside a literal the quoted name has its single quotes doubled.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = closing_quote(text, i, '"')
            ident = text[i + 1 : end].replace('""', '"')
            semantic = names.get(ident)
            out.append(quote_ident(semantic) if semantic is not None else text[i : end + 1])
            i = end + 1
        elif ch == "'":
            end = closing_quote(text, i, "'")
            out.append("'" + unmask_in_literal(text[i + 1 : end], names) + "'")
            i = end + 1
        else:
            m = WORD.match(text, i)
            if m is None:
                out.append(ch)
                i += 1
                continue
            word = m.group(0)
            semantic = names.get(word)
            out.append(quote_ident(semantic) if semantic is not None else word)
            i = m.end()
    return "".join(out)


def closing_quote(text: str, start: int, quote: str) -> int:
    """Index of the quote closing the one at `start` (doubled quotes are inside);
    len(text) when it is not closed."""
    end = start + 1
    n = len(text)
    while end < n:
        if text[end] == quote:
            if end + 1 < n and text[end + 1] == quote:
                end += 2
                continue
            return end
        end += 1
    return n


def unmask_in_literal(body: str, names: Mapping[str, str]) -> str:
    """Physical names inside a string constant (a regclass), quotes doubled for it."""

    def sub(m: re.Match[str]) -> str:
        semantic = names.get(m.group(0))
        if semantic is None:
            return m.group(0)
        return quote_ident(semantic).replace("'", "''")

    return WORD.sub(sub, body)


def unmask_message(text: str, names: Mapping[str, str]) -> str:
    """Rewrite physical names in human-readable text (error messages) to bare semantic names.

    Messages already quote names (``relation "t3f9..." does not exist``), so the
    replacement is the plain semantic name.
    """
    return WORD.sub(lambda m: names.get(m.group(0), m.group(0)), text)
