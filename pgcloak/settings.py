"""Build a validated `Config` from defaults, a TOML file, `PGCLOAK_*` env vars and flags.

Precedence, lowest to highest: built-in defaults < TOML file < environment < command line.
Every bad value is reported (not just the first) with the option spelled the way the
operator wrote it and where it came from, so a broken deployment is fixed in one round.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from pgcloak.config import Config, Upstream

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

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODES = ("dev", "prod")
CLOAK_MODES = ("auto", "on", "off")
MIN_MESSAGE_SIZE = 1 << 10
MAX_MESSAGE_SIZE = 1 << 30
# TOML tables (not scalar options): [encrypt] column encryption rules.
RESERVED_TABLES = ("encrypt",)
_DISABLED = ("", "off", "none", "false", "disabled")
_URL_PARAMS = ("host", "port", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey")
_URL_SHAPE = "postgresql://[user@]host[:port][/dbname][?sslmode=...]"

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
        f"the real PostgreSQL server, {_URL_SHAPE} (also postgres://; query parameters "
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


class _Invalid(Exception):
    """A parser's reason for rejecting a value; the caller adds name and origin."""


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


# --------------------------------------------------------------------------------------
# Value parsers. Each raises _Invalid(reason) (public ones raise ValueError).


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}")
    return value


def _port(text: str, *, allow_zero: bool) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Invalid(f"port {text!r} is not a number")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise _Invalid(f"port {port} is out of range {low}-65535")
    return port


_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def _host(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise _Invalid(f"{inner!r} is not an IPv6 address") from None
        return inner
    if ":" in text:
        raise _Invalid("IPv6 addresses must be in brackets, e.g. [::1]:6432")
    if not _HOSTNAME.match(text):
        raise _Invalid(f"{text!r} is not a valid host name or address")
    return text


def _host_port(value: object, *, allow_zero: bool = True) -> tuple[str, int]:
    text = _as_str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise _Invalid("expected HOST:PORT")
    return _host(host), _port(port, allow_zero=allow_zero)


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse 'HOST:PORT' / '[v6]:PORT'; port 0 asks the OS for a free port."""
    try:
        return _host_port(text)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


def _admin(value: object) -> tuple[str, int] | None:
    if value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _DISABLED:
        return None
    return _host_port(value)


@dataclass(frozen=True)
class _Url:
    host: str
    port: int
    dbname: str | None
    params: dict[str, str]  # the ssl* query parameters present in the URL


def _url(value: object) -> _Url:
    text = _as_str(value).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise _Invalid(f"expected {_URL_SHAPE}")
    if "#" in rest:
        raise _Invalid("URL fragments (#...) are not allowed")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    # user[:password]@ is accepted and ignored: clients authenticate as themselves.
    hostport = netloc.rpartition("@")[2]
    if "," in hostport:
        raise _Invalid("multiple hosts are not supported")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _Invalid("unterminated '[' in IPv6 host")
        host_text, port_text = unquote(hostport[: end + 1]), hostport[end + 1 :]  # %25 zone
        if port_text and not port_text.startswith(":"):
            raise _Invalid(f"unexpected {port_text!r} after IPv6 host")
        port_text = port_text[1:]
    else:
        host_text, _, port_text = hostport.partition(":")
        host_text = unquote(host_text)  # %2Fvar%2Frun%2Fpostgresql is a socket directory
    params: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise _Invalid(f"malformed query string {query!r}") from None
        for key, val in pairs:
            if key not in _URL_PARAMS:
                raise _Invalid(
                    f"unsupported query parameter {key!r} (supported: {', '.join(_URL_PARAMS)})"
                )
            params[key] = val
    host_text = params.pop("host", host_text)
    port_text = params.pop("port", port_text)
    dbname = params.pop("dbname", unquote(path)) or None
    if not host_text:
        raise _Invalid(f"missing host; expected {_URL_SHAPE}")
    host = host_text if host_text.startswith("/") else _host(host_text)
    port = _port(port_text, allow_zero=False) if port_text else 5432
    return _Url(host, port, dbname, params)


def parse_upstream_url(text: str) -> Upstream:
    """Parse a postgresql:// URL into an `Upstream` (ssl query parameters included)."""
    try:
        u = _url(text)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None
    sslmode = u.params.get("sslmode", Upstream.sslmode)
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode {sslmode!r}: expected one of {', '.join(SSLMODES)}")
    return Upstream(
        host=u.host,
        port=u.port,
        dbname=u.dbname,
        sslmode=sslmode,
        sslrootcert=u.params.get("sslrootcert") or None,
        sslcert=u.params.get("sslcert") or None,
        sslkey=u.params.get("sslkey") or None,
    )


_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
}


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected a size like 65536, '64MB' or '1GiB'")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise _Invalid("expected a size like 65536, '64MB' or '1GiB'")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise _Invalid(f"expected a size like 65536, '64MB' or '1GiB', got {type(value).__name__}")
    if not MIN_MESSAGE_SIZE <= n <= MAX_MESSAGE_SIZE:
        raise _Invalid(f"must be between 1 KiB and 1 GiB ({MIN_MESSAGE_SIZE}-{MAX_MESSAGE_SIZE})")
    return n


def parse_size(text: str | int) -> int:
    """Parse a byte size ('64MB', '1GiB', 65536; units are powers of 1024) within limits."""
    try:
        return _size(text)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


MAX_WORKERS = 64


def _workers(value: object) -> int:
    text = _as_str(value).strip().lower() if not isinstance(value, int) else str(value)
    if text == "":
        return Config().workers
    if text == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    try:
        n = int(text)
    except ValueError:
        raise _Invalid("expected a whole number of processes or 'auto'") from None
    if not 1 <= n <= MAX_WORKERS:
        raise _Invalid(f"expected 1 to {MAX_WORKERS} processes or 'auto'")
    return n


def _count(value: object, default: int, limit: int) -> int:
    text = _as_str(value).strip() if not isinstance(value, int) else str(value)
    if text == "":
        return default
    try:
        n = int(text)
    except ValueError:
        raise _Invalid("expected a whole number") from None
    if not 0 <= n <= limit:
        raise _Invalid(f"expected 0 to {limit}")
    return n


def _seconds(value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a number of seconds")
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str):
        try:
            n = float(value.strip())
        except ValueError:
            raise _Invalid("expected a number of seconds") from None
    else:
        raise _Invalid(f"expected a number of seconds, got {type(value).__name__}")
    if not math.isfinite(n):
        raise _Invalid("must be a finite number of seconds")
    if n < 0:
        raise _Invalid("must not be negative")
    if n == 0 and not allow_zero:
        raise _Invalid("must be greater than 0")
    return n


def _choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _as_str(value).strip()
        text = text.upper() if upper else text.lower()
        if upper and text == "WARN":
            text = "WARNING"
        if text not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _optional_str(value: object) -> str | None:
    return _as_str(value).strip() or None


def _patterns(value: object) -> tuple[str, ...]:
    """'public.*, app.orders' or a TOML list -> ('public.*', 'app.orders'); '*' = all."""
    items = value if isinstance(value, list) else _as_str(value).split(",")
    out: list[str] = []
    for item in items:
        text = _as_str(item).strip()
        if not text:
            continue
        if text.count(".") > 1:
            raise _Invalid(f"{text!r} is not a schema or schema.table pattern")
        out.append(text if "." in text else f"{text}.*")
    return tuple(out) or ("*.*",)  # empty: the default, every table


_REDIS_SHAPE = "redis://[:password@]host[:port][/db], rediss://... or unix:///path"


def _redis_url(value: object) -> str | None:
    """Validate the shape only; the bus connects lazily and tolerates an outage."""
    text = _as_str(value).strip()
    if text.lower() in _DISABLED:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        raise _Invalid(f"malformed URL; expected {_REDIS_SHAPE}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") or "://" not in text:
        raise _Invalid(f"expected {_REDIS_SHAPE}")
    if scheme == "unix":
        if not parts.path.startswith("/"):
            raise _Invalid("expected unix:///absolute/path/to/redis.sock")
    elif not parts.hostname:
        raise _Invalid(f"missing host; expected {_REDIS_SHAPE}")
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise _Invalid("the database after the host must be a number, e.g. /0")
    if importlib.util.find_spec("redis") is None:
        raise _Invalid("needs the 'redis' package: pip install 'pgcloak[redis]'")
    return text


KEK_KINDS = ("local", "vault")
_VAULT_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _vault_url(value: object) -> str | None:
    text = _as_str(value).strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        raise _Invalid("malformed URL; expected http[s]://host[:port]") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _Invalid("expected http[s]://host[:port]")
    if parts.username or parts.password:
        raise _Invalid("credentials do not belong in the URL; use vault_token")
    return text


def _vault_key(value: object) -> str | None:
    text = _as_str(value).strip()
    if text and not _VAULT_KEY.match(text):
        raise _Invalid("expected a transit key name, or MOUNT/NAME")
    return text or None


_PARSERS: dict[str, Callable[[object], object]] = {
    "listen": _host_port,
    "admin": _admin,
    "tls_cert": _optional_str,
    "tls_key": _optional_str,
    "upstream_sslmode": _choice(SSLMODES),
    "upstream_sslrootcert": _optional_str,
    "upstream_sslcert": _optional_str,
    "upstream_sslkey": _optional_str,
    "max_message_size": _size,
    "connect_timeout": lambda v: _seconds(v, allow_zero=False),
    "startup_timeout": lambda v: _seconds(v, allow_zero=False),
    "idle_timeout": lambda v: _seconds(v, allow_zero=True),
    "shutdown_timeout": lambda v: _seconds(v, allow_zero=True),
    "log_level": _choice(LOG_LEVELS, upper=True),
    "log_format": _choice(LOG_FORMATS),
    "mode": _choice(MODES),
    "workers": _workers,
    "cloak": lambda v: _choice(CLOAK_MODES)(v) if _as_str(v).strip() else "auto",
    "cloak_tables": _patterns,
    "master_key_file": _optional_str,
    "redis": _redis_url,
    "kek": lambda v: _choice(KEK_KINDS)(v) if _as_str(v).strip() else "local",
    "vault_url": _vault_url,
    "vault_token": _optional_str,
    "vault_key": _vault_key,
    "decrypt_cache": lambda v: _count(v, Config().decrypt_cache, 1 << 20),
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
            text = _as_str(raw).strip()
        except _Invalid as exc:
            problems.append(_problem(src, raw, str(exc)))
        else:
            if text:  # absolute, so a SIGHUP reload still finds it if the cwd changed
                config_file = os.path.abspath(text)
                file_layer = _file_layer(config_file, src, problems)
    layers = [file_layer, env_layer, flags]

    # The effective upstream URL's query parameters count as given at the URL's level;
    # an explicit upstream_ssl* option at that same level wins over them.
    url: _Url | None = None
    for layer in reversed(layers):
        if "upstream" in layer:
            raw, src = layer.pop("upstream")
            try:
                url = _url(raw)
            except _Invalid as exc:
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
        except _Invalid as exc:
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
            values["vault_url"] = _vault_url(env["VAULT_ADDR"])
        except _Invalid as exc:
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


def _build(values: dict[str, object], url: _Url | None, config_file: str | None) -> Config:
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
