"""EXPLAIN through a cloaked, encrypting session: the plan in the client's own words.

The server plans the rewritten statement, so its EXPLAIN names physical relations
and columns, the rewriter's opaque aliases (`a1`: table and column aliases, CTE and
window names) and, for encrypted columns, `'\\x01…'::bytea` ciphertext constants.
A plain PostgreSQL prints the client's names and `'x'::text`. `ExplainMapper` maps
one EXPLAIN text back, in its own format (TEXT; JSON and YAML strings; XML element
text): identifiers as whole tokens outside string constants (physical names inside
constants too, as in `'t8…'::regclass`); the server's de-duplicated names (`t8…_1`,
`a1_1`) as the same suffix on the client's name; ciphertext constants decrypted with
the statement's column keys and printed the way ruleutils' get_const_expr() prints a
constant of the type PostgreSQL would have used. A constant that does not decrypt
stays as it is. The plaintext goes to the client that sent it; nothing is logged.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pgcloak.crypto.codecs import CodecError, SessionFormat, codec_for
from pgcloak.crypto.codecs.arrays import parse_literal, quote_item
from pgcloak.crypto.codecs.casts import ELEMENT_OF, type_name
from pgcloak.crypto.codecs.convert import literal_value, to_column
from pgcloak.crypto.values import ValueDecryptionError
from pgcloak.proxy.cloak_values import EncColumnLike, Keyring, ValueError_, encrypted_type
from pgcloak.registry.unmask import WORD, closing_quote, quote_ident, unmask_in_literal
from pgcloak.rewriter import Plan

__all__ = ["ExplainMapper", "format_type"]

_NUMBERED = re.compile(r"(.+)_([0-9]+)")
_BYTEA = re.compile(r"::bytea(\[\])?(?![A-Za-z0-9_$])")
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".()]+)'
# A TEXT plan node naming its relation: `... on <name> <alias>`, the alias followed by
# the end of the line or by the node's figures.
_ON_ALIAS = re.compile(rf"^([^:'(]*? on (?:{_IDENT}\.)?({_IDENT})) ({_IDENT})(?= |$)")
_NAMEDATALEN = 64

BOOL, INT8, INT2, INT4, TEXT = 16, 20, 21, 23, 25
FLOAT4, FLOAT8, BPCHAR, VARCHAR, NUMERIC = 700, 701, 1042, 1043, 1700
_INT_RANK = {INT2: 0, INT4: 1, INT8: 2}
_UNTYPED = (0, 705)  # an unspecified parameter, an unknown-type literal


class ExplainMapper:
    """Maps EXPLAIN texts of one statement; cheap to build (constants work lazily)."""

    def __init__(
        self,
        names: Mapping[str, str],
        plan: Plan | None = None,
        ring: Keyring | None = None,
        fmt: SessionFormat | None = None,
    ) -> None:
        self.names = names
        self.aliases: dict[str, str] = dict(plan.aliases) if plan is not None else {}
        self.scs = fmt.standard_conforming_strings if fmt is not None else True
        self.constants: _Constants | None = None
        slots = plan is not None and bool(plan.value_slots or plan.param_slots)
        if slots and plan is not None and ring is not None and fmt is not None:
            self.constants = _Constants(plan, ring, fmt)

    def wants(self, raw: bytes, physical: re.Pattern[bytes]) -> bool:
        """Whether an EXPLAIN value may need mapping at all."""
        return bool(self.aliases) or physical.search(raw) is not None or b"::bytea" in raw

    def text(self, text: str) -> str:
        """One EXPLAIN value (a TEXT line, or a whole JSON/YAML/XML document)."""
        stripped = text.lstrip()
        head = stripped[:1]
        if head == "[" or stripped.startswith("- Plan"):  # JSON, YAML: "..." strings
            return _QUOTED.sub(lambda m: self._quoted(m.group(0)), text)
        if head == "<":  # XML: element text
            return _XML_TEXT.sub(lambda m: ">" + self._xml(m.group(1)) + "<", text)
        mapped = self.sql(text)
        # PostgreSQL leaves out an alias equal to the relation's name (`on gadgets`).
        m = _ON_ALIAS.match(mapped)
        if m is not None and m.group(2) == m.group(3):
            mapped = m.group(1) + mapped[m.end() :]
        return mapped

    def name(self, word: str) -> str | None:
        """The client's name for a physical name, opaque alias, or de-duplicated one."""
        found = self.names.get(word)
        if found is None:
            found = self.aliases.get(word)
        if found is None:
            m = _NUMBERED.fullmatch(word)
            if m is not None:
                base = self.names.get(m.group(1)) or self.aliases.get(m.group(1))
                if base is not None:
                    found = _numbered(base, m.group(2))
        return found

    def sql(self, text: str) -> str:
        """Expression text: identifiers and ciphertext constants mapped, token by token."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == '"':
                end = closing_quote(text, i, '"')
                found = self.name(text[i + 1 : end].replace('""', '"'))
                out.append(quote_ident(found) if found is not None else text[i : end + 1])
                i = end + 1
            elif ch == "'":
                end = closing_quote(text, i, "'")
                body = text[i + 1 : end]
                cast = _BYTEA.match(text, end + 1)
                if cast is not None and self.constants is not None:
                    shown = self.constants.shown(_unquote(body, self.scs), bool(cast.group(1)))
                    if shown is not None:
                        out.append(shown)
                        i = cast.end()
                        continue
                out.append("'" + unmask_in_literal(body, self.names) + "'")
                i = end + 1
            else:
                m = WORD.match(text, i)
                if m is None:
                    out.append(ch)
                    i += 1
                    continue
                found = self.name(m.group(0))
                out.append(quote_ident(found) if found is not None else m.group(0))
                i = m.end()
        return "".join(out)

    def _quoted(self, token: str) -> str:
        try:
            inner = json.loads(token)
        except ValueError:
            return token
        if not isinstance(inner, str):
            return token
        exact = self.name(inner)
        return json.dumps(exact if exact is not None else self.sql(inner), ensure_ascii=False)

    def _xml(self, text: str) -> str:
        plain = html.unescape(text)
        exact = self.name(plain)
        return html.escape(exact if exact is not None else self.sql(plain), quote=False)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_XML_TEXT = re.compile(r">([^<>]+)<")


def _unquote(body: str, scs: bool) -> str:
    """A constant's value from its quoted body (as simple_quote_literal() wrote it)."""
    body = body.replace("''", "'")
    return body if scs else body.replace("\\\\", "\\")


def _quote(value: str, scs: bool) -> str:
    """simple_quote_literal(): quotes doubled, backslashes too when not standard strings."""
    if not scs:
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def _numbered(name: str, digits: str) -> str:
    """set_rtable_names(): `name_N`, `name` clipped so the result fits NAMEDATALEN."""
    suffix = "_" + digits
    while name and len((name + suffix).encode()) >= _NAMEDATALEN:
        name = name[:-1]
    return name + suffix


# -- constants ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """A value of the statement in an encrypted column's place (literal or parameter)."""

    col: EncColumnLike
    compare: bool
    src: int  # the literal's type (0: a parameter; its Bind type is not known here)
    canonical: bytes | None  # what it encrypted to (None: unknown)
    text: str | None = None  # the literal's value as the client wrote it


class _Constants:
    """Ciphertext constants of one statement back to PostgreSQL's plaintext constants."""

    def __init__(self, plan: Plan, ring: Keyring, fmt: SessionFormat) -> None:
        self.plan = plan
        self.ring = ring
        self.fmt = fmt
        self._slots: list[_Slot] | None = None
        self._keys: dict[tuple[str, str], EncColumnLike] = {}
        for _, _, col in plan.value_slots:
            self._keys.setdefault((col.scope, col.mode), col)
        for _, col in plan.param_slots:
            self._keys.setdefault((col.scope, col.mode), col)

    def shown(self, value: str, array: bool) -> str | None:
        """`'x'::text`, `42`, `'{a,b}'::text[]`... for a bytea constant; None: unchanged."""
        if not array:
            found = self._decrypt(value)
            if found is None:
                return None
            slot = self._slot(*found)
            return self._scalar(slot, found[1])
        return self._array(value)

    def _array(self, value: str) -> str | None:
        try:
            dims, lbs, items = parse_literal(value)
        except CodecError:
            return None
        if len(dims) != 1 or lbs != [1] or not items:
            return None
        found: list[tuple[_Slot, bytes] | None] = []
        for item in items:
            if item is None:
                found.append(None)
                continue
            got = self._decrypt(item)
            if got is None:
                return None
            found.append((self._slot(*got), got[1]))
        slots = [f[0] for f in found if f is not None]
        if not slots:
            return None
        first = slots[0]
        if any(s.col.scope != first.col.scope or s.col.type_sql != first.col.type_sql
               for s in slots):  # fmt: skip
            return None
        t = encrypted_type(first.col.type_sql)
        oid: int | None = None
        if first.compare:
            oid = _common_type(t.oid, [s.src for s in slots])
            label = _label(oid) + "[]"
        else:
            label = format_type(t.oid, t.typmod) + "[]"
        texts: list[str] = []
        for f in found:
            text = "NULL" if f is None else self._text(f[0], f[1], oid)
            if text is None:
                return None
            texts.append(text if f is None else quote_item(text))
        return _quote("{" + ",".join(texts) + "}", self.fmt.standard_conforming_strings) + (
            "::" + label
        )

    def _scalar(self, slot: _Slot, canonical: bytes) -> str | None:
        scs = self.fmt.standard_conforming_strings
        t = encrypted_type(slot.col.type_sql)
        if not slot.compare:  # a stored value: the column's type, typmod applied
            text = self._text(slot, canonical, None)
            if text is None:
                return None
            return _const(text, t.oid, t.typmod >= 0, format_type(t.oid, t.typmod), scs)
        oid = _compare_type(t.oid, slot.src)
        text = self._text(slot, canonical, oid)
        return None if text is None else _const(text, oid, False, _label(oid), scs)

    def _text(self, slot: _Slot, canonical: bytes, compared_as: int | None) -> str | None:
        """The constant's output text. A compared value is the literal read as the type
        it is compared in (`1.5`, where the column's stored form is `1.500`)."""
        fmt = self.fmt
        if compared_as is not None and slot.text is not None:
            codec = codec_for(compared_as)
            if codec is not None:
                with contextlib.suppress(CodecError):
                    return codec.to_text(codec.from_text(slot.text, -1, fmt), fmt)
        try:
            return encrypted_type(slot.col.type_sql).codec.to_text(canonical, fmt)
        except CodecError:
            return None

    def _decrypt(self, value: str) -> tuple[EncColumnLike, bytes] | None:
        """(a column of the key that opens it, plaintext canonical bytes)."""
        if not value.startswith("\\x"):
            return None
        try:
            sealed = bytes.fromhex(value[2:])
        except ValueError:
            return None
        for col in self._keys.values():
            try:
                return col, self.ring.cipher(col).decrypt(sealed)
            except (ValueDecryptionError, ValueError_):
                continue
        return None

    def _slot(self, col: EncColumnLike, canonical: bytes) -> _Slot:
        """The statement's value this plaintext came from (its type, compared or stored)."""
        for slot in self.slots():
            c = slot.col
            if c.scope == col.scope and c.mode == col.mode and slot.canonical == canonical:
                return slot
        for slot in self.slots():  # a parameter, or a value of no literal: by its column
            if slot.col.scope == col.scope and slot.col.mode == col.mode:
                return _Slot(slot.col, slot.compare, 0, None)
        return _Slot(col, bool(getattr(col, "compare", False)), 0, None)

    def slots(self) -> list[_Slot]:
        if self._slots is None:
            self._slots = [*self._literal_slots(), *self._param_slots()]
        return self._slots

    def _literal_slots(self) -> list[_Slot]:
        sql = self.plan.sql or ""
        scs = self.fmt.standard_conforming_strings
        out: list[_Slot] = []
        for start, end, col in self.plan.value_slots:
            compare = bool(getattr(col, "compare", False))
            try:
                src, text = literal_value(sql[start:end], scs)
                t = encrypted_type(col.type_sql)
                canonical = to_column(
                    text, None, src, t.oid, t.typmod, compare=compare, column="", fmt=self.fmt
                )
            except (CodecError, ValueError_):
                continue
            out.append(_Slot(col, compare, src, canonical, text))
        return out

    def _param_slots(self) -> list[_Slot]:
        return [
            _Slot(col, bool(getattr(col, "compare", False)), 0, None)
            for _, col in self.plan.param_slots
        ]


def _compare_type(column: int, src: int) -> int:
    """The type of the constant PostgreSQL compares `column` with (`=` resolution).

    int2/int4/int8 have cross-type operators (the constant keeps its type); a real or
    double column compares with a number as double precision; numeric with an integer
    as numeric; varchar has no `=` of its own (text). An untyped value takes the
    column's type, without its typmod.
    """
    if src not in _UNTYPED:
        if column in _INT_RANK and src in _INT_RANK:
            return src
        if column in (FLOAT4, FLOAT8) and src != column and src in (*_INT_RANK, NUMERIC, FLOAT8):
            return FLOAT8
        if column == NUMERIC and src in _INT_RANK:
            return NUMERIC
    return TEXT if column == VARCHAR else column


def _common_type(column: int, srcs: Sequence[int]) -> int:
    """The element type of an IN list's array: select_common_type() of column and values."""
    typed = [s for s in srcs if s not in _UNTYPED]
    if column in _INT_RANK and typed and all(s in _INT_RANK for s in typed):
        return max((column, *typed), key=lambda o: _INT_RANK[o])
    if column in (FLOAT4, FLOAT8) and any(s != column for s in typed):
        return FLOAT8
    return TEXT if column == VARCHAR else column


def _label(oid: int) -> str:
    """format_type() without typmod (`bpchar` rather than `character`, i.e. char(1))."""
    return "bpchar" if oid == BPCHAR else type_name(oid)


def _const(text: str, oid: int, typmod: bool, label: str, scs: bool) -> str:
    """get_const_expr(): integers and float-looking numerics bare, booleans as words."""
    if oid == INT4 and not text.startswith("-"):
        return text
    if oid == NUMERIC and text[:1].isdigit() and any(c in text for c in "eE."):
        return text + ("::" + label if typmod else "")
    if oid == BOOL:
        return "true" if text == "t" else "false"
    return _quote(text, scs) + "::" + label


def format_type(oid: int, typmod: int) -> str:
    """format_type() with the typmod, for the types pgcloak encrypts."""
    elem = ELEMENT_OF.get(oid)
    if elem is not None:
        return format_type(elem, typmod) + "[]"
    if typmod < 0:
        return _label(oid)
    if oid in (BPCHAR, VARCHAR):
        return f"{type_name(oid)}({typmod - 4})"
    if oid == NUMERIC:
        mod = typmod - 4
        return f"numeric({(mod >> 16) & 0xFFFF},{((mod & 0x7FF) ^ 1024) - 1024})"
    if oid in _TIMES:
        word, _, rest = type_name(oid).partition(" ")
        return f"{word}({typmod}) {rest}"
    if oid == INTERVAL:
        return _interval_type(typmod)
    return type_name(oid)


_TIMES = (1083, 1114, 1184)  # time, timestamp, timestamptz: `timestamp(3) with time zone`
INTERVAL = 1186
# intervaltypmodout(): the field-range mask (upper 16 bits) as PostgreSQL spells it.
_INTERVAL_FIELDS = {
    1 << 2: " year", 1 << 1: " month", 1 << 3: " day", 1 << 10: " hour", 1 << 11: " minute",
    1 << 12: " second", (1 << 2) | (1 << 1): " year to month", (1 << 3) | (1 << 10): " day to hour",
    (1 << 3) | (1 << 10) | (1 << 11): " day to minute",
    (1 << 3) | (1 << 10) | (1 << 11) | (1 << 12): " day to second",
    (1 << 10) | (1 << 11): " hour to minute", (1 << 10) | (1 << 11) | (1 << 12): " hour to second",
    (1 << 11) | (1 << 12): " minute to second",
}  # fmt: skip


def _interval_type(typmod: int) -> str:
    fields = _INTERVAL_FIELDS.get((typmod >> 16) & 0x7FFF, "")
    precision = typmod & 0xFFFF
    return "interval" + fields + ("" if precision == 0xFFFF else f"({precision})")
