"""Registry data types: object kinds, decrypted objects, stored rows, registry writes.

Everything here is pure (no I/O). `RawRow` is a row of pgcloak.objects as stored
(ciphertexts); `RegistryObject` is the same object after decryption, which only
ever lives in the proxy's memory.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pgcloak.registry.names import MAX_IDENTIFIER_BYTES

__all__ = [
    "CHILD_KINDS",
    "INDEX_CONTYPES",
    "OBJECT_COLUMNS",
    "RELATION_KINDS",
    "ConType",
    "Kind",
    "RawRow",
    "RegistryObject",
    "Write",
    "check_identifier",
    "sql_literal",
]


class Kind(StrEnum):
    """pgcloak.objects.kind; also the first letter of generated physical names."""

    TABLE = "t"
    COLUMN = "c"
    INDEX = "i"
    CONSTRAINT = "k"
    SEQUENCE = "s"
    VIEW = "v"
    MATVIEW = "m"

    @property
    def label(self) -> str:
        return _KIND_LABELS[self]


_KIND_LABELS = {
    Kind.TABLE: "table",
    Kind.COLUMN: "column",
    Kind.INDEX: "index",
    Kind.CONSTRAINT: "constraint",
    Kind.SEQUENCE: "sequence",
    Kind.VIEW: "view",
    Kind.MATVIEW: "materialized view",
}

# Kinds that are pg_class relations: they share one namespace per schema.
RELATION_KINDS = frozenset({Kind.TABLE, Kind.INDEX, Kind.SEQUENCE, Kind.VIEW, Kind.MATVIEW})
# Kinds named inside their parent (pg_attribute / pg_constraint per relation).
CHILD_KINDS = frozenset({Kind.COLUMN, Kind.CONSTRAINT})


class ConType(StrEnum):
    """pg_constraint.contype values pgcloak registers."""

    PRIMARY_KEY = "p"
    UNIQUE = "u"
    FOREIGN_KEY = "f"
    CHECK = "c"
    EXCLUSION = "x"


# Constraints backed by an index of the same name (which also occupies the
# relation namespace of the schema).
INDEX_CONTYPES = frozenset({ConType.PRIMARY_KEY, ConType.UNIQUE, ConType.EXCLUSION})

# Lookup name classes (first argument of NameCipher.lookup).
RELATION_CLASS = "r"


def lookup_class(kind: Kind) -> str:
    """Name class for NameCipher.lookup: all relations share 'r'; children use their kind."""
    return RELATION_CLASS if kind in RELATION_KINDS else kind.value


def check_identifier(name: str, what: str = "name") -> None:
    """Raise ValueError unless `name` is something PostgreSQL could store as a name."""
    if not name:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in name:
        raise ValueError(f"{what} must not contain NUL")
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{what} is longer than {MAX_IDENTIFIER_BYTES} bytes")


@dataclass(frozen=True)
class RegistryObject:
    """One cloaked object with its semantic name in clear (proxy memory only)."""

    id: uuid.UUID
    kind: Kind
    name: str  # semantic name
    physical_name: str
    schema_name: str | None  # physical schema for relations, None for columns/constraints
    parent_id: uuid.UUID | None = None
    position: int | None = None
    contype: ConType | None = None
    implicit: bool = False
    comment: str | None = None
    policy: Mapping[str, Any] | None = field(default=None, hash=False)
    # A constraint pgcloak keeps itself (CHECK on an encrypted column): its definition in
    # clear (JSON), stored encrypted in policy["check"]; proxy memory only.
    check: str | None = field(default=None, hash=False, repr=False)

    @property
    def is_relation(self) -> bool:
        return self.kind in RELATION_KINDS

    def binding(self) -> bytes:
        """Extra associated data for this row's ciphertexts: parent id and physical name.

        Both are immutable for the life of an object (renames are registry-only),
        so binding them detects rows whose parent or physical name was swapped.
        """
        parent = self.parent_id.bytes if self.parent_id is not None else bytes(16)
        return parent + self.physical_name.encode("utf-8")

    def __repr__(self) -> str:
        # Never show the semantic name or comment: reprs end up in logs and tracebacks.
        return (
            f"RegistryObject(id={self.id}, kind={self.kind.value!r}, "
            f"physical_name={self.physical_name!r}, schema_name={self.schema_name!r})"
        )


# Column order of every SELECT/INSERT of pgcloak.objects pgcloak issues.
OBJECT_COLUMNS = (
    "id",
    "kind",
    "schema_name",
    "physical_name",
    "parent_id",
    "position",
    "contype",
    "name_lookup",
    "name_enc",
    "implicit",
    "comment_enc",
    "policy",
)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bytea_from_text(value: bytes | str | None) -> bytes | None:
    text = _text(value)
    if text is None:
        return None
    if not text.startswith("\\x"):
        raise ValueError("expected bytea in hex output format (bytea_output = 'hex')")
    return bytes.fromhex(text[2:])


@dataclass(frozen=True)
class RawRow:
    """A pgcloak.objects row as stored: names are ciphertexts."""

    id: uuid.UUID
    kind: str
    schema_name: str | None
    physical_name: str
    parent_id: uuid.UUID | None
    position: int | None
    contype: str | None
    name_lookup: bytes
    name_enc: bytes
    implicit: bool
    comment_enc: bytes | None
    policy: Mapping[str, Any] | None = field(default=None, hash=False)

    def __repr__(self) -> str:
        return f"RawRow(id={self.id}, kind={self.kind!r}, physical_name={self.physical_name!r})"

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> RawRow:
        """From a driver row (psycopg types) in OBJECT_COLUMNS order."""
        (
            oid,
            kind,
            schema,
            physical,
            parent,
            position,
            contype,
            lookup,
            enc,
            implicit,
            cenc,
            pol,
        ) = row
        if isinstance(pol, str):
            pol = json.loads(pol)
        return cls(
            id=oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid)),
            kind=str(kind),
            schema_name=schema,
            physical_name=physical,
            parent_id=None if parent is None else uuid.UUID(str(parent)),
            position=position,
            contype=None if contype is None else str(contype),
            name_lookup=bytes(lookup),
            name_enc=bytes(enc),
            implicit=bool(implicit),
            comment_enc=None if cenc is None else bytes(cenc),
            policy=pol,
        )

    @classmethod
    def from_text(cls, values: Sequence[bytes | str | None]) -> RawRow:
        """From text-format protocol values (a DataRow read in-band), OBJECT_COLUMNS order."""
        if len(values) != len(OBJECT_COLUMNS):
            raise ValueError(f"expected {len(OBJECT_COLUMNS)} columns, got {len(values)}")
        t = [_text(v) for v in values]
        lookup = _bytea_from_text(values[7])
        enc = _bytea_from_text(values[8])
        if t[0] is None or t[1] is None or t[3] is None or lookup is None or enc is None:
            raise ValueError("NULL in a NOT NULL registry column")
        return cls(
            id=uuid.UUID(t[0]),
            kind=t[1],
            schema_name=t[2],
            physical_name=t[3],
            parent_id=None if t[4] is None else uuid.UUID(t[4]),
            position=None if t[5] is None else int(t[5]),
            contype=t[6],
            name_lookup=lookup,
            name_enc=enc,
            implicit=t[9] == "t",
            comment_enc=_bytea_from_text(values[10]),
            policy=None if t[11] is None else json.loads(t[11]),
        )


# -- registry writes -----------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\d+)")


def sql_literal(value: object) -> str:
    """A self-contained SQL literal for `value`, safe whatever standard_conforming_strings is.

    Strings use E'' syntax (backslashes and quotes escaped), bytea the hex format.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    if isinstance(value, bytes | bytearray | memoryview):
        return "E'\\\\x" + bytes(value).hex() + "'"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("string literals cannot contain NUL")
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    raise TypeError(f"cannot render {type(value).__name__} as an SQL literal")


@dataclass(frozen=True)
class Write:
    """One statement on the registry, to run in the client's transaction.

    `sql` uses PostgreSQL's $1..$n placeholders with explicit casts, so it can go out
    as an extended-protocol Parse with unspecified parameter types; `inline()` gives
    a literal version for piggybacking on a simple Query; `for_psycopg()` the
    %s form. Parameters may contain ciphertexts but never plaintext names.
    """

    sql: str
    params: tuple[object, ...] = ()

    def __repr__(self) -> str:
        return f"Write({self.sql.split(' ', 3)[:3]}, {len(self.params)} params)"

    def inline(self) -> str:
        def sub(m: re.Match[str]) -> str:
            return sql_literal(self.params[int(m.group(1)) - 1])

        return _PLACEHOLDER.sub(sub, self.sql)

    def for_psycopg(self) -> tuple[str, tuple[object, ...]]:
        order = [int(n) - 1 for n in _PLACEHOLDER.findall(self.sql)]
        if order != list(range(len(self.params))):
            raise ValueError("placeholders must appear once each, in order")
        return _PLACEHOLDER.sub("%s", self.sql), self.params
