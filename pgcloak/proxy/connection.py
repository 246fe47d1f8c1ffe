"""One client session: the client leg, its upstream leg, and their lifecycle.

Startup and authentication go through a buffering slow path that can inspect
every message (TLS negotiation, SASL mechanism filtering, BackendKeyData for
cancel routing); after the first ReadyForQuery both directions switch to
`Relay`, the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgcloak.config import Upstream
from pgcloak.logs import conn_logger
from pgcloak.proxy.cloak import CloakSession
from pgcloak.proxy.codec import (
    MAX_STARTUP_PACKET,
    PROTOCOL_3_0,
    Authentication,
    CancelRequest,
    ErrorResponse,
    Framer,
    GSSENCRequest,
    NegotiateProtocolVersion,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    decode_startup,
    frame,
    read_startup_length,
)
from pgcloak.proxy.relay import Relay
from pgcloak.proxy.session import Session
from pgcloak.proxy.upstream import UpstreamError, open_upstream, send_cancel

if TYPE_CHECKING:
    from pgcloak.proxy.server import Proxy

_ids = itertools.count(1)
TERMINATE = frame(b"X", b"")
MAX_BACKEND_MESSAGE = 0x7FFFFFFF
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"


class State(enum.Enum):
    STARTUP = 1  # reading untyped startup packets (SSLRequest, StartupMessage...)
    TLS = 2  # client TLS handshake in progress
    CONNECTING = 3  # opening the upstream connection
    AUTH = 4  # relaying authentication, inspecting each message
    READY = 5  # hot path
    CLOSED = 6


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ServerConnection(asyncio.Protocol):
    """Upstream leg; forwards to its client's slow path until the relay takes over."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        # Replaced by Relay.feed once the session is ready (see use_relay).
        self.client.server_data_slow(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost()

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


def use_relay(protocol: asyncio.Protocol, transport: asyncio.BaseTransport, relay: Relay) -> None:
    """Make `relay.feed` the protocol's data_received, with no wrapper call.

    uvloop caches the bound data_received when a protocol is set, so the
    transport is told about the protocol again after the swap.
    """
    protocol.data_received = relay.feed  # type: ignore[method-assign]
    transport.set_protocol(protocol)


class ClientConnection(asyncio.Protocol):
    """Client leg and owner of one session."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.metrics = proxy.metrics
        self.id = next(_ids)
        self.log = conn_logger(self.id)
        self.state = State.STARTUP
        self.transport: asyncio.Transport | None = None
        self.server: ServerConnection | None = None
        self.session: Session | CloakSession | None = None
        self.relay: Relay | None = None
        self.cloak: CloakSession | None = None
        self.database = ""
        self.peer: Any = None
        self.tls = False
        self.gss_done = False
        self.key: tuple[int, int] | None = None
        self.upstream: Upstream = proxy.config.upstream  # where this session's backend lives
        self._startup = bytearray()
        self._client_framer: Framer | None = None
        self._server_framer: Framer | None = None
        self._sasl_pending = False
        self._server_failed = False  # upstream already sent its own FATAL
        self._timer: asyncio.TimerHandle | None = None
        self._rx_mark = -1
        self._paused = False
        self._cancel = False  # this connection only carried a CancelRequest
        self._early: list[bytes] = []  # client messages that arrived during authentication
        # the server's ParameterStatus during startup (DateStyle, TimeZone, client_encoding...)
        self._startup_status: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        _nodelay(transport)
        self.metrics.connections_total += 1
        self.metrics.connections_active += 1
        self.proxy.clients.add(self)
        self._arm(self.proxy.config.startup_timeout, self._startup_expired)
        self.log.debug("client connected from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # already torn down
            return
        self._teardown()

    def _teardown(self) -> None:
        if self.state is State.CLOSED:
            return
        was_ready = self.state is State.READY
        self.state = State.CLOSED
        self.metrics.connections_active -= 1
        if not was_ready and not self._cancel:
            self.metrics.connections_rejected += 1
        self.proxy.clients.discard(self)
        if self.key is not None:
            self.proxy.cancel_keys.pop(self.key, None)
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        st = self.server.transport if self.server is not None else None
        if st is not None and not st.is_closing():
            if was_ready:
                st.write(TERMINATE)  # lets the backend exit without an EOF complaint
            st.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.log.debug("client disconnected")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def fatal(self, sqlstate: str, message: str, **extra: str) -> None:
        """Send a FATAL ErrorResponse (if the framing allows) and close."""
        if self.state is State.CLOSED:
            return
        self.metrics.proxy_errors += 1
        t = self.transport
        mid = (
            self.server is not None
            and self.server.relay is not None
            and (self.server.relay.mid_message)
        )
        if t is not None and not t.is_closing() and not mid and self.state is not State.TLS:
            t.write(ErrorResponse.make("FATAL", sqlstate, message, **extra).encode())
        self._teardown()

    # ------------------------------------------------------------------ flow control

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and self.state is not State.CLOSED:
            self._paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        st = self.server.transport if self.server is not None else None
        if st is not None and not st.is_closing():
            st.resume_reading()

    # ------------------------------------------------------------------ timers

    def _startup_expired(self) -> None:
        self._timer = None
        if self.state is not State.READY:
            self.fatal("08006", "timeout expired during connection startup")

    def _idle_check(self) -> None:
        self._timer = None
        if self.state is not State.READY or self.session is None:
            return
        if self.cloak is not None:
            mark = self.cloak.reads
        else:
            mark = self.relay.reads if self.relay is not None else 0
        if mark == self._rx_mark and self.session.idle:
            self.fatal("57P05", "terminating connection due to idle-session timeout")
            return
        self._rx_mark = mark
        self._arm(self.proxy.config.idle_timeout, self._idle_check)

    # ------------------------------------------------------------------ client data

    def data_received(self, data: bytes) -> None:
        # Replaced by Relay.feed once the session is ready (see use_relay).
        try:
            self._client_data_slow(data)
        except ProtocolError as exc:
            self.fatal(exc.sqlstate, str(exc))

    def _client_data_slow(self, data: bytes) -> None:
        self.metrics.bytes_from_client += len(data)
        if self.state is State.STARTUP:
            self._startup += data
            self._process_startup()
        elif self.state is State.AUTH:
            assert self._client_framer is not None
            for typ, body in self._client_framer.feed(data):
                self._client_auth_message(typ, body)
        elif self.state is State.CONNECTING:
            # libpq sends nothing here; keep what a client does send, within bounds.
            self._startup += data
            if len(self._startup) > MAX_STARTUP_PACKET:
                raise ProtocolError("unexpected data while connecting to the upstream")
        # TLS / CLOSED: nothing may arrive; drop it.

    def _process_startup(self) -> None:
        while self.state is State.STARTUP:
            ln = read_startup_length(self._startup)
            if ln is None or len(self._startup) < ln:
                return
            packet = bytes(self._startup[:ln])
            del self._startup[:ln]
            msg = decode_startup(packet)
            if isinstance(msg, SSLRequest):
                self._on_ssl_request()
            elif isinstance(msg, GSSENCRequest):
                if self.tls or self.gss_done:
                    raise ProtocolError("GSSENCRequest after encryption negotiation")
                self.gss_done = True
                self._write(b"N")
            elif isinstance(msg, CancelRequest):
                self._on_cancel(msg)
                return
            else:
                self._on_startup(msg)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _on_ssl_request(self) -> None:
        if self.tls:
            raise ProtocolError("SSLRequest on an encrypted connection")
        ctx = self.proxy.client_ssl
        if ctx is None:
            self._write(b"N")
            return
        if self._startup:
            # Bytes sent before the handshake would be trusted as if encrypted.
            raise ProtocolError("received unencrypted data after SSL request")
        self._write(b"S")
        self.state = State.TLS
        self._spawn(self._start_tls(ctx))

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            new = await loop.start_tls(
                self.transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.proxy.config.startup_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.log.info("client TLS handshake failed: %s", type(exc).__name__)
            self._teardown()
            return
        if new is None or self.state is State.CLOSED:
            self._teardown()
            return
        self.transport = new
        self.tls = True
        self.state = State.STARTUP

    def _on_cancel(self, msg: CancelRequest) -> None:
        # A key this process does not know may belong to a sibling worker; every
        # worker relays to the same upstream, which checks the key itself.
        self.metrics.cancel_requests += 1
        self._cancel = True
        self.state = State.CONNECTING  # nothing more is read from this client
        self._spawn(self._forward_cancel(msg))

    async def _forward_cancel(self, msg: CancelRequest) -> None:
        owner = self.proxy.cancel_keys.get((msg.pid, msg.secret))
        upstream = owner.upstream if owner is not None else self.proxy.config.upstream
        try:
            await send_cancel(upstream, msg.pid, msg.secret, self.proxy.config.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.log.warning("could not forward cancel request: %s", type(exc).__name__)
        finally:
            self._teardown()

    def _on_startup(self, msg: StartupMessage) -> None:
        major, minor = msg.version >> 16, msg.version & 0xFFFF
        if major != 3:
            raise ProtocolError(
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
                "0A000",
            )
        params = {k: v for k, v in msg.params.items() if not k.startswith("_pq_.")}
        unknown = tuple(k for k in msg.params if k.startswith("_pq_."))
        if "user" not in params:
            raise ProtocolError("no PostgreSQL user name specified in startup packet", "28000")
        if minor > 0 or unknown:
            # We speak 3.0; answer as PostgreSQL does and downgrade the upstream leg.
            self._write(NegotiateProtocolVersion(PROTOCOL_3_0, unknown).encode())
        up = self.proxy.config.upstream
        if "database" not in params and up.dbname:
            params["database"] = up.dbname
        self.database = params.get("database") or params["user"]
        startup = StartupMessage(PROTOCOL_3_0, params).encode()
        # Reading stays on while connecting, so a client that gives up is noticed
        # at once and its upstream connect is cancelled by the teardown.
        self.state = State.CONNECTING
        self._spawn(self._connect(startup))

    async def _connect(self, startup: bytes) -> None:
        cfg = self.proxy.config
        self.upstream = cfg.upstream
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                transport, proto = await open_upstream(
                    cfg.upstream, self.proxy.upstream_ssl, lambda: ServerConnection(self)
                )
        except (OSError, TimeoutError, UpstreamError, ssl.SSLError) as exc:
            detail = str(exc) if isinstance(exc, UpstreamError) else type(exc).__name__
            self.log.warning("upstream connection failed: %s", detail)
            self.fatal("08001", f"pgcloak could not connect to the upstream server: {detail}")
            return
        assert isinstance(proto, ServerConnection)
        if self.state is State.CLOSED:
            transport.close()
            return
        self.server = proto
        self.state = State.AUTH
        self._client_framer = Framer(cfg.max_message_size)
        self._server_framer = Framer(MAX_BACKEND_MESSAGE)
        proto.transport.write(startup)  # type: ignore[union-attr]
        pending = bytes(self._startup)
        self._startup.clear()
        if pending:
            self._client_data_slow(pending)

    # ------------------------------------------------------------------ auth relay

    def _client_auth_message(self, typ: bytes, body: bytes) -> None:
        st = self.server.transport if self.server is not None else None
        if typ == b"X":
            self._teardown()
            return
        if typ != b"p":
            # Sent ahead of authentication's end (pipelined after startup): PostgreSQL
            # reads it once it is ready, so it goes through the relay then, tracked.
            self._early.append(frame(typ, body))
            if sum(map(len, self._early)) > self.proxy.config.max_message_size:
                raise ProtocolError("too much data before authentication completed")
            return
        if self._sasl_pending:
            self._sasl_pending = False
            self._check_gs2(body)
        if st is not None:
            st.write(frame(typ, body))

    def _check_gs2(self, body: bytes) -> None:
        """Refuse SCRAM channel-binding flags that cannot survive the proxy."""
        nul = body.find(b"\0")
        flag = body[nul + 5 : nul + 6] if nul >= 0 else b""
        upstream_tls = (
            self.server is not None
            and self.server.transport is not None
            and self.server.transport.get_extra_info("sslcontext") is not None
        )
        if flag == b"y" and upstream_tls:
            raise ProtocolError(
                "SCRAM channel binding cannot pass through pgcloak when both the client "
                "and the upstream connection use TLS",
                "28000",
            )

    def server_data_slow(self, data: bytes) -> None:
        framer = self._server_framer
        if self.state is not State.AUTH or framer is None:
            return
        self.metrics.bytes_to_client += len(data)
        try:
            messages = framer.feed(data)
        except ProtocolError as exc:
            self.upstream_protocol_error(exc)
            return
        for i, (typ, body) in enumerate(messages):
            out = self._server_auth_message(typ, body)
            if out is not None:
                self._write(out)
            if self.transport is None or self.transport.is_closing():
                return
            if self.session is not None:  # that message was the first ReadyForQuery
                rest = b"".join(frame(t, b) for t, b in messages[i + 1 :])
                rest += framer.take_pending()
                if rest and self.server is not None and self.server.relay is not None:
                    self.server.relay.feed(rest)
                return

    def _server_auth_message(self, typ: bytes, body: bytes) -> bytes | None:
        if typ == b"R":
            code = int.from_bytes(body[:4], "big", signed=True)
            if code == Authentication.SASL:
                mechs = Authentication(code, body[4:]).sasl_mechanisms()
                offered = [m for m in mechs if m != SCRAM_PLUS]
                if not offered:
                    self.fatal("28000", "upstream offers only SCRAM channel binding")
                    return None
                self._sasl_pending = True
                return Authentication.sasl(offered).encode()
        elif typ == b"K":
            if len(body) == 8:
                pid = int.from_bytes(body[:4], "big", signed=True)
                secret = int.from_bytes(body[4:], "big", signed=True)
                self.key = (pid, secret)
                self.proxy.cancel_keys[self.key] = self
        elif typ == b"E":
            self._server_failed = True
        elif typ == b"S" and self.proxy.cloak is not None:
            self._startup_status.append(frame(typ, body))
        elif typ == b"Z":
            msg = frame(typ, body)
            if self.proxy.cloak is not None:
                self._become_cloaked(msg)
                return None
            self._become_ready(body)
            return msg
        return frame(typ, body)

    def _become_ready(self, status: bytes) -> None:
        assert self.server is not None and self.server.transport is not None
        assert self.transport is not None
        session = Session(self.metrics)
        session.txn_status = status[:1]
        self.session = session
        size = self.proxy.config.max_message_size
        m = self.metrics
        self.relay = Relay(
            self.server.transport,
            session.client_handlers,
            size,
            "frontend",
            metrics=m,
            on_error=self._bad_client,
            session=session,
        )
        # The limit guards against clients; the upstream is trusted and big rows stream.
        self.server.relay = Relay(
            self.transport,
            session.server_handlers,
            MAX_BACKEND_MESSAGE,
            "backend",
            metrics=m,
            on_error=self.upstream_protocol_error,
            session=session,
        )
        use_relay(self, self.transport, self.relay)
        use_relay(self.server, self.server.transport, self.server.relay)
        self.state = State.READY
        early = self._leave_auth()
        self.log.debug("session ready")
        if early:
            self.relay.feed(early)

    def _leave_auth(self) -> bytes:
        """End of the authentication slow path: what the client already sent, timers reset."""
        early = b"".join(self._early)
        if self._client_framer is not None:
            early += self._client_framer.take_pending()
        self._early.clear()
        self._client_framer = self._server_framer = None
        self._rx_mark = -1
        self._arm(self.proxy.config.idle_timeout, self._idle_check)
        return early

    def _become_cloaked(self, ready: bytes) -> None:
        """Switch to the cloaking path; the client sees ReadyForQuery once the registry is in."""
        assert self.server is not None and self.server.transport is not None
        assert self.transport is not None and self.proxy.cloak is not None
        cloak = CloakSession(
            self.proxy.cloak,
            self.database,
            self.server.transport.write,
            self.metrics,
            max_size=self.proxy.config.max_message_size,
            on_fatal=self.fatal,
        )
        self.cloak = self.session = cloak
        for status in self._startup_status:  # the settings decrypted values are printed in
            cloak.startup_status(status)
        self._startup_status.clear()
        self.server.relay = Relay(
            self.transport,
            cloak.server_handlers,
            MAX_BACKEND_MESSAGE,
            "backend",
            metrics=self.metrics,
            on_error=self.upstream_protocol_error,
        )
        cloak.rows_table = self.server.relay.table
        use_relay(self.server, self.server.transport, self.server.relay)
        self.data_received = self._cloak_client_data  # type: ignore[method-assign]
        self.transport.set_protocol(self)
        self.state = State.READY
        early = self._leave_auth()
        cloak.start(ready)
        if early:
            self._cloak_client_data(early)

    def _cloak_client_data(self, data: bytes) -> None:
        assert self.cloak is not None
        try:
            self.cloak.feed_client(data)
        except ProtocolError as exc:
            self.fatal(exc.sqlstate, str(exc))

    # ------------------------------------------------------------------ upstream events

    def _bad_client(self, exc: ProtocolError) -> None:
        self.fatal(exc.sqlstate, str(exc))

    def upstream_protocol_error(self, exc: ProtocolError) -> None:
        self.log.warning("upstream protocol violation: %s", exc)
        self.fatal("08P01", "pgcloak received an invalid message from the upstream server")

    def upstream_lost(self) -> None:
        if self.state is State.CLOSED:
            return
        s = self.session
        failed = self._server_failed or (
            s is not None and (s.server_sent_fatal or s.client_terminated)
        )
        if failed:
            self._teardown()
            return
        self.log.info("upstream connection lost")
        self.fatal(
            "08006",
            "terminating connection because the upstream server closed the connection",
            hint="The server may have restarted; reconnect.",
        )
