"""The `pgcloak` command: `serve`, `demo` and `version`.

Heavy modules (the proxy, the demo's embedded PostgreSQL) are imported inside the
command functions so `--help` and `version` stay fast and never depend on them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    return parser


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

    from pgcloak.proxy.server import run  # lazy: heavy, and not needed for --help

    return run(config, reload=reload)


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
    code: int = args.func(args)
    return code
