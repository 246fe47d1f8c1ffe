"""The key-encryption key chosen by the configuration (``kek = "local" | "vault"``).

One `KeyWrapper` per process: build it once at startup (and again only when a
reload changes the KEK settings), because the Vault wrapper caches unwrapped data
keys on the instance.
"""

from __future__ import annotations

import os

from pgcloak.config import Config
from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import KeyWrapper, LocalKeyWrapper
from pgcloak.crypto.vault import KeyServiceError, VaultTransitWrapper

__all__ = ["VAULT_TIMEOUT", "key_wrapper", "split_vault_key"]

VAULT_TIMEOUT = 5.0


def split_vault_key(spec: str) -> tuple[str, str]:
    """'name' -> ('transit', 'name'); 'kv/transit2/name' -> ('kv/transit2', 'name')."""
    mount, _, name = spec.strip("/").rpartition("/")
    return mount or "transit", name


def key_wrapper(config: Config, master: MasterKey) -> KeyWrapper:
    """The configured wrapper: the master key's `LocalKeyWrapper`, or Vault transit.

    Makes no network call (the Vault key is checked before the first wrap).
    Raises KeyServiceError when kek = vault lacks a setting or the hvac package.
    """
    if config.kek == "local":
        return LocalKeyWrapper(master)
    if config.kek != "vault":
        raise ValueError(f"unknown kek {config.kek!r}")
    url = config.vault_url or os.environ.get("VAULT_ADDR", "").strip()
    token = config.vault_token or os.environ.get("VAULT_TOKEN", "").strip()
    if not url or not token or not config.vault_key:
        raise KeyServiceError(
            "kek = vault needs vault_url, vault_token (or VAULT_TOKEN) and vault_key"
        )
    mount, name = split_vault_key(config.vault_key)
    return VaultTransitWrapper(url, token, name, mount=mount, timeout=VAULT_TIMEOUT)
