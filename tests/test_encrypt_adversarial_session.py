"""Adversarial probes of column encryption, session side (review; see
tests/test_encrypt_adversarial.py): ciphertext that does not decrypt (XX001, E32),
client encodings (E33) and the settings a session starts with (E34).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from adversarial_support import run
from encrypt_support import BUGS, physical_names

if TYPE_CHECKING:
    from adversarial_env import Adv

pytest_plugins = ("adversarial_env",)  # fixtures: adv, conn


# -- 1. values that do not decrypt: XX001 on every path, never ciphertext ------------------


def _move_ciphertexts(adv: Adv, master_key: str, row: int) -> None:
    """Directly on the upstream: e's ciphertext into e2 (another key), r's into x1
    (another key and mode) of row `row`; the associated data must reject both."""
    with psycopg.connect(adv.upstream.dsn(adv.db), autocommit=True) as direct:
        tb, i, e, e2, r, x1 = physical_names(direct, master_key, "t", "id", "e", "e2", "r", "x1")
        cur = direct.execute(f"UPDATE {tb} SET {e2} = {e}, {x1} = {r} WHERE {i} = {row}")
        assert cur.rowcount == 1


@pytest.mark.parametrize(
    "sql",
    ["SELECT id, e2 FROM t WHERE id = 2", "SELECT x1 FROM t WHERE id = 2",
     "COPY (SELECT e2 FROM t WHERE id = 2) TO STDOUT", "COPY t (id, x1) TO STDOUT",
     "SELECT e2 FROM adv_all_e2 WHERE id = 2",
     "WITH c AS (SELECT id, e2 FROM t) SELECT e2 FROM c WHERE id = 2"],
)  # fmt: skip
def test_moved_ciphertext_is_xx001(
    adv: Adv, master_key: str, conn: psycopg.Connection[Any], sql: str
) -> None:
    _move_ciphertexts(adv, master_key, 2)
    got = run(conn, sql)
    assert got.sqlstate == "XX001", got
    assert "\\x" not in got.message and not re.search("[0-9a-f]{16}", got.message)


@pytest.mark.xfail(strict=True, reason=f"E32: {BUGS}")
def test_failed_returning_changes_nothing(
    adv: Adv, master_key: str, conn: psycopg.Connection[Any]
) -> None:
    """A statement that ends in an error has not happened, in PostgreSQL. DML whose
    RETURNING value fails to decrypt ends with XX001, but outside a transaction block
    the server has already committed the change (E32)."""
    _move_ciphertexts(adv, master_key, 2)
    assert run(conn, "UPDATE t SET p = 'changed' WHERE id = 2 RETURNING e2").sqlstate == "XX001"
    assert run(conn, "SELECT p FROM t WHERE id = 2").rows == [("pb",)]


# -- 2. client_encoding (E33, fixed) ---------------------------------------------------------


@pytest.mark.parametrize("how", ["set", "startup"])
def test_other_client_encodings_are_refused_not_misencoded(adv: Adv, how: str) -> None:
    """The server converts plain text to the client's encoding; decrypted text was sent
    as UTF-8 regardless (LATIN1 read 'hÃ©llo'). Now 0A000 instead of mis-encoded text."""
    with adv.connect() as setup:
        setup.execute("INSERT INTO t (id, e, r, p) VALUES (600, 'héllo', 'wörld', 'plän') "
                      "ON CONFLICT (id) DO NOTHING")  # fmt: skip
    options = {"client_encoding": "LATIN1"} if how == "startup" else {}
    with psycopg.connect(adv.proxy.dsn(adv.db), autocommit=True, **options) as conn:
        if how == "set":
            conn.execute("SET client_encoding TO 'LATIN1'")
        assert conn.info.encoding == "iso8859-1"
        assert run(conn, "SELECT p FROM t WHERE id = 600").rows == [("plän",)]
        for sql in ("SELECT e FROM t WHERE id = 600", "SELECT id, r FROM t WHERE id = 600",
                    "COPY (SELECT e FROM t WHERE id = 600) TO STDOUT"):  # fmt: skip
            got = run(conn, sql)
            assert got.sqlstate == "0A000" and "client_encoding" in got.message, (sql, got)
        assert run(conn, "SELECT count(e) FROM t WHERE id = 600").rows == [(1,)]
        conn.execute("SET client_encoding TO 'UTF8'")
        assert run(conn, "SELECT e, r FROM t WHERE id = 600").rows == [("héllo", "wörld")]
    with adv.connect() as conn:  # COPY's own ENCODING option
        got = run(conn, "COPY (SELECT e FROM t WHERE id = 600) TO STDOUT (ENCODING 'LATIN1')")
        assert got.sqlstate == "0A000" and "UTF8" in got.message, got
        got = run(conn, "COPY t (id, e) FROM STDIN (ENCODING 'latin1')", "601\th\n")
        assert got.sqlstate == "0A000", got
        out = run(conn, "COPY (SELECT e FROM t WHERE id = 600) TO STDOUT (ENCODING 'UTF-8')")
        assert out.rows == [("héllo\n".encode(),)]
        assert run(conn, "COPY (SELECT p FROM t WHERE id = 600) TO STDOUT (ENCODING 'LATIN1')"
                   ).rows == [(b"pl\xe4n\n",)]  # fmt: skip


# -- 3. settings the session started with (E34, fixed) ---------------------------------------


def test_startup_settings_apply_to_encrypted_values(adv: Adv) -> None:
    """DateStyle/TimeZone/IntervalStyle from startup options (or ALTER ROLE/DATABASE,
    postgresql.conf) were ignored: decrypted values printed as ISO/UTC and literals read
    as MDY/UTC. They must read and print exactly as the plain twin's."""
    options = "-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata -c IntervalStyle=iso_8601"
    with psycopg.connect(adv.proxy.dsn(adv.db), autocommit=True, options=options) as conn:
        pc = conn.pgconn
        for table in ("w", "pw"):
            res = pc.exec_(
                f"INSERT INTO {table} (id, d, tz) VALUES (300, '02/03/2020', "
                "'04/05/2020 06:07')".encode()
            )
            assert res.error_message == b"", res.error_message

        def raw(table: str) -> list[bytes | None]:
            res = pc.exec_(
                f"SELECT d, tz, iv FROM {table} WHERE id IN (1, 300) ORDER BY id".encode()
            )
            return [res.get_value(i, j) for i in range(res.ntuples) for j in range(res.nfields)]

        assert raw("w") == raw("pw")
        assert raw("w")[:3] == [b"01/01/2020", b"01/01/2020 15:30:00 IST", b"P1DT2H"]
