"""`pgcloak demo`: a proxy you can point psql at within seconds.

Without an upstream URL it starts a throwaway PostgreSQL cluster with a small
sample database, so trying pgcloak needs nothing but the PostgreSQL server
binaries. The sample is cloaked and two of its columns are encrypted
(`DEMO_ENCRYPT`); it is loaded through pgcloak itself, since only the proxy can
encrypt. Everything it starts is torn down on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from urllib.parse import unquote, urlsplit

from pgcloak.config import Config, Upstream
from pgcloak.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port
from pgcloak.proxy import server
from pgcloak.settings import parse_upstream_url

__all__ = ["DEMO_DB", "DEMO_ENCRYPT", "SAMPLE_SQL", "run_demo"]

DEMO_DB = "demo"
DEMO_USER = "postgres"

SAMPLE_SQL = """
CREATE TABLE customers (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    full_name  text NOT NULL,
    email      text NOT NULL UNIQUE,
    country    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    amount      numeric(10, 2) NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (full_name, email, country) VALUES
    ('Ada Lovelace', 'ada@example.com', 'GB'),
    ('Grace Hopper', 'grace@example.com', 'US'),
    ('Edsger Dijkstra', 'edsger@example.com', 'NL'),
    ('Barbara Liskov', 'barbara@example.com', 'US');
INSERT INTO orders (customer_id, amount) VALUES
    (1, 42.00), (1, 13.37), (2, 99.95), (3, 7.50), (4, 250.00);
"""

# The demo's [encrypt] rules: equality lookups and UNIQUE keep working on email.
DEMO_ENCRYPT: tuple[tuple[str, str, str | None], ...] = (
    ("public.customers.email", "deterministic", None),
    ("public.customers.full_name", "randomized", None),
)

_WILDCARDS = {"", "0.0.0.0", "::", "*"}
_SIGTERM_EXIT = 128 + signal.SIGTERM
_SIGINT_EXIT = 128 + signal.SIGINT


class _Terminated(Exception):
    """SIGTERM arrived before the proxy installed its own handlers."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    # Until the proxy's loop takes over SIGTERM, the default action would kill us
    # without running the cleanup that stops the embedded cluster.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Shield cleanup from an impatient second Ctrl-C, which would orphan the cluster."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _client_host(listen_host: str) -> str:
    if listen_host in _WILDCARDS:
        return "::1" if listen_host == "::" else "127.0.0.1"
    return listen_host


def _psql_command(host: str, port: int, dbname: str | None, user: str | None) -> str:
    parts = [f"host={host}", f"port={port}"]
    if dbname:
        parts.append(f"dbname={dbname}")
    if user:
        parts.append(f"user={user}")
    return f'psql "{" ".join(parts)}"'


def _url_user(url: str) -> str | None:
    """The user named in an upstream URL, only to print a ready-to-paste psql command."""
    try:
        user = urlsplit(url).username
    except ValueError:
        return None
    return unquote(user) if user else None


def _serve(config: Config, dbname: str | None, user: str | None) -> int:
    print("pgcloak demo is running.")
    print("Connect with:")
    print(
        f"    {_psql_command(_client_host(config.listen_host), config.listen_port, dbname, user)}"
    )
    if config.admin_host is not None:
        print(f"Metrics: http://{_client_host(config.admin_host)}:{config.admin_port}/metrics")
    print("Press Ctrl-C to stop.", flush=True)
    return server.run(config)


def _config(
    listen_host: str,
    listen_port: int,
    admin_host: str | None,
    admin_port: int,
    upstream: Upstream,
) -> Config:
    # Port 0 would leave us unable to print the connect command, so pick one now.
    if listen_port == 0:
        listen_port = free_port(_client_host(listen_host))
    if admin_host is not None and admin_port == 0:
        admin_port = free_port(_client_host(admin_host))
    return Config(
        listen_host=listen_host,
        listen_port=listen_port,
        upstream=upstream,
        admin_host=admin_host,
        admin_port=admin_port,
        shutdown_timeout=5.0,  # a demo should stop promptly on Ctrl-C
    )


def _install_registry(host: str, port: int) -> None:
    """Install the registry under the demo's master key (a fresh one unless set)."""
    import psycopg

    from pgcloak.crypto.keys import MASTER_KEY_ENV, MasterKey, new_master_key
    from pgcloak.registry.install import install

    key = os.environ.get(MASTER_KEY_ENV) or new_master_key()
    os.environ[MASTER_KEY_ENV] = key  # the in-process proxy reads it from here
    dsn = f"host={host} port={port} dbname={DEMO_DB} user={DEMO_USER}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        install(conn, MasterKey.from_base64(key))


async def _load_through_proxy(config: Config) -> None:
    """Create the sample through a private pgcloak instance, so it is cloaked and encrypted."""
    import psycopg

    private = dataclasses.replace(config, listen_host="127.0.0.1", listen_port=0, admin_host=None)
    proxy = server.Proxy(private)
    await proxy.start()
    try:
        dsn = f"host=127.0.0.1 port={proxy.port} dbname={DEMO_DB} user={DEMO_USER}"
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        async with conn:
            await conn.execute(SAMPLE_SQL.encode())  # no parameters: one simple Query
    finally:
        proxy.request_shutdown()
        await proxy.wait_closed()


def _run_embedded(
    listen_host: str,
    listen_port: int,
    admin_host: str | None,
    admin_port: int,
    keep_data: bool,
) -> int:
    pg = EmbeddedPostgres(keep=keep_data)
    try:
        print("Starting a throwaway PostgreSQL cluster...", flush=True)
        pg.start()
        pg.psql(f"CREATE DATABASE {DEMO_DB}")
        _install_registry(pg.host, pg.port)
        upstream = Upstream(host=pg.host, port=pg.port, dbname=DEMO_DB, sslmode="disable")
        config = dataclasses.replace(
            _config(listen_host, listen_port, admin_host, admin_port, upstream),
            cloak="on",
            encrypt=DEMO_ENCRYPT,
        )
        asyncio.run(_load_through_proxy(config))
        direct = _psql_command(pg.host, pg.port, DEMO_DB, DEMO_USER)
        print(f"PostgreSQL is up on {pg.host}:{pg.port} (data in {pg.data_dir}).")
        print("The sample schema is cloaked: through pgcloak you see customers/orders;")
        print("the database itself only holds opaque names. Look for yourself:")
        print(f"    {direct} -c '\\d'")
        print("customers.email (deterministic) and customers.full_name (randomized) are")
        print("stored encrypted: through pgcloak, `SELECT * FROM customers WHERE email =")
        print("'ada@example.com'` works; the database holds only bytea ciphertext.")
        return _serve(config, DEMO_DB, DEMO_USER)
    finally:
        with _signals_ignored():
            kept = pg.base_dir if keep_data and pg.running else None
            pg.stop()
        if kept is not None:
            print(f"Cluster files kept in {kept}")
        print("Demo stopped.", flush=True)


def _run_upstream(
    listen_host: str,
    listen_port: int,
    admin_host: str | None,
    admin_port: int,
    url: str,
) -> int:
    try:
        upstream = parse_upstream_url(url)
    except ValueError as exc:
        print(f"pgcloak demo: invalid upstream URL: {exc}", file=sys.stderr)
        return 2
    if not asyncio.run(server.upstream_reachable(upstream, 3.0)):
        print(
            f"warning: upstream {upstream.host}:{upstream.port} is not reachable yet; "
            "serving anyway",
            file=sys.stderr,
        )
    config = _config(listen_host, listen_port, admin_host, admin_port, upstream)
    return _serve(config, upstream.dbname, _url_user(url))


def run_demo(  # noqa: PLR0917 - positional signature is what the CLI calls
    listen_host: str,
    listen_port: int,
    admin_host: str | None,
    admin_port: int,
    upstream: str | None,
    keep_data: bool = False,
) -> int:
    """Serve a proxy in front of `upstream`, or of a fresh sample cluster when it is None.

    Blocks until SIGINT/SIGTERM and returns the process exit code. `keep_data`
    keeps the embedded cluster's files (not the running server) for inspection.
    """
    try:
        with _sigterm_raises():
            if upstream is None:
                return _run_embedded(listen_host, listen_port, admin_host, admin_port, keep_data)
            return _run_upstream(listen_host, listen_port, admin_host, admin_port, upstream)
    except EmbeddedPostgresError as exc:
        print(f"pgcloak demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _SIGINT_EXIT
    except _Terminated:
        return _SIGTERM_EXIT
