"""In-band registry access: internal Queries on the client's own connection.

At session start one internal Query (LISTEN, current_schemas, registry status,
fingerprint), then a full load when the shared entry is stale; mid-session
refreshes at message boundaries (docs/cloaking-design.md §8). The client's
further input is held meanwhile and fed again once the internal work is done.
"""

from __future__ import annotations

from typing import Final

from pgcloak.crypto.values import ValueDecryptionError
from pgcloak.proxy.cloak_settings import SETTINGS_SQL
from pgcloak.proxy.cloak_state import SessionState
from pgcloak.proxy.cloak_units import CHANNEL, U_INTERNAL, InternalDone, Results, Unit
from pgcloak.proxy.cloak_values import DATA_KEYS_SQL, Keyring
from pgcloak.proxy.wire import frame
from pgcloak.registry.catalog import LOAD_STATEMENTS, RegistryUnavailable, parse_load
from pgcloak.registry.store import STATUS_SQL
from pgcloak.rewriter.overlay import OverlayCatalog

PATH_SQL: Final = SETTINGS_SQL  # search_path, bytea_output, extra_float_digits
# Changes whenever the registry does (insert/delete change the count, any write a
# newer xmin) or the database is re-created: compared at session start, so a process
# that had no session listening while the registry changed still notices.
FINGERPRINT_SQL: Final = (
    "SELECT (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database())::text || '/' || "
    "(SELECT count(*) || '/' || coalesce(max(xmin::text::int8), 0) FROM pgcloak.objects) "
    "|| '/' || "
    "(SELECT count(*) || '/' || coalesce(max(xmin::text::int8), 0) FROM pgcloak.data_keys)"
)
LOAD: Final = (*LOAD_STATEMENTS, FINGERPRINT_SQL, DATA_KEYS_SQL)
_N_LOAD: Final = len(LOAD_STATEMENTS)
_BAD_KEYS = "pgcloak could not unwrap a column data key (wrong master key or tampering)"


def _parse_schemas(text: str | None) -> tuple[str, ...]:
    """current_schemas() array text -> names."""
    if not text or len(text) < 2:
        return ()
    out: list[str] = []
    inner = text[1:-1]
    i = 0
    while i < len(inner):
        if inner[i] == '"':
            j = i + 1
            buf = []
            while j < len(inner) and inner[j] != '"':
                if inner[j] == "\\":
                    j += 1
                buf.append(inner[j])
                j += 1
            out.append("".join(buf))
            i = j + 2
        else:
            j = inner.find(",", i)
            j = len(inner) if j < 0 else j
            out.append(inner[i:j])
            i = j + 1
    return tuple(out)


class RegistryLoader(SessionState):
    """Loading and refreshing the registry; internal Queries and the held input."""

    def start(self, ready: bytes) -> None:
        """First ReadyForQuery from the upstream: load what the session needs, then answer."""
        self.txn_status = ready[5:6] or b"I"
        stmts = [f"LISTEN {CHANNEL}", PATH_SQL, STATUS_SQL, FINGERPRINT_SQL]
        self._internal(stmts, lambda res, err: self._started(res, err, ready))

    def _started(self, res: Results, err: dict[str, str] | None, ready: bytes) -> bytes | None:
        status = res[2][0] if len(res) > 2 and res[2] else None
        if status is not None and status[0] != "t":
            self.on_fatal(
                "55000",
                "this database has no pgcloak registry; run `pgcloak init` against it "
                "before connecting through pgcloak",
            )
            return None
        if err is not None or len(res) < 4:
            self.on_fatal("55000", "pgcloak could not read its registry in this database")
            return None
        self.search_path = _parse_schemas(res[1][0][0] if res[1] else None)
        if res[1]:
            self.fmt = self.unreported.read(res[1][0], self.fmt)
        entry = self.entry
        fingerprint = res[3][0][0] if res[3] else None
        if entry.stale or entry.loaded is None or fingerprint != entry.fingerprint:
            self._internal(list(LOAD), lambda r, e: self._loaded(r, e, ready))
            return None
        return self._release(ready)

    def _loaded(
        self, res: Results, err: dict[str, str] | None, ready: bytes | None
    ) -> bytes | None:
        if err is not None:
            if ready is not None or self.entry.loaded is None:
                self.on_fatal("55000", "pgcloak could not load its registry in this database")
                return None
            return self._release(None)  # e.g. an aborted transaction: retry later
        try:
            loaded = parse_load(res[:_N_LOAD], self.ctx.master)
            keys = Keyring.load(self.ctx.wrapper, loaded.registry, res[_N_LOAD + 1])
        except (RegistryUnavailable, ValueDecryptionError) as exc:
            self.on_fatal(exc.sqlstate, str(getattr(exc, "message", "")) or _BAD_KEYS)
            return None
        fingerprint = res[_N_LOAD][0][0] if res[_N_LOAD] else None
        self.entry.install(loaded, fingerprint, keys)
        if loaded.key_check_missing:
            from pgcloak.registry.store import key_check_write

            write = key_check_write(self.ctx.master.key_check()).inline()
            self._internal([write], lambda r, e: self._release(ready))
            return None
        return self._release(ready)

    def _release(self, ready: bytes | None) -> bytes | None:
        """Internal work done: answer what waited for it and feed the held input."""
        backlog = self.backlog
        self.backlog = None
        if backlog:
            self.feed_client(bytes(backlog))
        return ready

    def _internal(self, statements: list[str], done: InternalDone) -> None:
        unit = Unit(U_INTERNAL, hidden=True)
        unit.results = [[]]
        unit.on_done = done
        self._push(unit)
        if self.backlog is None:
            self.backlog = bytearray()
        self.to_server(frame(b"Q", ";\n".join(statements).encode() + b"\0"))

    def _refresh_settings(self) -> None:
        """Re-read search_path, bytea_output and extra_float_digits only."""
        self.path_dirty = False

        def done(res: Results, err: dict[str, str] | None) -> bytes | None:
            if err is None and res and res[-1]:
                self.search_path = _parse_schemas(res[-1][0][0])
                self.fmt = self.unreported.read(res[-1][0], self.fmt)
            return self._release(None)

        self._internal([PATH_SQL], done)

    def _refresh(self) -> None:
        stmts: list[str] = []
        if self.listen_dirty:
            stmts.append(f"LISTEN {CHANNEL}")
        private = self.private_reload
        reload = self.entry.stale and self.private is None and not private
        if reload or private:
            stmts.extend(LOAD)
        if self.path_dirty:
            stmts.append(PATH_SQL)
        self.listen_dirty = self.path_dirty = self.private_reload = False
        n_listen = 1 if stmts and stmts[0].startswith("LISTEN") else 0

        def done(res: Results, err: dict[str, str] | None) -> bytes | None:
            if err is not None:
                if reload:
                    self.entry.stale = True
                return self._release(None)
            if stmts[-1] == PATH_SQL:
                self.search_path = _parse_schemas(res[len(stmts) - 1][0][0])
                self.fmt = self.unreported.read(res[len(stmts) - 1][0], self.fmt)
            if private:
                # This transaction's own view of the registry (after ROLLBACK TO):
                # never shared, it is not committed.
                part = res[n_listen : n_listen + len(LOAD)]
                try:
                    loaded = parse_load(part[:_N_LOAD], self.ctx.master)
                    keys = Keyring.load(self.ctx.wrapper, loaded.registry, part[_N_LOAD + 1])
                except (RegistryUnavailable, ValueDecryptionError) as exc:
                    self.on_fatal(exc.sqlstate, str(getattr(exc, "message", "")) or _BAD_KEYS)
                    return None
                self.private = (OverlayCatalog(loaded.catalog), loaded.registry)
                self.private_keys = keys
                self._private_unmasker = None
                return self._release(None)
            if reload:
                return self._loaded(res[n_listen : n_listen + len(LOAD)], None, None)
            return self._release(None)

        self._internal(stmts, done)
