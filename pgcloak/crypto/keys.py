"""The master key and the subkeys derived from it.

One secret (32 random bytes, handled as base64 text) protects everything pgcloak
stores in the database. It is never used directly: each purpose gets its own
subkey from HKDF-SHA256 with a distinct `info` label, so a weakness in one use
(say, HMAC lookups) can never be turned against another (AES-GCM name
encryption), and new purposes can be added without touching old ciphertexts.

Sources, in the order `MasterKey.load` tries them:
  1. an explicit key file (``--master-key-file``),
  2. ``PGCLOAK_MASTER_KEY`` (the base64 text itself),
  3. ``PGCLOAK_MASTER_KEY_FILE`` (a path).
A key file must not be readable or writable by group or others (like ssh and
libpq private keys); such a file is refused rather than warned about, because a
warning in a log nobody reads protects nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DEK_WRAP",
    "KEY_BYTES",
    "KEY_CHECK",
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE_ENV",
    "NAME_ENCRYPTION",
    "NAME_LOOKUP",
    "MasterKey",
    "MasterKeyError",
    "new_master_key",
]

KEY_BYTES = 32
MASTER_KEY_ENV = "PGCLOAK_MASTER_KEY"
MASTER_KEY_FILE_ENV = "PGCLOAK_MASTER_KEY_FILE"

# HKDF `info` labels: one per purpose. Never reuse a label for a new purpose.
NAME_ENCRYPTION = b"pgcloak/v1/name-encryption"
NAME_LOOKUP = b"pgcloak/v1/name-lookup"
DEK_WRAP = b"pgcloak/v1/dek-wrap"
# A public value stored in the registry so a wrong master key is detected up front
# (instead of as a decryption failure on some row, or worse, a registry mixing keys).
KEY_CHECK = b"pgcloak/v1/key-check"

_MAX_KEY_FILE_BYTES = 4096


class MasterKeyError(ValueError):
    """The master key is missing or malformed; the message says what to fix."""


def new_master_key() -> str:
    """A fresh master key as base64 text (32 bytes from the OS CSPRNG)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode(text: str, origin: str) -> bytes:
    stripped = "".join(text.split())  # tolerate newlines/indentation around the key
    if not stripped:
        raise MasterKeyError(f"the master key in {origin} is empty")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except binascii.Error:
        raise MasterKeyError(
            f"the master key in {origin} is not valid base64 (generate one with `pgcloak keys new`)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(
            f"the master key in {origin} decodes to {len(raw)} bytes; it must be exactly "
            f"{KEY_BYTES} (generate one with `pgcloak keys new`)"
        )
    return raw


class MasterKey:
    """32 secret bytes; only ever used through `derive`.

    `repr` and `str` never show key material, so a key that ends up in a log line
    or a traceback leaks nothing.
    """

    __slots__ = ("_raw", "origin")

    def __init__(self, raw: bytes, origin: str = "memory") -> None:
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"a master key must be exactly {KEY_BYTES} bytes, got {len(raw)}")
        self._raw = bytes(raw)
        self.origin = origin

    def __repr__(self) -> str:
        return f"<MasterKey from {self.origin}>"

    __str__ = __repr__

    @classmethod
    def from_base64(cls, text: str, origin: str = "the given text") -> MasterKey:
        return cls(_decode(text, origin), origin)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a key file, refusing one that group or others may read or write."""
        p = Path(path)
        origin = f"key file {str(p)!r}"
        try:
            with p.open("rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise MasterKeyError(f"{origin} is not a regular file")
                if os.name == "posix" and st.st_mode & 0o077:
                    raise MasterKeyError(
                        f"{origin} has permissions {stat.S_IMODE(st.st_mode):04o}; it must not "
                        f"be accessible by group or others (chmod 600 {str(p)!r})"
                    )
                data = f.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise MasterKeyError(f"cannot read {origin}: {exc.strerror or exc}") from None
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise MasterKeyError(f"{origin} is too large to be a master key file")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise MasterKeyError(f"{origin} does not contain base64 text") from None
        return cls(_decode(text, origin), origin)

    @classmethod
    def load(
        cls,
        key_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> MasterKey:
        """The operator's master key from `key_file`, else the environment.

        Raises MasterKeyError when none is configured: cloaking without a key must
        not silently start (it would either fail later or create an unreadable registry).
        """
        env = os.environ if environ is None else environ
        if key_file is not None:
            return cls.from_file(key_file)
        text = env.get(MASTER_KEY_ENV)
        if text is not None and text.strip():
            return cls.from_base64(text, f"${MASTER_KEY_ENV}")
        path = env.get(MASTER_KEY_FILE_ENV)
        if path is not None and path.strip():
            return cls.from_file(path.strip())
        raise MasterKeyError(
            f"no master key: set {MASTER_KEY_ENV} (base64 of 32 random bytes), "
            f"{MASTER_KEY_FILE_ENV} or --master-key-file; `pgcloak keys new` prints a fresh key"
        )

    def derive(self, info: bytes, length: int = KEY_BYTES) -> bytes:
        """HKDF-SHA256 subkey for the purpose named by `info` (one of the module labels)."""
        if not info:
            raise ValueError("HKDF info label must not be empty")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
            self._raw
        )

    def key_check(self) -> bytes:
        """Public 32-byte value identifying this key (stored in pgcloak.key_check).

        An HKDF output under its own label: it reveals nothing about the key or the
        other subkeys, yet two different master keys give different values.
        """
        return self.derive(KEY_CHECK)
