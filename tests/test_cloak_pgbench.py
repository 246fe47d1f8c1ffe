"""pgbench and psql's \\copy through the cloaking proxy on cloaked databases.

`pgbench -i` runs THROUGH the proxy, so the pgbench_* tables are created cloaked;
the runs then must see zero failed transactions and leave the bank consistent,
and a DIRECT look at the upstream catalog must find no pgbench name. psql's
\\copy is checked against the same script run directly on a plain database.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cloak_checks import assert_catalog_opaque, cloaked_database
from helpers import PgServer, ProxyProcess
from test_psql_pgbench_dump import _tool, assert_same_run, conn_args, ok, psql, run

BUGS = "see docs/known-issues.md"
SCALE = 2
PGBENCH_NAMES = (
    "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history",
    "aid", "bid", "tid", "abalance", "bbalance", "tbalance", "delta", "mtime", "filler",
    "pgbench_accounts_pkey", "pgbench_branches_pkey", "pgbench_tellers_pkey",
)  # fmt: skip


def pgbench(port: int, dbname: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run(
        [_tool("pgbench"), *conn_args(port, dbname), *args],
        env={"PGOPTIONS": "-c synchronous_commit=off"},
        timeout=180,
    )


def _bank(proxy: ProxyProcess, dbname: str) -> tuple[int, int, int, int]:
    """(accounts, history rows, balance, history delta) read through the proxy.

    Accounts, tellers and branches always balance; the history only since the
    last truncation (a pgbench run without -n truncates it first).
    """
    with proxy.connect(dbname) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts),"
            " (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
            " (SELECT count(*) FROM pgbench_history)"
        ).fetchone()
    assert row is not None
    accounts, acc, tel, br, hist, n = row
    assert acc == tel == br, row
    return int(accounts), int(n), int(acc), int(hist)


def _assert_no_pgbench_names(pg: PgServer, dbname: str) -> None:
    with pg.connect(dbname) as direct:
        view = assert_catalog_opaque(direct, PGBENCH_NAMES)
        leaked = direct.execute(
            "SELECT count(*) FROM pg_catalog.pg_class WHERE relname LIKE 'pgbench%'"
        ).fetchone()
    assert leaked == (0,)
    assert view.kinds().get("r") == 4


@pytest.fixture(scope="module")
def bench_db(pg: PgServer, cloak_proxy: ProxyProcess, master_key: str) -> Iterator[str]:
    """A cloaked database initialised with `pgbench -i -s 2` through the proxy."""
    name = cloaked_database(pg, master_key)
    try:
        ok(pgbench(cloak_proxy.port, name, "-i", "-q", "-s", str(SCALE)))
        yield name
    finally:
        pg.drop_database(name)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(None, id="default"),  # dtgvp: client-side COPY ... FROM STDIN
        pytest.param("dtGvp", id="server-side"),
    ],
)
def test_pgbench_init(
    steps: str | None, pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str
) -> None:
    extra = ["-I", steps] if steps else []
    res = pgbench(cloak_proxy.port, cloaked_db, "-i", "-q", "-s", str(SCALE), *extra)
    ok(res)
    done = res.stderr.decode()
    assert "done in" in done and "vacuum" in done
    assert _bank(cloak_proxy, cloaked_db) == (SCALE * 100_000, 0, 0, 0)
    _assert_no_pgbench_names(pg, cloaked_db)
    # Initialising again drops the cloaked tables (DROP TABLE IF EXISTS on all four).
    ok(pgbench(cloak_proxy.port, cloaked_db, "-i", "-q", "-s", "1", *extra))
    assert _bank(cloak_proxy, cloaked_db) == (100_000, 0, 0, 0)
    _assert_no_pgbench_names(pg, cloaked_db)


def test_pgbench_init_notices(pg: PgServer, cloak_proxy: ProxyProcess, cloaked_db: str) -> None:
    res = pgbench(cloak_proxy.port, cloaked_db, "-i", "-s", "1", "-I", "d")
    ok(res)
    notices = re.findall(r'NOTICE:  table "([^"]+)" does not exist', res.stderr.decode())
    assert sorted(notices) == sorted(PGBENCH_NAMES[:4])


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_run(mode: str, cloak_proxy: ProxyProcess, bench_db: str) -> None:
    balance = _bank(cloak_proxy, bench_db)[2]
    # Without -n: VACUUM of two tables and TRUNCATE of the history first, through the proxy.
    res = pgbench(cloak_proxy.port, bench_db, "-T", "3", "-c", "4", "-j", "2", "-M", mode)
    out = ok(res)
    assert f"query mode: {mode}" in out
    assert f"scaling factor: {SCALE}" in out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert processed and failed, out
    assert int(processed.group(1)) > 0 and failed.group(1) == "0", out
    _, history, after, delta = _bank(cloak_proxy, bench_db)
    assert (history, after - balance) == (int(processed.group(1)), delta)
    # The select-only builtin too (catalog lookups by name happen before it runs).
    out = ok(pgbench(cloak_proxy.port, bench_db, "-n", "-S", "-T", "1", "-c", "2", "-M", mode))
    assert "number of failed transactions: 0" in out


def test_pgbench_names_not_in_catalog(
    pg: PgServer, cloak_proxy: ProxyProcess, bench_db: str
) -> None:
    assert _bank(cloak_proxy, bench_db)[0] == SCALE * 100_000
    _assert_no_pgbench_names(pg, bench_db)


# -- psql \copy ----------------------------------------------------------------------------

COPY_SCRIPT = r"""
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8, 2), tags text[]);
CREATE TABLE items_back (id int, name text, price numeric(8, 2), tags text[]);
\copy items from stdin
1	plain	1.50	{a,b}
2	tab\there	\N	\N
3	ünïcødé ✓	3.25	{}
\.
\copy items (id, name) from stdin with (format csv)
4,"quoted, comma"
5,"multi
line"
\.
\copy items to stdout
\copy items (name, id) to stdout with (format csv)
\copy (SELECT id, upper(name) AS shout FROM items WHERE price IS NOT NULL ORDER BY id) to stdout csv
\copy items to 'FILE' with (format csv)
\copy items_back from 'FILE' with (format csv)
SELECT count(*), sum(price), string_agg(name, '|' ORDER BY id) FROM items_back;
\copy items (id, name) from stdin
1	duplicate
\.
SELECT count(*) FROM items;
"""


def test_psql_copy_both_ways(
    pg: PgServer,
    cloak_proxy: ProxyProcess,
    cloaked_db: str,
    db_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    script = COPY_SCRIPT.replace("FILE", str(tmp_path / "items.csv")).encode()
    plain = db_factory()  # the oracle: the same script on a plain database, directly
    direct = psql(pg.port, plain, "-f", "-", input=script, on_error_stop=False)
    proxied = psql(cloak_proxy.port, cloaked_db, "-f", "-", input=script, on_error_stop=False)
    assert_same_run(direct, proxied)
    out = proxied.stdout.decode()
    assert "2\ttab\\there\t\\N\t\\N\n" in out
    assert '"quoted, comma",4\n"multi\nline",5\n' in out
    assert "3,ÜNÏCØDÉ ✓\n" in out
    assert 'duplicate key value violates unique constraint "items_pkey"' in proxied.stderr.decode()
    with pg.connect(cloaked_db) as direct_conn:
        assert_catalog_opaque(direct_conn, ("items", "items_back", "name", "price", "tags",
                                            "items_pkey"))  # fmt: skip
