"""The registry's lookups: semantic <-> physical, by id, parent and schema.

`RegistryIndex` holds the decrypted objects and the indexes that answer the
rewriter's questions; pgcloak.registry.store's `Registry` adds the writes that
change them (add, rename, move, comment, drop) and loading. Exception messages
never contain semantic names (they may end up in logs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from pgcloak.crypto.names import NameCipher
from pgcloak.registry.model import INDEX_CONTYPES, RELATION_KINDS, Kind, RegistryObject

__all__ = ["NameConflict", "RegistryError", "RegistryIndex", "RegistryIntegrityError"]


class RegistryError(Exception):
    """Base class of registry problems."""


class NameConflict(RegistryError):
    """The semantic (or physical) name is already used in that scope."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name  # for the client-facing error; keep it out of logs


class RegistryIntegrityError(RegistryError):
    """Stored rows are inconsistent (lookup mismatch, dangling parent, duplicates)."""


class RegistryIndex:
    """Decrypted registry objects and the lookups over them (read side of `Registry`)."""

    def __init__(self, cipher: NameCipher) -> None:
        self._cipher = cipher
        self._objects: dict[uuid.UUID, RegistryObject] = {}
        self._kids: dict[uuid.UUID, set[uuid.UUID]] = {}
        # (schema, semantic) -> relation id; PostgreSQL's per-schema relation namespace
        self._relations: dict[tuple[str, str], uuid.UUID] = {}
        # (schema, semantic) -> constraint id for constraints that own an index
        self._index_constraints: dict[tuple[str, str], uuid.UUID] = {}
        # (parent, kind, semantic) -> child id
        self._named_children: dict[tuple[uuid.UUID, Kind, str], uuid.UUID] = {}
        # physical relation name -> id (globally unique)
        self._rel_physical: dict[str, uuid.UUID] = {}
        # (parent, kind, physical) -> child id
        self._child_physical: dict[tuple[uuid.UUID, Kind, str], uuid.UUID] = {}
        # physical name of any kind -> ids (children repeat across inheritance)
        self._any_physical: dict[str, set[uuid.UUID]] = {}

    # -- reading --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[RegistryObject]:
        return iter(list(self._objects.values()))

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def __repr__(self) -> str:
        return f"<Registry {len(self._objects)} objects>"

    def get(self, object_id: uuid.UUID) -> RegistryObject | None:
        return self._objects.get(object_id)

    def __getitem__(self, object_id: uuid.UUID) -> RegistryObject:
        try:
            return self._objects[object_id]
        except KeyError:
            raise KeyError(f"no registry object {object_id}") from None

    def parent(self, obj: RegistryObject) -> RegistryObject | None:
        return None if obj.parent_id is None else self._objects.get(obj.parent_id)

    def schema_of(self, obj: RegistryObject) -> str:
        """Physical schema an object lives in (its own, or its nearest relation's)."""
        current: RegistryObject | None = obj
        while current is not None:
            if current.schema_name is not None:
                return current.schema_name
            current = self.parent(current)
        raise RegistryIntegrityError(f"registry object {obj.id} has no schema")

    def relation(
        self, schema: str, name: str, kinds: Iterable[Kind] | None = None
    ) -> RegistryObject | None:
        """The table/view/matview/sequence/index called `name` in `schema` (semantic)."""
        oid = self._relations.get((schema, name))
        if oid is None:
            return None
        obj = self._objects[oid]
        if kinds is not None and obj.kind not in set(kinds):
            return None
        return obj

    def table(self, schema: str, name: str) -> RegistryObject | None:
        """A relation that has columns: table, view or materialized view."""
        return self.relation(schema, name, (Kind.TABLE, Kind.VIEW, Kind.MATVIEW))

    def child(
        self, parent: RegistryObject | uuid.UUID, kind: Kind, name: str
    ) -> RegistryObject | None:
        pid = parent.id if isinstance(parent, RegistryObject) else parent
        oid = self._named_children.get((pid, kind, name))
        return None if oid is None else self._objects[oid]

    def column(self, table: RegistryObject | uuid.UUID, name: str) -> RegistryObject | None:
        return self.child(table, Kind.COLUMN, name)

    def constraint(self, table: RegistryObject | uuid.UUID, name: str) -> RegistryObject | None:
        return self.child(table, Kind.CONSTRAINT, name)

    def children(
        self, parent: RegistryObject | uuid.UUID, kind: Kind | None = None
    ) -> list[RegistryObject]:
        """Direct children, columns in position order, others by semantic name."""
        pid = parent.id if isinstance(parent, RegistryObject) else parent
        kids = [self._objects[k] for k in self._kids.get(pid, ())]
        if kind is not None:
            kids = [k for k in kids if k.kind == kind]
        return sorted(
            kids,
            key=lambda o: (o.kind.value, o.position if o.position is not None else 1 << 31, o.name),
        )

    def columns(self, table: RegistryObject | uuid.UUID) -> list[RegistryObject]:
        return self.children(table, Kind.COLUMN)

    def descendants(self, obj: RegistryObject | uuid.UUID) -> list[RegistryObject]:
        """All objects below `obj` (columns, constraints, indexes, owned sequences)."""
        root = obj.id if isinstance(obj, RegistryObject) else obj
        out: list[RegistryObject] = []
        stack = list(self._kids.get(root, ()))
        while stack:
            oid = stack.pop()
            out.append(self._objects[oid])
            stack.extend(self._kids.get(oid, ()))
        return out

    def by_physical(
        self, physical_name: str, parent: RegistryObject | uuid.UUID | None = None
    ) -> RegistryObject | None:
        """Relation by physical name (global), or a column/constraint of `parent`."""
        if parent is None:
            oid = self._rel_physical.get(physical_name)
            return None if oid is None else self._objects[oid]
        pid = parent.id if isinstance(parent, RegistryObject) else parent
        for kind in (Kind.COLUMN, Kind.CONSTRAINT):
            cid = self._child_physical.get((pid, kind, physical_name))
            if cid is not None:
                return self._objects[cid]
        return None

    def semantic_name(self, physical_name: str) -> str | None:
        """Semantic name for any physical name, for RowDescription and error text.

        Columns and constraints inherited by partitions/children share a physical
        name and, by construction, the semantic name; if they ever disagree this
        returns None rather than guess.
        """
        ids = self._any_physical.get(physical_name)
        if not ids:
            return None
        names = {self._objects[i].name for i in ids}
        return names.pop() if len(names) == 1 else None

    def physical_names(self) -> dict[str, str]:
        """physical -> semantic for every unambiguous physical name."""
        out: dict[str, str] = {}
        for physical in self._any_physical:
            name = self.semantic_name(physical)
            if name is not None:
                out[physical] = name
        return out

    def relation_name_taken(self, schema: str, name: str) -> bool:
        """Whether a new relation may not be called `name` in `schema` (semantic).

        Counts registered relations and the indexes behind PRIMARY KEY/UNIQUE/
        EXCLUDE constraints, which PostgreSQL keeps in the same namespace.
        """
        return (schema, name) in self._relations or (schema, name) in self._index_constraints

    def relation_names(self, schema: str) -> set[str]:
        """Semantic names in the relation namespace of `schema` (for implicit naming)."""
        names = {n for (s, n) in self._relations if s == schema}
        names.update(n for (s, n) in self._index_constraints if s == schema)
        return names

    def constraint_names(self, schema: str) -> set[str]:
        """Semantic names of all constraints on tables in `schema` (ChooseConstraintName)."""
        out: set[str] = set()
        for obj in self._objects.values():
            if obj.kind == Kind.CONSTRAINT:
                parent = self.parent(obj)
                if parent is not None and parent.schema_name == schema:
                    out.add(obj.name)
        return out

    # -- index maintenance ------------------------------------------------------------

    def _index(self, obj: RegistryObject) -> None:
        self._objects[obj.id] = obj
        if obj.parent_id is not None:
            self._kids.setdefault(obj.parent_id, set()).add(obj.id)
        self._any_physical.setdefault(obj.physical_name, set()).add(obj.id)
        if obj.kind in RELATION_KINDS:
            assert obj.schema_name is not None
            self._relations[(obj.schema_name, obj.name)] = obj.id
            self._rel_physical[obj.physical_name] = obj.id
        else:
            assert obj.parent_id is not None
            self._named_children[(obj.parent_id, obj.kind, obj.name)] = obj.id
            self._child_physical[(obj.parent_id, obj.kind, obj.physical_name)] = obj.id
            if obj.contype in INDEX_CONTYPES:
                self._index_constraints[(self.schema_of(obj), obj.name)] = obj.id

    def _unindex(self, obj: RegistryObject) -> None:
        del self._objects[obj.id]
        if obj.parent_id is not None:
            kids = self._kids.get(obj.parent_id)
            if kids is not None:
                kids.discard(obj.id)
                if not kids:
                    del self._kids[obj.parent_id]
        ids = self._any_physical.get(obj.physical_name)
        if ids is not None:
            ids.discard(obj.id)
            if not ids:
                del self._any_physical[obj.physical_name]
        if obj.kind in RELATION_KINDS:
            assert obj.schema_name is not None
            self._relations.pop((obj.schema_name, obj.name), None)
            self._rel_physical.pop(obj.physical_name, None)
        else:
            assert obj.parent_id is not None
            self._named_children.pop((obj.parent_id, obj.kind, obj.name), None)
            self._child_physical.pop((obj.parent_id, obj.kind, obj.physical_name), None)
            if obj.contype in INDEX_CONTYPES:
                parent = self.parent(obj)
                if parent is not None:
                    self._index_constraints.pop((self.schema_of(parent), obj.name), None)
                else:  # parent already gone (cascade): find the entry by id
                    for key, value in list(self._index_constraints.items()):
                        if value == obj.id:
                            del self._index_constraints[key]

    # -- crypto helpers -----------------------------------------------------------------
