"""Encrypted column values on the wire: keys per scope, and the per-message transforms.

The rewriter says where encrypted values appear (plan value/param slots, output
columns); this module does the work with the data keys: SQL literals become
`E'\\\\x…'::bytea` ciphertext literals, Bind parameters are decoded in the client's
format and sent as binary ciphertext, and DataRow fields are decrypted and
encoded back in the format the client asked for, with RowDescription and
ParameterDescription showing the declared types. Nothing here logs or raises
with a value in the message.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pgcloak.crypto.codecs import CodecError, SessionFormat, TypeCodec, codec_for, parse_type
from pgcloak.crypto.codecs.convert import literal_value, to_column
from pgcloak.crypto.codecs.literals import UNKNOWN as UNKNOWN_OID
from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import (
    ColumnCipher,
    DataKey,
    KeyWrapper,
    LocalKeyWrapper,
    new_data_key,
)
from pgcloak.proxy.array_ctor import (
    ElementError,
    UnplacedError,
    array_value,
    is_array_constructor,
)
from pgcloak.proxy.cloak_checks import Violation, first, violation
from pgcloak.proxy.wire import bind_parts, frame
from pgcloak.registry.model import Kind, Write
from pgcloak.registry.store import Registry
from pgcloak.rewriter.catalog import Catalog
from pgcloak.rewriter.plan import CloakError

__all__ = [
    "DATA_KEYS_SQL",
    "EncryptedType",
    "Keyring",
    "ValueError_",
    "describe_params",
    "describe_row",
]

DATA_KEYS_SQL = "SELECT column_id, key_version, wrapped FROM pgcloak.data_keys"
_INSERT_KEY = (
    "INSERT INTO pgcloak.data_keys (column_id, key_version, wrapped) VALUES ($1::uuid, "
    "$2::int4, $3::bytea)"
)
BYTEA = 17
_FIELD = struct.Struct("!IhIhih")
BYTEA_OID = 17  # what every encrypted column is on the server
_I16 = struct.Struct("!h")
_NULL = b"\xff\xff\xff\xff"


class EncColumnLike(Protocol):
    """What the rewriter tells about an encrypted column (pgcloak.rewriter EncColumn)."""

    @property
    def scope(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def type_sql(self) -> str: ...


class ValueError_(Exception):
    """A value pgcloak cannot encrypt or decrypt; goes to the client as an ErrorResponse.

    `message`/`detail`/`hint` are PostgreSQL's texts for the same error and may quote
    the value: str()/repr() show only the SQLSTATE.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.position = position  # 1-based, in characters of the statement's SQL

    @classmethod
    def of(cls, exc: CodecError) -> ValueError_:
        """A codec's error with all of PostgreSQL's texts (message, DETAIL, HINT)."""
        return cls(exc.sqlstate, exc.message, exc.detail, exc.hint)

    def refusal(self) -> CloakError:
        """The refusal the client gets instead of the statement."""
        return CloakError(
            self.sqlstate, self.message, self.position, hint=self.hint, detail=self.detail
        )


@dataclass(frozen=True)
class EncryptedType:
    """The declared type of an encrypted column, resolved once per type text."""

    oid: int
    typmod: int
    codec: TypeCodec
    typlen: int

    @classmethod
    def of(cls, type_sql: str) -> EncryptedType:
        oid, typmod = parse_type(type_sql)
        codec = codec_for(oid)
        if codec is None:
            raise ValueError_("0A000", f"pgcloak cannot encrypt values of type {type_sql}")
        return cls(oid, typmod, codec, _TYPLEN.get(oid, -1))


_TYPLEN = {16: 1, 20: 8, 21: 2, 23: 4, 700: 4, 701: 8, 1082: 4, 1083: 8, 1114: 8, 1184: 8,
           1186: 16, 2950: 16}  # fmt: skip
_TYPES: dict[str, EncryptedType] = {}


def encrypted_type(type_sql: str) -> EncryptedType:
    found = _TYPES.get(type_sql)
    if found is None:
        found = _TYPES[type_sql] = EncryptedType.of(type_sql)
    return found


@dataclass
class Keyring:
    """Data keys by scope for one registry generation (or one transaction's copy).

    `wrapper` is the key-encryption key: the master key's LocalKeyWrapper or Vault transit.
    """

    wrapper: KeyWrapper | MasterKey  # a MasterKey means its LocalKeyWrapper
    keys: dict[str, dict[int, DataKey]] = field(default_factory=dict)
    _ciphers: dict[tuple[str, str], ColumnCipher] = field(default_factory=dict)
    # pgcloak.proxy.cloak_rows: row and field decoders built from these keys.
    decoders: dict[object, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.wrapper, MasterKey):
            self.wrapper = LocalKeyWrapper(self.wrapper)

    @property
    def kek(self) -> KeyWrapper:
        assert not isinstance(self.wrapper, MasterKey)
        return self.wrapper

    @classmethod
    def load(
        cls,
        wrapper: KeyWrapper | MasterKey,
        registry: Registry,
        rows: Iterable[Sequence[str | None]],
    ) -> Keyring:
        """Unwrap `pgcloak.data_keys` rows (text format) for columns with a policy."""
        ring = cls(wrapper)
        wrapper = ring.kek
        items: list[tuple[bytes, uuid.UUID, int, str]] = []
        for column_id, version, wrapped in rows:
            if column_id is None or version is None or wrapped is None:
                continue
            cid = uuid.UUID(column_id)
            obj = registry.get(cid)
            if obj is None or obj.policy is None:
                continue
            scope = str(obj.policy.get("scope", ""))
            items.append((bytes.fromhex(wrapped[2:]), cid, int(version), scope))
        many = getattr(wrapper, "unwrap_many", None)
        if callable(many) and items:
            keys = many([(w, cid, v) for w, cid, v, _ in items])  # one round trip to a KMS
        else:
            keys = [wrapper.unwrap(w, cid, v) for w, cid, v, _ in items]
        for key, (_, _, _, scope) in zip(keys, items, strict=True):
            ring.keys.setdefault(scope, {})[key.version] = key
        return ring

    def copy(self) -> Keyring:
        return Keyring(self.wrapper, {s: dict(v) for s, v in self.keys.items()})

    def cipher(self, col: EncColumnLike) -> ColumnCipher:
        cached = self._ciphers.get((col.scope, col.mode))
        if cached is None:
            keys = self.keys.get(col.scope)
            if not keys:
                raise ValueError_("XX001", "pgcloak has no data key for an encrypted column")
            cached = ColumnCipher(col.mode, col.scope.encode(), keys)
            self._ciphers[(col.scope, col.mode)] = cached
        return cached

    def writes_for_new_columns(self, registry: Registry, before: set[uuid.UUID]) -> list[Write]:
        """Data keys for encrypted columns added to `registry` since `before` (its ids)."""
        wrapper = self.kek
        writes: list[Write] = []
        for obj in registry:
            if obj.id in before or obj.kind is not Kind.COLUMN or obj.policy is None:
                continue
            scope = str(obj.policy.get("scope", ""))
            keys = self.keys.get(scope)
            if not keys:
                keys = self.keys[scope] = {1: new_data_key(1)}
            for key in keys.values():
                wrapped = wrapper.wrap(key, obj.id)
                writes.append(Write(_INSERT_KEY, (obj.id, key.version, wrapped)))
        return writes


# -- literals -------------------------------------------------------------------------


# A bytea that can never equal a stored envelope (those start with the format byte 1):
# what a comparison value becomes when no stored value could compare equal to it.
UNMATCHABLE = b"\x00"


@dataclass
class Sealer:
    """Encrypts client values for one statement, as PostgreSQL would have stored them.

    The value's own type (a literal's, or the Bind parameter's declared type) is
    converted to the column's type with PostgreSQL's assignment rules (INSERT, UPDATE)
    or comparison rules (WHERE col = value): see pgcloak.crypto.codecs.convert.
    `names` gives semantic column names for PostgreSQL-style messages; `record` keeps
    ciphertext prefixes -> displayed plaintext, so an error DETAIL that PostgreSQL
    truncated ("Failing row contains (...)") can still be shown in plaintext.
    """

    ring: Keyring
    fmt: SessionFormat
    names: Mapping[str, str]
    record: dict[str, str] = field(default_factory=dict)
    # The catalog whose kept CHECKs values written into encrypted columns must pass
    # (pgcloak.proxy.cloak_checks); the first failure is raised once every value of
    # the message was read (PostgreSQL reads all input before it tests constraints).
    checks: Catalog | None = None
    failed: Violation | None = None

    def seal(
        self, col: EncColumnLike, text: str | None, binary: bytes | None, src_oid: int
    ) -> bytes | None:
        """Ciphertext for the value, None for NULL, UNMATCHABLE for an impossible match."""
        t = encrypted_type(col.type_sql)
        compare = bool(getattr(col, "compare", False))
        column = self.names.get(getattr(col, "column", ""), "?")
        try:
            canonical = to_column(
                text, binary, src_oid, t.oid, t.typmod, compare=compare, column=column,
                fmt=self.fmt,
            )  # fmt: skip
        except CodecError as exc:
            raise ValueError_.of(exc) from None
        if canonical is None:
            return UNMATCHABLE if compare and (text is not None or binary is not None) else None
        if not compare and self.checks is not None:
            found = violation(
                self.checks, getattr(col, "table", ""), getattr(col, "column", ""), canonical,
                t.oid, row=getattr(col, "row", 0),
            )  # fmt: skip
            self.failed = first(self.failed, found)
        sealed = self.ring.cipher(col).encrypt(canonical)
        if not compare:
            with contextlib.suppress(CodecError):
                self.record[sealed.hex()[:62]] = t.codec.to_text(canonical, self.fmt)
        return sealed

    def literals(self, sql: str, slots: Sequence[tuple[int, int, EncColumnLike]]) -> str:
        """`sql` with every literal slot replaced by its ciphertext literal."""
        out: list[str] = []
        prev = 0
        for start, end, col in sorted(slots, key=lambda s: s[0]):
            out.append(sql[prev:start])
            raw = sql[start:end]
            try:
                if is_array_constructor(raw):
                    oid, text = array_value(raw, self.fmt)  # type: tuple[int, str | None]
                else:
                    oid, text = literal_value(raw, self.fmt.standard_conforming_strings)
            except ElementError as exc:
                raise _at_literal(ValueError_.of(exc), start + exc.offset) from None
            except UnplacedError as exc:
                raise ValueError_.of(exc) from None
            except CodecError as exc:
                raise _at_literal(ValueError_.of(exc), start) from None
            try:
                sealed = None if text is None else self.seal(col, text, None, oid)
            except ValueError_ as exc:
                raise (_at_literal(exc, start) if _parse_time(exc, oid) else exc) from None
            out.append("NULL" if sealed is None else bytea_literal(sealed))
            prev = end
        out.append(sql[prev:])
        self.raise_failed()
        return "".join(out)

    def raise_failed(self) -> None:
        """Raise the first CHECK failure of the values sealed so far (ValueError_)."""
        if self.failed is not None:
            _, _, sqlstate, message = self.failed
            raise ValueError_(sqlstate, message)

    def bind(
        self,
        buf: bytes,
        pos: int,
        end: int,
        slots: Mapping[int, EncColumnLike],
        declared: Sequence[int],
    ) -> bytes:
        """A Bind with encrypted parameters encrypted (sent in binary format)."""
        bind = bind_parts(buf, pos, end)
        new_formats: list[int] = []
        values: list[bytes] = []
        for k, raw in enumerate(bind.values):
            value, f = raw, bind.format_of(k)
            col = slots.get(k + 1)
            if col is not None and value is not None:
                src = declared[k] if k < len(declared) else 0
                if f == 0:
                    sealed = self.seal(col, value.decode("utf-8", "surrogateescape"), None, src)
                else:
                    sealed = self.seal(col, None, value, src)
                value, f = sealed, 1
            new_formats.append(f)
            values.append(_NULL if value is None else len(value).to_bytes(4, "big") + value)
        self.raise_failed()
        head = _I16.pack(len(new_formats)) + b"".join(_I16.pack(f) for f in new_formats)
        nparams = _I16.pack(len(values))
        return frame(b"B", bind.names + head + nparams + b"".join(values) + buf[bind.tail : end])


def _parse_time(exc: ValueError_, oid: int) -> bool:
    """Whether PostgreSQL raises this error while parsing the statement, with the literal's
    position (the client sees `LINE 1: ... ^`): a quoted (unknown-type) literal's input
    error, or a type mismatch (42804). Casts of typed literals (numbers) and the column's
    typmod (22001 value too long, numeric field overflow) fail at execution, unplaced."""
    if exc.sqlstate in ("42804", "42883"):
        return True
    if oid != UNKNOWN_OID:
        return False
    return exc.sqlstate != "22001" and exc.message != "numeric field overflow"


def _at_literal(exc: ValueError_, start: int) -> ValueError_:
    exc.position = start + 1
    return exc


def bytea_literal(ciphertext: bytes) -> str:
    """E'' syntax: the same bytes whatever standard_conforming_strings is."""
    return f"E'\\\\x{ciphertext.hex()}'::bytea"


# -- extended protocol ---------------------------------------------------------------


def parse_param_types(rest: bytes, slots: Mapping[int, EncColumnLike]) -> tuple[bytes, list[int]]:
    """Parse's parameter-type list with encrypted parameters declared bytea.

    Returns the new list (wire bytes) and the client's own declared oids.
    """
    n = int.from_bytes(rest[:2], "big")
    oids = [int.from_bytes(rest[2 + 4 * k : 6 + 4 * k], "big") for k in range(n)]
    declared = list(oids)
    top = max(slots) if slots else 0
    while len(oids) < top:
        oids.append(0)
    for number in slots:
        oids[number - 1] = BYTEA
    body = len(oids).to_bytes(2, "big") + b"".join(o.to_bytes(4, "big") for o in oids)
    return body, declared


def describe_params(body: bytes, slots: Mapping[int, EncColumnLike]) -> bytes:
    """ParameterDescription with the declared types of encrypted parameters."""
    n = _I16.unpack_from(body, 0)[0]
    oids = [int.from_bytes(body[2 + 4 * k : 6 + 4 * k], "big") for k in range(n)]
    for number, col in slots.items():
        if 0 < number <= n:
            oids[number - 1] = encrypted_type(col.type_sql).oid
    return frame(b"t", _I16.pack(n) + b"".join(o.to_bytes(4, "big") for o in oids))


# -- results --------------------------------------------------------------------------


_RESULT_MISMATCH = (
    "pgcloak cannot match the server's result columns with the statement's encrypted "
    "columns (was the table changed directly on the database?)"
)


def describe_row(body: bytes, output: Sequence[EncColumnLike | None]) -> tuple[bytes, list[int]]:
    """RowDescription with declared types for encrypted outputs; also the field formats.

    Raises ValueError_ when the server's columns are not what the plan expects (another
    count, or a non-bytea type where ciphertext should be): the plan's idea of the
    result is wrong (say, a column dropped behind pgcloak's back), so no row of it
    can be decrypted safely.
    """
    count = _I16.unpack_from(body, 0)[0]
    if count != len(output):
        raise ValueError_("XX000", _RESULT_MISMATCH)
    pos = 2
    parts = [body[:2]]
    formats: list[int] = []
    for k in range(count):
        end = body.index(b"\0", pos)
        table, column, oid, size, typmod, f = _FIELD.unpack_from(body, end + 1)
        col = output[k]
        if col is not None:
            if oid != BYTEA_OID:
                raise ValueError_("XX000", _RESULT_MISMATCH)
            t = encrypted_type(col.type_sql)
            oid, size, typmod = t.oid, t.typlen, t.typmod
        parts.append(body[pos : end + 1] + _FIELD.pack(table, column, oid, size, typmod, f))
        formats.append(f)
        pos = end + 1 + _FIELD.size
    return frame(b"T", b"".join(parts)), formats


def bytea_from_text(text: bytes) -> bytes:
    """bytea's text output (hex, or the old escape format) back to bytes."""
    if text[:2] == b"\\x":
        try:
            return bytes.fromhex(text[2:].decode("ascii"))
        except ValueError:
            raise ValueError_("XX001", "pgcloak received a malformed encrypted value") from None
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x5C and i + 1 < n and text[i + 1] == 0x5C:
            out.append(0x5C)
            i += 2
        elif c == 0x5C and i + 3 < n:
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(c)
            i += 1
    return bytes(out)
