"""Per-connection protocol state, kept without any I/O.

The server feeds every framed message of an established session through
`Session.client_handlers` / `Session.server_handlers` (keyed by the type byte
as an int). The handlers keep the state that name cloaking and encryption need
later: transaction status, prepared statements, portals and the in-flight
queue that says which request each response belongs to. Handlers return None
to let the raw bytes pass unchanged, which is the hot path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

from pgcloak.proxy.stats import Metrics
from pgcloak.proxy.wire import ProtocolError, one_cstr, two_cstrs

# Kinds of in-flight requests; small ints keep the queue cheap.
K_QUERY: Final = 0
K_PARSE: Final = 1
K_BIND: Final = 2
K_DESCRIBE_STMT: Final = 3
K_DESCRIBE_PORTAL: Final = 4
K_EXECUTE: Final = 5
K_CLOSE_STMT: Final = 6
K_CLOSE_PORTAL: Final = 7
K_SYNC: Final = 8
K_FUNCTION: Final = 9

KIND_NAMES: Final = (
    "Query",
    "Parse",
    "Bind",
    "Describe statement",
    "Describe portal",
    "Execute",
    "Close statement",
    "Close portal",
    "Sync",
    "FunctionCall",
)

# A request that waits for a response: (kind, name, detail, start time).
Pending = tuple[int, bytes, bytes, float]

# A handler sees the buffer and the message bounds (header included).
Handler = Callable[[bytes, int, int], bytes | None]

_S = ord("S")
_P = ord("P")
_I = ord("I")
_STATUS = {ord(c): c.encode() for c in "ITE"}
# Whole severity fields (a field starts after a NUL); V also covers localized S.
_FATAL_MARKERS = (b"\0SFATAL\0", b"\0SPANIC\0", b"\0VFATAL\0", b"\0VPANIC\0")
_perf = time.perf_counter


class Session:
    """State of one client<->upstream session after startup completed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.txn_status = b"I"
        self.statements: dict[bytes, bytes] = {}  # prepared statement name -> query
        self.portals: dict[bytes, bytes] = {}  # portal name -> statement name
        self.inflight: deque[Pending] = deque()
        self.discard_until_sync = False  # backend skips messages after an error
        self.copy_mode: bytes | None = None  # b"G" copy-in, b"H" copy-out, b"W" both
        self.server_params: dict[str, str] = {}
        self.server_sent_fatal = False
        self.client_terminated = False  # the upstream will close; that is no failure
        self.desyncs = 0  # responses that matched no request (should stay 0)
        self.client_handlers: dict[int, Handler | None] = {
            ord("Q"): self._c_query,
            ord("P"): self._c_parse,
            ord("B"): self._c_bind,
            ord("D"): self._c_describe,
            ord("E"): self._c_execute,
            ord("C"): self._c_close,
            ord("S"): self._c_sync,
            ord("F"): self._c_function,
            ord("H"): None,
            ord("d"): None,
            ord("c"): self._c_copy_end,
            ord("f"): self._c_copy_end,
            ord("X"): self._c_terminate,
        }
        self.server_handlers: dict[int, Handler | None] = {
            ord("1"): self._s_parse_complete,
            ord("2"): self._s_bind_complete,
            ord("3"): self._s_close_complete,
            ord("t"): None,
            ord("T"): self._s_row_description,
            ord("n"): self._s_no_data,
            ord("D"): None,
            ord("C"): self._s_command_complete,
            ord("I"): self._s_command_complete,
            ord("s"): self._s_portal_suspended,
            ord("E"): self._s_error,
            ord("N"): None,
            ord("A"): None,
            ord("S"): self._s_parameter_status,
            ord("Z"): self._s_ready,
            ord("V"): None,
            ord("G"): self._s_copy_start,
            ord("H"): self._s_copy_start,
            ord("W"): self._s_copy_start,
            ord("d"): None,
            ord("c"): None,
            ord("K"): None,
            ord("v"): None,
        }

    # ------------------------------------------------------------------ dispatch
    # The relay calls these two directly: compiled, that is a native call per
    # message with no boxing, where the handler tables cost a Python-level call.

    def on_client(self, typ: int, buf: bytes, start: int, end: int) -> bytes | None:
        if typ == 80:  # P
            self._c_parse(buf, start, end)
        elif typ == 66:  # B
            self._c_bind(buf, start, end)
        elif typ == 69:  # E
            self._c_execute(buf, start, end)
        elif typ == 83:  # S
            self._c_sync(buf, start, end)
        elif typ == 68:  # D
            self._c_describe(buf, start, end)
        elif typ == 81:  # Q
            self._c_query(buf, start, end)
        elif typ == 67:  # C
            self._c_close(buf, start, end)
        elif typ == 70:  # F
            self._c_function(buf, start, end)
        elif typ in (99, 102):  # c f
            self._c_copy_end(buf, start, end)
        elif typ == 88:  # X
            self._c_terminate(buf, start, end)
        return None

    def on_server(self, typ: int, buf: bytes, start: int, end: int) -> bytes | None:
        if typ == 68:  # D: the common case, nothing to track
            return None
        if typ == 49:  # 1
            self._s_parse_complete(buf, start, end)
        elif typ == 50:  # 2
            self._s_bind_complete(buf, start, end)
        elif typ == 84:  # T
            self._s_row_description(buf, start, end)
        elif typ in (67, 73):  # C I
            self._s_command_complete(buf, start, end)
        elif typ == 90:  # Z
            self._s_ready(buf, start, end)
        elif typ == 110:  # n
            self._s_no_data(buf, start, end)
        elif typ == 51:  # 3
            self._s_close_complete(buf, start, end)
        elif typ == 115:  # s
            self._s_portal_suspended(buf, start, end)
        elif typ == 69:  # E
            self._s_error(buf, start, end)
        elif typ == 83:  # S
            self._s_parameter_status(buf, start, end)
        elif typ in (71, 72, 87):  # G H W
            self._s_copy_start(buf, start, end)
        return None

    # ------------------------------------------------------------------ helpers

    def _pop(self) -> Pending | None:
        try:
            return self.inflight.popleft()
        except IndexError:
            self.desyncs += 1
            return None

    @property
    def idle(self) -> bool:
        """True when nothing is in flight and no transaction is open."""
        return not self.inflight and self.txn_status == b"I" and self.copy_mode is None

    # ------------------------------------------------------------------ client side
    # These run for every message on the hot path, so they are written flat:
    # no helper calls, names parsed with bytes.find on the received buffer.

    def _c_query(self, buf: bytes, start: int, end: int) -> None:
        self.metrics.queries += 1
        if not self.discard_until_sync:
            self.inflight.append((K_QUERY, b"", b"", _perf()))

    def _c_parse(self, buf: bytes, start: int, end: int) -> None:
        if self.discard_until_sync:
            return
        i = buf.find(b"\0", start + 5, end)
        j = buf.find(b"\0", i + 1, end)
        if i < 0 or j < 0:
            raise ProtocolError("unterminated string in Parse message")
        self.inflight.append((K_PARSE, buf[start + 5 : i], buf[i + 1 : j], 0.0))

    def _c_bind(self, buf: bytes, start: int, end: int) -> None:
        if self.discard_until_sync:
            return
        i = buf.find(b"\0", start + 5, end)
        j = buf.find(b"\0", i + 1, end)
        if i < 0 or j < 0:
            raise ProtocolError("unterminated string in Bind message")
        self.inflight.append((K_BIND, buf[start + 5 : i], buf[i + 1 : j], 0.0))

    def _c_describe(self, buf: bytes, start: int, end: int) -> None:
        kind = buf[start + 5] if end > start + 5 else 0
        if kind not in (_S, _P):
            raise ProtocolError(f"invalid DESCRIBE message subtype {kind}")
        if not self.discard_until_sync:
            i = buf.find(b"\0", start + 6, end)
            if i < 0:
                raise ProtocolError("unterminated string in Describe message")
            kind_ = K_DESCRIBE_STMT if kind == _S else K_DESCRIBE_PORTAL
            self.inflight.append((kind_, buf[start + 6 : i], b"", 0.0))

    def _c_execute(self, buf: bytes, start: int, end: int) -> None:
        self.metrics.queries += 1
        if not self.discard_until_sync:
            i = buf.find(b"\0", start + 5, end)
            if i < 0:
                raise ProtocolError("unterminated string in Execute message")
            self.inflight.append((K_EXECUTE, buf[start + 5 : i], b"", 0.0))

    def _c_close(self, buf: bytes, start: int, end: int) -> None:
        kind = buf[start + 5] if end > start + 5 else 0
        if kind not in (_S, _P):
            raise ProtocolError(f"invalid CLOSE message subtype {kind}")
        if not self.discard_until_sync:
            name = one_cstr(buf, start + 6, end)
            self.inflight.append((K_CLOSE_STMT if kind == _S else K_CLOSE_PORTAL, name, b"", 0.0))

    def _c_sync(self, buf: bytes, start: int, end: int) -> None:
        if self.copy_mode in (b"G", b"W"):
            return  # the backend ignores Sync while it is in COPY IN
        self.discard_until_sync = False
        self.inflight.append((K_SYNC, b"", b"", _perf()))

    def _c_function(self, buf: bytes, start: int, end: int) -> None:
        if not self.discard_until_sync:
            self.inflight.append((K_FUNCTION, b"", b"", _perf()))

    def _c_terminate(self, buf: bytes, start: int, end: int) -> None:
        self.client_terminated = True

    def _c_copy_end(self, buf: bytes, start: int, end: int) -> None:
        if self.copy_mode == b"G":
            self.copy_mode = None

    # ------------------------------------------------------------------ server side

    def _s_parse_complete(self, buf: bytes, start: int, end: int) -> None:
        q = self.inflight
        if q and q[0][0] == K_PARSE:
            p = q.popleft()
            self.statements[p[1]] = p[2]
        else:
            self._pop()
            self.desyncs += 1

    def _s_bind_complete(self, buf: bytes, start: int, end: int) -> None:
        q = self.inflight
        if q and q[0][0] == K_BIND:
            p = q.popleft()
            self.portals[p[1]] = p[2]
        else:
            self._pop()
            self.desyncs += 1

    def _s_close_complete(self, buf: bytes, start: int, end: int) -> None:
        p = self._pop()
        if p is None:
            return
        if p[0] == K_CLOSE_STMT:
            self.statements.pop(p[1], None)
        elif p[0] == K_CLOSE_PORTAL:
            self.portals.pop(p[1], None)
        else:
            self.desyncs += 1

    def _s_row_description(self, buf: bytes, start: int, end: int) -> None:
        # After Describe it answers that request; otherwise it heads a result set
        # of the Query/Execute at the front of the queue, which stays.
        if self.inflight and self.inflight[0][0] in (K_DESCRIBE_STMT, K_DESCRIBE_PORTAL):
            self.inflight.popleft()

    def _s_no_data(self, buf: bytes, start: int, end: int) -> None:
        if self.inflight and self.inflight[0][0] in (K_DESCRIBE_STMT, K_DESCRIBE_PORTAL):
            self.inflight.popleft()
        else:
            self.desyncs += 1

    def _s_command_complete(self, buf: bytes, start: int, end: int) -> None:
        self.copy_mode = None
        if self.inflight and self.inflight[0][0] == K_EXECUTE:
            self.inflight.popleft()

    def _s_portal_suspended(self, buf: bytes, start: int, end: int) -> None:
        if self.inflight and self.inflight[0][0] == K_EXECUTE:
            self.inflight.popleft()
        else:
            self.desyncs += 1

    def _s_error(self, buf: bytes, start: int, end: int) -> None:
        self.metrics.server_errors += 1
        self.copy_mode = None
        body = b"\0" + buf[start + 5 : end]
        if any(m in body for m in _FATAL_MARKERS):
            self.server_sent_fatal = True
        q = self.inflight
        if not q or q[0][0] in (K_QUERY, K_FUNCTION):
            return  # simple protocol: ReadyForQuery follows and pops it
        if q[0][0] == K_PARSE and not q[0][1]:
            # The backend dropped the old unnamed statement before the failed Parse.
            self.statements.pop(b"", None)
        # Extended protocol: the backend now skips everything up to Sync.
        while q and q[0][0] != K_SYNC:
            q.popleft()
        if not q:
            self.discard_until_sync = True

    def _s_parameter_status(self, buf: bytes, start: int, end: int) -> None:
        name, value = two_cstrs(buf, start + 5, end)
        self.server_params[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")

    def _s_ready(self, buf: bytes, start: int, end: int) -> None:
        status = buf[start + 5] if end > start + 5 else 0
        txn = _STATUS.get(status)
        if txn is None:
            raise ProtocolError("invalid transaction status in ReadyForQuery")
        self.txn_status = txn
        self.copy_mode = None
        q = self.inflight
        if q:
            p = q.popleft()
            if p[3]:
                self.metrics.observe_latency(_perf() - p[3])
            if p[0] == K_QUERY:
                # A simple Query drops the unnamed statement and portal.
                self.statements.pop(b"", None)
                self.portals.pop(b"", None)
        else:
            self.desyncs += 1
        if status == _I and self.portals:
            self.portals.clear()  # portals do not outlive their transaction

    def _s_copy_start(self, buf: bytes, start: int, end: int) -> None:
        mode = buf[start : start + 1]
        self.copy_mode = mode
        if mode != b"H":
            # The backend swallows Syncs that arrive while it is in COPY IN (libpq
            # sends one right after Execute), so no ReadyForQuery will answer them.
            q = self.inflight
            while len(q) > 1 and q[1][0] == K_SYNC:
                del q[1]
