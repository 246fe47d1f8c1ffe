"""The embedded cluster manager, the demo command and the shared fixtures themselves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from helpers import REPO_ROOT, PgServer, ProxyProcess, free_port, proxy_env, wait_port

from pgcloak.embedded import EmbeddedPostgres, generate_self_signed, pid_alive


def _cmdlines_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes() and pid_alive(int(proc.name)):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_embedded_lifecycle_ssl_and_scram() -> None:
    hba = [
        "host all scram_t 127.0.0.1/32 scram-sha-256",
        "host all all 127.0.0.1/32 trust",
    ]
    pg = EmbeddedPostgres(ssl=True, hba=hba, log_statement="all")
    with pg:
        assert pg.ca_path is not None
        pid, base = pg.pid, pg.base_dir
        assert pid is not None and pid_alive(pid)
        if os.geteuid() == 0:  # PostgreSQL refuses root, so it must run as postgres
            uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
            assert int(uid) != 0

        with psycopg.connect(pg.dsn()) as conn:  # trust
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE ROLE scram_t LOGIN PASSWORD 'pw-scram'")
            conn.commit()

        for host in ("127.0.0.1", "localhost"):
            dsn = pg.dsn(host=host, sslmode="verify-full", sslrootcert=str(pg.ca_path))
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert row.fetchone() == (True,)

        with psycopg.connect(pg.dsn(user="scram_t", password="pw-scram")) as conn:
            assert conn.info.user == "scram_t"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.dsn(user="scram_t", password="wrong"))

        assert pg.psql("SELECT 40 + 2").strip() == "42"
        assert pg.url(dbname="x y", user="u", password="p@ss", sslmode="require") == (
            f"postgresql://u:p%40ss@127.0.0.1:{pg.port}/x%20y?sslmode=require"
        )
        assert pg.log_path.is_file()
        assert "statement: SELECT 40 + 2" in pg.log_text()

    assert not pid_alive(pid)
    assert not base.exists()
    assert not pg.running


def test_given_data_dir_survives_restart() -> None:
    # Not tmp_path: when we are root, postgres must be able to traverse every parent.
    parent = Path(tempfile.mkdtemp(prefix="pgcloak-test-"))
    try:
        parent.chmod(0o755)
        data = parent / "data"
        with EmbeddedPostgres(data_dir=data) as pg:
            pg.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
            base = pg.base_dir
        assert not base.exists()
        assert (data / "PG_VERSION").exists()  # a caller-owned data dir is never deleted
        with EmbeddedPostgres(data_dir=data) as pg:  # reused without initdb
            assert pg.psql("SELECT x FROM kept").strip() == "7"
            port, pid = pg.port, pg.pid
            pg.restart()
            assert (pg.port, pg.running) == (port, True)
            assert pg.pid != pid
            assert pg.psql("SELECT x FROM kept").strip() == "7"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_generate_self_signed(tmp_path: Path) -> None:
    cert_path, key_path, ca_path = generate_self_signed(tmp_path, ["127.0.0.1", "localhost"])
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    # Usable as-is by Python's ssl (the proxy's client-facing TLS) with strict verification.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert done == {"client": True, "server": True}


def test_pg_fixture(pg: PgServer, fresh_db: str) -> None:
    assert re.fullmatch(r"pgcloak_t_[0-9a-f]{8}", fresh_db)
    assert pg.execute("SELECT current_database()", dbname=fresh_db) == [(fresh_db,)]
    with pg.connect(fresh_db) as conn:
        conn.execute("CREATE TABLE t (x int)")
    if pg.log_path is not None:
        assert pg.log_path.is_file()


def test_pg_auth_fixture(pg_auth: PgServer) -> None:
    assert pg_auth.ca_path is not None
    expected = {"scram_user": "SCRAM-SHA-256$", "md5_user": "md5", "clear_user": "SCRAM-SHA-256$"}
    for role, prefix in expected.items():
        stored = pg_auth.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        assert stored[0][0].startswith(prefix)
        password = pg_auth.passwords[role]
        dsn = pg_auth.dsn(
            "authdb", role, password=password, sslmode="verify-full", sslrootcert=pg_auth.ca_path
        )
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg_auth.dsn("authdb", role, password="nope", sslmode="disable"))


def test_proxy_factory(pg: PgServer, proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy: ProxyProcess = proxy_factory(pg.upstream_url())
    with psycopg.connect(proxy.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proxy.stop() == 0
    assert "listening" in proxy.log_text()


def test_proxy_factory_reports_startup_failure(proxy_factory: Callable[..., ProxyProcess]) -> None:
    with pytest.raises(RuntimeError, match="exited with code") as info:
        proxy_factory("mysql://nope")
    assert "upstream" in str(info.value)


def test_demo_serves_sample_data_and_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "demo.log"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgcloak",
                "demo",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin",
                "off",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=proxy_env(),
            cwd=REPO_ROOT,
        )
    try:
        wait_port("127.0.0.1", port, timeout=60)
        text = out.read_text()
        assert f'psql "host=127.0.0.1 port={port} dbname=demo user=postgres"' in text
        data_dir = re.search(r"data in (\S+)\)", text)
        assert data_dir is not None, text
        dsn = f"host=127.0.0.1 port={port} dbname=demo user=postgres"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            rows = conn.execute("SELECT count(*) FROM customers JOIN orders ON true").fetchone()
            assert rows is not None and rows[0] > 0
            cur = conn.execute(
                "SELECT c.full_name, o.amount FROM customers c JOIN orders o "
                "ON o.customer_id = c.id ORDER BY o.amount DESC LIMIT 1"
            )
            assert [d.name for d in cur.description or ()] == ["full_name", "amount"]
            ada = conn.execute(
                "SELECT full_name FROM customers WHERE email = %s", ("ada@example.com",)
            ).fetchall()
            assert ada == [("Ada Lovelace",)]
        # The database itself holds only opaque names.
        up = re.search(r"PostgreSQL is up on (\S+):(\d+) ", text)
        assert up is not None, text
        direct = f"host={up.group(1)} port={up.group(2)} dbname=demo user=postgres"
        with psycopg.connect(direct, connect_timeout=10) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                )
            ]
            assert names and not any("customer" in n or "order" in n for n in names), names
            # The encrypted columns hold ciphertext: no sample name or address is stored.
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT relname::text FROM pg_class"
                    " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                )
            ]
            dumped = "".join(
                str(row)
                for t in tables
                for row in conn.execute(f'SELECT t::text FROM public."{t}" t')
            )
            assert "42.00" in dumped  # orders.amount is cloaked, not encrypted
            assert "Lovelace" not in dumped and "example.com" not in dumped
        assert "customers.email (deterministic)" in text
        assert _cmdlines_mentioning(data_dir.group(1))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Demo stopped." in out.read_text()
    assert not Path(data_dir.group(1)).exists()
    assert not _cmdlines_mentioning(data_dir.group(1))
