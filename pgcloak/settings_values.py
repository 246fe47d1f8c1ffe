"""Value parsers of the settings: each turns one raw option value into its typed form.

Kept apart from pgcloak.settings, which layers the sources (defaults, TOML file,
environment, flags) and reports problems with where each value came from. A parser
raises `Invalid(reason)`; the public ones (`parse_*`) raise ValueError for callers
outside the settings machinery.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from pgcloak.config import Config, Upstream

MIN_MESSAGE_SIZE = 1 << 10
MAX_MESSAGE_SIZE = 1 << 30
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
DISABLED = ("", "off", "none", "false", "disabled")
URL_PARAMS = ("host", "port", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey")
URL_SHAPE = "postgresql://[user@]host[:port][/dbname][?sslmode=...]"


class Invalid(Exception):
    """A parser's reason for rejecting a value; the caller adds name and origin."""


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {type(value).__name__}")
    return value


def port_number(text: str, *, allow_zero: bool) -> int:
    if not text.isascii() or not text.isdigit():
        raise Invalid(f"port {text!r} is not a number")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise Invalid(f"port {port} is out of range {low}-65535")
    return port


HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def host_name(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise Invalid(f"{inner!r} is not an IPv6 address") from None
        return inner
    if ":" in text:
        raise Invalid("IPv6 addresses must be in brackets, e.g. [::1]:6432")
    if not HOSTNAME.match(text):
        raise Invalid(f"{text!r} is not a valid host name or address")
    return text


def host_port(value: object, *, allow_zero: bool = True) -> tuple[str, int]:
    text = as_str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise Invalid("expected HOST:PORT")
    return host_name(host), port_number(port, allow_zero=allow_zero)


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse 'HOST:PORT' / '[v6]:PORT'; port 0 asks the OS for a free port."""
    try:
        return host_port(text)
    except Invalid as exc:
        raise ValueError(str(exc)) from None


def admin(value: object) -> tuple[str, int] | None:
    if value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in DISABLED:
        return None
    return host_port(value)


@dataclass(frozen=True)
class Url:
    host: str
    port: int
    dbname: str | None
    params: dict[str, str]  # the ssl* query parameters present in the URL


def upstream_url(value: object) -> Url:
    text = as_str(value).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise Invalid(f"expected {URL_SHAPE}")
    if "#" in rest:
        raise Invalid("URL fragments (#...) are not allowed")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    # user[:password]@ is accepted and ignored: clients authenticate as themselves.
    hostport = netloc.rpartition("@")[2]
    if "," in hostport:
        raise Invalid("multiple hosts are not supported")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise Invalid("unterminated '[' in IPv6 host")
        host_text, port_text = unquote(hostport[: end + 1]), hostport[end + 1 :]  # %25 zone
        if port_text and not port_text.startswith(":"):
            raise Invalid(f"unexpected {port_text!r} after IPv6 host")
        port_text = port_text[1:]
    else:
        host_text, _, port_text = hostport.partition(":")
        host_text = unquote(host_text)  # %2Fvar%2Frun%2Fpostgresql is a socket directory
    params: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise Invalid(f"malformed query string {query!r}") from None
        for key, val in pairs:
            if key not in URL_PARAMS:
                raise Invalid(
                    f"unsupported query parameter {key!r} (supported: {', '.join(URL_PARAMS)})"
                )
            params[key] = val
    host_text = params.pop("host", host_text)
    port_text = params.pop("port", port_text)
    dbname = params.pop("dbname", unquote(path)) or None
    if not host_text:
        raise Invalid(f"missing host; expected {URL_SHAPE}")
    host = host_text if host_text.startswith("/") else host_name(host_text)
    port = port_number(port_text, allow_zero=False) if port_text else 5432
    return Url(host, port, dbname, params)


def parse_upstream_url(text: str) -> Upstream:
    """Parse a postgresql:// URL into an `Upstream` (ssl query parameters included)."""
    try:
        u = upstream_url(text)
    except Invalid as exc:
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


SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
UNITS = {
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


def size(value: object) -> int:
    if isinstance(value, bool):
        raise Invalid("expected a size like 65536, '64MB' or '1GiB'")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = SIZE.match(value)
        if not m or m.group(2).lower() not in UNITS:
            raise Invalid("expected a size like 65536, '64MB' or '1GiB'")
        n = int(m.group(1)) * UNITS[m.group(2).lower()]
    else:
        raise Invalid(f"expected a size like 65536, '64MB' or '1GiB', got {type(value).__name__}")
    if not MIN_MESSAGE_SIZE <= n <= MAX_MESSAGE_SIZE:
        raise Invalid(f"must be between 1 KiB and 1 GiB ({MIN_MESSAGE_SIZE}-{MAX_MESSAGE_SIZE})")
    return n


def parse_size(text: str | int) -> int:
    """Parse a byte size ('64MB', '1GiB', 65536; units are powers of 1024) within limits."""
    try:
        return size(text)
    except Invalid as exc:
        raise ValueError(str(exc)) from None


MAX_WORKERS = 64


def workers(value: object) -> int:
    text = as_str(value).strip().lower() if not isinstance(value, int) else str(value)
    if text == "":
        return Config().workers
    if text == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    try:
        n = int(text)
    except ValueError:
        raise Invalid("expected a whole number of processes or 'auto'") from None
    if not 1 <= n <= MAX_WORKERS:
        raise Invalid(f"expected 1 to {MAX_WORKERS} processes or 'auto'")
    return n


def count(value: object, default: int, limit: int) -> int:
    text = as_str(value).strip() if not isinstance(value, int) else str(value)
    if text == "":
        return default
    try:
        n = int(text)
    except ValueError:
        raise Invalid("expected a whole number") from None
    if not 0 <= n <= limit:
        raise Invalid(f"expected 0 to {limit}")
    return n


def seconds(value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool):
        raise Invalid("expected a number of seconds")
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str):
        try:
            n = float(value.strip())
        except ValueError:
            raise Invalid("expected a number of seconds") from None
    else:
        raise Invalid(f"expected a number of seconds, got {type(value).__name__}")
    if not math.isfinite(n):
        raise Invalid("must be a finite number of seconds")
    if n < 0:
        raise Invalid("must not be negative")
    if n == 0 and not allow_zero:
        raise Invalid("must be greater than 0")
    return n


def choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = as_str(value).strip()
        text = text.upper() if upper else text.lower()
        if upper and text == "WARN":
            text = "WARNING"
        if text not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}")
        return text

    return parse


def optional_str(value: object) -> str | None:
    return as_str(value).strip() or None


def patterns(value: object) -> tuple[str, ...]:
    """'public.*, app.orders' or a TOML list -> ('public.*', 'app.orders'); '*' = all."""
    items = value if isinstance(value, list) else as_str(value).split(",")
    out: list[str] = []
    for item in items:
        text = as_str(item).strip()
        if not text:
            continue
        if text.count(".") > 1:
            raise Invalid(f"{text!r} is not a schema or schema.table pattern")
        out.append(text if "." in text else f"{text}.*")
    return tuple(out) or ("*.*",)  # empty: the default, every table


REDIS_SHAPE = "redis://[:password@]host[:port][/db], rediss://... or unix:///path"


def redis_url(value: object) -> str | None:
    """Validate the shape only; the bus connects lazily and tolerates an outage."""
    text = as_str(value).strip()
    if text.lower() in DISABLED:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        raise Invalid(f"malformed URL; expected {REDIS_SHAPE}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") or "://" not in text:
        raise Invalid(f"expected {REDIS_SHAPE}")
    if scheme == "unix":
        if not parts.path.startswith("/"):
            raise Invalid("expected unix:///absolute/path/to/redis.sock")
    elif not parts.hostname:
        raise Invalid(f"missing host; expected {REDIS_SHAPE}")
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise Invalid("the database after the host must be a number, e.g. /0")
    if importlib.util.find_spec("redis") is None:
        raise Invalid("needs the 'redis' package: pip install 'pgcloak[redis]'")
    return text


KEK_KINDS = ("local", "vault")
VAULT_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def vault_url(value: object) -> str | None:
    text = as_str(value).strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        raise Invalid("malformed URL; expected http[s]://host[:port]") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Invalid("expected http[s]://host[:port]")
    if parts.username or parts.password:
        raise Invalid("credentials do not belong in the URL; use vault_token")
    return text


def vault_key(value: object) -> str | None:
    text = as_str(value).strip()
    if text and not VAULT_KEY.match(text):
        raise Invalid("expected a transit key name, or MOUNT/NAME")
    return text or None
