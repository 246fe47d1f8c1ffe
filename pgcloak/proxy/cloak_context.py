"""Process-wide cloaking state shared by all sessions, and the config's name filters."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import KeyWrapper, LocalKeyWrapper
from pgcloak.proxy.cloak_cache import RegistryCache
from pgcloak.rewriter import EncColumn, Rewriter
from pgcloak.rewriter.template import Template

if TYPE_CHECKING:
    from pgcloak.registry.redis_bus import RedisBus

__all__ = ["CloakContext", "encrypt_rules", "table_filter"]


RowDescCache = tuple[
    tuple[str, ...] | None, tuple[EncColumn | None, ...] | None, bytes, list[int] | None
]


class CloakContext:
    """Process-wide cloaking state: key, rewriter (plan cache) and registry cache."""

    def __init__(
        self,
        master: MasterKey,
        *,
        cache_size: int = 4096,
        tables: Sequence[str] = ("*.*",),
        dev: bool = False,
        encrypt: Sequence[tuple[str, str, str | None]] = (),
        wrapper: KeyWrapper | None = None,
        decrypt_cache: int = 4096,
    ) -> None:
        self.master = master
        self.decrypt_cache = decrypt_cache  # memo entries per deterministic column
        self.wrapper: KeyWrapper = wrapper or LocalKeyWrapper(master)  # wraps column data keys
        self.rewriter = Rewriter(
            cache_size, cloak_filter=table_filter(tables), encrypt_rules=encrypt_rules(encrypt)
        )
        self.cache = RegistryCache()
        self.dev = dev  # dev mode may log semantic names; prod never does
        # Simple-Query fast path: numbers-only statement shape -> rewritten pieces (bytes).
        self.fast: dict[tuple[object, ...], tuple[list[bytes], Template]] = {}
        # RowDescription (server body, ids of names and encrypted outputs) -> the names and
        # outputs themselves (identity-checked: holding them keeps their ids unique) and
        # what the client gets.
        self.rowdesc: dict[tuple[object, ...], RowDescCache] = {}
        self.bus: RedisBus | None = None

    async def start_bus(self, url: str) -> None:
        """Optional Redis fan-out of registry changes (NOTIFY stays the fallback)."""
        from pgcloak.registry.redis_bus import RedisBus

        cache = self.cache

        def stale_all() -> None:
            for entry in cache.entries.values():
                entry.stale = True

        self.bus = RedisBus(
            url,
            on_change=lambda db, txid: cache.entry(db).notified(txid),
            on_reconnect=stale_all,
        )
        await self.bus.start(wait=1.0)

    def committed(self, database: str) -> None:
        """This process committed a registry change in `database`: tell the others."""
        if self.bus is not None:
            self.bus.publish(database, None)

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()


def encrypt_rules(
    rules: Sequence[tuple[str, str, str | None]],
) -> Callable[[str, str, str], tuple[str, str | None] | None] | None:
    """The rewriter's encryption rules from the config's [encrypt] entries (globs allowed)."""
    if not rules:
        return None
    exact = {name: (mode, group) for name, mode, group in rules if "*" not in name}
    globs = [(name, (mode, group)) for name, mode, group in rules if "*" in name]

    def rule(schema: str, table: str, column: str) -> tuple[str, str | None] | None:
        name = f"{schema}.{table}.{column}"
        found = exact.get(name)
        if found is None:
            found = next((v for g, v in globs if fnmatch.fnmatchcase(name, g)), None)
        return found

    return rule


def table_filter(patterns: Sequence[str]) -> Callable[[str, str], bool] | None:
    """The rewriter's cloak filter for schema.table glob patterns (None: cloak all)."""
    if not patterns or "*.*" in patterns or "*" in patterns:
        return None
    pats = tuple(patterns)

    def cloaks(schema: str, table: str) -> bool:
        name = f"{schema}.{table}"
        return any(fnmatch.fnmatchcase(name, p) for p in pats)

    return cloaks
