"""Column data keys wrapped by HashiCorp Vault's transit engine (``kek = "vault"``).

With Vault the key-encryption key never leaves Vault: pgcloak sends a fresh DEK
to ``transit/encrypt/<key>`` and stores the returned ``vault:vN:...`` ciphertext;
loading the registry sends it back to ``transit/decrypt/<key>``. The master key
still encrypts the registry's names; only the data keys move to Vault.

The transit key must be a *derived* key (``vault write -f transit/keys/pgcloak
derived=true``): each request carries ``context`` = the same binding the local
wrapper uses as associated data (column id + key version), so Vault derives a
separate key per column and version and a wrapped DEK copied to another column
or version does not decrypt. A key created without derivation would silently
ignore the context, so `check()` (run before the first wrap) refuses it.

Stored form (``pgcloak.data_keys.wrapped``)::

    0x02 | ASCII "vault:vN:<base64>"

The leading byte tells this wrapping from a local one (0x01), so each wrapper
refuses the other's rows with a message that says what to configure.

Unwrapped keys are cached per process by (column id, key version, stored bytes):
a registry reload then costs no Vault round trip, and `unwrap_many` turns a cold
load into one batch request. Minimal Vault policy for the proxy's token::

    path "transit/encrypt/pgcloak" { capabilities = ["update"] }
    path "transit/decrypt/pgcloak" { capabilities = ["update"] }
    path "transit/keys/pgcloak"    { capabilities = ["read"] }
"""

from __future__ import annotations

import base64
import binascii
import importlib
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Final

from pgcloak.crypto.values import DataKey, ValueDecryptionError, dek_binding

__all__ = [
    "WRAP_LOCAL",
    "WRAP_VAULT",
    "KeyServiceError",
    "VaultTransitWrapper",
    "wrap_format",
]

WRAP_LOCAL: Final = 0x01
WRAP_VAULT: Final = 0x02
_PREFIX: Final = b"vault:v"
_DEK_BYTES: Final = 64


class KeyServiceError(ValueDecryptionError):
    """Vault could not be used (unreachable, token refused, key missing or not derived).

    `str()` says what to fix (for the operator's log or the CLI); `message` is what a
    client may see.
    """

    sqlstate = "58000"
    message = "pgcloak could not reach its key service to unwrap a column data key"


def wrap_format(wrapped: bytes) -> str:
    """'local', 'vault' or 'unknown': which wrapper a stored data key needs."""
    first = wrapped[:1]
    if first == bytes([WRAP_LOCAL]):
        return "local"
    if first == bytes([WRAP_VAULT]):
        return "vault"
    return "unknown"


def _import_hvac() -> Any:
    try:
        return importlib.import_module("hvac")
    except ImportError:
        raise KeyServiceError(
            "kek = vault needs the 'hvac' package: pip install 'pgcloak[vault]'"
        ) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultTransitWrapper:
    """`KeyWrapper` through Vault transit encrypt/decrypt with a derived key.

    Create one per process and keep it: the cache lives on the instance. Vault
    calls block (up to `timeout` seconds each); the cache is locked, so calls may
    come from worker threads.
    """

    def __init__(
        self,
        url: str,
        token: str,
        key_name: str,
        *,
        mount: str = "transit",
        namespace: str | None = None,
        timeout: float = 5,
        verify: bool | str | None = None,
    ) -> None:
        # verify None: hvac's defaults ($VAULT_CACERT / $VAULT_CAPATH, else the system CAs);
        # hvac also picks up $VAULT_CLIENT_CERT / $VAULT_CLIENT_KEY for mutual TLS.
        hvac = _import_hvac()
        self._requests_error: type[Exception] = importlib.import_module("requests").RequestException
        self._vault_error: type[Exception] = hvac.exceptions.VaultError
        self._client = hvac.Client(
            url=url, token=token, namespace=namespace, timeout=timeout, verify=verify
        )
        self.url = url
        self.key_name = key_name
        self.mount = mount.strip("/")
        self._cache: dict[tuple[uuid.UUID, int], tuple[bytes, DataKey]] = {}
        self._lock = threading.Lock()
        self._checked = False

    def __repr__(self) -> str:  # never the token
        return f"<VaultTransitWrapper {self.url} {self.mount}/keys/{self.key_name}>"

    # -- Vault calls ------------------------------------------------------------------

    def _where(self) -> str:
        return f"Vault transit key {self.mount}/keys/{self.key_name} at {self.url}"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> dict[str, Any]:
        """One hvac call; transport and permission problems become KeyServiceError."""
        try:
            response = fn(name=self.key_name, mount_point=self.mount, **kwargs)
        except self._requests_error as exc:
            raise KeyServiceError(
                f"cannot reach Vault at {self.url} to {what}: {type(exc).__name__}"
            ) from None
        except self._vault_error as exc:
            raise self._vault_failure(what, exc) from None
        if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
            raise KeyServiceError(f"unexpected answer from Vault to {what}")
        data: dict[str, Any] = response["data"]
        return data

    def _vault_failure(self, what: str, exc: Exception) -> ValueDecryptionError:
        status = type(exc).__name__
        errors = "; ".join(str(e) for e in (getattr(exc, "errors", None) or [])) or str(exc)
        if status == "InvalidRequest" and what.startswith("unwrap"):
            # 400 on decrypt: wrong key, wrong context, or a tampered ciphertext.
            return ValueDecryptionError(
                f"a data key failed to unwrap with {self._where()} ({errors})"
            )
        if status in ("Unauthorized", "Forbidden"):
            return KeyServiceError(
                f"Vault refused the token to {what} with {self._where()} ({errors}); "
                "the token needs update on encrypt/decrypt and read on keys/<key>"
            )
        return KeyServiceError(f"Vault failed to {what} with {self._where()}: {status} ({errors})")

    def check(self) -> None:
        """Refuse a missing transit key or one without key derivation (context ignored)."""
        transit = self._client.secrets.transit
        data = self._call("read the transit key", transit.read_key)
        if not data.get("derived"):
            raise KeyServiceError(
                f"{self._where()} is not a derived key, so it would ignore the column "
                f"binding; create it with `vault write {self.mount}/keys/{self.key_name} "
                "derived=true`"
            )
        self._checked = True

    # -- KeyWrapper -------------------------------------------------------------------

    def wrap(self, key: DataKey, column_id: uuid.UUID) -> bytes:
        if not self._checked:
            self.check()
        context = _b64(dek_binding(column_id, key.version))
        data = self._call(
            "wrap a data key",
            self._client.secrets.transit.encrypt_data,
            plaintext=_b64(key.secret),
            context=context,
        )
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:v"):
            raise KeyServiceError("unexpected answer from Vault to wrap a data key")
        wrapped = bytes([WRAP_VAULT]) + ciphertext.encode("ascii")
        with self._lock:
            self._cache[(column_id, key.version)] = (wrapped, key)
        return wrapped

    def unwrap(self, wrapped: bytes, column_id: uuid.UUID, version: int) -> DataKey:
        return self.unwrap_many([(wrapped, column_id, version)])[0]

    def unwrap_many(self, items: Sequence[tuple[bytes, uuid.UUID, int]]) -> list[DataKey]:
        """Unwrap several stored keys: cached ones locally, the rest in one batch request."""
        out: list[DataKey | None] = []
        missing: list[int] = []
        with self._lock:
            for k, (wrapped, column_id, version) in enumerate(items):
                cached = self._cache.get((column_id, version))
                out.append(cached[1] if cached and cached[0] == bytes(wrapped) else None)
                if out[-1] is None:
                    missing.append(k)
        if missing:
            batch = [
                {
                    "ciphertext": _ciphertext(bytes(items[k][0])),
                    "context": _b64(dek_binding(items[k][1], items[k][2])),
                }
                for k in missing
            ]
            transit = self._client.secrets.transit
            if len(batch) == 1:
                data = self._call("unwrap a data key", transit.decrypt_data, **batch[0])
                results: list[Any] = [data]
            else:
                data = self._call(
                    "unwrap data keys", transit.decrypt_data, ciphertext=None, batch_input=batch
                )
                results = data.get("batch_results") or []
                if len(results) != len(batch):
                    raise KeyServiceError("unexpected answer from Vault to unwrap data keys")
            for k, result in zip(missing, results, strict=True):
                wrapped, column_id, version = items[k]
                key = DataKey(version, self._plaintext(result))
                out[k] = key
                with self._lock:
                    self._cache[(column_id, version)] = (bytes(wrapped), key)
        return [key for key in out if key is not None]

    def _plaintext(self, result: Any) -> bytes:
        if not isinstance(result, dict):
            raise KeyServiceError("unexpected answer from Vault to unwrap a data key")
        if result.get("error"):
            raise ValueDecryptionError(
                f"a data key failed to unwrap with {self._where()} ({result['error']})"
            )
        try:
            secret = base64.b64decode(str(result.get("plaintext", "")), validate=True)
        except binascii.Error:
            raise KeyServiceError("unexpected answer from Vault to unwrap a data key") from None
        if len(secret) != _DEK_BYTES:
            raise ValueDecryptionError("a data key unwrapped by Vault has the wrong length")
        return secret

    def forget(self) -> None:
        """Drop cached data keys (e.g. after the KEK configuration changed)."""
        with self._lock:
            self._cache.clear()


def _ciphertext(wrapped: bytes) -> str:
    """The Vault ciphertext inside a stored wrapping; a clear error for a local one."""
    if wrapped[:1] == bytes([WRAP_LOCAL]):
        raise ValueDecryptionError(
            "a data key is wrapped under the local master key but pgcloak is configured "
            "with kek = vault; convert the data keys with `pgcloak keys rewrap --kek vault`"
        )
    body = wrapped[1:]
    if wrapped[:1] != bytes([WRAP_VAULT]) or not body.startswith(_PREFIX) or not body.isascii():
        raise ValueDecryptionError("malformed wrapped data key")
    return body.decode("ascii")
