"""The proxy's per-database registry cache, shared by every session of a process.

A session loads the registry in-band (on its own upstream connection) and
installs the result here; the others reuse it until it goes stale. It goes
stale when this process commits DDL (the exact committed state is re-read from
the database rather than trusted from the optimistic copy) or when a
`pgcloak_registry` notification names a transaction the loaded snapshot does not
cover (DDL through another proxy instance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcloak.proxy.cloak_results import Unmasker
from pgcloak.proxy.cloak_values import Keyring
from pgcloak.registry.catalog import Loaded, snapshot_covers

__all__ = ["DatabaseEntry", "RegistryCache"]


@dataclass
class DatabaseEntry:
    """What one database's sessions share: the loaded registry and its freshness."""

    loaded: Loaded | None = None
    stale: bool = True
    generation: int = 0
    uncovered: set[int] = field(default_factory=set)
    unmasker: Unmasker | None = None
    loads: int = 0  # completed loads, for metrics and tests
    fingerprint: str | None = None  # registry change marker read with the last load
    keyring: Keyring | None = None  # column data keys by scope

    def install(
        self, loaded: Loaded, fingerprint: str | None = None, keyring: Keyring | None = None
    ) -> None:
        self.loaded = loaded
        self.fingerprint = fingerprint
        self.keyring = keyring
        self.generation += 1
        self.loads += 1
        self.unmasker = Unmasker(loaded.registry.physical_names(), loaded.catalog)
        self.uncovered = {t for t in self.uncovered if not snapshot_covers(loaded.snapshot, t)}
        self.stale = bool(self.uncovered)

    def notified(self, txid: int | None) -> None:
        """A registry change committed somewhere (txid None: unknown transaction)."""
        loaded = self.loaded
        if txid is not None and loaded is not None and snapshot_covers(loaded.snapshot, txid):
            return
        if txid is not None:
            self.uncovered.add(txid)
            if len(self.uncovered) > 1024:  # a flood of changes: one reload covers them
                self.uncovered = set(sorted(self.uncovered)[-1024:])
        self.stale = True


class RegistryCache:
    """Entries keyed by database name (one upstream per proxy)."""

    def __init__(self) -> None:
        self.entries: dict[str, DatabaseEntry] = {}

    def entry(self, database: str) -> DatabaseEntry:
        entry = self.entries.get(database)
        if entry is None:
            entry = self.entries[database] = DatabaseEntry()
        return entry

    def clear(self) -> None:
        self.entries.clear()
