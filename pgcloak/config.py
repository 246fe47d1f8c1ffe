"""Runtime configuration: one frozen dataclass, filled from TOML, env and flags.

Loading and validation live in `pgcloak.settings` so that the proxy only ever
sees a validated `Config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Upstream:
    """Where the real PostgreSQL lives (parsed from a postgresql:// URL)."""

    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str | None = None  # default database when the client names none
    sslmode: str = "prefer"  # disable | prefer | require | verify-ca | verify-full
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None


@dataclass(frozen=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    upstream: Upstream = Upstream()
    admin_host: str | None = "127.0.0.1"  # None disables the admin listener
    admin_port: int = 9187
    tls_cert: str | None = None  # client-facing TLS; without it SSLRequest gets 'N'
    tls_key: str | None = None
    max_message_size: int = 1 << 30
    connect_timeout: float = 10.0  # seconds to reach the upstream
    startup_timeout: float = 60.0  # seconds for a client to finish startup + auth
    idle_timeout: float = 0.0  # close client connections idle this long; 0 = never
    shutdown_timeout: float = 30.0  # SIGTERM: how long sessions may drain
    log_level: str = "INFO"
    log_format: str = "text"  # text | json
    mode: str = "prod"  # prod never logs semantic names or values; dev may
    workers: int = 1  # processes sharing the listen port (SO_REUSEPORT)
    cloak: str = "auto"  # on | off | auto (on when a master key is configured)
    cloak_tables: tuple[str, ...] = ("*.*",)  # schema.table patterns of tables to cloak
    master_key_file: str | None = None  # else $PGCLOAK_MASTER_KEY / $PGCLOAK_MASTER_KEY_FILE
    redis_url: str | None = field(default=None, repr=False)  # URL may carry a password
    kek: str = "local"  # what wraps column data keys: local (master key) | vault (transit)
    vault_url: str | None = None  # kek = vault: Vault's address (else $VAULT_ADDR)
    vault_token: str | None = field(default=None, repr=False)  # else $VAULT_TOKEN
    vault_key: str | None = None  # transit key name, or "mount/name" (default mount transit)
    decrypt_cache: int = 4096  # decrypted values remembered per deterministic column; 0 = off
    config_file: str | None = None
    # [encrypt]: ("schema.table.column", "randomized"|"deterministic", key group or None)
    encrypt: tuple[tuple[str, str, str | None], ...] = ()
