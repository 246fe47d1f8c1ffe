"""Authentication and TLS through real proxy subprocesses in front of real PostgreSQL.

The upstream for password tests is `pg_auth` (TLS on; scram_user/md5_user/clear_user).
The proxy never sees passwords it could check itself: every verdict must be the
upstream's own, relayed byte for byte. TLS is terminated on each leg separately, so
`pg_stat_ssl` on the upstream describes the proxy->upstream leg and
`pgconn.ssl_in_use` the client->proxy leg.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from helpers import PgServer, ProxyLauncher, ProxyProcess, make_dsn, make_url

from pgcloak.embedded import EmbeddedPostgres, generate_self_signed
from pgcloak.proxy.codec import (
    PROTOCOL_3_0,
    ErrorResponse,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_backend,
    frame,
)

ROLES = ("scram_user", "md5_user", "clear_user")
SSL_QUERY = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


# -- fixtures ---------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("dump_launcher_logs")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(cert, key, ca) for the proxy's client-facing TLS (127.0.0.1 and localhost)."""
    return generate_self_signed(tmp_path_factory.mktemp("proxy-certs"))


@pytest.fixture(scope="module")
def auth_proxy(pg_auth: PgServer, launcher: ProxyLauncher) -> ProxyProcess:
    """No client certificate; upstream pg_auth with the default sslmode (prefer)."""
    return launcher.start(pg_auth.upstream_url())


@pytest.fixture(scope="module")
def tls_proxy(
    pg: PgServer, launcher: ProxyLauncher, certs: tuple[Path, Path, Path]
) -> ProxyProcess:
    """Client-facing TLS; upstream `pg` (whatever its ssl setting, sslmode=prefer)."""
    cert, key, _ = certs
    return launcher.start(pg.upstream_url(), "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.fixture(scope="module")
def both_tls_proxy(
    pg_auth: PgServer, launcher: ProxyLauncher, certs: tuple[Path, Path, Path]
) -> ProxyProcess:
    """TLS on both legs: client-facing certificate, upstream pg_auth verified (verify-full)."""
    cert, key, _ = certs
    assert pg_auth.ca_path is not None
    upstream = pg_auth.upstream_url(sslmode="verify-full", sslrootcert=str(pg_auth.ca_path))
    return launcher.start(upstream, "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.fixture(scope="module")
def plain_upstream(pg: PgServer) -> Iterator[PgServer]:
    """A server with ssl=off: `pg` when it has TLS disabled, else a throwaway cluster."""
    if pg.execute("SHOW ssl")[0][0] == "off":
        yield pg
        return
    embedded = EmbeddedPostgres()
    embedded.start()
    try:
        yield PgServer(embedded.host, embedded.port, embedded=embedded)
    finally:
        embedded.stop()


def _connect(
    proxy: ProxyProcess,
    dbname: str = "postgres",
    user: str = "postgres",
    host: str | None = None,
    **kw: Any,
) -> psycopg.Connection[tuple[Any, ...]]:
    """psycopg through `proxy` (optionally via another host name), autocommit."""
    kw.setdefault("connect_timeout", 10)
    dsn = make_dsn(host or proxy.host, proxy.port, dbname, user, **kw)
    return psycopg.connect(dsn, autocommit=True)


def _login(proxy: ProxyProcess, pg_auth: PgServer, role: str, **kw: Any) -> Any:
    return _connect(proxy, dbname="authdb", user=role, password=pg_auth.passwords[role], **kw)


def _no_traceback(proxy: ProxyProcess) -> None:
    log = proxy.log_text()
    assert "Traceback" not in log, log
    assert proxy.returncode is None, log


# -- password authentication, plaintext client leg ---------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_password_login_through_proxy(
    auth_proxy: ProxyProcess, pg_auth: PgServer, role: str
) -> None:
    """Each password method works; the upstream leg is TLS (sslmode=prefer on a TLS server).

    For scram_user this is SCRAM with libpq's default channel_binding=prefer over a
    plaintext client leg and a TLS upstream leg.
    """
    with _login(auth_proxy, pg_auth, role) as conn:
        assert conn.info.pgconn.ssl_in_use is False
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            role,
            "authdb",
        )
        assert conn.execute(SSL_QUERY).fetchone() == (True,)
        table = f"t_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE TEMP TABLE {table} (x int)")
        conn.execute(f"INSERT INTO {table} VALUES (41), (1)")
        assert conn.execute(f"SELECT sum(x) FROM {table}").fetchone() == (42,)
    _no_traceback(auth_proxy)


@pytest.mark.parametrize("role", ROLES)
async def test_wrong_password_rejected_by_upstream(
    auth_proxy: ProxyProcess, pg_auth: PgServer, role: str
) -> None:
    expected = f'password authentication failed for user "{role}"'
    with pytest.raises(psycopg.OperationalError) as direct:
        pg_auth.connect("authdb", role, password="wrong-password", sslmode="disable")
    with pytest.raises(psycopg.OperationalError) as proxied:
        _connect(auth_proxy, dbname="authdb", user=role, password="wrong-password")
    # The proxied error is the upstream's own FATAL, word for word.
    assert f"FATAL:  {expected}" in str(proxied.value)
    assert str(direct.value).split("FATAL:")[1] == str(proxied.value).split("FATAL:")[1]
    # asyncpg parses the ErrorResponse itself, so it shows the SQLSTATE too.
    with pytest.raises(asyncpg.InvalidPasswordError) as exc:
        await asyncpg.connect(
            host=auth_proxy.host,
            port=auth_proxy.port,
            user=role,
            password="wrong-password",
            database="authdb",
            timeout=10,
        )
    assert exc.value.sqlstate == "28P01"
    assert exc.value.args[0] == expected
    _no_traceback(auth_proxy)


async def test_missing_user_gets_upstream_error(auth_proxy: ProxyProcess) -> None:
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    with pytest.raises(psycopg.OperationalError) as proxied:
        _connect(auth_proxy, user=role, password="whatever")
    assert f'FATAL:  role "{role}" does not exist' in str(proxied.value)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as exc:
        await asyncpg.connect(
            host=auth_proxy.host, port=auth_proxy.port, user=role, database="postgres", timeout=10
        )
    assert exc.value.sqlstate == "28000"
    assert exc.value.args[0] == f'role "{role}" does not exist'
    _no_traceback(auth_proxy)


# -- client-facing TLS --------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_client_tls_verify_full(
    tls_proxy: ProxyProcess, pg: PgServer, certs: tuple[Path, Path, Path], host: str
) -> None:
    _, _, ca = certs
    upstream_ssl = pg.execute("SHOW ssl")[0][0] == "on"
    with _connect(tls_proxy, host=host, sslmode="verify-full", sslrootcert=str(ca)) as conn:
        assert conn.info.pgconn.ssl_in_use is True
        # pg_stat_ssl describes the proxy's own connection to the upstream.
        assert conn.execute(SSL_QUERY).fetchone() == (upstream_ssl,)
        assert conn.execute("SELECT repeat('z', 100000)").fetchone() == ("z" * 100000,)
    _no_traceback(tls_proxy)


def test_client_tls_disable_still_plaintext(tls_proxy: ProxyProcess) -> None:
    with _connect(tls_proxy, sslmode="disable") as conn:
        assert conn.info.pgconn.ssl_in_use is False
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_tls_wrong_ca_rejected_by_client(tls_proxy: ProxyProcess, tmp_path: Path) -> None:
    _, _, other_ca = generate_self_signed(tmp_path / "other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(tls_proxy, sslmode="verify-full", sslrootcert=str(other_ca))
    _no_traceback(tls_proxy)


def test_proxy_without_certificate_refuses_tls(auth_proxy: ProxyProcess) -> None:
    """SSLRequest is answered 'N': require fails clearly, prefer falls back to plaintext."""
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        _connect(auth_proxy, sslmode="require")
    with _connect(auth_proxy, sslmode="prefer") as conn:
        assert conn.info.pgconn.ssl_in_use is False
        assert conn.execute("SELECT 1").fetchone() == (1,)
    _no_traceback(auth_proxy)


# -- upstream TLS ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["url-127.0.0.1", "url-localhost", "flags"])
def test_upstream_verify_full(
    proxy_factory: Callable[..., ProxyProcess], pg_auth: PgServer, how: str
) -> None:
    assert pg_auth.ca_path is not None
    ca = str(pg_auth.ca_path)
    if how == "flags":
        proxy = proxy_factory(
            pg_auth.upstream_url(sslmode="disable"),  # the flag overrides the URL
            "--upstream-sslmode",
            "verify-full",
            "--upstream-sslrootcert",
            ca,
        )
    else:
        host = how.removeprefix("url-")
        url = make_url(host, pg_auth.port, None, None, None, sslmode="verify-full", sslrootcert=ca)
        proxy = proxy_factory(url)
    with _connect(proxy) as conn:
        assert conn.execute(SSL_QUERY).fetchone() == (True,)
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        # Seen from a direct superuser connection too: that backend uses TLS.
        rows = pg_auth.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = %s", backend)
        assert rows[0][0] is True
        assert rows[0][1] in ("TLSv1.2", "TLSv1.3")
    _no_traceback(proxy)


async def test_upstream_require_against_plaintext_server(
    proxy_factory: Callable[..., ProxyProcess], plain_upstream: PgServer
) -> None:
    assert plain_upstream.execute("SHOW ssl") == [("off",)]
    proxy = proxy_factory(plain_upstream.upstream_url(sslmode="require"))
    with pytest.raises(psycopg.OperationalError) as exc:
        _connect(proxy)
    text = str(exc.value)
    assert "FATAL:" in text
    assert "upstream does not support SSL, but sslmode is require" in text
    with pytest.raises(asyncpg.PostgresError) as aexc:
        await asyncpg.connect(host=proxy.host, port=proxy.port, user="postgres", timeout=10)
    assert aexc.value.sqlstate.startswith("08"), aexc.value.sqlstate
    _no_traceback(proxy)


async def test_upstream_verify_full_wrong_ca(
    proxy_factory: Callable[..., ProxyProcess], pg_auth: PgServer, tmp_path: Path
) -> None:
    _, _, wrong_ca = generate_self_signed(tmp_path / "wrong")
    proxy = proxy_factory(pg_auth.upstream_url(sslmode="verify-full", sslrootcert=str(wrong_ca)))
    with pytest.raises(psycopg.OperationalError) as exc:
        _connect(proxy)
    text = str(exc.value)
    assert "FATAL:" in text
    assert "pgcloak could not connect to the upstream server" in text
    with pytest.raises(asyncpg.PostgresError) as aexc:
        await asyncpg.connect(host=proxy.host, port=proxy.port, user="postgres", timeout=10)
    assert aexc.value.sqlstate.startswith("08"), aexc.value.sqlstate
    _no_traceback(proxy)


# -- TLS on both legs -------------------------------------------------------------------


def _tls_kw(certs: tuple[Path, Path, Path]) -> dict[str, str]:
    return {"sslmode": "verify-full", "sslrootcert": str(certs[2])}


@pytest.mark.parametrize("role", ["md5_user", "clear_user"])
def test_both_legs_tls_password_roles(
    both_tls_proxy: ProxyProcess, pg_auth: PgServer, certs: tuple[Path, Path, Path], role: str
) -> None:
    with _login(both_tls_proxy, pg_auth, role, **_tls_kw(certs)) as conn:
        assert conn.info.pgconn.ssl_in_use is True
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        assert conn.execute(SSL_QUERY).fetchone() == (True,)
    _no_traceback(both_tls_proxy)


def test_both_legs_tls_scram_without_channel_binding(
    both_tls_proxy: ProxyProcess, pg_auth: PgServer, certs: tuple[Path, Path, Path]
) -> None:
    with _login(
        both_tls_proxy, pg_auth, "scram_user", channel_binding="disable", **_tls_kw(certs)
    ) as conn:
        assert conn.info.pgconn.ssl_in_use is True
        assert conn.execute("SELECT current_user").fetchone() == ("scram_user",)
        assert conn.execute(SSL_QUERY).fetchone() == (True,)
    _no_traceback(both_tls_proxy)


def test_both_legs_tls_scram_default_channel_binding_refused(
    both_tls_proxy: ProxyProcess, pg_auth: PgServer, certs: tuple[Path, Path, Path]
) -> None:
    """libpq's default (prefer) answers the PLUS-less offer with gs2 flag 'y' over TLS.

    The upstream would read that as a downgrade attack; pgcloak says why instead.
    """
    with pytest.raises(psycopg.OperationalError) as exc:
        _login(both_tls_proxy, pg_auth, "scram_user", **_tls_kw(certs))
    text = str(exc.value)
    assert "FATAL:" in text
    assert "SCRAM channel binding cannot pass through pgcloak" in text
    _no_traceback(both_tls_proxy)


def test_both_legs_tls_channel_binding_require_fails(
    both_tls_proxy: ProxyProcess, pg_auth: PgServer, certs: tuple[Path, Path, Path]
) -> None:
    """SCRAM-SHA-256-PLUS is never advertised, so libpq gives up before authenticating."""
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        _login(both_tls_proxy, pg_auth, "scram_user", channel_binding="require", **_tls_kw(certs))
    _no_traceback(both_tls_proxy)


async def test_both_legs_tls_scram_asyncpg(
    both_tls_proxy: ProxyProcess, pg_auth: PgServer, certs: tuple[Path, Path, Path]
) -> None:
    """asyncpg never asks for channel binding, so SCRAM works over TLS on both legs."""
    ctx = ssl.create_default_context(cafile=str(certs[2]))
    conn = await asyncpg.connect(
        host=both_tls_proxy.host,
        port=both_tls_proxy.port,
        user="scram_user",
        password=pg_auth.passwords["scram_user"],
        database="authdb",
        ssl=ctx,
        timeout=10,
    )
    try:
        assert await conn.fetchval("SELECT current_user") == "scram_user"
        assert await conn.fetchval(SSL_QUERY) is True
    finally:
        await conn.close()


# -- raw TLS negotiation ----------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _read_messages_until(sock: socket.socket, *types: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    while True:
        head = _recv_exactly(sock, 5)
        (length,) = struct.unpack("!I", head[1:])
        out.append((head[:1], _recv_exactly(sock, length - 4)))
        if head[:1] in types:
            return out


def _read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {timeout}s; received {data[:200]!r}")
    return data


def test_raw_gssenc_then_ssl_negotiation(
    tls_proxy: ProxyProcess, certs: tuple[Path, Path, Path]
) -> None:
    """GSSENCRequest is declined with 'N', the following SSLRequest accepted with 'S'."""
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as sock:
        sock.sendall(GSSENCRequest().encode())
        assert _recv_exactly(sock, 1) == b"N"
        sock.sendall(SSLRequest().encode())
        assert _recv_exactly(sock, 1) == b"S"
        ctx = ssl.create_default_context(cafile=str(certs[2]))
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            params = {"user": "postgres", "database": "postgres"}
            tls.sendall(StartupMessage(PROTOCOL_3_0, params).encode())
            msgs = _read_messages_until(tls, b"Z", b"E")
            assert msgs[-1] == (b"Z", b"I"), msgs
            tls.sendall(frame(b"Q", b"SELECT 'over tls'\0"))
            msgs = _read_messages_until(tls, b"Z")
            assert any(t == b"D" and b"over tls" in body for t, body in msgs), msgs
            tls.sendall(frame(b"X", b""))
    _no_traceback(tls_proxy)


def test_plaintext_pipelined_after_ssl_request_rejected(tls_proxy: ProxyProcess) -> None:
    """Bytes sent along with the SSLRequest must not be trusted as if encrypted
    (CVE-2021-23214): the proxy refuses, as PostgreSQL does."""
    startup = StartupMessage(PROTOCOL_3_0, {"user": "postgres"}).encode()
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as sock:
        sock.sendall(SSLRequest().encode() + startup)
        data = _read_to_eof(sock)
    assert data[:1] == b"E", data
    err = decode_backend(b"E", data[5:])
    assert isinstance(err, ErrorResponse)
    assert err.fields["S"] == "FATAL"
    assert err.sqlstate == "08P01"
    assert "unencrypted data after SSL request" in err.message
    _no_traceback(tls_proxy)


@pytest.mark.parametrize("seed", range(3))
def test_garbage_instead_of_tls_handshake(tls_proxy: ProxyProcess, seed: int) -> None:
    junk = random.Random(seed).randbytes(2000)
    with _connect(tls_proxy) as neighbour:
        before = neighbour.execute("SELECT pg_backend_pid()").fetchone()
        with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as sock:
            sock.sendall(SSLRequest().encode())
            assert _recv_exactly(sock, 1) == b"S"
            sock.sendall(junk)
            _read_to_eof(sock)  # at most a TLS alert, then the close
        assert neighbour.execute("SELECT pg_backend_pid()").fetchone() == before
    _no_traceback(tls_proxy)


def test_stalled_tls_handshake_times_out(
    proxy_factory: Callable[..., ProxyProcess], pg: PgServer, certs: tuple[Path, Path, Path]
) -> None:
    cert, key, _ = certs
    proxy = proxy_factory(
        pg.upstream_url(), "--tls-cert", str(cert), "--tls-key", str(key), "--startup-timeout", "1"
    )
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(SSLRequest().encode())
        assert _recv_exactly(sock, 1) == b"S"
        t0 = time.monotonic()
        assert _read_to_eof(sock, timeout=4) == b""
        assert time.monotonic() - t0 <= 2.5
    _no_traceback(proxy)
