"""The base layer of a cloaked session: its state, views of the registry, the Unit FIFO.

`CloakSession` (cloak.py) is one native class built as a chain of layers, one per
module: state -> registry loading -> statement planning -> client messages ->
server responses. The two methods this layer calls but later layers define are
declared abstract here (a vtable call in compiled code, no Python-level lookup).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections import deque
from collections.abc import Callable

from pgcloak.crypto.codecs import DEFAULT_FORMAT, SessionFormat
from pgcloak.proxy.cloak_cache import DatabaseEntry
from pgcloak.proxy.cloak_catalog import TempCatalog, as_catalog
from pgcloak.proxy.cloak_context import CloakContext
from pgcloak.proxy.cloak_copy import CopyTransformer
from pgcloak.proxy.cloak_results import Unmasker
from pgcloak.proxy.cloak_settings import Unreported
from pgcloak.proxy.cloak_units import U_INTERNAL, Prepared, Unit
from pgcloak.proxy.cloak_values import Keyring, ValueError_
from pgcloak.proxy.stats import Metrics
from pgcloak.registry.store import Registry
from pgcloak.rewriter import Catalog, EncColumn, Plan
from pgcloak.rewriter.overlay import OverlayCatalog


class SessionState(metaclass=ABCMeta):
    """What one cloaked session knows; shared by every layer of `CloakSession`."""

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
        self.portal_formats: dict[bytes, tuple[int, ...]] = {}  # Bind's, encrypted results
        # SQL-level PREPARE name -> (output names, encrypted outputs, its plan) for its
        # EXECUTEs (and EXPLAIN EXECUTE)
        self.sql_prepared: dict[
            str, tuple[tuple[str, ...] | None, tuple[EncColumn | None, ...] | None, Plan]
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
        self.client_utf8 = True  # client_encoding UTF8 (or SQL_ASCII): decrypted text as is
        self.unreported = Unreported()  # bytea_output, extra_float_digits (not reported)
        self.poisoned = False  # a value failed to decrypt: drop the rest until ReadyForQuery
        self.copy_in: CopyTransformer | None = None  # client CopyData being encrypted
        self.copy_out: CopyTransformer | None = None  # server CopyData being decrypted
        # COPY TO (HEADER): the line to send in place of the server's (physical) header.
        self.copy_header: bytes | ValueError_ | None = None
        self.copy_in_failed = False  # pgcloak failed a COPY FROM STDIN: drop the client's rest
        self.sealed: dict[str, str] = {}  # ciphertext prefix -> plaintext, latest statement
        self.path_dirty = False
        self.set_in_txn = False
        self.listen_dirty = False
        self.client_terminated = False
        self.server_sent_fatal = False
        self.reads = 0
        self.rows_table: list[Callable[[bytes, int, int], bytes | None] | None] | None = None

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

    # ------------------------------------------------------------------ defined by later layers

    @abstractmethod
    def feed_client(self, data: bytes) -> None:
        """Client bytes (cloak_client.ClientSide)."""

    @abstractmethod
    def _s_data_row(self, buf: bytes, start: int, end: int) -> bytes | None:
        """DataRow relay handler (cloak_server.ServerSide)."""
