"""Install or upgrade the registry (sql/) over a normal connection: `pgcloak init`.

Idempotent and serialized: everything runs in one transaction under an advisory
lock, so two concurrent `init`s cannot both install, and a failure leaves the
database as it was. Upgrades follow the shortest chain of ``pgcloak--A--B.sql``
scripts, the way ALTER EXTENSION ... UPDATE does; a registry installed with
CREATE EXTENSION is upgraded with ALTER EXTENSION so the extension's own
bookkeeping stays right.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgcloak.crypto.keys import MasterKey
from pgcloak.registry.db import KeyMismatch, check_master_key, registry_status
from pgcloak.registry.store import CURRENT_VERSION, RegistryStatus

__all__ = [
    "SQL_DIR_ENV",
    "InstallError",
    "InstallResult",
    "ScriptSet",
    "find_sql_dir",
    "install",
]

Conn = psycopg.Connection[tuple[Any, ...]]

SQL_DIR_ENV = "PGCLOAK_SQL_DIR"
EXTENSION = "pgcloak"
_LOCK_KEY = 0x7067636C6F616B  # 'pgcloak' in ASCII: pg_advisory_xact_lock key for init
_VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SCRIPT_RE = re.compile(r"pgcloak--(?P<a>[0-9][0-9.]*)(?:--(?P<b>[0-9][0-9.]*))?\.sql")


class InstallError(RuntimeError):
    """Installation or upgrade cannot proceed; the message says why and what to do."""


def find_sql_dir() -> Path:
    """The directory holding pgcloak.control and the scripts.

    $PGCLOAK_SQL_DIR, else sql/ next to the package (a source checkout), else
    <prefix>/share/pgcloak/sql (an installed data directory).
    """
    import sys

    candidates: list[Path] = []
    env = os.environ.get(SQL_DIR_ENV)
    if env:
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "sql")
    candidates.append(Path(sys.prefix) / "share" / "pgcloak" / "sql")
    for path in candidates:
        if (path / f"{EXTENSION}.control").is_file():
            return path
    raise InstallError(
        "cannot find the registry SQL files (pgcloak.control); set "
        f"{SQL_DIR_ENV} to the sql/ directory of the pgcloak source"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part)


@dataclass(frozen=True)
class ScriptSet:
    """The control file's default version and the scripts available in a directory."""

    directory: Path
    default_version: str
    base: dict[str, Path] = field(default_factory=dict)  # version -> install script
    upgrades: dict[tuple[str, str], Path] = field(default_factory=dict)  # (from, to) -> script

    @classmethod
    def scan(cls, directory: Path | None = None) -> ScriptSet:
        directory = directory or find_sql_dir()
        control = (directory / f"{EXTENSION}.control").read_text(encoding="utf-8")
        m = re.search(r"^\s*default_version\s*=\s*'([^']+)'", control, re.MULTILINE)
        if m is None or _VERSION_RE.fullmatch(m.group(1)) is None:
            raise InstallError(f"{directory / 'pgcloak.control'} has no valid default_version")
        base: dict[str, Path] = {}
        upgrades: dict[tuple[str, str], Path] = {}
        for path in sorted(directory.glob("pgcloak--*.sql")):
            sm = _SCRIPT_RE.fullmatch(path.name)
            if sm is None:
                continue
            if sm.group("b") is None:
                base[sm.group("a")] = path
            else:
                upgrades[(sm.group("a"), sm.group("b"))] = path
        return cls(directory, m.group(1), base, upgrades)

    def upgrade_path(self, start: str, target: str) -> list[tuple[str, str]] | None:
        """Shortest chain of upgrade steps start -> target ([] if equal, None if none)."""
        if start == target:
            return []
        previous: dict[str, tuple[str, str]] = {}
        queue = deque([start])
        seen = {start}
        while queue:
            current = queue.popleft()
            for a, b in sorted(self.upgrades, key=lambda s: _version_key(s[1])):
                if a != current or b in seen:
                    continue
                previous[b] = (a, b)
                if b == target:
                    chain = [(a, b)]
                    while chain[0][0] != start:
                        chain.insert(0, previous[chain[0][0]])
                    return chain
                seen.add(b)
                queue.append(b)
        return None

    def install_plan(self, target: str) -> tuple[str, list[tuple[str, str]]]:
        """Base version to install and the upgrade chain to reach `target` from it."""
        best: tuple[str, list[tuple[str, str]]] | None = None
        for version in self.base:
            chain = self.upgrade_path(version, target)
            if chain is not None and (best is None or len(chain) < len(best[1])):
                best = (version, chain)
        if best is None:
            raise InstallError(f"no install script leads to registry version {target}")
        return best

    def script(self, step: tuple[str, str] | str) -> str:
        path = self.base[step] if isinstance(step, str) else self.upgrades[step]
        return load_script(path)


def load_script(path: Path) -> str:
    """Script text minus psql meta-commands (the ``\\echo ... \\quit`` guard)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("\\")) + "\n"


@dataclass
class InstallResult:
    before: RegistryStatus
    after: RegistryStatus
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after or any(not a.startswith("=") for a in self.actions)


def _schema_is_empty(conn: Conn) -> bool | None:
    """None if schema pgcloak does not exist, else whether it holds no objects."""
    row = conn.execute(
        "SELECT n.oid, "
        "EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid) OR "
        "EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace = n.oid) OR "
        "EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.typnamespace = n.oid) "
        "FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgcloak'"
    ).fetchone()
    return None if row is None else not row[1]


def install(
    conn: Conn,
    master: MasterKey | None = None,
    scripts: ScriptSet | None = None,
    target: str | None = None,
) -> InstallResult:
    """Install the registry, upgrade it to `target`, or confirm it is current.

    Runs in one transaction on `conn` (which must not be inside a transaction
    already). With `master`, also records or verifies the master key's check value.
    `target` defaults to the control file's default_version, which must be the
    version this pgcloak supports (an explicit target is for tests and tooling).
    """
    scripts = scripts or ScriptSet.scan()
    if target is None:
        target = scripts.default_version
        if target != CURRENT_VERSION:
            raise InstallError(
                f"the SQL files install registry version {target}, but this pgcloak expects "
                f"{CURRENT_VERSION}; they come from different pgcloak releases"
            )
    try:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            before = registry_status(conn)
            actions = _install_locked(conn, scripts, before, target)
            if master is not None:
                outcome = check_master_key(conn, master, record=True)
                if outcome == "recorded":
                    actions.append("recorded the master key check value")
                else:
                    actions.append("= master key matches the registry")
            after = registry_status(conn)
    except KeyMismatch as exc:
        raise InstallError(f"{exc}; refusing to continue (nothing was changed)") from None
    except psycopg.Error as exc:
        raise InstallError(f"installing the registry failed: {exc}") from exc
    return InstallResult(before, after, actions)


def _install_locked(
    conn: Conn, scripts: ScriptSet, before: RegistryStatus, target: str
) -> list[str]:
    actions: list[str] = []
    if before.extension_version is not None:
        current = before.extension_version
        if current == target:
            actions.append(f"= registry is installed as extension pgcloak {current}; up to date")
            return actions
        if scripts.upgrade_path(current, target) is None:
            raise InstallError(
                f"extension pgcloak {current} cannot be upgraded to {target} with these scripts"
            )
        try:
            conn.execute(f"ALTER EXTENSION pgcloak UPDATE TO '{target}'")
        except psycopg.Error as exc:
            raise InstallError(
                f"ALTER EXTENSION pgcloak UPDATE TO '{target}' failed ({exc}); copy the "
                "pgcloak--*.sql files into the server's extension directory first"
            ) from exc
        actions.append(f"upgraded extension pgcloak {current} -> {target}")
        return actions

    if before.state == "missing":
        empty = _schema_is_empty(conn)
        if empty is False:
            raise InstallError(
                "schema pgcloak exists and contains objects but no registry; "
                "refusing to install into it (rename or drop it first)"
            )
        base, chain = scripts.install_plan(target)
        if empty is None:
            conn.execute("CREATE SCHEMA pgcloak")
            actions.append("created schema pgcloak")
        conn.execute(scripts.script(base))
        actions.append(f"installed registry version {base}")
        for step in chain:
            conn.execute(scripts.script(step))
            actions.append(f"upgraded registry {step[0]} -> {step[1]}")
        return actions

    installed = before.version
    if installed == target:
        actions.append(f"= registry version {installed} is installed; up to date")
        return actions
    upgrade = scripts.upgrade_path(installed, target) if installed is not None else None
    if upgrade is None:
        raise InstallError(
            f"the registry has version {installed!r}, which these scripts cannot upgrade to "
            f"{target} (is it from a newer pgcloak?)"
        )
    for step in upgrade:
        conn.execute(scripts.script(step))
        actions.append(f"upgraded registry {step[0]} -> {step[1]}")
    return actions
