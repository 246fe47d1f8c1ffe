"""COPY data of tables with encrypted columns: encrypt rows going in, decrypt rows coming out.

Sans-IO: the session feeds CopyData payloads and forwards what comes back. The
stream is cut into rows exactly as PostgreSQL 15 would read it (text, CSV and
binary formats; rows may span CopyData messages); only the fields of encrypted
columns are rewritten, every other byte passes unchanged. In: a field is
decoded per format, parsed with the column's codec (PostgreSQL's input rules,
typmod and errors), encrypted and written back as the bytea value the server
stores. Out: the server's bytea is decrypted and written in the declared type's
text or binary form with PostgreSQL's escaping/quoting, so the client sees
byte for byte what a plain table would give.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pglast import parser

from pgcloak.crypto.codecs import CodecError, SessionFormat
from pgcloak.crypto.codecs.base import decode_utf8
from pgcloak.crypto.values import ColumnCipher, ValueDecryptionError
from pgcloak.proxy.cloak_checks import Violation, first, violation
from pgcloak.proxy.cloak_copy_lex import (
    BAD_COPY,
    CopyValueError,
    LineScanner,
    check_utf8,
    csv_encode,
    csv_fields,
    csv_value,
    text_escape,
    text_fields,
    text_unescape,
)
from pgcloak.proxy.cloak_values import (
    EncColumnLike,
    EncryptedType,
    Keyring,
    ValueError_,
    bytea_from_text,
    encrypted_type,
)
from pgcloak.rewriter.catalog import Catalog

__all__ = ["CopyOptions", "CopyTransformer", "CopyValueError", "copy_options", "header_line"]

Format = Literal["text", "csv", "binary"]
ForceSet = frozenset[int] | Literal["*"]
"""Data positions (0-based) a FORCE_* option names, or "*" for all columns."""

_NONE: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CopyOptions:
    """The options of a COPY statement that shape its data (PostgreSQL's defaults)."""

    format: Format = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool | Literal["match"] = False
    quote: str = '"'
    escape: str = '"'
    force_quote: ForceSet = _NONE
    force_not_null: ForceSet = _NONE
    force_null: ForceSet = _NONE

    def forced(self, which: ForceSet, position: int) -> bool:
        return which == "*" or position in which

    def special_bytes(self) -> tuple[int, int, int]:
        """The delimiter, quote and escape characters as bytes (single-byte, as
        PostgreSQL requires them)."""
        delim = self.delimiter.encode()[0] if self.delimiter else 0x09
        quote = self.quote.encode()[0] if self.quote else 0x22
        return delim, quote, self.escape.encode()[0] if self.escape else quote


_FORCE = ("force_quote", "force_not_null", "force_null")
_HEADER_WORDS: dict[str, bool | Literal["match"]] = {
    "true": True, "on": True, "false": False, "off": False, "match": "match",
}  # fmt: skip


def copy_options(sql: str, columns: Sequence[str] | None = None) -> CopyOptions:
    """The data options of the (first) COPY statement in `sql`, new or old syntax.

    FORCE_QUOTE/FORCE_NOT_NULL/FORCE_NULL name columns; they become positions in
    the statement's column list, or in `columns` (the data's column names in
    order, as the statement spells them) when it has none. Names matching neither
    are left out: the server rejects them itself. Raises CopyValueError (0A000)
    when a FORCE list cannot be placed because neither list is known.
    """
    tree = json.loads(parser.parse_sql_json(sql))
    body: dict[str, Any] | None = None
    for raw in tree.get("stmts", ()):
        body = raw.get("stmt", {}).get("CopyStmt")
        if body is not None:
            break
    if body is None:
        raise ValueError("not a COPY statement")
    attlist = [_sval(n) for n in body.get("attlist", ())]
    names = attlist or (list(columns) if columns is not None else None)
    fmt: Format = "text"
    values: dict[str, Any] = {}
    for node in body.get("options", ()):
        opt = node["DefElem"]
        name = opt["defname"]
        arg = opt.get("arg")
        if name == "format":
            word = _sval(arg).lower()
            fmt = "csv" if word == "csv" else "binary" if word == "binary" else "text"
        elif name == "header":
            values["header"] = _header(arg)
        elif name in ("delimiter", "null", "quote", "escape"):
            values[name] = _sval(arg)
        elif name in _FORCE:
            values[name] = _force(arg, names)
        elif name == "encoding" and not _as_is(_sval(arg)):
            # Encrypted values are read and written as UTF-8 (E33).
            raise CopyValueError(
                "0A000",
                "pgcloak can copy encrypted columns only in encoding UTF8 (or SQL_ASCII)",
            )
    if fmt == "csv":
        values.setdefault("delimiter", ",")
        values.setdefault("null", "")
        quote = values.setdefault("quote", '"')
        values.setdefault("escape", quote)
    return CopyOptions(format=fmt, **values)


def _as_is(encoding: str) -> bool:
    return encoding.upper().replace("_", "").replace("-", "") in ("UTF8", "UNICODE", "SQLASCII")


def _sval(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    if "String" in node:
        return str(node["String"].get("sval", ""))
    if "Integer" in node:
        return str(node["Integer"].get("ival", 0))
    if "Boolean" in node:
        return "true" if node["Boolean"].get("boolval") else "false"
    return ""


def _header(arg: Any) -> bool | Literal["match"]:
    """defGetCopyHeaderChoice; a value the server rejects counts as on."""
    if arg is None:
        return True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    choice: bool | Literal["match"] = _HEADER_WORDS.get(_sval(arg).lower(), True)
    return choice


def _force(arg: Any, names: Sequence[str] | None) -> ForceSet:
    if isinstance(arg, dict) and "A_Star" in arg:
        return "*"
    items = [_sval(n) for n in (arg or {}).get("List", {}).get("items", ())]
    if not items:
        return _NONE
    if names is None:
        raise CopyValueError(
            "0A000",
            "pgcloak needs the column list of a COPY with FORCE_QUOTE, FORCE_NOT_NULL or "
            "FORCE_NULL on encrypted columns",
        )
    return frozenset(k for k, name in enumerate(names) if name in items)


def header_line(names: Sequence[str], options: CopyOptions) -> bytes:
    """The header line COPY TO writes for columns `names` (PostgreSQL 15's CopyTo: each
    name escaped as a text field, or quoted as a CSV field when it needs quotes)."""
    o = options
    delim, quote, escape = o.special_bytes()
    if o.format == "csv":
        null = o.null.encode()
        single = len(names) == 1
        fields = [csv_encode(n.encode(), delim, quote, escape, null, single=single) for n in names]
    else:
        fields = [text_escape(n.encode(), delim) for n in names]
    return bytes([delim]).join(fields) + b"\n"


# -- the transformer ----------------------------------------------------------------------

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_MAX_FIELD = 0x3FFFFFFF  # MaxAllocSize: the server could not buffer a larger field


@dataclass(frozen=True)
class _Column:
    kind: EncryptedType
    cipher: ColumnCipher
    table: str = ""  # physical names, for the CHECKs pgcloak keeps on the column
    column: str = ""


class CopyTransformer:
    """Rewrites the encrypted fields of one COPY data stream (see the module docstring).

    `columns`: one entry per column of the data, in data order (None: plain).
    `direction`: "in" for COPY FROM STDIN (client -> server), "out" for COPY TO
    STDOUT. Raises CopyValueError for bad data, values the column type rejects
    (the codec's SQLSTATE and message) and values that fail to decrypt (XX001).
    `server_columns` is the column count of the server's CopyIn/OutResponse: when it
    differs from `columns`, pgcloak's idea of the data layout is wrong, so no byte is
    passed either way (a plaintext field would reach the server, or ciphertext the
    client) and the first feed or finish raises instead.
    """

    def __init__(
        self,
        columns: Sequence[EncColumnLike | None],
        options: CopyOptions,
        *,
        direction: Literal["in", "out"],
        ring: Keyring,
        fmt: SessionFormat,
        server_columns: int | None = None,
        checks: Catalog | None = None,
    ) -> None:
        self.options = options
        self.checks = checks  # COPY FROM: kept CHECKs to test (pgcloak.proxy.cloak_checks)
        self._failed: Violation | None = None
        self._mismatch: CopyValueError | None = None
        if server_columns is not None and server_columns != len(columns):
            self._mismatch = CopyValueError(
                "0A000",
                f"pgcloak cannot place the encrypted columns in this COPY's data: the server "
                f"copies {server_columns} columns where pgcloak expected {len(columns)}",
                hint="List the columns to copy explicitly.",
            )
        self.direction = direction
        self.fmt = fmt
        self.ncols = len(columns)
        self.cols: list[_Column | None] = []
        for col in columns:
            if col is None:
                self.cols.append(None)
                continue
            try:
                self.cols.append(
                    _Column(encrypted_type(col.type_sql), ring.cipher(col),
                            getattr(col, "table", ""), getattr(col, "column", ""))
                )  # fmt: skip
            except (ValueError_, CodecError) as exc:
                raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None
            except ValueError:  # parse_type: not a type pgcloak can encrypt
                raise CopyValueError(
                    "0A000", "pgcloak cannot encrypt values of this column's type"
                ) from None
        self._buf = bytearray()
        self._done = False  # `\.` or the binary trailer seen
        self._short = False  # a row lacks fields: the server fails there, send no more
        self._header = bool(options.header) and options.format != "binary"
        self._binary_header = options.format == "binary"
        o = options
        self._delim, self._quote, self._escape = o.special_bytes()
        self._null = o.null.encode()
        self._csv = o.format == "csv"
        self._scanner = LineScanner(self._csv, self._quote, self._escape, direction == "in")

    def feed(self, data: bytes) -> bytes:
        """The transformed bytes for as many complete rows as `data` completes."""
        if self._mismatch is not None:
            raise self._mismatch
        if self._done:
            if self.options.format == "binary" and data:
                raise CopyValueError(BAD_COPY, "received copy data after EOF marker")
            return b""
        self._buf += data
        return self._run(final=False)

    def finish(self) -> bytes:
        """What is left at CopyDone (a last line without newline); raises on a partial row."""
        if self._mismatch is not None:
            raise self._mismatch
        if self._done:
            return b""
        out = self._run(final=True)
        if self._buf:
            if self._binary_header:
                raise _bad_header(bytes(self._buf))
            raise CopyValueError(BAD_COPY, "unexpected EOF in COPY data")
        return out

    def _run(self, final: bool) -> bytes:
        if self.options.format == "binary":
            return self._binary(final)
        return self._lines(final)

    # -- text and CSV ----------------------------------------------------------------------

    def _lines(self, final: bool) -> bytes:
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        scan = self._scanner.scan
        row = self._csv_row if self._csv else self._text_row
        while True:
            found = scan(buf, pos, final)
            if found is None:
                break
            end, nxt, marker = found
            if nxt == pos and not marker:
                break  # end of data at a line start
            if self.direction == "in" and not check_utf8(
                buf, pos, max(nxt, self._scanner.read_to), final
            ):
                break  # the line is read again with more data
            if self._header:
                self._header = False
                out.append(bytes(buf[pos:nxt]))
            elif marker and end == pos:
                out.append(bytes(buf[pos:nxt]))
            else:
                out.append(row(bytes(buf[pos:end])))
                out.append(bytes(buf[end:nxt]))
            pos = nxt
            if marker or self._short:
                self._done = True  # the server ignores what follows `\.`, or fails here
                buf.clear()
                return b"".join(out)
        del buf[:pos]
        return b"".join(out)

    def _text_row(self, line: bytes) -> bytes:
        out: list[bytes] = []
        prev = 0
        cols = self.cols
        spans = text_fields(line, self._delim)
        self._check_count(len(spans))
        for k, (start, end, vend) in enumerate(spans):
            col = cols[k] if k < self.ncols else None
            if col is None or line[start:vend] == self._null:
                continue
            value = text_unescape(line[start:vend])
            if self.direction == "in":
                new = b"\\\\x" + self._seal(col, value).hex().encode()  # no escaping needed
            else:
                new = text_escape(self._reveal(col, value), self._delim)
            out.append(line[prev:start])
            out.append(new)
            prev = end
        self._raise_failed()
        if not out:
            return line
        out.append(line[prev:])
        return b"".join(out)

    def _csv_row(self, line: bytes) -> bytes:
        o = self.options
        quote, escape, delim, null = self._quote, self._escape, self._delim, self._null
        out: list[bytes] = []
        prev = 0
        cols = self.cols
        spans = csv_fields(line, delim, quote, escape)
        self._check_count(len(spans))
        for k, (start, end, saw_quote) in enumerate(spans):
            col = cols[k] if k < self.ncols else None
            if col is None:
                continue
            raw = line[start:end]
            if not saw_quote and raw == null:
                if self.direction == "out" or not o.forced(o.force_not_null, k):
                    continue
                value = null
            else:
                value = csv_value(raw, quote, escape) if saw_quote else raw
                if self.direction == "in" and value == null and o.forced(o.force_null, k):
                    continue
            if self.direction == "in":
                plain = b"\\x" + self._seal(col, value).hex().encode()
                force, single = False, False
            else:
                plain = self._reveal(col, value)
                force, single = o.forced(o.force_quote, k), self.ncols == 1
            new = csv_encode(
                plain,
                delim=delim,
                quote=quote,
                escape=escape,
                null=null,
                force=force,
                single=single,
            )
            out.append(line[prev:start])
            out.append(new)
            prev = end
        self._raise_failed()
        if not out:
            return line
        out.append(line[prev:])
        return b"".join(out)

    def _test(self, col: _Column, canonical: bytes) -> bytes:
        """Remember the first CHECK the value fails; encrypt it."""
        if self.checks is not None:
            found = violation(self.checks, col.table, col.column, canonical, col.kind.oid)
            self._failed = first(self._failed, found)
        return col.cipher.encrypt(canonical)

    def _raise_failed(self) -> None:
        """At the end of a row (PostgreSQL reads a whole row before testing constraints)."""
        if self._failed is not None:
            _, _, sqlstate, message = self._failed
            raise CopyValueError(sqlstate, message)

    def _check_count(self, count: int) -> None:
        """Too many fields: the server's error. Too few: the server names the missing column
        (after reading the fields before it), so the row goes on and the stream stops."""
        if self.direction != "in" or count == self.ncols:
            return
        if count > self.ncols:
            raise CopyValueError(BAD_COPY, "extra data after last expected column")
        self._short = True

    def _seal(self, col: _Column, value: bytes) -> bytes:
        """Client text (bytes as received) -> ciphertext."""
        try:
            canonical = col.kind.codec.from_text(decode_utf8(value), col.kind.typmod, self.fmt)
        except CodecError as exc:
            raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None
        return self._test(col, canonical)

    def _reveal(self, col: _Column, value: bytes) -> bytes:
        """The server's bytea text -> the declared type's text."""
        try:
            sealed = bytea_from_text(value)
        except ValueError_ as exc:
            raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None
        canonical = self._decrypt(col, sealed)
        try:
            return col.kind.codec.to_text(canonical, self.fmt).encode()
        except CodecError as exc:
            raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None

    @staticmethod
    def _decrypt(col: _Column, sealed: bytes) -> bytes:
        try:
            return col.cipher.decrypt(sealed)
        except ValueDecryptionError:
            raise CopyValueError(
                "XX001", "pgcloak could not decrypt a stored value (tampered or wrong key)"
            ) from None

    # -- binary ----------------------------------------------------------------------------

    def _binary(self, final: bool) -> bytes:
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        if self._binary_header:
            end = _header_end(buf)
            if end is None:
                return b""
            self._binary_header = False
            out.append(bytes(buf[:end]))
            pos = end
        n = len(buf)
        while pos + 2 <= n:
            count = _I16.unpack_from(buf, pos)[0]
            if count == -1:
                if pos + 2 < n:
                    raise CopyValueError(BAD_COPY, "received copy data after EOF marker")
                out.append(bytes(buf[pos : pos + 2]))
                pos += 2
                self._done = True
                break
            if count != self.ncols:
                raise CopyValueError(BAD_COPY, f"row field count is {count}, expected {self.ncols}")
            tuple_out = self._binary_tuple(buf, pos + 2, count)
            if tuple_out is None:
                break
            data, pos = tuple_out
            out.append(data)
        if final and 0 < n - pos < 2:
            pos = n  # an odd byte where a tuple would start reads as end of data
        del buf[:pos]
        return b"".join(out)

    def _binary_tuple(self, buf: bytearray, pos: int, count: int) -> tuple[bytes, int] | None:
        """(transformed tuple, end) for the tuple whose fields start at `pos`; None: incomplete."""
        n = len(buf)
        parts = [_I16.pack(count)]
        for k in range(count):
            if pos + 4 > n:
                return None
            size = _I32.unpack_from(buf, pos)[0]
            if size < -1:
                raise CopyValueError(BAD_COPY, "invalid field size")
            if size >= _MAX_FIELD:
                raise CopyValueError("54000", "out of memory")
            end = pos + 4 + max(size, 0)
            if end > n:
                return None
            col = self.cols[k]
            if col is None or size == -1:
                parts.append(bytes(buf[pos:end]))
            else:
                value = self._binary_value(col, bytes(buf[pos + 4 : end]))
                parts.append(_I32.pack(len(value)) + value)
            pos = end
        self._raise_failed()
        return b"".join(parts), pos

    def _binary_value(self, col: _Column, value: bytes) -> bytes:
        if self.direction == "in":
            try:
                canonical = col.kind.codec.from_binary(value, col.kind.typmod)
            except CodecError as exc:
                raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None
            return self._test(col, canonical)
        canonical = self._decrypt(col, value)
        try:
            return col.kind.codec.to_binary(canonical)
        except CodecError as exc:
            raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None


def _header_end(buf: bytearray) -> int | None:
    """End of a complete, valid binary COPY header; None while incomplete."""
    n = len(buf)
    if n < len(_SIGNATURE):
        if buf != _SIGNATURE[:n]:
            raise _bad_header(bytes(buf))
        return None
    if buf[: len(_SIGNATURE)] != _SIGNATURE:
        raise _bad_header(bytes(buf))
    if n < 19:
        return None
    flags = _I32.unpack_from(buf, 11)[0]
    if flags & (1 << 16):
        raise CopyValueError(BAD_COPY, "invalid COPY file header (WITH OIDS)")
    if (flags & ~(1 << 16)) >> 16:
        raise CopyValueError(BAD_COPY, "unrecognized critical flags in COPY file header")
    ext = _I32.unpack_from(buf, 15)[0]
    if ext < 0:
        raise CopyValueError(BAD_COPY, "invalid COPY file header (missing length)")
    end = 19 + ext
    return end if n >= end else None


def _bad_header(data: bytes) -> CopyValueError:
    """The server's complaint about a binary header cut short (or wrong) at CopyDone."""
    if len(data) < len(_SIGNATURE) or data[: len(_SIGNATURE)] != _SIGNATURE:
        return CopyValueError(BAD_COPY, "COPY file signature not recognized")
    if len(data) < 15:
        return CopyValueError(BAD_COPY, "invalid COPY file header (missing flags)")
    if len(data) < 19:
        return CopyValueError(BAD_COPY, "invalid COPY file header (missing length)")
    return CopyValueError(BAD_COPY, "invalid COPY file header (wrong length)")
