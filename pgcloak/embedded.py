"""Throwaway PostgreSQL clusters for the demo and the test suite.

A real server beats any mock for a wire-protocol proxy, so this module runs
`initdb` + `postgres` in a temporary directory and tears everything down
again. PostgreSQL refuses to run as root, so when we are root the cluster
files are owned by, and the server runs as, the `postgres` OS user.

Only the PostgreSQL server binaries and `cryptography` (for test
certificates) are needed; admin SQL goes through the cluster's own `psql` so
that no client driver becomes a runtime dependency.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

from pgcloak.certs import generate_self_signed

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "find_pg_bindir",
    "free_port",
    "generate_self_signed",
    "pid_alive",
]

log = logging.getLogger(__name__)

SERVER_USER = "postgres"  # OS user the server runs as when we are root
_LOG_LINE_PREFIX = "%m [%p] %q%u@%d "  # same as Debian's packaged clusters
_CONF_NAME = "pgcloak.conf"  # our managed settings, included from postgresql.conf
_BIND_ERRORS = ("could not bind", "Address already in use", "could not create any TCP/IP")


class EmbeddedPostgresError(RuntimeError):
    """A cluster could not be created, started or stopped."""


# Pristine initdb output per (bindir, superuser, auth, euid), reused within this process.
_TEMPLATES: dict[tuple[str, str, str, int], Path] = {}


def _drop_templates() -> None:
    for template in _TEMPLATES.values():
        shutil.rmtree(template.parent, ignore_errors=True)
    _TEMPLATES.clear()


atexit.register(_drop_templates)


def find_pg_bindir() -> Path:
    """Locate the server binaries: $PGCLOAK_PG_BIN, pg_config, Debian dirs, source install."""
    env = os.environ.get("PGCLOAK_PG_BIN")
    if env:
        path = Path(env)
        if not (path / "initdb").is_file():
            raise EmbeddedPostgresError(f"PGCLOAK_PG_BIN={env} does not contain initdb")
        return path
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        version = bindir.parent.name
        if re.fullmatch(r"\d+(\.\d+)*", version) and (bindir / "initdb").is_file():
            candidates.append((tuple(int(p) for p in version.split(".")), bindir))
    if candidates:
        return max(candidates)[1]
    local = Path("/usr/local/pgsql/bin")
    if (local / "initdb").is_file():
        return local
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries not found; set PGCLOAK_PG_BIN to the directory holding initdb"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers must tolerate the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (containers may not reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _conf_value(value: str) -> str:
    # Quoting is valid for every GUC type and avoids tokenizer surprises (e.g. IPs).
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _libpq_value(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_.\-/:@]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _clean_env() -> dict[str, str]:
    # Stray PGHOST/PGPORT/PGDATA/... from the caller must not redirect our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


class EmbeddedPostgres:
    """A private PostgreSQL cluster: `with EmbeddedPostgres() as pg: ...`.

    Settings favour speed over durability (fsync off etc.) because the data
    is throwaway. `hba` replaces pg_hba.conf verbatim (a `local all all
    trust` line is appended when it has no `local` line, so the manager's
    own psql keeps working). `ssl=True` creates a CA and server certificate
    for 127.0.0.1/localhost; clients verify with `ca_path`.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        auth: str = "trust",
        hba: Sequence[str] | None = None,
        ssl: bool = False,
        extra_conf: Mapping[str, str] | None = None,
        log_statement: str | None = None,
        log_min_messages: str = "warning",
        keep: bool = False,
        bindir: str | os.PathLike[str] | None = None,
        superuser: str = "postgres",
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int = port or 0
        self.auth = auth
        self.hba = list(hba) if hba is not None else None
        self.ssl = ssl
        self.extra_conf = dict(extra_conf or {})
        self.log_statement = log_statement
        self.log_min_messages = log_min_messages
        self.keep = keep
        self.superuser = superuser
        self.timeout = timeout
        self._bindir = Path(bindir) if bindir is not None else None
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._base: Path | None = None
        self._data_dir: Path | None = None
        self._started = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_pw: pwd.struct_passwd | None = None
        self.ca_path: Path | None = None
        self.cert_path: Path | None = None
        self.key_path: Path | None = None

    # -- paths and connection strings ---------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    def bin(self, name: str) -> Path:
        """Absolute path of a PostgreSQL program from the same installation."""
        path = self.bindir / name
        if not path.is_file():
            raise EmbeddedPostgresError(f"{name} not found in {self.bindir}")
        return path

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding sockets, certificates and (by default) data."""
        if self._base is None:
            raise EmbeddedPostgresError("cluster not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EmbeddedPostgresError("cluster not started")
        return self._data_dir

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._started

    @property
    def pid(self) -> int | None:
        """Postmaster PID, or None when not running."""
        return self._proc.pid if self._proc is not None else None

    def dsn(self, dbname: str = "postgres", user: str = "postgres", **kw: Any) -> str:
        """libpq keyword/value string over TCP; extra keywords (sslmode, password...) appended."""
        parts = {"host": self.host, "port": str(self.port), "dbname": dbname, "user": user}
        parts.update({k: str(v) for k, v in kw.items() if v is not None})
        return " ".join(f"{k}={_libpq_value(v)}" for k, v in parts.items())

    def url(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        **params: Any,
    ) -> str:
        """postgresql:// URL; extra keywords become query parameters."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        query = urlencode({k: str(v) for k, v in params.items() if v is not None})
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}" + (
            f"?{query}" if query else ""
        )

    @property
    def psql_args(self) -> list[str]:
        """argv prefix for psql against this cluster (append -d DB, -c SQL, ...)."""
        return [
            str(self.bin("psql")),
            "-X",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
        ]

    def psql(self, sql: str, dbname: str = "postgres", user: str | None = None) -> str:
        """Run SQL through psql over the Unix socket; returns unaligned tuples-only output."""
        args = self.psql_args
        if user is not None:
            args[args.index("-U") + 1] = user
        args += ["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-"]
        proc = subprocess.run(
            args,
            input=sql,
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=self.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedPostgres:
        """initdb (unless the data dir already holds a cluster), configure, start, wait ready."""
        if self._started:
            return self
        self._server_pw = None
        if os.geteuid() == 0:
            try:
                self._server_pw = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise EmbeddedPostgresError(
                    f"running as root but there is no {SERVER_USER!r} OS user to run PostgreSQL"
                ) from None
        ok = False
        try:
            self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if self.ssl:
                self.cert_path, self.key_path, self.ca_path = generate_self_signed(
                    self.base_dir / "ssl",
                    list(dict.fromkeys((self.host, "localhost"))),
                    owner=self._server_pw.pw_name if self._server_pw else None,
                )
            self._write_hba()
            self._start_server()
            ok = True
        finally:
            if not ok:  # also on KeyboardInterrupt: never leave a half-started cluster
                self._cleanup_after_failure()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Fast shutdown (like pg_ctl stop -m fast), then remove the temp dir unless keep=True."""
        atexit.unregister(self.stop)
        if self._started:
            self._started = False
            self._stop_server()
        self._remove_dirs()

    def reload(self) -> None:
        """Re-read postgresql.conf / pg_hba.conf (SIGHUP)."""
        if self._proc is None:
            raise EmbeddedPostgresError("cluster not running")
        self._proc.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        """Stop and start again on the same port (e.g. to test upstream reconnects)."""
        self._stop_server()
        self._started = False
        self._start_server(keep_port=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- internals -----------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self._server_pw is not None:
            os.chown(path, self._server_pw.pw_uid, self._server_pw.pw_gid)

    def _prepare_dirs(self) -> None:
        self._base = Path(tempfile.mkdtemp(prefix="pgcloak-pg-"))
        # Readable by all so that clients running as other users can reach ca.crt/sockets;
        # the data directory itself is 0700 (initdb insists).
        os.chmod(self._base, 0o755)
        self._chown(self._base)
        if self._given_data_dir is not None:
            self._data_dir = self._given_data_dir.absolute()
            self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._chown(self._data_dir)
        else:
            self._data_dir = self._base / "data"

    def _as_owner(self) -> dict[str, Any]:
        """subprocess kwargs that run a program as the cluster owner (postgres when root)."""
        env = _clean_env()
        kwargs: dict[str, Any] = {"env": env, "cwd": self.base_dir, "stdin": subprocess.DEVNULL}
        if self._server_pw is not None:
            kwargs.update(user=self._server_pw.pw_uid, group=self._server_pw.pw_gid)
            kwargs["extra_groups"] = []
            env.update(HOME=self._server_pw.pw_dir, USER=SERVER_USER, LOGNAME=SERVER_USER)
        return kwargs

    def _run(self, cmd: list[str], *, timeout: float | None = None) -> None:
        """Run a server-side program as the cluster owner; raise with its output on failure."""
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
            check=False,
            **self._as_owner(),
        )
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} failed "
                f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )

    def _initdb(self) -> None:
        """Fill the data dir from this process's initdb template (initdb once, copy after).

        initdb costs seconds while a copy costs a fraction of that, and test
        sessions create several clusters.
        """
        data = self.data_dir
        if data.exists() and any(data.iterdir()):
            raise EmbeddedPostgresError(f"{data} is neither empty nor a PostgreSQL data directory")
        try:
            key = (str(self.bindir), self.superuser, self.auth, os.geteuid())
            template = _TEMPLATES.get(key)
            if template is None or not (template / "PG_VERSION").exists():
                holder = Path(tempfile.mkdtemp(prefix="pgcloak-initdb-"))
                os.chmod(holder, 0o755)
                self._chown(holder)
                template = holder / "data"
                ok = False
                try:
                    self._initdb_into(template)
                    ok = True
                finally:
                    if not ok:  # interrupted or failed: never leave a half-made template
                        shutil.rmtree(holder, ignore_errors=True)
                _TEMPLATES[key] = template
            if not data.exists():
                data.mkdir(mode=0o700)
                self._chown(data)
            self._run(["cp", "-a", f"{template}/.", str(data)])
        except EmbeddedPostgresError as e:
            if self._server_pw is not None and self._given_data_dir is not None:
                raise EmbeddedPostgresError(
                    f"{e}\nhint: every parent directory of {data} must be "
                    f"searchable by the {SERVER_USER} OS user"
                ) from e
            raise

    def _initdb_into(self, data: Path) -> None:
        self._run(
            [
                str(self.bin("initdb")),
                "-D",
                str(data),
                "-U",
                self.superuser,
                f"--auth={self.auth}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=max(self.timeout, 120.0),
        )
        with (data / "postgresql.conf").open("a") as f:
            f.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")

    def _write_conf(self) -> None:
        settings: dict[str, str] = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "log_min_messages": self.log_min_messages,
            "log_line_prefix": _LOG_LINE_PREFIX,
            "logging_collector": "off",  # the postmaster's stderr is server.log
        }
        if self.log_statement is not None:
            settings["log_statement"] = self.log_statement
        if self.ssl and self.cert_path is not None and self.key_path is not None:
            settings.update(
                ssl="on", ssl_cert_file=str(self.cert_path), ssl_key_file=str(self.key_path)
            )
        settings.update(self.extra_conf)
        path = self.data_dir / _CONF_NAME
        path.write_text("".join(f"{k} = {_conf_value(v)}\n" for k, v in settings.items()))
        self._chown(path)

    def _write_hba(self) -> None:
        if self.hba is None:
            return
        lines = list(self.hba)
        if not any(line.split()[:1] == ["local"] for line in lines):
            lines.append("local all all trust")
        path = self.data_dir / "pg_hba.conf"
        path.write_text("\n".join(lines) + "\n")
        self._chown(path)

    def _start_server(self, keep_port: bool = False) -> None:
        # The postmaster is our own child (not daemonised by pg_ctl) so that we reap it:
        # in containers without an init, pg_ctl's orphaned postmaster would stay a zombie.
        fixed = bool(self._requested_port) or keep_port
        attempts = 1 if fixed else 5
        for attempt in range(attempts):
            if not fixed:
                self.port = free_port(self.host)
            self._write_conf()
            try:
                self._spawn_and_wait()
            except EmbeddedPostgresError as e:
                text = self.log_text()
                if attempt + 1 < attempts and any(m in text for m in _BIND_ERRORS):
                    continue
                raise EmbeddedPostgresError(f"{e}\n--- server.log ---\n{text[-4000:]}") from e
            self._started = True
            return

    def _spawn_and_wait(self) -> None:
        with self.log_path.open("ab") as logf:
            self._chown(self.log_path)
            # New session: a terminal Ctrl-C must reach us, not the postmaster, so
            # shutdown stays ordered (proxy first, then the cluster).
            self._proc = subprocess.Popen(
                [str(self.bin("postgres")), "-D", str(self.data_dir)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_owner(),
            )
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self.timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise EmbeddedPostgresError(f"postgres exited with code {code} during startup")
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # Line 8 is the postmaster status; "ready" means accepting connections.
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self._proc.pid)
                    and lines[7].strip() == "ready"
                ):
                    return
            if time.monotonic() > deadline:
                self._kill_server()
                raise EmbeddedPostgresError(f"postgres not ready after {self.timeout:.0f}s")
            time.sleep(0.02)

    def _stop_server(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGINT = fast shutdown; SIGQUIT = immediate; SIGKILL as a last resort.
        for sig, wait in ((signal.SIGINT, self.timeout), (signal.SIGQUIT, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                log.warning("embedded postgres ignored signal %d", sig)
        proc.kill()
        proc.wait()

    def _kill_server(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _remove_dirs(self) -> None:
        if self._base is None:
            return
        if self.keep:
            log.info("keeping embedded cluster files in %s", self._base)
        else:
            shutil.rmtree(self._base, ignore_errors=True)
        self._base = None

    def _cleanup_after_failure(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._stop_server()
        self._started = False
        self._remove_dirs()
