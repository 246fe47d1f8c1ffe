"""Shared test plumbing: PostgreSQL server handles, proxy subprocesses, ports.

Import from test modules as `from helpers import ...` (pytest puts tests/ on
sys.path because tests/ has no __init__.py). The fixtures in conftest.py hand
out the classes defined here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from pgcloak.embedded import EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
PROXY_START_TIMEOUT = 15.0


# -- ports -------------------------------------------------------------------


def free_ports(n: int, host: str = LOCALHOST) -> list[int]:
    """`n` distinct TCP ports that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOCALHOST) -> int:
    """One TCP port that was free a moment ago."""
    return free_ports(1, host)[0]


def _proc_net_addr(host: str) -> tuple[str, str] | None:
    """`host` as it appears in /proc/net/tcp{,6} (native-endian hex words)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return "tcp", f"{struct.unpack('=I', packed)[0]:08X}"
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    return "tcp6", "".join(f"{w:08X}" for w in struct.unpack("=4I", packed))


def port_listening(host: str, port: int) -> bool:
    """True when something LISTENs on host:port.

    Reads /proc/net/tcp where available so the probe does not open a
    connection: a probe connection would show up in the proxy's metrics and
    logs and skew tests that count connections. Falls back to connect().
    """
    mine = _proc_net_addr(host)
    wildcard = _proc_net_addr("::" if ":" in host else "0.0.0.0")
    if mine is not None and wildcard is not None and Path("/proc/net/tcp").exists():
        wanted = {(mine[0], mine[1]), (wildcard[0], wildcard[1])}
        if mine[0] == "tcp":  # a dual-stack [::] listener also serves IPv4
            wanted.add(("tcp6", "0" * 32))
        suffix = f":{port:04X}"
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                    cols = line.split()
                    local, state = cols[1], cols[3]
                    if (
                        state == "0A"
                        and local.endswith(suffix)
                        and (table, local[: -len(suffix)]) in wanted
                    ):
                        return True
        return False
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until host:port is listening; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not port_listening(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
        time.sleep(0.05)


# -- PostgreSQL servers ---------------------------------------------------------


def _libpq_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "_.-/:@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_dsn(host: str, port: int, dbname: str, user: str, **kw: Any) -> str:
    """libpq keyword/value string; None-valued keywords are dropped."""
    parts: dict[str, Any] = {"host": host, "port": port, "dbname": dbname, "user": user, **kw}
    return " ".join(f"{k}={_libpq_quote(str(v))}" for k, v in parts.items() if v is not None)


def make_url(
    host: str, port: int, dbname: str | None, user: str | None, password: str | None, **params: Any
) -> str:
    """postgresql:// URL; None-valued parts are left out."""
    auth = ""
    if user is not None:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        auth += "@"
    netloc = f"[{host}]" if ":" in host else host
    path = f"/{quote(dbname, safe='')}" if dbname is not None else ""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"postgresql://{auth}{netloc}:{port}{path}" + (f"?{query}" if query else "")


class Endpoint:
    """Address helpers shared by the servers and proxies tests connect to."""

    host: str
    port: int

    def dsn(self, dbname: str = "postgres", user: str = "postgres", **kw: Any) -> str:
        return make_dsn(self.host, self.port, dbname, user, **kw)

    def url(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        **params: Any,
    ) -> str:
        return make_url(self.host, self.port, dbname, user, password, **params)

    def connect(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        autocommit: bool = True,
        **kw: Any,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A psycopg connection here (autocommit by default); use as a context manager."""
        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname, user, **kw), autocommit=autocommit)


@dataclass
class PgServer(Endpoint):
    """A PostgreSQL server the tests talk to directly (bypassing the proxy).

    `embedded` is set when the suite started the server itself. `ca_path`
    is the CA that signed the server certificate (for sslmode=verify-full),
    `passwords` maps role name -> password for the roles a fixture created.
    """

    host: str
    port: int
    log_path: Path | None = None
    embedded: EmbeddedPostgres | None = None
    ca_path: Path | None = None
    passwords: dict[str, str] = field(default_factory=dict)

    def upstream_url(self, dbname: str | None = None, **params: Any) -> str:
        """URL for `pgcloak serve --upstream` (no user: clients authenticate as themselves)."""
        return make_url(self.host, self.port, dbname, None, None, **params)

    def execute(
        self,
        query: str | sql.Composable,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; returns its rows ([] if none)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        name = name or f"pgcloak_t_{uuid.uuid4().hex[:8]}"
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        self.execute(stmt)
        return name

    def drop_database(self, name: str) -> None:
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def log_size(self) -> int:
        """Current size of the server log, to pass to `log_since` later (0 if unknown)."""
        if self.log_path is None:
            return 0
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """Server log text appended after `offset` ('' if the log is unknown/unreadable)."""
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def pg_reachable(host: str, port: int, timeout: int = 2) -> bool:
    """Whether host:port accepts postgres@postgres (libpq rounds timeouts below 2 s up)."""
    try:
        with psycopg.connect(
            make_dsn(host, port, "postgres", "postgres"), connect_timeout=timeout
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def embedded_server(pg: EmbeddedPostgres) -> PgServer:
    return PgServer(pg.host, pg.port, log_path=pg.log_path, embedded=pg, ca_path=pg.ca_path)


# -- proxy subprocesses ---------------------------------------------------------


class ProxyProcess(Endpoint):
    """A `python -m pgcloak serve` subprocess listening on 127.0.0.1:`port`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        port: int,
        admin_port: int | None,
        upstream_url: str,
        log_path: Path,
        argv: list[str],
    ) -> None:
        self.popen = popen
        self.host = LOCALHOST
        self.port = port
        self.admin_port = admin_port
        self.upstream_url = upstream_url
        self.log_path = log_path
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def admin_url(self, path: str = "/metrics") -> str:
        if self.admin_port is None:
            raise RuntimeError("this proxy was started without an admin listener")
        return f"http://{self.host}:{self.admin_port}{path}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} port={self.port} admin_port={self.admin_port}>"


def proxy_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus PGCLOAK_* (hermetic), plus `env`, plus our repo on path."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("PGCLOAK_")}
    path = out.get("PYTHONPATH")
    out["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    out["PYTHONUNBUFFERED"] = "1"
    if env:
        out.update(env)
    return out


class ProxyLauncher:
    """Starts proxies, remembers them, stops them all in `close()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[ProxyProcess] = []

    def start(
        self,
        upstream_url: str,
        *extra_args: str,
        env: Mapping[str, str] | None = None,
        admin: bool = True,
        wait: bool = True,
        timeout: float = PROXY_START_TIMEOUT,
    ) -> ProxyProcess:
        port, admin_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "pgcloak",
            "serve",
            "--listen",
            f"{LOCALHOST}:{port}",
            "--admin",
            f"{LOCALHOST}:{admin_port}" if admin else "off",
            "--upstream",
            upstream_url,
            *extra_args,
        ]
        log_path = self.log_dir / f"proxy-{len(self.procs)}-{port}.log"
        with log_path.open("wb") as logf:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=proxy_env(env),
                cwd=REPO_ROOT,
            )
        proc = ProxyProcess(
            popen,
            port=port,
            admin_port=admin_port if admin else None,
            upstream_url=upstream_url,
            log_path=log_path,
            argv=argv,
        )
        self.procs.append(proc)
        if wait:
            self._wait_ready(proc, timeout)
        return proc

    @staticmethod
    def _wait_ready(proc: ProxyProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ports = [proc.port] + ([proc.admin_port] if proc.admin_port is not None else [])
        while not all(port_listening(proc.host, p) for p in ports):
            code = proc.popen.poll()
            if code is not None:
                raise RuntimeError(
                    f"proxy exited with code {code} before listening; log:\n{proc.log_text()}"
                )
            if time.monotonic() > deadline:
                proc.stop(timeout=5)
                raise TimeoutError(
                    f"proxy not listening on {proc.host}:{proc.port} after {timeout}s; "
                    f"log:\n{proc.log_text()}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


class Sink:
    """A relay's transport: records every write, nothing else (a byte sink, not a server)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)
