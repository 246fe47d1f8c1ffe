"""The environment of tests/test_encrypt_adversarial*.py (a pytest plugin module).

`adv` (module scope): an embedded PostgreSQL logging every statement, a registry, an
encrypting proxy with `RULES`, and the `SETUP` tables: `t`/`u` for the probes, `c`
(encrypted) and `pc` (plain) with the same rows, `w` (encrypted) and `pw` (plain) with
one column of each type for casts and settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from encrypt_support import DET, RND, config_toml
from helpers import PgServer, ProxyLauncher, ProxyProcess, embedded_server

from pgcloak.crypto.keys import MasterKey
from pgcloak.embedded import EmbeddedPostgres
from pgcloak.registry.install import install

RULES: dict[str, str | tuple[str, str]] = {
    **{f"t.{c}": m for c, m in (("e", DET), ("r", RND), ("n", DET), ("e2", DET))},
    **{f"t.{c}": m for c, m in (("x1", DET), ("x2", RND), ("x3", DET))},
    **{f"c.{c}": m for c, m in (("e", DET), ("r", RND), ("n", DET), ("e2", DET))},
    "u.e": DET,
    "u.r": RND,
    "d1.e": DET,
    "adv_g.e": DET,
    "adv_g2.e": DET,
    **{
        f"w.{c}": DET
        for c in ("vc", "nm", "r4", "f8", "i4", "d", "ch", "tx", "tm", "ia", "tz", "iv")
    },
}
TWIN_COLUMNS = (
    "id int PRIMARY KEY, vc varchar(5), nm numeric(6,2), r4 real, f8 float8, i4 int, d date, "
    "ch char(5), tx text, tm time(0), ia int[], tz timestamptz, iv interval"
)
TWIN_ROW = (
    "(1, 'abcde', 1.00, 0.1, 0.1, 2, '2020-01-01', 'abc', 'abc', '10:00:00', '{1,2}', "
    "'2020-01-01 10:00:00+00', '1 day 02:00')"
)
SETUP = (
    "CREATE TABLE t (id int PRIMARY KEY, e text UNIQUE, r text, n int, e2 text, p text)",
    "CREATE TABLE u (id int PRIMARY KEY, e text, r text)",
    "INSERT INTO t VALUES (1, 'a', 'ra', 1, 'a', 'pa'), (2, 'b', 'rb', 2, 'b', 'pb'), "
    "(3, NULL, NULL, NULL, NULL, NULL)",
    "INSERT INTO u VALUES (1, 'a', 'ra')",
    "ALTER TABLE t ADD COLUMN x1 text",
    "ALTER TABLE t ADD COLUMN x2 int",
    "CREATE VIEW adv_all AS SELECT id, e, r FROM t",
    "CREATE VIEW adv_all_e2 AS SELECT id, e2 FROM t",
    *(
        f"CREATE TABLE {name} (id int PRIMARY KEY, e text, r text, n int, e2 text, p text)"
        for name in ("c", "pc")
    ),
    *(
        f"INSERT INTO {name} VALUES (1, 'a', 'ra', 1, 'a', 'p'), (2, 'b', 'rb', 2, 'b', 'p'), "
        "(3, 'a', 'ra', 1, 'x', 'p'), (4, NULL, NULL, NULL, NULL, NULL), "
        "(5, 'it''s', 'r', -1, 'a', 'q')"
        for name in ("c", "pc")
    ),
    f"CREATE TABLE w ({TWIN_COLUMNS})",
    f"CREATE TABLE pw ({TWIN_COLUMNS})",
    f"INSERT INTO w VALUES {TWIN_ROW}",
    f"INSERT INTO pw VALUES {TWIN_ROW}",
)


@dataclass
class Adv:
    proxy: ProxyProcess
    upstream: PgServer
    db: str
    log_offset: int

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.proxy.dsn(self.db), autocommit=True)


@pytest.fixture(scope="module")
def adv(
    master_key: str, launcher: ProxyLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Adv]:
    """A statement-logging upstream of its own (its log holds only these probes)."""
    embedded = EmbeddedPostgres(log_statement="all")
    embedded.start()
    try:
        upstream = embedded_server(embedded)
        db = upstream.create_database()
        with psycopg.connect(upstream.dsn(db), autocommit=True) as conn:
            install(conn, MasterKey.from_base64(master_key))
        config = tmp_path_factory.mktemp("adversarial") / "pgcloak.toml"
        config.write_text(config_toml(RULES))
        proxy = launcher.start(
            upstream.upstream_url(), "--config", str(config),
            env={"PGCLOAK_MASTER_KEY": master_key},
        )  # fmt: skip
        a = Adv(proxy, upstream, db, upstream.log_size())
        with a.connect() as conn:
            for sql in SETUP:
                conn.execute(sql)
        yield a
    finally:
        embedded.stop()


@pytest.fixture
def conn(adv: Adv) -> Iterator[psycopg.Connection[Any]]:
    with adv.connect() as c:
        yield c
