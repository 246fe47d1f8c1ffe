-- pgcloak registry, version 1.0.
--
-- Installed either by `pgcloak init --upstream DSN` (which creates schema pgcloak and
-- runs this file in one transaction) or by CREATE EXTENSION pgcloak (the control file
-- names the schema, so PostgreSQL creates it). Every object is schema-qualified and
-- the file never creates the schema itself, so both paths run it unchanged.
-- Design and threat model: docs/cloaking-design.md.

\echo Use "CREATE EXTENSION pgcloak" or "pgcloak init" to load this file. \quit

-- Exactly one row: the registry layout version. Upgrade scripts (pgcloak--1.0--1.1.sql,
-- ...) update it; pgcloak refuses to cloak a database whose version it does not know.
CREATE TABLE pgcloak.version (
    singleton    boolean PRIMARY KEY DEFAULT true CONSTRAINT version_singleton CHECK (singleton),
    version      text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    upgraded_at  timestamptz
);
INSERT INTO pgcloak.version (version) VALUES ('1.0');

-- One row (once a master key has been used): a public HKDF output of the master key,
-- so a proxy started with a different key refuses to run instead of mixing keys.
CREATE TABLE pgcloak.key_check (
    singleton  boolean PRIMARY KEY DEFAULT true CONSTRAINT key_check_singleton CHECK (singleton),
    check_value bytea NOT NULL CONSTRAINT key_check_length CHECK (pg_catalog.octet_length(check_value) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Every cloaked object. Semantic names exist here only as AES-GCM ciphertexts
-- (name_enc, comment_enc) and HMAC lookups (name_lookup); see pgcloak/crypto/names.py.
--   kind: t table, c column, i index, k constraint, s sequence, v view, m materialized view
--   schema_name: physical schema of relations (t, i, s, v, m); NULL for columns and
--     constraints, which live in their parent. Schemas themselves are not cloaked.
--   parent_id: owning object (column -> table/view, constraint/index -> table,
--     owned sequence -> column); dropping the owner drops the row.
--   contype: constraint type for kind k (p primary key, u unique, f foreign key,
--     c check, x exclusion); p/u/x own an index of the same physical name, which is
--     not registered separately.
--   name_lookup: HMAC of (name class, scope, semantic name); the scope (schema for
--     relations, parent for columns/constraints) is inside the HMAC, so one global
--     unique index enforces PostgreSQL's per-scope uniqueness.
--   implicit: the semantic name is the one PostgreSQL would have chosen
--     (customers_email_key), not one the user wrote.
--   policy: column encryption policy (used by the column-encryption feature).
CREATE TABLE pgcloak.objects (
    id            uuid PRIMARY KEY,
    kind          "char" NOT NULL,
    schema_name   name,
    physical_name name NOT NULL,
    parent_id     uuid REFERENCES pgcloak.objects (id) ON DELETE CASCADE,
    position      integer,
    contype       "char",
    name_lookup   bytea NOT NULL,
    name_enc      bytea NOT NULL,
    implicit      boolean NOT NULL DEFAULT false,
    comment_enc   bytea,
    policy        jsonb,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT objects_kind_check CHECK (kind IN ('t', 'c', 'i', 'k', 's', 'v', 'm')),
    CONSTRAINT objects_schema_check CHECK ((kind IN ('c', 'k')) = (schema_name IS NULL)),
    CONSTRAINT objects_parent_check CHECK (
        CASE
            WHEN kind IN ('c', 'k', 'i') THEN parent_id IS NOT NULL
            WHEN kind IN ('t', 'v', 'm') THEN parent_id IS NULL
            ELSE true
        END),
    CONSTRAINT objects_contype_check CHECK (
        (kind = 'k') = (contype IS NOT NULL)
        AND (contype IS NULL OR contype IN ('p', 'u', 'f', 'c', 'x'))),
    CONSTRAINT objects_position_check CHECK (position IS NULL OR (kind = 'c' AND position > 0)),
    CONSTRAINT objects_name_lookup_length CHECK (pg_catalog.octet_length(name_lookup) = 32),
    -- version byte + 12-byte nonce + padded text (32-byte blocks) + 16-byte tag
    CONSTRAINT objects_name_enc_length CHECK (
        pg_catalog.octet_length(name_enc) >= 61 AND pg_catalog.octet_length(name_enc) % 32 = 29),
    CONSTRAINT objects_comment_enc_length CHECK (
        comment_enc IS NULL
        OR (pg_catalog.octet_length(comment_enc) >= 61
            AND pg_catalog.octet_length(comment_enc) % 32 = 29))
);
CREATE UNIQUE INDEX objects_name_lookup_key ON pgcloak.objects (name_lookup);
-- Relations' physical names are globally unique (random), so the proxy's reverse map
-- physical -> semantic is unambiguous. Columns and constraints repeat their names
-- across inheritance/partition children, hence only per parent.
CREATE UNIQUE INDEX objects_relation_physical_key ON pgcloak.objects (physical_name)
    WHERE kind IN ('t', 'i', 's', 'v', 'm');
CREATE UNIQUE INDEX objects_child_physical_key ON pgcloak.objects (parent_id, kind, physical_name)
    WHERE kind IN ('c', 'k');
CREATE INDEX objects_parent_idx ON pgcloak.objects (parent_id);

-- Wrapped data-encryption keys per encrypted column and key version
-- (for the column-encryption feature).
CREATE TABLE pgcloak.data_keys (
    id          uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    column_id   uuid NOT NULL REFERENCES pgcloak.objects (id) ON DELETE CASCADE,
    key_version integer NOT NULL CONSTRAINT data_keys_key_version_check CHECK (key_version > 0),
    wrapped     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT data_keys_column_version_key UNIQUE (column_id, key_version)
);

-- Tell every proxy instance to reload. NOTIFY is delivered at commit (never for a
-- rolled-back transaction) and identical payloads within a transaction are folded,
-- so one DDL transaction produces one notification whatever it touched.
CREATE FUNCTION pgcloak.notify_registry_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('pgcloak_registry', pg_catalog.txid_current()::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER objects_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgcloak.objects
    FOR EACH STATEMENT EXECUTE FUNCTION pgcloak.notify_registry_change();
CREATE TRIGGER data_keys_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgcloak.data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION pgcloak.notify_registry_change();
CREATE TRIGGER key_check_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgcloak.key_check
    FOR EACH STATEMENT EXECUTE FUNCTION pgcloak.notify_registry_change();

-- The proxy reads and writes the registry in-band, on each client's own connection
-- and as that client's role, so registry rows commit atomically with the DDL they
-- describe. Any role may therefore write rows, but only a holder of the master key
-- can produce rows that decrypt and authenticate (docs/cloaking-design.md, threat model).
GRANT USAGE ON SCHEMA pgcloak TO PUBLIC;
GRANT SELECT ON pgcloak.version TO PUBLIC;
GRANT SELECT, INSERT ON pgcloak.key_check TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgcloak.objects TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgcloak.data_keys TO PUBLIC;

COMMENT ON SCHEMA pgcloak IS 'pgcloak registry (managed by pgcloak; do not edit by hand)';

-- Under CREATE EXTENSION, member tables are skipped by pg_dump unless registered as
-- configuration tables; the registry contents must survive dump/restore. (version is
-- written by the scripts themselves, so it is deliberately not dumped.)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pgcloak') THEN
        PERFORM pg_catalog.pg_extension_config_dump('pgcloak.objects', '');
        PERFORM pg_catalog.pg_extension_config_dump('pgcloak.data_keys', '');
        PERFORM pg_catalog.pg_extension_config_dump('pgcloak.key_check', '');
    END IF;
END
$$;
