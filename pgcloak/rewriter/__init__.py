"""Name-cloaking SQL rewriter: semantic names in, physical names out (a pure library).

``Rewriter().plan(sql, catalog, search_path)`` returns one `Plan` per statement or
raises `CloakError` (never half-rewrites); it never touches sockets. Edits are
made on the client's text at token positions (no deparsing); comments become a
space. See docs/cloaking-design.md §9 for the design.

Rewritten (when they touch a cloaked object; otherwise sent unchanged minus comments):

* SELECT with joins (ON, USING, NATURAL, LATERAL), subqueries (correlated too),
  CTEs (recursive, data-modifying), set operations, windows, GROUP BY/ROLLUP,
  DISTINCT ON, FOR UPDATE OF, VALUES; functions in FROM (plain calls only);
* INSERT (column list, VALUES/SELECT, ON CONFLICT cols / ON CONSTRAINT, RETURNING),
  UPDATE (SET incl. (a, b) = ..., FROM, RETURNING), DELETE (USING, RETURNING), EXPLAIN;
* MERGE (15's forms), COPY (table, column list, FORCE_* lists, WHERE, (query); not
  HEADER on COPY TO), PREPARE/EXECUTE/DEALLOCATE (copy_merge.py, prepare.py);
* CREATE TABLE (columns, defaults, NOT NULL, CHECK, UNIQUE, PRIMARY KEY, REFERENCES,
  serial/identity; every constraint gets an explicit physical name), DROP TABLE,
  ALTER TABLE (ADD/DROP COLUMN, ADD/DROP CONSTRAINT, ALTER COLUMN TYPE/DEFAULT/
  NOT NULL), CREATE INDEX, TRUNCATE; RENAME table/column/constraint is registry-only
  (``plan.sql is None``);
* every relation a statement creates is cloaked, whatever it reads, unless temporary
  or declined by the cloak filter: CREATE SEQUENCE (OWNED BY), ALTER/DROP SEQUENCE,
  RENAME (registry-only), ``nextval('s')``/``'s'::regclass`` and ``FROM s``; CREATE
  TABLE AS and SELECT INTO (sent as CREATE TABLE AS) (ddl_create.py, ddl_sequence.py);
* column encryption (docs/encryption-design.md): columns `encrypt_rules` select are
  created as bytea with a `ColumnPolicy`; queries may only do on them what works on
  ciphertext, and plans say what the proxy encrypts and decrypts (`value_slots`,
  `param_slots`, `output_columns`, `copy_columns`; encrypted.py, ddl_encrypt.py);
* CREATE [OR REPLACE] VIEW, CREATE MATERIALIZED VIEW (fresh physical name, explicit
  physical column list), DROP/REFRESH, ALTER [MATERIALIZED] VIEW RENAME (registry-only),
  DROP ... CASCADE follows dependent views; COMMENT ON (registry-only: the text never
  reaches the server); GRANT/REVOKE on tables, views, sequences, columns (ddl_view.py,
  ddl_misc.py).

Refused on cloaked objects (0A000): other statement types (functions/DO bodies
naming cloaked tables, ...), recursive/temporary views, ALTER VIEW other than
RENAME, DROP COLUMN/CONSTRAINT ... CASCADE under views, temporary/partitioned/
inherited tables, EXCLUDE constraints, XML/JSON constructs, ROWS FROM, aliased
joins, USING/NATURAL over columns with different physical names, unqualified
columns that could belong to a relation pgcloak does not know, ``*`` over such a
relation, and cloaked names inside string literals (``'customers'::regclass``).
"""

from pgcloak.rewriter.catalog import Catalog, CatalogChange, MemoryCatalog
from pgcloak.rewriter.plan import CloakError, Plan, PositionMap, combine
from pgcloak.rewriter.policy import ColumnPolicy, EncColumn, EncryptRules
from pgcloak.rewriter.rewriter import Rewriter, plan_query

__all__ = [
    "Catalog",
    "CatalogChange",
    "CloakError",
    "ColumnPolicy",
    "EncColumn",
    "EncryptRules",
    "MemoryCatalog",
    "Plan",
    "PositionMap",
    "Rewriter",
    "combine",
    "plan_query",
]
