"""Minimal HTTP/1.1 admin listener: /healthz, /readyz and /metrics.

Written on plain asyncio streams so the proxy needs no web framework. The
parser is deliberately strict and bounded (header size, header count, read
timeout) because the port may be reachable by more than the scraper, and
every connection answers exactly one request and then closes, which keeps
the state machine trivial.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import generate_latest

from pgcloak.proxy.metrics import Metrics, make_registry

__all__ = ["METRICS_CONTENT_TYPE", "start_admin", "stop_admin"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192  # request line + headers
MAX_HEADERS = 100
READ_TIMEOUT = 10.0  # whole request head, so slow-drip clients cannot linger
WRITE_TIMEOUT = 10.0
READY_TIMEOUT = 5.0  # upper bound on one readiness check
LINGER_TIMEOUT = 1.0  # see _linger()
LINGER_BYTES = 64 * 1024

# generate_latest() emits the classic text format; newer prometheus_client
# releases point CONTENT_TYPE_LATEST at "version=1.0.0", so name 0.0.4 explicitly.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_ALLOW = "GET, HEAD"
_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII, no spaces/controls
_HEAD_END = re.compile(rb"\r?\n\r?\n")

# Lets stop_admin() find the handler state of a server start_admin() returned.
_ADMINS: weakref.WeakKeyDictionary[asyncio.Server, _Admin] = weakref.WeakKeyDictionary()

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    allow: bool = False  # add the Allow header (405)


class _HTTPError(Exception):
    """Raised by the parser; carries the status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = _Response(status, message.encode() + b"\n")


async def _read_head(reader: asyncio.StreamReader, buf: bytearray) -> bytes | None:
    """Read up to the blank line ending the header section.

    Returns None if the peer closed before sending anything. `buf` is owned by
    the caller so that on timeout it can tell an idle socket from a partial
    request.
    """
    while True:
        # Tolerate stray CRLFs before the request line (RFC 9112 section 2.2).
        while buf and buf[0] in b"\r\n":
            del buf[0]
        m = _HEAD_END.search(buf)
        if m is not None:
            if m.start() > MAX_HEAD_BYTES:
                raise _HTTPError(431, "request header section too large")
            return bytes(buf[: m.start()])
        if len(buf) > MAX_HEAD_BYTES:
            raise _HTTPError(431, "request header section too large")
        chunk = await reader.read(4096)
        if not chunk:
            if buf:
                raise _HTTPError(400, "incomplete request")
            return None
        buf += chunk


def _parse_head(head: bytes) -> tuple[str, str]:
    """Validate the request line and header syntax; return (method, path)."""
    lines = head.split(b"\n")
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _HTTPError(400, "malformed request line")
    method_b, target_b, version_b = parts
    if not _TOKEN.fullmatch(method_b):
        raise _HTTPError(400, "malformed method")
    if not _VERSION.fullmatch(version_b):
        raise _HTTPError(400, "unsupported HTTP version")
    if not _TARGET.fullmatch(target_b):
        raise _HTTPError(400, "malformed request target")

    headers = lines[1:]
    if len(headers) > MAX_HEADERS:
        raise _HTTPError(431, "too many header fields")
    for line in headers:
        name, sep, _value = line.partition(b":")
        # Empty or whitespace-bearing names and obs-fold continuation lines are
        # rejected outright: they are the classic request-smuggling vectors.
        if not sep or not _TOKEN.fullmatch(name):
            raise _HTTPError(400, "malformed header field")

    target = target_b.decode("ascii")
    if target.startswith("/"):
        path = target.partition("?")[0]
    elif target.startswith(("http://", "https://")):  # absolute-form
        try:
            path = urlsplit(target).path or "/"
        except ValueError:
            raise _HTTPError(400, "malformed request target") from None
    else:
        raise _HTTPError(400, "malformed request target")
    return method_b.decode("ascii"), path


def _encode(resp: _Response, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if resp.allow:
        lines.append(f"Allow: {_ALLOW}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + resp.body


def _loggable(text: str) -> str:
    """Bound and escape client-chosen text before it reaches a log line."""
    return repr(text[:64])


class _Admin:
    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], Awaitable[bool]],
        draining: Callable[[], bool] | None,
        read_timeout: float,
        ready_timeout: float,
    ) -> None:
        self._registry = make_registry(metrics)
        self._ready = ready
        self._draining = draining
        self._read_timeout = read_timeout
        self._ready_timeout = ready_timeout
        # Concurrent /readyz probes share one in-flight upstream check so the
        # admin port cannot be used to fan out connections to PostgreSQL.
        self._ready_task: asyncio.Task[bool] | None = None
        self._handlers: set[asyncio.Task[object]] = set()

    def _is_draining(self) -> bool:
        return self._draining is not None and self._draining()

    async def _check_ready(self) -> bool:
        try:
            async with asyncio.timeout(self._ready_timeout):
                return bool(await self._ready())
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            log.debug("admin readiness check failed: %s", type(exc).__name__)
            return False

    async def _is_ready(self) -> bool:
        task = self._ready_task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._check_ready())
            self._ready_task = task
        # shield: a client hanging up must not cancel the check others await.
        return await asyncio.shield(task)

    async def _route(self, method: str, path: str) -> _Response:
        if path not in _PATHS:
            return _Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return _Response(405, b"method not allowed\n", allow=True)
        if path == "/healthz":
            if self._is_draining():
                return _Response(503, b"draining\n")
            return _Response(200, b"ok\n")
        if path == "/readyz":
            if self._is_draining():
                return _Response(503, b"draining\n")
            if await self._is_ready():
                return _Response(200, b"ready\n")
            return _Response(503, b"upstream unreachable\n")
        # /metrics: the collector only reads ints, so this is cheap enough
        # to run inline on the loop.
        return _Response(200, generate_latest(self._registry), METRICS_CONTENT_TYPE)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, status = "-", "-", 0
        buf = bytearray()
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        try:
            resp: _Response | None
            try:
                async with asyncio.timeout(self._read_timeout):
                    head = await _read_head(reader, buf)
            except TimeoutError:
                # Silently drop idle sockets; answer a half-sent request.
                head = None
                resp = _Response(408, b"request timeout\n") if buf else None
            except _HTTPError as exc:
                head = None
                resp = exc.response
            else:
                resp = None
            if head is not None:
                try:
                    method, path = _parse_head(head)
                except _HTTPError as exc:
                    resp = exc.response
                else:
                    resp = await self._route(method, path)
            if resp is None:
                return
            status = resp.status
            writer.write(_encode(resp, head_only=method == "HEAD"))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
            await _linger(reader, writer)
        except (OSError, TimeoutError) as exc:
            log.debug("admin connection error: %s", type(exc).__name__)
        except asyncio.CancelledError:
            # Loop shutdown. This is the root of its own task and nothing awaits
            # it; re-raising only makes Python 3.11's stream callback log a
            # spurious "Unhandled exception in client_connected_cb".
            pass
        finally:
            if me is not None:
                self._handlers.discard(me)
            writer.close()
            if status:
                log.debug("admin %s %s -> %d", _loggable(method), _loggable(path), status)

    async def abort(self) -> None:
        """Cancel in-flight handlers and readiness checks (used on shutdown)."""
        tasks: list[asyncio.Task[object]] = list(self._handlers)
        if self._ready_task is not None and not self._ready_task.done():
            tasks.append(self._ready_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then briefly discard unread input before closing.

    Closing a socket with unread data (e.g. the rest of an oversized header
    or a request body we ignored) makes the kernel send RST, which can
    destroy the response before the client reads it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    discarded = 0
    try:
        async with asyncio.timeout(LINGER_TIMEOUT):
            while discarded < LINGER_BYTES:
                chunk = await reader.read(16384)
                if not chunk:
                    return
                discarded += len(chunk)
    except TimeoutError:
        return


async def start_admin(
    host: str,
    port: int,
    metrics: Metrics,
    ready: Callable[[], Awaitable[bool]],
    draining: Callable[[], bool] | None = None,
    *,
    read_timeout: float = READ_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
) -> asyncio.Server:
    """Start the admin listener; port 0 binds an ephemeral port.

    `ready` should report whether the upstream accepts connections;
    `draining` flips /healthz and /readyz to 503 during graceful shutdown so
    load balancers stop routing before client connections are closed.
    """
    admin = _Admin(metrics, ready, draining, read_timeout, ready_timeout)
    server = await asyncio.start_server(admin.handle, host, port)
    _ADMINS[server] = admin
    return server


async def stop_admin(server: asyncio.Server) -> None:
    """Close the listener and any admin connections still open.

    Prefer this to `server.close(); await server.wait_closed()`: since Python
    3.12 wait_closed() also waits for open connections, which an idle client
    could stretch to the full read timeout during a graceful shutdown.
    """
    server.close()
    admin = _ADMINS.pop(server, None)
    if admin is not None:
        await admin.abort()
    await server.wait_closed()
