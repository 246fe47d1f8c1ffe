"""CHECK constraints on encrypted columns, evaluated by pgcloak on the plaintext.

The server only holds ciphertext there, so it cannot evaluate a CHECK; pgcloak keeps
the definition in its registry and evaluates it on every value written into the
column, with PostgreSQL's semantics for a small exact subset (see
docs/encryption-design.md, "CHECK constraints"). A check is a JSON tree:

* ``["and", e, ...]``, ``["or", e, ...]``, ``["not", e]`` (three-valued logic);
* ``["isnull", negated, x]``; ``["cmp", op, x, y]`` with op in = <> < <= > >=;
  ``["between", negated, x, lo, hi]``; ``["in", negated, x, [y, ...]]``;
* operands ``["col"]`` (the column's value), ``["len", "char"|"octet"]`` (its length),
  and constants. As the rewriter writes them: ``["k", "str"|"num"|"bool", text]``
  (a literal as written) or ``["k", "null", ""]``; ``["cast", type, text]`` a string
  literal cast to a named type. `resolve` turns those into the stored forms
  ``["v", hex]`` (canonical bytes of the column's type, read with the session's
  settings at DDL time, as PostgreSQL folds the constant when the constraint is
  created), ``["n", text]`` (a number literal) or ``["null"]``.

`Check.of(tree, oid)` compiles a resolved tree for a column type; `Check.test`
returns True, False or None (NULL; a CHECK passes unless the result is False).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pgcloak.crypto.codecs import CodecError, SessionFormat, codec_for, parse_type
from pgcloak.crypto.codecs import numeric as num
from pgcloak.crypto.codecs.base import decode_utf8

__all__ = ["Check", "CheckError", "check_types", "resolve"]

BOOL, INT8, INT2, INT4, TEXT = 16, 20, 21, 23, 25
FLOAT4, FLOAT8, VARCHAR = 700, 701, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1082, 1083, 1114, 1184, 1186
NUMERIC, UUID = 1700, 2950
_NUMBERS = frozenset({INT2, INT4, INT8, NUMERIC})
_FLOATS = frozenset({FLOAT4, FLOAT8})
_TEXTS = frozenset({TEXT, VARCHAR})
# Types whose order pgcloak evaluates exactly (no collation involved).
_ORDERED = _NUMBERS | _FLOATS | {DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, BOOL, UUID}
# Types a CHECK on an encrypted column may test at all (text: equality and length only).
check_types = _ORDERED | _TEXTS
OPS = frozenset({"=", "<>", "<", "<=", ">", ">="})
_USECS_PER_DAY = 86_400_000_000
_INTERVAL = struct.Struct(">qii")
_STRUCTS = {INT2: struct.Struct(">h"), INT4: struct.Struct(">i"), INT8: struct.Struct(">q"),
            DATE: struct.Struct(">i"), TIME: struct.Struct(">q"), TIMESTAMP: struct.Struct(">q"),
            TIMESTAMPTZ: struct.Struct(">q"), FLOAT4: struct.Struct(">f"),
            FLOAT8: struct.Struct(">d")}  # fmt: skip

Tree = list[Any]
Key = Any  # a comparable Python value; None is SQL NULL


class CheckError(Exception):
    """A CHECK pgcloak cannot store or evaluate; `sqlstate`/`message` for the client."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


# -- column values as comparable keys -----------------------------------------------------


def _numeric_key(canonical: bytes) -> Key:
    """numeric: NaN above +Infinity above every number, as PostgreSQL orders them."""
    sign, coeff, exp10, _ = num.decode(canonical)
    if sign == num.NAN:
        return (2,)
    if sign == num.PINF:
        return (1,)
    if sign == num.NINF:
        return (-1,)
    value = Decimal(int(coeff or "0")).scaleb(exp10)
    return (0, -value if sign == num.NEG else value)


def _float_key(value: float) -> Key:
    """float4/float8: NaN equals NaN and sorts above everything; -0 equals 0."""
    return (1,) if math.isnan(value) else (0, value)


def value_key(oid: int, canonical: bytes) -> Key:
    """The key of a canonical column value; keys of one type compare as PostgreSQL does."""
    if oid == NUMERIC:
        return _numeric_key(canonical)
    if oid in (INT2, INT4, INT8):
        return (0, _STRUCTS[oid].unpack(canonical)[0])
    if oid in _FLOATS:
        return _float_key(_STRUCTS[oid].unpack(canonical)[0])
    if oid in (DATE, TIME, TIMESTAMP, TIMESTAMPTZ):
        return _STRUCTS[oid].unpack(canonical)[0]
    if oid == INTERVAL:
        time, day, month = _INTERVAL.unpack(canonical)
        return (month * 30 + day) * _USECS_PER_DAY + time  # interval_cmp_value, exactly
    if oid == BOOL:
        return canonical[0]
    return bytes(canonical)  # uuid (memcmp order), text and varchar (equality only)


def _number_key(oid: int, text: str) -> Key:
    """A number literal against a column of `oid` (or a length): PostgreSQL compares an
    integer or numeric column with it as numeric, a float column as float8."""
    if oid in _FLOATS:
        return _float_key(float(text))
    try:
        return (0, Decimal(text))
    except InvalidOperation:
        raise CheckError("22P02", f'invalid input syntax for type numeric: "{text}"') from None


# -- resolving constants at DDL time ---------------------------------------------------------


def _unsupported(what: str) -> CheckError:
    return CheckError("0A000", what)


def _const(k: Tree, oid: int, length: bool, fmt: SessionFormat) -> Tree:
    """A constant as written -> its stored form, checked against the operand's type."""
    kind = k[0]
    if kind == "k" and k[1] == "null":
        return ["null"]
    if length:
        if kind == "k" and k[1] == "num":
            _number_key(INT4, k[2])
            return ["n", k[2]]
        raise _unsupported("a length compared with a constant that is not a number")
    if kind == "k" and k[1] == "num":
        if oid not in _NUMBERS | _FLOATS:
            raise _unsupported("a comparison with a number")
        _number_key(oid, k[2])
        return ["n", k[2]]
    if kind == "k" and k[1] == "bool":
        if oid != BOOL:
            raise _unsupported("a comparison with a boolean constant")
        return ["v", ("01" if k[2] == "t" else "00")]
    text: str = k[2]
    if kind == "cast":
        try:
            cast_oid, typmod = parse_type(k[1])
        except (ValueError, CodecError):
            raise _unsupported(f"a cast to {k[1]}") from None
        same = cast_oid == oid or (cast_oid in _TEXTS and oid in _TEXTS)
        if not same or typmod != -1:
            raise _unsupported(f"a cast to {k[1]}")
    codec = codec_for(oid)
    assert codec is not None
    try:
        canonical = codec.from_text(text, -1, fmt)
    except CodecError as exc:
        raise CheckError(exc.sqlstate, exc.message, exc.detail) from None
    return ["v", canonical.hex()]


def resolve(tree: Tree, oid: int, fmt: SessionFormat) -> Tree:
    """The stored form of a check written by the rewriter, for a column of type `oid`.

    Constants are read with the column type's input function in the session's
    format (CheckError with PostgreSQL's SQLSTATE for bad input, 0A000 for a
    constant of another type). Ordering comparisons need a type of `_ORDERED`.
    """
    if oid not in check_types:
        raise _unsupported("a type pgcloak cannot compare")

    def operand(x: Tree) -> tuple[Tree, bool]:
        if x[0] == "len":
            if oid not in _TEXTS:
                raise _unsupported("a length function on a column that is not text")
            return x, True
        if x[0] != "col":
            raise _unsupported("an expression it does not know")
        return x, False

    def ordered(length: bool, what: str) -> None:
        if not length and oid not in _ORDERED:
            raise _unsupported(f"{what} on text, which depends on collation")

    def walk(t: Tree) -> Tree:
        op = t[0]
        if op in ("and", "or"):
            return [op, *(walk(a) for a in t[1:])]
        if op == "not":
            return ["not", walk(t[1])]
        if op == "isnull":
            x, _ = operand(t[2])
            return ["isnull", bool(t[1]), x]
        if op == "cmp":
            x, length = operand(t[2])
            if t[1] not in OPS:
                raise _unsupported(f"the operator {t[1]}")
            if t[1] not in ("=", "<>"):
                ordered(length, "an ordering comparison")
            return ["cmp", t[1], x, _const(t[3], oid, length, fmt)]
        if op == "between":
            x, length = operand(t[2])
            ordered(length, "BETWEEN")
            return ["between", bool(t[1]), x, _const(t[3], oid, length, fmt),
                    _const(t[4], oid, length, fmt)]  # fmt: skip
        if op == "in":
            x, length = operand(t[2])
            return ["in", bool(t[1]), x, [_const(k, oid, length, fmt) for k in t[3]]]
        raise _unsupported("an expression it does not know")

    return walk(tree)


# -- evaluation -----------------------------------------------------------------------------

_COMPARE: dict[str, Callable[[Key, Key], bool]] = {
    "=": lambda a, b: bool(a == b),
    "<>": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}
Eval = Callable[[bytes | None], bool | None]
Getter = Callable[[bytes | None], Key]


def _and(parts: Sequence[bool | None]) -> bool | None:
    if any(p is False for p in parts):
        return False
    return None if any(p is None for p in parts) else True


def _or(parts: Sequence[bool | None]) -> bool | None:
    if any(p is True for p in parts):
        return True
    return None if any(p is None for p in parts) else False


def _cmp(op: str, a: Key, b: Key) -> bool | None:
    return None if a is None or b is None else _COMPARE[op](a, b)


@dataclass(frozen=True)
class Check:
    """A compiled check for a column of one type (`test` takes canonical bytes or None)."""

    test: Eval

    @classmethod
    def of(cls, tree: Tree, oid: int) -> Check:
        """Compile a resolved tree; ValueError when it is malformed (registry damage)."""
        try:
            return cls(_compile(tree, oid))
        except (IndexError, KeyError, TypeError, InvalidOperation, CheckError):
            raise ValueError("malformed check") from None

    def passes(self, canonical: bytes | None) -> bool:
        """PostgreSQL's rule: a row satisfies a CHECK unless it evaluates to false."""
        return self.test(canonical) is not False


def _getter(x: Tree, oid: int) -> Getter:
    if x[0] == "col":
        return lambda v: None if v is None else value_key(oid, v)
    if x[0] == "len" and x[1] == "char":
        return lambda v: None if v is None else (0, len(decode_utf8(v)))
    if x[0] == "len" and x[1] == "octet":
        return lambda v: None if v is None else (0, len(v))
    raise ValueError("malformed check")


def _constant(k: Tree, oid: int, length: bool) -> Key:
    if k[0] == "null":
        return None
    if k[0] == "n":
        return _number_key(INT4 if length else oid, k[1])
    if k[0] == "v":
        return value_key(oid, bytes.fromhex(k[1]))
    raise ValueError("malformed check")


def _compile(t: Tree, oid: int) -> Eval:
    op = t[0]
    if op in ("and", "or"):
        parts = [_compile(a, oid) for a in t[1:]]
        combine = _and if op == "and" else _or
        return lambda v: combine([p(v) for p in parts])
    if op == "not":
        inner = _compile(t[1], oid)

        def negate(v: bytes | None) -> bool | None:
            r = inner(v)
            return None if r is None else not r

        return negate
    get = _getter(t[2], oid)
    length = t[2][0] == "len"
    if op == "isnull":
        negated = bool(t[1])
        return lambda v: (get(v) is None) != negated
    if op == "cmp":
        cmp_op: str = t[1]
        if cmp_op not in OPS:
            raise ValueError("malformed check")
        k = _constant(t[3], oid, length)
        return lambda v: _cmp(cmp_op, get(v), k)
    if op == "between":
        negated = bool(t[1])
        lo, hi = _constant(t[3], oid, length), _constant(t[4], oid, length)

        def between(v: bytes | None) -> bool | None:
            x = get(v)
            if negated:
                return _or([_cmp("<", x, lo), _cmp(">", x, hi)])
            return _and([_cmp(">=", x, lo), _cmp("<=", x, hi)])

        return between
    if op == "in":
        negated = bool(t[1])
        keys = [_constant(k, oid, length) for k in t[3]]
        if not keys:
            raise ValueError("malformed check")

        def within(v: bytes | None) -> bool | None:
            x = get(v)
            if negated:
                return _and([_cmp("<>", x, k) for k in keys])
            return _or([_cmp("=", x, k) for k in keys])

        return within
    raise ValueError("malformed check")
