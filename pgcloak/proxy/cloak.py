"""A cloaked session: rewrite what the client sends, map back what the server answers.

Every client statement goes through the rewriter; what reaches the server holds
only physical names. Each request sent upstream gets a `Unit` in a FIFO that
says what its responses mean (a client statement to rename, a registry write to
hide, a refusal to replace, an internal query to collect), so responses are
mapped in order however far the client pipelines.

Registry access is in-band on the client's own connection (docs/cloaking-design.md
§8): loads are internal Queries sent at a message boundary while the client's
further input waits; DDL carries its registry writes in the same transaction as a
`DO` block. A refused statement is replaced by one the server rejects at parse
analysis, and that error by pgcloak's own: transaction state and response order
stay exactly as on a plain server, and nothing the client wrote is forwarded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgcloak.crypto.codecs import DEFAULT_FORMAT, SessionFormat
from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import KeyWrapper, LocalKeyWrapper, ValueDecryptionError
from pgcloak.proxy.cloak_cache import DatabaseEntry, RegistryCache
from pgcloak.proxy.cloak_catalog import TempCatalog, as_catalog, created_relation
from pgcloak.proxy.cloak_copy import CopyOptions, CopyTransformer, CopyValueError, copy_options
from pgcloak.proxy.cloak_results import (
    Unmasker,
    decode_fields,
    encode_fields,
    error_from_cloak,
    rename_fields,
)
from pgcloak.proxy.cloak_values import (
    DATA_KEYS_SQL,
    Keyring,
    Sealer,
    ValueError_,
    decrypt_row,
    describe_params,
    describe_row,
    parse_param_types,
    reveal_detail,
    reveal_truncated,
)
from pgcloak.proxy.messages import CommandComplete, ErrorResponse
from pgcloak.proxy.stats import Metrics
from pgcloak.proxy.wire import ProtocolError, frame, one_cstr, two_cstrs
from pgcloak.registry.catalog import LOAD_STATEMENTS, RegistryUnavailable, parse_load, writes_for
from pgcloak.registry.model import Write
from pgcloak.registry.store import STATUS_SQL, NameConflict, Registry, RegistryError
from pgcloak.rewriter import Catalog, CloakError, EncColumn, Plan, Rewriter
from pgcloak.rewriter.overlay import OverlayCatalog
from pgcloak.rewriter.template import Template, numbers_shape_bytes, shape_of

if TYPE_CHECKING:
    from pgcloak.registry.redis_bus import RedisBus

__all__ = ["CloakContext", "CloakSession"]

CHANNEL: Final = "pgcloak_registry"
# Fails parse analysis on any server (42883), in place of a statement pgcloak refuses.
REFUSED_SQL: Final = "SELECT pg_catalog.pgcloak_refused_statement()"
PATH_SQL: Final = "SELECT pg_catalog.current_schemas(false)::text"
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
WRITE_NAME: Final = "_pgcloak_w"

# Unit kinds.
U_STEP: Final = 0  # one statement of a simple Query
U_QEND: Final = 1  # the ReadyForQuery ending a simple Query or FunctionCall
U_PARSE: Final = 2
U_BIND: Final = 3
U_DESCRIBE: Final = 4
U_EXECUTE: Final = 5
U_CLOSE: Final = 6
U_SYNC: Final = 7
U_FUNC: Final = 8
U_INTERNAL: Final = 9  # a whole internal Query, through its ReadyForQuery

_ENDS: Final = {ord("1"): U_PARSE, ord("2"): U_BIND, ord("3"): U_CLOSE, ord("V"): U_FUNC}
_CREATES = frozenset({"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt"})
_ANCHORED = re.compile(r"\^\((.*)\)\$")
# Statements whose planning has side effects on the session (never served from a cache).
_SESSION_STATE = frozenset(
    {"VariableSetStmt", "DiscardStmt", "UnlistenStmt", "TransactionStmt"} | _CREATES
)
_INTO = re.compile(r"\binto\b", re.IGNORECASE)
_ROLLBACK_TO = re.compile(r"^\s*rollback\s+(?:work\s+|transaction\s+)?to\b", re.IGNORECASE)
_SET_PATH = re.compile(r"search_path|\ball\b", re.IGNORECASE)
_FRONTEND_TYPES = frozenset(b"QPBDECSHFdcfX")
_FORMAT_GUCS = frozenset(
    {b"DateStyle", b"IntervalStyle", b"TimeZone", b"standard_conforming_strings"}
)
_NO_STATEMENT = b"_pgcloak_refused_bind"  # a prepared statement that never exists
_BAD_KEYS = "pgcloak could not unwrap a column data key (wrong master key or tampering)"
_BAD_UTF8 = 'invalid byte sequence for encoding "UTF8"'

log = logging.getLogger("pgcloak.cloak")

Results = list[list[list[str | None]]]
InternalDone = Callable[[Results, dict[str, str] | None], bytes | None]


class _Retry(Exception):
    """Plan the current message again once the registry has been reloaded."""


class Unit:
    """What the responses to one request sent upstream mean."""

    __slots__ = (
        "copy",
        "emit",
        "enc",
        "explain",
        "formats",
        "hidden",
        "hold",
        "kind",
        "offset",
        "on_done",
        "output",
        "params",
        "plan",
        "refusal",
        "results",
        "simple",
        "source",
        "tag",
        "template",
        "values",
        "write",
    )

    def __init__(
        self,
        kind: int,
        *,
        plan: Plan | None = None,
        offset: int = 0,
        simple: bool = True,
        hidden: bool = False,
    ) -> None:
        self.kind = kind
        self.plan = plan
        self.offset = offset  # characters before this statement in the text sent
        self.simple = simple  # an error skips to the Query's end (else to Sync)
        self.hidden = hidden  # swallow every response
        self.output: tuple[str, ...] | None = None  # RowDescription names by position
        self.explain = False
        self.values = False  # a system-catalog query: map physical names in its rows
        self.enc: tuple[EncColumn | None, ...] | None = None  # encrypted output positions
        self.formats: list[int] | None = None  # result formats of the encrypted outputs
        self.params: dict[int, EncColumn] | None = None  # encrypted parameters ($n)
        self.template: Template | None = None  # fast path: plan = template for `source`
        self.copy: tuple[tuple[EncColumn | None, ...], CopyOptions] | None = None
        self.source: bytes = b""
        self.tag: str | None = None  # CommandComplete tag to report instead
        self.hold = False  # keep the CommandComplete until the registry write completes
        self.write = False  # a registry write
        self.emit: bytes | None = None  # sent to the client when this unit completes
        self.refusal: CloakError | None = None
        self.results: Results | None = None
        self.on_done: InternalDone | None = None


@dataclass
class Prepared:
    """A statement prepared through the extended protocol, as pgcloak planned it."""

    plan: Plan | None
    output: tuple[str, ...] | None = None
    tag: str | None = None  # registry-only: the tag to report
    writes: str | None = None  # DO block to run after the first Execute (DDL)
    explain: bool = False
    values: bool = False
    enc: tuple[EncColumn | None, ...] | None = None  # encrypted output positions
    params: dict[int, EncColumn] | None = None  # encrypted parameters ($n)
    formats: list[int] | None = None  # result formats from Bind (portals)
    copy: tuple[tuple[EncColumn | None, ...], CopyOptions] | None = None
    param_oids: list[int] = dataclasses.field(default_factory=list)  # client-declared types


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
    ) -> None:
        self.master = master
        self.wrapper: KeyWrapper = wrapper or LocalKeyWrapper(master)  # wraps column data keys
        self.rewriter = Rewriter(
            cache_size, cloak_filter=table_filter(tables), encrypt_rules=encrypt_rules(encrypt)
        )
        self.cache = RegistryCache()
        self.dev = dev  # dev mode may log semantic names; prod never does
        # Simple-Query fast path: numbers-only statement shape -> rewritten pieces (bytes).
        self.fast: dict[tuple[object, ...], tuple[list[bytes], Template]] = {}
        # RowDescription (server body, names, encrypted outputs) -> what the client gets.
        self.rowdesc: dict[tuple[object, ...], tuple[bytes, list[int] | None]] = {}
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


def _do_block(writes: Sequence[Write]) -> str:
    """Registry writes as one statement (works in both protocols, one response)."""
    body = "".join(w.inline() + ";\n" for w in writes)
    return f"DO $pgcloak$BEGIN\n{body}END$pgcloak$"


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


class CloakSession:
    """Both directions of one cloaked session; no sockets, only the two write callables."""

    def __init__(
        self,
        ctx: CloakContext,
        database: str,
        to_server: Callable[[bytes], None],
        metrics: Metrics,
        *,
        max_size: int,
        on_fatal: Callable[[str, str], None],
    ) -> None:
        self.ctx = ctx
        self.database = database
        self.entry: DatabaseEntry = ctx.cache.entry(database)
        self.to_server = to_server
        self.metrics = metrics
        self.max_size = max_size
        self.on_fatal = on_fatal
        self.units: deque[Unit] = deque()
        self.txn_status = b"I"
        self.search_path: tuple[str, ...] = ("public",)
        self.stmts: dict[bytes, Prepared] = {}
        self.portals: dict[bytes, Prepared] = {}
        # SQL-level PREPARE name -> (output names, encrypted outputs) for its EXECUTEs
        self.sql_prepared: dict[
            str, tuple[tuple[str, ...] | None, tuple[EncColumn | None, ...] | None]
        ] = {}
        self.temp: frozenset[str] = frozenset()  # temporary relations this session made
        self._retrying = False  # this message is being planned again after a reload
        self._private_unmasker: Unmasker | None = None
        self._parse_cache: dict[tuple[object, ...], tuple[bytes, Prepared, bytes]] = {}
        self.private_reload = False  # re-read this transaction's registry (ROLLBACK TO)
        self._parse_at_boundary = False
        self._temp_catalog: TempCatalog | None = None
        self.tail = b""
        self.backlog: bytearray | None = bytearray()  # held client input (None: not holding)
        self.ext_open = False  # extended-protocol messages since the last Sync
        self.private: tuple[OverlayCatalog, Registry] | None = None  # DDL in this transaction
        self.private_keys: Keyring | None = None
        self.fmt: SessionFormat = DEFAULT_FORMAT  # DateStyle, TimeZone... for value codecs
        self.poisoned = False  # a value failed to decrypt: drop the rest until ReadyForQuery
        self.copy_in: CopyTransformer | None = None  # client CopyData being encrypted
        self.copy_out: CopyTransformer | None = None  # server CopyData being decrypted
        self.copy_in_failed = False  # pgcloak failed a COPY FROM STDIN: drop the client's rest
        self.sealed: dict[str, str] = {}  # ciphertext prefix -> plaintext, latest statement
        self.path_dirty = False
        self.set_in_txn = False
        self.listen_dirty = False
        self.client_terminated = False
        self.server_sent_fatal = False
        self.reads = 0
        self.rows_table: list[Callable[[bytes, int, int], bytes | None] | None] | None = None
        self.server_handlers: dict[int, Callable[[bytes, int, int], bytes | None] | None] = {
            ord("1"): self._s_done,
            ord("2"): self._s_done,
            ord("3"): self._s_done,
            ord("V"): self._s_done,
            ord("n"): self._s_no_data,
            ord("s"): self._s_suspended,
            ord("t"): self._s_param_desc,
            ord("T"): self._s_row_desc,
            ord("D"): None,
            ord("C"): self._s_complete,
            ord("I"): self._s_complete,
            ord("E"): self._s_error,
            ord("N"): self._s_notice,
            ord("A"): self._s_notification,
            ord("S"): self._s_parameter_status,
            ord("Z"): self._s_ready,
            ord("G"): self._s_copy_in,
            ord("H"): self._s_copy_out,
            ord("W"): None,
            ord("d"): None,
            ord("c"): None,
            ord("K"): None,
            ord("v"): None,
        }

    # ------------------------------------------------------------------ state

    @property
    def idle(self) -> bool:
        return not self.units and self.txn_status == b"I"

    def catalog(self) -> Catalog:
        base: Catalog
        if self.private is not None:
            base = self.private[0]
        else:
            loaded = self.entry.loaded
            assert loaded is not None
            base = loaded.catalog
        if not self.temp:
            return base
        wrapped = self._temp_catalog
        if wrapped is None or wrapped.base is not base or wrapped.temp is not self.temp:
            wrapped = self._temp_catalog = TempCatalog(base, self.temp)
        return as_catalog(wrapped)

    def keyring(self) -> Keyring:
        if self.private is not None and self.private_keys is not None:
            return self.private_keys
        keys = self.entry.keyring
        assert keys is not None
        return keys

    def unmasker(self) -> Unmasker:
        """Reverse names; inside a DDL transaction also the names it has just dropped.

        A statement's own errors and notices (`cannot drop table customers because...`,
        `drop cascades to constraint orders_cid_fkey`) name objects its changes remove.
        """
        shared = self.entry.unmasker
        assert shared is not None
        if self.private is None:
            return shared
        if self._private_unmasker is None:
            names = dict(shared.names)
            names.update(self.private[1].physical_names())
            self._private_unmasker = Unmasker(names, self.private[0])
        return self._private_unmasker

    def _push(self, unit: Unit) -> None:
        self.units.append(unit)
        if len(self.units) == 1:
            self._head_changed()

    def _pop(self) -> Unit | None:
        units = self.units
        if not units:
            return None
        unit = units.popleft()
        self._head_changed()
        return unit

    def _head_changed(self) -> None:
        """Route DataRows through Python only while the head unit needs them."""
        table = self.rows_table
        if table is None:
            return
        head = self.units[0] if self.units else None
        need = head is not None and (
            head.hidden
            or head.explain
            or head.values
            or head.enc is not None
            or head.kind == U_INTERNAL
            or self.poisoned
        )
        table[68] = self._s_data_row if need else None

    # ------------------------------------------------------------------ startup

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

    # ------------------------------------------------------------------ client side

    def feed_client(self, data: bytes) -> None:
        """Client bytes (the client protocol's data_received)."""
        self.reads += 1
        self.metrics.bytes_from_client += len(data)
        if self.backlog is not None:
            self.backlog += data
            if len(self.backlog) > self.max_size:
                raise ProtocolError("too much client data while pgcloak loads its registry")
            return
        buf = self.tail + data if self.tail else data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        try:
            while n - pos >= 5:
                typ = buf[pos]
                ln = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                if ln < 4 or ln > self.max_size:
                    raise ProtocolError(f"invalid frontend message length {ln}")
                if typ not in _FRONTEND_TYPES:
                    raise ProtocolError(f"invalid frontend message type {typ}")
                end = pos + 1 + ln
                if end > n:
                    break
                boundary = typ == 81 or (typ == 80 and not self.ext_open)
                if boundary and self._needs_refresh():
                    self._hold_for_refresh(buf, pos, out)
                    return
                try:
                    self._client_message(typ, buf, pos, end, out)
                except _Retry:
                    # An unknown relation: maybe created through another instance or
                    # directly. Reload once, then plan this message again.
                    self.ext_open = False
                    self._retrying = True
                    self.entry.stale = True
                    self._hold_for_refresh(buf, pos, out)
                    return
                self._retrying = False
                pos = end
            self.tail = buf[pos:] if pos < n else b""
        finally:
            if out:
                self.to_server(b"".join(out))

    def _hold_for_refresh(self, buf: bytes, pos: int, out: list[bytes]) -> None:
        """Send what was ready, keep the client's input from `pos` on, reload first."""
        self.tail = b""
        if out:
            self.to_server(b"".join(out))
            out.clear()
        self.backlog = bytearray(buf[pos:])
        self._refresh()

    def _needs_refresh(self) -> bool:
        if self.private_reload:
            return True
        if self.txn_status == b"E" or self.private is not None:
            return self.listen_dirty
        return self.entry.stale or self.path_dirty or self.listen_dirty

    def _client_message(self, typ: int, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        if typ == 81:  # Q
            self.metrics.queries += 1
            self._query(buf[pos + 5 : end - 1], out)
        elif typ == 80:  # P
            self._parse_at_boundary = not self.ext_open
            self.ext_open = True
            self._parse(buf, pos, end, out)
        elif typ == 66:  # B
            self.ext_open = True
            portal, stmt = two_cstrs(buf, pos + 5, end)
            prepared = self.stmts.get(stmt)
            if prepared is not None:
                self.portals[portal] = prepared
            else:
                self.portals.pop(portal, None)
            unit = Unit(U_BIND, simple=False)
            self._push(unit)
            mapped = None
            if prepared is not None:
                if prepared.values:
                    mapped = map_bind_names(buf, pos, end, self._relation_physical)
                if prepared.enc is not None:
                    self.portals[portal] = dataclasses.replace(
                        prepared, formats=result_formats(buf, pos, end, len(prepared.enc))
                    )
                if prepared.params:
                    try:
                        mapped = self._sealer().bind(
                            buf, pos, end, prepared.params, prepared.param_oids
                        )
                    except ValueError_ as exc:
                        # Make the server fail this Bind (so it skips to Sync as it would
                        # for its own error) and answer with pgcloak's error instead.
                        unit.refusal = CloakError(exc.sqlstate, exc.message)
                        mapped = frame(b"B", b"\0" + _NO_STATEMENT + b"\0\0\0\0\0\0\0")
            out.append(buf[pos:end] if mapped is None else mapped)
        elif typ == 68:  # D
            self.ext_open = True
            kind = buf[pos + 5 : pos + 6]
            name = one_cstr(buf, pos + 6, end)
            prepared = (self.stmts if kind == b"S" else self.portals).get(name)
            unit = Unit(U_DESCRIBE, simple=False)
            if prepared is not None:
                unit.plan = prepared.plan
                unit.output = prepared.output
                unit.enc = prepared.enc
                unit.params = prepared.params
                unit.formats = prepared.formats
            self._push(unit)
            out.append(buf[pos:end])
        elif typ == 69:  # E
            self.ext_open = True
            self.metrics.queries += 1
            self._execute(buf, pos, end, out)
        elif typ == 67:  # C
            self.ext_open = True
            kind = buf[pos + 5 : pos + 6]
            name = one_cstr(buf, pos + 6, end)
            (self.stmts if kind == b"S" else self.portals).pop(name, None)
            self._push(Unit(U_CLOSE, simple=False))
            out.append(buf[pos:end])
        elif typ == 83:  # S
            self.ext_open = False
            self._push(Unit(U_SYNC, simple=False))
            out.append(buf[pos:end])
        elif typ == 70:  # F
            self._push(Unit(U_FUNC))
            self._push(Unit(U_QEND))
            out.append(buf[pos:end])
        elif typ == 88:  # X
            self.client_terminated = True
            out.append(buf[pos:end])
        elif typ in (100, 99, 102) and (self.copy_in is not None or self.copy_in_failed):
            self._copy_data_in(typ, buf, pos, end, out)
        else:  # H d c f
            out.append(buf[pos:end])

    def _relation_physical(self, name: str) -> str | None:
        """Physical name of a cloaked relation called `name` on the search path."""
        catalog = self.catalog()
        for schema in self.search_path:
            physical = catalog.relation_physical(schema, name)
            if physical is not None:
                return physical
        return None

    def _copy_data_in(self, typ: int, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        """CopyData/CopyDone/CopyFail of a COPY FROM STDIN into encrypted columns."""
        copy = self.copy_in
        if copy is None:  # pgcloak already failed this COPY: the server is out of COPY mode
            if typ != 100:
                self.copy_in_failed = False
            return
        try:
            if typ == 100:  # d
                data = copy.feed(buf[pos + 5 : end])
                if data:
                    out.append(frame(b"d", data))
                return
            if typ == 99:  # c
                tail = copy.finish()
                if tail:
                    out.append(frame(b"d", tail))
            self.copy_in = None
            out.append(buf[pos:end])
        except ValueError_ as exc:
            # Fail the COPY upstream (no client data in the message) and answer with
            # pgcloak's error in place of the server's.
            self.copy_in = None
            self.copy_in_failed = typ == 100
            head = next((u for u in self.units if u.copy is not None), None)
            if head is not None:
                head.refusal = CloakError(exc.sqlstate, exc.message)
            out.append(frame(b"f", b"pgcloak rejected a COPY value\0"))

    def _plan(self, sql: str) -> tuple[Plan, ...]:
        plans = self.ctx.rewriter.plan(sql, self.catalog(), self.search_path)
        if self.ctx.dev and log.isEnabledFor(logging.DEBUG):
            for plan in plans:
                if plan.cloaked:
                    log.debug(  # allow: log-leak — dev mode only, by the operator's choice
                        "rewrote %r -> %r", plan.source, plan.sql
                    )
        return plans

    def _writes(self, plan: Plan) -> str:
        """Apply a DDL plan's changes to this transaction's registry; the DO block to send."""
        if self.private is None:
            loaded = self.entry.loaded
            assert loaded is not None
            self.private = (OverlayCatalog(loaded.catalog), loaded.registry.copy())
            self.private_keys = self.keyring().copy()
        catalog, registry = self.private
        writes: list[Write] = []
        before = {obj.id for obj in registry}
        try:
            for change in plan.changes:
                writes.extend(writes_for(registry, change))
            assert self.private_keys is not None
            writes.extend(self.private_keys.writes_for_new_columns(registry, before))
        except NameConflict as exc:
            raise CloakError("42P07", f'relation "{exc.name}" already exists') from None
        except RegistryError:
            raise CloakError("XX000", "pgcloak could not record this change") from None
        catalog.apply_all(plan.changes)
        self._private_unmasker = None
        return _do_block(writes)

    def _track(self, plan: Plan) -> None:
        kind = plan.statement
        if (
            kind == "TransactionStmt"
            and self.private is not None
            and _ROLLBACK_TO.search(plan.source)
        ):
            self.private_reload = True  # the registry rows rolled back with it
        creates = kind in _CREATES or (kind == "SelectStmt" and _INTO.search(plan.source))
        if creates and not plan.cloaked:
            made = created_relation(plan.source)
            if made is not None and made[2]:
                self.temp = self.temp | {made[1]}
            elif made is not None:
                self.entry.stale = True  # other sessions learn of the new uncloaked relation
        if kind in {"VariableSetStmt", "DiscardStmt"}:
            if _SET_PATH.search(plan.source):
                self.path_dirty = self.set_in_txn = True
            if kind == "DiscardStmt":
                self.listen_dirty = True
                self.sql_prepared.clear()
                self.temp = frozenset()
        elif kind == "UnlistenStmt":
            self.listen_dirty = True

    def _refuse(self, err: CloakError, out: list[bytes], name: bytes | None = None) -> None:
        boundary = name is None or self._parse_at_boundary
        if (
            err.sqlstate == "42P01"
            and boundary
            and not self._retrying
            and self.private is None
            and self.txn_status != b"E"
        ):
            raise _Retry
        self.metrics.proxy_errors += 1
        if name is None:
            unit = Unit(U_STEP)
            unit.refusal = err
            self._push(unit)
            self._push(Unit(U_QEND))
            out.append(frame(b"Q", REFUSED_SQL.encode() + b"\0"))
        else:
            unit = Unit(U_PARSE, simple=False)
            unit.refusal = err
            self._push(unit)
            self.stmts.pop(name, None)
            out.append(frame(b"P", name + b"\0" + REFUSED_SQL.encode() + b"\0\0\0"))

    def _query(self, raw: bytes, out: list[bytes]) -> None:
        shape = numbers_shape_bytes(raw)
        if shape is not None and self._fast_query(raw, shape, out):
            return
        self._slow_query(raw, out)
        if shape is not None:
            self._remember_fast(raw, shape[0])

    def _fast_key(self, key: bytes) -> tuple[object, ...]:
        catalog = self.catalog()
        return (key, id(catalog), catalog.version, self.search_path)

    def _fast_query(
        self, raw: bytes, shape: tuple[bytes, list[tuple[int, int]]], out: list[bytes]
    ) -> bool:
        """A statement seen before with other numbers: splice them into its rewritten bytes."""
        entry = self.ctx.fast.get(self._fast_key(shape[0]))
        if entry is None:
            return False
        pieces, template = entry
        spans = shape[1]
        if len(spans) + 1 != len(pieces):
            return False
        parts = [pieces[0]]
        for k, (start, end) in enumerate(spans):
            parts.append(raw[start:end])
            parts.append(pieces[k + 1])
        plan = template.plan
        unit = Unit(U_STEP, plan=plan)
        unit.template = template
        unit.source = raw
        unit.values = plan.maps_values
        unit.enc = plan.output_columns
        if plan.cloaked:
            unit.output = plan.output_names
            unit.explain = plan.statement == "ExplainStmt"
        self._push(unit)
        self._push(Unit(U_QEND))
        parts.append(b"\0")
        out.append(frame(b"Q", b"".join(parts)))
        return True

    def _remember_fast(self, raw: bytes, key: bytes) -> None:
        """After a slow plan: keep the rewriter's template for this shape as bytes."""
        template = self.ctx.rewriter.template_for(key.decode(), self.catalog(), self.search_path)
        if template is None or template.slots:
            return
        plan = template.plan
        if (
            plan.changes
            or plan.sql is None
            or plan.value_slots
            or _sql_prepared(plan)
            or plan.statement in _SESSION_STATE
            or _INTO.search(plan.source)
        ):
            return
        if len(self.ctx.fast) >= 4096:
            self.ctx.fast.clear()
        self.ctx.fast[self._fast_key(key)] = ([p.encode() for p in template.pieces], template)

    def _slow_query(self, raw: bytes, out: list[bytes]) -> None:
        try:
            sql = raw.decode("utf-8")
            plans = self._plan(sql)
            texts: list[str] = []
            units: list[Unit] = []
            length = 0
            for plan in plans:
                if texts:
                    texts.append(";\n")
                    length += 2
                self._track(plan)
                if plan.sql is None:  # registry-only (RENAME, COMMENT)
                    unit = Unit(U_STEP, plan=plan)
                    unit.tag = plan.command_tag
                    unit.write = True
                    text = self._writes(plan)
                else:
                    unit = Unit(U_STEP, plan=plan, offset=length)
                    unit.values = plan.maps_values
                    unit.copy = self._copy_plan(plan)
                    text = self._values_in(plan)
                    unit.enc = plan.output_columns
                    if plan.cloaked or _sql_prepared(plan):
                        unit.output, unit.enc = self._output_enc(plan)
                        unit.explain = plan.cloaked and plan.statement == "ExplainStmt"
                units.append(unit)
                texts.append(text)
                length += len(text)
                if plan.changes and plan.sql is not None:
                    unit.hold = True
                    do = self._writes(plan)
                    texts.append(";\n")
                    texts.append(do)
                    length += 2 + len(do)
                    w = Unit(U_STEP, hidden=True)
                    w.write = True
                    units.append(w)
        except UnicodeDecodeError:
            self._refuse(CloakError("22021", _BAD_UTF8), out)
            return
        except CloakError as err:
            self._refuse(err, out)
            return
        except ValueError_ as exc:
            self._refuse(CloakError(exc.sqlstate, exc.message), out)
            return
        if not units:
            units.append(Unit(U_STEP))  # empty query: EmptyQueryResponse
        for unit in units:
            self._push(unit)
        self._push(Unit(U_QEND))
        text = "".join(texts)
        out.append(frame(b"Q", (raw if text == sql else text.encode()) + b"\0"))

    def _copy_plan(self, plan: Plan) -> tuple[tuple[EncColumn | None, ...], CopyOptions] | None:
        """For COPY of encrypted columns: which data positions to transform, and how."""
        cols = plan.copy_columns
        if cols is None or not any(cols):
            return None
        try:
            return cols, copy_options(plan.source)
        except CopyValueError as exc:
            raise CloakError(exc.sqlstate, exc.message) from None

    def _sealer(self) -> Sealer:
        """Encrypts this statement's values; remembers them for error DETAIL lines."""
        self.sealed = {}
        return Sealer(self.keyring(), self.fmt, self.unmasker().names, self.sealed)

    def _values_in(self, plan: Plan) -> str:
        """The plan's SQL with literals of encrypted columns encrypted (ValueError_ if bad)."""
        assert plan.sql is not None
        if not plan.value_slots:
            return plan.sql
        return self._sealer().literals(plan.sql, plan.value_slots)

    def _output_enc(
        self, plan: Plan
    ) -> tuple[tuple[str, ...] | None, tuple[EncColumn | None, ...] | None]:
        """Output names and encrypted outputs; EXECUTE takes those its PREPARE remembered."""
        if plan.execute is not None:
            return self.sql_prepared.get(plan.execute, (None, None))
        if plan.prepare is not None:
            self.sql_prepared[plan.prepare] = (plan.output_names, plan.output_columns)
            return None, None
        deallocate = plan.deallocate
        if deallocate is not None:
            if deallocate == "*":
                self.sql_prepared.clear()
            else:
                self.sql_prepared.pop(deallocate, None)
        return plan.output_names, plan.output_columns

    def _parse(self, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        # The same Parse again (drivers re-parse the unnamed statement per query):
        # reuse the earlier outcome while the catalog and search_path are unchanged.
        message = buf[pos:end]
        catalog = self.catalog()
        key = (message, id(catalog), catalog.version, self.search_path)
        hit = self._parse_cache.get(key)
        if hit is not None:
            name, prepared, sent = hit
            self.stmts[name] = prepared
            self._push(Unit(U_PARSE, plan=prepared.plan, simple=False))
            out.append(sent)
            return
        name, raw = two_cstrs(buf, pos + 5, end)
        rest = buf[pos + 5 + len(name) + len(raw) + 2 : end]
        try:
            sql = raw.decode("utf-8")
            plans = self._plan(sql)
            if len(plans) > 1:
                raise CloakError(
                    "42601", "cannot insert multiple commands into a prepared statement"
                )
            prepared = Prepared(plans[0] if plans else None)
            text = sql
            if plans:
                plan = plans[0]
                self._track(plan)
                if plan.sql is None:
                    prepared.tag = plan.command_tag
                    text = self._writes(plan)
                else:
                    text = self._values_in(plan)
                    prepared.copy = self._copy_plan(plan)
                    prepared.values = plan.maps_values
                    prepared.enc = plan.output_columns
                    if plan.param_slots:
                        prepared.params = dict(plan.param_slots)
                        rest, prepared.param_oids = parse_param_types(rest, prepared.params)
                    if plan.cloaked or _sql_prepared(plan):
                        prepared.output, prepared.enc = self._output_enc(plan)
                        prepared.explain = plan.cloaked and plan.statement == "ExplainStmt"
                    if plan.changes:
                        prepared.writes = self._writes(plan)
        except UnicodeDecodeError:
            self._refuse(CloakError("22021", _BAD_UTF8), out, name)
            return
        except CloakError as err:
            self._refuse(err, out, name)
            return
        except ValueError_ as exc:
            self._refuse(CloakError(exc.sqlstate, exc.message), out, name)
            return
        self.stmts[name] = prepared
        self._push(Unit(U_PARSE, plan=prepared.plan, simple=False))
        sent = message if text == sql else frame(b"P", name + b"\0" + text.encode() + b"\0" + rest)
        out.append(sent)
        plan0 = prepared.plan
        if (
            plan0 is not None
            and not plan0.changes
            and not plan0.value_slots  # ciphertexts depend on TimeZone/DateStyle: fresh each time
            and plan0.sql is not None
            and not (_sql_prepared(plan0) or plan0.statement in _SESSION_STATE)
        ):
            if len(self._parse_cache) >= 256:
                self._parse_cache.clear()
            self._parse_cache[key] = (name, prepared, sent)

    def _execute(self, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        portal = one_cstr(buf, pos + 5, end)
        prepared = self.portals.get(portal)
        unit = Unit(U_EXECUTE, simple=False)
        out.append(buf[pos:end])
        if prepared is None:
            self._push(unit)
            return
        unit.plan = prepared.plan
        unit.output = prepared.output
        unit.explain = prepared.explain
        unit.values = prepared.values
        unit.enc = prepared.enc
        unit.formats = prepared.formats
        unit.copy = prepared.copy
        unit.tag = prepared.tag
        unit.write = prepared.tag is not None
        self._push(unit)
        if prepared.writes is None:
            return
        do = prepared.writes
        prepared.writes = None  # the DDL runs once; its registry rows once
        unit.hold = True
        w = WRITE_NAME.encode()
        out.append(frame(b"P", w + b"\0" + do.encode() + b"\0\0\0"))
        out.append(frame(b"B", w + b"\0" + w + b"\0\0\0\0\0\0\0"))
        out.append(frame(b"E", w + b"\0\0\0\0\0"))
        out.append(frame(b"C", b"S" + w + b"\0"))
        out.append(frame(b"C", b"P" + w + b"\0"))
        for kind in (U_PARSE, U_BIND, U_EXECUTE, U_CLOSE, U_CLOSE):
            u = Unit(kind, simple=False, hidden=True)
            u.write = kind == U_EXECUTE
            self._push(u)

    # ------------------------------------------------------------------ server side
    # Relay handlers: (buffer, start, end) -> replacement bytes, b"" to drop, None to pass.

    def _s_done(self, buf: bytes, start: int, end: int) -> bytes | None:
        """ParseComplete, BindComplete, CloseComplete, FunctionCallResponse."""
        unit = self._pop()
        if unit is None:
            return None
        if unit.kind != _ENDS.get(buf[start]):
            raise ProtocolError("pgcloak lost track of the upstream's responses")
        return b"" if unit.hidden or self.poisoned else None

    def _s_no_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.kind == U_DESCRIBE:
            self._pop()
            return b"" if head.hidden or self.poisoned else None
        return b"" if head is not None and (head.hidden or self.poisoned) else None

    def _s_suspended(self, buf: bytes, start: int, end: int) -> bytes | None:
        unit = self._pop()
        return b"" if unit is not None and (unit.hidden or self.poisoned) else None

    def _s_param_desc(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.hidden or self.poisoned:
            return b""
        if head.params:
            return describe_params(buf[start + 5 : end], head.params)
        return None

    def _s_row_desc(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.kind == U_DESCRIBE:
            self._pop()
        if head.hidden or self.poisoned:
            return b""
        if head.output is None and (head.plan is None or not head.plan.cloaked):
            return None
        body = buf[start + 5 : end]
        # Cached per registry generation; a DDL transaction's private names are not shared.
        key = (body, head.output, head.enc, self.database, self.entry.generation)
        cached = self.ctx.rowdesc.get(key) if self.private is None else None
        if cached is None:
            renamed = rename_fields(body, head.output, self.unmasker().names)
            cached = (renamed, None) if head.enc is None else describe_row(renamed[5:], head.enc)
            if self.private is None:
                if len(self.ctx.rowdesc) >= 4096:
                    self.ctx.rowdesc.clear()
                self.ctx.rowdesc[key] = cached
        typed, formats = cached
        if formats is not None and (head.kind != U_DESCRIBE or head.formats is None):
            head.formats = list(formats)
        return typed

    def _s_data_row(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.results is not None:
            head.results[-1].append(_text_row(buf, start + 5, end))
            return b""
        if head.hidden or self.poisoned:
            return b""
        if head.enc is not None:
            try:
                return decrypt_row(
                    buf[start + 5 : end], head.enc, head.formats or (), self.keyring(), self.fmt
                )
            except ValueError_ as exc:
                # PostgreSQL's own behaviour for an error mid-result: the ErrorResponse,
                # then nothing more for this query but ReadyForQuery.
                self.poisoned = True
                self._head_changed()
                return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()
        if head.explain:
            return self.unmasker().explain_row(buf[start + 5 : end])
        if head.values:
            return self.unmasker().values_row(buf[start + 5 : end])
        return None

    def _s_complete(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.kind == U_INTERNAL:
            assert head.results is not None
            head.results.append([])
            return b""
        self._pop()
        if self.poisoned:
            return b""
        if head.hold:
            nxt = next((u for u in self.units if u.write), None)
            if nxt is not None:
                nxt.emit = bytes(buf[start:end])
                return b""
        if head.hidden:
            return head.emit if head.emit is not None else b""
        if head.tag is not None:
            return CommandComplete(head.tag).encode()
        return None

    def _s_error(self, buf: bytes, start: int, end: int) -> bytes | None:
        self.metrics.server_errors += 1
        fields = decode_fields(buf[start + 5 : end])
        if fields.get("S") in ("FATAL", "PANIC") or fields.get("V") in ("FATAL", "PANIC"):
            self.server_sent_fatal = True
        head = self.units[0] if self.units else None
        if head is None:
            return encode_fields(b"E", self.unmasker().fields(fields))
        if self.poisoned and head.kind != U_INTERNAL:
            return b""  # the client already has an error for this query
        if head.kind == U_INTERNAL:
            assert head.results is not None
            head.results.append([])
            head.emit = buf[start:end]  # remembered: the internal query failed
            return b""
        replacement: bytes
        if head.refusal is not None and fields.get("C") != "25P02":
            replacement = error_from_cloak(head.refusal)
        elif head.write and fields.get("C") != "25P02":
            replacement = _registry_error(fields)
        else:
            pos = fields.get("P")
            mapped: int | None = None
            plan = head.plan
            if head.template is not None:
                sql = head.source.decode()
                shape = shape_of(sql)
                if shape is not None:
                    plan = head.template.instantiate(sql, shape)
            if pos is not None and pos.isdigit() and plan is not None:
                mapped = plan.original_position(int(pos) - head.offset)
            mapped_fields = self.unmasker().fields(fields, mapped)
            detail = mapped_fields.get("D")
            if detail is not None and "\\x" in detail:
                mapped_fields["D"] = reveal_truncated(
                    self._reveal(detail, fields.get("t")), self.sealed
                )
            replacement = encode_fields(b"E", mapped_fields)
        # The backend skips to the end of the Query (simple) or to Sync (extended).
        stop = U_QEND if head.simple else U_SYNC
        while self.units and self.units[0].kind not in (stop, U_INTERNAL):
            self.units.popleft()
        self._head_changed()
        return replacement

    def _reveal(self, detail: str, table: str | None) -> str:
        rel = self.catalog().relation_by_physical(table) if table else None
        if rel is None:
            return detail
        cols = [EncColumn.of(c.policy, rel.physical, c.physical) for c in rel.columns if c.policy]
        if not cols:
            return detail
        return reveal_detail(detail, cols, self.keyring(), self.fmt)

    def _s_notice(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.hidden:
            return b""
        fields = decode_fields(buf[start + 5 : end])
        unmasker = self.unmasker()
        plan = head.plan if head is not None else None
        if plan is not None and plan.notice_names:
            # IF EXISTS on a missing object sent a dummy name: say the client's name.
            unmasker = Unmasker({**unmasker.names, **dict(plan.notice_names)}, unmasker.catalog)
        return encode_fields(b"N", unmasker.fields(fields))

    def _s_parameter_status(self, buf: bytes, start: int, end: int) -> bytes | None:
        """Follow the settings that change how encrypted values are read and printed."""
        name, value = two_cstrs(buf, start + 5, end)
        if name in _FORMAT_GUCS:
            text = value.decode("utf-8", "replace")
            fmt = self.fmt
            if name == b"DateStyle":
                fmt = dataclasses.replace(fmt, datestyle=text)
            elif name == b"IntervalStyle":
                fmt = dataclasses.replace(fmt, intervalstyle=text)
            elif name == b"TimeZone":
                fmt = dataclasses.replace(fmt, timezone=text)
            else:
                fmt = dataclasses.replace(fmt, standard_conforming_strings=text == "on")
            self.fmt = fmt
        return None

    def _s_copy_in(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.copy is not None:
            cols, opts = head.copy
            self.copy_in = CopyTransformer(
                cols, opts, direction="in", ring=self.keyring(), fmt=self.fmt
            )
        return None

    def _s_copy_out(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.copy is not None and self.rows_table is not None:
            cols, opts = head.copy
            self.copy_out = CopyTransformer(
                cols, opts, direction="out", ring=self.keyring(), fmt=self.fmt
            )
            self.rows_table[ord("d")] = self._s_copy_data
            self.rows_table[ord("c")] = self._s_copy_done
        return None

    def _end_copy_out(self) -> None:
        self.copy_out = None
        if self.rows_table is not None:
            self.rows_table[ord("d")] = None
            self.rows_table[ord("c")] = None

    def _s_copy_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        copy = self.copy_out
        if copy is None or self.poisoned:
            return b"" if self.poisoned else None
        try:
            data = copy.feed(buf[start + 5 : end])
        except ValueError_ as exc:
            self._end_copy_out()
            self.poisoned = True
            self._head_changed()
            return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()
        return frame(b"d", data) if data else b""

    def _s_copy_done(self, buf: bytes, start: int, end: int) -> bytes | None:
        copy = self.copy_out
        self._end_copy_out()
        if copy is None or self.poisoned:
            return b"" if self.poisoned else None
        try:
            tail = copy.finish()
        except ValueError_ as exc:
            self.poisoned = True
            self._head_changed()
            return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()
        return (frame(b"d", tail) if tail else b"") + buf[start:end]

    def _s_notification(self, buf: bytes, start: int, end: int) -> bytes | None:
        i = buf.index(b"\0", start + 9, end)
        if buf[start + 9 : i] != CHANNEL.encode():
            return None
        payload = buf[i + 1 : buf.index(b"\0", i + 1, end)]
        self.entry.notified(int(payload) if payload.isdigit() else None)
        return b""

    def _s_ready(self, buf: bytes, start: int, end: int) -> bytes | None:
        status = buf[start + 5 : start + 6]
        self.txn_status = status
        if self.copy_out is not None:
            self._end_copy_out()
        self.copy_in = None
        unit = self._pop()
        if self.poisoned and unit is not None and unit.kind in (U_QEND, U_SYNC):
            self.poisoned = False
            self._head_changed()
            if status == b"T":
                # The server finished the statement pgcloak failed (a value did not
                # decrypt): fail its transaction too, as a server-side error would.
                self._internal([REFUSED_SQL], lambda res, err: self._release(frame(b"Z", b"E")))
                return b""
        if status == b"I":
            if self.private is not None:
                self.private = None
                self.private_keys = None
                self.entry.stale = True  # re-read exactly what committed (or not)
                self.ctx.committed(self.database)
            if self.set_in_txn:
                self.set_in_txn = False
                self.path_dirty = True
        if unit is None:
            return None
        if unit.kind == U_INTERNAL:
            assert unit.results is not None and unit.on_done is not None
            results = unit.results[:-1] if not unit.results[-1] else unit.results
            err = decode_fields(unit.emit[5:]) if unit.emit is not None else None
            emitted = unit.on_done(results, err)
            return emitted if emitted is not None else b""
        if unit.kind not in (U_QEND, U_SYNC):
            raise ProtocolError("pgcloak lost track of the upstream's responses")
        return None


def map_bind_names(
    buf: bytes, pos: int, end: int, physical: Callable[[str], str | None]
) -> bytes | None:
    """A Bind for a system-catalog query with text parameters naming cloaked relations
    replaced by their physical names (``relname = $1``); None when nothing changed."""
    i = buf.index(b"\0", pos + 5, end)
    j = buf.index(b"\0", i + 1, end)
    p = j + 1
    nfmt = int.from_bytes(buf[p : p + 2], "big")
    formats = [int.from_bytes(buf[p + 2 + 2 * k : p + 4 + 2 * k], "big") for k in range(nfmt)]
    p += 2 + 2 * nfmt
    nparams = int.from_bytes(buf[p : p + 2], "big")
    p += 2
    head = buf[pos + 5 : p]
    params: list[bytes] = []
    changed = False
    for k in range(nparams):
        ln = int.from_bytes(buf[p : p + 4], "big", signed=True)
        p += 4
        if ln < 0:
            params.append(b"\xff\xff\xff\xff")
            continue
        value = buf[p : p + ln]
        p += ln
        fmt = formats[0] if nfmt == 1 else (formats[k] if nfmt > k else 0)
        new = None
        if fmt == 0 and 0 < ln <= 130:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                text = ""
            anchored = _ANCHORED.fullmatch(text)
            found = physical(anchored.group(1) if anchored else text) if text else None
            if found is not None:
                new = (f"^({found})$" if anchored else found).encode()
        if new is None:
            params.append(ln.to_bytes(4, "big") + value)
        else:
            changed = True
            params.append(len(new).to_bytes(4, "big") + new)
    if not changed:
        return None
    return frame(b"B", head + b"".join(params) + buf[p:end])


def _sql_prepared(plan: Plan) -> bool:
    """PREPARE/EXECUTE/DEALLOCATE: their output names come from the session's map."""
    return plan.prepare is not None or plan.execute is not None or plan.deallocate is not None


def result_formats(buf: bytes, pos: int, end: int, columns: int) -> list[int]:
    """The result-column format codes a Bind asks for, one per column."""
    i = buf.index(b"\0", pos + 5, end)
    p = buf.index(b"\0", i + 1, end) + 1
    nfmt = int.from_bytes(buf[p : p + 2], "big")
    p += 2 + 2 * nfmt
    nparams = int.from_bytes(buf[p : p + 2], "big")
    p += 2
    for _ in range(nparams):
        ln = int.from_bytes(buf[p : p + 4], "big", signed=True)
        p += 4 + max(ln, 0)
    nres = int.from_bytes(buf[p : p + 2], "big")
    codes = [int.from_bytes(buf[p + 2 + 2 * k : p + 4 + 2 * k], "big") for k in range(nres)]
    if nres == 0:
        return [0] * columns
    if nres == 1:
        return codes * columns
    return codes


def _text_row(buf: bytes, start: int, end: int) -> list[str | None]:
    count = int.from_bytes(buf[start : start + 2], "big")
    pos = start + 2
    row: list[str | None] = []
    for _ in range(count):
        ln = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(buf[pos : pos + ln].decode("utf-8", "surrogateescape"))
            pos += ln
    return row


def _registry_error(fields: dict[str, str]) -> bytes:
    """A registry write failed: report it without the registry's internals."""
    if fields.get("C") == "23505":
        return ErrorResponse.make(
            "ERROR",
            "42P07",
            "an object of this name was created concurrently through another pgcloak session",
        ).encode()
    return ErrorResponse.make(
        "ERROR",
        fields.get("C", "XX000"),
        "pgcloak could not record this change in its registry",
    ).encode()
