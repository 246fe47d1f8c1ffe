"""Operator tools behind `pgcloak map` and `pgcloak schema`: list, show, check, export.

These run with the master key on the operator's terminal, so unlike the proxy they
do print semantic names. They return text; the CLI prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from pgcloak.registry.model import INDEX_CONTYPES, RELATION_KINDS, ConType, Kind, RegistryObject
from pgcloak.registry.names import looks_physical
from pgcloak.registry.store import Registry
from pgcloak.registry.unmask import quote_ident, unmask_sql

__all__ = ["Finding", "check_schema", "export_schema", "find_table", "map_list", "map_show"]

Conn = psycopg.Connection[tuple[Any, ...]]

# pg_class.relkind values each registry kind may have.
_RELKINDS: dict[Kind, frozenset[str]] = {
    Kind.TABLE: frozenset("rp"),
    Kind.INDEX: frozenset("iI"),
    Kind.SEQUENCE: frozenset("S"),
    Kind.VIEW: frozenset("v"),
    Kind.MATVIEW: frozenset("m"),
}
_RELKIND_LABELS = {
    "r": "table",
    "p": "partitioned table",
    "i": "index",
    "I": "partitioned index",
    "S": "sequence",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "c": "composite type",
}
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pgcloak')"


def _qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def _display(registry: Registry, obj: RegistryObject) -> str:
    """schema.table[.column] in semantic names."""
    if obj.kind in RELATION_KINDS:
        return _qualified(obj.schema_name, obj.name)
    parent = registry.parent(obj)
    prefix = _display(registry, parent) if parent is not None else "?"
    return f"{prefix}.{quote_ident(obj.name)}"


def _physical_display(registry: Registry, obj: RegistryObject) -> str:
    if obj.kind in RELATION_KINDS:
        return f"{obj.schema_name}.{obj.physical_name}"
    parent = registry.parent(obj)
    prefix = _physical_display(registry, parent) if parent is not None else "?"
    return f"{prefix}.{obj.physical_name}"


def _sort_key(registry: Registry, obj: RegistryObject) -> tuple[str, ...]:
    return (registry.schema_of(obj), _display(registry, obj), obj.kind.value)


def map_list(registry: Registry) -> list[str]:
    """One line per object: kind, semantic name, physical name."""
    rows = [
        (obj.kind.label, _display(registry, obj), _physical_display(registry, obj))
        for obj in sorted(registry, key=lambda o: _sort_key(registry, o))
    ]
    if not rows:
        return ["(the registry is empty)"]
    headers = ("KIND", "SEMANTIC NAME", "PHYSICAL NAME")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]


def find_table(registry: Registry, name: str) -> list[RegistryObject]:
    """Relations matching `name` ('schema.name' or a bare name in any schema)."""
    schema, dot, rel = name.rpartition(".")
    matches = [
        obj
        for obj in registry
        if obj.kind in RELATION_KINDS
        and obj.name == (rel if dot else name)
        and (not dot or obj.schema_name == schema)
    ]
    return sorted(matches, key=lambda o: (o.schema_name or "", o.kind.value))


def map_show(registry: Registry, obj: RegistryObject) -> list[str]:
    """Details of one relation: its columns, constraints, indexes and sequences."""
    lines = [
        f"{obj.kind.label} {_display(registry, obj)}",
        f"  physical: {obj.schema_name}.{obj.physical_name}",
        f"  id: {obj.id}",
    ]
    if obj.implicit:
        lines.append("  name chosen by PostgreSQL's rules (implicit)")
    if obj.comment is not None:
        lines.append(f"  comment: {obj.comment!r}")
    parent = registry.parent(obj)
    if parent is not None:
        lines.append(f"  belongs to: {_display(registry, parent)}")
    sections: list[tuple[str, list[RegistryObject]]] = [
        ("columns", registry.columns(obj)),
        ("constraints", registry.children(obj, Kind.CONSTRAINT)),
        ("indexes", registry.children(obj, Kind.INDEX)),
        (
            "sequences",
            [s for c in registry.columns(obj) for s in registry.children(c, Kind.SEQUENCE)],
        ),
    ]
    for title, objs in sections:
        if not objs:
            continue
        lines.append(f"  {title}:")
        width = max(len(quote_ident(o.name)) for o in objs)
        for o in objs:
            extra = []
            if o.position is not None:
                extra.append(f"#{o.position}")
            if o.contype is not None:
                extra.append(_CONTYPE_LABELS[o.contype])
            if o.implicit:
                extra.append("implicit")
            if o.check is not None:
                extra.append("CHECK kept by pgcloak")
            elif o.policy is not None:
                extra.append("encryption policy")
            if o.comment is not None:
                extra.append(f"comment {o.comment!r}")
            suffix = f"  ({', '.join(extra)})" if extra else ""
            lines.append(f"    {quote_ident(o.name):<{width}}  {o.physical_name}{suffix}")
    return lines


_CONTYPE_LABELS = {
    ConType.PRIMARY_KEY: "primary key",
    ConType.UNIQUE: "unique",
    ConType.FOREIGN_KEY: "foreign key",
    ConType.CHECK: "check",
    ConType.EXCLUSION: "exclusion",
}


# -- schema check -------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One difference between the registry and pg_catalog."""

    kind: Literal["missing", "mismatch", "orphan", "uncloaked"]
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


@dataclass
class _Rel:
    oid: int
    schema: str
    name: str
    relkind: str


def _catalog_relations(conn: Conn) -> dict[tuple[str, str], _Rel]:
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_toast%%' "
        "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND c.relkind IN ('r','p','i','I','S','v','m','f')"
    ).fetchall()
    return {(r[1], r[2]): _Rel(int(r[0]), r[1], r[2], str(r[3])) for r in rows}


def check_schema(conn: Conn, registry: Registry) -> list[Finding]:
    """Every registered object exists under its physical name, and nothing else does.

    'missing'/'mismatch': a registry row without (the right kind of) catalog object.
    'orphan': a catalog object with a physical (or PostgreSQL-derived from physical)
    name the registry lacks.
    'uncloaked': a catalog object with any other name (a semantic name in plain view).
    """
    findings: list[Finding] = []
    catalog = _catalog_relations(conn)
    by_oid = {r.oid: r for r in catalog.values()}
    found: dict[Any, _Rel] = {}  # registry id -> catalog relation
    for obj in sorted(registry, key=lambda o: _sort_key(registry, o)):
        if obj.kind not in RELATION_KINDS:
            continue
        assert obj.schema_name is not None
        rel = catalog.get((obj.schema_name, obj.physical_name))
        label = (
            f"{obj.kind.label} {_display(registry, obj)} ({obj.schema_name}.{obj.physical_name})"
        )
        if rel is None:
            findings.append(Finding("missing", f"{label} does not exist"))
        elif rel.relkind not in _RELKINDS[obj.kind]:
            findings.append(
                Finding("mismatch", f"{label} is a {_RELKIND_LABELS.get(rel.relkind, rel.relkind)}")
            )
        else:
            found[obj.id] = rel
    # Only relations with user-visible columns (sequences and indexes have internal ones).
    oids = [rel.oid for rel in found.values() if rel.relkind in "rpvmf"]
    attrs: dict[int, set[str]] = {}
    for relid, attname in conn.execute(
        "SELECT attrelid, attname FROM pg_catalog.pg_attribute "
        "WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped",
        (oids,),
    ).fetchall():
        attrs.setdefault(int(relid), set()).add(attname)
    cons: dict[int, dict[str, tuple[str, int]]] = {}
    for relid, conname, contype, conindid in conn.execute(
        "SELECT conrelid, conname, contype, conindid FROM pg_catalog.pg_constraint "
        "WHERE conrelid = ANY(%s)",
        (oids,),
    ).fetchall():
        cons.setdefault(int(relid), {})[conname] = (str(contype), int(conindid))
    # Children of registered relations.
    registered_attrs: dict[int, set[str]] = {}
    registered_cons: dict[int, set[str]] = {}
    for obj in sorted(registry, key=lambda o: _sort_key(registry, o)):
        if obj.kind not in (Kind.COLUMN, Kind.CONSTRAINT):
            continue
        assert obj.parent_id is not None
        label = f"{obj.kind.label} {_display(registry, obj)} ({obj.physical_name})"
        parent_rel = found.get(obj.parent_id)
        if parent_rel is None:
            continue  # the parent is already reported
        if obj.kind == Kind.COLUMN:
            registered_attrs.setdefault(parent_rel.oid, set()).add(obj.physical_name)
            if obj.physical_name not in attrs.get(parent_rel.oid, set()):
                findings.append(Finding("missing", f"{label} does not exist"))
        elif obj.check is not None:
            continue  # kept by pgcloak (CHECK on an encrypted column): not in the catalog
        else:
            registered_cons.setdefault(parent_rel.oid, set()).add(obj.physical_name)
            con = cons.get(parent_rel.oid, {}).get(obj.physical_name)
            if con is None:
                findings.append(Finding("missing", f"{label} does not exist"))
            elif obj.contype is not None and con[0] != obj.contype.value:
                findings.append(Finding("mismatch", f"{label} has type {con[0]!r} in the catalog"))
    # Catalog side: relations nobody registered.
    registered_rel = {(o.schema_name, o.physical_name) for o in registry if o.is_relation}
    constraint_indexes = {
        idx
        for relid, named in cons.items()
        for conname, (contype, idx) in named.items()
        if contype in {c.value for c in INDEX_CONTYPES}
        and conname in registered_cons.get(relid, ())
    }
    for key in sorted(catalog):
        rel = catalog[key]
        if key in registered_rel or rel.oid in constraint_indexes:
            continue
        what = _RELKIND_LABELS.get(rel.relkind, rel.relkind)
        kind: Literal["orphan", "uncloaked"] = "orphan" if looks_physical(rel.name) else "uncloaked"
        findings.append(Finding(kind, f"{what} {rel.schema}.{rel.name} is not in the registry"))
    # Columns and constraints of registered relations that the registry lacks.
    for oid in sorted(set(oids)):
        rel = by_oid[oid]
        for attname in sorted(attrs.get(oid, set()) - registered_attrs.get(oid, set())):
            kind = "orphan" if looks_physical(attname) else "uncloaked"
            findings.append(
                Finding(kind, f"column {attname} of {rel.schema}.{rel.name} is not in the registry")
            )
        for conname in sorted(set(cons.get(oid, {})) - registered_cons.get(oid, set())):
            kind = "orphan" if looks_physical(conname) else "uncloaked"
            findings.append(
                Finding(
                    kind, f"constraint {conname} on {rel.schema}.{rel.name} is not in the registry"
                )
            )
    return findings


# -- schema export ------------------------------------------------------------------


def export_schema(conn: Conn, registry: Registry) -> str:
    """Semantic DDL for the cloaked schema, from pg_catalog plus the registry.

    Covers tables (columns, types, defaults, NOT NULL, identity, constraints),
    standalone and owned sequences, indexes, views, materialized views and comments.
    Objects the registry does not know are skipped (see `pgcloak schema check`).
    """
    names = registry.physical_names()
    out: list[str] = ["-- semantic schema exported by pgcloak", ""]
    objs = sorted(registry, key=lambda o: _sort_key(registry, o))
    with conn.transaction():
        # Empty search_path (for this transaction only): pg_get_*def() then
        # schema-qualifies every reference, so the output does not depend on it.
        conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        schemas = sorted(
            {o.schema_name for o in objs if o.schema_name and o.schema_name != "public"}
        )
        for schema in schemas:
            out.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)};")
        if schemas:
            out.append("")
        for obj in objs:
            if obj.kind == Kind.SEQUENCE and obj.parent_id is None:
                out.extend(_export_sequence(conn, registry, obj))
        for obj in objs:
            if obj.kind == Kind.TABLE:
                out.extend(_export_table(conn, registry, obj, names))
        for obj in objs:
            if obj.kind in (Kind.VIEW, Kind.MATVIEW):
                out.extend(_export_view(conn, registry, obj, names))
        for obj in objs:
            if obj.kind == Kind.INDEX:
                row = conn.execute(
                    "SELECT pg_catalog.pg_get_indexdef(%s::regclass)", (_regclass(obj),)
                ).fetchone()
                if row is not None:
                    out.append(unmask_sql(row[0], names) + ";")
                    out.extend(_comment("INDEX", _display(registry, obj), obj.comment))
    return "\n".join(out).rstrip() + "\n"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment(what: str, target: str, comment: str | None) -> list[str]:
    return [] if comment is None else [f"COMMENT ON {what} {target} IS {_literal(comment)};"]


def _regclass(obj: RegistryObject) -> str:
    return f"{quote_ident(obj.schema_name or '')}.{obj.physical_name}"


def _export_sequence(conn: Conn, registry: Registry, obj: RegistryObject) -> list[str]:
    row = conn.execute(
        "SELECT format_type(seqtypid, NULL), seqstart, seqincrement, seqmin, seqmax, seqcache, "
        "seqcycle FROM pg_catalog.pg_sequence WHERE seqrelid = %s::regclass",
        (_regclass(obj),),
    ).fetchone()
    if row is None:
        return []
    typ, start, inc, smin, smax, cache, cycle = row
    text = (
        f"CREATE SEQUENCE {_display(registry, obj)} AS {typ} START WITH {start} "
        f"INCREMENT BY {inc} MINVALUE {smin} MAXVALUE {smax} CACHE {cache}"
        f"{' CYCLE' if cycle else ''};"
    )
    return [text, *_comment("SEQUENCE", _display(registry, obj), obj.comment), ""]


def _export_table(
    conn: Conn, registry: Registry, table: RegistryObject, names: dict[str, str]
) -> list[str]:
    regclass = _regclass(table)
    cols = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated "
        "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d "
        "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (regclass,),
    ).fetchall()
    cons = conn.execute(
        "SELECT conname, pg_catalog.pg_get_constraintdef(oid, true) FROM pg_catalog.pg_constraint "
        "WHERE conrelid = %s::regclass ORDER BY contype <> 'p', contype <> 'u', conname",
        (regclass,),
    ).fetchall()
    out: list[str] = []
    identity_columns = {c[0] for c in cols if c[4]}
    # serial-style sequences are created before the table and owned by the column
    # afterwards; identity sequences come with the column definition.
    serials = [
        (col, seq)
        for col in registry.columns(table)
        if col.physical_name not in identity_columns
        for seq in registry.children(col, Kind.SEQUENCE)
    ]
    for _, seq in serials:
        out.extend(line for line in _export_sequence(conn, registry, seq) if line)
    lines: list[str] = []
    for attname, typ, notnull, default, identity, generated in cols:
        column = registry.by_physical(attname, table)
        shown = column.name if column is not None else str(attname)
        parts = [f"    {quote_ident(shown)} {typ}"]
        if identity:
            parts.append(f"GENERATED {'ALWAYS' if identity == 'a' else 'BY DEFAULT'} AS IDENTITY")
        elif generated == "s" and default is not None:
            parts.append(f"GENERATED ALWAYS AS ({unmask_sql(default, names)}) STORED")
        elif default is not None:
            parts.append(f"DEFAULT {unmask_sql(default, names)}")
        if notnull and not identity:
            parts.append("NOT NULL")
        lines.append(" ".join(parts))
    for conname, definition in cons:
        semantic = registry.by_physical(conname, table)
        shown = semantic.name if semantic is not None else conname
        lines.append(f"    CONSTRAINT {quote_ident(shown)} {unmask_sql(definition, names)}")
    out.append(f"CREATE TABLE {_display(registry, table)} (")
    out.append(",\n".join(lines))
    out.append(");")
    out.extend(_comment("TABLE", _display(registry, table), table.comment))
    for col in registry.columns(table):
        out.extend(_comment("COLUMN", _display(registry, col), col.comment))
    for col, seq in serials:
        out.append(f"ALTER SEQUENCE {_display(registry, seq)} OWNED BY {_display(registry, col)};")
    out.append("")
    return out


def _export_view(
    conn: Conn, registry: Registry, view: RegistryObject, names: dict[str, str]
) -> list[str]:
    row = conn.execute(
        "SELECT pg_catalog.pg_get_viewdef(%s::regclass, true)", (_regclass(view),)
    ).fetchone()
    if row is None:
        return []
    cols = [c.name for c in registry.columns(view)]
    column_list = f" ({', '.join(quote_ident(c) for c in cols)})" if cols else ""
    what = "MATERIALIZED VIEW" if view.kind == Kind.MATVIEW else "VIEW"
    body = unmask_sql(row[0].rstrip().rstrip(";"), names)
    return [
        f"CREATE {what} {_display(registry, view)}{column_list} AS",
        body + ";",
        *_comment(what, _display(registry, view), view.comment),
        "",
    ]
