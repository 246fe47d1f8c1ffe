"""Arrays over any element codec: array_in/array_out/array_recv/array_send (PostgreSQL 15).

Canonical = array_send format: ndim, has-null flag, element type OID, (dim,
lower bound) pairs, then length-prefixed elements in their own canonical
(send) form, -1 for NULL. The element typmod applies to every element.
"""

from __future__ import annotations

import re
import struct

from pgcloak.crypto.codecs.base import (
    UINT32,
    BinaryFormatError,
    CodecError,
    Reader,
    SessionFormat,
    TypeCodec,
    reject_nul,
)

MAXDIM = 6
MAX_ARRAY_SIZE = 0x3FFFFFFF // 8
_HDR = struct.Struct(">iiI")
_I32 = struct.Struct(">i")
_SPACE = " \t\n\r\v\f"

# format_type() names used in array_recv's element type mismatch message ("???" for
# other built-in types, whose names are not tracked here).
TYPE_NAMES = {
    0: "-",
    16: "boolean", 17: "bytea", 20: "bigint", 21: "smallint", 23: "integer", 25: "text",
    114: "json", 700: "real", 701: "double precision", 1042: "character",
    1043: "character varying", 1082: "date", 1083: "time without time zone",
    1114: "timestamp without time zone", 1184: "timestamp with time zone", 1186: "interval",
    1700: "numeric", 2950: "uuid", 3802: "jsonb",
}  # fmt: skip


def _malformed(text: str, detail: str | None = None) -> CodecError:
    return CodecError("22P02", f'malformed array literal: "{text}"', detail)


def _too_many_dims(n: int) -> CodecError:
    return CodecError(
        "54000", f"number of array dimensions ({n}) exceeds the maximum allowed ({MAXDIM})"
    )


def _atoi(s: str) -> int:
    """atoi() on the [0-9+-]* run PostgreSQL collected."""
    i = 0
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        i = 1
    j = i
    while j < len(s) and s[j].isdigit():
        j += 1
    value = int(s[i:j]) if j > i else 0
    value = -value if neg else value
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def check_dims(dims: list[int], lbs: list[int]) -> int:
    """ArrayGetNItems() + ArrayCheckBounds(): element count, refusing overflow."""
    total = 1
    for d in dims:
        if d < 0:
            raise CodecError("54000", f"array size exceeds the maximum allowed ({MAX_ARRAY_SIZE})")
        total *= d
        if total > MAX_ARRAY_SIZE:
            raise CodecError("54000", f"array size exceeds the maximum allowed ({MAX_ARRAY_SIZE})")
    for d, lb in zip(dims, lbs, strict=True):
        if not -(1 << 31) <= d + lb < 1 << 31:
            raise CodecError("54000", f"array lower bound is too large: {lb}")
    return total if dims else 0


# ArrayCount() states
(_NO_LEVEL, _LEVEL_STARTED, _ELEM_STARTED, _ELEM_COMPLETED, _QUOTED_STARTED,
 _QUOTED_COMPLETED, _ELEM_DELIMITED, _LEVEL_COMPLETED, _LEVEL_DELIMITED) = range(9)  # fmt: skip


def array_count(s: str) -> list[int]:
    """ArrayCount(): dimensions from the brace structure, validating it ([] if empty)."""
    nest = 0
    ndim = 1
    temp = [0] * MAXDIM
    nelems = [1] * MAXDIM
    nelems_last = [0] * MAXDIM
    in_quotes = False
    empty = True
    state = _NO_LEVEL
    p, n = 0, len(s)
    eoa = False
    while not eoa:
        itemdone = False
        while not itemdone:
            if state in (_ELEM_STARTED, _QUOTED_STARTED):
                empty = False
            if p >= n:
                raise _malformed(s, "Unexpected end of input.")
            c = s[p]
            if c == "\\":
                if state not in (_LEVEL_STARTED, _ELEM_STARTED, _QUOTED_STARTED, _ELEM_DELIMITED):
                    raise _malformed(s, 'Unexpected "\\" character.')
                if state != _QUOTED_STARTED:
                    state = _ELEM_STARTED
                if p + 1 < n:
                    p += 1
                else:
                    raise _malformed(s, "Unexpected end of input.")
            elif c == '"':
                if state not in (_LEVEL_STARTED, _QUOTED_STARTED, _ELEM_DELIMITED):
                    raise _malformed(s, "Unexpected array element.")
                in_quotes = not in_quotes
                state = _QUOTED_STARTED if in_quotes else _QUOTED_COMPLETED
            elif c == "{" and not in_quotes:
                if state not in (_NO_LEVEL, _LEVEL_STARTED, _LEVEL_DELIMITED):
                    raise _malformed(s, 'Unexpected "{" character.')
                state = _LEVEL_STARTED
                if nest >= MAXDIM:
                    raise _too_many_dims(nest + 1)
                temp[nest] = 0
                nest += 1
                ndim = max(ndim, nest)
            elif c == "}" and not in_quotes:
                if state not in (
                    _ELEM_STARTED,
                    _ELEM_COMPLETED,
                    _QUOTED_COMPLETED,
                    _LEVEL_COMPLETED,
                ) and not (nest == 1 and state == _LEVEL_STARTED):
                    raise _malformed(s, 'Unexpected "}" character.')
                state = _LEVEL_COMPLETED
                if nest == 0:
                    raise _malformed(s, 'Unmatched "}" character.')
                nest -= 1
                if nelems_last[nest] != 0 and nelems[nest] != nelems_last[nest]:
                    raise _malformed(
                        s,
                        "Multidimensional arrays must have sub-arrays with matching dimensions.",
                    )
                nelems_last[nest] = nelems[nest]
                nelems[nest] = 1
                if nest == 0:
                    eoa = itemdone = True
                else:
                    temp[nest - 1] += 1
            elif not in_quotes:
                if c == ",":
                    if state not in (
                        _ELEM_STARTED,
                        _ELEM_COMPLETED,
                        _QUOTED_COMPLETED,
                        _LEVEL_COMPLETED,
                    ):
                        raise _malformed(s, 'Unexpected "," character.')
                    state = _LEVEL_DELIMITED if state == _LEVEL_COMPLETED else _ELEM_DELIMITED
                    itemdone = True
                    nelems[nest - 1] += 1
                elif c not in _SPACE:
                    if state not in (_LEVEL_STARTED, _ELEM_STARTED, _ELEM_DELIMITED):
                        raise _malformed(s, "Unexpected array element.")
                    state = _ELEM_STARTED
            if not itemdone:
                p += 1
        temp[ndim - 1] += 1
        p += 1
    if s[p:].strip(_SPACE):
        raise _malformed(s, "Junk after closing right brace.")
    if empty:
        return []
    return temp[:ndim]


def split_items(body: str) -> list[str | None]:
    """ReadArrayStr() on a literal ArrayCount() accepted: de-quoted items, None for NULL."""
    items: list[str | None] = []
    p, n = 0, len(body)
    while p < n and body[p] != "{":
        p += 1
    depth = 0
    while p < n:
        c = body[p]
        if c == "{":
            depth += 1
            p += 1
            continue
        if c == "}":
            depth -= 1
            p += 1
            if depth == 0:
                break
            continue
        if c in _SPACE or c == ",":
            p += 1
            continue
        # An element starts here and ends at the next unquoted ',' or '}'.
        out: list[str] = []
        end_len = 0
        quoted = False
        in_quotes = False
        while p < n:
            c = body[p]
            if c == "\\":
                out.append(body[p + 1])
                p += 2
                end_len = len(out)
                quoted = True
                continue
            if c == '"':
                in_quotes = not in_quotes
                quoted = True
                if not in_quotes:
                    end_len = len(out)
                p += 1
                continue
            if in_quotes:
                out.append(c)
                p += 1
                continue
            if c in ",}":
                break
            out.append(c)
            if c not in _SPACE:
                end_len = len(out)
            p += 1
        item = "".join(out[:end_len])
        items.append(None if not quoted and item.upper() == "NULL" else item)
    return items


# One dimension, no quoting, escaping, spaces or nesting: split directly.
_SIMPLE = re.compile(r"\{([^{}\"\\\s,]+(?:,[^{}\"\\\s,]+)*)?\}")


def parse_literal(text: str) -> tuple[list[int], list[int], list[str | None]]:
    """array_in() up to the element input calls: (dims, lower bounds, item texts)."""
    simple = _SIMPLE.fullmatch(text)
    if simple is not None:
        if simple.group(1) is None:
            return [], [], []
        raw = simple.group(1).split(",")
        items: list[str | None] = [None if i.upper() == "NULL" else i for i in raw]
        return [len(items)], [1], items
    p, n = 0, len(text)
    dims: list[int] = []
    lbs: list[int] = []
    while True:
        while p < n and text[p] in _SPACE:
            p += 1
        if p >= n or text[p] != "[":
            break
        p += 1
        if len(dims) >= MAXDIM:
            raise _too_many_dims(len(dims) + 1)
        q = p
        while q < n and (text[q].isdigit() or text[q] in "+-"):
            q += 1
        if q == p:
            raise _malformed(text, '"[" must introduce explicitly-specified array dimensions.')
        if q < n and text[q] == ":":
            lb = _atoi(text[p:q])
            p = q + 1
            q = p
            while q < n and (text[q].isdigit() or text[q] in "+-"):
                q += 1
            if q == p:
                raise _malformed(text, "Missing array dimension value.")
        else:
            lb = 1
        if q >= n or text[q] != "]":
            raise _malformed(text, 'Missing "]" after array dimensions.')
        ub = _atoi(text[p:q])
        p = q + 1
        if ub < lb:
            raise CodecError("2202E", "upper bound cannot be less than lower bound")
        dims.append(ub - lb + 1)
        lbs.append(lb)
    if not dims:
        if p >= n or text[p] != "{":
            raise _malformed(text, 'Array value must start with "{" or dimension information.')
        dims = array_count(text[p:])
        lbs = [1] * len(dims)
    else:
        if text[p : p + 1] != "=":
            raise _malformed(text, 'Missing "=" after array dimensions.')
        p += 1
        while p < n and text[p] in _SPACE:
            p += 1
        if p >= n or text[p] != "{":
            raise _malformed(text, 'Array contents must start with "{".')
        if array_count(text[p:]) != dims:
            raise _malformed(text, "Specified array dimensions do not match array contents.")
    nitems = check_dims(dims, lbs)
    if nitems == 0:
        return [], [], []
    return dims, lbs, split_items(text[p:])


def encode(elem_oid: int, dims: list[int], lbs: list[int], items: list[bytes | None]) -> bytes:
    """array_send() layout."""
    if not items:
        return _HDR.pack(0, 0, elem_oid)
    has_null = any(item is None for item in items)
    parts = [_HDR.pack(len(dims), 1 if has_null else 0, elem_oid)]
    parts.extend(struct.pack(">ii", d, lb) for d, lb in zip(dims, lbs, strict=True))
    for item in items:
        if item is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(item)))
            parts.append(item)
    return b"".join(parts)


def decode(data: bytes) -> tuple[int, list[int], list[int], list[bytes | None]]:
    """Canonical array bytes -> (element OID, dims, lower bounds, items)."""
    ndim, _, elem_oid = _HDR.unpack_from(data)
    dims, lbs = [], []
    pos = 12
    for _ in range(ndim):
        d, lb = struct.unpack_from(">ii", data, pos)
        dims.append(d)
        lbs.append(lb)
        pos += 8
    items: list[bytes | None] = []
    count = check_dims(dims, lbs) if dims else 0
    for _ in range(count):
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        if length < 0:
            items.append(None)
        else:
            items.append(data[pos : pos + length])
            pos += length
    return elem_oid, dims, lbs, items


def _needs_quotes(value: str) -> bool:
    if not value or value.upper() == "NULL":
        return True
    return any(c in value for c in '"\\{},') or any(c in value for c in _SPACE)


def quote_item(value: str) -> str:
    """array_out(): double-quote when needed, backslash-escape quotes and backslashes."""
    if not _needs_quotes(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ArrayCodec:
    """element[]: the element codec applied to every item, NULLs allowed, up to 6 dims."""

    def __init__(self, elem: TypeCodec) -> None:
        self.elem = elem
        self.oid = elem.array_oid
        self.name = "_" + elem.name
        self.array_oid = 0

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        dims, lbs, texts = parse_literal(text)
        elem = self.elem
        items = [None if t is None else elem.from_text(t, typmod, fmt) for t in texts]
        return encode(elem.oid, dims, lbs, items)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        rd = Reader(data)
        ndim = rd.read_int(_I32)
        if ndim < 0:
            raise CodecError("22P03", f"invalid number of dimensions: {ndim}")
        if ndim > MAXDIM:
            raise _too_many_dims(ndim)
        flags = rd.read_int(_I32)
        if flags not in (0, 1):
            raise CodecError("22P03", "invalid array flags")
        elem_oid = rd.read_int(UINT32)
        expected = self.elem.oid
        if elem_oid != expected and elem_oid < 10000:
            raise CodecError(
                "42804",
                f"binary data has array element type {elem_oid}"
                f" ({TYPE_NAMES.get(elem_oid, '???')}) instead of expected {expected}"
                f" ({TYPE_NAMES.get(expected, '???')})",
            )
        dims, lbs = [], []
        for _ in range(ndim):
            dims.append(rd.read_int(_I32))
            lbs.append(rd.read_int(_I32))
        nitems = check_dims(dims, lbs)
        if nitems == 0:
            rd.finish()
            return encode(expected, [], [], [])
        items: list[bytes | None] = []
        for index in range(nitems):
            length = rd.read_int(_I32)
            if length < -1 or length > rd.remaining():
                raise CodecError("22P03", "insufficient data left in message")
            if length == -1:
                items.append(None)
                continue
            try:
                items.append(self.elem.from_binary(rd.read_bytes(length), typmod))
            except BinaryFormatError:
                raise CodecError(
                    "22P03", f"improper binary format in array element {index + 1}"
                ) from None
        rd.finish()
        return encode(expected, dims, lbs, items)

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        _, dims, lbs, items = decode(canonical)
        if not items:
            return "{}"
        elem = self.elem
        texts = ["NULL" if i is None else quote_item(elem.to_text(i, fmt)) for i in items]
        prefix = ""
        if any(lb != 1 for lb in lbs):
            prefix = "".join(f"[{lb}:{lb + d - 1}]" for d, lb in zip(dims, lbs, strict=True))
            prefix += "="
        return prefix + _nest(texts, dims)

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


def _nest(texts: list[str], dims: list[int]) -> str:
    """Brace the flat item list by dimensions (row-major)."""
    level = texts
    for d in reversed(dims):
        level = ["{" + ",".join(level[i : i + d]) + "}" for i in range(0, len(level), d)]
    return level[0]
