"""Token-level helpers of column encryption: refusals, type names, literals and casts.

Encrypted columns are `bytea` on the server, so type names the client wrote for
them are replaced (`CREATE TABLE`) and casts on the values compared with or
stored in them are removed (`$1::varchar` -> `$1`): the proxy applies the
declared type itself. Type names are located by token and then verified by
re-parsing, so a span is only edited when it provably is the whole type name.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from typing import TYPE_CHECKING, Any

from pglast import parser

from pgcloak.rewriter.plan import CloakError, PositionMap
from pgcloak.rewriter.scope import Node

if TYPE_CHECKING:
    from pgcloak.rewriter.analyze import Analyzer

__all__ = [
    "Ctx",
    "blank",
    "cast_keeps_value",
    "literal_range",
    "refusal",
    "rewritten_offset",
    "strip_casts",
    "type_span",
    "type_sql",
]

# How a position uses a value: (verb, suffix) of "pgcloak cannot <verb> column "x"
# encrypted in <mode> mode<suffix>".
Ctx = tuple[str, str]

_LPAR, _LBRACKET, _DOT = "ASCII_40", "ASCII_91", "ASCII_46"
_SOFT_KEYWORDS = frozenset({"UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD"})
_TYPE_RESERVED = frozenset({"WITH", "ARRAY", "TO"})  # timestamp WITH TIME ZONE, int ARRAY, ...
_LITERALS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "TRUE_P", "FALSE_P"})
_NUMBERS = frozenset({"ICONST", "FCONST"})
_NO_SPACE_BEFORE = frozenset({"ASCII_40", "ASCII_41", "ASCII_91", "ASCII_93", "ASCII_44", _DOT})
_NO_SPACE_AFTER = frozenset({"ASCII_40", "ASCII_91", "ASCII_44", _DOT})
_MAX_TYPE_TOKENS = 24
# One string token without continuation ('a'<newline>'b' scans as one token): plain,
# E'' (backslash escapes), B''/X'' bit strings, or dollar-quoted.
_ONE_STRING = re.compile(
    r"'(?:[^']|'')*'|[eE]'(?:[^'\\]|\\.|'')*'|[bBxX]'[^']*'|(\$[^$]*\$).*\1", re.DOTALL
)


def refusal(ctx: Ctx, name: str, mode: str, position: int | None = None) -> CloakError:
    """The 0A000 refusal of an operation on an encrypted column (names the column and mode)."""
    verb, suffix = ctx
    return CloakError(
        "0A000", f'pgcloak cannot {verb} column "{name}" encrypted in {mode} mode{suffix}', position
    )


def _locate_error() -> CloakError:
    return CloakError("0A000", "pgcloak could not locate a type name or literal in the statement")


def blank(a: Analyzer, tok: int, text: str) -> None:
    """Replace token `tok` by `text` ("" removes it); refuses conflicting edits."""
    old = a.edits.replace.get(tok)
    if old is not None and old != text:
        raise CloakError("0A000", "pgcloak found conflicting meanings for one name")
    a.edits.replace[tok] = text


# -- type names -------------------------------------------------------------------------


def _strip_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_locations(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _parses_as(text: str, expected: Any) -> bool:
    """Whether `SELECT NULL::<text>` is exactly a cast to the type name `expected`."""
    try:
        tree = json.loads(parser.parse_sql_json(f"SELECT NULL::{text}"))
    except parser.ParseError:
        return False
    stmts = tree.get("stmts", [])
    if len(stmts) != 1:
        return False
    sel = stmts[0]["stmt"].get("SelectStmt", {})
    targets = sel.get("targetList", [])
    if len(targets) != 1 or set(sel) - {"targetList", "limitOption", "op"}:
        return False
    res = targets[0]["ResTarget"]
    cast = res.get("val", {}).get("TypeCast")
    if res.get("name") is not None or cast is None:
        return False
    if not cast.get("arg", {}).get("A_Const", {}).get("isnull"):
        return False
    return bool(_strip_locations(cast["typeName"]) == expected)


def type_span(a: Analyzer, type_name: Node) -> tuple[int, int]:
    """First and last token of a type name as written (`numeric(10, 2)`, `int4[]`,
    `timestamp(3) with time zone`), checked by re-parsing the span."""
    ts = a.ts
    first = ts.at(type_name.get("location", 0))
    i, last = first, first - 1
    while i < min(a.hi, first + _MAX_TYPE_TOKENS):
        tok = ts.toks[i]
        if tok.name in (_LPAR, _LBRACKET):
            if i == first or ts.match[i] < 0:
                break
            last = i = ts.match[i]
            i += 1
            continue
        if tok.name == _DOT:
            i += 1
            continue
        if tok.name in ("IDENT", *_TYPE_RESERVED) or tok.kind in _SOFT_KEYWORDS:
            last = i
            i += 1
            continue
        break
    expected = _strip_locations(type_name)
    for end in range(last, first - 1, -1):
        if _parses_as(ts.text[ts.toks[first].start : ts.toks[end].end + 1], expected):
            return first, end
    raise _locate_error()


def type_sql(a: Analyzer, first: int, last: int) -> str:
    """The type name of tokens first..last as written, normalized: lower case outside
    quotes, single spaces between words, none around parentheses, brackets and commas
    (`NUMERIC(10, 2)` -> `numeric(10,2)`)."""
    ts = a.ts
    parts: list[str] = []
    prev = ""
    for i in range(first, last + 1):
        name, raw = ts.name(i), ts.raw(i)
        value = ts.value(i) if ts.is_ident(i) and not raw.startswith('"') else None
        if parts and name not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(value if value is not None else raw)
        prev = name
    return "".join(parts)


# -- literals and casts -----------------------------------------------------------------


def literal_range(a: Analyzer, const: Node) -> tuple[int, int]:
    """[start, end) in characters of the client's text of an A_Const's literal.

    One literal token (strings in any quoting, numbers, bit strings, TRUE/FALSE),
    or '-' directly followed by a number token.
    """
    ts = a.ts
    tok = ts.at(const.get("location", 0))
    last = tok
    if ts.name(tok) == "ASCII_45":
        last = tok + 1
        if ts.name(last) not in _NUMBERS or ts.toks[last].start != ts.toks[tok].end + 1:
            raise CloakError(
                "0A000", "pgcloak does not support a space after the sign of a negative literal "
                "for an encrypted column",
                ts.pos(tok),
            )  # fmt: skip
    elif ts.name(tok) not in _LITERALS:
        raise CloakError(
            "0A000", "pgcloak does not support this form of literal for an encrypted column",
            ts.pos(tok),
        )  # fmt: skip
    raw = ts.raw(tok)
    if ts.name(tok) in ("SCONST", "BCONST", "XCONST") and not _ONE_STRING.fullmatch(raw):
        raise CloakError(
            "0A000",
            "pgcloak does not support continued string literals for encrypted columns",
            ts.pos(tok),
        )
    return ts.toks[tok].start, ts.toks[last].end + 1


def array_range(a: Analyzer, array: Node) -> tuple[int, int]:
    """[start, end) of an `ARRAY[...]` constructor of literals (each element checked as
    `literal_range` checks a literal; NULL elements need no check)."""
    ts = a.ts
    tok = ts.at(array.get("location", 0))
    bracket = tok + 1
    if ts.name(tok) != "ARRAY" or ts.name(bracket) != "ASCII_91" or ts.match[bracket] < 0:
        raise CloakError(
            "0A000", "pgcloak does not support this form of ARRAY for an encrypted column",
            ts.pos(tok),
        )  # fmt: skip
    _check_elements(a, array)
    return ts.toks[tok].start, ts.toks[ts.match[bracket]].end + 1


def _check_elements(a: Analyzer, array: Node) -> None:
    for element in array.get("elements") or ():
        (kind, body), *_ = element.items()
        if kind == "A_ArrayExpr":
            _check_elements(a, body)
        elif not body.get("isnull"):
            literal_range(a, body)


# A cast on a value for an encrypted column is taken off (the server sees bytea), so
# the proxy reads the value as if it had not been cast. That is only right when the
# cast could not change the value or how it compares: a cast to the column's own type
# (text and varchar interchangeably), without a length/precision when comparing (the
# cast would truncate or round first) and, when storing, only with the column's own;
# on a number, only to numeric for a numeric column.
_STRING_TYPES = frozenset({"text", "varchar"})
TypeKey = tuple[str, str, bool]  # base type name, typmods, array


def _type_key(type_name: Node) -> TypeKey:
    names = [str(n["String"]["sval"]) for n in type_name.get("names", ())]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    mods = json.dumps(_strip_locations(type_name.get("typmods", [])), sort_keys=True)
    return ".".join(names), mods, bool(type_name.get("arrayBounds"))


@functools.lru_cache(maxsize=256)
def _declared_key(type_sql: str) -> TypeKey | None:
    """The key of a column's declared type (policy `type_sql`), None if it does not parse."""
    try:
        tree = json.loads(parser.parse_sql_json(f"SELECT NULL::{type_sql}"))
        val = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
        return _type_key(val["TypeCast"]["typeName"])
    except (parser.ParseError, KeyError, IndexError):
        return None


def cast_keeps_value(casts: list[Node], inner: Node | None, type_sql: str, compare: bool) -> bool:
    """Whether taking `casts` (TypeCast bodies) off a literal, parameter or NULL `inner`
    leaves what PostgreSQL would store in / compare with a `type_sql` column unchanged."""
    if not casts or inner is None or inner.get("isnull"):
        return True
    col = _declared_key(type_sql)
    if col is None:
        return False
    if "ival" in inner or "fval" in inner:
        # A number keeps its own type once the cast is gone (int4, int8 or numeric),
        # and statements differing only in their numbers share one plan (template.py).
        # Stored, it goes through the assignment cast to the column's type, which is
        # the explicit cast to that type (the loop below allows no other); compared,
        # only a numeric column reads every number as the cast would (`i = 1.9::int`).
        numbers = col[0] == "numeric" or not compare
    elif "boolval" in inner:
        numbers = col[0] == "bool"
    else:  # a string, bit string or parameter: read with the column's input function
        numbers = True
    if not numbers or (col[2] and ("ival" in inner or "fval" in inner)):
        return False
    for cast in casts:
        base, mods, array = _type_key(cast["typeName"])
        if array != col[2] or (mods != "[]" and (compare or (base, mods) != col[:2])):
            return False
        if base != col[0] and not (base in _STRING_TYPES and col[0] in _STRING_TYPES):
            return False
    return True


def strip_casts(a: Analyzer, casts: list[Node], inner: Node) -> None:
    """Take the casts off a value going to an encrypted column (the server sees bytea).

    `x::t` loses `::t`, a typed literal `t 'x'` loses `t`, `CAST(x AS t)` becomes
    `CAST(x AS bytea)`. `inner` is the innermost argument (A_Const or ParamRef body).
    """
    ts = a.ts
    for cast in casts:
        first, last = type_span(a, cast["typeName"])
        loc = cast.get("location", -1)
        if loc < 0:  # typed literal: the type name comes right before the string
            if ts.at(inner.get("location", 0)) != last + 1:
                raise _locate_error()
            for i in range(first, last + 1):
                blank(a, i, "")
            continue
        tok = ts.at(loc)
        if ts.name(tok) == "TYPECAST" and tok == first - 1:
            for i in range(tok, last + 1):
                blank(a, i, "")
        elif ts.name(tok) == "CAST":
            blank(a, first, "bytea")
            for i in range(first + 1, last + 1):
                blank(a, i, "")
        else:
            raise _locate_error()


def rewritten_offset(pmap: PositionMap, position: int) -> int | None:
    """Where an unedited character of the client's text is in the rewritten text."""
    k = bisect.bisect_right(pmap.orig, position) - 1
    while k >= 0:
        if pmap.linear[k]:
            nxt = pmap.new[k + 1] if k + 1 < len(pmap.new) else None
            if nxt is not None and position >= pmap.orig[k] + (nxt - pmap.new[k]):
                return None  # inside an edit
            return pmap.new[k] + (position - pmap.orig[k]) - pmap.shift
        if pmap.orig[k] < position:
            return None
        k -= 1
    return None
