"""Client values of any type -> the canonical form of an encrypted column's type.

The proxy stores and compares canonical bytes (PostgreSQL's binary send format
after typmod). A value the client typed differently from the column (a psycopg
int2 parameter, an unquoted `1.5`, `B'101'`, a float8 compared with a real
column) must first go where PostgreSQL would send it:

* storing (INSERT VALUES, UPDATE SET): the assignment cast (pg_cast context
  'i'/'a', or the I/O conversion to a string type), else 42804;
* comparing (`col = value`, `IN (...)`): the `=` operator PostgreSQL resolves,
  without the column's typmod; the answer is the one canonical column value
  that compares equal, or None when none can (else 42883 when no operator).

`literal_value()` types an SQL literal token the way the lexer and make_const()
do; its OID and text go to `to_column()` like a text-format parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgcloak.crypto.codecs import codec_for, from_param_binary, from_param_text
from pgcloak.crypto.codecs.base import CodecError, SessionFormat
from pgcloak.crypto.codecs.casts import (
    CATEGORY,
    ELEMENT_OF,
    JSON,
    PREFERRED,
    TEXT,
    TYPE_NAMES,
    Mismatch,
    assignment_mismatch,
    decode_source,
    operator_mismatch,
    pathway,
    run_cast,
    unsupported_source,
)
from pgcloak.crypto.codecs.equality import comparable, equal_in_column, same_type
from pgcloak.crypto.codecs.literals import BIT, UNKNOWN, VARBIT, literal_value

__all__ = ["UNKNOWN", "Mismatch", "in_list", "literal_value", "to_column"]

_UNTYPED = (0, UNKNOWN)
_INTERVAL = 1186


def _known_source(src: int) -> bool:
    return codec_for(src) is not None or src in (BIT, VARBIT)


def to_column(
    value_text: str | None,
    value_binary: bytes | None,
    src_oid: int,
    dst_oid: int,
    dst_typmod: int,
    *,
    compare: bool,
    column: str,
    fmt: SessionFormat,
    value_first: bool = False,
) -> bytes | None:
    """The canonical column value for a client value of type `src_oid`.

    The value is given as text or as binary (both None = SQL NULL, checked for
    type errors all the same, then None). `src_oid` 0 is an unspecified Bind
    parameter and 705 an unknown-type literal: both are read by the column's
    input function (a literal with the typmod, as PostgreSQL does for interval).

    compare=False: PostgreSQL's assignment cast, then the column's typmod
    (22003/22001/... as PostgreSQL words them; 42804 Mismatch when no
    assignment cast exists). None only for NULL.
    compare=True: None when no value of the column compares equal under
    PostgreSQL's `=` (or the value is NULL), else the canonical bytes a stored
    equal value has. Mismatch 42883 when the operator does not exist (message
    `col_type = value_type`, or the other way round with `value_first`);
    CodecError 0A000 when several stored forms would compare equal (numeric
    column against a float value, varchar column against a bpchar value, ...).

    `column` is the column's (semantic) name for PostgreSQL's 42804 message;
    errors never show it in str()/repr().
    """
    codec = codec_for(dst_oid)
    if codec is None:
        raise CodecError("0A000", f"pgcloak cannot encrypt values of type {dst_oid}")
    null = value_text is None and value_binary is None
    if src_oid in _UNTYPED:
        if compare and dst_oid == JSON:
            raise _operator(dst_oid, UNKNOWN, value_first)
        if null:
            return None
        if compare:
            if value_text is not None:
                canon = codec.from_text(value_text, -1, fmt)
            else:
                canon = codec.from_binary(value_binary or b"", -1)
            return equal_in_column(canon, dst_oid, dst_oid, dst_typmod, fmt=fmt, column=column)
        if value_text is None:
            return from_param_binary(codec, value_binary or b"", dst_typmod)
        if src_oid == UNKNOWN and dst_oid == _INTERVAL:
            # coerce_type(): only interval's input function gets the typmod.
            return codec.from_text(value_text, dst_typmod, fmt)
        return from_param_text(codec, value_text, dst_typmod, fmt)
    if compare:
        if not _known_source(src_oid):
            raise unsupported_source(src_oid)
        if not comparable(dst_oid, src_oid):
            raise _operator(dst_oid, src_oid, value_first)
        if null:
            return None
        canon = decode_source(value_text, value_binary, src_oid, fmt)
        return equal_in_column(canon, src_oid, dst_oid, dst_typmod, fmt=fmt, column=column)
    if not pathway(src_oid, dst_oid, assignment=True):
        if src_oid not in TYPE_NAMES and src_oid not in ELEMENT_OF:
            raise unsupported_source(src_oid)
        raise assignment_mismatch(column, dst_oid, src_oid)
    if null:
        return None
    canon = decode_source(value_text, value_binary, src_oid, fmt)
    out = run_cast(canon, src_oid, dst_oid, fmt)
    if out is None or dst_typmod == -1:
        return out
    return codec.from_binary(out, dst_typmod)


def _operator(col: int, src: int, value_first: bool) -> Mismatch:
    return operator_mismatch(src, col) if value_first else operator_mismatch(col, src)


def in_list(
    values: Sequence[tuple[str | None, bytes | None, int]],
    dst_oid: int,
    dst_typmod: int,
    *,
    column: str,
    fmt: SessionFormat,
) -> list[bytes | None]:
    """`col IN (v1, v2, ...)`: `to_column(compare=True)` for each (text, binary, type OID).

    With more than one item PostgreSQL first casts the items to the common type
    of the column and the items (transformAExprIn(): `col = ANY(ARRAY[...])`),
    which can differ from comparing one by one: `real_col IN (0.1, 0.2)`
    compares as real, `real_col = 0.1` as double precision. `values` are all
    the list's items (NULL: both None, type 0/705 or a typed NULL).
    """
    common = _common_type(dst_oid, [src for _, _, src in values]) if len(values) > 1 else None
    if common is None or (common == dst_oid and all(s in (*_UNTYPED, dst_oid) for *_, s in values)):
        return [
            to_column(t, b, s, dst_oid, dst_typmod, compare=True, column=column, fmt=fmt)
            for t, b, s in values
        ]
    common_codec = codec_for(common)
    assert common_codec is not None
    if not comparable(dst_oid, common):
        raise operator_mismatch(dst_oid, common)
    out: list[bytes | None] = []
    for text, binary, src in values:
        if text is None and binary is None:
            out.append(None)
            continue
        if src in _UNTYPED:
            if text is not None:
                canon: bytes | None = common_codec.from_text(text, -1, fmt)
            else:
                canon = common_codec.from_binary(binary or b"", -1)
        else:
            canon = run_cast(decode_source(text, binary, src, fmt), src, common, fmt)
        if canon is None:
            out.append(None)
        elif common == dst_oid:
            out.append(same_type(canon, dst_oid, dst_typmod))
        else:
            out.append(equal_in_column(canon, common, dst_oid, dst_typmod, fmt=fmt, column=column))
    return out


def _common_type(col: int, sources: list[int]) -> int | None:
    """select_common_type() + verify_common_type() over the column and the items."""
    known = [s for s in sources if s not in _UNTYPED]
    if any(not _known_source(s) or s in (BIT, VARBIT) for s in known):
        return None
    ptype = col
    pcat = _category(col)
    for ntype in known:
        if ntype == ptype:
            continue
        ncat = _category(ntype)
        if ncat != pcat:
            return None
        if (
            ptype not in PREFERRED
            and pathway(ptype, ntype, assignment=False)
            and not pathway(ntype, ptype, assignment=False)
        ):
            ptype, pcat = ntype, ncat
    if ptype in _UNTYPED:
        ptype = TEXT
    if not all(pathway(s, ptype, assignment=False) for s in (col, *known)):
        return None
    return ptype


def _category(oid: int) -> str:
    return "A" if oid in ELEMENT_OF else CATEGORY.get(oid, "?")
