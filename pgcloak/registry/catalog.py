"""The stored registry as the rewriter's `Catalog`, loaded in-band in one Query.

The proxy sends `LOAD_SQL` (one simple-protocol Query) on the client's own
upstream connection and hands the text-format rows of every result set to
`parse_load`, which decrypts the registry (pgcloak.objects) and joins it with the
physical metadata PostgreSQL keeps (column order, constraint and index columns,
FK targets, owned sequences) into a `RegistryCatalog`. DDL plans' changes are
applied to that catalog optimistically (`apply`, inherited from MemoryCatalog)
and turned into registry `Write`s by `writes_for` (pgcloak.registry.changes).

The metadata queries only ever contain fixed text: they reach the server and its
log, so they match registered objects by joining pgcloak.objects, never by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.names import DecryptionError, NameCipher
from pgcloak.registry.changes import writes_for, writes_for_all
from pgcloak.registry.load_sql import LOAD_RESULT_SETS, LOAD_SQL, LOAD_STATEMENTS
from pgcloak.registry.model import Kind, RawRow, RegistryObject
from pgcloak.registry.store import (
    Registry,
    RegistryError,
    RegistryStatus,
    load,
)
from pgcloak.rewriter.catalog import (
    Column,
    ColumnPolicy,
    Constraint,
    CreateSequence,
    CreateTable,
    Index,
    MemoryCatalog,
    OwnedSequence,
    Relation,
    StandaloneSequence,
)

__all__ = [
    "LOAD_RESULT_SETS",
    "LOAD_SQL",
    "LOAD_STATEMENTS",
    "Loaded",
    "RegistryCatalog",
    "RegistryUnavailable",
    "parse_load",
    "snapshot_covers",
    "writes_for",
    "writes_for_all",
]

# -- the load query (pgcloak/registry/load_sql.py) ---------------------------------------

_WIDTHS = (1, 1, 1, 12, 3, 5, 10, 8, 4, 2, 5, 4)  # columns per result set, checked on parse


class RegistryUnavailable(RegistryError):
    """The registry cannot be used; `message` is client-safe (no semantic names)."""

    VERSION = "55000"  # object_not_in_prerequisite_state: unsupported layout version
    KEY_MISMATCH = "28000"  # the proxy's master key is not the registry's
    CORRUPT = "XX001"  # data_corrupted: undecryptable, tampered or malformed rows

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


# -- snapshots ------------------------------------------------------------------------


def snapshot_covers(snapshot: str, txid: int) -> bool:
    """Whether transaction `txid` had finished in `snapshot` ('xmin:xmax:xip,...').

    The NOTIFY payload on pgcloak_registry is txid_current() of the committing
    transaction; if the loaded snapshot covers it, the load already saw its rows.
    """
    xmin_s, xmax_s, xip_s = snapshot.strip().split(":")
    xmin, xmax = int(xmin_s), int(xmax_s)
    if txid < xmin:
        return True
    if txid >= xmax:
        return False
    return str(txid) not in xip_s.split(",")


# -- metadata ---------------------------------------------------------------------------

Text = str | bytes | None
ResultSet = Sequence[Sequence[Text]]
_Key = tuple[str, str]  # (schema, physical relation name)


def _s(value: Text) -> str:
    if value is None:
        raise ValueError("unexpected NULL in registry metadata")
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _nums(value: Text) -> tuple[int, ...]:
    return () if value is None else tuple(int(v) for v in _s(value).split())


@dataclass(frozen=True)
class _ConMeta:
    contype: str
    keys: tuple[int, ...]
    ref: _Key | None
    ref_keys: tuple[int, ...]
    parent: str | None = None  # conname of the partitioned table's constraint


@dataclass(frozen=True)
class _IndexMeta:
    table: str
    unique: bool
    attnums: tuple[int, ...]
    labels: tuple[str, ...] = ()
    parent: str | None = None  # relname of the partitioned table's index


@dataclass
class Metadata:
    """What pg_catalog says about the registered objects (parsed result sets 5-11)."""

    relations: dict[_Key, str] = field(default_factory=dict)  # -> relkind
    columns: dict[_Key, dict[int, str]] = field(default_factory=dict)  # attnum -> attname
    generated: set[tuple[str, str, str]] = field(default_factory=set)  # (schema, rel, attname)
    constraints: dict[tuple[str, str, str], _ConMeta] = field(default_factory=dict)
    indexes: dict[_Key, _IndexMeta] = field(default_factory=dict)
    sequences: dict[_Key, tuple[str, int]] = field(default_factory=dict)  # -> table, attnum
    uncloaked: list[tuple[str, str]] = field(default_factory=list)
    # view -> (relation schema, relation relname, owner relname or None)
    view_reads: dict[_Key, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    # table -> its parents' relnames, and whether it is a partition
    parents: dict[_Key, tuple[list[str], bool]] = field(default_factory=dict)

    @classmethod
    def parse(cls, sets: Sequence[ResultSet]) -> Metadata:
        rels, cols, cons, idxs, seqs, other, reads, inherits = sets
        meta = cls()
        for r in rels:
            meta.relations[(_s(r[0]), _s(r[1]))] = _s(r[2])
        for r in cols:
            meta.columns.setdefault((_s(r[0]), _s(r[1])), {})[int(_s(r[2]))] = _s(r[3])
            if _s(r[4]) == "t":
                meta.generated.add((_s(r[0]), _s(r[1]), _s(r[3])))
        for r in cons:
            ref = None if r[6] is None else (_s(r[5]), _s(r[6]))
            keys = tuple(dict.fromkeys(n for n in (*_nums(r[4]), *_nums(r[8])) if n > 0))
            parent = None if r[9] is None else _s(r[9])
            meta.constraints[(_s(r[0]), _s(r[1]), _s(r[2]))] = _ConMeta(
                _s(r[3]), keys, ref, _nums(r[7]), parent
            )
        for r in idxs:
            attnums = tuple(dict.fromkeys(n for n in (*_nums(r[4]), *_nums(r[5])) if n > 0))
            labels = tuple(_s(r[6]).split()) if r[6] is not None else ()
            parent = None if r[7] is None else _s(r[7])
            meta.indexes[(_s(r[0]), _s(r[1]))] = _IndexMeta(
                _s(r[2]), _s(r[3]) == "t", attnums, labels, parent
            )
        for r in seqs:
            meta.sequences[(_s(r[0]), _s(r[1]))] = (_s(r[2]), int(_s(r[3])))
        meta.uncloaked = [(_s(r[0]), _s(r[1])) for r in other]
        for r in reads:
            owner = None if r[4] is None else _s(r[4])
            meta.view_reads.setdefault((_s(r[0]), _s(r[1])), []).append((_s(r[2]), _s(r[3]), owner))
        for r in inherits:
            parents, _ = meta.parents.setdefault((_s(r[0]), _s(r[1])), ([], False))
            parents.append(_s(r[2]))
            meta.parents[(_s(r[0]), _s(r[1]))] = (parents, _s(r[3]) == "t")
        return meta


# -- the catalog ------------------------------------------------------------------------

_COLUMN_HOLDERS = {Kind.TABLE: "table", Kind.VIEW: "view", Kind.MATVIEW: "matview"}


class RegistryCatalog(MemoryCatalog):
    """A MemoryCatalog filled from the registry plus pg_catalog metadata.

    It mirrors the registry exactly (so the rewriter refuses what `writes_for` could
    not register); pg_catalog supplies column order and constraint/index columns.
    Differences between the two are listed in `drift` (physical names only).
    """

    def __init__(self, uncloaked: Iterable[tuple[str, str]] | None = None) -> None:
        super().__init__(uncloaked)
        self.uncloaked_misses = 0
        self.drift: list[str] = []

    @classmethod
    def build(cls, registry: Registry, meta: Metadata) -> RegistryCatalog:
        cat = cls(meta.uncloaked)
        for obj in registry:
            if obj.kind in _COLUMN_HOLDERS:
                cat._add_relation(registry, meta, obj)
            elif obj.kind == Kind.SEQUENCE and obj.parent_id is None:
                assert obj.schema_name is not None
                cat._check_present(meta, obj)
                seq = StandaloneSequence(obj.schema_name, obj.name, obj.physical_name, obj.implicit)
                cat.apply(CreateSequence(seq))
        return cat

    def copy(self) -> RegistryCatalog:
        """Independent copy for a transaction (own identity and version: plan-cache safe)."""
        new = RegistryCatalog()
        new._uncloaked = self._uncloaked
        new._rels = dict(self._rels)
        new._by_phys = dict(self._by_phys)
        new._cons = {k: list(v) for k, v in self._cons.items()}
        new._idx = {k: list(v) for k, v in self._idx.items()}
        new._seqs = {k: list(v) for k, v in self._seqs.items()}
        new._free = dict(self._free)
        new.drift = list(self.drift)
        return new

    def relations(self) -> list[Relation]:
        """Every cloaked table/view, by physical name."""
        return [self._by_phys[p] for p in sorted(self._by_phys)]

    # -- Catalog overrides ------------------------------------------------------------

    def has_uncloaked(self, schema: str, name: str) -> bool | None:
        found = super().has_uncloaked(schema, name)
        if found is False:
            self.uncloaked_misses += 1
        return found

    # -- building ---------------------------------------------------------------------

    def _check_present(self, meta: Metadata, obj: RegistryObject) -> bool:
        assert obj.schema_name is not None
        if (obj.schema_name, obj.physical_name) in meta.relations:
            return True
        self.drift.append(f"{obj.kind.label} {obj.schema_name}.{obj.physical_name} is missing")
        return False

    def _add_relation(self, registry: Registry, meta: Metadata, obj: RegistryObject) -> None:
        schema, phys = obj.schema_name, obj.physical_name
        assert schema is not None
        where = f"{schema}.{phys}"
        present = self._check_present(meta, obj)
        attnames = meta.columns.get((schema, phys), {})
        attnums = {name: num for num, name in attnames.items()}
        registered = registry.columns(obj)
        for col in registered:
            if present and col.physical_name not in attnums:
                self.drift.append(f"column {where}.{col.physical_name} is missing")
        known = {c.physical_name for c in registered}
        for num, name in sorted(attnames.items()):
            if name not in known:  # its name may be a semantic one in plain view: not shown
                self.drift.append(f"column {where} #{num} is not registered")
        # pg_attribute order is authoritative; unmatched registry columns go last.
        ordered = sorted(
            registered,
            key=lambda c: (
                (0, attnums[c.physical_name], 0)
                if c.physical_name in attnums
                else (1, 0, c.position or 0)
            ),
        )
        view = obj.kind in (Kind.VIEW, Kind.MATVIEW)
        rel = Relation(
            schema,
            obj.name,
            phys,
            tuple(
                Column(
                    c.name,
                    c.physical_name,
                    _column_policy(c),
                    (schema, phys, c.physical_name) in meta.generated,
                )
                for c in ordered
            ),
            _COLUMN_HOLDERS[obj.kind],
            _view_reads(registry, meta.view_reads.get((schema, phys), [])) if view else None,
            *_inheritance(registry, meta, schema, phys),
        )
        constraints = [
            self._constraint(registry, meta, rel, c, attnames=attnames, present=present)
            for c in registry.children(obj, Kind.CONSTRAINT)
        ]
        indexes = []
        for i in registry.children(obj, Kind.INDEX):
            found = meta.indexes.get((schema, i.physical_name))
            if found is None or found.table != phys:
                self.drift.append(f"index {schema}.{i.physical_name} is missing")
                found = _IndexMeta(phys, False, ())
            cols = tuple(attnames[n] for n in found.attnums if n in attnames)
            index = Index(schema, phys, i.name, i.physical_name, cols, found.unique, i.implicit,
                          found.labels or None, found.parent)  # fmt: skip
            indexes.append(index)
        sequences = []
        for col in registered:
            for s in registry.children(col, Kind.SEQUENCE):
                assert s.schema_name is not None
                owner = meta.sequences.get((s.schema_name, s.physical_name))
                if owner != (phys, attnums.get(col.physical_name)) and present:
                    self.drift.append(
                        f"sequence {s.schema_name}.{s.physical_name} is not owned by "
                        f"{where}.{col.physical_name}"
                    )
                sequences.append(
                    OwnedSequence(
                        s.schema_name, s.name, s.physical_name, phys, col.physical_name, s.implicit
                    )
                )
        self.apply(CreateTable(rel, tuple(constraints), tuple(indexes), tuple(sequences)))

    def _constraint(
        self,
        registry: Registry,
        meta: Metadata,
        rel: Relation,
        con: RegistryObject,
        *,
        attnames: dict[int, str],
        present: bool,
    ) -> Constraint:
        assert con.contype is not None
        if con.check is not None:  # kept by pgcloak: the server has no such constraint
            return _kept_check(rel, con)
        found = meta.constraints.get((rel.schema, rel.physical, con.physical_name))
        if found is None:
            if present:
                self.drift.append(
                    f"constraint {rel.schema}.{rel.physical}.{con.physical_name} is missing"
                )
            found = _ConMeta(con.contype.value, (), None, ())
        elif found.contype != con.contype.value:
            self.drift.append(
                f"constraint {rel.schema}.{rel.physical}.{con.physical_name} has another type"
            )
        cols = tuple(attnames[n] for n in found.keys if n in attnames)
        ref_table: str | None = None
        ref_cols: tuple[str, ...] = ()
        if found.ref is not None:
            target = registry.by_physical(found.ref[1])
            if (
                target is not None
                and target.kind == Kind.TABLE
                and (target.schema_name == found.ref[0])
            ):
                ref_table = target.physical_name
                ref_names = meta.columns.get(found.ref, {})
                ref_cols = tuple(ref_names[n] for n in found.ref_keys if n in ref_names)
        return Constraint(
            rel.schema,
            rel.physical,
            con.name,
            con.physical_name,
            con.contype.value,
            cols,
            ref_table,
            ref_cols,
            con.implicit,
            found.parent,
        )


def _kept_check(rel: Relation, con: RegistryObject) -> Constraint:
    """A CHECK pgcloak keeps on an encrypted column (registry only); malformed: unusable."""
    assert con.check is not None
    try:
        data = json.loads(con.check)
        column, tree = data["column"], data["tree"]
        if not isinstance(column, str) or not isinstance(tree, list):
            raise ValueError("malformed")
    except (ValueError, KeyError, TypeError):
        raise RegistryUnavailable(
            RegistryUnavailable.CORRUPT,
            f"the pgcloak registry has a malformed check on table {rel.physical}",
        ) from None
    return Constraint(
        rel.schema, rel.physical, con.name, con.physical_name, "c", (column,),
        implicit=con.implicit, check=json.dumps(tree, separators=(",", ":")),
    )  # fmt: skip


def _inheritance(
    registry: Registry, meta: Metadata, schema: str, physical: str
) -> tuple[tuple[str, ...], bool, bool]:
    """Relation.parents, .partition and .partitioned of a registered table."""
    names, partition = meta.parents.get((schema, physical), ([], False))
    parents = tuple(
        p for p in names if (obj := registry.by_physical(p)) is not None and obj.kind == Kind.TABLE
    )
    return parents, partition and bool(parents), meta.relations.get((schema, physical)) == "p"


def _column_policy(obj: RegistryObject) -> ColumnPolicy | None:
    """An encrypted column's policy; a malformed one makes the registry unusable (a
    column whose encryption is unknown must not be read or written as plain)."""
    if obj.policy is None:
        return None
    try:
        return ColumnPolicy.from_json(obj.policy)
    except ValueError:
        raise RegistryUnavailable(
            RegistryUnavailable.CORRUPT,
            f"the pgcloak registry has a malformed policy on column {obj.physical_name}",
        ) from None


def _view_reads(registry: Registry, deps: Iterable[tuple[str, str, str | None]]) -> tuple[str, ...]:
    """Relation.reads from pg_depend rows, in the form the rewriter records it.

    Cloaked relations by physical name (an index or owned sequence with its table,
    whose drop takes them along); uncloaked ones by bare name. Sorted, like plans.
    """
    reads: set[str] = set()
    for schema, relname, owner_name in deps:
        reads.add(relname)
        owner = None if owner_name is None else registry.by_physical(owner_name)
        if owner is None or owner.kind not in (Kind.TABLE, Kind.MATVIEW):
            continue
        dep = registry.by_physical(relname)
        if dep is None:  # the index of a PRIMARY KEY/UNIQUE/EXCLUDE constraint
            dep = registry.by_physical(relname, owner)
            cloaked = dep is not None and dep.kind == Kind.CONSTRAINT
        else:
            cloaked = dep.schema_name == schema
        if cloaked:
            reads.add(owner.physical_name)
    return tuple(sorted(reads))


# -- loading ----------------------------------------------------------------------------


@dataclass
class Loaded:
    """A parsed LOAD_SQL answer."""

    registry: Registry
    catalog: RegistryCatalog
    snapshot: str  # pg_current_snapshot(): 'xmin:xmax:xip,...'; see snapshot_covers
    key_check_missing: bool  # record it: store.key_check_write(master.key_check())
    version: str = ""

    @property
    def drift(self) -> list[str]:
        """Registry/pg_catalog differences (physical names only; safe to log)."""
        return self.catalog.drift


def parse_load(
    result_sets: Sequence[ResultSet], master: MasterKey, *, cipher: NameCipher | None = None
) -> Loaded:
    """Build registry and catalog from LOAD_SQL's result sets (text-format values).

    Raises RegistryUnavailable for an unsupported version, a master key other than
    the registry's, or rows that do not decrypt/authenticate or are malformed.
    """
    if len(result_sets) != LOAD_RESULT_SETS:
        raise RegistryUnavailable(
            RegistryUnavailable.CORRUPT,
            f"the pgcloak registry load returned {len(result_sets)} result sets, "
            f"expected {LOAD_RESULT_SETS}",
        )
    for n, (result, width) in enumerate(zip(result_sets, _WIDTHS, strict=True), 1):
        if any(len(row) != width for row in result):
            raise RegistryUnavailable(
                RegistryUnavailable.CORRUPT,
                f"result set {n} of the pgcloak registry load has an unexpected shape",
            )
    snap_rows, version_rows, key_rows, object_rows = result_sets[:4]
    try:
        snapshot = _s(snap_rows[0][0])
        version = _s(version_rows[0][0]) if len(version_rows) == 1 else None
        status = RegistryStatus.from_catalog(True, version)
        if not status.ok:
            raise RegistryUnavailable(RegistryUnavailable.VERSION, status.describe())
        key_check_missing = not key_rows
        if key_rows:
            value = _s(key_rows[0][0])
            if not value.startswith("\\x") or bytes.fromhex(value[2:]) != master.key_check():
                raise RegistryUnavailable(
                    RegistryUnavailable.KEY_MISMATCH,
                    "the pgcloak registry in this database was created with a different master key",
                )
        raw = [RawRow.from_text(r) for r in object_rows]
        registry = load(raw, cipher or NameCipher.from_master(master))
        meta = Metadata.parse(result_sets[4:])
    except (DecryptionError, RegistryError, ValueError, IndexError, KeyError) as exc:
        if isinstance(exc, RegistryUnavailable):
            raise
        raise RegistryUnavailable(
            RegistryUnavailable.CORRUPT, f"cannot load the pgcloak registry: {_reason(exc)}"
        ) from None
    catalog = RegistryCatalog.build(registry, meta)
    return Loaded(registry, catalog, snapshot, key_check_missing, status.version or "")


def _reason(exc: Exception) -> str:
    """A client-safe reason: our own messages carry ids/physical names at most."""
    if isinstance(exc, DecryptionError | RegistryError):
        return str(exc).removeprefix("cannot load the pgcloak registry: ")
    return f"malformed data ({type(exc).__name__})"
