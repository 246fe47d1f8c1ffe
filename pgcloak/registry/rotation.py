"""Key rotation: new data-key versions for encrypted columns, and re-wrapping under a new KEK.

Two independent operations (behind `pgcloak keys rotate-columns` and `pgcloak keys
rewrap`), each one transaction on an ordinary connection:

* `rotate_column_keys`: a fresh DEK, as version max+1, for every scope (or the
  scope of one column). Columns of a scope share their DEK, so a scope rotates as
  a whole: every column row of the scope gets its wrapping of the new version.
  Old versions stay, so stored values keep decrypting; proxies reload on the
  commit's NOTIFY and encrypt new values with the newest version. Existing values
  are not re-encrypted (that needs the rows rewritten through the proxy).
* `rewrap`: master-key rotation and KEK changes. With a new master key, every
  registry row's name, comment and lookup are re-encrypted and `key_check` is
  replaced; every wrapped DEK is unwrapped (local rows with the old master key,
  Vault rows through Vault) and wrapped again by the target wrapper (the new
  master key's, or Vault's newest transit key version). The DEKs themselves do
  not change, so no column value is touched. Before committing, the registry is
  loaded back with the new key and every DEK unwrapped with the target wrapper.

`rewrap` locks the registry tables against writes for its transaction, but a
proxy still running with the old key would, after the commit, write new rows
under the old key: stop the proxies (or their DDL) first and restart them with
the new key. Messages never carry semantic names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.names import Field, NameCipher
from pgcloak.crypto.values import DataKey, KeyWrapper, LocalKeyWrapper, new_data_key
from pgcloak.crypto.vault import wrap_format
from pgcloak.registry.db import Conn, KeyMismatch, check_master_key, fetch_registry, registry_status
from pgcloak.registry.model import RELATION_KINDS, Kind, RegistryObject, lookup_class
from pgcloak.registry.store import KEY_CHECK_SQL, Registry

__all__ = [
    "RewrapResult",
    "RotatedScope",
    "RotationError",
    "UnknownColumn",
    "encrypted_column",
    "rewrap",
    "rotate_column_keys",
]

_DATA_KEYS_SQL = "SELECT column_id, key_version, wrapped FROM pgcloak.data_keys ORDER BY 1, 2"
_INSERT_KEY_SQL = (
    "INSERT INTO pgcloak.data_keys (column_id, key_version, wrapped) VALUES (%s, %s, %s)"
)
_UPDATE_KEY_SQL = (
    "UPDATE pgcloak.data_keys SET wrapped = %s WHERE column_id = %s AND key_version = %s"
)
_UPDATE_NAMES_SQL = (
    "UPDATE pgcloak.objects SET name_lookup = %s, name_enc = %s, comment_enc = %s WHERE id = %s"
)
_UPDATE_POLICY_SQL = "UPDATE pgcloak.objects SET policy = %s::jsonb WHERE id = %s"
_UPDATE_KEY_CHECK_SQL = "UPDATE pgcloak.key_check SET check_value = %s, created_at = now()"
_INSERT_KEY_CHECK_SQL = "INSERT INTO pgcloak.key_check (check_value) VALUES (%s)"
_OTHER_SESSIONS_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend'"
)


class RotationError(Exception):
    """Rotation cannot proceed; the message is for the operator (no semantic names)."""


class UnknownColumn(RotationError):
    """`column` names no encrypted column (the caller knows the name it passed)."""


@runtime_checkable
class _BatchUnwrapper(Protocol):
    def unwrap_many(self, items: Sequence[tuple[bytes, uuid.UUID, int]]) -> list[DataKey]: ...


@dataclass(frozen=True)
class RotatedScope:
    """One scope that got a new data-key version."""

    scope: str
    version: int
    columns: int  # column rows that received the new wrapped key


@dataclass(frozen=True)
class RewrapResult:
    names: int  # registry rows re-encrypted (0 when the master key did not change)
    data_keys: int  # wrapped DEKs replaced
    master_key_changed: bool
    other_sessions: int  # other client connections to the database at the time


_DataKeyRow = tuple[uuid.UUID, int, bytes]


def _data_key_rows(conn: Conn) -> list[_DataKeyRow]:
    return [
        (r[0] if isinstance(r[0], uuid.UUID) else uuid.UUID(str(r[0])), int(r[1]), bytes(r[2]))
        for r in conn.execute(_DATA_KEYS_SQL).fetchall()
    ]


def _unwrap_all(wrapper: KeyWrapper, rows: Sequence[_DataKeyRow]) -> list[DataKey]:
    """Unwrap rows (in one Vault batch when the wrapper can)."""
    items = [(wrapped, cid, version) for cid, version, wrapped in rows]
    if isinstance(wrapper, _BatchUnwrapper):
        return wrapper.unwrap_many(items)
    return [wrapper.unwrap(w, c, v) for w, c, v in items]


def _scope(obj: RegistryObject) -> str | None:
    if obj.kind is not Kind.COLUMN or obj.policy is None:
        return None
    return str(obj.policy.get("scope", ""))


def encrypted_column(registry: Registry, spec: str) -> RegistryObject | None:
    """The encrypted column named 'schema.table.column' or 'table.column' (exact names)."""
    parts = spec.split(".")
    if len(parts) == 2:
        parts = ["public", *parts]
    if len(parts) != 3:
        return None
    table = registry.table(parts[0], parts[1])
    column = None if table is None else registry.column(table, parts[2])
    return column if column is not None and _scope(column) is not None else None


def _open(conn: Conn, master: MasterKey) -> Registry:
    status = registry_status(conn)
    if not status.ok:
        raise RotationError(status.describe())
    check_master_key(conn, master)
    return fetch_registry(conn, NameCipher.from_master(master))


def rotate_column_keys(
    conn: Conn, master: MasterKey, wrapper: KeyWrapper, *, column: str | None = None
) -> list[RotatedScope]:
    """Add a new data-key version to every encrypted scope (or `column`'s scope).

    Existing keys are unwrapped first, so a wrong master key or Vault key fails
    before anything is written. Raises RotationError, KeyMismatch,
    DecryptionError or ValueDecryptionError.
    """
    with conn.transaction():
        # Serializes concurrent rotations; proxies adding columns wait for the commit.
        conn.execute("LOCK TABLE pgcloak.data_keys IN SHARE ROW EXCLUSIVE MODE")
        registry = _open(conn, master)
        rows = _data_key_rows(conn)
        _unwrap_all(wrapper, rows)
        by_scope: dict[str, list[RegistryObject]] = {}
        for obj in registry:
            scope = _scope(obj)
            if scope is not None:
                by_scope.setdefault(scope, []).append(obj)
        if column is not None:
            chosen = encrypted_column(registry, column)
            if chosen is None:
                raise UnknownColumn("no encrypted column of that name in the registry")
            wanted = {str(_scope(chosen))}
        else:
            wanted = set(by_scope)
        newest: dict[uuid.UUID, int] = {}
        for cid, version, _ in rows:
            newest[cid] = max(newest.get(cid, 0), version)
        done: list[RotatedScope] = []
        for scope in sorted(wanted):
            columns = sorted(by_scope[scope], key=lambda o: str(o.id))
            version = max(newest.get(c.id, 0) for c in columns) + 1
            key = new_data_key(version)
            for col in columns:
                conn.execute(_INSERT_KEY_SQL, (col.id, version, wrapper.wrap(key, col.id)))
            done.append(RotatedScope(scope, version, len(columns)))
        return done


def _lookup(cipher: NameCipher, obj: RegistryObject) -> bytes:
    scope: uuid.UUID | str | None = obj.schema_name if obj.kind in RELATION_KINDS else obj.parent_id
    assert scope is not None
    return cipher.lookup(lookup_class(obj.kind), scope, obj.name)


def _reencrypt_names(conn: Conn, registry: Iterable[RegistryObject], cipher: NameCipher) -> int:
    n = 0
    for obj in registry:
        context = obj.binding()
        name_enc = cipher.encrypt(obj.name, obj.id, obj.kind.value, context=context)
        comment_enc = (
            None
            if obj.comment is None
            else cipher.encrypt(
                obj.comment, obj.id, obj.kind.value, field=Field.COMMENT, context=context
            )
        )
        conn.execute(_UPDATE_NAMES_SQL, (_lookup(cipher, obj), name_enc, comment_enc, obj.id))
        if obj.check is not None:  # a CHECK pgcloak keeps: its definition is encrypted too
            sealed = cipher.encrypt(obj.check, obj.id, obj.kind.value, field=Field.CHECK,
                                    context=context)  # fmt: skip
            conn.execute(_UPDATE_POLICY_SQL, (json.dumps({"check": sealed.hex()}), obj.id))
        n += 1
    return n


def rewrap(
    conn: Conn,
    old: MasterKey,
    new: MasterKey,
    target: KeyWrapper,
    *,
    vault: KeyWrapper | None = None,
) -> RewrapResult:
    """Move the registry from master key `old` to `new` and every DEK to `target`.

    `old` may equal `new` (same key check): then only the data keys are re-wrapped,
    e.g. to move them from the master key to Vault or to Vault's newest key version.
    `vault` unwraps rows stored by Vault (needed when there are any). All in one
    transaction; nothing is committed unless the result loads with `new`/`target`.
    """
    changing = old.key_check() != new.key_check()
    with conn.transaction():
        status = registry_status(conn)
        if not status.ok:
            raise RotationError(status.describe())
        conn.execute(
            "LOCK TABLE pgcloak.objects, pgcloak.data_keys, pgcloak.key_check IN EXCLUSIVE MODE"
        )
        other_sessions = int(_one(conn, _OTHER_SESSIONS_SQL))
        stored = [bytes(r[0]) for r in conn.execute(KEY_CHECK_SQL).fetchall()]
        if changing and stored and stored[0] == new.key_check():
            raise RotationError(
                "the registry already uses the new master key (a previous rewrap committed); "
                "run without --from-master-key-file to re-wrap only the data keys"
            )
        try:
            check_master_key(conn, old)
        except KeyMismatch:
            raise KeyMismatch(
                "the old master key is not the one this registry was written with"
            ) from None
        registry = fetch_registry(conn, NameCipher.from_master(old))
        names = 0
        if changing:
            names = _reencrypt_names(conn, registry, NameCipher.from_master(new))
            sql = _UPDATE_KEY_CHECK_SQL if stored else _INSERT_KEY_CHECK_SQL
            conn.execute(sql, (new.key_check(),))

        rows = _data_key_rows(conn)
        local = [r for r in rows if wrap_format(r[2]) != "vault"]
        remote = [r for r in rows if wrap_format(r[2]) == "vault"]
        if remote and vault is None:
            raise RotationError(
                "some data keys are wrapped by Vault: give the Vault settings "
                "(vault_url, vault_key and a token) to unwrap them"
            )
        keys = _unwrap_all(LocalKeyWrapper(old), local)
        if remote and vault is not None:
            keys += _unwrap_all(vault, remote)
        for (cid, version, _), key in zip(local + remote, keys, strict=True):
            conn.execute(_UPDATE_KEY_SQL, (target.wrap(key, cid), cid, version))

        # Verify before commit: the registry opens with the new key, every DEK with target.
        fetch_registry(conn, NameCipher.from_master(new))
        check_master_key(conn, new)
        expected = {(cid, v): key for (cid, v, _), key in zip(local + remote, keys, strict=True)}
        after = _data_key_rows(conn)
        for (cid, version, _), again in zip(after, _unwrap_all(target, after), strict=True):
            want = expected.get((cid, version))
            if want is None or again.secret != want.secret:
                raise RotationError(f"re-wrapped data key of {cid} v{version} does not verify")
        return RewrapResult(names, len(rows), changing, other_sessions)


def _one(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]
