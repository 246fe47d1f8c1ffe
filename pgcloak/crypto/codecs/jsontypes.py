"""json and jsonb: PostgreSQL 15's JSON lexer/parser (jsonapi.c) and jsonb normalisation.

json keeps the text byte for byte after validating it. jsonb is stored as
PostgreSQL prints it: object keys sorted by (byte length, bytes), duplicate
keys resolved to the last value, numbers re-printed by numeric_out, strings
de-escaped and re-escaped by escape_json(), `{"a": 1, "b": [1, 2]}` spacing.
Canonical jsonb = version byte 1 + that text (jsonb's send format).
"""

from __future__ import annotations

import re

from pgcloak.crypto.codecs import numeric
from pgcloak.crypto.codecs.base import (
    CodecError,
    SessionFormat,
    decode_utf8,
    encode_utf8,
    insufficient_data,
    reject_nul,
)

_END = "END"
_STRING = "STRING"
_NUMBER = "NUMBER"
_TRUE = "true"
_FALSE = "false"
_NULL = "null"
_SCALARS = frozenset((_STRING, _NUMBER, _TRUE, _FALSE, _NULL))

_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_NUM_INT = re.compile(r"0|[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9_\x80-\U0010ffff]*")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r"}
_SIMPLE_ESCAPES["t"] = "\t"


class _JsonError(Exception):
    """A jsonapi.c error code with the token text PostgreSQL quotes in the detail."""

    def __init__(self, detail: str, sqlstate: str = "22P02") -> None:
        super().__init__(sqlstate)
        self.detail = detail
        self.sqlstate = sqlstate


def _to_codec_error(err: _JsonError) -> CodecError:
    if err.sqlstate == "22P05":
        return CodecError("22P05", "unsupported Unicode escape sequence", err.detail)
    return CodecError("22P02", "invalid input syntax for type json", err.detail)


def _invalid_token(s: str, start: int, end: int) -> _JsonError:
    return _JsonError(f'Token "{s[start:end]}" is invalid.')


class _Lexer:
    """json_lex(): one token at a time, so errors surface in PostgreSQL's order."""

    __slots__ = ("end", "n", "pos", "s", "start", "strval", "tok", "want_strval")

    def __init__(self, s: str, want_strval: bool) -> None:
        self.s = s
        self.n = len(s)
        self.pos = 0
        self.want_strval = want_strval
        self.tok = _END
        self.start = 0
        self.end = 0
        self.strval: str | None = None

    def advance(self) -> None:
        s, n = self.s, self.n
        pos = self.pos
        while pos < n and s[pos] in " \t\n\r":
            pos += 1
        self.start = pos
        self.strval = None
        if pos >= n:
            self.tok, self.end, self.pos = _END, pos, pos
            return
        c = s[pos]
        if c in "{}[],:":
            self.tok, self.end, self.pos = c, pos + 1, pos + 1
        elif c == '"':
            self._string(pos)
        elif c == "-" or "0" <= c <= "9":
            self._number(pos + 1 if c == "-" else pos)
        else:
            m = _ALNUM.match(s, pos)
            assert m is not None
            end = m.end()
            if end == pos:
                raise _invalid_token(s, pos, pos + 1)
            word = s[pos:end]
            if word not in (_TRUE, _FALSE, _NULL):
                raise _invalid_token(s, pos, end)
            self.tok, self.end, self.pos = word, end, end

    def _number(self, p: int) -> None:
        """json_lex_number(): JSON's grammar; trailing alphanumerics join the bad token."""
        s, n = self.s, self.n
        error = False
        m = _NUM_INT.match(s, p)
        if m is None:
            error = True
        else:
            p = m.end()
        if p < n and s[p] == ".":
            p += 1
            m = _DIGITS.match(s, p)
            if m is None:
                error = True
            else:
                p = m.end()
        if p < n and s[p] in "eE":
            p += 1
            if p < n and s[p] in "+-":
                p += 1
            m = _DIGITS.match(s, p)
            if m is None:
                error = True
            else:
                p = m.end()
        m = _ALNUM.match(s, p)
        assert m is not None
        if m.end() != p:
            error = True
            p = m.end()
        if error:
            raise _invalid_token(s, self.start, p)
        self.tok, self.end, self.pos = _NUMBER, p, p

    def _string(self, start: int) -> None:
        """json_lex_string(): escapes checked always, de-escaped only for jsonb."""
        s, n = self.s, self.n
        p = start + 1
        parts: list[str] = []
        want = self.want_strval
        hi_surrogate = -1
        while True:
            m = _PLAIN.match(s, p)
            assert m is not None
            if m.end() != p:
                if hi_surrogate != -1:
                    raise _JsonError("Unicode low surrogate must follow a high surrogate.")
                if want:
                    parts.append(s[p : m.end()])
                p = m.end()
            if p >= n:
                raise _invalid_token(s, start, p)
            c = s[p]
            if c == '"':
                break
            if c != "\\":
                raise _JsonError(f"Character with value 0x{ord(c):02x} must be escaped.")
            p += 1
            if p >= n:
                raise _invalid_token(s, start, p)
            c = s[p]
            if c == "u":
                code = 0
                for _ in range(4):
                    p += 1
                    if p >= n:
                        raise _invalid_token(s, start, p)
                    h = s[p]
                    if h not in "0123456789abcdefABCDEF":
                        raise _JsonError('"\\u" must be followed by four hexadecimal digits.')
                    code = code * 16 + int(h, 16)
                p += 1
                if not want:
                    continue
                if 0xD800 <= code <= 0xDBFF:
                    if hi_surrogate != -1:
                        raise _JsonError("Unicode high surrogate must not follow a high surrogate.")
                    hi_surrogate = code
                    continue
                if 0xDC00 <= code <= 0xDFFF:
                    if hi_surrogate == -1:
                        raise _JsonError("Unicode low surrogate must follow a high surrogate.")
                    code = 0x10000 + ((hi_surrogate & 0x3FF) << 10) + (code & 0x3FF)
                    hi_surrogate = -1
                if hi_surrogate != -1:
                    raise _JsonError("Unicode low surrogate must follow a high surrogate.")
                if code == 0:
                    raise _JsonError("\\u0000 cannot be converted to text.", "22P05")
                parts.append(chr(code))
                continue
            if hi_surrogate != -1:
                raise _JsonError("Unicode low surrogate must follow a high surrogate.")
            esc = _SIMPLE_ESCAPES.get(c)
            if esc is None:
                raise _JsonError(f'Escape sequence "\\{c}" is invalid.')
            if want:
                parts.append(esc)
            p += 1
        if hi_surrogate != -1:
            raise _JsonError("Unicode low surrogate must follow a high surrogate.")
        self.tok, self.end, self.pos = _STRING, p + 1, p + 1
        if want:
            self.strval = "".join(parts)


# A parsed jsonb value: str (string), bytes (numeric canonical), bool, None,
# list (array) or dict (object: key -> value, keys kept in input order).
JsonbValue = str | bytes | bool | list["JsonbValue"] | dict[str, "JsonbValue"] | None


def _expected(lx: _Lexer, what: str) -> _JsonError:
    """report_parse_error(): end of input wins over the context's message."""
    if lx.tok == _END:
        return _JsonError("The input string ended unexpectedly.")
    return _JsonError(f'{what}, but found "{lx.s[lx.start : lx.end]}".')


class _Frame:
    """An open object or array; `container` is only built for jsonb."""

    __slots__ = ("container", "is_object", "key")

    def __init__(self, is_object: bool, jsonb: bool) -> None:
        self.is_object = is_object
        self.key: str | None = None
        self.container: dict[str, JsonbValue] | list[JsonbValue] | None = None
        if jsonb:
            self.container = {} if is_object else []


def _parse(s: str, jsonb: bool) -> JsonbValue:
    """pg_parse_json() without recursion; builds values only for jsonb."""
    lx = _Lexer(s, jsonb)
    lx.advance()
    stack: list[_Frame] = []
    value: JsonbValue = None
    want_value = True
    while True:
        if want_value:
            tok = lx.tok
            if tok in ("{", "["):
                lx.advance()
                frame = _Frame(tok == "{", jsonb)
                stack.append(frame)
                closer = "}" if frame.is_object else "]"
                if lx.tok != closer:
                    if frame.is_object:
                        if lx.tok != _STRING:
                            raise _expected(lx, 'Expected string or "}"')
                        _field(lx, frame)
                    continue
                lx.advance()
                stack.pop()
                value = frame.container
            elif tok in _SCALARS:
                text = lx.strval if tok == _STRING else s[lx.start : lx.end]
                lx.advance()
                if not jsonb:
                    value = None
                elif tok == _STRING:
                    value = text
                elif tok == _NUMBER:
                    assert text is not None
                    value = numeric.parse(text)
                else:
                    value = True if tok == _TRUE else False if tok == _FALSE else None
            else:
                raise _expected(lx, "Expected JSON value")
        # A value is complete: store it, then find what follows.
        want_value = True
        while True:
            if not stack:
                if lx.tok != _END:
                    raise _expected(lx, "Expected end of input")
                return value
            frame = stack[-1]
            container = frame.container
            if isinstance(container, dict):
                assert frame.key is not None
                container.pop(frame.key, None)  # the last duplicate wins
                container[frame.key] = value
            elif container is not None:
                container.append(value)
            if lx.tok == ",":
                lx.advance()
                if frame.is_object:
                    if lx.tok != _STRING:
                        raise _expected(lx, "Expected string")
                    _field(lx, frame)
                break
            if lx.tok != ("}" if frame.is_object else "]"):
                if frame.is_object:
                    raise _expected(lx, 'Expected "," or "}"')
                raise _expected(lx, 'Expected "," or "]"')
            lx.advance()
            stack.pop()
            value = frame.container


def _field(lx: _Lexer, frame: _Frame) -> None:
    """parse_object_field() up to the value: the key (current token) and the colon."""
    frame.key = lx.strval
    lx.advance()
    if lx.tok != ":":
        raise _expected(lx, 'Expected ":"')
    lx.advance()


_ESCAPE_OUT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_ESCAPE_OUT["\t"] = "\\t"
for _code in range(0x20):
    _ESCAPE_OUT.setdefault(chr(_code), f"\\u{_code:04x}")
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def escape_json(text: str) -> str:
    """escape_json(): quote, escape ", \\ and control characters; keep the rest."""
    if _NEEDS_ESCAPE.search(text) is None:
        return '"' + text + '"'
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPE_OUT[m.group(0)], text) + '"'


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return len(raw), raw


def jsonb_text(value: JsonbValue) -> str:
    """JsonbToCString() without indentation."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: JsonbValue, out: list[str]) -> None:
    # Explicit stack instead of recursion: deep documents must not hit Python's limit.
    todo: list[object] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, str):
            out.append(escape_json(item))
        elif isinstance(item, bytes):
            out.append(numeric.to_text(item))
        elif item is True:
            out.append("true")
        elif item is False:
            out.append("false")
        elif item is None:
            out.append("null")
        elif isinstance(item, list):
            pending: list[object] = [_Literal("[")]
            for i, elem in enumerate(item):
                if i:
                    pending.append(_Literal(", "))
                pending.append(elem)
            pending.append(_Literal("]"))
            todo.extend(reversed(pending))
        elif isinstance(item, dict):
            pending = [_Literal("{")]
            for i, key in enumerate(sorted(item, key=_key_order)):
                if i:
                    pending.append(_Literal(", "))
                pending.append(_Literal(escape_json(key) + ": "))
                pending.append(item[key])
            pending.append(_Literal("}"))
            todo.extend(reversed(pending))


class _Literal:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def validate_json(text: str) -> None:
    """json_in(): raise CodecError unless `text` is valid JSON."""
    try:
        _parse(text, False)
    except _JsonError as err:
        raise _to_codec_error(err) from None


def normalize_jsonb(text: str) -> str:
    """jsonb_in() then jsonb_out()."""
    try:
        return jsonb_text(_parse(text, True))
    except _JsonError as err:
        raise _to_codec_error(err) from None


class JsonCodec:
    """json: canonical = the text exactly as given (after validation)."""

    oid = 114
    name = "json"
    array_oid = 199

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        validate_json(text)
        return encode_utf8(text)

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        validate_json(decode_utf8(data))
        return data

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return canonical.decode("utf-8")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


class JsonbCodec:
    """jsonb: canonical = b"\\x01" + PostgreSQL's normalised text."""

    oid = 3802
    name = "jsonb"
    array_oid = 3807

    def from_text(self, text: str, typmod: int, fmt: SessionFormat) -> bytes:
        reject_nul(text)
        return b"\x01" + normalize_jsonb(text).encode("utf-8")

    def from_binary(self, data: bytes, typmod: int) -> bytes:
        if not data:
            raise insufficient_data()
        if data[0] != 1:
            raise CodecError("XX000", f"unsupported jsonb version number {data[0]}")
        return b"\x01" + normalize_jsonb(decode_utf8(data[1:])).encode("utf-8")

    def to_text(self, canonical: bytes, fmt: SessionFormat) -> str:
        return canonical[1:].decode("utf-8")

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


JSON = JsonCodec()
JSONB = JsonbCodec()
