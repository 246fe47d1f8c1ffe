"""Opening connections to the upstream PostgreSQL (TCP, Unix socket, TLS)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from pgcloak.config import Upstream
from pgcloak.proxy.codec import CancelRequest, GSSENCRequest, SSLRequest
from pgcloak.proxy.tls import upstream_requires_tls


class UpstreamError(Exception):
    """The upstream could not be reached or refused the requested security."""


def socket_path(up: Upstream) -> str | None:
    """Unix-socket file for a directory host, as libpq derives it."""
    if up.host.startswith("/"):
        return f"{up.host.rstrip('/')}/.s.PGSQL.{up.port}"
    return None


async def _raw_socket(up: Upstream) -> socket.socket:
    loop = asyncio.get_running_loop()
    path = socket_path(up)
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
        except OSError:
            sock.close()
            raise
        return sock
    infos = await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError(f"no address for {up.host}")


async def open_upstream(
    up: Upstream,
    ctx: ssl.SSLContext | None,
    factory: Callable[[], asyncio.Protocol],
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Connect and, per sslmode, negotiate TLS before any protocol byte flows."""
    loop = asyncio.get_running_loop()
    sock = await _raw_socket(up)
    done = False
    try:
        result = await _negotiate(loop, sock, up, ctx, factory)
        done = True
        return result
    finally:
        if not done:
            sock.close()


async def _negotiate(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    up: Upstream,
    ctx: ssl.SSLContext | None,
    factory: Callable[[], asyncio.Protocol],
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    if ctx is None:
        return await loop.create_connection(factory, sock=sock)
    await loop.sock_sendall(sock, SSLRequest().encode())
    answer = await loop.sock_recv(sock, 1)
    if answer == b"S":
        return await loop.create_connection(
            factory, sock=sock, ssl=ctx, server_hostname=up.host, ssl_handshake_timeout=30.0
        )
    if answer == b"N" and not upstream_requires_tls(up):
        return await loop.create_connection(factory, sock=sock)
    if answer == b"N":
        raise UpstreamError(f"upstream does not support SSL, but sslmode is {up.sslmode}")
    raise UpstreamError("upstream sent an invalid response to SSL negotiation")


async def upstream_reachable(up: Upstream, timeout: float) -> bool:
    """True when a PostgreSQL server answers at the upstream address.

    A GSSENCRequest gets a one-byte answer and, closed right after, leaves no
    line in the server log, unlike a half-done startup or SSL handshake.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            sock = await _raw_socket(up)
            try:
                await loop.sock_sendall(sock, GSSENCRequest().encode())
                answer = await loop.sock_recv(sock, 1)
            finally:
                sock.close()
    except (OSError, TimeoutError):
        return False
    return answer in (b"N", b"G", b"E")


async def send_cancel(up: Upstream, pid: int, secret: int, timeout: float) -> None:
    """Deliver a CancelRequest; the server answers by closing the connection."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        sock = await _raw_socket(up)
        try:
            await loop.sock_sendall(sock, CancelRequest(pid, secret).encode())
            await loop.sock_recv(sock, 1)
        finally:
            sock.close()
