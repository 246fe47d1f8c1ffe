"""`ARRAY[...]` of constants as one value for an encrypted array column (E19).

The rewriter accepts an `ARRAY[...]` constructor whose elements are all
literals (or nested constructors of literals) as one value slot; the proxy
turns its text into what PostgreSQL builds: the element type chosen as
transformArrayExpr() does (select_common_type over the elements: strings alone
are text, integers int4/int8, any decimal numeric, booleans boolean), and the
array's text in that type. The Sealer then converts it to the column's type
with PostgreSQL's assignment rules, as for any typed value: `ARRAY['a']` into
`varchar(4)[]` casts, `ARRAY['1']` into `integer[]` is PostgreSQL's 42804,
`ARRAY[1.5]` into `integer[]` rounds.
"""

from __future__ import annotations

from collections.abc import Iterator

from pglast import parser

from pgcloak.crypto.codecs import CodecError, SessionFormat, codec_for
from pgcloak.crypto.codecs.casts import type_name
from pgcloak.crypto.codecs.literals import BOOL, INT4, INT8, NUMERIC, UNKNOWN, literal_value
from pgcloak.crypto.codecs.typenames import ARRAY_OIDS
from pgcloak.rewriter.tokens import COMMENT_TOKENS

TEXT = 25
# The numeric category's types, by preference (select_common_type: numeric wins).
_NUMBER_RANK = {INT4: 0, INT8: 1, NUMERIC: 2}

Element = tuple[int, str | None]  # (type OID of the literal, its text; None: NULL)
Nested = list["Element | Nested"]


class UnplacedError(CodecError):
    """An error PostgreSQL raises when it evaluates the constructor: no position."""


class ElementError(CodecError):
    """A string element the element type's input rejects: PostgreSQL raises it while
    parsing, at that element (`offset` in characters of the constructor's text)."""

    def __init__(self, exc: CodecError, offset: int) -> None:
        super().__init__(exc.sqlstate, exc.message, exc.detail, exc.hint)
        self.offset = offset


def is_array_constructor(text: str) -> bool:
    return text[:5].upper() == "ARRAY"


def array_value(text: str, fmt: SessionFormat) -> tuple[int, str]:
    """(array type OID, array text) of an `ARRAY[...]` constructor of literals."""
    skip = ("ARRAY", *COMMENT_TOKENS)
    tokens = [t for t in parser.scan(text) if t.name not in skip]  # offsets in characters
    pos = 0
    offsets: list[int] = []  # of the literals, in order
    subs: dict[int, int] = {}  # id() of a sub-array -> its offset

    def parse() -> Nested:
        nonlocal pos
        assert tokens[pos].name == "ASCII_91"  # the rewriter checked the shape
        pos += 1
        items: Nested = []
        while tokens[pos].name != "ASCII_93":
            if tokens[pos].name == "ASCII_91":
                start = tokens[pos].start
                sub = parse()
                subs[id(sub)] = start
                items.append(sub)
            else:
                start = tokens[pos].start
                if tokens[pos].name == "ASCII_45":  # a sign: part of the number
                    pos += 1
                raw = text[start : tokens[pos].end + 1]
                items.append(literal_value(raw, fmt.standard_conforming_strings))
                offsets.append(start)
                pos += 1
            if tokens[pos].name == "ASCII_44":
                pos += 1
        pos += 1
        return items

    items = parse()
    elem = _resolve(items, _Where(iter(offsets), subs), fmt)
    _check_dimensions(items)
    return ARRAY_OIDS[elem], _array_text(items)


class _Where:
    """Where the literals (in order) and sub-arrays are, for errors PostgreSQL places."""

    def __init__(self, literals: Iterator[int], subs: dict[int, int]) -> None:
        self.literals = literals
        self.subs = subs


def _resolve(items: Nested, where: _Where, fmt: SessionFormat) -> int:
    """The element type of one level, as transformArrayExpr() picks it: sub-arrays are
    typed on their own, then their common type (an implicit array coercion, else 42846);
    literals by select_common_type (strings alone: text), strings then read as it."""
    if items and all(isinstance(i, list) for i in items):
        lists = [i for i in items if isinstance(i, list)]
        types = [_resolve(i, where, fmt) for i in lists]
        common = types[0]
        for sub in types[1:]:
            if _implicit(common, sub) and not _implicit(sub, common):
                common = sub
        for sub, lst in zip(types, lists, strict=True):
            if not _implicit(sub, common):
                exc = CodecError(
                    "42846",
                    f"ARRAY could not convert type {type_name(ARRAY_OIDS[sub])} to "
                    f"{type_name(ARRAY_OIDS[common])}",
                )
                raise ElementError(exc, where.subs[id(lst)])
        return common
    scalars = [i for i in items if not isinstance(i, list)]
    if len(scalars) != len(items):
        raise CodecError("0A000", "pgcloak cannot encrypt this ARRAY[...] value")
    offsets = [next(where.literals) for _ in scalars]
    pairs = zip(scalars, offsets, strict=True)
    known = [(oid, at) for (oid, value), at in pairs if value is not None]
    elem = _element_type(known)
    codec = codec_for(elem)
    for (oid, value), offset in zip(scalars, offsets, strict=True):
        if oid == UNKNOWN and value is not None and elem != TEXT and codec is not None:
            try:  # PostgreSQL reads the string as the element type while parsing
                codec.from_text(value, -1, fmt)
            except CodecError as exc:
                raise ElementError(exc, offset) from None
    return elem


def _implicit(src: int, dst: int) -> bool:
    """An implicit cast between element types (the numeric ladder only)."""
    if src == dst:
        return True
    return src in _NUMBER_RANK and dst in _NUMBER_RANK and _NUMBER_RANK[src] < _NUMBER_RANK[dst]


def _element_type(types: list[tuple[int, int]]) -> int:
    """select_common_type() over the non-NULL literals' (type, offset), in order (unknown
    ones follow the others)."""
    common = UNKNOWN
    for oid, offset in types:
        if oid in (UNKNOWN, common):
            continue
        if oid not in (BOOL, *_NUMBER_RANK):
            raise CodecError("0A000", "pgcloak cannot encrypt this ARRAY[...] value")
        if common == UNKNOWN or _implicit(common, oid):
            common = oid
        elif not _implicit(oid, common):
            exc = CodecError(
                "42804", f"ARRAY types {type_name(common)} and {type_name(oid)} cannot be matched"
            )
            raise ElementError(exc, offset)
    return TEXT if common == UNKNOWN else common


def _check_dimensions(items: Nested) -> None:
    """Sub-arrays must all be arrays of one shape (PostgreSQL's 2202E otherwise)."""
    nested = [isinstance(i, list) for i in items]
    if any(nested) and not all(nested):
        raise CodecError("0A000", "pgcloak cannot encrypt this ARRAY[...] value")
    shapes = {_shape(i) for i in items if isinstance(i, list)}
    if len(shapes) > 1:
        raise UnplacedError(
            "2202E", "multidimensional arrays must have array expressions with matching dimensions"
        )


def _shape(items: Nested) -> tuple[int, ...]:
    first = items[0] if items else None
    inner = _shape(first) if isinstance(first, list) else ()
    return (len(items), *inner)


def _array_text(items: Nested) -> str:
    parts: list[str] = []
    for item in items:
        if isinstance(item, list):
            parts.append(_array_text(item))
        elif item[1] is None:
            parts.append("NULL")
        else:
            parts.append('"' + item[1].replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"
