"""Column value encryption: data keys, their wrapping, and the value envelope.

Key hierarchy: the master key (KEK, or a Vault transit key) wraps one random
data key (DEK) per encrypted column and key version; wrapped DEKs live in
``pgcloak.data_keys``. A DEK is never used directly either: HKDF gives it one
subkey per mode, so a DEK could in principle serve both modes without sharing
key material between AES-GCM and AES-SIV.

Envelope (what the ``bytea`` column holds)::

    0x01 | mode ('R' randomized, 'D' deterministic) | key version (u32) | body
    R: body = 12-byte random nonce | AES-256-GCM ciphertext | 16-byte tag
    D: body = 16-byte synthetic IV | AES-256-SIV ciphertext

Associated data binds every value to its *scope* (by default the column's
table and column physical names, which never change; columns that must be
comparable with each other, like a foreign key and the key it references, share
a scope and a DEK) plus the envelope header. A ciphertext copied to another
column, another table, another scope, or edited in any bit fails to decrypt.
Deterministic mode reveals equality of plaintexts within a scope and nothing
else; randomized mode reveals nothing but the length (rounded up to 16 bytes for
text-like values when padding is on).
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pgcloak.crypto.keys import DEK_WRAP, MasterKey

__all__ = [
    "DETERMINISTIC",
    "MODES",
    "RANDOMIZED",
    "ColumnCipher",
    "DataKey",
    "KeyWrapper",
    "LocalKeyWrapper",
    "ValueDecryptionError",
    "dek_binding",
    "new_data_key",
]

FORMAT: Final = 1
RANDOMIZED: Final = "randomized"
DETERMINISTIC: Final = "deterministic"
MODES: Final = (RANDOMIZED, DETERMINISTIC)
_MODE_BYTE: Final = {RANDOMIZED: b"R", DETERMINISTIC: b"D"}
_HEADER = struct.Struct("!BcI")
_DEK_BYTES: Final = 64
_WRAP_FORMAT: Final = 1  # first byte of a LocalKeyWrapper wrapping
_WRAP_VAULT: Final = 2  # pgcloak.crypto.vault.VaultTransitWrapper
_NONCE: Final = 12
_VALUE_INFO = b"pgcloak/v1/value/"


class ValueDecryptionError(Exception):
    """A stored value failed authentication or is malformed (SQLSTATE XX001 to clients).

    Never carries the value or the plaintext.
    """

    sqlstate = "XX001"


@dataclass(frozen=True)
class DataKey:
    """One version of a column's data key, unwrapped (proxy memory only)."""

    version: int
    secret: bytes = field(repr=False)


def new_data_key(version: int = 1) -> DataKey:
    return DataKey(version, os.urandom(_DEK_BYTES))


class KeyWrapper(Protocol):
    """Wraps data keys under the key-encryption key (master key or an external KMS)."""

    def wrap(self, key: DataKey, column_id: uuid.UUID) -> bytes: ...

    def unwrap(self, wrapped: bytes, column_id: uuid.UUID, version: int) -> DataKey: ...


def dek_binding(column_id: uuid.UUID, version: int) -> bytes:
    """What a wrapped DEK is bound to (AEAD associated data, or Vault's derivation context)."""
    return b"pgcloak/v1/dek|" + column_id.bytes + struct.pack("!I", version)


class LocalKeyWrapper:
    """AES-256-GCM under an HKDF subkey of the master key, bound to column and version."""

    def __init__(self, master: MasterKey) -> None:
        self._aead = AESGCM(master.derive(DEK_WRAP))

    def wrap(self, key: DataKey, column_id: uuid.UUID) -> bytes:
        nonce = os.urandom(_NONCE)
        ad = dek_binding(column_id, key.version)
        return bytes([_WRAP_FORMAT]) + nonce + self._aead.encrypt(nonce, key.secret, ad)

    def unwrap(self, wrapped: bytes, column_id: uuid.UUID, version: int) -> DataKey:
        if wrapped[:1] == bytes([_WRAP_VAULT]):
            raise ValueDecryptionError(
                "a data key is wrapped by Vault transit but pgcloak is configured with kek = local"
            )
        if len(wrapped) != 1 + _NONCE + _DEK_BYTES + 16 or wrapped[0] != _WRAP_FORMAT:
            raise ValueDecryptionError("malformed wrapped data key")
        nonce = wrapped[1 : 1 + _NONCE]
        try:
            secret = self._aead.decrypt(
                nonce, wrapped[1 + _NONCE :], dek_binding(column_id, version)
            )
        except InvalidTag:
            raise ValueDecryptionError("a data key failed to unwrap (wrong master key?)") from None
        return DataKey(version, secret)


def _subkey(secret: bytes, mode: str, length: int) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=None, info=_VALUE_INFO + mode.encode()
    ).derive(secret)


class ColumnCipher:
    """Encrypts and decrypts the values of one scope (a column or a group of columns).

    `keys` maps version -> DataKey; new values use the newest version. `scope` is
    bound into every value's associated data.
    """

    def __init__(self, mode: str, scope: bytes, keys: Mapping[int, DataKey]) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown encryption mode {mode!r}")
        if not keys:
            raise ValueError("a column cipher needs at least one data key")
        self.mode = mode
        self.scope = scope
        self.current = max(keys)
        self._gcm: dict[int, AESGCM] = {}
        self._siv: dict[int, AESSIV] = {}
        for version, key in keys.items():
            if mode == RANDOMIZED:
                self._gcm[version] = AESGCM(_subkey(key.secret, mode, 32))
            else:
                self._siv[version] = AESSIV(_subkey(key.secret, mode, 64))
        self._header = _HEADER.pack(FORMAT, _MODE_BYTE[mode], self.current)
        self._ad = self._header + scope
        self._ad_list = [self._ad]
        # Decryption looks everything up by the envelope's header bytes at once.
        self._openers: dict[bytes, tuple[AESGCM | AESSIV, bytes, list[bytes]]] = {}
        for version in keys:
            header = _HEADER.pack(FORMAT, _MODE_BYTE[mode], version)
            aead: AESGCM | AESSIV = self._gcm[version] if mode == RANDOMIZED else self._siv[version]
            self._openers[header] = (aead, header + scope, [header + scope])

    def encrypt(self, plaintext: bytes) -> bytes:
        if self.mode == RANDOMIZED:
            nonce = os.urandom(_NONCE)
            sealed = self._gcm[self.current].encrypt(nonce, plaintext, self._ad)
            return self._header + nonce + sealed
        return self._header + self._siv[self.current].encrypt(plaintext, self._ad_list)

    def decrypt(self, envelope: bytes) -> bytes:
        opener = self._openers.get(envelope[: _HEADER.size])
        if opener is None or len(envelope) < _HEADER.size + 16:
            raise self._malformed(envelope)
        aead, ad, ad_list = opener
        try:
            if isinstance(aead, AESSIV):
                return aead.decrypt(envelope[_HEADER.size :], ad_list)
            if len(envelope) < _HEADER.size + _NONCE + 16:
                raise ValueDecryptionError("encrypted value is truncated")
            body = envelope[_HEADER.size :]
            return aead.decrypt(body[:_NONCE], body[_NONCE:], ad)
        except InvalidTag:
            raise ValueDecryptionError("encrypted value failed authentication") from None

    def _malformed(self, envelope: bytes) -> ValueDecryptionError:
        """Why an envelope has no opener: truncated, another format or mode, unknown key."""
        if len(envelope) < _HEADER.size + 16:
            return ValueDecryptionError("encrypted value is truncated")
        fmt, mode, _ = _HEADER.unpack_from(envelope, 0)
        if fmt != FORMAT or mode != _MODE_BYTE[self.mode]:
            return ValueDecryptionError("encrypted value has an unknown format")
        return ValueDecryptionError("encrypted value uses an unknown key version")

    def decrypt_cut(self, prefix: bytes, lengths: Iterable[int], min_tag: int = 4) -> bytes | None:
        """The plaintext of a randomized value of which only the first bytes are known.

        PostgreSQL cuts long values short in an error DETAIL ("Failing row contains
        (...)": 64 characters, so 31 bytes of a bytea). A short plaintext is all there,
        followed by part of its GCM tag: for each candidate plaintext length, the
        candidate is re-encrypted and must reproduce the visible ciphertext and at
        least `min_tag` tag bytes. Exactly one length must match, else None (as for
        deterministic values, whose synthetic IV needs the whole plaintext).
        """
        if self.mode != RANDOMIZED or len(prefix) < _HEADER.size + _NONCE:
            return None
        fmt, mode, version = _HEADER.unpack_from(prefix, 0)
        aead = self._gcm.get(version)
        if fmt != FORMAT or mode != _MODE_BYTE[RANDOMIZED] or aead is None:
            return None
        ad = prefix[: _HEADER.size] + self.scope
        nonce = prefix[_HEADER.size : _HEADER.size + _NONCE]
        seen = prefix[_HEADER.size + _NONCE :]
        # The keystream: GCM's ciphertext of zeros (the tag after it is not used).
        stream = aead.encrypt(nonce, bytes(len(seen)), ad)
        found: bytes | None = None
        for length in lengths:
            if length < 0 or len(seen) - length < min_tag:
                continue
            plain = bytes(a ^ b for a, b in zip(seen[:length], stream, strict=False))
            if aead.encrypt(nonce, plain, ad)[: len(seen)] != seen:
                continue
            if found is not None:
                return None
            found = plain
        return found
