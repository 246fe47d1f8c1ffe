"""Vault transit key wrapping (against a fake Vault over real HTTP) and key rotation.

Vault itself is not available here, so `FakeVault` implements the slice of the
transit API pgcloak uses: encrypt/decrypt (single and batch) with derived keys
that require `context`, key read, key rotation, and token checks. hvac talks to
it over HTTP exactly as it would to Vault. Rotation tests run on real PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from helpers import PgServer

pytest.importorskip("hvac")

from pgcloak.cli import main
from pgcloak.config import Config
from pgcloak.crypto.kek import key_wrapper, split_vault_key
from pgcloak.crypto.keys import MasterKey, new_master_key
from pgcloak.crypto.names import DecryptionError, NameCipher
from pgcloak.crypto.values import (
    DETERMINISTIC,
    RANDOMIZED,
    LocalKeyWrapper,
    ValueDecryptionError,
    new_data_key,
)
from pgcloak.crypto.vault import KeyServiceError, VaultTransitWrapper, wrap_format
from pgcloak.proxy.cloak_values import Keyring
from pgcloak.registry.db import KeyMismatch, apply_writes, check_master_key, fetch_registry
from pgcloak.registry.install import install
from pgcloak.registry.model import Kind
from pgcloak.registry.rotation import (
    RotationError,
    UnknownColumn,
    rewrap,
    rotate_column_keys,
)
from pgcloak.settings import ConfigError, load_config

TOKEN = "s.test-token"
Conn = psycopg.Connection[tuple[Any, ...]]

# -- a fake Vault transit engine -------------------------------------------------------

_PATH = re.compile(r"^/v1/(?P<mount>.+)/(?P<op>encrypt|decrypt|keys)/(?P<name>[^/]+)$")


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeVault:
    """Transit encrypt/decrypt/keys with derived keys; records every request."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.namespaces: list[str | None] = []
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                vault.requests.append((method, self.path))
                vault.namespaces.append(self.headers.get("X-Vault-Namespace"))
                try:
                    if self.headers.get("X-Vault-Token") != TOKEN:
                        raise _Failure(403, "permission denied")
                    status, data = vault.answer(method, self.path, body)
                except _Failure as exc:
                    status, data = exc.status, {"errors": [str(exc)]}
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def create_key(self, name: str, *, derived: bool = True, mount: str = "transit") -> None:
        self.keys[(mount, name)] = {"derived": derived, "versions": [os.urandom(32)]}

    def rotate(self, name: str, mount: str = "transit") -> None:
        self.keys[(mount, name)]["versions"].append(os.urandom(32))

    def calls(self, op: str) -> int:
        return sum(1 for _, path in self.requests if f"/{op}/" in path)

    def _aead(self, key: dict[str, Any], version: int, context: str | None) -> AESGCM:
        if not 1 <= version <= len(key["versions"]):
            raise _Failure(400, "invalid key version")
        material = key["versions"][version - 1]
        if not key["derived"]:
            return AESGCM(material)  # like Vault: context ignored without derivation
        if not context:
            raise _Failure(400, "missing 'context' for key derivation; the key was derived")
        info = base64.b64decode(context)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        return AESGCM(derived.derive(material))

    def _encrypt(self, key: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        version = len(key["versions"])
        nonce = os.urandom(12)
        sealed = self._aead(key, version, item.get("context")).encrypt(
            nonce, base64.b64decode(item["plaintext"]), None
        )
        return {"ciphertext": f"vault:v{version}:" + base64.b64encode(nonce + sealed).decode()}

    def _decrypt(self, key: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        m = re.match(r"^vault:v(\d+):(.+)$", item.get("ciphertext") or "")
        if not m:
            raise _Failure(400, "invalid ciphertext")
        raw = base64.b64decode(m.group(2))
        try:
            plain = self._aead(key, int(m.group(1)), item.get("context")).decrypt(
                raw[:12], raw[12:], None
            )
        except InvalidTag:
            raise _Failure(400, "cipher: message authentication failed") from None
        return {"plaintext": base64.b64encode(plain).decode()}

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        m = _PATH.match(path)
        if not m:
            raise _Failure(404, "no handler for route")
        key = self.keys.get((m["mount"], m["name"]))
        if key is None:
            raise _Failure(400 if method == "POST" else 404, "encryption key not found")
        if m["op"] == "keys":
            return 200, {"data": {"derived": key["derived"], "latest_version": 1}}
        op = self._encrypt if m["op"] == "encrypt" else self._decrypt
        if "batch_input" not in body:
            return 200, {"data": op(key, body)}
        results: list[dict[str, Any]] = []
        for item in body["batch_input"]:
            try:
                results.append(op(key, item))
            except _Failure as exc:
                results.append({"error": str(exc)})
        status = 400 if any("error" in r for r in results) else 200
        return status, {"data": {"batch_results": results}}


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    fake = FakeVault()
    fake.create_key("pgcloak")
    yield fake
    fake.close()


def wrapper_for(vault: FakeVault, **kw: Any) -> VaultTransitWrapper:
    return VaultTransitWrapper(vault.url, kw.pop("token", TOKEN), kw.pop("key", "pgcloak"), **kw)


# -- VaultTransitWrapper ---------------------------------------------------------------


def test_wrap_unwrap_round_trip_through_vault(vault: FakeVault) -> None:
    w = wrapper_for(vault)
    cid = uuid.uuid4()
    key = new_data_key(3)
    wrapped = w.wrap(key, cid)
    assert wrapped[0] == 0x02 and wrapped[1:].startswith(b"vault:v1:")
    assert wrap_format(wrapped) == "vault"
    assert key.secret not in wrapped
    assert vault.calls("keys") == 1 and vault.calls("encrypt") == 1
    fresh = wrapper_for(vault)  # another process: nothing cached
    assert fresh.unwrap(wrapped, cid, 3) == key
    assert vault.calls("decrypt") == 1
    assert "token" not in repr(w) and TOKEN not in repr(w)


def test_context_binds_column_and_version(vault: FakeVault) -> None:
    cid = uuid.uuid4()
    wrapped = wrapper_for(vault).wrap(new_data_key(1), cid)
    for other_cid, other_version in ((uuid.uuid4(), 1), (cid, 2)):
        with pytest.raises(ValueDecryptionError, match="failed to unwrap") as info:
            wrapper_for(vault).unwrap(wrapped, other_cid, other_version)
        assert not isinstance(info.value, KeyServiceError)
    tampered = wrapped[:-3] + (b"AAA" if wrapped[-3:] != b"AAA" else b"BBB")
    with pytest.raises(ValueDecryptionError):
        wrapper_for(vault).unwrap(tampered, cid, 1)


def test_unwrap_is_cached_per_column_and_version(vault: FakeVault) -> None:
    w = wrapper_for(vault)
    items = []
    for version in (1, 2, 3):
        cid = uuid.uuid4()
        items.append((w.wrap(new_data_key(version), cid), cid, version))
    assert vault.calls("decrypt") == 0
    assert [k.version for k in w.unwrap_many(items)] == [1, 2, 3]
    assert vault.calls("decrypt") == 0  # wrapping filled the cache

    cold = wrapper_for(vault)
    first = cold.unwrap_many(items)
    assert vault.calls("decrypt") == 1  # one batch request for all three
    assert cold.unwrap_many(items) == first
    assert cold.unwrap(*items[1]) == first[1]
    assert vault.calls("decrypt") == 1
    # A changed stored value for the same (column, version) is not served from cache.
    wrapped, cid, version = items[0]
    rewrapped = w.wrap(first[0], cid)
    assert rewrapped != wrapped
    assert cold.unwrap(rewrapped, cid, version) == first[0]
    assert vault.calls("decrypt") == 2
    cold.forget()
    cold.unwrap(*items[2])
    assert vault.calls("decrypt") == 3


def test_batch_with_a_bad_item_fails(vault: FakeVault) -> None:
    w = wrapper_for(vault)
    good = [(w.wrap(new_data_key(1), c), c, 1) for c in (uuid.uuid4(), uuid.uuid4())]
    bad = (good[0][0], uuid.uuid4(), 1)  # wrong context
    with pytest.raises(ValueDecryptionError):
        wrapper_for(vault).unwrap_many([*good, bad])


def test_vault_key_rotation_keeps_old_wrappings_readable(vault: FakeVault) -> None:
    cid = uuid.uuid4()
    old = wrapper_for(vault).wrap(new_data_key(1), cid)
    vault.rotate("pgcloak")
    new = wrapper_for(vault).wrap(new_data_key(2), cid)
    assert old[1:].startswith(b"vault:v1:") and new[1:].startswith(b"vault:v2:")
    assert wrapper_for(vault).unwrap(old, cid, 1).version == 1


def test_wrappers_refuse_each_others_rows(vault: FakeVault) -> None:
    master = MasterKey.from_base64(new_master_key())
    cid = uuid.uuid4()
    local = LocalKeyWrapper(master).wrap(new_data_key(1), cid)
    remote = wrapper_for(vault).wrap(new_data_key(1), cid)
    assert wrap_format(local) == "local"
    before = len(vault.requests)
    with pytest.raises(ValueDecryptionError, match=r"local master key.*kek = vault"):
        wrapper_for(vault).unwrap(local, cid, 1)
    assert len(vault.requests) == before  # refused without asking Vault
    with pytest.raises(ValueDecryptionError, match=r"Vault transit.*kek = local"):
        LocalKeyWrapper(master).unwrap(remote, cid, 1)
    with pytest.raises(ValueDecryptionError, match="malformed"):
        wrapper_for(vault).unwrap(b"\x02not-vault", cid, 1)


def test_non_derived_key_is_refused(vault: FakeVault) -> None:
    vault.create_key("flat", derived=False)
    with pytest.raises(KeyServiceError, match="derived=true"):
        wrapper_for(vault, key="flat").wrap(new_data_key(1), uuid.uuid4())
    assert vault.calls("encrypt") == 0


def test_service_errors(vault: FakeVault) -> None:
    with pytest.raises(KeyServiceError, match="refused the token") as info:
        wrapper_for(vault, token="wrong").wrap(new_data_key(1), uuid.uuid4())
    assert "wrong" not in str(info.value) and info.value.sqlstate == "58000"
    assert "reach its key service" in info.value.message
    with pytest.raises(KeyServiceError, match="not found"):
        wrapper_for(vault, key="missing").check()
    dead = VaultTransitWrapper("http://127.0.0.1:9", TOKEN, "pgcloak", timeout=2)
    with pytest.raises(KeyServiceError, match="cannot reach Vault"):
        dead.unwrap(b"\x02vault:v1:AAAA", uuid.uuid4(), 1)


def test_custom_mount_and_namespace(vault: FakeVault) -> None:
    vault.create_key("k", mount="kms/transit")
    w = wrapper_for(vault, key="k", mount="kms/transit", namespace="team-a")
    cid = uuid.uuid4()
    assert wrapper_for(vault, key="k", mount="kms/transit").unwrap(
        w.wrap(new_data_key(1), cid), cid, 1
    )
    assert "team-a" in vault.namespaces
    assert split_vault_key("pgcloak") == ("transit", "pgcloak")
    assert split_vault_key("kms/transit/k") == ("kms/transit", "k")


# -- configuration ---------------------------------------------------------------------


def test_kek_settings() -> None:
    assert Config().kek == "local" and load_config({}, {}).kek == "local"
    assert load_config({"kek": ""}, {}).kek == "local"
    c = load_config(
        {"kek": "vault", "vault_url": "https://vault:8200", "vault_key": "transit/pgcloak"},
        {"VAULT_TOKEN": "s.secret"},
    )
    assert (c.kek, c.vault_url, c.vault_key, c.vault_token) == (
        "vault",
        "https://vault:8200",
        "transit/pgcloak",
        "s.secret",
    )
    assert "s.secret" not in repr(c)
    env = {"PGCLOAK_KEK": "vault", "VAULT_ADDR": "http://v:1", "PGCLOAK_VAULT_TOKEN": "t"}
    c = load_config({"vault_key": "k"}, env)
    assert (c.vault_url, c.vault_token) == ("http://v:1", "t")
    # Vault settings without kek = vault are kept but not required.
    assert load_config({"vault_url": "http://v"}, {}).vault_url == "http://v"

    with pytest.raises(ConfigError) as info:
        load_config({"kek": "vault"}, {})
    assert info.value.problems == [
        "--kek is vault but --vault-url or VAULT_ADDR is not set",
        "--kek is vault but --vault-token or VAULT_TOKEN is not set",
        "--kek is vault but --vault-key is not set",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(
            {"kek": "kms", "vault_url": "ftp://x", "vault_key": "a b"}, {"PGCLOAK_VAULT_TOKEN": "s"}
        )
    assert info.value.problems == [
        "invalid --kek 'kms': expected one of local, vault",
        "invalid --vault-url 'ftp://x': expected http[s]://host[:port]",
        "invalid --vault-key 'a b': expected a transit key name, or MOUNT/NAME",
    ]


def test_key_wrapper_factory(vault: FakeVault, monkeypatch: pytest.MonkeyPatch) -> None:
    master = MasterKey.from_base64(new_master_key())
    assert isinstance(key_wrapper(Config(), master), LocalKeyWrapper)
    config = Config(kek="vault", vault_url=vault.url, vault_key="pgcloak")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(KeyServiceError, match="vault_token"):
        key_wrapper(config, master)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    w = key_wrapper(config, master)
    assert isinstance(w, VaultTransitWrapper) and w.mount == "transit"
    cid = uuid.uuid4()
    assert w.unwrap(w.wrap(new_data_key(1), cid), cid, 1).version == 1


# -- rotation against PostgreSQL -------------------------------------------------------

POLICIES = {
    "email": {"mode": DETERMINISTIC, "type": "text", "scope": "s.email"},
    "ssn": {"mode": RANDOMIZED, "type": "text", "scope": "s.ssn"},
    "alt_email": {"mode": DETERMINISTIC, "type": "text", "scope": "s.email"},  # shares a key
}


def _key_rows(conn: Conn) -> list[tuple[str, str, str]]:
    """pgcloak.data_keys in the text form the proxy reads (DATA_KEYS_SQL)."""
    return [
        (str(r[0]), str(r[1]), str(r[2]))
        for r in conn.execute(
            "SELECT column_id::text, key_version::text, wrapped::text FROM pgcloak.data_keys"
        ).fetchall()
    ]


def _keyring(conn: Conn, master: MasterKey) -> Keyring:
    registry = fetch_registry(conn, NameCipher.from_master(master))
    return Keyring.load(master, registry, _key_rows(conn))


class _Col:
    def __init__(self, name: str) -> None:
        self.scope = str(POLICIES[name]["scope"])
        self.mode = str(POLICIES[name]["mode"])
        self.type_sql = "text"


class Cloaked(NamedTuple):
    conn: Conn
    master: MasterKey
    dsn: str
    master_b64: str


@pytest.fixture
def cloaked(pg: PgServer, db_factory: Callable[..., str]) -> Iterator[Cloaked]:
    """A registry with one table of three encrypted columns and their data keys (v1)."""
    master_b64 = new_master_key()
    master = MasterKey.from_base64(master_b64)
    dbname = db_factory()
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        install(conn, master)
        registry = fetch_registry(conn, NameCipher.from_master(master))
        table, writes = registry.add(Kind.TABLE, "customers", schema="public", comment="people")
        for pos, name in enumerate(POLICIES, 1):
            writes += registry.add(
                Kind.COLUMN, name, parent=table, position=pos, policy=POLICIES[name]
            ).writes
        writes += Keyring(master).writes_for_new_columns(registry, set())
        with conn.transaction():
            apply_writes(conn, writes)
        yield Cloaked(conn, master, pg.dsn(dbname), master_b64)


def _key_file(tmp_path: Path, master_b64: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(master_b64 + "\n")
    path.chmod(0o600)
    return str(path)


def test_rotate_columns_adds_a_version_per_scope(cloaked: Cloaked) -> None:
    conn, master = cloaked.conn, cloaked.master
    ring = _keyring(conn, master)
    email, ssn = _Col("email"), _Col("ssn")
    old_email = ring.cipher(email).encrypt(b"a@example.com")
    old_ssn = ring.cipher(ssn).encrypt(b"123")

    done = rotate_column_keys(conn, master, LocalKeyWrapper(master))
    assert sorted((d.scope, d.version, d.columns) for d in done) == [
        ("s.email", 2, 2),
        ("s.ssn", 2, 1),
    ]
    assert len(_key_rows(conn)) == 6
    ring = _keyring(conn, master)
    assert set(ring.keys["s.email"]) == {1, 2} and set(ring.keys["s.ssn"]) == {1, 2}
    assert ring.cipher(email).decrypt(old_email) == b"a@example.com"
    assert ring.cipher(ssn).decrypt(old_ssn) == b"123"
    new_email = ring.cipher(email).encrypt(b"a@example.com")
    assert new_email != old_email and new_email[2:6] == (2).to_bytes(4, "big")
    assert ring.cipher(email).decrypt(new_email) == b"a@example.com"

    # One column: only its scope (the two columns sharing the key) moves on.
    done = rotate_column_keys(conn, master, LocalKeyWrapper(master), column="customers.alt_email")
    assert [(d.scope, d.version, d.columns) for d in done] == [("s.email", 3, 2)]
    ring = _keyring(conn, master)
    assert set(ring.keys["s.email"]) == {1, 2, 3} and set(ring.keys["s.ssn"]) == {1, 2}
    for spec in ("public.customers.nope", "customers", "other.customers.email"):
        with pytest.raises(UnknownColumn):
            rotate_column_keys(conn, master, LocalKeyWrapper(master), column=spec)


def test_rotate_refuses_a_wrong_master_key(cloaked: Cloaked) -> None:
    conn = cloaked.conn
    other = MasterKey.from_base64(new_master_key())
    with pytest.raises(KeyMismatch):
        rotate_column_keys(conn, other, LocalKeyWrapper(other))
    assert len(_key_rows(conn)) == 3


def test_rotate_and_rewrap_with_vault(cloaked: Cloaked, vault: FakeVault) -> None:
    conn, master = cloaked.conn, cloaked.master
    ring = _keyring(conn, master)
    old_ssn = ring.cipher(_Col("ssn")).encrypt(b"123")
    w = wrapper_for(vault)
    # The rows are local: a Vault-configured rotation refuses them clearly.
    with pytest.raises(ValueDecryptionError, match="kek = vault"):
        rotate_column_keys(conn, master, w)
    # Move the data keys to Vault (master key unchanged), then rotate there.
    result = rewrap(conn, master, master, w)
    assert (result.names, result.data_keys, result.master_key_changed) == (0, 3, False)
    rows = conn.execute("SELECT wrapped FROM pgcloak.data_keys").fetchall()
    assert {wrap_format(bytes(r[0])) for r in rows} == {"vault"}
    done = rotate_column_keys(conn, master, wrapper_for(vault))
    assert sorted(d.version for d in done) == [2, 2]
    cold = wrapper_for(vault)
    keys: dict[str, dict[int, Any]] = {}
    registry = fetch_registry(conn, NameCipher.from_master(master))
    for cid, version, wrapped in conn.execute(
        "SELECT column_id, key_version, wrapped FROM pgcloak.data_keys"
    ).fetchall():
        scope = str(registry[cid].policy["scope"])  # type: ignore[index]
        keys.setdefault(scope, {})[version] = cold.unwrap(bytes(wrapped), cid, version)
    assert keys["s.ssn"][1] == ring.keys["s.ssn"][1]  # the DEK itself did not change
    assert Keyring(master, keys).cipher(_Col("ssn")).decrypt(old_ssn) == b"123"
    # And back to local keys: Vault rows need the Vault wrapper to be read.
    with pytest.raises(RotationError, match="wrapped by Vault"):
        rewrap(conn, master, master, LocalKeyWrapper(master))
    rewrap(conn, master, master, LocalKeyWrapper(master), vault=wrapper_for(vault))
    assert _keyring(conn, master).cipher(_Col("ssn")).decrypt(old_ssn) == b"123"


def test_rewrap_moves_everything_to_the_new_master_key(
    cloaked: Cloaked,
) -> None:
    conn, old = cloaked.conn, cloaked.master
    rotate_column_keys(conn, old, LocalKeyWrapper(old))  # two versions to carry over
    before = fetch_registry(conn, NameCipher.from_master(old))
    ring = _keyring(conn, old)
    sealed = {c: ring.cipher(_Col(c)).encrypt(c.encode()) for c in POLICIES}
    names = sorted((o.id, o.name, o.comment) for o in before)
    new = MasterKey.from_base64(new_master_key())

    result = rewrap(conn, old, new, LocalKeyWrapper(new))
    assert (result.names, result.data_keys, result.master_key_changed) == (4, 6, True)
    after = fetch_registry(conn, NameCipher.from_master(new))
    assert sorted((o.id, o.name, o.comment) for o in after) == names
    assert check_master_key(conn, new) == "match"
    with pytest.raises(KeyMismatch):
        check_master_key(conn, old)
    with pytest.raises(DecryptionError):
        fetch_registry(conn, NameCipher.from_master(old))
    with pytest.raises(ValueDecryptionError):
        Keyring.load(old, after, _key_rows(conn))
    ring = _keyring(conn, new)
    for column, envelope in sealed.items():
        assert ring.cipher(_Col(column)).decrypt(envelope) == column.encode()
    # The registry still resolves names after the move (lookups re-keyed).
    table = after.table("public", "customers")
    assert table is not None and after.column(table, "ssn") is not None

    with pytest.raises(RotationError, match="already uses the new master key"):
        rewrap(conn, old, new, LocalKeyWrapper(new))
    third, fourth = (MasterKey.from_base64(new_master_key()) for _ in range(2))
    with pytest.raises(KeyMismatch, match="old master key"):
        rewrap(conn, third, fourth, LocalKeyWrapper(fourth))
    assert check_master_key(conn, new) == "match"


def test_rewrap_rolls_back_on_failure(cloaked: Cloaked) -> None:
    conn, old = cloaked.conn, cloaked.master
    conn.execute("UPDATE pgcloak.data_keys SET wrapped = '\\x01'::bytea || wrapped")
    snapshot = conn.execute("SELECT name_enc FROM pgcloak.objects ORDER BY id").fetchall()
    new = MasterKey.from_base64(new_master_key())
    with pytest.raises(ValueDecryptionError):
        rewrap(conn, old, new, LocalKeyWrapper(new))
    assert conn.execute("SELECT name_enc FROM pgcloak.objects ORDER BY id").fetchall() == snapshot
    assert check_master_key(conn, old) == "match"


def test_cli_rotate_and_rewrap(
    cloaked: Cloaked,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in list(os.environ):
        if var.startswith("PGCLOAK_") or var.startswith("VAULT_"):
            monkeypatch.delenv(var)
    old_file = _key_file(tmp_path, cloaked.master_b64, "old.key")
    new_b64 = new_master_key()
    new_file = _key_file(tmp_path, new_b64, "new.key")
    base = ["--upstream", cloaked.dsn]

    assert main(["keys", "rotate-columns", *base, "--master-key-file", old_file]) == 0
    out = capsys.readouterr().out
    assert "scope s.email: new key version 2 (2 column(s))" in out
    args = ["keys", "rotate-columns", *base, "--master-key-file", old_file]
    assert main([*args, "--column", "customers.nope"]) == 1
    assert "no encrypted column 'customers.nope'" in capsys.readouterr().err
    assert main([*args, "--kek", "vault"]) == 1
    assert "--kek is vault but --vault-url" in capsys.readouterr().err

    rewrap_args = ["keys", "rewrap", *base, "--master-key-file", new_file]
    assert main([*rewrap_args, "--from-master-key-file", old_file]) == 0
    out = capsys.readouterr().out
    assert "re-encrypted 4 registry object(s)" in out and "re-wrapped 6 data key(s)" in out
    assert main(["map", "list", *base, "--master-key-file", new_file]) == 0
    assert "customers" in capsys.readouterr().out
    assert main(["map", "list", *base, "--master-key-file", old_file]) == 1
    assert "different master key" in capsys.readouterr().err
    assert main([*rewrap_args, "--from-master-key-file", old_file]) == 1
    assert "already uses the new master key" in capsys.readouterr().err
