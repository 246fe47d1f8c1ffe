"""The in-memory registry: the writes that change it (lookups: pgcloak.registry.index).

A `Registry` is built from pgcloak.objects rows (`load`), answers the rewriter's
questions (which physical table is `public.customers`? which column is `email`
in it? what is `t3f9...` called?), and turns changes (add, rename, move, comment,
drop) into `Write`s: SQL with encrypted parameters that the proxy runs on the
client's own connection, in the client's transaction, next to the DDL itself.
Each change is applied to the in-memory copy at the same time, so a session can
keep a private `copy()` for an open transaction and throw it away on ROLLBACK.

Exception messages never contain semantic names (they may end up in logs); the
conflicting name is available as an attribute for the client-facing error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from pgcloak.crypto.names import DecryptionError, Field, NameCipher
from pgcloak.registry.index import (
    NameConflict,
    RegistryError,
    RegistryIndex,
    RegistryIntegrityError,
)
from pgcloak.registry.model import (
    CHILD_KINDS,
    INDEX_CONTYPES,
    OBJECT_COLUMNS,
    RELATION_KINDS,
    ConType,
    Kind,
    RawRow,
    RegistryObject,
    Write,
    check_identifier,
    lookup_class,
)
from pgcloak.registry.names import new_physical_name

__all__ = [
    "CURRENT_VERSION",
    "KEY_CHECK_SQL",
    "SELECT_OBJECTS_SQL",
    "STATUS_SQL",
    "SUPPORTED_VERSIONS",
    "VERSION_SQL",
    "Added",
    "NameConflict",
    "Registry",
    "RegistryError",
    "RegistryIntegrityError",
    "RegistryStatus",
    "key_check_write",
    "load",
]

# Registry layout versions this pgcloak can cloak with; the newest is installed by init.
SUPPORTED_VERSIONS = ("1.0",)
CURRENT_VERSION = SUPPORTED_VERSIONS[-1]

# Status check, first step: works whether or not the registry exists. Returns
# (version table exists, extension version or NULL); feed RegistryStatus.from_catalog.
STATUS_SQL = (
    "SELECT pg_catalog.to_regclass('pgcloak.version') IS NOT NULL, "
    "(SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgcloak')"
)
# Second step, only when the version table exists.
VERSION_SQL = "SELECT version FROM pgcloak.version"
KEY_CHECK_SQL = "SELECT check_value FROM pgcloak.key_check"
_INSERT_KEY_CHECK_SQL = "INSERT INTO pgcloak.key_check (check_value) VALUES ($1::bytea)"

SELECT_OBJECTS_SQL = (
    f"SELECT {', '.join(OBJECT_COLUMNS)} FROM pgcloak.objects ORDER BY created_at, id"
)
_INSERT_SQL = (
    f"INSERT INTO pgcloak.objects ({', '.join(OBJECT_COLUMNS)}) VALUES ("
    '$1::uuid, $2::"char", $3::name, $4::name, $5::uuid, $6::int4, $7::"char", '
    "$8::bytea, $9::bytea, $10::bool, $11::bytea, $12::jsonb)"
)
_RENAME_SQL = (
    "UPDATE pgcloak.objects SET name_lookup = $1::bytea, name_enc = $2::bytea, "
    "implicit = $3::bool WHERE id = $4::uuid"
)
_MOVE_SQL = (
    "UPDATE pgcloak.objects SET schema_name = $1::name, name_lookup = $2::bytea WHERE id = $3::uuid"
)
_REPARENT_SQL = (
    "UPDATE pgcloak.objects SET parent_id = $1::uuid, name_enc = $2::bytea, "
    "comment_enc = $3::bytea WHERE id = $4::uuid"
)
_COMMENT_SQL = "UPDATE pgcloak.objects SET comment_enc = $1::bytea WHERE id = $2::uuid"
_POLICY_SQL = "UPDATE pgcloak.objects SET policy = $1::jsonb WHERE id = $2::uuid"
_DELETE_SQL = "DELETE FROM pgcloak.objects WHERE id = $1::uuid"

_PARENT_KINDS: dict[Kind, frozenset[Kind]] = {
    Kind.COLUMN: frozenset({Kind.TABLE, Kind.VIEW, Kind.MATVIEW}),
    Kind.CONSTRAINT: frozenset({Kind.TABLE}),
    Kind.INDEX: frozenset({Kind.TABLE, Kind.MATVIEW}),
    Kind.SEQUENCE: frozenset({Kind.COLUMN}),
}


@dataclass(frozen=True)
class RegistryStatus:
    """Whether a database has a registry this pgcloak can use."""

    state: Literal["missing", "ok", "unknown"]
    version: str | None = None
    extension_version: str | None = None  # set when installed with CREATE EXTENSION

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @classmethod
    def from_catalog(
        cls, version_table: bool, version: str | None, extension_version: str | None = None
    ) -> RegistryStatus:
        """Classify what the catalog says (to_regclass('pgcloak.version'), its row)."""
        if not version_table:
            return cls("missing", None, extension_version)
        if version in SUPPORTED_VERSIONS:
            return cls("ok", version, extension_version)
        return cls("unknown", version, extension_version)

    def describe(self) -> str:
        if self.state == "missing":
            return (
                "this database has no pgcloak registry (schema pgcloak); "
                "install it with `pgcloak init --upstream DSN`"
            )
        if self.state == "unknown":
            shown = "none" if self.version is None else repr(self.version)
            return (
                f"the pgcloak registry in this database has version {shown}, which this "
                f"pgcloak does not support (supported: {', '.join(SUPPORTED_VERSIONS)}); "
                "upgrade pgcloak, or run `pgcloak init` to upgrade an older registry"
            )
        return f"pgcloak registry version {self.version}"

    def __str__(self) -> str:
        return self.describe()


def key_check_write(check_value: bytes) -> Write:
    """Record the master key's check value (MasterKey.key_check()) on first use."""
    return Write(_INSERT_KEY_CHECK_SQL, (check_value,))


class Added(NamedTuple):
    object: RegistryObject
    writes: list[Write]


def _policy_json(policy: Mapping[str, Any] | None) -> str | None:
    return None if policy is None else json.dumps(policy, sort_keys=True, separators=(",", ":"))


class Registry(RegistryIndex):
    """Decrypted registry contents with lookups both ways (RegistryIndex) and the writes that
    change them. Not thread-safe; `copy()` is cheap."""

    # -- copying --------------------------------------------------------------------

    def copy(self) -> Registry:
        """Independent copy (objects are immutable and shared)."""
        new = Registry(self._cipher)
        new._objects = dict(self._objects)
        new._kids = {k: set(v) for k, v in self._kids.items()}
        new._relations = dict(self._relations)
        new._index_constraints = dict(self._index_constraints)
        new._named_children = dict(self._named_children)
        new._rel_physical = dict(self._rel_physical)
        new._child_physical = dict(self._child_physical)
        new._any_physical = {k: set(v) for k, v in self._any_physical.items()}
        return new

    def _lookup(self, obj: RegistryObject) -> bytes:
        if obj.kind in RELATION_KINDS:
            assert obj.schema_name is not None
            scope: uuid.UUID | str = obj.schema_name
        else:
            assert obj.parent_id is not None
            scope = obj.parent_id
        return self._cipher.lookup(lookup_class(obj.kind), scope, obj.name)

    def _seal(self, obj: RegistryObject, text: str, field: Field) -> bytes:
        return self._cipher.encrypt(
            text, obj.id, obj.kind.value, field=field, context=obj.binding()
        )

    def _seal_comment(self, obj: RegistryObject) -> bytes | None:
        return None if obj.comment is None else self._seal(obj, obj.comment, Field.COMMENT)

    def _sealed_policy(self, obj: RegistryObject) -> Mapping[str, Any] | None:
        """objects.policy: a column's policy, or a kept CHECK's definition, encrypted."""
        if obj.check is None:
            return obj.policy
        return {"check": self._seal(obj, obj.check, Field.CHECK).hex()}

    # -- validation -------------------------------------------------------------------

    def _check_placement(self, obj: RegistryObject) -> None:
        """Kind/schema/parent rules mirrored from the table's CHECK constraints."""
        if obj.kind in CHILD_KINDS:
            if obj.schema_name is not None:
                raise ValueError(f"a {obj.kind.label} has no schema of its own")
        elif obj.schema_name is None:
            raise ValueError(f"a {obj.kind.label} needs a schema")
        else:
            check_identifier(obj.schema_name, "schema name")
        allowed = _PARENT_KINDS.get(obj.kind)
        if obj.parent_id is None:
            if obj.kind in (Kind.COLUMN, Kind.CONSTRAINT, Kind.INDEX):
                raise ValueError(f"a {obj.kind.label} needs a parent")
        else:
            parent = self._objects.get(obj.parent_id)
            if parent is None:
                raise ValueError(f"parent {obj.parent_id} is not in the registry")
            if allowed is None or parent.kind not in allowed:
                raise ValueError(f"a {obj.kind.label} cannot belong to a {parent.kind.label}")
            if (
                obj.kind in (Kind.INDEX, Kind.SEQUENCE)
                and self.schema_of(parent) != obj.schema_name
            ):
                raise ValueError(f"a {obj.kind.label} lives in its table's schema")
        if (obj.kind == Kind.CONSTRAINT) != (obj.contype is not None):
            raise ValueError("contype is required for constraints and only for them")
        if obj.position is not None and (obj.kind != Kind.COLUMN or obj.position <= 0):
            raise ValueError("position is a positive number, for columns only")

    def _check_name_free(self, obj: RegistryObject, ignore: uuid.UUID | None = None) -> None:
        if obj.kind in RELATION_KINDS:
            assert obj.schema_name is not None
            key = (obj.schema_name, obj.name)
            other = self._relations.get(key) or self._index_constraints.get(key)
            if other is not None and other != ignore:
                raise NameConflict("a relation of that name already exists in the schema", obj.name)
        else:
            assert obj.parent_id is not None
            other = self._named_children.get((obj.parent_id, obj.kind, obj.name))
            if other is not None and other != ignore:
                raise NameConflict(
                    f"the parent already has a {obj.kind.label} of that name", obj.name
                )
            if obj.contype in INDEX_CONTYPES:
                key = (self.schema_of(obj), obj.name)
                other = self._relations.get(key) or self._index_constraints.get(key)
                if other is not None and other != ignore:
                    raise NameConflict(
                        "a relation of that name already exists in the schema", obj.name
                    )

    def _physical_free(self, kind: Kind, physical: str, parent_id: uuid.UUID | None) -> bool:
        if kind in RELATION_KINDS:
            return physical not in self._rel_physical
        assert parent_id is not None
        return (parent_id, kind, physical) not in self._child_physical

    # -- changes ----------------------------------------------------------------------

    def add(
        self,
        kind: Kind | str,
        name: str,
        *,
        schema: str | None = None,
        parent: RegistryObject | uuid.UUID | None = None,
        physical_name: str | None = None,
        position: int | None = None,
        contype: ConType | str | None = None,
        implicit: bool = False,
        comment: str | None = None,
        policy: Mapping[str, Any] | None = None,
        object_id: uuid.UUID | None = None,
        check: str | None = None,
    ) -> Added:
        """Register a new object; returns it and the INSERT to run in-band.

        Relations need `schema` (indexes and owned sequences: their table's);
        columns and constraints need `parent` and no schema. Without
        `physical_name` a fresh random one is generated (pass PostgreSQL's
        derived name when the database chose it, e.g. a serial's sequence).
        """
        k = Kind(kind)
        check_identifier(name, f"{k.label} name")
        if comment is not None and "\x00" in comment:
            raise ValueError("comments cannot contain NUL")
        pid = parent.id if isinstance(parent, RegistryObject) else parent
        if physical_name is None:
            physical_name = new_physical_name(k.value)
            while not self._physical_free(k, physical_name, pid):  # pragma: no cover - 2**-80
                physical_name = new_physical_name(k.value)
        else:
            check_identifier(physical_name, "physical name")
            if not self._physical_free(k, physical_name, pid):
                raise NameConflict(
                    f"physical name {physical_name!r} is already registered", physical_name
                )
        obj = RegistryObject(
            id=object_id or uuid.uuid4(),
            kind=k,
            name=name,
            physical_name=physical_name,
            schema_name=schema,
            parent_id=pid,
            position=position,
            contype=None if contype is None else ConType(contype),
            implicit=implicit,
            comment=comment,
            policy=policy,
            check=check,
        )
        if obj.check is not None and (obj.kind != Kind.CONSTRAINT or policy is not None):
            raise ValueError("only constraints carry a kept CHECK definition")
        if obj.id in self._objects:
            raise NameConflict(f"object id {obj.id} is already registered", str(obj.id))
        self._check_placement(obj)
        self._check_name_free(obj)
        write = Write(
            _INSERT_SQL,
            (
                obj.id,
                obj.kind.value,
                obj.schema_name,
                obj.physical_name,
                obj.parent_id,
                obj.position,
                None if obj.contype is None else obj.contype.value,
                self._lookup(obj),
                self._seal(obj, obj.name, Field.NAME),
                obj.implicit,
                self._seal_comment(obj),
                _policy_json(self._sealed_policy(obj)),
            ),
        )
        self._index(obj)
        return Added(obj, [write])

    def rename(self, object_id: uuid.UUID, new_name: str, *, implicit: bool = False) -> list[Write]:
        """Give an object a new semantic name: a registry-only change (no DDL).

        `implicit` says whether the new name is one PostgreSQL would have chosen
        (normally False: the user typed it).
        """
        obj = self[object_id]
        check_identifier(new_name, f"{obj.kind.label} name")
        new = replace(obj, name=new_name, implicit=implicit)
        self._check_name_free(new, ignore=obj.id)
        self._unindex(obj)
        self._index(new)
        return [
            Write(
                _RENAME_SQL,
                (self._lookup(new), self._seal(new, new_name, Field.NAME), implicit, new.id),
            )
        ]

    def move(self, object_id: uuid.UUID, new_schema: str) -> list[Write]:
        """ALTER ... SET SCHEMA: the relation and the indexes/sequences that follow it."""
        obj = self[object_id]
        if obj.kind not in (Kind.TABLE, Kind.VIEW, Kind.MATVIEW, Kind.SEQUENCE) or (
            obj.parent_id is not None
        ):
            raise ValueError(f"this {obj.kind.label} cannot be moved to another schema by itself")
        check_identifier(new_schema, "schema name")
        moving = [obj] + [d for d in self.descendants(obj) if d.kind in RELATION_KINDS]
        constraints = [d for d in self.descendants(obj) if d.contype in INDEX_CONTYPES]
        moved = [replace(o, schema_name=new_schema) for o in moving]
        moved_ids = {o.id for o in moving}
        for new in moved:
            key = (new_schema, new.name)
            other = self._relations.get(key) or self._index_constraints.get(key)
            if other is not None and other not in moved_ids:
                raise NameConflict("a relation of that name already exists in the schema", new.name)
        for c in constraints:
            other = self._relations.get((new_schema, c.name)) or self._index_constraints.get(
                (new_schema, c.name)
            )
            if other is not None and other not in moved_ids and other != c.id:
                raise NameConflict("a relation of that name already exists in the schema", c.name)
        for c in constraints:
            self._index_constraints.pop((self.schema_of(c), c.name), None)
        writes: list[Write] = []
        for old, new in zip(moving, moved, strict=True):
            self._unindex(old)
            self._index(new)
            writes.append(Write(_MOVE_SQL, (new_schema, self._lookup(new), new.id)))
        for c in constraints:
            self._index_constraints[(new_schema, c.name)] = c.id
        return writes

    def set_parent(self, object_id: uuid.UUID, new_parent: uuid.UUID | None) -> list[Write]:
        """ALTER SEQUENCE ... OWNED BY: re-bind the ciphertexts to the new parent."""
        obj = self[object_id]
        if obj.kind != Kind.SEQUENCE:
            raise ValueError("only sequences change owner")
        new = replace(obj, parent_id=new_parent)
        self._check_placement(new)
        self._unindex(obj)
        self._index(new)
        return [
            Write(
                _REPARENT_SQL,
                (
                    new_parent,
                    self._seal(new, new.name, Field.NAME),
                    self._seal_comment(new),
                    new.id,
                ),
            )
        ]

    def set_comment(self, object_id: uuid.UUID, comment: str | None) -> list[Write]:
        """COMMENT ON ...: stored encrypted in the registry, never with COMMENT in the catalog."""
        if comment is not None and "\x00" in comment:
            raise ValueError("comments cannot contain NUL")
        obj = self[object_id]
        new = replace(obj, comment=comment)
        self._objects[obj.id] = new
        return [Write(_COMMENT_SQL, (self._seal_comment(new), new.id))]

    def set_policy(self, object_id: uuid.UUID, policy: Mapping[str, Any] | None) -> list[Write]:
        obj = self[object_id]
        if obj.kind != Kind.COLUMN:
            raise ValueError("only columns carry an encryption policy")
        new = replace(obj, policy=policy)
        self._objects[obj.id] = new
        return [Write(_POLICY_SQL, (_policy_json(policy), new.id))]

    def drop(self, object_id: uuid.UUID) -> list[Write]:
        """Forget an object and everything below it (the DELETE cascades in the database)."""
        obj = self[object_id]
        for child in self.descendants(obj):
            if child.id in self._objects:
                self._unindex(child)
        self._unindex(obj)
        return [Write(_DELETE_SQL, (obj.id,))]

    # -- loading -----------------------------------------------------------------------

    def _open_check(self, row: RawRow, kind: Kind, context: bytes) -> str | None:
        envelope = _check_envelope(row, kind)
        if envelope is None:
            return None
        return self._cipher.decrypt(envelope, row.id, kind.value, field=Field.CHECK,
                                    context=context)  # fmt: skip

    def _admit(self, row: RawRow) -> RegistryObject:
        """Decrypt and check one stored row (before the indexes are built)."""
        try:
            kind = Kind(row.kind)
            contype = None if row.contype is None else ConType(row.contype)
        except ValueError:
            raise RegistryIntegrityError(f"registry object {row.id} has an unknown kind") from None
        skeleton = RegistryObject(
            id=row.id,
            kind=kind,
            name="",
            physical_name=row.physical_name,
            schema_name=row.schema_name,
            parent_id=row.parent_id,
            position=row.position,
            contype=contype,
            implicit=row.implicit,
            policy=row.policy,
        )
        context = skeleton.binding()
        try:
            name = self._cipher.decrypt(row.name_enc, row.id, kind.value, context=context)
            comment = (
                None
                if row.comment_enc is None
                else self._cipher.decrypt(
                    row.comment_enc, row.id, kind.value, field=Field.COMMENT, context=context
                )
            )
            check = self._open_check(row, kind, context)
        except DecryptionError as exc:
            raise DecryptionError(f"cannot load the pgcloak registry: {exc}") from None
        obj = replace(skeleton, name=name, comment=comment, check=check)
        if obj.kind in RELATION_KINDS and obj.schema_name is None:
            raise RegistryIntegrityError(f"registry object {row.id} has no schema")
        if obj.kind not in RELATION_KINDS and obj.parent_id is None:
            raise RegistryIntegrityError(f"registry object {row.id} has no parent")
        if self._lookup(obj) != row.name_lookup:
            raise RegistryIntegrityError(
                f"registry object {row.id}: name lookup does not match its name and scope "
                "(row modified outside pgcloak?)"
            )
        return obj


def _check_envelope(row: RawRow, kind: Kind) -> bytes | None:
    """The encrypted CHECK definition of a constraint row, if it has one."""
    policy = row.policy
    if policy is None or kind != Kind.CONSTRAINT:
        return None
    sealed = policy.get("check") if isinstance(policy, Mapping) else None
    if not isinstance(sealed, str) or set(policy) != {"check"}:
        raise RegistryIntegrityError(f"registry object {row.id} has a malformed check")
    try:
        return bytes.fromhex(sealed)
    except ValueError:
        raise RegistryIntegrityError(f"registry object {row.id} has a malformed check") from None


def load(rows: Iterable[RawRow | tuple[Any, ...]], cipher: NameCipher) -> Registry:
    """Build a Registry from pgcloak.objects rows (SELECT_OBJECTS_SQL order of columns).

    Raises DecryptionError when a name does not authenticate (wrong master key or
    tampered row) and RegistryIntegrityError for structural problems.
    """
    registry = Registry(cipher)
    pending: dict[uuid.UUID, RegistryObject] = {}
    for row in rows:
        raw = row if isinstance(row, RawRow) else RawRow.from_tuple(row)
        if raw.id in pending:
            raise RegistryIntegrityError(f"registry object {raw.id} appears twice")
        pending[raw.id] = registry._admit(raw)
    # Parents before children, whatever order the rows came in.
    depth: dict[uuid.UUID, int] = {}

    def level(oid: uuid.UUID, trail: frozenset[uuid.UUID] = frozenset()) -> int:
        if oid in depth:
            return depth[oid]
        if oid in trail:
            raise RegistryIntegrityError(f"registry object {oid} is its own ancestor")
        parent = pending[oid].parent_id
        if parent is not None and parent not in pending:
            raise RegistryIntegrityError(f"registry object {oid} has a missing parent")
        depth[oid] = 0 if parent is None else level(parent, trail | {oid}) + 1
        return depth[oid]

    for oid in sorted(pending, key=level):
        obj = pending[oid]
        try:
            registry._check_placement(obj)
            registry._check_name_free(obj)
        except (ValueError, NameConflict) as exc:
            raise RegistryIntegrityError(f"registry object {oid}: {exc}") from None
        if not registry._physical_free(obj.kind, obj.physical_name, obj.parent_id):
            raise RegistryIntegrityError(f"registry object {oid}: duplicate physical name")
        registry._index(obj)
    return registry
