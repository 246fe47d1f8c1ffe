"""The statements of the in-band registry load (text only: no semantic name ever).

Each statement yields exactly one result set; `LOAD_STATEMENTS` runs as one Query on
the client's own connection (the proxy) or statement by statement (tools). Kept
apart from `catalog.py`, which turns the result sets into a catalog.
"""

from __future__ import annotations

from pgcloak.registry.store import KEY_CHECK_SQL, SELECT_OBJECTS_SQL, VERSION_SQL

__all__ = ["LOAD_RESULT_SETS", "LOAD_SQL", "LOAD_STATEMENTS"]

# -- the load query -------------------------------------------------------------------

SNAPSHOT_SQL = "SELECT pg_catalog.pg_current_snapshot()::pg_catalog.text"

# Registered relations of the given kinds joined to pg_class (alias c, schema n).
_REGISTERED = (
    "FROM pgcloak.objects o "
    "JOIN pg_catalog.pg_namespace n ON n.nspname = o.schema_name "
    "JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = o.physical_name "
)

# Registered relations that exist: (nspname, relname, relkind).
RELATIONS_SQL = (
    f"SELECT n.nspname, c.relname, c.relkind {_REGISTERED}WHERE o.kind IN ('t','i','s','v','m')"
)
# Live columns of registered tables/views: (nspname, relname, attnum, attname, generated).
COLUMNS_SQL = (
    f"SELECT n.nspname, c.relname, a.attnum, a.attname, a.attgenerated <> '' {_REGISTERED}"
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
    "WHERE o.kind IN ('t','v','m') AND a.attnum > 0 AND NOT a.attisdropped"
)
# attnums in an index's expressions then predicate, in order of appearance (alias x).
# The node-tree text is fixed-format (a Const prints as bytes), so the pattern is safe.
_EXPRESSION_ATTNUMS = (
    "pg_catalog.array_to_string(ARRAY(SELECT m.v[1] FROM pg_catalog.regexp_matches("
    "COALESCE(x.indexprs::pg_catalog.text, '') || ' ' || COALESCE(x.indpred::pg_catalog.text, ''), "
    "':varattno ([0-9]+)', 'g') WITH ORDINALITY AS m(v, i) ORDER BY m.i), ' ')"
)
# Constraints of registered tables: (nspname, relname, conname, contype, key attnums,
# referenced nspname, referenced relname, referenced attnums, expression attnums, parent
# constraint's conname); attnums space-separated. p/u/x report their index's columns
# (key columns, then INCLUDE columns; then those its expressions/predicate use). The
# parent is the partitioned table's constraint a partition's one is attached to. Left
# out: the per-partition copies PostgreSQL adds to the table of an FK referencing a
# partitioned table (their parent is on the same table).
CONSTRAINTS_SQL = (
    "SELECT n.nspname, c.relname, k.conname, k.contype, "
    "CASE WHEN x.indexrelid IS NOT NULL THEN x.indkey::pg_catalog.text "
    "ELSE pg_catalog.array_to_string(k.conkey, ' ') END, "
    "rn.nspname, r.relname, pg_catalog.array_to_string(k.confkey, ' '), "
    f"{_EXPRESSION_ATTNUMS}, pk.conname "
    f"{_REGISTERED}JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid "
    "LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = k.conindid AND k.contype IN ('p','u','x') "
    "LEFT JOIN pg_catalog.pg_class r ON r.oid = k.confrelid "
    "LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace "
    "LEFT JOIN pg_catalog.pg_constraint pk ON pk.oid = k.conparentid "
    "WHERE o.kind = 't' AND pk.conrelid IS DISTINCT FROM k.conrelid"
)
# Registered plain indexes: (nspname, index relname, table relname, indisunique, indkey,
# attnums of the columns in the expressions then the predicate, in order of appearance,
# the index's own column names (Index.labels), the parent index's relname).
INDEXES_SQL = (
    "SELECT n.nspname, c.relname, t.relname, x.indisunique, x.indkey::pg_catalog.text, "
    f"{_EXPRESSION_ATTNUMS}, "
    "pg_catalog.array_to_string(ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = c.oid AND a.attnum > 0 ORDER BY a.attnum), ' '), "
    "(SELECT pi.relname FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class pi "
    "ON pi.oid = h.inhparent WHERE h.inhrelid = c.oid) "
    f"{_REGISTERED}JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid "
    "JOIN pg_catalog.pg_class t ON t.oid = x.indrelid "
    "WHERE o.kind = 'i'"
)
# Sequences owned by columns of registered tables (serial: deptype a, identity: i):
# (sequence nspname, sequence relname, table relname, column attnum).
SEQUENCES_SQL = (
    "SELECT sn.nspname, s.relname, c.relname, d.refobjsubid "
    f"{_REGISTERED}JOIN pg_catalog.pg_depend d ON d.refobjid = c.oid "
    "AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND d.refobjsubid > 0 AND d.deptype IN ('a','i') "
    "JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
    "JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace "
    "WHERE o.kind = 't'"
)
# Every other relation (system catalogs included), for Catalog.has_uncloaked: neither
# registered nor shaped like a physical name (constraint indexes, orphans); toast
# tables are left out (internal, and as many as the tables).
UNCLOAKED_SQL = (
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname !~ '^pg_toast' AND c.relname !~ '^[tciksvm][0-9a-f]{20}(_|$)' "
    "AND NOT EXISTS (SELECT FROM pgcloak.objects o WHERE o.kind IN ('t','i','s','v','m') "
    "AND o.schema_name = n.nspname AND o.physical_name = c.relname)"
)
# What registered views/matviews read (their rule's pg_depend entries on relations;
# pinned system catalogs have none): (view nspname, view relname, relation nspname,
# relation relname, owner relname). The owner is the table of an index or of an owned
# sequence: dropping it drops them, and with CASCADE the view (see Relation.reads).
VIEW_READS_SQL = (
    "SELECT DISTINCT n.nspname, c.relname, dn.nspname, d.relname, ow.relname "
    f"{_REGISTERED}JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid "
    "JOIN pg_catalog.pg_depend p ON p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
    "AND p.objid = r.oid AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND p.refobjid <> c.oid "
    "JOIN pg_catalog.pg_class d ON d.oid = p.refobjid "
    "JOIN pg_catalog.pg_namespace dn ON dn.oid = d.relnamespace "
    "LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = d.oid "
    "LEFT JOIN pg_catalog.pg_depend sd ON d.relkind = 'S' "
    "AND sd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND sd.objid = d.oid "
    "AND sd.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND sd.refobjsubid > 0 AND sd.deptype IN ('a','i') "
    "LEFT JOIN pg_catalog.pg_class ow ON ow.oid = COALESCE(x.indrelid, sd.refobjid) "
    "WHERE o.kind IN ('v','m')"
)
# Parents of registered tables (partitions, inheritance children): (nspname, relname,
# parent relname, relispartition), in inheritance order.
INHERITS_SQL = (
    "SELECT n.nspname, c.relname, p.relname, c.relispartition "
    f"{_REGISTERED}JOIN pg_catalog.pg_inherits h ON h.inhrelid = c.oid "
    "JOIN pg_catalog.pg_class p ON p.oid = h.inhparent "
    "WHERE o.kind = 't' ORDER BY n.nspname, c.relname, h.inhseqno"
)

# In LOAD_SQL order. The snapshot comes FIRST: in READ COMMITTED every statement of
# the Query gets a newer snapshot, so everything a transaction id covered by it did
# is also visible to the reads after it; a commit racing the load is not covered
# and its NOTIFY triggers a reload (taking it last could skip a needed reload).
LOAD_STATEMENTS: tuple[str, ...] = (
    SNAPSHOT_SQL,
    VERSION_SQL,
    KEY_CHECK_SQL,
    SELECT_OBJECTS_SQL,
    RELATIONS_SQL,
    COLUMNS_SQL,
    CONSTRAINTS_SQL,
    INDEXES_SQL,
    SEQUENCES_SQL,
    UNCLOAKED_SQL,
    VIEW_READS_SQL,
    INHERITS_SQL,  # appended last: the proxy slices its answer by len(LOAD_STATEMENTS)
)
LOAD_SQL = ";\n".join(LOAD_STATEMENTS)
LOAD_RESULT_SETS = len(LOAD_STATEMENTS)
