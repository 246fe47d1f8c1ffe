"""Robustness of real proxy subprocesses: hostile input, timeouts, upstream failures,
signals, admin endpoints, backpressure and very large messages.

Raw sockets speak the protocol byte by byte where a driver would refuse to misbehave;
psycopg plays the well-behaved neighbour that must not notice any of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from helpers import (
    LOCALHOST,
    PgServer,
    ProxyLauncher,
    ProxyProcess,
    free_port,
    make_url,
    port_listening,
)
from prometheus_client.parser import text_string_to_metric_families

from pgcloak.embedded import EmbeddedPostgres
from pgcloak.proxy.codec import (
    PROTOCOL_3_0,
    ErrorResponse,
    StartupMessage,
    decode_backend,
    frame,
)

Msg = tuple[bytes, bytes]

# -- raw protocol client ----------------------------------------------------------------


class RawConn:
    """A byte-level PostgreSQL client over a plain socket."""

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((LOCALHOST, port))
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.app = f"raw_{uuid.uuid4().hex[:10]}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        if self.pos > 1 << 20:  # compact rarely: deleting a prefix moves the rest
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_message(self) -> Msg | None:
        """Next (type, body); None on a clean EOF between messages."""
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 5:
                ln = struct.unpack_from("!I", self.buf, self.pos + 1)[0]
                if avail >= 1 + ln:
                    start = self.pos
                    self.pos += 1 + ln
                    return bytes(self.buf[start : start + 1]), bytes(self.buf[start + 5 : self.pos])
            if not self._fill():
                rest = bytes(self.buf[self.pos : self.pos + 16])
                assert not rest, f"connection closed in the middle of a message: {rest!r}"
                return None

    def read_until(self, *types: bytes) -> list[Msg]:
        """Messages up to and including the first of `types`; fails on EOF."""
        out: list[Msg] = []
        while True:
            msg = self.read_message()
            assert msg is not None, f"connection closed while waiting for {types}: {out}"
            out.append(msg)
            if msg[0] in types:
                return out

    def read_to_eof(self, timeout: float = 5.0) -> list[Msg]:
        """Everything until the server closes; a reset counts as a close."""
        self.sock.settimeout(timeout)
        out: list[Msg] = []
        try:
            while (msg := self.read_message()) is not None:
                out.append(msg)
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"connection still open after {timeout}s; received {out}")
        return out

    def startup(self, dbname: str = "postgres", user: str = "postgres") -> list[Msg]:
        params = {"user": user, "database": dbname, "application_name": self.app}
        self.send(StartupMessage(PROTOCOL_3_0, params).encode())
        msgs = self.read_until(b"Z", b"E")
        assert msgs[-1][0] == b"Z", errors(msgs)
        return msgs

    def query(self, sql: str) -> list[Msg]:
        self.send(frame(b"Q", sql.encode() + b"\0"))
        return self.read_until(b"Z")


def errors(msgs: list[Msg]) -> list[ErrorResponse]:
    out = []
    for typ, body in msgs:
        if typ == b"E":
            err = decode_backend(typ, body)
            assert isinstance(err, ErrorResponse)
            out.append(err)
    return out


def assert_fatal(msgs: list[Msg], sqlstate: str | None, contains: str = "") -> ErrorResponse:
    """Exactly one ErrorResponse, FATAL, last thing sent; optional SQLSTATE/text check."""
    errs = errors(msgs)
    assert len(errs) == 1, msgs
    assert msgs[-1][0] == b"E", msgs
    err = errs[0]
    assert err.fields["S"] == "FATAL", err
    if sqlstate is not None:
        assert err.sqlstate == sqlstate, err
    assert contains in err.message, err
    return err


def assert_fatal_or_clean_close(msgs: list[Msg], sqlstate: str) -> None:
    if msgs:
        assert_fatal(msgs, sqlstate)


def backend_gone(pg: PgServer, app: str, timeout: float = 5.0) -> bool:
    """Wait until no upstream backend carries application_name `app`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
        )
        if rows[0][0] == 0:
            return True
        time.sleep(0.05)
    return False


def assert_healthy(proxy: ProxyProcess) -> None:
    log = proxy.log_text()
    assert proxy.returncode is None, log
    assert "Traceback" not in log, log


@contextlib.contextmanager
def neighbour_survives(proxy: ProxyProcess) -> Iterator[None]:
    """A session opened before the abuse must work, unchanged, after it."""
    with proxy.connect() as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
        yield
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == before
        assert conn.execute("SELECT count(*) FROM generate_series(1, 1000)").fetchone() == (1000,)
    assert_healthy(proxy)


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_samples(proxy: ProxyProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http_get(proxy.admin_url("/metrics"))
    assert status == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- fixtures ----------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("dump_launcher_logs")


@pytest.fixture(scope="module")
def hardened(pg: PgServer, launcher: ProxyLauncher) -> ProxyProcess:
    """One proxy for the bad-input tests: small message limit, short startup timeout."""
    return launcher.start(pg.upstream_url(), "--max-message-size", "1MB", "--startup-timeout", "5")


@pytest.fixture(scope="module")
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A private cluster we may restart and crash (fixed port: restarts keep it)."""
    embedded = EmbeddedPostgres(port=free_port())
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_before_startup(hardened: ProxyProcess, seed: int) -> None:
    rng = random.Random(seed)
    junk = rng.randbytes(rng.randint(1, 4096))
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        try:
            raw.send(junk)
            raw.half_close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # rejected before all of it was sent
        assert_fatal_or_clean_close(raw.read_to_eof(), "08P01")


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_after_startup(hardened: ProxyProcess, pg: PgServer, seed: int) -> None:
    """Garbage on an established session ends that session only, whatever it parses as."""
    rng = random.Random(1000 + seed)
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.startup()
        try:
            for _ in range(4):
                raw.send(rng.randbytes(rng.randint(1, 2048)))
            raw.half_close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy already ended the session on an earlier chunk: what we test
        msgs = raw.read_to_eof(timeout=10)
        fatal = [e for e in errors(msgs) if e.fields["S"] == "FATAL"]
        assert len(fatal) <= 1, msgs
        assert backend_gone(pg, raw.app)


def test_huge_startup_length(hardened: ProxyProcess) -> None:
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.send(struct.pack("!I", 0x7FFFFFFF) + struct.pack("!I", PROTOCOL_3_0) + b"user\0")
        assert_fatal(raw.read_to_eof(), "08P01", "invalid length of startup packet")


def test_truncated_startup_then_close(hardened: ProxyProcess) -> None:
    """A startup packet announcing 9000 bytes, cut short by the client."""
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.send(struct.pack("!II", 9000, PROTOCOL_3_0) + b"user\0postgres\0")
        raw.half_close()
        assert raw.read_to_eof() == []


def test_connect_and_close_without_a_byte(hardened: ProxyProcess) -> None:
    with neighbour_survives(hardened):
        for _ in range(20):
            with RawConn(hardened.port) as raw:
                raw.half_close()
                assert raw.read_to_eof() == []


def test_unsupported_protocol_version(hardened: ProxyProcess) -> None:
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.send(StartupMessage(2 << 16, {"user": "postgres"}).encode())
        assert_fatal(raw.read_to_eof(), "0A000", "unsupported frontend protocol")


def test_startup_without_user(hardened: ProxyProcess) -> None:
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.send(StartupMessage(PROTOCOL_3_0, {"database": "postgres"}).encode())
        assert_fatal(raw.read_to_eof(), "28000", "no PostgreSQL user name")


def test_unknown_message_type_after_startup(hardened: ProxyProcess, pg: PgServer) -> None:
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.startup()
        assert errors(raw.query("SELECT 1")) == []
        raw.send(frame(b"x", b"whatever"))
        assert_fatal(raw.read_to_eof(), "08P01", "invalid frontend message type 120")
        assert backend_gone(pg, raw.app)


def test_message_larger_than_max_message_size(hardened: ProxyProcess, pg: PgServer) -> None:
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.startup()
        raw.send(b"Q" + struct.pack("!I", 2 * 1024 * 1024) + b"SELECT ")
        assert_fatal(raw.read_to_eof(), "08P01", "invalid frontend message length")
        assert backend_gone(pg, raw.app)


def test_max_message_size_limits_clients_only(hardened: ProxyProcess) -> None:
    """The upstream is trusted: a 2 MiB row passes a proxy limited to 1 MiB client messages."""
    with neighbour_survives(hardened), hardened.connect() as conn:
        row = conn.execute("SELECT repeat('r', 2 * 1024 * 1024)").fetchone()
        assert row is not None and row[0] == "r" * (2 * 1024 * 1024)
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("declared", [100, 900_000], ids=["buffered", "streamed"])
def test_truncated_message_then_close(hardened: ProxyProcess, pg: PgServer, declared: int) -> None:
    """A message cut short by the client: small ones are buffered, large ones streamed."""
    sent = b"SELECT " + b" " * min(declared - 20, 300_000)
    with neighbour_survives(hardened), RawConn(hardened.port) as raw:
        raw.startup()
        raw.send(b"Q" + struct.pack("!I", declared) + sent)
        raw.half_close()
        assert_fatal_or_clean_close(raw.read_to_eof(), "08P01")
        assert backend_gone(pg, raw.app)


# -- timeouts --------------------------------------------------------------------------


def test_startup_timeout(proxy_factory: Callable[..., ProxyProcess], pg: PgServer) -> None:
    proxy = proxy_factory(pg.upstream_url(), "--startup-timeout", "1")
    with RawConn(proxy.port) as silent, RawConn(proxy.port) as partial:
        t0 = time.monotonic()
        partial.send(struct.pack("!I", 40))  # a length, then nothing
        for raw in (silent, partial):
            assert_fatal_or_clean_close(raw.read_to_eof(timeout=4), "08006")
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0, elapsed
    with proxy.connect() as conn:  # a prompt client is unaffected
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_healthy(proxy)


def test_idle_timeout(proxy_factory: Callable[..., ProxyProcess], pg: PgServer) -> None:
    proxy = proxy_factory(pg.upstream_url(), "--idle-timeout", "1")
    with (
        proxy.connect() as idle,
        proxy.connect(autocommit=False) as in_txn,
        proxy.connect() as busy,
        RawConn(proxy.port) as raw,
    ):
        raw.startup()
        assert idle.execute("SELECT 1").fetchone() == (1,)
        assert in_txn.execute("SELECT 1").fetchone() == (1,)  # opens a transaction
        # Three idle-timer periods pass while the query runs: it must not be cut off.
        assert busy.execute("SELECT pg_sleep(3), 'done'").fetchone() == ("", "done")
        assert busy.execute("SELECT 2").fetchone() == (2,)
        assert_fatal(raw.read_to_eof(timeout=1), "57P05", "idle-session timeout")
        with pytest.raises(psycopg.errors.IdleSessionTimeout) as exc:
            idle.execute("SELECT 1")
        assert exc.value.sqlstate == "57P05"
        # Like PostgreSQL's idle_session_timeout, an open transaction is not "idle".
        assert in_txn.execute("SELECT 3").fetchone() == (3,)
        in_txn.commit()
    assert_healthy(proxy)


# -- upstream failures -------------------------------------------------------------------


def test_upstream_down(proxy_factory: Callable[..., ProxyProcess]) -> None:
    dead = make_url(LOCALHOST, free_port(), None, None, None)
    proxy = proxy_factory(dead, "--connect-timeout", "3")
    with pytest.raises(psycopg.OperationalError) as exc:
        proxy.connect(connect_timeout=5)
    assert "pgcloak could not connect to the upstream server" in str(exc.value)
    with RawConn(proxy.port) as raw:
        raw.send(StartupMessage(PROTOCOL_3_0, {"user": "postgres"}).encode())
        assert_fatal(raw.read_to_eof(), "08001", "could not connect to the upstream server")
    assert_healthy(proxy)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind((LOCALHOST, 0))
        lsock.listen(16)
        yield lsock.getsockname()[1]


def test_upstream_never_answers_tls_negotiation(
    proxy_factory: Callable[..., ProxyProcess], blackhole: int
) -> None:
    """sslmode=prefer waits for the SSLRequest answer: bounded by --connect-timeout."""
    proxy = proxy_factory(
        make_url(LOCALHOST, blackhole, None, None, None), "--connect-timeout", "1"
    )
    with RawConn(proxy.port) as raw:
        t0 = time.monotonic()
        raw.send(StartupMessage(PROTOCOL_3_0, {"user": "postgres"}).encode())
        assert_fatal(raw.read_to_eof(timeout=5), "08001", "could not connect to the upstream")
        assert time.monotonic() - t0 <= 3
    assert_healthy(proxy)


def test_upstream_never_answers_startup(
    proxy_factory: Callable[..., ProxyProcess], blackhole: int
) -> None:
    """Connected but silent during authentication: bounded by --startup-timeout."""
    url = make_url(LOCALHOST, blackhole, None, None, None, sslmode="disable")
    proxy = proxy_factory(url, "--startup-timeout", "1")
    with RawConn(proxy.port) as raw:
        t0 = time.monotonic()
        raw.send(StartupMessage(PROTOCOL_3_0, {"user": "postgres"}).encode())
        assert_fatal(raw.read_to_eof(timeout=5), "08006", "timeout expired during connection")
        assert time.monotonic() - t0 <= 3
    assert_healthy(proxy)


def test_client_leaves_while_upstream_connecting(
    proxy_factory: Callable[..., ProxyProcess], blackhole: int
) -> None:
    """Clients giving up during a slow upstream connect leave no session behind."""
    proxy = proxy_factory(
        make_url(LOCALHOST, blackhole, None, None, None), "--connect-timeout", "5"
    )
    for _ in range(5):
        with RawConn(proxy.port) as raw:
            raw.send(StartupMessage(PROTOCOL_3_0, {"user": "postgres"}).encode())
            time.sleep(0.1)
    active = ("pgcloak_client_connections_active", ())
    wait_for(lambda: metric_samples(proxy)[active] == 0, 3, "abandoned sessions to be dropped")
    assert_healthy(proxy)


def test_upstream_restart(
    proxy_factory: Callable[..., ProxyProcess], own_pg: EmbeddedPostgres
) -> None:
    proxy = proxy_factory(make_url(own_pg.host, own_pg.port, None, None, None))
    port = own_pg.port
    with proxy.connect() as old:
        assert old.execute("SELECT 1").fetchone() == (1,)
        own_pg.restart()
        assert own_pg.port == port
        with pytest.raises(psycopg.OperationalError) as exc:
            old.execute("SELECT 1")
        assert exc.value.sqlstate in ("57P01", "08006"), repr(exc.value)
    with proxy.connect() as new:
        assert new.execute("SELECT 'back'").fetchone() == ("back",)
    assert_healthy(proxy)


def test_backend_killed(
    proxy_factory: Callable[..., ProxyProcess], own_pg: EmbeddedPostgres
) -> None:
    proxy = proxy_factory(make_url(own_pg.host, own_pg.port, None, None, None))
    with proxy.connect() as victim:
        row = victim.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        os.kill(row[0], signal.SIGKILL)
        with pytest.raises(psycopg.OperationalError) as exc:
            victim.execute("SELECT 1")
        assert exc.value.sqlstate == "08006", repr(exc.value)
        assert "upstream server closed the connection" in str(exc.value)

    # The postmaster reinitialises after a backend crash; then the proxy serves again.
    def works() -> bool:
        try:
            with proxy.connect() as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_for(works, 20, "the upstream to recover from the crash")
    assert_healthy(proxy)


# -- signals ---------------------------------------------------------------------------------


def test_sigterm_drains_sessions(
    proxy_factory: Callable[..., ProxyProcess], pg: PgServer, fresh_db: str
) -> None:
    pg.execute("CREATE TABLE drain (x int)", dbname=fresh_db)
    proxy = proxy_factory(pg.upstream_url(), "--shutdown-timeout", "5")
    with (
        proxy.connect(fresh_db) as idle,
        proxy.connect(fresh_db, autocommit=False) as busy,
        RawConn(proxy.port) as raw,
    ):
        raw.startup(fresh_db)
        assert idle.execute("SELECT 1").fetchone() == (1,)
        busy.execute("INSERT INTO drain VALUES (1)")
        t0 = time.monotonic()
        proxy.send_signal(signal.SIGTERM)

        # New connections are refused promptly.
        wait_for(lambda: not port_listening(LOCALHOST, proxy.port), 2, "the listener to close")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOCALHOST, proxy.port), timeout=2).close()
        status, body = http_get(proxy.admin_url("/readyz"))
        assert (status, body) == (503, "draining\n")

        # Idle sessions are closed right away with PostgreSQL's own shutdown error.
        assert_fatal(raw.read_to_eof(timeout=2), "57P01", "administrator command")
        with pytest.raises(psycopg.errors.AdminShutdown):
            idle.execute("SELECT 1")

        # The open transaction may finish its work...
        busy.execute("INSERT INTO drain VALUES (2)")
        busy.commit()
        time.sleep(0.3)
        # ...and is closed as soon as it is idle.
        with pytest.raises(psycopg.errors.AdminShutdown):
            busy.execute("SELECT 1")
    assert proxy.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5
    assert pg.execute("SELECT x FROM drain ORDER BY x", dbname=fresh_db) == [(1,), (2,)]
    assert "Traceback" not in proxy.log_text()


def test_sigterm_closes_stuck_transaction_at_timeout(
    proxy_factory: Callable[..., ProxyProcess], pg: PgServer, fresh_db: str
) -> None:
    pg.execute("CREATE TABLE stuck (x int)", dbname=fresh_db)
    proxy = proxy_factory(pg.upstream_url(), "--shutdown-timeout", "2")
    with RawConn(proxy.port) as raw:
        raw.startup(fresh_db)
        assert errors(raw.query("BEGIN; INSERT INTO stuck VALUES (1)")) == []
        t0 = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        assert_fatal(raw.read_to_eof(timeout=6), "57P01", "administrator command")
        closed_after = time.monotonic() - t0
        assert 1.5 <= closed_after <= 4, closed_after
        assert proxy.wait(timeout=5) == 0
        assert backend_gone(pg, raw.app)
    assert pg.execute("SELECT count(*) FROM stuck", dbname=fresh_db) == [(0,)]  # rolled back
    assert "Traceback" not in proxy.log_text()


def test_sighup_reloads_config(
    proxy_factory: Callable[..., ProxyProcess], pg: PgServer, tmp_path: Path
) -> None:
    conf = tmp_path / "pgcloak.toml"
    conf.write_text('log_level = "WARNING"\n')
    proxy = proxy_factory(pg.upstream_url(), "--config", str(conf))
    with proxy.connect() as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert "client connected" not in proxy.log_text()  # DEBUG is off

        conf.write_text('log_level = "DEBUG"\n')
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in proxy.log_text(), 5, "the reload")
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == before
        with proxy.connect() as fresh:
            assert fresh.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: "client connected" in proxy.log_text(), 5, "DEBUG logging")

        # A broken file is reported and the running configuration kept.
        conf.write_text("log_level = \n")
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proxy.log_text(), 5, "the failed reload")
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == before
    assert_healthy(proxy)


# -- admin endpoints ---------------------------------------------------------------------------


def test_admin_endpoints_on_real_proxy(
    proxy_factory: Callable[..., ProxyProcess], pg: PgServer
) -> None:
    proxy = proxy_factory(pg.upstream_url())
    assert http_get(proxy.admin_url("/healthz")) == (200, "ok\n")
    assert http_get(proxy.admin_url("/readyz")) == (200, "ready\n")

    m0 = metric_samples(proxy)
    assert m0[("pgcloak_client_connections_active", ())] == 0
    to_client = ("pgcloak_bytes_total", (("direction", "to_client"),))
    from_client = ("pgcloak_bytes_total", (("direction", "from_client"),))
    with proxy.connect() as conn:
        for i in range(10):
            assert conn.execute("SELECT %s::int, repeat('y', 1000)", [i]).fetchone() == (
                i,
                "y" * 1000,
            )
        m1 = metric_samples(proxy)
        assert m1[("pgcloak_client_connections_active", ())] == 1
    assert (
        m1[("pgcloak_client_connections_total", ())]
        >= m0[("pgcloak_client_connections_total", ())] + 1
    )
    assert m1[to_client] >= m0[to_client] + 10 * 1000
    assert m1[from_client] > m0[from_client]
    assert m1[("pgcloak_queries_total", ())] >= m0[("pgcloak_queries_total", ())] + 10
    assert m1[("pgcloak_query_latency_seconds_count", ())] > 0
    assert (
        m1[("pgcloak_query_latency_seconds_bucket", (("le", "+Inf"),))]
        == m1[("pgcloak_query_latency_seconds_count", ())]
    )
    wait_for(
        lambda: metric_samples(proxy)[("pgcloak_client_connections_active", ())] == 0,
        5,
        "the active-connection gauge to drop",
    )
    assert_healthy(proxy)


def test_readyz_with_unreachable_upstream(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy = proxy_factory(make_url(LOCALHOST, free_port(), None, None, None))
    assert http_get(proxy.admin_url("/healthz")) == (200, "ok\n")
    status, body = http_get(proxy.admin_url("/readyz"))
    assert status == 503
    assert "unreachable" in body
    assert_healthy(proxy)


# -- backpressure and large messages ------------------------------------------------------------


def test_slow_reader_backpressure(proxy_factory: Callable[..., ProxyProcess], pg: PgServer) -> None:
    """A stalled client must stall PostgreSQL, not fill the proxy's memory."""
    proxy = proxy_factory(pg.upstream_url())
    rows, width = 200_000, 1000
    with RawConn(proxy.port, timeout=30, rcvbuf=64 * 1024) as raw:
        raw.startup()
        rss0 = vmrss_kib(proxy.pid)
        raw.send(
            frame(b"Q", f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})\0".encode())
        )

        def backend_blocked() -> bool:
            got = pg.execute(
                "SELECT wait_event FROM pg_stat_activity WHERE application_name = %s", [raw.app]
            )
            return got == [("ClientWrite",)]

        wait_for(backend_blocked, 10, "PostgreSQL to block writing to the stalled proxy")
        peak = rss0
        for _ in range(10):
            peak = max(peak, vmrss_kib(proxy.pid))
            time.sleep(0.1)
        assert peak - rss0 < 100 * 1024, f"proxy RSS grew by {(peak - rss0) // 1024} MiB"

        data_rows = 0
        while True:
            msg = raw.read_message()
            assert msg is not None
            if msg[0] == b"D":
                data_rows += 1
                if data_rows == 1:
                    assert msg[1][6:] == b"x" * width
            elif msg[0] == b"C":
                assert msg[1] == f"SELECT {rows}\0".encode()
            elif msg[0] == b"Z":
                break
            else:
                assert msg[0] == b"T", msg
        assert data_rows == rows
    assert_healthy(proxy)


def test_copy_with_10mb_row(proxy: ProxyProcess, pg: PgServer, fresh_db: str) -> None:
    big = os.urandom(5 * 1024 * 1024).hex()  # 10 MiB of COPY-safe text
    digest = hashlib.md5(big.encode()).hexdigest()
    pg.execute("CREATE TABLE big (id int, x text)", dbname=fresh_db)

    # COPY FROM STDIN as one 10 MiB CopyData message, byte for byte.
    with RawConn(proxy.port, timeout=30) as raw:
        raw.startup(fresh_db)
        raw.send(frame(b"Q", b"COPY big (id, x) FROM STDIN\0"))
        assert raw.read_until(b"G", b"E")[-1][0] == b"G"
        raw.send(frame(b"d", b"1\t" + big.encode() + b"\n") + frame(b"c", b""))
        msgs = raw.read_until(b"Z")
        assert errors(msgs) == []
        assert (b"C", b"COPY 1\0") in msgs

    # And through a real client, both directions.
    with proxy.connect(fresh_db) as conn:
        with conn.cursor().copy("COPY big (id, x) FROM STDIN") as copy:
            copy.write_row((2, big))
        with conn.cursor().copy("COPY (SELECT x FROM big WHERE id = 1) TO STDOUT") as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
        assert out == big.encode() + b"\n"
        echoed = conn.execute("SELECT %s::text", [big]).fetchone()
        assert echoed is not None and echoed[0] == big

    assert pg.execute("SELECT id, md5(x), length(x) FROM big ORDER BY id", dbname=fresh_db) == [
        (1, digest, len(big)),
        (2, digest, len(big)),
    ]
    assert_healthy(proxy)
