"""Build a validated `Config` from defaults, a TOML file, `PGCLOAK_*` env vars and flags.

Precedence, lowest to highest: built-in defaults < TOML file < environment < command line.
Every bad value is reported (not just the first) with the option spelled the way the
operator wrote it and where it came from, so a broken deployment is fixed in one round.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from pgcloak import settings_values as sv
from pgcloak.config import Config, Upstream
from pgcloak.settings_values import (
    KEK_KINDS,
    SSLMODES,
    parse_host_port,
    parse_size,
    parse_upstream_url,
)

__all__ = [
    "CONFIG_OPTION",
    "OPTIONS",
    "SSLMODES",
    "ConfigError",
    "Option",
    "load_config",
    "parse_host_port",
    "parse_size",
    "parse_upstream_url",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODES = ("dev", "prod")
CLOAK_MODES = ("auto", "on", "off")
# TOML tables (not scalar options): [encrypt] column encryption rules.
RESERVED_TABLES = ("encrypt",)

_D = Config()


def _fmt_seconds(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Option:
    """One setting: its TOML key doubles as argparse dest; flag and env var derive from it."""

    key: str
    metavar: str
    help: str
    default: str  # human-readable default, shown in --help

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "PGCLOAK_" + self.key.upper()


CONFIG_OPTION = Option("config", "PATH", "TOML configuration file", "none")

OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        "HOST:PORT",
        "address clients connect to; IPv6 as [::1]:6432",
        f"{_D.listen_host}:{_D.listen_port}",
    ),
    Option(
        "upstream",
        "URL",
        f"the real PostgreSQL server, {sv.URL_SHAPE} (also postgres://; query parameters "
        "sslmode, sslrootcert, sslcert, sslkey; a unix-socket directory via ?host=/path)",
        f"postgresql://{_D.upstream.host}:{_D.upstream.port}",
    ),
    Option(
        "admin",
        "HOST:PORT",
        "HTTP listener for /metrics and health checks; 'off' disables it",
        f"{_D.admin_host}:{_D.admin_port}",
    ),
    Option(
        "tls_cert",
        "PATH",
        "PEM certificate for client-facing TLS (needs --tls-key); without it clients "
        "asking for TLS are told the server does not support it",
        "none",
    ),
    Option("tls_key", "PATH", "PEM private key for --tls-cert", "none"),
    Option(
        "upstream_sslmode",
        "MODE",
        f"TLS to the upstream: {', '.join(SSLMODES)}; overrides sslmode in the URL",
        _D.upstream.sslmode,
    ),
    Option(
        "upstream_sslrootcert",
        "PATH",
        "CA certificates used to verify the upstream server (verify-ca/verify-full)",
        "none",
    ),
    Option("upstream_sslcert", "PATH", "client certificate presented to the upstream", "none"),
    Option("upstream_sslkey", "PATH", "private key for --upstream-sslcert", "none"),
    Option(
        "max_message_size",
        "SIZE",
        "largest protocol message accepted, in bytes or with a unit (64kB, 64MB, 1GiB; "
        "units are powers of 1024); between 1 KiB and 1 GiB",
        "1GiB" if _D.max_message_size == 1 << 30 else str(_D.max_message_size),
    ),
    Option(
        "connect_timeout",
        "SECONDS",
        "how long to wait for the upstream to accept a connection",
        _fmt_seconds(_D.connect_timeout),
    ),
    Option(
        "startup_timeout",
        "SECONDS",
        "how long a client may take to finish startup and authentication",
        _fmt_seconds(_D.startup_timeout),
    ),
    Option(
        "idle_timeout",
        "SECONDS",
        "close client connections idle this long; 0 means never",
        _fmt_seconds(_D.idle_timeout),
    ),
    Option(
        "shutdown_timeout",
        "SECONDS",
        "on SIGTERM, how long open sessions may drain before being closed",
        _fmt_seconds(_D.shutdown_timeout),
    ),
    Option("log_level", "LEVEL", "log level: " + ", ".join(LOG_LEVELS), _D.log_level),
    Option("log_format", "FORMAT", "log line format: text or json", _D.log_format),
    Option(
        "mode",
        "MODE",
        "prod never logs semantic names or values; dev may (for debugging only)",
        _D.mode,
    ),
    Option(
        "workers",
        "N",
        "proxy processes sharing the listen port (SO_REUSEPORT); 'auto' = one per CPU",
        str(_D.workers),
    ),
    Option(
        "cloak",
        "MODE",
        "name cloaking: on (needs a master key), off, or auto (on when a master key is configured)",
        _D.cloak,
    ),
    Option(
        "cloak_tables",
        "PATTERNS",
        "which new tables are cloaked: comma-separated schema.table patterns with * "
        "wildcards (a bare name means schema.*); others are created as written",
        "*",
    ),
    Option(
        "master_key_file",
        "PATH",
        "file holding the base64 master key (mode 0600); else $PGCLOAK_MASTER_KEY or "
        "$PGCLOAK_MASTER_KEY_FILE",
        "none",
    ),
    Option(
        "redis",
        "URL",
        "optional Redis that tells other proxy instances about schema changes at once "
        "(LISTEN/NOTIFY stays the fallback): redis://[:password@]host[:port][/db], "
        "rediss:// or unix:///path; needs the pgcloak[redis] extra; 'off' disables it",
        "off",
    ),
    Option(
        "kek",
        "KIND",
        "what wraps the column data keys: local (the master key) or vault (HashiCorp Vault "
        "transit; needs --vault-url, --vault-key, a token and the pgcloak[vault] extra)",
        _D.kek,
    ),
    Option(
        "decrypt_cache",
        "N",
        "distinct values of each deterministically encrypted column kept decrypted in memory, "
        "so repeated values are decrypted once; 0 keeps no plaintext between rows",
        str(_D.decrypt_cache),
    ),
    Option(
        "vault_url", "URL", "Vault address for kek = vault (http[s]://host:port)", "$VAULT_ADDR"
    ),
    Option(
        "vault_token",
        "TOKEN",
        "Vault token for kek = vault; prefer the environment (flags show in ps)",
        "$VAULT_TOKEN",
    ),
    Option(
        "vault_key",
        "NAME",
        "transit key wrapping the data keys, NAME or MOUNT/NAME (mount default transit); "
        "create it with `vault write -f transit/keys/NAME derived=true`",
        "none",
    ),
)

_KEYS = frozenset(o.key for o in OPTIONS)
_BY_KEY = {o.key: o for o in OPTIONS}


class ConfigError(ValueError):
    """Raised with *all* configuration problems found, each a self-contained sentence."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        # One line, so a failed SIGHUP reload logs as a single record.
        super().__init__("invalid configuration: " + "; ".join(self.problems))


@dataclass(frozen=True)
class _Source:
    """Where a raw value came from, so messages can point at the right place."""

    kind: Literal["flag", "env", "file"]
    name: str  # '--listen', 'PGCLOAK_LISTEN' or 'listen'
    path: str | None = None  # the TOML file, for kind == 'file'

    @property
    def where(self) -> str:
        if self.kind == "env":
            return " (from environment)"
        if self.kind == "file":
            return f" (in {self.path})"
        return ""

    def sub(self, param: str) -> _Source:
        """A URL query parameter inherits its URL's source."""
        return _Source(self.kind, f"{param} in {self.name}", self.path)


_Raw = tuple[object, _Source]
_Layer = dict[str, _Raw]


def _problem(src: _Source, value: object, reason: str) -> str:
    shown = _redact_url(value) if isinstance(value, str) else value
    if "token" in src.name.lower():
        shown = "***"
    return f"invalid {src.name} {shown!r}{src.where}: {reason}"


def _redact_url(text: str) -> str:
    """Hide a password in user:password@ so error messages never leak it."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@?#:]*):[^/@?#]*@", text)
    return f"{m.group(1)}:***@{text[m.end() :]}" if m else text


_PARSERS: dict[str, Callable[[object], object]] = {
    "listen": sv.host_port,
    "admin": sv.admin,
    "tls_cert": sv.optional_str,
    "tls_key": sv.optional_str,
    "upstream_sslmode": sv.choice(SSLMODES),
    "upstream_sslrootcert": sv.optional_str,
    "upstream_sslcert": sv.optional_str,
    "upstream_sslkey": sv.optional_str,
    "max_message_size": sv.size,
    "connect_timeout": lambda v: sv.seconds(v, allow_zero=False),
    "startup_timeout": lambda v: sv.seconds(v, allow_zero=False),
    "idle_timeout": lambda v: sv.seconds(v, allow_zero=True),
    "shutdown_timeout": lambda v: sv.seconds(v, allow_zero=True),
    "log_level": sv.choice(LOG_LEVELS, upper=True),
    "log_format": sv.choice(LOG_FORMATS),
    "mode": sv.choice(MODES),
    "workers": sv.workers,
    "cloak": lambda v: sv.choice(CLOAK_MODES)(v) if sv.as_str(v).strip() else "auto",
    "cloak_tables": sv.patterns,
    "master_key_file": sv.optional_str,
    "redis": sv.redis_url,
    "kek": lambda v: sv.choice(KEK_KINDS)(v) if sv.as_str(v).strip() else "local",
    "vault_url": sv.vault_url,
    "vault_token": sv.optional_str,
    "vault_key": sv.vault_key,
    "decrypt_cache": lambda v: sv.count(v, Config().decrypt_cache, 1 << 20),
}
_PATH_KEYS = (
    "tls_cert",
    "tls_key",
    "upstream_sslrootcert",
    "upstream_sslcert",
    "upstream_sslkey",
    "master_key_file",
)
assert set(_PARSERS) == _KEYS - {"upstream"}


# --------------------------------------------------------------------------------------
# Layers.


def _flag_layer(args: argparse.Namespace | Mapping[str, object] | None) -> _Layer:
    if args is None:
        return {}
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    layer: _Layer = {}
    for option in (CONFIG_OPTION, *OPTIONS):
        value = values.get(option.key)
        if value is not None:
            layer[option.key] = (value, _Source("flag", option.flag))
    return layer


def _env_layer(env: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    for option in (CONFIG_OPTION, *OPTIONS):
        if option.env in env:
            layer[option.key] = (env[option.env], _Source("env", option.env))
    return layer


def _file_layer(path: str, given_by: _Source, problems: list[str]) -> _Layer:
    via = f" (from {given_by.name})"
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"config file {path}{via} does not exist")
        return {}
    except OSError as exc:
        problems.append(f"config file {path}{via} cannot be read: {exc.strerror or exc}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path} is not valid TOML: {exc}")
        return {}
    layer: _Layer = {}
    for key, value in data.items():
        if key in RESERVED_TABLES:
            if not isinstance(value, dict):
                problems.append(f"[{key}] in {path} must be a table")
            else:
                layer[key] = (value, _Source("file", key, path))
        elif key in _KEYS:
            layer[key] = (value, _Source("file", key, path))
        else:
            problems.append(
                f"unknown key {key!r} in {path} (known keys: {', '.join(o.key for o in OPTIONS)})"
            )
    return layer


def _resolve_path(value: str, src: _Source) -> str:
    """Relative paths in a config file are relative to that file, not to the cwd."""
    if src.kind == "file" and src.path and not os.path.isabs(value):
        return os.path.join(os.path.dirname(src.path), value)
    return value


def load_config(
    args: argparse.Namespace | Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults < TOML file < env < flags into a validated `Config`.

    `args` is the parsed `pgcloak serve` namespace (or a dict keyed like the TOML keys,
    plus `config` for the file); None values count as not given. `env` defaults to
    `os.environ`. An empty string clears an optional setting, and admin = '' or 'off'
    disables the admin listener. Raises `ConfigError` listing every problem.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    flags = _flag_layer(args)
    env_layer = _env_layer(env)

    config_file: str | None = None
    file_layer: _Layer = {}
    chosen = flags.pop("config", None) or env_layer.pop("config", None)
    env_layer.pop("config", None)
    if chosen is not None:
        raw, src = chosen
        try:
            text = sv.as_str(raw).strip()
        except sv.Invalid as exc:
            problems.append(_problem(src, raw, str(exc)))
        else:
            if text:  # absolute, so a SIGHUP reload still finds it if the cwd changed
                config_file = os.path.abspath(text)
                file_layer = _file_layer(config_file, src, problems)
    layers = [file_layer, env_layer, flags]

    # The effective upstream URL's query parameters count as given at the URL's level;
    # an explicit upstream_ssl* option at that same level wins over them.
    url: sv.Url | None = None
    for layer in reversed(layers):
        if "upstream" in layer:
            raw, src = layer.pop("upstream")
            try:
                url = sv.upstream_url(raw)
            except sv.Invalid as exc:
                problems.append(_problem(src, raw, str(exc)))
            else:
                for param, val in url.params.items():
                    layer.setdefault("upstream_" + param, (val, src.sub(param)))
            break

    merged: _Layer = {}
    for option in OPTIONS:  # option order keeps the problem list stable and readable
        for layer in layers:
            if option.key in layer and option.key != "upstream":
                merged[option.key] = layer[option.key]

    values: dict[str, object] = {}
    for key, (raw, src) in merged.items():
        try:
            value = _PARSERS[key](raw)
        except sv.Invalid as exc:
            problems.append(_problem(src, raw, str(exc)))
            continue
        if key in _PATH_KEYS and isinstance(value, str):
            if key == "upstream_sslrootcert" and value == "system":
                values[key] = value  # libpq's "use the OS trust store"
                continue
            resolved = _resolve_path(value, src)
            shown = "" if resolved == value else f" {resolved}"
            if not os.path.exists(resolved):
                problems.append(_problem(src, raw, f"file{shown} does not exist"))
            elif not os.path.isfile(resolved):
                problems.append(_problem(src, raw, f"{resolved} is not a regular file"))
            value = resolved
        values[key] = value

    # upstream_sslcert alone is fine: the key may live in the same PEM file.
    for have, lack, why in (
        ("tls_cert", "tls_key", "client-facing TLS needs both a certificate and a key"),
        ("tls_key", "tls_cert", "client-facing TLS needs both a certificate and a key"),
        ("upstream_sslkey", "upstream_sslcert", "a client key is useless without its certificate"),
    ):
        if values.get(have) and not values.get(lack):
            src = merged[have][1]
            problems.append(f"{src.name}{src.where} is set but {_spelled(lack, src)} is not: {why}")

    if values.get("kek") == "vault":
        _vault_settings(values, merged["kek"][1], env, problems)

    encrypt: tuple[tuple[str, str, str | None], ...] = ()
    if "encrypt" in file_layer:
        raw_rules, src = file_layer["encrypt"]
        encrypt = _encrypt_rules(raw_rules, src, problems)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(_build(values, url, config_file), encrypt=encrypt)


def _vault_settings(
    values: dict[str, object], kek: _Source, env: Mapping[str, str], problems: list[str]
) -> None:
    """kek = vault: fill url and token from Vault's own variables; all three are needed."""
    if not values.get("vault_url") and env.get("VAULT_ADDR", "").strip():
        try:
            values["vault_url"] = sv.vault_url(env["VAULT_ADDR"])
        except sv.Invalid as exc:
            problems.append(_problem(_Source("env", "VAULT_ADDR"), env["VAULT_ADDR"], str(exc)))
            return
    if not values.get("vault_token") and env.get("VAULT_TOKEN", "").strip():
        values["vault_token"] = env["VAULT_TOKEN"].strip()
    for key, fallback in (("vault_url", " or VAULT_ADDR"), ("vault_token", " or VAULT_TOKEN"),
                          ("vault_key", "")):  # fmt: skip
        if not values.get(key):
            problems.append(
                f"{kek.name}{kek.where} is vault but {_spelled(key, kek)}{fallback} is not set"
            )
    if importlib.util.find_spec("hvac") is None:
        problems.append(
            f"{kek.name} = vault needs the 'hvac' package: pip install 'pgcloak[vault]'"
        )


ENCRYPT_MODES = ("randomized", "deterministic")


def _encrypt_rules(
    table: object, src: _Source, problems: list[str]
) -> tuple[tuple[str, str, str | None], ...]:
    """[encrypt] entries: "schema.table.column" = "mode" | { mode = "...", key = "group" }."""
    out: list[tuple[str, str, str | None]] = []
    assert isinstance(table, dict)
    for column, spec in table.items():
        parts = str(column).split(".")
        if len(parts) == 2:
            parts = ["public", *parts]
        where = f"[encrypt] {column!r}{src.where}"
        if len(parts) != 3 or not all(parts):
            problems.append(f"{where}: expected schema.table.column or table.column")
            continue
        group: str | None = None
        if isinstance(spec, dict):
            unknown = set(spec) - {"mode", "key"}
            if unknown:
                problems.append(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
                continue
            mode, group = spec.get("mode"), spec.get("key")
            if group is not None and (not isinstance(group, str) or not group):
                problems.append(f"{where}: key must be a non-empty string")
                continue
        else:
            mode = spec
        if mode not in ENCRYPT_MODES:
            problems.append(f"{where}: mode must be one of {', '.join(ENCRYPT_MODES)}")
            continue
        out.append((".".join(parts), str(mode), group))
    return tuple(out)


def _spelled(key: str, like: _Source) -> str:
    """Name an option the way its sibling was given (flag, env var or TOML key)."""
    option = _BY_KEY[key]
    return {"flag": option.flag, "env": option.env, "file": option.key}[like.kind]


def _build(values: dict[str, object], url: sv.Url | None, config_file: str | None) -> Config:
    d = Config()
    listen = cast(tuple[str, int], values.get("listen", (d.listen_host, d.listen_port)))
    admin = cast(tuple[str, int] | None, values.get("admin", (d.admin_host, d.admin_port)))
    u = d.upstream
    upstream = Upstream(
        host=url.host if url else u.host,
        port=url.port if url else u.port,
        dbname=url.dbname if url else u.dbname,
        sslmode=cast(str, values.get("upstream_sslmode", u.sslmode)),
        sslrootcert=cast(str | None, values.get("upstream_sslrootcert", u.sslrootcert)),
        sslcert=cast(str | None, values.get("upstream_sslcert", u.sslcert)),
        sslkey=cast(str | None, values.get("upstream_sslkey", u.sslkey)),
    )
    return Config(
        listen_host=listen[0],
        listen_port=listen[1],
        upstream=upstream,
        admin_host=admin[0] if admin else None,
        admin_port=admin[1] if admin else d.admin_port,
        tls_cert=cast(str | None, values.get("tls_cert", d.tls_cert)),
        tls_key=cast(str | None, values.get("tls_key", d.tls_key)),
        max_message_size=cast(int, values.get("max_message_size", d.max_message_size)),
        connect_timeout=cast(float, values.get("connect_timeout", d.connect_timeout)),
        startup_timeout=cast(float, values.get("startup_timeout", d.startup_timeout)),
        idle_timeout=cast(float, values.get("idle_timeout", d.idle_timeout)),
        shutdown_timeout=cast(float, values.get("shutdown_timeout", d.shutdown_timeout)),
        log_level=cast(str, values.get("log_level", d.log_level)),
        log_format=cast(str, values.get("log_format", d.log_format)),
        mode=cast(str, values.get("mode", d.mode)),
        workers=cast(int, values.get("workers", d.workers)),
        cloak=cast(str, values.get("cloak", d.cloak)),
        cloak_tables=cast(tuple[str, ...], values.get("cloak_tables", d.cloak_tables)),
        master_key_file=cast(str | None, values.get("master_key_file", d.master_key_file)),
        redis_url=cast(str | None, values.get("redis", d.redis_url)),
        kek=cast(str, values.get("kek", d.kek)),
        vault_url=cast(str | None, values.get("vault_url", d.vault_url)),
        vault_token=cast(str | None, values.get("vault_token", d.vault_token)),
        vault_key=cast(str | None, values.get("vault_key", d.vault_key)),
        decrypt_cache=cast(int, values.get("decrypt_cache", d.decrypt_cache)),
        config_file=config_file,
    )
