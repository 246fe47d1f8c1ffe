"""`--workers N`: several processes on one port, one admin view, one lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from helpers import PgServer, ProxyProcess
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(90)


def _metric(proc: ProxyProcess, name: str) -> float:
    text = urllib.request.urlopen(proc.admin_url("/metrics"), timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


def _worker_pids(supervisor_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == supervisor_pid and b"--worker-slot" in cmd:
            pids.append(int(entry))
    return sorted(pids)


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.fixture
def workers(pg: PgServer, proxy_factory: Callable[..., ProxyProcess]) -> ProxyProcess:
    proc = proxy_factory(pg.upstream_url(), "--workers", "2", "--log-level", "INFO")
    _wait(lambda: len(_worker_pids(proc.pid)) == 2)
    _wait(lambda: proc.log_text().count("pgcloak listening on") == 2)  # handlers installed
    return proc


def test_connections_spread_and_metrics_sum(workers: ProxyProcess) -> None:
    backends = set()
    for _ in range(12):
        with psycopg.connect(workers.dsn(), autocommit=True) as conn:
            backends.add(conn.execute("SELECT pg_backend_pid()").fetchone())
            conn.execute("SELECT 1")
    assert len(backends) == 12
    # Each worker publishes every half second; the supervisor sums them.
    _wait(lambda: _metric(workers, "pgcloak_client_connections_total") >= 12)
    assert _metric(workers, "pgcloak_queries_total") >= 24


def test_crashed_worker_is_replaced(workers: ProxyProcess) -> None:
    first = _worker_pids(workers.pid)
    os.kill(first[0], signal.SIGKILL)
    _wait(lambda: len(_worker_pids(workers.pid)) == 2 and _worker_pids(workers.pid) != first)
    for _ in range(6):  # whichever worker the kernel picks must serve
        with psycopg.connect(workers.dsn(), autocommit=True, connect_timeout=5) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    assert "restarting" in workers.log_text()


def test_cancel_reaches_backend_whichever_worker_gets_it(workers: ProxyProcess) -> None:
    # The CancelRequest is a new connection: it may land on a worker that does not
    # hold the session. It must cancel the query all the same.
    for _ in range(4):
        with psycopg.connect(workers.dsn(), autocommit=True) as conn:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            timer.join()


def test_sigterm_drains_all_workers(workers: ProxyProcess) -> None:
    pids = _worker_pids(workers.pid)
    conn = psycopg.connect(workers.dsn(), autocommit=False)
    conn.execute("SELECT 1")  # a transaction is open
    workers.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    conn.execute("SELECT 2")  # still served while draining
    conn.commit()
    assert workers.wait(timeout=20) == 0
    conn.close()
    for pid in pids:  # gone, or a zombie awaiting its (now exited) parent's reaper
        assert not os.path.exists(f"/proc/{pid}") or " Z " in Path(f"/proc/{pid}/stat").read_text()


def test_sighup_reaches_every_worker(workers: ProxyProcess) -> None:
    workers.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        return workers.log_text().count("configuration reloaded") >= 2

    _wait(reloaded)


def test_fixed_port_required(pg: PgServer) -> None:
    argv = ["serve", "--listen", "127.0.0.1:0", "--admin", "off", "--upstream"]
    out = subprocess.run(
        [sys.executable, "-m", "pgcloak", *argv, pg.upstream_url(), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "fixed --listen port" in out.stderr
