"""COPY text and CSV data as PostgreSQL 15 reads and writes it, for the proxy's COPY transform.

The proxy swaps encrypted fields inside a COPY stream and must cut the stream into
lines and fields exactly where the server would (CopyReadLineText,
CopyReadAttributesText/CSV in copyfromparse.c), or a crafted stream could slip a
plaintext value past it. Output escaping follows CopyAttributeOutText/CSV
(copyto.c) so decrypted rows are byte-identical to a plain table's. Everything
here works on bytes in UTF-8 (the only client encoding assumed); ASCII bytes
never occur inside a UTF-8 multibyte sequence, so byte-wise scanning is safe.
"""

from __future__ import annotations

import re
from typing import Final

from pgcloak.crypto.codecs import CodecError
from pgcloak.crypto.codecs.base import decode_utf8
from pgcloak.proxy.cloak_values import ValueError_

__all__ = [
    "CopyValueError",
    "LineScanner",
    "check_utf8",
    "csv_encode",
    "csv_fields",
    "csv_value",
    "text_escape",
    "text_fields",
    "text_unescape",
]

CR: Final = 0x0D
LF: Final = 0x0A
BACKSLASH: Final = 0x5C
DOT: Final = 0x2E
EOL_UNKNOWN, EOL_NL, EOL_CR, EOL_CRNL = range(4)
BAD_COPY: Final = "22P04"


class CopyValueError(ValueError_):
    """Bad COPY data, or a value pgcloak cannot encrypt/decrypt, with PostgreSQL's SQLSTATE.

    The message may quote client data: meant for the client's ErrorResponse only
    (str()/repr() show just the SQLSTATE, like ValueError_).
    """

    def __init__(
        self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(sqlstate, message, detail, hint)

    def __repr__(self) -> str:
        return f"CopyValueError({self.sqlstate!r})"


def _stray(csv: bool, char: int) -> CopyValueError:
    """A CR or LF that does not match the first line's newline style."""
    what, shown = ("carriage return", '"\\r"') if char == CR else ("newline", '"\\n"')
    if csv:
        hint = f"Use quoted CSV field to represent {what}."
        return CopyValueError(BAD_COPY, f"unquoted {what} found in data", hint=hint)
    return CopyValueError(
        BAD_COPY, f"literal {what} found in data", hint=f"Use {shown} to represent {what}."
    )


_MARKER_STYLE = "end-of-copy marker does not match previous newline style"
_MARKER_CORRUPT = "end-of-copy marker corrupt"


class LineScanner:
    """CopyReadLineText: where each line of text/CSV COPY data ends.

    Keeps the newline style of the first line (later lines must match) and, for
    client data, recognizes the end-of-copy marker `\\.`. A line that needs bytes
    not received yet returns None; the scan resumes where it stopped.
    """

    def __init__(self, csv: bool, quote: int, escape: int, marker: bool) -> None:
        self.csv = csv
        self.quote = quote
        self.escape = -1 if escape == quote else escape  # same as quote: no escape handling
        self.marker = marker
        self.eol = EOL_UNKNOWN
        specials = {CR, LF}
        if csv:
            specials.add(quote)
            if self.escape >= 0:
                specials.add(self.escape)
        else:
            specials.add(BACKSLASH)
        chars = b"".join(re.escape(bytes([c])) for c in sorted(specials))
        self._special = re.compile(b"[" + chars + b"]")
        self._resume: tuple[int, bool, bool, bool] | None = None
        self._final = False
        self.read_to = 0
        """Where the server stops reading for the line last returned, if past its end."""

    def scan(self, buf: bytes | bytearray, start: int, final: bool) -> tuple[int, int, bool] | None:
        """(content end, next line start, ended by `\\.`) for the line at `start`.

        `final`: no more data will come (CopyDone); the line then ends at the end
        of the data (content end == next start == len(buf) for an empty rest).
        """
        n = len(buf)
        csv, quote, escape = self.csv, self.quote, self.escape
        self._final = final
        self.read_to = 0
        if self._resume is not None:
            off, in_quote, esc, first = self._resume
            i = start + off
            self._resume = None
        else:
            i, in_quote, esc, first = start, False, False, True
        while True:
            if i >= n:
                if not final:
                    self._resume = (i - start, in_quote, esc, first)
                    return None
                return n, n, False
            c = buf[i]
            if csv:
                special = c in (CR, LF, quote, escape) or (first and c == BACKSLASH)
            else:
                special = c in (CR, LF, BACKSLASH)
            if not special:
                m = self._special.search(buf, i + 1)
                i = m.start() if m is not None else n
                first = esc = False
                continue
            saved = (i - start, in_quote, esc, first)
            if csv:
                if in_quote and c == escape:
                    esc = not esc
                if c == quote and not esc:
                    in_quote = not in_quote
                if c != escape:
                    esc = False
            if c == CR and not (csv and in_quote):
                if i + 1 >= n and not final and (csv or self.eol in (EOL_UNKNOWN, EOL_CRNL)):
                    self._resume = saved  # the server reads the next byte first
                    return None
                if self.eol in (EOL_UNKNOWN, EOL_CRNL):
                    if i + 1 < n and buf[i + 1] == LF:
                        self.eol = EOL_CRNL
                        return i, i + 2, False
                    if self.eol == EOL_CRNL:
                        raise self._err(buf, start, i + 2, _stray(csv, CR))
                    self.eol = EOL_CR
                    self.read_to = i + 2  # the server looked at the next byte
                elif self.eol == EOL_NL:
                    raise self._err(buf, start, i + (2 if csv else 1), _stray(csv, CR))
                elif csv:
                    self.read_to = i + 2  # CSV mode always fetches the byte after a CR
                return i, i + 1, False
            if c == LF and not (csv and in_quote):
                if self.eol in (EOL_CR, EOL_CRNL):
                    raise self._err(buf, start, i + 1, _stray(csv, LF))
                self.eol = EOL_NL
                return i, i + 1, False
            if c == BACKSLASH and (first or not csv):
                if i + 1 >= n:
                    if not final:
                        self._resume = saved
                        return None
                    return n, n, False  # a backslash at the very end stays in the line
                if buf[i + 1] == DOT and self.marker:
                    found = self._marker(buf, start, i, final)
                    if found is None:
                        self._resume = saved
                        return None
                    if found > 0:
                        return i, found, True
                    i = -found  # CSV: `\.` followed by data is data
                    first = False
                    continue
                if not csv:
                    i += 2  # a backslash escapes whatever follows, even a newline
                    first = False
                    continue
            first = False
            i += 1

    def _marker(self, buf: bytes | bytearray, start: int, i: int, final: bool) -> int | None:
        """After `\\.` at `i`: the marker's end (> 0), -(where to go on) when CSV reads it as
        data, None when more data is needed."""
        n = len(buf)
        j = i + 2
        if self.eol == EOL_CRNL:
            if j >= n and not final:
                return None
            c2 = buf[j] if j < n else 0
            j += 1
            if c2 == LF:
                if not self.csv:
                    raise self._err(buf, start, j, CopyValueError(BAD_COPY, _MARKER_STYLE))
                return -(i + 1)
            if c2 != CR:
                if not self.csv:
                    raise self._err(buf, start, j, CopyValueError(BAD_COPY, _MARKER_CORRUPT))
                return -(i + 1)
        if j >= n and not final:
            return None
        c2 = buf[j] if j < n else 0
        j += 1
        if c2 not in (CR, LF):
            if not self.csv:
                raise self._err(buf, start, j, CopyValueError(BAD_COPY, _MARKER_CORRUPT))
            return -(i + 1)
        eol = self.eol
        if (eol in (EOL_NL, EOL_CRNL) and c2 != LF) or (eol == EOL_CR and c2 != CR):
            raise self._err(buf, start, j, CopyValueError(BAD_COPY, _MARKER_STYLE))
        return j

    def _err(
        self, buf: bytes | bytearray, start: int, end: int, exc: CopyValueError
    ) -> CopyValueError:
        """`exc`, unless client bytes the server reads before it are not valid UTF-8."""
        if self.marker:
            try:
                check_utf8(buf, start, min(end, len(buf)), self._final)
            except CopyValueError as bad:
                return bad
        return exc


def check_utf8(buf: bytes | bytearray, start: int, end: int, final: bool = True) -> bool:
    """Raise PostgreSQL's 22021 error for an invalid sequence (or NUL) starting in the range.

    The server checks the encoding of COPY input as it reads it, so a bad byte is
    reported before anything wrong later in the same line. False when the range
    runs into a sequence the data so far cuts off (the server waits for the rest).
    """
    chunk = bytes(buf[start:end])
    try:
        chunk.decode("utf-8")
        if 0 not in chunk:
            return True
    except UnicodeDecodeError:
        pass
    tail = bytes(buf[start:])
    limit = end - start
    bad = limit
    try:
        tail.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < limit:
            if exc.reason == "unexpected end of data" and not final:
                if tail.find(0, 0, exc.start) < 0:
                    return False
            else:
                bad = exc.start
    if bad >= limit and tail.find(0, 0, limit) < 0:
        return True
    try:
        decode_utf8(tail)  # its message shows the bytes after a bad one, like the server's
    except CodecError as exc:
        raise CopyValueError(exc.sqlstate, exc.message, exc.detail, exc.hint) from None
    return True  # pragma: no cover - decode_utf8 fails where decode() did


# -- text format ------------------------------------------------------------------------


def text_fields(line: bytes, delim: int) -> list[tuple[int, int, int]]:
    """CopyReadAttributesText's split: (start, end, value end) per field.

    The value end excludes a lone backslash ending the line, which PostgreSQL
    drops (and leaves out of the NULL-marker comparison).
    """
    spans: list[tuple[int, int, int]] = []
    n = len(line)
    i = start = 0
    find = line.find
    d = find(delim)
    while True:
        if 0 <= d < i:
            d = find(delim, i)
        b = find(BACKSLASH, i, d if d >= 0 else n)
        if b >= 0:
            if b + 1 >= n:
                spans.append((start, n, b))
                return spans
            i = b + 2
            continue
        if d < 0:
            spans.append((start, n, n))
            return spans
        spans.append((start, d, d))
        i = start = d + 1


_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_LETTERS = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}


def _unescape_one(m: re.Match[bytes]) -> bytes:
    octal, hexa, other = m.groups()
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexa is not None:
        return bytes([int(hexa, 16)])
    return _LETTERS.get(other[0], other)


def text_unescape(raw: bytes) -> bytes:
    """A text-format field's value: `\\t`, `\\n`, `\\\\`, octal and hex escapes."""
    if BACKSLASH not in raw:
        return raw
    return _UNESCAPE.sub(_unescape_one, raw)


_CONTROL = {0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v"}


def text_escape(value: bytes, delim: int) -> bytes:
    """CopyAttributeOutText: backslash, the delimiter and \\b\\f\\n\\r\\t\\v escaped."""
    table = _ESCAPE_TABLES.get(delim)
    if table is None:
        table = _ESCAPE_TABLES[delim] = _escape_table(delim)
    pattern, repl = table
    return pattern.sub(lambda m: repl[m.group()[0]], value)


def _escape_table(delim: int) -> tuple[re.Pattern[bytes], dict[int, bytes]]:
    repl = dict(_CONTROL)
    repl[BACKSLASH] = b"\\\\"
    repl.setdefault(delim, b"\\" + bytes([delim]))
    chars = b"".join(re.escape(bytes([c])) for c in sorted(repl))
    return re.compile(b"[" + chars + b"]"), repl


_ESCAPE_TABLES: dict[int, tuple[re.Pattern[bytes], dict[int, bytes]]] = {}


# -- CSV --------------------------------------------------------------------------------


def _unterminated() -> CopyValueError:
    return CopyValueError(BAD_COPY, "unterminated CSV quoted field")


def csv_fields(line: bytes, delim: int, quote: int, escape: int) -> list[tuple[int, int, bool]]:
    """CopyReadAttributesCSV's split: (start, end, saw a quote) per field."""
    spans: list[tuple[int, int, bool]] = []
    n = len(line)
    i = start = 0
    saw = False
    find = line.find
    d = find(delim)
    while True:
        if 0 <= d < i:
            d = find(delim, i)
        q = find(quote, i, d if d >= 0 else n)
        if q < 0:
            if d < 0:
                spans.append((start, n, saw))
                return spans
            spans.append((start, d, saw))
            i = start = d + 1
            saw = False
            continue
        saw = True
        i = _quoted_end(line, q + 1, quote, escape)


def _quoted_end(line: bytes, i: int, quote: int, escape: int) -> int:
    """Position after the quote closing the quoted part that starts at `i`."""
    n = len(line)
    while True:
        q = line.find(quote, i)
        e = line.find(escape, i, q if q >= 0 else n) if escape != quote else -1
        if e >= 0:
            i = e + 2 if e + 1 < n and line[e + 1] in (escape, quote) else e + 1
            continue
        if q < 0:
            raise _unterminated()
        if escape == quote and q + 1 < n and line[q + 1] == quote:
            i = q + 2
            continue
        return q + 1


def csv_value(raw: bytes, quote: int, escape: int) -> bytes:
    """A CSV field's value: quotes removed, escaped quote/escape characters kept."""
    if quote not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        q = raw.find(quote, i)
        if q < 0:
            out += raw[i:]
            break
        out += raw[i:q]
        i = q + 1
        while True:  # inside quotes
            c = raw[i]  # the split guarantees a closing quote
            if c == escape and i + 1 < n and raw[i + 1] in (escape, quote):
                out.append(raw[i + 1])
                i += 2
            elif c == quote:
                i += 1
                break
            else:
                out.append(c)
                i += 1
    return bytes(out)


def csv_encode(
    value: bytes,
    delim: int,
    quote: int,
    escape: int,
    null: bytes,
    *,
    force: bool = False,
    single: bool = False,
) -> bytes:
    """CopyAttributeOutCSV: quoted when forced, equal to the NULL string, `\\.` alone on
    its line, or holding the delimiter, the quote, CR or LF."""
    use = force or value == null
    if not use:
        if single and value == b"\\.":
            use = True
        else:
            use = delim in value or quote in value or LF in value or CR in value
    if not use:
        return value
    q = bytes([quote])
    e = bytes([escape])
    body = value.replace(e, e + e) if escape != quote else value
    return q + body.replace(q, e + q) + q
