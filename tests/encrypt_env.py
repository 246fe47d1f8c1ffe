"""The encrypted side of the proxy tests: config rules, upstream, proxy, databases.

`env` (module scope) starts an embedded PostgreSQL that logs every statement and
preloads pg_stat_statements, a cloaking proxy in front of it with `RULES` as its
`[encrypt]` config, a plain database on `pg` and an encrypted one on the embedded
server, and creates the type-matrix tables `m_det`/`m_rnd` on both sides. Test
modules load it with `pytest_plugins = ("encrypt_env",)` (fixtures `env`, `pair`,
`shop`: the customers/orders/contacts/strangers tables on both sides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from encrypt_support import (
    DET,
    MARK_DATE,
    MARK_TEXT,
    MODES,
    RND,
    SHORT,
    TYPES,
    Pair,
    config_toml,
    matrix_ddl,
    physical_names,
)
from helpers import PgServer, ProxyLauncher, ProxyProcess, embedded_server

from pgcloak.crypto.keys import MasterKey
from pgcloak.embedded import EmbeddedPostgres
from pgcloak.registry.install import install

RULES: dict[str, str | tuple[str, str]] = {
    **{f"m_{SHORT[m]}.{t.col}": m for m in MODES for t in TYPES},
    **{f"as_{SHORT[m]}.{t.col}": m for m in MODES for t in TYPES},
    "customers.email": (DET, "people"),
    "customers.name": RND,
    "customers.born": DET,
    "customers.score": RND,
    "customers.tier": DET,
    "orders.email": DET,  # REFERENCES customers(email): joins its scope
    "orders.amount": RND,
    "contacts.email": (DET, "people"),
    "contacts.phone": DET,
    "strangers.email": DET,  # same type as customers.email, its own key
    "members.email": DET,
    "members.name": RND,
    "sess.tz": DET,
    "sess.d": RND,
    "sess.ts": DET,
    "sess.iv": RND,
    "sess.f8": DET,
    "sess.r4": RND,
    "sess.by": DET,
    "sess2.tz": DET,
    "sess2.d": RND,
    "leaky.t": DET,
    "leaky.n": DET,
    "leaky.d": RND,
    "leaky.nu": DET,
    "leaky.j": RND,
    "leaky.ta": RND,
    "tamper_a.x": DET,
    "tamper_a.y": DET,
    "tamper_a.z": RND,
    "tamper_a.w": RND,
    "tamper_b.x": DET,
    "leak2.x": DET,
    "leak2.r": RND,
    "psqlt.a": DET,
    "psqlt.b": RND,
    "psqlt.c": DET,
    "pipe.v": DET,
    "pipe.n": RND,
    "sa_authors.email": DET,
    "sa_authors.bio": RND,
    "sa_authors.born": DET,
    "sa_authors.rating": RND,
    "sa_books.author_email": DET,
    "sa_books.title": RND,
    **{
        f"exp_people.{c}": m
        for c, m in (
            ("name", RND),
            ("born", DET),
            ("score", RND),
            ("n", DET),
            ("big", DET),
            ("ok", DET),
            ("at", DET),
            ("ref", DET),
            ("code", DET),
            ("dec", DET),
        )
    },
    "exp_people.email": (DET, "exp"),
    "exp_visits.email": (DET, "exp"),  # joins exp_people.email (one key)
    "exp_visits.at": RND,
    "exp_visits.qty": DET,
    **{f"sb_authors.{c}": m for c, m in (("email", DET), ("bio", RND), ("born", DET))},
    **{f"sb_books.{c}": m for c, m in (("author_email", DET), ("title", RND), ("pages", DET))},
}


@dataclass
class Env:
    """Plain database A on `pg`; encrypted database B behind `proxy` on `upstream`."""

    plain_server: PgServer
    upstream: PgServer
    proxy: ProxyProcess
    plain: str
    enc: str
    master_key: str
    log_offset: int

    def pair(self) -> Pair:
        a = psycopg.connect(self.plain_server.dsn(self.plain), autocommit=True)
        b = psycopg.connect(self.proxy.dsn(self.enc), autocommit=True)
        return Pair(a, b)

    def direct(self) -> psycopg.Connection[Any]:
        """A connection straight to the encrypted database's upstream (the DBA's view)."""
        return psycopg.connect(self.upstream.dsn(self.enc), autocommit=True)

    def physical(self, table: str, *columns: str) -> tuple[str, ...]:
        with self.direct() as conn:
            return physical_names(conn, self.master_key, table, *columns)

    def upstream_rows(self, *tables: str) -> list[list[tuple[Any, ...]]]:
        """Every row of the tables as stored upstream (ciphertext), to compare snapshots."""
        out = []
        with self.direct() as conn:
            for table in tables:
                phys = self.physical(table)[0]
                out.append(conn.execute(f"SELECT * FROM {phys} ORDER BY 1").fetchall())
        return out


@pytest.fixture(scope="module")
def env(
    pg: PgServer, master_key: str, launcher: ProxyLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """Its own upstream (statement log, pg_stat_statements) so the leak scans see only this
    module's statements; the databases and the server go away with the module."""
    embedded = EmbeddedPostgres(
        log_statement="all", extra_conf={"shared_preload_libraries": "pg_stat_statements"}
    )
    embedded.start()
    plain: str | None = None
    try:
        upstream = embedded_server(embedded)
        plain = pg.create_database()
        enc = upstream.create_database()
        with psycopg.connect(upstream.dsn(enc), autocommit=True) as conn:
            install(conn, MasterKey.from_base64(master_key))
            conn.execute("CREATE EXTENSION pg_stat_statements")
        config = tmp_path_factory.mktemp("encrypt") / "pgcloak.toml"
        config.write_text(config_toml(RULES))
        proxy = launcher.start(
            upstream.upstream_url(), "--config", str(config),
            env={"PGCLOAK_MASTER_KEY": master_key},
        )  # fmt: skip
        e = Env(pg, upstream, proxy, plain, enc, master_key, upstream.log_size())
        pair = e.pair()
        try:
            pair.setup(matrix_ddl("m_det"), matrix_ddl("m_rnd"))
        finally:
            pair.close()
        yield e
    finally:
        if plain is not None:
            pg.drop_database(plain)
        embedded.stop()


@pytest.fixture
def pair(env: Env) -> Iterator[Pair]:
    p = env.pair()
    yield p
    p.close()


SHOP_DDL = (
    "CREATE TABLE customers (id int PRIMARY KEY, email varchar(40) NOT NULL UNIQUE, name text, "
    "born date, score numeric(5,2), tier char(3), note text)",
    "CREATE TABLE orders (id int PRIMARY KEY, email varchar(40) REFERENCES customers (email), "
    "amount numeric(8,2), qty int)",
    "CREATE TABLE contacts (id int PRIMARY KEY, email varchar(40), phone text)",
    "CREATE TABLE strangers (id int PRIMARY KEY, email varchar(40))",
    "INSERT INTO customers VALUES (1, 'ann@example.com', 'Ann', '1990-05-05', 12.5, 'vip', 'a'), "
    "(2, 'bob@example.com', 'Bob', NULL, 3, 'std', 'b'), "
    "(3, 'cy@example.com', NULL, '1990-05-05', NULL, 'vip', NULL), "
    f"(4, '{MARK_TEXT}@example.com', 'Marker', '{MARK_DATE}', 99.99, NULL, 'd')",
    "INSERT INTO orders VALUES (10, 'ann@example.com', 5.25, 1), (11, 'ann@example.com', 7, 2), "
    "(12, 'bob@example.com', NULL, 3), (13, NULL, 1, 4)",
    "INSERT INTO contacts VALUES (20, 'ann@example.com', '555-1'), (21, 'zed@example.com', NULL), "
    "(22, NULL, '555-3'), (23, 'bob@example.com', '555-1')",
    "INSERT INTO strangers VALUES (30, 'ann@example.com')",
)


@pytest.fixture(scope="module")
def shop(env: Env) -> None:
    pair = env.pair()
    try:
        pair.setup(*SHOP_DDL)
    finally:
        pair.close()
