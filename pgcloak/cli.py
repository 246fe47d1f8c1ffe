"""The `pgcloak` command: `serve`, `demo`, `version`, and the registry tools
(`init`, `keys new|rotate-columns|rewrap`, `map list|show`, `schema check|export`).

Heavy modules (the proxy, the demo's embedded PostgreSQL) are imported inside the
command functions so `--help` and `version` stay fast and never depend on them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pgcloak import __version__
from pgcloak.config import Config
from pgcloak.logs import setup_logging
from pgcloak.settings import (
    CONFIG_OPTION,
    OPTIONS,
    ConfigError,
    Option,
    load_config,
    parse_host_port,
    parse_upstream_url,
)

__all__ = ["build_parser", "main"]


def _help(option: Option) -> str:
    text = f"{option.help} (env {option.env}; default: {option.default})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgcloak",
        description="PostgreSQL wire-protocol gateway that cloaks schema names and encrypts "
        "column values.",
    )
    parser.add_argument("--version", action="version", version=f"pgcloak {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. Settings come from, in increasing precedence: built-in "
        "defaults, the TOML file (--config), PGCLOAK_* environment variables, these flags. "
        "SIGHUP re-reads the file and the environment; SIGTERM/SIGINT drain and stop.",
    )
    # default=None everywhere: 'not given' must be distinguishable so lower layers show through.
    for option in (CONFIG_OPTION, *OPTIONS):
        serve.add_argument(
            option.flag, dest=option.key, metavar=option.metavar, default=None, help=_help(option)
        )
    # Internal: set by the --workers supervisor on each worker process it starts.
    serve.add_argument("--worker-slot", dest="worker_slot", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="start a throwaway PostgreSQL with sample data and serve in front of it",
        description="Start a throwaway PostgreSQL cluster with sample data and run the proxy "
        "in front of it; with --upstream, serve in front of that server instead.",
    )
    demo.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:6432",
        help="address clients connect to (default: 127.0.0.1:6432)",
    )
    demo.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default="127.0.0.1:9187",
        help="HTTP listener for /metrics and health checks; 'off' disables it "
        "(default: 127.0.0.1:9187)",
    )
    demo.add_argument(
        "--upstream",
        metavar="URL",
        default=None,
        help="serve in front of this postgresql:// server instead of starting one",
    )
    demo.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the throwaway cluster's data directory on exit (its path is printed)",
    )
    demo.set_defaults(func=_cmd_demo)

    version = sub.add_parser("version", help="print the version and exit")
    version.set_defaults(func=_cmd_version)
    _add_registry_commands(sub)
    return parser


# -- registry tools ------------------------------------------------------------------

_UPSTREAM_ENV = "PGCLOAK_UPSTREAM"


def _add_registry_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def connection_args(p: argparse.ArgumentParser, key: bool) -> None:
        p.add_argument(
            "--upstream",
            metavar="DSN",
            default=None,
            help="the database: a postgresql:// URL or libpq 'key=value' string, connecting "
            f"as a role that may use schema pgcloak (env {_UPSTREAM_ENV}; libpq PG* "
            "variables and ~/.pgpass apply)",
        )
        if key:
            p.add_argument(
                "--master-key-file",
                metavar="PATH",
                default=None,
                help="file holding the base64 master key (mode 0600); default: "
                "$PGCLOAK_MASTER_KEY, else the file named by $PGCLOAK_MASTER_KEY_FILE",
            )

    init = sub.add_parser(
        "init",
        help="install or upgrade the pgcloak registry in a database",
        description="Install the registry (schema pgcloak) into a database, or upgrade it to "
        "this pgcloak's version; does nothing when it is current. With a master key, also "
        "records (or verifies) the key's public check value.",
    )
    connection_args(init, key=True)
    init.set_defaults(func=_cmd_init)

    keys = sub.add_parser("keys", help="master key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    new = keys_sub.add_parser(
        "new",
        help="print a fresh random master key (base64 of 32 bytes)",
        description="Print a fresh master key, or write it to a new file with mode 0600.",
    )
    new.add_argument(
        "--out", metavar="PATH", default=None, help="write to this new file instead of stdout"
    )
    new.set_defaults(func=_cmd_keys_new)
    rotate = keys_sub.add_parser(
        "rotate-columns",
        help="add a new data key version for encrypted columns",
        description="Give every encrypted column (or the key scope of --column) a new data "
        "key version, wrapped by the configured KEK. Stored values stay readable (all versions "
        "are kept); proxies encrypt new values with the newest version after their reload.",
    )
    connection_args(rotate, key=True)
    rotate.add_argument(
        "--column",
        metavar="SCHEMA.TABLE.COLUMN",
        default=None,
        help="only this column's scope (all columns sharing its key); a bare table.column "
        "means schema public",
    )
    _kek_args(rotate)
    rotate.set_defaults(func=_cmd_keys_rotate)
    rewrap = keys_sub.add_parser(
        "rewrap",
        help="move the registry to a new master key and re-wrap every data key",
        description="With --from-master-key-file OLD: re-encrypt the registry under the new "
        "master key (--master-key-file or the environment) and replace its key check. In every "
        "case, re-wrap all column data keys with the configured KEK (local: the new master key; "
        "vault: the transit key's newest version). One transaction. Stop the proxies first and "
        "restart them with the new key.",
    )
    connection_args(rewrap, key=True)
    rewrap.add_argument(
        "--from-master-key-file",
        metavar="PATH",
        default=None,
        help="file holding the current (old) master key; omit to keep the master key",
    )
    _kek_args(rewrap)
    rewrap.set_defaults(func=_cmd_keys_rewrap)

    map_cmd = sub.add_parser("map", help="show semantic <-> physical names (needs the master key)")
    map_sub = map_cmd.add_subparsers(dest="map_command", metavar="COMMAND", required=True)
    map_list = map_sub.add_parser("list", help="list every cloaked object")
    connection_args(map_list, key=True)
    map_list.set_defaults(func=_cmd_map_list)
    map_show = map_sub.add_parser("show", help="details of one table, view or sequence")
    map_show.add_argument("name", metavar="NAME", help="semantic name, optionally schema.name")
    connection_args(map_show, key=True)
    map_show.set_defaults(func=_cmd_map_show)

    schema = sub.add_parser("schema", help="compare or export the cloaked schema")
    schema_sub = schema.add_subparsers(dest="schema_command", metavar="COMMAND", required=True)
    check = schema_sub.add_parser(
        "check",
        help="compare the registry with pg_catalog; exit 1 on any difference",
        description="Check that every registered object exists under its physical name and "
        "that no relation, column or constraint exists that the registry does not know.",
    )
    connection_args(check, key=True)
    check.set_defaults(func=_cmd_schema_check)
    export = schema_sub.add_parser("export", help="print the schema as DDL with semantic names")
    connection_args(export, key=True)
    export.set_defaults(func=_cmd_schema_export)


def _kek_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML file to take kek and vault_* settings from (env PGCLOAK_CONFIG)",
    )
    p.add_argument("--kek", default=None, help="local or vault (env PGCLOAK_KEK; default: local)")
    p.add_argument(
        "--vault-url", metavar="URL", default=None, help="env PGCLOAK_VAULT_URL or VAULT_ADDR"
    )
    p.add_argument(
        "--vault-key",
        metavar="NAME",
        default=None,
        help="transit key, NAME or MOUNT/NAME (env PGCLOAK_VAULT_KEY); the token comes from "
        "PGCLOAK_VAULT_TOKEN or VAULT_TOKEN",
    )


class _ToolError(Exception):
    """A registry tool failed; the message is for the operator."""


def _connect(args: argparse.Namespace) -> Any:
    import os

    import psycopg

    dsn = args.upstream or os.environ.get(_UPSTREAM_ENV)
    if not dsn:
        raise _ToolError(f"no database given: use --upstream DSN or set {_UPSTREAM_ENV}")
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise _ToolError(f"cannot connect to the database: {exc}") from None


def _load_registry(args: argparse.Namespace, conn: Any) -> Any:
    """Check the registry version and the master key, then decrypt the registry."""
    from pgcloak.crypto.keys import MasterKey, MasterKeyError
    from pgcloak.crypto.names import DecryptionError, NameCipher
    from pgcloak.registry.db import KeyMismatch, check_master_key, fetch_registry, registry_status
    from pgcloak.registry.store import RegistryError

    try:
        master = MasterKey.load(args.master_key_file)
    except MasterKeyError as exc:
        raise _ToolError(str(exc)) from None
    status = registry_status(conn)
    if not status.ok:
        raise _ToolError(status.describe())
    try:
        check_master_key(conn, master)
        return fetch_registry(conn, NameCipher.from_master(master))
    except (KeyMismatch, DecryptionError, RegistryError) as exc:
        raise _ToolError(str(exc)) from None


def _run_tool(args: argparse.Namespace, body: Callable[[Any], int]) -> int:
    import psycopg

    try:
        with _connect(args) as conn:
            return body(conn)
    except _ToolError as exc:
        _print_problems([str(exc)])
        return 1
    except psycopg.Error as exc:
        _print_problems([f"database error: {exc}"])
        return 1


def _cmd_init(args: argparse.Namespace) -> int:
    import os

    from pgcloak.crypto.keys import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKey, MasterKeyError
    from pgcloak.registry.install import InstallError, ScriptSet, install

    master = None
    # The key is optional for init, but one that is configured must be valid.
    if args.master_key_file is not None or any(
        os.environ.get(var, "").strip() for var in (MASTER_KEY_ENV, MASTER_KEY_FILE_ENV)
    ):
        try:
            master = MasterKey.load(args.master_key_file)
        except MasterKeyError as exc:
            _print_problems([str(exc)])
            return 2
    try:
        scripts = ScriptSet.scan()
    except InstallError as exc:
        _print_problems([str(exc)])
        return 1

    def body(conn: Any) -> int:
        try:
            result = install(conn, master, scripts)
        except InstallError as exc:
            raise _ToolError(str(exc)) from None
        for action in result.actions:
            print(action.removeprefix("= "))
        if master is None:
            print("no master key given: its check value will be recorded on first use")
        print(f"registry: {result.after.describe()}")
        return 0

    return _run_tool(args, body)


def _cmd_keys_new(args: argparse.Namespace) -> int:
    import os

    from pgcloak.crypto.keys import new_master_key

    key = new_master_key()
    if args.out is None:
        print(key)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        _print_problems([f"cannot create {args.out!r}: {exc.strerror or exc}"])
        return 1
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    print(f"wrote a new master key to {args.out} (mode 0600); keep a copy somewhere safe")
    return 0


def _master_key(path: str | None) -> Any:
    from pgcloak.crypto.keys import MasterKey, MasterKeyError

    try:
        return MasterKey.load(path)
    except MasterKeyError as exc:
        raise _ToolError(str(exc)) from None


def _kek_config(args: argparse.Namespace) -> Config:
    keys = ("config", "kek", "vault_url", "vault_key")
    try:
        return load_config({k: getattr(args, k) for k in keys})
    except ConfigError as exc:
        raise _ToolError("; ".join(exc.problems)) from None


def _key_errors() -> tuple[type[Exception], ...]:
    from pgcloak.crypto.names import DecryptionError
    from pgcloak.crypto.values import ValueDecryptionError
    from pgcloak.registry.db import KeyMismatch
    from pgcloak.registry.rotation import RotationError
    from pgcloak.registry.store import RegistryError

    return (DecryptionError, ValueDecryptionError, KeyMismatch, RotationError, RegistryError)


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from pgcloak.crypto.kek import key_wrapper
    from pgcloak.registry.rotation import UnknownColumn, rotate_column_keys

    def body(conn: Any) -> int:
        master = _master_key(args.master_key_file)
        try:
            wrapper = key_wrapper(_kek_config(args), master)
            done = rotate_column_keys(conn, master, wrapper, column=args.column)
        except UnknownColumn:
            raise _ToolError(f"no encrypted column {args.column!r} in the registry") from None
        except _key_errors() as exc:
            raise _ToolError(str(exc)) from None
        for scope in done:
            print(
                f"scope {scope.scope}: new key version {scope.version} ({scope.columns} column(s))"
            )
        if not done:
            print("no encrypted columns: nothing to rotate")
        return 0

    return _run_tool(args, body)


def _cmd_keys_rewrap(args: argparse.Namespace) -> int:
    import dataclasses

    from pgcloak.crypto.kek import key_wrapper
    from pgcloak.registry.rotation import rewrap

    def body(conn: Any) -> int:
        new = _master_key(args.master_key_file)
        old = new if args.from_master_key_file is None else _master_key(args.from_master_key_file)
        try:
            config = _kek_config(args)
            target = key_wrapper(config, new)
            vault = target if config.kek == "vault" else None
            if vault is None and config.vault_url and config.vault_key:
                vault = key_wrapper(dataclasses.replace(config, kek="vault"), new)
            result = rewrap(conn, old, new, target, vault=vault)
        except _key_errors() as exc:
            raise _ToolError(str(exc)) from None
        if result.master_key_changed:
            print(f"re-encrypted {result.names} registry object(s) under the new master key")
        print(f"re-wrapped {result.data_keys} data key(s) with kek = {config.kek}")
        if result.master_key_changed:
            print("restart every pgcloak proxy with the new master key")
            if result.other_sessions:
                print(
                    f"warning: {result.other_sessions} other session(s) were connected; a proxy "
                    "still using the old key must not write to the registry",
                    file=sys.stderr,
                )
        return 0

    return _run_tool(args, body)


def _cmd_map_list(args: argparse.Namespace) -> int:
    from pgcloak.registry.tools import map_list

    def body(conn: Any) -> int:
        for line in map_list(_load_registry(args, conn)):
            print(line)
        return 0

    return _run_tool(args, body)


def _cmd_map_show(args: argparse.Namespace) -> int:
    from pgcloak.registry.tools import find_table, map_show

    def body(conn: Any) -> int:
        registry = _load_registry(args, conn)
        matches = find_table(registry, args.name)
        if not matches:
            raise _ToolError(f"no cloaked table, view or sequence called {args.name!r}")
        for i, obj in enumerate(matches):
            if i:
                print()
            for line in map_show(registry, obj):
                print(line)
        return 0

    return _run_tool(args, body)


def _cmd_schema_check(args: argparse.Namespace) -> int:
    from pgcloak.registry.tools import check_schema

    def body(conn: Any) -> int:
        registry = _load_registry(args, conn)
        findings = check_schema(conn, registry)
        for finding in findings:
            print(finding)
        if findings:
            print(f"{len(findings)} difference(s) between the registry and the catalog")
            return 1
        print(f"registry and catalog agree ({len(registry)} registered objects)")
        return 0

    return _run_tool(args, body)


def _cmd_schema_export(args: argparse.Namespace) -> int:
    from pgcloak.registry.tools import export_schema

    def body(conn: Any) -> int:
        print(export_schema(conn, _load_registry(args, conn)), end="")
        return 0

    return _run_tool(args, body)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 2
    setup_logging(config.log_level, config.log_format)

    def reload() -> Config:
        # Same argv, fresh file and environment; raises ConfigError (a ValueError) if bad.
        return load_config(args)

    # Lazy imports: heavy, and not needed for --help.
    from pgcloak.proxy.server import run
    from pgcloak.proxy.workers import supervise, worker_slot

    if args.worker_slot is not None:
        # A SIGHUP fanned out by the supervisor before this worker's loop has its
        # handlers must not kill it (SIGHUP's default action is to terminate).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if config.workers > 1 and args.worker_slot is None:
        return supervise(config, list(args.argv))
    return run(config, reload=reload, worker_slot=worker_slot(args.worker_slot))


def _cmd_demo(args: argparse.Namespace) -> int:
    problems: list[str] = []
    listen_host, listen_port = "", 0
    admin_host: str | None = None
    admin_port = 0
    try:
        listen_host, listen_port = parse_host_port(args.listen)
    except ValueError as exc:
        problems.append(f"invalid --listen {args.listen!r}: {exc}")
    if args.admin.strip().lower() not in ("", "off", "none"):
        try:
            admin_host, admin_port = parse_host_port(args.admin)
        except ValueError as exc:
            problems.append(f"invalid --admin {args.admin!r}: {exc}")
    if args.upstream is not None:
        try:
            parse_upstream_url(args.upstream)
        except ValueError as exc:
            problems.append(f"invalid --upstream: {exc}")
    if problems:
        _print_problems(problems)
        return 2
    setup_logging("INFO", "text")

    from pgcloak.demo import run_demo  # lazy: pulls in the embedded cluster

    return run_demo(
        listen_host, listen_port, admin_host, admin_port, args.upstream, keep_data=args.keep_data
    )


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"pgcloak {__version__}")
    return 0


def _print_problems(problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"pgcloak: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pgcloak` console script; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = _serve_argv(argv if argv is not None else sys.argv[1:])
    code: int = args.func(args)
    return code


def _serve_argv(argv: list[str]) -> list[str]:
    """The arguments after `serve`, for the worker processes a supervisor starts."""
    return argv[argv.index("serve") + 1 :] if "serve" in argv else []
