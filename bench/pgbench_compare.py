#!/usr/bin/env python3
"""Compare pgbench select-only throughput/latency: direct PostgreSQL vs pgcloak vs PgBouncer.

One run starts every target (a private PgBouncer, a pgcloak subprocess), then walks the
(mode, clients) grid and runs the targets back to back inside each cell, so machine drift
hits all of them alike. Results go to stdout as a table and to a JSON file.

Adding a target: subclass `Target`, decorate it with `@register`, and (if it needs its own
data, e.g. a cloaked database initialised *through* pgcloak) override `prepare()`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
PGBOUNCER_TEMPLATE = BENCH_DIR / "pgbouncer.ini.tmpl"
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)

# Goals from the issues: pass-through throughput within 10% of PgBouncer under concurrency
# and at one client no more than 10 µs of extra per-transaction latency compared to
# PgBouncer's; cloaking >= 0.8 x PgBouncer, with an encrypted column >= 0.75 x (8 clients).
GOAL_TPS_RATIO = 0.9
GOAL_TPS_RATIOS = {"pgcloak-cloaked": 0.8, "pgcloak-encrypted": 0.75}
GOAL_TPS_CLIENTS = (8, 32)
GOAL_EXTRA_LATENCY_US = 10.0


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays just the result table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- basics


@dataclass(frozen=True)
class Endpoint:
    """Where a libpq client (pgbench, psycopg) connects."""

    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    sslmode: str = "disable"

    def env(self) -> dict[str, str]:
        """Environment for libpq tools; credentials never appear on a command line."""
        env = dict(os.environ)
        env["PGSSLMODE"] = self.sslmode
        env["PGCONNECT_TIMEOUT"] = "10"
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        else:
            env.pop("PGPASSWORD", None)
        return env

    def conninfo(self, dbname: str) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={self.user}"]
        parts += [f"dbname={dbname}", f"sslmode={self.sslmode}", "connect_timeout=10"]
        if self.password is not None:
            parts.append(f"password={self.password}")
        return " ".join(parts)


def parse_upstream(url: str) -> tuple[Endpoint, str]:
    """postgresql://user:pw@host:port/admindb?sslmode=... -> (endpoint, admin database)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"--upstream must be a postgresql:// URL, got scheme {parts.scheme!r}")
    query = parse_qs(parts.query)
    sslmode = query.get("sslmode", ["disable"])[0]
    endpoint = Endpoint(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username) if parts.username else "postgres",
        password=unquote(parts.password) if parts.password is not None else None,
        sslmode=sslmode,
    )
    admin_db = unquote(parts.path.lstrip("/")) or "postgres"
    return endpoint, admin_db


def free_port() -> int:
    """A port that was free a moment ago (the tiny race is fine for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 20.0
) -> None:
    """Poll until the child accepts TCP connections; die loudly if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before listening on {port};"
                f" log tail:\n{tail(logfile)}"
            )
        if tcp_reachable(host, port, timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s:\n{tail(logfile)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Polite stop, then SIGKILL; only ever touches the process we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def tool_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else None


def find_binary(name: str, extra_dirs: list[Path]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# --------------------------------------------------------------------------- pgbench


@dataclass
class RunResult:
    target: str
    mode: str
    clients: int
    jobs: int
    repeat: int
    duration_s: int
    tps: float | None = None
    latency_ms: float | None = None
    conn_time_ms: float | None = None
    transactions: int | None = None
    failed_transactions: int | None = None
    returncode: int | None = None
    error: str | None = None


_RE_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_RE_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_RE_CONN = re.compile(r"^initial connection time = ([0-9.]+) ms", re.M)
_RE_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_RE_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_pgbench(output: str, result: RunResult) -> None:
    """Fill the numbers pgbench prints in its summary (PG 14+ output format)."""
    if m := _RE_TPS.search(output):
        result.tps = float(m.group(1))
    if m := _RE_LAT.search(output):
        result.latency_ms = float(m.group(1))
    if m := _RE_CONN.search(output):
        result.conn_time_ms = float(m.group(1))
    if m := _RE_TX.search(output):
        result.transactions = int(m.group(1))
    if m := _RE_FAILED.search(output):
        result.failed_transactions = int(m.group(1))


def run_pgbench(
    pgbench: str,
    endpoint: Endpoint,
    dbname: str,
    result: RunResult,
    extra: list[str] | None = None,
) -> RunResult:
    cmd = [
        pgbench,
        "-n",  # no VACUUM: the data is read-only and the proxies must not be special-cased
        "-S",
        "-M",
        result.mode,
        "-c",
        str(result.clients),
        "-j",
        str(result.jobs),
        "-T",
        str(result.duration_s),
        "-h",
        endpoint.host,
        "-p",
        str(endpoint.port),
        "-U",
        endpoint.user,
        *(extra or []),
        dbname,
    ]
    try:
        proc = subprocess.run(
            cmd,
            env=endpoint.env(),
            capture_output=True,
            text=True,
            timeout=result.duration_s + 120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        result.error = "pgbench timed out"
        return result
    result.returncode = proc.returncode
    parse_pgbench(proc.stdout, result)
    if proc.returncode != 0 or result.tps is None:
        # pgbench errors are about connections/protocol; keep them short in the report.
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        result.error = " | ".join(msg[-3:])[:500] or f"pgbench exited {proc.returncode}"
    return result


# --------------------------------------------------------------------------- targets


@dataclass
class BenchContext:
    """Everything targets share: the upstream, binaries, a scratch dir and the CLI options."""

    upstream: Endpoint
    dbname: str
    pgbench: str
    workdir: Path
    args: argparse.Namespace
    pgbench_init: Callable[..., None]
    admin_db: str = "postgres"


class Target(ABC):
    """One way of reaching the benchmark database."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def start(self) -> Endpoint:
        """Bring the target up and return where pgbench should connect."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Tear down whatever start() created."""

    def dbname(self) -> str:
        """Database pgbench names; a cloaked target may use its own."""
        return self.ctx.dbname

    def prepare(self, endpoint: Endpoint) -> None:  # noqa: B027 - optional hook
        """Per-target data setup after start() (e.g. `pgbench -i` through the proxy)."""

    def info(self) -> dict[str, Any]:
        return {"description": self.description}


TARGETS: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    TARGETS[cls.name] = cls
    return cls


@register
class DirectTarget(Target):
    name = "direct"
    description = "pgbench straight to PostgreSQL (baseline)"

    def start(self) -> Endpoint:
        return self.ctx.upstream


@register
class PgBouncerTarget(Target):
    name = "pgbouncer"
    description = "pgbench through a private PgBouncer instance"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary: str | None = None

    def _ensure_binary(self) -> str:
        found = find_binary("pgbouncer", [Path("/usr/sbin"), Path("/usr/local/sbin")])
        if found:
            return found
        if not is_root() or shutil.which("apt-get") is None:
            raise RuntimeError("pgbouncer not found; install it (apt-get install pgbouncer)")
        log("pgbouncer missing: apt-get install -y pgbouncer")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, check=True)
        found = find_binary("pgbouncer", [Path("/usr/sbin")])
        if not found:
            raise RuntimeError("pgbouncer still not found after apt-get install")
        return found

    def start(self) -> Endpoint:
        self.binary = self._ensure_binary()
        up = self.ctx.upstream
        workdir = self.ctx.workdir / "pgbouncer"
        workdir.mkdir()
        port = free_port()
        auth_file = workdir / "userlist.txt"
        password = (up.password or "").replace('"', '""')
        auth_file.write_text(f'"{up.user}" "{password}"\n')
        logfile = workdir / "pgbouncer.log"
        ini = workdir / "pgbouncer.ini"
        ini.write_text(
            string.Template(PGBOUNCER_TEMPLATE.read_text()).substitute(
                upstream_host=up.host,
                upstream_port=up.port,
                listen_port=port,
                auth_file=auth_file,
                pool_mode=self.ctx.args.pgbouncer_pool_mode,
                server_sslmode=up.sslmode,
                logfile=logfile,
                pidfile=workdir / "pgbouncer.pid",
            )
        )
        popen_kw: dict[str, Any] = {}
        if is_root():
            # PgBouncer refuses to run as root; run it (foreground, so we own the pid) as postgres.
            for path in (self.ctx.workdir, workdir, auth_file, ini):
                shutil.chown(path, "postgres", "postgres")
            popen_kw = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.proc = subprocess.Popen(
            [self.binary, "-q", str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            **popen_kw,
        )
        wait_for_port("127.0.0.1", port, self.proc, logfile)
        return Endpoint("127.0.0.1", port, up.user, up.password, "disable")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # SIGINT = safe shutdown in 1.x

    def info(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "version": tool_version(self.binary) if self.binary else None,
            "pool_mode": self.ctx.args.pgbouncer_pool_mode,
        }


@register
class PgcloakTarget(Target):
    name = "pgcloak"
    description = "pgbench through `python -m pgcloak serve`"
    extra_args: tuple[str, ...] = ()

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = ctx.workdir / "pgcloak.log"

    def upstream_url(self) -> str:
        up = self.ctx.upstream
        return f"postgresql://{up.host}:{up.port}/?sslmode={up.sslmode}"

    def start(self) -> Endpoint:
        port, admin_port = free_port(), free_port()
        cmd = [
            sys.executable,
            "-m",
            "pgcloak",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin_port}",
            "--upstream",
            self.upstream_url(),
            "--log-level",
            "WARNING",
            *self.extra_args,
            *self.ctx.args.pgcloak_arg,
        ]
        env = self.proxy_env()
        with self.logfile.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO_ROOT, env=env
            )
        wait_for_port("127.0.0.1", port, self.proc, self.logfile)
        up = self.ctx.upstream
        return Endpoint("127.0.0.1", port, up.user, up.password, "disable")

    def proxy_env(self) -> dict[str, str]:
        """The proxy's environment: no inherited key, so this target never cloaks."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLOAK_MASTER_KEY")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM)
            if self.proc.returncode not in (0, -signal.SIGTERM):
                log(f"pgcloak exited with {self.proc.returncode}; log tail:\n{tail(self.logfile)}")

    def info(self) -> dict[str, Any]:
        return {"description": self.description, "python": sys.version.split()[0]}


@register
class FloorTarget(Target):
    """A bare uvloop byte forwarder: what any Python relay pays before doing any work."""

    name = "uvloop-floor"
    description = "pgbench through bench/floor_forwarder.py (no parsing at all)"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = ctx.workdir / "floor.log"

    def start(self) -> Endpoint:
        port = free_port()
        up = self.ctx.upstream
        script = str(REPO_ROOT / "bench" / "floor_forwarder.py")
        cmd = [sys.executable, script, str(port), up.host, str(up.port)]
        with self.logfile.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        wait_for_port("127.0.0.1", port, self.proc, self.logfile)
        return Endpoint("127.0.0.1", port, up.user, up.password, "disable")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM)

    def info(self) -> dict[str, Any]:
        return {"description": self.description}


@register
class PgcloakWorkersTarget(PgcloakTarget):
    """pgcloak with two worker processes sharing the port (one per core here)."""

    name = "pgcloak-w2"
    description = "pgbench through `python -m pgcloak serve --workers 2`"
    extra_args: tuple[str, ...] = ("--workers", "2")


@register
class PgcloakCloakedTarget(PgcloakTarget):
    """A cloaking pgcloak (master key) on its own database whose tables it cloaked itself.

    The database `<dbname>_cloaked` is dropped, recreated, given the pgcloak registry and
    filled with `pgbench -i -s <scale>` THROUGH the proxy, so every pgbench_* table,
    column, index and constraint has an opaque physical name upstream and every statement
    pgbench sends is rewritten. The key is fresh per run, so this database is always
    recreated (also with --no-init).
    """

    name = "pgcloak-cloaked"
    description = "pgbench through a cloaking pgcloak on a database initialised through it"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.logfile = ctx.workdir / "pgcloak-cloaked.log"
        self.master_key: str | None = None
        self.init_s: float | None = None

    def dbname(self) -> str:
        return f"{self.ctx.dbname}_cloaked"

    def init_steps(self) -> str | None:
        return None  # pgbench's default: client-side COPY

    def proxy_env(self) -> dict[str, str]:
        from pgcloak.crypto.keys import new_master_key

        self.master_key = self.master_key or new_master_key()
        env = super().proxy_env()
        env["PGCLOAK_MASTER_KEY"] = self.master_key
        return env

    def prepare(self, endpoint: Endpoint) -> None:
        import psycopg

        from pgcloak.crypto.keys import MasterKey
        from pgcloak.registry.install import install

        assert self.master_key is not None
        up, dbname = self.ctx.upstream, self.dbname()
        log(f"recreating {dbname}, installing the registry, pgbench -i through pgcloak")
        t0 = time.monotonic()
        create_database(up, self.ctx.admin_db, dbname)
        with psycopg.connect(up.conninfo(dbname), autocommit=True) as conn:
            install(conn, MasterKey.from_base64(self.master_key))
        self.ctx.pgbench_init(endpoint, dbname, self.init_steps())
        self.init_s = time.monotonic() - t0
        with psycopg.connect(up.conninfo(dbname), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE relname LIKE 'pgbench%'), count(*)"
                " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            ).fetchone()
        assert row is not None
        if row[0] or not row[1]:
            raise RuntimeError(f"{dbname} is not cloaked: {row[0]} pgbench_* of {row[1]}")
        log(f"{dbname} initialised through pgcloak in {self.init_s:.1f}s ({row[1]} relations)")

    def info(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "python": sys.version.split()[0],
            "dbname": self.dbname(),
            "init_through_proxy_s": self.init_s,
        }


@register
class PgcloakCloakedWorkersTarget(PgcloakCloakedTarget):
    """The cloaking pgcloak with two worker processes (one per core here)."""

    name = "pgcloak-cloaked-w2"
    description = "pgbench through a cloaking `pgcloak serve --workers 2`"
    extra_args: tuple[str, ...] = ("--workers", "2")

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.logfile = ctx.workdir / "pgcloak-cloaked-w2.log"

    def dbname(self) -> str:
        return f"{self.ctx.dbname}_cloaked_w2"


@register
class PgcloakEncryptedTarget(PgcloakCloakedTarget):
    """Cloaked, and `pgbench_accounts.abalance` encrypted deterministically.

    Every `SELECT abalance FROM pgbench_accounts WHERE aid = N` then decrypts one value
    (AES-SIV + the int4 codec) on its way back; `aid` lookups use the cloaked primary key.
    The accounts are generated server-side (`-I dtGvp`): their abalance literal 0 is
    encrypted once by pgcloak in the INSERT ... SELECT.
    """

    name = "pgcloak-encrypted"
    description = "cloaking pgcloak with pgbench_accounts.abalance encrypted (deterministic)"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.logfile = ctx.workdir / "pgcloak-encrypted.log"
        config = ctx.workdir / "pgcloak-encrypted.toml"
        config.write_text('[encrypt]\n"pgbench_accounts.abalance" = "deterministic"\n')
        self.extra_args = ("--config", str(config))

    def dbname(self) -> str:
        return f"{self.ctx.dbname}_encrypted"

    def init_steps(self) -> str | None:
        return "dtGvp"


@register
class PgcloakEncryptedNoMemoTarget(PgcloakEncryptedTarget):
    """The encrypted target with `decrypt_cache = 0`: every row's value is decrypted.

    pgbench -S reads abalance values that are all 0, so with the memo every row after the
    first is answered from memory; this target shows the cost when no value repeats.
    """

    name = "pgcloak-encrypted-nomemo"
    description = "the encrypted target with decrypt_cache = 0 (every row decrypted)"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self.logfile = ctx.workdir / "pgcloak-encrypted-nomemo.log"
        config = ctx.workdir / "pgcloak-encrypted-nomemo.toml"
        config.write_text(
            'decrypt_cache = 0\n[encrypt]\n"pgbench_accounts.abalance" = "deterministic"\n'
        )
        self.extra_args = ("--config", str(config))

    def dbname(self) -> str:
        return f"{self.ctx.dbname}_encrypted_nomemo"


# --------------------------------------------------------------------------- setup


def create_database(upstream: Endpoint, admin_db: str, dbname: str) -> None:
    """Drop and recreate the dedicated benchmark database (never touches anything else)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(upstream.conninfo(admin_db), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def make_pgbench_init(pgbench: str, scale: int) -> Callable[..., None]:
    def init(endpoint: Endpoint, dbname: str, steps: str | None = None) -> None:
        cmd = [pgbench, "-i", "-q", "-s", str(scale), "-h", endpoint.host, "-p", str(endpoint.port)]
        if steps is not None:
            cmd += ["-I", steps]
        cmd += ["-U", endpoint.user, dbname]
        proc = subprocess.run(cmd, env=endpoint.env(), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i failed ({proc.returncode}): {proc.stderr.strip()}")

    return init


@contextlib.contextmanager
def upstream_server(args: argparse.Namespace) -> Iterator[tuple[Endpoint, str, str | None, bool]]:
    """Yield (endpoint, admin db, pgbench from the cluster's bin dir, embedded?).

    Uses --upstream when it answers; otherwise a throwaway cluster so the harness runs on a
    bare machine too.
    """
    endpoint, admin_db = parse_upstream(args.upstream)
    if tcp_reachable(endpoint.host, endpoint.port):
        yield endpoint, admin_db, None, False
        return
    if args.no_embedded:
        raise SystemExit(f"upstream {endpoint.host}:{endpoint.port} not reachable")
    log(f"upstream {endpoint.host}:{endpoint.port} not reachable: starting a throwaway cluster")
    sys.path.insert(0, str(REPO_ROOT))
    from pgcloak.embedded import EmbeddedPostgres

    with EmbeddedPostgres(superuser=endpoint.user) as pg:
        embedded = Endpoint(host=pg.host, port=pg.port, user=endpoint.user, sslmode="disable")
        yield embedded, "postgres", str(pg.bin("pgbench")), True


# --------------------------------------------------------------------------- reporting


@dataclass
class Cell:
    """Median over repeats for one (mode, clients, target)."""

    mode: str
    clients: int
    target: str
    tps: float | None
    latency_ms: float | None
    runs: int
    errors: list[str]
    tps_vs_direct: float | None = None
    tps_vs_pgbouncer: float | None = None
    added_latency_us: float | None = None  # at 1 client: latency - direct latency


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(results: list[RunResult], targets: list[str]) -> list[Cell]:
    cells: list[Cell] = []
    keys = dict.fromkeys((r.mode, r.clients) for r in results)
    for mode, clients in keys:
        by_target: dict[str, Cell] = {}
        for target in targets:
            runs = [r for r in results if (r.mode, r.clients, r.target) == (mode, clients, target)]
            by_target[target] = Cell(
                mode=mode,
                clients=clients,
                target=target,
                tps=_median([r.tps for r in runs if r.error is None]),
                latency_ms=_median([r.latency_ms for r in runs if r.error is None]),
                runs=len(runs),
                errors=[r.error for r in runs if r.error],
            )
        direct, bouncer = by_target.get("direct"), by_target.get("pgbouncer")
        for cell in by_target.values():
            if direct is not None:
                cell.tps_vs_direct = _ratio(cell.tps, direct.tps)
                if clients == 1 and cell.latency_ms is not None and direct.latency_ms is not None:
                    cell.added_latency_us = (cell.latency_ms - direct.latency_ms) * 1000.0
            if bouncer is not None:
                cell.tps_vs_pgbouncer = _ratio(cell.tps, bouncer.tps)
            cells.append(cell)
    return cells


def _tps_goal(target: str) -> float:
    """The throughput target of a target: by its longest matching name prefix."""
    best = ""
    for prefix in GOAL_TPS_RATIOS:
        if target.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return GOAL_TPS_RATIOS[best] if best else GOAL_TPS_RATIO


def evaluate_goals(cells: list[Cell]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, per mode; only when pgcloak and PgBouncer both ran."""
    goals: list[dict[str, Any]] = []
    index = {(c.mode, c.clients, c.target): c for c in cells}
    cloaks = [t for t in dict.fromkeys(c.target for c in cells) if t.startswith("pgcloak")]
    for (mode, clients), name in itertools.product(
        dict.fromkeys((c.mode, c.clients) for c in cells), cloaks
    ):
        cloak, bouncer = (
            index.get((mode, clients, name)),
            index.get((mode, clients, "pgbouncer")),
        )
        if cloak is None or bouncer is None:
            continue
        if clients in GOAL_TPS_CLIENTS:
            ratio = cloak.tps_vs_pgbouncer
            goal = _tps_goal(name)
            goals.append(
                {
                    "mode": mode,
                    "clients": clients,
                    "goal": f"{name} tps >= {goal} x pgbouncer",
                    "value": ratio,
                    "ok": ratio is not None and ratio >= goal,
                }
            )
        if clients == 1 and "direct" in {c.target for c in cells}:
            a, b = cloak.added_latency_us, bouncer.added_latency_us
            goals.append(
                {
                    "mode": mode,
                    "clients": clients,
                    "goal": f"{name} added latency <= pgbouncer's + {GOAL_EXTRA_LATENCY_US:g} us",
                    "value": None if a is None or b is None else a - b,
                    "ok": a is not None and b is not None and a <= b + GOAL_EXTRA_LATENCY_US,
                }
            )
    return goals


CLOAKED_TARGET = "pgcloak-cloaked"
RATIO_CLIENTS = 8


def cloaked_ratios(cells: list[Cell]) -> list[dict[str, Any]]:
    """pgcloak-cloaked tps over the other targets' at RATIO_CLIENTS, per mode."""
    index = {(c.mode, c.clients, c.target): c for c in cells}
    rows: list[dict[str, Any]] = []
    for mode in dict.fromkeys(c.mode for c in cells):
        cloak = index.get((mode, RATIO_CLIENTS, CLOAKED_TARGET))
        if cloak is None:
            continue
        row: dict[str, Any] = {"mode": mode, "clients": RATIO_CLIENTS, "tps": cloak.tps}
        for other in ("pgbouncer", "pgcloak", "direct"):
            ref = index.get((mode, RATIO_CLIENTS, other))
            row[f"vs_{other}"] = _ratio(cloak.tps, ref.tps) if ref is not None else None
        rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(
    cells: list[Cell], goals: list[dict[str, Any]], ratios: list[dict[str, Any]] | None = None
) -> str:
    header = (
        f"{'mode':<9} {'clients':>7}  {'target':<15} {'tps':>11} {'lat_ms':>9}"
        f" {'vs_direct':>10} {'vs_bouncer':>11} {'+lat_us@1':>10}"
    )
    lines = [header, "-" * len(header)]
    previous: tuple[str, int] | None = None
    for c in cells:
        if previous is not None and previous != (c.mode, c.clients):
            lines.append("")
        previous = (c.mode, c.clients)
        row = (
            f"{c.mode:<9} {c.clients:>7}  {c.target:<15} {_fmt(c.tps, '.1f'):>11}"
            f" {_fmt(c.latency_ms, '.3f'):>9} {_fmt(c.tps_vs_direct, '.3f'):>10}"
            f" {_fmt(c.tps_vs_pgbouncer, '.3f'):>11} {_fmt(c.added_latency_us, '.1f'):>10}"
        )
        if c.errors:
            row += f"  ERROR x{len(c.errors)}: {c.errors[0][:120]}"
        lines.append(row)
    lines.append("")
    lines.append(
        "vs_direct / vs_bouncer: tps ratio of the row's target to direct / to pgbouncer;"
        " +lat_us@1: average latency minus direct's, 1 client only."
    )
    if goals:
        lines.append("")
        lines.append("goals (pgcloak):")
        for g in goals:
            verdict = "PASS" if g["ok"] else "FAIL"
            value = _fmt(g["value"], ".3f" if "tps" in g["goal"] else "+.1f")
            lines.append(
                f"  [{verdict}] {g['mode']:<9} c={g['clients']:<3} {g['goal']} (got {value})"
            )
    if ratios:
        lines.append("")
        lines.append(f"{CLOAKED_TARGET} at {RATIO_CLIENTS} clients, tps ratio (cloaked / other):")
        for r in ratios:
            lines.append(
                f"  {r['mode']:<9} / pgbouncer {_fmt(r['vs_pgbouncer'], '.3f'):>6}"
                f"   / pgcloak (no cloaking) {_fmt(r['vs_pgcloak'], '.3f'):>6}"
                f"   / direct {_fmt(r['vs_direct'], '.3f'):>6}"
            )
    return "\n".join(lines)


def git_revision() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


# --------------------------------------------------------------------------- main


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text}")
    return values


def csv_names(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--upstream", default="postgresql://127.0.0.1:5432/", help="PostgreSQL URL")
    p.add_argument(
        "--no-embedded",
        action="store_true",
        help="fail instead of starting a throwaway cluster when --upstream is unreachable",
    )
    p.add_argument(
        "--targets",
        type=csv_names(list(TARGETS)),
        default=list(TARGETS),
        help=f"comma list, run in this order within each cell ({','.join(TARGETS)})",
    )
    p.add_argument(
        "--modes",
        type=csv_names(["extended", "simple", "prepared"]),
        default=["extended", "simple"],
        help="pgbench -M protocols",
    )
    p.add_argument("--prepared", action="store_true", help="also run -M prepared")
    p.add_argument("--clients", type=csv_ints, default=[1, 8, 32], help="comma list")
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (capped at clients)")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--dbname", default="pgcloak_bench", help="dropped and recreated!")
    p.add_argument(
        "--no-init",
        action="store_true",
        help="reuse an already initialised --dbname instead of drop/create/pgbench -i",
    )
    p.add_argument("--pgbench", default=None, help="pgbench binary (default: from PATH)")
    p.add_argument("--pgbouncer-pool-mode", choices=["session", "transaction"], default="session")
    p.add_argument(
        "--pgcloak-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `pgcloak serve` (repeatable, e.g. --pgcloak-arg=--foo=1)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="raw results file")
    args = p.parse_args(argv)
    if args.prepared and "prepared" not in args.modes:
        args.modes = [*args.modes, "prepared"]
    if min(args.duration, args.jobs, args.repeat, args.scale) < 1:
        p.error("--duration, --jobs, --repeat and --scale must be >= 1")
    if (
        args.pgbouncer_pool_mode == "transaction"
        and "prepared" in args.modes
        and "pgbouncer" in args.targets
    ):
        log("warning: PgBouncer 1.18 in transaction mode does not support -M prepared")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    planned = len(args.modes) * len(args.clients) * len(args.targets) * args.repeat
    log(f"{planned} pgbench runs x {args.duration}s = ~{planned * args.duration}s of load")

    results: list[RunResult] = []
    target_info: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        upstream, admin_db, cluster_pgbench, embedded = stack.enter_context(upstream_server(args))
        pgbench = args.pgbench or cluster_pgbench or find_binary("pgbench", PG_BIN_DIRS)
        if pgbench is None:
            raise SystemExit("pgbench not found; pass --pgbench")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgcloak-bench-")))
        init = make_pgbench_init(pgbench, args.scale)
        ctx = BenchContext(upstream, args.dbname, pgbench, workdir, args, init, admin_db)

        if not args.no_init:
            log(f"recreating database {args.dbname} and running pgbench -i -s {args.scale}")
            t0 = time.monotonic()
            create_database(upstream, admin_db, args.dbname)
            init(upstream, args.dbname)
            log(f"initialised in {time.monotonic() - t0:.1f}s")

        targets: list[tuple[Target, Endpoint]] = []
        for name in args.targets:
            target = TARGETS[name](ctx)
            log(f"starting target {name}")
            stack.callback(target.stop)  # registered first: a half-started target is stopped too
            try:
                endpoint = target.start()
                target.prepare(endpoint)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                raise SystemExit(f"target {name} could not be started: {exc}") from exc
            # A 1 s smoke run proves the path works before we spend minutes measuring it.
            smoke = RunResult(name, "simple", 1, 1, 0, 1)
            run_pgbench(pgbench, endpoint, target.dbname(), smoke)
            if smoke.error:
                raise SystemExit(f"target {name} failed its smoke run: {smoke.error}")
            targets.append((target, endpoint))

        for mode in args.modes:
            for clients in args.clients:
                jobs = min(clients, args.jobs)
                for rep in range(args.repeat):
                    for target, endpoint in targets:
                        r = RunResult(target.name, mode, clients, jobs, rep, args.duration)
                        run_pgbench(pgbench, endpoint, target.dbname(), r)
                        results.append(r)
                        status = (
                            f"tps={_fmt(r.tps, '.1f')} lat={_fmt(r.latency_ms, '.3f')}ms"
                            if r.error is None
                            else f"ERROR {r.error}"
                        )
                        log(f"{mode:<8} c={clients:<3} rep={rep} {target.name:<10} {status}")
        target_info = {t.name: t.info() for t, _ in targets}

    cells = summarise(results, args.targets)
    goals = evaluate_goals(cells)
    ratios = cloaked_ratios(cells)
    print(render_table(cells, goals, ratios))

    report = {
        "meta": {
            "started_at": started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "git_revision": git_revision(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "python": sys.version.split()[0],
            "pgbench": tool_version(pgbench),
            "upstream": {"host": upstream.host, "port": upstream.port, "embedded": embedded},
            "dbname": args.dbname,
            "scale": args.scale,
            "duration_s": args.duration,
            "repeat": args.repeat,
            "jobs": args.jobs,
            "modes": args.modes,
            "clients": args.clients,
            "targets": target_info,
        },
        "runs": [asdict(r) for r in results],
        "summary": [asdict(c) for c in cells],
        "goals": goals,
        "cloaked_ratios": ratios,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log(f"raw results written to {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
