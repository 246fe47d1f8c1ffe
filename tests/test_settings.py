"""Configuration loading, validation messages and the CLI surface (no PostgreSQL needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgcloak.cli import main
from pgcloak.config import Config, Upstream
from pgcloak.settings import (
    OPTIONS,
    ConfigError,
    load_config,
    parse_host_port,
    parse_size,
    parse_upstream_url,
)

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(
    flags: dict[str, object] | None = None, env: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(flags, env or {})
    return info.value.problems


@pytest.fixture
def pem(tmp_path: Path) -> tuple[str, str]:
    """Existing files are all the loader checks; content is the TLS code's business."""
    cert = write(tmp_path / "cert.pem", "cert")
    key = write(tmp_path / "key.pem", "key")
    return str(cert), str(key)


# --------------------------------------------------------------------------- precedence


def test_defaults() -> None:
    assert load_config(None, {}) == Config()


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "pgcloak.toml",
        """
        listen = "10.0.0.1:1001"
        admin = "10.0.0.1:2001"
        upstream = "postgresql://filehost:5001/filedb"
        connect_timeout = 1
        startup_timeout = 1.5
        log_level = "debug"
        """,
    )
    env = {
        "PGCLOAK_CONFIG": str(cfg),
        "PGCLOAK_ADMIN": "10.0.0.2:2002",
        "PGCLOAK_UPSTREAM": "postgresql://envhost:5002/envdb",
        "PGCLOAK_STARTUP_TIMEOUT": "2.5",
        "PGCLOAK_LOG_LEVEL": "warning",
    }
    flags = {"upstream": "postgres://flaghost:5003", "log_level": "error"}
    c = load_config(flags, env)
    assert (c.listen_host, c.listen_port) == ("10.0.0.1", 1001)  # file only
    assert (c.admin_host, c.admin_port) == ("10.0.0.2", 2002)  # env beats file
    assert c.upstream == Upstream(host="flaghost", port=5003)  # flag beats env
    assert c.connect_timeout == 1.0
    assert c.startup_timeout == 2.5
    assert c.log_level == "ERROR"
    assert c.config_file == str(cfg)


def test_config_flag_beats_env_and_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.toml", 'mode = "dev"\n')
    write(tmp_path / "b.toml", 'log_format = "json"\n')
    monkeypatch.chdir(tmp_path)
    c = load_config({"config": "b.toml"}, {"PGCLOAK_CONFIG": "a.toml"})
    assert c.mode == "prod"
    assert c.log_format == "json"
    assert c.config_file == str(tmp_path / "b.toml")


def test_namespace_from_cli_parser(tmp_path: Path) -> None:
    from pgcloak.cli import build_parser

    args = build_parser().parse_args(["serve", "--listen", "[::1]:7000", "--idle-timeout", "5"])
    c = load_config(args, {"PGCLOAK_LISTEN": "1.2.3.4:1", "PGCLOAK_MODE": "dev"})
    assert (c.listen_host, c.listen_port, c.idle_timeout, c.mode) == ("::1", 7000, 5.0, "dev")


def test_every_option_from_file(tmp_path: Path, pem: tuple[str, str]) -> None:
    cert, key = pem
    cfg = write(
        tmp_path / "all.toml",
        f"""
        listen = "0.0.0.0:7432"
        upstream = "postgresql://db.example:6543/app"
        admin = "[::1]:9999"
        tls_cert = "{cert}"
        tls_key = "{key}"
        upstream_sslmode = "verify-full"
        upstream_sslrootcert = "cert.pem"
        upstream_sslcert = "cert.pem"
        upstream_sslkey = "key.pem"
        max_message_size = "64MB"
        connect_timeout = 3
        startup_timeout = 4.5
        idle_timeout = 600
        shutdown_timeout = 0
        log_level = "WARN"
        log_format = "json"
        mode = "dev"

        cloak = "off"
        cloak_tables = ["app", "public.orders"]
        decrypt_cache = 0

        [encrypt]
        "customers.email" = "deterministic"
        "app.orders.note" = {{ mode = "randomized" }}
        "app.orders.cid" = {{ mode = "deterministic", key = "customer" }}
        """,
    )
    c = load_config({"config": str(cfg)}, {})
    assert c == Config(
        listen_host="0.0.0.0",
        listen_port=7432,
        upstream=Upstream(
            host="db.example",
            port=6543,
            dbname="app",
            sslmode="verify-full",
            # relative paths in a file are relative to the file
            sslrootcert=str(tmp_path / "cert.pem"),
            sslcert=str(tmp_path / "cert.pem"),
            sslkey=str(tmp_path / "key.pem"),
        ),
        admin_host="::1",
        admin_port=9999,
        tls_cert=cert,
        tls_key=key,
        max_message_size=64 << 20,
        connect_timeout=3.0,
        startup_timeout=4.5,
        idle_timeout=600.0,
        shutdown_timeout=0.0,
        log_level="WARNING",
        log_format="json",
        mode="dev",
        cloak="off",
        cloak_tables=("app.*", "public.orders"),
        decrypt_cache=0,
        encrypt=(
            ("public.customers.email", "deterministic", None),
            ("app.orders.note", "randomized", None),
            ("app.orders.cid", "deterministic", "customer"),
        ),
        config_file=str(cfg),
    )


@pytest.mark.parametrize("value", ["", "off", "OFF", "none"])
def test_admin_disabled(value: str) -> None:
    assert load_config({"admin": value}, {}).admin_host is None
    assert load_config(None, {"PGCLOAK_ADMIN": value}).admin_host is None


def test_admin_false_in_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "admin = false\n")
    assert load_config({"config": str(cfg)}, {}).admin_host is None


def test_empty_string_clears_lower_layer(tmp_path: Path, pem: tuple[str, str]) -> None:
    cert, key = pem
    cfg = write(tmp_path / "c.toml", f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    c = load_config({"config": str(cfg), "tls_cert": "", "tls_key": ""}, {})
    assert c.tls_cert is None and c.tls_key is None


def test_env_vars_are_named_after_keys(pem: tuple[str, str]) -> None:
    cert, key = pem
    env = {o.env: "" for o in OPTIONS}
    env.update(
        PGCLOAK_LISTEN="127.0.0.2:1",
        PGCLOAK_UPSTREAM="postgresql://h",
        PGCLOAK_ADMIN="off",
        PGCLOAK_TLS_CERT=cert,
        PGCLOAK_TLS_KEY=key,
        PGCLOAK_UPSTREAM_SSLMODE="require",
        PGCLOAK_UPSTREAM_SSLROOTCERT=cert,
        PGCLOAK_UPSTREAM_SSLCERT=cert,
        PGCLOAK_UPSTREAM_SSLKEY=key,
        PGCLOAK_MAX_MESSAGE_SIZE="2048",
        PGCLOAK_CONNECT_TIMEOUT="1",
        PGCLOAK_STARTUP_TIMEOUT="2",
        PGCLOAK_IDLE_TIMEOUT="3",
        PGCLOAK_SHUTDOWN_TIMEOUT="4",
        PGCLOAK_LOG_LEVEL="debug",
        PGCLOAK_LOG_FORMAT="JSON",
        PGCLOAK_MODE="dev",
        PGCLOAK_WORKERS="2",
        PGCLOAK_CLOAK="ON",
        PGCLOAK_CLOAK_TABLES="app, public.t*",
        PGCLOAK_UNRELATED="ignored",
    )
    c = load_config(None, env)
    assert c.workers == 2
    assert (c.cloak, c.cloak_tables) == ("on", ("app.*", "public.t*"))
    assert c.upstream == Upstream(
        host="h", sslmode="require", sslrootcert=cert, sslcert=cert, sslkey=key
    )
    assert (c.max_message_size, c.connect_timeout, c.idle_timeout) == (2048, 1.0, 3.0)
    assert (c.log_level, c.log_format, c.mode, c.admin_host) == ("DEBUG", "json", "dev", None)


# --------------------------------------------------------------------- upstream URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://db", Upstream(host="db")),
        ("postgres://user@db:6000/app", Upstream(host="db", port=6000, dbname="app")),
        ("postgresql://user:secret@10.1.2.3/app", Upstream(host="10.1.2.3", dbname="app")),
        ("postgresql://[::1]:5433/x", Upstream(host="::1", port=5433, dbname="x")),
        ("postgresql://[fe80::1%25eth0]", Upstream(host="fe80::1%eth0")),
        (
            "postgresql:///app?host=/var/run/postgresql",
            Upstream("/var/run/postgresql", 5432, "app"),
        ),
        ("postgresql://%2Ftmp%2Fpg:5444/app", Upstream(host="/tmp/pg", port=5444, dbname="app")),
        ("postgresql://db/my%20db", Upstream(host="db", dbname="my db")),
        ("postgresql://ignored/app?host=real&port=7777", Upstream("real", 7777, "app")),
        ("postgresql://db?dbname=fromquery", Upstream(host="db", dbname="fromquery")),
        (
            "postgresql://db/app?sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
            Upstream("db", 5432, "app", "verify-ca", "/ca.pem", "/c.pem", "/k.pem"),
        ),
    ],
)
def test_parse_upstream_url(url: str, expected: Upstream) -> None:
    assert parse_upstream_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://db", "expected postgresql://"),
        ("db:5432", "expected postgresql://"),
        ("postgresql://", "missing host"),
        ("postgresql:///app", "missing host"),
        ("postgresql://db:0", "port 0 is out of range 1-65535"),
        ("postgresql://db:70000", "port 70000 is out of range 1-65535"),
        ("postgresql://db:abc", "port 'abc' is not a number"),
        ("postgresql://a,b/app", "multiple hosts are not supported"),
        ("postgresql://[::1/app", "unterminated '['"),
        ("postgresql://[nope]:5432", "'nope' is not an IPv6 address"),
        ("postgresql://[::1]x", "unexpected 'x' after IPv6 host"),
        (
            "postgresql://db/app?application_name=x",
            "unsupported query parameter 'application_name'",
        ),
        ("postgresql://db/app?sslmode", "malformed query string"),
        ("postgresql://db/app#frag", "fragments"),
        ("postgresql://db?sslmode=sometimes", "'sometimes': expected one of disable, prefer"),
    ],
)
def test_bad_upstream_url(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="^.*" + _re(reason)):
        parse_upstream_url(url)
    # the loader reports the same reason, naming the flag
    (msg,) = problems({"upstream": url})
    assert reason in msg
    assert msg.startswith(("invalid --upstream ", "invalid sslmode in --upstream "))


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_url_password_is_redacted() -> None:
    (msg,) = problems({"upstream": "mysql://bob:hunter2@db/app"})
    assert "hunter2" not in msg
    assert "mysql://bob:***@db/app" in msg


def test_url_params_follow_the_url_precedence(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        'upstream = "postgresql://f?sslmode=disable"\nupstream_sslmode = "verify-ca"\n',
    )
    # same layer: the explicit option beats the URL parameter
    assert load_config({"config": str(cfg)}, {}).upstream.sslmode == "verify-ca"
    # a higher layer's URL parameter beats a lower layer's explicit option
    c = load_config({"config": str(cfg), "upstream": "postgresql://x?sslmode=require"}, {})
    assert (c.upstream.host, c.upstream.sslmode) == ("x", "require")
    # a higher layer's URL without the parameter leaves the lower explicit option in place
    c = load_config({"config": str(cfg)}, {"PGCLOAK_UPSTREAM": "postgresql://e"})
    assert (c.upstream.host, c.upstream.sslmode) == ("e", "verify-ca")
    # an overridden lower URL contributes nothing
    c = load_config(None, {"PGCLOAK_UPSTREAM": "postgresql://e"})
    assert c.upstream.sslmode == "prefer"
    # an explicit flag beats a URL parameter from the environment
    c = load_config(
        {"upstream_sslmode": "disable"}, {"PGCLOAK_UPSTREAM": "postgresql://e?sslmode=require"}
    )
    assert c.upstream.sslmode == "disable"


def test_url_param_paths_are_checked() -> None:
    (msg,) = problems({"upstream": "postgresql://db?sslrootcert=/no/such/ca.pem"})
    assert msg == "invalid sslrootcert in --upstream '/no/such/ca.pem': file does not exist"


def test_sslrootcert_system_is_not_a_file() -> None:
    c = load_config({"upstream_sslrootcert": "system"}, {})
    assert c.upstream.sslrootcert == "system"


# ----------------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6432", ("127.0.0.1", 6432)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:6432", ("::1", 6432)),
        ("[::]:1", ("::", 1)),
        ("db-1.internal:65535", ("db-1.internal", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abc", "expected HOST:PORT"),
        (":6432", "expected HOST:PORT"),
        ("host:", "expected HOST:PORT"),
        ("host:65536", "port 65536 is out of range 0-65535"),
        ("host:-1", "port '-1' is not a number"),
        ("::1:6432", "IPv6 addresses must be in brackets"),
        ("[zz]:6432", "'zz' is not an IPv6 address"),
        ("bad host:1", "'bad host' is not a valid host name or address"),
    ],
)
def test_bad_host_port(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=_re(reason)):
        parse_host_port(text)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("1k", 1024),
        ("64kB", 64 << 10),
        ("64KiB", 64 << 10),
        ("64MB", 64 << 20),
        ("64 mib", 64 << 20),
        ("1GiB", 1 << 30),
        ("1GB", 1 << 30),
        ("1073741824", 1 << 30),
        (" 8M ", 8 << 20),
    ],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1023", "must be between 1 KiB and 1 GiB"),
        ("2GiB", "must be between 1 KiB and 1 GiB"),
        (0, "must be between 1 KiB and 1 GiB"),
        ("1.5MB", "expected a size like"),
        ("64XB", "expected a size like"),
        ("-5", "expected a size like"),
        ("", "expected a size like"),
    ],
)
def test_bad_size(value: str | int, reason: str) -> None:
    with pytest.raises(ValueError, match=_re(reason)):
        parse_size(value)


# ---------------------------------------------------------------- validation messages


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"listen": "abc"}, {}, "invalid --listen 'abc': expected HOST:PORT"),
        (
            {},
            {"PGCLOAK_LISTEN": "abc"},
            "invalid PGCLOAK_LISTEN 'abc' (from environment): expected HOST:PORT",
        ),
        (
            {"admin": "h:99999"},
            {},
            "invalid --admin 'h:99999': port 99999 is out of range 0-65535",
        ),
        (
            {"upstream_sslmode": "maybe"},
            {},
            "invalid --upstream-sslmode 'maybe': expected one of "
            "disable, prefer, require, verify-ca, verify-full",
        ),
        (
            {},
            {"PGCLOAK_LOG_LEVEL": "loud"},
            "invalid PGCLOAK_LOG_LEVEL 'loud' (from environment): "
            "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        ({"log_format": "xml"}, {}, "invalid --log-format 'xml': expected one of text, json"),
        ({"mode": "test"}, {}, "invalid --mode 'test': expected one of dev, prod"),
        ({"idle_timeout": "-1"}, {}, "invalid --idle-timeout '-1': must not be negative"),
        (
            {"shutdown_timeout": "-0.5"},
            {},
            "invalid --shutdown-timeout '-0.5': must not be negative",
        ),
        ({"connect_timeout": "0"}, {}, "invalid --connect-timeout '0': must be greater than 0"),
        (
            {"startup_timeout": "soon"},
            {},
            "invalid --startup-timeout 'soon': expected a number of seconds",
        ),
        (
            {"startup_timeout": "inf"},
            {},
            "invalid --startup-timeout 'inf': must be a finite number of seconds",
        ),
        (
            {"max_message_size": "512"},
            {},
            "invalid --max-message-size '512': must be between 1 KiB and 1 GiB (1024-1073741824)",
        ),
        ({"decrypt_cache": "-1"}, {}, "invalid --decrypt-cache '-1': expected 0 to 1048576"),
        (
            {},
            {"PGCLOAK_DECRYPT_CACHE": "many"},
            "invalid PGCLOAK_DECRYPT_CACHE 'many' (from environment): expected a whole number",
        ),
        ({"tls_cert": "/no/such.pem", "tls_key": "/no/such.key"}, {}, None),
    ],
)
def test_validation_messages(
    flags: dict[str, object], env: dict[str, str], expected: str | None
) -> None:
    found = problems(flags, env)
    if expected is None:
        assert found == [
            "invalid --tls-cert '/no/such.pem': file does not exist",
            "invalid --tls-key '/no/such.key': file does not exist",
        ]
    else:
        assert found == [expected]


def test_tls_cert_and_key_come_in_pairs(pem: tuple[str, str]) -> None:
    cert, key = pem
    assert problems({"tls_cert": cert}) == [
        "--tls-cert is set but --tls-key is not: "
        "client-facing TLS needs both a certificate and a key"
    ]
    assert problems({}, {"PGCLOAK_TLS_KEY": key}) == [
        "PGCLOAK_TLS_KEY (from environment) is set but PGCLOAK_TLS_CERT is not: "
        "client-facing TLS needs both a certificate and a key"
    ]
    assert problems({"upstream_sslkey": key}) == [
        "--upstream-sslkey is set but --upstream-sslcert is not: "
        "a client key is useless without its certificate"
    ]
    # a certificate alone is fine upstream: its PEM may hold the key too
    assert load_config({"upstream_sslcert": cert}, {}).upstream.sslcert == cert


def test_path_must_be_a_regular_file(tmp_path: Path) -> None:
    (msg,) = problems({"upstream_sslrootcert": str(tmp_path)})
    assert (
        msg == f"invalid --upstream-sslrootcert {str(tmp_path)!r}: {tmp_path} is not a regular file"
    )


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "bad.toml",
        'listen = 6432\nlisten_port = 1\nidle_timeout = true\nencrypt = "x"\n'
        'tls_cert = "missing.pem"\nmax_message_size = 1.5\n',
    )
    assert problems({"config": str(cfg)}) == [
        f"unknown key 'listen_port' in {cfg} (known keys: "
        + ", ".join(o.key for o in OPTIONS)
        + ")",
        f"[encrypt] in {cfg} must be a table",
        f"invalid listen 6432 (in {cfg}): expected a string, got int",
        f"invalid tls_cert 'missing.pem' (in {cfg}): "
        f"file {tmp_path / 'missing.pem'} does not exist",
        f"invalid max_message_size 1.5 (in {cfg}): "
        "expected a size like 65536, '64MB' or '1GiB', got float",
        f"invalid idle_timeout True (in {cfg}): expected a number of seconds",
        f"tls_cert (in {cfg}) is set but tls_key is not: "
        "client-facing TLS needs both a certificate and a key",
    ]


def test_missing_and_broken_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems({}, {"PGCLOAK_CONFIG": str(missing)}) == [
        f"config file {missing} (from PGCLOAK_CONFIG) does not exist"
    ]
    broken = write(tmp_path / "broken.toml", "listen = \n")
    (msg,) = problems({"config": str(broken)})
    assert msg.startswith(f"config file {broken} is not valid TOML: ")


def test_all_problems_are_reported(tmp_path: Path) -> None:
    found = problems(
        {"listen": "abc", "mode": "x", "upstream": "http://x", "config": str(tmp_path / "no")},
        {"PGCLOAK_IDLE_TIMEOUT": "-3", "PGCLOAK_LOG_FORMAT": "yaml"},
    )
    assert len(found) == 6, found
    err = ConfigError(found)
    assert str(err).startswith("invalid configuration: ")
    assert "\n" not in str(err)
    assert isinstance(err, ValueError)


# ------------------------------------------------------------------------------- CLI


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if not k.startswith("PGCLOAK_")}
    return subprocess.run(
        [sys.executable, "-m", "pgcloak", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def test_serve_help_documents_every_option() -> None:
    res = _run_cli("serve", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for option in OPTIONS:
        assert option.flag in text
        assert f"env {option.env}; default: {option.default})" in text, option.key
    assert "--config PATH" in text and "PGCLOAK_CONFIG" in text


def test_serve_reports_config_errors_and_exits_2() -> None:
    res = _run_cli("serve", "--listen", "abc", "--log-format", "xml")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "pgcloak: invalid --listen 'abc': expected HOST:PORT",
        "pgcloak: invalid --log-format 'xml': expected one of text, json",
    ]


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == "pgcloak 0.1.0"
    assert main([]) == 2
    assert main(["serve", "--no-such-flag"]) == 2
    assert main(["demo", "--listen", "nope"]) == 2
    assert "invalid --listen 'nope'" in capsys.readouterr().err
    assert main(["demo", "--upstream", "postgresql://u:pw@db?x=1"]) == 2
    err = capsys.readouterr().err
    assert "unsupported query parameter 'x'" in err and "pw" not in err


def test_serve_sighup_rereads_the_config_file(tmp_path: Path) -> None:
    """The reload callable handed to the server re-reads the file with the same argv."""
    import signal
    import time

    cfg = write(tmp_path / "c.toml", 'log_format = "text"\n')
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLOAK_")}
    env["PYTHONPATH"] = str(REPO)
    argv = ["serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--admin", "off"]
    argv += ["--upstream", "postgresql://127.0.0.1:1/never-contacted"]

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 30
        while text not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgcloak", *argv], stderr=log, env=env, cwd=tmp_path
        )
    try:
        wait_for("pgcloak listening on 127.0.0.1:")
        write(cfg, 'log_format = "json"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for('"msg": "configuration reloaded"')
        write(cfg, 'log_format = "yaml"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for("invalid log_format 'yaml'")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    json_lines = [json.loads(line) for line in log_path.read_text().splitlines()[1:]]
    assert json_lines[-1]["msg"] == "pgcloak stopped"


def test_workers_option() -> None:
    assert load_config({"workers": "auto"}, {}).workers == max(1, min(64, os.cpu_count() or 1))
    assert load_config({"workers": "3"}, {}).workers == 3
    assert load_config(None, {}).workers == 1
    for bad in ("0", "65", "many"):
        with pytest.raises(ConfigError) as err:
            load_config({"workers": bad}, {})
        assert "workers" in str(err.value)


def test_encrypt_rules_are_validated(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "bad.toml",
        """
        [encrypt]
        "a.b.c.d" = "deterministic"
        "t.c" = "sometimes"
        "t.d" = { mode = "randomized", colour = "red" }
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config({"config": str(cfg)}, {})
    text = str(info.value)
    assert "schema.table.column" in text and "mode must be one of" in text
    assert "unknown setting(s) colour" in text
