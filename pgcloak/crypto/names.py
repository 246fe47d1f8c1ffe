"""Encryption of semantic names (and comments) for the registry, plus blind lookups.

Envelope (bytea in pgcloak.objects.name_enc / comment_enc)::

    0x01 | nonce (12 bytes, random) | AES-256-GCM ciphertext + 16-byte tag

The plaintext is the UTF-8 text followed by 0x80 and zero bytes up to a multiple
of 32 bytes, so a ciphertext only tells whether a name is up to 31 or up to 63
bytes long, not its exact length (text never contains NUL, so this is unambiguous).

The associated data binds a ciphertext to its row and purpose::

    object_id.bytes (16) | object kind (1 ASCII byte) | field (1 byte) | context

so a name cannot be moved to another row, to another kind of object, or from the
name column into the comment column (or back) without `decrypt` failing. The
registry passes the parent id and the physical name as `context`, which also
detects rows whose physical names were swapped.

`lookup` is an HMAC-SHA256 under a separate subkey: equal (namespace, scope, name)
triples give equal lookups, so a unique index on the lookup enforces semantic-name
uniqueness inside the database without the database ever seeing a name. Because it
is deterministic it does reveal which rows share a name *within one scope*, which
uniqueness makes impossible anyway; across scopes the scope is hashed in too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgcloak.crypto.keys import NAME_ENCRYPTION, NAME_LOOKUP, MasterKey

__all__ = [
    "ENVELOPE_VERSION",
    "LOOKUP_BYTES",
    "PAD_BLOCK",
    "DecryptionError",
    "Field",
    "NameCipher",
]

ENVELOPE_VERSION = 0x01
NONCE_BYTES = 12
TAG_BYTES = 16
LOOKUP_BYTES = 32
PAD_BLOCK = 32
_MIN_ENVELOPE = 1 + NONCE_BYTES + PAD_BLOCK + TAG_BYTES
_LOOKUP_VERSION = b"\x01"


class DecryptionError(ValueError):
    """A registry ciphertext failed authentication or is malformed.

    Either the master key is not the one the registry was written with, or the row
    was altered outside pgcloak. The message never contains plaintext.
    """


class Field(Enum):
    """Which column of a row a ciphertext belongs to (part of the associated data)."""

    NAME = b"n"
    COMMENT = b"c"
    CHECK = b"k"  # a CHECK on an encrypted column that pgcloak keeps (objects.policy)


def _pad(data: bytes) -> bytes:
    if b"\x00" in data:
        raise ValueError("names and comments cannot contain NUL")
    padded = data + b"\x80"
    return padded + bytes(-len(padded) % PAD_BLOCK)


def _unpad(data: bytes) -> bytes | None:
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) % PAD_BLOCK:
        return None
    return stripped[:-1]


def _kind_byte(kind: str) -> bytes:
    if len(kind) != 1 or not kind.isascii():
        raise ValueError(f"object kind must be one ASCII letter, got {kind!r}")
    return kind.encode("ascii")


class NameCipher:
    """AES-256-GCM for names and comments, HMAC-SHA256 for lookups (separate subkeys)."""

    __slots__ = ("_aead", "_lookup_key")

    def __init__(self, encryption_key: bytes, lookup_key: bytes) -> None:
        if len(encryption_key) != 32 or len(lookup_key) != 32:
            raise ValueError("NameCipher needs two 32-byte keys")
        if hmac.compare_digest(encryption_key, lookup_key):
            raise ValueError("encryption and lookup keys must differ")
        self._aead = AESGCM(encryption_key)
        self._lookup_key = bytes(lookup_key)

    def __repr__(self) -> str:
        return "<NameCipher>"

    @classmethod
    def from_master(cls, master: MasterKey) -> NameCipher:
        return cls(master.derive(NAME_ENCRYPTION), master.derive(NAME_LOOKUP))

    @staticmethod
    def _aad(object_id: uuid.UUID, kind: str, field: Field, context: bytes) -> bytes:
        return object_id.bytes + _kind_byte(kind) + field.value + context

    def encrypt(
        self,
        text: str,
        object_id: uuid.UUID,
        kind: str,
        *,
        field: Field = Field.NAME,
        context: bytes = b"",
    ) -> bytes:
        """Seal `text` for the row `object_id` of kind `kind`; a fresh nonce every call."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(
            nonce, _pad(text.encode("utf-8")), self._aad(object_id, kind, field, context)
        )
        return bytes([ENVELOPE_VERSION]) + nonce + sealed

    def decrypt(
        self,
        envelope: bytes,
        object_id: uuid.UUID,
        kind: str,
        *,
        field: Field = Field.NAME,
        context: bytes = b"",
    ) -> str:
        """Open an envelope made by `encrypt` with the same binding; DecryptionError if not."""
        data = bytes(envelope)
        if len(data) < _MIN_ENVELOPE:
            raise DecryptionError(
                f"registry object {object_id}: {field.name.lower()} ciphertext is truncated"
            )
        if data[0] != ENVELOPE_VERSION:
            raise DecryptionError(
                f"registry object {object_id}: unknown {field.name.lower()} ciphertext "
                f"version {data[0]:#04x}"
            )
        nonce = data[1 : 1 + NONCE_BYTES]
        try:
            plain = self._aead.decrypt(
                nonce, data[1 + NONCE_BYTES :], self._aad(object_id, kind, field, context)
            )
        except InvalidTag:
            raise DecryptionError(
                f"registry object {object_id}: {field.name.lower()} failed authentication "
                "(wrong master key, or the row was modified outside pgcloak)"
            ) from None
        unpadded = _unpad(plain)
        if unpadded is None:
            raise DecryptionError(
                f"registry object {object_id}: {field.name.lower()} has invalid padding"
            )
        try:
            return unpadded.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError(
                f"registry object {object_id}: {field.name.lower()} is not UTF-8"
            ) from None

    def lookup(self, namespace: str, scope: uuid.UUID | str, name: str) -> bytes:
        """Deterministic 32-byte tag of `name` inside (`namespace`, `scope`).

        `namespace` is a one-letter name class (relations share one, as in
        pg_class), `scope` the parent object's id or, for relations, the physical
        schema name. Names must already be normalized the way PostgreSQL resolves
        them (case-folded unless quoted, truncated to 63 bytes): this is exact.
        """
        if isinstance(scope, uuid.UUID):
            scope_bytes = b"u" + scope.bytes
        else:
            encoded = scope.encode("utf-8")
            scope_bytes = b"s" + len(encoded).to_bytes(2, "big") + encoded
        message = _LOOKUP_VERSION + _kind_byte(namespace) + scope_bytes + name.encode("utf-8")
        return hmac.new(self._lookup_key, message, hashlib.sha256).digest()
