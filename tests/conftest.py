"""Fixtures shared by the whole suite: real PostgreSQL servers and proxy subprocesses.

Server selection for `pg` (the main upstream):
  * PGCLOAK_TEST_EMBEDDED=1        -> always a throwaway EmbeddedPostgres
  * PGCLOAK_TEST_PG=host:port      -> that server (must be reachable, trust auth as postgres)
  * otherwise 127.0.0.1:5432 when it answers, else a throwaway EmbeddedPostgres.
See tests/helpers.py for the PgServer / ProxyProcess APIs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    LOCALHOST,
    PgServer,
    ProxyLauncher,
    ProxyProcess,
    embedded_server,
    pg_reachable,
)

from pgcloak.embedded import EmbeddedPostgres

DEFAULT_PG = (LOCALHOST, 5432)

AUTH_USERS = {
    "scram_user": "scram-sha-256",
    "md5_user": "md5",
    "clear_user": "password",
}
AUTH_HBA = [
    "local all all trust",
    "host all scram_user 127.0.0.1/32 scram-sha-256",
    "host all md5_user 127.0.0.1/32 md5",
    "host all clear_user 127.0.0.1/32 password",
    "host all all 127.0.0.1/32 trust",
]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _running_server_log(host: str, port: int) -> Path | None:
    """Best guess at a pre-existing server's log file (None if unknown or unreadable)."""
    server = PgServer(host, port)
    try:
        (current, datadir, version) = server.execute(
            "SELECT pg_current_logfile(), current_setting('data_directory'),"
            " current_setting('server_version_num')::int / 10000"
        )[0]
    except psycopg.Error:  # e.g. not allowed to read settings: just no log
        return None
    candidates: list[Path] = []
    if current:
        candidates.append(Path(datadir, current))
    if host in (LOCALHOST, "localhost"):
        # Debian/Ubuntu packaged clusters log stderr here (logging_collector off).
        candidates.append(Path(f"/var/log/postgresql/postgresql-{version}-main.log"))
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def _start_embedded(**kwargs: Any) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(**kwargs)
    pg.start()
    return pg


# -- PostgreSQL servers -----------------------------------------------------------


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The main upstream: a running server if available, else a session-wide embedded one."""
    target = os.environ.get("PGCLOAK_TEST_PG")
    if not _truthy(os.environ.get("PGCLOAK_TEST_EMBEDDED")):
        if target:
            host, _, port_text = target.rpartition(":")
            host, port = host.strip("[]") or LOCALHOST, int(port_text)
            if not pg_reachable(host, port):
                pytest.exit(f"PGCLOAK_TEST_PG={target} is not reachable as postgres", 2)
            yield PgServer(host, port, log_path=_running_server_log(host, port))
            return
        if pg_reachable(*DEFAULT_PG):
            yield PgServer(*DEFAULT_PG, log_path=_running_server_log(*DEFAULT_PG))
            return
    embedded = _start_embedded()
    try:
        embedded.psql("CREATE DATABASE test")  # parity with the shared dev server
        yield embedded_server(embedded)
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def pg_auth() -> Iterator[PgServer]:
    """Embedded server with TLS and password auth: scram_user, md5_user, clear_user.

    Passwords are 'secret-<role>' (also in `.passwords`); database `authdb`
    exists and its public schema is usable by all three roles. The server
    certificate is for 127.0.0.1 and localhost, signed by `.ca_path`.
    """
    embedded = _start_embedded(ssl=True, hba=AUTH_HBA)
    try:
        passwords = {role: f"secret-{role}" for role in AUTH_USERS}
        stmts = []
        for role, method in AUTH_USERS.items():
            encryption = "md5" if method == "md5" else "scram-sha-256"
            stmts.append(f"SET password_encryption = '{encryption}';")
            stmts.append(f"CREATE ROLE {role} LOGIN PASSWORD '{passwords[role]}';")
        stmts.append("CREATE DATABASE authdb;")
        embedded.psql("\n".join(stmts))
        embedded.psql(f"GRANT ALL ON SCHEMA public TO {', '.join(AUTH_USERS)};", dbname="authdb")
        server = embedded_server(embedded)
        server.passwords = passwords
        yield server
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def pg_logged() -> Iterator[PgServer]:
    """Embedded server with log_statement='all': check what actually reached PostgreSQL."""
    embedded = _start_embedded(log_statement="all")
    try:
        yield embedded_server(embedded)
    finally:
        embedded.stop()


@pytest.fixture
def db_factory(pg: PgServer) -> Iterator[Callable[..., str]]:
    """`make(server=pg, template=None) -> dbname`: fresh databases, force-dropped afterwards."""
    created: list[tuple[PgServer, str]] = []

    def make(server: PgServer | None = None, template: str | None = None) -> str:
        server = server or pg
        name = server.create_database(template=template)
        created.append((server, name))
        return name

    yield make
    for server, name in reversed(created):
        server.drop_database(name)


@pytest.fixture
def fresh_db(db_factory: Callable[..., str]) -> str:
    """Name of a new, empty database on `pg` (pgcloak_t_<hex8>), dropped after the test."""
    return db_factory()


# -- proxies ------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome so teardown can dump proxy logs for failed tests.
    report = yield
    setattr(item, f"_pgcloak_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_pgcloak_rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def proxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ProxyProcess]]:
    """`start(upstream_url, *extra_args, env=None, admin=True, wait=True) -> ProxyProcess`.

    Runs `python -m pgcloak serve --listen 127.0.0.1:<free> --admin 127.0.0.1:<free>
    --upstream URL *extra_args`, logging to a file, and waits (15 s) until it listens.
    All proxies are stopped at teardown; their logs are printed if the test failed.
    """
    launcher = ProxyLauncher(tmp_path)
    yield launcher.start
    launcher.close()
    if _failed(request):
        for proc in launcher.procs:
            sys.stderr.write(f"--- {proc!r} exit={proc.returncode} log ---\n{proc.log_text()}\n")


@pytest.fixture(scope="session")
def proxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy in front of `pg` for the whole session (don't stop or signal it)."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("proxy"))
    proc = launcher.start(pg.upstream_url())
    yield proc
    launcher.close()


@pytest.fixture(scope="module")
def launcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyLauncher]:
    """Module-wide proxies (each start costs ~1 s), stopped after the module."""
    launch = ProxyLauncher(tmp_path_factory.mktemp(f"{request.module.__name__}-proxies"))
    yield launch
    launch.close()


@pytest.fixture
def dump_launcher_logs(request: pytest.FixtureRequest, launcher: ProxyLauncher) -> Iterator[None]:
    """Print the module proxies' logs after a failed test (opt in with usefixtures)."""
    yield
    if _failed(request):
        for proc in launcher.procs:
            print(f"--- {proc!r} exit={proc.returncode} log ---\n{proc.log_text()[-20000:]}")


# -- cloaking -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def master_key() -> str:
    """A fresh base64 master key for the whole test session."""
    from pgcloak.crypto.keys import new_master_key

    return new_master_key()


@pytest.fixture(scope="session")
def cloak_proxy(
    pg: PgServer, master_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """One cloaking proxy in front of `pg` for the session (databases need `cloaked_db`)."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("cloak-proxy"))
    proc = launcher.start(pg.upstream_url(), env={"PGCLOAK_MASTER_KEY": master_key})
    yield proc
    launcher.close()
    if proc.returncode not in (None, 0):
        sys.stderr.write(proc.log_text()[-20000:])


@pytest.fixture
def cloaked_db_factory(
    pg: PgServer, db_factory: Callable[..., str], master_key: str
) -> Callable[..., str]:
    """`make(server=pg) -> dbname`: a fresh database with the pgcloak registry installed."""
    from pgcloak.crypto.keys import MasterKey
    from pgcloak.registry.install import install

    def make(server: PgServer | None = None) -> str:
        server = server or pg
        name = db_factory(server)
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            install(conn, MasterKey.from_base64(master_key))
        return name

    return make


@pytest.fixture
def cloaked_db(cloaked_db_factory: Callable[..., str]) -> str:
    """A fresh database with the registry installed, for use through `cloak_proxy`."""
    return cloaked_db_factory()
